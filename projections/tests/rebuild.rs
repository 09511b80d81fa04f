//! Rebuilding read models while the service runs, and the single-writer lease: on SQLite and
//! on PostgreSQL, readers only ever see the old view or the whole new one, the live runner
//! goes on through the swap without applying anything twice, and of two processes on one
//! PostgreSQL exactly one writes each read model until it dies.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use command::repository::Repository;
use eventstore::waiting::eventually;
use eventstore::{EventStore, SledEventStore};
use projections::installed;
use projections::rebuild::rebuild;
use projections::runner::{self, Projection, RunnerState};
use projections::ServiceDb;

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

/// Runs both projections as the service does, telling `hear` each state of each runner.
fn spawn_runners(
    store: &Arc<dyn EventStore>,
    db: &ServiceDb,
    hear: Arc<dyn Fn(&'static str, RunnerState) + Send + Sync>,
) -> Vec<tokio::task::JoinHandle<()>> {
    Projection::ALL
        .into_iter()
        .map(|projection| {
            let (store, db, hear) = (store.clone(), db.clone(), hear.clone());
            tokio::spawn(async move {
                let on_state = |state| hear(projection.name(), state);
                runner::run_leased(projection, store, db, &on_state)
                    .await
                    .unwrap();
            })
        })
        .collect()
}

fn spawn_process(
    process: u8,
    store: &Arc<dyn EventStore>,
    db: &ServiceDb,
    states: &States,
) -> Vec<tokio::task::JoinHandle<()>> {
    let states = states.clone();
    spawn_runners(
        store,
        db,
        Arc::new(move |name, state| {
            states.lock().unwrap().insert((process, name), state);
        }),
    )
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
    let first = ServiceDb::connect_postgres(&url).await.unwrap();
    let second = ServiceDb::connect_postgres(&url).await.unwrap();
    let states: States = Arc::default();

    let first_runners = spawn_process(1, &store, &first, &states);
    all_in(&states, 1, RunnerState::Running).await;
    let second_runners = spawn_process(2, &store, &second, &states);
    all_in(&states, 2, RunnerState::Standby).await;
    let ServiceDb::Postgres(pool) = &first else {
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

/// Runs both projections as the service does, recording every state each runner reports.
fn spawn_recorded(
    store: &Arc<dyn EventStore>,
    db: &ServiceDb,
    heard: &Arc<Mutex<Vec<(&'static str, RunnerState)>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let heard = heard.clone();
    spawn_runners(
        store,
        db,
        Arc::new(move |name, state| heard.lock().unwrap().push((name, state))),
    )
}

/// Installed as a release of `version` might have left it: marked as built by it, and its rows
/// damaged, to see whether a rebuild replaces them.
async fn installed_left_by(db: &ServiceDb, version: u64) {
    exec(db, "UPDATE installed SET status = 'damaged'").await;
    exec(
        db,
        &format!("UPDATE checkpoints SET version = {version} WHERE name = 'installed'"),
    )
    .await;
}

async fn built_by(db: &ServiceDb, projection: Projection) -> u64 {
    projections::db::standing(db, projection.name())
        .await
        .unwrap()
        .expect("the checkpoint has a row")
        .version
}

fn stop(runners: Vec<tokio::task::JoinHandle<()>>) {
    for runner in runners {
        runner.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_an_older_release_built_are_rebuilt_at_start_and_a_newer_ones_left_alone() {
    assert!(
        Projection::Installed.version() > 1,
        "this test upgrades Installed from version 1"
    );
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> =
            Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
        let ids = write_log(store.clone(), 6, 2).await;
        let repository = Repository::new(store.clone());
        let db = fresh_db(kind, dir.path()).await;
        let heard = Arc::new(Mutex::new(Vec::new()));

        // A fresh database is built by this release from its first event.
        let runners = spawn_recorded(&store, &db, &heard);
        caught_up(&*store, &db).await;
        stop(runners);
        for projection in Projection::ALL {
            assert_eq!(
                built_by(&db, projection).await,
                projection.version(),
                "{kind}"
            );
        }
        assert!(
            !heard
                .lock()
                .unwrap()
                .iter()
                .any(|(_, state)| *state == RunnerState::Rebuilding),
            "{kind}: a fresh database was rebuilt"
        );

        // Installed as an older release left it (damaged, to see what a rebuild replaces);
        // the sync logs, damaged too, as this release built them.
        installed_left_by(&db, 1).await;
        exec(&db, "UPDATE sync_runs SET pulled = -1").await;
        heard.lock().unwrap().clear();
        let runners = spawn_recorded(&store, &db, &heard);
        // The log grows while the rebuild runs.
        sync_once(&repository, *ids.last().unwrap(), 3).await;
        eventually(
            Duration::from_secs(30),
            "Installed rebuilt by this release",
            || async {
                (built_by(&db, Projection::Installed).await == Projection::Installed.version())
                    .then_some(())
            },
        )
        .await;
        caught_up(&*store, &db).await;
        let rows = installed::list(&db, "acme", "ada").await.unwrap();
        let reference = one_pass(&*store, dir.path()).await;
        assert_eq!(
            format!("{rows:?}"),
            format!(
                "{:?}",
                installed::list(&reference, "acme", "ada").await.unwrap()
            ),
            "{kind}: the rebuilt Installed is not what the whole log makes"
        );
        let installed_states: Vec<RunnerState> = heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| *name == Projection::Installed.name())
            .map(|(_, state)| *state)
            .filter(|state| *state != RunnerState::Standby)
            .collect();
        assert_eq!(
            installed_states,
            [
                RunnerState::Running,
                RunnerState::Rebuilding,
                RunnerState::Running
            ],
            "{kind}"
        );
        let untouched: i64 = match &db {
            ServiceDb::Sqlite(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE pulled = -1")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            ServiceDb::Postgres(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE pulled = -1")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        };
        assert!(
            untouched > 0,
            "{kind}: sync logs of the current version were rebuilt"
        );
        stop(runners);

        // Tables a newer release built are applied to, never rebuilt.
        installed_left_by(&db, 99).await;
        heard.lock().unwrap().clear();
        let runners = spawn_recorded(&store, &db, &heard);
        sync_once(&repository, *ids.last().unwrap(), 1).await;
        caught_up(&*store, &db).await;
        stop(runners);
        assert_eq!(built_by(&db, Projection::Installed).await, 99, "{kind}");
        let damaged = installed::list(&db, "acme", "ada")
            .await
            .unwrap()
            .iter()
            .filter(|row| row.status == "damaged")
            .count();
        assert!(damaged > 0, "{kind}: a newer release's tables were rebuilt");
        assert!(
            !heard
                .lock()
                .unwrap()
                .iter()
                .any(|(_, state)| *state == RunnerState::Rebuilding),
            "{kind}"
        );
        db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rebuilds_at_once_take_turns_and_leave_what_one_pass_makes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
    // Several of a rebuild's batches, so that two at once would interleave.
    let ids = write_log(store.clone(), 100, 9).await;
    let head = store.head_position().await.unwrap();
    assert!(
        head > 2 * projections::rebuild::REBUILD_BATCH as u64,
        "{head} events"
    );
    let reference = one_pass(&*store, dir.path()).await;
    for kind in KINDS {
        let db = fresh_db(kind, dir.path()).await;
        let all = store.read_all(1, usize::MAX).await.unwrap();
        for projection in Projection::ALL {
            projection.apply(&db, &all).await.unwrap();
        }
        exec(&db, "UPDATE installed SET status = 'damaged'").await;

        // Each batch of each rebuild, in the order they were applied.
        let batches: Arc<Mutex<Vec<char>>> = Arc::default();
        let tell = |who: char| {
            let batches = batches.clone();
            move |_: u64, _: u64| batches.lock().unwrap().push(who)
        };
        let (first, second) = (tell('a'), tell('b'));
        let (a, b) = tokio::join!(
            rebuild(&*store, &db, &Projection::ALL, &first),
            rebuild(&*store, &db, &Projection::ALL, &second),
        );
        a.unwrap();
        b.unwrap();
        let order: String = batches.lock().unwrap().iter().collect();
        let turns = order.as_bytes().windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(turns, 1, "{kind}: the rebuilds ran at once: {order}");
        // Installed whole, and the sync logs of the last integrations.
        let some = &ids[ids.len() - 5..];
        assert_eq!(
            views(&db, &["ada"], some).await,
            views(&reference, &["ada"], some).await,
            "{kind}"
        );
        let leases = projections::db::lease::Leases::new(db.clone(), "anyone");
        assert_eq!(
            leases
                .holder_of(projections::rebuild::REBUILD_LEASE)
                .await
                .unwrap(),
            None,
            "{kind}: the lease was not given back"
        );
        db.close().await;
    }
}
