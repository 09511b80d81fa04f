//! What the read side's tests share: callers, fresh databases, and everything the read models
//! show, as one comparable text.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use domain::{Caller, CommandContext, IntegrationId, Principal, Role, Timestamp};
use projections::sync_runs::{self, Filter};
use projections::{installed, ReadDb};

/// `user` of workspace acme with `role`.
pub fn as_user(name: &str, role: Role) -> CommandContext {
    CommandContext::new(
        Caller::User(Principal {
            user: name.parse().unwrap(),
            workspace: "acme".parse().unwrap(),
            role,
        }),
        Timestamp::now(),
    )
}

/// The service itself (workers, adapters).
pub fn system() -> CommandContext {
    CommandContext::new(
        Caller::System {
            reason: "worker".into(),
        },
        Timestamp::now(),
    )
}

/// The URL of a new, empty database on the test run's PostgreSQL
/// (`HARMONY_TEST_DATABASE_URL`, set by ./scripts/test.sh).
pub async fn postgres_database() -> String {
    let url = std::env::var("HARMONY_TEST_DATABASE_URL")
        .expect("HARMONY_TEST_DATABASE_URL names the test PostgreSQL: run ./scripts/test.sh");
    let name = format!("t{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (before, after) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let (base, _) = before.rsplit_once('/').unwrap();
    format!("{base}/{name}?{after}")
}

/// A fresh read database: `sqlite` (a file in `dir`) or `postgres`.
pub async fn fresh_db(kind: &str, dir: &std::path::Path) -> ReadDb {
    match kind {
        "sqlite" => ReadDb::open_sqlite(&dir.join(format!("read-{}.db", uuid::Uuid::now_v7())))
            .await
            .unwrap(),
        _ => ReadDb::connect_postgres(&postgres_database().await)
            .await
            .unwrap(),
    }
}

/// Everything both read models show of `ids` to each of `users`, as text to compare.
pub async fn views(db: &ReadDb, users: &[&str], ids: &[IntegrationId]) -> String {
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
