//! Expiry of the embedded run-detail log killed with SIGKILL at random moments: every run is
//! left whole or absent, nothing within the retention is touched, and a restart finishes.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use domain::SyncId;
use eventstore::{check_detail, DetailCheck, RunDetailLog, SledRunDetailLog};
use rand::Rng;

const EXPIRER: &str = env!("CARGO_BIN_EXE_eventstore-crash-expirer");
const EVENTS: u64 = 12;

/// The runs a fill wrote: (id, whether it is past the retention).
fn fill(dir: &std::path::Path, old: u64, new: u64) -> Vec<(SyncId, bool)> {
    let output = Command::new(EXPIRER)
        .arg(dir)
        .args([
            "fill",
            &old.to_string(),
            &new.to_string(),
            &EVENTS.to_string(),
        ])
        .output()
        .expect("the expirer runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == "run").then_some(())?;
            let id: SyncId = parts.next()?.parse().ok()?;
            Some((id, parts.next()? == "old"))
        })
        .collect()
}

/// Starts an expiry and kills it once it has reported `passes` passes, while the next one
/// runs.
fn expire_and_kill(dir: &std::path::Path, passes: usize) {
    let mut child = Command::new(EXPIRER)
        .arg(dir)
        .arg("expire")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the expirer starts");
    let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    for line in lines.take(passes) {
        assert!(line.expect("readable").starts_with("expired "));
    }
    let _ = child.kill();
    child.wait().expect("the expirer is reaped");
}

/// How many of `runs` are whole; panics on one that is neither whole nor absent, or on a run
/// within the retention that is not whole.
async fn whole_runs(dir: &std::path::Path, runs: &[(SyncId, bool)]) -> (u64, u64) {
    let log = SledRunDetailLog::open(dir).expect("the log reopens");
    let (mut old_left, mut new_left) = (0, 0);
    for (id, old) in runs {
        let events = log.read(*id).await.unwrap();
        if events.is_empty() {
            assert!(*old, "run {id}, within the retention, was removed");
            continue;
        }
        let last = events.last().unwrap();
        let check = check_detail(
            &log,
            *id,
            EVENTS,
            &last.hash.to_hex(),
            domain::Timestamp::now(),
            Duration::from_secs(90 * 24 * 3600),
        )
        .await
        .unwrap();
        assert_eq!(
            check,
            DetailCheck::Intact { events: EVENTS },
            "run {id} is torn"
        );
        if *old {
            old_left += 1;
        } else {
            new_left += 1;
        }
    }
    (old_left, new_left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_killed_half_way_leaves_every_run_whole_or_absent_and_a_restart_finishes() {
    let (old, new) = (400u64, 50u64);
    let mut landed_mid_way = 0;
    for _ in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let runs = fill(dir.path(), old, new);
        assert_eq!(runs.len() as u64, old + new);
        // Killed after a few of its forty passes (ten old runs each): mid-way, at a point of
        // the next pass that varies from one attempt to the next.
        expire_and_kill(dir.path(), rand::rng().random_range(1..=20));
        let (old_left, new_left) = whole_runs(dir.path(), &runs).await;
        assert_eq!(new_left, new, "every run within the retention is kept");
        if old_left > 0 && old_left < old {
            landed_mid_way += 1;
        }
        // A restart finishes the job.
        let log = SledRunDetailLog::open(dir.path()).unwrap();
        let cutoff = domain::Timestamp::now().minus(Duration::from_secs(90 * 24 * 3600));
        assert_eq!(log.expire(cutoff).await.unwrap(), old_left);
        drop(log);
        assert_eq!(whole_runs(dir.path(), &runs).await, (0, new));
        if landed_mid_way >= 2 {
            break;
        }
    }
    assert!(
        landed_mid_way > 0,
        "no kill landed while the expiry was under way"
    );
}
