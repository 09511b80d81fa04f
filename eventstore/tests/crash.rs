//! SIGKILL at random moments, on sled and on JetStream: every acknowledged event survives, no
//! batch is torn (or half visible), and the chains verify.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use domain::{IntegrationId, StreamName};
use eventstore::nats_server::{unique_namespace, TestNats};
use eventstore::waiting::eventually_ok;
use eventstore::{verify_stream, EventStore, JetStreamConfig, JetStreamEventStore, SledEventStore};
use rand::Rng;

struct Ack {
    first: u64,
    last: u64,
    batch: String,
    size: u64,
}

fn parse(line: &str) -> Option<Ack> {
    let mut parts = line.split_whitespace();
    if parts.next()? != "ack" {
        return None;
    }
    Some(Ack {
        first: parts.next()?.parse().ok()?,
        last: parts.next()?.parse().ok()?,
        batch: parts.next()?.to_owned(),
        size: parts.next()?.parse().ok()?,
    })
}

/// Runs the writer until it has reported `acks` acknowledgements (0: kill at once, during
/// start-up and recovery), then kills it with SIGKILL. Returns what it acknowledged.
fn run_and_kill(target: &[&str], acks: usize) -> Vec<Ack> {
    // What the writer says on its way (an append refused, a start-up that failed), for the
    // message of a failure.
    let errors = tempfile::NamedTempFile::new().expect("a temporary file for the writer's errors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventstore-crash-writer"))
        .args(target)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            errors
                .reopen()
                .expect("the writer's error file opens for writing"),
        ))
        .spawn()
        .expect("the crash writer starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < acks {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => acked.extend(parse(&line)),
            Err(_) => panic!(
                "the writer acknowledged only {} appends in 60 s; it said:\n{}",
                acked.len(),
                std::fs::read_to_string(errors.path()).unwrap_or_default()
            ),
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    reader.join().expect("reader thread");
    let said = std::fs::read_to_string(errors.path()).unwrap_or_default();
    if !said.is_empty() {
        eprintln!("the writer said:\n{said}");
    }
    // Lines that reached the pipe before the kill were acknowledged too.
    acked.extend(received.try_iter().filter_map(|line| parse(&line)));
    acked
}

/// Fails with `$what` unless `$holds`.
macro_rules! ensure {
    ($holds:expr, $($what:tt)+) => {
        if !$holds {
            return Err(format!($($what)+));
        }
    };
}

/// Reads the whole log and checks it against everything acknowledged so far. On sled positions
/// have no gaps at all; on JetStream they are stream sequences, strictly increasing.
async fn check(store: &dyn EventStore, all_acked: &[Ack], gapless: bool) -> Result<(), String> {
    let head = store.head_position().await.unwrap();
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        events.extend(page);
    }
    ensure!(
        events.windows(2).all(|w| w[0].position < w[1].position),
        "positions out of order"
    );
    if gapless {
        ensure!(
            events.len() as u64 == head
                && events
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.position == i as u64 + 1),
            "positions have gaps: {} events up to {head}",
            events.len()
        );
    }
    let by_position: HashMap<u64, &eventstore::RecordedEvent> =
        events.iter().map(|e| (e.position, e)).collect();

    // Every acknowledged batch is there, whole, where it was acknowledged.
    for ack in all_acked {
        ensure!(
            ack.last <= head,
            "acknowledged position {} lost (head {head})",
            ack.last
        );
        for position in ack.first..=ack.last {
            let Some(event) = by_position.get(&position) else {
                return Err(format!("position {position} lost"));
            };
            ensure!(
                event.data().unwrap()["batch"] == ack.batch,
                "position {position} holds another batch"
            );
        }
        ensure!(
            ack.last - ack.first + 1 == ack.size,
            "batch {} acknowledged at {}..={} has {} events",
            ack.batch,
            ack.first,
            ack.last,
            ack.size
        );
    }
    // No batch, acknowledged or not, is torn.
    let mut batches: HashMap<String, (u64, u64)> = HashMap::new();
    for event in &events {
        let data = event.data().unwrap();
        let entry = batches
            .entry(data["batch"].as_str().unwrap().to_owned())
            .or_insert((0, data["size"].as_u64().unwrap()));
        entry.0 += 1;
    }
    for (batch, (seen, size)) in &batches {
        ensure!(seen == size, "batch {batch} is torn: {seen} of {size}");
    }
    for stream in 1..=16u128 {
        let name = StreamName::integration(IntegrationId(uuid::Uuid::from_u128(stream)));
        let report = verify_stream(store, &name).await.unwrap();
        ensure!(report.is_intact(), "{report:?}");
        // Read by stream, every event of the stream is there, in version order: none is
        // missing from the stream's index.
        let in_log: Vec<u64> = events
            .iter()
            .filter(|e| e.stream == name)
            .map(|e| e.position)
            .collect();
        let by_stream = store.read_stream(&name, 1, usize::MAX).await.unwrap();
        let positions: Vec<u64> = by_stream.iter().map(|e| e.position).collect();
        ensure!(
            positions == in_log,
            "{name} reads otherwise: {positions:?} by stream, {in_log:?} in the log"
        );
        ensure!(
            by_stream
                .iter()
                .enumerate()
                .all(|(i, e)| e.version == i as u64 + 1),
            "{name} has versions out of order"
        );
        let version = store.stream_version(&name).await.unwrap();
        ensure!(
            version == by_stream.last().map(|e| e.version),
            "{name} says its version is {version:?}, its events end at {:?}",
            by_stream.last().map(|e| e.version)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_and_no_batch_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    let target = [dir.path().to_str().unwrap()];
    let mut all_acked: Vec<Ack> = Vec::new();
    let mut requested = 0;
    let rounds = 24;
    for round in 0..rounds {
        // Every sixth kill lands during start-up and recovery; the others at a random point of
        // a run long enough that the log keeps growing across rounds.
        let acks = if round % 6 == 0 {
            0
        } else {
            rand::rng().random_range(40..400)
        };
        requested += acks;
        all_acked.extend(run_and_kill(&target, acks));
        // The writer's process is gone, and with it everything it had not written: the log is
        // what it will stay.
        let store = SledEventStore::open(dir.path()).unwrap();
        if let Err(failure) = check(&store, &all_acked, true).await {
            panic!("round {round}: {failure}");
        }
    }
    assert!(
        all_acked.len() >= requested,
        "{} appends acknowledged across {rounds} kills, {requested} awaited",
        all_acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_jetstream_a_killed_writer_never_leaves_part_of_a_batch() {
    let nats = TestNats::shared();
    let namespace = unique_namespace();
    let target = [nats.url.as_str(), namespace.as_str()];
    let mut all_acked: Vec<Ack> = Vec::new();
    let mut requested = 0;
    let rounds = 8;
    for round in 0..rounds {
        let acks = if round % 4 == 0 {
            0
        } else {
            rand::rng().random_range(40..200)
        };
        requested += acks;
        all_acked.extend(run_and_kill(&target, acks));
        let mut config = JetStreamConfig::new(nats.url.clone());
        config.namespace = namespace.clone();
        let store = JetStreamEventStore::connect(config).await.unwrap();
        // The server may still be taking what the killed writer sent before it died (a batch's
        // commit among it): the log must be whole once that has landed, and stay whole.
        eventually_ok(
            Duration::from_secs(10),
            &format!("round {round}: a whole log"),
            || check(&store, &all_acked, false),
        )
        .await;
    }
    assert!(
        all_acked.len() >= requested,
        "{} appends acknowledged across {rounds} kills, {requested} awaited",
        all_acked.len()
    );
}
