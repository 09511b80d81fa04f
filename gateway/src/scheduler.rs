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
    pub async fn tick_once(&self, now: Timestamp) -> Result<Vec<IntegrationId>, TickError> {
        let mut requested = Vec::new();
        for (id, state) in projections::installed::active_states(&self.db).await? {
            let Some(sync_id) = due(id, &state, now) else {
                continue;
            };
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
                Ok(_) => requested.push(id),
                // Moved on since the read model saw it (disconnected, needs reauth …).
                Err(RepositoryError::Domain(
                    DomainError::Disconnected
                    | DomainError::Deleted
                    | DomainError::NeedsReauth
                    | DomainError::NotFound
                    | DomainError::Unsupported { .. },
                )) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(requested)
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
