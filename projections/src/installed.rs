//! Marketplace > Installed: one row per integration of a workspace, deleted ones gone.
//!
//! Each row keeps the integration folded by the domain (`state`, as JSON, with the stream
//! `version` it reached), so applying the next events runs the domain's own `apply` and the
//! status and available actions can never disagree with what the commands allow.

use std::collections::HashMap;

use domain::integration::{Scope, SyncOutcome};
use domain::{Actor, Aggregate, Integration, IntegrationEvent, Status};
use eventstore::RecordedEvent;
use serde::Serialize;

use crate::db::{fetch_all, Bind, ServiceDb, ServiceDbError, Target, WriteTx};

/// The projection's name, as its checkpoint is stored.
pub const NAME: &str = "installed";

/// The version of what this code makes of the events. 2: an integration reauthenticated after
/// a failed sync is `connected` (the state remembers when it was reauthenticated). 3: rows say
/// when a run last changed something (`last_changed_at`). 4: an integration with a run
/// requested and not yet ended is `syncing` (a run's start is in its detail, not in the log).
pub const VERSION: u64 = 4;

/// Its table.
pub(crate) const TABLE: &str = "installed";

/// A row of Installed, as queries return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstalledRow {
    pub integration_id: String,
    pub workspace: String,
    pub app: String,
    /// `workspace` or `personal`.
    pub scope: String,
    pub owner: Option<String>,
    /// `connected`, `needs_reauth`, `syncing`, `error` or `disconnected`.
    pub status: String,
    pub connected_by: String,
    pub connected_at: String,
    /// When the last run ended: when the integration was last checked, whether or not the
    /// run found anything.
    pub last_sync_at: Option<String>,
    pub last_sync_outcome: Option<String>,
    /// When a run last created, updated or deleted a record; older than `last_sync_at` when
    /// the runs since found nothing new.
    pub last_changed_at: Option<String>,
    pub records_pulled: i64,
    pub records_created: i64,
    pub records_updated: i64,
    pub records_deleted: i64,
    pub mapping_version: i64,
    pub actions: Vec<String>,
}

/// Every status a row of Installed can have (what [`row_of`] gives), for filters to check.
pub const STATUSES: [&str; 5] = [
    "connected",
    "needs_reauth",
    "syncing",
    "error",
    "disconnected",
];

/// The row an integration shows as, or `None` when it has no place in Installed (deleted,
/// abandoned, or not connected yet).
pub fn row_of(integration: &Integration) -> Option<InstalledRow> {
    let profile = integration.profile.as_ref()?;
    let status = match integration.status {
        // A run requested and not ended is under way or about to be: its start is recorded in
        // its detail, outside the integration's stream.
        Status::Connected
            if integration.running_sync.is_some() || integration.pending_sync.is_some() =>
        {
            "syncing"
        }
        Status::Connected if integration.failing() => "error",
        Status::Connected => "connected",
        Status::NeedsReauth => "needs_reauth",
        Status::Disconnected => "disconnected",
        Status::New | Status::Deleted | Status::Abandoned => return None,
    };
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let totals = integration.last_sync.as_ref().map(|s| &s.totals);
    Some(InstalledRow {
        integration_id: profile.id.to_string(),
        workspace: profile.workspace.to_string(),
        app: profile.app.clone(),
        scope: match profile.scope {
            Scope::Workspace => "workspace".into(),
            Scope::Personal { .. } => "personal".into(),
        },
        owner: profile.scope.owner().map(ToString::to_string),
        status: status.into(),
        connected_by: match &profile.connected_by {
            Actor::User(user) => user.to_string(),
            Actor::System(reason) => format!("system: {reason}"),
        },
        connected_at: profile.connected_at.to_string(),
        last_sync_at: integration
            .last_sync
            .as_ref()
            .map(|s| s.finished_at.to_string()),
        last_sync_outcome: integration.last_sync.as_ref().map(|s| {
            match s.outcome {
                SyncOutcome::Completed => "completed",
                SyncOutcome::Failed { .. } => "failed",
            }
            .to_owned()
        }),
        last_changed_at: integration.last_changed_at.map(|at| at.to_string()),
        records_pulled: totals.map_or(0, |t| count(t.pulled)),
        records_created: totals.map_or(0, |t| count(t.created)),
        records_updated: totals.map_or(0, |t| count(t.updated)),
        records_deleted: totals.map_or(0, |t| count(t.deleted)),
        mapping_version: i64::from(integration.mapping_version),
        actions: integration
            .available_actions()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    })
}

/// An integration being folded in a batch: its state, the version reached, whether a row
/// exists for it.
struct Folding {
    state: Integration,
    version: u64,
    changed: bool,
}

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] ServiceDbError),
    #[error("the event at position {position} cannot be decoded: {reason}")]
    Undecodable { position: u64, reason: String },
}

impl From<sqlx::Error> for ApplyError {
    fn from(error: sqlx::Error) -> Self {
        ApplyError::Db(ServiceDbError::Sql(error))
    }
}

/// The columns of a row, in the order [`row_binds`] gives them.
const COLUMNS: &str = "integration_id, workspace, app, scope, owner, status, connected_by, \
    connected_at, last_sync_at, last_sync_outcome, last_changed_at, records_pulled, \
    records_created, records_updated, records_deleted, mapping_version, actions, version, state";

/// What an upsert replaces: every column but the key.
const UPDATE: &str = "ON CONFLICT (integration_id) DO UPDATE SET workspace = excluded.workspace, \
    app = excluded.app, scope = excluded.scope, owner = excluded.owner, \
    status = excluded.status, connected_by = excluded.connected_by, \
    connected_at = excluded.connected_at, last_sync_at = excluded.last_sync_at, \
    last_sync_outcome = excluded.last_sync_outcome, last_changed_at = excluded.last_changed_at, \
    records_pulled = excluded.records_pulled, \
    records_created = excluded.records_created, records_updated = excluded.records_updated, \
    records_deleted = excluded.records_deleted, mapping_version = excluded.mapping_version, \
    actions = excluded.actions, version = excluded.version, state = excluded.state";

fn row_binds(row: InstalledRow, version: u64, state: String) -> Vec<Bind> {
    vec![
        Bind::Text(row.integration_id),
        Bind::Text(row.workspace),
        Bind::Text(row.app),
        Bind::Text(row.scope),
        Bind::MaybeText(row.owner),
        Bind::Text(row.status),
        Bind::Text(row.connected_by),
        Bind::Text(row.connected_at),
        Bind::MaybeText(row.last_sync_at),
        Bind::MaybeText(row.last_sync_outcome),
        Bind::MaybeText(row.last_changed_at),
        Bind::Int(row.records_pulled),
        Bind::Int(row.records_created),
        Bind::Int(row.records_updated),
        Bind::Int(row.records_deleted),
        Bind::Int(row.mapping_version),
        Bind::Text(
            serde_json::to_string(&row.actions).expect("a list of strings always serializes"),
        ),
        Bind::Int(i64::try_from(version).unwrap_or(i64::MAX)),
        Bind::Text(state),
    ]
}

/// Integrations folded by a rebuild and not yet written: a rebuild's copy is read by nobody
/// until the swap, so each row is written once at the end (or when too many wait) rather than
/// after every batch that touches it.
#[derive(Default)]
pub struct Pending {
    folding: HashMap<String, Folding>,
    /// Keys in the order they were first touched, for writes in a stable order.
    order: Vec<String>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("integrations", &self.folding.len())
            .finish()
    }
}

/// How many integrations a rebuild holds in memory before writing them.
const PENDING_LIMIT: usize = 50_000;

/// Folds `events` (in log order) into Installed's `target` tables inside `tx` (the runner
/// moves the checkpoint in the same transaction): the rows of the integrations they touch are
/// read in one statement, folded with the domain, and written back in as few as the database
/// allows. With `pending` (a rebuild), folded rows stay in memory until [`flush`]. Events of
/// other streams, events already folded, and types the domain does not know are passed over.
pub(crate) async fn apply_in<'a>(
    tx: &mut WriteTx,
    target: Target,
    events: impl Iterator<Item = (&'a RecordedEvent, Option<&'a IntegrationEvent>)> + Clone,
    pending: Option<&mut Pending>,
) -> Result<(), ApplyError> {
    let mut own = Pending::default();
    let held = pending.is_some();
    let pending = pending.unwrap_or(&mut own);
    let table = target.table(TABLE);
    let mut missing: Vec<String> = Vec::new();
    for (event, _) in events.clone() {
        if let Some(integration) = event.stream.integration_id() {
            let key = integration.to_string();
            if !pending.folding.contains_key(&key) {
                pending.folding.insert(
                    key.clone(),
                    Folding {
                        state: Integration::default(),
                        version: 0,
                        changed: false,
                    },
                );
                pending.order.push(key.clone());
                missing.push(key);
            }
        }
    }
    let stored: Vec<(String, String, i64)> = tx
        .fetch_in(
            &format!("SELECT integration_id, state, version FROM {table} WHERE integration_id IN "),
            &missing,
        )
        .await?;
    for (key, state, version) in stored {
        let state = serde_json::from_str(&state).map_err(|error| {
            ApplyError::Db(ServiceDbError::Invalid(format!(
                "the stored state of {key} does not read back: {error}"
            )))
        })?;
        pending.folding.insert(
            key,
            Folding {
                state,
                version: u64::try_from(version).unwrap_or(0),
                changed: false,
            },
        );
    }
    for (event, decoded) in events {
        let Some(integration) = event.stream.integration_id() else {
            continue;
        };
        let entry = pending
            .folding
            .get_mut(&integration.to_string())
            .expect("every integration of the batch has an entry");
        if event.version <= entry.version {
            continue;
        }
        if let Some(decoded) = decoded {
            entry.state.apply(decoded, &event.metadata);
        }
        entry.version = event.version;
        entry.changed = true;
    }
    if !held || pending.folding.len() > PENDING_LIMIT {
        flush(tx, target, pending).await?;
    }
    Ok(())
}

/// Writes what `pending` holds and empties it.
pub(crate) async fn flush(
    tx: &mut WriteTx,
    target: Target,
    pending: &mut Pending,
) -> Result<(), ApplyError> {
    let table = target.table(TABLE);
    let (mut upserts, mut deletes) = (Vec::new(), Vec::new());
    for key in std::mem::take(&mut pending.order) {
        let Some(entry) = pending.folding.remove(&key) else {
            continue;
        };
        if !entry.changed {
            continue;
        }
        match row_of(&entry.state) {
            Some(row) => {
                let state = serde_json::to_string(&entry.state)
                    .map_err(|error| ApplyError::Db(ServiceDbError::Invalid(error.to_string())))?;
                upserts.push(row_binds(row, entry.version, state));
            }
            None => deletes.push(key),
        }
    }
    pending.folding.clear();
    tx.insert_rows(
        &format!("INSERT INTO {table} ({COLUMNS}) "),
        UPDATE,
        &upserts,
    )
    .await?;
    tx.execute_in(
        &format!("DELETE FROM {table} WHERE integration_id IN "),
        &deletes,
    )
    .await?;
    Ok(())
}

/// A row as stored: `actions` still JSON text.
#[derive(sqlx::FromRow)]
struct Stored {
    integration_id: String,
    workspace: String,
    app: String,
    scope: String,
    owner: Option<String>,
    status: String,
    connected_by: String,
    connected_at: String,
    last_sync_at: Option<String>,
    last_sync_outcome: Option<String>,
    last_changed_at: Option<String>,
    records_pulled: i64,
    records_created: i64,
    records_updated: i64,
    records_deleted: i64,
    mapping_version: i64,
    actions: String,
}

impl From<Stored> for InstalledRow {
    fn from(t: Stored) -> Self {
        InstalledRow {
            integration_id: t.integration_id,
            workspace: t.workspace,
            app: t.app,
            scope: t.scope,
            owner: t.owner,
            status: t.status,
            connected_by: t.connected_by,
            connected_at: t.connected_at,
            last_sync_at: t.last_sync_at,
            last_sync_outcome: t.last_sync_outcome,
            last_changed_at: t.last_changed_at,
            records_pulled: t.records_pulled,
            records_created: t.records_created,
            records_updated: t.records_updated,
            records_deleted: t.records_deleted,
            mapping_version: t.mapping_version,
            actions: serde_json::from_str(&t.actions).unwrap_or_default(),
        }
    }
}

/// Which rows of Installed to list; `None` is any.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `connected`, `needs_reauth`, `syncing`, `error` or `disconnected`.
    pub status: Option<String>,
    /// The app's id, e.g. `hubspot`.
    pub app: Option<String>,
    /// `workspace` or `personal`.
    pub scope: Option<String>,
}

/// A page of Installed, ordered by app then integration, and the cursor of the next page if
/// there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstalledPage {
    pub rows: Vec<InstalledRow>,
    pub next_cursor: Option<String>,
}

/// The most rows one page holds.
pub const MAX_PAGE: u32 = 500;

/// Installed as `user` of `workspace` sees it — the workspace integrations and the user's own
/// personal ones, never another user's — filtered, `limit` rows at a time from `cursor` (a
/// page's `next_cursor`).
pub async fn page(
    db: &ServiceDb,
    workspace: &str,
    user: &str,
    filter: &Filter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<InstalledPage, ServiceDbError> {
    let mut sql = format!(
        "SELECT integration_id, workspace, app, scope, owner, status, connected_by, \
         connected_at, last_sync_at, last_sync_outcome, last_changed_at, records_pulled, \
         records_created, \
         records_updated, records_deleted, mapping_version, actions FROM {TABLE} \
         WHERE workspace = $1 AND (owner IS NULL OR owner = $2)"
    );
    let mut binds = vec![
        Bind::Text(workspace.to_owned()),
        Bind::Text(user.to_owned()),
    ];
    for (column, value) in [
        ("status", &filter.status),
        ("app", &filter.app),
        ("scope", &filter.scope),
    ] {
        if let Some(value) = value {
            binds.push(Bind::Text(value.clone()));
            sql.push_str(&format!(" AND {column} = ${}", binds.len()));
        }
    }
    if let Some(cursor) = cursor {
        let (app, id) = cursor
            .rsplit_once('/')
            .ok_or_else(|| ServiceDbError::BadCursor(cursor.to_owned()))?;
        binds.push(Bind::Text(app.to_owned()));
        binds.push(Bind::Text(id.to_owned()));
        sql.push_str(&format!(
            " AND (app > ${0} OR (app = ${0} AND integration_id > ${1}))",
            binds.len() - 1,
            binds.len()
        ));
    }
    let limit = limit.clamp(1, MAX_PAGE);
    sql.push_str(&format!(
        " ORDER BY app, integration_id LIMIT {}",
        limit + 1
    ));
    let mut rows: Vec<InstalledRow> = fetch_all::<Stored>(db, &sql, &binds)
        .await?
        .into_iter()
        .map(InstalledRow::from)
        .collect();
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last()
            .map(|row| format!("{}/{}", row.app, row.integration_id))
    } else {
        None
    };
    Ok(InstalledPage { rows, next_cursor })
}

/// All of Installed as `user` of `workspace` sees it (every page of [`page`]).
pub async fn list(
    db: &ServiceDb,
    workspace: &str,
    user: &str,
) -> Result<Vec<InstalledRow>, ServiceDbError> {
    let mut rows = Vec::new();
    let mut cursor = None;
    loop {
        let page = page(
            db,
            workspace,
            user,
            &Filter::default(),
            cursor.as_deref(),
            MAX_PAGE,
        )
        .await?;
        rows.extend(page.rows);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(rows),
        }
    }
}

/// The version of the integration's stream folded into its row, `None` when it has no row.
pub async fn folded_version(
    db: &ServiceDb,
    integration: &str,
) -> Result<Option<u64>, ServiceDbError> {
    let rows: Vec<(i64,)> = fetch_all(
        db,
        &format!("SELECT version FROM {TABLE} WHERE integration_id = $1"),
        &[Bind::Text(integration.to_owned())],
    )
    .await?;
    Ok(rows
        .first()
        .map(|(version,)| u64::try_from(*version).unwrap_or(0)))
}

/// One integration's row as `user` of `workspace` sees it: `None` when it is not in Installed,
/// belongs to another workspace, or is another user's personal integration.
pub async fn get(
    db: &ServiceDb,
    workspace: &str,
    user: &str,
    integration: &str,
) -> Result<Option<InstalledRow>, ServiceDbError> {
    let sql = format!(
        "SELECT integration_id, workspace, app, scope, owner, status, connected_by, \
         connected_at, last_sync_at, last_sync_outcome, last_changed_at, records_pulled, \
         records_created, \
         records_updated, records_deleted, mapping_version, actions FROM {TABLE} \
         WHERE integration_id = $1 AND workspace = $2 AND (owner IS NULL OR owner = $3)"
    );
    let binds = [
        Bind::Text(integration.to_owned()),
        Bind::Text(workspace.to_owned()),
        Bind::Text(user.to_owned()),
    ];
    Ok(fetch_all::<Stored>(db, &sql, &binds)
        .await?
        .into_iter()
        .map(InstalledRow::from)
        .next())
}

/// Every integration in Installed that is not disconnected, with its folded state: what the
/// scheduler looks through for syncs that are due. A state this code cannot read (written by
/// another version) is left out.
pub async fn active_states(
    db: &ServiceDb,
) -> Result<Vec<(domain::IntegrationId, Integration)>, ServiceDbError> {
    let rows: Vec<(String, String)> = fetch_all(
        db,
        &format!("SELECT integration_id, state FROM {TABLE} WHERE status <> $1"),
        &[Bind::Text("disconnected".into())],
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, state)| {
            Some((
                id.parse().ok()?,
                serde_json::from_str::<Integration>(&state).ok()?,
            ))
        })
        .collect())
}
