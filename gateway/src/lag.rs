//! How far each projection is behind the log: what `/healthz`, `/readyz` and `/metrics` report.

use crate::AppState;

/// One projection's lag behind the log.
pub(crate) struct Lag {
    pub(crate) name: &'static str,
    pub(crate) position: u64,
    /// Events it has still to apply.
    pub(crate) behind: u64,
    /// How long ago the oldest of them happened.
    pub(crate) seconds: f64,
}

/// The log's head and every projection's lag; `Err` says what cannot be read.
pub(crate) async fn projection_lags(state: &AppState) -> Result<(u64, Vec<Lag>), &'static str> {
    let head = state.store.head_position().await.map_err(|error| {
        tracing::error!(%error, "cannot read the head of the event log");
        "the event log cannot be read"
    })?;
    let mut lags = Vec::new();
    for projection in projections::runner::Projection::ALL {
        let position = projection.checkpoint(&state.db).await.map_err(|error| {
            tracing::error!(%error, "cannot read a projection's checkpoint");
            "the read models cannot be read"
        })?;
        let behind = head.saturating_sub(position);
        let seconds = if behind == 0 {
            0.0
        } else {
            match state.store.read_all(position + 1, 1).await {
                Ok(next) => next.first().map_or(0.0, |event| {
                    let age = domain::Timestamp::now().unix_micros()
                        - event.metadata.occurred_at.unix_micros();
                    (age.max(0) as f64) / 1e6
                }),
                Err(_) => f64::NAN,
            }
        };
        lags.push(Lag {
            name: projection.name(),
            position,
            behind,
            seconds,
        });
    }
    Ok((head, lags))
}
