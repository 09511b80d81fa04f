//! Gmail v1: messages. A full pull notes the mailbox's `historyId` first, then lists message
//! ids page by page and reads each one's headers (`format=metadata`); the noted history id is
//! the watermark. An incremental pull reads `users.history` from the watermark: added
//! messages are read, permanently deleted ones are tombstones, and the answer's `historyId`
//! is the next watermark. A history id Gmail has forgotten answers 404, which becomes a stale
//! cursor and a full pull.
//!
//! Sending has no idempotency at Gmail, so a send is never repeated after an answer that may
//! mean it went out.

use async_trait::async_trait;
use base64::Engine;
use domain::catalog::{self, App};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};
use url::Url;

use super::{
    bad_arguments, endpoint, fixed_fields, only_object, str_argument, string_field, unknown_tool,
};
use crate::http::{check, status_error, ProviderError, ProviderHttp};
use crate::provider::{Connection, Identity, Page, Provider, PullMode, PullRequest, PulledRecord};

pub const DEFAULT_API_BASE: &str = "https://gmail.googleapis.com/gmail/v1/";
const PAGE_SIZE: u32 = 100;
/// Message reads in flight at once while a page is filled in.
const READS_IN_FLIGHT: usize = 8;
const HEADERS: &[&str] = &["From", "To", "Cc", "Subject", "Date"];
const MESSAGE_FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "snippet",
    "labelIds",
    "threadId",
    "internalDate",
];

#[derive(Clone, Debug)]
pub struct Gmail {
    api: Url,
    http: ProviderHttp,
}

/// A pull's place: the history id the run ends at, and Gmail's page token.
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    history_id: String,
    page: Option<String>,
}

impl Cursor {
    fn encode(&self) -> String {
        format!(
            "{}|{}",
            self.history_id,
            self.page.as_deref().unwrap_or_default()
        )
    }

    fn decode(text: &str) -> Result<Self, ProviderError> {
        let (history_id, page) = text
            .split_once('|')
            .ok_or_else(|| ProviderError::protocol(format!("not a Gmail cursor: {text}")))?;
        Ok(Self {
            history_id: history_id.to_owned(),
            page: (!page.is_empty()).then(|| page.to_owned()),
        })
    }
}

impl Gmail {
    pub fn new(api: Url, http: ProviderHttp) -> Self {
        Self { api, http }
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        endpoint(&self.api, path)
    }

    async fn profile(&self, token: &str) -> Result<Value, ProviderError> {
        let url = self.url("users/me/profile")?;
        self.http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await
    }

    /// One message's headers; `None` when it was deleted meanwhile.
    async fn read(&self, token: &str, id: &str) -> Result<Option<PulledRecord>, ProviderError> {
        let mut url = self.url(&format!("users/me/messages/{id}"))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("format", "metadata");
            for header in HEADERS {
                query.append_pair("metadataHeaders", header);
            }
        }
        let response = self
            .http
            .send(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let message: Value = crate::http::json_body(check(response).await?).await?;
        Ok(Some(message_record(id, &message)))
    }

    async fn read_all(
        &self,
        token: &str,
        ids: Vec<String>,
    ) -> Result<Vec<PulledRecord>, ProviderError> {
        let read: Vec<(String, Option<PulledRecord>)> = futures::stream::iter(ids)
            .map(|id| async move {
                let record = self.read(token, &id).await?;
                Ok::<_, ProviderError>((id, record))
            })
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(read
            .into_iter()
            .map(|(id, record)| {
                record.unwrap_or(PulledRecord {
                    id,
                    fields: Map::new(),
                    deleted: true,
                })
            })
            .collect())
    }

    async fn list_page(&self, token: &str, cursor: Cursor) -> Result<Page, ProviderError> {
        let mut url = self.url("users/me/messages")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("maxResults", &PAGE_SIZE.to_string());
            if let Some(page) = &cursor.page {
                query.append_pair("pageToken", page);
            }
        }
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        // Gmail leaves `messages` out when there are none.
        let ids = body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|item| string_field(item, "id"))
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.read_all(token, ids).await?;
        let next = body
            .get("nextPageToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(finish(records, next, cursor.history_id))
    }

    async fn history_page(
        &self,
        token: &str,
        start: &str,
        page: Option<&str>,
    ) -> Result<Page, ProviderError> {
        let mut url = self.url("users/me/history")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("startHistoryId", start);
            query.append_pair("historyTypes", "messageAdded");
            query.append_pair("historyTypes", "messageDeleted");
            query.append_pair("maxResults", "500");
            if let Some(page) = page {
                query.append_pair("pageToken", page);
            }
        }
        let response = self
            .http
            .send(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            let body = crate::http::error_body(response).await;
            return Err(ProviderError::StaleCursor {
                detail: format!(
                    "history id {start} is too old: {}",
                    crate::http::error_detail(&body)
                ),
            });
        }
        if !response.status().is_success() {
            let status = response.status();
            let body = crate::http::error_body(response).await;
            return Err(status_error(status, &body));
        }
        let body: Value = crate::http::json_body(response).await?;
        // The last change of each message wins; added messages are read for their headers.
        let mut order: Vec<String> = Vec::new();
        let mut deleted: std::collections::HashMap<String, bool> = Default::default();
        for record in body
            .get("history")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            for (key, gone) in [("messagesAdded", false), ("messagesDeleted", true)] {
                for change in record
                    .get(key)
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let id = change
                        .get("message")
                        .ok_or_else(|| ProviderError::protocol("a history change has no message"))
                        .and_then(|message| string_field(message, "id"))?;
                    if deleted.insert(id.clone(), gone).is_none() {
                        order.push(id);
                    }
                }
            }
        }
        let to_read: Vec<String> = order
            .iter()
            .filter(|id| deleted.get(*id) == Some(&false))
            .cloned()
            .collect();
        let mut read = self.read_all(token, to_read).await?.into_iter();
        let records = order
            .into_iter()
            .map(|id| {
                if deleted.get(&id) == Some(&true) {
                    Some(PulledRecord {
                        id,
                        fields: Map::new(),
                        deleted: true,
                    })
                } else {
                    read.next()
                }
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ProviderError::protocol("a read message went missing"))?;
        let next = body
            .get("nextPageToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let history_id = string_field(&body, "historyId")?;
        Ok(Page {
            records,
            watermark: next.is_none().then_some(history_id),
            next_page: next,
        })
    }
}

fn finish(records: Vec<PulledRecord>, next: Option<String>, history_id: String) -> Page {
    match next {
        Some(page) => Page {
            records,
            next_page: Some(
                Cursor {
                    history_id,
                    page: Some(page),
                }
                .encode(),
            ),
            watermark: None,
        },
        None => Page {
            records,
            next_page: None,
            watermark: Some(history_id),
        },
    }
}

fn message_record(id: &str, message: &Value) -> PulledRecord {
    let mut fields = Map::new();
    if let Some(headers) = message
        .pointer("/payload/headers")
        .and_then(Value::as_array)
    {
        for header in headers {
            let (Some(name), Some(value)) = (
                header.get("name").and_then(Value::as_str),
                header.get("value").and_then(Value::as_str),
            ) else {
                continue;
            };
            if HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                fields.insert(name.to_ascii_lowercase(), json!(value));
            }
        }
    }
    for name in ["snippet", "labelIds", "threadId", "internalDate"] {
        if let Some(value) = message.get(name) {
            fields.insert(name.to_owned(), value.clone());
        }
    }
    PulledRecord {
        id: id.to_owned(),
        fields,
        deleted: false,
    }
}

/// A header value may not carry a line break: it would start a header of its own.
fn header_value<'a>(tool: &str, name: &str, value: &'a str) -> Result<&'a str, ProviderError> {
    if value.contains(['\r', '\n']) {
        return Err(bad_arguments(format!(
            "{tool}: `{name}` must be a single line"
        )));
    }
    Ok(value)
}

#[async_trait]
impl Provider for Gmail {
    fn app(&self) -> &'static App {
        catalog::app("gmail").expect("the catalog has Gmail")
    }

    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError> {
        let token = connection.credentials.bearer()?;
        let profile = self.profile(token).await?;
        let email = string_field(&profile, "emailAddress")?;
        Ok(Identity {
            answer: format!("Gmail answered for {email}"),
            account_label: Some(email),
        })
    }

    async fn fields(
        &self,
        _connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError> {
        fixed_fields("Gmail", object, "messages", MESSAGE_FIELDS)
    }

    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError> {
        only_object("Gmail", request.object, "messages")?;
        let token = connection.credentials.bearer()?;
        match (request.mode, request.page) {
            (PullMode::Incremental { since: Some(start) }, page) => {
                self.history_page(token, start, page).await
            }
            (_, Some(page)) => self.list_page(token, Cursor::decode(page)?).await,
            (_, None) => {
                // Noted before listing, so changes made while the pull runs are read next time.
                let profile = self.profile(token).await?;
                let history_id = string_field(&profile, "historyId")?;
                self.list_page(
                    token,
                    Cursor {
                        history_id,
                        page: None,
                    },
                )
                .await
            }
        }
    }

    fn repeatable(&self, tool: &str) -> bool {
        tool != "send_email"
    }

    async fn push(
        &self,
        connection: Connection<'_>,
        tool: &str,
        arguments: &Value,
        _idempotency_key: &str,
    ) -> Result<Value, ProviderError> {
        let token = connection.credentials.bearer()?;
        match tool {
            "send_email" => {
                let to = header_value(tool, "to", str_argument(arguments, tool, "to")?)?;
                let subject =
                    header_value(tool, "subject", str_argument(arguments, tool, "subject")?)?;
                let body = str_argument(arguments, tool, "body")?;
                let message = format!(
                    "To: {to}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
                );
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(message);
                let url = self.url("users/me/messages/send")?;
                let payload = json!({ "raw": raw });
                let response = self
                    .http
                    .send_once(|client| client.post(url.clone()).bearer_auth(token).json(&payload))
                    .await?;
                let sent: Value = crate::http::json_body(check(response).await?).await?;
                Ok(json!({"id": sent.get("id"), "threadId": sent.get("threadId")}))
            }
            "search_messages" => {
                let query = str_argument(arguments, tool, "query")?;
                let mut url = self.url("users/me/messages")?;
                url.query_pairs_mut()
                    .append_pair("q", query)
                    .append_pair("maxResults", "10");
                let body = self
                    .http
                    .json(|client| client.get(url.clone()).bearer_auth(token))
                    .await?;
                let ids = body
                    .get("messages")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|item| string_field(item, "id"))
                    .collect::<Result<Vec<_>, _>>()?;
                let found: Vec<Value> = self
                    .read_all(token, ids)
                    .await?
                    .into_iter()
                    .filter(|record| !record.deleted)
                    .map(|record| json!({"id": record.id, "fields": record.fields}))
                    .collect();
                Ok(json!({ "messages": found }))
            }
            other => Err(unknown_tool("Gmail", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for cursor in [
            Cursor {
                history_id: "1234567".into(),
                page: Some("0987".into()),
            },
            Cursor {
                history_id: "5".into(),
                page: None,
            },
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()).expect("decodes"), cursor);
        }
        assert!(Cursor::decode("junk").is_err());
    }
}
