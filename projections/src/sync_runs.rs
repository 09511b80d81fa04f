//! The sync logs: one row per sync run, with its pages, for every integration (a personal
//! integration's shown only to its owner).

use std::collections::{HashMap, HashSet};

use domain::integration::{RecordCounts, SyncKind, SyncTrigger};
use domain::{IntegrationEvent, IntegrationId, SyncId};
use eventstore::RecordedEvent;
use serde::Serialize;

use crate::db::{fetch_all, Bind, ServiceDb, ServiceDbError, Target, WriteTx};
use crate::installed::ApplyError;

/// The projection's name, as its checkpoint is stored.
pub const NAME: &str = "sync_runs";

/// The version of what this code makes of the events. 2: consecutive runs that changed
/// nothing share a row (`checks`), and keep no page rows.
pub const VERSION: u64 = 2;

/// Its tables: the runs, and each run's pages.
pub(crate) const RUNS: &str = "sync_runs";
pub(crate) const PAGES: &str = "sync_run_pages";

/// One run, as the sync logs show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// How many runs this row stands for: consecutive completed runs that changed nothing
    /// share one row, which shows the last of them (its id, counts and duration).
    pub checks: i64,
    /// When the first of those runs ended (for a row of one run, when it ended).
    pub first_checked_at: Option<String>,
    /// When the last of them ended.
    pub last_checked_at: Option<String>,
}

/// A page a run pulled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// A run as stored, every column.
#[derive(Clone, Debug, sqlx::FromRow)]
struct Stored {
    sync_id: String,
    integration_id: String,
    workspace: String,
    owner: Option<String>,
    kind: String,
    trigger_kind: String,
    requested_by: Option<String>,
    requested_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    status: String,
    pulled: i64,
    created: i64,
    updated: i64,
    deleted: i64,
    error_code: Option<String>,
    error_message: Option<String>,
    duration_ms: Option<i64>,
    position: i64,
    checks: i64,
    first_checked_at: Option<String>,
    last_checked_at: Option<String>,
}

const RUN_COLUMNS: &str = "sync_id, integration_id, workspace, owner, kind, trigger_kind, \
    requested_by, requested_at, started_at, finished_at, status, pulled, created, updated, \
    deleted, error_code, error_message, duration_ms, position, checks, first_checked_at, \
    last_checked_at";

const RUN_UPDATE: &str = "ON CONFLICT (sync_id) DO UPDATE SET started_at = excluded.started_at, \
    finished_at = excluded.finished_at, status = excluded.status, pulled = excluded.pulled, \
    created = excluded.created, updated = excluded.updated, deleted = excluded.deleted, \
    error_code = excluded.error_code, error_message = excluded.error_message, \
    duration_ms = excluded.duration_ms, checks = excluded.checks, \
    first_checked_at = excluded.first_checked_at, last_checked_at = excluded.last_checked_at";

const PAGE_COLUMNS: &str = "sync_id, object, page, pulled, created, updated, deleted, cursor, at";

impl Stored {
    fn binds(self) -> Vec<Bind> {
        vec![
            Bind::Text(self.sync_id),
            Bind::Text(self.integration_id),
            Bind::Text(self.workspace),
            Bind::MaybeText(self.owner),
            Bind::Text(self.kind),
            Bind::Text(self.trigger_kind),
            Bind::MaybeText(self.requested_by),
            Bind::Text(self.requested_at),
            Bind::MaybeText(self.started_at),
            Bind::MaybeText(self.finished_at),
            Bind::Text(self.status),
            Bind::Int(self.pulled),
            Bind::Int(self.created),
            Bind::Int(self.updated),
            Bind::Int(self.deleted),
            Bind::MaybeText(self.error_code),
            Bind::MaybeText(self.error_message),
            Bind::MaybeInt(self.duration_ms),
            Bind::Int(self.position),
            Bind::Int(self.checks),
            Bind::MaybeText(self.first_checked_at),
            Bind::MaybeText(self.last_checked_at),
        ]
    }

    /// A completed run that created, updated and deleted nothing.
    fn quiet(&self) -> bool {
        self.status == "completed" && self.created == 0 && self.updated == 0 && self.deleted == 0
    }

    /// Whether `self`, a quiet run, continues the quiet row `earlier`: the same kind of run,
    /// asked for the same way.
    fn continues(&self, earlier: &Stored) -> bool {
        earlier.quiet()
            && earlier.integration_id == self.integration_id
            && earlier.kind == self.kind
            && earlier.trigger_kind == self.trigger_kind
            && earlier.requested_by == self.requested_by
    }

    fn set_counts(&mut self, counts: &RecordCounts) {
        self.pulled = count(counts.pulled);
        self.created = count(counts.created);
        self.updated = count(counts.updated);
        self.deleted = count(counts.deleted);
    }
}

/// Applies `events` to the sync logs' `target` tables inside `tx` (the runner moves the
/// checkpoint in the same transaction): the runs they touch are read in one statement,
/// changed in memory in log order, and written back with their new pages in as few
/// statements as the database allows.
pub(crate) async fn apply_in<'a>(
    tx: &mut WriteTx,
    target: Target,
    events: impl Iterator<Item = (&'a RecordedEvent, Option<&'a IntegrationEvent>)>,
) -> Result<(), ApplyError> {
    let (runs_table, pages_table) = (target.table(RUNS), target.table(PAGES));
    let mut decoded = Vec::new();
    let mut referenced: Vec<String> = Vec::new();
    let mut seen: HashSet<SyncId> = HashSet::new();
    for (event, sync_event) in events {
        let (Some(integration), Some(sync_event)) = (event.stream.integration_id(), sync_event)
        else {
            continue;
        };
        let sync_id = match sync_event {
            IntegrationEvent::SyncRequested(e) => e.sync_id,
            IntegrationEvent::SyncStarted(e) => e.sync_id,
            IntegrationEvent::SyncProgressed(e) => e.sync_id,
            IntegrationEvent::SyncCompleted(e) => e.sync_id,
            IntegrationEvent::SyncFailed(e) => e.sync_id,
            // Nothing else changes a run: a disconnect stops what was waiting or running with
            // `SyncFailed` (code `cancelled`).
            _ => continue,
        };
        if seen.insert(sync_id) {
            referenced.push(sync_id.to_string());
        }
        decoded.push((event, integration, sync_event));
    }
    let mut runs: HashMap<String, Stored> = tx
        .fetch_in::<Stored>(
            &format!("SELECT {RUN_COLUMNS} FROM {runs_table} WHERE sync_id IN "),
            &referenced,
        )
        .await?
        .into_iter()
        .map(|run| (run.sync_id.clone(), run))
        .collect();
    let (mut changed, mut changed_set): (Vec<String>, HashSet<SyncId>) = Default::default();
    // Quiet runs (their pages go), and the rows they absorbed (which go whole).
    let (mut quiet, mut merged): (Vec<String>, Vec<String>) = Default::default();
    let mut pages = Vec::new();
    let mut page_keys: HashSet<(String, String, u32)> = HashSet::new();
    for (event, integration, sync_event) in decoded {
        let at = event.metadata.occurred_at.to_string();
        let mut touch = |id: &SyncId| {
            if changed_set.insert(*id) {
                changed.push(id.to_string());
            }
        };
        match sync_event {
            IntegrationEvent::SyncRequested(requested) => {
                let key = requested.sync_id.to_string();
                if runs.contains_key(&key) {
                    continue;
                }
                let (trigger, by) = match &requested.trigger {
                    SyncTrigger::Manual { user } => ("manual", Some(user.to_string())),
                    SyncTrigger::Schedule => ("schedule", None),
                };
                let kind = match requested.kind {
                    SyncKind::Full => "full",
                    SyncKind::Incremental => "incremental",
                };
                touch(&requested.sync_id);
                runs.insert(
                    key.clone(),
                    Stored {
                        sync_id: key,
                        integration_id: integration.to_string(),
                        workspace: event.metadata.workspace.to_string(),
                        owner: event.metadata.owner.as_ref().map(ToString::to_string),
                        kind: kind.into(),
                        trigger_kind: trigger.into(),
                        requested_by: by,
                        requested_at: at,
                        started_at: None,
                        finished_at: None,
                        status: "requested".into(),
                        pulled: 0,
                        created: 0,
                        updated: 0,
                        deleted: 0,
                        error_code: None,
                        error_message: None,
                        duration_ms: None,
                        position: count(event.position),
                        checks: 1,
                        first_checked_at: None,
                        last_checked_at: None,
                    },
                );
            }
            IntegrationEvent::SyncStarted(started) => {
                let key = started.sync_id.to_string();
                if let Some(run) = runs.get_mut(&key).filter(|r| r.status == "requested") {
                    run.status = "running".into();
                    run.started_at = Some(at);
                    touch(&started.sync_id);
                }
            }
            IntegrationEvent::SyncProgressed(page) => {
                let key = page.sync_id.to_string();
                if page_keys.insert((key.clone(), page.object.clone(), page.page)) {
                    pages.push(vec![
                        Bind::Text(key.clone()),
                        Bind::Text(page.object.clone()),
                        Bind::Int(i64::from(page.page)),
                        Bind::Int(count(page.counts.pulled)),
                        Bind::Int(count(page.counts.created)),
                        Bind::Int(count(page.counts.updated)),
                        Bind::Int(count(page.counts.deleted)),
                        Bind::MaybeText(page.cursor.clone()),
                        Bind::Text(at),
                    ]);
                }
                // The run's counts so far add up every page reported, as the domain's
                // totals do (a page pulled again after a retry counts again).
                if let Some(run) = runs.get_mut(&key).filter(|r| r.status == "running") {
                    run.pulled += count(page.counts.pulled);
                    run.created += count(page.counts.created);
                    run.updated += count(page.counts.updated);
                    run.deleted += count(page.counts.deleted);
                    touch(&page.sync_id);
                }
            }
            IntegrationEvent::SyncCompleted(done) => {
                let key = done.sync_id.to_string();
                let Some(run) = runs.get_mut(&key) else {
                    continue;
                };
                run.status = "completed".into();
                if let Some(detail) = &done.detail {
                    // The run's start is in its detail, not in this log.
                    run.started_at = Some(detail.started_at.to_string());
                }
                run.finished_at = Some(at.clone());
                run.first_checked_at = Some(at.clone());
                run.last_checked_at = Some(at);
                run.set_counts(&done.totals);
                run.duration_ms = Some(count(done.duration_ms));
                touch(&done.sync_id);
                if !run.quiet() {
                    continue;
                }
                // A run that changed nothing keeps no pages, and joins the quiet row just
                // before it, if that is one.
                quiet.push(key.clone());
                let (integration_id, position) = (run.integration_id.clone(), run.position);
                let Some(earlier) =
                    row_before(tx, &runs_table, &runs, &integration_id, position).await?
                else {
                    continue;
                };
                let run = runs.get_mut(&key).expect("the run was found above");
                if run.continues(&earlier) {
                    run.checks += earlier.checks;
                    run.pulled += earlier.pulled;
                    run.first_checked_at = earlier.first_checked_at.or(earlier.finished_at);
                    runs.remove(&earlier.sync_id);
                    merged.push(earlier.sync_id);
                }
            }
            IntegrationEvent::SyncFailed(failed) => {
                if let Some(run) = runs.get_mut(&failed.sync_id.to_string()) {
                    // The domain stops a disconnected integration's work with the code
                    // `cancelled`: the logs call that run cancelled, not failed.
                    run.status = if failed.code == "cancelled" {
                        "cancelled"
                    } else {
                        "failed"
                    }
                    .into();
                    if let Some(detail) = &failed.detail {
                        run.started_at = Some(detail.started_at.to_string());
                    }
                    run.finished_at = Some(at.clone());
                    run.first_checked_at = Some(at.clone());
                    run.last_checked_at = Some(at);
                    run.set_counts(&failed.totals);
                    run.error_code = Some(failed.code.clone());
                    run.error_message = Some(failed.message.clone());
                    touch(&failed.sync_id);
                }
            }
            _ => {}
        }
    }
    if !merged.is_empty() {
        tx.execute_in(
            &format!("DELETE FROM {runs_table} WHERE sync_id IN "),
            &merged,
        )
        .await?;
    }
    quiet.extend(merged);
    if !quiet.is_empty() {
        pages.retain(
            |page| !matches!(page.first(), Some(Bind::Text(sync_id)) if quiet.contains(sync_id)),
        );
        tx.execute_in(
            &format!("DELETE FROM {pages_table} WHERE sync_id IN "),
            &quiet,
        )
        .await?;
    }
    let rows: Vec<Vec<Bind>> = changed
        .into_iter()
        .filter_map(|key| runs.remove(&key))
        .map(Stored::binds)
        .collect();
    tx.insert_rows(
        &format!("INSERT INTO {runs_table} ({RUN_COLUMNS}) "),
        RUN_UPDATE,
        &rows,
    )
    .await?;
    tx.insert_rows(
        &format!("INSERT INTO {pages_table} ({PAGE_COLUMNS}) "),
        "ON CONFLICT (sync_id, object, page) DO NOTHING",
        &pages,
    )
    .await?;
    Ok(())
}

/// The row of `integration` just before `position` (the newest requested earlier), as this
/// batch has it in `runs` or else as stored. A row this batch merged away is gone from `runs`
/// and still stored, but the row that absorbed it stands after it, so it is never the newest.
async fn row_before(
    tx: &mut WriteTx,
    runs_table: &str,
    runs: &HashMap<String, Stored>,
    integration_id: &str,
    position: i64,
) -> Result<Option<Stored>, ServiceDbError> {
    let in_batch = runs
        .values()
        .filter(|r| r.integration_id == integration_id && r.position < position)
        .max_by_key(|r| r.position);
    let stored: Option<Stored> = tx
        .fetch_all::<Stored>(
            &format!(
                "SELECT {RUN_COLUMNS} FROM {runs_table} WHERE integration_id = $1 \
                 AND position < $2 ORDER BY position DESC LIMIT 1"
            ),
            &[Bind::Text(integration_id.to_owned()), Bind::Int(position)],
        )
        .await?
        .into_iter()
        .next();
    Ok(match (in_batch, stored) {
        (Some(mine), Some(theirs)) if theirs.position > mine.position => {
            // Stored, and possibly changed in this batch: this batch's copy is the current one.
            Some(runs.get(&theirs.sync_id).cloned().unwrap_or(theirs))
        }
        (Some(mine), _) => Some(mine.clone()),
        (None, Some(theirs)) => Some(runs.get(&theirs.sync_id).cloned().unwrap_or(theirs)),
        (None, None) => None,
    })
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunsPage {
    pub runs: Vec<SyncRun>,
    pub next_cursor: Option<i64>,
}

/// Run `sync_id` of `integration` as `user` of `workspace` may see it; `None` if there is no
/// such run there (or it now shares the row of a later run that changed nothing either).
pub async fn get(
    db: &ServiceDb,
    workspace: &str,
    user: &str,
    integration: IntegrationId,
    sync_id: SyncId,
) -> Result<Option<SyncRun>, ServiceDbError> {
    let sql = format!(
        "SELECT sync_id, integration_id, kind, trigger_kind, requested_by, requested_at, started_at, \
         finished_at, status, pulled, created, updated, deleted, error_code, error_message, \
         duration_ms, position, checks, first_checked_at, last_checked_at FROM {RUNS} \
         WHERE integration_id = $1 AND workspace = $2 AND (owner IS NULL OR owner = $3) \
         AND sync_id = $4"
    );
    let runs: Vec<SyncRun> = fetch_all(
        db,
        &sql,
        &[
            Bind::Text(integration.to_string()),
            Bind::Text(workspace.to_owned()),
            Bind::Text(user.to_owned()),
            Bind::Text(sync_id.to_string()),
        ],
    )
    .await?;
    Ok(runs.into_iter().next())
}

/// The sync logs of `integration` as `user` of `workspace` may see them (a personal
/// integration's only by its owner), newest first, `limit` at a time from `cursor`.
pub async fn list(
    db: &ServiceDb,
    workspace: &str,
    user: &str,
    integration: IntegrationId,
    filter: &Filter,
    cursor: Option<i64>,
    limit: u32,
) -> Result<RunsPage, ServiceDbError> {
    let mut sql = format!(
        "SELECT sync_id, integration_id, kind, trigger_kind, requested_by, requested_at, started_at, \
         finished_at, status, pulled, created, updated, deleted, error_code, error_message, \
         duration_ms, position, checks, first_checked_at, last_checked_at FROM {RUNS} \
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
pub async fn pages(db: &ServiceDb, sync_id: &str) -> Result<Vec<SyncPage>, ServiceDbError> {
    let sql = format!(
        "SELECT object, page, pulled, created, updated, deleted, cursor, at \
         FROM {PAGES} WHERE sync_id = $1 ORDER BY at, object, page"
    );
    fetch_all(db, &sql, &[Bind::Text(sync_id.to_owned())]).await
}

/// Forgets the sync-run detail that ended before `cutoff` (the retention): every page row,
/// and the rows of completed runs that changed nothing. The rows of runs that changed
/// something, or failed, stay: the sync logs keep what happened, not how often nothing did.
/// How many rows went. Timestamps are stored in one fixed textual form, so they compare as
/// text.
pub async fn forget_detail_before(
    db: &ServiceDb,
    cutoff: domain::Timestamp,
) -> Result<u64, ServiceDbError> {
    let cutoff = Bind::Text(cutoff.to_string());
    let pages = crate::db::execute(
        db,
        &format!("DELETE FROM {PAGES} WHERE at < $1"),
        std::slice::from_ref(&cutoff),
    )
    .await?;
    let runs = crate::db::execute(
        db,
        &format!(
            "DELETE FROM {RUNS} WHERE status = 'completed' AND created = 0 AND updated = 0 \
             AND deleted = 0 AND COALESCE(last_checked_at, finished_at) < $1"
        ),
        &[cutoff],
    )
    .await?;
    Ok(pages + runs)
}

/// How many runs the sync logs hold with one status, and the records they pulled: the whole
/// service's totals, naming no workspace or integration (what `/metrics` reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusTotals {
    pub status: String,
    pub runs: i64,
    pub pulled: i64,
}

/// The sync logs' totals by status, over every workspace.
pub async fn totals_by_status(db: &ServiceDb) -> Result<Vec<StatusTotals>, ServiceDbError> {
    let sql = format!(
        "SELECT status, CAST(COALESCE(SUM(checks), 0) AS BIGINT), \
         CAST(COALESCE(SUM(pulled), 0) AS BIGINT) FROM {RUNS} \
         GROUP BY status ORDER BY status"
    );
    let rows: Vec<(String, i64, i64)> = fetch_all(db, &sql, &[]).await?;
    Ok(rows
        .into_iter()
        .map(|(status, runs, pulled)| StatusTotals {
            status,
            runs,
            pulled,
        })
        .collect())
}
