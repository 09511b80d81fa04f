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
