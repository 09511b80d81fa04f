//! `spawn_app`: the application on a free port with a fresh data directory, stopped when the
//! returned handle is dropped.

use eventstore::waiting::eventually;
use gateway::{Application, Settings};
use tokio::sync::oneshot;

pub struct TestApp {
    pub address: String,
    /// Where `/metrics` is served when it has an address of its own (`--metrics-listen`).
    pub metrics_address: Option<String>,
    /// The API's client: one browser, whose cookies [`TestApp::browser`] shares.
    pub client: reqwest::Client,
    jar: std::sync::Arc<reqwest::cookie::Jar>,
    /// The read models' PostgreSQL, when the service runs on it (else SQLite in the data
    /// directory).
    pub database_url: Option<String>,
    /// Kept so the data directory outlives the server; handed back by [`TestApp::stop`].
    data_dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// The browser the API calls come from, not following redirects (a popup's steps are
    /// checked one by one): it carries the cookies the service set, as the OAuth callback
    /// needs.
    pub fn browser(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(self.jar.clone())
            .build()
            .expect("a client")
    }

    /// The service's data directory (its SQLite database holds the API tokens).
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir
            .as_ref()
            .expect("the data directory is held until stop")
            .path()
    }

    /// `GET path` with `token` (if any), its body as JSON.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> serde_json::Value {
        let mut request = self.client.get(format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// `method path` with `token`, and a JSON body if given.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// `GET path` with `token`, answered from read models that have applied the log up to
    /// `min` (`Harmony-Min-Position`).
    pub async fn read_after(&self, path: &str, token: &str, min: u64) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .header("Harmony-Min-Position", min.to_string())
            .send()
            .await
            .unwrap()
    }

    /// A new API token for `user` of `workspace` with `role`.
    pub async fn token(&self, workspace: &str, user: &str, role: &str) -> (String, String) {
        self.token_with(workspace, user, role, false).await
    }

    /// A new API token; an `unlimited` one is exempt from the rate limit.
    pub async fn token_with(
        &self,
        workspace: &str,
        user: &str,
        role: &str,
        unlimited: bool,
    ) -> (String, String) {
        let db = match &self.database_url {
            Some(url) => database::ServiceDb::connect_postgres(url).await.unwrap(),
            None => database::ServiceDb::open_sqlite(&self.data_dir().join("read.db"))
                .await
                .unwrap(),
        };
        let issued = gateway::tokens::create(
            &db,
            &workspace.parse().unwrap(),
            &user.parse().unwrap(),
            role.parse().unwrap(),
            "test",
            unlimited,
        )
        .await
        .unwrap();
        db.close().await;
        use secrecy::ExposeSecret;
        (issued.id, issued.token.expose_secret().to_owned())
    }

    /// Stops the server gracefully, waits for it to finish, and hands back its data directory.
    pub async fn stop(mut self) -> anyhow::Result<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await??;
        }
        Ok(self
            .data_dir
            .take()
            .expect("the data directory is held until stop"))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("a temporary directory")).await
}

/// Logs from the service under test, only when `TEST_LOG` is set (quiet by default).
fn init_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .try_init();
        }
    });
}

pub async fn spawn_app_in(data_dir: tempfile::TempDir) -> TestApp {
    spawn_configured(data_dir, |_| {}).await
}

/// The application with its settings changed by `configure` first (provider endpoints
/// pointed at fakes, say).
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_configured(
        tempfile::tempdir().expect("a temporary directory"),
        configure,
    )
    .await
}

/// The application on an existing data directory (a restart), with its settings changed by
/// `configure` first.
pub async fn spawn_app_in_with(
    data_dir: tempfile::TempDir,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn_configured(data_dir, configure).await
}

async fn spawn_configured(
    data_dir: tempfile::TempDir,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    init_logs();
    let mut settings = Settings::embedded(data_dir.path().to_owned());
    // Tests poll as fast as they like; the rate limit's own test sets one.
    settings.rate_limit = None;
    configure(&mut settings);
    let database_url = settings.database_url.clone();
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let address = format!("http://{}", app.local_addr().unwrap());
    let metrics_address = app.metrics_addr().map(|at| format!("http://{at}"));
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    TestApp {
        address,
        metrics_address,
        client: reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .build()
            .expect("a client"),
        jar,
        database_url,
        data_dir: Some(data_dir),
        stop: Some(stop),
        server: Some(server),
    }
}

/// Points the HubSpot app at a fake HubSpot at `base`, with its OAuth client configured.
pub fn use_fake_hubspot(settings: &mut Settings, base: &url::Url) {
    use fakes::hubspot as hubspot_fake;
    settings.adapters.endpoints.hubspot_api = base.clone();
    settings.adapters.unavailable.remove("hubspot");
    settings.adapters.oauth.insert(
        "hubspot".into(),
        adapters::oauth::OAuthClient {
            client_id: hubspot_fake::CLIENT_ID.into(),
            client_secret: secrecy::SecretString::from(hubspot_fake::CLIENT_SECRET),
            authorize_url: base.join("oauth/authorize").expect("a URL"),
            token_url: base.join("oauth/v1/token").expect("a URL"),
            revocation: None,
            credentials_in_body: true,
            issuer: None,
            extra_authorize_params: Vec::new(),
        },
    );
}

/// Somebody else's browser, without the service's cookies, not following redirects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

pub use crate::browser::popup;

/// Connects HubSpot through the popup as `token`'s user and waits until Installed lists it;
/// answers its integration id.
pub async fn connect_hubspot(app: &TestApp, token: &str, ws: &str) -> String {
    let response = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/workspaces/{ws}/integrations"),
            token,
            Some(serde_json::json!({"app": "hubspot"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let (_, html) = popup(&app.browser(), body["authorization_url"].as_str().unwrap()).await;
    assert!(html.contains("\"ok\":true"), "{html}");
    let id = html
        .split("\"integration_id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the callback page names the integration")
        .to_owned();
    let path = format!("/v1/workspaces/{ws}/integrations/{id}");
    eventually(
        std::time::Duration::from_secs(20),
        "Installed lists HubSpot",
        || async {
            let row = app.get_json(&path, Some(token)).await;
            (row["integration_id"] == id.as_str()).then_some(())
        },
    )
    .await;
    id
}

/// The application on a fresh namespace of the run's JetStream server, its read models on
/// SQLite in its data directory (so that a rebuild or a check can open them beside it), with
/// Zendesk pointed at a fake at `zendesk`. Answers the log's configuration too.
pub async fn spawn_on_jetstream_with_zendesk(
    zendesk: &url::Url,
) -> (TestApp, eventstore::JetStreamConfig) {
    let nats = eventstore::nats_server::TestNats::shared();
    let mut config = eventstore::JetStreamConfig::new(nats.url.clone());
    config.namespace = eventstore::nats_server::unique_namespace();
    let (log, zendesk) = (config.clone(), zendesk.clone());
    let app = spawn_app_with(move |settings| {
        use_fake_zendesk(settings, &zendesk);
        settings.jetstream = Some(config);
    })
    .await;
    (app, log)
}

/// The log position a write's answer says it reached (`Harmony-Position`), if it wrote.
pub fn position_of(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("harmony-position")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// Points Zendesk at a fake Zendesk at `base` (its accounts under `base/<subdomain>/`).
pub fn use_fake_zendesk(settings: &mut Settings, base: &url::Url) {
    settings.adapters.endpoints.zendesk_api_template = format!("{base}{{subdomain}}/");
}

/// A connect body for the fake Zendesk's account `acme` with `api_token`.
pub fn zendesk_account(api_token: &str) -> serde_json::Value {
    serde_json::json!({"app": "zendesk", "fields": {
        "subdomain": "acme", "email": "agent@acme.com", "api_token": api_token}})
}

/// The CSRF token of the first form on `page`.
pub fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with a CSRF token")
        .to_owned()
}

/// Signs in to the console with `token` through its sign-in form, in `browser` (which keeps
/// the cookies and follows no redirect); answers the status of the form's post.
pub async fn console_sign_in(app: &TestApp, browser: &reqwest::Client, token: &str) -> u16 {
    let form = browser
        .get(format!("{}/console/sign-in", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    browser
        .post(format!("{}/console/sign-in", app.address))
        .form(&[("csrf", csrf_of(&form).as_str()), ("token", token)])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A browser of its own: its own cookies, following no redirect.
pub fn fresh_browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .expect("a client")
}

/// Connects the fake Zendesk for workspace `ws` as `token` and waits until Installed shows
/// it; answers its id.
pub async fn connect_zendesk(app: &TestApp, token: &str, ws: &str) -> String {
    let connected = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/workspaces/{ws}/integrations"),
            token,
            Some(zendesk_account("zd-key")),
        )
        .await;
    assert_eq!(connected.status(), 201);
    let at = position_of(&connected).expect("a write says its position");
    let id = connected.json::<serde_json::Value>().await.unwrap()["integration_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Read once Installed shows it.
    let shown = app
        .read_after(&format!("/v1/workspaces/{ws}/integrations/{id}"), token, at)
        .await;
    assert_eq!(shown.status(), 200);
    id
}

/// The application with Zendesk pointed at a fake of its own (account `acme`, key `zd-key`),
/// its settings changed by `configure` too.
pub async fn zendesk_app(
    configure: impl FnOnce(&mut gateway::Settings),
) -> (fakes::zendesk::FakeZendesk, TestApp) {
    let zendesk = fakes::zendesk::FakeZendesk::start("acme", "agent@acme.com", "zd-key", 2, 1)
        .await
        .unwrap();
    let base = zendesk.server.base.clone();
    let app = spawn_app_with(move |settings| {
        use_fake_zendesk(settings, &base);
        configure(settings);
    })
    .await;
    (zendesk, app)
}
