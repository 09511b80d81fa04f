//! A fake Salesforce org: the OAuth web-server flow (a token answer with `instance_url`, `id`
//! and `issued_at` and no `expires_in`; refreshes without a refresh token), the identity URL,
//! SOQL `query` and `queryAll` (deleted rows with `IsDeleted`) with `nextRecordsUrl` batches
//! and `Sforce-Query-Options: batchSize`, sObject describe, record creation, the
//! `Sforce-Limit-Info` header, and Salesforce's array-shaped errors.
//!
//! The SOQL it understands is what the client sends: `SELECT fields FROM object`, an optional
//! `WHERE SystemModstamp >= datetime`, an optional `ORDER BY` of one field.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::oauth::{AuthServer, Refusal, TokenPolicy};
use super::store::Collection;
use super::{object, with_faults, Counters, FakeServer, FaultShape, Faults};

pub const CLIENT_ID: &str = "3MVG9fake.salesforce.consumer.key";
pub const CLIENT_SECRET: &str = "fake-salesforce-consumer-secret";
pub const ORG_ID: &str = "00D000000000001AAA";
pub const USER_ID: &str = "005000000000001AAA";
pub const VERSION: &str = "v60.0";
/// 2026-01-01T00:00:00Z; change `n` happened `n` seconds after it.
const EPOCH: i64 = 1_767_225_600;

const CONTACT_FIELDS: &[&str] = &[
    "FirstName",
    "LastName",
    "Email",
    "Phone",
    "Title",
    "AccountId",
];
const ACCOUNT_FIELDS: &[&str] = &["Name", "Website", "Phone", "Industry"];

#[derive(Debug, Default)]
struct Data {
    objects: HashMap<String, Collection>,
    /// Query locators: the rows still to serve.
    locators: HashMap<String, Vec<Value>>,
    next_locator: u64,
    next_id: u64,
}

#[derive(Clone)]
struct AppState {
    auth: Arc<AuthServer>,
    data: Arc<Mutex<Data>>,
}

impl AppState {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Salesforce data lock")
    }
}

/// A running fake Salesforce org.
#[derive(Debug)]
pub struct FakeSalesforce {
    pub server: FakeServer,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    pub auth: Arc<AuthServer>,
    data: Arc<Mutex<Data>>,
}

/// The 18-character id of contact `n` (`003…`) or account `n` (`001…`).
pub fn record_id(object: &str, n: u64) -> String {
    let prefix = if object == "Account" { "001" } else { "003" };
    format!("{prefix}{n:012}AAA")
}

fn fields_of(object: &str) -> &'static [&'static str] {
    if object == "Account" {
        ACCOUNT_FIELDS
    } else {
        CONTACT_FIELDS
    }
}

fn generated(object: &str, n: u64) -> Map<String, Value> {
    if object == "Account" {
        object_map(
            json!({"Name": format!("Account {n}"), "Website": format!("https://a{n}.example"),
                          "Phone": null, "Industry": "Technology"}),
        )
    } else {
        object_map(
            json!({"FirstName": format!("First{n}"), "LastName": format!("Last{n}"),
                          "Email": format!("contact{n}@example.com"), "Phone": null,
                          "Title": "Buyer", "AccountId": record_id("Account", n % 5 + 1)}),
        )
    }
}

fn object_map(value: Value) -> Map<String, Value> {
    object(value)
}

fn salesforce_time(seq: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(EPOCH + seq as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000+0000",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

impl FakeSalesforce {
    pub async fn start(contacts: u64, accounts: u64) -> std::io::Result<Self> {
        let data = Arc::new(Mutex::new(Data::default()));
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        // The token answer names this server as the instance; it is known once bound, so the
        // routes are built first and the policy's extra members filled in after.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        drop(listener);
        let instance = format!("http://{addr}");
        let auth = Arc::new(AuthServer::new(TokenPolicy {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            accepts_basic: true,
            expires_in: None,
            refresh_returns_token: false,
            rotate: false,
            invalid_grant_extra: Map::new(),
            token_extra: object(json!({
                "instance_url": instance,
                "id": format!("{instance}/id/{ORG_ID}/{USER_ID}"),
                "issued_at": "1767225600000",
                "signature": "ZmFrZS1zaWduYXR1cmU=",
                "token_type": "Bearer",
            })),
        }));
        {
            let mut data = data.lock().expect("fake Salesforce data lock");
            for (name, count) in [("Contact", contacts), ("Account", accounts)] {
                let collection = data.objects.entry(name.into()).or_default();
                for n in 1..=count {
                    collection.put(&record_id(name, n), generated(name, n));
                }
            }
            data.next_id = contacts.max(accounts) + 1;
        }
        let state = AppState {
            auth: auth.clone(),
            data: data.clone(),
        };
        let base = format!("/services/data/{VERSION}");
        let api = Router::new()
            .route("/id/{org}/{user}", get(identity))
            .route(&format!("{base}/query"), get(query))
            .route(&format!("{base}/queryAll"), get(query_all))
            .route(&format!("{base}/query/{{locator}}"), get(more))
            .route(
                &format!("{base}/sobjects/{{object}}/describe"),
                get(describe),
            )
            .route(&format!("{base}/sobjects/{{object}}"), post(create))
            .route(&format!("{base}/sobjects/{{object}}/"), post(create))
            .with_state(state.clone());
        let api = with_faults(
            api,
            &faults,
            &counters,
            FaultShape {
                rate_limited: r#"[{"message":"Too many requests","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
                unavailable: r#"[{"message":"Server busy","errorCode":"SERVER_UNAVAILABLE"}]"#,
                quota: None,
            },
        );
        let oauth = super::oauth::routes(
            auth.clone(),
            "/services/oauth2/authorize",
            "/services/oauth2/token",
            Some("/services/oauth2/revoke"),
        );
        let server = FakeServer::start_on(api.merge(oauth), addr).await?;
        Ok(Self {
            server,
            faults,
            counters,
            auth,
            data,
        })
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Salesforce data lock")
    }

    /// Changes a record's field, as a user would.
    pub fn set(&self, object: &str, id: &str, field: &str, value: &str) {
        let mut data = self.data();
        let collection = data.objects.entry(object.into()).or_default();
        let mut current = collection
            .get(id)
            .map(|e| e.data.clone())
            .unwrap_or_default();
        current.insert(field.into(), json!(value));
        collection.put(id, current);
    }

    /// Deletes a record (to the recycle bin: `queryAll` still shows it, `IsDeleted`).
    pub fn delete(&self, object: &str, id: &str) {
        if let Some(collection) = self.data().objects.get_mut(object) {
            collection.delete(id);
        }
    }

    /// The live records' emails (contacts) or names (accounts).
    pub fn labels(&self, object: &str) -> Vec<String> {
        let data = self.data();
        let key = if object == "Account" { "Name" } else { "Email" };
        data.objects
            .get(object)
            .map(|c| {
                c.live()
                    .filter_map(|(_, e)| e.data.get(key).and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

type Answer = Result<Response, Response>;

fn sf_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!([{"message": message, "errorCode": code}])),
    )
        .into_response()
}

fn admit(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    state.auth.check_bearer(headers).map_err(|_: Refusal| {
        sf_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        )
    })
}

fn limit_info() -> [(&'static str, &'static str); 1] {
    [("sforce-limit-info", "api-usage=18/100000")]
}

async fn identity(
    State(state): State<AppState>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    if org != ORG_ID || user != USER_ID {
        return Err(sf_error(StatusCode::FORBIDDEN, "Bad_Id", "Bad_Id"));
    }
    Ok(Json(json!({
        "id": format!("https://login.salesforce.com/id/{ORG_ID}/{USER_ID}"),
        "user_id": USER_ID, "organization_id": ORG_ID, "username": "jane@acme.com",
        "display_name": "Jane Doe", "email": "jane@acme.com", "active": true,
        "user_type": "STANDARD",
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    q: String,
}

struct Soql {
    fields: Vec<String>,
    object: String,
    since: Option<String>,
    order_by: Option<String>,
}

fn malformed(message: &str) -> Response {
    sf_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", message)
}

fn parse_soql(q: &str) -> Result<Soql, Response> {
    let words: Vec<&str> = q.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    if upper.first().map(String::as_str) != Some("SELECT") {
        return Err(malformed("unexpected token: expected SELECT"));
    }
    let from = upper
        .iter()
        .position(|w| w == "FROM")
        .ok_or_else(|| malformed("unexpected token: expected FROM"))?;
    let fields: Vec<String> = words[1..from]
        .join("")
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    let object = words
        .get(from + 1)
        .ok_or_else(|| malformed("no object after FROM"))?
        .to_string();
    let mut rest = from + 2;
    let mut since = None;
    if upper.get(rest).map(String::as_str) == Some("WHERE") {
        let (Some(field), Some(op), Some(value)) = (
            words.get(rest + 1),
            words.get(rest + 2),
            words.get(rest + 3),
        ) else {
            return Err(malformed("incomplete WHERE"));
        };
        if *field != "SystemModstamp" || *op != ">=" {
            return Err(malformed("only SystemModstamp >= is understood here"));
        }
        since = Some((*value).to_owned());
        rest += 4;
    }
    let mut order_by = None;
    if upper.get(rest).map(String::as_str) == Some("ORDER") {
        order_by = words.get(rest + 2).map(|w| (*w).to_owned());
    }
    Ok(Soql {
        fields,
        object,
        since,
        order_by,
    })
}

/// Turns `2026-01-01T00:00:05Z` (a SOQL datetime literal) into the change position it names.
fn position_of(literal: &str) -> Result<u64, Response> {
    let at = time::OffsetDateTime::parse(literal, &time::format_description::well_known::Rfc3339)
        .map_err(|_| malformed(&format!("invalid datetime literal {literal}")))?;
    Ok((at.unix_timestamp() - EPOCH).max(0) as u64)
}

fn run_query(state: &AppState, headers: &HeaderMap, q: &str, all: bool) -> Answer {
    admit(state, headers)?;
    let soql = parse_soql(q)?;
    let batch = headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("batchSize="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2000)
        .clamp(200, 2000);
    let mut data = state.data();
    let known = fields_of(&soql.object);
    let Some(collection) = data.objects.get(&soql.object) else {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            &format!("sObject type '{}' is not supported.", soql.object),
        ));
    };
    for field in &soql.fields {
        let ok = known.contains(&field.as_str())
            || ["Id", "SystemModstamp", "IsDeleted"].contains(&field.as_str());
        if !ok {
            return Err(sf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                &format!("No such column '{field}' on entity '{}'.", soql.object),
            ));
        }
    }
    let since = soql.since.as_deref().map(position_of).transpose()?;
    let mut rows: Vec<(u64, String, Value)> = Vec::new();
    let entries: Vec<_> = match since {
        Some(since) => collection
            .changes_since(since.saturating_sub(1))
            .into_iter()
            .collect(),
        None => collection.changes_since(0).into_iter().collect(),
    };
    for (id, entry) in entries {
        if entry.deleted && !all {
            continue;
        }
        let mut row = Map::new();
        row.insert(
            "attributes".into(),
            json!({"type": soql.object, "url": format!("/services/data/{VERSION}/sobjects/{}/{id}", soql.object)}),
        );
        for field in &soql.fields {
            let value = match field.as_str() {
                "Id" => json!(id),
                "SystemModstamp" => json!(salesforce_time(entry.seq)),
                "IsDeleted" => json!(entry.deleted),
                other => entry.data.get(other).cloned().unwrap_or(Value::Null),
            };
            row.insert(field.clone(), value);
        }
        rows.push((entry.seq, id.clone(), Value::Object(row)));
    }
    match soql.order_by.as_deref() {
        Some("Id") => rows.sort_by(|a, b| a.1.cmp(&b.1)),
        _ => rows.sort_by_key(|row| row.0),
    }
    let rows: Vec<Value> = rows.into_iter().map(|(_, _, row)| row).collect();
    let total = rows.len();
    let answer = page_of(&mut data, rows, batch, total);
    Ok((limit_info(), Json(answer)).into_response())
}

fn page_of(data: &mut Data, mut rows: Vec<Value>, batch: usize, total: usize) -> Value {
    let rest = if rows.len() > batch {
        rows.split_off(batch)
    } else {
        Vec::new()
    };
    let mut answer = json!({"totalSize": total, "done": rest.is_empty(), "records": rows});
    if !rest.is_empty() {
        data.next_locator += 1;
        let locator = format!("01gRO{:010}-{batch}", data.next_locator);
        answer["nextRecordsUrl"] = json!(format!("/services/data/{VERSION}/query/{locator}"));
        data.locators.insert(locator, rest);
    }
    answer
}

async fn query(
    State(state): State<AppState>,
    Query(params): Query<QueryParams>,
    headers: HeaderMap,
) -> Answer {
    run_query(&state, &headers, &params.q, false)
}

async fn query_all(
    State(state): State<AppState>,
    Query(params): Query<QueryParams>,
    headers: HeaderMap,
) -> Answer {
    run_query(&state, &headers, &params.q, true)
}

async fn more(
    State(state): State<AppState>,
    Path(locator): Path<String>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    let mut data = state.data();
    let rows = data.locators.remove(&locator).ok_or_else(|| {
        sf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        )
    })?;
    let batch = locator
        .rsplit('-')
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or(2000);
    let total = rows.len();
    let answer = page_of(&mut data, rows, batch, total);
    Ok((limit_info(), Json(answer)).into_response())
}

async fn describe(
    State(state): State<AppState>,
    Path(object): Path<String>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &headers)?;
    if !state.data().objects.contains_key(&object) {
        return Err(sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        ));
    }
    let mut fields = vec![json!({"name": "Id", "type": "id"})];
    fields.extend(
        fields_of(&object)
            .iter()
            .map(|name| json!({"name": name, "type": "string", "custom": false})),
    );
    fields.push(json!({"name": "SystemModstamp", "type": "datetime"}));
    Ok(
        Json(json!({"name": object, "queryable": true, "createable": true, "fields": fields}))
            .into_response(),
    )
}

async fn create(
    State(state): State<AppState>,
    Path(object): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    admit(&state, &headers)?;
    let Some(fields) = body.as_object() else {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "expected an object",
        ));
    };
    if object == "Contact" && fields.get("LastName").and_then(Value::as_str).is_none() {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(
                json!([{"message": "Required fields are missing: [LastName]",
                         "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}]),
            ),
        )
            .into_response());
    }
    let mut data = state.data();
    let n = 900_000 + data.next_id;
    data.next_id += 1;
    let id = record_id(&object, n);
    data.objects
        .entry(object)
        .or_default()
        .put(&id, fields.clone());
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "success": true, "errors": []})),
    )
        .into_response())
}
