//! Copying a whole log between backends: sled to JetStream and back, interrupted and resumed,
//! with every id, version and hash preserved and the chains verifying on the target.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use domain::{Actor, IntegrationId, StreamName};
use eventstore::conformance::event;
use eventstore::copy::{copy_log, CopyError};
use eventstore::nats_server::{fresh_store, TestNats};
use eventstore::{EventStore, ExpectedVersion, RecordedEvent, SledEventStore};

/// Writes a log of `streams` integration streams (every third personal) plus a policy
/// stream, in interleaved batches. Returns the streams.
async fn write_log(store: &dyn EventStore, streams: u64, rounds: u64) -> Vec<StreamName> {
    let mut names: Vec<StreamName> = (0..streams)
        .map(|_| StreamName::integration(IntegrationId::new()))
        .collect();
    names.push(StreamName::workspace(&"acme".parse().unwrap()));
    for round in 0..rounds {
        for (i, stream) in names.iter().enumerate() {
            let size = 1 + (round + i as u64) % 5;
            let events = (0..size)
                .map(|n| {
                    let mut e = event(round * 10 + n);
                    if i % 3 == 1 && stream.integration_id().is_some() {
                        e.metadata.owner = Some("max".parse().unwrap());
                        e.metadata.actor = Actor::User("max".parse().unwrap());
                    }
                    e
                })
                .collect();
            store
                .append(stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    }
    names
}

/// Everything of an event but its position, which differs between backends.
fn portable(events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
    events
        .into_iter()
        .map(|mut e| {
            e.position = 0;
            e
        })
        .collect()
}

async fn assert_same_streams(a: &dyn EventStore, b: &dyn EventStore, streams: &[StreamName]) {
    for stream in streams {
        let left = portable(a.read_stream(stream, 1, 100_000).await.unwrap());
        let right = portable(b.read_stream(stream, 1, 100_000).await.unwrap());
        assert!(!left.is_empty());
        assert_eq!(left, right, "{stream} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_moves_to_jetstream_and_back_unchanged_even_when_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(SledEventStore::open(dir.path().join("a")).unwrap());
    let streams = write_log(sled.as_ref(), 24, 120).await;
    let total = sled.head_position().await.unwrap();
    assert!(
        total > 4096 * 2,
        "the log should span several pages ({total})"
    );

    // Interrupt the first copy once it has read a page or two.
    let nats = TestNats::shared();
    let jetstream = Arc::new(fresh_store(&nats).await);
    let (read, mut reads) = tokio::sync::watch::channel(0u64);
    let copy = {
        let (sled, jetstream) = (sled.clone(), jetstream.clone());
        tokio::spawn(async move {
            copy_log(sled.as_ref(), jetstream.as_ref(), &move |done, _| {
                let _ = read.send(done);
            })
            .await
        })
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        reads.wait_for(|done| *done >= 4096),
    )
    .await
    .expect("the copy made no progress")
    .unwrap();
    copy.abort();
    let _ = copy.await;
    let partial = jetstream.head_position().await.unwrap();
    assert!(
        partial > 0 && partial < total,
        "not interrupted midway: {partial} of {total}"
    );

    // Resume: what is there is skipped, the rest copied, nothing twice.
    let report = copy_log(sled.as_ref(), jetstream.as_ref(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.read, total);
    assert!(report.skipped >= 4096, "{report:?}");
    assert_eq!(report.copied + report.skipped, total, "{report:?}");
    assert_eq!(report.streams, streams.len() as u64);
    assert_eq!(
        jetstream.read_all(1, 1_000_000).await.unwrap().len() as u64,
        total
    );
    assert_same_streams(sled.as_ref(), jetstream.as_ref(), &streams).await;

    // And back to a fresh sled log: the same events, in the same global order.
    let back = SledEventStore::open(dir.path().join("c")).unwrap();
    let report = copy_log(jetstream.as_ref(), &back, &|_, _| {})
        .await
        .unwrap();
    assert_eq!((report.copied, report.skipped), (total, 0));
    assert_same_streams(sled.as_ref(), &back, &streams).await;
    let ids = |events: Vec<RecordedEvent>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(back.read_all(1, 1_000_000).await.unwrap()),
        ids(sled.read_all(1, 1_000_000).await.unwrap())
    );
    // Copying again changes nothing.
    let again = copy_log(jetstream.as_ref(), &back, &|_, _| {})
        .await
        .unwrap();
    assert_eq!((again.copied, again.skipped), (0, total));
}

#[tokio::test]
async fn a_target_with_another_history_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = SledEventStore::open(dir.path().join("a")).unwrap();
    let target = SledEventStore::open(dir.path().join("b")).unwrap();
    let stream = StreamName::integration(IntegrationId::new());
    source
        .append(&stream, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    target
        .append(&stream, ExpectedVersion::NoStream, vec![event(9)])
        .await
        .unwrap();
    let error = copy_log(&source, &target, &|_, _| {}).await.unwrap_err();
    assert!(matches!(error, CopyError::Diverged { .. }), "{error:?}");
    assert_eq!(target.read_stream(&stream, 1, 10).await.unwrap().len(), 1);
}
