//! Marketplace > Apps and Models, who the token speaks for, and the personal routes that
//! have no workspace.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::Caller;
use crate::problem::Problem;
use crate::AppState;

/// The same refusal for a connect sent to the personal route.
#[utoipa::path(
    post,
    path = "/v1/me/integrations",
    tag = "integrations",
    responses(
        (status = 401, description = "No live API token", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The Marketplace is only inside a workspace", body = crate::problem::ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn personal_write(caller: Caller) -> Problem {
    personal_route(caller).await
}

/// The Marketplace lives in workspaces: a personal route has none.
#[utoipa::path(
    get,
    path = "/v1/me/integrations",
    tag = "integrations",
    responses(
        (status = 401, description = "No live API token", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited: see Retry-After", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A rule of the current state refuses it", body = crate::problem::ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn personal_route(_caller: Caller) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "workspace_required",
        "the Marketplace is available only inside an organization workspace: switch to a \
         workspace first",
    )
}

/// Marketplace > Apps: every app with its category, scope, authentication, setup fields, the
/// access it asks for and its capabilities; `available` is false, with the reason, for an
/// OAuth2 app whose client this service has not been given.
#[utoipa::path(
    get,
    path = "/v1/apps",
    tag = "catalog",
    responses(
        (status = 200, description = "Every app, with `available` and, when not, `unavailable_reason`"),
        crate::problem::CallerRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn apps(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let apps: Vec<Value> = domain::catalog::apps()
        .iter()
        .map(|app| {
            let mut entry = serde_json::to_value(app).unwrap_or(Value::Null);
            let reason = state.workers.connections.unavailable(app.id);
            entry["available"] = json!(reason.is_none());
            if let Some(reason) = reason {
                entry["unavailable_reason"] = json!(reason);
            }
            entry
        })
        .collect();
    Json(json!({ "apps": apps }))
}

/// Marketplace > Models.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "catalog",
    responses(
        (status = 200, description = "The Models tab"),
        crate::problem::CallerRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn models(_caller: Caller) -> Json<Value> {
    Json(json!({ "models": domain::catalog::models() }))
}

/// Who the token speaks for.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "catalog",
    responses(
        (status = 200, description = "The user, workspace and role of the token"),
        crate::problem::CallerRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn me(Caller(principal, _): Caller) -> Json<Value> {
    Json(json!({
        "user": principal.user.to_string(),
        "workspace": principal.workspace.to_string(),
        "role": principal.role.to_string(),
    }))
}
