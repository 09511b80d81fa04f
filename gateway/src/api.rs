//! The Marketplace API under `/v1`: who is calling (bearer API tokens), and the catalog —
//! Marketplace > Apps with what each app needs and whether it can be connected here, and the
//! Models tab.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use domain::Principal;
use serde_json::{json, Value};

use crate::problem::Problem;
use crate::AppState;

/// The caller of a `/v1` route: the principal its bearer token speaks for.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                Problem::unauthorized("an API token is needed: Authorization: Bearer <token>")
            })?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        match crate::tokens::authenticate(&state.read, presented).await {
            Ok(Some(principal)) => Ok(Caller(principal)),
            Ok(None) => Err(Problem::unauthorized(
                "the API token is unknown or was revoked",
            )),
            Err(error) => {
                tracing::error!(%error, "cannot check an API token");
                Err(Problem::internal())
            }
        }
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apps", get(apps))
        .route("/v1/models", get(models))
        .route("/v1/me", get(me))
}

/// Marketplace > Apps: every app with its category, scope, authentication, setup fields, the
/// access it asks for and its capabilities; `available` is false, with the reason, for an
/// OAuth2 app whose client this service has not been given.
async fn apps(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let apps: Vec<Value> = domain::catalog::apps()
        .iter()
        .map(|app| {
            let mut entry = serde_json::to_value(app).unwrap_or(Value::Null);
            let reason = state.adapters.unavailable.get(app.id);
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
async fn models(_caller: Caller) -> Json<Value> {
    Json(json!({ "models": domain::catalog::models() }))
}

/// Who the token speaks for.
async fn me(Caller(principal): Caller) -> Json<Value> {
    Json(json!({
        "user": principal.user.to_string(),
        "workspace": principal.workspace.to_string(),
        "role": principal.role.to_string(),
    }))
}
