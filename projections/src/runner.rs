//! Applying the log to a projection: from its checkpoint, in batches, each batch with the
//! checkpoint in one transaction.

use std::borrow::Cow;
use std::sync::Arc;

use domain::IntegrationEvent;
use eventstore::{EventStore, RecordedEvent, StoreError};
use futures::StreamExt;

use crate::db::{ServiceDb, ServiceDbError, Target, WriteTx};
use crate::installed::{self, ApplyError};
use crate::sync_runs;

/// How many events one transaction applies at most.
pub const MAX_BATCH: usize = 1000;

/// A batch of the log, each integration event decoded once for every projection that
/// applies it.
#[derive(Debug)]
pub struct Batch<'a> {
    events: Cow<'a, [RecordedEvent]>,
    /// Beside each event: its decoded form, `None` for other streams' events and types the
    /// domain does not know.
    decoded: Vec<Option<IntegrationEvent>>,
}

impl<'a> Batch<'a> {
    /// Decodes for `projections` the events (in log order; a slice, or a `Vec` for a batch of
    /// its own) that any of them reads. One of those that cannot be decoded is an error naming
    /// its position; one only other projections read is left alone.
    pub fn decode(
        events: impl Into<Cow<'a, [RecordedEvent]>>,
        projections: &[Projection],
    ) -> Result<Self, ApplyError> {
        let events = events.into();
        let decoded = events
            .iter()
            .map(|event| {
                if event.stream.integration_id().is_none()
                    || !projections.iter().any(|p| p.reads(&event.event_type))
                {
                    return Ok(None);
                }
                let decoded = event.decode::<IntegrationEvent>().map_err(|error| {
                    ApplyError::Undecodable {
                        position: event.position,
                        reason: error.to_string(),
                    }
                })?;
                if decoded.is_none() {
                    tracing::debug!(
                        position = event.position,
                        event_type = %event.event_type,
                        "passing over an event type the domain does not know"
                    );
                }
                Ok(decoded)
            })
            .collect::<Result<_, ApplyError>>()?;
        Ok(Batch { events, decoded })
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events after `position`, each with its decoded form.
    pub(crate) fn after(
        &self,
        position: u64,
    ) -> impl Iterator<Item = (&RecordedEvent, Option<&IntegrationEvent>)> + Clone + '_ {
        let skip = self
            .events
            .partition_point(|event| event.position <= position);
        self.events[skip..]
            .iter()
            .zip(self.decoded[skip..].iter().map(Option::as_ref))
    }

    /// The last event's position.
    pub fn last_position(&self) -> Option<u64> {
        self.events.last().map(|event| event.position)
    }
}

/// The read models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    Installed,
    SyncRuns,
}

impl Projection {
    pub const ALL: [Projection; 2] = [Projection::Installed, Projection::SyncRuns];

    /// The name its checkpoint is stored under, and `harmony projections rebuild --name` takes.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Installed => installed::NAME,
            Projection::SyncRuns => sync_runs::NAME,
        }
    }

    /// The version of its code: raised by a release that changes what it makes of events it
    /// has already applied, so that tables an older version built are rebuilt.
    pub fn version(self) -> u64 {
        match self {
            Projection::Installed => installed::VERSION,
            Projection::SyncRuns => sync_runs::VERSION,
        }
    }

    /// The projection called `name`.
    pub fn named(name: &str) -> Option<Projection> {
        Projection::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether it reads events of `event_type` (of an integration's stream).
    pub fn reads(self, event_type: &str) -> bool {
        match self {
            Projection::Installed => true,
            Projection::SyncRuns => {
                use domain::IntegrationEventKind as Kind;
                matches!(
                    Kind::of(event_type),
                    Some(
                        Kind::SyncRequested
                            | Kind::SyncStarted
                            | Kind::SyncProgressed
                            | Kind::SyncCompleted
                            | Kind::SyncFailed
                            | Kind::SyncScheduleChanged
                    )
                )
            }
        }
    }

    /// The tables it owns.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Installed => &[installed::TABLE],
            Projection::SyncRuns => &[sync_runs::RUNS, sync_runs::PAGES],
        }
    }

    /// The name of its checkpoint for `target`'s tables.
    pub(crate) fn checkpoint_name(self, target: Target) -> String {
        target.table(self.name())
    }

    /// Applies to `target`'s tables, inside `tx`, those of the batch's events past the
    /// checkpoint, and moves the checkpoint to the last of them. The checkpoint is read and
    /// locked in the same transaction, so whoever else writes the projection (a second
    /// process, a rebuild's swap) can never make an event count twice. Returns how many
    /// events were past it.
    pub async fn apply_in(
        self,
        tx: &mut WriteTx,
        target: Target,
        batch: &Batch<'_>,
    ) -> Result<usize, ApplyError> {
        self.apply_holding(tx, target, batch, None).await
    }

    /// [`Projection::apply_in`], Installed's rows held in `pending` (a rebuild's) rather
    /// than written at once.
    pub(crate) async fn apply_holding(
        self,
        tx: &mut WriteTx,
        target: Target,
        batch: &Batch<'_>,
        pending: Option<&mut installed::Pending>,
    ) -> Result<usize, ApplyError> {
        let name = self.checkpoint_name(target);
        let checkpoint = tx.checkpoint(&name).await?;
        let fresh = batch.after(checkpoint);
        let Some(last) = batch.last_position().filter(|last| *last > checkpoint) else {
            return Ok(0);
        };
        let count = fresh.clone().count();
        match self {
            Projection::Installed => installed::apply_in(tx, target, fresh, pending).await?,
            Projection::SyncRuns => sync_runs::apply_in(tx, target, fresh).await?,
        }
        tx.save_checkpoint(&name, last).await?;
        Ok(count)
    }

    /// Applies `events` (in log order) and moves the checkpoint, in one transaction.
    ///
    /// An event that cannot be decoded stops it there: what comes before is applied, and the
    /// error names the event's position.
    pub async fn apply(self, db: &ServiceDb, events: &[RecordedEvent]) -> Result<(), ApplyError> {
        let batch = match Batch::decode(events, &[self]) {
            Ok(batch) => batch,
            Err(ApplyError::Undecodable { position, reason }) => {
                let before = events.partition_point(|event| event.position < position);
                Box::pin(self.apply(db, &events[..before])).await?;
                return Err(ApplyError::Undecodable { position, reason });
            }
            Err(error) => return Err(error),
        };
        let mut tx = db.begin_write().await?;
        self.apply_in(&mut tx, Target::Live, &batch).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Where it is in the log.
    pub async fn checkpoint(self, db: &ServiceDb) -> Result<u64, crate::ServiceDbError> {
        crate::db::checkpoint(db, self.name()).await
    }

    /// Where it is in the log, and which rebuild of its tables is in place: an answer drawn
    /// from them stays right while both stand.
    pub async fn stamp(self, db: &ServiceDb) -> Result<(u64, u64), crate::ServiceDbError> {
        Ok(crate::db::standing(db, self.name())
            .await?
            .map_or((0, 0), |standing| (standing.position, standing.generation)))
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
    Db(#[from] crate::db::ServiceDbError),
    #[error("the projection's lease was lost: {0}")]
    LeaseLost(String),
}

/// Follows the log into `projection` until the subscription ends or an event cannot be
/// applied. Catching up, batches fill up to [`MAX_BATCH`]; live, each event is applied as soon
/// as no other is waiting. When an older version of the projection's code built its tables,
/// it rebuilds them beside the live ones meanwhile (see [`upgrade`]).
pub async fn run(
    projection: Projection,
    store: Arc<dyn EventStore>,
    db: ServiceDb,
) -> Result<(), RunError> {
    fn unheard(_: RunnerState) {}
    follow(projection, store, db, &unheard).await
}

async fn follow(
    projection: Projection,
    store: Arc<dyn EventStore>,
    db: ServiceDb,
    on_state: &(dyn Fn(RunnerState) + Sync),
) -> Result<(), RunError> {
    crate::db::ensure_checkpoint(&db, projection.name(), projection.version()).await?;
    let from = projection.checkpoint(&db).await? + 1;
    let live = async {
        let mut events = store.subscribe(from).ready_chunks(MAX_BATCH);
        while let Some(chunk) = events.next().await {
            let batch = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
            projection.apply(&db, &batch).await?;
        }
        Ok(())
    };
    futures::future::try_join(live, upgrade(projection, store.as_ref(), &db, on_state)).await?;
    Ok(())
}

/// How often a rebuild after an upgrade logs its progress.
const UPGRADE_PROGRESS: std::time::Duration = std::time::Duration::from_secs(10);

/// Rebuilds `projection` when an older version of its code built its tables: a release that
/// changes what the projection makes of events it has already applied raises its
/// [`Projection::version`], and the process writing the projection (its lease holder) then
/// fills fresh tables from the whole log and swaps them in, as `harmony projections rebuild`
/// does, while the live tables go on serving and being applied to. Tables a newer version
/// built (an older release running beside a newer one) are left as they are. A rebuild cut
/// short is started afresh by the next writer, which finds the old version still recorded.
async fn upgrade(
    projection: Projection,
    store: &dyn EventStore,
    db: &ServiceDb,
    on_state: &(dyn Fn(RunnerState) + Sync),
) -> Result<(), RunError> {
    let name = projection.name();
    let version = projection.version();
    let Some(standing) = crate::db::standing(db, name).await? else {
        return Ok(());
    };
    let built_by = standing.version;
    if standing.position == 0 || built_by == version {
        return Ok(());
    }
    if built_by > version {
        tracing::warn!(
            projection = name,
            built_by,
            version,
            "the read model was built by a newer release; applying with this one's code"
        );
        return Ok(());
    }
    tracing::info!(
        projection = name,
        built_by,
        version,
        "the read model was built by an older release: rebuilding it beside the live tables"
    );
    on_state(RunnerState::Rebuilding);
    let told = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |at: u64, head: u64| {
        if let Ok(mut told) = told.lock() {
            if told.elapsed() >= UPGRADE_PROGRESS {
                *told = std::time::Instant::now();
                tracing::info!(projection = name, at, head, "rebuilding");
            }
        }
    };
    let rebuilt = crate::rebuild::rebuild(store, db, &[projection], &progress).await?;
    tracing::info!(
        projection = name,
        version,
        events = rebuilt.events,
        position = rebuilt.position,
        "rebuilt and swapped in"
    );
    on_state(RunnerState::Running);
    Ok(())
}

/// What a projection's runner is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    /// Waiting for the lease another process holds.
    Standby,
    /// Holding the lease (or needing none) and applying the log.
    Running,
    /// Running, and rebuilding the read model's tables beside the live ones because an older
    /// release built them.
    Rebuilding,
    /// Stopped by an event it cannot apply.
    Stopped,
}

/// How often a lease holder checks that its lease connection still stands.
const LEASE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The PostgreSQL advisory lock key of `projection`'s lease ("HARMPR" and its index).
fn lease_key(projection: Projection) -> i64 {
    let index = Projection::ALL
        .iter()
        .position(|p| *p == projection)
        .expect("every projection is in ALL");
    0x4841_524D_5052_0000 + index as i64
}

/// Runs `projection` as its single writer. On PostgreSQL, shared by several processes, it
/// first takes the projection's lease (a session advisory lock on a connection of its own),
/// waiting while another process holds it: when that process dies its session ends, the lock
/// is released and this one takes over from the checkpoint. If its own lease connection
/// fails it stops with an error, to be started again. On SQLite, which one process serves,
/// it runs at once. `on_state` hears each change of state.
pub async fn run_leased(
    projection: Projection,
    store: Arc<dyn EventStore>,
    db: ServiceDb,
    on_state: &(dyn Fn(RunnerState) + Sync),
) -> Result<(), RunError> {
    let ServiceDb::Postgres(pool) = &db else {
        on_state(RunnerState::Running);
        return follow(projection, store, db, on_state).await;
    };
    on_state(RunnerState::Standby);
    let mut lease = pool.acquire().await.map_err(ServiceDbError::from)?.detach();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lease_key(projection))
        .execute(&mut lease)
        .await
        .map_err(ServiceDbError::from)?;
    tracing::info!(
        projection = projection.name(),
        "holding the projection's lease"
    );
    on_state(RunnerState::Running);
    let held = async {
        loop {
            tokio::time::sleep(LEASE_CHECK).await;
            if let Err(error) = sqlx::query("SELECT 1").execute(&mut lease).await {
                return error;
            }
        }
    };
    tokio::select! {
        ran = follow(projection, store, db.clone(), on_state) => ran,
        lost = held => Err(RunError::LeaseLost(lost.to_string())),
    }
}
