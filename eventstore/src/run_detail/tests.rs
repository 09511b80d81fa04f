use std::time::Duration;

use domain::{Actor, Metadata, SyncId, Timestamp};

use super::*;

fn event(page: u32, at: Timestamp) -> NewEvent {
    NewEvent {
        id: domain::EventId::new(),
        event_type: "SyncProgressed".into(),
        schema: 1,
        data: serde_json::json!({"page": page, "object": "contacts"}),
        metadata: Metadata {
            workspace: "acme".parse().expect("a slug"),
            owner: None,
            actor: Actor::System("sync worker".into()),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: None,
            occurred_at: at,
        },
    }
}

fn days_ago(days: i64) -> Timestamp {
    Timestamp::from_unix_micros(Timestamp::now().unix_micros() - days * 24 * 3600 * 1_000_000)
        .expect("a time in range")
}

const NINETY_DAYS: Duration = Duration::from_secs(90 * 24 * 3600);

#[tokio::test]
async fn a_run_grows_only_from_its_end_and_its_head_is_what_the_outcome_commits_to() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = SledRunDetailLog::open(dir.path()).expect("the log opens");
    let run = SyncId::new();
    let first = log
        .append(run, DetailTip::EMPTY, vec![event(1, Timestamp::now())])
        .await
        .expect("the first append");
    assert_eq!(first.version, 1);
    let second = log
        .append(
            run,
            first,
            vec![event(2, Timestamp::now()), event(3, Timestamp::now())],
        )
        .await
        .expect("the second append");
    assert_eq!(second.version, 3);
    // A worker that still believes the run ends at `first` (it lost the lease) is refused.
    let stale = log
        .append(run, first, vec![event(9, Timestamp::now())])
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Conflict {
                actual: Some(3),
                ..
            })
        ),
        "{stale:?}"
    );
    let read = log.read(run).await.expect("the run reads");
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let check = check_detail(
        &log,
        run,
        second.version,
        &second.hash.to_hex(),
        Timestamp::now(),
        NINETY_DAYS,
    )
    .await
    .expect("the check runs");
    assert_eq!(check, DetailCheck::Intact { events: 3 });
    // An outcome naming another head does not match the detail.
    let other = check_detail(
        &log,
        run,
        first.version,
        &first.hash.to_hex(),
        Timestamp::now(),
        NINETY_DAYS,
    )
    .await
    .expect("the check runs");
    assert!(matches!(other, DetailCheck::Altered { .. }), "{other:?}");
    // The log reopens with the run as it was.
    drop(log);
    let log = SledRunDetailLog::open(dir.path()).expect("the log reopens");
    assert_eq!(log.read(run).await.expect("reads").len(), 3);
}

#[tokio::test]
async fn tampered_detail_is_caught_and_absent_detail_is_aged_out_only_past_the_retention() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = SledRunDetailLog::open(dir.path()).expect("the log opens");
    let run = SyncId::new();
    let tip = log
        .append(
            run,
            DetailTip::EMPTY,
            vec![event(1, Timestamp::now()), event(2, Timestamp::now())],
        )
        .await
        .expect("appends");
    // Rewrite the second event's data in place, keeping its stored hash.
    log.tamper(run, 2, |data| data["page"] = serde_json::json!(7))
        .expect("tampers");
    let check = check_detail(
        &log,
        run,
        tip.version,
        &tip.hash.to_hex(),
        Timestamp::now(),
        NINETY_DAYS,
    )
    .await
    .expect("checks");
    assert!(
        matches!(&check, DetailCheck::Altered { reason } if reason.contains("version 2")),
        "{check:?}"
    );
    let gone = SyncId::new();
    let recent = check_detail(&log, gone, 4, "00", days_ago(3), NINETY_DAYS)
        .await
        .expect("checks");
    assert_eq!(recent, DetailCheck::Missing);
    let old = check_detail(&log, gone, 4, "00", days_ago(91), NINETY_DAYS)
        .await
        .expect("checks");
    assert_eq!(old, DetailCheck::AgedOut);
    assert!(old.holds() && !recent.holds());
}

#[tokio::test]
async fn expiry_removes_whole_runs_older_than_the_cutoff_and_nothing_newer() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = SledRunDetailLog::open(dir.path()).expect("the log opens");
    let (old, busy, new) = (SyncId::new(), SyncId::new(), SyncId::new());
    let tip = log
        .append(old, DetailTip::EMPTY, vec![event(1, days_ago(100))])
        .await
        .expect("appends");
    log.append(old, tip, vec![event(2, days_ago(95))])
        .await
        .expect("appends");
    // A run that began long ago but grew within the retention is kept whole.
    let tip = log
        .append(busy, DetailTip::EMPTY, vec![event(1, days_ago(120))])
        .await
        .expect("appends");
    log.append(busy, tip, vec![event(2, days_ago(1))])
        .await
        .expect("appends");
    log.append(new, DetailTip::EMPTY, vec![event(1, Timestamp::now())])
        .await
        .expect("appends");
    let removed = log.expire(days_ago(90)).await.expect("expires");
    assert_eq!(removed, 1);
    assert!(log.read(old).await.expect("reads").is_empty());
    assert_eq!(log.read(busy).await.expect("reads").len(), 2);
    assert_eq!(log.read(new).await.expect("reads").len(), 1);
    assert_eq!(log.expire(days_ago(90)).await.expect("expires"), 0);
    // An expired run's id may be imported again (a copy), and is then whole.
    let copy = log.read(new).await.expect("reads");
    let other = SledRunDetailLog::open(dir.path().join("copy")).expect("opens");
    other.import(new, copy.clone()).await.expect("imports");
    assert_eq!(other.read(new).await.expect("reads"), copy);
}
