//! Errors as `application/problem+json` (RFC 9457) with a stable `code` a client can match on.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A problem as it is sent (RFC 9457 with a stable `code`): for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ProblemBody {
    /// `https://harmony.example/problems/<code>`.
    r#type: String,
    title: String,
    status: u16,
    /// Stable, snake_case: what a client branches on.
    code: String,
    /// For people: what went wrong and, where it helps, what to do.
    detail: String,
}

/// The refusals any `/v1` route may answer, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum CallerRefusals {
    #[response(
        status = 401,
        description = "No live API token",
        content_type = "application/problem+json"
    )]
    Unauthorized(ProblemBody),
    #[response(
        status = 429,
        description = "Rate limited: see Retry-After",
        content_type = "application/problem+json"
    )]
    RateLimited(ProblemBody),
}

/// The refusals of a route that reads in a workspace.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum ReadRefusals {
    #[response(
        status = 400,
        description = "A malformed query (a cursor this list did not give out)",
        content_type = "application/problem+json"
    )]
    BadRequest(ProblemBody),
    #[response(
        status = 401,
        description = "No live API token",
        content_type = "application/problem+json"
    )]
    Unauthorized(ProblemBody),
    #[response(
        status = 403,
        description = "The token acts in another workspace",
        content_type = "application/problem+json"
    )]
    Forbidden(ProblemBody),
    #[response(
        status = 404,
        description = "Not found, or not visible to this caller",
        content_type = "application/problem+json"
    )]
    NotFound(ProblemBody),
    #[response(
        status = 422,
        description = "A query parameter is invalid: the problem names it",
        content_type = "application/problem+json"
    )]
    Invalid(ProblemBody),
    #[response(
        status = 429,
        description = "Rate limited: see Retry-After",
        content_type = "application/problem+json"
    )]
    RateLimited(ProblemBody),
}

/// The refusals of a route that changes something.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum WriteRefusals {
    #[response(
        status = 400,
        description = "Broken JSON, or an invalid Idempotency-Key",
        content_type = "application/problem+json"
    )]
    BadRequest(ProblemBody),
    #[response(
        status = 401,
        description = "No live API token",
        content_type = "application/problem+json"
    )]
    Unauthorized(ProblemBody),
    #[response(
        status = 403,
        description = "The role or the integration permission is missing, or another workspace",
        content_type = "application/problem+json"
    )]
    Forbidden(ProblemBody),
    #[response(
        status = 404,
        description = "Not found, or not visible to this caller",
        content_type = "application/problem+json"
    )]
    NotFound(ProblemBody),
    #[response(
        status = 409,
        description = "A rule of the current state refuses it (the rule in words)",
        content_type = "application/problem+json"
    )]
    Conflict(ProblemBody),
    #[response(
        status = 413,
        description = "The body is larger than 256 KiB",
        content_type = "application/problem+json"
    )]
    TooLarge(ProblemBody),
    #[response(
        status = 422,
        description = "Invalid: an unknown field or wrong type (named), a rule, or the provider's refusal",
        content_type = "application/problem+json"
    )]
    Invalid(ProblemBody),
    #[response(
        status = 429,
        description = "Rate limited: see Retry-After",
        content_type = "application/problem+json"
    )]
    RateLimited(ProblemBody),
    #[response(
        status = 502,
        description = "The provider could not be reached",
        content_type = "application/problem+json"
    )]
    ProviderUnavailable(ProblemBody),
    #[response(
        status = 503,
        description = "The event log or the database cannot be reached for a moment: see Retry-After",
        content_type = "application/problem+json"
    )]
    LogUnavailable(ProblemBody),
}

/// One refusal or failure, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    /// Stable, snake_case: what a client branches on.
    pub(crate) code: &'static str,
    /// For people: what went wrong and, where it helps, what to do.
    pub(crate) detail: String,
    /// Seconds to wait before trying again, sent as `Retry-After`.
    pub(crate) retry_after: Option<u64>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The same problem, telling the client to try again after `seconds`.
    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub(crate) fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// The answer to a failure of the service itself, logged: `503 unavailable` with
    /// Retry-After when what failed is a dependency away for a while (PostgreSQL restarting,
    /// the event log between leaders), so a client retries; else `500 internal`.
    pub(crate) fn failed(what: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        if adapters::http::dependency_away(error) {
            tracing::warn!(%error, "{what}: a dependency is unavailable");
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a service this depends on is unavailable for a moment: try again",
            )
            .retry_after(2)
        } else {
            tracing::error!(%error, "{what}");
            Self::internal()
        }
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed to answer; try again",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let mut response = (
            self.status,
            Json(json!({
                "type": format!("https://harmony.example/problems/{}", self.code),
                "title": title,
                "status": self.status.as_u16(),
                "code": self.code,
                "detail": self.detail,
            })),
        )
            .into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"harmony\""),
            );
        }
        response
    }
}
