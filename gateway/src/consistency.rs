//! Reading your own writes. The read models (Installed, the sync logs) follow the log a moment
//! behind it, in this process or another one. Every answer to a request that appended to the
//! log says how far it wrote (`Harmony-Position`); a later request that sends that number back
//! (`Harmony-Min-Position`) is answered only once every read model has applied the log that
//! far — waiting up to [`READ_WAIT`] for it, then refused with 503 `not_caught_up`. Waiting
//! costs the service a held request, so it is given only to what can use it: a request with a
//! live token (authenticated before this runs; any other goes straight on to be refused by its
//! route), for a position the log holds (one beyond its head is refused at once, 422
//! `position_not_in_log`), at most [`MAX_WAITING_PER_TOKEN`] at once per token (429
//! `too_many_waiting`). The console's forms, whose redirects lead to pages drawn from the read
//! models, are answered once the read models have applied what they wrote ([`settle`]).
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
/// How many reads one token may have waiting for the read models at once in a process; more
/// are refused with 429 rather than held.
pub(crate) const MAX_WAITING_PER_TOKEN: usize = 16;
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
        // Only a caller the API knows is held: an unauthenticated request goes straight on to
        // its route, which refuses it at once (or, on a public route, answers at once).
        if let Some(crate::caller::Caller(_, token_hash)) = request.extensions().get() {
            if let Err(refused) = wait_for(state, token_hash, min).await {
                return refused;
            }
        }
    }
    let answered = command::written::tracking(next.run(request));
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

/// Holds an authenticated request until the read models have applied the log up to `min`:
/// at once when they have; refused at once when the log does not hold `min` (no wait could
/// reach it) or when the token has too many reads waiting already; otherwise for up to
/// [`READ_WAIT`].
async fn wait_for(state: &AppState, token_hash: &str, min: u64) -> Result<(), Response> {
    fn failed(error: &(dyn std::error::Error + 'static)) -> Response {
        Problem::failed("cannot read how far the log and the read models are", error)
            .into_response()
    }
    match caught_up(state, min, Duration::ZERO).await {
        Ok(()) => return Ok(()),
        Err(Behind::Unreadable(error)) => return Err(failed(&error)),
        Err(Behind::At(..)) => {}
    }
    let head = state
        .store
        .head_position()
        .await
        .map_err(|error| failed(&error))?;
    if min > head {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "position_not_in_log",
            format!(
                "the log holds positions up to {head}, not {min}: send a Harmony-Position an \
                 answer of this service gave"
            ),
        )
        .into_response());
    }
    let Some(_place) = state.waiting.open(token_hash) else {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_waiting",
            format!(
                "this token has {MAX_WAITING_PER_TOKEN} reads waiting for the read models \
                 already: retry shortly"
            ),
        )
        .retry_after(1)
        .into_response());
    };
    match caught_up(state, min, READ_WAIT).await {
        Ok(()) => Ok(()),
        Err(Behind::At(name, position)) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
            format!(
                "the read model {name} has applied the log up to position {position}, not yet \
                 {min}: retry shortly"
            ),
        )
        .retry_after(1)
        .into_response()),
        Err(Behind::Unreadable(error)) => Err(failed(&error)),
    }
}

/// In a request that waited for `Harmony-Min-Position`, makes this process's reads of
/// `integration`'s stream show at least the version Installed has folded: what the read
/// models show, the log read after them shows too, whichever replica answers.
pub(crate) async fn log_follows_read_models(state: &AppState, integration: IntegrationId) {
    if WAITED.try_with(|()| ()).is_err() {
        return;
    }
    match projections::installed::folded_version(&state.db, &integration.to_string()).await {
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
    let (response, written) = command::written::tracking(next.run(request)).await;
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
    Unreadable(database::ServiceDbError),
}

/// Waits until every read model has applied the log up to `min`, for `wait` at most.
async fn caught_up(state: &AppState, min: u64, wait: Duration) -> Result<(), Behind> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        let mut behind = None;
        for projection in projections::runner::Projection::ALL {
            let position = projection
                .checkpoint(&state.db)
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
