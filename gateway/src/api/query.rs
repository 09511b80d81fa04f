//! Query strings of the API. A value that does not parse, or that lies outside what the log can
//! hold, is refused as every other malformed query value is: 422 `invalid_query`, as
//! problem+json — never axum's plain-text 400, and never a number that wraps around.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// The largest log position, stream version or cursor a request may name: positions and
/// versions are kept as signed 64-bit integers in SQL, and one past the largest must still be
/// a number.
pub(crate) const MAX_POSITION: u64 = i64::MAX as u64;

/// A refused query value, in words.
pub(crate) fn invalid_query(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", detail)
}

/// `value` as a position (or version, or cursor) named `name`, if the log could hold it.
pub(crate) fn position(name: &str, value: u64) -> Result<u64, Problem> {
    if value > MAX_POSITION {
        return Err(invalid_query(format!(
            "{name} must be at most {MAX_POSITION}; {value} is beyond any log"
        )));
    }
    Ok(value)
}

/// The query string deserialized into `T`; any value that does not fit is 422
/// `invalid_query`, naming what was wrong.
#[derive(Debug)]
pub(crate) struct Query<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| invalid_query(rejection.body_text()))
    }
}
