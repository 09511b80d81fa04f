//! CalDAV against the fake server: the PROPFIND connection test, `sync-collection` with an
//! initial and an incremental token, truncated answers, removals as bare 404s, a forgotten
//! token, the `calendar-query` fallback for a server without sync, and a create that is
//! never made twice.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use adapters::http::ProviderError;
use adapters::provider::{Connection, Provider, PullMode};
use adapters::providers::caldav::CalDav;
use common::{http, pull_all, secrets, setup};
use fakes::caldav::FakeCalDav;
use serde_json::json;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn the_connection_test_finds_the_calendar_and_refuses_a_wrong_password() {
    let fake = FakeCalDav::start("jane", "app-pass-1", 0).await.unwrap();
    let provider = CalDav::new(http());
    let account = setup(&[("server_url", &fake.calendar_url()), ("username", "jane")]);
    let good = secrets(&[("app_password", "app-pass-1")]);
    let identity = provider
        .test(Connection {
            setup: &account,
            credentials: &good,
        })
        .await
        .unwrap();
    assert_eq!(identity.account_label.as_deref(), Some("Work (jane)"));
    let wrong = secrets(&[("app_password", "nope")]);
    assert!(matches!(
        provider
            .test(Connection {
                setup: &account,
                credentials: &wrong
            })
            .await,
        Err(ProviderError::Unauthorized { .. })
    ));
    // The collection URL without its trailing slash works too.
    let bare = setup(&[
        ("server_url", fake.calendar_url().trim_end_matches('/')),
        ("username", "jane"),
    ]);
    assert!(provider
        .test(Connection {
            setup: &bare,
            credentials: &good
        })
        .await
        .is_ok());
}

#[tokio::test]
async fn sync_collection_pages_through_truncation_then_reads_changes_and_removals() {
    let fake = FakeCalDav::start("jane", "pw", 450).await.unwrap();
    let provider = CalDav::new(http());
    let account = setup(&[("server_url", &fake.calendar_url()), ("username", "jane")]);
    let key = secrets(&[("app_password", "pw")]);

    let full = pull_all(&provider, &account, &key, "events", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(
        full.pages, 3,
        "200 members an answer, then a 507 and an intermediate token"
    );
    assert_eq!(full.records.len(), 450);
    assert!(full.deleted_ids().is_empty());
    let first = &full.records[0];
    assert!(first.id.ends_with("/work/event-00001.ics"), "{}", first.id);
    assert_eq!(first.fields["summary"], "Event 1");
    assert_eq!(first.fields["uid"], "event-00001");
    assert_eq!(first.fields["dtstart"], "20260105T090000Z");
    let token = full.watermark.clone().unwrap();

    fake.put("event-00002.ics", "event-00002", "Moved, with a comma");
    fake.put("new.ics", "new-1", "Brand new");
    fake.remove("event-00003.ics");
    let since = pull_all(
        &provider,
        &account,
        &key,
        "events",
        PullMode::Incremental {
            since: Some(token.clone()),
        },
    )
    .await
    .unwrap();
    let live: Vec<String> = since
        .live_ids()
        .iter()
        .map(|id| id.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(live, ["event-00002.ics", "new.ics"]);
    assert_eq!(since.deleted_ids().len(), 1);
    assert!(since.deleted_ids()[0].ends_with("event-00003.ics"));
    assert_eq!(since.records[0].fields["summary"], "Moved, with a comma");

    // A member removed while a full run reads: listed, then a 404 in the multiget. It is a
    // deletion, not a record received.
    fake.remove_before_next_read("event-00004.ics");
    let racing = pull_all(&provider, &account, &key, "events", PullMode::Full)
        .await
        .unwrap();
    let received = racing.records.iter().filter(|r| r.received()).count();
    // 450, one new, one removed before: 450 listed; one of them gone by the read.
    assert_eq!(received, 449);
    // (The listing's later pages, read from an intermediate token, also name the removals
    // made since: tombstones too.)
    let gone = racing.deleted_ids();
    assert!(
        gone.iter().any(|id| id.ends_with("event-00004.ics")),
        "{gone:?}"
    );
    assert!(racing.records.iter().all(|r| r.received() != r.deleted));

    fake.forget_tokens();
    let stale = pull_all(
        &provider,
        &account,
        &key,
        "events",
        PullMode::Incremental { since: Some(token) },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(stale, ProviderError::StaleCursor { .. }),
        "{stale:?}"
    );
}

#[tokio::test]
async fn the_collections_sync_token_says_whether_anything_is_new_in_one_propfind() {
    let fake = FakeCalDav::start("jane", "pw", 30).await.unwrap();
    let provider = CalDav::new(http());
    let account = setup(&[("server_url", &fake.calendar_url()), ("username", "jane")]);
    let key = secrets(&[("app_password", "pw")]);
    let connection = Connection {
        setup: &account,
        credentials: &key,
    };
    let full = pull_all(&provider, &account, &key, "events", PullMode::Full)
        .await
        .unwrap();
    let token = full.watermark.unwrap();
    let asked = fake.counters.requests.load(Ordering::SeqCst);
    assert_eq!(
        provider
            .anything_new(connection, "events", &token)
            .await
            .unwrap(),
        Some(false)
    );
    assert_eq!(
        fake.counters.requests.load(Ordering::SeqCst) - asked,
        1,
        "one request"
    );
    fake.put("new.ics", "new-1", "Brand new");
    assert_eq!(
        provider
            .anything_new(connection, "events", &token)
            .await
            .unwrap(),
        Some(true)
    );
    assert!(provider
        .anything_new(connection, "tasks", &token)
        .await
        .is_err());
}

#[tokio::test]
async fn a_server_without_sync_collection_is_read_with_calendar_query() {
    let fake = FakeCalDav::start("jane", "pw", 12).await.unwrap();
    fake.without_sync_collection();
    let provider = CalDav::new(http());
    let account = setup(&[("server_url", &fake.calendar_url()), ("username", "jane")]);
    let key = secrets(&[("app_password", "pw")]);
    let pulled = pull_all(
        &provider,
        &account,
        &key,
        "events",
        PullMode::Incremental { since: None },
    )
    .await
    .unwrap();
    assert_eq!(pulled.records.len(), 12);
    assert!(pulled.watermark.is_none());
}

#[tokio::test]
async fn an_event_is_created_once_whatever_the_retries_and_faults() {
    let fake = FakeCalDav::start("jane", "pw", 0).await.unwrap();
    let provider = CalDav::new(http());
    let account = setup(&[("server_url", &fake.calendar_url()), ("username", "jane")]);
    let key = secrets(&[("app_password", "pw")]);
    let connection = Connection {
        setup: &account,
        credentials: &key,
    };
    let event = json!({"summary": "Dentist; bring forms", "start": "2026-12-01T10:00:00+01:00",
                       "end": "2026-12-01T10:30:00+01:00"});
    fake.faults.unavailable(1);
    let first = provider
        .push(connection, "create_event", &event, "action-9")
        .await
        .unwrap();
    assert_eq!(first["created"], true);
    let again = provider
        .push(connection, "create_event", &event, "action-9")
        .await
        .unwrap();
    assert_eq!(again["uid"], first["uid"]);
    assert_eq!(again["created"], false);
    assert_eq!(fake.members().len(), 1);
    let ics = fake.member(&fake.members()[0]).unwrap();
    assert!(ics.contains("SUMMARY:Dentist\\; bring forms\r\n"), "{ics}");
    assert!(ics.contains("DTSTART:20261201T090000Z"), "{ics}");
    let pulled = pull_all(&provider, &account, &key, "events", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(pulled.records[0].fields["summary"], "Dentist; bring forms");
}
