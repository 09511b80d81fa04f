//! The admin console at `/console`: Marketplace > Apps, Installed and Models, an app's page, an
//! integration's page with the actions its provider, its state and the caller's role allow,
//! its mappings, sync logs and history. Server-rendered (maud), readable without
//! JavaScript; `console.js` adds the OAuth popup and live status over the event stream.
//! Every change goes through the same services and rules as the API; every form carries the
//! session's CSRF token.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use domain::aggregate::CommandContext;
use domain::catalog::{self, AppScope, AuthKind};
use domain::{Caller as DomainCaller, Integration, IntegrationId, Timestamp};
use maud::{html, Markup};
use projections::installed::InstalledRow;
use serde::Deserialize;

use crate::problem::Problem;
use crate::service::Connecting;
use crate::AppState;

mod session;
mod views;

use session::Session;
use views::{csrf, page, status_badge, Flash, Tab};

type Fields = HashMap<String, String>;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/installed") }),
        )
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(stylesheet))
        .route("/console/oauth-callback.js", get(callback_script))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/apps", get(apps))
        .route("/console/apps/{app}", get(app_page))
        .route("/console/apps/{app}/connect", post(connect))
        .route("/console/installed", get(installed))
        .route("/console/models", get(models))
        .route("/console/events", get(events))
        .route("/console/integrations/{id}", get(detail))
        .route("/console/integrations/{id}/status", get(status))
        .route("/console/integrations/{id}/test", post(test))
        .route("/console/integrations/{id}/sync", post(sync))
        .route("/console/integrations/{id}/reauth", post(reauth))
        .route(
            "/console/integrations/{id}/disconnect",
            get(confirm_disconnect).post(disconnect),
        )
        .route(
            "/console/integrations/{id}/delete",
            get(confirm_delete).post(delete),
        )
        .route(
            "/console/integrations/{id}/mappings",
            get(mappings).post(save_mapping),
        )
        .route("/console/integrations/{id}/sync-logs", get(sync_logs))
        .route("/console/integrations/{id}/history", get(history))
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("console.js"),
    )
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("console.css"),
    )
}

/// The OAuth callback page's script: a file of its own, since the pages allow no inline script.
async fn callback_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("oauth-callback.js"),
    )
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Back to `path` with a notice.
fn notice(path: &str, text: &str) -> Response {
    Redirect::to(&format!("{path}?notice={}", encode(text))).into_response()
}

/// Back to `path` with an error in words.
fn refused(path: &str, problem: &Problem) -> Response {
    Redirect::to(&format!("{path}?error={}", encode(&problem.detail))).into_response()
}

fn context(session: &Session) -> CommandContext {
    CommandContext::new(
        DomainCaller::User(session.principal.clone()),
        Timestamp::now(),
    )
}

fn html_page(markup: Markup) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], markup).into_response()
}

fn error_page(session: &Session, status: StatusCode, problem: &Problem) -> Response {
    let body = page(
        "Not possible",
        Some(session),
        Tab::None,
        &Flash {
            notice: None,
            error: Some(&problem.detail),
        },
        html! { p { a href="/console/installed" { "Back to Installed" } } },
    );
    (status, body).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct FlashQuery {
    notice: Option<String>,
    error: Option<String>,
}

impl FlashQuery {
    fn flash(&self) -> Flash<'_> {
        Flash {
            notice: self.notice.as_deref(),
            error: self.error.as_deref(),
        }
    }
}

/// The sign-in page, with a fresh CSRF token for its form (also set as a cookie).
fn sign_in_form(status: StatusCode, error: Option<&str>, secure: bool) -> Response {
    let nonce = session::random();
    let cookie = crate::cookies::set(session::SIGN_IN_COOKIE, &nonce, "/console", 1800, secure);
    (
        status,
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        views::sign_in(&nonce, error),
    )
        .into_response()
}

async fn sign_in_page(State(state): State<AppState>) -> Response {
    sign_in_form(StatusCode::OK, None, state.secure_cookies)
}

async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    let expected = session::named_cookie(&headers, session::SIGN_IN_COOKIE);
    if expected.is_none() || expected.as_ref() != form.get("csrf") {
        return sign_in_form(
            StatusCode::FORBIDDEN,
            Some("This sign-in form is stale or did not come from the console: try again."),
            state.secure_cookies,
        );
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    match session::sign_in(&state, token).await {
        Ok(cookie) => (
            [(header::SET_COOKIE, cookie)],
            Redirect::to("/console/installed"),
        )
            .into_response(),
        Err(session::SignInRefused::Unknown) => sign_in_form(
            StatusCode::UNAUTHORIZED,
            Some("That token is unknown or was revoked."),
            state.secure_cookies,
        ),
        Err(session::SignInRefused::RateLimited(wait)) => {
            let mut answer = sign_in_form(
                StatusCode::TOO_MANY_REQUESTS,
                Some("This token has made too many requests: wait a moment and sign in again."),
                state.secure_cookies,
            );
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            answer
        }
        Err(session::SignInRefused::Db(error)) => {
            Problem::failed("cannot start a console session", &error).into_response()
        }
    }
}

async fn sign_out(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    if !session.csrf_ok(form.get("csrf")) {
        return forged(&session);
    }
    let id = session::named_cookie(&headers, session::COOKIE);
    match session::sign_out(&state.db, id.as_deref(), state.secure_cookies).await {
        Ok(cookie) => (
            [(header::SET_COOKIE, cookie)],
            Redirect::to("/console/sign-in"),
        )
            .into_response(),
        Err(error) => Problem::failed("cannot end a console session", &error).into_response(),
    }
}

fn forged(session: &Session) -> Response {
    error_page(
        session,
        StatusCode::FORBIDDEN,
        &Problem::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "this form is stale or did not come from the console: reload the page and try again",
        ),
    )
}

fn scope_words(scope: AppScope) -> &'static str {
    match scope {
        AppScope::Workspace => "Workspace integration: connected by an admin or a member with the integration permission, for the whole organization",
        AppScope::Personal => "Personal integration: connected by each user, for their own account; nobody else sees it",
    }
}

async fn apps(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<FlashQuery>,
) -> Response {
    let body = html! {
        h1 { "Apps" }
        ul.cards {
            @for app in catalog::apps() {
                li.card {
                    h2 { a href={"/console/apps/" (app.id)} { (app.name) } }
                    p { (format!("{:?}", app.category)) " · " @if app.scope == AppScope::Workspace { "workspace" } @else { "personal" } }
                    @if let Some(reason) = state.services.connections.unavailable(app.id) {
                        p.hint { "Unavailable here: " (reason) }
                    }
                }
            }
        }
    };
    html_page(page("Apps", Some(&session), Tab::Apps, &q.flash(), body))
}

async fn models(session: Session, Query(q): Query<FlashQuery>) -> Response {
    let models = serde_json::to_value(catalog::models()).unwrap_or_default();
    let body = html! {
        h1 { "Models" }
        ul.cards {
            @for model in models.as_array().into_iter().flatten() {
                li.card {
                    h2 { (model["name"].as_str().unwrap_or_default()) }
                    p { (model["provider"].as_str().unwrap_or_default()) }
                    @if let Some(about) = model["description"].as_str() { p.hint { (about) } }
                }
            }
        }
    };
    html_page(page(
        "Models",
        Some(&session),
        Tab::Models,
        &q.flash(),
        body,
    ))
}

async fn app_page(
    State(state): State<AppState>,
    session: Session,
    Path(app): Path<String>,
    Query(q): Query<FlashQuery>,
) -> Response {
    let Some(app) = catalog::app(&app) else {
        return error_page(
            &session,
            StatusCode::NOT_FOUND,
            &Problem::new(
                StatusCode::NOT_FOUND,
                "unknown_app",
                format!("there is no app {app}"),
            ),
        );
    };
    let unavailable = state.services.connections.unavailable(app.id);
    let access = serde_json::to_value(app).unwrap_or_default();
    let body = html! {
        h1 { (app.name) }
        p { strong { (scope_words(app.scope)) } }
        h2 { "What it needs" }
        ul {
            @for item in access["access"].as_array().into_iter().flatten() {
                li { (item.as_str().map(str::to_owned).unwrap_or_else(|| item.to_string())) }
            }
            @if let AuthKind::Oauth2 { scopes, .. } = &app.auth {
                li { "OAuth scopes: " code { (scopes.join(" ")) } }
            }
        }
        h2 { "Connect" }
        @if let Some(reason) = unavailable {
            p.error { "Unavailable here: " (reason) }
        } @else {
            form method="post" action={"/console/apps/" (app.id) "/connect"} data-oauth=[matches!(app.auth, AuthKind::Oauth2 { .. }).then_some("")] data-app=(app.id) {
                (csrf(&session))
                @for field in app.setup_fields {
                    label for=(field.name) { (field.label) }
                    input id=(field.name) name=(field.name) type=(if field.is_secret() { "password" } else { "text" }) required[field.required] autocomplete="off";
                }
                @if matches!(app.auth, AuthKind::Oauth2 { .. }) {
                    p.hint { "A window from " (app.name) " asks you to sign in and approve Harmony. If it does not appear, allow popups for Harmony in your browser and try again." }
                }
                p #oauth-notice role="status" {}
                button type="submit" { "Connect " (app.name) }
            }
        }
    };
    html_page(page(app.name, Some(&session), Tab::Apps, &q.flash(), body))
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

async fn connect(
    State(state): State<AppState>,
    session: Session,
    browser: crate::cookies::Browser,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    Form(mut form): Form<Fields>,
) -> Response {
    let json = wants_json(&headers);
    let back = format!("/console/apps/{app_id}");
    if !session.csrf_ok(form.get("csrf")) {
        return forged(&session);
    }
    form.remove("csrf");
    let cookie = [(header::SET_COOKIE, browser.cookie())];
    let fields = form.into_iter().collect();
    match crate::service::connect(&state, &session.caller(), &browser, &app_id, fields).await {
        Ok(Connecting::Connected(connected)) => notice(
            &format!("/console/integrations/{}", connected.integration),
            "Connected",
        ),
        Ok(Connecting::Authorize(url)) if json => (
            cookie,
            axum::Json(serde_json::json!({ "authorization_url": url.to_string() })),
        )
            .into_response(),
        // Without JavaScript the whole window goes to the provider and back.
        Ok(Connecting::Authorize(url)) => (cookie, Redirect::to(url.as_str())).into_response(),
        Err(problem) if json => problem.into_response(),
        Err(problem) => refused(&back, &problem),
    }
}

async fn installed(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<FlashQuery>,
) -> Response {
    let principal = &session.principal;
    let rows = match projections::installed::list(
        &state.db,
        principal.workspace.as_str(),
        principal.user.as_str(),
    )
    .await
    {
        Ok(rows) => rows,
        Err(error) => {
            return Problem::failed("cannot read Installed", &error).into_response();
        }
    };
    let body = html! {
        h1 { "Installed" }
        @if rows.is_empty() {
            p { "Nothing is connected yet. " a href="/console/apps" { "Browse the apps" } "." }
        } @else {
            div.table {
                table {
                    thead { tr { th scope="col" { "App" } th scope="col" { "Scope" } th scope="col" { "Status" } th scope="col" { "Last sync" } } }
                    tbody {
                        @for row in &rows {
                            tr {
                                td { a href={"/console/integrations/" (row.integration_id)} { (catalog::app(&row.app).map_or(row.app.as_str(), |a| a.name)) } }
                                td { (row.scope) }
                                td { (status_badge(&row.status)) }
                                td { (row.last_sync_at.as_deref().unwrap_or("never")) }
                            }
                        }
                    }
                }
            }
        }
    };
    html_page(page(
        "Installed",
        Some(&session),
        Tab::Installed,
        &q.flash(),
        body,
    ))
}

/// The integration as the caller may see it, folded from its history (so a page right after
/// a change shows it, whatever the read model's lag).
async fn visible(
    state: &AppState,
    session: &Session,
    id: &str,
) -> Result<(IntegrationId, Integration, InstalledRow), Response> {
    let failed = |problem: Problem| error_page(session, problem.status, &problem);
    let id: IntegrationId = crate::caller::integration_id(id).map_err(failed)?;
    let current = crate::service::load_visible(state, &session.caller(), id)
        .await
        .map_err(failed)?;
    let row = projections::installed::row_of(&current)
        .ok_or_else(|| failed(crate::problem::not_found(id)))?;
    Ok((id, current, row))
}

/// Whether the session's user may change this integration: the domain's own rule.
fn may_manage(session: &Session, current: &Integration) -> bool {
    current.manageable_by(&DomainCaller::User(session.principal.clone()))
}

fn action_form(session: &Session, id: IntegrationId, action: &str, label: &str) -> Markup {
    html! {
        form method="post" action={"/console/integrations/" (id) "/" (action)} {
            (csrf(session))
            button type="submit" { (label) }
        }
    }
}

async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<FlashQuery>,
) -> Response {
    let (id, current, row) = match visible(&state, &session, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let app = catalog::app(&row.app);
    let name = app.map_or(row.app.as_str(), |a| a.name);
    let can = |action: &str| row.actions.iter().any(|a| a == action);
    let manage = may_manage(&session, &current);
    let oauth = app.is_some_and(|a| matches!(a.auth, AuthKind::Oauth2 { .. }));
    let body = html! {
        h1 { (name) }
        p { (app.map_or("", |a| scope_words(a.scope))) }
        div data-live-integration=(id) aria-live="polite" { (views::status(&row)) }
        nav.actions aria-label="Pages" {
            @if row.scope == "workspace" { a.button href={"/console/integrations/" (id) "/sync-logs"} { "Sync logs" } }
            a.button href={"/console/integrations/" (id) "/history"} { "History" }
            @if can("mappings") { a.button href={"/console/integrations/" (id) "/mappings"} { "Mappings" } }
        }
        @if manage {
            h2 { "Actions" }
            div.actions {
                @if can("test") { (action_form(&session, id, "test", "Test the connection")) }
                @if can("sync") { (action_form(&session, id, "sync", "Full sync")) }
                @if can("reauth") {
                    @if oauth {
                        form method="post" action={"/console/integrations/" (id) "/reauth"} data-oauth="" data-integration=(id) {
                            (csrf(&session))
                            button type="submit" { "Re-authenticate" }
                        }
                    } @else {
                        form method="post" action={"/console/integrations/" (id) "/reauth"} {
                            (csrf(&session))
                            @for field in app.map(|a| a.setup_fields).unwrap_or_default().iter().filter(|f| f.is_secret()) {
                                label for={"reauth-" (field.name)} { "New " (field.label) }
                                input id={"reauth-" (field.name)} name=(field.name) type="password" required autocomplete="off";
                            }
                            button type="submit" { "Re-authenticate" }
                        }
                    }
                }
                @if can("disconnect") { a.button.danger href={"/console/integrations/" (id) "/disconnect"} { "Disconnect…" } }
                @if can("delete") { a.button.danger href={"/console/integrations/" (id) "/delete"} { "Delete…" } }
            }
            p #oauth-notice role="status" {}
        } @else {
            p.hint { "You can look but not change it: " @if row.owner.is_some() { "it is another user's personal integration." } @else { "changing workspace integrations needs an admin or the integration permission." } }
        }
    };
    html_page(page(name, Some(&session), Tab::Installed, &q.flash(), body))
}

async fn status(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    match visible(&state, &session, &id).await {
        Ok((_, _, row)) => html_page(views::status(&row)),
        Err(response) => response,
    }
}

/// The integration a form on its page acts on, once the form's CSRF token is the session's;
/// otherwise the page that says why not.
fn checked(session: &Session, id: &str, form: &Fields) -> Result<IntegrationId, Box<Response>> {
    if !session.csrf_ok(form.get("csrf")) {
        return Err(Box::new(forged(session)));
    }
    id.parse().map_err(|_| {
        Box::new(refused(
            "/console/installed",
            &Problem::new(StatusCode::NOT_FOUND, "not_found", "no such integration"),
        ))
    })
}

/// The plain buttons of an integration's page, each the API's handler of the same name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    Test,
    Sync,
    Disconnect,
    Delete,
}

/// Runs `act` for a console form and answers a redirect with a notice, or with the refusal in
/// words: back to the integration, or to Installed once it is deleted.
async fn act(state: AppState, session: Session, id: String, form: &Fields, act: Act) -> Response {
    let parsed = match checked(&session, &id, form) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let caller = session.caller();
    let (outcome, done) = match act {
        Act::Test => (
            crate::service::test(&state, &caller, parsed)
                .await
                .map(drop),
            "The connection works",
        ),
        Act::Sync => (
            crate::service::request_sync(
                &state,
                &caller,
                parsed,
                domain::integration::SyncKind::Full,
            )
            .await
            .map(drop),
            "Full sync requested",
        ),
        Act::Disconnect => (
            crate::service::disconnect(&state, &caller, parsed)
                .await
                .map(drop),
            "Disconnected",
        ),
        Act::Delete => (
            crate::service::delete(&state, &caller, parsed).await,
            "Deleted",
        ),
    };
    let back = format!("/console/integrations/{id}");
    match outcome {
        Ok(()) if act == Act::Delete => notice("/console/installed", done),
        Ok(()) => notice(&back, done),
        Err(problem) => refused(&back, &problem),
    }
}

async fn test(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    act(state, session, id, &form, Act::Test).await
}

async fn sync(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    act(state, session, id, &form, Act::Sync).await
}

async fn reauth(
    State(state): State<AppState>,
    session: Session,
    browser: crate::cookies::Browser,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(mut form): Form<Fields>,
) -> Response {
    let parsed = match checked(&session, &id, &form) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    form.remove("csrf");
    let back = format!("/console/integrations/{id}");
    let answer = crate::service::reauth(
        &state,
        &session.caller(),
        &browser,
        parsed,
        form.into_iter().collect(),
    )
    .await;
    let cookie = [(header::SET_COOKIE, browser.cookie())];
    match answer {
        Ok(Connecting::Authorize(url)) if wants_json(&headers) => (
            cookie,
            axum::Json(serde_json::json!({ "authorization_url": url.to_string() })),
        )
            .into_response(),
        Ok(Connecting::Authorize(url)) => (cookie, Redirect::to(url.as_str())).into_response(),
        Ok(Connecting::Connected(_)) => notice(&back, "Re-authenticated"),
        Err(problem) if wants_json(&headers) => problem.into_response(),
        Err(problem) => refused(&back, &problem),
    }
}

/// The confirmation page of a destructive button: what it removes, and that the provider's
/// data stays.
async fn confirm(state: AppState, session: Session, id: String, act: Act) -> Response {
    let (id, row) = match visible(&state, &session, &id).await {
        Ok((id, _, row)) => (id, row),
        Err(response) => return response,
    };
    let (action, button, what) = match act {
        Act::Disconnect => (
            "disconnect",
            "Disconnect",
            "Disconnecting stops future syncs, revokes Harmony's access at the provider where it \
             allows it, and removes the connection's configuration. The integration stays in \
             Installed with its history, mappings and sync logs, and can be connected again.",
        ),
        _ => (
            "delete",
            "Delete",
            "Deleting removes the integration from Installed, destroys its stored credentials \
             for good and purges the records it synced into Harmony. Its history stays, for \
             auditors.",
        ),
    };
    let name = catalog::app(&row.app).map_or(row.app.as_str(), |a| a.name);
    let body = html! {
        h1 { (button) " " (name) "?" }
        p { (what) }
        p { "It does not delete any data in " (name) " itself." }
        div.actions {
            form method="post" action={"/console/integrations/" (id) "/" (action)} {
                (csrf(&session))
                button.danger type="submit" { (button) }
            }
            a.button href={"/console/integrations/" (id)} { "Cancel" }
        }
    };
    let flash = Flash {
        notice: None,
        error: None,
    };
    html_page(page(button, Some(&session), Tab::Installed, &flash, body))
}

async fn confirm_disconnect(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    confirm(state, session, id, Act::Disconnect).await
}

async fn disconnect(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    act(state, session, id, &form, Act::Disconnect).await
}

async fn confirm_delete(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    confirm(state, session, id, Act::Delete).await
}

async fn delete(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    act(state, session, id, &form, Act::Delete).await
}

/// The event stream for the console's live parts: the API's stream, for the signed-in user.
async fn events(
    state: State<AppState>,
    session: Session,
    query: crate::api::query::Query<crate::api::EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let ws = session.principal.workspace.to_string();
    match crate::api::events(state, session.caller(), Path(ws), query, headers).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

mod pages;
use pages::{history, mappings, save_mapping, sync_logs};
