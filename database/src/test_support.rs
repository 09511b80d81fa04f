//! For tests, here and in other crates: a fresh database on the test run's PostgreSQL.
#![allow(clippy::expect_used)]

/// The URL of a new, empty database on the test run's PostgreSQL
/// (`HARMONY_TEST_DATABASE_URL`, set by ./scripts/test.sh).
pub async fn postgres_database() -> String {
    let url = std::env::var("HARMONY_TEST_DATABASE_URL")
        .expect("HARMONY_TEST_DATABASE_URL names the test PostgreSQL: run ./scripts/test.sh");
    let name = format!("t{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("the test PostgreSQL answers");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("a database can be created on the test PostgreSQL");
    admin.close().await;
    let (before, after) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let (base, _) = before
        .rsplit_once('/')
        .expect("the test PostgreSQL URL names a database");
    format!("{base}/{name}?{after}")
}
