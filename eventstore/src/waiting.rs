//! Waiting in tests for something that happens in another task, process or server: poll a
//! condition until it holds, with a deadline, never a bare sleep.
#![allow(clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(10);

/// Polls `condition` until it yields a value, and returns it; panics naming `what` if
/// `within` passes first.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}
