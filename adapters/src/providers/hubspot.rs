//! HubSpot: CRM v3 objects with `after` paging, the search API for incremental runs, the
//! properties API for mappings, and the `X-HubSpot-RateLimit-*` headers (honoured by
//! [`ProviderHttp`]).
//!
//! Full runs list `/crm/v3/objects/{object}` (archived records leave the list, so a full run
//! finds deletions by absence). Incremental runs search on the last-modified property from the
//! watermark, ascending; the search API stops at 10,000 results per query, so past that the
//! query restarts from the last modification seen. The watermark is the time the run started,
//! less five minutes for the search index's lag; records seen twice cost nothing, as their
//! content hash is unchanged.

use async_trait::async_trait;
use domain::catalog::{self, App};
use serde_json::{json, Map, Value};
use url::Url;

use super::{endpoint, now_millis, string_field};
use crate::http::{check, ProviderError, ProviderHttp};
use crate::provider::{Connection, Identity, Page, Provider, PullMode, PullRequest, PulledRecord};

pub const DEFAULT_API_BASE: &str = "https://api.hubapi.com";
const PAGE_SIZE: u32 = 100;
const SEARCH_PAGE_SIZE: u32 = 200;
/// The search API refuses to page past this many results of one query.
const SEARCH_RESULT_LIMIT: u64 = 10_000;
const WATERMARK_OVERLAP_MS: i64 = 5 * 60 * 1000;

#[derive(Clone, Debug)]
pub struct HubSpot {
    api: Url,
    http: ProviderHttp,
}

impl HubSpot {
    pub fn new(api: Url, http: ProviderHttp) -> Self {
        Self { api, http }
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        endpoint(&self.api, path)
    }

    fn modified_property(object: &str) -> &'static str {
        if object == "contacts" {
            "lastmodifieddate"
        } else {
            "hs_lastmodifieddate"
        }
    }

    async fn list_page(
        &self,
        token: &str,
        request: &PullRequest<'_>,
        cursor: &Cursor,
    ) -> Result<Page, ProviderError> {
        let mut url = self.url(&format!("crm/v3/objects/{}", request.object))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &PAGE_SIZE.to_string());
            query.append_pair("archived", "false");
            if !request.fields.is_empty() {
                query.append_pair("properties", &request.fields.join(","));
            }
            if let Some(after) = &cursor.after {
                query.append_pair("after", after);
            }
        }
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        let records = parse_results(&body, request.fields)?;
        let next = next_after(&body);
        Ok(finish_page(records, next, cursor, |after| Cursor {
            after: Some(after),
            ..cursor.clone()
        }))
    }

    async fn search_page(
        &self,
        token: &str,
        request: &PullRequest<'_>,
        cursor: &Cursor,
        since: i64,
    ) -> Result<Page, ProviderError> {
        let url = self.url(&format!("crm/v3/objects/{}/search", request.object))?;
        let property = Self::modified_property(request.object);
        let mut properties: Vec<&str> = request.fields.iter().map(String::as_str).collect();
        if !properties.contains(&property) {
            properties.push(property);
        }
        let body = json!({
            "filterGroups": [{"filters": [{
                "propertyName": property,
                "operator": "GTE",
                "value": since.to_string(),
            }]}],
            "sorts": [{"propertyName": property, "direction": "ASCENDING"}],
            "properties": properties,
            "limit": SEARCH_PAGE_SIZE,
            "after": cursor.after.clone().unwrap_or_else(|| "0".to_owned()),
        });
        let answer = self
            .http
            .json(|client| client.post(url.clone()).bearer_auth(token).json(&body))
            .await?;
        let all = parse_results(&answer, &[])?;
        let last_modified = all
            .last()
            .and_then(|record| record.fields.get(property))
            .and_then(Value::as_str)
            .and_then(parse_hubspot_millis);
        let records = parse_results(&answer, request.fields)?;
        let next = next_after(&answer);
        let next = match next {
            Some(after)
                if after.parse::<u64>().unwrap_or(0) + u64::from(SEARCH_PAGE_SIZE)
                    > SEARCH_RESULT_LIMIT =>
            {
                // The next page would cross the search limit: query again from the last
                // modification seen, from the first result.
                let Some(from) = last_modified else {
                    return Err(ProviderError::protocol(
                        "a search page has no modification time to continue from",
                    ));
                };
                return Ok(Page {
                    records,
                    next_page: Some(
                        Cursor {
                            since: Some(from),
                            after: None,
                            ..cursor.clone()
                        }
                        .encode(),
                    ),
                    watermark: None,
                });
            }
            other => other,
        };
        Ok(finish_page(records, next, cursor, |after| Cursor {
            after: Some(after),
            ..cursor.clone()
        }))
    }
}

/// Where a run is: when it started (the next watermark), the search's lower bound, and the
/// provider's `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cursor {
    started: i64,
    since: Option<i64>,
    after: Option<String>,
}

impl Cursor {
    fn encode(&self) -> String {
        format!(
            "{}.{}.{}",
            self.started,
            self.since.map(|s| s.to_string()).unwrap_or_default(),
            self.after.as_deref().unwrap_or_default()
        )
    }

    fn decode(text: &str) -> Result<Self, ProviderError> {
        let bad = || ProviderError::protocol(format!("not a HubSpot cursor: {text}"));
        let mut parts = text.splitn(3, '.');
        let started = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let since = match parts.next().ok_or_else(bad)? {
            "" => None,
            value => Some(value.parse().map_err(|_| bad())?),
        };
        let after = match parts.next().ok_or_else(bad)? {
            "" => None,
            value => Some(value.to_owned()),
        };
        Ok(Self {
            started,
            since,
            after,
        })
    }
}

fn finish_page(
    records: Vec<PulledRecord>,
    next: Option<String>,
    cursor: &Cursor,
    advance: impl FnOnce(String) -> Cursor,
) -> Page {
    match next {
        Some(after) => Page {
            records,
            next_page: Some(advance(after).encode()),
            watermark: None,
        },
        None => Page {
            records,
            next_page: None,
            watermark: Some((cursor.started - WATERMARK_OVERLAP_MS).max(0).to_string()),
        },
    }
}

fn next_after(body: &Value) -> Option<String> {
    body.pointer("/paging/next/after")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The records of a page. With `wanted`, each keeps only those properties: HubSpot adds a few
/// of its own (and the search its sort property), which would make the same record hash
/// differently when listed and when searched.
fn parse_results(body: &Value, wanted: &[String]) -> Result<Vec<PulledRecord>, ProviderError> {
    let results = body
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::protocol("no `results` array"))?;
    results
        .iter()
        .map(|item| {
            let id = string_field(item, "id")?;
            let mut fields = item
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            if !wanted.is_empty() {
                fields.retain(|name, _| wanted.iter().any(|w| w == name));
            }
            Ok(PulledRecord {
                id,
                fields,
                deleted: item.get("archived").and_then(Value::as_bool) == Some(true),
            })
        })
        .collect()
}

/// HubSpot writes modification times as RFC 3339 or as epoch milliseconds.
fn parse_hubspot_millis(text: &str) -> Option<i64> {
    if let Ok(millis) = text.parse::<i64>() {
        return Some(millis);
    }
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[async_trait]
impl Provider for HubSpot {
    fn app(&self) -> &'static App {
        catalog::app("hubspot").expect("the catalog has HubSpot")
    }

    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError> {
        let token = connection.credentials.bearer()?;
        let url = self.url("account-info/v3/details")?;
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        let portal = body
            .get("portalId")
            .and_then(Value::as_i64)
            .ok_or_else(|| ProviderError::protocol("no portalId in the account details"))?;
        let domain = body
            .get("uiDomain")
            .and_then(Value::as_str)
            .unwrap_or("app.hubspot.com");
        Ok(Identity {
            account_label: Some(format!("HubSpot account {portal}")),
            answer: format!("connected to HubSpot account {portal} on {domain}"),
        })
    }

    async fn fields(
        &self,
        connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let token = connection.credentials.bearer()?;
        let mut url = self.url(&format!("crm/v3/properties/{object}"))?;
        url.query_pairs_mut().append_pair("archived", "false");
        let body = self
            .http
            .json(|client| client.get(url.clone()).bearer_auth(token))
            .await?;
        let results = body
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::protocol("no `results` array of properties"))?;
        results
            .iter()
            .map(|property| string_field(property, "name"))
            .collect()
    }

    /// A search for one record modified since the watermark, no properties: its `total` says
    /// whether there is anything to pull.
    async fn anything_new(
        &self,
        connection: Connection<'_>,
        object: &str,
        since: &str,
    ) -> Result<Option<bool>, ProviderError> {
        let token = connection.credentials.bearer()?;
        let since: i64 = since
            .parse()
            .map_err(|_| ProviderError::protocol(format!("not a HubSpot watermark: {since}")))?;
        let url = self.url(&format!("crm/v3/objects/{object}/search"))?;
        let property = Self::modified_property(object);
        let body = json!({
            "filterGroups": [{"filters": [{
                "propertyName": property,
                "operator": "GTE",
                "value": since.to_string(),
            }]}],
            "properties": [property],
            "limit": 1,
        });
        let answer = self
            .http
            .json(|client| client.post(url.clone()).bearer_auth(token).json(&body))
            .await?;
        let total = answer
            .get("total")
            .and_then(Value::as_u64)
            .ok_or_else(|| ProviderError::protocol("a search answer without `total`"))?;
        Ok(Some(total > 0))
    }

    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError> {
        let token = connection.credentials.bearer()?;
        let cursor = match request.page {
            Some(text) => Cursor::decode(text)?,
            None => Cursor {
                started: now_millis(),
                since: match request.mode {
                    PullMode::Incremental { since: Some(since) } => {
                        Some(since.parse().map_err(|_| {
                            ProviderError::protocol(format!("not a HubSpot watermark: {since}"))
                        })?)
                    }
                    _ => None,
                },
                after: None,
            },
        };
        match cursor.since {
            Some(since) => self.search_page(token, &request, &cursor, since).await,
            None => self.list_page(token, &request, &cursor).await,
        }
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
                let properties = properties_argument(arguments)?;
                // HubSpot takes no idempotency key. An upsert on the email is retry-safe: a
                // second attempt finds the contact the first one made.
                if let Some(email) = properties.get("email").and_then(Value::as_str) {
                    let url = self.url("crm/v3/objects/contacts/batch/upsert")?;
                    let body = json!({"inputs": [{
                        "idProperty": "email",
                        "id": email,
                        "properties": properties,
                    }]});
                    let answer = self
                        .http
                        .json(|client| client.post(url.clone()).bearer_auth(token).json(&body))
                        .await?;
                    let created = answer
                        .pointer("/results/0")
                        .cloned()
                        .ok_or_else(|| ProviderError::protocol("the upsert returned no result"))?;
                    return Ok(
                        json!({"id": created.get("id"), "properties": created.get("properties")}),
                    );
                }
                let url = self.url("crm/v3/objects/contacts")?;
                let body = json!({"properties": properties, "associations": []});
                let answer = self
                    .http
                    .json(|client| client.post(url.clone()).bearer_auth(token).json(&body))
                    .await?;
                Ok(json!({"id": answer.get("id"), "properties": answer.get("properties")}))
            }
            "update_contact" => {
                let id = arguments.get("id").and_then(Value::as_str).ok_or_else(|| {
                    ProviderError::Rejected {
                        status: 400,
                        detail: "update_contact needs the contact's `id`".into(),
                    }
                })?;
                let properties = properties_argument(arguments)?;
                let url = self.url(&format!("crm/v3/objects/contacts/{id}"))?;
                let body = json!({"properties": properties});
                let response = self
                    .http
                    .send(|client| client.patch(url.clone()).bearer_auth(token).json(&body))
                    .await?;
                let answer: Value = crate::http::json_body(check(response).await?).await?;
                Ok(json!({"id": answer.get("id"), "properties": answer.get("properties")}))
            }
            "search_contacts" => {
                let query = arguments
                    .get("query")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let url = self.url("crm/v3/objects/contacts/search")?;
                let body = json!({"query": query, "limit": 20, "after": "0"});
                let answer = self
                    .http
                    .json(|client| client.post(url.clone()).bearer_auth(token).json(&body))
                    .await?;
                let found: Vec<Value> = parse_results(&answer, &[])?
                    .into_iter()
                    .map(|record| json!({"id": record.id, "properties": record.fields}))
                    .collect();
                Ok(json!({"results": found}))
            }
            other => Err(ProviderError::Rejected {
                status: 400,
                detail: format!("HubSpot has no tool {other}"),
            }),
        }
    }
}

fn properties_argument(arguments: &Value) -> Result<Map<String, Value>, ProviderError> {
    arguments
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ProviderError::Rejected {
            status: 400,
            detail: "the arguments need a `properties` object".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for cursor in [
            Cursor {
                started: 1_700_000_000_000,
                since: None,
                after: Some("33452".into()),
            },
            Cursor {
                started: 5,
                since: Some(17),
                after: None,
            },
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()).expect("decodes"), cursor);
        }
        assert!(Cursor::decode("junk").is_err());
    }

    #[test]
    fn modification_times_parse_in_both_forms() {
        assert_eq!(
            parse_hubspot_millis("1718000000000"),
            Some(1_718_000_000_000)
        );
        assert_eq!(
            parse_hubspot_millis("2025-07-07T20:27:17.947Z"),
            Some(1_751_920_037_947)
        );
    }
}
