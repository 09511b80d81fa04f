//! The seed's whole walk ("Connecting Your Tools") over HTTP, on the embedded default and on
//! NATS JetStream + PostgreSQL: an admin browses Apps, connects HubSpot through the OAuth
//! popup, tests it, syncs, reads the sync logs and sets mappings; the provider revokes the
//! token and the next sync marks it as needing reauth; the admin reauthenticates and syncs
//! again, then disconnects and deletes. A member without the permission is refused every
//! write; a personal Google Calendar stays its owner's; an auditor reads the history, the
//! state as of a moment, and verifies the chain. An SSE subscriber (and, on JetStream, a
//! JetStream consumer) receives every event in order, and no answer ever holds a secret.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use eventstore::waiting::eventually;
use fakes::google::{self as google_fake, FakeGoogle};
use fakes::hubspot::{self as hubspot_fake, FakeHubSpot};
use gateway::Settings;

use crate::audit::{open_sse, read_sse};
use crate::helpers::{popup, spawn_app_with, use_fake_hubspot, TestApp};

const WAIT: Duration = Duration::from_secs(30);

/// Points Google Calendar at a fake Google, with its OAuth client configured.
fn use_fake_google(settings: &mut Settings, base: &url::Url) {
    settings.adapters.endpoints.google_calendar_api = base.join("calendar/v3/").unwrap();
    settings.adapters.unavailable.remove("google-calendar");
    settings.adapters.oauth.insert(
        "google-calendar".into(),
        adapters::oauth::OAuthClient {
            client_id: google_fake::CLIENT_ID.into(),
            client_secret: secrecy::SecretString::from(google_fake::CLIENT_SECRET),
            authorize_url: base.join("o/oauth2/v2/auth").unwrap(),
            token_url: base.join("token").unwrap(),
            revocation: None,
            credentials_in_body: true,
            issuer: None,
            extra_authorize_params: Vec::new(),
        },
    );
}

/// The service, and every body it answered during the walk (for the secret scan).
struct Walk {
    app: TestApp,
    answers: Mutex<Vec<String>>,
}

impl Walk {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let response = self.app.call(method, path, token, body).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.answers.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        self.call(Method::GET, path, token, None).await.1
    }

    /// Runs the OAuth popup for `authorization_url`; answers the integration id it connected.
    async fn popup(&self, authorization_url: &str) -> String {
        let (_, html) = popup(&self.app.browser(), authorization_url).await;
        self.answers.lock().unwrap().push(html.clone());
        assert!(html.contains("\"ok\":true"), "{html}");
        html.split("\"integration_id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned()
    }

    async fn status_becomes(&self, path: &str, token: &str, status: &str) -> Value {
        self.status_is(path, token, &[status]).await
    }

    /// Waits until Installed shows the integration in one of `statuses`.
    async fn status_is(&self, path: &str, token: &str, statuses: &[&str]) -> Value {
        eventually(
            WAIT,
            &format!("the integration becomes {statuses:?}"),
            || async {
                let row = self.get(path, token).await;
                statuses
                    .iter()
                    .any(|status| row["status"] == *status)
                    .then_some(row)
            },
        )
        .await
    }

    async fn completed_run(&self, id: &str, token: &str, sync_id: &str) -> Value {
        eventually(WAIT, "the sync logs show the run completed", || async {
            let logs = self
                .get(
                    &format!("/v1/workspaces/acme/integrations/{id}/sync-logs"),
                    token,
                )
                .await;
            logs["runs"]
                .as_array()?
                .iter()
                .find(|r| r["sync_id"] == sync_id && r["status"] == "completed")
                .cloned()
        })
        .await
    }
}

/// A JetStream consumer of acme's workspace events, from the start.
async fn jetstream_consumer(
    url: &str,
    namespace: &str,
) -> async_nats::jetstream::consumer::pull::Stream {
    use async_nats::jetstream::{self, consumer::pull};
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let stream = eventually(WAIT, "the events stream exists", || async {
        js.get_stream(format!("{}_EVENTS", namespace.to_ascii_uppercase()))
            .await
            .ok()
    })
    .await;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: format!("{namespace}.events.acme.ws.>"),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    consumer.messages().await.unwrap()
}

async fn the_seed_walk(configure: impl FnOnce(&mut Settings), jetstream: Option<(String, String)>) {
    let hubspot = FakeHubSpot::start(5, 2).await.unwrap();
    let google = FakeGoogle::start(3, 0).await.unwrap();
    let hubspot_base = hubspot.server.base.clone();
    let google_base = google.server.base.clone();
    let app = spawn_app_with(|settings| {
        use_fake_hubspot(settings, &hubspot_base);
        use_fake_google(settings, &google_base);
        settings.checkpoint_every = Duration::from_millis(200);
        configure(settings);
    })
    .await;
    let (_, ada) = app.token("acme", "ada", "admin").await;
    let (_, bob) = app.token("acme", "bob", "member").await;
    let (_, eve) = app.token("acme", "eve", "auditor").await;
    let walk = Walk {
        app,
        answers: Mutex::new(Vec::new()),
    };
    let mut subscriber =
        open_sse(&walk.app, "/v1/workspaces/acme/events?after=0", &ada, None).await;
    let mut consumer = match &jetstream {
        Some((url, namespace)) => Some(jetstream_consumer(url, namespace).await),
        None => None,
    };

    // Marketplace > Apps: HubSpot is a workspace integration through OAuth, asking for CRM
    // access; Google Calendar is personal.
    let apps = walk.get("/v1/apps", &ada).await;
    let app_of = |id: &str| {
        apps["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap()
    };
    let hubspot_app = app_of("hubspot");
    assert_eq!(hubspot_app["scope"], "workspace");
    assert_eq!(hubspot_app["available"], true);
    assert!(
        hubspot_app["auth"]
            .to_string()
            .contains("crm.objects.contacts.read"),
        "{hubspot_app}"
    );
    assert_eq!(app_of("google-calendar")["scope"], "personal");

    // Connect through the popup.
    let (status, started) = walk
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &ada,
            Some(json!({"app": "hubspot"})),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    let id = walk
        .popup(started["authorization_url"].as_str().unwrap())
        .await;
    let path = format!("/v1/workspaces/acme/integrations/{id}");
    let url = |rest: &str| format!("{path}{rest}");
    walk.status_becomes(&path, &ada, "connected").await;

    // Test, full sync, sync logs, mappings.
    let (status, tested) = walk.call(Method::POST, &url("/test"), &ada, None).await;
    assert_eq!(
        (status, tested["ok"].as_bool()),
        (200, Some(true)),
        "{tested}"
    );
    let (status, sync) = walk.call(Method::POST, &url("/sync"), &ada, None).await;
    assert_eq!(status, 202);
    let run = walk
        .completed_run(&id, &ada, sync["sync_id"].as_str().unwrap())
        .await;
    assert_eq!(run["pulled"], 7, "five contacts and two companies");
    let (status, mapped) = walk
        .call(
            Method::PUT,
            &url("/mappings"),
            &ada,
            Some(
                json!({"object": "contacts", "expected_version": 0, "fields": [
                {"provider_field": "email", "harmony_field": "email", "transform": "lowercase"},
                {"provider_field": "jobtitle", "harmony_field": "title"}]}),
            ),
        )
        .await;
    assert_eq!(
        (status, mapped["version"].as_u64()),
        (200, Some(1)),
        "{mapped}"
    );

    // What the API showed at a moment between two events.
    // (Installed follows the log: wait until it has applied the mapping.)
    let shown = eventually(WAIT, "Installed shows the mapping", || async {
        let row = walk.get(&path, &eve).await;
        (row["mapping_version"] == 1).then_some(row)
    })
    .await;
    let moment = domain::Timestamp::now();

    // The provider revokes the token: the next sync marks the integration as needing reauth.
    hubspot.auth.revoke_everything();
    let (status, _) = walk.call(Method::POST, &url("/sync"), &ada, None).await;
    assert_eq!(status, 202);
    let row = walk.status_becomes(&path, &ada, "needs_reauth").await;
    assert!(
        row["actions"]
            .as_array()
            .unwrap()
            .contains(&json!("reauth")),
        "{row}"
    );

    // A member without the integration permission is refused every write.
    for (method, rest, body) in [
        (Method::POST, "/test", None),
        (Method::POST, "/sync", None),
        (Method::POST, "/reauth", None),
        (Method::PUT, "/schedule", Some(json!({"every_minutes": 60}))),
        (
            Method::PUT,
            "/mappings",
            Some(json!({"object": "contacts", "fields": [
            {"provider_field": "email", "harmony_field": "email"}]})),
        ),
        (Method::POST, "/disconnect", None),
        (Method::DELETE, "", None),
    ] {
        let (status, body) = walk.call(method.clone(), &url(rest), &bob, body).await;
        assert_eq!(status, 403, "{method} {rest}: {body}");
    }

    // Reauthenticate: the same integration, connected again, and it syncs.
    let (status, again) = walk.call(Method::POST, &url("/reauth"), &ada, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        walk.popup(again["authorization_url"].as_str().unwrap())
            .await,
        id
    );
    // Usable again; Installed still says the last sync failed until the next one succeeds.
    let row = walk.status_is(&path, &ada, &["connected", "error"]).await;
    assert!(
        row["actions"].as_array().unwrap().contains(&json!("sync")),
        "{row}"
    );
    let (_, sync) = walk.call(Method::POST, &url("/sync"), &ada, None).await;
    walk.completed_run(&id, &ada, sync["sync_id"].as_str().unwrap())
        .await;
    walk.status_becomes(&path, &ada, "connected").await;

    // Bob connects Google Calendar for himself: nobody else sees it.
    let (status, started) = walk
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &bob,
            Some(json!({"app": "google-calendar"})),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    let calendar = walk
        .popup(started["authorization_url"].as_str().unwrap())
        .await;
    let calendar_path = format!("/v1/workspaces/acme/integrations/{calendar}");
    walk.status_becomes(&calendar_path, &bob, "connected").await;
    for token in [&ada, &eve] {
        let (status, _) = walk.call(Method::GET, &calendar_path, token, None).await;
        assert_eq!(status, 404);
        let listed = walk.get("/v1/workspaces/acme/integrations", token).await;
        assert!(!listed.to_string().contains(&calendar));
        let (status, _) = walk
            .call(
                Method::GET,
                &format!("{calendar_path}/history"),
                token,
                None,
            )
            .await;
        assert_eq!(status, 404);
    }

    // The auditor: the history, the state as of the moment, the verified chain.
    let history = walk.get(&url("/history?limit=1000"), &eve).await;
    let events = history["events"].as_array().unwrap().clone();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for expected in [
        "IntegrationConnected",
        "ConnectionTested",
        "SyncCompleted",
        "MappingChanged",
        "CredentialsExpired",
        "Reauthenticated",
    ] {
        assert!(
            types.contains(&expected),
            "{expected} missing from {types:?}"
        );
    }
    assert_eq!(events[0]["actor"]["user"], "ada");
    let then = walk
        .get(&format!("{}?as_of={moment}", url("/state")), &eve)
        .await;
    assert_eq!(
        then["installed"], shown,
        "the state then is what the API showed then"
    );
    let verified = eventually(
        WAIT,
        "the chain verifies and its head is signed",
        || async {
            let verified = walk.get(&url("/verify"), &eve).await;
            (verified["intact"] == true
                && verified["checkpoint"]["status"] == "holds"
                && verified["checkpoint"]["version"] == verified["events"])
                .then_some(verified)
        },
    )
    .await;
    assert_eq!(verified["events"].as_u64().unwrap(), events.len() as u64);

    // Disconnect, then delete: gone from Installed, history kept for auditors.
    let (status, disconnected) = walk
        .call(Method::POST, &url("/disconnect"), &ada, None)
        .await;
    assert_eq!(
        (status, disconnected["disconnected"].as_bool()),
        (200, Some(true))
    );
    let (status, _) = walk.call(Method::DELETE, &path, &ada, None).await;
    assert_eq!(status, 204);
    eventually(WAIT, "HubSpot leaves Installed", || async {
        let (status, _) = walk.call(Method::GET, &path, &ada, None).await;
        (status == 404).then_some(())
    })
    .await;
    let kept = walk.get(&url("/history?limit=1000"), &eve).await;
    let all = kept["events"].as_array().unwrap().clone();
    assert_eq!(all.last().unwrap()["type"], "Deleted");

    // The SSE subscriber saw every one of HubSpot's events, in order, and none of Bob's.
    let stream_name = format!("integration-{id}");
    let seen = read_sse(&mut subscriber, |events| {
        events
            .iter()
            .any(|e| e.event == "Deleted" && e.data["stream"] == stream_name.as_str())
    })
    .await;
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id));
    assert!(seen
        .iter()
        .all(|e| e.data["owner"].is_null() || e.data["owner"] == "ada"));
    let over_sse: Vec<&Value> = seen
        .iter()
        .filter(|e| e.data["stream"] == stream_name.as_str())
        .map(|e| &e.data["id"])
        .collect();
    let in_history: Vec<&Value> = all.iter().map(|e| &e["id"]).collect();
    assert_eq!(over_sse, in_history);
    for event in &seen {
        walk.answers.lock().unwrap().push(event.data.to_string());
    }

    // So did the JetStream consumer.
    if let Some(consumer) = consumer.as_mut() {
        use futures::StreamExt;
        let mut over_nats: Vec<Value> = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while over_nats.len() < in_history.len() {
            let message = tokio::time::timeout_at(deadline, consumer.next())
                .await
                .expect("the consumer receives every event")
                .unwrap()
                .unwrap();
            let body: Value = serde_json::from_slice(&message.payload).unwrap();
            walk.answers.lock().unwrap().push(body.to_string());
            if body["subject"] == stream_name.as_str() {
                over_nats.push(body["id"].clone());
            }
        }
        assert_eq!(over_nats.iter().collect::<Vec<_>>(), in_history);
    }

    // No answer, page or event held a secret.
    let mut secrets: Vec<String> = hubspot.auth.issued_tokens();
    secrets.extend(google.auth.issued_tokens());
    secrets.push(hubspot_fake::CLIENT_SECRET.to_owned());
    secrets.push(google_fake::CLIENT_SECRET.to_owned());
    assert!(secrets.len() > 4, "tokens were issued");
    let answers = walk.answers.lock().unwrap();
    for secret in &secrets {
        for answer in answers.iter() {
            assert!(
                !answer.contains(secret.as_str()),
                "a secret leaked in {answer}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_walk_on_the_embedded_default() {
    the_seed_walk(|_| {}, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_walk_on_jetstream_and_postgresql() {
    let nats = eventstore::nats_server::TestNats::shared();
    let namespace = eventstore::nats_server::unique_namespace();
    let database = database::test_support::postgres_database().await;
    let mut config = eventstore::JetStreamConfig::new(nats.url.clone());
    config.namespace = namespace.clone();
    the_seed_walk(
        move |settings| {
            settings.jetstream = Some(config);
            settings.database_url = Some(database);
        },
        Some((nats.url.clone(), namespace)),
    )
    .await;
}
