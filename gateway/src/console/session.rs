//! Console sessions: sign-in with an API token into an HttpOnly, SameSite=Lax cookie holding a
//! random session id (only its hash is stored). Each request looks the session up joined with
//! its token, so a revoked token ends its sessions at once. Each session has a CSRF token that
//! every form sends back.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Redirect, Response};
use database::{execute, fetch_all, Bind};
use domain::{Principal, Timestamp};
use projections::{ServiceDb, ServiceDbError};

use crate::AppState;

pub(crate) const COOKIE: &str = "harmony_session";
/// The sign-in form's own CSRF token, before there is a session: the form and this cookie
/// must carry the same value.
pub(crate) const SIGN_IN_COOKIE: &str = "harmony_sign_in";
/// How long a session lasts.
const LIFETIME_MICROS: i64 = 12 * 3600 * 1_000_000;
/// How many live sessions one token may hold; signing in again beyond that ends its oldest.
pub(crate) const MAX_SESSIONS_PER_TOKEN: i64 = 10;

/// Why a sign-in started no session.
#[derive(Debug)]
pub(crate) enum SignInRefused {
    /// The token is unknown or was revoked.
    Unknown,
    /// The token is over its rate limit: try again after this long.
    RateLimited(std::time::Duration),
    Db(ServiceDbError),
}

impl From<ServiceDbError> for SignInRefused {
    fn from(error: ServiceDbError) -> Self {
        Self::Db(error)
    }
}

pub(crate) use crate::cookies::{named as named_cookie, random};

/// A signed-in browser: who it acts as, and the CSRF token its forms carry.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) principal: Principal,
    pub(crate) csrf: String,
    /// The SHA-256 of the API token the session signed in with: what the rate limit counts
    /// and an OAuth flow started here is bound to.
    pub(crate) token_hash: String,
}

impl Session {
    /// The session's user, as the API's token would speak for them.
    pub(crate) fn caller(&self) -> crate::caller::Caller {
        crate::caller::Caller(self.principal.clone(), self.token_hash.clone())
    }

    /// Whether `sent` is this session's CSRF token.
    pub(crate) fn csrf_ok(&self, sent: Option<&String>) -> bool {
        sent.is_some_and(|sent| crate::tokens::same_secret(sent, &self.csrf))
    }
}

/// Starts a session for the API token `token` and answers the cookie to set. A sign-in is a
/// request of the token like any other: it counts against the token's rate limit. A token
/// holds at most [`MAX_SESSIONS_PER_TOKEN`] live sessions: a new one ends its oldest.
pub(crate) async fn sign_in(state: &AppState, token: &str) -> Result<HeaderValue, SignInRefused> {
    let db = &state.db;
    let Some(authenticated) = crate::tokens::authenticate(db, token).await? else {
        return Err(SignInRefused::Unknown);
    };
    let token_hash = crate::tokens::hash(token);
    if let (Some(limiter), false) = (&state.limiter, authenticated.unlimited) {
        limiter
            .check(&token_hash)
            .map_err(SignInRefused::RateLimited)?;
    }
    let id = random();
    let now = Timestamp::now().unix_micros();
    execute(
        db,
        "DELETE FROM console_sessions WHERE expires_at < $1",
        &[Bind::Int(now)],
    )
    .await?;
    execute(
        db,
        "INSERT INTO console_sessions (id_hash, token_hash, csrf, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            Bind::Text(crate::tokens::hash(&id)),
            Bind::Text(token_hash.clone()),
            Bind::Text(random()),
            Bind::Int(now),
            Bind::Int(now + LIFETIME_MICROS),
        ],
    )
    .await?;
    // The newest sessions of the token stay; any beyond them end now.
    execute(
        db,
        "DELETE FROM console_sessions WHERE token_hash = $1 AND id_hash NOT IN \
         (SELECT id_hash FROM console_sessions WHERE token_hash = $1 \
          ORDER BY created_at DESC, id_hash DESC LIMIT $2)",
        &[Bind::Text(token_hash), Bind::Int(MAX_SESSIONS_PER_TOKEN)],
    )
    .await?;
    Ok(crate::cookies::set(
        COOKIE,
        &id,
        "/console",
        (LIFETIME_MICROS / 1_000_000) as u64,
        state.secure_cookies,
    ))
}

/// Ends the session whose cookie is `id`; answers the cookie that clears it in the browser.
pub(crate) async fn sign_out(
    db: &ServiceDb,
    id: Option<&str>,
    secure: bool,
) -> Result<HeaderValue, ServiceDbError> {
    if let Some(id) = id {
        execute(
            db,
            "DELETE FROM console_sessions WHERE id_hash = $1",
            &[Bind::Text(crate::tokens::hash(id))],
        )
        .await?;
    }
    Ok(crate::cookies::set(COOKIE, "", "/console", 0, secure))
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_sign_in = || Redirect::to("/console/sign-in").into_response();
        let Some(id) = named_cookie(&parts.headers, COOKIE) else {
            return Err(to_sign_in());
        };
        let rows: Vec<(String, String, String, String, String, i64)> = fetch_all(
            &state.db,
            "SELECT t.workspace, t.user_id, t.role, s.csrf, s.token_hash, t.unlimited \
             FROM console_sessions s \
             JOIN api_tokens t ON t.token_hash = s.token_hash \
             WHERE s.id_hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
            &[
                Bind::Text(crate::tokens::hash(&id)),
                Bind::Int(Timestamp::now().unix_micros()),
            ],
        )
        .await
        .map_err(|error| {
            crate::problem::Problem::failed("cannot read console sessions", &error).into_response()
        })?;
        let Some((workspace, user, role, csrf, token_hash, unlimited)) = rows.into_iter().next()
        else {
            return Err(to_sign_in());
        };
        // The console's requests count against the token's limit as the API's do.
        if let (Some(limiter), 0) = (&state.limiter, unlimited) {
            if let Err(wait) = limiter.check(&token_hash) {
                return Err(crate::limits::rate_limited(wait).into_response());
            }
        }
        let principal = (|| {
            Some(Principal {
                workspace: workspace.parse().ok()?,
                user: user.parse().ok()?,
                role: role.parse().ok()?,
            })
        })()
        .ok_or_else(to_sign_in)?;
        Ok(Session {
            principal,
            csrf,
            token_hash,
        })
    }
}
