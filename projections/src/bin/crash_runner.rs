//! Applies a log to both read models until they reach its head, printing
//! `applied <projection> <position>` after every committed batch, then `done`: the victim of
//! the projections' SIGKILL test (`tests/crash.rs`).
//!
//! `projections-crash-runner <sled-log-dir> <sqlite-file | postgres-url>`

use std::io::Write;

use eventstore::{EventStore, SledEventStore};
use projections::runner::{Projection, MAX_BATCH};
use projections::ServiceDb;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: projections-crash-runner <sled-log-dir> <sqlite-file | postgres-url>";
    let mut args = std::env::args().skip(1);
    let log = args.next().ok_or(usage)?;
    let target = args.next().ok_or(usage)?;
    let store = SledEventStore::open(&log)?;
    let db = if target.starts_with("postgres://") {
        ServiceDb::connect_postgres(&target).await?
    } else {
        ServiceDb::open_sqlite(std::path::Path::new(&target)).await?
    };
    let head = store.head_position().await?;
    let mut out = std::io::stdout();
    for projection in Projection::ALL {
        loop {
            let from = projection.checkpoint(&db).await? + 1;
            if from > head {
                break;
            }
            let batch = store.read_all(from, MAX_BATCH).await?;
            projection.apply(&db, &batch).await?;
            writeln!(
                out,
                "applied {} {}",
                projection.name(),
                from + batch.len() as u64 - 1
            )?;
            out.flush()?;
        }
    }
    writeln!(out, "done")?;
    Ok(())
}
