//! Reading your own writes over HTTP: a write answers the log position it reached
//! (`Harmony-Position`, replayed with an idempotent answer); a read sent with it
//! (`Harmony-Min-Position`) answers from read models that have applied it, and refuses
//! (503 `not_caught_up`) rather than answer from read models that have not. Only an
//! authenticated caller is ever held, a bounded number of reads per token, and only for a
//! position the log holds.

use reqwest::Method;
use serde_json::Value;

use fakes::zendesk::FakeZendesk;

use crate::helpers::{
    connect_zendesk, position_of, spawn_app_with, spawn_on_jetstream_with_zendesk,
    use_fake_zendesk, zendesk_account, zendesk_app,
};

#[tokio::test]
async fn a_read_sent_with_a_writes_position_shows_that_write() {
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-key", 2, 1)
        .await
        .unwrap();
    let base = zendesk.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_zendesk(settings, &base)).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let installed = "/v1/workspaces/acme/integrations";

    // Before anything: a position the log does not hold is refused at once — no wait could
    // reach it — not answered from read models behind it.
    let listed = app.call(Method::GET, installed, &admin, None).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(position_of(&listed), None, "a read writes nothing");
    let started = std::time::Instant::now();
    let ahead = app.read_after(installed, &admin, 1_000_000).await;
    assert_eq!(ahead.status(), 422);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let problem: Value = ahead.json().await.unwrap();
    assert_eq!(problem["code"], "position_not_in_log", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("1000000"),
        "{problem}"
    );

    // Connect: its position, sent back, gets a read that lists the integration at once.
    let connect = || {
        app.client
            .post(format!("{}{installed}", app.address))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "connect-zendesk")
            .json(&zendesk_account("zd-key"))
            .send()
    };
    let connected = connect().await.unwrap();
    assert_eq!(connected.status(), 201, "{:?}", connected.headers());
    let at = position_of(&connected).expect("a write says its position");
    let id = connected.json::<Value>().await.unwrap()["integration_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let row = app
        .read_after(&format!("{installed}/{id}"), &admin, at)
        .await;
    assert_eq!(row.status(), 200);
    assert_eq!(row.json::<Value>().await.unwrap()["status"], "connected");

    // The same request again is answered as it was, position included.
    let again = connect().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(position_of(&again), Some(at));

    // Each later write moves the position on, and a read after it shows it.
    let disconnected = app
        .call(
            Method::POST,
            &format!("{installed}/{id}/disconnect"),
            &admin,
            None,
        )
        .await;
    assert_eq!(disconnected.status(), 200);
    let later = position_of(&disconnected).expect("a write says its position");
    assert!(later > at);
    let row = app
        .read_after(&format!("{installed}/{id}"), &admin, later)
        .await;
    assert_eq!(row.json::<Value>().await.unwrap()["status"], "disconnected");
    let deleted = app
        .call(Method::DELETE, &format!("{installed}/{id}"), &admin, None)
        .await;
    assert_eq!(deleted.status(), 204);
    let gone = position_of(&deleted).expect("a write says its position");
    let list: Value = app
        .read_after(installed, &admin, gone)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["integrations"], Value::Array(Vec::new()), "{list}");

    // A position that is not a number is refused as such.
    let bad = app
        .client
        .get(format!("{}{installed}", app.address))
        .bearer_auth(&admin)
        .header("Harmony-Min-Position", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["code"],
        "bad_min_position"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_jetstream_a_history_read_after_a_position_shows_what_installed_shows() {
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-key", 2, 1)
        .await
        .unwrap();
    let (app, _) = spawn_on_jetstream_with_zendesk(&zendesk.server.base).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, auditor) = app.token("acme", "eve", "auditor").await;
    let connected = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &admin,
            Some(zendesk_account("zd-key")),
        )
        .await;
    let at = position_of(&connected).expect("a write says its position");
    let id = connected.json::<Value>().await.unwrap()["integration_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let history = format!("/v1/workspaces/acme/integrations/{id}/history");
    let read = app.read_after(&history, &auditor, at).await;
    assert_eq!(read.status(), 200);
    let shown = read.json::<Value>().await.unwrap()["events"]
        .as_array()
        .unwrap()
        .len();
    assert!(shown > 0);

    // Installed has folded further than any server of the log holds — what a replica behind
    // the others looks like from here.
    let db = database::ServiceDb::open_sqlite(&app.data_dir().join("read.db"))
        .await
        .unwrap();
    database::execute(
        &db,
        "UPDATE installed SET version = version + 3 WHERE integration_id = $1",
        &[database::Bind::Text(id.clone())],
    )
    .await
    .unwrap();
    // A read that did not ask for a position answers from the log as it is...
    let plain = app.call(Method::GET, &history, &auditor, None).await;
    assert_eq!(plain.status(), 200);
    // ...one that did waits for the log to show what Installed shows, and says it could not
    // rather than answer with less.
    let behind = app.read_after(&history, &auditor, at).await;
    assert_eq!(
        behind.status(),
        503,
        "answered from a log behind Installed: {}",
        behind.text().await.unwrap()
    );
    assert!(behind.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_authenticated_caller_waits_and_a_token_holds_few_waiting_reads() {
    let (_zendesk, app) = zendesk_app(|_| {}).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, max) = app.token("acme", "max", "member").await;
    let installed = "/v1/workspaces/acme/integrations";
    connect_zendesk(&app, &admin, "acme").await;
    // The connect's first event: a position the log holds.
    let head = 1;

    // Without a token, or with a token nobody issued, the header holds nothing: 401 at once.
    for token in [None, Some("hst_nonsense")] {
        let started = std::time::Instant::now();
        let mut request = app
            .client
            .get(format!("{}/v1/me", app.address))
            .header("Harmony-Min-Position", "999999");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 401);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "an unauthenticated request was held {:?}",
            started.elapsed()
        );
    }

    // The read models fall behind a position the log holds: a read after it waits, then says
    // so. One token may hold only so many such reads; the rest are refused at once, and
    // another token's requests go on unhindered.
    let db = database::ServiceDb::open_sqlite(&app.data_dir().join("read.db"))
        .await
        .unwrap();
    database::execute(&db, "UPDATE checkpoints SET position = 0", &[])
        .await
        .unwrap();
    let waiting: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, admin) = (
                app.client.clone(),
                format!("{}{installed}", app.address),
                admin.clone(),
            );
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let answer = client
                    .get(url)
                    .bearer_auth(admin)
                    .header("Harmony-Min-Position", head.to_string())
                    .send()
                    .await
                    .unwrap();
                let code = answer.json::<Value>().await.unwrap()["code"]
                    .as_str()
                    .map(str::to_owned);
                (code, started.elapsed())
            })
        })
        .collect();
    let unhindered = std::time::Instant::now();
    let other = app.call(Method::GET, installed, &max, None).await;
    assert_eq!(other.status(), 200);
    assert!(unhindered.elapsed() < std::time::Duration::from_secs(2));
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for answer in waiting {
        let (code, took) = answer.await.unwrap();
        let code = code.unwrap_or_default();
        if code == "too_many_waiting" {
            assert!(took < std::time::Duration::from_secs(2), "refused at once");
        }
        *codes.entry(code).or_default() += 1;
    }
    assert_eq!(codes.get("not_caught_up"), Some(&16), "{codes:?}");
    assert_eq!(codes.get("too_many_waiting"), Some(&4), "{codes:?}");
}
