//! Salesforce against the fake org: the OAuth web-server flow whose token answer names the
//! instance (no `expires_in`, a refresh without a refresh token), the identity URL as the
//! connection test, SOQL batches by `nextRecordsUrl`, `queryAll` tombstones from the
//! watermark, describe for mappings, and its error shapes.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;

use adapters::http::{ProviderError, ProviderHttp};
use adapters::oauth::{OAuthClient, Pending, Revocation};
use adapters::provider::{Connection, Credentials, Provider, PullMode};
use adapters::providers::salesforce::Salesforce;
use common::{http, pull_all, setup};
use database::ServiceDb;
use fakes::salesforce::{self as fake, FakeSalesforce};
use secrecy::SecretString;
use serde_json::json;
use url::Url;

fn client(fake: &FakeSalesforce) -> OAuthClient {
    let base = &fake.server.base;
    OAuthClient {
        client_id: fake::CLIENT_ID.into(),
        client_secret: SecretString::from(fake::CLIENT_SECRET),
        authorize_url: base.join("services/oauth2/authorize").unwrap(),
        token_url: base.join("services/oauth2/token").unwrap(),
        revocation: Some(Revocation::Rfc7009(
            base.join("services/oauth2/revoke").unwrap(),
        )),
        credentials_in_body: true,
        issuer: None,
        extra_authorize_params: Vec::new(),
    }
}

/// Connects through the code flow, as the popup would: the grant's credentials.
async fn connect(fake: &FakeSalesforce, db: &ServiceDb) -> Credentials {
    let oauth = client(fake);
    let redirect = Url::parse("http://127.0.0.1:7000/v1/oauth/callback").unwrap();
    let pending = Pending {
        workspace: "acme".parse().unwrap(),
        user: "ada".parse().unwrap(),
        role: domain::Role::Admin,
        app: "salesforce".into(),
        integration: None,
        setup: BTreeMap::new(),
        browser: adapters::oauth::binding_hash("browser"),
        token: adapters::oauth::binding_hash("token"),
    };
    let started = oauth
        .start(db, &redirect, &["api", "refresh_token"], &pending)
        .await
        .unwrap();
    let browser = ProviderHttp::default_client();
    let answer = browser.get(started.url).send().await.unwrap();
    let back = Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    let query: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    let (_, grant) = oauth
        .finish(
            db,
            &browser,
            &redirect,
            &query["state"],
            &query["code"],
            Some("browser"),
        )
        .await
        .unwrap();
    assert_eq!(grant.scopes, ["api", "refresh_token"]);
    grant.credentials
}

#[tokio::test]
async fn the_token_answer_names_the_instance_and_the_identity_answers_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
        .await
        .unwrap();
    let fake = FakeSalesforce::start(3, 1).await.unwrap();
    let credentials = connect(&fake, &db).await;
    let instance = fake.server.base.as_str().trim_end_matches('/');
    assert_eq!(credentials.facts["instance_url"], instance);
    assert!(credentials.facts["identity_url"].ends_with(fake::USER_ID));
    assert!(
        credentials.expires_at.is_none(),
        "Salesforce sends no expires_in"
    );

    let provider = Salesforce::new(http());
    let none = setup(&[]);
    let identity = provider
        .test(Connection {
            setup: &none,
            credentials: &credentials,
        })
        .await
        .unwrap();
    assert_eq!(identity.account_label.as_deref(), Some("jane@acme.com"));

    // A refresh answers without a refresh token: the old one is kept.
    let redirect = Url::parse("http://127.0.0.1:7000/v1/oauth/callback").unwrap();
    let refreshed = client(&fake)
        .refresh(&ProviderHttp::default_client(), &redirect, &credentials)
        .await
        .unwrap();
    assert!(refreshed.credentials.refresh_token.is_some());
    assert_eq!(fake.auth.refreshes(), 1);

    fake.auth.expire_access_tokens();
    let expired = provider
        .test(Connection {
            setup: &none,
            credentials: &credentials,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&expired, ProviderError::Unauthorized { detail } if detail.contains("Session expired")),
        "{expired:?}"
    );
}

#[tokio::test]
async fn soql_batches_then_query_all_from_the_watermark_brings_changes_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
        .await
        .unwrap();
    let fake = FakeSalesforce::start(4500, 7).await.unwrap();
    let credentials = connect(&fake, &db).await;
    let provider = Salesforce::new(http());
    let none = setup(&[]);

    fake.faults.unavailable(1);
    let full = pull_all(&provider, &none, &credentials, "Contact", PullMode::Full)
        .await
        .unwrap();
    assert_eq!((full.pages, full.records.len()), (3, 4500), "2000 a batch");
    assert_eq!(full.records[0].id, fake::record_id("Contact", 1));
    assert_eq!(full.records[0].fields["Email"], "contact1@example.com");
    assert!(!full.records[0].fields.contains_key("attributes"));
    let watermark = full.watermark.clone().unwrap();

    let one = fake::record_id("Contact", 10);
    let two = fake::record_id("Contact", 11);
    fake.set("Contact", &one, "Title", "CFO");
    fake.delete("Contact", &two);
    let since = pull_all(
        &provider,
        &none,
        &credentials,
        "Contact",
        PullMode::Incremental {
            since: Some(watermark),
        },
    )
    .await
    .unwrap();
    assert!(since.live_ids().contains(&one));
    assert_eq!(since.deleted_ids(), [two]);
    assert!(since.records.len() < 100, "only the tail is read again");
    let changed = since.records.iter().find(|r| r.id == one).unwrap();
    assert_eq!(changed.fields["Title"], "CFO");

    let fields = provider
        .fields(
            Connection {
                setup: &none,
                credentials: &credentials,
            },
            "Contact",
        )
        .await
        .unwrap();
    assert!(fields.contains(&"Email".to_owned()));

    // A field the org does not have: refused with Salesforce's words, never a partial run.
    let wrong = provider
        .pull(
            Connection {
                setup: &none,
                credentials: &credentials,
            },
            adapters::provider::PullRequest {
                object: "Contact",
                fields: &["Shoe_Size__c".to_owned()],
                mode: &PullMode::Full,
                page: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&wrong, ProviderError::Rejected { status: 400, detail } if detail.contains("No such column")),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn creating_a_contact_reports_missing_fields_and_is_never_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
        .await
        .unwrap();
    let fake = FakeSalesforce::start(0, 0).await.unwrap();
    let credentials = connect(&fake, &db).await;
    let provider = Salesforce::new(http());
    let none = setup(&[]);
    let connection = Connection {
        setup: &none,
        credentials: &credentials,
    };
    let created = provider
        .push(
            connection,
            "create_contact",
            &json!({"fields": {"LastName": "Doe", "Email": "jane@x.com"}}),
            "k1",
        )
        .await
        .unwrap();
    assert_eq!(created["success"], true);
    assert_eq!(fake.labels("Contact"), ["jane@x.com"]);
    let missing = provider
        .push(
            connection,
            "create_contact",
            &json!({"fields": {"Email": "x@x.com"}}),
            "k2",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, ProviderError::Rejected { detail, .. } if detail.contains("LastName")),
        "{missing:?}"
    );
    fake.faults.unavailable(1);
    assert!(provider
        .push(
            connection,
            "create_contact",
            &json!({"fields": {"LastName": "Roe"}}),
            "k3",
        )
        .await
        .is_err());
    assert_eq!(fake.labels("Contact").len(), 1);
}
