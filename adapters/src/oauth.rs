//! OAuth2 with the `oauth2` crate: the authorization-code flow with PKCE and a single-use
//! `state`, the token exchange, refresh, and revocation (RFC 7009, or the provider's own way).
//!
//! A pending authorization lives in the `oauth_states` table, keyed by the SHA-256 of its
//! `state`, bound to the workspace, user and app that started it, to the browser that started
//! it (the SHA-256 of a cookie the gateway sets then) and to the API token it was started with
//! (its SHA-256), and expires in ten minutes. Taking it deletes it in the same statement, so a
//! `state` works once: a replayed callback, a foreign one or a late one is refused. An
//! authorization URL sent to somebody else is refused at the callback, since their browser
//! does not carry the cookie.

use std::collections::BTreeMap;
use std::time::Duration;

use database::ServiceDb;
use database::{execute, fetch_all, Bind};
use domain::{IntegrationId, Role, Timestamp, UserId, WorkspaceId};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::http::{error_detail, ProviderError};
use crate::provider::Credentials;

/// How long a started authorization may take before its `state` is refused.
pub const STATE_TTL: Duration = Duration::from_secs(10 * 60);

/// How a provider revokes a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// RFC 7009: `POST` the token, client-authenticated.
    Rfc7009(Url),
    /// HubSpot v1: `DELETE {base}/{refresh token}`.
    DeleteRefreshToken(Url),
}

/// One app's OAuth client, from the configuration.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: SecretString,
    pub authorize_url: Url,
    pub token_url: Url,
    pub revocation: Option<Revocation>,
    /// Client credentials in the request body (HubSpot, which accepts nothing else) rather
    /// than HTTP Basic, RFC 6749 §2.3.1's default.
    pub credentials_in_body: bool,
    /// The authorization server's issuer identifier (RFC 9207), checked against a callback's
    /// `iss`; `None`: the authorization URL's origin.
    pub issuer: Option<String>,
    /// Extra authorization parameters (Google's `access_type=offline`, `prompt=consent`).
    pub extra_authorize_params: Vec<(String, String)>,
}

/// Members of a token answer beyond RFC 6749's that some providers send and that are kept
/// (Salesforce's instance and identity URLs).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ExtraFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl ExtraTokenFields for ExtraFields {}

type TokenAnswer = StandardTokenResponse<ExtraFields, BasicTokenType>;
type Client = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// What the token endpoint granted.
#[derive(Clone, Debug)]
pub struct Grant {
    pub credentials: Credentials,
    /// The scopes the provider says it granted (the requested ones when it does not say).
    pub scopes: Vec<String>,
}

/// A started authorization, to be stored until the callback.
#[derive(Debug)]
pub struct Started {
    /// Where to send the user's browser (the popup).
    pub url: Url,
}

/// Who started an authorization, and for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub workspace: WorkspaceId,
    pub user: UserId,
    /// The user's role when the authorization started (kept for the record: the callback acts
    /// with the role the starting token has then).
    pub role: Role,
    pub app: String,
    /// The integration a reauth is for; `None` for a new connection.
    pub integration: Option<IntegrationId>,
    /// Non-secret setup fields typed before the popup opened.
    pub setup: BTreeMap<String, String>,
    /// The SHA-256 of the cookie the starting browser was given: the callback must carry it.
    pub browser: String,
    /// The SHA-256 of the API token the authorization was started with: the callback acts
    /// only while it is live, with its role then.
    pub token: String,
}

/// A callback's authorization, taken (and so consumed): the caller checks who it was for
/// before [`OAuthClient::exchange`] spends the code.
#[derive(Debug)]
pub struct Claimed {
    pub pending: Pending,
    verifier: String,
}

/// The SHA-256 of a browser's binding cookie or of a token, as pending authorizations keep
/// them.
pub fn binding_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Claimed {
    /// Whether `browser` (the cookie's value the callback carries, if any) is the one the
    /// authorization was started in. Compared in constant time.
    pub fn started_in(&self, browser: Option<&str>) -> bool {
        let Some(browser) = browser else { return false };
        let presented = binding_hash(browser);
        !self.pending.browser.is_empty()
            && presented.len() == self.pending.browser.len()
            && presented
                .bytes()
                .zip(self.pending.browser.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("this authorization is unknown, already used or expired; start connecting again")]
    UnknownState,
    #[error("the authorization was started by someone else or for another app")]
    Foreign,
    #[error(
        "this authorization was started in another browser: start connecting again from Harmony \
         in this one"
    )]
    OtherBrowser,
    #[error("the API token that started this authorization was revoked; sign in again and retry")]
    Revoked,
    #[error("the provider refused the authorization: {0}")]
    Denied(String),
    #[error(
        "the authorization answer names the issuer {got}, not {expected}: it did not come from \
         this app's authorization server; start connecting again"
    )]
    WrongIssuer { expected: String, got: String },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("the service's database failed: {0}")]
    Db(#[from] database::ServiceDbError),
}

impl OAuthClient {
    /// The issuer a callback's `iss` must name (RFC 9207): the configured one, or the origin
    /// of the authorization URL (`https://accounts.google.com`).
    pub fn expected_issuer(&self) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| self.authorize_url.origin().ascii_serialization())
    }

    /// Checks a callback's `iss` (RFC 9207) when the provider sent one: an answer naming
    /// another issuer may come from a server mixing flows up, and its code is never sent to
    /// this app's token endpoint.
    pub fn check_issuer(&self, iss: Option<&str>) -> Result<(), CallbackError> {
        let Some(iss) = iss else {
            return Ok(());
        };
        let expected = self.expected_issuer();
        if iss.trim_end_matches('/') == expected.trim_end_matches('/') {
            Ok(())
        } else {
            Err(CallbackError::WrongIssuer {
                expected,
                got: iss.to_owned(),
            })
        }
    }

    fn client(&self, redirect: &Url) -> Client {
        oauth2::Client::new(ClientId::new(self.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                self.client_secret.expose_secret().to_owned(),
            ))
            .set_auth_uri(AuthUrl::from_url(self.authorize_url.clone()))
            .set_token_uri(TokenUrl::from_url(self.token_url.clone()))
            .set_redirect_uri(RedirectUrl::from_url(redirect.clone()))
            .set_auth_type(if self.credentials_in_body {
                AuthType::RequestBody
            } else {
                AuthType::BasicAuth
            })
    }

    /// The authorization URL for `scopes`, with a fresh `state` and PKCE challenge, and the
    /// pending authorization stored under the state.
    pub async fn start(
        &self,
        db: &ServiceDb,
        redirect: &Url,
        scopes: &[&str],
        pending: &Pending,
    ) -> Result<Started, CallbackError> {
        let client = self.client(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scopes.iter().map(|s| Scope::new((*s).to_owned())))
            .set_pkce_challenge(challenge);
        for (name, value) in &self.extra_authorize_params {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        let (url, state) = request.url();
        let expires = Timestamp::now()
            .plus(time::Duration::try_from(STATE_TTL).unwrap_or(time::Duration::MINUTE));
        execute(
            db,
            "INSERT INTO oauth_states (state_hash, workspace_id, user_id, app, integration_id, \
             setup, verifier, expires_at, role, browser_hash, token_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                Bind::Text(state_hash(state.secret())),
                Bind::Text(pending.workspace.to_string()),
                Bind::Text(pending.user.to_string()),
                Bind::Text(pending.app.clone()),
                Bind::MaybeText(pending.integration.map(|id| id.to_string())),
                Bind::Text(serde_json::to_string(&pending.setup).unwrap_or_default()),
                Bind::Text(verifier.secret().clone()),
                Bind::Int(expires.unix_micros()),
                Bind::Text(pending.role.to_string()),
                Bind::Text(pending.browser.clone()),
                Bind::Text(pending.token.clone()),
            ],
        )
        .await?;
        Ok(Started { url })
    }

    /// Exchanges a claimed callback's code at the token endpoint.
    pub async fn exchange(
        &self,
        http: &reqwest::Client,
        redirect: &Url,
        claimed: &Claimed,
        code: &str,
    ) -> Result<Grant, CallbackError> {
        let client = self.client(redirect);
        let answer = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(claimed.verifier.clone()))
            .request_async(http)
            .await
            .map_err(token_error)?;
        Ok(grant_of(&answer, None, &[]))
    }

    /// Consumes the `state`, checks it was started in `browser`, and exchanges the code.
    pub async fn finish(
        &self,
        db: &ServiceDb,
        http: &reqwest::Client,
        redirect: &Url,
        state: &str,
        code: &str,
        browser: Option<&str>,
    ) -> Result<(Pending, Grant), CallbackError> {
        let claimed = claim(db, state).await?;
        if !claimed.started_in(browser) {
            return Err(CallbackError::OtherBrowser);
        }
        let grant = self.exchange(http, redirect, &claimed, code).await?;
        Ok((claimed.pending, grant))
    }

    /// A refresh with `refresh_token`. The old refresh token is kept when the provider returns
    /// none.
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        redirect: &Url,
        current: &Credentials,
    ) -> Result<Grant, ProviderError> {
        let refresh =
            current
                .refresh_token
                .as_ref()
                .ok_or_else(|| ProviderError::InvalidGrant {
                    detail: "the connection holds no refresh token".into(),
                })?;
        let client = self.client(redirect);
        let token = RefreshToken::new(refresh.expose_secret().to_owned());
        let answer = client
            .exchange_refresh_token(&token)
            .request_async(http)
            .await
            .map_err(token_error)?;
        Ok(grant_of(&answer, Some(current), &[]))
    }

    /// Revokes the connection's token at the provider. `Ok(true)` when the provider confirmed.
    pub async fn revoke(
        &self,
        http: &reqwest::Client,
        credentials: &Credentials,
    ) -> Result<bool, ProviderError> {
        let Some(revocation) = &self.revocation else {
            return Ok(false);
        };
        let token = credentials
            .refresh_token
            .as_ref()
            .or(credentials.access_token.as_ref());
        let Some(token) = token else { return Ok(false) };
        let response = match revocation {
            Revocation::DeleteRefreshToken(base) => {
                let url = crate::providers::endpoint(base, token.expose_secret())?;
                http.delete(url).send().await
            }
            Revocation::Rfc7009(url) => {
                let hint = if credentials.refresh_token.is_some() {
                    "refresh_token"
                } else {
                    "access_token"
                };
                let form = [("token", token.expose_secret()), ("token_type_hint", hint)];
                let request = http.post(url.clone()).form(&form);
                let request = if self.credentials_in_body {
                    request.form(&[
                        ("token", token.expose_secret()),
                        ("token_type_hint", hint),
                        ("client_id", self.client_id.as_str()),
                        ("client_secret", self.client_secret.expose_secret()),
                    ])
                } else {
                    request.basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
                };
                request.send().await
            }
        };
        let response = response.map_err(|error| ProviderError::Unavailable {
            detail: format!("revocation failed: {}", error.without_url()),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(true);
        }
        let body = crate::http::error_body(response).await;
        Err(crate::http::status_error(status, &body))
    }
}

fn grant_of(answer: &TokenAnswer, previous: Option<&Credentials>, requested: &[&str]) -> Grant {
    let mut credentials = previous.cloned().unwrap_or_default();
    credentials.access_token = Some(SecretString::from(answer.access_token().secret().clone()));
    if let Some(refresh) = answer.refresh_token() {
        credentials.refresh_token = Some(SecretString::from(refresh.secret().clone()));
    }
    credentials.expires_at = answer
        .expires_in()
        .and_then(|lifetime| time::Duration::try_from(lifetime).ok())
        .map(|lifetime| Timestamp::now().plus(lifetime));
    let extra = answer.extra_fields();
    if let Some(instance) = &extra.instance_url {
        credentials
            .facts
            .insert("instance_url".into(), instance.clone());
    }
    if let Some(id) = &extra.id {
        credentials.facts.insert("identity_url".into(), id.clone());
    }
    let scopes = answer
        .scopes()
        .map(|scopes| scopes.iter().map(|s| s.to_string()).collect())
        .unwrap_or_else(|| requested.iter().map(|s| (*s).to_owned()).collect());
    Grant {
        credentials,
        scopes,
    }
}

fn token_error<RE: std::error::Error + 'static>(
    error: RequestTokenError<RE, BasicErrorResponse>,
) -> ProviderError {
    match error {
        RequestTokenError::ServerResponse(answer) => {
            let detail = answer
                .error_description()
                .cloned()
                .unwrap_or_else(|| answer.error().to_string());
            match answer.error() {
                BasicErrorResponseType::InvalidGrant => ProviderError::InvalidGrant { detail },
                BasicErrorResponseType::Extension(code) if code == "temporarily_unavailable" => {
                    ProviderError::Unavailable { detail }
                }
                _ => ProviderError::Rejected {
                    status: 400,
                    detail,
                },
            }
        }
        RequestTokenError::Request(error) => ProviderError::Unavailable {
            detail: format!("the token endpoint could not be reached: {error}"),
        },
        RequestTokenError::Parse(_, body) => {
            let text = String::from_utf8_lossy(&body);
            // A 5xx page or a rate-limit body is not a token answer.
            ProviderError::Unavailable {
                detail: format!("the token endpoint answered: {}", error_detail(&text)),
            }
        }
        RequestTokenError::Other(text) => ProviderError::Protocol { detail: text },
    }
}

fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

#[derive(sqlx::FromRow)]
struct StateRow {
    workspace_id: String,
    user_id: String,
    app: String,
    integration_id: Option<String>,
    setup: String,
    verifier: String,
    expires_at: i64,
    role: String,
    browser_hash: String,
    token_hash: String,
}

/// Consumes a pending authorization: gone after this, whatever the outcome.
pub async fn claim(db: &ServiceDb, state: &str) -> Result<Claimed, CallbackError> {
    let hash = state_hash(state);
    let rows: Vec<StateRow> = fetch_all(
        db,
        "DELETE FROM oauth_states WHERE state_hash = $1 RETURNING workspace_id, user_id, app, \
         integration_id, setup, verifier, expires_at, role, browser_hash, token_hash",
        &[Bind::Text(hash)],
    )
    .await?;
    let row = rows.into_iter().next().ok_or(CallbackError::UnknownState)?;
    if row.expires_at < Timestamp::now().unix_micros() {
        return Err(CallbackError::UnknownState);
    }
    let foreign = || CallbackError::Foreign;
    let pending = Pending {
        workspace: row
            .workspace_id
            .parse::<WorkspaceId>()
            .map_err(|_| foreign())?,
        user: row.user_id.parse::<UserId>().map_err(|_| foreign())?,
        role: Role::try_from(row.role).map_err(|_| foreign())?,
        app: row.app,
        integration: row
            .integration_id
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|_| foreign())?,
        setup: serde_json::from_str(&row.setup).unwrap_or_default(),
        browser: row.browser_hash,
        token: row.token_hash,
    };
    Ok(Claimed {
        pending,
        verifier: row.verifier,
    })
}

/// Drops pending authorizations that expired unused.
pub async fn purge_expired_states(db: &ServiceDb) -> Result<u64, database::ServiceDbError> {
    execute(
        db,
        "DELETE FROM oauth_states WHERE expires_at < $1",
        &[Bind::Int(Timestamp::now().unix_micros())],
    )
    .await
}
