//! Reading your own writes. The read models (Installed, the sync logs) follow the log a moment
//! behind it, in this process or another one. Every answer to a request that appended to the
//! log says how far it wrote (`Harmony-Position`); a later request that sends that number back
//! (`Harmony-Min-Position`) is answered only once every read model has applied the log that
//! far — waiting up to [`READ_WAIT`] for it, then refused with 503 `not_caught_up`. The
//! console's forms, whose redirects lead to pages drawn from the read models, are answered
//! once the read models have applied what they wrote ([`settle`]).
//!
//! An integration's history and state are read from the log itself, which on JetStream may
//! answer from a replica a moment behind. A request that waited for a position also reads
//! the integration's stream at least as far as Installed has folded it by then
//! ([`log_follows_read_models`]).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use domain::{IntegrationId, StreamName};

use crate::problem::Problem;
use crate::AppState;

/// The answer's header: the log position the request's appends reached.
pub(crate) const POSITION: &str = "harmony-position";
/// The request's header: answer from read models that have applied the log at least this far.
pub(crate) const MIN_POSITION: &str = "harmony-min-position";
/// How long a request waits for the read models to reach its `Harmony-Min-Position`.
pub(crate) const READ_WAIT: Duration = Duration::from_secs(5);
/// How long a console form's answer waits for the read models to apply what it wrote.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

tokio::task_local! {
    /// Set while a request that sent `Harmony-Min-Position` is answered, once the read models
    /// have reached it.
    static WAITED: ();
}

/// For the API: waits for `Harmony-Min-Position`, and says `Harmony-Position`. Run by the
/// idempotency layer, inside it.
pub(crate) async fn around(state: &AppState, request: Request, next: Next) -> Response {
    let waited = request.headers().contains_key(MIN_POSITION);
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
        match caught_up(state, min, READ_WAIT).await {
            Ok(()) => {}
            Err(Behind::At(name, position)) => {
                return Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_caught_up",
                    format!(
                        "the read model {name} has applied the log up to position {position}, \
                         not yet {min}: retry shortly"
                    ),
                )
                .retry_after(1)
                .into_response();
            }
            Err(Behind::Unreadable(error)) => {
                return Problem::failed("cannot read the read models' positions", &error)
                    .into_response();
            }
        }
    }
    let answered = eventstore::written::tracking(next.run(request));
    let (mut response, written) = if waited {
        WAITED.scope((), answered).await
    } else {
        answered.await
    };
    if let Some(position) = written {
        response
            .headers_mut()
            .insert(POSITION, HeaderValue::from(position));
    }
    response
}

/// In a request that waited for `Harmony-Min-Position`, makes this process's reads of
/// `integration`'s stream show at least the version Installed has folded: what the read
/// models show, the log read after them shows too, whichever replica answers.
pub(crate) async fn log_follows_read_models(state: &AppState, integration: IntegrationId) {
    if WAITED.try_with(|()| ()).is_err() {
        return;
    }
    match projections::installed::folded_version(&state.read, &integration.to_string()).await {
        Ok(Some(version)) => state
            .store
            .observed(&StreamName::integration(integration), version),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%integration, %error, "cannot read how far Installed folded a stream");
        }
    }
}

/// For the console: answers a form once the read models have applied what it wrote,
/// [`SETTLE_WAIT`] at most, so that the page its redirect leads to shows the change.
pub(crate) async fn settle(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (response, written) = eventstore::written::tracking(next.run(request)).await;
    if let Some(position) = written {
        if let Err(behind) = caught_up(&state, position, SETTLE_WAIT).await {
            tracing::debug!(
                position,
                ?behind,
                "answering a console form before the read models show it"
            );
        }
    }
    response
}

/// Why the read models were not found at a position.
#[derive(Debug)]
enum Behind {
    /// This read model stood here when the wait ended.
    At(&'static str, u64),
    Unreadable(database::ReadDbError),
}

/// Waits until every read model has applied the log up to `min`, for `wait` at most.
async fn caught_up(state: &AppState, min: u64, wait: Duration) -> Result<(), Behind> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        let mut behind = None;
        for projection in projections::runner::Projection::ALL {
            let position = projection
                .checkpoint(&state.read)
                .await
                .map_err(Behind::Unreadable)?;
            if position < min {
                behind = Some(Behind::At(projection.name(), position));
                break;
            }
        }
        let Some(behind) = behind else {
            return Ok(());
        };
        if tokio::time::Instant::now() + pause > deadline {
            return Err(behind);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
