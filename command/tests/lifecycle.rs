//! One active connection per app per scope owner, under concurrency and after crashes.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use command::lifecycle::{self, DEFAULT_ABANDON_AFTER};
use command::repository::{Repository, RepositoryError};
use domain::catalog::AppScope;
use domain::integration::ConnectIntegration;
use domain::policy::{PolicyChange, PolicyCommand};
use domain::testing::{as_user, connect_command};
use domain::{
    CommandContext, DomainError, Integration, IntegrationCommand, IntegrationId, Role, Status,
    StreamName, Timestamp, WorkspacePolicy,
};
use eventstore::{EventStore, SledEventStore};

fn member(name: &str) -> CommandContext {
    as_user(
        name,
        Role::Member {
            integration_permission: false,
        },
    )
}

fn command(app: &str, scope: AppScope) -> ConnectIntegration {
    connect_command(app, scope, &[])
}

fn open() -> (tempfile::TempDir, Arc<SledEventStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_connects_of_one_app_leave_exactly_one_connection() {
    let (_dir, store) = open();
    let mut tasks = Vec::new();
    for i in 0..24 {
        // Separate repositories, as separate processes would have: nothing shared but the log.
        let repository = Repository::new(store.clone());
        tasks.push(tokio::spawn(async move {
            let ctx = as_user(if i % 2 == 0 { "ada" } else { "mia" }, Role::Admin);
            lifecycle::connect(
                &repository,
                &ctx,
                command("hubspot", AppScope::Workspace),
                DEFAULT_ABANDON_AFTER,
            )
            .await
        }));
    }
    let mut connected = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(executed) => connected.push(executed.state.profile.unwrap().id),
            Err(RepositoryError::Domain(DomainError::SlotTaken { .. })) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(connected.len(), 1, "{connected:?}");
    let all = store.read_all(1, 10_000).await.unwrap();
    assert_eq!(
        all.iter()
            .filter(|e| e.event_type == "IntegrationConnected")
            .count(),
        1
    );
    assert_eq!(
        all.iter()
            .filter(|e| e.event_type == "ConnectionSlotReserved")
            .count(),
        1
    );
}

#[tokio::test]
async fn personal_apps_have_one_slot_per_user_and_disconnect_frees_the_slot() {
    let (_dir, store) = open();
    let repository = Repository::new(store.clone());
    let max = member("max");
    let zoe = member("zoe");
    let first = lifecycle::connect(
        &repository,
        &max,
        command("gmail", AppScope::Personal),
        DEFAULT_ABANDON_AFTER,
    )
    .await
    .unwrap();
    lifecycle::connect(
        &repository,
        &zoe,
        command("gmail", AppScope::Personal),
        DEFAULT_ABANDON_AFTER,
    )
    .await
    .unwrap();
    let second = lifecycle::connect(
        &repository,
        &max,
        command("gmail", AppScope::Personal),
        DEFAULT_ABANDON_AFTER,
    )
    .await;
    assert!(
        matches!(
            second,
            Err(RepositoryError::Domain(DomainError::SlotTaken { .. }))
        ),
        "{second:?}"
    );

    let id = first.state.profile.unwrap().id;
    let ended = lifecycle::end(
        &repository,
        &max,
        id,
        IntegrationCommand::Disconnect {
            reason: "switching account".into(),
            token_revoked: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(ended.state.status, Status::Disconnected);
    let again = lifecycle::connect(
        &repository,
        &max,
        command("gmail", AppScope::Personal),
        DEFAULT_ABANDON_AFTER,
    )
    .await
    .unwrap();
    assert_ne!(
        again.state.profile.unwrap().id,
        id,
        "reconnecting starts a new integration"
    );
}

#[tokio::test]
async fn a_refused_connect_reserves_nothing() {
    let (_dir, store) = open();
    let repository = Repository::new(store.clone());
    let member = member("max");
    let refused = lifecycle::connect(
        &repository,
        &member,
        command("hubspot", AppScope::Workspace),
        DEFAULT_ABANDON_AFTER,
    )
    .await;
    assert!(matches!(
        refused,
        Err(RepositoryError::Domain(DomainError::Forbidden(_)))
    ));
    assert_eq!(store.head_position().await.unwrap(), 0);
}

/// A process reserved the slot and died before writing `IntegrationConnected`.
async fn crashed_connect(repository: &Repository, at: Timestamp) -> IntegrationId {
    let holder = IntegrationId::new();
    let reserve = PolicyCommand {
        workspace: "acme".parse().unwrap(),
        change: PolicyChange::ReserveConnectionSlot {
            app: "hubspot".into(),
            owner: None,
            integration: holder,
        },
    };
    let mut ctx = as_user("ada", Role::Admin);
    ctx.now = at;
    repository
        .execute::<WorkspacePolicy>(
            &StreamName::workspace(&"acme".parse().unwrap()),
            &reserve,
            &ctx,
        )
        .await
        .unwrap();
    holder
}

#[tokio::test]
async fn an_unfinished_connect_holds_the_slot_until_it_is_abandoned() {
    let (_dir, store) = open();
    let repository = Repository::new(store.clone());
    let now = Timestamp::now();
    let holder = crashed_connect(&repository, now).await;
    let abandon_after = Duration::from_secs(60);

    // Within the grace period the connect may still be in flight: the slot stays taken.
    let early = lifecycle::connect(
        &repository,
        &as_user("mia", Role::Admin),
        command("hubspot", AppScope::Workspace),
        abandon_after,
    )
    .await;
    assert!(
        matches!(early, Err(RepositoryError::Domain(DomainError::SlotTaken { holder: h, .. })) if h == holder)
    );

    let mut later = as_user("mia", Role::Admin);
    later.now = now.plus(time::Duration::seconds(61));
    let connected = lifecycle::connect(
        &repository,
        &later,
        command("hubspot", AppScope::Workspace),
        abandon_after,
    )
    .await
    .unwrap();
    assert_eq!(connected.state.status, Status::Connected);

    // The abandoned stream is closed, so the slow connect can never land after all.
    let holder_state = repository
        .load::<Integration>(&StreamName::integration(holder))
        .await
        .unwrap()
        .state;
    assert_eq!(holder_state.status, Status::Abandoned);
    let mut slow = command("hubspot", AppScope::Workspace);
    slow.integration = holder;
    let late = repository
        .execute::<Integration>(
            &StreamName::integration(holder),
            &IntegrationCommand::Connect(slow),
            &as_user("ada", Role::Admin),
        )
        .await;
    assert!(
        matches!(
            late,
            Err(RepositoryError::Domain(DomainError::AlreadyConnected))
        ),
        "{late:?}"
    );
}

#[tokio::test]
async fn a_slot_left_by_a_disconnect_that_crashed_before_releasing_is_repaired() {
    let (_dir, store) = open();
    let repository = Repository::new(store.clone());
    let admin = as_user("ada", Role::Admin);
    let first = lifecycle::connect(
        &repository,
        &admin,
        command("hubspot", AppScope::Workspace),
        DEFAULT_ABANDON_AFTER,
    )
    .await
    .unwrap();
    let id = first.state.profile.unwrap().id;
    // Disconnect without the release, as if the process died in between.
    repository
        .execute::<Integration>(
            &StreamName::integration(id),
            &IntegrationCommand::Disconnect {
                reason: "x".into(),
                token_revoked: false,
            },
            &admin,
        )
        .await
        .unwrap();
    let second = lifecycle::connect(
        &repository,
        &admin,
        command("hubspot", AppScope::Workspace),
        DEFAULT_ABANDON_AFTER,
    )
    .await
    .unwrap();
    assert_eq!(second.state.status, Status::Connected);
}
