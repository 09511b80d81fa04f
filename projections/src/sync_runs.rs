//! The sync logs: one row per sync run, with its pages, for every integration (a personal
//! integration's shown only to its owner).

use domain::integration::{SyncKind, SyncTrigger};
use domain::{IntegrationEvent, IntegrationId};
use eventstore::RecordedEvent;
use serde::Serialize;

use crate::db::{fetch_all, Bind, ReadDb, ReadDbError, Target, WriteTx};
use crate::installed::ApplyError;

/// The projection's name, as its checkpoint is stored.
pub const NAME: &str = "sync_runs";

/// Its tables: the runs, and each run's pages.
pub(crate) const RUNS: &str = "sync_runs";
pub(crate) const PAGES: &str = "sync_run_pages";

/// One run, as the sync logs show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SyncRun {
    pub sync_id: String,
    pub integration_id: String,
    pub kind: String,
    pub trigger_kind: String,
    pub requested_by: Option<String>,
    pub requested_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub status: String,
    pub pulled: i64,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub duration_ms: Option<i64>,
    /// The paging cursor: where the run was requested in the log.
    pub position: i64,
}

/// A page a run pulled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SyncPage {
    pub object: String,
    pub page: i64,
    pub pulled: i64,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub cursor: Option<String>,
    pub at: String,
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The statements of one set of tables.
struct Sql {
    requested: String,
    started: String,
    page: String,
    counted: String,
    completed: String,
    failed: String,
}

impl Sql {
    fn new(target: Target) -> Self {
        let runs = target.table(RUNS);
        let pages = target.table(PAGES);
        Sql {
            requested: format!(
                "INSERT INTO {runs} (sync_id, integration_id, workspace, owner, kind, \
                 trigger_kind, requested_by, requested_at, status, pulled, created, updated, \
                 deleted, position) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'requested', 0, 0, 0, 0, $9) \
                 ON CONFLICT (sync_id) DO NOTHING"
            ),
            started: format!(
                "UPDATE {runs} SET status = 'running', started_at = $1 \
                 WHERE sync_id = $2 AND status = 'requested'"
            ),
            page: format!(
                "INSERT INTO {pages} (sync_id, object, page, pulled, created, updated, \
                 deleted, cursor, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (sync_id, object, page) DO NOTHING"
            ),
            counted: format!(
                "UPDATE {runs} SET pulled = pulled + $1, created = created + $2, \
                 updated = updated + $3, deleted = deleted + $4 \
                 WHERE sync_id = $5 AND status = 'running'"
            ),
            completed: format!(
                "UPDATE {runs} SET status = 'completed', finished_at = $1, pulled = $2, \
                 created = $3, updated = $4, deleted = $5, duration_ms = $6 WHERE sync_id = $7"
            ),
            failed: format!(
                "UPDATE {runs} SET status = $1, finished_at = $2, pulled = $3, \
                 created = $4, updated = $5, deleted = $6, error_code = $7, error_message = $8 \
                 WHERE sync_id = $9"
            ),
        }
    }
}

macro_rules! statements {
    ($tx:expr, $sql:expr, $events:expr) => {{
        let tx = $tx;
        for event in $events {
            let Some(integration) = event.stream.integration_id() else {
                continue;
            };
            let decoded = match event.decode::<IntegrationEvent>() {
                Ok(Some(decoded)) => decoded,
                Ok(None) => continue,
                Err(error) => {
                    return Err(ApplyError::Undecodable {
                        position: event.position,
                        reason: error.to_string(),
                    })
                }
            };
            let at = event.metadata.occurred_at.to_string();
            match decoded {
                IntegrationEvent::SyncRequested(requested) => {
                    let (trigger, by) = match &requested.trigger {
                        SyncTrigger::Manual { user } => ("manual", Some(user.to_string())),
                        SyncTrigger::Schedule => ("schedule", None),
                    };
                    let kind = match requested.kind {
                        SyncKind::Full => "full",
                        SyncKind::Incremental => "incremental",
                    };
                    sqlx::query(&$sql.requested)
                        .bind(requested.sync_id.to_string())
                        .bind(integration.to_string())
                        .bind(event.metadata.workspace.to_string())
                        .bind(event.metadata.owner.as_ref().map(ToString::to_string))
                        .bind(kind)
                        .bind(trigger)
                        .bind(by)
                        .bind(&at)
                        .bind(count(event.position))
                        .execute(&mut *tx)
                        .await?;
                }
                IntegrationEvent::SyncStarted(started) => {
                    sqlx::query(&$sql.started)
                        .bind(&at)
                        .bind(started.sync_id.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                IntegrationEvent::SyncProgressed(page) => {
                    let inserted = sqlx::query(&$sql.page)
                        .bind(page.sync_id.to_string())
                        .bind(&page.object)
                        .bind(i64::from(page.page))
                        .bind(count(page.counts.pulled))
                        .bind(count(page.counts.created))
                        .bind(count(page.counts.updated))
                        .bind(count(page.counts.deleted))
                        .bind(&page.cursor)
                        .bind(&at)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    // Counted once, however often the page is applied.
                    if inserted == 1 {
                        sqlx::query(&$sql.counted)
                            .bind(count(page.counts.pulled))
                            .bind(count(page.counts.created))
                            .bind(count(page.counts.updated))
                            .bind(count(page.counts.deleted))
                            .bind(page.sync_id.to_string())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                IntegrationEvent::SyncCompleted(done) => {
                    sqlx::query(&$sql.completed)
                        .bind(&at)
                        .bind(count(done.totals.pulled))
                        .bind(count(done.totals.created))
                        .bind(count(done.totals.updated))
                        .bind(count(done.totals.deleted))
                        .bind(count(done.duration_ms))
                        .bind(done.sync_id.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                IntegrationEvent::SyncFailed(failed) => {
                    // The domain stops a disconnected integration's work with the code
                    // `cancelled`: the logs call that run cancelled, not failed.
                    let status = if failed.code == "cancelled" {
                        "cancelled"
                    } else {
                        "failed"
                    };
                    sqlx::query(&$sql.failed)
                        .bind(status)
                        .bind(&at)
                        .bind(count(failed.totals.pulled))
                        .bind(count(failed.totals.created))
                        .bind(count(failed.totals.updated))
                        .bind(count(failed.totals.deleted))
                        .bind(&failed.code)
                        .bind(&failed.message)
                        .bind(failed.sync_id.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                // A disconnect stops what was waiting or running with `SyncFailed` (code
                // `cancelled`), handled above; nothing else changes a run.
                _ => {}
            }
        }
        Ok::<(), ApplyError>(())
    }};
}

/// Applies `events` to the sync logs' `target` tables inside `tx` (the runner moves the
/// checkpoint in the same transaction). Applying the same events again changes nothing.
pub(crate) async fn apply_in(
    tx: &mut WriteTx,
    target: Target,
    events: &[RecordedEvent],
) -> Result<(), ApplyError> {
    let sql = Sql::new(target);
    match tx {
        WriteTx::Sqlite(tx) => statements!(&mut **tx, &sql, events),
        WriteTx::Postgres(tx) => statements!(&mut **tx, &sql, events),
    }
}

/// Which runs to list.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `requested`, `running`, `completed`, `failed` or `cancelled`.
    pub status: Option<String>,
    /// `full` or `incremental`.
    pub kind: Option<String>,
    /// Requested at or after (RFC 3339, UTC, as stored).
    pub since: Option<String>,
    /// Requested before.
    pub until: Option<String>,
}

/// A page of runs, newest first, and the cursor of the next page if there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunsPage {
    pub runs: Vec<SyncRun>,
    pub next_cursor: Option<i64>,
}

/// The sync logs of `integration` as `user` of `workspace` may see them (a personal
/// integration's only by its owner), newest first, `limit` at a time from `cursor`.
pub async fn list(
    db: &ReadDb,
    workspace: &str,
    user: &str,
    integration: IntegrationId,
    filter: &Filter,
    cursor: Option<i64>,
    limit: u32,
) -> Result<RunsPage, ReadDbError> {
    let mut sql = format!(
        "SELECT sync_id, integration_id, kind, trigger_kind, requested_by, requested_at, started_at, \
         finished_at, status, pulled, created, updated, deleted, error_code, error_message, \
         duration_ms, position FROM {RUNS} \
         WHERE integration_id = $1 AND workspace = $2 AND (owner IS NULL OR owner = $3)",
    );
    let mut binds = vec![
        Bind::Text(integration.to_string()),
        Bind::Text(workspace.to_owned()),
        Bind::Text(user.to_owned()),
    ];
    let mut add = |clause: &str, bind: Bind| {
        binds.push(bind);
        sql.push_str(&format!(" AND {clause} ${}", binds.len()));
    };
    if let Some(status) = &filter.status {
        add("status =", Bind::Text(status.clone()));
    }
    if let Some(kind) = &filter.kind {
        add("kind =", Bind::Text(kind.clone()));
    }
    if let Some(since) = &filter.since {
        add("requested_at >=", Bind::Text(since.clone()));
    }
    if let Some(until) = &filter.until {
        add("requested_at <", Bind::Text(until.clone()));
    }
    if let Some(cursor) = cursor {
        add("position <", Bind::Int(cursor));
    }
    let limit = limit.clamp(1, 500);
    sql.push_str(&format!(" ORDER BY position DESC LIMIT {}", limit + 1));
    let mut runs: Vec<SyncRun> = fetch_all(db, &sql, &binds).await?;
    let next_cursor = if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        runs.last().map(|run| run.position)
    } else {
        None
    };
    Ok(RunsPage { runs, next_cursor })
}

/// The pages of one run, in the order they were pulled.
pub async fn pages(db: &ReadDb, sync_id: &str) -> Result<Vec<SyncPage>, ReadDbError> {
    let sql = format!(
        "SELECT object, page, pulled, created, updated, deleted, cursor, at \
         FROM {PAGES} WHERE sync_id = $1 ORDER BY at, object, page"
    );
    fetch_all(db, &sql, &[Bind::Text(sync_id.to_owned())]).await
}
