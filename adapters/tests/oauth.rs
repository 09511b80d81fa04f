//! The OAuth2 code flow with PKCE against the fake HubSpot's authorization server: a `state`
//! works once, for the user and workspace that started it, and not after it expired; refresh
//! keeps the refresh token; revocation kills the grant.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::BTreeMap;

use adapters::http::{ProviderError, ProviderHttp};
use adapters::oauth::{CallbackError, OAuthClient, Pending, Revocation};
use database::ServiceDb;
use database::{execute, Bind};
use fakes::hubspot::{self as fake, FakeHubSpot};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

struct Flow {
    _dir: tempfile::TempDir,
    fake: FakeHubSpot,
    db: ServiceDb,
    client: OAuthClient,
    http: reqwest::Client,
    redirect: Url,
}

impl Flow {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let fake = FakeHubSpot::start(0, 0).await.unwrap();
        let base = fake.server.base.clone();
        let client = OAuthClient {
            client_id: fake::CLIENT_ID.into(),
            client_secret: SecretString::from(fake::CLIENT_SECRET),
            authorize_url: base.join("oauth/authorize").unwrap(),
            token_url: base.join("oauth/v1/token").unwrap(),
            revocation: Some(Revocation::DeleteRefreshToken(
                base.join("oauth/v1/refresh-tokens/").unwrap(),
            )),
            credentials_in_body: true,
            issuer: None,
            extra_authorize_params: vec![(
                "optional_scopes".into(),
                "crm.objects.deals.read".into(),
            )],
        };
        Self {
            _dir: dir,
            fake,
            db,
            client,
            http: ProviderHttp::default_client(),
            redirect: Url::parse("http://127.0.0.1:7000/v1/oauth/callback").unwrap(),
        }
    }

    fn pending(user: &str) -> Pending {
        fn browser_of(user: &str) -> String {
            format!("browser-cookie-of-{user}")
        }
        Pending {
            workspace: "acme".parse().unwrap(),
            user: user.parse().unwrap(),
            role: domain::Role::Admin,
            app: "hubspot".into(),
            integration: None,
            setup: BTreeMap::new(),
            browser: adapters::oauth::binding_hash(&browser_of(user)),
            token: adapters::oauth::binding_hash("hst_token"),
        }
    }

    /// Starts an authorization and follows the popup to the provider and back: `(state, code)`.
    async fn authorize(&self, user: &str) -> (String, String, Url) {
        let started = self
            .client
            .start(
                &self.db,
                &self.redirect,
                &["oauth", "crm.objects.contacts.read"],
                &Self::pending(user),
            )
            .await
            .unwrap();
        let response = self.http.get(started.url.clone()).send().await.unwrap();
        assert!(response.status().is_redirection(), "{}", response.status());
        let location = response.headers()["location"].to_str().unwrap();
        let back = Url::parse(location).unwrap();
        assert!(back.as_str().starts_with(self.redirect.as_str()));
        let query: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
        (query["state"].clone(), query["code"].clone(), started.url)
    }
}

#[tokio::test]
async fn the_code_flow_uses_pkce_and_records_the_granted_scopes() {
    let flow = Flow::new().await;
    let (state, code, url) = flow.authorize("ada").await;
    let params: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["scope"], "oauth crm.objects.contacts.read");
    assert_eq!(params["redirect_uri"], flow.redirect.as_str());
    assert_eq!(params["optional_scopes"], "crm.objects.deals.read");
    assert!(!url.as_str().contains(fake::CLIENT_SECRET));

    let (pending, grant) = flow
        .client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &state,
            &code,
            Some("browser-cookie-of-ada"),
        )
        .await
        .unwrap();
    assert_eq!(pending, Flow::pending("ada"));
    assert_eq!(grant.scopes, vec!["oauth", "crm.objects.contacts.read"]);
    assert!(grant.credentials.access_token.is_some());
    assert!(grant.credentials.refresh_token.is_some());
    assert!(
        grant.credentials.expires_at.is_some(),
        "expires_in 1800 became an expiry"
    );

    // The same state again: refused, whatever the code.
    let replay = flow
        .client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &state,
            &code,
            Some("browser-cookie-of-ada"),
        )
        .await
        .unwrap_err();
    assert!(matches!(replay, CallbackError::UnknownState), "{replay:?}");
}

#[tokio::test]
async fn a_state_is_bound_to_its_browser_and_expires() {
    let flow = Flow::new().await;
    let (state, code, _) = flow.authorize("ada").await;
    let foreign = flow
        .client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &state,
            &code,
            Some("browser-cookie-of-mallory"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(foreign, CallbackError::OtherBrowser),
        "{foreign:?}"
    );
    // Refused, and spent: the rightful user cannot finish it either now.
    let spent = flow
        .client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &state,
            &code,
            Some("browser-cookie-of-ada"),
        )
        .await
        .unwrap_err();
    assert!(matches!(spent, CallbackError::UnknownState));

    let (state, code, _) = flow.authorize("ada").await;
    execute(
        &flow.db,
        "UPDATE oauth_states SET expires_at = $1",
        &[Bind::Int(0)],
    )
    .await
    .unwrap();
    let late = flow
        .client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &state,
            &code,
            Some("browser-cookie-of-ada"),
        )
        .await
        .unwrap_err();
    assert!(matches!(late, CallbackError::UnknownState));

    let unknown = flow
        .client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            "made-up",
            &code,
            Some("browser-cookie-of-ada"),
        )
        .await
        .unwrap_err();
    assert!(matches!(unknown, CallbackError::UnknownState));
}

#[tokio::test]
async fn a_code_is_refused_without_the_matching_verifier_or_twice() {
    let flow = Flow::new().await;
    let (state, code, _) = flow.authorize("ada").await;
    flow.client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &state,
            &code,
            Some("browser-cookie-of-ada"),
        )
        .await
        .unwrap();
    // A second authorization, finished with the first (spent) code.
    let (state, _, _) = flow.authorize("ada").await;
    let error = flow
        .client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &state,
            &code,
            Some("browser-cookie-of-ada"),
        )
        .await
        .unwrap_err();
    match error {
        CallbackError::Provider(ProviderError::InvalidGrant { detail }) => {
            assert!(
                detail.contains("already used") || detail.contains("invalid"),
                "{detail}"
            )
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

#[tokio::test]
async fn refresh_keeps_working_tokens_and_revocation_ends_the_grant() {
    let flow = Flow::new().await;
    let (state, code, _) = flow.authorize("ada").await;
    let (_, grant) = flow
        .client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &state,
            &code,
            Some("browser-cookie-of-ada"),
        )
        .await
        .unwrap();
    let refreshed = flow
        .client
        .refresh(&flow.http, &flow.redirect, &grant.credentials)
        .await
        .unwrap();
    let old = grant
        .credentials
        .access_token
        .as_ref()
        .unwrap()
        .expose_secret();
    let new = refreshed
        .credentials
        .access_token
        .as_ref()
        .unwrap()
        .expose_secret();
    assert_ne!(old, new);
    assert_eq!(flow.fake.auth.refreshes(), 1);

    assert!(flow
        .client
        .revoke(&flow.http, &refreshed.credentials)
        .await
        .unwrap());
    let refresh = refreshed
        .credentials
        .refresh_token
        .as_ref()
        .unwrap()
        .expose_secret();
    assert!(!flow.fake.auth.refresh_token_alive(refresh));
    let dead = flow
        .client
        .refresh(&flow.http, &flow.redirect, &refreshed.credentials)
        .await
        .unwrap_err();
    assert!(
        matches!(dead, ProviderError::InvalidGrant { .. }),
        "{dead:?}"
    );
}

/// Runs a code flow with `client` against an authorization server whose authorize endpoint is
/// the client's: the code exchange's outcome.
async fn exchange_with(
    flow: &Flow,
    client: &OAuthClient,
    app: &str,
) -> Result<adapters::oauth::Grant, CallbackError> {
    let mut pending = Flow::pending("ada");
    pending.app = app.into();
    let started = client
        .start(&flow.db, &flow.redirect, &["openid"], &pending)
        .await
        .unwrap();
    let response = flow.http.get(started.url).send().await.unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    let back = Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    let query: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    client
        .finish(
            &flow.db,
            &flow.http,
            &flow.redirect,
            &query["state"],
            &query["code"],
            Some("browser-cookie-of-ada"),
        )
        .await
        .map(|(_, grant)| grant)
}

#[tokio::test]
async fn clients_authenticate_with_http_basic_unless_their_provider_needs_the_body() {
    use fakes::oauth::ClientAuthentication::{Basic, Body};
    let flow = Flow::new().await;
    let google = fakes::google::FakeGoogle::start(0, 0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("harmony.toml");
    let (hubspot_base, google_base) = (&flow.fake.server.base, &google.server.base);
    let config = |hubspot_auth: &str| {
        format!(
            r#"
[oauth.hubspot]
client_id = "{hubspot_id}"
client_secret = "{hubspot_secret}"
authorize_url = "{hubspot_base}oauth/authorize"
token_url = "{hubspot_base}oauth/v1/token"
{hubspot_auth}
[oauth.google-calendar]
client_id = "{google_id}"
client_secret = "{google_secret}"
authorize_url = "{google_base}o/oauth2/v2/auth"
token_url = "{google_base}token"
"#,
            hubspot_id = fake::CLIENT_ID,
            hubspot_secret = fake::CLIENT_SECRET,
            google_id = fakes::google::CLIENT_ID,
            google_secret = fakes::google::CLIENT_SECRET,
        )
    };
    std::fs::write(&path, config("")).unwrap();
    let clients = adapters::config::AdaptersConfig::load_with(Some(&path), |_| None)
        .unwrap()
        .oauth;

    let grant = exchange_with(&flow, &clients["google-calendar"], "google-calendar")
        .await
        .unwrap();
    assert!(grant.credentials.refresh_token.is_some());
    assert_eq!(google.auth.client_authentications(), vec![Basic]);
    exchange_with(&flow, &clients["hubspot"], "hubspot")
        .await
        .unwrap();
    assert_eq!(flow.fake.auth.client_authentications(), vec![Body]);

    // HubSpot takes nothing but the body: a client told to use Basic is refused.
    std::fs::write(&path, config(r#"client_auth = "basic""#)).unwrap();
    let clients = adapters::config::AdaptersConfig::load_with(Some(&path), |_| None)
        .unwrap()
        .oauth;
    let refused = exchange_with(&flow, &clients["hubspot"], "hubspot")
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("client authentication failed"),
        "{refused}"
    );
}
