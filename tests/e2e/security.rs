//! The defences of docs/SECURITY.md, each tried the way an attacker would: setup fields that
//! name internal hosts, hostile provider servers, OAuth links sent to a victim, revoked
//! tokens, and what the service leaves on disk and in its answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::outbound::OutboundPolicy;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{connect_zendesk, spawn_app, spawn_app_with, zendesk_app};
use eventstore::waiting::eventually;

/// A TCP server on loopback that counts the connections it accepts and answers each with a
/// body no refused request may ever echo.
struct Listener {
    port: u16,
    accepted: Arc<AtomicU64>,
}

const INTERNAL_BODY: &str = "internal-metadata-never-to-be-echoed";

impl Listener {
    async fn start(answer: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                if answer {
                    use tokio::io::AsyncWriteExt;
                    let response = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n{INTERNAL_BODY}",
                        INTERNAL_BODY.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                }
                // Kept open without a word: a server that never answers.
                held.push(socket);
            }
        });
        Self { port, accepted }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn caldav(server_url: &str) -> Value {
    json!({"app": "caldav", "fields": {
        "server_url": server_url, "username": "jane", "app_password": "app-password-1"}})
}

#[tokio::test]
async fn setup_fields_naming_internal_hosts_are_refused_without_opening_a_connection() {
    let internal = Listener::start(true).await;
    let app = spawn_app().await;
    let (_, token) = app.token("acme", "jane", "member").await;
    let port = internal.port;
    let refused_by_the_guard = [
        format!("http://127.0.0.1:{port}/dav/"),
        format!("http://localhost:{port}/dav/"),
        format!("https://127.1:{port}/dav/"),
        format!("https://2130706433:{port}/dav/"),
        format!("https://[::ffff:127.0.0.1]:{port}/dav/"),
        format!("https://[::1]:{port}/dav/"),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://10.0.0.1/dav/".to_owned(),
        "https://100.64.0.1/dav/".to_owned(),
        "https://[fd00::1]/dav/".to_owned(),
    ];
    for url in &refused_by_the_guard {
        let started = Instant::now();
        let response = app
            .call(
                Method::POST,
                "/v1/workspaces/acme/integrations",
                &token,
                Some(caldav(url)),
            )
            .await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 422, "{url}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "outbound_refused", "{url}: {problem}");
        assert!(
            !problem.to_string().contains(INTERNAL_BODY),
            "{url}: {problem}"
        );
        assert!(elapsed < Duration::from_secs(5), "{url} took {elapsed:?}");
    }
    assert_eq!(internal.accepted(), 0, "no connection was opened");
    let installed = app
        .get_json("/v1/workspaces/acme/integrations", Some(&token))
        .await;
    assert_eq!(
        installed["integrations"],
        json!([]),
        "nothing was connected"
    );
}

#[tokio::test]
async fn an_operator_opens_an_address_range_for_an_on_premises_server() {
    let fake = fakes::caldav::FakeCalDav::start("jane", "app-password-1", 3)
        .await
        .unwrap();
    let app = spawn_app_with(|settings| {
        settings.outbound =
            OutboundPolicy::new(vec![adapters::outbound::parse_allow("127.0.0.0/8").unwrap()]);
    })
    .await;
    let (_, token) = app.token("acme", "jane", "member").await;
    let response = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &token,
            Some(caldav(&fake.calendar_url())),
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
}

#[tokio::test]
async fn a_connect_to_a_server_that_never_answers_is_answered_within_fifteen_seconds() {
    let silent = Listener::start(false).await;
    let app = spawn_app_with(|settings| {
        settings.outbound =
            OutboundPolicy::new(vec![adapters::outbound::parse_allow("127.0.0.1").unwrap()]);
    })
    .await;
    let (_, token) = app.token("acme", "jane", "member").await;
    let started = Instant::now();
    let response = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &token,
            Some(caldav(&format!("http://127.0.0.1:{}/dav/", silent.port))),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 502);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "provider_unavailable", "{problem}");
    assert!(silent.accepted() >= 1, "the server was tried");
    assert!(
        elapsed <= Duration::from_millis(16_500),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_master_key_rotated_while_the_service_runs_loses_no_credential() {
    use clap::Parser;
    use fakes::todoist::FakeTodoist;
    use fakes::zendesk::FakeZendesk;
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-key", 1, 1)
        .await
        .unwrap();
    let todoist = FakeTodoist::start("td-key", 1).await.unwrap();
    let (zendesk_base, todoist_base) = (zendesk.server.base.clone(), todoist.server.base.clone());
    let configure = move |settings: &mut gateway::Settings| {
        crate::helpers::use_fake_zendesk(settings, &zendesk_base);
        settings.adapters.endpoints.todoist_api = todoist_base.join("api/v1/").unwrap();
    };
    let app = spawn_app_with(configure.clone()).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let connected = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &admin,
            Some(crate::helpers::zendesk_account("zd-key")),
        )
        .await;
    assert_eq!(connected.status(), 201);
    let before: Value = connected.json().await.unwrap();
    let before = before["integration_id"].as_str().unwrap().to_owned();

    // The operator rotates the master key while the service runs.
    let data_dir = app.data_dir().to_str().unwrap().to_owned();
    let cli = gateway::cli::Cli::try_parse_from([
        "harmony",
        "vault",
        "rotate-master-key",
        "--generate",
        "--data-dir",
        &data_dir,
    ])
    .unwrap();
    let gateway::cli::Command::Vault(gateway::cli::VaultCommand::RotateMasterKey(args)) =
        cli.command
    else {
        unreachable!("parsed as a rotation")
    };
    let mut said = Vec::new();
    gateway::commands::vault::rotate(&args, &mut said)
        .await
        .unwrap();
    let new_key =
        adapters::vault::MasterKey::load_or_create(&app.data_dir().join("master.key")).unwrap();

    let tested = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/acme/integrations/{before}/test"),
            &admin,
            None,
        )
        .await;
    assert_eq!(tested.status(), 200, "read after the rotation");
    let after = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &admin,
            Some(json!({"app": "todoist", "fields": {"api_token": "td-key"}})),
        )
        .await;
    assert_eq!(after.status(), 201);
    let after: Value = after.json().await.unwrap();
    let after = after["integration_id"].as_str().unwrap().to_owned();
    let db = database::ServiceDb::open_sqlite(&app.data_dir().join("read.db"))
        .await
        .unwrap();
    let database::ServiceDb::Sqlite(pool) = &db else {
        unreachable!()
    };
    let wrapped_by: String =
        sqlx::query_scalar("SELECT master_key_id FROM vault_keys WHERE integration_id = $1")
            .bind(&after)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        wrapped_by,
        new_key.id(),
        "connected after: under the new key"
    );
    db.close().await;

    // And after a restart, both still open.
    let dir = app.stop().await.unwrap();
    let app = crate::helpers::spawn_app_in_with(dir, configure).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    for id in [&before, &after] {
        let response = app
            .call(
                Method::POST,
                &format!("/v1/workspaces/acme/integrations/{id}/test"),
                &admin,
                None,
            )
            .await;
        assert_eq!(response.status(), 200, "{id} after a restart");
    }
}

/// The service with a fake HubSpot configured (and `configure` applied), and the fake.
async fn hubspot_app(
    configure: impl FnOnce(&mut gateway::Settings),
) -> (fakes::hubspot::FakeHubSpot, crate::helpers::TestApp) {
    let hubspot = fakes::hubspot::FakeHubSpot::start(1, 0).await.unwrap();
    let base = hubspot.server.base.clone();
    let app = spawn_app_with(|settings| {
        crate::helpers::use_fake_hubspot(settings, &base);
        configure(settings);
    })
    .await;
    (hubspot, app)
}

/// Starts a HubSpot connect in `workspace` with `token` from the app's own browser: the
/// authorization URL.
async fn start_hubspot(app: &crate::helpers::TestApp, workspace: &str, token: &str) -> String {
    let response = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/{workspace}/integrations"),
            token,
            Some(json!({"app": "hubspot"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set_cookie.starts_with("harmony_browser=") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    let body: Value = response.json().await.unwrap();
    body["authorization_url"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_authorization_url_sent_to_somebody_else_connects_nothing() {
    let (hubspot, app) = hubspot_app(|_| {}).await;
    let (_, mallory) = app.token("evil", "mallory", "admin").await;
    let url = start_hubspot(&app, "evil", &mallory).await;

    // Mallory sends the link; the victim signs in at HubSpot in their own browser.
    let victim = crate::helpers::browser();
    let issued = hubspot.auth.issued_tokens().len();
    let (_, page) = crate::helpers::popup(&victim, &url).await;
    assert!(page.contains("\"ok\":false"), "{page}");
    assert!(page.contains("another browser"), "{page}");
    assert_eq!(
        hubspot.auth.issued_tokens().len(),
        issued,
        "the victim's code was never exchanged"
    );
    let installed = app
        .get_json("/v1/workspaces/evil/integrations", Some(&mallory))
        .await;
    assert_eq!(installed["integrations"], json!([]));

    // In the browser that started it, a new authorization connects.
    let url = start_hubspot(&app, "evil", &mallory).await;
    let (_, page) = crate::helpers::popup(&app.browser(), &url).await;
    assert!(page.contains("\"ok\":true"), "{page}");
}

#[tokio::test]
async fn an_authorization_finishes_only_while_the_token_that_started_it_is_live() {
    let (_hubspot, app) = hubspot_app(|_| {}).await;
    let (id, ada) = app.token("acme", "ada", "admin").await;
    let url = start_hubspot(&app, "acme", &ada).await;
    revoke(&app, &id).await;
    let (_, page) = crate::helpers::popup(&app.browser(), &url).await;
    assert!(page.contains("\"ok\":false"), "{page}");
    assert!(page.contains("revoked"), "{page}");
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let installed = app
        .get_json("/v1/workspaces/acme/integrations", Some(&admin))
        .await;
    assert_eq!(installed["integrations"], json!([]));
}

async fn revoke(app: &crate::helpers::TestApp, id: &str) {
    let db = database::ServiceDb::open_sqlite(&app.data_dir().join("read.db"))
        .await
        .unwrap();
    assert!(gateway::tokens::revoke(&db, app.data_dir(), id)
        .await
        .unwrap());
    db.close().await;
}

#[tokio::test]
async fn a_revoked_tokens_event_stream_ends_within_five_seconds() {
    let app = spawn_app().await;
    let (id, token) = app.token("acme", "ada", "admin").await;
    let mut stream = crate::audit::open_sse(&app, "/v1/workspaces/acme/events", &token, None).await;
    revoke(&app, &id).await;
    let revoked_at = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(_chunk) = stream.chunk().await.unwrap() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream went on {:?} after the revocation",
        revoked_at.elapsed()
    );
}

#[tokio::test]
async fn a_token_holds_a_bounded_number_of_event_streams() {
    let app = spawn_app_with(|settings| settings.max_streams_per_token = 3).await;
    let (_, token) = app.token("acme", "ada", "admin").await;
    let (_, other) = app.token("acme", "bob", "member").await;
    let path = "/v1/workspaces/acme/events";
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(crate::audit::open_sse(&app, path, &token, None).await);
    }
    let refused = app.call(Method::GET, path, &token, None).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_streams");
    // Another token is not affected, and a closed stream frees its place.
    drop(crate::audit::open_sse(&app, path, &other, None).await);
    drop(open.pop());
    eventstore::waiting::eventually(Duration::from_secs(10), "a place frees up", || async {
        let response = app.call(Method::GET, path, &token, None).await;
        (response.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_idempotent_answer_is_never_replayed_to_a_revoked_token() {
    let zendesk = fakes::zendesk::FakeZendesk::start("acme", "a@acme.com", "zd", 1, 0)
        .await
        .unwrap();
    let base = zendesk.server.base.clone();
    let app = spawn_app_with(|settings| crate::helpers::use_fake_zendesk(settings, &base)).await;
    let (id, token) = app.token("acme", "ada", "admin").await;
    let connect = |token: String| {
        let request = app
            .client
            .post(format!("{}/v1/workspaces/acme/integrations", app.address))
            .bearer_auth(token)
            .header("Idempotency-Key", "connect-zendesk-1")
            .json(&json!({"app": "zendesk", "fields": {
                "subdomain": "acme", "email": "a@acme.com", "api_token": "zd"}}));
        async move { request.send().await.unwrap() }
    };
    let first = connect(token.clone()).await;
    assert_eq!(first.status(), 201);
    let again = connect(token.clone()).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    revoke(&app, &id).await;
    let after = connect(token).await;
    assert_eq!(after.status(), 401, "{:?}", after.headers());
    assert!(!after.headers().contains_key("idempotent-replayed"));
}

#[tokio::test]
async fn the_console_counts_against_the_tokens_rate_limit() {
    let app = spawn_app_with(|settings| {
        settings.rate_limit = gateway::limits::RateLimit::new(1, 5);
    })
    .await;
    let (_, token) = app.token("acme", "ada", "admin").await;
    let browser = app.browser();
    assert_eq!(
        crate::helpers::console_sign_in(&app, &browser, &token).await,
        303
    );
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let page = browser
            .get(format!("{}/console/installed", app.address))
            .send()
            .await
            .unwrap();
        statuses.push(page.status().as_u16());
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // The API shares the same budget: spent by the console, it waits too.
    let api = app
        .call(
            Method::GET,
            "/v1/workspaces/acme/integrations",
            &token,
            None,
        )
        .await;
    assert_eq!(api.status(), 429);
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_cookies_are_secure_behind_https() {
    let (_hubspot, app) = hubspot_app(|settings| {
        settings.adapters.public_base_url = Some("https://harmony.example.com/".parse().unwrap());
    })
    .await;
    let (_, token) = app.token("acme", "ada", "admin").await;
    let paths = [
        ("/v1/apps", Some(token.as_str())),
        ("/v1/apps", None),
        ("/console/sign-in", None),
        ("/console/installed", None),
        ("/v1/oauth/callback?state=unknown&code=x", None),
        ("/nowhere", None),
        ("/openapi.json", None),
        ("/healthz", None),
    ];
    for (path, token) in paths {
        let mut request = app.browser().get(format!("{}{path}", app.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let headers = response.headers();
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    // The callback page runs no inline script: its outcome is a data block.
    let page = app
        .browser()
        .get(format!(
            "{}/v1/oauth/callback?state=unknown&code=x",
            app.address
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>"), "{page}");

    // Behind https every cookie is Secure.
    let sign_in = app
        .browser()
        .get(format!("{}/console/sign-in", app.address))
        .send()
        .await
        .unwrap();
    let cookie = sign_in.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let started = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &token,
            Some(json!({"app": "hubspot"})),
        )
        .await;
    let cookie = started.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("harmony_browser=") && cookie.contains("; Secure"),
        "{cookie}"
    );
}

/// Every file under `dir`, searched for `needle`: the paths that hold it.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|window| window == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn companion_arguments_and_results_leave_the_history_with_their_integration() {
    let (_hubspot, app) = hubspot_app(|_| {}).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, auditor) = app.token("acme", "eve", "auditor").await;
    let id = crate::helpers::connect_hubspot(&app, &admin, "acme").await;
    let actions = format!("/v1/workspaces/acme/integrations/{id}/actions");
    // Personal data in the arguments, and so in the provider's answer.
    const PERSON: &str = "alice.personal-7731@example.org";
    let requested = app
        .call(
            Method::POST,
            &actions,
            &admin,
            Some(json!({"tool": "create_contact",
                        "arguments": {"properties": {"email": PERSON}}})),
        )
        .await;
    assert_eq!(requested.status(), 202);
    let requested: Value = requested.json().await.unwrap();
    let action = format!("{actions}/{}", requested["action_id"].as_str().unwrap());
    let done = eventstore::waiting::eventually(
        Duration::from_secs(20),
        "the action completes",
        || async {
            let answer = app.get_json(&action, Some(&admin)).await;
            (answer["status"] == "completed").then_some(answer)
        },
    )
    .await;
    // The people allowed to see it see it while the integration lives.
    assert_eq!(done["arguments"]["properties"]["email"], PERSON, "{done}");
    assert!(done["result"].to_string().contains(PERSON), "{done}");

    // The history keeps the action's course, but not the person.
    let history = app
        .get_json(
            &format!("/v1/workspaces/acme/integrations/{id}/history"),
            Some(&auditor),
        )
        .await;
    let text = history.to_string();
    assert!(text.contains("ActionRequested") && text.contains("ActionCompleted"));
    assert!(!text.contains(PERSON), "{text}");
    let export = app
        .client
        .get(format!("{}/v1/workspaces/acme/audit/export", app.address))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!export.contains(PERSON));

    // Deleted, the integration takes the person with it; the history still verifies.
    let deleted = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/acme/integrations/{id}/disconnect"),
            &admin,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 200);
    let deleted = app
        .call(
            Method::DELETE,
            &format!("/v1/workspaces/acme/integrations/{id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    let after = app.get_json(&action, Some(&admin)).await;
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(after["arguments"]["shredded"], true, "{after}");
    assert_eq!(after["result"]["shredded"], true, "{after}");
    assert!(!after.to_string().contains(PERSON));
    let verified = app
        .get_json(
            &format!("/v1/workspaces/acme/integrations/{id}/verify"),
            Some(&auditor),
        )
        .await;
    assert_eq!(verified["intact"], true, "{verified}");
    let dir = app.stop().await.unwrap();
    assert_eq!(
        files_holding(dir.path(), PERSON.as_bytes()),
        Vec::<String>::new(),
        "nothing the service wrote holds the person"
    );
}

#[tokio::test]
async fn positions_and_cursors_past_any_log_are_refused_never_wrapped() {
    let (_zendesk, app) = zendesk_app(|_| {}).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let id = connect_zendesk(&app, &admin, "acme").await;
    let history = format!("/v1/workspaces/acme/integrations/{id}/history");
    let max = u64::MAX.to_string();
    let answers = [
        // Last-Event-ID: one past it wrapped to 0 and replayed the whole log twice.
        app.client
            .get(format!("{}/v1/workspaces/acme/events", app.address))
            .bearer_auth(&admin)
            .header("Last-Event-ID", &max)
            .send()
            .await
            .unwrap(),
        app.call(
            Method::GET,
            &format!("/v1/workspaces/acme/events?after={max}"),
            &admin,
            None,
        )
        .await,
        // A history cursor one short of wrapping started again from the first event.
        app.call(
            Method::GET,
            &format!("{history}?cursor={max}"),
            &admin,
            None,
        )
        .await,
        // Past what a u64 holds, or no number at all: refused alike.
        app.call(
            Method::GET,
            &format!("{history}?cursor=18446744073709551616"),
            &admin,
            None,
        )
        .await,
        app.call(Method::GET, &format!("{history}?cursor=-1"), &admin, None)
            .await,
        app.call(
            Method::GET,
            &format!("/v1/workspaces/acme/integrations/{id}/sync-logs?cursor=x"),
            &admin,
            None,
        )
        .await,
    ];
    for answer in answers {
        assert_eq!(answer.status(), 422, "{:?}", answer.url().to_string());
        assert!(answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json"));
        let problem: Value = answer.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_query", "{problem}");
    }
    // The largest position the log could hold is accepted: a page past everything is empty.
    let last: Value = app
        .get_json(&format!("{history}?cursor={}", i64::MAX), Some(&admin))
        .await;
    assert_eq!(last["events"], json!([]), "{last}");
}

#[tokio::test]
async fn installed_refuses_filters_it_does_not_know_and_keeps_a_page_per_checked_query() {
    let (_zendesk, app) = zendesk_app(|_| {}).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let id = connect_zendesk(&app, &admin, "acme").await;
    let installed = "/v1/workspaces/acme/integrations";
    let long = "x".repeat(60_000);
    for (query, code) in [
        (format!("status={long}"), "invalid_query"),
        (format!("app={long}"), "invalid_query"),
        ("status=paused".to_owned(), "invalid_query"),
        ("scope=everyone".to_owned(), "invalid_query"),
        ("limit=lots".to_owned(), "invalid_query"),
        (format!("cursor={long}"), "bad_cursor"),
        ("cursor=zendesk/not-an-id".to_owned(), "bad_cursor"),
    ] {
        let answer = app
            .call(Method::GET, &format!("{installed}?{query}"), &admin, None)
            .await;
        assert!(
            answer.status().is_client_error(),
            "{}",
            &query[..30.min(query.len())]
        );
        let problem: Value = answer.json().await.unwrap();
        assert_eq!(problem["code"], code, "{problem}");
    }
    // The filters it knows still work, and a cursor it gave out still pages.
    let listed = app
        .get_json(
            &format!("{installed}?status=connected&app=zendesk&scope=workspace&limit=1"),
            Some(&admin),
        )
        .await;
    assert_eq!(listed["integrations"][0]["integration_id"], id.as_str());
    let none = app
        .get_json(&format!("{installed}?cursor=zendesk/{id}"), Some(&admin))
        .await;
    assert_eq!(none["integrations"], json!([]));
}

#[tokio::test]
async fn another_workspaces_sync_logs_are_not_found() {
    let (_zendesk, app) = zendesk_app(|_| {}).await;
    let (_, ada) = app.token("acme", "ada", "admin").await;
    let (_, mallory) = app.token("globex", "mallory", "admin").await;
    let id = connect_zendesk(&app, &ada, "acme").await;
    let own = app
        .call(
            Method::GET,
            &format!("/v1/workspaces/acme/integrations/{id}/sync-logs"),
            &ada,
            None,
        )
        .await;
    assert_eq!(own.status(), 200);
    // Mallory names acme's integration under her own workspace: as every other route of an
    // integration answers, it is not found there — not an empty list that says it exists.
    for route in ["sync-logs", "history", ""] {
        let answer = app
            .call(
                Method::GET,
                format!("/v1/workspaces/globex/integrations/{id}/{route}").trim_end_matches('/'),
                &mallory,
                None,
            )
            .await;
        assert_eq!(answer.status(), 404, "{route}");
        assert_eq!(answer.json::<Value>().await.unwrap()["code"], "not_found");
    }
    // Nor is one of its runs, named under an integration of her own.
    let requested = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/acme/integrations/{id}/sync"),
            &ada,
            None,
        )
        .await;
    assert_eq!(requested.status(), 202);
    let run = requested.json::<Value>().await.unwrap()["sync_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/workspaces/acme/integrations/{id}/sync-logs/{run}");
    eventually(Duration::from_secs(30), "ada reads her run", || async {
        let answer = app.call(Method::GET, &path, &ada, None).await;
        (answer.status() == 200).then_some(())
    })
    .await;
    let theirs = connect_zendesk(&app, &mallory, "globex").await;
    let answer = app
        .call(
            Method::GET,
            &format!("/v1/workspaces/globex/integrations/{theirs}/sync-logs/{run}"),
            &mallory,
            None,
        )
        .await;
    assert_eq!(answer.status(), 404);
}

/// Signs in to the console with `token` in a fresh browser; answers the status.
async fn console_sign_in(app: &crate::helpers::TestApp, token: &str) -> u16 {
    crate::helpers::console_sign_in(app, &crate::helpers::fresh_browser(), token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_ins_count_against_the_rate_limit_and_a_token_holds_few_sessions() {
    let app = spawn_app_with(|settings| {
        settings.rate_limit = gateway::limits::RateLimit::new(1, 5);
    })
    .await;
    let (_, limited) = app.token("acme", "max", "member").await;
    let (_, unlimited) = app.token_with("acme", "ada", "admin", true).await;
    let sessions_of = |user: &'static str| {
        let path = app.data_dir().join("read.db");
        async move {
            let db = database::ServiceDb::open_sqlite(&path).await.unwrap();
            let rows: Vec<(i64,)> = database::fetch_all(
                &db,
                "SELECT COUNT(*) FROM console_sessions s \
                 JOIN api_tokens t ON t.token_hash = s.token_hash WHERE t.user_id = $1",
                &[database::Bind::Text(user.to_owned())],
            )
            .await
            .unwrap();
            db.close().await;
            rows[0].0
        }
    };

    let signed_in =
        futures::future::join_all((0..40).map(|_| console_sign_in(&app, &limited))).await;
    let refused = signed_in.iter().filter(|status| **status == 429).count();
    assert!(
        refused >= 30,
        "sign-ins are charged to the token: {signed_in:?}"
    );
    assert!(signed_in.contains(&303), "{signed_in:?}");
    let api = app
        .call(
            Method::GET,
            "/v1/workspaces/acme/integrations",
            &limited,
            None,
        )
        .await;
    assert_eq!(
        api.status(),
        429,
        "the API shares the budget the sign-ins spent"
    );

    // However often a token signs in, it holds a bounded number of live sessions.
    for _ in 0..25 {
        assert_eq!(console_sign_in(&app, &unlimited).await, 303);
    }
    assert_eq!(sessions_of("ada").await, 10);
}

#[tokio::test]
async fn metrics_name_no_tenant_and_can_move_to_an_address_of_their_own_or_need_a_token() {
    let (_zendesk, app) = zendesk_app(|_| {}).await;
    let (_, ada) = app.token("acme", "ada", "admin").await;
    let id = connect_zendesk(&app, &ada, "acme").await;
    let synced = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/acme/integrations/{id}/sync"),
            &ada,
            None,
        )
        .await;
    assert_eq!(synced.status(), 202);
    let _ = app
        .call(
            Method::GET,
            &format!("/v1/workspaces/acme/integrations/{id}/sync-logs"),
            &ada,
            None,
        )
        .await;
    let scraped = reqwest::get(format!("{}/metrics", app.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(scraped.contains("http_requests"), "{scraped}");
    for tenant in ["acme", id.as_str(), "agent@acme.com", "zendesk"] {
        assert!(!scraped.contains(tenant), "the metrics name {tenant}");
    }

    // A token of its own: a scrape without it is refused.
    let guarded = spawn_app_with(|settings| {
        settings.metrics.token = Some(secrecy::SecretString::from("scrape-7e1f"));
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", guarded.address);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        client
            .get(&url)
            .bearer_auth("scrape-nope")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        client
            .get(&url)
            .bearer_auth("scrape-7e1f")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // An address of its own: the API's address has none.
    let moved = spawn_app_with(|settings| {
        settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let own = moved.metrics_address.clone().expect("a metrics address");
    assert_ne!(own, moved.address);
    assert_eq!(
        reqwest::get(format!("{}/metrics", moved.address))
            .await
            .unwrap()
            .status(),
        404
    );
    let there = reqwest::get(format!("{own}/metrics")).await.unwrap();
    assert_eq!(there.status(), 200);
    assert!(there.text().await.unwrap().contains("log_events"));
}
