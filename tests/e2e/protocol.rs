//! What every write and every caller gets from the API besides its answer: `Idempotency-Key`
//! replays, the per-token rate limit, readiness and metrics.

use reqwest::Method;
use serde_json::Value;

use fakes::zendesk::FakeZendesk;

use crate::helpers::{spawn_app, spawn_app_with, use_fake_zendesk, zendesk_account};

#[tokio::test]
async fn a_retried_write_with_the_same_idempotency_key_gets_the_first_answer() {
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-right", 1, 0)
        .await
        .unwrap();
    let base = zendesk.server.base.clone();
    let app = spawn_app_with(|settings| {
        use_fake_zendesk(settings, &base);
    })
    .await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, other) = app.token("acme", "bob", "admin").await;
    let connect = |token: &str, key: &str, api_token: &str| {
        app.client
            .post(format!("{}/v1/workspaces/acme/integrations", app.address))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&zendesk_account(api_token))
            .send()
    };
    let first = connect(&admin, "connect-1", "zd-right").await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = connect(&admin, "connect-1", "zd-right").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the same integration, not a second one");
    // Without the key, the second connect meets the rule: Zendesk is connected already.
    let plain = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &admin,
            Some(zendesk_account("zd-right")),
        )
        .await;
    assert_eq!(plain.status(), 409);
    // The same key with another request is refused; another caller's keys are their own.
    let reused = connect(&admin, "connect-1", "zd-other").await.unwrap();
    assert_eq!(reused.status(), 422);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["code"], "idempotency_key_reused");
    let theirs = connect(&other, "connect-1", "zd-right").await.unwrap();
    assert_eq!(theirs.status(), 409, "Bob's key acts: and meets the rule");

    // A sync asked twice with one key is one sync.
    let id = first["integration_id"].as_str().unwrap();
    let sync = || {
        app.client
            .post(format!(
                "{}/v1/workspaces/acme/integrations/{id}/sync",
                app.address
            ))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "sync-1")
            .send()
    };
    let one: Value = sync().await.unwrap().json().await.unwrap();
    let two: Value = sync().await.unwrap().json().await.unwrap();
    assert_eq!(one["sync_id"], two["sync_id"]);
}

#[tokio::test]
async fn a_key_whose_first_request_died_with_its_process_is_released_after_thirty_seconds() {
    let app = spawn_app().await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let request = || {
        app.client
            .post(format!("{}/v1/workspaces/acme/approval-rules", app.address))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "rule-1")
            .json(&serde_json::json!({"app": "hubspot", "tool": "update_contact"}))
            .send()
    };
    let first = request().await.unwrap();
    assert_eq!(first.status(), 201);
    // As a process killed while answering leaves it: claimed, never answered.
    let db = database::ServiceDb::open_sqlite(&app.data_dir().join("read.db"))
        .await
        .unwrap();
    let claimed = |age_seconds: i64| {
        let db = db.clone();
        async move {
            database::execute(
                &db,
                "UPDATE idempotency_keys SET status = NULL, body = NULL, created_at = $1",
                &[database::Bind::Int(
                    domain::Timestamp::now().unix_micros() - age_seconds * 1_000_000,
                )],
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(claimed(5).await, 1);
    let waiting = request().await.unwrap();
    assert_eq!(waiting.status(), 409);
    assert_eq!(waiting.headers()["retry-after"], "1");
    let body: Value = waiting.json().await.unwrap();
    assert_eq!(body["code"], "idempotency_in_flight");

    claimed(31).await;
    let retried = request().await.unwrap();
    assert!(
        retried.headers().get("idempotent-replayed").is_none(),
        "acted on, not replayed"
    );
    assert!(retried.status().is_success(), "{:?}", retried.text().await);
    assert_eq!(
        request().await.unwrap().headers()["idempotent-replayed"],
        "true"
    );
}

#[tokio::test]
async fn a_token_over_its_rate_limit_is_told_when_to_come_back() {
    let app = spawn_app_with(|settings| {
        settings.rate_limit = gateway::limits::RateLimit::new(1, 3);
    })
    .await;
    let (_, limited) = app.token("acme", "ada", "admin").await;
    let (_, unlimited) = app.token_with("acme", "bench", "admin", true).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = app.call(Method::GET, "/v1/me", &limited, None).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let wait: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&wait), "{wait}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    for _ in 0..10 {
        let response = app.call(Method::GET, "/v1/me", &unlimited, None).await;
        assert_eq!(
            response.status(),
            200,
            "an unlimited token is never limited"
        );
    }
}

#[tokio::test]
async fn readiness_and_metrics_report_the_log_the_projections_and_the_requests() {
    let app = spawn_app().await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    for _ in 0..3 {
        app.call(Method::GET, "/v1/apps", &admin, None).await;
    }
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "harmony_http_requests_total{method=\"GET\",route=\"/v1/apps\",status=\"200\"} 3"
        ),
        "{text}"
    );
    assert!(text.contains("harmony_http_request_duration_seconds_bucket{"));
    assert!(text.contains("harmony_projection_lag_events{projection=\"installed\"}"));
    assert!(text.contains("harmony_log_events "));
    assert!(text.contains("harmony_records_synced "));
}

#[tokio::test]
async fn a_sync_asked_for_while_one_is_queued_joins_it_and_names_it() {
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-right", 1, 0)
        .await
        .unwrap();
    let base = zendesk.server.base.clone();
    // No sync worker here: the first request stays queued.
    let app = spawn_app_with(|settings| {
        use_fake_zendesk(settings, &base);
        settings.run_workers = false;
    })
    .await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let connected: Value = app
        .call(
            Method::POST,
            "/v1/workspaces/acme/integrations",
            &admin,
            Some(zendesk_account("zd-right")),
        )
        .await
        .json()
        .await
        .unwrap();
    let path = format!(
        "/v1/workspaces/acme/integrations/{}/sync",
        connected["integration_id"].as_str().unwrap()
    );
    let first: Value = app
        .call(Method::POST, &path, &admin, None)
        .await
        .json()
        .await
        .unwrap();
    let second: Value = app
        .call(Method::POST, &path, &admin, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["coalesced"], false);
    assert_eq!(second["coalesced"], true);
    assert_eq!(second["sync_id"], first["sync_id"], "the queued run's id");
}

#[tokio::test]
async fn a_graceful_stop_ends_open_event_streams_and_finishes() {
    let app = spawn_app().await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let mut stream = crate::audit::open_sse(&app, "/v1/workspaces/acme/events", &admin, None).await;
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), app.stop()).await;
    assert!(
        matches!(stopped, Ok(Ok(_))),
        "the server stops with a stream open: {stopped:?}"
    );
    // The stream ends rather than hanging.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the open stream ended");
}
