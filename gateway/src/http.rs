//! HTTP routes. Each module of the API will own its `router()`; they are merged here.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// Alive and able to read the log: `{"status": "ok", "backend": "sled", "log_head": <position>}`.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.head_position().await {
        Ok(head) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "backend": state.backend.name(), "log_head": head })),
        ),
        Err(error) => {
            tracing::error!(%error, "health check cannot read the event log");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": "the event log cannot be read" })),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use eventstore::{EventStore, ExpectedVersion, SledEventStore};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn healthz_reports_the_head_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
        let stream = domain::StreamName::parse("workspace-acme").unwrap();
        let event = eventstore::NewEvent {
            id: domain::EventId::new(),
            event_type: "ApprovalRuleRemoved".into(),
            schema: 1,
            data: json!({ "rule_id": uuid::Uuid::nil() }),
            metadata: domain::Metadata {
                workspace: "acme".parse().unwrap(),
                owner: None,
                actor: domain::Actor::System("test".into()),
                correlation_id: uuid::Uuid::nil(),
                causation_id: None,
                occurred_at: domain::Timestamp::now(),
            },
        };
        store
            .append(&stream, ExpectedVersion::NoStream, vec![event])
            .await
            .unwrap();
        let records = Arc::new(
            eventstore::SledRecordLog::open(dir.path().join("records"), crate::RECORDS_MAX_AGE)
                .unwrap(),
        );
        let app = router(AppState {
            store,
            records,
            backend: crate::Backend::Sled,
        });
        let response = app
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: serde_json::Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(
            body,
            json!({ "status": "ok", "backend": "sled", "log_head": 1 })
        );
    }
}
