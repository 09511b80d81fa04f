//! The HubSpot client against the fake HubSpot: paging, incremental search past its
//! 10,000-result limit, field discovery, pushes, and every fault the fake can raise.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use adapters::http::{ProviderError, ProviderHttp, RetryPolicy};
use adapters::provider::{Connection, Credentials, Provider, PullMode, PullRequest};
use adapters::providers::hubspot::HubSpot;
use fakes::hubspot::FakeHubSpot;
use secrecy::SecretString;
use serde_json::json;

fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
        budget: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
    }
}

struct Setup {
    fake: FakeHubSpot,
    client: HubSpot,
    credentials: Credentials,
    setup: BTreeMap<String, String>,
}

impl Setup {
    async fn new(contacts: u64, policy: RetryPolicy) -> Self {
        let fake = FakeHubSpot::start(contacts, 3).await.expect("fake starts");
        let (access, refresh) = fake.auth.issue(&["oauth", "crm.objects.contacts.read"]);
        let credentials = Credentials {
            access_token: Some(SecretString::from(access)),
            refresh_token: Some(SecretString::from(refresh)),
            ..Credentials::default()
        };
        let client = HubSpot::new(
            fake.server.base.clone(),
            ProviderHttp::new(adapters::outbound::Outbound::loopback(), policy),
        );
        Self {
            fake,
            client,
            credentials,
            setup: BTreeMap::new(),
        }
    }

    fn connection(&self) -> Connection<'_> {
        Connection {
            setup: &self.setup,
            credentials: &self.credentials,
        }
    }

    /// Pulls every page of `object` and returns the ids in order, the pages and the watermark.
    async fn pull_all(&self, object: &str, mode: PullMode) -> (Vec<String>, usize, Option<String>) {
        let fields = vec!["email".to_owned(), "firstname".to_owned()];
        let mut ids = Vec::new();
        let mut page = None;
        let mut pages = 0;
        loop {
            let answer = self
                .client
                .pull(
                    self.connection(),
                    PullRequest {
                        object,
                        fields: &fields,
                        mode: &mode,
                        page: page.as_deref(),
                    },
                )
                .await
                .expect("page pulled");
            pages += 1;
            ids.extend(answer.records.into_iter().map(|r| r.id));
            match answer.next_page {
                Some(next) => page = Some(next),
                None => return (ids, pages, answer.watermark),
            }
        }
    }
}

#[tokio::test]
async fn a_test_names_the_account_and_a_bad_token_is_refused() {
    let setup = Setup::new(0, quick_policy()).await;
    let identity = setup
        .client
        .test(setup.connection())
        .await
        .expect("test passes");
    assert_eq!(
        identity.account_label.as_deref(),
        Some("HubSpot account 62515")
    );
    assert!(identity.answer.contains("62515"), "{}", identity.answer);

    let wrong = Credentials {
        access_token: Some(SecretString::from("not-a-token")),
        ..Credentials::default()
    };
    let error = setup
        .client
        .test(Connection {
            setup: &setup.setup,
            credentials: &wrong,
        })
        .await
        .expect_err("a wrong token is refused");
    match error {
        ProviderError::Unauthorized { detail } => {
            assert!(detail.contains("credentials not found"), "{detail}")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }

    setup.fake.auth.expire_access_tokens();
    let error = setup
        .client
        .test(setup.connection())
        .await
        .expect_err("expired");
    assert!(
        matches!(&error, ProviderError::Unauthorized { detail } if detail.contains("expired")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_full_pull_pages_through_every_record_once() {
    let setup = Setup::new(250, quick_policy()).await;
    let (ids, pages, watermark) = setup.pull_all("contacts", PullMode::Full).await;
    assert_eq!(pages, 3);
    let expected: Vec<String> = (1..=250).map(|n| n.to_string()).collect();
    assert_eq!(ids, expected);
    assert!(watermark.is_some(), "the last page leaves a watermark");

    setup.fake.archive("contacts", 7);
    let (ids, _, _) = setup.pull_all("contacts", PullMode::Full).await;
    assert_eq!(ids.len(), 249);
    assert!(
        !ids.contains(&"7".to_owned()),
        "archived records leave the list"
    );
}

#[tokio::test]
async fn an_incremental_pull_returns_what_changed_since_the_watermark() {
    let setup = Setup::new(120, quick_policy()).await;
    let (_, _, watermark) = setup.pull_all("contacts", PullMode::Full).await;
    setup.fake.set("contacts", 5, &[("firstname", "Changed")]);
    setup
        .fake
        .set("contacts", 121, &[("email", "new@example.com")]);
    let (ids, _, next) = setup
        .pull_all("contacts", PullMode::Incremental { since: watermark })
        .await;
    assert_eq!(ids, vec!["5".to_owned(), "121".to_owned()]);
    assert!(next.is_some());
}

#[tokio::test]
async fn a_search_for_one_record_says_whether_anything_changed_since_the_watermark() {
    let setup = Setup::new(120, quick_policy()).await;
    let (_, _, watermark) = setup.pull_all("contacts", PullMode::Full).await;
    let watermark = watermark.expect("a full pull leaves a watermark");
    let asked = setup.fake.counters.requests.load(Ordering::SeqCst);
    let check = |object: &'static str, since: String| {
        let setup = &setup;
        async move {
            setup
                .client
                .anything_new(setup.connection(), object, &since)
                .await
        }
    };
    assert_eq!(
        check("contacts", watermark.clone()).await.unwrap(),
        Some(false)
    );
    assert_eq!(
        check("companies", watermark.clone()).await.unwrap(),
        Some(false)
    );
    assert_eq!(
        setup.fake.counters.requests.load(Ordering::SeqCst) - asked,
        2,
        "one search each"
    );
    setup.fake.set("contacts", 5, &[("firstname", "Changed")]);
    assert_eq!(
        check("contacts", watermark.clone()).await.unwrap(),
        Some(true)
    );
    assert_eq!(check("companies", watermark).await.unwrap(), Some(false));
    assert!(matches!(
        check("contacts", "not a time".into()).await,
        Err(ProviderError::Protocol { .. })
    ));
}

#[tokio::test]
async fn an_incremental_pull_continues_past_the_search_result_limit() {
    let setup = Setup::new(10_450, quick_policy()).await;
    // A watermark older than every record: the search matches all 10,450.
    let (ids, _, _) = setup
        .pull_all(
            "contacts",
            PullMode::Incremental {
                since: Some("0".into()),
            },
        )
        .await;
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 10_450, "every record is seen");
    assert!(
        ids.len() < 10_450 + 400,
        "the restart repeats only the boundary"
    );
}

#[tokio::test]
async fn fields_include_custom_properties() {
    let setup = Setup::new(1, quick_policy()).await;
    setup.fake.add_custom_property("favorite_color");
    let fields = setup
        .client
        .fields(setup.connection(), "contacts")
        .await
        .expect("fields listed");
    for name in ["email", "firstname", "lastmodifieddate", "favorite_color"] {
        assert!(fields.iter().any(|f| f == name), "{name} in {fields:?}");
    }
}

#[tokio::test]
async fn a_429_is_waited_out_as_retry_after_says() {
    let setup = Setup::new(30, quick_policy()).await;
    setup.fake.faults.rate_limit(2, 1);
    let started = Instant::now();
    let (ids, _, _) = setup.pull_all("contacts", PullMode::Full).await;
    assert_eq!(ids.len(), 30);
    assert_eq!(setup.fake.counters.rate_limited.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "each 429 said to wait a second"
    );
}

#[tokio::test]
async fn a_rate_limit_past_the_budget_fails_as_retryable() {
    let policy = RetryPolicy {
        budget: Duration::from_millis(1500),
        ..quick_policy()
    };
    let setup = Setup::new(30, policy).await;
    setup.fake.faults.rate_limit(100, 1);
    let error = setup
        .client
        .test(setup.connection())
        .await
        .expect_err("still limited");
    assert!(
        matches!(error, ProviderError::RateLimited { .. }),
        "{error:?}"
    );
    assert!(error.retryable());
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_the_budget() {
    let setup = Setup::new(30, quick_policy()).await;
    setup.fake.faults.unavailable(3);
    let (ids, _, _) = setup.pull_all("contacts", PullMode::Full).await;
    assert_eq!(ids.len(), 30);
    assert_eq!(setup.fake.counters.unavailable.load(Ordering::SeqCst), 3);

    let policy = RetryPolicy {
        budget: Duration::from_millis(300),
        ..quick_policy()
    };
    let short = Setup::new(30, policy).await;
    short.fake.faults.unavailable(1_000);
    let error = short
        .client
        .test(short.connection())
        .await
        .expect_err("down");
    assert!(
        matches!(&error, ProviderError::Unavailable { detail } if detail.contains("503")),
        "{error:?}"
    );
    assert!(error.retryable());
}

#[tokio::test]
async fn a_slow_provider_times_out_as_unavailable() {
    let policy = RetryPolicy {
        timeout: Duration::from_millis(100),
        budget: Duration::from_millis(400),
        ..quick_policy()
    };
    let setup = Setup::new(1, policy).await;
    setup.fake.faults.slow(Duration::from_millis(1_000));
    let error = setup
        .client
        .test(setup.connection())
        .await
        .expect_err("too slow");
    assert!(
        matches!(&error, ProviderError::Unavailable { detail } if detail.contains("in time")),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_rate_limit_headers_pause_calls_before_a_429() {
    let setup = Setup::new(500, quick_policy()).await;
    setup.fake.rate_window(2, Duration::from_millis(300));
    let (ids, pages, _) = setup.pull_all("contacts", PullMode::Full).await;
    assert_eq!((ids.len(), pages), (500, 5));
    assert_eq!(
        setup.fake.counters.rate_limited.load(Ordering::SeqCst),
        0,
        "no call was sent into a used-up window"
    );
}

#[tokio::test]
async fn creating_a_contact_twice_with_one_email_makes_one_contact() {
    let setup = Setup::new(3, quick_policy()).await;
    let arguments = json!({"properties": {"email": "jane@x.com", "firstname": "Jane"}});
    let first = setup
        .client
        .push(setup.connection(), "create_contact", &arguments, "k1")
        .await
        .expect("created");
    let again = setup
        .client
        .push(setup.connection(), "create_contact", &arguments, "k1")
        .await
        .expect("upserted");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(setup.fake.live_ids("contacts").len(), 4);

    let updated = setup
        .client
        .push(
            setup.connection(),
            "update_contact",
            &json!({"id": "2", "properties": {"jobtitle": "CEO"}}),
            "k2",
        )
        .await
        .expect("updated");
    assert_eq!(updated["properties"]["jobtitle"], "CEO");

    let found = setup
        .client
        .push(
            setup.connection(),
            "search_contacts",
            &json!({"query": "jane"}),
            "k3",
        )
        .await
        .expect("searched");
    assert_eq!(found["results"].as_array().map(Vec::len), Some(1));

    let error = setup
        .client
        .push(setup.connection(), "launch_rocket", &json!({}), "k4")
        .await
        .expect_err("no such tool");
    assert!(matches!(error, ProviderError::Rejected { status: 400, .. }));
}
