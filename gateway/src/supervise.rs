//! Keeping long-running work running: a task that fails starts again, and a worker whose
//! subscription to the log ends counts as failed.

/// Runs `task` for as long as the service runs: when it fails, the failure is logged and the
/// task starts again a second later (the log or the database away for a while, say); when it
/// finishes, it is done.
pub(crate) fn supervise<F, Fut, E>(name: &'static str, mut task: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display + Send,
{
    tokio::spawn(async move {
        while let Err(error) = task().await {
            tracing::warn!(task = name, %error, "stopped; starting again in a second");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

/// A worker that follows the log runs for as long as the service does: its end is a failure
/// to start again from.
pub(crate) fn until_ended<E: std::fmt::Display>(outcome: Result<(), E>) -> Result<(), String> {
    match outcome {
        Ok(()) => Err("its subscription to the log ended".into()),
        Err(error) => Err(error.to_string()),
    }
}
