//! `Idempotency-Key` on writes: the first answer to a key is kept for a day, and a retry of the
//! same request with the same key gets that answer again (marked `Idempotent-Replayed: true`)
//! instead of acting twice. The same key with a different request is refused, and a retry
//! that arrives while the first is still being answered is told to wait. Failures of the
//! service itself (5xx), and refusals that say nothing about the request (401, 429), are not
//! kept, so a retry after them acts normally. A first request that never finished (its
//! process killed) holds its key for 30 seconds; a retry after that acts.
//!
//! Keys are per caller: the scope is the SHA-256 of the bearer token, which the API's
//! authentication has found live before this layer runs (a revoked token gets its 401, never
//! a kept answer). The table lives beside the read models (SQLite, or PostgreSQL shared by
//! every process).

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use database::{execute, fetch_all, Bind};
use domain::Timestamp;
use sha2::{Digest, Sha256};

use crate::problem::Problem;
use crate::AppState;

/// How long an answer is kept.
const KEEP_MICROS: i64 = 24 * 3600 * 1_000_000;
/// How long a claim may stay unanswered before it is taken to have died with its process
/// (killed mid-request): longer than any write takes (an interactive call is cut at 15 s, an
/// append at the log's timeout), so a retry then acts instead of waiting a day.
const ABANDONED_MICROS: i64 = 30 * 1_000_000;
const HEADER: &str = "idempotency-key";

fn database_problem(error: database::ServiceDbError) -> Problem {
    Problem::failed("the idempotency keys cannot be read or written", &error)
}

/// The layer of every `/v1` request: idempotency around the read-your-writes protocol
/// (`consistency::around`), so that a kept answer keeps its `Harmony-Position` — one layer
/// rather than two, as each costs every request.
pub(crate) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match handle(&state, request, next).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn handle(state: &AppState, request: Request, next: Next) -> Result<Response, Problem> {
    let writes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let Some(key) = request.headers().get(HEADER).filter(|_| writes).cloned() else {
        return Ok(crate::consistency::around(state, request, next).await);
    };
    // Only a live token's answers are kept or replayed: a request without one is refused
    // by the route itself, whatever its key.
    let Some(crate::caller::Caller(_, token_hash)) = request.extensions().get().cloned() else {
        return Ok(crate::consistency::around(state, request, next).await);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?
        .to_owned();
    let scope = token_hash;
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, crate::limits::BODY_LIMIT_BYTES)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body is larger than the {} KiB a request may carry",
                    crate::limits::BODY_LIMIT_BYTES / 1024
                ),
            )
        })?;
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update([0]);
    hasher.update(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default(),
    );
    hasher.update([0]);
    hasher.update(&bytes);
    let fingerprint = hex::encode(hasher.finalize());

    let now = Timestamp::now().unix_micros();
    execute(
        &state.db,
        "DELETE FROM idempotency_keys WHERE created_at < $1",
        &[Bind::Int(now - KEEP_MICROS)],
    )
    .await
    .map_err(database_problem)?;
    let claimed = execute(
        &state.db,
        "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, status, content_type, body, \
         created_at) VALUES ($1, $2, $3, NULL, NULL, NULL, $4) ON CONFLICT DO NOTHING",
        &[
            Bind::Text(scope.clone()),
            Bind::Text(key.clone()),
            Bind::Text(fingerprint.clone()),
            Bind::Int(now),
        ],
    )
    .await
    .map_err(database_problem)?;
    if claimed == 0 {
        let taken_over = execute(
            &state.db,
            "UPDATE idempotency_keys SET created_at = $1 WHERE scope = $2 AND idem_key = $3 \
             AND fingerprint = $4 AND status IS NULL AND created_at < $5",
            &[
                Bind::Int(now),
                Bind::Text(scope.clone()),
                Bind::Text(key.clone()),
                Bind::Text(fingerprint.clone()),
                Bind::Int(now - ABANDONED_MICROS),
            ],
        )
        .await
        .map_err(database_problem)?;
        if taken_over == 0 {
            return replay(state, &scope, &key, &fingerprint).await;
        }
        tracing::warn!("an Idempotency-Key's first request never finished: acting on its retry");
    }

    let response =
        crate::consistency::around(state, Request::from_parts(parts, Body::from(bytes)), next)
            .await;
    let status = response.status();
    let keep = !(status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::TOO_MANY_REQUESTS);
    if !keep {
        forget(state, &scope, &key).await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => {
            forget(state, &scope, &key).await;
            tracing::error!(%error, "cannot read an answer to keep it");
            return Err(Problem::internal());
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        // Not text: answered, but not kept.
        forget(state, &scope, &key).await;
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let position = parts
        .headers
        .get(crate::consistency::POSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    if let Err(error) = execute(
        &state.db,
        "UPDATE idempotency_keys SET status = $1, content_type = $2, body = $3, position = $6 \
         WHERE scope = $4 AND idem_key = $5",
        &[
            Bind::Int(i64::from(status.as_u16())),
            Bind::MaybeText(content_type),
            Bind::Text(text.to_owned()),
            Bind::Text(scope.clone()),
            Bind::Text(key.clone()),
            Bind::MaybeInt(position),
        ],
    )
    .await
    {
        // The request acted; a retry now would act again, so say so in the log.
        tracing::error!(%error, "cannot keep the answer of an idempotent request");
        forget(state, &scope, &key).await;
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

async fn forget(state: &AppState, scope: &str, key: &str) {
    if let Err(error) = execute(
        &state.db,
        "DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2",
        &[Bind::Text(scope.to_owned()), Bind::Text(key.to_owned())],
    )
    .await
    {
        tracing::error!(%error, "cannot forget an idempotency key");
    }
}

type KeptRow = (
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

async fn replay(
    state: &AppState,
    scope: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Response, Problem> {
    let rows: Vec<KeptRow> = fetch_all(
        &state.db,
        "SELECT fingerprint, status, content_type, body, position FROM idempotency_keys \
         WHERE scope = $1 AND idem_key = $2",
        &[Bind::Text(scope.to_owned()), Bind::Text(key.to_owned())],
    )
    .await
    .map_err(database_problem)?;
    let Some((kept_fingerprint, status, content_type, body, position)) = rows.into_iter().next()
    else {
        // Forgotten between the claim and now (the first attempt failed): try again.
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "idempotency_in_flight",
            "a request with this Idempotency-Key was just being answered: retry",
        )
        .retry_after(1));
    };
    if kept_fingerprint != fingerprint {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request: use a new key for a new \
             request",
        ));
    }
    let Some(status) = status else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "idempotency_in_flight",
            "the first request with this Idempotency-Key is still being answered: retry shortly",
        )
        .retry_after(1));
    };
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            tracing::error!(status, "a kept status is not an HTTP status");
            Problem::internal()
        })?;
    let mut response = (status, body.unwrap_or_default()).into_response();
    if let Some(content_type) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    if let Some(position) = position {
        response
            .headers_mut()
            .insert(crate::consistency::POSITION, HeaderValue::from(position));
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}
