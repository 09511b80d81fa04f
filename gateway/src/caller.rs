//! Who is calling: the bearer token, authenticated once per request ([`authenticate`]), the
//! [`Caller`] it speaks for, and the [`Target`] integration of a route.

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::aggregate::CommandContext;
use domain::{Caller as DomainCaller, Principal, Timestamp};

use crate::problem::not_found;
use crate::problem::Problem;
use crate::AppState;

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
        let token_hash = crate::tokens::hash(presented);
        let found = if presented.starts_with(crate::tokens::TOKEN_PREFIX) {
            state.tokens.authenticate_hash(&state.db, &token_hash).await
        } else {
            Ok(None)
        };
        match found {
            Ok(Some(authenticated)) => {
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

/// The integration a `/v1/workspaces/{ws}/integrations/{id}/…` route acts on, and its caller
/// acting in that workspace.
pub(crate) struct Target {
    pub(crate) caller: Caller,
    pub(crate) id: domain::IntegrationId,
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

impl Target {
    /// The integration `id` of workspace `ws`, as the caller acts on it.
    pub(crate) fn resolve(caller: Caller, ws: &str, id: &str) -> Result<Self, Problem> {
        caller.in_workspace(ws)?;
        Ok(Self {
            id: integration_id(id)?,
            caller,
        })
    }
}

impl Caller {
    /// The caller, acting in workspace `ws` of the path: a token acts in its own workspace
    /// only.
    pub(crate) fn in_workspace(&self, ws: &str) -> Result<&Principal, Problem> {
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

    pub(crate) fn context(&self) -> CommandContext {
        CommandContext::new(DomainCaller::User(self.0.clone()), Timestamp::now())
    }

    /// What an OAuth2 flow this caller starts in `browser` is bound to.
    pub(crate) fn binding(
        &self,
        browser: &crate::cookies::Browser,
    ) -> adapters::connections::Binding {
        adapters::connections::Binding {
            browser: browser.hash(),
            token: self.1.clone(),
        }
    }
}

/// The integration id of a path: an id that is not one is simply not found.
pub(crate) fn integration_id(id: &str) -> Result<domain::IntegrationId, Problem> {
    id.parse().map_err(|_| not_found(id))
}
