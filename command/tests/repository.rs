//! Loading aggregates and executing commands on the sled log.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use command::repository::Repository;
use domain::catalog::AppScope;
use domain::integration::{ConnectIntegration, RecordCounts, SyncKind};
use domain::{
    Caller, CommandContext, CredentialRef, Integration, IntegrationCommand as C, IntegrationEvent,
    IntegrationId, Principal, Role, StreamName, SyncId, Timestamp,
};
use eventstore::{
    AppendResult, EventStore, EventStream, ExpectedVersion, NewEvent, RecordedEvent,
    SledEventStore, Snapshot, StoreError,
};

/// Counts the events handed out by stream reads, to prove loads stay bounded.
struct Counting {
    inner: SledEventStore,
    read: AtomicU64,
}

#[async_trait]
impl EventStore for Counting {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_stream(stream, from, limit).await?;
        self.read.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(events)
    }
    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(from, limit).await
    }
    async fn head_position(&self) -> Result<u64, StoreError> {
        self.inner.head_position().await
    }
    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }
    fn subscribe(&self, from: u64) -> EventStream {
        self.inner.subscribe(from)
    }
    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }
    async fn save_snapshot(
        &self,
        stream: &StreamName,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.save_snapshot(stream, snapshot).await
    }
}

fn admin() -> CommandContext {
    CommandContext::new(
        Caller::User(Principal {
            user: "ada".parse().unwrap(),
            workspace: "acme".parse().unwrap(),
            role: Role::Admin,
        }),
        Timestamp::now(),
    )
}

fn system() -> CommandContext {
    CommandContext::new(Caller::system("sync worker"), Timestamp::now())
}

fn connect(integration: IntegrationId) -> C {
    C::Connect(ConnectIntegration {
        integration,
        app: "hubspot".into(),
        scope: AppScope::Workspace,
        setup: Default::default(),
        granted_scopes: vec!["oauth".into()],
        account_label: None,
        credential_ref: CredentialRef("vault:x:1".into()),
        token_expires_at: None,
    })
}

/// A fresh log holding one connected HubSpot integration.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SledEventStore>,
    repository: Repository,
    stream: StreamName,
    connected: command::repository::Executed<Integration>,
}

async fn connected_hubspot() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let repository = Repository::new(store.clone());
    let id = IntegrationId::new();
    let stream = StreamName::integration(id);
    let connected = repository
        .execute::<Integration>(&stream, &connect(id), &admin())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        store,
        repository,
        stream,
        connected,
    }
}

/// A connected integration with a sync running, whose progress pages are appended in bulk.
async fn long_history(
    store: &dyn EventStore,
    repository: &Repository,
    pages: u64,
) -> (StreamName, SyncId) {
    let id = IntegrationId::new();
    let stream = StreamName::integration(id);
    repository
        .execute::<Integration>(&stream, &connect(id), &admin())
        .await
        .unwrap();
    let sync_id = SyncId::new();
    repository
        .execute::<Integration>(
            &stream,
            &C::RequestSync {
                claimed: false,
                sync_id,
                kind: SyncKind::Full,
            },
            &admin(),
        )
        .await
        .unwrap();
    repository
        .execute::<Integration>(
            &stream,
            &C::StartSync {
                sync_id,
                cursor: None,
            },
            &system(),
        )
        .await
        .unwrap();
    let state = repository.load::<Integration>(&stream).await.unwrap().state;
    let metadata = domain::Aggregate::metadata_for(
        &state,
        &C::CompleteSync {
            sync_id,
            duration_ms: 0,
            unrecorded: Default::default(),
            detail: None,
        },
        &system(),
    );
    let mut page = 0u64;
    while page < pages {
        let batch: Vec<NewEvent> = (0..1000.min(pages - page))
            .map(|i| {
                let event = IntegrationEvent::SyncProgressed(domain::integration::SyncProgressed {
                    sync_id,
                    object: "contacts".into(),
                    page: (page + i + 1) as u32,
                    counts: RecordCounts {
                        pulled: 100,
                        created: 1,
                        updated: 0,
                        deleted: 0,
                    },
                    cursor: Some(format!("after-{}", page + i + 1)),
                });
                NewEvent::from_domain(&event, metadata.clone())
            })
            .collect();
        page += batch.len() as u64;
        store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    (stream, sync_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_an_integration_with_100k_events_reads_a_bounded_number_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let counting = Arc::new(Counting {
        inner: SledEventStore::open(dir.path()).unwrap(),
        read: AtomicU64::new(0),
    });
    let repository = Repository::new(counting.clone());
    let (stream, sync_id) = long_history(counting.as_ref(), &repository, 100_000 - 3).await;
    assert_eq!(
        counting.stream_version(&stream).await.unwrap(),
        Some(100_000)
    );

    // The first load after the bulk append folds everything once and leaves a snapshot.
    let full = repository.load::<Integration>(&stream).await.unwrap();
    assert_eq!(full.version, 100_000);
    let running = full.state.running_sync.clone().unwrap();
    assert_eq!(running.totals.pulled, 9_999_700);
    assert_eq!(running.cursor.as_deref(), Some("after-99997"));

    // From then on a load reads the snapshot's own event plus the tail, however long the
    // history, and yields the same state.
    counting.read.store(0, Ordering::Relaxed);
    let again = repository.load::<Integration>(&stream).await.unwrap();
    assert_eq!(again.state, full.state);
    assert!(
        counting.read.load(Ordering::Relaxed) <= 2,
        "read {} events",
        counting.read.load(Ordering::Relaxed)
    );

    let completed = repository
        .execute::<Integration>(
            &stream,
            &C::CompleteSync {
                sync_id,
                duration_ms: 5,
                unrecorded: Default::default(),
                detail: None,
            },
            &system(),
        )
        .await
        .unwrap();
    assert_eq!(completed.events.len(), 1);
    counting.read.store(0, Ordering::Relaxed);
    let after = repository.load::<Integration>(&stream).await.unwrap();
    assert!(after.state.running_sync.is_none());
    assert!(
        counting.read.load(Ordering::Relaxed) <= repository.snapshot_every,
        "a load read {} events",
        counting.read.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_snapshot_that_no_longer_matches_the_log_is_ignored() {
    let Fixture {
        store,
        repository,
        stream,
        ..
    } = connected_hubspot().await;
    let honest = repository.load::<Integration>(&stream).await.unwrap();
    // A snapshot claiming a state the log never had, at a hash the log does not have.
    let mut forged = honest.state.clone();
    forged.status = domain::Status::Deleted;
    let snapshot = Snapshot {
        version: 1,
        schema: 1,
        hash: eventstore::ChainHash([9; 32]),
        state: serde_json::to_vec(&forged).unwrap(),
    };
    store.save_snapshot(&stream, snapshot).await.unwrap();
    assert_eq!(
        repository.load::<Integration>(&stream).await.unwrap().state,
        honest.state
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_integration_are_decided_one_after_another() {
    let Fixture {
        store,
        repository,
        stream,
        ..
    } = connected_hubspot().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let repository = repository.clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            repository
                .execute::<Integration>(
                    &stream,
                    &C::RequestSync {
                        claimed: false,
                        sync_id: SyncId::new(),
                        kind: SyncKind::Full,
                    },
                    &admin(),
                )
                .await
        }));
    }
    let mut recorded = 0;
    for task in tasks {
        recorded += task.await.unwrap().unwrap().events.len();
    }
    // Every request was decided against the latest state: one was recorded, the rest were
    // coalesced into it.
    assert_eq!(recorded, 1);
    let events = store.read_stream(&stream, 1, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "SyncRequested")
            .count(),
        1
    );
}

#[tokio::test]
async fn the_state_as_of_a_moment_folds_only_what_had_happened_by_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let repository = Repository::new(store.clone());
    let id = IntegrationId::new();
    let stream = StreamName::integration(id);
    let t0 = Timestamp::parse("2026-01-01T10:00:00Z").unwrap();
    let at = |minutes: i64| {
        let mut ctx = admin();
        ctx.now = t0.plus(time::Duration::minutes(minutes));
        ctx
    };
    repository
        .execute::<Integration>(&stream, &connect(id), &at(0))
        .await
        .unwrap();
    repository
        .execute::<Integration>(
            &stream,
            &C::Disconnect {
                reason: "done".into(),
                token_revoked: true,
            },
            &at(10),
        )
        .await
        .unwrap();
    let before = repository
        .load_as_of::<Integration>(&stream, t0.plus(time::Duration::minutes(5)))
        .await
        .unwrap();
    assert_eq!(before.state.status, domain::Status::Connected);
    assert_eq!(before.version, 1);
    let after = repository
        .load_as_of::<Integration>(&stream, t0.plus(time::Duration::minutes(10)))
        .await
        .unwrap();
    assert_eq!(after.state.status, domain::Status::Disconnected);
    let never = repository
        .load_as_of::<Integration>(&stream, t0.plus(time::Duration::minutes(-1)))
        .await
        .unwrap();
    assert_eq!(never.version, 0);
}

#[tokio::test]
async fn an_event_type_from_a_newer_build_is_skipped_and_a_broken_one_is_named() {
    let Fixture {
        store,
        repository,
        stream,
        connected,
        ..
    } = connected_hubspot().await;
    let metadata = connected.events[0].metadata.clone();
    let future = NewEvent {
        id: domain::EventId::new(),
        event_type: "SomethingNew".into(),
        schema: 1,
        data: serde_json::json!({}),
        metadata: metadata.clone(),
    };
    store
        .append(&stream, ExpectedVersion::Exact(1), vec![future])
        .await
        .unwrap();
    assert_eq!(
        repository.load::<Integration>(&stream).await.unwrap().state,
        connected.state
    );

    let broken = NewEvent {
        id: domain::EventId::new(),
        event_type: "Deleted".into(),
        schema: 1,
        data: serde_json::json!({"oops": 1}),
        metadata,
    };
    store
        .append(&stream, ExpectedVersion::Exact(2), vec![broken])
        .await
        .unwrap();
    let error = repository.load::<Integration>(&stream).await.unwrap_err();
    assert!(error.to_string().contains("event 3 of"), "{error}");
}
