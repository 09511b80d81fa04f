//! Reading your own writes over HTTP: a write answers the log position it reached
//! (`Harmony-Position`, replayed with an idempotent answer); a read sent with it
//! (`Harmony-Min-Position`) answers from read models that have applied it, and refuses
//! (503 `not_caught_up`) rather than answer from read models that have not.

use reqwest::Method;
use serde_json::Value;

use adapters::fakes::zendesk::FakeZendesk;

use crate::helpers::{
    position_of, spawn_app_with, spawn_on_jetstream_with_zendesk, use_fake_zendesk, zendesk_account,
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

    // Before anything: a position no write has reached yet is waited for, then refused, not
    // answered from read models behind it.
    let listed = app.call(Method::GET, installed, &admin, None).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(position_of(&listed), None, "a read writes nothing");
    let ahead = app.read_after(installed, &admin, 1_000_000).await;
    assert_eq!(ahead.status(), 503);
    assert!(ahead.headers().contains_key("retry-after"));
    let problem: Value = ahead.json().await.unwrap();
    assert_eq!(problem["code"], "not_caught_up", "{problem}");
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
    let db = database::ReadDb::open_sqlite(&app.data_dir().join("read.db"))
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
