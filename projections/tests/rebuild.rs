//! Rebuilding read models while the service runs, and the single-writer lease: on SQLite and
//! on PostgreSQL, readers only ever see the old view or the whole new one, the live runner
//! goes on through the swap without applying anything twice, and of two processes on one
//! PostgreSQL exactly one writes each read model until it dies.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventstore::repository::Repository;
use eventstore::waiting::eventually;
use eventstore::{EventStore, SledEventStore};
use projections::installed;
use projections::rebuild::rebuild;
use projections::runner::{self, Projection, RunnerState};
use projections::ReadDb;

mod common;
use common::{caught_up, exec, fresh_db, one_pass, postgres_database, sync_once, views, write_log};

const KINDS: [&str; 2] = ["sqlite", "postgres"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_whole_while_readers_read_and_the_log_grows() {
    for kind in KINDS {
        swap_under_load(kind).await;
    }
}

async fn swap_under_load(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
    let ids = write_log(store.clone(), 30, 4).await;
    let db = fresh_db(kind, dir.path()).await;
    let runners: Vec<_> = Projection::ALL
        .into_iter()
        .map(|p| tokio::spawn(runner::run(p, store.clone(), db.clone())))
        .collect();
    caught_up(&*store, &db).await;

    // Damage the live views, so that what the rebuild swaps in shows.
    exec(&db, "UPDATE installed SET status = 'damaged'").await;
    exec(&db, "UPDATE sync_runs SET pulled = -1").await;

    // A reader: Installed always has its 30 rows; once it shows the rebuilt view it never
    // shows the damaged one again.
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (db, done) = (db.clone(), done.clone());
        async move {
            let (mut reads, mut swapped_at) = (0u64, None);
            loop {
                // The last read starts after the rebuild has returned.
                let last = done.load(Ordering::SeqCst);
                let rows = installed::list(&db, "acme", "ada").await.unwrap();
                assert_eq!(rows.len(), 30, "a half-built Installed was visible");
                let damaged = rows.iter().filter(|r| r.status == "damaged").count();
                match swapped_at {
                    None if damaged == 0 => swapped_at = Some(reads),
                    None => assert!(damaged >= 29, "a half-swapped Installed: {damaged}"),
                    Some(_) => assert_eq!(damaged, 0, "the old view came back"),
                }
                reads += 1;
                if last {
                    break;
                }
                tokio::task::yield_now().await;
            }
            (reads, swapped_at)
        }
    });
    // A writer: the log grows through the rebuild, the live runner applying it.
    let writer = tokio::spawn({
        let (store, done, last) = (store.clone(), done.clone(), *ids.last().unwrap());
        async move {
            let repository = Repository::new(store);
            let mut syncs = 0;
            while !done.load(Ordering::SeqCst) || syncs < 3 {
                sync_once(&repository, last, 3).await;
                syncs += 1;
            }
            syncs
        }
    });

    let reached = AtomicU64::new(0);
    let progress = |position: u64, head: u64| {
        assert!(position <= head);
        reached.store(position, Ordering::SeqCst);
    };
    let rebuilt = rebuild(&*store, &db, &Projection::ALL, &progress)
        .await
        .unwrap();
    assert!(rebuilt.events > 0);
    assert!(
        reached.load(Ordering::SeqCst) > 0,
        "progress was never told"
    );
    done.store(true, Ordering::SeqCst);
    let syncs = writer.await.unwrap();
    let (reads, swapped_at) = reader.await.unwrap();
    assert!(syncs >= 3);
    assert!(
        swapped_at.is_some(),
        "{kind}: the reader never saw the rebuilt view in {reads} reads"
    );

    // The live runners went on through the swap, and everything counts once.
    caught_up(&*store, &db).await;
    assert!(runners.iter().all(|r| !r.is_finished()), "a runner stopped");
    let reference = one_pass(&*store, dir.path()).await;
    let expected = views(&reference, &["ada"], &ids).await;
    assert_eq!(views(&db, &["ada"], &ids).await, expected, "{kind}");

    // Again, one projection by name, over what the first rebuild left (its tables and index
    // names), while the log still grows.
    let repository = Repository::new(store.clone());
    sync_once(&repository, *ids.last().unwrap(), 2).await;
    rebuild(&*store, &db, &[Projection::Installed], &|_, _| {})
        .await
        .unwrap();
    sync_once(&repository, *ids.last().unwrap(), 2).await;
    caught_up(&*store, &db).await;
    let reference = one_pass(&*store, dir.path()).await;
    assert_eq!(
        views(&db, &["ada"], &ids).await,
        views(&reference, &["ada"], &ids).await,
        "{kind}: the second rebuild"
    );
    for runner in runners {
        runner.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_leaves_the_live_view_alone_and_the_next_one_starts_afresh() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> =
            Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
        let ids = write_log(store.clone(), 5, 2).await;
        let db = fresh_db(kind, dir.path()).await;
        // A rebuild that stops after its first batch, as if the process had died: the copy's
        // half-filled tables stay behind.
        let all = store.read_all(1, usize::MAX).await.unwrap();
        for projection in Projection::ALL {
            projection.apply(&db, &all).await.unwrap();
        }
        let before = views(&db, &["ada"], &ids).await;
        exec(
            &db,
            "CREATE TABLE installed_rebuild (integration_id TEXT PRIMARY KEY, junk TEXT)",
        )
        .await;
        exec(
            &db,
            "INSERT INTO installed_rebuild (integration_id, junk) VALUES ('x', 'y')",
        )
        .await;
        assert_eq!(views(&db, &["ada"], &ids).await, before);
        rebuild(&*store, &db, &Projection::ALL, &|_, _| {})
            .await
            .unwrap();
        assert_eq!(views(&db, &["ada"], &ids).await, before, "{kind}");
    }
}

/// Each state a runner went through, by (process, projection).
type States = Arc<Mutex<HashMap<(u8, &'static str), RunnerState>>>;

fn spawn_process(
    process: u8,
    store: &Arc<dyn EventStore>,
    db: &ReadDb,
    states: &States,
) -> Vec<tokio::task::JoinHandle<()>> {
    Projection::ALL
        .into_iter()
        .map(|projection| {
            let (store, db, states) = (store.clone(), db.clone(), states.clone());
            tokio::spawn(async move {
                let on_state = |state| {
                    states
                        .lock()
                        .unwrap()
                        .insert((process, projection.name()), state);
                };
                runner::run_leased(projection, store, db, &on_state)
                    .await
                    .unwrap();
            })
        })
        .collect()
}

async fn all_in(states: &States, process: u8, state: RunnerState) {
    eventually(
        Duration::from_secs(20),
        &format!("process {process}'s runners being {state:?}"),
        || async {
            let states = states.lock().unwrap();
            Projection::ALL
                .iter()
                .all(|p| states.get(&(process, p.name())) == Some(&state))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_processes_on_postgres_one_writes_each_model_and_the_other_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
    let ids = write_log(store.clone(), 5, 2).await;
    let url = postgres_database().await;
    // Two pools are two sets of sessions: what two processes have.
    let first = ReadDb::connect_postgres(&url).await.unwrap();
    let second = ReadDb::connect_postgres(&url).await.unwrap();
    let states: States = Arc::default();

    let first_runners = spawn_process(1, &store, &first, &states);
    all_in(&states, 1, RunnerState::Running).await;
    let second_runners = spawn_process(2, &store, &second, &states);
    all_in(&states, 2, RunnerState::Standby).await;
    let ReadDb::Postgres(pool) = &first else {
        unreachable!()
    };
    eventually(
        Duration::from_secs(20),
        "the second process waiting for both leases",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            (waiting == 2).then_some(())
        },
    )
    .await;
    let repository = Repository::new(store.clone());
    sync_once(&repository, *ids.last().unwrap(), 4).await;
    caught_up(&*store, &first).await;
    assert!(second_runners.iter().all(|r| !r.is_finished()));
    all_in(&states, 2, RunnerState::Standby).await;

    // The first process dies: its sessions end, the second takes over.
    for runner in first_runners {
        runner.abort();
        let _ = runner.await;
    }
    first.close().await;
    all_in(&states, 2, RunnerState::Running).await;
    sync_once(&repository, *ids.last().unwrap(), 4).await;
    caught_up(&*store, &second).await;
    let reference = one_pass(&*store, dir.path()).await;
    assert_eq!(
        views(&second, &["ada"], &ids).await,
        views(&reference, &["ada"], &ids).await
    );
    for runner in second_runners {
        runner.abort();
    }
}
