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

use crate::db::{fetch_all, Bind, ReadDb, ReadDbError, Target, WriteTx};

/// The projection's name, as its checkpoint is stored.
pub const NAME: &str = "installed";

/// Its table.
pub(crate) const TABLE: &str = "installed";

/// A row of Installed, as queries return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    pub last_sync_at: Option<String>,
    pub last_sync_outcome: Option<String>,
    pub records_pulled: i64,
    pub records_created: i64,
    pub records_updated: i64,
    pub records_deleted: i64,
    pub mapping_version: i64,
    pub actions: Vec<String>,
}

/// The row an integration shows as, or `None` when it has no place in Installed (deleted,
/// abandoned, or not connected yet).
pub fn row_of(integration: &Integration) -> Option<InstalledRow> {
    let profile = integration.profile.as_ref()?;
    let status = match integration.status {
        Status::Connected if integration.running_sync.is_some() => "syncing",
        Status::Connected
            if matches!(
                integration.last_sync.as_ref().map(|s| &s.outcome),
                Some(SyncOutcome::Failed { .. })
            ) =>
        {
            "error"
        }
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
    Db(#[from] ReadDbError),
    #[error("the event at position {position} cannot be decoded: {reason}")]
    Undecodable { position: u64, reason: String },
}

impl From<sqlx::Error> for ApplyError {
    fn from(error: sqlx::Error) -> Self {
        ApplyError::Db(ReadDbError::Sql(error))
    }
}

/// The statements of one set of tables.
struct Sql {
    select: String,
    upsert: String,
    delete: String,
}

impl Sql {
    fn new(target: Target) -> Self {
        let table = target.table(TABLE);
        Sql {
            select: format!("SELECT state, version FROM {table} WHERE integration_id = $1"),
            upsert: format!(
                "INSERT INTO {table} (integration_id, workspace, app, scope, owner, status, \
                 connected_by, connected_at, last_sync_at, last_sync_outcome, records_pulled, \
                 records_created, records_updated, records_deleted, mapping_version, actions, \
                 version, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                 ON CONFLICT (integration_id) DO UPDATE SET workspace = excluded.workspace, \
                 app = excluded.app, scope = excluded.scope, owner = excluded.owner, \
                 status = excluded.status, connected_by = excluded.connected_by, \
                 connected_at = excluded.connected_at, last_sync_at = excluded.last_sync_at, \
                 last_sync_outcome = excluded.last_sync_outcome, \
                 records_pulled = excluded.records_pulled, records_created = excluded.records_created, \
                 records_updated = excluded.records_updated, records_deleted = excluded.records_deleted, \
                 mapping_version = excluded.mapping_version, actions = excluded.actions, \
                 version = excluded.version, state = excluded.state"
            ),
            delete: format!("DELETE FROM {table} WHERE integration_id = $1"),
        }
    }
}

/// Folds `events` (in log order) into Installed's `target` tables, inside the caller's
/// transaction. Events of other streams, events already folded, and types the domain does not
/// know are passed over.
macro_rules! fold {
    ($tx:expr, $sql:expr, $events:expr) => {{
        let tx = $tx;
        let sql = $sql;
        let mut folding: HashMap<String, Folding> = HashMap::new();
        for event in $events {
            let Some(integration) = event.stream.integration_id() else {
                continue;
            };
            let key = integration.to_string();
            if !folding.contains_key(&key) {
                let row: Option<(String, i64)> = sqlx::query_as(&sql.select)
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let entry = match row {
                    Some((state, version)) => Folding {
                        state: serde_json::from_str(&state).map_err(|error| {
                            ApplyError::Db(ReadDbError::Invalid(format!(
                                "the stored state of {key} does not read back: {error}"
                            )))
                        })?,
                        version: u64::try_from(version).unwrap_or(0),
                        changed: false,
                    },
                    None => Folding {
                        state: Integration::default(),
                        version: 0,
                        changed: false,
                    },
                };
                folding.insert(key.clone(), entry);
            }
            let entry = folding.get_mut(&key).expect("inserted above");
            if event.version <= entry.version {
                continue;
            }
            match event.decode::<IntegrationEvent>() {
                Ok(Some(decoded)) => entry.state.apply(&decoded, &event.metadata),
                Ok(None) => {
                    tracing::debug!(
                        position = event.position,
                        event_type = %event.event_type,
                        "installed: passing over an event type it does not know"
                    );
                }
                Err(error) => {
                    return Err(ApplyError::Undecodable {
                        position: event.position,
                        reason: error.to_string(),
                    })
                }
            }
            entry.version = event.version;
            entry.changed = true;
        }
        for (key, entry) in folding.into_iter().filter(|(_, e)| e.changed) {
            match row_of(&entry.state) {
                Some(row) => {
                    let state = serde_json::to_string(&entry.state)
                        .map_err(|error| ApplyError::Db(ReadDbError::Invalid(error.to_string())))?;
                    let actions = serde_json::to_string(&row.actions)
                        .expect("a list of strings always serializes");
                    sqlx::query(&sql.upsert)
                        .bind(&row.integration_id)
                        .bind(&row.workspace)
                        .bind(&row.app)
                        .bind(&row.scope)
                        .bind(&row.owner)
                        .bind(&row.status)
                        .bind(&row.connected_by)
                        .bind(&row.connected_at)
                        .bind(&row.last_sync_at)
                        .bind(&row.last_sync_outcome)
                        .bind(row.records_pulled)
                        .bind(row.records_created)
                        .bind(row.records_updated)
                        .bind(row.records_deleted)
                        .bind(row.mapping_version)
                        .bind(actions)
                        .bind(i64::try_from(entry.version).unwrap_or(i64::MAX))
                        .bind(state)
                        .execute(&mut *tx)
                        .await?;
                }
                None => {
                    sqlx::query(&sql.delete)
                        .bind(&key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        Ok::<(), ApplyError>(())
    }};
}

/// Folds `events` into Installed's `target` tables inside `tx` (the runner moves the
/// checkpoint in the same transaction).
pub(crate) async fn apply_in(
    tx: &mut WriteTx,
    target: Target,
    events: &[RecordedEvent],
) -> Result<(), ApplyError> {
    let sql = Sql::new(target);
    match tx {
        WriteTx::Sqlite(tx) => fold!(&mut **tx, &sql, events),
        WriteTx::Postgres(tx) => fold!(&mut **tx, &sql, events),
    }
}

/// The position Installed has applied up to, 0 before anything.
pub async fn checkpoint(db: &ReadDb) -> Result<u64, ReadDbError> {
    crate::db::checkpoint(db, NAME).await
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
    db: &ReadDb,
    workspace: &str,
    user: &str,
    filter: &Filter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<InstalledPage, ReadDbError> {
    let mut sql = format!(
        "SELECT integration_id, workspace, app, scope, owner, status, connected_by, \
         connected_at, last_sync_at, last_sync_outcome, records_pulled, records_created, \
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
            .ok_or_else(|| ReadDbError::BadCursor(cursor.to_owned()))?;
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
    db: &ReadDb,
    workspace: &str,
    user: &str,
) -> Result<Vec<InstalledRow>, ReadDbError> {
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
