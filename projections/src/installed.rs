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

use crate::db::{ReadDb, ReadDbError};

/// The projection's name, as its checkpoint is stored.
pub const NAME: &str = "installed";

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

/// Runs the same statements on either database's transaction.
macro_rules! on_tx {
    ($db:expr, |$tx:ident| $body:block) => {
        match $db {
            ReadDb::Sqlite(pool) => {
                // IMMEDIATE: take the write lock first, so a transaction that reads before it
                // writes never fails on another projection's commit in between.
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let result = $body;
                $tx.commit().await?;
                result
            }
            ReadDb::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let result = $body;
                $tx.commit().await?;
                result
            }
        }
    };
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

/// Folds `events` (in log order) into Installed and moves the checkpoint to the last one's
/// position, all in one transaction. Events of other streams, events already folded, and types
/// the domain does not know are passed over.
pub async fn apply(db: &ReadDb, events: &[RecordedEvent]) -> Result<(), ApplyError> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let checkpoint = i64::try_from(last.position).unwrap_or(i64::MAX);
    on_tx!(db, |tx| {
        let mut folding: HashMap<String, Folding> = HashMap::new();
        for event in events {
            let Some(integration) = event.stream.integration_id() else {
                continue;
            };
            let key = integration.to_string();
            if !folding.contains_key(&key) {
                let row: Option<(String, i64)> = sqlx::query_as(
                    "SELECT state, version FROM installed WHERE integration_id = $1",
                )
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
                    sqlx::query(
                        "INSERT INTO installed (integration_id, workspace, app, scope, owner, status, \
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
                         version = excluded.version, state = excluded.state",
                    )
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
                    sqlx::query("DELETE FROM installed WHERE integration_id = $1")
                        .bind(&key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        crate::db::save_checkpoint!(&mut *tx, NAME, checkpoint)?;
        Ok::<(), ApplyError>(())
    })
}

/// The position Installed has applied up to, 0 before anything.
pub async fn checkpoint(db: &ReadDb) -> Result<u64, ReadDbError> {
    crate::db::checkpoint(db, NAME).await
}

type RowTuple = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
);

fn from_tuple(t: RowTuple) -> InstalledRow {
    InstalledRow {
        integration_id: t.0,
        workspace: t.1,
        app: t.2,
        scope: t.3,
        owner: t.4,
        status: t.5,
        connected_by: t.6,
        connected_at: t.7,
        last_sync_at: t.8,
        last_sync_outcome: t.9,
        records_pulled: t.10,
        records_created: t.11,
        records_updated: t.12,
        records_deleted: t.13,
        mapping_version: t.14,
        actions: serde_json::from_str(&t.15).unwrap_or_default(),
    }
}

/// Installed as `user` of `workspace` sees it: the workspace integrations and the user's own
/// personal ones, never another user's.
pub async fn list(
    db: &ReadDb,
    workspace: &str,
    user: &str,
) -> Result<Vec<InstalledRow>, ReadDbError> {
    let query = "SELECT integration_id, workspace, app, scope, owner, status, connected_by, \
                 connected_at, last_sync_at, last_sync_outcome, records_pulled, records_created, \
                 records_updated, records_deleted, mapping_version, actions FROM installed \
                 WHERE workspace = $1 AND (owner IS NULL OR owner = $2) \
                 ORDER BY app, integration_id";
    let rows: Vec<RowTuple> = match db {
        ReadDb::Sqlite(pool) => {
            sqlx::query_as(query)
                .bind(workspace)
                .bind(user)
                .fetch_all(pool)
                .await?
        }
        ReadDb::Postgres(pool) => {
            sqlx::query_as(query)
                .bind(workspace)
                .bind(user)
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows.into_iter().map(from_tuple).collect())
}
