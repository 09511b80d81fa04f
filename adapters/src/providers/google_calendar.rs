//! Google Calendar v3: the primary calendar's events, listed with `pageToken` paging; the last
//! page's `nextSyncToken` is the watermark, and an incremental run lists with it (cancelled
//! events are its deletions). A token Google no longer honours answers 410, which the sync
//! worker turns into a full pull. Rate limits arrive as 429 or as 403 `rateLimitExceeded`;
//! [`ProviderHttp`] retries both.
//!
//! Events are created with an id derived from the idempotency key (Google accepts
//! client-chosen base32hex ids), so a retried insert meets a 409 and returns the event the
//! first attempt made.

use async_trait::async_trait;
use domain::catalog::{self, App};
use serde_json::{json, Value};
use url::Url;

use super::{
    endpoint, fixed_fields, id_from_key, only_object, str_argument, string_field, unknown_tool,
};
use crate::http::{check, ProviderError, ProviderHttp};
use crate::provider::{Connection, Identity, Page, Provider, PullMode, PullRequest, PulledRecord};

pub const DEFAULT_API_BASE: &str = "https://www.googleapis.com/calendar/v3/";
const PAGE_SIZE: u32 = 250;
const EVENT_FIELDS: &[&str] = &[
    "summary",
    "description",
    "location",
    "status",
    "start",
    "end",
    "attendees",
    "organizer",
    "recurringEventId",
    "updated",
];

#[derive(Clone, Debug)]
pub struct GoogleCalendar {
    api: Url,
    http: ProviderHttp,
}

impl GoogleCalendar {
    pub fn new(api: Url, http: ProviderHttp) -> Self {
        Self { api, http }
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        endpoint(&self.api, path)
    }
}

fn app() -> &'static App {
    catalog::app("google-calendar").expect("the catalog has Google Calendar")
}

fn event_record(item: &Value) -> Result<PulledRecord, ProviderError> {
    let id = string_field(item, "id")?;
    let deleted = item.get("status").and_then(Value::as_str) == Some("cancelled");
    let fields = EVENT_FIELDS
        .iter()
        .filter_map(|name| {
            item.get(*name)
                .map(|value| ((*name).to_owned(), value.clone()))
        })
        .collect();
    Ok(PulledRecord {
        id,
        fields,
        deleted,
    })
}

#[async_trait]
impl Provider for GoogleCalendar {
    fn app(&self) -> &'static App {
        app()
    }

    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError> {
        let token = connection.credentials.bearer()?;
        let url = self.url("calendars/primary")?;
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        let email = string_field(&body, "id")?;
        Ok(Identity {
            answer: format!("Google Calendar answered for {email}"),
            account_label: Some(email),
        })
    }

    async fn fields(
        &self,
        _connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError> {
        fixed_fields("Google Calendar", object, "events", EVENT_FIELDS)
    }

    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError> {
        only_object("Google Calendar", request.object, "events")?;
        let token = connection.credentials.bearer()?;
        let mut url = self.url("calendars/primary/events")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("maxResults", &PAGE_SIZE.to_string());
            query.append_pair("singleEvents", "true");
            if let PullMode::Incremental {
                since: Some(sync_token),
            } = request.mode
            {
                query.append_pair("syncToken", sync_token);
            }
            if let Some(page) = request.page {
                query.append_pair("pageToken", page);
            }
        }
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        let items = body
            .get("items")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let records = items
            .iter()
            .map(event_record)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page = body
            .get("nextPageToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let watermark = body
            .get("nextSyncToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if next_page.is_none() && watermark.is_none() {
            return Err(ProviderError::protocol(
                "the last page of events carries no nextSyncToken",
            ));
        }
        Ok(Page {
            records,
            next_page,
            watermark,
        })
    }

    async fn push(
        &self,
        connection: Connection<'_>,
        tool: &str,
        arguments: &Value,
        idempotency_key: &str,
    ) -> Result<Value, ProviderError> {
        let token = connection.credentials.bearer()?;
        match tool {
            "create_event" => {
                let summary = str_argument(arguments, tool, "summary")?;
                let start = str_argument(arguments, tool, "start")?;
                let end = str_argument(arguments, tool, "end")?;
                // Client-chosen ids are base32hex, which hex digits are a part of.
                let id = format!("hs{}", id_from_key(idempotency_key, 32));
                let mut event = json!({
                    "id": id,
                    "summary": summary,
                    "start": {"dateTime": start},
                    "end": {"dateTime": end},
                });
                if let Some(description) = arguments.get("description").and_then(Value::as_str) {
                    event["description"] = json!(description);
                }
                if let Some(attendees) = arguments.get("attendees").and_then(Value::as_array) {
                    event["attendees"] = attendees
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|email| json!({"email": email}))
                        .collect();
                }
                let mut url = self.url("calendars/primary/events")?;
                url.query_pairs_mut().append_pair("sendUpdates", "none");
                let response = self
                    .http
                    .send(|client| client.post(url.clone()).bearer_auth(token).json(&event))
                    .await?;
                let created: Value = if response.status() == reqwest::StatusCode::CONFLICT {
                    // A retry: the first attempt made it.
                    let existing = self.url(&format!("calendars/primary/events/{id}"))?;
                    self.http
                        .json(|client| client.get(existing.clone()).bearer_auth(token))
                        .await?
                } else {
                    crate::http::json_body(check(response).await?).await?
                };
                Ok(json!({
                    "id": created.get("id"),
                    "summary": created.get("summary"),
                    "start": created.get("start"),
                    "end": created.get("end"),
                }))
            }
            "list_events" => {
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(ProviderError::protocol)?;
                let mut url = self.url("calendars/primary/events")?;
                url.query_pairs_mut()
                    .append_pair("timeMin", &now)
                    .append_pair("singleEvents", "true")
                    .append_pair("orderBy", "startTime")
                    .append_pair("maxResults", "20");
                let body = self
                    .http
                    .json(|client| client.get(url.clone()).bearer_auth(token))
                    .await?;
                let events: Vec<Value> = body
                    .get("items")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|item| {
                        json!({"id": item.get("id"), "summary": item.get("summary"),
                               "start": item.get("start"), "end": item.get("end")})
                    })
                    .collect();
                Ok(json!({ "events": events }))
            }
            "delete_event" => {
                let id = str_argument(arguments, tool, "event_id")?;
                let url = self.url(&format!("calendars/primary/events/{id}"))?;
                let response = self
                    .http
                    .send(|client| client.delete(url.clone()).bearer_auth(token))
                    .await?;
                // Gone already (a retry, or deleted by hand) is what was asked for.
                if response.status() == reqwest::StatusCode::GONE {
                    return Ok(json!({"id": id, "deleted": true}));
                }
                check(response).await?;
                Ok(json!({"id": id, "deleted": true}))
            }
            other => Err(unknown_tool("Google Calendar", other)),
        }
    }
}
