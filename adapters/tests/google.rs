//! Google Calendar and Gmail against the fake Google: connection tests, paging, sync tokens
//! and history ids (and what happens when Google forgets them), rate limits as 429 and as
//! 403, idempotent event creation, and a send that is never repeated.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::atomic::Ordering;

use adapters::http::ProviderError;
use adapters::provider::{Connection, Provider, PullMode};
use adapters::providers::gmail::Gmail;
use adapters::providers::google_calendar::GoogleCalendar;
use common::{bearer, http, pull_all, setup};
use fakes::google::{self as fake, FakeGoogle};
use fakes::Counters;
use serde_json::json;

fn calendar(fake: &FakeGoogle) -> GoogleCalendar {
    GoogleCalendar::new(fake.server.base.join("calendar/v3/").unwrap(), http())
}

fn gmail(fake: &FakeGoogle) -> Gmail {
    Gmail::new(fake.server.base.join("gmail/v1/").unwrap(), http())
}

#[tokio::test]
async fn calendar_tests_the_connection_and_refuses_a_bad_token() {
    let fake = FakeGoogle::start(1, 0).await.unwrap();
    let (access, _) = fake.auth.issue(&["openid"]);
    let provider = calendar(&fake);
    let none = setup(&[]);
    let good = bearer(&access);
    let identity = provider
        .test(Connection {
            setup: &none,
            credentials: &good,
        })
        .await
        .unwrap();
    assert_eq!(identity.account_label.as_deref(), Some(fake::EMAIL));
    let bad = bearer("at-forged");
    let refused = provider
        .test(Connection {
            setup: &none,
            credentials: &bad,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Unauthorized { detail } if detail.contains("Invalid Credentials")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn calendar_pages_then_follows_the_sync_token_and_restarts_when_it_is_gone() {
    let fake = FakeGoogle::start(600, 0).await.unwrap();
    let (access, _) = fake.auth.issue(&["openid"]);
    let provider = calendar(&fake);
    let none = setup(&[]);
    let credentials = bearer(&access);

    let full = pull_all(&provider, &none, &credentials, "events", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(full.pages, 3, "250 events a page");
    assert_eq!(full.live_ids(), fake.event_ids());
    let token = full
        .watermark
        .clone()
        .expect("the last page carries nextSyncToken");
    assert_eq!(full.records[0].fields["summary"], "Meeting 1");

    fake.set_event(&fake::event_id(7), "Moved standup");
    fake.delete_event(&fake::event_id(8));
    let since = pull_all(
        &provider,
        &none,
        &credentials,
        "events",
        PullMode::Incremental {
            since: Some(token.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(since.live_ids(), [fake::event_id(7)]);
    assert_eq!(since.deleted_ids(), [fake::event_id(8)]);
    assert_eq!(since.records[0].fields["summary"], "Moved standup");
    let next = since.watermark.clone().unwrap();
    assert_ne!(next, token);

    // Nothing changed: an empty page and a token.
    let quiet = pull_all(
        &provider,
        &none,
        &credentials,
        "events",
        PullMode::Incremental {
            since: Some(next.clone()),
        },
    )
    .await
    .unwrap();
    assert!(quiet.records.is_empty());

    fake.expire_sync_tokens();
    let stale = pull_all(
        &provider,
        &none,
        &credentials,
        "events",
        PullMode::Incremental { since: Some(next) },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&stale, ProviderError::StaleCursor { detail } if detail.contains("full sync is required")),
        "{stale:?}"
    );
}

#[tokio::test]
async fn google_rate_limits_as_429_and_as_403_are_waited_out() {
    let fake = FakeGoogle::start(10, 0).await.unwrap();
    let (access, _) = fake.auth.issue(&["openid"]);
    let provider = calendar(&fake);
    let none = setup(&[]);
    let credentials = bearer(&access);
    fake.faults.rate_limit(1, 0);
    fake.faults.quota(2);
    let pulled = pull_all(&provider, &none, &credentials, "events", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(pulled.records.len(), 10);
    assert_eq!(Counters::get(&fake.counters.rate_limited), 3);
}

#[tokio::test]
async fn calendar_creates_an_event_once_however_often_the_push_is_retried() {
    let fake = FakeGoogle::start(0, 0).await.unwrap();
    let (access, _) = fake.auth.issue(&["openid"]);
    let provider = calendar(&fake);
    let none = setup(&[]);
    let credentials = bearer(&access);
    let connection = Connection {
        setup: &none,
        credentials: &credentials,
    };
    let arguments = json!({
        "summary": "Kickoff",
        "start": "2026-12-01T10:00:00Z",
        "end": "2026-12-01T11:00:00Z",
        "attendees": ["bob@example.com"],
    });
    let first = provider
        .push(connection, "create_event", &arguments, "action-1")
        .await
        .unwrap();
    let again = provider
        .push(connection, "create_event", &arguments, "action-1")
        .await
        .unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(fake.event_ids().len(), 1);
    provider
        .push(connection, "create_event", &arguments, "action-2")
        .await
        .unwrap();
    assert_eq!(fake.event_ids().len(), 2);

    let missing = provider
        .push(
            connection,
            "create_event",
            &json!({"summary": "x"}),
            "action-3",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, ProviderError::Rejected { status: 400, detail } if detail.contains("`start`")),
        "{missing:?}"
    );

    let id = first["id"].as_str().unwrap();
    for _ in 0..2 {
        let deleted = provider
            .push(connection, "delete_event", &json!({ "event_id": id }), "d")
            .await
            .unwrap();
        assert_eq!(deleted["deleted"], true);
    }
    assert_eq!(fake.event_ids().len(), 1);
}

#[tokio::test]
async fn gmail_lists_reads_headers_and_follows_history() {
    let fake = FakeGoogle::start(0, 150).await.unwrap();
    let (access, _) = fake.auth.issue(&["openid"]);
    let provider = gmail(&fake);
    let none = setup(&[]);
    let credentials = bearer(&access);
    let identity = provider
        .test(Connection {
            setup: &none,
            credentials: &credentials,
        })
        .await
        .unwrap();
    assert_eq!(identity.account_label.as_deref(), Some(fake::EMAIL));

    let full = pull_all(&provider, &none, &credentials, "messages", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(full.pages, 2);
    assert_eq!(full.records.len(), 150);
    let newest = &full.records[0];
    assert_eq!(newest.id, fake::message_id(150));
    assert_eq!(newest.fields["subject"], "Subject 150");
    assert_eq!(newest.fields["from"], "sender150@example.org");
    let history = full.watermark.clone().unwrap();

    fake.receive(&fake::message_id(151), "ann@example.org", "Invoice");
    fake.purge_message(&fake::message_id(3));
    let since = pull_all(
        &provider,
        &none,
        &credentials,
        "messages",
        PullMode::Incremental {
            since: Some(history),
        },
    )
    .await
    .unwrap();
    assert_eq!(since.live_ids(), [fake::message_id(151)]);
    assert_eq!(since.deleted_ids(), [fake::message_id(3)]);
    assert_eq!(since.records[0].fields["subject"], "Invoice");

    fake.expire_history();
    let stale = pull_all(
        &provider,
        &none,
        &credentials,
        "messages",
        PullMode::Incremental {
            since: since.watermark,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(stale, ProviderError::StaleCursor { .. }),
        "{stale:?}"
    );
}

#[tokio::test]
async fn gmail_never_sends_twice_when_the_answer_is_lost() {
    let fake = FakeGoogle::start(0, 0).await.unwrap();
    let (access, _) = fake.auth.issue(&["openid"]);
    let provider = gmail(&fake);
    let none = setup(&[]);
    let credentials = bearer(&access);
    let connection = Connection {
        setup: &none,
        credentials: &credentials,
    };
    let email = json!({"to": "bob@example.com", "subject": "Hello", "body": "Hi Bob"});

    // A 429 was never processed: it is retried, and the mail goes out once.
    fake.faults.rate_limit(1, 0);
    provider
        .push(connection, "send_email", &email, "s1")
        .await
        .unwrap();
    assert_eq!(fake.sent_subjects(), ["Hello"]);

    // A 503 may have been: it is reported, not repeated.
    let before = fake.counters.requests.load(Ordering::SeqCst);
    fake.faults.unavailable(1);
    let failed = provider
        .push(connection, "send_email", &email, "s2")
        .await
        .unwrap_err();
    assert!(
        matches!(&failed, ProviderError::Unavailable { detail } if detail.contains("not repeated")),
        "{failed:?}"
    );
    assert_eq!(fake.counters.requests.load(Ordering::SeqCst), before + 1);

    let injected = provider
        .push(
            connection,
            "send_email",
            &json!({"to": "bob@example.com\r\nBcc: eve@example.com", "subject": "x", "body": "y"}),
            "s3",
        )
        .await
        .unwrap_err();
    assert!(matches!(
        injected,
        ProviderError::Rejected { status: 400, .. }
    ));
    assert_eq!(fake.sent_subjects(), ["Hello"]);
}
