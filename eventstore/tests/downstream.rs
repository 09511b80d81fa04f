//! What a downstream service does with the change events, as docs/EVENTS.md tells
//! it: a durable consumer filtered by subject, resumed after a restart,
//! deduplicating on the event id. Once with async-nats, once with the Node.js example.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use domain::{Actor, IntegrationId, StreamName};
use eventstore::conformance::event;
use eventstore::nats_server::{fresh_store, TestNats};
use eventstore::{EventStore, ExpectedVersion, JetStreamEventStore, NewEvent};
use futures::StreamExt;

/// Workspace events of acme (two integrations and the policy stream), one personal event of
/// max, and one of another workspace. Returns the ids a consumer of acme's workspace-level
/// subjects must see, in log order.
async fn seed(store: &JetStreamEventStore) -> Vec<String> {
    let a = StreamName::integration(IntegrationId::new());
    let b = StreamName::integration(IntegrationId::new());
    let policy = StreamName::workspace(&"acme".parse().unwrap());
    let personal = StreamName::integration(IntegrationId::new());
    let mut mine = event(90);
    mine.metadata.owner = Some("max".parse().unwrap());
    mine.metadata.actor = Actor::User("max".parse().unwrap());
    let mut other = event(91);
    other.metadata.workspace = "globex".parse().unwrap();
    let mut wanted = Vec::new();
    let mut add = |events: &[NewEvent]| wanted.extend(events.iter().map(|e| e.id.to_string()));
    let batch = vec![event(1), event(2)];
    add(&batch);
    store
        .append(&a, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    store
        .append(&personal, ExpectedVersion::NoStream, vec![mine])
        .await
        .unwrap();
    let one = vec![event(3)];
    add(&one);
    store
        .append(&b, ExpectedVersion::NoStream, one)
        .await
        .unwrap();
    store
        .append(
            &StreamName::integration(IntegrationId::new()),
            ExpectedVersion::NoStream,
            vec![other],
        )
        .await
        .unwrap();
    let rule = vec![event(4)];
    add(&rule);
    store
        .append(&policy, ExpectedVersion::NoStream, rule)
        .await
        .unwrap();
    let more = vec![event(5)];
    add(&more);
    store
        .append(&a, ExpectedVersion::Exact(2), more)
        .await
        .unwrap();
    wanted
}

#[tokio::test]
async fn a_durable_consumer_resumes_and_deduplicates_on_the_event_id() {
    let nats = TestNats::shared();
    let store = fresh_store(&nats).await;
    let wanted = seed(&store).await;
    let ns = &store.config().namespace;
    let js = jetstream::new(store.client().clone());
    let stream = js.get_stream(store.config().events_stream()).await.unwrap();
    let config = pull::Config {
        durable_name: Some("billing".into()),
        filter_subject: format!("{ns}.events.acme.ws.>"),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(1),
        // One message in flight: an event is delivered only once the one before it is
        // acknowledged, so a redelivery never lands after a later event.
        max_ack_pending: 1,
        ..Default::default()
    };
    let mut handled: Vec<String> = Vec::new();
    let mut seen = HashSet::new();

    // First run: handle two events; the second is handled but its ack is lost (a crash).
    {
        let consumer = stream
            .get_or_create_consumer("billing", config.clone())
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        for n in 0..2 {
            let message = messages.next().await.unwrap().unwrap();
            let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let id = body["id"].as_str().unwrap().to_owned();
            assert_eq!(
                message
                    .headers
                    .as_ref()
                    .unwrap()
                    .get("Harmony-Event-Id")
                    .unwrap()
                    .as_str(),
                id
            );
            if seen.insert(id.clone()) {
                handled.push(id);
            }
            if n == 0 {
                message.ack_with(AckKind::Ack).await.unwrap();
            }
        }
    }
    // Restart: the durable consumer resumes; the unacknowledged event comes again and is
    // recognized by its id.
    let consumer: jetstream::consumer::PullConsumer = stream.get_consumer("billing").await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut redelivered = 0;
    let collect = async {
        while handled.len() < wanted.len() {
            let message = messages.next().await.unwrap().unwrap();
            let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let id = body["id"].as_str().unwrap().to_owned();
            if seen.insert(id.clone()) {
                handled.push(id);
            } else {
                redelivered += 1;
            }
            message.double_ack().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .expect("the consumer did not resume");
    assert_eq!(handled, wanted, "missed, repeated or reordered events");
    assert_eq!(
        redelivered, 1,
        "the unacknowledged event was not delivered again"
    );
}

#[test]
fn the_node_example_follows_resumes_and_filters() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/node-consumer");
    assert!(
        std::path::Path::new(example).join("node_modules/nats").is_dir(),
        "the example's dependencies are missing: ./scripts/test.sh installs them (npm ci in {example})"
    );
    let nats = TestNats::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(fresh_store(&nats));
    let wanted = runtime.block_on(seed(&store));
    let ns = store.config().namespace.clone();
    let seen_file = tempfile::NamedTempFile::new().unwrap();
    let run = |count: usize| -> Vec<serde_json::Value> {
        let output = Command::new("node")
            .arg(format!("{example}/consumer.mjs"))
            .env("NATS_URL", &nats.url)
            .env("HARMONY_STREAM", store.config().events_stream())
            .env("FILTER", format!("{ns}.events.acme.ws.>"))
            .env("DURABLE", "node-example")
            .env("SEEN_FILE", seen_file.path())
            .env("COUNT", count.to_string())
            // An event delivered to the first run as it stopped comes back to the second after this.
            .env("ACK_WAIT", "1")
            .output()
            .expect("node runs (Debian's nodejs, or the machine's)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let first = run(2);
    let second = run(wanted.len() - 2);
    let ids: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids, wanted,
        "the example missed, repeated or reordered events"
    );
    assert!(first
        .iter()
        .chain(&second)
        .all(|e| e["type"] == "TestHappened" && e["version"].as_u64().unwrap() >= 1));
}
