//! Twilio (REST API 2010-04-01): Basic auth with the account SID and auth token against the
//! host of the connection's region (credentials are per region). Calls and messages are listed
//! newest first, `PageSize=1000`, following `next_page_uri` (a path on the same host). Twilio
//! has no change feed: an incremental run re-reads from two days before the last run
//! (`DateSent>=` / `StartTime>=`), since statuses keep changing after the fact; records seen
//! again cost nothing, their content hash being unchanged. Deletions are found by full runs.
//!
//! Sending an SMS is not idempotent at Twilio, so it is never repeated after an answer that
//! may mean it went out (a 429 is safe: Twilio did not process it).

use std::collections::BTreeMap;

use async_trait::async_trait;
use domain::catalog::{self, App};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use url::Url;

use super::{bad_arguments, endpoint, str_argument, string_field, unknown_tool};
use crate::http::{check, ProviderError, ProviderHttp};
use crate::provider::{Connection, Identity, Page, Provider, PullMode, PullRequest, PulledRecord};

/// Each region's API host.
pub const DEFAULT_REGION_HOSTS: &[(&str, &str)] = &[
    ("us1", "https://api.twilio.com/"),
    ("ie1", "https://api.dublin.ie1.twilio.com/"),
    ("au1", "https://api.sydney.au1.twilio.com/"),
];
const PAGE_SIZE: u32 = 1000;
/// How far before the last run an incremental run re-reads.
const TRAILING_DAYS: i64 = 2;
const MESSAGE_FIELDS: &[&str] = &[
    "from",
    "to",
    "body",
    "status",
    "direction",
    "date_created",
    "date_sent",
    "num_segments",
    "price",
    "price_unit",
    "error_code",
];
const CALL_FIELDS: &[&str] = &[
    "from",
    "to",
    "status",
    "direction",
    "start_time",
    "end_time",
    "duration",
    "price",
    "price_unit",
    "parent_call_sid",
];

#[derive(Clone, Debug)]
pub struct Twilio {
    regions: BTreeMap<String, Url>,
    http: ProviderHttp,
}

struct Account {
    host: Url,
    sid: String,
    token: SecretString,
}

impl Account {
    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        endpoint(
            &self.host,
            &format!("2010-04-01/Accounts/{}{path}", self.sid),
        )
    }

    fn auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(&self.sid, Some(self.token.expose_secret()))
    }
}

impl Twilio {
    pub fn new(regions: BTreeMap<String, Url>, http: ProviderHttp) -> Self {
        Self { regions, http }
    }

    /// The public hosts of Twilio's regions.
    pub fn default_regions() -> BTreeMap<String, Url> {
        DEFAULT_REGION_HOSTS
            .iter()
            .map(|(region, host)| {
                (
                    (*region).to_owned(),
                    Url::parse(host).expect("a valid default URL"),
                )
            })
            .collect()
    }

    fn account(&self, connection: Connection<'_>) -> Result<Account, ProviderError> {
        let region = connection.setup_field("region")?;
        let host = self.regions.get(region).cloned().ok_or_else(|| {
            ProviderError::Misconfigured(format!("Twilio has no region {region} configured"))
        })?;
        let sid = connection.setup_field("account_sid")?;
        if !(sid.len() == 34
            && sid.starts_with("AC")
            && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ProviderError::Misconfigured(format!(
                "`{sid}` is not a Twilio account SID"
            )));
        }
        Ok(Account {
            host,
            sid: sid.to_owned(),
            token: SecretString::from(connection.credentials.secret("auth_token")?.to_owned()),
        })
    }
}

fn list_of(
    object: &str,
) -> Result<
    (
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static str,
    ),
    ProviderError,
> {
    match object {
        "messages" => Ok(("/Messages.json", "messages", MESSAGE_FIELDS, "DateSent>")),
        "calls" => Ok(("/Calls.json", "calls", CALL_FIELDS, "StartTime>")),
        other => Err(bad_arguments(format!("Twilio has no {other}"))),
    }
}

fn record(item: &Value, fields: &[&str]) -> Result<PulledRecord, ProviderError> {
    let kept: Map<String, Value> = fields
        .iter()
        .filter_map(|name| item.get(*name).map(|v| ((*name).to_owned(), v.clone())))
        .collect();
    Ok(PulledRecord {
        id: string_field(item, "sid")?,
        fields: kept,
        deleted: false,
    })
}

fn days_ago(days: i64) -> String {
    let date = (time::OffsetDateTime::now_utc() - time::Duration::days(days)).date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

#[async_trait]
impl Provider for Twilio {
    fn app(&self) -> &'static App {
        catalog::app("twilio").expect("the catalog has Twilio")
    }

    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError> {
        let account = self.account(connection)?;
        let url = account.url(".json")?;
        let body = self
            .http
            .json(|client| account.auth(client.get(url.clone())))
            .await?;
        let status = body
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let name = body
            .get("friendly_name")
            .and_then(Value::as_str)
            .unwrap_or(&account.sid)
            .to_owned();
        if status != "active" {
            return Err(ProviderError::Rejected {
                status: 403,
                detail: format!("the Twilio account {name} is {status}"),
            });
        }
        Ok(Identity {
            answer: format!("Twilio answered: {name} is active"),
            account_label: Some(name),
        })
    }

    async fn fields(
        &self,
        _connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let (_, _, fields, _) = list_of(object)?;
        Ok(fields.iter().map(|f| (*f).to_owned()).collect())
    }

    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError> {
        let (path, key, fields, filter) = list_of(request.object)?;
        let account = self.account(connection)?;
        let url = match request.page {
            // Twilio's next page is a path on the host that answered.
            Some(next) if next.starts_with("/2010-04-01/Accounts/") => account
                .host
                .join(next)
                .map_err(|e| ProviderError::protocol(format!("a bad next_page_uri: {e}")))?,
            Some(other) => {
                return Err(ProviderError::protocol(format!(
                    "not a Twilio page: {other}"
                )))
            }
            None => {
                let mut url = account.url(path)?;
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("PageSize", &PAGE_SIZE.to_string());
                    if let PullMode::Incremental { since: Some(since) } = request.mode {
                        // The operator is part of the parameter's name: `DateSent>=…`.
                        query.append_pair(filter, since);
                    }
                }
                url
            }
        };
        let body = self
            .http
            .json(|client| account.auth(client.get(url.clone())))
            .await?;
        let records = body
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::protocol(format!("no `{key}` in the list")))?
            .iter()
            .map(|item| record(item, fields))
            .collect::<Result<Vec<_>, _>>()?;
        let next_page = body
            .get("next_page_uri")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Page {
            records,
            watermark: next_page.is_none().then(|| days_ago(TRAILING_DAYS)),
            next_page,
        })
    }

    fn repeatable(&self, tool: &str) -> bool {
        tool != "send_sms"
    }

    async fn push(
        &self,
        connection: Connection<'_>,
        tool: &str,
        arguments: &Value,
        _idempotency_key: &str,
    ) -> Result<Value, ProviderError> {
        let account = self.account(connection)?;
        match tool {
            "send_sms" => {
                let to = str_argument(arguments, tool, "to")?;
                let from = str_argument(arguments, tool, "from")?;
                let body = str_argument(arguments, tool, "body")?;
                let url = account.url("/Messages.json")?;
                let form = [("To", to), ("From", from), ("Body", body)];
                let response = self
                    .http
                    .send_once(|client| account.auth(client.post(url.clone())).form(&form))
                    .await?;
                let sent: Value = crate::http::json_body(check(response).await?).await?;
                Ok(json!({"sid": sent.get("sid"), "status": sent.get("status"),
                          "to": sent.get("to")}))
            }
            "list_calls" => {
                let mut url = account.url("/Calls.json")?;
                url.query_pairs_mut().append_pair("PageSize", "20");
                let body = self
                    .http
                    .json(|client| account.auth(client.get(url.clone())))
                    .await?;
                let calls: Vec<Value> = body
                    .get("calls")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|call| {
                        let kept: Map<String, Value> =
                            ["sid", "from", "to", "status", "start_time", "duration"]
                                .iter()
                                .filter_map(|n| call.get(*n).map(|v| ((*n).to_owned(), v.clone())))
                                .collect();
                        Value::Object(kept)
                    })
                    .collect();
                Ok(json!({ "calls": calls }))
            }
            other => Err(unknown_tool("Twilio", other)),
        }
    }
}
