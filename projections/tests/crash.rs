//! SIGKILL in the middle of applying the log, again and again: once the projections reach the
//! head, the read models equal a one-pass build — nothing applied twice, nothing skipped — on
//! SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use eventstore::{EventStore, SledEventStore};
use projections::runner::Projection;
use projections::ServiceDb;
use rand::Rng;

mod common;
use common::{postgres_database, views, write_log};

/// Runs the runner on `target` until it reports `kills` batches, SIGKILLs it, and repeats with
/// fewer each time, until a run finishes.
fn run_with_kills(log: &std::path::Path, target: &str) -> usize {
    let mut kills = 0;
    loop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_projections-crash-runner"))
            .arg(log)
            .arg(target)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let kill_after = rand::rng().random_range(1..4usize);
        let mut seen = 0;
        let mut done = false;
        for line in stdout.lines() {
            let line = line.unwrap();
            if line == "done" {
                done = true;
                break;
            }
            seen += 1;
            if seen == kill_after {
                break;
            }
        }
        if done {
            assert!(child.wait().unwrap().success());
            return kills;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        assert!(kills < 200, "the runner never finished");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_the_projections_apply_nothing_twice_and_skip_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let ids = write_log(Arc::new(SledEventStore::open(&log).unwrap()), 40, 8).await;

    // The reference: one pass, in this process.
    let store = SledEventStore::open(&log).unwrap();
    let all = store.read_all(1, 1_000_000).await.unwrap();
    assert!(
        all.len() > 1000,
        "the log should take several batches ({})",
        all.len()
    );
    drop(store);
    let reference = ServiceDb::open_sqlite(&dir.path().join("reference.db"))
        .await
        .unwrap();
    for projection in Projection::ALL {
        projection.apply(&reference, &all).await.unwrap();
    }
    let expected = views(&reference, &["ada"], &ids).await;

    let sqlite = dir.path().join("killed.db");
    let kills = run_with_kills(&log, sqlite.to_str().unwrap());
    assert!(kills > 0, "the runner was never killed: nothing was tested");
    let db = ServiceDb::open_sqlite(&sqlite).await.unwrap();
    assert_eq!(
        views(&db, &["ada"], &ids).await,
        expected,
        "SQLite after {kills} kills"
    );

    let postgres = postgres_database().await;
    let kills = run_with_kills(&log, &postgres);
    assert!(kills > 0);
    let db = ServiceDb::connect_postgres(&postgres).await.unwrap();
    assert_eq!(
        views(&db, &["ada"], &ids).await,
        expected,
        "PostgreSQL after {kills} kills"
    );
}
