//! Field mappings and Companion actions over HTTP, against the fake HubSpot: mappings are
//! checked against the provider's fields (custom ones included) and versioned; a sensitive
//! tool waits for an admin's approval unless a workspace rule approves it; bad bodies are
//! refused with the field named.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use eventstore::waiting::eventually;
use fakes::hubspot::FakeHubSpot;

use crate::helpers::{connect_hubspot, spawn_app_with, use_fake_hubspot, TestApp};

async fn send(app: &TestApp, method: Method, path: &str, token: &str, body: Value) -> (u16, Value) {
    let response = app.call(method, path, token, Some(body)).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn mappings_are_checked_against_the_providers_fields_and_versioned() {
    let hubspot = FakeHubSpot::start(2, 0).await.unwrap();
    hubspot.add_custom_property("shoe_size");
    let base = hubspot.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_hubspot(settings, &base)).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, member) = app.token("acme", "bob", "member").await;
    let id = connect_hubspot(&app, &admin, "acme").await;
    let path = format!("/v1/workspaces/acme/integrations/{id}/mappings");

    let mappings = app
        .get_json(&format!("{path}?object=contacts"), Some(&member))
        .await;
    assert_eq!(mappings["version"], 0);
    let contacts = mappings["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object"] == "contacts")
        .cloned()
        .unwrap();
    assert!(contacts["harmony_fields"]
        .as_array()
        .unwrap()
        .contains(&json!("title")));
    let provider_fields = mappings["provider_fields"]["fields"].as_array().unwrap();
    assert!(
        provider_fields.contains(&json!("shoe_size")),
        "read from the provider now: {mappings}"
    );

    let change = |fields: Value, expected: Option<u32>| {
        let mut body = json!({"object": "contacts", "fields": fields});
        if let Some(expected) = expected {
            body["expected_version"] = json!(expected);
        }
        body
    };
    // A member without the permission changes nothing.
    let (status, body) = send(
        &app,
        Method::PUT,
        &path,
        &member,
        change(
            json!([{"provider_field": "email", "harmony_field": "email"}]),
            None,
        ),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    // A field the provider does not have is named.
    let (status, body) = send(
        &app,
        Method::PUT,
        &path,
        &admin,
        change(
            json!([{"provider_field": "hat_size", "harmony_field": "title"}]),
            None,
        ),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_mapping"))
    );
    assert!(
        body["detail"].as_str().unwrap().contains("hat_size"),
        "{body}"
    );
    // The custom field the provider has is fine, and the version moves.
    let (status, body) = send(
        &app,
        Method::PUT,
        &path,
        &admin,
        change(
            json!([{"provider_field": "shoe_size", "harmony_field": "title", "transform": "trim"}]),
            Some(0),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    // A change made against the old version is refused, not silently applied.
    let (status, body) = send(
        &app,
        Method::PUT,
        &path,
        &admin,
        change(
            json!([{"provider_field": "email", "harmony_field": "email"}]),
            Some(0),
        ),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("mapping_version"))
    );
    let mappings = app.get_json(&path, Some(&admin)).await;
    assert_eq!(mappings["version"], 1);
    let contacts = mappings["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object"] == "contacts")
        .cloned()
        .unwrap();
    assert_eq!(contacts["fields"][0]["provider_field"], "shoe_size");
    assert_eq!(contacts["fields"][0]["transform"], "trim");

    // Bodies: an unknown key and a wrong type are named; too large a body is refused.
    let (status, body) = send(
        &app,
        Method::PUT,
        &path,
        &admin,
        json!({"object": "contacts", "fields": [], "colour": "red"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_body")));
    assert!(
        body["detail"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    let (status, body) = send(
        &app,
        Method::PUT,
        &path,
        &admin,
        json!({"object": "contacts", "fields": [{"provider_field": 7, "harmony_field": "email"}]}),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["detail"].as_str().unwrap().contains("provider_field"),
        "{body}"
    );
    let huge = "x".repeat(400 * 1024);
    let (status, body) = send(
        &app,
        Method::PUT,
        &path,
        &admin,
        json!({"object": huge, "fields": []}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let response = app
        .client
        .put(format!("{}{path}", app.address))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"object\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "malformed_json");
}

#[tokio::test]
async fn a_sensitive_tool_waits_for_approval_unless_a_rule_approves_it() {
    let hubspot = FakeHubSpot::start(2, 0).await.unwrap();
    let base = hubspot.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_hubspot(settings, &base)).await;
    let (_, admin) = app.token("acme", "ada", "admin").await;
    let (_, member) = app.token("acme", "bob", "member").await;
    let (_, auditor) = app.token("acme", "eve", "auditor").await;
    let id = connect_hubspot(&app, &admin, "acme").await;
    let actions = format!("/v1/workspaces/acme/integrations/{id}/actions");
    let wait_for = |action: String, status: &'static str| {
        let path = format!("{actions}/{action}");
        let app = &app;
        let admin = admin.clone();
        async move {
            eventually(
                Duration::from_secs(20),
                "the action reaches its status",
                || async {
                    let answer = app.get_json(&path, Some(&admin)).await;
                    (answer["status"] == status).then_some(answer)
                },
            )
            .await
        }
    };

    // Not sensitive: performed at once, on the member's request.
    let (status, body) = send(
        &app,
        Method::POST,
        &actions,
        &member,
        json!({"tool": "create_contact", "arguments": {"properties": {"email": "new@acme.com"}}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let created = wait_for(body["action_id"].as_str().unwrap().to_owned(), "completed").await;
    let contact = created["result"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["requested_by"], "bob");

    // Sensitive: it waits. A member without the permission cannot approve it; an admin can.
    let update = json!({"tool": "update_contact",
                        "arguments": {"id": contact, "properties": {"jobtitle": "CEO"}}});
    let (status, body) = send(&app, Method::POST, &actions, &member, update.clone()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "awaiting_approval");
    let waiting = body["action_id"].as_str().unwrap().to_owned();
    let open = app.get_json(&actions, Some(&admin)).await;
    assert_eq!(open["actions"][0]["action_id"], waiting.as_str());
    let (status, _) = send(
        &app,
        Method::POST,
        &format!("{actions}/{waiting}/approve"),
        &member,
        json!({}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(&app, Method::POST, &actions, &auditor, update.clone()).await;
    assert_eq!(status, 403, "auditors only read");
    let (status, body) = send(
        &app,
        Method::POST,
        &format!("{actions}/{waiting}/approve"),
        &admin,
        json!({"reason": "asked for by the customer"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let done = wait_for(waiting.clone(), "completed").await;
    assert_eq!(done["approved_by"]["user"], "ada");
    let (status, body) = send(
        &app,
        Method::POST,
        &format!("{actions}/{waiting}/reject"),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("action_state")));

    // Rejected: never performed.
    let (_, body) = send(&app, Method::POST, &actions, &member, update.clone()).await;
    let rejected = body["action_id"].as_str().unwrap().to_owned();
    let (status, body) = send(
        &app,
        Method::POST,
        &format!("{actions}/{rejected}/reject"),
        &admin,
        json!({"reason": "not now"}),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("rejected")));

    // A workspace rule approves the tool from now on; removing it asks again.
    let rules = "/v1/workspaces/acme/approval-rules";
    let (status, body) = send(
        &app,
        Method::POST,
        rules,
        &member,
        json!({"app": "hubspot", "tool": "update_contact"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = send(
        &app,
        Method::POST,
        rules,
        &admin,
        json!({"app": "hubspot", "tool": "search_contacts"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("rule_for_insensitive_tool"))
    );
    let (status, body) = send(
        &app,
        Method::POST,
        rules,
        &admin,
        json!({"app": "hubspot", "tool": "update_contact"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let rule = body["rule_id"].as_str().unwrap().to_owned();
    let listed = app.get_json(rules, Some(&member)).await;
    assert_eq!(listed["rules"][0]["rule_id"], rule.as_str());
    let (status, body) = send(&app, Method::POST, &actions, &member, update.clone()).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("approved")));
    let auto = wait_for(body["action_id"].as_str().unwrap().to_owned(), "completed").await;
    assert_eq!(auto["approved_by"]["kind"], "rule");
    let removed = app
        .call(Method::DELETE, &format!("{rules}/{rule}"), &admin, None)
        .await;
    assert_eq!(removed.status(), 204);
    let (_, body) = send(&app, Method::POST, &actions, &member, update).await;
    assert_eq!(body["status"], "awaiting_approval");

    // An unknown tool is refused in words.
    let (status, body) = send(
        &app,
        Method::POST,
        &actions,
        &member,
        json!({"tool": "delete_everything"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("unknown_tool")));
}
