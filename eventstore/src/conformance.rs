//! The conformance suite every [`EventStore`] backend must pass.
//!
//! Each check is a public async function taking a [`Backend`]; the
//! [`conformance_tests!`](crate::conformance_tests) macro turns them into one `#[tokio::test]`
//! each for a given backend, so every backend's tests run the same list.
//!
//! This is test code (compiled for this crate's tests, or with the `test-support` feature for
//! other crates' tests): a failed check panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use domain::{Actor, EventId, Metadata, StreamName, Timestamp, WorkspaceId};
use futures::StreamExt;
use serde_json::json;

use crate::chain::verify_stream;
use crate::error::StoreError;
use crate::types::{ExpectedVersion, NewEvent, Snapshot};
use crate::{ChainHash, EventStore};

/// A backend under test.
#[async_trait]
pub trait Backend: Send + Sync {
    type Store: EventStore + Clone;
    /// A fresh, empty store.
    async fn fresh(&self) -> Self::Store;
    /// Alters the history of `stream` behind the store's back, the way someone with write
    /// access to the storage but not to the chain could, starting with the event at
    /// `position`, and says where verification must name the first broken link. A storage that
    /// can be rewritten in place (sled) has that event's data changed; one that only takes new
    /// messages (JetStream denies deletes and purges) gets a forged copy of it with other data.
    async fn tamper(&self, store: &Self::Store, stream: &StreamName, position: u64) -> Tampered;
}

/// Where a tampering shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tampered {
    /// The version the first broken link claims.
    pub version: u64,
    pub position: u64,
    /// How many events verify before it.
    pub intact_before: u64,
}

/// How long any wait in the suite may take before the check fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Metadata for test events.
pub fn metadata() -> Metadata {
    Metadata {
        workspace: WorkspaceId::try_from("acme".to_owned()).expect("valid workspace id"),
        owner: None,
        actor: Actor::System("conformance".into()),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: None,
        occurred_at: Timestamp::now(),
    }
}

/// A test event whose data carries `n`.
pub fn event(n: u64) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        event_type: "TestHappened".into(),
        schema: 1,
        data: json!({ "n": n, "text": "héllo \"world\"", "list": [1, 2.5, null] }),
        metadata: metadata(),
    }
}

pub fn stream(name: &str) -> StreamName {
    StreamName::from_stored(format!("integration-{name}"))
}

pub async fn appends_and_reads_back_a_stream_in_version_order<B: Backend>(backend: &B) {
    let store = backend.fresh().await;
    let s = stream("a");
    let first = store
        .append(&s, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    assert_eq!((first.first_version, first.last_version), (1, 2));
    let second = store
        .append(&s, ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .unwrap();
    assert_eq!((second.first_version, second.last_version), (3, 3));
    assert!(second.first_position > first.last_position);

    let events = store.read_stream(&s, 1, 100).await.unwrap();
    let ns: Vec<u64> = events
        .iter()
        .map(|e| e.data().unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 2, 3]);
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(events[0].event_type, "TestHappened");
    assert_eq!(events[0].data().unwrap()["text"], "héllo \"world\"");
    assert_eq!(store.read_stream(&s, 2, 1).await.unwrap()[0].version, 2);
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(3));
    assert_eq!(store.stream_version(&stream("none")).await.unwrap(), None);
    assert!(store
        .read_stream(&stream("none"), 1, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn expected_version_is_enforced<B: Backend>(backend: &B) {
    let store = backend.fresh().await;
    let s = stream("expect");
    let conflict = store
        .append(&s, ExpectedVersion::Exact(1), vec![event(0)])
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, StoreError::Conflict { actual: None, .. }),
        "{conflict:?}"
    );
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let again = store
        .append(&s, ExpectedVersion::NoStream, vec![event(2)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            StoreError::Conflict {
                actual: Some(1),
                ..
            }
        ),
        "{again:?}"
    );
    let stale = store
        .append(&s, ExpectedVersion::Exact(0), vec![event(2)])
        .await
        .unwrap_err();
    assert!(stale.is_retryable());
    store
        .append(&s, ExpectedVersion::Any, vec![event(2)])
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .unwrap();
    assert_eq!(
        store.read_stream(&s, 1, 10).await.unwrap().len(),
        3,
        "a refused append wrote something"
    );
    assert_eq!(
        store
            .append(&s, ExpectedVersion::Any, vec![])
            .await
            .unwrap_err(),
        StoreError::EmptyAppend
    );
}

pub async fn concurrent_writers_to_one_stream_win_each_version_exactly_once<B: Backend>(
    backend: &B,
) {
    let store = backend.fresh().await;
    let s = stream("contended");
    let writers = 16;
    let appends_per_writer = 20;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut conflicts = 0u32;
            while won.len() < appends_per_writer {
                let version = store.stream_version(&s).await.unwrap().unwrap_or(0);
                match store
                    .append(
                        &s,
                        ExpectedVersion::from_version(version),
                        vec![event(writer)],
                    )
                    .await
                {
                    Ok(result) => {
                        assert_eq!(result.first_version, version + 1);
                        won.push(result.first_version);
                    }
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(other) => panic!("unexpected error {other:?}"),
                }
            }
            (won, conflicts)
        }));
    }
    let mut all_won = Vec::new();
    for task in tasks {
        let (won, _) = task.await.unwrap();
        all_won.extend(won);
    }
    all_won.sort_unstable();
    let total = writers * appends_per_writer as u64;
    assert_eq!(
        all_won,
        (1..=total).collect::<Vec<_>>(),
        "each version must be won by exactly one writer"
    );
    let events = store.read_stream(&s, 1, total as usize + 10).await.unwrap();
    assert_eq!(events.len() as u64, total);
    assert!(verify_stream(&store, &s).await.unwrap().is_intact());
}

pub async fn reappending_a_batch_returns_the_original_result<B: Backend>(backend: &B) {
    let store = backend.fresh().await;
    let s = stream("idem");
    let batch = vec![event(1), event(2), event(3)];
    let original = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Exact(3), vec![event(4)])
        .await
        .unwrap();
    // The expected version is stale now, and still the retry is recognized as a retry.
    let retried = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(retried, original);
    let retried_any = store
        .append(&s, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    assert_eq!(retried_any, original);
    assert_eq!(
        store.read_stream(&s, 1, 10).await.unwrap().len(),
        4,
        "a retry wrote events"
    );

    let mixed = vec![batch[0].clone(), event(9)];
    let error = store
        .append(&s, ExpectedVersion::Any, mixed)
        .await
        .unwrap_err();
    assert_eq!(error, StoreError::IdempotencyMismatch { id: batch[0].id });
    let elsewhere = store
        .append(
            &stream("other"),
            ExpectedVersion::Any,
            vec![batch[1].clone()],
        )
        .await
        .unwrap_err();
    assert!(matches!(elsewhere, StoreError::IdempotencyMismatch { .. }));
    assert_eq!(store.read_stream(&s, 1, 10).await.unwrap().len(), 4);
    assert_eq!(store.stream_version(&stream("other")).await.unwrap(), None);

    // Concurrent retries of one batch: all get the same answer, one copy is stored.
    let twin = vec![event(10), event(11)];
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, s, twin) = (store.clone(), stream("twin"), twin.clone());
        tasks.push(tokio::spawn(async move {
            store.append(&s, ExpectedVersion::Any, twin).await
        }));
    }
    let mut results = HashSet::new();
    for task in tasks {
        results.insert(format!("{:?}", task.await.unwrap().unwrap()));
    }
    assert_eq!(results.len(), 1);
    assert_eq!(
        store
            .read_stream(&stream("twin"), 1, 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

pub async fn positions_are_global_and_batches_contiguous<B: Backend>(backend: &B) {
    let store = backend.fresh().await;
    let mut tasks = Vec::new();
    for writer in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(&format!("g{writer}"));
            for round in 0..10u64 {
                let batch = (0..3)
                    .map(|i| event(writer * 1000 + round * 10 + i))
                    .collect();
                store.append(&s, ExpectedVersion::Any, batch).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    let all = store.read_all(1, 10_000).await.unwrap();
    assert_eq!(all.len(), 240);
    assert_eq!(all.last().unwrap().position, head);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "positions must strictly increase"
    );
    // Every batch of three is contiguous in the global order.
    let mut by_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &all {
        by_stream
            .entry(event.stream.to_string())
            .or_default()
            .push(event.position);
    }
    for positions in by_stream.values() {
        for batch in positions.chunks(3) {
            assert!(
                batch.windows(2).all(|w| w[1] == w[0] + 1),
                "a batch was interleaved: {batch:?}"
            );
        }
    }
    let from_middle = store.read_all(all[100].position, 5).await.unwrap();
    assert_eq!(
        from_middle.iter().map(|e| e.id).collect::<Vec<_>>(),
        all[100..105].iter().map(|e| e.id).collect::<Vec<_>>()
    );
}

pub async fn subscriptions_catch_up_then_follow_live_without_gap_or_duplicate<B: Backend>(
    backend: &B,
) {
    let store = backend.fresh().await;
    for i in 0..300 {
        store
            .append(
                &stream(&format!("h{}", i % 7)),
                ExpectedVersion::Any,
                vec![event(i)],
            )
            .await
            .unwrap();
    }
    let history_head = store.head_position().await.unwrap();
    let mut from_start = store.subscribe(1);
    let middle = store
        .read_all(1, 150)
        .await
        .unwrap()
        .last()
        .unwrap()
        .position
        + 1;
    let mut from_middle = store.subscribe(middle);

    let live_writers = 8;
    let per_writer = 50;
    let mut tasks = Vec::new();
    for writer in 0..live_writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let batch = if i % 5 == 0 {
                    vec![event(i), event(i + 1)]
                } else {
                    vec![event(i)]
                };
                store
                    .append(
                        &stream(&format!("live{writer}")),
                        ExpectedVersion::Any,
                        batch,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    let total = store.read_all(1, 100_000).await.unwrap();
    assert!(head > history_head);

    for (subscription, from) in [(&mut from_start, 1u64), (&mut from_middle, middle)] {
        let expected: Vec<_> = total
            .iter()
            .filter(|e| e.position >= from)
            .map(|e| (e.position, e.id))
            .collect();
        let mut seen = Vec::new();
        let collect = async {
            while seen.len() < expected.len() {
                let event = subscription
                    .next()
                    .await
                    .expect("subscription ended")
                    .expect("subscription failed");
                seen.push((event.position, event.id));
            }
        };
        tokio::time::timeout(DEADLINE, collect)
            .await
            .expect("subscription did not deliver every event in time");
        assert_eq!(
            seen, expected,
            "a subscription from {from} skipped, repeated or reordered events"
        );
    }
    // And it keeps following.
    store
        .append(&stream("after"), ExpectedVersion::Any, vec![event(7)])
        .await
        .unwrap();
    let next = tokio::time::timeout(DEADLINE, from_start.next())
        .await
        .expect("no live event")
        .unwrap()
        .unwrap();
    assert_eq!(next.position, head + 1);
}

pub async fn chains_verify_and_tampering_is_named<B: Backend>(backend: &B) {
    let store = backend.fresh().await;
    let s = stream("chain");
    let noise = stream("noise");
    let mut positions = Vec::new();
    for i in 0..10 {
        let result = store
            .append(&s, ExpectedVersion::Any, vec![event(i)])
            .await
            .unwrap();
        positions.push(result.first_position);
        store
            .append(&noise, ExpectedVersion::Any, vec![event(100 + i)])
            .await
            .unwrap();
    }
    let report = verify_stream(&store, &s).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events, 10);
    let events = store.read_stream(&s, 1, 100).await.unwrap();
    assert_eq!(report.head, events.last().unwrap().hash);
    assert_ne!(events[0].hash, ChainHash::GENESIS);

    let tampered = backend.tamper(&store, &s, positions[5]).await;
    let report = verify_stream(&store, &s).await.unwrap();
    let broken = report.broken.expect("tampering went unnoticed");
    assert_eq!(broken.version, tampered.version);
    assert_eq!(broken.position, tampered.position);
    assert_eq!(report.events, tampered.intact_before);
    assert!(
        verify_stream(&store, &noise).await.unwrap().is_intact(),
        "other streams are unaffected"
    );
    // One pass over the whole log reports what reading each stream does.
    let mut verifier = crate::chain::LogVerifier::default();
    for event in store.read_all(1, 10_000).await.unwrap() {
        verifier.next(&event);
    }
    let one_pass = verifier.finish();
    assert_eq!(
        one_pass,
        vec![
            verify_stream(&store, &s).await.unwrap(),
            verify_stream(&store, &noise).await.unwrap()
        ]
    );
    assert!(one_pass[0].broken.is_some() && one_pass[1].is_intact());
}

pub async fn chains_do_not_depend_on_positions<B: Backend>(backend: &B) {
    let one = backend.fresh().await;
    let two = backend.fresh().await;
    let s = stream("portable");
    let batch: Vec<NewEvent> = (0..5).map(event).collect();
    // The same stream lands at different global positions in the two stores.
    for i in 0..3 {
        two.append(&stream("before"), ExpectedVersion::Any, vec![event(i)])
            .await
            .unwrap();
    }
    one.append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    two.append(&s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    let a = one.read_stream(&s, 1, 10).await.unwrap();
    let b = two.read_stream(&s, 1, 10).await.unwrap();
    assert_ne!(a[0].position, b[0].position);
    assert_eq!(
        a.iter().map(|e| e.hash).collect::<Vec<_>>(),
        b.iter().map(|e| e.hash).collect::<Vec<_>>()
    );
}

pub async fn snapshots_round_trip<B: Backend>(backend: &B) {
    let store = backend.fresh().await;
    let s = stream("snap");
    assert_eq!(store.load_snapshot(&s).await.unwrap(), None);
    let snapshot = Snapshot {
        version: 7,
        schema: 1,
        hash: ChainHash([7; 32]),
        state: b"{\"x\":1}".to_vec(),
    };
    store.save_snapshot(&s, snapshot.clone()).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snapshot));
}

/// A test event of `workspace`.
fn event_of(workspace: &str, n: u64) -> NewEvent {
    let mut event = event(n);
    event.metadata.workspace =
        WorkspaceId::try_from(workspace.to_owned()).expect("valid workspace id");
    event
}

pub async fn a_workspaces_events_are_read_alone_in_order<B: Backend>(backend: &B) {
    let store = backend.fresh().await;
    // Interleaved: runs of one workspace between the other's, batches included.
    let mut expected = Vec::new();
    for n in 0..30u64 {
        let (workspace, s) = if n % 3 == 0 {
            ("small", stream(&format!("small-{}", n % 2)))
        } else {
            ("big", stream(&format!("big-{}", n % 4)))
        };
        let events = vec![event_of(workspace, n), event_of(workspace, n + 100)];
        let appended = store
            .append(&s, ExpectedVersion::Any, events)
            .await
            .unwrap();
        if workspace == "small" {
            expected.extend(appended.first_position..=appended.last_position);
        }
    }
    let small = WorkspaceId::try_from("small".to_owned()).expect("valid workspace id");
    let all = store.read_workspace(&small, 1, 1000).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, expected);
    assert!(all.iter().all(|e| e.metadata.workspace == small));
    // From inside a run, and a page at a time.
    let from = expected[3];
    let page = store.read_workspace(&small, from, 3).await.unwrap();
    let positions: Vec<u64> = page.iter().map(|e| e.position).collect();
    assert_eq!(positions, expected[3..6].to_vec());
    let past = store
        .read_workspace(&small, expected[expected.len() - 1] + 1, 10)
        .await
        .unwrap();
    assert!(past.is_empty());
    let none = WorkspaceId::try_from("nobody".to_owned()).expect("valid workspace id");
    assert!(store.read_workspace(&none, 1, 10).await.unwrap().is_empty());
}

/// Runs every check of the suite, one `#[tokio::test]` each, against the backend `make`
/// returns.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make,
            appends_and_reads_back_a_stream_in_version_order,
            expected_version_is_enforced,
            concurrent_writers_to_one_stream_win_each_version_exactly_once,
            reappending_a_batch_returns_the_original_result,
            positions_are_global_and_batches_contiguous,
            subscriptions_catch_up_then_follow_live_without_gap_or_duplicate,
            chains_verify_and_tampering_is_named,
            chains_do_not_depend_on_positions,
            snapshots_round_trip,
            a_workspaces_events_are_read_alone_in_order
        );
    };
    (@each $make:expr, $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let backend = $make;
                $crate::conformance::$check(&backend).await;
            }
        )+
    };
}
