//! Installed from real commands: rows for each step of an integration's life, the visibility
//! of personal integrations, and a rebuild equal to the view built as the log grew.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use domain::catalog::AppScope;
use domain::integration::{ConnectIntegration, ExpiryReason, RecordCounts, SyncKind};
use domain::{
    Caller, CommandContext, CredentialRef, IntegrationCommand, IntegrationId, Principal, Role,
    StreamName, SyncId, Timestamp,
};
use eventstore::lifecycle::{self, DEFAULT_ABANDON_AFTER};
use eventstore::repository::Repository;
use eventstore::{EventStore, SledEventStore};
use projections::installed::{self, InstalledRow};
use projections::{runner, ReadDb};

fn as_user(name: &str, role: Role) -> CommandContext {
    CommandContext::new(
        Caller::User(Principal {
            user: name.parse().unwrap(),
            workspace: "acme".parse().unwrap(),
            role,
        }),
        Timestamp::now(),
    )
}

fn system() -> CommandContext {
    CommandContext::new(
        Caller::System {
            reason: "adapter".into(),
        },
        Timestamp::now(),
    )
}

async fn connect(
    repository: &Repository,
    ctx: &CommandContext,
    app: &str,
    scope: AppScope,
) -> IntegrationId {
    let command = ConnectIntegration {
        integration: IntegrationId::new(),
        app: app.into(),
        scope,
        setup: Default::default(),
        granted_scopes: vec![],
        account_label: Some("Acme".into()),
        credential_ref: CredentialRef("vault:x:1".into()),
        token_expires_at: None,
    };
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
    db: ReadDb,
    runner: tokio::task::JoinHandle<Result<(), runner::RunError>>,
}

/// A fresh read database of each kind: SQLite in `dir`, and a new database on the test run's
/// PostgreSQL (`HARMONY_TEST_DATABASE_URL`, set by ./scripts/test.sh).
async fn fresh_db(kind: &str, dir: &std::path::Path) -> ReadDb {
    match kind {
        "sqlite" => ReadDb::open_sqlite(&dir.join(format!("read-{}.db", uuid::Uuid::now_v7())))
            .await
            .unwrap(),
        _ => {
            let url = std::env::var("HARMONY_TEST_DATABASE_URL").expect(
                "HARMONY_TEST_DATABASE_URL names the test PostgreSQL: run ./scripts/test.sh",
            );
            let name = format!("t{}", uuid::Uuid::now_v7().simple());
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let (before, after) = url.split_once('?').unwrap_or((url.as_str(), ""));
            let (base, _) = before.rsplit_once('/').unwrap();
            ReadDb::connect_postgres(&format!("{base}/{name}?{after}"))
                .await
                .unwrap()
        }
    }
}

const KINDS: [&str; 2] = ["sqlite", "postgres"];

async fn fixture(kind: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
    let db = fresh_db(kind, dir.path()).await;
    let runner = tokio::spawn(runner::run_installed(store.clone(), db.clone()));
    Fixture {
        repository: Repository::new(store.clone()),
        store,
        db,
        runner,
        _dir: dir,
    }
}

impl Fixture {
    /// Installed as `user` sees it once the projection has caught up with the log.
    async fn installed(&self, user: &str) -> Vec<InstalledRow> {
        let head = self.store.head_position().await.unwrap();
        assert!(
            runner::wait_for(&self.db, head, Duration::from_secs(30))
                .await
                .unwrap(),
            "the projection did not catch up"
        );
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
        },
    )
    .await;
    let row = f.row(id).await;
    assert_eq!(
        (row.status.as_str(), row.last_sync_outcome.as_deref()),
        ("error", Some("failed"))
    );

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
    f.runner.abort();
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
    f.runner.abort();
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
                },
            )
            .await;
        }
    }
    let live = f.installed("max").await;
    assert_eq!(live.len(), 2);
    f.runner.abort();

    // Every event at once into an empty database, and again on top (nothing applies twice).
    let all = f.store.read_all(1, 100_000).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fresh = ReadDb::open_sqlite(&dir.path().join("rebuilt.db"))
        .await
        .unwrap();
    installed::apply(&fresh, &all).await.unwrap();
    installed::apply(&fresh, &all).await.unwrap();
    assert_eq!(installed::list(&fresh, "acme", "max").await.unwrap(), live);
    assert_eq!(
        installed::checkpoint(&fresh).await.unwrap(),
        all.last().unwrap().position
    );
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
