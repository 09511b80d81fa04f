//! Applying the log to a projection: from its checkpoint, in batches, each batch with the
//! checkpoint in one transaction.

use std::sync::Arc;

use eventstore::{EventStore, RecordedEvent, StoreError};
use futures::StreamExt;

use crate::db::ReadDb;
use crate::installed::{self, ApplyError};
use crate::sync_runs;

/// How many events one transaction applies at most.
pub const MAX_BATCH: usize = 1000;

/// The read models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    Installed,
    SyncRuns,
}

impl Projection {
    pub const ALL: [Projection; 2] = [Projection::Installed, Projection::SyncRuns];

    /// The name its checkpoint is stored under.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Installed => installed::NAME,
            Projection::SyncRuns => sync_runs::NAME,
        }
    }

    /// Applies `events` and moves the checkpoint, in one transaction.
    pub async fn apply(self, db: &ReadDb, events: &[RecordedEvent]) -> Result<(), ApplyError> {
        match self {
            Projection::Installed => installed::apply(db, events).await,
            Projection::SyncRuns => sync_runs::apply(db, events).await,
        }
    }

    /// Where it is in the log.
    pub async fn checkpoint(self, db: &ReadDb) -> Result<u64, crate::ReadDbError> {
        crate::db::checkpoint(db, self.name()).await
    }
}

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

/// Follows the log into `projection` until the subscription ends or an event cannot be
/// applied. Catching up, batches fill up to [`MAX_BATCH`]; live, each event is applied as soon
/// as no other is waiting.
pub async fn run(
    projection: Projection,
    store: Arc<dyn EventStore>,
    db: ReadDb,
) -> Result<(), RunError> {
    let from = projection.checkpoint(&db).await? + 1;
    let mut events = store.subscribe(from).ready_chunks(MAX_BATCH);
    while let Some(chunk) = events.next().await {
        let batch = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
        projection.apply(&db, &batch).await?;
    }
    Ok(())
}
