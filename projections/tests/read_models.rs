//! Installed and the sync logs from real commands, on SQLite and PostgreSQL: rows for each
//! step of an integration's life, the visibility of personal integrations, and a rebuild equal
//! to the views built as the log grew.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use command::lifecycle::{self, DEFAULT_ABANDON_AFTER};
use command::repository::Repository;
use domain::catalog::AppScope;
use domain::integration::{ExpiryReason, RecordCounts, SyncKind};
use domain::{
    CommandContext, CredentialRef, IntegrationCommand, IntegrationId, Role, StreamName, SyncId,
    Timestamp,
};
use eventstore::{EventStore, SledEventStore};
use projections::installed::{self, InstalledRow};
use projections::runner::{self, Projection};
use projections::sync_runs::{self, Filter};
use projections::ServiceDb;

mod common;
use common::{as_user, exec, fresh_db, system};
use eventstore::waiting::eventually;

async fn connect(
    repository: &Repository,
    ctx: &CommandContext,
    app: &str,
    scope: AppScope,
) -> IntegrationId {
    let command = domain::testing::connect_command(app, scope, &[]);
    lifecycle::connect(repository, ctx, command, DEFAULT_ABANDON_AFTER)
        .await
        .unwrap()
        .state
        .profile
        .unwrap()
        .id
}

async fn run(
    repository: &Repository,
    ctx: &CommandContext,
    id: IntegrationId,
    command: IntegrationCommand,
) {
    repository
        .execute::<domain::Integration>(&StreamName::integration(id), &command, ctx)
        .await
        .unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SledEventStore>,
    repository: Repository,
    db: ServiceDb,
    runners: Vec<tokio::task::JoinHandle<Result<(), runner::RunError>>>,
}

const KINDS: [&str; 2] = ["sqlite", "postgres"];

async fn fixture(kind: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
    let db = fresh_db(kind, dir.path()).await;
    let runners = Projection::ALL
        .into_iter()
        .map(|p| {
            let store: Arc<dyn EventStore> = store.clone();
            tokio::spawn(runner::run(p, store, db.clone()))
        })
        .collect();
    Fixture {
        repository: Repository::new(store.clone()),
        store,
        db,
        runners,
        _dir: dir,
    }
}

impl Fixture {
    /// Waits until `projection` has applied the whole log.
    async fn caught_up(&self, projection: Projection) {
        let head = self.store.head_position().await.unwrap();
        eventually(Duration::from_secs(30), projection.name(), || async {
            (projection.checkpoint(&self.db).await.unwrap() >= head).then_some(())
        })
        .await;
    }

    /// Panics with the error of a projection that stopped.
    fn check_runners(&self) {
        for runner in &self.runners {
            if runner.is_finished() {
                panic!("a projection stopped");
            }
        }
    }

    fn stop(&self) {
        for runner in &self.runners {
            runner.abort();
        }
    }

    /// The sync logs of `id` as `user` sees them, once the projection has caught up.
    async fn sync_logs(
        &self,
        user: &str,
        id: IntegrationId,
        filter: &Filter,
        cursor: Option<i64>,
        limit: u32,
    ) -> sync_runs::RunsPage {
        self.caught_up(Projection::SyncRuns).await;
        sync_runs::list(&self.db, "acme", user, id, filter, cursor, limit)
            .await
            .unwrap()
    }

    /// Installed as `user` sees it once the projection has caught up with the log.
    async fn installed(&self, user: &str) -> Vec<InstalledRow> {
        self.check_runners();
        self.caught_up(Projection::Installed).await;
        installed::list(&self.db, "acme", user).await.unwrap()
    }

    async fn row(&self, id: IntegrationId) -> InstalledRow {
        self.installed("ada")
            .await
            .into_iter()
            .find(|r| r.integration_id == id.to_string())
            .expect("the integration is in Installed")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_of_an_integrations_life_shows_in_installed() {
    for kind in KINDS {
        life(kind).await;
    }
}

async fn life(kind: &str) {
    let f = fixture(kind).await;
    let admin = as_user("ada", Role::Admin);
    let id = connect(&f.repository, &admin, "hubspot", AppScope::Workspace).await;
    let row = f.row(id).await;
    assert_eq!(
        (row.app.as_str(), row.scope.as_str(), row.status.as_str()),
        ("hubspot", "workspace", "connected")
    );
    assert_eq!(row.owner, None);
    assert_eq!(row.connected_by, "ada");
    assert!(row.actions.contains(&"sync".to_owned()));

    let sync_id = SyncId::new();
    run(
        &f.repository,
        &admin,
        id,
        IntegrationCommand::RequestSync {
            claimed: false,
            sync_id,
            kind: SyncKind::Full,
        },
    )
    .await;
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::StartSync {
            sync_id,
            cursor: None,
        },
    )
    .await;
    assert_eq!(f.row(id).await.status, "syncing");
    let counts = RecordCounts {
        pulled: 100,
        created: 60,
        updated: 30,
        deleted: 10,
    };
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::RecordSyncProgress {
            sync_id,
            object: "contacts".into(),
            page: 1,
            counts,
            cursor: Some("c1".into()),
        },
    )
    .await;
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::CompleteSync {
            sync_id,
            duration_ms: 1200,
            unrecorded: Default::default(),
            detail: None,
        },
    )
    .await;
    let row = f.row(id).await;
    assert_eq!(row.status, "connected");
    assert_eq!(row.last_sync_outcome.as_deref(), Some("completed"));
    assert_eq!(
        (
            row.records_pulled,
            row.records_created,
            row.records_updated,
            row.records_deleted
        ),
        (100, 60, 30, 10)
    );

    let failing = SyncId::new();
    run(
        &f.repository,
        &admin,
        id,
        IntegrationCommand::RequestSync {
            claimed: false,
            sync_id: failing,
            kind: SyncKind::Full,
        },
    )
    .await;
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::StartSync {
            sync_id: failing,
            cursor: None,
        },
    )
    .await;
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::FailSync {
            sync_id: failing,
            code: "rate_limited".into(),
            message: "429".into(),
            retryable: true,
            unrecorded: Default::default(),
            detail: None,
        },
    )
    .await;
    let row = f.row(id).await;
    assert_eq!(
        (row.status.as_str(), row.last_sync_outcome.as_deref()),
        ("error", Some("failed"))
    );

    // The failure was an expired grant: once the user reauthenticates, the integration is
    // connected again, and the failed run stays what it was.
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::MarkCredentialsExpired {
            reason: domain::integration::ExpiryReason::Revoked,
            detail: "invalid_grant".into(),
        },
    )
    .await;
    assert_eq!(f.row(id).await.status, "needs_reauth");
    run(
        &f.repository,
        // Now: the reauth comes after the failure.
        &as_user("ada", Role::Admin),
        id,
        IntegrationCommand::Reauthenticate {
            credential_ref: domain::CredentialRef(format!("vault:{id}:2")),
            granted_scopes: vec!["crm.objects.contacts.read".into()],
            expires_at: None,
        },
    )
    .await;
    let row = f.row(id).await;
    assert_eq!(
        (row.status.as_str(), row.last_sync_outcome.as_deref()),
        ("connected", Some("failed"))
    );

    // The sync logs: newest first, with status, trigger, counts and error, paged by cursor.
    let all = f.sync_logs("ada", id, &Filter::default(), None, 10).await;
    assert_eq!(all.next_cursor, None);
    let runs: Vec<(&str, &str, &str)> = all
        .runs
        .iter()
        .map(|r| {
            (
                r.sync_id.as_str(),
                r.status.as_str(),
                r.trigger_kind.as_str(),
            )
        })
        .collect();
    let (failing_id, sync_text) = (failing.to_string(), sync_id.to_string());
    assert_eq!(
        runs,
        [
            (failing_id.as_str(), "failed", "manual"),
            (sync_text.as_str(), "completed", "manual")
        ]
    );
    let done = &all.runs[1];
    assert_eq!(
        (done.pulled, done.created, done.updated, done.deleted),
        (100, 60, 30, 10)
    );
    assert_eq!(
        (done.kind.as_str(), done.requested_by.as_deref()),
        ("full", Some("ada"))
    );
    assert_eq!(done.duration_ms, Some(1200));
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    assert_eq!(all.runs[0].error_code.as_deref(), Some("rate_limited"));
    let pages = sync_runs::pages(&f.db, &sync_text).await.unwrap();
    assert_eq!(pages.len(), 1);
    assert_eq!(
        (pages[0].object.as_str(), pages[0].page, pages[0].pulled),
        ("contacts", 1, 100)
    );
    let first = f.sync_logs("ada", id, &Filter::default(), None, 1).await;
    assert_eq!(first.runs, all.runs[..1]);
    let second = f
        .sync_logs("ada", id, &Filter::default(), first.next_cursor, 1)
        .await;
    assert_eq!(second.runs, all.runs[1..]);
    assert_eq!(second.next_cursor, None);
    let completed = Filter {
        status: Some("completed".into()),
        ..Filter::default()
    };
    assert_eq!(
        f.sync_logs("ada", id, &completed, None, 10).await.runs,
        all.runs[1..]
    );
    // The whole service's totals by status, as /metrics reports them: here, this
    // integration's runs.
    let mut expected = std::collections::BTreeMap::<String, (i64, i64)>::new();
    for run in &all.runs {
        let entry = expected.entry(run.status.clone()).or_default();
        entry.0 += 1;
        entry.1 += run.pulled;
    }
    let totals: std::collections::BTreeMap<String, (i64, i64)> = sync_runs::totals_by_status(&f.db)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.status, (t.runs, t.pulled)))
        .collect();
    assert_eq!(totals, expected);
    let incremental = Filter {
        kind: Some("incremental".into()),
        ..Filter::default()
    };
    assert!(f
        .sync_logs("ada", id, &incremental, None, 10)
        .await
        .runs
        .is_empty());
    let later = Filter {
        since: Some(Timestamp::now().to_string()),
        ..Filter::default()
    };
    assert!(f
        .sync_logs("ada", id, &later, None, 10)
        .await
        .runs
        .is_empty());

    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::MarkCredentialsExpired {
            reason: ExpiryReason::Revoked,
            detail: "revoked".into(),
        },
    )
    .await;
    let row = f.row(id).await;
    assert_eq!(row.status, "needs_reauth");
    assert!(
        !row.actions.contains(&"sync".to_owned()),
        "no sync while reauth is needed: {:?}",
        row.actions
    );
    assert!(row.actions.contains(&"reauth".to_owned()));

    let waiting = SyncId::new();
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::Reauthenticate {
            credential_ref: CredentialRef("vault:x:2".into()),
            granted_scopes: vec![],
            expires_at: None,
        },
    )
    .await;
    run(
        &f.repository,
        &admin,
        id,
        IntegrationCommand::RequestSync {
            claimed: false,
            sync_id: waiting,
            kind: SyncKind::Full,
        },
    )
    .await;
    lifecycle::end(
        &f.repository,
        &admin,
        id,
        IntegrationCommand::Disconnect {
            reason: "done".into(),
            token_revoked: true,
        },
    )
    .await
    .unwrap();
    let row = f.row(id).await;
    assert_eq!(
        (row.status.as_str(), row.actions.clone()),
        ("disconnected", vec!["delete".to_owned()])
    );

    let cancelled = f.sync_logs("ada", id, &Filter::default(), None, 1).await;
    assert_eq!(
        (
            cancelled.runs[0].sync_id.clone(),
            cancelled.runs[0].status.as_str()
        ),
        (waiting.to_string(), "cancelled")
    );

    lifecycle::end(
        &f.repository,
        &admin,
        id,
        IntegrationCommand::Delete {
            secrets_shredded: true,
        },
    )
    .await
    .unwrap();
    assert!(
        f.installed("ada").await.is_empty(),
        "a deleted integration leaves Installed"
    );
    f.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_personal_integration_is_seen_by_its_owner_alone() {
    for kind in KINDS {
        visibility(kind).await;
    }
}

async fn visibility(kind: &str) {
    let f = fixture(kind).await;
    let admin = as_user("ada", Role::Admin);
    let max = as_user(
        "max",
        Role::Member {
            integration_permission: false,
        },
    );
    let shared = connect(&f.repository, &admin, "hubspot", AppScope::Workspace).await;
    let personal = connect(&f.repository, &max, "google-calendar", AppScope::Personal).await;
    let ids = |rows: Vec<InstalledRow>| {
        rows.into_iter()
            .map(|r| r.integration_id)
            .collect::<Vec<_>>()
    };
    let mut mine = ids(f.installed("max").await);
    mine.sort();
    let mut expected = vec![shared.to_string(), personal.to_string()];
    expected.sort();
    assert_eq!(mine, expected);
    assert_eq!(ids(f.installed("ada").await), [shared.to_string()]);
    let row = f
        .installed("max")
        .await
        .into_iter()
        .find(|r| r.scope == "personal")
        .unwrap();
    assert_eq!(row.owner.as_deref(), Some("max"));
    // Its sync logs, too, are the owner's alone.
    let sync_id = SyncId::new();
    run(
        &f.repository,
        &max,
        personal,
        IntegrationCommand::RequestSync {
            claimed: false,
            sync_id,
            kind: SyncKind::Incremental,
        },
    )
    .await;
    let theirs = f
        .sync_logs("max", personal, &Filter::default(), None, 10)
        .await;
    assert_eq!(theirs.runs.len(), 1);
    assert_eq!(theirs.runs[0].kind, "incremental");
    assert!(f
        .sync_logs("ada", personal, &Filter::default(), None, 10)
        .await
        .runs
        .is_empty());
    f.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_in_one_pass_equals_the_view_built_as_the_log_grew() {
    for kind in KINDS {
        rebuild(kind).await;
    }
}

async fn rebuild(kind: &str) {
    let f = fixture(kind).await;
    let admin = as_user("ada", Role::Admin);
    let mut ids = Vec::new();
    ids.push(connect(&f.repository, &admin, "hubspot", AppScope::Workspace).await);
    ids.push(
        connect(
            &f.repository,
            &as_user(
                "max",
                Role::Member {
                    integration_permission: false,
                },
            ),
            "gmail",
            AppScope::Personal,
        )
        .await,
    );
    for (n, id) in ids.iter().enumerate() {
        let sync_id = SyncId::new();
        run(
            &f.repository,
            &admin_or_owner(n),
            *id,
            IntegrationCommand::RequestSync {
                claimed: false,
                sync_id,
                kind: SyncKind::Full,
            },
        )
        .await;
        run(
            &f.repository,
            &system(),
            *id,
            IntegrationCommand::StartSync {
                sync_id,
                cursor: None,
            },
        )
        .await;
        if n == 0 {
            run(
                &f.repository,
                &system(),
                *id,
                IntegrationCommand::CompleteSync {
                    sync_id,
                    duration_ms: 5,
                    unrecorded: Default::default(),
                    detail: None,
                },
            )
            .await;
        }
    }
    let live = f.installed("max").await;
    assert_eq!(live.len(), 2);
    let mut live_logs = Vec::new();
    for id in &ids {
        live_logs.push(f.sync_logs("max", *id, &Filter::default(), None, 100).await);
    }
    f.stop();

    // Every event at once into an empty database, and again on top (nothing applies twice).
    let all = f.store.read_all(1, 100_000).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fresh = ServiceDb::open_sqlite(&dir.path().join("rebuilt.db"))
        .await
        .unwrap();
    for projection in Projection::ALL {
        projection.apply(&fresh, &all).await.unwrap();
        projection.apply(&fresh, &all).await.unwrap();
    }
    assert_eq!(installed::list(&fresh, "acme", "max").await.unwrap(), live);
    for (id, logs) in ids.iter().zip(live_logs) {
        let rebuilt = sync_runs::list(&fresh, "acme", "max", *id, &Filter::default(), None, 100)
            .await
            .unwrap();
        assert_eq!(rebuilt, logs);
    }
    assert_eq!(
        Projection::Installed.checkpoint(&fresh).await.unwrap(),
        all.last().unwrap().position
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_runs_share_a_sync_log_row_and_installed_says_when_something_last_changed() {
    for kind in KINDS {
        quiet_runs(kind).await;
    }
}

/// One sync run of `id`: requested by `ctx`, with a recorded page of `counts` when `page` is
/// set (a run that records nothing never starts in the log), completed.
async fn one_run(
    f: &Fixture,
    ctx: &CommandContext,
    id: IntegrationId,
    kind: SyncKind,
    counts: RecordCounts,
    page: bool,
) -> SyncId {
    let sync_id = SyncId::new();
    let request = IntegrationCommand::RequestSync {
        claimed: false,
        sync_id,
        kind,
    };
    run(&f.repository, ctx, id, request).await;
    let mut unrecorded = counts;
    if page {
        let start = IntegrationCommand::StartSync {
            sync_id,
            cursor: None,
        };
        run(&f.repository, &system(), id, start).await;
        let progress = IntegrationCommand::RecordSyncProgress {
            sync_id,
            object: "contacts".into(),
            page: 1,
            counts,
            cursor: Some("c1".into()),
        };
        run(&f.repository, &system(), id, progress).await;
        unrecorded = RecordCounts::default();
    }
    let complete = IntegrationCommand::CompleteSync {
        sync_id,
        duration_ms: 7,
        unrecorded,
        detail: None,
    };
    run(&f.repository, &system(), id, complete).await;
    sync_id
}

async fn quiet_runs(kind: &str) {
    let f = fixture(kind).await;
    let admin = as_user("ada", Role::Admin);
    let id = connect(&f.repository, &admin, "hubspot", AppScope::Workspace).await;
    let busy = RecordCounts {
        pulled: 10,
        created: 4,
        updated: 1,
        deleted: 0,
    };
    let quiet = RecordCounts {
        pulled: 5,
        ..RecordCounts::default()
    };
    let incremental = SyncKind::Incremental;
    let a = one_run(&f, &system(), id, incremental, busy, true).await;
    // Three scheduled checks that find nothing, one of them slow enough to record a page.
    one_run(&f, &system(), id, incremental, quiet, false).await;
    let c = one_run(&f, &system(), id, incremental, quiet, true).await;
    // Looked at in the middle: the projection may apply the rest in another batch.
    f.sync_logs("ada", id, &Filter::default(), None, 100).await;
    let d = one_run(&f, &system(), id, incremental, quiet, false).await;
    // A manual full run is not one of the scheduled checks, even when it finds nothing.
    let e = one_run(&f, &admin, id, SyncKind::Full, quiet, false).await;
    let g = one_run(&f, &system(), id, incremental, busy, false).await;
    let h = one_run(&f, &system(), id, incremental, quiet, false).await;

    let logs = f.sync_logs("ada", id, &Filter::default(), None, 100).await;
    let shown: Vec<(String, i64)> = logs
        .runs
        .iter()
        .map(|r| (r.sync_id.clone(), r.checks))
        .collect();
    assert_eq!(
        shown,
        [
            (h.to_string(), 1),
            (g.to_string(), 1),
            (e.to_string(), 1),
            (d.to_string(), 3),
            (a.to_string(), 1)
        ],
        "{kind}: the three quiet checks share the last one's row"
    );
    let merged = &logs.runs[3];
    assert_eq!(merged.pulled, 15, "{kind}: what the three checks read");
    assert_eq!((merged.created, merged.updated, merged.deleted), (0, 0, 0));
    assert!(merged.first_checked_at < merged.last_checked_at);
    assert_eq!(merged.last_checked_at, merged.finished_at);
    for run in &logs.runs {
        assert!(run.first_checked_at <= run.last_checked_at);
    }
    // A run that changed nothing keeps no page rows; one that changed something keeps its own.
    assert!(sync_runs::pages(&f.db, &c.to_string())
        .await
        .unwrap()
        .is_empty());
    assert!(sync_runs::pages(&f.db, &d.to_string())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        sync_runs::pages(&f.db, &a.to_string()).await.unwrap().len(),
        1
    );

    // Installed: last checked at the last run's end; last changed at the end of the last run
    // that changed something.
    let row = f.row(id).await;
    assert_eq!(row.last_sync_at, logs.runs[0].finished_at);
    assert_eq!(row.last_changed_at, logs.runs[1].finished_at);
    assert!(row.last_changed_at < row.last_sync_at);
    assert_eq!(
        sync_runs::totals_by_status(&f.db).await.unwrap()[0].runs,
        7,
        "{kind}: /metrics still counts every run"
    );
    f.stop();

    // Applied at once into an empty database, the history gives the same logs.
    let all = f.store.read_all(1, 100_000).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fresh = ServiceDb::open_sqlite(&dir.path().join("rebuilt.db"))
        .await
        .unwrap();
    Projection::SyncRuns.apply(&fresh, &all).await.unwrap();
    let rebuilt = sync_runs::list(&fresh, "acme", "ada", id, &Filter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(rebuilt.runs.len(), logs.runs.len());
    for (one, other) in rebuilt.runs.iter().zip(&logs.runs) {
        assert_eq!(
            (&one.sync_id, one.checks, &one.first_checked_at),
            (&other.sync_id, other.checks, &other.first_checked_at)
        );
    }

    // Past the retention, the rows of runs that changed nothing and every page row go; the
    // runs that changed something stay. A cutoff before them all removes nothing.
    let before_all = domain::Timestamp::from_unix_micros(1).unwrap();
    assert_eq!(
        sync_runs::forget_detail_before(&f.db, before_all)
            .await
            .unwrap(),
        0
    );
    let after_all = domain::Timestamp::now().plus(time::Duration::seconds(1));
    let forgotten = sync_runs::forget_detail_before(&f.db, after_all)
        .await
        .unwrap();
    assert_eq!(forgotten, 4, "{kind}: three quiet rows and one page row");
    let kept: Vec<String> =
        sync_runs::list(&f.db, "acme", "ada", id, &Filter::default(), None, 100)
            .await
            .unwrap()
            .runs
            .into_iter()
            .map(|r| r.sync_id)
            .collect();
    assert_eq!(kept, [g.to_string(), a.to_string()], "{kind}");
    assert!(sync_runs::pages(&f.db, &a.to_string())
        .await
        .unwrap()
        .is_empty());
}

/// A database the previous release built (sync logs version 1, a row per run; Installed
/// version 2; neither with the columns of migration 0014) over a log whose quiet runs each
/// started in the log, as that release's worker wrote them: opened by this release, it is
/// migrated, both read models are rebuilt, and the quiet runs share a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_the_previous_release_built_are_upgraded_and_its_quiet_runs_merged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let store = Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
    let db = ServiceDb::open_sqlite(&path).await.unwrap();
    let runners: Vec<_> = Projection::ALL
        .into_iter()
        .map(|p| {
            let store: Arc<dyn EventStore> = store.clone();
            tokio::spawn(runner::run(p, store, db.clone()))
        })
        .collect();
    let f = Fixture {
        repository: Repository::new(store.clone()),
        store,
        db,
        runners,
        _dir: dir,
    };
    let id = connect(
        &f.repository,
        &system_admin(),
        "hubspot",
        AppScope::Workspace,
    )
    .await;
    let busy = RecordCounts {
        pulled: 10,
        created: 4,
        ..RecordCounts::default()
    };
    let quiet = RecordCounts {
        pulled: 5,
        ..RecordCounts::default()
    };
    let a = one_run(&f, &system(), id, SyncKind::Incremental, busy, true).await;
    let mut quiet_runs = Vec::new();
    for _ in 0..3 {
        quiet_runs.push(one_run(&f, &system(), id, SyncKind::Incremental, quiet, true).await);
    }
    f.sync_logs("ada", id, &Filter::default(), None, 100).await;
    f.installed("ada").await;
    f.stop();
    let (b, d) = (quiet_runs[0], quiet_runs[2]);
    // Back to what the previous release left.
    exec(
        &f.db,
        &format!(
            "ALTER TABLE sync_runs DROP COLUMN checks; \
             ALTER TABLE sync_runs DROP COLUMN first_checked_at; \
             ALTER TABLE sync_runs DROP COLUMN last_checked_at; \
             ALTER TABLE installed DROP COLUMN last_changed_at; \
             DELETE FROM _sqlx_migrations WHERE description = 'quiet runs'; \
             UPDATE checkpoints SET version = 1 WHERE name = 'sync_runs'; \
             UPDATE checkpoints SET version = 2 WHERE name = 'installed'; \
             INSERT INTO sync_runs (sync_id, integration_id, workspace, owner, kind, \
               trigger_kind, requested_by, requested_at, started_at, finished_at, status, pulled, \
               created, updated, deleted, error_code, error_message, duration_ms, position) \
             SELECT '{b}', integration_id, workspace, owner, kind, trigger_kind, requested_by, \
               requested_at, started_at, finished_at, status, pulled, created, updated, deleted, \
               error_code, error_message, duration_ms, position - 2 FROM sync_runs \
             WHERE sync_id = '{d}';"
        ),
    )
    .await;
    f.db.close().await;

    let db = ServiceDb::open_sqlite(&f._dir.path().join("read.db"))
        .await
        .unwrap();
    let runners: Vec<_> = Projection::ALL
        .into_iter()
        .map(|p| {
            let store: Arc<dyn EventStore> = f.store.clone();
            tokio::spawn(runner::run(p, store, db.clone()))
        })
        .collect();
    eventually(
        Duration::from_secs(30),
        "both read models rebuilt",
        || async {
            let mut current = true;
            for projection in Projection::ALL {
                let standing = projections::db::standing(&db, projection.name())
                    .await
                    .unwrap()
                    .expect("a checkpoint row");
                current &= standing.version == projection.version();
            }
            current.then_some(())
        },
    )
    .await;
    let upgraded = Fixture {
        repository: Repository::new(f.store.clone()),
        store: f.store.clone(),
        db,
        runners,
        _dir: tempfile::tempdir().unwrap(),
    };
    let logs = upgraded
        .sync_logs("ada", id, &Filter::default(), None, 100)
        .await;
    let shown: Vec<(String, i64)> = logs
        .runs
        .iter()
        .map(|r| (r.sync_id.clone(), r.checks))
        .collect();
    assert_eq!(shown, [(d.to_string(), 3), (a.to_string(), 1)]);
    assert!(sync_runs::pages(&upgraded.db, &b.to_string())
        .await
        .unwrap()
        .is_empty());
    let row = upgraded.row(id).await;
    assert_eq!(row.last_changed_at, logs.runs[1].finished_at);
    assert_eq!(row.last_sync_at, logs.runs[0].finished_at);
    upgraded.stop();
}

fn system_admin() -> CommandContext {
    as_user("ada", Role::Admin)
}

fn admin_or_owner(n: usize) -> CommandContext {
    if n == 0 {
        as_user("ada", Role::Admin)
    } else {
        as_user(
            "max",
            Role::Member {
                integration_permission: false,
            },
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_is_applied_and_shows_where_it_should() {
    for kind in KINDS {
        every_type(kind).await;
    }
}

async fn every_type(kind: &str) {
    use domain::integration::FieldMapping;
    use domain::ActionId;
    let f = fixture(kind).await;
    let admin = as_user("ada", Role::Admin);
    let id = connect(&f.repository, &admin, "hubspot", AppScope::Workspace).await;
    let before = f.row(id).await;
    let steps = vec![
        (
            IntegrationCommand::RecordConnectionTest {
                ok: true,
                latency_ms: 42,
                answer: "HubSpot answered".into(),
            },
            system(),
        ),
        (
            IntegrationCommand::RecordCredentialsRefresh {
                credential_ref: CredentialRef("vault:x:3".into()),
                expires_at: None,
            },
            system(),
        ),
        (
            IntegrationCommand::ChangeMapping {
                object: "companies".into(),
                fields: vec![FieldMapping {
                    provider_field: "domain".into(),
                    harmony_field: "domain".into(),
                    transform: None,
                }],
                discovered_fields: None,
                expected_version: None,
            },
            admin.clone(),
        ),
        (
            IntegrationCommand::ChangeSyncSchedule {
                every_minutes: Some(15),
            },
            admin.clone(),
        ),
    ];
    for (command, context) in steps {
        run(&f.repository, &context, id, command).await;
    }
    let row = f.row(id).await;
    assert_eq!(row.mapping_version, before.mapping_version + 1);
    assert_eq!(
        (row.status.as_str(), row.actions.clone()),
        ("connected", before.actions.clone())
    );

    // Companion actions: requested, approved or rejected, completed or failed.
    let (first, second, third) = (ActionId::new(), ActionId::new(), ActionId::new());
    let actions = vec![
        IntegrationCommand::RequestAction {
            action_id: first,
            tool: "update_contact".into(),
            arguments: domain::integration::ActionPayload::Plain(
                serde_json::json!({ "id": "1", "email": "a@acme.test" }),
            ),
            auto_approval: None,
        },
        IntegrationCommand::ApproveAction {
            action_id: first,
            reason: Some("looks right".into()),
        },
        IntegrationCommand::RequestAction {
            action_id: second,
            tool: "update_contact".into(),
            arguments: domain::integration::ActionPayload::Plain(serde_json::json!({ "id": "2" })),
            auto_approval: None,
        },
        IntegrationCommand::RejectAction {
            action_id: second,
            reason: None,
        },
        IntegrationCommand::RequestAction {
            action_id: third,
            tool: "search_contacts".into(),
            arguments: domain::integration::ActionPayload::Plain(
                serde_json::json!({ "query": "acme" }),
            ),
            auto_approval: None,
        },
    ];
    for command in actions {
        run(&f.repository, &admin, id, command).await;
    }
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::CompleteAction {
            action_id: first,
            result: domain::integration::ActionPayload::Plain(serde_json::json!({ "ok": true })),
        },
    )
    .await;
    run(
        &f.repository,
        &system(),
        id,
        IntegrationCommand::FailAction {
            action_id: third,
            error: "timeout".into(),
            retryable: true,
        },
    )
    .await;
    // None of these is a sync: the logs stay empty, and Installed shows the same integration.
    let row = f.row(id).await;
    assert_eq!(row.status, "connected");
    assert!(f
        .sync_logs("ada", id, &Filter::default(), None, 10)
        .await
        .runs
        .is_empty());
    // Every event was applied: both checkpoints are at the head of the log.
    let head = f.store.head_position().await.unwrap();
    for projection in Projection::ALL {
        assert_eq!(projection.checkpoint(&f.db).await.unwrap(), head);
    }
    f.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_filters_by_status_app_and_scope_and_pages_by_cursor() {
    for kind in KINDS {
        installed_queries(kind).await;
    }
}

async fn installed_queries(kind: &str) {
    let f = fixture(kind).await;
    let ada = as_user("ada", Role::Admin);
    let max = as_user(
        "max",
        Role::Member {
            integration_permission: false,
        },
    );
    let hubspot = connect(&f.repository, &ada, "hubspot", AppScope::Workspace).await;
    let gmail = connect(&f.repository, &ada, "gmail", AppScope::Personal).await;
    let calendar = connect(&f.repository, &ada, "google-calendar", AppScope::Personal).await;
    let max_gmail = connect(&f.repository, &max, "gmail", AppScope::Personal).await;
    lifecycle::end(
        &f.repository,
        &ada,
        calendar,
        IntegrationCommand::Disconnect {
            reason: "not needed".into(),
            token_revoked: true,
        },
    )
    .await
    .unwrap();
    f.caught_up(Projection::Installed).await;
    let ids = |page: installed::InstalledPage| -> Vec<String> {
        page.rows.into_iter().map(|r| r.integration_id).collect()
    };
    let query = |user: &'static str, filter: installed::Filter| {
        let db = f.db.clone();
        async move {
            installed::page(&db, "acme", user, &filter, None, 50)
                .await
                .unwrap()
        }
    };
    let personal = installed::Filter {
        scope: Some("personal".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(query("ada", personal.clone()).await),
        [gmail.to_string(), calendar.to_string()],
        "{kind}: ada's personal ones, by app"
    );
    assert_eq!(
        ids(query("max", personal).await),
        [max_gmail.to_string()],
        "{kind}"
    );
    let disconnected = installed::Filter {
        status: Some("disconnected".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(query("ada", disconnected).await),
        [calendar.to_string()]
    );
    let gmail_only = installed::Filter {
        app: Some("gmail".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(query("ada", gmail_only.clone()).await),
        [gmail.to_string()]
    );
    assert_eq!(ids(query("max", gmail_only).await), [max_gmail.to_string()]);
    let workspace_connected = installed::Filter {
        status: Some("connected".into()),
        scope: Some("workspace".into()),
        app: Some("hubspot".into()),
    };
    assert_eq!(
        ids(query("max", workspace_connected).await),
        [hubspot.to_string()]
    );

    // One row a page: every row once, in order, and no cursor after the last.
    let all = installed::list(&f.db, "acme", "ada").await.unwrap();
    assert_eq!(all.len(), 3);
    let (mut paged, mut cursor) = (Vec::new(), None);
    loop {
        let page = installed::page(
            &f.db,
            "acme",
            "ada",
            &installed::Filter::default(),
            cursor.as_deref(),
            1,
        )
        .await
        .unwrap();
        assert!(page.rows.len() <= 1);
        paged.extend(page.rows);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, all, "{kind}");
    let refused = installed::page(
        &f.db,
        "acme",
        "ada",
        &installed::Filter::default(),
        Some("not a cursor"),
        10,
    )
    .await;
    assert!(
        matches!(refused, Err(projections::ServiceDbError::BadCursor(_))),
        "{refused:?}"
    );
    f.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_is_passed_over_and_an_undecodable_event_stops_only_its_projection() {
    for kind in KINDS {
        let mut f = fixture(kind).await;
        let ada = as_user("ada", Role::Admin);
        let id = connect(&f.repository, &ada, "hubspot", AppScope::Workspace).await;
        let stream = StreamName::integration(id);
        let last = f
            .store
            .read_stream(&stream, 1, 100)
            .await
            .unwrap()
            .pop()
            .unwrap();
        let raw = |event_type: &str, data: serde_json::Value| eventstore::NewEvent {
            id: domain::EventId::new(),
            event_type: event_type.into(),
            schema: 1,
            data,
            metadata: last.metadata.clone(),
        };
        // A type this version does not know yet, then a known one whose data does not decode.
        let unknown = raw("IntegrationRenamed", serde_json::json!({ "name": "CRM" }));
        f.store
            .append(
                &stream,
                eventstore::ExpectedVersion::Exact(last.version),
                vec![unknown],
            )
            .await
            .unwrap();
        let broken = raw("MappingChanged", serde_json::json!({ "nonsense": 1 }));
        let bad = f
            .store
            .append(
                &stream,
                eventstore::ExpectedVersion::Exact(last.version + 1),
                vec![broken],
            )
            .await
            .unwrap()
            .last_position;
        // Life goes on elsewhere.
        let other = connect(&f.repository, &ada, "gmail", AppScope::Personal).await;
        run(
            &f.repository,
            &ada,
            other,
            IntegrationCommand::RequestSync {
                claimed: false,
                sync_id: SyncId::new(),
                kind: SyncKind::Full,
            },
        )
        .await;

        // Installed stops at the broken event, naming its position ...
        let installed = f.runners.remove(0);
        let stopped = tokio::time::timeout(Duration::from_secs(30), installed)
            .await
            .expect("Installed stops")
            .unwrap();
        match stopped {
            Err(runner::RunError::Apply(installed::ApplyError::Undecodable {
                position, ..
            })) => assert_eq!(position, bad, "{kind}"),
            other => panic!("{kind}: {other:?}"),
        }
        assert_eq!(
            Projection::Installed.checkpoint(&f.db).await.unwrap(),
            bad - 1,
            "{kind}: everything before it applied, the unknown type passed over"
        );
        // ... while the sync logs, which do not read mappings, go on past it.
        let logs = f
            .sync_logs("ada", other, &Filter::default(), None, 10)
            .await;
        assert_eq!(logs.runs.len(), 1, "{kind}");
        f.check_runners();
        f.stop();
    }
}

/// During a rolling upgrade a newer process migrates the database first; an older one
/// (restarted meanwhile) must still start on it.
#[tokio::test]
async fn an_older_process_starts_on_a_database_a_newer_one_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let db = ServiceDb::open_sqlite(&path).await.unwrap();
    projections::db::execute(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999999, 'from a newer release', TRUE, x'00', 0)",
        &[],
    )
    .await
    .unwrap();
    db.close().await;
    let again = ServiceDb::open_sqlite(&path).await;
    assert!(again.is_ok(), "{:?}", again.err());
}
