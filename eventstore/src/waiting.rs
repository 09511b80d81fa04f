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
    eventually_ok(within, what, || {
        let polled = condition();
        async move { polled.await.ok_or_else(|| "not yet".to_owned()) }
    })
    .await
}

/// Polls `condition` until it succeeds, and returns its value; panics with `what` and the last
/// failure if `within` passes first. For conditions whose failure says what is still wrong.
pub async fn eventually_ok<T, F, Fut>(within: Duration, what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match condition().await {
            Ok(value) => return value,
            Err(failure) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not happen within {within:?}: {failure}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}
