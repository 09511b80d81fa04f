//! The end of the OAuth2 popup: the provider's redirect back, finished only in the browser
//! that started the flow and while the token that started it is live.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::problem::{connect_problem, Problem};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// The authorization server's issuer identifier (RFC 9207), when it sends one: it must
    /// be the app's.
    iss: Option<String>,
}

/// The end of the OAuth2 popup: authenticated by its single-use `state`, it finishes the
/// connect (or reauth) and answers a small page that tells the page that opened the popup
/// (`window.opener.postMessage`) and closes itself; without an opener (popups blocked, or
/// the provider's opener policy) the page says the outcome in words.
#[utoipa::path(
    get,
    path = "/v1/oauth/callback",
    tag = "oauth",
    params(
        CallbackQuery
    ),
    responses(
        (status = 200, description = "Connected: a page that tells its opener and closes itself", body = String, content_type = "text/html"),
        (status = 400, description = "Not connected: the page says why", body = String, content_type = "text/html")
    ),
)]
pub(super) async fn oauth_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let outcome: Result<adapters::connections::Connected, String> =
        match (&query.state, &query.code, &query.error) {
            (flow, _, Some(error)) => {
                // A refused authorization is over: its state is spent.
                if let Some(flow) = flow {
                    let _ = state.services.connections.claim_callback(flow).await;
                }
                Err(format!(
                    "the provider refused the authorization: {}",
                    query.error_description.as_deref().unwrap_or(error)
                ))
            }
            (Some(flow), Some(code), None) => {
                finish_callback(&state, &headers, flow, code, query.iss.as_deref())
                    .await
                    .map_err(|problem| problem.detail)
            }
            _ => Err("the callback carries no state and code".to_owned()),
        };
    let (status, message) = match &outcome {
        Ok(connected) => (
            StatusCode::OK,
            json!({"type": "harmony-oauth", "ok": true,
                   "integration_id": connected.integration.to_string(),
                   "account_label": connected.identity.account_label}),
        ),
        Err(detail) => (
            StatusCode::BAD_REQUEST,
            json!({"type": "harmony-oauth", "ok": false, "error": detail}),
        ),
    };
    let words = match &outcome {
        Ok(connected) => format!(
            "Connected{}. You can close this window.",
            connected
                .identity
                .account_label
                .as_deref()
                .map(|label| format!(" as {label}"))
                .unwrap_or_default()
        ),
        Err(detail) => format!("Not connected: {detail}"),
    };
    // The message is JSON inside a script: `<` is escaped so no value can close the tag.
    let script_message = message.to_string().replace('<', "\\u003c");
    // Without an opener (no JavaScript on the console's side, or popups blocked), a way on.
    let onward = match &outcome {
        Ok(connected) => format!("/console/integrations/{}", connected.integration),
        Err(_) => "/console/installed".to_owned(),
    };
    // The outcome travels in a data block (never executed); a script file of the console's
    // tells the opener, since the pages allow no inline script.
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Harmony</title></head>\
         <body><p id=\"outcome\">{}</p><p><a href=\"{onward}\">Back to Harmony</a></p>\
         <script type=\"application/json\" id=\"harmony-oauth\">{script_message}</script>\
         <script src=\"/console/oauth-callback.js\"></script></body></html>",
        html_escape(&words)
    );
    (
        status,
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

/// Finishes the flow a callback names: only in the browser that started it, and only while
/// the API token that started it is live (acting with its role now).
async fn finish_callback(
    state: &AppState,
    headers: &HeaderMap,
    flow: &str,
    code: &str,
    iss: Option<&str>,
) -> Result<adapters::connections::Connected, Problem> {
    use adapters::oauth::CallbackError;
    let connections = &state.services.connections;
    let claimed = connections
        .claim_callback(flow)
        .await
        .map_err(connect_problem)?;
    let browser = crate::cookies::named(headers, crate::cookies::BROWSER);
    if !claimed.started_in(browser.as_deref()) {
        return Err(connect_problem(CallbackError::OtherBrowser.into()));
    }
    let caller = crate::tokens::authenticate_hash(&state.db, &claimed.pending.token)
        .await
        .map_err(|error| Problem::failed("cannot check an API token", &error))?
        .ok_or_else(|| connect_problem(CallbackError::Revoked.into()))?;
    connections
        .finish_oauth(claimed, code, iss, caller.principal)
        .await
        .map_err(connect_problem)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
