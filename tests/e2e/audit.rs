//! The auditors' endpoints and the event stream over HTTP: history with actors, the state as of
//! a moment equal to what the API showed then, the chain's check, the NDJSON export (no
//! secrets, nobody else's personal integration), and SSE that resumes from `Last-Event-ID`
//! with no gap.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use eventstore::waiting::eventually;
use fakes::todoist::FakeTodoist;
use fakes::zendesk::FakeZendesk;

use crate::helpers::{spawn_app_with, use_fake_zendesk, zendesk_account, TestApp};

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

/// Reads server-sent events from `response` until `enough` says so (or the deadline passes).
pub async fn read_sse(
    response: &mut reqwest::Response,
    enough: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !enough(&events) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no more events within 30 s; got {events:?}"))
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = value.trim().parse().ok();
                } else if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if let Some(id) = id {
                events.push(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
        }
    }
    events
}

pub async fn open_sse(
    app: &TestApp,
    path: &str,
    token: &str,
    last: Option<u64>,
) -> reqwest::Response {
    let mut request = app
        .client
        .get(format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(last) = last {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

#[tokio::test]
async fn auditors_read_the_history_the_state_as_of_a_moment_and_the_verified_chain() {
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-secret-key", 4, 1)
        .await
        .unwrap();
    let todoist = FakeTodoist::start("td-secret-key", 1).await.unwrap();
    let zendesk_base = zendesk.server.base.clone();
    let todoist_base = todoist.server.base.clone();
    let app = spawn_app_with(|settings| {
        use_fake_zendesk(settings, &zendesk_base);
        settings.adapters.endpoints.todoist_api = todoist_base.join("api/v1/").unwrap();
        settings.checkpoint_every = Duration::from_millis(100);
    })
    .await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, bob) = app.token("acme", "bob", "member").await;
    let (_, auditor) = app.token("acme", "eve", "auditor").await;

    // A downstream subscriber from the very start.
    let mut stream = open_sse(&app, "/v1/workspaces/acme/events?after=0", &bob, None).await;

    let connected: Value = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &admin,
            Some(zendesk_account("zd-secret-key")),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = connected["integration_id"].as_str().unwrap().to_owned();
    let personal: Value = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &admin,
            Some(json!({"app": "todoist", "fields": {"api_token": "td-secret-key"}})),
        )
        .await
        .json()
        .await
        .unwrap();
    let personal = personal["integration_id"].as_str().unwrap().to_owned();
    let url = |rest: &str| format!("/v1/workspaces/acme/integrations/{id}{rest}");

    // What the API showed right after the connect, and a moment after that.
    let shown = eventually(Duration::from_secs(20), "Installed shows it", || async {
        let row = app.get_json(&url(""), Some(&auditor)).await;
        (row["status"] == "connected").then_some(row)
    })
    .await;
    let moment = domain::Timestamp::now();
    let synced = app.call(Method::POST, &url("/sync"), &admin, None).await;
    assert_eq!(synced.status(), 202);
    let now_row = eventually(Duration::from_secs(30), "the sync completes", || async {
        let row = app.get_json(&url(""), Some(&auditor)).await;
        (row["last_sync_outcome"] == "completed").then_some(row)
    })
    .await;

    let then = app
        .get_json(&format!("{}?as_of={moment}", url("/state")), Some(&auditor))
        .await;
    assert_eq!(
        then["installed"], shown,
        "the state then is what the API showed then"
    );
    let now = app.get_json(&url("/state"), Some(&auditor)).await;
    assert_eq!(now["installed"], now_row);
    assert!(now["version"].as_u64() > then["version"].as_u64());
    let bad = app
        .call(
            Method::GET,
            &format!("{}?as_of=yesterday", url("/state")),
            &auditor,
            None,
        )
        .await;
    assert_eq!(bad.status(), 422);

    let history = app.get_json(&url("/history"), Some(&auditor)).await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events[0]["type"], "IntegrationConnected");
    assert_eq!(events[0]["actor"]["user"], "ada", "{}", events[0]);
    assert!(events.iter().any(|e| e["type"] == "SyncCompleted"));
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    // Paged: the second event onwards after cursor 1.
    let rest = app
        .get_json(
            &format!("{}?cursor=1&limit=2", url("/history")),
            Some(&auditor),
        )
        .await;
    assert_eq!(rest["events"][0]["version"], 2);
    assert_eq!(rest["next_cursor"], 3);

    // The service signs the stream's head soon after it changes.
    let verified = eventually(Duration::from_secs(20), "the head is signed", || async {
        let verified = app.get_json(&url("/verify"), Some(&auditor)).await;
        (verified["checkpoint"]["status"] == "holds"
            && verified["checkpoint"]["version"] == verified["events"])
            .then_some(verified)
    })
    .await;
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["events"].as_u64().unwrap(), versions.len() as u64);
    assert_eq!(verified["head"], events.last().unwrap()["hash"]);

    // Ada's personal integration is invisible to the auditor, here as everywhere.
    let hidden = app
        .call(
            Method::GET,
            &format!("/v1/workspaces/acme/integrations/{personal}/history"),
            &auditor,
            None,
        )
        .await;
    assert_eq!(hidden.status(), 404);

    // The export: every lifecycle event of the workspace integration, none of Ada's personal
    // one, and no secret anywhere.
    let export = app
        .call(
            Method::GET,
            "/v1/workspaces/acme/audit/export",
            &auditor,
            None,
        )
        .await;
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let text = export.text().await.unwrap();
    assert!(!text.contains("zd-secret-key") && !text.contains("td-secret-key"));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["stream"] == format!("integration-{id}").as_str())
            .count(),
        versions.len()
    );
    assert!(lines.iter().all(|l| l["owner"].is_null()));
    let adas = app
        .call(
            Method::GET,
            "/v1/workspaces/acme/audit/export",
            &admin,
            None,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(
        adas.contains(&personal),
        "Ada's own export holds her personal integration"
    );

    // The stream: Bob saw every workspace event in order, none of Ada's personal ones.
    let seen = read_sse(&mut stream, |events| {
        events.iter().any(|e| e.event == "SyncCompleted")
    })
    .await;
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id));
    assert!(seen.iter().all(|e| e.data["owner"].is_null()), "{seen:?}");
    let zendesk_events: Vec<&Sse> = seen
        .iter()
        .filter(|e| e.data["stream"] == format!("integration-{id}").as_str())
        .collect();
    assert_eq!(zendesk_events[0].event, "IntegrationConnected");
    // Resuming after the third event gives the fourth next: no gap, no duplicate.
    let mut resumed = open_sse(&app, "/v1/workspaces/acme/events", &bob, Some(seen[2].id)).await;
    let again = read_sse(&mut resumed, |events| events.len() >= 2).await;
    assert_eq!(again[0].id, seen[3].id);
    assert_eq!(again[1].id, seen[4].id);
    // Filtered by type.
    let mut only = open_sse(
        &app,
        "/v1/workspaces/acme/events?after=0&types=SyncCompleted",
        &bob,
        None,
    )
    .await;
    let filtered = read_sse(&mut only, |events| !events.is_empty()).await;
    assert_eq!(filtered[0].event, "SyncCompleted");
}
