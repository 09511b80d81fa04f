//! The sync worker end to end on the embedded stack (sled log, sled records log, SQLite) against
//! the fake HubSpot: full and incremental runs, change detection by content hash, deletions,
//! mappings, token refresh and revocation, faults, cancellation, coalescing and resuming.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use adapters::credentials::CredentialService;
use adapters::http::{ProviderHttp, RetryPolicy};
use adapters::oauth::{OAuthClient, Revocation};
use adapters::provider::Credentials;
use adapters::providers::{Endpoints, Providers};
use adapters::sync::{RunLogs, SyncConfig, SyncWorker};
use adapters::vault::{MasterKey, Vault};
use command::repository::Repository;
use database::lease::Leases;
use database::ServiceDb;
use domain::integration::{
    FieldMapping, Integration, IntegrationCommand, IntegrationEvent, Status, SyncKind,
};
use domain::testing::as_user;
use domain::{IntegrationId, Role, StreamName, SyncId};
use eventstore::waiting::eventually;
use eventstore::{
    RecordLog, RecordOp, RunDetailLog, SledEventStore, SledRecordLog, SledRunDetailLog,
    StoredRecordChange,
};
use fakes::hubspot::{self as fake, FakeHubSpot};
use secrecy::SecretString;
use url::Url;

const WAIT: Duration = Duration::from_secs(30);

struct World {
    _dir: tempfile::TempDir,
    fake: FakeHubSpot,
    repo: Arc<Repository>,
    records: Arc<SledRecordLog>,
    detail: Arc<SledRunDetailLog>,
    db: ServiceDb,
    vault: Arc<Vault>,
    worker: SyncWorker,
    follower: tokio::task::JoinHandle<()>,
    id: IntegrationId,
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
        budget: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
    }
}

fn hubspot_client(fake: &FakeHubSpot) -> OAuthClient {
    let base = &fake.server.base;
    OAuthClient {
        client_id: fake::CLIENT_ID.into(),
        client_secret: SecretString::from(fake::CLIENT_SECRET),
        authorize_url: base.join("oauth/authorize").unwrap(),
        token_url: base.join("oauth/v1/token").unwrap(),
        revocation: Some(Revocation::DeleteRefreshToken(
            base.join("oauth/v1/refresh-tokens/").unwrap(),
        )),
        credentials_in_body: true,
        issuer: None,
        extra_authorize_params: Vec::new(),
    }
}

fn start_worker(
    repo: &Arc<Repository>,
    records: &Arc<SledRecordLog>,
    detail: &Arc<SledRunDetailLog>,
    db: &ServiceDb,
    vault: &Arc<Vault>,
    fake: &FakeHubSpot,
) -> (SyncWorker, tokio::task::JoinHandle<()>) {
    let http = ProviderHttp::new(adapters::outbound::Outbound::loopback(), policy());
    let endpoints = Endpoints {
        hubspot_api: fake.server.base.clone(),
        ..Endpoints::default()
    };
    let leases = Leases::new(db.clone(), Leases::process_holder());
    let credentials = CredentialService::new(
        repo.clone(),
        vault.clone(),
        leases.clone(),
        BTreeMap::from([("hubspot".to_owned(), hubspot_client(fake))]),
        ProviderHttp::default_client(),
        Url::parse("http://127.0.0.1/v1/oauth/callback").unwrap(),
    );
    let worker = SyncWorker::new(
        repo.clone(),
        RunLogs {
            records: records.clone(),
            detail: detail.clone(),
        },
        db.clone(),
        Arc::new(credentials),
        Providers::new(&endpoints, &http),
        leases,
        SyncConfig {
            lease_ttl: Duration::from_secs(3),
            max_concurrent_runs: 4,
        },
    );
    let follower = {
        let worker = worker.clone();
        tokio::spawn(async move {
            worker.follow().await.unwrap();
        })
    };
    (worker, follower)
}

impl World {
    async fn new(contacts: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        Self::on(dir, db, contacts).await
    }

    /// The read models (hashes, watermarks, leases, the vault) on PostgreSQL.
    async fn on_postgres(contacts: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = database::test_support::postgres_database().await;
        let db = ServiceDb::connect_postgres(&url).await.unwrap();
        Self::on(dir, db, contacts).await
    }

    async fn on(dir: tempfile::TempDir, db: ServiceDb, contacts: u64) -> Self {
        let store = SledEventStore::open(dir.path().join("events")).unwrap();
        let repo = Arc::new(Repository::new(Arc::new(store)));
        let records = Arc::new(
            SledRecordLog::open(dir.path().join("records"), Duration::from_secs(86_400)).unwrap(),
        );
        let detail = Arc::new(SledRunDetailLog::open(dir.path().join("run-detail")).unwrap());
        let vault = Arc::new(Vault::new(db.clone(), MasterKey::generate()));
        let fake = FakeHubSpot::start(contacts, 5).await.unwrap();

        // Connect HubSpot as the admin, with tokens the fake issued.
        let id = fake
            .connect(
                &repo,
                &vault,
                &as_user("ada", Role::Admin),
                &["oauth", "crm.objects.contacts.read"],
                None,
            )
            .await
            .unwrap();
        let (worker, follower) = start_worker(&repo, &records, &detail, &db, &vault, &fake);
        Self {
            _dir: dir,
            fake,
            repo,
            records,
            detail,
            db,
            vault,
            worker,
            follower,
            id,
        }
    }

    fn stream(&self) -> StreamName {
        StreamName::integration(self.id)
    }

    async fn state(&self) -> Integration {
        self.repo
            .load::<Integration>(&self.stream())
            .await
            .unwrap()
            .state
    }

    async fn command(&self, command: IntegrationCommand) {
        self.repo
            .execute::<Integration>(&self.stream(), &command, &as_user("ada", Role::Admin))
            .await
            .unwrap();
    }

    /// Requests a sync as the service does: queued to follow a run a worker holds, joining a
    /// pending one nobody claimed yet.
    async fn request(&self, kind: SyncKind) -> SyncId {
        let sync_id = SyncId::new();
        let leases = Leases::new(self.db.clone(), "a request");
        let claimed = adapters::sync::run_claimed(&leases, self.id).await.unwrap();
        self.command(IntegrationCommand::RequestSync {
            sync_id,
            kind,
            claimed,
        })
        .await;
        sync_id
    }

    /// Requests a sync and waits until it ended; returns its last event.
    async fn sync(&self, kind: SyncKind) -> IntegrationEvent {
        let sync_id = self.request(kind).await;
        self.ended(sync_id).await
    }

    async fn ended(&self, sync_id: SyncId) -> IntegrationEvent {
        eventually(WAIT, "the sync run ends", || async {
            self.events().await.into_iter().find(|event| match event {
                IntegrationEvent::SyncCompleted(done) => done.sync_id == sync_id,
                IntegrationEvent::SyncFailed(failed) => failed.sync_id == sync_id,
                _ => false,
            })
        })
        .await
    }

    async fn events(&self) -> Vec<IntegrationEvent> {
        self.repo
            .store()
            .read_stream(&self.stream(), 1, 100_000)
            .await
            .unwrap()
            .iter()
            .filter_map(|event| event.decode::<IntegrationEvent>().unwrap())
            .collect()
    }

    /// What run `sync_id` recorded in its detail (the run-detail log).
    async fn detail_of(&self, sync_id: SyncId) -> Vec<IntegrationEvent> {
        self.detail
            .read(sync_id)
            .await
            .unwrap()
            .iter()
            .filter_map(|event| event.decode::<IntegrationEvent>().unwrap())
            .collect()
    }

    async fn changes(&self) -> Vec<StoredRecordChange> {
        self.records.read(1, 10_000_000).await.unwrap()
    }

    async fn changes_of(&self, sync_id: SyncId) -> Vec<StoredRecordChange> {
        self.changes()
            .await
            .into_iter()
            .filter(|c| c.change.sync_id == sync_id)
            .collect()
    }
}

fn completed(event: &IntegrationEvent) -> (SyncId, domain::integration::RecordCounts) {
    match event {
        IntegrationEvent::SyncCompleted(done) => (done.sync_id, done.totals),
        other => panic!("expected SyncCompleted, got {other:?}"),
    }
}

#[tokio::test]
async fn a_full_sync_publishes_each_record_once_and_an_unchanged_one_nothing() {
    let world = World::new(250).await;
    let (first, totals) = completed(&world.sync(SyncKind::Full).await);
    // 250 contacts and 5 companies.
    assert_eq!(
        (
            totals.pulled,
            totals.created,
            totals.updated,
            totals.deleted
        ),
        (255, 255, 0, 0)
    );
    let changes = world.changes_of(first).await;
    assert_eq!(changes.len(), 255);
    let ids: BTreeSet<(String, String)> = changes
        .iter()
        .map(|c| (c.change.object.clone(), c.change.record_id.clone()))
        .collect();
    assert_eq!(ids.len(), 255, "no record published twice");
    let jane = changes
        .iter()
        .find(|c| c.change.object == "contacts" && c.change.record_id == "7")
        .unwrap();
    assert_eq!(jane.change.op, RecordOp::Created);
    assert_eq!(jane.change.data["firstname"], "First7");
    assert_eq!(jane.change.data["email"], "contact7@example.com");

    let (second, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!(
        (
            totals.pulled,
            totals.created,
            totals.updated,
            totals.deleted
        ),
        (255, 0, 0, 0)
    );
    assert!(
        world.changes_of(second).await.is_empty(),
        "nothing changed, nothing published"
    );

    // Each run left its request and its outcome in the integration's stream, nothing else.
    // The first recorded its start and its pages, each with counts and a cursor, in its
    // detail, and its outcome commits to the detail's head; the second, which changed nothing
    // and took well under the quiet interval, recorded no detail at all.
    let events = world.events().await;
    let of_run = |run: SyncId| {
        events
            .iter()
            .filter(|e| match e {
                IntegrationEvent::SyncRequested(x) => x.sync_id == run,
                IntegrationEvent::SyncStarted(x) => x.sync_id == run,
                IntegrationEvent::SyncProgressed(x) => x.sync_id == run,
                IntegrationEvent::SyncCompleted(x) => x.sync_id == run,
                _ => false,
            })
            .count()
    };
    assert_eq!((of_run(first), of_run(second)), (2, 2));
    let detail = world.detail_of(first).await;
    assert!(matches!(detail[0], IntegrationEvent::SyncStarted(_)));
    let pages = detail
        .iter()
        .filter(|e| matches!(e, IntegrationEvent::SyncProgressed(p) if p.cursor.is_some()))
        .count();
    assert!(
        pages >= 4,
        "three contact pages and one company page recorded: {pages}"
    );
    let head = events
        .iter()
        .find_map(|e| match e {
            IntegrationEvent::SyncCompleted(done) if done.sync_id == first => done.detail.clone(),
            _ => None,
        })
        .expect("the first run's outcome commits to its detail");
    assert_eq!(head.version, detail.len() as u64);
    let check = eventstore::check_detail(
        world.detail.as_ref(),
        first,
        head.version,
        &head.hash,
        domain::Timestamp::now(),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert_eq!(
        check,
        eventstore::DetailCheck::Intact {
            events: detail.len() as u64
        }
    );
    assert!(
        world.detail_of(second).await.is_empty(),
        "nothing changed: no start, no progress recorded"
    );
    world.follower.abort();
}

/// The events a run left in the integration's stream, as the log stores them.
async fn stored_events_of(world: &World, run: SyncId) -> Vec<eventstore::RecordedEvent> {
    world
        .repo
        .store()
        .read_stream(&world.stream(), 1, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| {
            let sync_id = match event.decode::<IntegrationEvent>().unwrap() {
                Some(IntegrationEvent::SyncRequested(e)) => e.sync_id,
                Some(IntegrationEvent::SyncStarted(e)) => e.sync_id,
                Some(IntegrationEvent::SyncProgressed(e)) => e.sync_id,
                Some(IntegrationEvent::SyncCompleted(e)) => e.sync_id,
                Some(IntegrationEvent::SyncFailed(e)) => e.sync_id,
                _ => return false,
            };
            sync_id == run
        })
        .collect()
}

#[tokio::test]
async fn an_incremental_run_that_finds_nothing_leaves_two_events_and_under_4_kb() {
    let world = World::new(250).await;
    world.sync(SyncKind::Full).await;
    world.worker.wait_idle().await;
    let before = world.events().await.len();
    let asked = world.fake.counters.requests.load(Ordering::SeqCst);
    let (idle, totals) = completed(&world.sync(SyncKind::Incremental).await);
    world.worker.wait_idle().await;
    assert_eq!((totals.created, totals.updated, totals.deleted), (0, 0, 0));
    // Counted across the whole log: nothing else was appended anywhere for this run.
    assert_eq!(world.events().await.len(), before + 2);
    let events = stored_events_of(&world, idle).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["SyncRequested", "SyncCompleted"]);
    let bytes: usize = events
        .iter()
        .map(|event| {
            eventstore::wire::encode(eventstore::wire::EventParts::from(event))
                .unwrap()
                .len()
        })
        .sum();
    assert!(bytes <= 4096, "the idle run stored {bytes} bytes");
    assert!(
        world.detail_of(idle).await.is_empty(),
        "and no detail in the run-detail log"
    );
    assert!(world.changes_of(idle).await.is_empty(), "nothing published");
    // Asked the cheap way: one search for a single record per object, no page pulled.
    assert_eq!(
        world.fake.counters.requests.load(Ordering::SeqCst) - asked,
        2
    );
    world.follower.abort();
}

#[tokio::test]
async fn a_change_made_while_a_worker_holds_a_quiet_run_is_taken_by_a_follow_up() {
    let world = World::new(400).await;
    world.sync(SyncKind::Full).await;
    world.worker.wait_idle().await;
    // A quiet full run, slowed so that it is still reading when the change is made.
    world.fake.faults.slow(Duration::from_millis(150));
    let leases = Leases::new(world.db.clone(), "the-gateway");
    let asked = world.fake.counters.requests.load(Ordering::SeqCst);
    let quiet = world.request(SyncKind::Full).await;
    eventually(
        WAIT,
        "the run has claimed and read its first pages",
        || async {
            let claimed = adapters::sync::run_claimed(&leases, world.id)
                .await
                .unwrap();
            let read = world.fake.counters.requests.load(Ordering::SeqCst) - asked;
            (claimed && read >= 2).then_some(())
        },
    )
    .await;
    // Contact 1 lives on the first page, which the run has read already: a request that
    // joined this run would never see the change.
    world.fake.set("contacts", 1, &[("firstname", "Changed")]);
    let claimed = adapters::sync::run_claimed(&leases, world.id)
        .await
        .unwrap();
    assert!(claimed);
    let follow_up = SyncId::new();
    world
        .command(IntegrationCommand::RequestSync {
            sync_id: follow_up,
            kind: SyncKind::Incremental,
            claimed,
        })
        .await;
    // Queued behind the claimed run (or, had the run recorded a quiet page in the meantime
    // and so started in the log, pending after it): never joined to it.
    let state = world.state().await;
    assert!(
        [&state.queued_sync, &state.pending_sync]
            .into_iter()
            .flatten()
            .any(|run| run.sync_id == follow_up),
        "{state:?}"
    );
    assert!(
        state
            .pending_sync
            .as_ref()
            .is_some_and(|run| run.sync_id == quiet)
            || state
                .running_sync
                .as_ref()
                .is_some_and(|run| run.sync_id == quiet)
    );
    world.fake.faults.slow(Duration::ZERO);
    let (_, quiet_totals) = completed(&world.ended(quiet).await);
    let (_, totals) = completed(&world.ended(follow_up).await);
    assert_eq!(quiet_totals.updated + totals.updated, 1);
    assert_eq!(totals.updated, 1, "the follow-up found the change");
    let changes = world.changes_of(follow_up).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].change.record_id, "1");
    assert_eq!(changes[0].change.op, RecordOp::Updated);
    world.follower.abort();
}

#[tokio::test]
async fn a_full_sync_finds_changes_and_deletions_and_an_incremental_one_only_changes() {
    let world = World::new(120).await;
    world.sync(SyncKind::Full).await;
    world.fake.set("contacts", 3, &[("firstname", "Changed")]);
    world
        .fake
        .set("contacts", 121, &[("email", "new@example.com")]);
    world.fake.archive("contacts", 9);

    let (incremental, totals) = completed(&world.sync(SyncKind::Incremental).await);
    assert_eq!((totals.created, totals.updated, totals.deleted), (1, 1, 0));
    let ops: BTreeMap<String, RecordOp> = world
        .changes_of(incremental)
        .await
        .into_iter()
        .map(|c| (c.change.record_id, c.change.op))
        .collect();
    assert_eq!(
        ops,
        BTreeMap::from([
            ("3".into(), RecordOp::Updated),
            ("121".into(), RecordOp::Created)
        ])
    );

    let (full, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!((totals.created, totals.updated, totals.deleted), (0, 0, 1));
    let deleted: Vec<_> = world.changes_of(full).await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].change.record_id, "9");
    assert_eq!(deleted[0].change.op, RecordOp::Deleted);
    assert!(deleted[0].change.data.is_null());
    world.follower.abort();
}

#[tokio::test]
async fn field_mappings_shape_the_published_records() {
    let world = World::new(20).await;
    world.sync(SyncKind::Full).await;
    world
        .command(IntegrationCommand::ChangeMapping {
            object: "contacts".into(),
            fields: vec![
                FieldMapping {
                    provider_field: "email".into(),
                    harmony_field: "email".into(),
                    transform: Some(domain::integration::Transform::Uppercase),
                },
                FieldMapping {
                    provider_field: "firstname".into(),
                    harmony_field: "first_name".into(),
                    transform: None,
                },
            ],
            discovered_fields: None,
            expected_version: None,
        })
        .await;
    let (mapped, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!(totals.updated, 20, "every contact's shape changed");
    let change = world
        .changes_of(mapped)
        .await
        .into_iter()
        .find(|c| c.change.record_id == "4" && c.change.object == "contacts")
        .unwrap();
    assert_eq!(
        change.change.data,
        serde_json::json!({"email": "CONTACT4@EXAMPLE.COM", "first_name": "First4"})
    );
    world.follower.abort();
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_once_and_recorded() {
    let world = World::new(30).await;
    let before = world.state().await.credential_ref.unwrap();
    world.fake.auth.expire_access_tokens();
    let (_, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!(totals.created, 35);
    assert_eq!(world.fake.auth.refreshes(), 1);
    let state = world.state().await;
    let after = state.credential_ref.unwrap();
    assert_ne!(before, after, "the refreshed token has a new reference");
    assert!(state.token_expires_at.is_some());
    assert!(world
        .events()
        .await
        .iter()
        .any(|e| matches!(e, IntegrationEvent::CredentialsRefreshed(_))));
    // The refresh kept the refresh token HubSpot returned.
    let stored = Credentials::from_secret(&world.vault.get(&after).await.unwrap()).unwrap();
    assert!(stored.refresh_token.is_some());
    world.follower.abort();
}

#[tokio::test]
async fn a_revoked_grant_marks_the_integration_as_needing_reauth() {
    let world = World::new(30).await;
    world.fake.auth.revoke_everything();
    let sync_id = world.request(SyncKind::Full).await;
    match world.ended(sync_id).await {
        IntegrationEvent::SyncFailed(failed) => {
            assert_eq!(failed.code, "needs_reauth");
            assert!(failed.retryable);
        }
        other => panic!("expected SyncFailed, got {other:?}"),
    }
    let state = world.state().await;
    assert_eq!(state.status, Status::NeedsReauth);
    let expired = world
        .events()
        .await
        .into_iter()
        .find_map(|e| match e {
            IntegrationEvent::CredentialsExpired(expired) => Some(expired),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        expired.reason,
        domain::integration::ExpiryReason::InvalidGrant
    );
    assert!(
        expired.detail.contains("invalid, expired or revoked"),
        "{}",
        expired.detail
    );
    world.follower.abort();
}

#[tokio::test]
async fn rate_limits_and_server_errors_during_a_run_are_waited_out() {
    let world = World::new(300).await;
    world.fake.faults.rate_limit(2, 1);
    world.fake.faults.unavailable(3);
    let (_, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!(totals.created, 305);
    assert_eq!(world.fake.counters.rate_limited.load(Ordering::SeqCst), 2);
    assert_eq!(world.fake.counters.unavailable.load(Ordering::SeqCst), 3);
    world.follower.abort();
}

#[tokio::test]
async fn a_provider_down_past_the_budget_fails_the_run_as_retryable() {
    let world = World::new(30).await;
    world.fake.faults.unavailable(100_000);
    match world.sync(SyncKind::Full).await {
        IntegrationEvent::SyncFailed(failed) => {
            assert_eq!(failed.code, "unavailable");
            assert!(failed.retryable);
            assert!(failed.message.contains("503"), "{}", failed.message);
        }
        other => panic!("expected SyncFailed, got {other:?}"),
    }
    assert_eq!(
        world.state().await.status,
        Status::Connected,
        "a transient failure does not flip the status"
    );
    world.follower.abort();
}

#[tokio::test]
async fn requests_during_a_run_coalesce_into_one_follow_up() {
    let world = World::new(400).await;
    world.fake.faults.slow(Duration::from_millis(50));
    let first = world.request(SyncKind::Full).await;
    eventually(WAIT, "the first run starts", || async {
        (!world.detail_of(first).await.is_empty()).then_some(())
    })
    .await;
    let second = world.request(SyncKind::Full).await;
    let third = world.request(SyncKind::Full).await;
    world.ended(first).await;
    world.ended(second).await;
    world.worker.wait_idle().await;
    let events = world.events().await;
    let requested = events
        .iter()
        .filter(|e| matches!(e, IntegrationEvent::SyncRequested(_)))
        .count();
    let completed_runs = events
        .iter()
        .filter(|e| matches!(e, IntegrationEvent::SyncCompleted(_)))
        .count();
    assert_eq!(
        (requested, completed_runs),
        (2, 2),
        "the third request joined the second"
    );
    assert!(world.detail_of(third).await.is_empty());
    world.follower.abort();
}

#[tokio::test]
async fn a_disconnect_stops_the_running_sync_within_a_second() {
    let world = World::new(2_000).await;
    world.fake.faults.slow(Duration::from_millis(100));
    let sync_id = world.request(SyncKind::Full).await;
    eventually(WAIT, "the run pulled a page", || async {
        world
            .detail_of(sync_id)
            .await
            .iter()
            .any(|e| matches!(e, IntegrationEvent::SyncProgressed(p) if p.page >= 1))
            .then_some(())
    })
    .await;
    command::lifecycle::end(
        &world.repo,
        &as_user("ada", Role::Admin),
        world.id,
        IntegrationCommand::Disconnect {
            reason: "test".into(),
            token_revoked: false,
        },
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(1), "the run stops", || async {
        (!world.worker.is_running(world.id)).then_some(())
    })
    .await;
    let requests = world.fake.counters.requests.load(Ordering::SeqCst);
    match world.ended(sync_id).await {
        IntegrationEvent::SyncFailed(failed) => assert_eq!(failed.code, "cancelled"),
        other => panic!("expected SyncFailed, got {other:?}"),
    }
    // Nothing more is asked of the provider once stopped.
    world.worker.wait_idle().await;
    assert_eq!(
        world.fake.counters.requests.load(Ordering::SeqCst),
        requests
    );
    world.follower.abort();
}

#[tokio::test]
async fn an_interrupted_run_resumes_from_its_last_cursor() {
    let world = World::new(1_000).await;
    world.fake.faults.slow(Duration::from_millis(30));
    let sync_id = world.request(SyncKind::Full).await;
    eventually(WAIT, "three pages done", || async {
        world
            .detail_of(sync_id)
            .await
            .iter()
            .any(|e| matches!(e, IntegrationEvent::SyncProgressed(p) if p.page >= 3))
            .then_some(())
    })
    .await;
    // The process dies: its follower and run stop without recording anything.
    world.follower.abort();
    world.worker.cancel(world.id);
    world.worker.wait_idle().await;
    assert!(
        world
            .state()
            .await
            .pending_sync
            .is_some_and(|p| p.sync_id == sync_id),
        "the run is still open in the log"
    );
    let recorded_before = world.detail_of(sync_id).await.len();
    let asked_before = world.fake.counters.requests.load(Ordering::SeqCst);

    // A new process replays from its dispatch checkpoint and resumes the run.
    let (worker, follower) = start_worker(
        &world.repo,
        &world.records,
        &world.detail,
        &world.db,
        &world.vault,
        &world.fake,
    );
    let (_, totals) = completed(&world.ended(sync_id).await);
    assert_eq!(totals.created, 1_005);
    let changes = world.changes_of(sync_id).await;
    let distinct: BTreeSet<_> = changes
        .iter()
        .map(|c| (c.change.object.clone(), c.change.record_id.clone()))
        .collect();
    assert_eq!(
        (changes.len(), distinct.len()),
        (1_005, 1_005),
        "every record exactly once"
    );
    let asked_after = world.fake.counters.requests.load(Ordering::SeqCst) - asked_before;
    assert!(
        asked_after <= 10,
        "resumed, not restarted: {asked_after} more calls"
    );
    // The resumed run continued the same detail: one start, every page after the first
    // worker's, and the outcome commits to where it ends.
    let detail = world.detail_of(sync_id).await;
    let starts = detail
        .iter()
        .filter(|e| matches!(e, IntegrationEvent::SyncStarted(_)))
        .count();
    assert_eq!(starts, 1);
    assert!(detail.len() > recorded_before);
    let head = match world.ended(sync_id).await {
        IntegrationEvent::SyncCompleted(done) => done.detail.expect("it recorded detail"),
        other => panic!("expected SyncCompleted, got {other:?}"),
    };
    assert_eq!(head.version, detail.len() as u64);
    let pages: Vec<u32> = detail
        .iter()
        .filter_map(|e| match e {
            IntegrationEvent::SyncProgressed(p) => Some(p.page),
            _ => None,
        })
        .collect();
    assert!(
        pages.windows(2).all(|w| w[0] < w[1]),
        "each page recorded once, in order: {pages:?}"
    );
    worker.wait_idle().await;
    follower.abort();
}

#[tokio::test]
async fn a_run_whose_lease_a_dead_process_left_resumes_when_that_lease_runs_out() {
    let world = World::new(300).await;
    // A process died running this integration's sync: its lease stays for its time to live.
    let dead = Leases::new(world.db.clone(), "a-process-that-died");
    let left_for = Duration::from_secs(3);
    let lease = format!("sync:{}", world.id);
    assert!(dead.try_acquire(&lease, left_for).await.unwrap());
    let held_since = std::time::Instant::now();

    let (_, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!(totals.created, 305);
    assert!(
        held_since.elapsed() >= left_for,
        "the run started while another holder's lease stood"
    );
    world.worker.wait_idle().await;
}

#[tokio::test]
async fn on_postgresql_changes_deletions_and_unchanged_records_are_told_apart_the_same() {
    let world = World::on_postgres(120).await;
    let (first, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!((totals.pulled, totals.created), (125, 125));
    assert_eq!(world.changes_of(first).await.len(), 125);

    let (unchanged, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!((totals.created, totals.updated, totals.deleted), (0, 0, 0));
    assert!(world.changes_of(unchanged).await.is_empty());

    world.fake.set("contacts", 3, &[("firstname", "Changed")]);
    world.fake.archive("contacts", 4);
    let (changed, totals) = completed(&world.sync(SyncKind::Full).await);
    assert_eq!((totals.updated, totals.deleted), (1, 1));
    let ops: BTreeMap<String, RecordOp> = world
        .changes_of(changed)
        .await
        .into_iter()
        .map(|c| (c.change.record_id, c.change.op))
        .collect();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops["3"], RecordOp::Updated);
    assert_eq!(ops["4"], RecordOp::Deleted);
}

/// What a subscriber wrote, for reading back.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn what_a_run_logs_names_its_integration_and_its_run() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The process's subscriber (no other test of this binary sets one): a subscriber scoped to
    // this thread races with the callsites other tests' threads register meanwhile, and a
    // line may be lost to it. The other tests' lines land here too; the span picks this run's.
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    let world = World::new(5).await;
    let IntegrationEvent::SyncCompleted(done) = world.sync(SyncKind::Full).await else {
        panic!("the run completes")
    };
    // The run says it ended right after its last event is appended, which the test may see
    // first: wait for the line.
    let span = format!("sync_run{{integration={} sync={}}}", world.id, done.sync_id);
    eventually(WAIT, "a line in the run's span says it ended", || async {
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        logged
            .lines()
            .any(|line| line.contains(&span) && line.contains("the sync run ended"))
            .then_some(())
    })
    .await;
}

/// A log the previous release wrote: a finished run recorded inline (its start and pages in
/// the integration's stream, its `SyncCompleted` schema 1 with no detail) and a run it left
/// half done, inline too. This release resumes the half-done run from its inline cursor,
/// records the rest as detail, and ends it with totals that add both; the old outcome reads
/// as one without detail, and every chain and committed detail verifies.
#[tokio::test]
async fn a_log_the_previous_release_wrote_with_runs_inline_resumes_and_verifies() {
    let world = World::new(300).await;
    world.follower.abort();
    world.worker.cancel(world.id);
    world.worker.wait_idle().await;
    let stream = world.stream();
    let store = world.repo.store().clone();
    let first = store.read_stream(&stream, 1, 1).await.unwrap().remove(0);
    let metadata = domain::Metadata {
        actor: domain::Actor::System("sync worker".into()),
        occurred_at: domain::Timestamp::now(),
        ..first.metadata.clone()
    };
    let raw = |event_type: &str, schema: u32, data: serde_json::Value| eventstore::NewEvent {
        id: domain::EventId::new(),
        event_type: event_type.into(),
        schema,
        data,
        metadata: metadata.clone(),
    };
    let (done, half) = (SyncId::new(), SyncId::new());
    let counts = |pulled: u64| serde_json::json!({"pulled": pulled, "created": 0, "updated": 0, "deleted": 0});
    let version = store.stream_version(&stream).await.unwrap().unwrap();
    store
        .append(
            &stream,
            eventstore::ExpectedVersion::from_version(version),
            vec![
                raw("SyncRequested", 1, serde_json::json!({"sync_id": done, "kind": "full", "trigger": {"by": "schedule"}})),
                raw("SyncStarted", 1, serde_json::json!({"sync_id": done, "cursor": null})),
                raw("SyncProgressed", 1, serde_json::json!({"sync_id": done, "object": "contacts", "page": 1, "counts": counts(7), "cursor": "{\"object\":1}"})),
                raw("SyncCompleted", 1, serde_json::json!({"sync_id": done, "totals": counts(7), "duration_ms": 5})),
                raw("SyncRequested", 1, serde_json::json!({"sync_id": half, "kind": "full", "trigger": {"by": "schedule"}})),
                raw("SyncStarted", 1, serde_json::json!({"sync_id": half, "cursor": null})),
                // Contacts done (300 pulled, as that release counted them); companies next.
                raw("SyncProgressed", 1, serde_json::json!({"sync_id": half, "object": "contacts", "page": 3, "counts": {"pulled": 300, "created": 300, "updated": 0, "deleted": 0}, "cursor": "{\"object\":1}"})),
            ],
        )
        .await
        .unwrap();
    let old = world
        .events()
        .await
        .into_iter()
        .find_map(|e| match e {
            IntegrationEvent::SyncCompleted(c) if c.sync_id == done => Some(c),
            _ => None,
        })
        .expect("the old outcome decodes");
    assert_eq!((old.totals.pulled, old.detail), (7, None));

    let (worker, follower) = start_worker(
        &world.repo,
        &world.records,
        &world.detail,
        &world.db,
        &world.vault,
        &world.fake,
    );
    let (_, totals) = completed(&world.ended(half).await);
    // The inline contacts and the five companies this release pulled.
    assert_eq!((totals.pulled, totals.created), (305, 305));
    let detail = world.detail_of(half).await;
    assert!(matches!(detail[0], IntegrationEvent::SyncStarted(_)));
    assert!(detail[1..].iter().all(
        |e| matches!(e, IntegrationEvent::SyncProgressed(p) if p.object == "companies" && p.page > 3)
    ));
    let chain = eventstore::verify_stream(store.as_ref(), &stream)
        .await
        .unwrap();
    assert!(chain.is_intact(), "{chain:?}");
    let runs = command::run_detail::check_runs(
        store.as_ref(),
        world.detail.as_ref(),
        &stream,
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert_eq!((runs.runs, runs.intact, runs.broken.len()), (1, 1, 0));
    worker.wait_idle().await;
    follower.abort();
}
