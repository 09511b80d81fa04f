//! Ages out the embedded run-detail log until killed, for the crash test of expiry.
//!
//! `eventstore-crash-expirer <dir> fill <old> <new> <events>` writes `old` runs whose detail is
//! 100 days old and `new` runs of today, `events` events each, printing `run <sync id> old` or
//! `run <sync id> new` for each, then `filled`.
//! `eventstore-crash-expirer <dir> expire` prints `expiring`, removes every run older than
//! 90 days, and prints `expired <n>`.

use std::io::Write;

use domain::{Actor, EventId, Metadata, SyncId, Timestamp};
use eventstore::{DetailTip, NewEvent, RunDetailLog, SledRunDetailLog};

const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn events(count: u64, at: Timestamp) -> Vec<NewEvent> {
    (0..count)
        .map(|page| NewEvent {
            id: EventId::new(),
            event_type: "SyncProgressed".into(),
            schema: 1,
            data: serde_json::json!({ "page": page, "padding": "x".repeat(200) }),
            metadata: Metadata {
                workspace: "crash".parse().expect("a valid workspace id"),
                owner: None,
                actor: Actor::System("crash test".into()),
                correlation_id: uuid::Uuid::now_v7(),
                causation_id: None,
                occurred_at: at,
            },
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: eventstore-crash-expirer <dir> fill <old> <new> <events> | <dir> expire";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().ok_or(usage)?;
    let log = SledRunDetailLog::open(dir)?;
    let mut out = std::io::stdout();
    match args.get(1).map(String::as_str) {
        Some("fill") => {
            let number = |i: usize| -> Result<u64, Box<dyn std::error::Error>> {
                Ok(args.get(i).ok_or(usage)?.parse()?)
            };
            let (old, new, count) = (number(2)?, number(3)?, number(4)?);
            let long_ago = Timestamp::now().minus(100 * DAY);
            for (runs, at, age) in [(old, long_ago, "old"), (new, Timestamp::now(), "new")] {
                for _ in 0..runs {
                    let sync_id = SyncId::new();
                    log.append(sync_id, DetailTip::EMPTY, events(count, at))
                        .await?;
                    writeln!(out, "run {sync_id} {age}")?;
                }
            }
            writeln!(out, "filled")?;
        }
        Some("expire") => {
            writeln!(out, "expiring")?;
            out.flush()?;
            let removed = log.expire(Timestamp::now().minus(90 * DAY)).await?;
            writeln!(out, "expired {removed}")?;
        }
        _ => return Err(usage.into()),
    }
    out.flush()?;
    Ok(())
}
