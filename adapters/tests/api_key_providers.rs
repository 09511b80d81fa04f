//! Zendesk, Todoist and Twilio — the API-key apps — against their fakes: connection tests that
//! refuse a wrong key with the provider's reason, their paging and change feeds, faults, and
//! pushes that are deduplicated where the provider allows and never repeated where it does not.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use adapters::http::ProviderError;
use adapters::provider::{Connection, Provider, PullMode};
use adapters::providers::todoist::Todoist;
use adapters::providers::twilio::Twilio;
use adapters::providers::zendesk::Zendesk;
use common::{http, pull_all, secrets, setup};
use fakes::todoist::{self as todoist_fake, FakeTodoist};
use fakes::twilio::FakeTwilio;
use fakes::zendesk::FakeZendesk;
use fakes::Counters;
use serde_json::json;

const AGENT: &str = "agent@acme.com";
const ZENDESK_TOKEN: &str = "zd-s3cret-token";

fn zendesk(fake: &FakeZendesk) -> Zendesk {
    Zendesk::new(format!("{}{{subdomain}}/", fake.server.base), http())
}

#[tokio::test]
async fn zendesk_refuses_a_wrong_token_and_an_anonymous_answer() {
    let fake = FakeZendesk::start("acme", AGENT, ZENDESK_TOKEN, 1, 1)
        .await
        .unwrap();
    let provider = zendesk(&fake);
    let account = setup(&[("subdomain", "acme"), ("email", AGENT)]);
    let good = secrets(&[("api_token", ZENDESK_TOKEN)]);
    let identity = provider
        .test(Connection {
            setup: &account,
            credentials: &good,
        })
        .await
        .unwrap();
    assert!(identity.account_label.unwrap().contains("Johnny Agent"));

    let wrong = secrets(&[("api_token", "nope")]);
    let refused = provider
        .test(Connection {
            setup: &account,
            credentials: &wrong,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Unauthorized { detail } if detail.contains("Couldn't authenticate you")),
        "{refused:?}"
    );
    let elsewhere = setup(&[("subdomain", "other"), ("email", AGENT)]);
    let missing = provider
        .test(Connection {
            setup: &elsewhere,
            credentials: &good,
        })
        .await
        .unwrap_err();
    assert!(matches!(
        missing,
        ProviderError::Rejected { status: 404, .. }
    ));
    let bad = setup(&[("subdomain", "evil.example/x"), ("email", AGENT)]);
    assert!(matches!(
        provider
            .test(Connection {
                setup: &bad,
                credentials: &good
            })
            .await,
        Err(ProviderError::Misconfigured(_))
    ));
}

#[tokio::test]
async fn zendesk_exports_incrementally_with_deleted_tickets_and_waits_out_429() {
    let fake = FakeZendesk::start("acme", AGENT, ZENDESK_TOKEN, 2500, 3)
        .await
        .unwrap();
    let provider = zendesk(&fake);
    let account = setup(&[("subdomain", "acme"), ("email", AGENT)]);
    let key = secrets(&[("api_token", ZENDESK_TOKEN)]);
    fake.faults.rate_limit(1, 0);
    let full = pull_all(&provider, &account, &key, "tickets", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(full.pages, 3, "1000 tickets a page");
    assert_eq!(full.records.len(), 2500);
    assert_eq!(Counters::get(&fake.counters.rate_limited), 1);
    assert_eq!(full.records[0].fields["subject"], "Ticket 1");
    assert_eq!(full.records[0].fields["custom_field_27642"], "v1");
    let cursor = full.watermark.unwrap();

    fake.update_ticket(5, "Printer on fire", "pending");
    fake.delete_ticket(6);
    let since = pull_all(
        &provider,
        &account,
        &key,
        "tickets",
        PullMode::Incremental {
            since: Some(cursor),
        },
    )
    .await
    .unwrap();
    assert_eq!(since.live_ids(), ["5"]);
    assert_eq!(since.deleted_ids(), ["6"]);
    // A full run leaves deleted tickets out, for the sweep to find.
    let again = pull_all(&provider, &account, &key, "tickets", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(again.records.len(), 2499);
    assert!(again.deleted_ids().is_empty());

    let users = pull_all(&provider, &account, &key, "users", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(users.records.len(), 3);
    let fields = provider
        .fields(
            Connection {
                setup: &account,
                credentials: &key,
            },
            "tickets",
        )
        .await
        .unwrap();
    assert!(fields.contains(&"custom_field_27642".to_owned()));
}

#[tokio::test]
async fn zendesk_creates_a_ticket_once_per_idempotency_key() {
    let fake = FakeZendesk::start("acme", AGENT, ZENDESK_TOKEN, 0, 0)
        .await
        .unwrap();
    let provider = zendesk(&fake);
    let account = setup(&[("subdomain", "acme"), ("email", AGENT)]);
    let key = secrets(&[("api_token", ZENDESK_TOKEN)]);
    let connection = Connection {
        setup: &account,
        credentials: &key,
    };
    let ticket = json!({"subject": "Printer on fire", "body": "Smoke everywhere"});
    let first = provider
        .push(connection, "create_ticket", &ticket, "action-1")
        .await
        .unwrap();
    let retried = provider
        .push(connection, "create_ticket", &ticket, "action-1")
        .await
        .unwrap();
    assert_eq!(first["id"], retried["id"]);
    assert_eq!(fake.ticket_subjects(), ["Printer on fire"]);

    let id = first["id"].as_u64().unwrap();
    provider
        .push(
            connection,
            "add_public_comment",
            &json!({"ticket_id": id.to_string(), "body": "On our way"}),
            "action-2",
        )
        .await
        .unwrap();
    assert_eq!(fake.comments(id), 2);
    // A comment is not repeated after a 5xx: it may have been posted.
    fake.faults.unavailable(1);
    let failed = provider
        .push(
            connection,
            "add_public_comment",
            &json!({"ticket_id": id.to_string(), "body": "Again"}),
            "action-3",
        )
        .await
        .unwrap_err();
    assert!(matches!(failed, ProviderError::Unavailable { .. }));
    assert_eq!(fake.comments(id), 2);
    let invalid = provider
        .push(
            connection,
            "create_ticket",
            &json!({"subject": "x"}),
            "action-4",
        )
        .await
        .unwrap_err();
    assert!(matches!(
        invalid,
        ProviderError::Rejected { status: 400, .. }
    ));
}

#[tokio::test]
async fn todoist_lists_tasks_then_follows_sync_tokens_and_starts_over_when_refused() {
    let fake = FakeTodoist::start("td-s3cret", 450).await.unwrap();
    let provider = Todoist::new(fake.server.base.join("api/v1/").unwrap(), http());
    let none = setup(&[]);
    let key = secrets(&[("api_token", "td-s3cret")]);
    let wrong = secrets(&[("api_token", "td-wrong")]);
    let refused = provider
        .test(Connection {
            setup: &none,
            credentials: &wrong,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Unauthorized { detail } if detail.contains("Invalid token")),
        "{refused:?}"
    );

    fake.faults.unavailable(2);
    let full = pull_all(&provider, &none, &key, "tasks", PullMode::Full)
        .await
        .unwrap();
    assert_eq!((full.pages, full.records.len()), (3, 450));
    assert_eq!(Counters::get(&fake.counters.unavailable), 2);

    let first = pull_all(
        &provider,
        &none,
        &key,
        "tasks",
        PullMode::Incremental { since: None },
    )
    .await
    .unwrap();
    assert_eq!(
        first.records.len(),
        450,
        "the first sync is `*`: everything"
    );
    let token = first.watermark.unwrap();
    fake.rename(&todoist_fake::task_id(3), "Buy oat milk");
    fake.delete(&todoist_fake::task_id(4));
    let since = pull_all(
        &provider,
        &none,
        &key,
        "tasks",
        PullMode::Incremental {
            since: Some(token.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(since.live_ids(), [todoist_fake::task_id(3)]);
    assert_eq!(since.deleted_ids(), [todoist_fake::task_id(4)]);
    assert_eq!(since.records[0].fields["content"], "Buy oat milk");

    fake.expire_sync_tokens();
    let stale = pull_all(
        &provider,
        &none,
        &key,
        "tasks",
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
async fn todoist_creates_a_task_once_per_request_id_and_completes_it() {
    let fake = FakeTodoist::start("td-s3cret", 0).await.unwrap();
    let provider = Todoist::new(fake.server.base.join("api/v1/").unwrap(), http());
    let none = setup(&[]);
    let key = secrets(&[("api_token", "td-s3cret")]);
    let connection = Connection {
        setup: &none,
        credentials: &key,
    };
    let task = json!({"content": "Call Ann", "due_string": "tomorrow at 9", "priority": 4});
    let first = provider
        .push(
            connection,
            "create_task",
            &task,
            "action-with-a-long-key-beyond-36-bytes-0001",
        )
        .await
        .unwrap();
    let again = provider
        .push(
            connection,
            "create_task",
            &task,
            "action-with-a-long-key-beyond-36-bytes-0001",
        )
        .await
        .unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(fake.active(), ["Call Ann"]);
    for _ in 0..2 {
        provider
            .push(
                connection,
                "complete_task",
                &json!({"task_id": first["id"]}),
                "c",
            )
            .await
            .unwrap();
    }
    assert!(fake.active().is_empty());
}

const SID: &str = "AC0123456789abcdef0123456789abcdef";

fn twilio(regions: &[(&str, &FakeTwilio)]) -> Twilio {
    let map: BTreeMap<String, url::Url> = regions
        .iter()
        .map(|(region, fake)| ((*region).to_owned(), fake.server.base.clone()))
        .collect();
    Twilio::new(map, http())
}

#[tokio::test]
async fn twilio_talks_to_the_connections_region_and_pages_by_next_page_uri() {
    let us = FakeTwilio::start(SID, "us-token", 2, 0).await.unwrap();
    let ie = FakeTwilio::start(SID, "ie-token", 2100, 30).await.unwrap();
    let provider = twilio(&[("us1", &us), ("ie1", &ie)]);
    let dublin = setup(&[("account_sid", SID), ("region", "ie1")]);
    let ie_key = secrets(&[("auth_token", "ie-token")]);
    let identity = provider
        .test(Connection {
            setup: &dublin,
            credentials: &ie_key,
        })
        .await
        .unwrap();
    assert_eq!(identity.account_label.as_deref(), Some("Acme support line"));
    // Credentials are per region: the US token means nothing in Dublin.
    let us_key = secrets(&[("auth_token", "us-token")]);
    let refused = provider
        .test(Connection {
            setup: &dublin,
            credentials: &us_key,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Unauthorized { detail } if detail.contains("Authenticate")),
        "{refused:?}"
    );

    let messages = pull_all(&provider, &dublin, &ie_key, "messages", PullMode::Full)
        .await
        .unwrap();
    assert_eq!((messages.pages, messages.records.len()), (3, 2100));
    assert_eq!(
        messages.records[0].id,
        FakeTwilio::message_sid(2100),
        "newest first"
    );
    assert_eq!(Counters::get(&us.counters.requests), 0);
    let calls = pull_all(&provider, &dublin, &ie_key, "calls", PullMode::Full)
        .await
        .unwrap();
    assert_eq!(calls.records.len(), 30);
    assert_eq!(calls.records[0].fields["duration"], "42");

    // An incremental run re-reads from a date; the fake's messages are all from January 2026.
    let since = pull_all(
        &provider,
        &dublin,
        &ie_key,
        "messages",
        PullMode::Incremental {
            since: Some("2026-01-27".into()),
        },
    )
    .await
    .unwrap();
    assert!(!since.records.is_empty() && since.records.len() < 2100);
    assert!(since.watermark.is_some());
}

#[tokio::test]
async fn twilio_never_sends_an_sms_twice() {
    let fake = FakeTwilio::start(SID, "tok", 0, 0).await.unwrap();
    let provider = twilio(&[("us1", &fake)]);
    let account = setup(&[("account_sid", SID), ("region", "us1")]);
    let key = secrets(&[("auth_token", "tok")]);
    let connection = Connection {
        setup: &account,
        credentials: &key,
    };
    let sms = json!({"to": "+14155552345", "from": "+14155550000", "body": "Your table is ready"});
    fake.faults.rate_limit(1, 0);
    let sent = provider
        .push(connection, "send_sms", &sms, "a1")
        .await
        .unwrap();
    assert_eq!(sent["status"], "queued");
    assert_eq!(fake.sent(), ["Your table is ready"]);

    let before = fake.counters.requests.load(Ordering::SeqCst);
    fake.faults.unavailable(1);
    let failed = provider
        .push(connection, "send_sms", &sms, "a2")
        .await
        .unwrap_err();
    assert!(
        matches!(&failed, ProviderError::Unavailable { detail } if detail.contains("not repeated")),
        "{failed:?}"
    );
    assert_eq!(fake.counters.requests.load(Ordering::SeqCst), before + 1);

    let bad = provider
        .push(
            connection,
            "send_sms",
            &json!({"to": "555", "from": "+14155550000", "body": "x"}),
            "a3",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, ProviderError::Rejected { status: 400, detail } if detail.contains("not a valid phone number")),
        "{bad:?}"
    );
    assert_eq!(fake.sent().len(), 1);
}
