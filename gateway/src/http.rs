//! HTTP routes. Each module of the API will own its `router()`; they are merged here.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;

/// The most a request body may carry: generous for a mapping or a Companion action, small
/// enough that nobody can fill the memory with one request.
pub(crate) const BODY_LIMIT_BYTES: usize = 256 * 1024;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::api::router())
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .fallback(|| async {
            crate::problem::Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "there is no such route",
            )
        })
        .with_state(state)
}

/// Alive and able to read the log: `{"status": "ok", "backend": "sled", "log_head": <position>,
/// "projections": {"installed": {"position": …, "lag_events": …, "lag_seconds": …, "runner":
/// "running"}, …}}`. A projection's lag is how many events it has still to apply and how long
/// ago the oldest of them happened; its runner in this process is `running`, `standby` (another
/// process holds its lease) or `stopped` (by an event it cannot apply).
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let head = match state.store.head_position().await {
        Ok(head) => head,
        Err(error) => {
            tracing::error!(%error, "health check cannot read the event log");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": "the event log cannot be read" })),
            );
        }
    };
    let mut projections = serde_json::Map::new();
    for projection in projections::runner::Projection::ALL {
        let lag = match projection.checkpoint(&state.read).await {
            Ok(position) => {
                let behind = head.saturating_sub(position);
                let seconds = if behind == 0 {
                    0.0
                } else {
                    match state.store.read_all(position + 1, 1).await {
                        Ok(next) => next.first().map_or(0.0, |event| {
                            let age = domain::Timestamp::now().unix_micros()
                                - event.metadata.occurred_at.unix_micros();
                            (age.max(0) as f64) / 1e6
                        }),
                        Err(_) => f64::NAN,
                    }
                };
                // Here: `running`, `standby` (another process holds the lease) or `stopped`.
                let runner = state
                    .runners
                    .lock()
                    .ok()
                    .and_then(|runners| runners.get(projection.name()).copied());
                json!({ "position": position, "lag_events": behind, "lag_seconds": seconds,
                        "runner": runner })
            }
            Err(error) => {
                tracing::error!(%error, "health check cannot read the read models");
                json!({ "error": "the read models cannot be read" })
            }
        };
        projections.insert(projection.name().to_owned(), lag);
    }
    (
        StatusCode::OK,
        Json(json!({
            "status": "ok",
            "backend": state.backend.name(),
            "log_head": head,
            "read_models": state.read.kind(),
            "projections": projections,
        })),
    )
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
        let read = projections::ReadDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let settings = crate::Settings::embedded(dir.path().to_path_buf());
        let vault = std::sync::Arc::new(adapters::vault::Vault::new(
            read.clone(),
            adapters::vault::MasterKey::generate(),
        ));
        let workers = crate::Workers::new(
            store.clone(),
            records.clone(),
            &read,
            vault.clone(),
            &settings,
            url::Url::parse("http://127.0.0.1/").unwrap(),
        );
        let app = router(AppState {
            store,
            records,
            backend: crate::Backend::Sled,
            read: read.clone(),
            runners: crate::Runners::default(),
            vault,
            workers,
            closing: Arc::new(tokio::sync::watch::channel(false).0),
        });
        let response = app
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: serde_json::Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["backend"], "sled");
        assert_eq!(body["log_head"], 1);
        assert_eq!(body["read_models"], "sqlite");
        // Nothing runs the projections here: both are one event behind.
        assert_eq!(body["projections"]["installed"]["lag_events"], 1);
        assert_eq!(body["projections"]["sync_runs"]["position"], 0);
        assert!(
            body["projections"]["installed"]["lag_seconds"]
                .as_f64()
                .unwrap()
                >= 0.0
        );
    }
}
