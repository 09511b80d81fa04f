//! The connection flows against the fakes: an API key is checked with the provider before
//! anything is stored, OAuth2 connects through the popup's code flow, a reauth keeps the
//! integration, a disconnect revokes the token at the provider, and an app without an OAuth
//! client is unavailable with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use adapters::connections::{ConnectError, Connections};
use adapters::credentials::CredentialService;
use adapters::http::{ProviderError, ProviderHttp};
use adapters::oauth::CallbackError;
use adapters::providers::{Endpoints, Providers};
use adapters::vault::{MasterKey, Vault};
use command::repository::Repository;
use database::fetch_all;
use database::lease::Leases;
use database::ServiceDb;
use domain::integration::{Integration, IntegrationCommand, IntegrationEvent, Status};
use domain::testing::as_user;
use domain::{DomainError, IntegrationId, Role, StreamName};
use eventstore::{EventStore, SledEventStore, StoreError};
use fakes::hubspot::FakeHubSpot;
use fakes::zendesk::FakeZendesk;
use fakes::Counters;
use secrecy::SecretString;
use url::Url;

/// The log, with appends that fail while `refuse` is set (the log unreachable, say), and that
/// can hold the next append of one event type (`held`) until the test lets it go.
struct Unreliable {
    inner: SledEventStore,
    refuse: Arc<AtomicBool>,
    held: Arc<std::sync::Mutex<Option<Hold>>>,
}

/// An append of `event_type` held: `reached` is told when it arrives, and it goes on when `go`
/// is.
struct Hold {
    event_type: &'static str,
    reached: tokio::sync::oneshot::Sender<()>,
    go: tokio::sync::oneshot::Receiver<()>,
}

#[async_trait::async_trait]
impl EventStore for Unreliable {
    async fn append(
        &self,
        stream: &StreamName,
        expected: eventstore::ExpectedVersion,
        events: Vec<eventstore::NewEvent>,
    ) -> Result<eventstore::AppendResult, StoreError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("the log is unreachable"));
        }
        let hold = {
            let mut held = self.held.lock().unwrap();
            let matches = held
                .as_ref()
                .is_some_and(|hold| events.iter().any(|e| e.event_type == hold.event_type));
            if matches {
                held.take()
            } else {
                None
            }
        };
        if let Some(hold) = hold {
            let _ = hold.reached.send(());
            let _ = hold.go.await;
        }
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<eventstore::RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, from_version, limit).await
    }
    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<eventstore::RecordedEvent>, StoreError> {
        self.inner.read_all(from_position, limit).await
    }
    async fn head_position(&self) -> Result<u64, StoreError> {
        self.inner.head_position().await
    }
    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }
    fn subscribe(&self, from_position: u64) -> eventstore::EventStream {
        self.inner.subscribe(from_position)
    }
    async fn load_snapshot(
        &self,
        stream: &StreamName,
    ) -> Result<Option<eventstore::Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }
    async fn save_snapshot(
        &self,
        stream: &StreamName,
        snapshot: eventstore::Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.save_snapshot(stream, snapshot).await
    }
}

struct World {
    _dir: tempfile::TempDir,
    /// While set, appends to the log fail.
    refuse_appends: Arc<AtomicBool>,
    held: Arc<std::sync::Mutex<Option<Hold>>>,
    repo: Arc<Repository>,
    db: ServiceDb,
    vault: Arc<Vault>,
    hubspot: FakeHubSpot,
    zendesk: FakeZendesk,
    connections: Connections,
    credentials: CredentialService,
}

use common::hubspot_client;

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let refuse_appends = Arc::new(AtomicBool::new(false));
        let held = Arc::new(std::sync::Mutex::new(None));
        let store = Unreliable {
            inner: SledEventStore::open(dir.path().join("events")).unwrap(),
            refuse: refuse_appends.clone(),
            held: held.clone(),
        };
        let repo = Arc::new(Repository::new(Arc::new(store)));
        let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let vault = Arc::new(Vault::new(db.clone(), MasterKey::generate()));
        let hubspot = FakeHubSpot::start(5, 0).await.unwrap();
        let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-right", 0, 0)
            .await
            .unwrap();
        let endpoints = Endpoints {
            hubspot_api: hubspot.server.base.clone(),
            zendesk_api_template: format!("{}{{subdomain}}/", zendesk.server.base),
            ..Endpoints::default()
        };
        let providers = Providers::new(&endpoints, &common::http());
        let oauth = BTreeMap::from([("hubspot".to_owned(), hubspot_client(&hubspot))]);
        let redirect = Url::parse("http://127.0.0.1:7000/v1/oauth/callback").unwrap();
        let connections = Connections::new(
            repo.clone(),
            db.clone(),
            vault.clone(),
            providers,
            oauth.clone(),
            BTreeMap::from([(
                "salesforce".to_owned(),
                "Salesforce's OAuth client is not configured".to_owned(),
            )]),
            ProviderHttp::default_client(),
            redirect.clone(),
        );
        let credentials = CredentialService::new(
            repo.clone(),
            vault.clone(),
            Leases::new(db.clone(), "test"),
            oauth,
            ProviderHttp::default_client(),
            redirect,
        );
        Self {
            _dir: dir,
            refuse_appends,
            held,
            repo,
            db,
            vault,
            hubspot,
            zendesk,
            connections,
            credentials,
        }
    }

    async fn events(&self, id: IntegrationId) -> Vec<IntegrationEvent> {
        self.repo
            .store()
            .read_stream(&StreamName::integration(id), 1, 1000)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| e.decode::<IntegrationEvent>().unwrap())
            .collect()
    }

    async fn state(&self, id: IntegrationId) -> Integration {
        self.repo
            .load::<Integration>(&StreamName::integration(id))
            .await
            .unwrap()
            .state
    }

    async fn stored_secrets(&self) -> i64 {
        let rows: Vec<(i64,)> = fetch_all(&self.db, "SELECT COUNT(*) FROM vault_secrets", &[])
            .await
            .unwrap();
        rows[0].0
    }

    /// Follows the popup: the provider's redirect back to the callback, `(state, code)`.
    async fn consent(&self, url: Url) -> (String, String) {
        let answer = ProviderHttp::default_client()
            .get(url)
            .send()
            .await
            .unwrap();
        let back = Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
        let query: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
        (query["state"].clone(), query["code"].clone())
    }

    /// The callback, as the user who started the flow (ada, an admin).
    async fn finish(
        &self,
        state: &str,
        code: &str,
    ) -> Result<adapters::connections::Connected, ConnectError> {
        self.finish_from(state, code, None).await
    }

    /// The callback naming the issuer `iss` (RFC 9207).
    async fn finish_from(
        &self,
        state: &str,
        code: &str,
        iss: Option<&str>,
    ) -> Result<adapters::connections::Connected, ConnectError> {
        let claimed = self.connections.claim_callback(state).await?;
        let ada = domain::Principal {
            workspace: "acme".parse().unwrap(),
            user: "ada".parse().unwrap(),
            role: Role::Admin,
        };
        self.connections.finish_oauth(claimed, code, iss, ada).await
    }
}

/// What a flow is bound to; the gateway checks the browser and the token at the callback.
fn binding() -> adapters::connections::Binding {
    adapters::connections::Binding {
        browser: "browser".into(),
        token: "token".into(),
    }
}

fn zendesk_fields(token: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([
        ("subdomain".to_owned(), SecretString::from("acme")),
        ("email".to_owned(), SecretString::from("agent@acme.com")),
        ("api_token".to_owned(), SecretString::from(token.to_owned())),
    ])
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_the_providers_reason_and_nothing_is_stored() {
    let world = World::new().await;
    let admin = as_user("ada", Role::Admin);
    let refused = world
        .connections
        .connect_with_key(&admin, "zendesk", &zendesk_fields("zd-wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ConnectError::Provider(ProviderError::Unauthorized { detail }) if detail.contains("Couldn't authenticate you")),
        "{refused:?}"
    );
    assert_eq!(world.repo.store().head_position().await.unwrap(), 0);
    assert_eq!(world.stored_secrets().await, 0);

    // A member without the permission is refused before the provider is even asked.
    let before = Counters::get(&world.zendesk.counters.requests);
    let member = as_user(
        "bob",
        Role::Member {
            integration_permission: false,
        },
    );
    let forbidden = world
        .connections
        .connect_with_key(&member, "zendesk", &zendesk_fields("zd-right"))
        .await
        .unwrap_err();
    assert!(matches!(
        forbidden,
        ConnectError::Domain(DomainError::Forbidden(_))
    ));
    assert_eq!(Counters::get(&world.zendesk.counters.requests), before);

    let mut missing = zendesk_fields("zd-right");
    missing.remove("api_token");
    let invalid = world
        .connections
        .connect_with_key(&admin, "zendesk", &missing)
        .await
        .unwrap_err();
    assert!(
        matches!(&invalid, ConnectError::InvalidSetup { field, .. } if field == "api_token"),
        "{invalid:?}"
    );

    let connected = world
        .connections
        .connect_with_key(&admin, "zendesk", &zendesk_fields("zd-right"))
        .await
        .unwrap();
    let events = world.events(connected.integration).await;
    assert!(
        matches!(&events[0], IntegrationEvent::IntegrationConnected(c)
        if c.setup.get("subdomain").map(String::as_str) == Some("acme") && !c.setup.contains_key("api_token"))
    );
    assert!(matches!(&events[1], IntegrationEvent::ConnectionTested(t) if t.ok));
    assert_eq!(world.stored_secrets().await, 1);

    // A new key for it: a wrong one is refused and the old one stays.
    let wrong = BTreeMap::from([("api_token".to_owned(), SecretString::from("zd-nope"))]);
    assert!(world
        .connections
        .reauth_with_key(&admin, connected.integration, &wrong)
        .await
        .is_err());
    let identity = world
        .connections
        .test(&admin, connected.integration, &world.credentials)
        .await
        .unwrap();
    assert!(identity.answer.contains("Zendesk"), "{}", identity.answer);
}

#[tokio::test]
async fn oauth_connects_reauthenticates_in_place_and_disconnect_revokes_the_grant() {
    let world = World::new().await;
    let admin = as_user("ada", Role::Admin);
    let url = world
        .connections
        .start_oauth(&admin, "hubspot", None, BTreeMap::new(), binding())
        .await
        .unwrap();
    let (state, code) = world.consent(url).await;
    let connected = world.finish(&state, &code).await.unwrap();
    let id = connected.integration;
    let events = world.events(id).await;
    let IntegrationEvent::IntegrationConnected(first) = &events[0] else {
        panic!("{events:?}")
    };
    assert!(first
        .granted_scopes
        .contains(&"crm.objects.contacts.read".to_owned()));
    assert_eq!(world.state(id).await.status, Status::Connected);
    let replay = world.finish(&state, &code).await.unwrap_err();
    assert!(matches!(
        replay,
        ConnectError::Callback(CallbackError::UnknownState)
    ));

    // The user revokes the app at HubSpot; the service learns it and asks for reauth.
    world.hubspot.auth.revoke_everything();
    world
        .repo
        .execute::<Integration>(
            &StreamName::integration(id),
            &IntegrationCommand::MarkCredentialsExpired {
                reason: domain::integration::ExpiryReason::Revoked,
                detail: "refused".into(),
            },
            &domain::aggregate::CommandContext::new(
                domain::Caller::system("test"),
                domain::Timestamp::now(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(world.state(id).await.status, Status::NeedsReauth);
    let url = world
        .connections
        .start_oauth(&admin, "hubspot", Some(id), BTreeMap::new(), binding())
        .await
        .unwrap();
    let (state, code) = world.consent(url).await;
    let again = world.finish(&state, &code).await.unwrap();
    assert_eq!(again.integration, id, "reauth keeps the integration");
    assert_eq!(world.state(id).await.status, Status::Connected);

    let stored = world.state(id).await.credential_ref.unwrap();
    let secret = world.vault.get(&stored).await.unwrap();
    let credentials = adapters::provider::Credentials::from_secret(&secret).unwrap();
    let refresh = {
        use secrecy::ExposeSecret;
        credentials
            .refresh_token
            .unwrap()
            .expose_secret()
            .to_owned()
    };
    assert!(world.hubspot.auth.refresh_token_alive(&refresh));
    let revoked = world
        .connections
        .disconnect(&admin, id, "no longer used")
        .await
        .unwrap();
    assert!(revoked);
    assert!(!world.hubspot.auth.refresh_token_alive(&refresh));
    assert!(matches!(
        world.events(id).await.last(),
        Some(IntegrationEvent::Disconnected(d)) if d.token_revoked
    ));
    assert_eq!(
        world.stored_secrets().await,
        0,
        "its credentials are shredded"
    );
}

#[tokio::test]
async fn a_callback_naming_another_issuer_is_refused_before_its_code_is_spent() {
    let world = World::new().await;
    let admin = as_user("ada", Role::Admin);
    let start = || {
        world
            .connections
            .start_oauth(&admin, "hubspot", None, BTreeMap::new(), binding())
    };
    let (state, code) = world.consent(start().await.unwrap()).await;
    let refused = world
        .finish_from(&state, &code, Some("https://attacker.example"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            ConnectError::Callback(CallbackError::WrongIssuer { got, .. }) if got == "https://attacker.example"
        ),
        "{refused:?}"
    );
    assert!(
        world.hubspot.auth.client_authentications().is_empty(),
        "the code never reached the token endpoint"
    );
    assert_eq!(world.stored_secrets().await, 0);

    // The app's own issuer (its authorization server's origin) is accepted.
    let issuer = world.hubspot.server.base.origin().ascii_serialization();
    let (state, code) = world.consent(start().await.unwrap()).await;
    let connected = world
        .finish_from(&state, &code, Some(&issuer))
        .await
        .unwrap();
    assert_eq!(
        world.state(connected.integration).await.status,
        Status::Connected
    );
}

#[tokio::test]
async fn an_app_without_an_oauth_client_is_unavailable_with_the_reason() {
    let world = World::new().await;
    let admin = as_user("ada", Role::Admin);
    let unavailable = world
        .connections
        .start_oauth(&admin, "salesforce", None, BTreeMap::new(), binding())
        .await
        .unwrap_err();
    assert!(
        matches!(&unavailable, ConnectError::Unavailable(reason) if reason.contains("not configured")),
        "{unavailable:?}"
    );
    assert!(world.connections.unavailable("salesforce").is_some());
    assert!(world.connections.unavailable("hubspot").is_none());
    assert!(matches!(
        world
            .connections
            .start_oauth(&admin, "myspace", None, BTreeMap::new(), binding())
            .await,
        Err(ConnectError::UnknownApp(_))
    ));
}

#[tokio::test]
async fn a_delete_whose_event_cannot_be_appended_leaves_the_integration_whole() {
    let world = World::new().await;
    let admin = as_user("ada", Role::Admin);
    let connected = world
        .connections
        .connect_with_key(&admin, "zendesk", &zendesk_fields("zd-right"))
        .await
        .unwrap();
    let id = connected.integration;

    world.refuse_appends.store(true, Ordering::SeqCst);
    let failed = world.connections.delete(&admin, id).await.unwrap_err();
    assert!(matches!(failed, ConnectError::Repository(_)), "{failed:?}");
    world.refuse_appends.store(false, Ordering::SeqCst);
    assert_eq!(world.stored_secrets().await, 1, "nothing was shredded");
    world
        .connections
        .test(&admin, id, &world.credentials)
        .await
        .expect("its credentials still work");

    assert!(world.connections.delete(&admin, id).await.unwrap());
    assert_eq!(world.stored_secrets().await, 0);
    assert!(matches!(
        world.events(id).await.last(),
        Some(IntegrationEvent::Deleted(deleted)) if deleted.secrets_shredded
    ));
}

impl World {
    /// Rows of the vault's two tables: data keys, secrets.
    async fn vault_rows(&self) -> (i64, i64) {
        let keys: Vec<(i64,)> = fetch_all(&self.db, "SELECT COUNT(*) FROM vault_keys", &[])
            .await
            .unwrap();
        (keys[0].0, self.stored_secrets().await)
    }

    /// Connects HubSpot through the popup as ada; answers the integration.
    async fn connect_hubspot(&self) -> IntegrationId {
        let admin = as_user("ada", Role::Admin);
        let url = self
            .connections
            .start_oauth(&admin, "hubspot", None, BTreeMap::new(), binding())
            .await
            .unwrap();
        let (state, code) = self.consent(url).await;
        self.finish(&state, &code).await.unwrap().integration
    }

    /// A reauth of `id` taken to the provider's consent and back, not yet finished.
    async fn reauth_at_the_provider(&self, id: IntegrationId) -> (String, String) {
        let admin = as_user("ada", Role::Admin);
        let url = self
            .connections
            .start_oauth(&admin, "hubspot", Some(id), BTreeMap::new(), binding())
            .await
            .unwrap();
        self.consent(url).await
    }

    /// The refresh tokens HubSpot issued after the first `before` tokens that still work.
    fn live_refresh_tokens_after(&self, before: usize) -> Vec<String> {
        self.hubspot.auth.issued_tokens()[before..]
            .iter()
            .filter(|token| self.hubspot.auth.refresh_token_alive(token))
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn a_reauth_finished_after_a_delete_stores_nothing_and_revokes_its_grant() {
    let world = World::new().await;
    let admin = as_user("ada", Role::Admin);
    let id = world.connect_hubspot().await;
    let (state, code) = world.reauth_at_the_provider(id).await;

    // While the user is at the provider, the integration is deleted.
    world.connections.delete(&admin, id).await.unwrap();
    assert_eq!(world.vault_rows().await, (0, 0));

    let issued = world.hubspot.auth.issued_tokens().len();
    let refused = world.finish(&state, &code).await.unwrap_err();
    assert!(
        matches!(&refused, ConnectError::Domain(_)),
        "the domain says why: {refused:?}"
    );
    assert_eq!(
        world.vault_rows().await,
        (0, 0),
        "no data key is created again for a deleted integration, and no secret is kept"
    );
    assert!(
        world.hubspot.auth.issued_tokens().len() > issued,
        "the code was exchanged"
    );
    assert_eq!(
        world.live_refresh_tokens_after(issued),
        Vec::<String>::new(),
        "the grant nobody keeps is revoked at the provider"
    );
    assert!(matches!(
        world.events(id).await.last(),
        Some(IntegrationEvent::Deleted(_))
    ));
}

#[tokio::test]
async fn a_reauth_finished_after_a_disconnect_stores_nothing_and_revokes_its_grant() {
    let world = World::new().await;
    let admin = as_user("ada", Role::Admin);
    let id = world.connect_hubspot().await;
    let (state, code) = world.reauth_at_the_provider(id).await;

    assert!(world
        .connections
        .disconnect(&admin, id, "no longer used")
        .await
        .unwrap());
    assert_eq!(world.vault_rows().await, (0, 0));

    let issued = world.hubspot.auth.issued_tokens().len();
    assert!(world.finish(&state, &code).await.is_err());
    assert_eq!(world.vault_rows().await, (0, 0));
    assert_eq!(
        world.live_refresh_tokens_after(issued),
        Vec::<String>::new()
    );
    assert_eq!(world.state(id).await.status, Status::Disconnected);
}

#[tokio::test]
async fn a_connect_that_loses_the_race_for_the_apps_slot_keeps_nothing() {
    let world = World::new().await;
    let admin = as_user("ada", Role::Admin);
    // Two connects of HubSpot for the workspace start; both pass the rules at their start.
    let mut flows = Vec::new();
    for _ in 0..2 {
        let url = world
            .connections
            .start_oauth(&admin, "hubspot", None, BTreeMap::new(), binding())
            .await
            .unwrap();
        flows.push(world.consent(url).await);
    }
    let winner = world.finish(&flows[0].0, &flows[0].1).await.unwrap();
    let issued = world.hubspot.auth.issued_tokens().len();
    let lost = world.finish(&flows[1].0, &flows[1].1).await.unwrap_err();
    assert!(matches!(lost, ConnectError::Domain(_)), "{lost:?}");
    assert_eq!(
        world.vault_rows().await,
        (1, 1),
        "only the winner's key and secret"
    );
    assert_eq!(
        world.live_refresh_tokens_after(issued),
        Vec::<String>::new()
    );
    assert_eq!(
        world.state(winner.integration).await.status,
        Status::Connected
    );
}

#[tokio::test]
async fn a_reauth_that_lands_while_a_disconnect_appends_has_its_grant_revoked_too() {
    let world = Arc::new(World::new().await);
    let id = world.connect_hubspot().await;
    let (state, code) = world.reauth_at_the_provider(id).await;

    // The disconnect reads the integration and revokes its grant; its append is held there.
    let (reached, arrived) = tokio::sync::oneshot::channel();
    let (go, released) = tokio::sync::oneshot::channel();
    *world.held.lock().unwrap() = Some(Hold {
        event_type: "Disconnected",
        reached,
        go: released,
    });
    let disconnecting = {
        let world = world.clone();
        tokio::spawn(async move {
            let admin = as_user("ada", Role::Admin);
            world
                .connections
                .disconnect(&admin, id, "no longer used")
                .await
        })
    };
    arrived.await.unwrap();
    // Meanwhile the reauth's callback lands: the integration is still connected.
    let issued = world.hubspot.auth.issued_tokens().len();
    world.finish(&state, &code).await.unwrap();
    assert_eq!(world.live_refresh_tokens_after(issued).len(), 1);
    go.send(()).unwrap();

    assert!(disconnecting.await.unwrap().unwrap());
    assert_eq!(world.state(id).await.status, Status::Disconnected);
    assert_eq!(
        world.live_refresh_tokens_after(issued),
        Vec::<String>::new(),
        "the grant the reauth stored is revoked with the rest"
    );
    assert_eq!(world.vault_rows().await, (0, 0));
}
