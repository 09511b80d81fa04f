//! Secrets never leave the vault: after connecting HubSpot through OAuth and Zendesk with an
//! API key, refusing a wrong key, refreshing a token, syncing, performing Companion actions,
//! losing a grant and disconnecting, every token, key and client secret used is looked for in
//! everything the system wrote — the events, the records, every file under the data
//! directory (the logs' and the database's own files) and the logs at debug level — and none
//! is found.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters::actions::ActionWorker;
use adapters::connections::Connections;
use adapters::credentials::CredentialService;
use adapters::http::ProviderHttp;
use database::lease::Leases;
use fakes::hubspot::{self as hubspot_fake, FakeHubSpot};
use fakes::zendesk::FakeZendesk;

use adapters::providers::{Endpoints, Providers};
use adapters::sync::{SyncConfig, SyncWorker};
use adapters::vault::{MasterKey, Vault};
use command::repository::Repository;
use database::ServiceDb;
use domain::integration::{Integration, IntegrationCommand, IntegrationEvent, Status, SyncKind};
use domain::testing::as_user;
use domain::{ActionId, IntegrationId, Role, StreamName, SyncId};
use eventstore::waiting::eventually;
use eventstore::{RecordLog, SledEventStore, SledRecordLog};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use url::Url;

const WAIT: Duration = Duration::from_secs(30);
const ZENDESK_TOKEN: &str = "zd-live-4f1d8a7c2b9e";
const ZENDESK_WRONG: &str = "zd-typo-77aa90e3c1d2";

/// Everything the logs say, at debug level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn events_of(repo: &Repository, id: IntegrationId) -> Vec<IntegrationEvent> {
    repo.store()
        .read_stream(&StreamName::integration(id), 1, 100_000)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.decode::<IntegrationEvent>().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_found_in_anything_the_system_wrote() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path().join("events")).unwrap();
    let repo = Arc::new(Repository::new(Arc::new(store)));
    let records = Arc::new(
        SledRecordLog::open(dir.path().join("records"), Duration::from_secs(86_400)).unwrap(),
    );
    let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
        .await
        .unwrap();
    let master = MasterKey::generate();
    let master_text = master.to_base64().expose_secret().to_owned();
    let vault = Arc::new(Vault::new(db.clone(), master));
    let hubspot = FakeHubSpot::start(150, 3).await.unwrap();
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", ZENDESK_TOKEN, 40, 5)
        .await
        .unwrap();
    let endpoints = Endpoints {
        hubspot_api: hubspot.server.base.clone(),
        zendesk_api_template: format!("{}{{subdomain}}/", zendesk.server.base),
        ..Endpoints::default()
    };
    let providers = Providers::new(&endpoints, &common::http());
    let oauth = BTreeMap::from([("hubspot".to_owned(), common::hubspot_client(&hubspot))]);
    let redirect = Url::parse("http://127.0.0.1:7000/v1/oauth/callback").unwrap();
    let leases = Leases::new(db.clone(), Leases::process_holder());
    let credentials = Arc::new(CredentialService::new(
        repo.clone(),
        vault.clone(),
        leases.clone(),
        oauth.clone(),
        ProviderHttp::default_client(),
        redirect.clone(),
    ));
    let connections = Connections::new(
        repo.clone(),
        db.clone(),
        vault.clone(),
        providers.clone(),
        oauth,
        BTreeMap::new(),
        ProviderHttp::default_client(),
        redirect,
    );
    let detail =
        Arc::new(eventstore::SledRunDetailLog::open(dir.path().join("run-detail")).unwrap());
    let sync = SyncWorker::new(
        repo.clone(),
        adapters::sync::RunLogs {
            records: records.clone(),
            detail,
        },
        db.clone(),
        credentials.clone(),
        providers.clone(),
        leases.clone(),
        SyncConfig::default(),
    );
    let actions = ActionWorker::new(
        repo.clone(),
        db.clone(),
        vault.clone(),
        credentials,
        providers,
        leases,
    );
    {
        let (sync, actions) = (sync.clone(), actions.clone());
        tokio::spawn(async move { sync.follow().await.unwrap() });
        tokio::spawn(async move { actions.follow().await.unwrap() });
    }
    let admin = as_user("ada", Role::Admin);
    let stream = |id: IntegrationId| StreamName::integration(id);
    let sync_and_wait = |id: IntegrationId| {
        let repo = repo.clone();
        let admin = admin.clone();
        async move {
            let sync_id = SyncId::new();
            repo.execute::<Integration>(
                &stream(id),
                &IntegrationCommand::RequestSync {
                    claimed: false,
                    sync_id,
                    kind: SyncKind::Full,
                },
                &admin,
            )
            .await
            .unwrap();
            eventually(WAIT, "the sync ends", || async {
                events_of(&repo, id)
                    .await
                    .into_iter()
                    .find_map(|e| match e {
                        IntegrationEvent::SyncCompleted(done) if done.sync_id == sync_id => {
                            Some(())
                        }
                        IntegrationEvent::SyncFailed(failed) if failed.sync_id == sync_id => {
                            Some(())
                        }
                        _ => None,
                    })
            })
            .await;
        }
    };
    let act_and_wait = |id: IntegrationId, tool: &'static str, arguments: serde_json::Value| {
        let repo = repo.clone();
        let admin = admin.clone();
        let vault = vault.clone();
        async move {
            let action_id = ActionId::new();
            let arguments = domain::integration::ActionPayload::sealed(
                vault.seal(id, &arguments).await.unwrap(),
            );
            repo.execute::<Integration>(
                &stream(id),
                &IntegrationCommand::RequestAction {
                    action_id,
                    tool: tool.into(),
                    arguments,
                    auto_approval: None,
                },
                &admin,
            )
            .await
            .unwrap();
            eventually(WAIT, "the action ends", || async {
                events_of(&repo, id)
                    .await
                    .into_iter()
                    .find_map(|e| match e {
                        IntegrationEvent::ActionCompleted(done) if done.action_id == action_id => {
                            Some(())
                        }
                        IntegrationEvent::ActionFailed(failed) if failed.action_id == action_id => {
                            Some(())
                        }
                        _ => None,
                    })
            })
            .await;
        }
    };

    // HubSpot through the OAuth popup, a refresh, a sync, an action.
    let url = connections
        .start_oauth(
            &admin,
            "hubspot",
            None,
            BTreeMap::new(),
            adapters::connections::Binding {
                browser: "browser".into(),
                token: "token".into(),
            },
        )
        .await
        .unwrap();
    let answer = ProviderHttp::default_client()
        .get(url)
        .send()
        .await
        .unwrap();
    let back = Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    let query: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    let claimed = connections.claim_callback(&query["state"]).await.unwrap();
    let domain::Caller::User(ada) = admin.caller.clone() else {
        unreachable!("the admin is a user")
    };
    let hub = connections
        .finish_oauth(claimed, &query["code"], None, ada)
        .await
        .unwrap()
        .integration;
    hubspot.auth.expire_access_tokens();
    sync_and_wait(hub).await;
    assert!(hubspot.auth.refreshes() >= 1, "a refresh happened");
    act_and_wait(
        hub,
        "create_contact",
        json!({"properties": {"email": "new@example.com"}}),
    )
    .await;

    // Zendesk with a wrong key (refused), then the right one; a sync and an action.
    let fields = |token: &str| {
        BTreeMap::from([
            ("subdomain".to_owned(), SecretString::from("acme")),
            ("email".to_owned(), SecretString::from("agent@acme.com")),
            ("api_token".to_owned(), SecretString::from(token.to_owned())),
        ])
    };
    let refused = connections
        .connect_with_key(&admin, "zendesk", &fields(ZENDESK_WRONG))
        .await
        .unwrap_err();
    let zd = connections
        .connect_with_key(&admin, "zendesk", &fields(ZENDESK_TOKEN))
        .await
        .unwrap()
        .integration;
    sync_and_wait(zd).await;
    act_and_wait(
        zd,
        "create_ticket",
        json!({"subject": "Help", "body": "Please"}),
    )
    .await;

    // The grant dies at HubSpot: the next sync marks the integration.
    hubspot.auth.revoke_everything();
    hubspot.auth.expire_access_tokens();
    sync_and_wait(hub).await;
    let state = repo.load::<Integration>(&stream(hub)).await.unwrap().state;
    assert_eq!(state.status, Status::NeedsReauth);
    connections.disconnect(&admin, zd, "done").await.unwrap();
    sync.wait_idle().await;
    actions.wait_idle().await;

    // Everything written.
    let mut written = String::new();
    for event in repo.store().read_all(1, 1_000_000).await.unwrap() {
        written.push_str(&event.data_json);
        written.push_str(&serde_json::to_string(&event.metadata).unwrap());
    }
    for change in records.read(1, 1_000_000).await.unwrap() {
        written.push_str(&format!("{change:?}"));
    }
    written.push_str(&refused.to_string());
    written.push_str(&format!("{refused:?}"));
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("DEBUG"),
        "the logs were captured at debug level"
    );
    let mut files = Vec::new();
    let mut pending = vec![dir.path().to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    assert!(files.len() > 3, "the logs and the database wrote files");

    let mut secrets: Vec<String> = hubspot.auth.issued_tokens();
    assert!(
        secrets.len() >= 3,
        "an exchange and a refresh issued tokens"
    );
    secrets.extend([
        hubspot_fake::CLIENT_SECRET.to_owned(),
        ZENDESK_TOKEN.to_owned(),
        ZENDESK_WRONG.to_owned(),
        master_text,
    ]);
    for secret in &secrets {
        assert!(
            !written.contains(secret.as_str()),
            "a secret in the events or records"
        );
        assert!(!logs.contains(secret.as_str()), "a secret in the logs");
        for (path, bytes) in &files {
            let found = bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes());
            assert!(!found, "a secret in {}", path.display());
        }
    }
}
