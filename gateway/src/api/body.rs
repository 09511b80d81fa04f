//! Request bodies, strictly read: unknown fields and wrong types are refused with a problem
//! naming the field.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// A request body the API could not take, said precisely: too large, not JSON, or JSON that
/// names an unknown field or gives a field the wrong type (the message names the field).
fn body_problem(rejection: JsonRejection) -> Problem {
    let status = rejection.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::BAD_REQUEST => "malformed_json",
        _ => "invalid_body",
    };
    let detail = match &rejection {
        JsonRejection::JsonDataError(error) => {
            format!("the body does not fit: {}", error.body_text())
        }
        JsonRejection::JsonSyntaxError(error) => {
            format!("the body is not valid JSON: {}", error.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON, with Content-Type: application/json".to_owned()
        }
        JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the body is larger than the {} KiB a request may carry",
            crate::limits::BODY_LIMIT_BYTES / 1024
        ),
        other => other.body_text(),
    };
    Problem::new(status, code, detail)
}

/// A JSON request body, strictly read: unknown fields and wrong types are refused with a
/// problem naming the field.
pub(crate) struct Body<T>(pub(crate) T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| Body(value))
            .map_err(body_problem)
    }
}

/// A JSON body that may be left out altogether (then `None`); one that is sent is read as
/// strictly as [`Body`].
pub(crate) struct OptionalBody<T>(pub(crate) Option<T>);

impl<T, S> FromRequest<S> for OptionalBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let content_type = request.headers().get(axum::http::header::CONTENT_TYPE);
        let has_type = content_type.is_some();
        if content_type.is_some_and(|value| !is_json(value)) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON, with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_problem(JsonRejection::BytesRejection(rejection)))?;
        if bytes.is_empty() && !has_type {
            return Ok(Self(None));
        }
        Json::<T>::from_bytes(&bytes)
            .map(|Json(value)| Self(Some(value)))
            .map_err(body_problem)
    }
}

/// `application/json`, or a `+json` type, with or without parameters (what [`Json`] takes).
fn is_json(content_type: &axum::http::HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}
