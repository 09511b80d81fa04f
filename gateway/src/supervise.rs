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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_task_starts_again_a_second_later_until_it_finishes() {
        let runs = Arc::new(AtomicU32::new(0));
        let started = tokio::time::Instant::now();
        supervise("flaky", {
            let runs = runs.clone();
            move || {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if run < 3 {
                        Err(format!("run {run} failed"))
                    } else {
                        Ok(())
                    }
                }
            }
        })
        .await
        .expect("the supervisor ends when the task finishes");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2010),
            "two restarts, a second apart: {elapsed:?}"
        );
    }

    #[test]
    fn a_worker_whose_subscription_ends_has_failed() {
        assert!(until_ended(Ok::<(), String>(())).is_err());
        assert_eq!(
            until_ended(Err::<(), _>("the log is away")),
            Err("the log is away".to_owned())
        );
    }
}
