//! The incremental-sync scheduler: every tick, the integrations whose schedule
//! (`SyncScheduleChanged`) says they are due get a `SyncRequested` (incremental, by the
//! system). It reads due integrations from the Installed read model (through
//! `projections::installed`, which is why it lives here, where the read side and the workers
//! meet) and runs only in the
//! process that holds the `scheduler` lease, so several processes never double a tick; and a
//! tick's sync id is derived from the integration and the schedule's period, so even two
//! ticks racing would request the same run once.

use std::sync::Arc;
use std::time::Duration;

use command::repository::{Repository, RepositoryError};
use database::ServiceDb;
use domain::aggregate::CommandContext;
use domain::integration::{Integration, IntegrationCommand, SyncKind};
use domain::principal::Caller;
use domain::{DomainError, IntegrationId, StreamName, SyncId, Timestamp};
use sha2::{Digest, Sha256};

use database::lease::Leases;

const LEASE: &str = "scheduler";

/// Sync requests a tick has in flight at once.
const AT_ONCE: usize = 32;

/// Requests the scheduled incremental syncs.
#[derive(Clone, Debug)]
pub struct Scheduler {
    repo: Arc<Repository>,
    db: ServiceDb,
    leases: Leases,
    tick: Duration,
}

/// Why a tick failed.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error(transparent)]
    Db(#[from] database::ServiceDbError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

impl Scheduler {
    pub fn new(repo: Arc<Repository>, db: ServiceDb, leases: Leases, tick: Duration) -> Self {
        Self {
            repo,
            db,
            leases,
            tick,
        }
    }

    /// Ticks for as long as it is polled, under the lease.
    pub async fn run(&self) {
        loop {
            match self.leases.try_acquire(LEASE, self.tick * 3).await {
                Ok(true) => {
                    if let Err(error) = self.tick_once(Timestamp::now()).await {
                        tracing::warn!(%error, "a scheduler tick failed");
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot take the scheduler's lease"),
            }
            tokio::time::sleep(self.tick).await;
        }
    }

    /// Requests every sync due at `now`; returns the integrations it requested one for.
    /// [`AT_ONCE`] requests are in flight together: each is a few round trips (the lease, the
    /// stream, the append), which on JetStream + PostgreSQL would cap a tick at a few dozen
    /// requests a second if made one after the other.
    pub async fn tick_once(&self, now: Timestamp) -> Result<Vec<IntegrationId>, TickError> {
        use futures::StreamExt;
        let due: Vec<(IntegrationId, SyncId)> = projections::installed::active_states(&self.db)
            .await?
            .into_iter()
            .filter_map(|(id, state)| due(id, &state, now).map(|sync_id| (id, sync_id)))
            .collect();
        let outcomes: Vec<Result<Option<IntegrationId>, TickError>> = futures::stream::iter(due)
            .map(|(id, sync_id)| self.request(id, sync_id, now))
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;
        let mut requested = Vec::new();
        for outcome in outcomes {
            requested.extend(outcome?);
        }
        Ok(requested)
    }

    /// Requests the incremental run `sync_id` of `id`; `None` when the integration has moved
    /// on since the read model saw it.
    async fn request(
        &self,
        id: IntegrationId,
        sync_id: SyncId,
        now: Timestamp,
    ) -> Result<Option<IntegrationId>, TickError> {
        let command = IntegrationCommand::RequestSync {
            claimed: adapters::sync::run_claimed(&self.leases, id).await?,
            sync_id,
            kind: SyncKind::Incremental,
        };
        let context = CommandContext::new(Caller::system("scheduler"), now);
        match self
            .repo
            .execute::<Integration>(&StreamName::integration(id), &command, &context)
            .await
        {
            Ok(_) => Ok(Some(id)),
            // Moved on since the read model saw it (disconnected, needs reauth …).
            Err(RepositoryError::Domain(
                DomainError::Disconnected
                | DomainError::Deleted
                | DomainError::NeedsReauth
                | DomainError::NotFound
                | DomainError::Unsupported { .. },
            )) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// The sync id to request for `state` at `now`, when it is due: its schedule's period has
/// passed since its last run ended (or since it was connected), and no run is pending.
fn due(id: IntegrationId, state: &Integration, now: Timestamp) -> Option<SyncId> {
    let minutes = state.schedule_minutes?;
    if state.pending_sync.is_some() || state.running_sync.is_some() {
        return None;
    }
    let since = state
        .last_sync
        .as_ref()
        .map(|last| last.finished_at)
        .or_else(|| state.profile.as_ref().map(|p| p.connected_at))?;
    let period = i64::from(minutes) * 60 * 1_000_000;
    if now.unix_micros() - since.unix_micros() < period {
        return None;
    }
    // One id per integration and period: a repeated tick asks for the same run.
    let slot = now.unix_micros() / period;
    let digest = Sha256::new()
        .chain_update(id.to_string())
        .chain_update(slot.to_le_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Some(SyncId(uuid::Uuid::new_v8(bytes)))
}
