//! Marketplace > Apps and Models, who the token speaks for, and the personal routes that
//! have no workspace.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use domain::catalog::{App, Model};
use serde::Serialize;

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
        (status = 200, description = "Every app, with `available` and, when not, `unavailable_reason`", body = Apps),
        crate::problem::CallerRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn apps(State(state): State<AppState>, _caller: Caller) -> Json<Apps> {
    let apps = domain::catalog::apps()
        .iter()
        .map(|app| {
            let reason = state.services.connections.unavailable(app.id);
            AppEntry {
                app,
                available: reason.is_none(),
                unavailable_reason: reason.map(str::to_owned),
            }
        })
        .collect();
    Json(Apps { apps })
}

/// Marketplace > Apps.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Apps {
    apps: Vec<AppEntry>,
}

/// One app of the catalog, and whether this service can connect it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AppEntry {
    #[serde(flatten)]
    app: &'static App,
    /// False for an OAuth2 app whose client this service has not been given.
    available: bool,
    /// Why it is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    unavailable_reason: Option<String>,
}

/// Marketplace > Models.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "catalog",
    responses(
        (status = 200, description = "The Models tab", body = Models),
        crate::problem::CallerRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn models(_caller: Caller) -> Json<Models> {
    Json(Models {
        models: domain::catalog::models(),
    })
}

/// Marketplace > Models.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Models {
    models: &'static [Model],
}

/// Who the token speaks for.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "catalog",
    responses(
        (status = 200, description = "The user, workspace and role of the token", body = Me),
        crate::problem::CallerRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn me(Caller(principal, _): Caller) -> Json<Me> {
    Json(Me {
        user: principal.user.to_string(),
        workspace: principal.workspace.to_string(),
        role: principal.role.to_string(),
    })
}

/// Who a token speaks for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Me {
    user: String,
    workspace: String,
    /// `admin`, `member` or `auditor`.
    role: String,
}
