//! Salesforce REST: the org's API lives at the `instance_url` its token answer named (or the
//! instance URL typed at connect). Records are read with SOQL through `query`, in batches
//! followed by `nextRecordsUrl`. A full run selects every row ordered by `Id` (deletions are
//! found by absence); an incremental run uses `queryAll` from the watermark on
//! `SystemModstamp`, so rows deleted since come back with `IsDeleted` and become tombstones.
//!
//! The watermark is the latest `SystemModstamp` the run saw, less a minute for transactions
//! that commit late — Salesforce's own clock, never ours. Rows seen twice cost nothing: their
//! content hash is unchanged. Field names come from the catalog or the mappings, and are
//! checked to be identifiers before they go into a query.

use async_trait::async_trait;
use domain::catalog::{self, App};
use serde_json::{json, Map, Value};
use url::Url;

use super::{bad_arguments, endpoint, str_argument, string_field, unknown_tool};
use crate::http::{check, ProviderError, ProviderHttp};
use crate::provider::{Connection, Identity, Page, Provider, PullMode, PullRequest, PulledRecord};

pub const API_VERSION: &str = "v60.0";
const BATCH_SIZE: u32 = 2000;
const LATE_COMMIT_SECONDS: i64 = 60;

#[derive(Clone, Debug)]
pub struct Salesforce {
    http: ProviderHttp,
}

/// A run's place: the latest `SystemModstamp` seen (`YYYY-MM-DDThh:mm:ss`, UTC) and the next
/// batch's path.
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    latest: String,
    next: Option<String>,
}

impl Cursor {
    fn encode(&self) -> String {
        format!(
            "{}|{}",
            self.latest,
            self.next.as_deref().unwrap_or_default()
        )
    }

    fn decode(text: &str) -> Result<Self, ProviderError> {
        let (latest, next) = text
            .split_once('|')
            .ok_or_else(|| ProviderError::protocol(format!("not a Salesforce cursor: {text}")))?;
        Ok(Self {
            latest: latest.to_owned(),
            next: (!next.is_empty()).then(|| next.to_owned()),
        })
    }
}

impl Salesforce {
    pub fn new(http: ProviderHttp) -> Self {
        Self { http }
    }

    fn instance(connection: Connection<'_>) -> Result<Url, ProviderError> {
        let text = connection
            .credentials
            .facts
            .get("instance_url")
            .map(String::as_str)
            .or_else(|| connection.setup.get("instance_url").map(String::as_str))
            .ok_or_else(|| {
                ProviderError::Misconfigured("the connection has no Salesforce instance URL".into())
            })?;
        Url::parse(text).map_err(|e| {
            ProviderError::Misconfigured(format!("the Salesforce instance URL is invalid: {e}"))
        })
    }

    fn data_url(connection: Connection<'_>, path: &str) -> Result<Url, ProviderError> {
        endpoint(
            &Self::instance(connection)?,
            &format!("services/data/{API_VERSION}/{path}"),
        )
    }
}

fn default_fields(object: &str) -> Result<&'static [&'static str], ProviderError> {
    catalog::app("salesforce")
        .and_then(|app| {
            app.capabilities
                .mappings
                .iter()
                .find(|m| m.name == object)
                .map(|m| m.provider_fields)
        })
        .ok_or_else(|| bad_arguments(format!("Salesforce has no {object} to sync")))
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 80
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// `2026-01-01T00:00:05.000+0000` → `2026-01-01T00:00:05`.
fn stamp_prefix(stamp: &str) -> Option<&str> {
    let prefix = stamp.get(..19)?;
    (prefix.as_bytes()[10] == b'T').then_some(prefix)
}

/// The watermark for a run whose latest row was modified at `latest`.
fn watermark_from(latest: &str) -> Option<String> {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let at = time::PrimitiveDateTime::parse(latest, &format).ok()?;
    let earlier = at - time::Duration::seconds(LATE_COMMIT_SECONDS);
    Some(format!("{}Z", earlier.format(&format).ok()?))
}

#[async_trait]
impl Provider for Salesforce {
    fn app(&self) -> &'static App {
        catalog::app("salesforce").expect("the catalog has Salesforce")
    }

    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError> {
        let token = connection.credentials.bearer()?;
        let url = match connection.credentials.facts.get("identity_url") {
            Some(identity) => Url::parse(identity)
                .map_err(|e| ProviderError::protocol(format!("a bad identity URL: {e}")))?,
            None => Self::data_url(connection, "limits")?,
        };
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        let who = body
            .get("username")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let host = Self::instance(connection)?
            .host_str()
            .unwrap_or_default()
            .to_owned();
        Ok(Identity {
            answer: format!(
                "Salesforce answered at {host}{}",
                who.as_deref()
                    .map(|w| format!(" for {w}"))
                    .unwrap_or_default()
            ),
            account_label: who.or(Some(host)),
        })
    }

    async fn fields(
        &self,
        connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError> {
        if !is_identifier(object) {
            return Err(bad_arguments(format!("`{object}` is not an sObject name")));
        }
        let token = connection.credentials.bearer()?;
        let url = Self::data_url(connection, &format!("sobjects/{object}/describe"))?;
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        body.get("fields")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::protocol("no `fields` in the describe answer"))?
            .iter()
            .map(|field| string_field(field, "name"))
            .collect()
    }

    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError> {
        let token = connection.credentials.bearer()?;
        let object = request.object;
        let defaults = default_fields(object)?;
        let wanted: Vec<&str> = if request.fields.is_empty() {
            defaults.to_vec()
        } else {
            request.fields.iter().map(String::as_str).collect()
        };
        if let Some(bad) = wanted.iter().find(|f| !is_identifier(f)) {
            return Err(bad_arguments(format!(
                "`{bad}` is not a Salesforce field name"
            )));
        }
        let since = match request.mode {
            PullMode::Incremental { since } => since.as_deref(),
            PullMode::Full => None,
        };
        let (cursor, url) = match request.page {
            Some(text) => {
                let cursor = Cursor::decode(text)?;
                let next = cursor.next.clone().ok_or_else(|| {
                    ProviderError::protocol("a Salesforce cursor without a next batch")
                })?;
                if !next.starts_with("/services/data/") {
                    return Err(ProviderError::protocol(format!(
                        "not a Salesforce batch: {next}"
                    )));
                }
                let url = Self::instance(connection)?
                    .join(&next)
                    .map_err(|e| ProviderError::protocol(format!("a bad nextRecordsUrl: {e}")))?;
                (cursor, url)
            }
            None => {
                let mut select = vec!["Id"];
                select.extend(wanted.iter().copied().filter(|f| *f != "Id"));
                select.push("SystemModstamp");
                let (resource, soql) = match since {
                    Some(since) => {
                        let valid = since.len() == 20
                            && since.ends_with('Z')
                            && stamp_prefix(since).is_some();
                        if !valid {
                            return Err(ProviderError::protocol(format!(
                                "not a Salesforce watermark: {since}"
                            )));
                        }
                        select.push("IsDeleted");
                        (
                            "queryAll",
                            format!(
                                "SELECT {} FROM {object} WHERE SystemModstamp >= {since} ORDER BY SystemModstamp",
                                select.join(",")
                            ),
                        )
                    }
                    None => (
                        "query",
                        format!("SELECT {} FROM {object} ORDER BY Id", select.join(",")),
                    ),
                };
                let mut url = Self::data_url(connection, resource)?;
                url.query_pairs_mut().append_pair("q", &soql);
                let latest = since
                    .and_then(stamp_prefix)
                    .map(str::to_owned)
                    .unwrap_or_default();
                (Cursor { latest, next: None }, url)
            }
        };
        let body = self
            .http
            .json(|client| {
                client
                    .get(url.clone())
                    .bearer_auth(token)
                    .header("Sforce-Query-Options", format!("batchSize={BATCH_SIZE}"))
            })
            .await?;
        let mut latest = cursor.latest;
        let mut records = Vec::new();
        for row in body
            .get("records")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::protocol("no `records` in the query answer"))?
        {
            let id = string_field(row, "Id")?;
            if let Some(stamp) = row
                .get("SystemModstamp")
                .and_then(Value::as_str)
                .and_then(stamp_prefix)
            {
                if stamp > latest.as_str() {
                    latest = stamp.to_owned();
                }
            }
            let fields: Map<String, Value> = wanted
                .iter()
                .map(|name| {
                    (
                        (*name).to_owned(),
                        row.get(*name).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect();
            records.push(PulledRecord {
                id,
                fields,
                deleted: row.get("IsDeleted").and_then(Value::as_bool) == Some(true),
            });
        }
        let done = body.get("done").and_then(Value::as_bool).unwrap_or(true);
        let next = body
            .get("nextRecordsUrl")
            .and_then(Value::as_str)
            .filter(|_| !done)
            .map(str::to_owned);
        Ok(match next {
            Some(next) => Page {
                records,
                next_page: Some(
                    Cursor {
                        latest,
                        next: Some(next),
                    }
                    .encode(),
                ),
                watermark: None,
            },
            None => Page {
                records,
                next_page: None,
                watermark: watermark_from(&latest).or_else(|| since.map(str::to_owned)),
            },
        })
    }

    fn repeatable(&self, tool: &str) -> bool {
        tool != "create_contact"
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
            "create_contact" => {
                let fields = arguments
                    .get("fields")
                    .and_then(Value::as_object)
                    .ok_or_else(|| bad_arguments("create_contact needs a `fields` object"))?;
                if let Some(bad) = fields.keys().find(|f| !is_identifier(f)) {
                    return Err(bad_arguments(format!(
                        "`{bad}` is not a Salesforce field name"
                    )));
                }
                let url = Self::data_url(connection, "sobjects/Contact/")?;
                // Salesforce takes no idempotency key: a create is never repeated after an
                // answer that may mean it happened.
                let response = self
                    .http
                    .send_once(|client| client.post(url.clone()).bearer_auth(token).json(fields))
                    .await?;
                let created: Value = crate::http::json_body(check(response).await?).await?;
                Ok(json!({"id": created.get("id"), "success": created.get("success")}))
            }
            "update_opportunity" => {
                let id = str_argument(arguments, tool, "id")?;
                if !is_identifier(id) {
                    return Err(bad_arguments("update_opportunity: `id` is not a record id"));
                }
                let mut changes = Map::new();
                if let Some(stage) = arguments.get("stage").and_then(Value::as_str) {
                    changes.insert("StageName".into(), json!(stage));
                }
                if let Some(amount) = arguments.get("amount").and_then(Value::as_f64) {
                    changes.insert("Amount".into(), json!(amount));
                }
                if changes.is_empty() {
                    return Err(bad_arguments(
                        "update_opportunity needs a `stage` or an `amount`",
                    ));
                }
                let url = Self::data_url(connection, &format!("sobjects/Opportunity/{id}"))?;
                // Setting the same values again is harmless: a PATCH may be retried.
                let response = self
                    .http
                    .send(|client| client.patch(url.clone()).bearer_auth(token).json(&changes))
                    .await?;
                check(response).await?;
                Ok(json!({"id": id, "updated": true}))
            }
            "search_records" => {
                let text = str_argument(arguments, tool, "query")?;
                // SOSL braces delimit the search term; reserved characters are escaped.
                let escaped: String = text
                    .chars()
                    .flat_map(|c| {
                        let reserved = "?&|!{}[]()^~*:\\\"'+-".contains(c);
                        reserved
                            .then_some('\\')
                            .into_iter()
                            .chain(std::iter::once(c))
                    })
                    .collect();
                let mut url = Self::data_url(connection, "search/")?;
                url.query_pairs_mut().append_pair(
                    "q",
                    &format!(
                        "FIND {{{escaped}}} RETURNING Contact(Id,Name,Email), Account(Id,Name)"
                    ),
                );
                let body = self
                    .http
                    .json(|client| client.get(url.clone()).bearer_auth(token))
                    .await?;
                Ok(json!({"results": body.get("searchRecords").cloned().unwrap_or(json!([]))}))
            }
            other => Err(unknown_tool("Salesforce", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_watermarks() {
        let cursor = Cursor {
            latest: "2026-01-01T00:00:05".into(),
            next: Some("/services/data/v60.0/query/01g-2000".into()),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).expect("decodes"), cursor);
        assert_eq!(
            stamp_prefix("2026-01-01T00:01:05.000+0000"),
            Some("2026-01-01T00:01:05")
        );
        assert_eq!(
            watermark_from("2026-01-01T00:01:05").as_deref(),
            Some("2026-01-01T00:00:05Z")
        );
        assert!(is_identifier("Custom_Field__c"));
        assert!(!is_identifier("Name FROM User --"));
    }
}
