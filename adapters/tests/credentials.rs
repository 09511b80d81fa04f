//! Token refresh: single-flight per integration across processes (two services, several
//! tasks each, against a provider that rotates refresh tokens: one refresh, no spent token
//! ever presented again), proactive before expiry, and a token endpoint that is down for a
//! while is retried without touching the integration's status.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use adapters::credentials::CredentialService;
use adapters::http::{ProviderError, ProviderHttp};
use database::lease::Leases;
use fakes::hubspot::FakeHubSpot;

use adapters::provider::Credentials;
use adapters::sync::CredentialSource;
use adapters::vault::{MasterKey, Vault};
use command::repository::Repository;
use database::ServiceDb;
use domain::integration::{Integration, IntegrationEvent, Status};
use domain::testing::as_user;
use domain::{IntegrationId, Role, StreamName, Timestamp};
use eventstore::SledEventStore;
use secrecy::ExposeSecret;
use url::Url;

struct World {
    _dir: tempfile::TempDir,
    repo: Arc<Repository>,
    db: ServiceDb,
    vault: Arc<Vault>,
    fake: FakeHubSpot,
    id: IntegrationId,
}

impl World {
    async fn new(expires_at: Option<Timestamp>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path().join("events")).unwrap();
        let repo = Arc::new(Repository::new(Arc::new(store)));
        let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let vault = Arc::new(Vault::new(db.clone(), MasterKey::generate()));
        let fake = FakeHubSpot::start(1, 0).await.unwrap();
        let id = fake
            .connect(
                &repo,
                &vault,
                &as_user("ada", Role::Admin),
                &["oauth"],
                expires_at,
            )
            .await
            .unwrap();
        Self {
            _dir: dir,
            repo,
            db,
            vault,
            fake,
            id,
        }
    }

    /// A credential service as one process would run it.
    fn process(&self, name: &str) -> CredentialService {
        let client = common::hubspot_client(&self.fake);
        CredentialService::new(
            self.repo.clone(),
            self.vault.clone(),
            Leases::new(self.db.clone(), name),
            BTreeMap::from([("hubspot".to_owned(), client)]),
            ProviderHttp::default_client(),
            Url::parse("http://127.0.0.1/v1/oauth/callback").unwrap(),
        )
    }

    async fn state(&self) -> Integration {
        self.repo
            .load::<Integration>(&StreamName::integration(self.id))
            .await
            .unwrap()
            .state
    }

    async fn refreshed_events(&self) -> usize {
        self.repo
            .store()
            .read_stream(&StreamName::integration(self.id), 1, 1000)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| e.decode::<IntegrationEvent>().unwrap())
            .filter(|e| matches!(e, IntegrationEvent::CredentialsRefreshed(_)))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_refreshing_at_once_spend_a_rotating_refresh_token_once() {
    let world = World::new(None).await;
    world.fake.auth.rotate_refresh_tokens();
    let state = world.state().await;
    let stale = {
        let secret = world
            .vault
            .get(state.credential_ref.as_ref().unwrap())
            .await
            .unwrap();
        Credentials::from_secret(&secret).unwrap()
    };
    let first = Arc::new(world.process("process-a"));
    let second = Arc::new(world.process("process-b"));
    let mut tasks = Vec::new();
    for n in 0..8 {
        let service = if n % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let (id, stale) = (world.id, stale.clone());
        tasks.push(tokio::spawn(
            async move { service.refresh(id, &stale).await },
        ));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        let fresh = task.await.unwrap().unwrap();
        tokens.push(fresh.access_token.unwrap().expose_secret().to_owned());
    }
    assert_eq!(
        world.fake.auth.refreshes(),
        1,
        "one refresh for eight callers"
    );
    assert_eq!(world.fake.auth.spent_refresh_reuse(), 0);
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "every caller got the one new token");
    assert_ne!(
        tokens[0],
        stale.access_token.unwrap().expose_secret(),
        "a new token"
    );
    assert_eq!(world.refreshed_events().await, 1);
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_before_use_and_an_outage_does_not_flip_the_status() {
    let soon = Timestamp::from_unix_micros(Timestamp::now().unix_micros() + 60_000_000);
    let world = World::new(soon).await;
    let service = world.process("process-a");
    let state = world.state().await;
    let fresh = service.current(world.id, &state).await.unwrap();
    assert_eq!(world.fake.auth.refreshes(), 1, "refreshed ahead of expiry");
    assert!(fresh.expires_at.unwrap() > soon.unwrap());

    // The token endpoint is down: the refresh fails as transient, the status stays.
    world.fake.auth.token_endpoint_unavailable(50);
    let error = service.refresh(world.id, &fresh).await.unwrap_err();
    assert!(error.retryable(), "{error:?}");
    assert!(
        matches!(error, ProviderError::Unavailable { .. }),
        "{error:?}"
    );
    assert_eq!(world.state().await.status, Status::Connected);
    world.fake.auth.token_endpoint_unavailable(0);
    let again = service.refresh(world.id, &fresh).await.unwrap();
    assert!(again.access_token.is_some());
    assert_eq!(world.fake.auth.refreshes(), 2);
}
