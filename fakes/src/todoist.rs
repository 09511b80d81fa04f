//! A fake Todoist (unified API v1): a personal API token as Bearer, `/user`, active tasks with
//! `next_cursor` paging, task creation deduplicated by `X-Request-Id`, closing a task, and the
//! Sync endpoint's `sync_token` feed of changed items (`is_deleted`, `checked`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::store::{parse_token, Collection};
use super::{object, with_faults, Counters, FakeServer, FaultShape, Faults};

#[derive(Debug, Default)]
struct Data {
    tasks: Collection,
    requests: HashMap<String, String>,
    next: u64,
}

#[derive(Clone)]
struct AppState {
    token: String,
    data: Arc<Mutex<Data>>,
}

impl AppState {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Todoist data lock")
    }
}

/// A running fake Todoist.
#[derive(Debug)]
pub struct FakeTodoist {
    pub server: FakeServer,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    data: Arc<Mutex<Data>>,
}

/// Task `n`'s opaque id.
pub fn task_id(n: u64) -> String {
    format!("6Xt{n:013}")
}

fn task(id: &str, content: &str, checked: bool) -> Map<String, Value> {
    object(json!({
        "id": id,
        "content": content,
        "description": "",
        "project_id": "6Jf8VQXxpwv56VQ7",
        "section_id": null,
        "parent_id": null,
        "labels": [],
        "priority": 1,
        "child_order": 1,
        "checked": checked,
        "is_deleted": false,
        "added_at": "2026-01-01T08:25:05.000000Z",
        "updated_at": "2026-01-02T21:00:30.000000Z",
        "completed_at": null,
        "due": null,
    }))
}

impl FakeTodoist {
    /// Starts a fake whose user holds `token` and `tasks` active tasks.
    pub async fn start(token: &str, tasks: u64) -> std::io::Result<Self> {
        let mut data = Data::default();
        for n in 1..=tasks {
            let id = task_id(n);
            data.tasks.put(&id, task(&id, &format!("Task {n}"), false));
        }
        data.next = tasks + 1;
        let data = Arc::new(Mutex::new(data));
        let state = AppState {
            token: token.to_owned(),
            data: data.clone(),
        };
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        let router = Router::new()
            .route("/api/v1/user", get(user))
            .route("/api/v1/tasks", get(list).post(create))
            .route("/api/v1/tasks/{id}/close", post(close))
            .route("/api/v1/sync", post(sync))
            .with_state(state);
        let router = with_faults(
            router,
            &faults,
            &counters,
            FaultShape {
                rate_limited: r#"{"error":"Too many requests","error_code":429,"error_extra":{"retry_after":1},"error_tag":"LIMITS_REACHED","http_code":429}"#,
                unavailable: r#"{"error":"Service unavailable","error_code":503,"error_extra":{},"error_tag":"SERVICE_UNAVAILABLE","http_code":503}"#,
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
        self.data.lock().expect("fake Todoist data lock")
    }

    /// Renames a task, as the user would in the app.
    pub fn rename(&self, id: &str, content: &str) {
        self.data().tasks.put(id, task(id, content, false));
    }

    /// Deletes a task.
    pub fn delete(&self, id: &str) {
        self.data().tasks.delete(id);
    }

    /// Sync tokens issued so far are refused from now on.
    pub fn expire_sync_tokens(&self) {
        self.data().tasks.expire_tokens();
    }

    /// The contents of the active tasks.
    pub fn active(&self) -> Vec<String> {
        self.data()
            .tasks
            .live()
            .filter(|(_, e)| e.data["checked"] == false)
            .filter_map(|(_, e)| e.data["content"].as_str().map(str::to_owned))
            .collect()
    }
}

type Answer = Result<Response, Response>;

fn error(status: StatusCode, tag: &str, message: &str) -> Response {
    (
        status,
        Json(
            json!({"error": message, "error_code": status.as_u16(), "error_extra": {},
                    "error_tag": tag, "http_code": status.as_u16()}),
        ),
    )
        .into_response()
}

fn admit(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented == Some(state.token.as_str()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_TOKEN",
            "Invalid token",
        ))
    }
}

async fn user(State(state): State<AppState>, headers: HeaderMap) -> Answer {
    admit(&state, &headers)?;
    Ok(Json(json!({
        "id": "123456789", "email": "jane@example.com", "full_name": "Jane Doe",
        "inbox_project_id": "6Jf8VQXxpwv56VQ7", "is_premium": false, "lang": "en",
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT_VALUE",
            "limit must be between 1 and 200",
        ));
    }
    let offset = match query.cursor.as_deref() {
        None => 0,
        Some(cursor) => parse_token(cursor, "o")
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, "INVALID_CURSOR", "Invalid cursor"))?
            as usize,
    };
    let data = state.data();
    let active: Vec<&Map<String, Value>> = data
        .tasks
        .live()
        .filter(|(_, e)| e.data["checked"] == false)
        .map(|(_, e)| &e.data)
        .collect();
    let page: Vec<Value> = active
        .iter()
        .skip(offset)
        .take(limit)
        .map(|t| Value::Object((*t).clone()))
        .collect();
    let next = (offset + page.len() < active.len()).then(|| format!("o{}", offset + page.len()));
    Ok(Json(json!({"results": page, "next_cursor": next})).into_response())
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    admit(&state, &headers)?;
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if request_id.as_ref().is_some_and(|id| id.len() > 36) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST_ID",
            "X-Request-Id is longer than 36 bytes",
        ));
    }
    let mut data = state.data();
    if let Some(id) = request_id
        .as_ref()
        .and_then(|r| data.requests.get(r))
        .cloned()
    {
        let existing = data
            .tasks
            .get(&id)
            .map(|e| e.data.clone())
            .unwrap_or_default();
        return Ok(Json(Value::Object(existing)).into_response());
    }
    let Some(content) = body["content"].as_str().filter(|c| !c.is_empty()) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "ARGUMENT_MISSING",
            "Required argument is missing: content",
        ));
    };
    let id = task_id(data.next);
    data.next += 1;
    let mut created = task(&id, content, false);
    if let Some(due) = body["due_string"].as_str() {
        created.insert(
            "due".into(),
            json!({"string": due, "date": "2026-12-01", "is_recurring": false}),
        );
    }
    if let Some(priority) = body["priority"].as_u64() {
        created.insert("priority".into(), json!(priority));
    }
    data.tasks.put(&id, created.clone());
    if let Some(request_id) = request_id {
        data.requests.insert(request_id, id);
    }
    Ok(Json(Value::Object(created)).into_response())
}

async fn close(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    let mut data = state.data();
    let mut current = data
        .tasks
        .get(&id)
        .map(|e| e.data.clone())
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "NOT_FOUND", "Task not found"))?;
    current.insert("checked".into(), json!(true));
    current.insert("completed_at".into(), json!("2026-01-03T10:00:00.000000Z"));
    data.tasks.put(&id, current);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct SyncForm {
    sync_token: String,
    resource_types: String,
}

async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SyncForm>,
) -> Answer {
    admit(&state, &headers)?;
    let types: Vec<String> = serde_json::from_str(&form.resource_types).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT_VALUE",
            "resource_types must be a JSON array",
        )
    })?;
    let data = state.data();
    let full = form.sync_token == "*";
    let since = if full {
        0
    } else {
        parse_token(&form.sync_token, "t")
            .filter(|seq| !data.tasks.is_stale(*seq))
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_SYNC_TOKEN",
                    "Invalid sync token",
                )
            })?
    };
    let items: Vec<Value> = if types.iter().any(|t| t == "items" || t == "all") {
        data.tasks
            .changes_since(since)
            .into_iter()
            .filter(|(_, e)| !(full && e.deleted))
            .map(|(_, e)| {
                let mut item = e.data.clone();
                item.insert("is_deleted".into(), json!(e.deleted));
                Value::Object(item)
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Json(json!({
        "sync_token": format!("t{}", data.tasks.head()),
        "full_sync": full,
        "items": items,
        "temp_id_mapping": {},
        "sync_status": {},
    }))
    .into_response())
}
