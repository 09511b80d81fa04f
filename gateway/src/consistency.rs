//! Reading your own writes. The read models (Installed, the sync logs) follow the log a moment
//! behind it, in this process or another one. Every answer to a request that appended to the
//! log says how far it wrote (`Harmony-Position`); a later request that sends that number back
//! (`Harmony-Min-Position`) is answered only once every read model has applied the log that
//! far — waiting up to [`READ_WAIT`] for it, then refused with 503 `not_caught_up`.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;
use crate::AppState;

/// The answer's header: the log position the request's appends reached.
pub(crate) const POSITION: &str = "harmony-position";
/// The request's header: answer from read models that have applied the log at least this far.
pub(crate) const MIN_POSITION: &str = "harmony-min-position";
/// How long a request waits for the read models to reach its `Harmony-Min-Position`.
pub(crate) const READ_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(value) = request.headers().get(MIN_POSITION) {
        let Some(min) = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "bad_min_position",
                "Harmony-Min-Position is a log position (a whole number), as an earlier \
                 answer's Harmony-Position gave it",
            )
            .into_response();
        };
        if let Err(problem) = caught_up(&state, min).await {
            return problem.into_response();
        }
    }
    let (mut response, written) = eventstore::written::tracking(next.run(request)).await;
    if let Some(position) = written {
        response
            .headers_mut()
            .insert(POSITION, HeaderValue::from(position));
    }
    response
}

/// Waits until every read model has applied the log up to `min`, for [`READ_WAIT`] at most.
async fn caught_up(state: &AppState, min: u64) -> Result<(), Problem> {
    let deadline = tokio::time::Instant::now() + READ_WAIT;
    let mut pause = Duration::from_millis(2);
    loop {
        let mut behind = None;
        for projection in projections::runner::Projection::ALL {
            let position = projection.checkpoint(&state.read).await.map_err(|error| {
                Problem::failed("cannot read the read models' positions", &error)
            })?;
            if position < min {
                behind = Some((projection.name(), position));
                break;
            }
        }
        let Some((name, position)) = behind else {
            return Ok(());
        };
        if tokio::time::Instant::now() + pause > deadline {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_caught_up",
                format!(
                    "the read model {name} has applied the log up to position {position}, not \
                     yet {min}: retry shortly"
                ),
            )
            .retry_after(1));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
