//! A fake Zendesk Support account: API-token Basic auth (`{email}/token:{token}`), the
//! anonymous answer of `/users/me` without credentials, cursor-based incremental exports of
//! tickets and users (`after_cursor`, `end_of_stream`, deleted tickets in the stream), ticket
//! fields, ticket creation with `Idempotency-Key`, comments, and the text/plain 429.
//!
//! The account answers under `/{subdomain}/`, so the client's URL template is exercised;
//! another subdomain is not found.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::store::{parse_token, Collection};
use super::{basic_credentials, object, with_faults, Counters, FakeServer, FaultShape, Faults};

#[derive(Debug, Default)]
struct Data {
    tickets: Collection,
    users: Collection,
    idempotency: HashMap<String, String>,
    next_ticket: u64,
}

#[derive(Clone)]
struct AppState {
    subdomain: String,
    email: String,
    api_token: String,
    data: Arc<Mutex<Data>>,
}

impl AppState {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Zendesk data lock")
    }
}

/// A running fake Zendesk.
#[derive(Debug)]
pub struct FakeZendesk {
    pub server: FakeServer,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    data: Arc<Mutex<Data>>,
}

fn ticket(id: u64, subject: &str, status: &str) -> Map<String, Value> {
    object(json!({
        "id": id,
        "url": format!("https://example.zendesk.com/api/v2/tickets/{id}.json"),
        "subject": subject,
        "description": format!("{subject}, in detail"),
        "status": status,
        "priority": "normal",
        "type": "question",
        "requester_id": 9000 + id % 7,
        "assignee_id": 235_323,
        "tags": ["fake"],
        "custom_fields": [{"id": 27642, "value": format!("v{id}")}],
        "created_at": "2026-01-01T09:00:00Z",
        "updated_at": "2026-01-02T09:00:00Z",
        "generated_timestamp": 1_767_258_000 + id,
        "via": {"channel": "web"},
    }))
}

fn user(id: u64) -> Map<String, Value> {
    object(json!({
        "id": id,
        "name": format!("Customer {id}"),
        "email": format!("customer{id}@example.com"),
        "role": "end-user",
        "active": true,
        "created_at": "2026-01-01T09:00:00Z",
        "updated_at": "2026-01-01T09:00:00Z",
    }))
}

impl FakeZendesk {
    /// Starts an account at `subdomain` whose agent `email` holds `api_token`.
    pub async fn start(
        subdomain: &str,
        email: &str,
        api_token: &str,
        tickets: u64,
        users: u64,
    ) -> std::io::Result<Self> {
        let mut data = Data::default();
        for n in 1..=tickets {
            data.tickets
                .put(&n.to_string(), ticket(n, &format!("Ticket {n}"), "open"));
        }
        for n in 1..=users {
            data.users.put(&(10_000 + n).to_string(), user(10_000 + n));
        }
        data.next_ticket = tickets + 1;
        let data = Arc::new(Mutex::new(data));
        let state = AppState {
            subdomain: subdomain.to_owned(),
            email: email.to_owned(),
            api_token: api_token.to_owned(),
            data: data.clone(),
        };
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        let router = Router::new()
            .route("/{subdomain}/api/v2/users/me", get(me))
            .route(
                "/{subdomain}/api/v2/incremental/{object}/cursor",
                get(export),
            )
            .route("/{subdomain}/api/v2/ticket_fields", get(ticket_fields))
            .route(
                "/{subdomain}/api/v2/tickets",
                axum::routing::post(create_ticket),
            )
            .route("/{subdomain}/api/v2/tickets/{id}", put(update_ticket))
            .with_state(state);
        let router = with_faults(
            router,
            &faults,
            &counters,
            FaultShape {
                rate_limited: "Number of allowed API requests per minute exceeded",
                unavailable: r#"{"error":"ServiceUnavailable","description":"Zendesk is temporarily unavailable"}"#,
                quota: None,
            },
        );
        Ok(Self {
            server: FakeServer::start(router).await?,
            faults,
            counters,
            data,
        })
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Zendesk data lock")
    }

    /// Changes a ticket's subject and status, as an agent would.
    pub fn update_ticket(&self, id: u64, subject: &str, status: &str) {
        self.data()
            .tickets
            .put(&id.to_string(), ticket(id, subject, status));
    }

    /// Deletes a ticket: it stays in the export with status `deleted`.
    pub fn delete_ticket(&self, id: u64) {
        let mut data = self.data();
        let Some(entry) = data.tickets.get(&id.to_string()) else {
            return;
        };
        let mut gone = entry.data.clone();
        gone.insert("status".into(), json!("deleted"));
        data.tickets.put(&id.to_string(), gone);
    }

    /// Subjects of the live (not deleted) tickets.
    pub fn ticket_subjects(&self) -> Vec<String> {
        self.data()
            .tickets
            .live()
            .filter(|(_, e)| e.data["status"] != "deleted")
            .filter_map(|(_, e)| e.data["subject"].as_str().map(str::to_owned))
            .collect()
    }

    /// How many comments ticket `id` has (its description included).
    pub fn comments(&self, id: u64) -> u64 {
        self.data()
            .tickets
            .get(&id.to_string())
            .and_then(|e| e.data.get("comment_count"))
            .and_then(Value::as_u64)
            .unwrap_or(1)
    }
}

type Answer = Result<Response, Response>;

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "RecordNotFound", "description": "Not found"})),
    )
        .into_response()
}

fn unauthenticated() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", "Basic realm=\"Web Password\"")],
        Json(json!({"error": "Couldn't authenticate you"})),
    )
        .into_response()
}

/// `Ok(true)`: the agent; `Ok(false)`: no credentials (anonymous); wrong ones are refused.
fn admit(state: &AppState, subdomain: &str, headers: &HeaderMap) -> Result<bool, Response> {
    if subdomain != state.subdomain {
        return Err(not_found());
    }
    if headers.get("authorization").is_none() {
        return Ok(false);
    }
    match basic_credentials(headers) {
        Some((user, token))
            if user == format!("{}/token", state.email) && token == state.api_token =>
        {
            Ok(true)
        }
        _ => Err(unauthenticated()),
    }
}

fn agent(state: &AppState, subdomain: &str, headers: &HeaderMap) -> Result<(), Response> {
    if admit(state, subdomain, headers)? {
        Ok(())
    } else {
        Err(unauthenticated())
    }
}

async fn me(
    State(state): State<AppState>,
    Path(subdomain): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let user = if admit(&state, &subdomain, &headers)? {
        json!({"id": 35436, "name": "Johnny Agent", "email": state.email, "role": "admin",
               "active": true, "locale": "en-US"})
    } else {
        json!({"id": null, "name": "Anonymous user", "email": "invalid@example.com",
               "role": "end-user", "active": true})
    };
    Ok(Json(json!({ "user": user })).into_response())
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    start_time: Option<i64>,
    cursor: Option<String>,
    per_page: Option<usize>,
    exclude_deleted: Option<bool>,
}

async fn export(
    State(state): State<AppState>,
    Path((subdomain, object)): Path<(String, String)>,
    Query(query): Query<ExportQuery>,
    headers: HeaderMap,
) -> Answer {
    agent(&state, &subdomain, &headers)?;
    let data = state.data();
    let collection = match object.as_str() {
        "tickets" => &data.tickets,
        "users" => &data.users,
        _ => return Err(not_found()),
    };
    let since = match (&query.cursor, query.start_time) {
        (Some(cursor), _) => parse_token(cursor, "c").ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "InvalidPaginationParameter", "description": "cursor is invalid"})),
            )
                .into_response()
        })?,
        (None, Some(start)) if start >= 0 => 0,
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "InvalidValue", "description": "start_time is required"})),
            )
                .into_response())
        }
    };
    let per_page = query.per_page.unwrap_or(1000).clamp(1, 1000);
    let exclude_deleted = query.exclude_deleted.unwrap_or(false);
    let changes: Vec<_> = collection
        .changes_since(since)
        .into_iter()
        .filter(|(_, e)| !(exclude_deleted && e.data["status"] == "deleted"))
        .collect();
    let page: Vec<Value> = changes
        .iter()
        .take(per_page)
        .map(|(_, e)| Value::Object(e.data.clone()))
        .collect();
    let last = changes
        .get(page.len().saturating_sub(1))
        .filter(|_| !page.is_empty())
        .map_or(since, |(_, e)| e.seq);
    let end = changes.len() <= per_page;
    let mut body = Map::new();
    body.insert(object.clone(), json!(page));
    body.insert("after_cursor".into(), json!(format!("c{last}")));
    body.insert(
        "after_url".into(),
        json!(format!(
            "https://{subdomain}.zendesk.com/api/v2/incremental/{object}/cursor?cursor=c{last}"
        )),
    );
    body.insert("before_cursor".into(), Value::Null);
    body.insert("end_of_stream".into(), json!(end));
    Ok(Json(Value::Object(body)).into_response())
}

async fn ticket_fields(
    State(state): State<AppState>,
    Path(subdomain): Path<String>,
    headers: HeaderMap,
) -> Answer {
    agent(&state, &subdomain, &headers)?;
    Ok(Json(json!({
        "ticket_fields": [
            {"id": 34, "type": "subject", "title": "Subject", "active": true},
            {"id": 35, "type": "status", "title": "Status", "active": true},
            {"id": 27642, "type": "text", "title": "Order number", "active": true},
        ],
        "next_page": null, "previous_page": null, "count": 3,
    }))
    .into_response())
}

async fn create_ticket(
    State(state): State<AppState>,
    Path(subdomain): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    agent(&state, &subdomain, &headers)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut data = state.data();
    if let Some(id) = key.as_ref().and_then(|k| data.idempotency.get(k)).cloned() {
        let existing = data
            .tickets
            .get(&id)
            .map(|e| e.data.clone())
            .unwrap_or_default();
        return Ok((
            StatusCode::CREATED,
            [("x-idempotency-lookup", "hit")],
            Json(json!({ "ticket": existing })),
        )
            .into_response());
    }
    let subject = body.pointer("/ticket/subject").and_then(Value::as_str);
    let comment = body.pointer("/ticket/comment/body").and_then(Value::as_str);
    let (Some(subject), Some(_)) = (subject, comment) else {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(
                json!({"error": "RecordInvalid", "description": "Record validation errors",
                        "details": {"description": [{"description": "Description: cannot be blank",
                                                      "error": "BlankValue"}]}}),
            ),
        )
            .into_response());
    };
    let id = data.next_ticket;
    data.next_ticket += 1;
    let created = ticket(id, subject, "new");
    data.tickets.put(&id.to_string(), created.clone());
    if let Some(key) = key {
        data.idempotency.insert(key, id.to_string());
    }
    Ok((
        StatusCode::CREATED,
        [("x-idempotency-lookup", "miss")],
        Json(json!({ "ticket": created })),
    )
        .into_response())
}

async fn update_ticket(
    State(state): State<AppState>,
    Path((subdomain, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    agent(&state, &subdomain, &headers)?;
    let mut data = state.data();
    let mut current = data
        .tickets
        .get(&id)
        .map(|e| e.data.clone())
        .ok_or_else(not_found)?;
    if body.pointer("/ticket/comment/body").is_some() {
        let count = current
            .get("comment_count")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        current.insert("comment_count".into(), json!(count + 1));
    }
    if let Some(status) = body.pointer("/ticket/status") {
        current.insert("status".into(), status.clone());
    }
    data.tickets.put(&id, current.clone());
    Ok(Json(json!({ "ticket": current })).into_response())
}
