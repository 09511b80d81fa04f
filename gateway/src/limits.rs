//! The per-token limits: each token may make `per_second` requests a second on average, in
//! bursts of up to `burst`, through the API and the console together; beyond that it is
//! answered 429 with `Retry-After`. Tokens created `--unlimited` are exempt. And each token
//! may hold a few event streams open at once ([`Streams`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// How fast one token may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// The limit `per_second`/`burst` describe; `None` (no limit) when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(per_second)?;
        Some(Self {
            per_second,
            burst: NonZeroU32::new(burst).unwrap_or(per_second),
        })
    }
}

/// The limiter of one process, keyed by the token's hash.
#[derive(Clone, Debug)]
pub(crate) struct Limiter {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` when the token may call now; otherwise how long until it may.
    pub(crate) fn check(&self, token_hash: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&token_hash.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets tokens that have been quiet long enough to be back at a full burst.
    pub(crate) fn forget_quiet(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// A 429 for a token over its rate limit, with when to try again.
pub(crate) fn rate_limited(wait: Duration) -> crate::problem::Problem {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    crate::problem::Problem::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("this token has made too many requests: try again in {seconds} s"),
    )
    .retry_after(seconds)
}

/// Things each token holds at once in this process — open event streams, reads waiting for
/// the read models — at most `max` of them.
#[derive(Debug)]
pub(crate) struct PerToken {
    open: Arc<Mutex<HashMap<String, usize>>>,
    max: usize,
}

/// One place a token holds; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    token_hash: String,
}

impl PerToken {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// One more place for the token, or `None` when it holds `max` already.
    pub(crate) fn open(&self, token_hash: &str) -> Option<Slot> {
        let mut open = self.open.lock().expect("the per-token places' lock");
        let count = open.entry(token_hash.to_owned()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            open: self.open.clone(),
            token_hash: token_hash.to_owned(),
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("the per-token places' lock");
        if let Some(count) = open.get_mut(&self.token_hash) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.token_hash);
            }
        }
    }
}

/// The most a request body may carry: generous for a mapping or a Companion action, small
/// enough that nobody can fill the memory with one request.
pub(crate) const BODY_LIMIT_BYTES: usize = 256 * 1024;
