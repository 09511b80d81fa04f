//! The authorization server half of a fake provider (RFC 6749 code flow with RFC 7636 PKCE,
//! refresh, RFC 7009 revocation), with each provider's deltas: whether a refresh returns a
//! refresh token and whether it rotates, whether `expires_in` is sent, what a dead refresh
//! token's error body carries.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::token;

/// How one provider's token endpoint behaves.
#[derive(Clone, Debug)]
pub struct TokenPolicy {
    pub client_id: String,
    pub client_secret: String,
    /// Seconds an access token lives; `None` omits `expires_in` (Salesforce).
    pub expires_in: Option<u64>,
    /// A refresh answer carries a refresh token.
    pub refresh_returns_token: bool,
    /// A refresh invalidates the refresh token it spent (Zendesk).
    pub rotate: bool,
    /// Extra members of a dead-refresh-token error body (HubSpot's `status`).
    pub invalid_grant_extra: Map<String, Value>,
    /// Extra members of every token answer (Salesforce's `instance_url`, HubSpot's `hub_id`).
    pub token_extra: Map<String, Value>,
    /// The token endpoint takes client credentials in HTTP Basic (RFC 6749 §2.3.1) as well as
    /// in the body; HubSpot's takes them only in the body.
    pub accepts_basic: bool,
}

/// How a client authenticated at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthentication {
    Basic,
    Body,
}

#[derive(Debug)]
struct PendingCode {
    redirect_uri: String,
    challenge: Option<String>,
    scopes: Vec<String>,
}

#[derive(Debug, Default)]
struct Registry {
    codes: HashMap<String, PendingCode>,
    access: HashMap<String, Vec<String>>,
    refresh: HashMap<String, Vec<String>>,
    /// Access tokens that answer as expired.
    expired: HashSet<String>,
    revoked_all: bool,
    refreshes: u64,
    spent_refresh_reuse: u64,
    spent: HashSet<String>,
    /// Every token and code handed out, for tests that look for leaks.
    issued: Vec<String>,
    /// Refresh tokens rotate on every refresh, whatever the policy says.
    rotating: bool,
    /// The next token requests answer 503.
    token_unavailable: u32,
    /// How each token request's client authenticated, in order.
    client_authentications: Vec<ClientAuthentication>,
}

/// Tokens issued by one fake provider.
#[derive(Debug)]
pub struct AuthServer {
    pub policy: TokenPolicy,
    registry: Mutex<Registry>,
}

/// Why a bearer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Expired,
    Invalid,
}

#[derive(Debug, Deserialize)]
pub struct AuthorizeQuery {
    pub client_id: String,
    pub redirect_uri: String,
    #[serde(default)]
    pub scope: String,
    pub state: String,
    #[serde(default)]
    pub response_type: Option<String>,
    #[serde(default)]
    pub code_challenge: Option<String>,
    #[serde(default)]
    pub code_challenge_method: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub token: Option<String>,
}

impl AuthServer {
    pub fn new(policy: TokenPolicy) -> Self {
        Self {
            policy,
            registry: Mutex::default(),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().expect("fake token registry lock")
    }

    /// Issues a grant directly, as if a user had consented: `(access, refresh)`.
    pub fn issue(&self, scopes: &[&str]) -> (String, String) {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        let mut registry = self.registry();
        let access = token("at");
        let refresh = token("rt");
        registry.access.insert(access.clone(), scopes.clone());
        registry.refresh.insert(refresh.clone(), scopes);
        registry.issued.extend([access.clone(), refresh.clone()]);
        (access, refresh)
    }

    /// Accepts `access` as an access token from now on (a benchmark's fake in another process
    /// is told the token on its command line).
    pub fn accept(&self, access: &str) {
        self.registry().access.insert(access.to_owned(), Vec::new());
    }

    /// Every access token issued so far answers as expired; refreshing gives a working one.
    pub fn expire_access_tokens(&self) {
        let mut registry = self.registry();
        let issued: Vec<String> = registry.access.keys().cloned().collect();
        registry.expired.extend(issued);
    }

    /// The user revoked the app: every token is refused, refresh answers `invalid_grant`.
    pub fn revoke_everything(&self) {
        let mut registry = self.registry();
        registry.revoked_all = true;
        registry.access.clear();
        registry.refresh.clear();
    }

    /// From now on a refresh spends the refresh token it was given and returns a new one (as
    /// Zendesk's and some Salesforce apps' do).
    pub fn rotate_refresh_tokens(&self) {
        self.registry().rotating = true;
    }

    /// The next `count` requests to the token endpoint answer 503.
    pub fn token_endpoint_unavailable(&self, count: u32) {
        self.registry().token_unavailable = count;
    }

    /// Every access and refresh token issued so far, live or not.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.registry().issued.clone()
    }

    /// How each token request so far authenticated its client, in order.
    pub fn client_authentications(&self) -> Vec<ClientAuthentication> {
        self.registry().client_authentications.clone()
    }

    /// How many refreshes succeeded.
    pub fn refreshes(&self) -> u64 {
        self.registry().refreshes
    }

    /// How many times a spent (rotated or revoked) refresh token was presented again.
    pub fn spent_refresh_reuse(&self) -> u64 {
        self.registry().spent_refresh_reuse
    }

    /// Whether this refresh token still works.
    pub fn refresh_token_alive(&self, refresh: &str) -> bool {
        self.registry().refresh.contains_key(refresh)
    }

    /// Checks an `Authorization: Bearer` header.
    pub fn check_bearer(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let token = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .ok_or(Refusal::Missing)?;
        let registry = self.registry();
        if registry.expired.contains(token) {
            return Err(Refusal::Expired);
        }
        if registry.access.contains_key(token) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
    }

    /// The browser step: consent is given at once and the browser is sent back with a code.
    pub fn authorize(&self, query: AuthorizeQuery) -> Response {
        if query.client_id != self.policy.client_id {
            return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
        }
        if query.response_type.as_deref().is_some_and(|t| t != "code") {
            return (StatusCode::BAD_REQUEST, "unsupported response_type").into_response();
        }
        if query
            .code_challenge_method
            .as_deref()
            .is_some_and(|method| method != "S256")
        {
            return (StatusCode::BAD_REQUEST, "only S256 code challenges").into_response();
        }
        let code = token("code");
        let scopes = query
            .scope
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        self.registry().codes.insert(
            code.clone(),
            PendingCode {
                redirect_uri: query.redirect_uri.clone(),
                challenge: query.code_challenge,
                scopes,
            },
        );
        let mut target = match url::Url::parse(&query.redirect_uri) {
            Ok(url) => url,
            Err(_) => return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response(),
        };
        target
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &query.state);
        Redirect::to(target.as_str()).into_response()
    }

    /// The token endpoint: `authorization_code` and `refresh_token` grants, client
    /// credentials in the body or in Basic auth.
    pub fn token(&self, headers: &HeaderMap, form: TokenForm) -> Response {
        {
            let mut registry = self.registry();
            if registry.token_unavailable > 0 {
                registry.token_unavailable -= 1;
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": "temporarily_unavailable"})),
                )
                    .into_response();
            }
        }
        if !self.client_authenticated(headers, &form) {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
                &Map::new(),
            );
        }
        match form.grant_type.as_deref() {
            Some("authorization_code") => self.exchange(form),
            Some("refresh_token") => self.refresh(form),
            _ => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
                &Map::new(),
            ),
        }
    }

    /// RFC 7009: 200 whether or not the token was known.
    pub fn revoke(&self, token: &str) -> Response {
        let mut registry = self.registry();
        if let Some(scopes) = registry.refresh.remove(token) {
            drop(scopes);
            registry.spent.insert(token.to_owned());
            // Revoking the refresh token ends the whole grant, access tokens included.
            registry.access.clear();
        }
        registry.access.remove(token);
        StatusCode::OK.into_response()
    }

    /// Authenticates the client by one method (RFC 6749 §2.3: never two at once): HTTP Basic
    /// with the id and secret form-encoded (§2.3.1), or both in the body.
    fn client_authenticated(&self, headers: &HeaderMap, form: &TokenForm) -> bool {
        let basic = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Basic "));
        let in_body = form.client_secret.is_some();
        let (method, id, secret) = match (basic, in_body) {
            (Some(_), true) | (None, false) => return false,
            (Some(encoded), false) => {
                let pair = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok());
                let Some((id, secret)) = pair.as_deref().and_then(|pair| pair.split_once(':'))
                else {
                    return false;
                };
                let decode = |part: &str| {
                    url::form_urlencoded::parse(format!("v={part}").as_bytes())
                        .next()
                        .map(|(_, value)| value.into_owned())
                        .unwrap_or_default()
                };
                (ClientAuthentication::Basic, decode(id), decode(secret))
            }
            (None, true) => (
                ClientAuthentication::Body,
                form.client_id.clone().unwrap_or_default(),
                form.client_secret.clone().unwrap_or_default(),
            ),
        };
        if method == ClientAuthentication::Basic && !self.policy.accepts_basic {
            return false;
        }
        self.registry().client_authentications.push(method);
        id == self.policy.client_id && secret == self.policy.client_secret
    }

    fn exchange(&self, form: TokenForm) -> Response {
        let invalid = |detail: &str| {
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                detail,
                &self.policy.invalid_grant_extra,
            )
        };
        let mut registry = self.registry();
        // A code is single-use: it is gone whether or not this exchange succeeds.
        let Some(pending) = form
            .code
            .as_deref()
            .and_then(|code| registry.codes.remove(code))
        else {
            return invalid("authorization code is invalid, expired or already used");
        };
        if form.redirect_uri.as_deref() != Some(pending.redirect_uri.as_str()) {
            return invalid("redirect_uri does not match the authorization request");
        }
        if let Some(challenge) = &pending.challenge {
            let verified = form.code_verifier.as_deref().is_some_and(|verifier| {
                let digest = Sha256::digest(verifier.as_bytes());
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) == *challenge
            });
            if !verified {
                return invalid("code_verifier does not match the code challenge");
            }
        }
        let access = token("at");
        let refresh = token("rt");
        registry
            .access
            .insert(access.clone(), pending.scopes.clone());
        registry
            .refresh
            .insert(refresh.clone(), pending.scopes.clone());
        registry.issued.extend([access.clone(), refresh.clone()]);
        drop(registry);
        self.token_answer(&access, Some(&refresh), &pending.scopes)
    }

    fn refresh(&self, form: TokenForm) -> Response {
        let mut registry = self.registry();
        let presented = form.refresh_token.unwrap_or_default();
        let Some(scopes) = registry.refresh.get(&presented).cloned() else {
            if registry.spent.contains(&presented) {
                registry.spent_refresh_reuse += 1;
            }
            let detail = if registry.revoked_all {
                "refresh token is invalid, expired or revoked"
            } else {
                "missing or invalid refresh token"
            };
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                detail,
                &self.policy.invalid_grant_extra,
            );
        };
        registry.refreshes += 1;
        let access = token("at");
        registry.access.insert(access.clone(), scopes.clone());
        registry.issued.push(access.clone());
        let returned = if self.policy.rotate || registry.rotating {
            registry.refresh.remove(&presented);
            registry.spent.insert(presented);
            let fresh = token("rt");
            registry.refresh.insert(fresh.clone(), scopes.clone());
            registry.issued.push(fresh.clone());
            Some(fresh)
        } else if self.policy.refresh_returns_token {
            Some(presented)
        } else {
            None
        };
        drop(registry);
        self.token_answer(&access, returned.as_deref(), &scopes)
    }

    fn token_answer(&self, access: &str, refresh: Option<&str>, scopes: &[String]) -> Response {
        let mut body = Map::new();
        body.insert("access_token".into(), json!(access));
        body.insert("token_type".into(), json!("bearer"));
        if let Some(seconds) = self.policy.expires_in {
            body.insert("expires_in".into(), json!(seconds));
        }
        if let Some(refresh) = refresh {
            body.insert("refresh_token".into(), json!(refresh));
        }
        body.insert("scope".into(), json!(scopes.join(" ")));
        for (key, value) in &self.policy.token_extra {
            body.insert(key.clone(), value.clone());
        }
        (
            StatusCode::OK,
            [("cache-control", "no-store"), ("pragma", "no-cache")],
            Json(Value::Object(body)),
        )
            .into_response()
    }
}

fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
    extra: &Map<String, Value>,
) -> Response {
    let mut body = Map::new();
    body.insert("error".into(), json!(error));
    body.insert("error_description".into(), json!(description));
    for (key, value) in extra {
        body.insert(key.clone(), value.clone());
    }
    (
        status,
        [("cache-control", "no-store")],
        Json(Value::Object(body)),
    )
        .into_response()
}

/// The authorize route's query, for routers.
pub type AuthorizeParams = Query<AuthorizeQuery>;

#[derive(Debug, Deserialize)]
struct RevokeForm {
    token: String,
}

/// The authorization server's routes, at a provider's own paths: the browser's authorize step,
/// the token endpoint (form-encoded), and RFC 7009 revocation (a form with `token`) when the
/// provider has it at `revoke`.
pub(crate) fn routes(
    auth: std::sync::Arc<AuthServer>,
    authorize: &str,
    token: &str,
    revoke: Option<&str>,
) -> axum::Router {
    use axum::extract::State;
    use axum::routing::{get, post};
    type Auth = State<std::sync::Arc<AuthServer>>;
    let mut router = axum::Router::new()
        .route(
            authorize,
            get(|State(auth): Auth, query: AuthorizeParams| async move { auth.authorize(query.0) }),
        )
        .route(
            token,
            post(
                |State(auth): Auth, headers: HeaderMap, axum::Form(form): axum::Form<TokenForm>| async move {
                    auth.token(&headers, form)
                },
            ),
        );
    if let Some(path) = revoke {
        router = router.route(
            path,
            post(
                |State(auth): Auth, axum::Form(form): axum::Form<RevokeForm>| async move {
                    auth.revoke(&form.token)
                },
            ),
        );
    }
    router.with_state(auth)
}
