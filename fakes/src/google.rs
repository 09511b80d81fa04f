//! A fake Google: the OAuth endpoints (authorize, token, RFC 7009 revoke), Calendar v3 events
//! with `pageToken` paging, `nextSyncToken` and the 410 `fullSyncRequired` answer to a stale
//! token, and Gmail v1 messages with `historyId` partial sync and the 404 answer to a
//! forgotten history id. Errors use Google's envelope; rate limits come as 429 or as 403
//! `rateLimitExceeded`.
//!
//! Calendar is served under `/calendar/v3/` and Gmail under `/gmail/v1/`, as on Google's hosts.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::oauth::{AuthServer, Refusal, TokenPolicy};
use super::store::{parse_token, Collection};
use super::{object, with_faults, Counters, FakeServer, FaultShape, Faults};

pub const CLIENT_ID: &str = "fake-google-client.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "fake-google-secret";
pub const EMAIL: &str = "jane@example.com";

#[derive(Debug, Default)]
struct Data {
    events: Collection,
    messages: Collection,
}

/// A running fake Google.
#[derive(Debug)]
pub struct FakeGoogle {
    pub server: FakeServer,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    pub auth: Arc<AuthServer>,
    data: Arc<Mutex<Data>>,
}

#[derive(Clone)]
struct AppState {
    auth: Arc<AuthServer>,
    data: Arc<Mutex<Data>>,
}

impl AppState {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Google data lock")
    }
}

/// Event `n`'s id: base32hex, as Google's are.
pub fn event_id(n: u64) -> String {
    format!("ev{n:06}")
}

/// Message `n`'s id: hex, as Gmail's are.
pub fn message_id(n: u64) -> String {
    format!("18f{n:013x}")
}

fn event(id: &str, summary: &str, day: u64) -> Map<String, Value> {
    let date = format!("2026-01-{:02}", day % 28 + 1);
    object(json!({
        "kind": "calendar#event",
        "etag": format!("\"{}\"", summary.len()),
        "id": id,
        "status": "confirmed",
        "summary": summary,
        "created": "2026-01-01T09:00:00.000Z",
        "updated": "2026-01-01T10:00:00.000Z",
        "start": {"dateTime": format!("{date}T09:00:00+01:00"), "timeZone": "Europe/Berlin"},
        "end": {"dateTime": format!("{date}T09:30:00+01:00")},
        "organizer": {"email": EMAIL, "self": true},
        "iCalUID": format!("{id}@google.com"),
        "eventType": "default",
    }))
}

fn message(id: &str, from: &str, subject: &str, labels: &[&str]) -> Map<String, Value> {
    object(json!({
        "id": id,
        "threadId": id,
        "labelIds": labels,
        "snippet": format!("About {subject}"),
        "internalDate": "1767258000000",
        "sizeEstimate": 2048,
        "payload": {"headers": [
            {"name": "From", "value": from},
            {"name": "To", "value": EMAIL},
            {"name": "Subject", "value": subject},
            {"name": "Date", "value": "Thu, 1 Jan 2026 09:00:00 +0000"},
        ]},
    }))
}

impl FakeGoogle {
    /// Starts a fake with `events` calendar events and `messages` mail messages.
    pub async fn start(events: u64, messages: u64) -> std::io::Result<Self> {
        let auth = Arc::new(AuthServer::new(TokenPolicy {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            accepts_basic: true,
            expires_in: Some(3599),
            refresh_returns_token: false,
            rotate: false,
            invalid_grant_extra: Map::new(),
            token_extra: object(json!({"token_type": "Bearer"})),
        }));
        let mut data = Data::default();
        for n in 1..=events {
            let id = event_id(n);
            data.events.put(&id, event(&id, &format!("Meeting {n}"), n));
        }
        for n in 1..=messages {
            let id = message_id(n);
            data.messages.put(
                &id,
                message(
                    &id,
                    &format!("sender{n}@example.org"),
                    &format!("Subject {n}"),
                    &["INBOX"],
                ),
            );
        }
        let data = Arc::new(Mutex::new(data));
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        let state = AppState {
            auth: auth.clone(),
            data: data.clone(),
        };
        let api = Router::new()
            .route("/calendar/v3/calendars/{calendar}", get(calendar))
            .route(
                "/calendar/v3/calendars/{calendar}/events",
                get(list_events).post(insert_event),
            )
            .route(
                "/calendar/v3/calendars/{calendar}/events/{id}",
                get(get_event).delete(delete_event),
            )
            .route("/gmail/v1/users/{user}/profile", get(profile))
            .route("/gmail/v1/users/{user}/messages", get(list_messages))
            .route("/gmail/v1/users/{user}/messages/{id}", get(get_message))
            .route("/gmail/v1/users/{user}/messages/send", post(send_message))
            .route("/gmail/v1/users/{user}/history", get(history))
            .with_state(state.clone());
        let api = with_faults(
            api,
            &faults,
            &counters,
            FaultShape {
                rate_limited: r#"{"error":{"errors":[{"domain":"usageLimits","reason":"rateLimitExceeded","message":"Rate Limit Exceeded"}],"code":429,"message":"Rate Limit Exceeded"}}"#,
                unavailable: r#"{"error":{"errors":[{"domain":"global","reason":"backendError","message":"Backend Error"}],"code":503,"message":"Backend Error"}}"#,
                quota: Some(
                    r#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403,"message":"User Rate Limit Exceeded"}}"#,
                ),
            },
        );
        let oauth =
            super::oauth::routes(auth.clone(), "/o/oauth2/v2/auth", "/token", Some("/revoke"));
        let server = FakeServer::start(api.merge(oauth)).await?;
        Ok(Self {
            server,
            faults,
            counters,
            auth,
            data,
        })
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Google data lock")
    }

    /// Creates or changes an event, as the user would in Calendar.
    pub fn set_event(&self, id: &str, summary: &str) {
        self.data().events.put(id, event(id, summary, 3));
    }

    /// Deletes an event (it turns `cancelled` in incremental feeds).
    pub fn delete_event(&self, id: &str) {
        self.data().events.delete(id);
    }

    /// Every sync token issued so far answers 410 from now on.
    pub fn expire_sync_tokens(&self) {
        self.data().events.expire_tokens();
    }

    /// The ids of the live events.
    pub fn event_ids(&self) -> Vec<String> {
        self.data()
            .events
            .live()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A message arrives.
    pub fn receive(&self, id: &str, from: &str, subject: &str) {
        self.data()
            .messages
            .put(id, message(id, from, subject, &["INBOX", "UNREAD"]));
    }

    /// A message is deleted for good.
    pub fn purge_message(&self, id: &str) {
        self.data().messages.delete(id);
    }

    /// History ids issued so far are forgotten: history from them answers 404.
    pub fn expire_history(&self) {
        self.data().messages.expire_tokens();
    }

    /// Subjects of the messages with the SENT label.
    pub fn sent_subjects(&self) -> Vec<String> {
        self.data()
            .messages
            .live()
            .filter(|(_, entry)| {
                entry.data["labelIds"]
                    .as_array()
                    .is_some_and(|labels| labels.iter().any(|l| l == "SENT"))
            })
            .filter_map(|(_, entry)| header(&entry.data, "Subject"))
            .collect()
    }
}

type Answer = Result<Response, Response>;

fn google_error(status: StatusCode, domain: &str, reason: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {
            "errors": [{"domain": domain, "reason": reason, "message": message}],
            "code": status.as_u16(),
            "message": message,
        }})),
    )
        .into_response()
}

fn admit(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    state.auth.check_bearer(headers).map_err(|refusal| {
        let message = match refusal {
            Refusal::Missing => "Login Required.",
            Refusal::Expired | Refusal::Invalid => "Invalid Credentials",
        };
        google_error(StatusCode::UNAUTHORIZED, "global", "authError", message)
    })
}

fn known_calendar(calendar: &str) -> Result<(), Response> {
    if calendar == "primary" || calendar == EMAIL {
        Ok(())
    } else {
        Err(google_error(
            StatusCode::NOT_FOUND,
            "global",
            "notFound",
            "Not Found",
        ))
    }
}

async fn calendar(
    State(state): State<AppState>,
    Path(calendar): Path<String>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    known_calendar(&calendar)?;
    Ok(Json(json!({
        "kind": "calendar#calendar",
        "etag": "\"fake\"",
        "id": EMAIL,
        "summary": EMAIL,
        "timeZone": "Europe/Berlin",
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    max_results: Option<usize>,
    page_token: Option<String>,
    sync_token: Option<String>,
    time_min: Option<String>,
    order_by: Option<String>,
    show_deleted: Option<bool>,
}

fn bad_request(message: &str) -> Response {
    google_error(StatusCode::BAD_REQUEST, "global", "invalid", message)
}

/// Page tokens carry the listing's start position and an offset: `{position}-{offset}`.
fn page_token(position: u64, offset: usize) -> String {
    format!("p{position}-{offset}")
}

fn parse_page_token(token: &str) -> Option<(u64, usize)> {
    let (position, offset) = token.strip_prefix('p')?.split_once('-')?;
    Some((position.parse().ok()?, offset.parse().ok()?))
}

async fn list_events(
    State(state): State<AppState>,
    Path(calendar): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    known_calendar(&calendar)?;
    let limit = query.max_results.unwrap_or(250);
    if !(1..=2500).contains(&limit) {
        return Err(bad_request("Invalid value for maxResults"));
    }
    let data = state.data();
    let (position, offset) = match query.page_token.as_deref() {
        None => (None, 0),
        Some(token) => {
            let (position, offset) =
                parse_page_token(token).ok_or_else(|| bad_request("Invalid page token"))?;
            (Some(position), offset)
        }
    };
    let (items, next_offset, head) = match query.sync_token.as_deref() {
        Some(token) => {
            if query.time_min.is_some() || query.order_by.is_some() {
                return Err(bad_request(
                    "Sync token cannot be used with timeMin, timeMax, updatedMin, orderBy or q",
                ));
            }
            let since = parse_token(token, "s")
                .filter(|seq| !data.events.is_stale(*seq))
                .ok_or_else(|| {
                    google_error(
                        StatusCode::GONE,
                        "calendar",
                        "fullSyncRequired",
                        "Sync token is no longer valid, a full sync is required.",
                    )
                })?;
            let head = position.unwrap_or(data.events.head());
            let changes: Vec<Value> = data
                .events
                .changes_since(since)
                .into_iter()
                .filter(|(_, entry)| entry.seq <= head)
                .map(|(id, entry)| {
                    if entry.deleted {
                        json!({"kind": "calendar#event", "etag": "\"0\"", "id": id, "status": "cancelled"})
                    } else {
                        Value::Object(entry.data.clone())
                    }
                })
                .collect();
            let items: Vec<Value> = changes.iter().skip(offset).take(limit).cloned().collect();
            let next = (offset + items.len() < changes.len()).then_some(offset + items.len());
            (items, next, head)
        }
        None => {
            let head = position.unwrap_or(data.events.head());
            let (page, next) = data.events.page(offset, limit);
            let items = page
                .into_iter()
                .map(|(_, entry)| Value::Object(entry.data.clone()))
                .collect();
            (items, next, head)
        }
    };
    let _ = query.show_deleted;
    let mut body = json!({
        "kind": "calendar#events",
        "etag": "\"fake\"",
        "summary": EMAIL,
        "updated": "2026-01-01T10:00:00.000Z",
        "timeZone": "Europe/Berlin",
        "accessRole": "owner",
        "defaultReminders": [],
        "items": items,
    });
    match next_offset {
        Some(next) => body["nextPageToken"] = json!(page_token(head, next)),
        None => body["nextSyncToken"] = json!(format!("s{head}")),
    }
    Ok(Json(body).into_response())
}

async fn insert_event(
    State(state): State<AppState>,
    Path(calendar): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    admit(&state, &headers)?;
    known_calendar(&calendar)?;
    let summary = body["summary"].as_str().unwrap_or_default().to_owned();
    if body["start"].is_null() || body["end"].is_null() {
        return Err(bad_request("Missing end time."));
    }
    let mut data = state.data();
    let id = match body["id"].as_str() {
        Some(id) => {
            let valid = (5..=1024).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b));
            if !valid {
                return Err(bad_request("Invalid resource id value."));
            }
            if data.events.get(id).is_some() {
                return Err(google_error(
                    StatusCode::CONFLICT,
                    "global",
                    "duplicate",
                    "The requested identifier already exists.",
                ));
            }
            id.to_owned()
        }
        None => format!("gen{:08}", data.events.head() + 1),
    };
    let mut created = event(&id, &summary, 1);
    created.insert("start".into(), body["start"].clone());
    created.insert("end".into(), body["end"].clone());
    data.events.put(&id, created.clone());
    Ok(Json(Value::Object(created)).into_response())
}

async fn get_event(
    State(state): State<AppState>,
    Path((calendar, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    known_calendar(&calendar)?;
    let data = state.data();
    let entry = data
        .events
        .get(&id)
        .ok_or_else(|| google_error(StatusCode::NOT_FOUND, "global", "notFound", "Not Found"))?;
    Ok(Json(Value::Object(entry.data.clone())).into_response())
}

async fn delete_event(
    State(state): State<AppState>,
    Path((calendar, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    known_calendar(&calendar)?;
    if state.data().events.delete(&id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(google_error(
            StatusCode::GONE,
            "global",
            "deleted",
            "Resource has been deleted",
        ))
    }
}

fn known_user(user: &str) -> Result<(), Response> {
    if user == "me" || user == EMAIL {
        Ok(())
    } else {
        Err(google_error(
            StatusCode::FORBIDDEN,
            "global",
            "forbidden",
            "Delegation denied",
        ))
    }
}

async fn profile(
    State(state): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    known_user(&user)?;
    let data = state.data();
    let total = data.messages.live().count();
    Ok(Json(json!({
        "emailAddress": EMAIL,
        "messagesTotal": total,
        "threadsTotal": total,
        "historyId": data.messages.head().to_string(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessagesQuery {
    max_results: Option<usize>,
    page_token: Option<String>,
    q: Option<String>,
}

fn header(data: &Map<String, Value>, name: &str) -> Option<String> {
    data["payload"]["headers"].as_array()?.iter().find(|h| {
        h["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })?["value"]
        .as_str()
        .map(str::to_owned)
}

async fn list_messages(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Query(query): Query<MessagesQuery>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    known_user(&user)?;
    let limit = query.max_results.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(bad_request("Invalid maxResults"));
    }
    let offset = match query.page_token.as_deref() {
        None => 0,
        Some(token) => {
            parse_token(token, "m").ok_or_else(|| bad_request("Invalid pageToken"))? as usize
        }
    };
    let data = state.data();
    let needle = query.q.as_deref().map(str::to_lowercase);
    // Newest first, as Gmail lists.
    let matching: Vec<&String> = data
        .messages
        .live()
        .filter(|(_, entry)| match &needle {
            None => true,
            Some(needle) => ["From", "Subject"].iter().any(|name| {
                header(&entry.data, name).is_some_and(|v| v.to_lowercase().contains(needle))
            }),
        })
        .map(|(id, _)| id)
        .rev()
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|id| json!({"id": id, "threadId": id}))
        .collect();
    let mut body = json!({"resultSizeEstimate": matching.len()});
    if !page.is_empty() {
        body["messages"] = json!(page);
    }
    if offset + page.len() < matching.len() {
        body["nextPageToken"] = json!(format!("m{}", offset + page.len()));
    }
    Ok(Json(body).into_response())
}

#[derive(Debug, Deserialize)]
struct MessageQuery {
    format: Option<String>,
}

async fn get_message(
    State(state): State<AppState>,
    Path((user, id)): Path<(String, String)>,
    Query(query): Query<MessageQuery>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    known_user(&user)?;
    let data = state.data();
    let entry = data.messages.get(&id).ok_or_else(|| {
        google_error(
            StatusCode::NOT_FOUND,
            "global",
            "notFound",
            "Requested entity was not found.",
        )
    })?;
    let mut message = entry.data.clone();
    message.insert("historyId".into(), json!(entry.seq.to_string()));
    if query.format.as_deref() == Some("minimal") {
        message.remove("payload");
    }
    Ok(Json(Value::Object(message)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryQuery {
    start_history_id: Option<String>,
    page_token: Option<String>,
    max_results: Option<usize>,
}

async fn history(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Query(query): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    known_user(&user)?;
    let data = state.data();
    let not_found = || {
        google_error(
            StatusCode::NOT_FOUND,
            "global",
            "notFound",
            "Requested entity was not found.",
        )
    };
    let start: u64 = query
        .start_history_id
        .as_deref()
        .ok_or_else(|| bad_request("startHistoryId is required"))?
        .parse()
        .map_err(|_| bad_request("Invalid startHistoryId"))?;
    if data.messages.is_stale(start) {
        return Err(not_found());
    }
    let limit = query.max_results.unwrap_or(100).clamp(1, 500);
    let offset = match query.page_token.as_deref() {
        None => 0,
        Some(token) => {
            parse_token(token, "h").ok_or_else(|| bad_request("Invalid pageToken"))? as usize
        }
    };
    let changes = data.messages.changes_since(start);
    let records: Vec<Value> = changes
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(id, entry)| {
            let reference = json!({"id": id, "threadId": id});
            if entry.deleted {
                json!({"id": entry.seq.to_string(), "messages": [reference],
                       "messagesDeleted": [{"message": reference}]})
            } else {
                json!({"id": entry.seq.to_string(), "messages": [reference],
                       "messagesAdded": [{"message": {"id": id, "threadId": id,
                                                       "labelIds": entry.data["labelIds"]}}]})
            }
        })
        .collect();
    let mut body = json!({"historyId": data.messages.head().to_string()});
    if !records.is_empty() {
        body["history"] = json!(records);
    }
    if offset + records.len() < changes.len() {
        body["nextPageToken"] = json!(format!("h{}", offset + records.len()));
    }
    Ok(Json(body).into_response())
}

async fn send_message(
    State(state): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    admit(&state, &headers)?;
    known_user(&user)?;
    let raw = body["raw"].as_str().ok_or_else(|| {
        bad_request(
            "'raw' RFC822 payload message string or uploading message via /upload/* URL required",
        )
    })?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw.trim_end_matches('='))
        .map_err(|_| bad_request("Invalid raw message"))?;
    let text = String::from_utf8_lossy(&decoded);
    let find = |name: &str| {
        text.lines()
            .take_while(|line| !line.is_empty())
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
    };
    let (Some(to), Some(subject)) = (find("To"), find("Subject")) else {
        return Err(bad_request("Invalid To header"));
    };
    let mut data = state.data();
    let id = format!("19a{:013x}", data.messages.head() + 1);
    let mut sent = message(&id, EMAIL, &subject, &["SENT"]);
    sent["payload"]["headers"][1]["value"] = json!(to);
    data.messages.put(&id, sent);
    Ok(Json(json!({"id": id, "threadId": id, "labelIds": ["SENT"]})).into_response())
}
