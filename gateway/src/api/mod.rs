//! The Marketplace API under `/v1`. Who is calling (bearer API tokens, the [`Caller`] and
//! [`Target`] extractors), strict JSON bodies, and the routes: the catalog (Apps and Models),
//! connecting (API keys, and the OAuth2 popup's callback page), Installed and each
//! integration's actions here; mappings, Companion actions, the auditors' endpoints and the
//! event stream in the submodules. Every route is registered with its OpenAPI description
//! (utoipa-axum), and every refusal is a [`Problem`] carrying the domain's rule in words.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::aggregate::CommandContext;
use domain::{Caller as DomainCaller, DomainError, Principal, Timestamp};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::problem::Problem;
use crate::AppState;

mod actions;
mod audit;
mod events;
pub(crate) use events::{events, EventsQuery};
mod mappings;

/// The caller of a `/v1` route: the principal its bearer token speaks for, and the token's
/// SHA-256 (what its rate limit, its event streams and the OAuth flows it starts are tied to).
/// [`authenticate`] puts it in the request's extensions once it has found the token live.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) Principal, pub(crate) String);

/// The bearer token of `headers`, if it has one in that form.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Authenticates a `/v1` request's bearer token once, before anything else may act on it
/// (the idempotency layer replays answers only to a live token), and charges it to the
/// token's rate limit. A request without a live token goes on unauthenticated: a route that
/// needs a caller refuses it.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(presented) = bearer(request.headers()) {
        match crate::tokens::authenticate(&state.read, presented).await {
            Ok(Some(authenticated)) => {
                let token_hash = crate::tokens::hash(presented);
                if let (Some(limiter), false) = (&state.limiter, authenticated.unlimited) {
                    if let Err(wait) = limiter.check(&token_hash) {
                        return crate::limits::rate_limited(wait).into_response();
                    }
                }
                request
                    .extensions_mut()
                    .insert(Caller(authenticated.principal, token_hash));
            }
            Ok(None) => {}
            Err(error) => {
                return Problem::failed("cannot check an API token", &error).into_response();
            }
        }
    }
    next.run(request).await
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Problem> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        if !parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            return Err(Problem::unauthorized(
                "an API token is needed: Authorization: Bearer <token>",
            ));
        }
        if bearer(&parts.headers).is_none() {
            return Err(Problem::unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ));
        }
        Err(Problem::unauthorized(
            "the API token is unknown or was revoked",
        ))
    }
}

/// Every `/v1` route, each registered with the OpenAPI description of its handler: a route
/// cannot be served without being documented.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(apps))
        .routes(routes!(models))
        .routes(routes!(me))
        .routes(routes!(oauth_callback))
        .routes(routes!(personal_route, personal_write))
        .routes(routes!(installed, connect))
        .routes(routes!(integration, delete_integration))
        .routes(routes!(test))
        .routes(routes!(reauth))
        .routes(routes!(sync))
        .routes(routes!(schedule))
        .routes(routes!(disconnect))
        .routes(routes!(sync_logs))
        .routes(routes!(mappings::get_mappings, mappings::put_mapping))
        .routes(routes!(actions::open_actions, actions::request_action))
        .routes(routes!(actions::get_action))
        .routes(routes!(actions::approve))
        .routes(routes!(actions::reject))
        .routes(routes!(actions::rules, actions::add_rule))
        .routes(routes!(actions::remove_rule))
        .routes(routes!(audit::history))
        .routes(routes!(audit::state_as_of))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::export))
        .routes(routes!(events::events))
}

/// The path of a workspace's route, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct WorkspacePath {
    /// The workspace.
    ws: String,
}

/// The path of an integration's route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct IntegrationPath {
    /// The workspace.
    ws: String,
    /// The integration id.
    id: String,
}

/// The path of a Companion action's route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct ActionPath {
    /// The workspace.
    ws: String,
    /// The integration id.
    id: String,
    /// The action id.
    action: String,
}

/// The path of an approval rule's route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct RulePath {
    /// The workspace.
    ws: String,
    /// The approval rule id.
    rule: String,
}

/// The integration a `/v1/workspaces/{ws}/integrations/{id}/…` route acts on, and its caller
/// acting in that workspace.
pub(crate) struct Target {
    caller: Caller,
    id: domain::IntegrationId,
}

impl FromRequestParts<AppState> for Target {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Path((ws, id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| Problem::new(StatusCode::NOT_FOUND, "not_found", "no such route"))?;
        Self::resolve(caller, &ws, &id)
    }
}

impl ReauthBody {
    pub(crate) fn with_fields(fields: BTreeMap<String, String>) -> Self {
        Self { fields }
    }
}

impl Target {
    /// The integration `id` in the caller's own workspace.
    pub(crate) fn of(caller: Caller, id: domain::IntegrationId) -> Self {
        Self { caller, id }
    }

    /// The integration `id` of workspace `ws`, as the caller acts on it.
    fn resolve(caller: Caller, ws: &str, id: &str) -> Result<Self, Problem> {
        caller.in_workspace(ws)?;
        Ok(Self {
            id: integration_id(id)?,
            caller,
        })
    }
}

/// The integration id of a path: an id that is not one is simply not found.
fn integration_id(id: &str) -> Result<domain::IntegrationId, Problem> {
    id.parse().map_err(|_| not_found(id))
}

fn not_found(id: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no integration {id} here"),
    )
}

/// The integration's state now, if the caller may see it; otherwise not found (another
/// user's personal integration does not leak).
async fn load_visible(
    state: &AppState,
    caller: &Caller,
    id: domain::IntegrationId,
) -> Result<domain::Integration, Problem> {
    let current = state
        .workers
        .repo
        .load::<domain::Integration>(&domain::StreamName::integration(id))
        .await
        .map_err(repository_problem)?
        .state;
    if current.visible_to(&caller.context().caller) {
        Ok(current)
    } else {
        Err(not_found(id))
    }
}

fn repository_problem(error: eventstore::repository::RepositoryError) -> Problem {
    use eventstore::repository::RepositoryError as E;
    match error {
        E::Domain(error) => domain_problem(&error),
        // Conflicting appends are retried inside; only sustained contention comes out here.
        E::TooMuchContention { .. } => Problem::new(
            StatusCode::CONFLICT,
            "contention",
            "the integration is changing too fast to apply this now: try again",
        )
        .retry_after(1),
        E::Store(eventstore::StoreError::Unavailable(reason)) => {
            tracing::warn!(%reason, "the event log is unavailable");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                "the event log cannot be reached right now: try again",
            )
            .retry_after(2)
        }
        other => Problem::failed("a command failed", &other),
    }
}

/// Runs a command on an integration as the caller.
async fn command(
    state: &AppState,
    Target { caller, id }: &Target,
    command: domain::IntegrationCommand,
) -> Result<(), Problem> {
    state
        .workers
        .repo
        .decide::<domain::Integration>(
            &domain::StreamName::integration(*id),
            &command,
            &caller.context(),
        )
        .await
        .map(|_| ())
        .map_err(repository_problem)
}

/// Tests the connection with the provider now.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/test",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 200, description = "The provider accepted the credentials"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(crate) async fn test(
    State(state): State<AppState>,
    Target { caller, id }: Target,
) -> Result<Json<Value>, Problem> {
    let identity = state
        .workers
        .connections
        .test(&caller.context(), id, state.workers.credentials.as_ref())
        .await
        .map_err(connect_problem)?;
    Ok(Json(json!({
        "ok": true,
        "account_label": identity.account_label,
        "answer": identity.answer,
    })))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReauthBody {
    /// An API-key app's new secret fields.
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

/// Reauthenticates, keeping the integration: an OAuth2 app answers a new authorization URL
/// for the popup; an API-key app takes its new key, checked with the provider first.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/reauth",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    request_body = ReauthBody,
    responses(
        (status = 200, description = "OAuth2: a new `authorization_url`; API key: the new key, accepted"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(crate) async fn reauth(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    browser: crate::cookies::Browser,
    OptionalBody(body): OptionalBody<ReauthBody>,
) -> Result<([(HeaderName, HeaderValue); 1], Json<Value>), Problem> {
    let cookie = [(axum::http::header::SET_COOKIE, browser.cookie())];
    let body = body.unwrap_or_default();
    let current = load_visible(&state, &caller, id).await?;
    let app = current
        .profile
        .as_ref()
        .and_then(|profile| domain::catalog::app(&profile.app))
        .ok_or_else(|| not_found(id))?;
    let connections = &state.workers.connections;
    match app.auth {
        domain::catalog::AuthKind::Oauth2 { .. } => {
            let url = connections
                .start_oauth(
                    &caller.context(),
                    app.id,
                    Some(id),
                    current.setup.clone(),
                    caller.binding(&browser),
                )
                .await
                .map_err(connect_problem)?;
            Ok((
                cookie,
                Json(json!({ "authorization_url": url.to_string() })),
            ))
        }
        domain::catalog::AuthKind::ApiKey => {
            let secrets = body
                .fields
                .into_iter()
                .map(|(name, value)| (name, secrecy::SecretString::from(value)))
                .collect();
            let identity = connections
                .reauth_with_key(&caller.context(), id, &secrets)
                .await
                .map_err(connect_problem)?;
            Ok((
                cookie,
                Json(json!({
                    "integration_id": id.to_string(),
                    "account_label": identity.account_label,
                    "answer": identity.answer,
                })),
            ))
        }
    }
}

/// A full sync, now.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/sync",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 202, description = "A full sync requested: its `sync_id`"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(crate) async fn sync(
    State(state): State<AppState>,
    target: Target,
) -> Result<Response, Problem> {
    let sync_id = domain::SyncId::new();
    let decided = state
        .workers
        .repo
        .decide::<domain::Integration>(
            &domain::StreamName::integration(target.id),
            &domain::IntegrationCommand::RequestSync {
                sync_id,
                kind: domain::integration::SyncKind::Full,
            },
            &target.caller.context(),
        )
        .await
        .map_err(repository_problem)?;
    // A request while one is already queued joins it: answer the queued run's id.
    let (sync_id, coalesced) = match (&decided.append, &decided.state.pending_sync) {
        (None, Some(pending)) => (pending.sync_id, true),
        _ => (sync_id, false),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "sync_id": sync_id.to_string(), "coalesced": coalesced })),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    /// Minutes between incremental syncs; `null` for off.
    every_minutes: Option<u32>,
}

/// The incremental-sync frequency, or off.
#[utoipa::path(
    put,
    path = "/v1/workspaces/{ws}/integrations/{id}/schedule",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    request_body = ScheduleBody,
    responses(
        (status = 200, description = "The incremental-sync frequency set"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
async fn schedule(
    State(state): State<AppState>,
    target: Target,
    Body(body): Body<ScheduleBody>,
) -> Result<Json<Value>, Problem> {
    command(
        &state,
        &target,
        domain::IntegrationCommand::ChangeSyncSchedule {
            every_minutes: body.every_minutes,
        },
    )
    .await?;
    Ok(Json(json!({ "every_minutes": body.every_minutes })))
}

/// Disconnects: the token revoked at the provider where it allows, syncs stopped, data at
/// the provider untouched.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/disconnect",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 200, description = "Disconnected; `token_revoked` says whether the provider revoked the token"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(crate) async fn disconnect(
    State(state): State<AppState>,
    Target { caller, id }: Target,
) -> Result<Json<Value>, Problem> {
    let revoked = state
        .workers
        .connections
        .disconnect(&caller.context(), id, "disconnected by a user")
        .await
        .map_err(connect_problem)?;
    Ok(Json(
        json!({ "disconnected": true, "token_revoked": revoked }),
    ))
}

/// Deletes: gone from Installed, its secrets shredded, its synced records purged; its history
/// stays for auditors.
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{ws}/integrations/{id}",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 204, description = "Deleted: secrets shredded, records purged, history kept"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_integration(
    State(state): State<AppState>,
    Target { caller, id }: Target,
) -> Result<StatusCode, Problem> {
    state
        .workers
        .connections
        .delete(&caller.context(), id)
        .await
        .map_err(connect_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SyncLogsQuery {
    status: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<i64>,
    limit: Option<u32>,
}

/// An integration's sync logs, newest first.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/sync-logs",
    tag = "integrations",
    params(
        crate::api::IntegrationPath,
        SyncLogsQuery
    ),
    responses(
        (status = 200, description = "Sync runs, newest first: `runs` and `next_cursor`"),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
async fn sync_logs(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    Query(query): Query<SyncLogsQuery>,
) -> Result<Json<Value>, Problem> {
    let principal = &caller.0;
    let filter = projections::sync_runs::Filter {
        status: query.status,
        kind: query.kind,
        since: query.since,
        until: query.until,
    };
    let page = projections::sync_runs::list(
        &state.read,
        principal.workspace.as_str(),
        principal.user.as_str(),
        id,
        &filter,
        query.cursor,
        query.limit.unwrap_or(50),
    )
    .await
    .map_err(|error| Problem::failed("cannot read the sync logs", &error))?;
    Ok(Json(
        json!({ "runs": page.runs, "next_cursor": page.next_cursor }),
    ))
}

/// A request body the API could not take, said precisely: too large, not JSON, or JSON that
/// names an unknown field or gives a field the wrong type (the message names the field).
fn body_problem(rejection: JsonRejection) -> Problem {
    let status = rejection.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::BAD_REQUEST => "malformed_json",
        _ => "invalid_body",
    };
    let detail = match &rejection {
        JsonRejection::JsonDataError(error) => {
            format!("the body does not fit: {}", error.body_text())
        }
        JsonRejection::JsonSyntaxError(error) => {
            format!("the body is not valid JSON: {}", error.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON, with Content-Type: application/json".to_owned()
        }
        JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the body is larger than the {} KiB a request may carry",
            crate::http::BODY_LIMIT_BYTES / 1024
        ),
        other => other.body_text(),
    };
    Problem::new(status, code, detail)
}

/// A JSON request body, strictly read: unknown fields and wrong types are refused with a
/// problem naming the field.
pub(crate) struct Body<T>(pub(crate) T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| Body(value))
            .map_err(body_problem)
    }
}

/// A JSON body that may be left out altogether (then `None`); one that is sent is read as
/// strictly as [`Body`].
pub(crate) struct OptionalBody<T>(pub(crate) Option<T>);

impl<T, S> FromRequest<S> for OptionalBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let has_type = request
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE);
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_problem(JsonRejection::BytesRejection(rejection)))?;
        if bytes.is_empty() && !has_type {
            return Ok(Self(None));
        }
        Json::<T>::from_bytes(&bytes)
            .map(|Json(value)| Self(Some(value)))
            .map_err(body_problem)
    }
}

impl Caller {
    /// The caller, acting in workspace `ws` of the path: a token acts in its own workspace
    /// only.
    fn in_workspace(&self, ws: &str) -> Result<&Principal, Problem> {
        if self.0.workspace.as_str() == ws {
            Ok(&self.0)
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "other_workspace",
                format!(
                    "this token acts in workspace {}, not {ws}",
                    self.0.workspace
                ),
            ))
        }
    }

    fn context(&self) -> CommandContext {
        CommandContext::new(DomainCaller::User(self.0.clone()), Timestamp::now())
    }

    /// What an OAuth2 flow this caller starts in `browser` is bound to.
    fn binding(&self, browser: &crate::cookies::Browser) -> adapters::connections::Binding {
        adapters::connections::Binding {
            browser: browser.hash(),
            token: self.1.clone(),
        }
    }
}

/// A rule the domain refused, as the API says it: the rule in words, with its stable code.
pub(crate) fn domain_problem(error: &DomainError) -> Problem {
    let status = match error.kind() {
        domain::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        domain::ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        domain::ErrorKind::Conflict => StatusCode::CONFLICT,
        domain::ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let code = match error {
        DomainError::NotFound => "not_found",
        DomainError::Forbidden(_) => "forbidden",
        _ => error.code(),
    };
    Problem::new(status, code, error.to_string())
}

pub(crate) fn connect_problem(error: adapters::connections::ConnectError) -> Problem {
    use adapters::connections::ConnectError as E;
    match error {
        E::UnknownApp(app) => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("there is no app {app}"),
        ),
        E::Unavailable(reason) => Problem::new(StatusCode::CONFLICT, "app_unavailable", reason),
        E::InvalidSetup { field, reason } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_setup",
            format!("{field} {reason}"),
        ),
        E::Provider(adapters::http::ProviderError::Refused(refused)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "outbound_refused",
            format!("{refused}; an operator can open an address range with --outbound-allow"),
        ),
        E::Provider(error @ adapters::http::ProviderError::StorageUnavailable { .. }) => {
            Problem::failed("a connection's credentials cannot be stored", &error)
        }
        E::Provider(error) if error.retryable() => Problem::new(
            StatusCode::BAD_GATEWAY,
            "provider_unavailable",
            error.to_string(),
        ),
        E::Provider(error) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider_refused",
            error.to_string(),
        ),
        E::Domain(error) => domain_problem(&error),
        E::Callback(
            error @ (adapters::oauth::CallbackError::UnknownState
            | adapters::oauth::CallbackError::Foreign),
        ) => Problem::new(StatusCode::BAD_REQUEST, "oauth_state", error.to_string()),
        E::Callback(error @ adapters::oauth::CallbackError::OtherBrowser) => {
            Problem::new(StatusCode::BAD_REQUEST, "oauth_browser", error.to_string())
        }
        E::Callback(error @ adapters::oauth::CallbackError::Revoked) => {
            Problem::new(StatusCode::UNAUTHORIZED, "token_revoked", error.to_string())
        }
        E::Callback(error @ adapters::oauth::CallbackError::Denied(_)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider_refused",
            error.to_string(),
        ),
        E::Callback(adapters::oauth::CallbackError::Provider(error)) => {
            connect_problem(E::Provider(error))
        }
        E::Repository(error) => repository_problem(error),
        other => Problem::failed("a connection failed", &other),
    }
}

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
async fn personal_write(caller: Caller) -> Problem {
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
async fn personal_route(_caller: Caller) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "workspace_required",
        "the Marketplace is available only inside an organization workspace: switch to a \
         workspace first",
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct InstalledQuery {
    status: Option<String>,
    app: Option<String>,
    scope: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// Marketplace > Installed: the workspace's integrations and the caller's personal ones.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations",
    tag = "integrations",
    params(
        crate::api::WorkspacePath,
        InstalledQuery
    ),
    responses(
        (status = 200, description = "Marketplace > Installed: `integrations` and `next_cursor`"),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
async fn installed(
    State(state): State<AppState>,
    caller: Caller,
    Path(ws): Path<String>,
    Query(query): Query<InstalledQuery>,
) -> Result<Response, Problem> {
    let principal = caller.in_workspace(&ws)?;
    let read_failed = |error: projections::ReadDbError| match error {
        projections::ReadDbError::BadCursor(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            "the cursor is not one this list gave out",
        ),
        other => Problem::failed("cannot read Installed", &other),
    };
    let limit = query.limit.unwrap_or(50);
    // The same page, unchanged since the read model last moved, is answered as it was.
    let key = format!(
        "{}\0{}\0{:?}\0{:?}\0{:?}\0{:?}\0{limit}",
        principal.workspace, principal.user, query.status, query.app, query.scope, query.cursor
    );
    let position = projections::runner::Projection::Installed
        .checkpoint(&state.read)
        .await
        .map_err(read_failed)?;
    let body = match state.installed_pages.get(&key, position) {
        Some(body) => body,
        None => {
            let filter = projections::installed::Filter {
                status: query.status,
                app: query.app,
                scope: query.scope,
            };
            let page = projections::installed::page(
                &state.read,
                principal.workspace.as_str(),
                principal.user.as_str(),
                &filter,
                query.cursor.as_deref(),
                limit,
            )
            .await
            .map_err(read_failed)?;
            let body = axum::body::Bytes::from(
                serde_json::to_vec(
                    &json!({ "integrations": page.rows, "next_cursor": page.next_cursor }),
                )
                .map_err(|_| Problem::internal())?,
            );
            state.installed_pages.put(key, position, body.clone());
            body
        }
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// One integration, with the actions available now. Another user's personal integration is
/// not found, not forbidden: its existence does not leak.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 200, description = "The integration as Installed shows it, with the actions available now"),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
async fn integration(
    State(state): State<AppState>,
    caller: Caller,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let principal = caller.in_workspace(&ws)?;
    let row = projections::installed::get(
        &state.read,
        principal.workspace.as_str(),
        principal.user.as_str(),
        &id,
    )
    .await
    .map_err(|error| Problem::failed("cannot read Installed", &error))?
    .ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no integration {id} here"),
        )
    })?;
    Ok(Json(json!(row)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    app: String,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

/// Connects an app: an API-key app at once (its key checked with the provider first), an
/// OAuth2 app by answering the authorization URL to open in a popup.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations",
    tag = "integrations",
    params(
        crate::api::WorkspacePath
    ),
    request_body = ConnectBody,
    responses(
        (status = 201, description = "An API-key app, connected: `integration_id`, `account_label`"),
        (status = 200, description = "An OAuth2 app: the `authorization_url` to open in a popup"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
async fn connect(
    State(state): State<AppState>,
    caller: Caller,
    browser: crate::cookies::Browser,
    Path(ws): Path<String>,
    Body(body): Body<ConnectBody>,
) -> Result<Response, Problem> {
    caller.in_workspace(&ws)?;
    let app = domain::catalog::app(&body.app).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("there is no app {}", body.app),
        )
    })?;
    let connections = &state.workers.connections;
    match app.auth {
        domain::catalog::AuthKind::ApiKey => {
            let fields = body
                .fields
                .into_iter()
                .map(|(name, value)| (name, secrecy::SecretString::from(value)))
                .collect();
            let connected = connections
                .connect_with_key(&caller.context(), app.id, &fields)
                .await
                .map_err(connect_problem)?;
            Ok((
                StatusCode::CREATED,
                Json(json!({
                    "integration_id": connected.integration.to_string(),
                    "account_label": connected.identity.account_label,
                    "answer": connected.identity.answer,
                })),
            )
                .into_response())
        }
        domain::catalog::AuthKind::Oauth2 { .. } => {
            let url = connections
                .start_oauth(
                    &caller.context(),
                    app.id,
                    None,
                    body.fields,
                    caller.binding(&browser),
                )
                .await
                .map_err(connect_problem)?;
            Ok((
                [(axum::http::header::SET_COOKIE, browser.cookie())],
                Json(json!({ "authorization_url": url.to_string() })),
            )
                .into_response())
        }
    }
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
async fn apps(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
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
async fn models(_caller: Caller) -> Json<Value> {
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
async fn me(Caller(principal, _): Caller) -> Json<Value> {
    Json(json!({
        "user": principal.user.to_string(),
        "workspace": principal.workspace.to_string(),
        "role": principal.role.to_string(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
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
        (status = 200, description = "Connected: a page that tells its opener and closes itself", content_type = "text/html"),
        (status = 400, description = "Not connected: the page says why", content_type = "text/html")
    ),
)]
async fn oauth_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let outcome: Result<adapters::connections::Connected, String> =
        match (&query.state, &query.code, &query.error) {
            (flow, _, Some(error)) => {
                // A refused authorization is over: its state is spent.
                if let Some(flow) = flow {
                    let _ = state.workers.connections.claim_callback(flow).await;
                }
                Err(format!(
                    "the provider refused the authorization: {}",
                    query.error_description.as_deref().unwrap_or(error)
                ))
            }
            (Some(flow), Some(code), None) => finish_callback(&state, &headers, flow, code)
                .await
                .map_err(|problem| problem.detail),
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
) -> Result<adapters::connections::Connected, Problem> {
    use adapters::oauth::CallbackError;
    let connections = &state.workers.connections;
    let claimed = connections
        .claim_callback(flow)
        .await
        .map_err(connect_problem)?;
    let browser = crate::cookies::named(headers, crate::cookies::BROWSER);
    if !claimed.started_in(browser.as_deref()) {
        return Err(connect_problem(CallbackError::OtherBrowser.into()));
    }
    let caller = crate::tokens::authenticate_hash(&state.read, &claimed.pending.token)
        .await
        .map_err(|error| Problem::failed("cannot check an API token", &error))?
        .ok_or_else(|| connect_problem(CallbackError::Revoked.into()))?;
    connections
        .finish_oauth(claimed, code, caller.principal)
        .await
        .map_err(connect_problem)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
