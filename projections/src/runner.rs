//! Applying the log to a projection: from its checkpoint, in batches, each batch with the
//! checkpoint in one transaction.

use std::sync::Arc;

use eventstore::EventStore;
use futures::StreamExt;

use crate::db::{ServiceDb, ServiceDbError};

pub use crate::projection::{Batch, Projection, RunError, MAX_BATCH};

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
