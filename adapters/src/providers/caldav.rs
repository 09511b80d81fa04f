//! CalDAV (RFC 4791) with WebDAV sync (RFC 6578), Basic auth with an app password, against the
//! calendar collection URL typed at connect — any standards-compliant server.
//!
//! The connection test is a `PROPFIND` (Depth 0) that must find a calendar collection; an
//! incremental run first asks the same way for the collection's `sync-token`, and reads
//! nothing more when it is the one the last run left. A pull
//! is a `sync-collection` REPORT (Depth 0, `sync-level` 1, a `limit` of members): an empty
//! token for everything, the last run's token for what changed since. Changed members are then
//! read with `calendar-multiget`; removed members (a bare 404 in the answer) are tombstones.
//! A truncated answer (the collection itself reported 507 with
//! `number-of-matches-within-limits`) carries an intermediate token: the pull goes on from it.
//! A token the server refuses (`valid-sync-token`, on any 4xx) is a stale cursor, and the
//! worker starts over with an empty one. A server without `sync-collection` is read with a
//! `calendar-query` REPORT (Depth 1) of every event, and deletions are found by full runs.
//!
//! Events are created with `PUT` of a resource named from the idempotency key and
//! `If-None-Match: *`, so a retried create meets 412 instead of making a second event.

use async_trait::async_trait;
use domain::catalog::{self, App};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use url::Url;

use super::{bad_arguments, fixed_fields, id_from_key, only_object, str_argument, unknown_tool};
use crate::http::{error_detail, ProviderError, ProviderHttp};
use crate::provider::{Connection, Identity, Page, Provider, PullMode, PullRequest, PulledRecord};
use crate::xml::{self, Element, CALDAV, DAV};

/// Members per `sync-collection` answer, and hrefs per `calendar-multiget`.
const PAGE_SIZE: usize = 200;
const EVENT_FIELDS: &[&str] = &[
    "uid",
    "summary",
    "description",
    "location",
    "dtstart",
    "dtend",
    "status",
    "rrule",
];

#[derive(Clone, Debug)]
pub struct CalDav {
    http: ProviderHttp,
}

struct Collection {
    url: Url,
    user: String,
    password: SecretString,
}

impl Collection {
    fn request(
        &self,
        client: &reqwest::Client,
        method: &str,
        url: Url,
        depth: &str,
        body: String,
    ) -> reqwest::RequestBuilder {
        let method = Method::from_bytes(method.as_bytes()).expect("a WebDAV method name");
        client
            .request(method, url)
            .basic_auth(&self.user, Some(self.password.expose_secret()))
            .header("Depth", depth)
            .header("Content-Type", "application/xml; charset=utf-8")
            .body(body)
    }
}

impl CalDav {
    pub fn new(http: ProviderHttp) -> Self {
        Self { http }
    }

    fn collection(connection: Connection<'_>) -> Result<Collection, ProviderError> {
        let text = connection.setup_field("server_url")?;
        let mut url = Url::parse(text).map_err(|e| {
            ProviderError::Misconfigured(format!("the calendar URL is invalid: {e}"))
        })?;
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Collection {
            url,
            user: connection.setup_field("username")?.to_owned(),
            password: SecretString::from(connection.credentials.secret("app_password")?.to_owned()),
        })
    }

    /// Sends a WebDAV request and parses its 207 Multi-Status answer.
    async fn multistatus(
        &self,
        collection: &Collection,
        method: &str,
        depth: &str,
        body: String,
    ) -> Result<Element, ProviderError> {
        let response = self
            .http
            .send(|client| {
                collection.request(client, method, collection.url.clone(), depth, body.clone())
            })
            .await?;
        let status = response.status();
        if status != StatusCode::MULTI_STATUS {
            return Err(dav_error(status, &crate::http::error_body(response).await));
        }
        let text = crate::http::text_body(response).await?;
        let doc = xml::parse(&text).map_err(ProviderError::protocol)?;
        if !doc.is(DAV, "multistatus") {
            return Err(ProviderError::protocol(
                "the answer is not a DAV:multistatus",
            ));
        }
        Ok(doc)
    }

    async fn read_events(
        &self,
        collection: &Collection,
        hrefs: &[String],
    ) -> Result<Vec<PulledRecord>, ProviderError> {
        let mut records = Vec::with_capacity(hrefs.len());
        for chunk in hrefs.chunks(PAGE_SIZE) {
            let mut body = String::from(
                r#"<?xml version="1.0" encoding="utf-8"?><C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:prop><D:getetag/><C:calendar-data/></D:prop>"#,
            );
            for href in chunk {
                body.push_str(&format!("<D:href>{}</D:href>", xml::escape(href.as_str())));
            }
            body.push_str("</C:calendar-multiget>");
            let doc = self.multistatus(collection, "REPORT", "1", body).await?;
            for response in doc.children_named(DAV, "response") {
                let Some(href) = response.child(DAV, "href").map(|h| h.trimmed().to_owned()) else {
                    continue;
                };
                match response
                    .find(CALDAV, "calendar-data")
                    .filter(|_| propstat_ok(response))
                {
                    Some(data) => records.push(event_record(&href, &data.text)),
                    // Gone between the sync and the read: a deletion.
                    None => records.push(PulledRecord {
                        id: href,
                        fields: Map::new(),
                        deleted: true,
                    }),
                }
            }
        }
        Ok(records)
    }

    async fn sync_page(
        &self,
        collection: &Collection,
        token: &str,
    ) -> Result<Result<Page, Unsupported>, ProviderError> {
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><D:sync-collection xmlns:D="DAV:"><D:sync-token>{}</D:sync-token><D:sync-level>1</D:sync-level><D:limit><D:nresults>{PAGE_SIZE}</D:nresults></D:limit><D:prop><D:getetag/></D:prop></D:sync-collection>"#,
            xml::escape(token)
        );
        let doc = match self.multistatus(collection, "REPORT", "0", body).await {
            Ok(doc) => doc,
            Err(ProviderError::Rejected { status, detail })
                if status == 501
                    || status == 405
                    || (status == 403 && detail.contains("supported-report")) =>
            {
                return Ok(Err(Unsupported));
            }
            Err(other) => return Err(other),
        };
        let own = collection.url.path().trim_end_matches('/').to_owned();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let mut truncated = false;
        for response in doc.children_named(DAV, "response") {
            let Some(href) = response.child(DAV, "href").map(|h| h.trimmed().to_owned()) else {
                continue;
            };
            let status = response
                .child(DAV, "status")
                .map(|s| status_code(s.trimmed()));
            let is_self = href_path(&href).trim_end_matches('/') == own;
            if is_self {
                truncated |= status == Some(507);
                continue;
            }
            match status {
                Some(404) => removed.push(href),
                _ if propstat_ok(response) => changed.push(href),
                _ => {}
            }
        }
        let next_token = doc
            .child(DAV, "sync-token")
            .map(|t| t.trimmed().to_owned())
            .ok_or_else(|| ProviderError::protocol("the sync answer carries no sync-token"))?;
        let mut records = self.read_events(collection, &changed).await?;
        records.extend(removed.into_iter().map(|href| PulledRecord {
            id: href,
            fields: Map::new(),
            deleted: true,
        }));
        Ok(Ok(if truncated {
            Page {
                records,
                next_page: Some(next_token),
                watermark: None,
            }
        } else {
            Page {
                records,
                next_page: None,
                watermark: Some(next_token),
            }
        }))
    }

    async fn query_all(&self, collection: &Collection) -> Result<Page, ProviderError> {
        let body = r#"<?xml version="1.0" encoding="utf-8"?><C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:prop><D:getetag/><C:calendar-data/></D:prop><C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT"/></C:comp-filter></C:filter></C:calendar-query>"#;
        let doc = self
            .multistatus(collection, "REPORT", "1", body.to_owned())
            .await?;
        let records = doc
            .children_named(DAV, "response")
            .filter_map(|response| {
                let href = response.child(DAV, "href")?.trimmed().to_owned();
                let data = response.find(CALDAV, "calendar-data")?;
                Some(event_record(&href, &data.text))
            })
            .collect();
        Ok(Page {
            records,
            next_page: None,
            watermark: None,
        })
    }
}

/// The server does not do `sync-collection`.
struct Unsupported;

fn status_code(line: &str) -> u16 {
    // `HTTP/1.1 404 Not Found`
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn propstat_ok(response: &Element) -> bool {
    response.children_named(DAV, "propstat").any(|propstat| {
        propstat
            .child(DAV, "status")
            .is_some_and(|s| (200..300).contains(&status_code(s.trimmed())))
    })
}

fn href_path(href: &str) -> String {
    match Url::parse(href) {
        Ok(url) => url.path().to_owned(),
        Err(_) => href.to_owned(),
    }
}

/// A WebDAV failure: preconditions (`DAV:error` bodies) are named; a refused sync token is a
/// stale cursor.
fn dav_error(status: StatusCode, body: &str) -> ProviderError {
    let precondition = xml::parse(body)
        .ok()
        .filter(|doc| doc.is(DAV, "error"))
        .and_then(|doc| doc.children.first().map(|c| c.name.clone()));
    if status.is_client_error() && precondition.as_deref() == Some("valid-sync-token") {
        return ProviderError::StaleCursor {
            detail: "the server no longer accepts the sync token (DAV:valid-sync-token)".into(),
        };
    }
    let detail = match precondition {
        Some(name) => format!("precondition {name} failed"),
        None => error_detail(body),
    };
    match status.as_u16() {
        401 => ProviderError::Unauthorized { detail },
        429 => ProviderError::RateLimited { detail },
        code if code >= 500 && code != 501 && code != 507 => ProviderError::Unavailable { detail },
        code => ProviderError::Rejected {
            status: code,
            detail,
        },
    }
}

/// Joins folded lines (RFC 5545 §3.1): a line break followed by a space or a tab continues
/// the line.
fn unfold(text: &str) -> String {
    text.replace("\r\n ", "")
        .replace("\r\n\t", "")
        .replace("\n ", "")
        .replace("\n\t", "")
}

/// RFC 5545 §3.3.11 TEXT unescaping.
fn unescape_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') | Some('N') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// RFC 5545 §3.3.11 TEXT escaping.
fn escape_text(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace(';', "\\;")
        .replace(',', "\\,")
        .replace("\r\n", "\\n")
        .replace('\n', "\\n")
}

/// Folds a content line at 75 octets (RFC 5545 §3.1), on character boundaries.
fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut width = 0;
    for c in line.chars() {
        if width + c.len_utf8() > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += c.len_utf8();
    }
    out
}

/// The first VEVENT's properties, by lowercase name (parameters dropped; `dtstart` keeps its
/// `TZID` as `dtstart_tzid`).
fn event_record(href: &str, calendar: &str) -> PulledRecord {
    let text = unfold(calendar);
    let mut fields = Map::new();
    let mut depth = 0;
    let mut in_event = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some((head, value)) = line.split_once(':') else {
            continue;
        };
        let mut parts = head.split(';');
        let name = parts.next().unwrap_or_default().to_ascii_uppercase();
        match (name.as_str(), value.to_ascii_uppercase().as_str()) {
            ("BEGIN", "VEVENT") if depth == 0 && !fields.contains_key("uid") => {
                in_event = true;
                continue;
            }
            ("BEGIN", _) if in_event => depth += 1,
            ("END", "VEVENT") if depth == 0 && in_event => break,
            ("END", _) if in_event => depth -= 1,
            _ => {}
        }
        if !in_event || depth > 0 {
            continue;
        }
        let key = name.to_ascii_lowercase();
        if !EVENT_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let value = if matches!(key.as_str(), "summary" | "description" | "location") {
            unescape_text(value)
        } else {
            value.to_owned()
        };
        for parameter in parts {
            if let Some(tzid) = parameter.strip_prefix("TZID=") {
                fields.insert(format!("{key}_tzid"), json!(tzid));
            }
        }
        fields.insert(key, json!(value));
    }
    PulledRecord {
        id: href.to_owned(),
        fields,
        deleted: false,
    }
}

/// `2026-12-01T10:00:00Z` → `20261201T100000Z`.
fn ical_utc(value: &str) -> Result<String, ProviderError> {
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad_arguments(format!("`{value}` is not an RFC 3339 date-time")))?
        .to_offset(time::UtcOffset::UTC);
    Ok(format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    ))
}

#[async_trait]
impl Provider for CalDav {
    fn app(&self) -> &'static App {
        catalog::app("caldav").expect("the catalog has CalDAV")
    }

    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError> {
        let collection = Self::collection(connection)?;
        let body = r#"<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:displayname/><D:sync-token/></D:prop></D:propfind>"#;
        let doc = self
            .multistatus(&collection, "PROPFIND", "0", body.to_owned())
            .await?;
        let calendar = doc
            .find(DAV, "resourcetype")
            .is_some_and(|kinds| kinds.child(CALDAV, "calendar").is_some());
        if !calendar {
            return Err(ProviderError::Rejected {
                status: 400,
                detail: format!("{} is not a calendar collection", collection.url),
            });
        }
        let name = doc
            .find(DAV, "displayname")
            .map(|n| n.trimmed().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| collection.url.to_string());
        Ok(Identity {
            answer: format!("The CalDAV server opened the calendar {name}"),
            account_label: Some(format!("{name} ({})", collection.user)),
        })
    }

    async fn fields(
        &self,
        _connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError> {
        fixed_fields("a CalDAV calendar", object, "events", EVENT_FIELDS)
    }

    /// A `PROPFIND` (Depth 0) of the collection's `sync-token` (and `getctag`): the same token
    /// as the watermark means nothing changed. A server that reports no token cannot say.
    async fn anything_new(
        &self,
        connection: Connection<'_>,
        object: &str,
        since: &str,
    ) -> Result<Option<bool>, ProviderError> {
        only_object("a CalDAV calendar", object, "events")?;
        let collection = Self::collection(connection)?;
        let body = r#"<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><D:prop><D:sync-token/><CS:getctag/></D:prop></D:propfind>"#;
        let doc = self
            .multistatus(&collection, "PROPFIND", "0", body.to_owned())
            .await?;
        Ok(doc
            .find(DAV, "sync-token")
            .map(|token| token.trimmed())
            .filter(|token| !token.is_empty())
            .map(|token| token != since))
    }

    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError> {
        only_object("a CalDAV calendar", request.object, "events")?;
        let collection = Self::collection(connection)?;
        let token = match (request.page, request.mode) {
            (Some(page), _) => page,
            (None, PullMode::Incremental { since: Some(token) }) => token.as_str(),
            (None, _) => "",
        };
        match self.sync_page(&collection, token).await? {
            Ok(page) => Ok(page),
            Err(Unsupported) => self.query_all(&collection).await,
        }
    }

    async fn push(
        &self,
        connection: Connection<'_>,
        tool: &str,
        arguments: &Value,
        idempotency_key: &str,
    ) -> Result<Value, ProviderError> {
        let collection = Self::collection(connection)?;
        match tool {
            "create_event" => {
                let summary = str_argument(arguments, tool, "summary")?;
                let start = ical_utc(str_argument(arguments, tool, "start")?)?;
                let end = ical_utc(str_argument(arguments, tool, "end")?)?;
                let uid = format!("harmony-{}", id_from_key(idempotency_key, 32));
                let stamp = ical_utc(
                    &time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .map_err(ProviderError::protocol)?,
                )?;
                let mut lines = vec![
                    "BEGIN:VCALENDAR".to_owned(),
                    "VERSION:2.0".to_owned(),
                    "PRODID:-//Harmony Sync//EN".to_owned(),
                    "BEGIN:VEVENT".to_owned(),
                    format!("UID:{uid}"),
                    format!("DTSTAMP:{stamp}"),
                    format!("DTSTART:{start}"),
                    format!("DTEND:{end}"),
                    fold(&format!("SUMMARY:{}", escape_text(summary))),
                ];
                if let Some(description) = arguments.get("description").and_then(Value::as_str) {
                    lines.push(fold(&format!("DESCRIPTION:{}", escape_text(description))));
                }
                lines.push("END:VEVENT".to_owned());
                lines.push("END:VCALENDAR".to_owned());
                let body = format!("{}\r\n", lines.join("\r\n"));
                let url = collection
                    .url
                    .join(&format!("{uid}.ics"))
                    .map_err(|e| ProviderError::protocol(e.to_string()))?;
                let response = self
                    .http
                    .send(|client| {
                        client
                            .put(url.clone())
                            .basic_auth(&collection.user, Some(collection.password.expose_secret()))
                            .header("Content-Type", "text/calendar; charset=utf-8")
                            .header("If-None-Match", "*")
                            .body(body.clone())
                    })
                    .await?;
                let status = response.status();
                // 412: the resource exists — a retry of a create that went through.
                if !(status.is_success() || status == StatusCode::PRECONDITION_FAILED) {
                    let text = crate::http::error_body(response).await;
                    return Err(dav_error(status, &text));
                }
                Ok(json!({"uid": uid, "href": url.path(), "created": status.is_success()}))
            }
            other => Err(unknown_tool("CalDAV", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_folded_escaped_icalendar() {
        let calendar = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nEND:VTIMEZONE\r\nBEGIN:VEVENT\r\nUID:abc-1\r\nDTSTART;TZID=Europe/Berlin:20260102T090000\r\nSUMMARY:Planning\\, part one\r\nDESCRIPTION:A long line that was fo\r\n lded by the server\r\nBEGIN:VALARM\r\nDESCRIPTION:alarm\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let record = event_record("/cal/abc-1.ics", calendar);
        assert_eq!(record.fields["uid"], "abc-1");
        assert_eq!(record.fields["summary"], "Planning, part one");
        assert_eq!(
            record.fields["description"],
            "A long line that was folded by the server"
        );
        assert_eq!(record.fields["dtstart"], "20260102T090000");
        assert_eq!(record.fields["dtstart_tzid"], "Europe/Berlin");
    }

    #[test]
    fn text_escapes_and_folds_round_trip() {
        let text = "Dinner; wine, cheese\nand a very long tail that goes on well beyond seventy-five octets ✓";
        let line = fold(&format!("SUMMARY:{}", escape_text(text)));
        assert!(line.split("\r\n").all(|l| l.len() <= 75));
        let record = event_record(
            "/x",
            &format!("BEGIN:VEVENT\r\nUID:u\r\n{line}\r\nEND:VEVENT\r\n"),
        );
        assert_eq!(record.fields["summary"], text);
        assert_eq!(
            ical_utc("2026-12-01T11:00:00+01:00").expect("parses"),
            "20261201T100000Z"
        );
    }

    #[test]
    fn a_refused_sync_token_is_a_stale_cursor() {
        let body =
            r#"<?xml version="1.0"?><D:error xmlns:D="DAV:"><D:valid-sync-token/></D:error>"#;
        assert!(matches!(
            dav_error(StatusCode::FORBIDDEN, body),
            ProviderError::StaleCursor { .. }
        ));
        assert!(matches!(
            dav_error(StatusCode::CONFLICT, body),
            ProviderError::StaleCursor { .. }
        ));
        assert!(matches!(
            dav_error(StatusCode::UNAUTHORIZED, ""),
            ProviderError::Unauthorized { .. }
        ));
    }
}
