//! Ages out the embedded run-detail log until killed, for the crash test of expiry.
//!
//! `eventstore-crash-expirer <dir> fill <old> <new> <events>` writes `old` runs whose detail is
//! 100 days old (a second apart; at most 1,000 of them) and `new` runs of today, `events` events each, printing
//! `run <sync id> old` or `run <sync id> new` for each, then `filled`.
//! `eventstore-crash-expirer <dir> expire` removes the old runs ten seconds' worth at a time,
//! printing `expired <n so far>` after each pass, then every run older than 90 days.

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

/// Midnight, 100 days ago: where the old runs begin.
fn long_ago() -> Timestamp {
    let now = Timestamp::now().minus(100 * DAY).unix_micros();
    let day = 86_400 * 1_000_000;
    Timestamp::from_unix_micros(now - now % day).expect("a time in range")
}

/// `n` seconds after `start`.
fn second(start: Timestamp, n: u64) -> Timestamp {
    let micros = i64::try_from(n)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    Timestamp::from_unix_micros(start.unix_micros().saturating_add(micros))
        .expect("a time in range")
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
            for (runs, age) in [(old, "old"), (new, "new")] {
                for n in 0..runs {
                    let at = match age {
                        "old" => second(long_ago(), n),
                        _ => Timestamp::now(),
                    };
                    let sync_id = SyncId::new();
                    log.append(sync_id, DetailTip::EMPTY, events(count, at))
                        .await?;
                    writeln!(out, "run {sync_id} {age}")?;
                }
            }
            writeln!(out, "filled")?;
        }
        Some("expire") => {
            let (start, end) = (long_ago(), Timestamp::now().minus(90 * DAY));
            let mut removed = 0;
            // Ten seconds a pass through the first thousand (old runs are a second apart),
            // then everything past the retention at once.
            let mut at = 10;
            loop {
                let cutoff = if at <= 1_000 { second(start, at) } else { end };
                removed += log.expire(cutoff).await?;
                writeln!(out, "expired {removed}")?;
                out.flush()?;
                if cutoff == end {
                    break;
                }
                at += 10;
            }
        }
        _ => return Err(usage.into()),
    }
    out.flush()?;
    Ok(())
}
