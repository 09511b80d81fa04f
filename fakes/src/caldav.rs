//! A fake CalDAV server holding one calendar collection at `/dav/calendars/{user}/work/`, with
//! HTTP Basic auth: `PROPFIND` (Depth 0), the `sync-collection` REPORT of RFC 6578 (Depth 0
//! only; initial and incremental tokens; bare 404s for removed members; `limit` honoured with
//! a 507 for the collection and an intermediate token; `valid-sync-token` for a token it
//! forgot), `calendar-multiget` and `calendar-query` of RFC 4791, and `PUT` with
//! `If-None-Match: *`, `GET` and `DELETE` of members. It can be told not to support
//! `sync-collection`, as older servers do not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::json;

use super::store::{parse_token, Collection};
use super::{basic_credentials, object, with_faults, Counters, FakeServer, FaultShape, Faults};
use adapters::xml::{self, escape, CALDAV, DAV};

const TOKEN_PREFIX: &str = "http://fake.example/ns/sync/";

#[derive(Debug, Default)]
struct Data {
    /// Members by resource name (`abc.ics`): their iCalendar text and ETag.
    members: Collection,
    /// Members the next `calendar-multiget` finds removed.
    vanishing: Vec<String>,
}

#[derive(Clone)]
struct AppState {
    user: String,
    password: String,
    data: Arc<Mutex<Data>>,
    sync_supported: Arc<AtomicBool>,
}

impl AppState {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake CalDAV data lock")
    }

    fn collection_path(&self) -> String {
        format!("/dav/calendars/{}/work/", self.user)
    }
}

/// A running fake CalDAV server.
#[derive(Debug)]
pub struct FakeCalDav {
    pub server: FakeServer,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    data: Arc<Mutex<Data>>,
    sync_supported: Arc<AtomicBool>,
    user: String,
}

/// An event's iCalendar text.
pub fn ics(uid: &str, summary: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fake//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260105T090000Z\r\nDTEND:20260105T093000Z\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

impl FakeCalDav {
    /// Starts a server where `user` signs in with `password`, holding `events` events.
    pub async fn start(user: &str, password: &str, events: u64) -> std::io::Result<Self> {
        let mut data = Data::default();
        for n in 1..=events {
            let uid = format!("event-{n:05}");
            data.members.put(
                &format!("{uid}.ics"),
                object(json!({"ics": ics(&uid, &format!("Event {n}"))})),
            );
        }
        let data = Arc::new(Mutex::new(data));
        let sync_supported = Arc::new(AtomicBool::new(true));
        let state = AppState {
            user: user.to_owned(),
            password: password.to_owned(),
            data: data.clone(),
            sync_supported: sync_supported.clone(),
        };
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        let router = Router::new()
            .route("/dav/calendars/{user}/{calendar}/", any(collection))
            .route("/dav/calendars/{user}/{calendar}/{member}", any(member))
            .with_state(state);
        let router = with_faults(
            router,
            &faults,
            &counters,
            FaultShape {
                rate_limited: "Too many requests",
                unavailable: "Service unavailable",
                quota: None,
            },
        );
        Ok(Self {
            server: FakeServer::start(router).await?,
            faults,
            counters,
            data,
            sync_supported,
            user: user.to_owned(),
        })
    }

    /// The calendar collection's URL.
    pub fn calendar_url(&self) -> String {
        format!("{}dav/calendars/{}/work/", self.server.base, self.user)
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake CalDAV data lock")
    }

    /// Creates or changes the event in resource `name`.
    pub fn put(&self, name: &str, uid: &str, summary: &str) {
        self.data()
            .members
            .put(name, object(json!({"ics": ics(uid, summary)})));
    }

    /// Removes a resource.
    pub fn remove(&self, name: &str) {
        self.data().members.delete(name);
    }

    /// Removes the resource `name` when the next `calendar-multiget` arrives: listed by the
    /// run, gone by the time it reads the data (the read answers 404 for it).
    pub fn remove_before_next_read(&self, name: &str) {
        self.data().vanishing.push(name.to_owned());
    }

    /// Sync tokens issued so far are refused from now on.
    pub fn forget_tokens(&self) {
        self.data().members.expire_tokens();
    }

    /// The server stops supporting `sync-collection`.
    pub fn without_sync_collection(&self) {
        self.sync_supported.store(false, Ordering::SeqCst);
    }

    /// Resource names of the live members.
    pub fn members(&self) -> Vec<String> {
        self.data().members.live().map(|(n, _)| n.clone()).collect()
    }

    /// The iCalendar text of a member.
    pub fn member(&self, name: &str) -> Option<String> {
        self.data()
            .members
            .get(name)
            .and_then(|e| e.data["ics"].as_str().map(str::to_owned))
    }
}

fn text(status: StatusCode, body: &str) -> Response {
    (status, [("content-type", "text/plain")], body.to_owned()).into_response()
}

fn dav_error(status: StatusCode, precondition: &str) -> Response {
    (
        status,
        [("content-type", "application/xml; charset=utf-8")],
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><D:error xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">{precondition}</D:error>"#
        ),
    )
        .into_response()
}

fn multistatus(body: String) -> Response {
    (
        StatusCode::MULTI_STATUS,
        [("content-type", "application/xml; charset=utf-8")],
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">{body}</D:multistatus>"#
        ),
    )
        .into_response()
}

fn admit(state: &AppState, user: &str, headers: &HeaderMap) -> Result<(), Response> {
    match basic_credentials(headers) {
        Some((name, password)) if name == state.user && password == state.password => {}
        _ => {
            return Err((
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Basic realm=\"Fake CalDAV\"")],
                "Unauthorized",
            )
                .into_response())
        }
    }
    if user != state.user {
        return Err(text(StatusCode::FORBIDDEN, "Forbidden"));
    }
    Ok(())
}

fn etag(seq: u64) -> String {
    format!("\"{seq:08x}\"")
}

fn ok_propstat(props: &str) -> String {
    format!("<D:propstat><D:prop>{props}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>")
}

async fn collection(
    State(state): State<AppState>,
    Path((user, calendar)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = admit(&state, &user, &headers) {
        return refused;
    }
    if calendar != "work" {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    let depth = headers
        .get("depth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("infinity")
        .to_owned();
    // An empty PROPFIND body asks for every property (RFC 4918 §9.1).
    let request = if body.is_empty() {
        xml::Element::default()
    } else {
        match std::str::from_utf8(&body)
            .map_err(|e| e.to_string())
            .and_then(xml::parse)
        {
            Ok(doc) => doc,
            Err(_) => return text(StatusCode::BAD_REQUEST, "Bad request body"),
        }
    };
    let path = state.collection_path();
    match method.as_str() {
        "PROPFIND" => {
            if depth != "0" {
                return text(StatusCode::FORBIDDEN, "Only Depth: 0 here");
            }
            let head = state.data().members.head();
            multistatus(format!(
                "<D:response><D:href>{path}</D:href>{}</D:response>",
                ok_propstat(&format!(
                    "<D:resourcetype><D:collection/><C:calendar/></D:resourcetype><D:displayname>Work</D:displayname><D:sync-token>{TOKEN_PREFIX}{head}</D:sync-token>"
                ))
            ))
        }
        "REPORT" if request.is(DAV, "sync-collection") => {
            if !state.sync_supported.load(Ordering::SeqCst) {
                return dav_error(StatusCode::FORBIDDEN, "<D:supported-report/>");
            }
            if depth != "0" {
                return text(StatusCode::BAD_REQUEST, "sync-collection needs Depth: 0");
            }
            let token = request
                .child(DAV, "sync-token")
                .map(|t| t.trimmed().to_owned())
                .unwrap_or_default();
            let limit = request
                .find(DAV, "nresults")
                .and_then(|n| n.trimmed().parse::<usize>().ok());
            let data = state.data();
            let since = if token.is_empty() {
                None
            } else {
                match parse_token(&token, TOKEN_PREFIX).filter(|s| !data.members.is_stale(*s)) {
                    Some(since) => Some(since),
                    None => return dav_error(StatusCode::FORBIDDEN, "<D:valid-sync-token/>"),
                }
            };
            let changes: Vec<_> = data
                .members
                .changes_since(since.unwrap_or(0))
                .into_iter()
                // An initial sync lists members, never removals.
                .filter(|(_, e)| since.is_some() || !e.deleted)
                .collect();
            let take = limit.unwrap_or(usize::MAX).min(changes.len());
            let mut out = String::new();
            for (name, entry) in &changes[..take] {
                if entry.deleted {
                    out.push_str(&format!(
                        "<D:response><D:href>{path}{name}</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>"
                    ));
                } else {
                    out.push_str(&format!(
                        "<D:response><D:href>{path}{name}</D:href>{}</D:response>",
                        ok_propstat(&format!("<D:getetag>{}</D:getetag>", etag(entry.seq)))
                    ));
                }
            }
            let next = if take < changes.len() {
                out.push_str(&format!(
                    "<D:response><D:href>{path}</D:href><D:status>HTTP/1.1 507 Insufficient Storage</D:status><D:error><D:number-of-matches-within-limits/></D:error></D:response>"
                ));
                changes[take - 1].1.seq
            } else {
                data.members.head()
            };
            out.push_str(&format!(
                "<D:sync-token>{TOKEN_PREFIX}{next}</D:sync-token>"
            ));
            multistatus(out)
        }
        "REPORT" if request.is(CALDAV, "calendar-multiget") => {
            let mut data = state.data();
            // Removals racing a run: gone between the listing and this read.
            for name in std::mem::take(&mut data.vanishing) {
                data.members.delete(&name);
            }
            let mut out = String::new();
            for href in request.children_named(DAV, "href") {
                let href = href.trimmed();
                let name = href.strip_prefix(path.as_str()).unwrap_or_default();
                match data.members.get(name) {
                    Some(entry) => out.push_str(&format!(
                        "<D:response><D:href>{href}</D:href>{}</D:response>",
                        ok_propstat(&format!(
                            "<D:getetag>{}</D:getetag><C:calendar-data>{}</C:calendar-data>",
                            etag(entry.seq),
                            escape(entry.data["ics"].as_str().unwrap_or_default())
                        ))
                    )),
                    None => out.push_str(&format!(
                        "<D:response><D:href>{href}</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>"
                    )),
                }
            }
            multistatus(out)
        }
        "REPORT" if request.is(CALDAV, "calendar-query") => {
            if depth != "1" {
                return text(StatusCode::BAD_REQUEST, "calendar-query needs Depth: 1");
            }
            let filtered = request.find(CALDAV, "comp-filter").is_some();
            if !filtered {
                return dav_error(StatusCode::FORBIDDEN, "<C:valid-filter/>");
            }
            let data = state.data();
            let mut out = String::new();
            for (name, entry) in data.members.live() {
                out.push_str(&format!(
                    "<D:response><D:href>{path}{name}</D:href>{}</D:response>",
                    ok_propstat(&format!(
                        "<D:getetag>{}</D:getetag><C:calendar-data>{}</C:calendar-data>",
                        etag(entry.seq),
                        escape(entry.data["ics"].as_str().unwrap_or_default())
                    ))
                ));
            }
            multistatus(out)
        }
        "REPORT" => dav_error(StatusCode::FORBIDDEN, "<D:supported-report/>"),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
    }
}

async fn member(
    State(state): State<AppState>,
    Path((user, calendar, name)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = admit(&state, &user, &headers) {
        return refused;
    }
    if calendar != "work" {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    let mut data = state.data();
    match method.as_str() {
        "GET" => match data.members.get(&name) {
            Some(entry) => (
                StatusCode::OK,
                [
                    ("content-type", "text/calendar; charset=utf-8".to_owned()),
                    ("etag", etag(entry.seq)),
                ],
                entry.data["ics"].as_str().unwrap_or_default().to_owned(),
            )
                .into_response(),
            None => text(StatusCode::NOT_FOUND, "Not Found"),
        },
        "PUT" => {
            let exists = data.members.get(&name).is_some();
            let no_overwrite = headers
                .get("if-none-match")
                .is_some_and(|v| v.as_bytes() == b"*");
            if exists && no_overwrite {
                return text(StatusCode::PRECONDITION_FAILED, "Precondition Failed");
            }
            let Ok(ics) = String::from_utf8(body.to_vec()) else {
                return dav_error(StatusCode::FORBIDDEN, "<C:supported-calendar-data/>");
            };
            let valid = ics.starts_with("BEGIN:VCALENDAR") && ics.contains("\nUID:");
            if !valid {
                return dav_error(StatusCode::FORBIDDEN, "<C:valid-calendar-data/>");
            }
            let seq = data.members.put(&name, object(json!({ "ics": ics })));
            let status = if exists {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::CREATED
            };
            (status, [("etag", etag(seq))]).into_response()
        }
        "DELETE" => {
            if data.members.delete(&name) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                text(StatusCode::NOT_FOUND, "Not Found")
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
    }
}
