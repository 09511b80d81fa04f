//! Zendesk Support: API-token Basic auth (`{email}/token` and the token) against the account's
//! own host, tickets and users through the cursor-based incremental exports. Every run reads
//! the export: a full run from the beginning without deleted tickets (deletions are found by
//! absence), an incremental run from the last `after_cursor`, deleted tickets coming as
//! `status: deleted`. The cursor at `end_of_stream` is the watermark.
//!
//! Ticket creation sends the idempotency key as `Idempotency-Key`, which Zendesk honours; a
//! comment has no such key, so it is never repeated after an ambiguous answer.

use async_trait::async_trait;
use domain::catalog::{self, App};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use url::Url;

use super::{bad_arguments, endpoint, str_argument, string_field, unknown_tool};
use crate::http::{check, ProviderError, ProviderHttp};
use crate::provider::{Connection, Identity, Page, Provider, PullMode, PullRequest, PulledRecord};

/// Where an account's API lives; `{subdomain}` is replaced by the connection's.
pub const DEFAULT_API_TEMPLATE: &str = "https://{subdomain}.zendesk.com/";
const PAGE_SIZE: u32 = 1000;
const TICKET_FIELDS: &[&str] = &[
    "subject",
    "description",
    "status",
    "priority",
    "type",
    "requester_id",
    "assignee_id",
    "tags",
    "created_at",
    "updated_at",
];
const USER_FIELDS: &[&str] = &[
    "name",
    "email",
    "role",
    "active",
    "phone",
    "created_at",
    "updated_at",
];

#[derive(Clone, Debug)]
pub struct Zendesk {
    template: String,
    http: ProviderHttp,
}

struct Account {
    base: Url,
    user: String,
    token: SecretString,
}

impl Zendesk {
    pub fn new(template: String, http: ProviderHttp) -> Self {
        Self { template, http }
    }

    fn account(&self, connection: Connection<'_>) -> Result<Account, ProviderError> {
        let subdomain = connection.setup_field("subdomain")?;
        let valid = !subdomain.is_empty()
            && subdomain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(ProviderError::Misconfigured(format!(
                "`{subdomain}` is not a Zendesk subdomain"
            )));
        }
        let base = Url::parse(&self.template.replace("{subdomain}", subdomain)).map_err(|e| {
            ProviderError::Misconfigured(format!("the Zendesk URL template is invalid: {e}"))
        })?;
        Ok(Account {
            base,
            user: format!("{}/token", connection.setup_field("email")?),
            token: SecretString::from(connection.credentials.secret("api_token")?.to_owned()),
        })
    }
}

impl Account {
    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        endpoint(&self.base, path)
    }

    fn auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(&self.user, Some(self.token.expose_secret()))
    }
}

fn record(object: &str, item: &Value) -> Result<PulledRecord, ProviderError> {
    let id = string_field(item, "id")?;
    let (names, deleted) = if object == "tickets" {
        (
            TICKET_FIELDS,
            item.get("status").and_then(Value::as_str) == Some("deleted"),
        )
    } else {
        (USER_FIELDS, false)
    };
    let mut fields: Map<String, Value> = names
        .iter()
        .filter_map(|name| item.get(*name).map(|v| ((*name).to_owned(), v.clone())))
        .collect();
    for custom in item
        .get("custom_fields")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let Some(field) = custom.get("id").and_then(Value::as_i64) {
            fields.insert(
                format!("custom_field_{field}"),
                custom.get("value").cloned().unwrap_or(Value::Null),
            );
        }
    }
    Ok(PulledRecord {
        id,
        fields,
        deleted,
    })
}

#[async_trait]
impl Provider for Zendesk {
    fn app(&self) -> &'static App {
        catalog::app("zendesk").expect("the catalog has Zendesk")
    }

    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError> {
        let account = self.account(connection)?;
        let url = account.url("api/v2/users/me")?;
        let body = self
            .http
            .json(|client| account.auth(client.get(url.clone())))
            .await?;
        // Without valid credentials Zendesk answers as an anonymous user rather than 401.
        let user = body
            .get("user")
            .ok_or_else(|| ProviderError::protocol("no `user` in the answer"))?;
        if user.get("id").is_none_or(Value::is_null) {
            return Err(ProviderError::Unauthorized {
                detail: "Zendesk answered as an anonymous user: check the email and API token"
                    .into(),
            });
        }
        let name = user.get("name").and_then(Value::as_str).unwrap_or("agent");
        let role = user
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let host = account.base.host_str().unwrap_or_default().to_owned();
        Ok(Identity {
            account_label: Some(format!("{name} at {host}")),
            answer: format!("Zendesk recognised {name} ({role})"),
        })
    }

    async fn fields(
        &self,
        connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError> {
        match object {
            "tickets" => {
                let account = self.account(connection)?;
                let url = account.url("api/v2/ticket_fields")?;
                let body = self
                    .http
                    .json(|client| account.auth(client.get(url.clone())))
                    .await?;
                let mut names: Vec<String> =
                    TICKET_FIELDS.iter().map(|f| (*f).to_owned()).collect();
                const SYSTEM: &[&str] = &[
                    "subject",
                    "description",
                    "status",
                    "tickettype",
                    "priority",
                    "group",
                    "assignee",
                    "custom_status",
                ];
                for field in body
                    .get("ticket_fields")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let kind = field
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !SYSTEM.contains(&kind) {
                        names.push(format!("custom_field_{}", string_field(field, "id")?));
                    }
                }
                Ok(names)
            }
            "users" => Ok(USER_FIELDS.iter().map(|f| (*f).to_owned()).collect()),
            other => Err(bad_arguments(format!("Zendesk has no {other}"))),
        }
    }

    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError> {
        let object = request.object;
        if object != "tickets" && object != "users" {
            return Err(bad_arguments(format!("Zendesk has no {object}")));
        }
        let account = self.account(connection)?;
        let mut url = account.url(&format!("api/v2/incremental/{object}/cursor"))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("per_page", &PAGE_SIZE.to_string());
            let cursor = request.page.or(match request.mode {
                PullMode::Incremental { since } => since.as_deref(),
                PullMode::Full => None,
            });
            match cursor {
                Some(cursor) => {
                    query.append_pair("cursor", cursor);
                }
                None => {
                    query.append_pair("start_time", "0");
                }
            }
            if matches!(request.mode, PullMode::Full) && object == "tickets" {
                query.append_pair("exclude_deleted", "true");
            }
        }
        let body = self
            .http
            .json(|client| account.auth(client.get(url.clone())))
            .await?;
        let records = body
            .get(object)
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::protocol(format!("no `{object}` in the export")))?
            .iter()
            .map(|item| record(object, item))
            .collect::<Result<Vec<_>, _>>()?;
        let after = string_field(&body, "after_cursor")?;
        let end = body
            .get("end_of_stream")
            .and_then(Value::as_bool)
            .ok_or_else(|| ProviderError::protocol("no `end_of_stream` in the export"))?;
        Ok(if end {
            Page {
                records,
                next_page: None,
                watermark: Some(after),
            }
        } else {
            Page {
                records,
                next_page: Some(after),
                watermark: None,
            }
        })
    }

    fn repeatable(&self, tool: &str) -> bool {
        tool != "add_public_comment"
    }

    async fn push(
        &self,
        connection: Connection<'_>,
        tool: &str,
        arguments: &Value,
        idempotency_key: &str,
    ) -> Result<Value, ProviderError> {
        let account = self.account(connection)?;
        match tool {
            "create_ticket" => {
                let subject = str_argument(arguments, tool, "subject")?;
                let body = str_argument(arguments, tool, "body")?;
                let mut ticket = json!({"subject": subject, "comment": {"body": body}});
                if let Some(priority) = arguments.get("priority").and_then(Value::as_str) {
                    ticket["priority"] = json!(priority);
                }
                if let Some(email) = arguments.get("requester_email").and_then(Value::as_str) {
                    ticket["requester"] = json!({"email": email});
                }
                let url = account.url("api/v2/tickets")?;
                let payload = json!({ "ticket": ticket });
                let answer = self
                    .http
                    .json(|client| {
                        account
                            .auth(client.post(url.clone()))
                            .header("Idempotency-Key", idempotency_key)
                            .json(&payload)
                    })
                    .await?;
                let created = answer
                    .get("ticket")
                    .ok_or_else(|| ProviderError::protocol("no `ticket` in the answer"))?;
                Ok(
                    json!({"id": created.get("id"), "status": created.get("status"),
                          "subject": created.get("subject")}),
                )
            }
            "add_public_comment" => {
                let id = str_argument(arguments, tool, "ticket_id")?;
                if !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad_arguments("add_public_comment: `ticket_id` is a number"));
                }
                let body = str_argument(arguments, tool, "body")?;
                let url = account.url(&format!("api/v2/tickets/{id}"))?;
                let payload = json!({"ticket": {"comment": {"body": body, "public": true}}});
                let response = self
                    .http
                    .send_once(|client| account.auth(client.put(url.clone())).json(&payload))
                    .await?;
                let answer: Value = crate::http::json_body(check(response).await?).await?;
                Ok(json!({"id": answer.pointer("/ticket/id"), "commented": true}))
            }
            "search_tickets" => {
                let query = str_argument(arguments, tool, "query")?;
                let mut url = account.url("api/v2/search.json")?;
                url.query_pairs_mut()
                    .append_pair("query", &format!("type:ticket {query}"));
                let answer = self
                    .http
                    .json(|client| account.auth(client.get(url.clone())))
                    .await?;
                Ok(json!({ "results": answer.get("results").cloned().unwrap_or(json!([])) }))
            }
            other => Err(unknown_tool("Zendesk", other)),
        }
    }
}
