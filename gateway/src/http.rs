//! The whole HTTP surface: the API's routes with the OpenAPI document they make
//! (`/openapi.json`), the console, `/healthz`, `/readyz` and `/metrics`, and the layers every
//! request passes (body limit, metrics, `Idempotency-Key` on the API).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// The OpenAPI document's frame: the routes fill in the rest.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Harmony Sync",
        description = "The Marketplace of integrations: connect apps, sync them, audit their \
                       history. Every /v1 route takes `Authorization: Bearer <API token>` except \
                       the OAuth callback; errors are application/problem+json with a stable `code`."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "catalog", description = "Marketplace > Apps and Models"),
        (name = "integrations", description = "Connect, Installed and each integration's actions"),
        (name = "mappings", description = "Field mappings, versioned"),
        (name = "actions", description = "Companion actions and their approval"),
        (name = "audit", description = "History, state as of a moment, chain verification, export"),
        (name = "events", description = "The workspace's events as server-sent events"),
        (name = "oauth", description = "The end of the OAuth2 popup"),
        (name = "operations", description = "Health, readiness, metrics")
    )
)]
pub(crate) struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token from `harmony tokens create`"))
                    .build(),
            ),
        );
    }
}

/// The whole application's routes, and its OpenAPI document.
pub(crate) fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(crate::metrics::metrics))
        .merge(crate::api::router())
        .split_for_parts();
    document_unsupported_media_type(&mut openapi);
    document_consistency(&mut openapi);
    (router, openapi)
}

/// Every `/v1` operation takes `Harmony-Min-Position` and may answer 503 `not_caught_up`;
/// every one that writes says `Harmony-Position` on success (see `consistency`). Said once
/// here for all of them.
fn document_consistency(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    use utoipa::openapi::{RefOr, Required};
    let position = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .build()
    };
    let min_position = ParameterBuilder::new()
        .name("Harmony-Min-Position")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Answer from read models that have applied the log at least this far: an earlier \
             answer's Harmony-Position. Waits up to 5 s, then 503 not_caught_up; a position \
             beyond the log's head is 422 position_not_in_log at once; a token holds at most 16 \
             waiting reads (429 too_many_waiting). Only a request with a live token waits.",
        ))
        .schema(Some(position()))
        .build();
    let written = HeaderBuilder::new()
        .schema(position())
        .description(Some(
            "The log position this request's events reached: send it back as \
             Harmony-Min-Position to read them.",
        ))
        .build();
    let behind = problem_response(
        "The log or the database cannot be reached for a moment, or the read models have not \
         reached Harmony-Min-Position (not_caught_up): see Retry-After",
    );
    let not_in_log = problem_response(
        "Harmony-Min-Position names a position beyond the log's head (position_not_in_log), or \
         a query value does not parse or lies beyond any log (invalid_query)",
    );
    let too_many = problem_response(
        "The token is over its rate limit (rate_limited), or has too many reads waiting for \
         Harmony-Min-Position (too_many_waiting): see Retry-After",
    );
    for (path, item) in openapi.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let operations = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ];
        for (operation, writes) in operations {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            operation
                .parameters
                .get_or_insert_with(Vec::new)
                .push(min_position.clone());
            operation
                .responses
                .responses
                .insert("503".to_owned(), behind.clone().into());
            for (status, refused) in [("422", &not_in_log), ("429", &too_many)] {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| refused.clone().into());
            }
            if !writes {
                continue;
            }
            for (status, response) in operation.responses.responses.iter_mut() {
                if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
                    response
                        .headers
                        .insert("Harmony-Position".to_owned(), written.clone());
                }
            }
        }
    }
}

/// A documented answer that is a problem (`ProblemBody`), described as `description`.
fn problem_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ProblemBody")))
                .build(),
        )
        .build()
}

/// Every operation that takes a JSON body refuses any other with 415
/// (`unsupported_media_type`, see `api::body`): said once here for all of them, so no
/// operation can forget it.
fn document_unsupported_media_type(openapi: &mut utoipa::openapi::OpenApi) {
    let refused = problem_response("The body is not sent as JSON (Content-Type: application/json)");
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            let takes_json = operation
                .request_body
                .as_ref()
                .is_some_and(|body| body.content.contains_key("application/json"));
            if takes_json {
                operation
                    .responses
                    .responses
                    .entry("415".to_owned())
                    .or_insert_with(|| refused.clone().into());
            }
        }
    }
}

pub(crate) fn router(state: AppState) -> Router {
    let (routes, openapi) = routes();
    let document = Arc::new(openapi);
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .merge(
            routes
                // Idempotency, and reading your own writes inside it.
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::idempotency::layer,
                ))
                // Outside the idempotency layer, so it runs first.
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::api::authenticate,
                )),
        )
        .merge(
            crate::console::router().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::consistency::settle,
            )),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::limits::BODY_LIMIT_BYTES,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .fallback(|| async {
            crate::problem::Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "there is no such route",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

/// The policy every page and answer carries unless it sets its own: scripts, styles and
/// everything else from the service itself only, no inline script, no framing, forms posted
/// only to the service or onward to a provider's authorization page (the console's OAuth
/// flow without JavaScript).
pub(crate) fn content_security_policy(authorize_urls: &[url::Url]) -> HeaderValue {
    let mut form_action = vec!["'self'".to_owned()];
    for url in authorize_urls {
        let origin = url.origin().ascii_serialization();
        if origin != "null" && !form_action.contains(&origin) {
            form_action.push(origin);
        }
    }
    HeaderValue::from_str(&format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
         form-action {}",
        form_action.join(" ")
    ))
    .expect("origins are ASCII")
}

/// Headers every response carries: the content security policy, no MIME sniffing, no
/// referrer (a callback URL carries an authorization code), no framing.
async fn security_headers(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert_with(|| state.content_security_policy.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive: the log's head and each projection's lag", body = Health),
              (status = 503, description = "The log or the read models cannot be read", body = Health)))]
/// Alive and able to read the log: `{"status": "ok", "backend": "sled", "log_head": <position>,
/// "projections": {"installed": {"position": …, "lag_events": …, "lag_seconds": …, "runner":
/// "running"}, …}}`. A projection's lag is how many events it has still to apply and how long
/// ago the oldest of them happened; its runner in this process is `running`, `rebuilding`
/// (running, and rebuilding tables an older release built beside the live ones), `standby`
/// (another process holds its lease) or `stopped` (by an event it cannot apply).
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let (head, lags) = match crate::lag::projection_lags(&state).await {
        Ok(figures) => figures,
        Err(reason) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable",
                    reason: Some(reason.to_owned()),
                    ..Health::default()
                }),
            );
        }
    };
    let runners = state.runners.lock().ok();
    let projections = lags
        .into_iter()
        .map(|lag| {
            let runner = runners
                .as_ref()
                .and_then(|runners| runners.get(lag.name).copied());
            let health = ProjectionHealth {
                position: lag.position,
                lag_events: lag.behind,
                lag_seconds: lag.seconds,
                runner,
            };
            (lag.name, health)
        })
        .collect();
    (
        StatusCode::OK,
        Json(Health {
            status: "ok",
            backend: Some(state.backend.name()),
            log_head: Some(head),
            read_models: Some(state.db.kind()),
            projections: Some(projections),
            reason: None,
        }),
    )
}

/// Whether the service is alive, and how far behind the log its read models are.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`, or `unavailable` with the `reason`.
    status: &'static str,
    /// `sled` or `jetstream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'static str>,
    /// The log's last position.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_head: Option<u64>,
    /// `sqlite` or `postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    read_models: Option<&'static str>,
    /// Each read model by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    projections: Option<BTreeMap<&'static str, ProjectionHealth>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// One read model's place behind the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ProjectionHealth {
    /// The last position it applied.
    position: u64,
    /// Events it has still to apply.
    lag_events: u64,
    /// How long ago the oldest of them happened.
    lag_seconds: f64,
    /// Its runner in this process: `running`, `rebuilding` (running, and rebuilding tables an
    /// older release built beside the live ones), `standby` (another process holds its lease)
    /// or `stopped` (by an event it cannot apply); `null` before it started.
    runner: Option<projections::runner::RunnerState>,
}

/// How far behind the projections may be for the service to take traffic: what Installed
/// shows is then at most this stale.
const READY_LAG_EVENTS: u64 = 10_000;
const READY_LAG_SECONDS: f64 = 30.0;

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Readiness),
              (status = 503, description = "Not ready: `reasons` says why", body = Readiness)))]
/// Ready to serve: the log (sled, or NATS JetStream) and the read models' database answer,
/// and every projection is caught up within the bound above. 503 with the reasons otherwise.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (head, lags) = match crate::lag::projection_lags(&state).await {
        Ok(figures) => figures,
        Err(reason) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Readiness {
                    ready: false,
                    log_head: None,
                    reasons: vec![reason.to_owned()],
                }),
            );
        }
    };
    let reasons: Vec<String> = lags
        .iter()
        .filter(|lag| lag.behind > READY_LAG_EVENTS || lag.seconds > READY_LAG_SECONDS)
        .map(|lag| {
            format!(
                "projection {} is {} events ({:.1} s) behind the log",
                lag.name, lag.behind, lag.seconds
            )
        })
        .collect();
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready: reasons.is_empty(),
            log_head: Some(head),
            reasons,
        }),
    )
}

/// Whether the service takes traffic.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Readiness {
    ready: bool,
    /// The log's last position.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_head: Option<u64>,
    /// Why not, when not.
    reasons: Vec<String>,
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
            data: serde_json::json!({ "rule_id": uuid::Uuid::nil() }),
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
        let read = database::ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let settings = crate::Settings::embedded(dir.path().to_path_buf());
        let vault = std::sync::Arc::new(adapters::vault::Vault::new(
            read.clone(),
            adapters::vault::MasterKey::generate(),
        ));
        let services = crate::Services::new(
            store.clone(),
            &read,
            vault.clone(),
            &settings,
            url::Url::parse("http://127.0.0.1/").unwrap(),
        );
        let detail: Arc<dyn eventstore::RunDetailLog> =
            Arc::new(eventstore::SledRunDetailLog::open(dir.path().join("run-detail")).unwrap());
        let run_logs = adapters::sync::RunLogs {
            records: records.clone(),
            detail: detail.clone(),
        };
        let workers = crate::Workers::new(&services, run_logs, &read, vault.clone(), &settings);
        let app = router(AppState::new(crate::Shared {
            store,
            records,
            detail,
            run_detail_retention: crate::RUN_DETAIL_RETENTION,
            backend: crate::Backend::Sled,
            db: read.clone(),
            runners: crate::Runners::default(),
            vault,
            services,
            workers,
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            tokens: crate::tokens::TokenCache::new(None),
            limiter: None,
            streams: Arc::new(crate::limits::PerToken::new(8)),
            waiting: Arc::new(crate::limits::PerToken::new(8)),
            metrics: crate::metrics::Metrics::new(),
            metrics_settings: crate::settings::MetricsSettings::default(),
            checkpoints: command::checkpoints::Checkpoints {
                log: Arc::new(
                    command::checkpoints::SledCheckpointLog::open(&dir.path().join("ck")).unwrap(),
                ),
                key: Arc::new(command::checkpoints::CheckpointKey::generate()),
            },
            installed_pages: Arc::default(),
            secure_cookies: false,
            content_security_policy: content_security_policy(&[]),
        }));
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
