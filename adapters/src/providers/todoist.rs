//! Todoist (unified API v1) with a personal API token as Bearer. A full run lists the active
//! tasks with `next_cursor` paging (a completed or deleted task leaves the list, so the run's
//! sweep removes it). An incremental run asks the Sync endpoint for the items changed since
//! its `sync_token` (`*` the first time), deletions flagged `is_deleted`; the answer's token is
//! the next watermark. A token Todoist refuses makes a stale cursor and a fresh `*` sync.
//!
//! Task creation carries the idempotency key as `X-Request-Id`, which Todoist deduplicates;
//! closing a task is idempotent by nature.

use async_trait::async_trait;
use domain::catalog::{self, App};
use serde_json::{json, Map, Value};
use url::Url;

use super::{
    bad_arguments, endpoint, fixed_fields, id_from_key, only_object, str_argument, string_field,
    unknown_tool,
};
use crate::http::{check, error_detail, status_error, ProviderError, ProviderHttp};
use crate::provider::{Connection, Identity, Page, Provider, PullMode, PullRequest, PulledRecord};

pub const DEFAULT_API_BASE: &str = "https://api.todoist.com/api/v1/";
const PAGE_SIZE: u32 = 200;
const TASK_FIELDS: &[&str] = &[
    "content",
    "description",
    "project_id",
    "section_id",
    "parent_id",
    "labels",
    "priority",
    "due",
    "deadline",
    "checked",
    "completed_at",
    "updated_at",
];

#[derive(Clone, Debug)]
pub struct Todoist {
    api: Url,
    http: ProviderHttp,
}

impl Todoist {
    pub fn new(api: Url, http: ProviderHttp) -> Self {
        Self { api, http }
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        endpoint(&self.api, path)
    }

    async fn sync_items(&self, token: &str, since: &str) -> Result<Page, ProviderError> {
        let url = self.url("sync")?;
        let form = [("sync_token", since), ("resource_types", r#"["items"]"#)];
        let response = self
            .http
            .send(|client| client.post(url.clone()).bearer_auth(token).form(&form))
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = crate::http::error_body(response).await;
            if body.contains("INVALID_SYNC_TOKEN") {
                return Err(ProviderError::StaleCursor {
                    detail: error_detail(&body),
                });
            }
            return Err(status_error(status, &body));
        }
        let body: Value = crate::http::json_body(response).await?;
        let records = body
            .get("items")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::protocol("no `items` in the sync answer"))?
            .iter()
            .map(|item| {
                let mut record = task_record(item)?;
                record.deleted = item.get("is_deleted").and_then(Value::as_bool) == Some(true);
                Ok(record)
            })
            .collect::<Result<Vec<_>, ProviderError>>()?;
        Ok(Page {
            records,
            next_page: None,
            watermark: Some(string_field(&body, "sync_token")?),
        })
    }
}

fn task_record(item: &Value) -> Result<PulledRecord, ProviderError> {
    let fields: Map<String, Value> = TASK_FIELDS
        .iter()
        .filter_map(|name| item.get(*name).map(|v| ((*name).to_owned(), v.clone())))
        .collect();
    Ok(PulledRecord {
        id: string_field(item, "id")?,
        fields,
        deleted: false,
    })
}

#[async_trait]
impl Provider for Todoist {
    fn app(&self) -> &'static App {
        catalog::app("todoist").expect("the catalog has Todoist")
    }

    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError> {
        let token = connection.credentials.secret("api_token")?;
        let url = self.url("user")?;
        let user = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        let email = string_field(&user, "email")?;
        Ok(Identity {
            answer: format!("Todoist answered for {email}"),
            account_label: Some(email),
        })
    }

    async fn fields(
        &self,
        _connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError> {
        fixed_fields("Todoist", object, "tasks", TASK_FIELDS)
    }

    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError> {
        only_object("Todoist", request.object, "tasks")?;
        let token = connection.credentials.secret("api_token")?;
        if let PullMode::Incremental { since } = request.mode {
            return self
                .sync_items(token, since.as_deref().unwrap_or("*"))
                .await;
        }
        let mut url = self.url("tasks")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &PAGE_SIZE.to_string());
            if let Some(cursor) = request.page {
                query.append_pair("cursor", cursor);
            }
        }
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        let records = body
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::protocol("no `results` in the task list"))?
            .iter()
            .map(task_record)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page = body
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Page {
            records,
            next_page,
            watermark: None,
        })
    }

    async fn push(
        &self,
        connection: Connection<'_>,
        tool: &str,
        arguments: &Value,
        idempotency_key: &str,
    ) -> Result<Value, ProviderError> {
        let token = connection.credentials.secret("api_token")?;
        match tool {
            "create_task" => {
                let content = str_argument(arguments, tool, "content")?;
                let mut task = json!({ "content": content });
                for name in ["description", "due_string", "project_id"] {
                    if let Some(value) = arguments.get(name).and_then(Value::as_str) {
                        task[name] = json!(value);
                    }
                }
                if let Some(priority) = arguments.get("priority").and_then(Value::as_u64) {
                    if !(1..=4).contains(&priority) {
                        return Err(bad_arguments("create_task: `priority` is 1 to 4"));
                    }
                    task["priority"] = json!(priority);
                }
                // Todoist keeps request ids of at most 36 bytes.
                let request_id = id_from_key(idempotency_key, 32);
                let url = self.url("tasks")?;
                let created = self
                    .http
                    .json(|client| {
                        client
                            .post(url.clone())
                            .bearer_auth(token)
                            .header("X-Request-Id", &request_id)
                            .json(&task)
                    })
                    .await?;
                Ok(
                    json!({"id": created.get("id"), "content": created.get("content"),
                          "due": created.get("due")}),
                )
            }
            "complete_task" => {
                let id = str_argument(arguments, tool, "task_id")?;
                if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(bad_arguments("complete_task: `task_id` is not a task id"));
                }
                let url = self.url(&format!("tasks/{id}/close"))?;
                let response = self
                    .http
                    .send(|client| client.post(url.clone()).bearer_auth(token))
                    .await?;
                check(response).await?;
                Ok(json!({"id": id, "completed": true}))
            }
            other => Err(unknown_tool("Todoist", other)),
        }
    }
}
