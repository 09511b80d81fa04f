//! The OpenAPI document: generated from the handlers (a route is registered only with its
//! description), OpenAPI 3.1, and every path and method in it is served by the route it
//! describes — asked without a token, each `/v1` route answers 401, never 404 or 405.

use std::time::Duration;

use eventstore::waiting::eventually;
use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_documented_route_is_served_and_every_v1_route_is_documented_with_its_guard() {
    let app = spawn_app().await;
    let document: Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    for expected in [
        "/v1/apps",
        "/v1/workspaces/{ws}/integrations",
        "/v1/workspaces/{ws}/integrations/{id}/mappings",
        "/v1/workspaces/{ws}/integrations/{id}/actions/{action}/approve",
        "/v1/workspaces/{ws}/integrations/{id}/state",
        "/v1/workspaces/{ws}/audit/export",
        "/v1/workspaces/{ws}/events",
        "/v1/oauth/callback",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    assert!(document["components"]["schemas"]["ConnectBody"].is_object());
    // The schedule's bounds are the domain's.
    let minutes = &document["components"]["schemas"]["ScheduleBody"]["properties"]["every_minutes"];
    assert_eq!(
        (minutes["minimum"].as_u64(), minutes["maximum"].as_u64()),
        (
            Some(u64::from(*domain::integration::SCHEDULE_MINUTES.start())),
            Some(u64::from(*domain::integration::SCHEDULE_MINUTES.end()))
        ),
        "{minutes}"
    );

    let id = "0192f1c4-6a8e-7cc1-9a4e-3c1d2b7e9f10";
    let mut checked = 0;
    for (path, item) in paths {
        let url = path
            .replace("{ws}", "acme")
            .replace("{id}", id)
            .replace("{action}", id)
            .replace("{rule}", id);
        for (method, operation) in item.as_object().unwrap() {
            let response = app
                .client
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{}{url}", app.address),
                )
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let documented: Vec<&String> =
                operation["responses"].as_object().unwrap().keys().collect();
            if path.starts_with("/v1/") && path != "/v1/oauth/callback" {
                assert_eq!(status, 401, "{method} {path} is not guarded by a token");
                assert!(
                    documented.iter().any(|s| *s == "401"),
                    "{method} {path}: {documented:?}"
                );
                assert!(
                    operation["security"].is_array(),
                    "{method} {path} names no security"
                );
            } else {
                assert!(
                    status != 404 && status != 405,
                    "{method} {path} is documented but not served ({status})"
                );
                assert!(
                    documented.iter().any(|s| **s == status.to_string()),
                    "{method} {path} answered {status}, which it does not document"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 33, "only {checked} operations");
}

/// Every operation that takes a JSON body documents the 415 it answers to any other body, and
/// answers it: a problem with the stable code `unsupported_media_type`.
#[tokio::test]
async fn every_operation_with_a_json_body_documents_and_answers_415() {
    let app = spawn_app().await;
    let (_, token) = app.token("acme", "ada", "admin").await;
    let document: Value = app.get_json("/openapi.json", None).await;
    let id = "0192f1c4-6a8e-7cc1-9a4e-3c1d2b7e9f10";
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation["requestBody"]["content"]["application/json"].is_null() {
                continue;
            }
            let refused = &operation["responses"]["415"];
            assert!(
                refused["content"]["application/problem+json"]["schema"].is_object(),
                "{method} {path} does not document 415: {}",
                operation["responses"]
            );
            let url = path
                .replace("{ws}", "acme")
                .replace("{id}", id)
                .replace("{action}", id)
                .replace("{rule}", id)
                .replace("{object}", "contacts");
            let response = app
                .client
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{}{url}", app.address),
                )
                .bearer_auth(&token)
                .header("content-type", "text/plain")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 415, "{method} {path}");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["code"], "unsupported_media_type", "{method} {path}");
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} operations take a JSON body");
}

/// Every operation that answers a body names its schema, and the service's real answers —
/// each kind of them, from a workspace with a connected, synced integration — match the schema
/// their operation documents for their status: a client generated from the document reads them.
#[tokio::test]
async fn every_answer_matches_the_schema_its_operation_documents() {
    use fakes::hubspot::FakeHubSpot;
    use reqwest::Method;

    use crate::helpers::{connect_hubspot, spawn_app_with, use_fake_hubspot};

    let hubspot = FakeHubSpot::start(3, 1).await.unwrap();
    let base = hubspot.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_hubspot(settings, &base)).await;
    let document: Value = app.get_json("/openapi.json", None).await;

    // Every answer with a body documents what is in it.
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('2') && status != "204" {
                    let content = response["content"].as_object();
                    assert!(
                        content.is_some_and(|content| content
                            .values()
                            .all(|c| c["schema"].is_object())),
                        "{method} {path} answers {status} without a schema: {response}"
                    );
                }
            }
        }
    }

    let (_, admin) = app.token("acme", "ada", "admin").await;
    let id = connect_hubspot(&app, &admin, "acme").await;
    let integration = format!("/v1/workspaces/acme/integrations/{id}");
    let (status, _) = check(
        &app,
        &document,
        &admin,
        Method::POST,
        "/v1/workspaces/{ws}/integrations/{id}/sync",
        &format!("{integration}/sync"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(20), "the sync to complete", || async {
        let runs = app
            .get_json(&format!("{integration}/sync-logs"), Some(&admin))
            .await;
        (runs["runs"][0]["status"] == "completed").then_some(())
    })
    .await;
    let (status, requested) = check(
        &app,
        &document,
        &admin,
        Method::POST,
        "/v1/workspaces/{ws}/integrations/{id}/actions",
        &format!("{integration}/actions"),
        Some(
            serde_json::json!({"tool": "update_contact", "arguments": {"id": "1", "properties": {"jobtitle": "CEO"}}}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{requested}");

    let gets = [
        ("/v1/apps", "/v1/apps".to_owned()),
        ("/v1/models", "/v1/models".to_owned()),
        ("/v1/me", "/v1/me".to_owned()),
        ("/healthz", "/healthz".to_owned()),
        ("/readyz", "/readyz".to_owned()),
        (
            "/v1/workspaces/{ws}/integrations",
            "/v1/workspaces/acme/integrations".to_owned(),
        ),
        ("/v1/workspaces/{ws}/integrations/{id}", integration.clone()),
        (
            "/v1/workspaces/{ws}/integrations/{id}/sync-logs",
            format!("{integration}/sync-logs"),
        ),
        (
            "/v1/workspaces/{ws}/integrations/{id}/history",
            format!("{integration}/history"),
        ),
        (
            "/v1/workspaces/{ws}/integrations/{id}/state",
            format!("{integration}/state"),
        ),
        (
            "/v1/workspaces/{ws}/integrations/{id}/verify",
            format!("{integration}/verify"),
        ),
        (
            "/v1/workspaces/{ws}/integrations/{id}/mappings",
            format!("{integration}/mappings?object=contacts"),
        ),
        (
            "/v1/workspaces/{ws}/integrations/{id}/actions",
            format!("{integration}/actions"),
        ),
        (
            "/v1/workspaces/{ws}/integrations/{id}/actions/{action}",
            format!(
                "{integration}/actions/{}",
                requested["action_id"].as_str().unwrap()
            ),
        ),
        (
            "/v1/workspaces/{ws}/approval-rules",
            "/v1/workspaces/acme/approval-rules".to_owned(),
        ),
    ];
    for (documented, url) in &gets {
        let (status, _) = check(&app, &document, &admin, Method::GET, documented, url, None).await;
        assert_eq!(status, 200, "GET {url}");
    }
    let writes = [
        (
            Method::POST,
            "/v1/workspaces/{ws}/integrations/{id}/test",
            format!("{integration}/test"),
            None,
        ),
        (
            Method::PUT,
            "/v1/workspaces/{ws}/integrations/{id}/schedule",
            format!("{integration}/schedule"),
            Some(serde_json::json!({"every_minutes": 60})),
        ),
        (
            Method::PUT,
            "/v1/workspaces/{ws}/integrations/{id}/mappings",
            format!("{integration}/mappings"),
            Some(serde_json::json!({"object": "contacts", "fields": [
                {"provider_field": "email", "harmony_field": "email"},
                {"provider_field": "firstname", "harmony_field": "first_name", "transform": "trim"}
            ]})),
        ),
        (
            Method::POST,
            "/v1/workspaces/{ws}/approval-rules",
            "/v1/workspaces/acme/approval-rules".to_owned(),
            Some(serde_json::json!({"app": "hubspot", "tool": "update_contact"})),
        ),
        (
            Method::POST,
            "/v1/workspaces/{ws}/integrations/{id}/actions/{action}/approve",
            format!(
                "{integration}/actions/{}/approve",
                requested["action_id"].as_str().unwrap()
            ),
            Some(serde_json::json!({"reason": "checked"})),
        ),
        (
            Method::POST,
            "/v1/workspaces/{ws}/integrations/{id}/reauth",
            format!("{integration}/reauth"),
            None,
        ),
        (
            Method::POST,
            "/v1/workspaces/{ws}/integrations/{id}/disconnect",
            format!("{integration}/disconnect"),
            None,
        ),
        (
            Method::POST,
            "/v1/workspaces/{ws}/integrations",
            "/v1/workspaces/acme/integrations".to_owned(),
            Some(serde_json::json!({"app": "hubspot"})),
        ),
    ];
    for (method, documented, url, body) in writes {
        let (status, answer) = check(
            &app,
            &document,
            &admin,
            method.clone(),
            documented,
            &url,
            body,
        )
        .await;
        assert!(
            (200..300).contains(&status),
            "{method} {url}: {status} {answer}"
        );
    }
}

/// Calls `url` and checks its answer against the schema `documented` names for the status it
/// answered; returns the status and the answer.
async fn check(
    app: &crate::helpers::TestApp,
    document: &Value,
    token: &str,
    method: reqwest::Method,
    documented: &str,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let response = app.call(method.clone(), url, token, body).await;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let operation = &document["paths"][documented][method.as_str().to_lowercase()];
    let schema =
        &operation["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {documented} documents no JSON body for {status}"
    );
    // The schema, resolved against the whole document (its `$ref`s point into it).
    let mut root = serde_json::Map::new();
    root.insert("components".into(), document["components"].clone());
    for (key, value) in schema.as_object().unwrap() {
        root.insert(key.clone(), value.clone());
    }
    let validator = jsonschema::validator_for(&Value::Object(root)).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&answer)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {url} ({status}) does not match its schema: {errors:?}\n{answer}"
    );
    (status, answer)
}

#[tokio::test]
async fn every_operation_documents_reading_your_own_writes() {
    let app = spawn_app().await;
    let document: Value = app.get_json("/openapi.json", None).await;
    let mut writes = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, operation) in item.as_object().unwrap() {
            let takes = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "Harmony-Min-Position" && p["in"] == "header");
            assert!(takes, "{method} {path} does not take Harmony-Min-Position");
            assert!(
                operation["responses"]["503"]["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("not_caught_up")),
                "{method} {path} does not document 503 not_caught_up"
            );
            if method == "get" {
                continue;
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('2') {
                    assert!(
                        response["headers"]["Harmony-Position"]["schema"].is_object(),
                        "{method} {path} {status} does not document Harmony-Position"
                    );
                }
            }
            writes += 1;
        }
    }
    assert!(writes >= 10, "only {writes} writing operations found");
}
