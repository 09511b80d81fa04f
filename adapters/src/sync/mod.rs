//! The sync worker: reacts to `SyncRequested`, pulls the provider's records page by page,
//! publishes what changed to the records log, and records the run in the integration's log.
//!
//! A run, for each object the app syncs:
//! 1. pulls a page (a `401` refreshes the token once and tries again);
//! 2. maps each record (the integration's field mapping for the object, if any) and hashes it;
//! 3. compares with the hashes the last runs saw (`record_hashes`): a new record is `created`, a
//!    different hash `updated`, the same hash nothing at all;
//! 4. publishes the changes (durable) and then stores the new hashes;
//! 5. appends `SyncProgressed` with the counts and the cursor of the next page to the run's
//!    detail (`run-<sync id>` in the run-detail log, [`eventstore::run_detail`]).
//!
//! After the last page of a full run, the records it did not see are gone at the provider:
//! each is published as `deleted`. An incremental run starts from the watermark the last run
//! of the object left. Change ids derive from the run, the record and its hash, so a page
//! processed twice (a crash between steps 4 and 5) publishes nothing twice.
//!
//! At most one run per integration at a time, in this process and across processes: a run
//! holds the integration's lease, renewed while it works. The lease is the claim: a run
//! appends `SyncStarted` (to its detail) only with the first progress it records, so a run
//! that changes nothing leaves its request and its end alone in the log. The integration's
//! stream holds a run's request and its outcome, which commits to the head of its detail. A request while the lease is held
//! ([`run_claimed`]) is queued by the domain as one follow-up, which the worker runs when the
//! run ends; one made before the claim joins the pending run, which reads the provider after
//! it. A run interrupted by a crash resumes from the cursor of its last `SyncProgressed`; its
//! detail appends continue the stream's end, so a worker that lost the run cannot add to it.

use eventstore::follow::{Follower, InFlight};
use eventstore::RecordedEvent;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use command::repository::{Held, Repository, RepositoryError};
use command::work_queue::WorkQueue;
use database::{execute, fetch_all, fetch_in, Bind};
use database::{ServiceDb, ServiceDbError};
use domain::catalog;
use domain::integration::{
    FieldMapping, Integration, IntegrationCommand, RecordCounts, Status, SyncKind, Transform,
};
use domain::integration::{IntegrationEvent, RunDetailHead, SyncProgressed, SyncStarted};
use domain::{
    Caller, CommandContext, DomainError, EventId, IntegrationId, StreamName, SyncId, Timestamp,
};
use eventstore::{
    DetailTip, NewEvent, RecordChange, RecordLog, RecordOp, RunDetailLog, StoreError,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::http::ProviderError;
use crate::provider::{
    Connection, Credentials, Page, Provider, PullMode, PullRequest, PulledRecord,
};
use crate::providers::Providers;
use database::lease::Leases;

mod run;
use run::{Run, Stop};

/// Where an integration's credentials come from, and how they are renewed.
#[async_trait]
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    /// The credentials the integration's state names, refreshed first if they expire soon.
    async fn current(
        &self,
        id: IntegrationId,
        state: &Integration,
    ) -> Result<Credentials, ProviderError>;

    /// New credentials after the provider refused `stale`. Fails with `InvalidGrant` or
    /// `Unauthorized` when only a reauthentication can help.
    async fn refresh(
        &self,
        id: IntegrationId,
        stale: &Credentials,
    ) -> Result<Credentials, ProviderError>;
}

/// How the worker runs.
#[derive(Clone, Copy, Debug)]
pub struct SyncConfig {
    /// A run's lease; renewed at a third of it while the run works.
    pub lease_ttl: Duration,
    /// Runs of different integrations at once in this process.
    pub max_concurrent_runs: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            max_concurrent_runs: 8,
        }
    }
}

/// Why a run stopped short.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Records(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] ServiceDbError),
    #[error("the run was cancelled")]
    Cancelled,
    #[error("the run's lease was lost")]
    LeaseLost,
    #[error("the run's lease is held by a process that stopped")]
    LeaseHeld,
    #[error("{0}")]
    Internal(String),
}

impl RunError {
    /// Whether the log or the database was away for a while: the run is not failed for it
    /// but stays where its last page left it, and is taken up again from its cursor.
    fn is_transient(&self) -> bool {
        match self {
            RunError::Records(StoreError::Unavailable { .. })
            | RunError::Repository(RepositoryError::Store(StoreError::Unavailable { .. }))
            | RunError::Provider(ProviderError::Storage { outage: true, .. }) => true,
            RunError::Db(error) => error.is_transient(),
            _ => false,
        }
    }
}

/// The lease a worker holds while it runs the integration's sync: who holds it has claimed
/// the pending run.
fn run_lease(id: IntegrationId) -> String {
    format!("sync:{id}")
}

/// Whether a worker holds the integration's run now (its lease is live). A sync request made
/// while it does is queued as a follow-up rather than joined to the pending run
/// (`IntegrationCommand::RequestSync`'s `claimed`). Ask this *before* loading the
/// integration's state to decide the request: a run that claims later reads the provider
/// after the request, and one that ends in between leaves no pending run to join.
pub async fn run_claimed(leases: &Leases, id: IntegrationId) -> Result<bool, ServiceDbError> {
    Ok(leases.holder_of(&run_lease(id)).await?.is_some())
}

/// How long a run interrupted by the log or the database being away waits before it is
/// taken up again.
const RESUME_AFTER: Duration = Duration::from_secs(2);

/// Where a run stands, as `SyncProgressed` carries it: the object's index in the app's list,
/// the provider's cursor of the next page, and whether only the deletion sweep is left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RunCursor {
    object: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sweep: bool,
}

impl RunCursor {
    fn encode(&self) -> String {
        serde_json::to_string(self).expect("a cursor serializes")
    }

    fn decode(text: Option<&str>) -> Self {
        text.and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }
}

struct Active {
    cancel: watch::Sender<bool>,
    again: bool,
}

/// The sync worker of one process.
#[derive(Clone, Debug)]
pub struct SyncWorker {
    inner: Arc<Inner>,
}

struct Inner {
    repo: Arc<Repository>,
    records: Arc<dyn RecordLog>,
    detail: Arc<dyn RunDetailLog>,
    db: ServiceDb,
    credentials: Arc<dyn CredentialSource>,
    providers: Providers,
    leases: Leases,
    config: SyncConfig,
    active: Mutex<HashMap<IntegrationId, Active>>,
    slots: Semaphore,
    idle: tokio::sync::Notify,
    /// In a distributed service, the queue that hands runs to the processes.
    queue: std::sync::OnceLock<WorkQueue>,
    /// Integrations whose last look found another process holding their lease.
    busy_elsewhere: Mutex<HashSet<IntegrationId>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncWorker")
            .field("holder", &self.leases.holder())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const DISPATCH_CHECKPOINT: &str = "sync_dispatch";
/// At most this many ready pages are written in one go.
const WRITE_BATCH_PAGES: usize = 8;

fn context(reason: &str) -> CommandContext {
    CommandContext::new(Caller::system(reason), Timestamp::now())
}

/// Where a run writes besides the event log: the records it found changed, and its detail.
#[derive(Clone)]
pub struct RunLogs {
    pub records: Arc<dyn RecordLog>,
    pub detail: Arc<dyn RunDetailLog>,
}

impl std::fmt::Debug for RunLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLogs").finish_non_exhaustive()
    }
}

impl SyncWorker {
    pub fn new(
        repo: Arc<Repository>,
        logs: RunLogs,
        db: ServiceDb,
        credentials: Arc<dyn CredentialSource>,
        providers: Providers,
        leases: Leases,
        config: SyncConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                repo,
                records: logs.records,
                detail: logs.detail,
                db,
                credentials,
                providers,
                leases,
                slots: Semaphore::new(config.max_concurrent_runs.max(1)),
                config,
                active: Mutex::default(),
                idle: tokio::sync::Notify::new(),
                queue: std::sync::OnceLock::new(),
                busy_elsewhere: Mutex::default(),
            }),
        }
    }

    /// Follows the log and starts, resumes or cancels runs as its events say, until the log's
    /// subscription ends. Restarted, it replays from the oldest request whose run had not
    /// ended, so an interrupted run resumes.
    pub async fn follow(&self) -> Result<(), StoreError> {
        let mut dispatch = Dispatch {
            worker: self.clone(),
            held: InFlight::default(),
        };
        crate::dispatch::follow(
            self.inner.repo.store().as_ref(),
            &self.inner.db,
            DISPATCH_CHECKPOINT,
            &mut dispatch,
        )
        .await
    }

    /// Makes this worker take its runs from `queue`, shared with the service's other
    /// processes, instead of from its own reading of the log. Call before [`follow`] and
    /// [`take_work`].
    ///
    /// [`follow`]: Self::follow
    /// [`take_work`]: Self::take_work
    pub fn use_queue(&self, queue: WorkQueue) {
        let _ = self.inner.queue.set(queue);
    }

    /// Whether runs come from a shared work queue.
    pub fn has_queue(&self) -> bool {
        self.inner.queue.get().is_some()
    }

    /// Takes runs from the work queue for as long as it is polled: each item is run here (a
    /// request during a run coalesces into one follow-up), kept alive while it runs, and
    /// acknowledged once the integration is idle — or handed back for later when another
    /// process holds the integration's lease.
    pub async fn take_work(&self) -> Result<(), StoreError> {
        let Some(queue) = self.inner.queue.get() else {
            return Err(StoreError::Misconfigured(
                "the sync worker has no work queue".into(),
            ));
        };
        let mut items = queue.items().await?;
        // No more items in hand than runs this process may do at once: the rest stay on the
        // queue for the other processes.
        let in_hand = Arc::new(Semaphore::new(self.inner.config.max_concurrent_runs.max(1)));
        loop {
            let permit = in_hand
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| StoreError::unavailable("the worker is shutting down"))?;
            let Some(item) = items.next().await else {
                break;
            };
            let item = item?;
            let Ok(id) = item.key.parse::<IntegrationId>() else {
                tracing::warn!(key = %item.key, "dropping sync work for no integration");
                item.done().await?;
                continue;
            };
            // The process that offered the item may have written its stream to a replica
            // this one reads behind: read it at least as far as the offer saw it.
            self.inner
                .repo
                .store()
                .observed(&StreamName::integration(id), item.version);
            let worker = self.clone();
            let heartbeat = queue.ack_wait() / 3;
            tokio::spawn(async move {
                worker.kick(id);
                loop {
                    let notified = worker.inner.idle.notified();
                    if !worker.is_running(id) {
                        break;
                    }
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep(heartbeat) => {
                            if let Err(error) = item.working().await {
                                tracing::warn!(integration = %id, %error, "cannot keep sync work alive");
                            }
                        }
                    }
                }
                let elsewhere = worker
                    .inner
                    .busy_elsewhere
                    .lock()
                    .expect("busy integrations lock")
                    .remove(&id);
                let settled = if elsewhere {
                    item.later(Duration::from_secs(2)).await
                } else {
                    item.done().await
                };
                if let Err(error) = settled {
                    tracing::warn!(integration = %id, %error, "cannot settle sync work");
                }
                drop(permit);
            });
        }
        Ok(())
    }

    /// Makes sure the integration's pending or interrupted run gets done: starts a task for it
    /// unless one is already working, in which case that task looks again when it finishes.
    pub fn kick(&self, id: IntegrationId) {
        let mut active = self.inner.active.lock().expect("active runs lock");
        if let Some(run) = active.get_mut(&id) {
            run.again = true;
            return;
        }
        let (cancel, cancelled) = watch::channel(false);
        active.insert(
            id,
            Active {
                cancel,
                again: false,
            },
        );
        drop(active);
        let worker = self.clone();
        tokio::spawn(async move {
            loop {
                // After a run, look again: a request made during it waits as its follow-up.
                let more = match worker.work_on(id, cancelled.clone()).await {
                    Ok(ran) => ran,
                    Err(RunError::LeaseHeld) => {
                        tracing::debug!(integration = %id, "waiting for a stopped process's sync lease to run out");
                        tokio::time::sleep(RESUME_AFTER).await;
                        true
                    }
                    Err(error) if error.is_transient() => {
                        tracing::warn!(integration = %id, %error, "a sync run is interrupted; resuming it shortly");
                        tokio::time::sleep(RESUME_AFTER).await;
                        true
                    }
                    Err(error) => {
                        tracing::warn!(integration = %id, %error, "a sync run stopped with an error");
                        false
                    }
                };
                let mut active = worker.inner.active.lock().expect("active runs lock");
                let again = active.get_mut(&id).is_some_and(|run| {
                    let again = (more || run.again) && !*run.cancel.borrow();
                    run.again = false;
                    again
                });
                if !again {
                    active.remove(&id);
                    drop(active);
                    worker.inner.idle.notify_waiters();
                    return;
                }
            }
        }
        .instrument(tracing::info_span!("sync_worker", integration = %id)));
    }

    /// Stops the integration's run in this process, if one is working, within a second.
    pub fn cancel(&self, id: IntegrationId) {
        if let Some(run) = self.inner.active.lock().expect("active runs lock").get(&id) {
            let _ = run.cancel.send(true);
        }
    }

    /// Whether a run of the integration is working in this process.
    pub fn is_running(&self, id: IntegrationId) -> bool {
        self.inner
            .active
            .lock()
            .expect("active runs lock")
            .contains_key(&id)
    }

    /// One look at the integration: resume its interrupted run, or start its pending one.
    /// Whether a run was worked on (so there may be a follow-up to start).
    async fn work_on(
        &self,
        id: IntegrationId,
        cancelled: watch::Receiver<bool>,
    ) -> Result<bool, RunError> {
        let _slot = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| RunError::Internal("the worker is shutting down".into()))?;
        let lease = run_lease(id);
        let ttl = self.inner.config.lease_ttl;
        if !self.inner.leases.try_acquire(&lease, ttl).await? {
            if self.inner.queue.get().is_none() {
                // Alone on its log (embedded), this process finds the lease of an earlier one
                // that died running the sync: the run resumes once that lease runs out.
                return Err(RunError::LeaseHeld);
            }
            tracing::debug!(integration = %id, "another process runs this integration's sync");
            self.inner
                .busy_elsewhere
                .lock()
                .expect("busy integrations lock")
                .insert(id);
            return Ok(false);
        }
        let (lost_tx, lost) = watch::channel(false);
        let renewer = {
            let leases = self.inner.leases.clone();
            let lease = lease.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match leases.try_acquire(&lease, ttl).await {
                        Ok(true) => {}
                        Ok(false) | Err(_) => {
                            let _ = lost_tx.send(true);
                            return;
                        }
                    }
                }
            })
        };
        let outcome = self.run_next(id, Stop { cancelled, lost }).await;
        renewer.abort();
        if let Err(error) = self.inner.leases.release(&lease).await {
            tracing::warn!(integration = %id, %error, "could not release a sync lease");
        }
        outcome
    }

    /// Resumes the integration's interrupted run or starts its pending one, if it has one:
    /// whether it had.
    async fn run_next(&self, id: IntegrationId, stop: Stop) -> Result<bool, RunError> {
        let stream = StreamName::integration(id);
        let held = self.inner.repo.hold::<Integration>(&stream).await?;
        let state = held.state.clone();
        if state.status != Status::Connected {
            return Ok(false);
        }
        // A pending run is claimed by the lease this process holds, not by an event: its
        // `SyncStarted` goes to its detail with the first progress it records. A run started
        // before the run-detail log recorded its progress in the integration's stream.
        let (sync_id, kind, inline_cursor, inline_pages, mut totals) =
            match (&state.running_sync, &state.pending_sync) {
                (Some(running), _) => (
                    running.sync_id,
                    running.kind,
                    running.cursor.clone(),
                    running.pages,
                    running.totals,
                ),
                (None, Some(pending)) => (
                    pending.sync_id,
                    pending.kind,
                    None,
                    0,
                    RecordCounts::default(),
                ),
                (None, None) => return Ok(false),
            };
        // A run whose worker stopped resumes from the last page its detail recorded.
        let recorded = self.inner.detail.read(sync_id).await?;
        let (detail, detail_cursor) = run::Detail::read(sync_id, &recorded)?;
        let cursor = RunCursor::decode(detail_cursor.or(inline_cursor).as_deref());
        let mut page_no = inline_pages.max(detail.pages);
        totals.add(&detail.counted);
        tracing::info!(integration = %id, sync = %sync_id, holder = self.inner.leases.holder(), "running a sync");
        let run = Run {
            worker: self,
            id,
            stream,
            sync_id,
            kind,
            state: &state,
            held: tokio::sync::Mutex::new(held),
            stop,
            started: Instant::now(),
            recorded: std::sync::Mutex::new(Instant::now()),
            unrecorded: std::sync::Mutex::default(),
            detail: tokio::sync::Mutex::new(detail),
        };
        // Everything the run logs carries its integration and run.
        let span = tracing::info_span!("sync_run", integration = %id, sync = %sync_id);
        async {
            let outcome = run.objects(cursor, &mut page_no, &mut totals).await;
            let finished = run.finish(outcome).await;
            if finished.is_ok() {
                tracing::info!(pulled = totals.pulled, "the sync run ended");
            }
            finished.map(|()| true)
        }
        .instrument(span)
        .await
    }

    /// Waits until no run is working in this process (for tests and shutdown).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self
                .inner
                .active
                .lock()
                .expect("active runs lock")
                .is_empty()
            {
                return;
            }
            notified.await;
        }
    }
}

/// The sync worker's reading of the log: requests start (or, distributed, offer) runs, and an
/// ended integration's run is cancelled. A request stays held until its integration is idle,
/// so a restart replays it and an interrupted run resumes.
struct Dispatch {
    worker: SyncWorker,
    held: InFlight,
}

#[async_trait]
impl Follower for Dispatch {
    async fn on_event(&mut self, event: &RecordedEvent) -> Result<(), StoreError> {
        let Some(id) = event.stream.integration_id() else {
            return Ok(());
        };
        use domain::IntegrationEventKind as Kind;
        let Some(kind) = Kind::of(&event.event_type) else {
            return Ok(());
        };
        match (kind, self.worker.inner.queue.get()) {
            // Distributed: the request becomes work on the shared queue, offered by every
            // process and kept once. An interrupted run's item was never acknowledged, so it
            // comes back by itself.
            (Kind::SyncRequested, Some(queue)) => {
                queue
                    .offer(&id.to_string(), &event.id.to_string(), event.version)
                    .await?;
            }
            (Kind::SyncStarted | Kind::SyncProgressed, Some(_)) => {}
            (Kind::SyncRequested | Kind::SyncStarted | Kind::SyncProgressed, None) => {
                self.worker
                    .inner
                    .repo
                    .store()
                    .observed(&event.stream, event.version);
                self.held.hold(event.position, id);
                self.worker.kick(id);
            }
            (Kind::Disconnected | Kind::Deleted | Kind::CredentialsExpired, _) => {
                self.worker.cancel(id)
            }
            _ => {}
        }
        Ok(())
    }

    fn oldest_open(&mut self) -> Option<u64> {
        let active = self.worker.inner.active.lock().expect("active runs lock");
        self.held.oldest(|id| active.contains_key(id))
    }
}

#[cfg(test)]
mod tests {
    use super::run::map_record;
    use super::*;
    use serde_json::json;

    #[test]
    fn run_cursors_round_trip_and_default_to_the_start() {
        let cursor = RunCursor {
            object: 1,
            page: Some("0.1.2".into()),
            sweep: false,
        };
        assert_eq!(RunCursor::decode(Some(&cursor.encode())), cursor);
        assert_eq!(RunCursor::decode(None), RunCursor::default());
        assert_eq!(RunCursor::decode(Some("garbage")), RunCursor::default());
    }

    #[test]
    fn mappings_rename_and_transform_fields() {
        let fields = json!({"email": "  Jane@X.com ", "firstname": "Jane", "other": 1});
        let fields = fields.as_object().expect("object");
        assert_eq!(map_record(fields, None), Value::Object(fields.clone()));
        let mapping = vec![
            FieldMapping {
                provider_field: "email".into(),
                harmony_field: "email".into(),
                transform: Some(Transform::Trim),
            },
            FieldMapping {
                provider_field: "firstname".into(),
                harmony_field: "first_name".into(),
                transform: Some(Transform::Uppercase),
            },
            FieldMapping {
                provider_field: "missing".into(),
                harmony_field: "phone".into(),
                transform: None,
            },
        ];
        assert_eq!(
            map_record(fields, Some(&mapping)),
            json!({"email": "Jane@X.com", "first_name": "JANE", "phone": null})
        );
    }
}
