//! Local servers that speak the providers' wire formats, for the tests, `harmony bench sync`,
//! `serve --demo` and `harmony fake-provider`; never in the production build. Each holds a dataset, issues and checks tokens like the real token endpoints, and has
//! faults that can be switched on while it runs: 429 with `Retry-After`, 5xx, slow answers,
//! expired access tokens, revoked refresh tokens, many pages, a stale sync token.

// Handlers answer errors with whole responses, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::oneshot;
use url::Url;

pub mod caldav;
pub mod google;
pub mod hubspot;
pub mod oauth;
pub mod salesforce;
pub(crate) mod store;
pub mod todoist;
pub mod twilio;
pub mod zendesk;

/// Faults a test switches on while a fake runs. The counted ones answer that many requests
/// and then stop by themselves.
#[derive(Debug, Default)]
pub struct Faults {
    rate_limited: AtomicU32,
    retry_after_seconds: AtomicU64,
    unavailable: AtomicU32,
    quota: AtomicU32,
    delay_ms: AtomicU64,
}

impl Faults {
    /// The next `count` API calls answer 429 with `Retry-After: seconds`.
    pub fn rate_limit(&self, count: u32, retry_after_seconds: u64) {
        self.retry_after_seconds
            .store(retry_after_seconds, Ordering::SeqCst);
        self.rate_limited.store(count, Ordering::SeqCst);
    }

    /// The next `count` API calls answer 503.
    pub fn unavailable(&self, count: u32) {
        self.unavailable.store(count, Ordering::SeqCst);
    }

    /// The next `count` API calls answer 403 with the provider's quota reason (Google's way
    /// of saying 429); fakes of providers without one answer 429.
    pub fn quota(&self, count: u32) {
        self.quota.store(count, Ordering::SeqCst);
    }

    /// Every answer waits this long first.
    pub fn slow(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// What a fake has served, for tests to assert on.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub unavailable: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

/// A running fake: its base URL, and the server stops when this is dropped.
#[derive(Debug)]
pub struct FakeServer {
    pub base: Url,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeServer {
    /// Serves `router` on a free loopback port until dropped.
    pub async fn start(router: Router) -> std::io::Result<Self> {
        Self::start_on(router, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(router: Router, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "a fake provider server stopped");
            }
        });
        let base = Url::parse(&format!("http://{addr}/")).expect("a loopback URL parses");
        Ok(Self {
            base,
            addr,
            stop: Some(stop),
        })
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How a provider words a fault: the body of its 429 and its 5xx.
#[derive(Clone, Debug)]
pub(crate) struct FaultShape {
    pub(crate) rate_limited: &'static str,
    pub(crate) unavailable: &'static str,
    /// A 403 body carrying a quota reason, for providers that rate-limit that way.
    pub(crate) quota: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub(crate) struct FaultLayer {
    pub(crate) faults: Arc<Faults>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) shape: FaultShape,
}

/// Applies the switched-on faults before a request reaches the fake's handlers.
pub(crate) async fn apply_faults(
    State(layer): State<FaultLayer>,
    request: Request,
    next: Next,
) -> Response {
    layer.counters.requests.fetch_add(1, Ordering::SeqCst);
    let delay = layer.faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if Faults::take(&layer.faults.rate_limited) {
        layer.counters.rate_limited.fetch_add(1, Ordering::SeqCst);
        let seconds = layer.faults.retry_after_seconds.load(Ordering::SeqCst);
        let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, layer.shape.rate_limited);
        response.headers_mut().insert(
            "retry-after",
            HeaderValue::from_str(&seconds.to_string()).expect("digits are a header value"),
        );
        return response;
    }
    if Faults::take(&layer.faults.quota) {
        layer.counters.rate_limited.fetch_add(1, Ordering::SeqCst);
        return match layer.shape.quota {
            Some(body) => json_response(StatusCode::FORBIDDEN, body),
            None => json_response(StatusCode::TOO_MANY_REQUESTS, layer.shape.rate_limited),
        };
    }
    if Faults::take(&layer.faults.unavailable) {
        layer.counters.unavailable.fetch_add(1, Ordering::SeqCst);
        return json_response(StatusCode::SERVICE_UNAVAILABLE, layer.shape.unavailable);
    }
    next.run(request).await
}

pub(crate) fn json_response(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [("content-type", "application/json;charset=utf-8")],
        body,
    )
        .into_response()
}

/// A random token-like string with a recognisable prefix.
pub(crate) fn token(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}-{}", hex::encode(bytes))
}

/// `router` behind the switchable faults.
pub(crate) fn with_faults(
    router: Router,
    faults: &Arc<Faults>,
    counters: &Arc<Counters>,
    shape: FaultShape,
) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        FaultLayer {
            faults: faults.clone(),
            counters: counters.clone(),
            shape,
        },
        apply_faults,
    ))
}

/// The user and password of an `Authorization: Basic` header.
pub(crate) fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let encoded = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    let (user, password) = pair.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// An object literal as a map, for fakes building records.
pub(crate) fn object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}
