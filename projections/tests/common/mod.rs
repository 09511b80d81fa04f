//! What the read side's tests share: callers, fresh databases, and everything the read models
//! show, as one comparable text.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;

use command::lifecycle::{self, DEFAULT_ABANDON_AFTER};
use command::repository::Repository;
use domain::catalog::AppScope;
use domain::integration::{RecordCounts, SyncKind};
use domain::testing::connect_command;
use domain::{
    Caller, CommandContext, IntegrationCommand, IntegrationId, Role, StreamName, SyncId, Timestamp,
};
use eventstore::EventStore;
use projections::sync_runs::{self, Filter};
use projections::{installed, ServiceDb};

pub use domain::testing::as_user;

/// The service itself (workers, adapters).
pub fn system() -> CommandContext {
    CommandContext::new(
        Caller::System {
            reason: "worker".into(),
        },
        Timestamp::now(),
    )
}

pub use projections::test_support::postgres_database;

/// A fresh read database: `sqlite` (a file in `dir`) or `postgres`.
pub async fn fresh_db(kind: &str, dir: &std::path::Path) -> ServiceDb {
    match kind {
        "sqlite" => ServiceDb::open_sqlite(&dir.join(format!("read-{}.db", uuid::Uuid::now_v7())))
            .await
            .unwrap(),
        _ => ServiceDb::connect_postgres(&postgres_database().await)
            .await
            .unwrap(),
    }
}

/// Everything both read models show of `ids` to each of `users`, as text to compare.
pub async fn views(db: &ServiceDb, users: &[&str], ids: &[IntegrationId]) -> String {
    let mut out = Vec::new();
    for user in users {
        out.push(format!(
            "{:?}",
            installed::list(db, "acme", user).await.unwrap()
        ));
        for id in ids {
            let logs = sync_runs::list(db, "acme", user, *id, &Filter::default(), None, 500)
                .await
                .unwrap();
            for run in &logs.runs {
                out.push(format!(
                    "{:?}",
                    sync_runs::pages(db, &run.sync_id).await.unwrap()
                ));
            }
            out.push(format!("{logs:?}"));
        }
    }
    out.join("\n")
}

fn ctx() -> CommandContext {
    as_user("ada", Role::Admin)
}

/// Writes to `store` `integrations` HubSpot integrations of workspace acme, each disconnected
/// when the next connects, each with `syncs` syncs of 10 pages.
pub async fn write_log(
    store: Arc<dyn EventStore>,
    integrations: usize,
    syncs: usize,
) -> Vec<IntegrationId> {
    let repository = Repository::new(store);
    let mut ids = Vec::new();
    for _ in 0..integrations {
        let command = connect_command("hubspot", AppScope::Workspace, &[]);
        // One connection per app per workspace: each integration in its own workspace slot is
        // not possible, so the previous one is disconnected first.
        if let Some(previous) = ids.last() {
            let end = IntegrationCommand::Disconnect {
                reason: "next".into(),
                token_revoked: false,
            };
            lifecycle::end(&repository, &ctx(), *previous, end)
                .await
                .unwrap();
        }
        let id = lifecycle::connect(&repository, &ctx(), command, DEFAULT_ABANDON_AFTER)
            .await
            .unwrap()
            .state
            .profile
            .unwrap()
            .id;
        for _ in 0..syncs {
            sync_once(&repository, id, 10).await;
        }
        ids.push(id);
    }
    ids
}

/// One completed incremental sync of `id` with `pages` pages of contacts.
pub async fn sync_once(repository: &Repository, id: IntegrationId, pages: u32) {
    let stream = StreamName::integration(id);
    let sync_id = SyncId::new();
    let run = |command: IntegrationCommand, context: CommandContext| {
        let stream = &stream;
        async move {
            repository
                .execute::<domain::Integration>(stream, &command, &context)
                .await
                .unwrap();
        }
    };
    run(
        IntegrationCommand::RequestSync {
            claimed: false,
            sync_id,
            kind: SyncKind::Incremental,
        },
        ctx(),
    )
    .await;
    run(
        IntegrationCommand::StartSync {
            sync_id,
            cursor: None,
        },
        system(),
    )
    .await;
    for page in 1..=pages {
        let counts = RecordCounts {
            pulled: 50,
            created: 5,
            updated: 2,
            deleted: 1,
        };
        run(
            IntegrationCommand::RecordSyncProgress {
                sync_id,
                object: "contacts".into(),
                page,
                counts,
                cursor: Some(format!("p{page}")),
            },
            system(),
        )
        .await;
    }
    run(
        IntegrationCommand::CompleteSync {
            sync_id,
            duration_ms: 9,
            unrecorded: Default::default(),
            detail: None,
        },
        system(),
    )
    .await;
}

/// Runs `sql` (no parameters, no rows) on `db`.
pub async fn exec(db: &ServiceDb, sql: &str) {
    match db {
        ServiceDb::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop).unwrap(),
        ServiceDb::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop).unwrap(),
    }
}

/// The read models built in one pass over the whole of `store`, in a fresh SQLite file in `dir`.
pub async fn one_pass(store: &dyn EventStore, dir: &std::path::Path) -> ServiceDb {
    let all = store.read_all(1, usize::MAX).await.unwrap();
    let db = ServiceDb::open_sqlite(&dir.join(format!("one-pass-{}.db", uuid::Uuid::now_v7())))
        .await
        .unwrap();
    for projection in projections::runner::Projection::ALL {
        projection.apply(&db, &all).await.unwrap();
    }
    db
}

/// Waits until every projection in `db` has applied the whole of `store`.
pub async fn caught_up(store: &dyn EventStore, db: &ServiceDb) {
    eventstore::waiting::eventually(
        std::time::Duration::from_secs(30),
        "the projections catching up with the log",
        || async {
            let head = store.head_position().await.unwrap();
            for projection in projections::runner::Projection::ALL {
                if projection.checkpoint(db).await.unwrap() < head {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}
