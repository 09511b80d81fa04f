//! `/metrics` in the Prometheus text format: the API's requests and their latency by route,
//! and, read at each scrape from the log and the read models (so every process reports the
//! same truth), the events in the log, each projection's lag, sync runs by status and the
//! records they synced.
//!
//! **No tenant in them.** No metric names a workspace, user or integration: routes are their
//! patterns (`/v1/workspaces/{ws}/…`), never the raw path, and the figures read from the log
//! and the read models are the whole service's totals. Those totals are still the operator's
//! business: `--metrics-listen` moves `/metrics` to an address of its own (the API's address
//! then has none), `--metrics-token` makes it answer only a scraper presenting that bearer
//! token.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use secrecy::ExposeSecret;

use crate::problem::Problem;
use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The metrics of one process.
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    log_events: Gauge,
    projection_lag_events: Family<ProjectionLabels, Gauge>,
    projection_lag_seconds: Family<ProjectionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    sync_runs: Family<StatusLabels, Gauge>,
    records_synced: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("harmony");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "How long answering took, by method and route",
            latency.clone(),
        );
        let log_events = Gauge::default();
        registry.register(
            "log_events",
            "Events appended to the log so far (its head position)",
            log_events.clone(),
        );
        let projection_lag_events = Family::<ProjectionLabels, Gauge>::default();
        registry.register(
            "projection_lag_events",
            "Events a projection has still to apply",
            projection_lag_events.clone(),
        );
        let projection_lag_seconds =
            Family::<ProjectionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "projection_lag_seconds",
            "How long ago the oldest event a projection has still to apply happened",
            projection_lag_seconds.clone(),
        );
        let sync_runs = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "sync_runs",
            "Sync runs in the sync logs, by status",
            sync_runs.clone(),
        );
        let records_synced = Gauge::default();
        registry.register(
            "records_synced",
            "Records pulled from providers by every sync run in the sync logs",
            records_synced.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            latency,
            log_events,
            projection_lag_events,
            projection_lag_seconds,
            sync_runs,
            records_synced,
        }
    }
}

/// Counts each request and times it, under its route's pattern (never the raw path, so ids
/// do not multiply the series).
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics` on the API's address: the metrics, unless the operator moved them to an
/// address of their own (`--metrics-listen`).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "`--metrics-token` is set and the request does not present it", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "`--metrics-listen` serves the metrics elsewhere", body = crate::problem::ProblemBody, content_type = "application/problem+json")
    ))]
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.metrics_settings.listen.is_some() {
        return Problem::new(StatusCode::NOT_FOUND, "not_found", "there is no such route")
            .into_response();
    }
    scrape(&state, &headers).await
}

/// The router of `--metrics-listen`'s address: `/metrics` alone.
pub(crate) fn own_router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |State(state): State<AppState>, headers: HeaderMap| async move {
                    scrape(&state, &headers).await
                },
            ),
        )
        .with_state(state)
}

/// Whether `headers` present the metrics token, when one is set (compared in constant time).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.metrics_settings.token else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Hashed first, so that the comparison's length says nothing of the token's.
    crate::tokens::same_secret(
        &crate::tokens::hash(presented),
        &crate::tokens::hash(expected.expose_secret()),
    )
}

/// The metrics as a scrape sees them.
async fn scrape(state: &AppState, headers: &HeaderMap) -> Response {
    if !authorized(state, headers) {
        return Problem::unauthorized(
            "/metrics needs the metrics token: Authorization: Bearer <token>",
        )
        .into_response();
    }
    let metrics = &state.metrics;
    match crate::lag::projection_lags(state).await {
        Ok((head, lags)) => {
            metrics
                .log_events
                .set(i64::try_from(head).unwrap_or(i64::MAX));
            for lag in lags {
                let labels = ProjectionLabels {
                    projection: lag.name.to_owned(),
                };
                metrics
                    .projection_lag_events
                    .get_or_create(&labels)
                    .set(i64::try_from(lag.behind).unwrap_or(i64::MAX));
                metrics
                    .projection_lag_seconds
                    .get_or_create(&labels)
                    .set(lag.seconds);
            }
        }
        Err(reason) => tracing::warn!(reason, "metrics without the log's figures"),
    }
    match projections::sync_runs::totals_by_status(&state.db).await {
        Ok(totals) => {
            let mut records = 0;
            for total in totals {
                metrics
                    .sync_runs
                    .get_or_create(&StatusLabels {
                        status: total.status,
                    })
                    .set(total.runs);
                records += total.pulled;
            }
            metrics.records_synced.set(records);
        }
        Err(error) => tracing::warn!(%error, "metrics without the sync logs' figures"),
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &metrics.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
