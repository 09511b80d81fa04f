//! Hostile or internal provider servers: a Salesforce token answer whose `instance_url` points
//! inside the network is never followed, and a CalDAV server that answers without end cannot
//! fill the memory.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use adapters::http::{ProviderError, ProviderHttp, RetryPolicy};
use adapters::outbound::Outbound;
use adapters::provider::{Connection, Credentials, Provider};
use adapters::providers::caldav::CalDav;
use adapters::providers::salesforce::Salesforce;
use axum::body::Body;
use axum::routing::any;
use common::{secrets, setup};
use fakes::salesforce::FakeSalesforce;
use secrecy::SecretString;

fn policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(10),
        max_delay: Duration::from_secs(1),
        budget: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn an_instance_url_pointing_inside_the_network_is_never_called() {
    let fake = FakeSalesforce::start(3, 1).await.unwrap();
    // What a hostile token answer would hand over: the org's API on this machine.
    let mut credentials = Credentials {
        access_token: Some(SecretString::from("token".to_owned())),
        ..Credentials::default()
    };
    credentials.facts.insert(
        "instance_url".into(),
        fake.server.base.as_str().trim_end_matches('/').to_owned(),
    );
    let before = fake.counters.requests.load(Ordering::SeqCst);
    let provider = Salesforce::new(ProviderHttp::new(Outbound::guarded_only(), policy()));
    let none = BTreeMap::new();
    let error = provider
        .test(Connection {
            setup: &none,
            credentials: &credentials,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ProviderError::Refused(refused) if refused.reason.contains("loopback")),
        "{error:?}"
    );
    assert_eq!(error.code(), "outbound_refused");
    assert!(!error.retryable());
    assert_eq!(
        fake.counters.requests.load(Ordering::SeqCst),
        before,
        "the fake org saw no request"
    );
}

#[tokio::test]
async fn a_server_answering_without_end_is_cut_at_the_body_cap() {
    // A multistatus that goes on for twice the cap.
    let chunk = vec![b' '; 1024 * 1024];
    let chunks = 2 * adapters::http::MAX_BODY_BYTES / chunk.len();
    let router = axum::Router::new().route(
        "/dav/{*path}",
        any(move || {
            let chunk = chunk.clone();
            async move {
                let head = futures::stream::once(async {
                    Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                        b"<?xml version=\"1.0\"?><D:multistatus xmlns:D=\"DAV:\">",
                    ))
                });
                let body = futures::stream::iter(
                    (0..chunks).map(move |_| Ok(bytes::Bytes::from(chunk.clone()))),
                );
                axum::http::Response::builder()
                    .status(207)
                    .body(Body::from_stream(futures::StreamExt::chain(head, body)))
                    .unwrap()
            }
        }),
    );
    let server = fakes::FakeServer::start(router).await.unwrap();
    let provider = CalDav::new(ProviderHttp::new(Outbound::loopback(), policy()));
    let account = setup(&[
        ("server_url", &format!("{}dav/cal/", server.base)),
        ("username", "jane"),
    ]);
    let key = secrets(&[("app_password", "pw")]);
    let error = provider
        .test(Connection {
            setup: &account,
            credentials: &key,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ProviderError::Protocol { detail } if detail.contains("larger than")),
        "{error:?}"
    );
}
