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
        if outage(error) {
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

/// Whether `error`, or anything that caused it, is a dependency of the service away for a
/// while (the event log between leaders, PostgreSQL restarting, either of them under a
/// provider call) rather than a fault.
fn outage(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<adapters::http::ProviderError>()
            .is_some_and(adapters::http::ProviderError::is_storage_outage)
        {
            return true;
        }
        next = error.source();
    }
    eventstore::caused_by_outage(error) || database::caused_by_outage(error)
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

/// A command the log or the domain refused, as the API says it.
pub(crate) fn repository_problem(error: command::repository::RepositoryError) -> Problem {
    use command::repository::RepositoryError as E;
    match error {
        E::Domain(error) => domain_problem(&error),
        // Conflicting appends are retried inside; only sustained contention comes out here.
        E::TooMuchContention { .. } => Problem::new(
            StatusCode::CONFLICT,
            "contention",
            "the integration is changing too fast to apply this now: try again",
        )
        .retry_after(1),
        E::Store(eventstore::StoreError::Unavailable { what: reason, .. }) => {
            tracing::warn!(%reason, "the event log is unavailable");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                "the event log cannot be reached right now: try again",
            )
            .retry_after(2)
        }
        other => Problem::failed("a command failed", &other),
    }
}

/// A rule the domain refused, as the API says it: the rule in words, with its stable code.
pub(crate) fn domain_problem(error: &domain::DomainError) -> Problem {
    let status = match error.kind() {
        domain::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        domain::ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        domain::ErrorKind::Conflict => StatusCode::CONFLICT,
        domain::ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let code = match error {
        domain::DomainError::NotFound => "not_found",
        domain::DomainError::Forbidden(_) => "forbidden",
        _ => error.code(),
    };
    Problem::new(status, code, error.to_string())
}

pub(crate) fn connect_problem(error: adapters::connections::ConnectError) -> Problem {
    use adapters::connections::ConnectError as E;
    match error {
        E::UnknownApp(app) => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("there is no app {app}"),
        ),
        E::Unavailable(reason) => Problem::new(StatusCode::CONFLICT, "app_unavailable", reason),
        E::InvalidSetup { field, reason } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_setup",
            format!("{field} {reason}"),
        ),
        E::Provider(adapters::http::ProviderError::Refused(refused)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "outbound_refused",
            format!("{refused}; an operator can open an address range with --outbound-allow"),
        ),
        E::Provider(error @ adapters::http::ProviderError::Storage { .. }) => {
            Problem::failed("a connection's credentials cannot be stored", &error)
        }
        E::Provider(error) if error.retryable() => Problem::new(
            StatusCode::BAD_GATEWAY,
            "provider_unavailable",
            error.to_string(),
        ),
        E::Provider(error) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider_refused",
            error.to_string(),
        ),
        E::Domain(error) => domain_problem(&error),
        E::Callback(
            error @ (adapters::oauth::CallbackError::UnknownState
            | adapters::oauth::CallbackError::Foreign),
        ) => Problem::new(StatusCode::BAD_REQUEST, "oauth_state", error.to_string()),
        E::Callback(error @ adapters::oauth::CallbackError::OtherBrowser) => {
            Problem::new(StatusCode::BAD_REQUEST, "oauth_browser", error.to_string())
        }
        E::Callback(error @ adapters::oauth::CallbackError::Revoked) => {
            Problem::new(StatusCode::UNAUTHORIZED, "token_revoked", error.to_string())
        }
        E::Callback(error @ adapters::oauth::CallbackError::WrongIssuer { .. }) => {
            Problem::new(StatusCode::BAD_REQUEST, "oauth_issuer", error.to_string())
        }
        E::Callback(error @ adapters::oauth::CallbackError::Denied(_)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider_refused",
            error.to_string(),
        ),
        E::Callback(adapters::oauth::CallbackError::Provider(error)) => {
            connect_problem(E::Provider(error))
        }
        E::Repository(error) => repository_problem(error),
        other => Problem::failed("a connection failed", &other),
    }
}

/// The answer for an integration the caller cannot see: not found, as if it did not exist.
pub(crate) fn not_found(id: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no integration {id} here"),
    )
}
