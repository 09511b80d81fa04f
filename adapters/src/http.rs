//! HTTP to providers: retries with jittered exponential backoff inside a time budget, the
//! provider's rate-limit signals honoured (`Retry-After`, HubSpot's `X-HubSpot-RateLimit-*`),
//! and every failure classified into a [`ProviderError`] that says whether trying again helps.
//!
//! Every request goes through [`Outbound::route`](crate::outbound::Outbound::route), so a URL
//! that names a host the service must not reach is refused before anything is sent. Bodies
//! are read up to a cap ([`MAX_BODY_BYTES`]), so a hostile server cannot fill the memory. A
//! call made while a user waits ([`interactive`]) ends within [`INTERACTIVE_DEADLINE`],
//! retries included; background syncs keep the policy's whole budget.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::outbound::Outbound;

/// Why a provider call did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the access token (HTTP 401): refresh it, or reauthenticate.
    #[error("the provider refused the credentials: {detail}")]
    Unauthorized { detail: String },
    /// The token endpoint answered `invalid_grant`: the refresh token is dead.
    #[error("the provider refused the refresh token: {detail}")]
    InvalidGrant { detail: String },
    /// The provider understood and refused the request; its reason in words.
    #[error("the provider refused the request (HTTP {status}): {detail}")]
    Rejected { status: u16, detail: String },
    /// Still rate limited when the retry budget ran out.
    #[error("the provider's rate limit held past the retry budget: {detail}")]
    RateLimited { detail: String },
    /// 5xx, timeouts or connection failures past the retry budget.
    #[error("the provider is unavailable: {detail}")]
    Unavailable { detail: String },
    /// The incremental cursor is no longer valid (e.g. Google's 410 Gone): a full sync is needed.
    #[error("the provider no longer accepts the sync cursor: {detail}")]
    StaleCursor { detail: String },
    /// The answer did not have the documented shape.
    #[error("unexpected answer from the provider: {detail}")]
    Protocol { detail: String },
    /// Something about the connection itself is missing (a setup field, a credential).
    #[error("{0}")]
    Misconfigured(String),
    /// The URL names a host the service does not connect to (loopback, a private network …);
    /// nothing was sent.
    #[error("{0}")]
    Refused(#[from] crate::outbound::Refused),
    /// The service's own storage (its event log, database or vault) failed while a call
    /// needed it, not the provider. `outage` when that storage is only away for a while
    /// (restarting, between leaders): the same call may succeed in a few seconds.
    #[error("the service's storage failed: {what}")]
    Storage {
        what: &'static str,
        outage: bool,
        #[source]
        source: eventstore::Source,
    },
}

impl ProviderError {
    /// Whether the same call may succeed later without anyone doing anything.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Unavailable { .. }
                | ProviderError::Storage { .. }
        )
    }

    /// The service's own storage failed while doing `what`, because of `error`.
    pub fn storage(
        what: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let outage = eventstore::caused_by_outage(&error) || database::caused_by_outage(&error);
        ProviderError::Storage {
            what,
            outage,
            source: eventstore::Source::new(error),
        }
    }

    /// Whether this is the service's own storage away for a while.
    pub fn is_storage_outage(&self) -> bool {
        matches!(self, ProviderError::Storage { outage: true, .. })
    }

    /// A stable code for sync logs and action results.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Unauthorized { .. } => "unauthorized",
            ProviderError::InvalidGrant { .. } => "invalid_grant",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Unavailable { .. } => "unavailable",
            ProviderError::StaleCursor { .. } => "stale_cursor",
            ProviderError::Protocol { .. } => "protocol",
            ProviderError::Misconfigured(_) => "misconfigured",
            ProviderError::Refused(_) => "outbound_refused",
            ProviderError::Storage { outage: true, .. } => "storage_unavailable",
            ProviderError::Storage { outage: false, .. } => "storage",
        }
    }

    pub(crate) fn protocol(detail: impl std::fmt::Display) -> Self {
        ProviderError::Protocol {
            detail: detail.to_string(),
        }
    }
}

/// How hard a call is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff's upper bound; each retry doubles it.
    pub base: Duration,
    /// No single wait is longer than this (a longer `Retry-After` is a failure).
    pub max_delay: Duration,
    /// Retries stop once waiting again would end past this much time since the first attempt.
    pub budget: Duration,
    /// One attempt's time limit.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            budget: Duration::from_secs(120),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A client for one provider connection. Clones share the rate-limit state, so every call of
/// one integration waits when the provider said its window is used up.
#[derive(Clone, Debug)]
pub struct ProviderHttp {
    outbound: Outbound,
    policy: RetryPolicy,
    paused_until: Arc<Mutex<Option<Instant>>>,
}

/// The most a provider's answer may carry. A CalDAV multiget of a page of events or a page of
/// CRM records is well under it.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The most of an error answer that is read: its explanation is cut to a few hundred
/// characters anyway.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// How long a call made while a user waits (connect, test, reauth, the mapping editor) may
/// take in all, retries included.
pub const INTERACTIVE_DEADLINE: Duration = Duration::from_secs(15);

tokio::task_local! {
    /// When the user-facing call this task runs inside must be answered.
    static DEADLINE: Instant;
}

/// Runs `work` as a call a user waits for: every provider request inside it ends by
/// [`INTERACTIVE_DEADLINE`] from now (or the deadline of the interactive call it is part of,
/// if that is sooner), retries included, and the whole of it is cut there.
pub async fn interactive<T, E>(
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<ProviderError>,
{
    let now = Instant::now();
    let ours = now + INTERACTIVE_DEADLINE;
    let deadline = deadline().map_or(ours, |outer| outer.min(ours));
    let work = DEADLINE.scope(deadline, work);
    match tokio::time::timeout(deadline.saturating_duration_since(now), work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ProviderError::Unavailable {
            detail: format!(
                "the provider did not answer within {} s",
                INTERACTIVE_DEADLINE.as_secs()
            ),
        }
        .into()),
    }
}

fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

impl ProviderHttp {
    pub fn new(outbound: Outbound, policy: RetryPolicy) -> Self {
        Self {
            outbound,
            policy,
            paused_until: Arc::default(),
        }
    }

    /// A client for operator-configured endpoints only (OAuth token and revocation URLs):
    /// follows no redirects and names itself.
    pub fn default_client() -> reqwest::Client {
        Outbound::guarded_only().trusted().clone()
    }

    /// Which client each URL goes through.
    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Sends the request `build` makes, again after transient failures, and returns the first
    /// response that is not a retryable failure. A success or a non-retryable status comes
    /// back as is: the provider module reads its own error shapes.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, ProviderError> {
        self.send_with(build, Replay::Safe).await
    }

    /// Like [`send`](Self::send) for a request that is not safe to repeat (an SMS, an email
    /// at a provider without idempotency keys): it is sent again only when the provider
    /// certainly did not act on it — a 429, or a connection that never opened. A 5xx or a
    /// timeout may have been acted on, so it comes back as a failure at once.
    pub async fn send_once(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, ProviderError> {
        self.send_with(build, Replay::OnlyUnprocessed).await
    }

    async fn send_with(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        replay: Replay,
    ) -> Result<Response, ProviderError> {
        let started = Instant::now();
        let budget = match deadline() {
            Some(deadline) => self
                .policy
                .budget
                .min(deadline.saturating_duration_since(started)),
            None => self.policy.budget,
        };
        let mut attempt: u32 = 0;
        loop {
            self.wait_for_window().await;
            let left = budget.saturating_sub(started.elapsed());
            let request = build(self.outbound.trusted())
                .timeout(self.policy.timeout.min(left.max(Duration::from_millis(1))))
                .build()
                .map_err(|error| {
                    ProviderError::Misconfigured(format!(
                        "the request cannot be made: {}",
                        error.without_url()
                    ))
                })?;
            let client = self.outbound.route(request.url())?;
            let outcome = client.execute(request).await;
            let (wait, failure) = match outcome {
                Ok(response) => {
                    self.note_rate_limit(response.headers());
                    match quota_refusal(response).await {
                        // Google answers a rate limit as a 403 with a quota reason.
                        Err(detail) => (None, ProviderError::RateLimited { detail }),
                        Ok(response) => {
                            let status = response.status();
                            if !is_transient(status) {
                                return Ok(response);
                            }
                            let told = retry_after(response.headers());
                            let body = error_body(response).await;
                            let detail =
                                format!("HTTP {}: {}", status.as_u16(), error_detail(&body));
                            if status == StatusCode::TOO_MANY_REQUESTS {
                                (told, ProviderError::RateLimited { detail })
                            } else if replay == Replay::OnlyUnprocessed {
                                return Err(ProviderError::Unavailable {
                                    detail: format!("{detail} ({NOT_REPEATED})"),
                                });
                            } else {
                                (told, ProviderError::Unavailable { detail })
                            }
                        }
                    }
                }
                Err(error) => {
                    if let Some(refused) = crate::outbound::refusal_in(&error) {
                        return Err(ProviderError::Refused(refused));
                    }
                    if replay == Replay::OnlyUnprocessed && !error.is_connect() {
                        return Err(ProviderError::Unavailable {
                            detail: format!("{} ({NOT_REPEATED})", describe_transport_error(error)),
                        });
                    }
                    (
                        None,
                        ProviderError::Unavailable {
                            detail: describe_transport_error(error),
                        },
                    )
                }
            };
            let delay = match wait {
                Some(told) if told > self.policy.max_delay => return Err(failure),
                Some(told) => told + jitter(Duration::from_millis(100)),
                None => jitter(self.backoff_bound(attempt)),
            };
            if started.elapsed() + delay > budget {
                return Err(failure);
            }
            tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, %failure, "retrying a provider call");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Sends, then reads a JSON body from a success; any other status becomes an error with
    /// the provider's own words.
    pub async fn json(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Value, ProviderError> {
        let response = self.send(build).await?;
        let response = check(response).await?;
        json_body(response).await
    }

    fn backoff_bound(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.policy
            .base
            .saturating_mul(factor)
            .min(self.policy.max_delay)
    }

    async fn wait_for_window(&self) {
        let until = *self.paused_until.lock().expect("rate-limit state lock");
        if let Some(until) = until {
            let now = Instant::now();
            if until > now {
                tokio::time::sleep(until - now).await;
            }
        }
    }

    /// HubSpot says how many calls remain in its window; at zero the next call waits for the
    /// window to end rather than earn a 429.
    fn note_rate_limit(&self, headers: &HeaderMap) {
        let remaining = header_u64(headers, "x-hubspot-ratelimit-remaining");
        let interval = header_u64(headers, "x-hubspot-ratelimit-interval-milliseconds");
        if let (Some(0), Some(interval)) = (remaining, interval) {
            let until = Instant::now() + Duration::from_millis(interval.min(60_000));
            *self.paused_until.lock().expect("rate-limit state lock") = Some(until);
        }
    }
}

const NOT_REPEATED: &str = "not repeated: the provider may have acted on it";

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replay {
    /// Reads, and writes the provider deduplicates (idempotency keys, client-chosen ids).
    Safe,
    /// Writes the provider would perform twice.
    OnlyUnprocessed,
}

/// A 403 that is a rate limit in disguise (Google's `usageLimits` reasons) becomes the
/// refusal's detail; any other response comes back unread.
async fn quota_refusal(response: Response) -> Result<Response, String> {
    if response.status() != StatusCode::FORBIDDEN {
        return Ok(response);
    }
    let status = response.status();
    let headers = response.headers().clone();
    let body = error_body(response).await;
    let text = body.as_str();
    if text.contains("\"rateLimitExceeded\"") || text.contains("\"userRateLimitExceeded\"") {
        return Err(format!("HTTP 403: {}", error_detail(text)));
    }
    let mut rebuilt = http::Response::new(body.into_bytes());
    *rebuilt.status_mut() = status;
    *rebuilt.headers_mut() = headers;
    Ok(Response::from(rebuilt))
}

fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 423 | 477 | 500 | 502 | 503 | 504)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::format_description::well_known::Rfc2822;
    let at = time::OffsetDateTime::parse(value, &format).ok()?;
    let wait = at - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

fn jitter(bound: Duration) -> Duration {
    let millis = bound.as_millis().min(u128::from(u64::MAX)) as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

fn describe_transport_error(error: reqwest::Error) -> String {
    // The URL may carry a token in its query (Google revoke): say what failed, not where.
    let error = error.without_url();
    if error.is_timeout() {
        "the provider did not answer in time".to_owned()
    } else if error.is_connect() {
        "could not reach the provider".to_owned()
    } else {
        format!("the call failed: {error}")
    }
}

/// Turns a non-success response into the matching error, with the provider's words.
pub async fn check(response: Response) -> Result<Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = error_body(response).await;
    Err(status_error(status, &body))
}

/// Reads a body of at most `limit` bytes; a longer one is a protocol error, and what was read
/// of it is dropped.
pub async fn read_capped(
    mut response: Response,
    limit: usize,
) -> Result<bytes::Bytes, ProviderError> {
    let too_large = || {
        ProviderError::protocol(format!(
            "the answer is larger than the {} MiB the service reads",
            limit / (1024 * 1024)
        ))
    };
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|error| ProviderError::Unavailable {
                detail: describe_transport_error(error),
            })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

/// A success's body as text, read up to [`MAX_BODY_BYTES`].
pub async fn text_body(response: Response) -> Result<String, ProviderError> {
    let bytes = read_capped(response, MAX_BODY_BYTES).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A success's body as JSON, read up to [`MAX_BODY_BYTES`].
pub async fn json_body<T: serde::de::DeserializeOwned>(
    response: Response,
) -> Result<T, ProviderError> {
    let bytes = read_capped(response, MAX_BODY_BYTES).await?;
    serde_json::from_slice(&bytes)
        .map_err(|error| ProviderError::protocol(format!("the body is not JSON: {error}")))
}

/// An error answer's body: its first [`MAX_ERROR_BODY_BYTES`], which is more than its
/// explanation needs.
pub async fn error_body(mut response: Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The error a non-success status and body mean, in any provider's shape.
pub fn status_error(status: StatusCode, body: &str) -> ProviderError {
    let detail = error_detail(body);
    match status.as_u16() {
        401 => ProviderError::Unauthorized { detail },
        410 => ProviderError::StaleCursor { detail },
        429 => ProviderError::RateLimited { detail },
        code if code >= 500 => ProviderError::Unavailable { detail },
        code => {
            if body_error_code(body).as_deref() == Some("invalid_grant") {
                ProviderError::InvalidGrant { detail }
            } else {
                ProviderError::Rejected {
                    status: code,
                    detail,
                }
            }
        }
    }
}

fn body_error_code(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    value.get("error")?.as_str().map(str::to_owned)
}

/// The provider's own explanation from an error body, whatever its shape: `message`,
/// `error_description`, `error.message`, `[{"message"}]`, `description`, or the text itself.
pub fn error_detail(body: &str) -> String {
    const LIMIT: usize = 300;
    let text = match serde_json::from_str::<Value>(body) {
        Ok(value) => json_message(&value).unwrap_or_else(|| body.to_owned()),
        Err(_) => body.trim().to_owned(),
    };
    let text = if text.is_empty() {
        "no explanation given".to_owned()
    } else {
        text
    };
    if text.len() > LIMIT {
        let mut cut = LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &text[..cut])
    } else {
        text
    }
}

fn json_message(value: &Value) -> Option<String> {
    if let Some(first) = value.as_array().and_then(|items| items.first()) {
        return json_message(first);
    }
    for key in ["error_description", "message", "description", "detail"] {
        if let Some(text) = value.get(key).and_then(Value::as_str) {
            return Some(text.to_owned());
        }
    }
    match value.get("error") {
        Some(Value::String(text)) => Some(text.clone()),
        Some(nested @ Value::Object(_)) => json_message(nested),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within a millisecond of `expected`: a paused clock's sleeps end on the millisecond.
    fn about(elapsed: Duration, expected: Duration) -> bool {
        elapsed >= expected && elapsed < expected + Duration::from_millis(2)
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_up_rate_limit_window_is_waited_out_before_the_next_call() {
        let http = ProviderHttp::new(Outbound::loopback(), RetryPolicy::default());
        let started = Instant::now();
        http.wait_for_window().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "nothing said: no wait");

        let mut headers = HeaderMap::new();
        headers.insert("x-hubspot-ratelimit-remaining", "0".parse().unwrap());
        headers.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            "10000".parse().unwrap(),
        );
        http.note_rate_limit(&headers);
        // Clones share the window: every call of the integration waits.
        http.clone().wait_for_window().await;
        assert!(
            about(started.elapsed(), Duration::from_secs(10)),
            "{:?}",
            started.elapsed()
        );
        http.wait_for_window().await;
        assert!(
            about(started.elapsed(), Duration::from_secs(10)),
            "the window is over"
        );

        // A window longer than a minute is waited for a minute at most.
        headers.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            "3600000".parse().unwrap(),
        );
        http.note_rate_limit(&headers);
        let again = Instant::now();
        http.wait_for_window().await;
        assert!(
            about(again.elapsed(), Duration::from_secs(60)),
            "{:?}",
            again.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_interactive_call_is_cut_at_its_deadline_and_a_nested_one_keeps_the_outer() {
        let started = Instant::now();
        let slow = interactive(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, ProviderError>(())
        })
        .await;
        assert!(
            matches!(slow, Err(ProviderError::Unavailable { .. })),
            "{slow:?}"
        );
        assert!(about(started.elapsed(), INTERACTIVE_DEADLINE));

        // A call made 10 s into an interactive one has what is left of the outer deadline.
        let started = Instant::now();
        let nested = interactive(async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            interactive(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, ProviderError>(())
            })
            .await
        })
        .await;
        assert!(nested.is_err());
        assert!(
            about(started.elapsed(), INTERACTIVE_DEADLINE),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let http = ProviderHttp::new(
            Outbound::loopback(),
            RetryPolicy {
                base: Duration::from_millis(100),
                max_delay: Duration::from_secs(1),
                ..RetryPolicy::default()
            },
        );
        let bounds: Vec<u128> = (0..6).map(|n| http.backoff_bound(n).as_millis()).collect();
        assert_eq!(bounds, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(http.backoff_bound(u32::MAX), Duration::from_secs(1));
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(400)) <= Duration::from_millis(400));
        }
    }

    #[test]
    fn error_detail_reads_every_shape_providers_use() {
        assert_eq!(
            error_detail(
                r#"{"status":"error","message":"Contact already exists. Existing ID: 777"}"#
            ),
            "Contact already exists. Existing ID: 777"
        );
        assert_eq!(
            error_detail(
                r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#
            ),
            "Session expired or invalid"
        );
        assert_eq!(
            error_detail(r#"{"error":{"code":410,"message":"Sync token is no longer valid"}}"#),
            "Sync token is no longer valid"
        );
        assert_eq!(
            error_detail(
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#
            ),
            "Token has been expired or revoked."
        );
        assert_eq!(error_detail("  plain words "), "plain words");
        assert_eq!(error_detail(""), "no explanation given");
        assert!(error_detail(&"x".repeat(1000)).chars().count() <= 301);
    }

    #[test]
    fn statuses_map_to_what_the_caller_can_do() {
        assert!(matches!(
            status_error(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#),
            ProviderError::InvalidGrant { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::UNAUTHORIZED, "{}"),
            ProviderError::Unauthorized { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::GONE, "{}"),
            ProviderError::StaleCursor { .. }
        ));
        assert!(status_error(StatusCode::BAD_GATEWAY, "").retryable());
        assert!(!status_error(StatusCode::CONFLICT, "").retryable());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }
}
