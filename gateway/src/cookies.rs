//! The service's cookies: reading one from a request, writing one with the attributes every
//! cookie here carries (HttpOnly, SameSite=Lax, and Secure when the public base URL is
//! https), and the browser binding of OAuth flows.
//!
//! An OAuth2 flow is bound to the browser that started it: starting one gives the browser a
//! random `harmony_browser` cookie (or reuses the one it has, so several flows may run at
//! once), and the pending authorization keeps its SHA-256. The callback is refused in a
//! browser without it — an authorization URL sent to somebody else connects nothing.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine;

use crate::AppState;

/// The browser binding's cookie.
pub(crate) const BROWSER: &str = "harmony_browser";

/// How long a browser binding lasts: as long as a pending authorization, renewed by each flow.
const BROWSER_MAX_AGE_SECONDS: u64 = 600;

/// A new random value for a cookie or a CSRF token.
pub(crate) fn random() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The value of the cookie `name` in `headers`, if any.
pub(crate) fn named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value.to_owned())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, `Secure` when `secure`; `max_age` 0 clears
/// the cookie.
pub(crate) fn set(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .expect("cookie names and values here are URL-safe")
}

/// The browser a request comes from, for binding an OAuth2 flow to it.
#[derive(Clone, Debug)]
pub(crate) struct Browser {
    secret: String,
    secure: bool,
}

impl Browser {
    /// The SHA-256 a pending authorization keeps.
    pub(crate) fn hash(&self) -> String {
        adapters::oauth::binding_hash(&self.secret)
    }

    /// The `Set-Cookie` that gives (or renews) the browser its binding.
    pub(crate) fn cookie(&self) -> HeaderValue {
        set(
            BROWSER,
            &self.secret,
            "/",
            BROWSER_MAX_AGE_SECONDS,
            self.secure,
        )
    }
}

impl FromRequestParts<AppState> for Browser {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let secret = named(&parts.headers, BROWSER)
            .filter(|value| {
                value.len() == 43
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .unwrap_or_else(random);
        Ok(Self {
            secret,
            secure: state.secure_cookies,
        })
    }
}
