//! The OpenAPI document: generated from the handlers (a route is registered only with its
//! description), OpenAPI 3.1, and every path and method in it is served by the route it
//! describes — asked without a token, each `/v1` route answers 401, never 404 or 405.

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
