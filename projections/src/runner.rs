//! Applying the log to a projection: from its checkpoint, in batches, each batch with the
//! checkpoint in one transaction.

use std::sync::Arc;
use std::time::Duration;

use eventstore::{EventStore, StoreError};
use futures::StreamExt;

use crate::db::ReadDb;
use crate::installed::{self, ApplyError};

/// How many events one transaction applies at most.
pub const MAX_BATCH: usize = 1000;

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the log: {0}")]
    Log(#[from] StoreError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Db(#[from] crate::db::ReadDbError),
}

/// Follows the log into Installed until the subscription ends or an event cannot be applied.
/// Catching up, batches fill up to [`MAX_BATCH`]; live, each event is applied as soon as no
/// other is waiting.
pub async fn run_installed(store: Arc<dyn EventStore>, db: ReadDb) -> Result<(), RunError> {
    let from = installed::checkpoint(&db).await? + 1;
    let mut events = store.subscribe(from).ready_chunks(MAX_BATCH);
    while let Some(chunk) = events.next().await {
        let batch = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
        installed::apply(&db, &batch).await?;
    }
    Ok(())
}

/// Waits until Installed has applied the log up to `position`, or `deadline` passes.
pub async fn wait_for(db: &ReadDb, position: u64, deadline: Duration) -> Result<bool, RunError> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if installed::checkpoint(db).await? >= position {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
