//! The per-token rate limit: each token may make `per_second` requests a second on average,
//! in bursts of up to `burst`; beyond that it is answered 429 with `Retry-After`. Tokens
//! created `--unlimited` are exempt.

use std::num::NonZeroU32;
use std::sync::Arc;
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
