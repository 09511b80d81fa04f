//! Connecting an API-key app over HTTP and reading Installed: the key is checked with the
//! provider first, the rules of who may connect hold, a personal integration is its owner's
//! alone, and the Marketplace is refused outside a workspace.

use reqwest::Method;
use serde_json::{json, Value};

use eventstore::waiting::eventually;
use fakes::todoist::FakeTodoist;
use fakes::zendesk::FakeZendesk;

use crate::helpers::{
    position_of, spawn_app_with, spawn_on_jetstream_with_zendesk, use_fake_hubspot,
    use_fake_zendesk, zendesk_account, TestApp,
};

async fn connect(app: &TestApp, token: &str, ws: &str, body: Value) -> (u16, Value) {
    let path = format!("/v1/workspaces/{ws}/integrations");
    let response = app.call(Method::POST, &path, token, Some(body)).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn an_api_key_app_connects_once_its_key_is_checked_and_shows_in_installed() {
    let zendesk_fake = FakeZendesk::start("acme", "agent@acme.com", "zd-right", 3, 1)
        .await
        .unwrap();
    let todoist_fake = FakeTodoist::start("td-right", 2).await.unwrap();
    let zendesk_base = zendesk_fake.server.base.clone();
    let todoist_base = todoist_fake.server.base.clone();
    let app = spawn_app_with(|settings| {
        use_fake_zendesk(settings, &zendesk_base);
        settings.adapters.endpoints.todoist_api = todoist_base.join("api/v1/").unwrap();
    })
    .await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, member) = app.token("acme", "bob", "member").await;

    // A member without the integration permission is refused, in the rule's words.
    let (status, body) = connect(&app, &member, "acme", zendesk_account("zd-right")).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("integration permission"));
    // A wrong key is refused with the provider's reason.
    let (status, body) = connect(&app, &admin, "acme", zendesk_account("zd-wrong")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("provider_refused"))
    );
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("Couldn't authenticate you"));
    // An unknown field is named.
    let (status, body) =
        connect(&app, &admin, "acme", json!({"app": "zendesk", "colour": 1})).await;
    assert_eq!(status, 422);
    assert!(
        body["detail"].as_str().unwrap().contains("colour"),
        "{body}"
    );

    let (status, body) = connect(&app, &admin, "acme", zendesk_account("zd-right")).await;
    assert_eq!(status, 201, "{body}");
    let id = body["integration_id"].as_str().unwrap().to_owned();
    assert!(body["account_label"]
        .as_str()
        .unwrap()
        .contains("Johnny Agent"));

    let installed = eventually(
        std::time::Duration::from_secs(20),
        "Installed shows the integration",
        || async {
            let page = app
                .get_json("/v1/workspaces/acme/integrations", Some(&member))
                .await;
            let rows = page["integrations"].as_array().cloned().unwrap_or_default();
            (!rows.is_empty()).then_some(rows)
        },
    )
    .await;
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0]["app"], "zendesk");
    assert_eq!(installed[0]["status"], "connected");
    let detail = app
        .get_json(
            &format!("/v1/workspaces/acme/integrations/{id}"),
            Some(&member),
        )
        .await;
    assert_eq!(detail["integration_id"], id.as_str());
    assert!(detail["actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "sync"));

    // Ada's personal Todoist is hers alone: Bob neither lists nor finds it.
    let (status, body) = connect(
        &app,
        &admin,
        "acme",
        json!({"app": "todoist", "fields": {"api_token": "td-right"}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let personal = body["integration_id"].as_str().unwrap().to_owned();
    eventually(
        std::time::Duration::from_secs(20),
        "Ada sees her personal integration",
        || async {
            let page = app
                .get_json("/v1/workspaces/acme/integrations", Some(&admin))
                .await;
            (page["integrations"].as_array().map(Vec::len) == Some(2)).then_some(())
        },
    )
    .await;
    let bobs = app
        .get_json("/v1/workspaces/acme/integrations", Some(&member))
        .await;
    assert_eq!(bobs["integrations"].as_array().unwrap().len(), 1);
    let hidden = app
        .call(
            Method::GET,
            &format!("/v1/workspaces/acme/integrations/{personal}"),
            &member,
            None,
        )
        .await;
    assert_eq!(hidden.status(), 404, "not 403: its existence does not leak");

    // Outside a workspace, and in another workspace, the Marketplace is refused.
    let me = app
        .call(
            Method::POST,
            "/v1/me/integrations",
            &admin,
            Some(zendesk_account("zd-right")),
        )
        .await;
    assert_eq!(me.status(), 409);
    let body: Value = me.json().await.unwrap();
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("switch to a workspace first"));
    let (status, body) = connect(&app, &admin, "globex", zendesk_account("zd-right")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("other_workspace"))
    );
}

#[tokio::test]
async fn an_integration_is_tested_synced_scheduled_disconnected_and_deleted_over_http() {
    let zendesk_fake = FakeZendesk::start("acme", "agent@acme.com", "zd-right", 7, 2)
        .await
        .unwrap();
    let base = zendesk_fake.server.base.clone();
    let app = spawn_app_with(|settings| {
        use_fake_zendesk(settings, &base);
    })
    .await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, member) = app.token("acme", "bob", "member").await;
    let (status, body) = connect(&app, &admin, "acme", zendesk_account("zd-right")).await;
    assert_eq!(status, 201, "{body}");
    let id = body["integration_id"].as_str().unwrap().to_owned();
    let url = |action: &str| format!("/v1/workspaces/acme/integrations/{id}{action}");

    let tested: Value = app
        .call(Method::POST, &url("/test"), &admin, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tested["ok"], true);

    let refused = app.call(Method::POST, &url("/sync"), &member, None).await;
    assert_eq!(
        refused.status(),
        403,
        "a member without the permission syncs nothing"
    );
    let started = app.call(Method::POST, &url("/sync"), &admin, None).await;
    assert_eq!(started.status(), 202);
    let sync_id = started.json::<Value>().await.unwrap()["sync_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = eventually(
        std::time::Duration::from_secs(30),
        "the sync logs show the run completed",
        || async {
            let logs = app
                .get_json(
                    &format!("/v1/workspaces/acme/integrations/{id}/sync-logs"),
                    Some(&admin),
                )
                .await;
            logs["runs"]
                .as_array()
                .and_then(|runs| {
                    runs.iter()
                        .find(|r| r["sync_id"] == sync_id.as_str())
                        .cloned()
                })
                .filter(|run| run["status"] == "completed")
        },
    )
    .await;
    assert_eq!(run["pulled"], 9, "seven tickets and two users");
    // The run's own page: its row, its start from its detail, and the pages it recorded.
    let detail = app
        .get_json(
            &format!("/v1/workspaces/acme/integrations/{id}/sync-logs/{sync_id}"),
            Some(&admin),
        )
        .await;
    assert_eq!(detail["run"]["sync_id"], sync_id.as_str());
    assert_eq!(detail["detail"], "kept");
    assert!(detail["run"]["started_at"].is_string(), "{detail}");
    let pages = detail["pages"].as_array().unwrap();
    let created: u64 = pages.iter().map(|p| p["created"].as_u64().unwrap()).sum();
    assert_eq!(created, 9, "every record created, page by page: {detail}");
    assert!(pages.iter().any(|p| p["object"] == "tickets"), "{detail}");
    let unknown = app
        .call(
            Method::GET,
            &format!(
                "/v1/workspaces/acme/integrations/{id}/sync-logs/{}",
                domain::SyncId::new()
            ),
            &admin,
            None,
        )
        .await;
    assert_eq!(unknown.status(), 404);

    // A new key: a wrong one is refused with the provider's reason, the right one kept.
    let reauth_path = url("/reauth");
    let reauth = |key: &str| {
        app.call(
            Method::POST,
            &reauth_path,
            &admin,
            Some(json!({"fields": {"api_token": key}})),
        )
    };
    let wrong = reauth("zd-wrong").await;
    assert_eq!(wrong.status(), 422);
    let right: Value = reauth("zd-right").await.json().await.unwrap();
    assert_eq!(right["integration_id"], id.as_str());

    let schedule_path = url("/schedule");
    let schedule = |minutes: Value| {
        app.call(
            Method::PUT,
            &schedule_path,
            &admin,
            Some(json!({ "every_minutes": minutes })),
        )
    };
    assert_eq!(schedule(json!(60)).await.status(), 200);
    let too_often = schedule(json!(1)).await;
    assert!(too_often.status().is_client_error());
    let body: Value = too_often.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains('5'), "{body}");

    let disconnected: Value = app
        .call(Method::POST, &url("/disconnect"), &admin, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(disconnected["disconnected"], true);
    let after = app.call(Method::POST, &url("/sync"), &admin, None).await;
    assert_eq!(after.status(), 409, "no sync while disconnected");
    let deleted = app.call(Method::DELETE, &url(""), &admin, None).await;
    assert_eq!(deleted.status(), 204);
    eventually(
        std::time::Duration::from_secs(20),
        "the integration leaves Installed",
        || async {
            let status = app.call(Method::GET, &url(""), &admin, None).await.status();
            (status == 404).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_oauth_app_connects_through_the_popup_and_its_callback_page_tells_the_opener() {
    use fakes::hubspot::FakeHubSpot;
    let hubspot = FakeHubSpot::start(3, 0).await.unwrap();
    let base = hubspot.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_hubspot(settings, &base)).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (status, body) = connect(&app, &admin, "acme", json!({"app": "hubspot"})).await;
    assert_eq!(status, 200, "{body}");
    let authorize = body["authorization_url"].as_str().unwrap().to_owned();
    assert!(authorize.contains("code_challenge="), "PKCE: {authorize}");

    // The popup: the provider sends the browser back to the service's callback.
    let browser = app.browser();
    let consent = browser.get(&authorize).send().await.unwrap();
    let callback = consent.headers()["location"].to_str().unwrap().to_owned();
    assert!(callback.starts_with(&format!("{}/v1/oauth/callback?", app.address)));
    let page = browser.get(&callback).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("/console/oauth-callback.js"), "{html}");
    assert!(html.contains("\"ok\":true"), "{html}");
    assert!(
        html.contains("Connected"),
        "a page without an opener still says it"
    );

    eventually(
        std::time::Duration::from_secs(20),
        "Installed shows HubSpot",
        || async {
            let page = app
                .get_json("/v1/workspaces/acme/integrations", Some(&admin))
                .await;
            page["integrations"]
                .as_array()
                .filter(|rows| rows.iter().any(|r| r["app"] == "hubspot"))
                .map(|_| ())
        },
    )
    .await;

    // Reauth keeps the integration: a new popup, the same id.
    let rows = app
        .get_json("/v1/workspaces/acme/integrations", Some(&admin))
        .await;
    let id = rows["integrations"][0]["integration_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reauth: Value = app
        .call(
            Method::POST,
            &format!("/v1/workspaces/acme/integrations/{id}/reauth"),
            &admin,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let popup = browser
        .get(reauth["authorization_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let back = popup.headers()["location"].to_str().unwrap().to_owned();
    let html = browser
        .get(&back)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(&format!("\"integration_id\":\"{id}\"")),
        "{html}"
    );

    // The state is single-use: the same callback again connects nothing.
    let again = browser.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert!(again.text().await.unwrap().contains("already used"));
    // A refusal at the provider is told to the opener too.
    let denied = browser
        .get(format!(
            "{}/v1/oauth/callback?error=access_denied&state=x",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 400);
    assert!(denied.text().await.unwrap().contains("\"ok\":false"));

    // An answer naming another authorization server (RFC 9207 `iss`) is refused, its code
    // unused; HubSpot's own issuer (its authorization server's origin) is accepted (in a
    // workspace without HubSpot yet).
    let (_, beta) = app.token("beta", "ada", "admin").await;
    for (iss, connects, workspace, token) in [
        ("https://attacker.example".to_owned(), false, "acme", &admin),
        (base.origin().ascii_serialization(), true, "beta", &beta),
    ] {
        let (status, body) = connect(&app, token, workspace, json!({"app": "hubspot"})).await;
        assert_eq!(status, 200, "{body}");
        let consent = browser
            .get(body["authorization_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let callback = consent.headers()["location"].to_str().unwrap().to_owned();
        let mut with_iss = url::Url::parse(&callback).unwrap();
        with_iss.query_pairs_mut().append_pair("iss", &iss);
        let page = browser.get(with_iss).send().await.unwrap();
        let status = page.status();
        let html = page.text().await.unwrap();
        if connects {
            assert_eq!(status, 200, "{html}");
        } else {
            assert_eq!(status, 400, "{html}");
            assert!(html.contains("attacker.example"), "{html}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rebuild_installed_shows_the_rebuilt_rows_not_a_page_answered_before_it() {
    use projections::runner::Projection;
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-key", 2, 1)
        .await
        .unwrap();
    // On JetStream, so that a rebuild can run beside the service as operators run it.
    let (app, log) = spawn_on_jetstream_with_zendesk(&zendesk.server.base).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let installed = "/v1/workspaces/acme/integrations";
    let connected = app
        .call(
            Method::POST,
            installed,
            &admin,
            Some(zendesk_account("zd-key")),
        )
        .await;
    assert_eq!(connected.status(), 201);
    let at = position_of(&connected).expect("a write says its position");
    let statuses = || async {
        let page: Value = app
            .read_after(installed, &admin, at)
            .await
            .json()
            .await
            .unwrap();
        page["integrations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["status"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    // Once Installed holds the connect, its table is damaged behind the service's back, and
    // Installed answers (and keeps) that page.
    let read = database::ServiceDb::open_sqlite(&app.data_dir().join("read.db"))
        .await
        .unwrap();
    eventually(
        std::time::Duration::from_secs(20),
        "Installed applying the connect",
        || async { (Projection::Installed.checkpoint(&read).await.unwrap() >= at).then_some(()) },
    )
    .await;
    database::execute(&read, "UPDATE installed SET status = 'damaged'", &[])
        .await
        .unwrap();
    let position = Projection::Installed.checkpoint(&read).await.unwrap();
    assert_eq!(statuses().await, ["damaged"]);
    assert_eq!(statuses().await, ["damaged"]);

    // A rebuild swaps fresh tables in with no new event: the position stands, the rows are new.
    let store = eventstore::JetStreamEventStore::connect(log).await.unwrap();
    projections::rebuild::rebuild(&store, &read, &Projection::ALL, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(
        Projection::Installed.checkpoint(&read).await.unwrap(),
        position
    );
    assert_eq!(
        statuses().await,
        ["connected"],
        "a page answered before the rebuild was served after it"
    );
}

#[tokio::test]
async fn a_sync_request_may_name_its_kind_and_a_wrong_one_is_refused() {
    let zendesk_fake = FakeZendesk::start("acme", "agent@acme.com", "zd-right", 5, 1)
        .await
        .unwrap();
    let base = zendesk_fake.server.base.clone();
    let app = spawn_app_with(|settings| {
        use_fake_zendesk(settings, &base);
    })
    .await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (status, body) = connect(&app, &admin, "acme", zendesk_account("zd-right")).await;
    assert_eq!(status, 201, "{body}");
    let id = body["integration_id"].as_str().unwrap().to_owned();
    let sync_path = format!("/v1/workspaces/acme/integrations/{id}/sync");
    let ended_run = |sync_id: String| {
        let (app, admin, id) = (&app, &admin, &id);
        async move {
            eventually(
                std::time::Duration::from_secs(30),
                "the sync logs show the run ended",
                || async {
                    let logs = app
                        .get_json(
                            &format!("/v1/workspaces/acme/integrations/{id}/sync-logs"),
                            Some(admin),
                        )
                        .await;
                    logs["runs"].as_array().and_then(|runs| {
                        runs.iter()
                            .find(|r| r["sync_id"] == sync_id.as_str())
                            .filter(|r| r["status"] == "completed")
                            .cloned()
                    })
                },
            )
            .await
        }
    };

    // Without a body: a full run, as before.
    let full = app.call(Method::POST, &sync_path, &admin, None).await;
    assert_eq!(full.status(), 202);
    let sync_id = full.json::<Value>().await.unwrap()["sync_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ended_run(sync_id).await["kind"], "full");

    // Asked for: an incremental run.
    let incremental = app
        .call(
            Method::POST,
            &sync_path,
            &admin,
            Some(json!({"kind": "incremental"})),
        )
        .await;
    assert_eq!(incremental.status(), 202);
    let sync_id = incremental.json::<Value>().await.unwrap()["sync_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ended_run(sync_id).await["kind"], "incremental");

    // A kind that does not exist, or a field nobody knows, is refused and requests nothing.
    let history = format!("/v1/workspaces/acme/integrations/{id}/history");
    let events_before = app.get_json(&history, Some(&admin)).await;
    for body in [
        json!({"kind": "sideways"}),
        json!({"kind": "full", "now": true}),
    ] {
        let refused = app.call(Method::POST, &sync_path, &admin, Some(body)).await;
        assert_eq!(refused.status(), 422);
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_body", "{problem}");
    }
    assert_eq!(app.get_json(&history, Some(&admin)).await, events_before);
}
