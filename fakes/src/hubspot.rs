//! A fake HubSpot: CRM v3 contacts and companies with `after` paging, the search API with its
//! 10,000-result limit, the properties API, contact creation and upsert, the OAuth v1 token
//! endpoint and refresh-token revocation, `X-HubSpot-RateLimit-*` headers, and HubSpot's own
//! error bodies.
//!
//! Records are generated from their number, so a million of them cost no memory; changes
//! made through the fake's methods or its API are kept beside them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::oauth::{AuthServer, Refusal, TokenPolicy};
use super::{apply_faults, json_response, Counters, FakeServer, FaultLayer, FaultShape, Faults};

pub const CLIENT_ID: &str = "fake-hubspot-client";
pub const CLIENT_SECRET: &str = "fake-hubspot-secret";
pub const PORTAL_ID: i64 = 62515;
/// 2024-01-01T00:00:00Z: record `n` was last modified `n` seconds after it.
const EPOCH_MS: i64 = 1_704_067_200_000;

/// One object's records: `count` generated ones plus the changes made since.
#[derive(Debug, Default)]
struct Dataset {
    count: u64,
    changed: BTreeMap<u64, (Map<String, Value>, i64)>,
    archived: BTreeSet<u64>,
    next_id: u64,
}

impl Dataset {
    fn new(count: u64) -> Self {
        Self {
            count,
            next_id: count + 1,
            ..Self::default()
        }
    }

    fn generated(object: &str, n: u64) -> Map<String, Value> {
        let mut properties = Map::new();
        if object == "contacts" {
            properties.insert("firstname".into(), json!(format!("First{n}")));
            properties.insert("lastname".into(), json!(format!("Last{n}")));
            properties.insert("email".into(), json!(format!("contact{n}@example.com")));
            properties.insert("phone".into(), json!(format!("+1555{:07}", n % 10_000_000)));
            properties.insert("company".into(), json!(format!("Company {}", n % 1000)));
            properties.insert("jobtitle".into(), json!("Buyer"));
        } else {
            properties.insert("name".into(), json!(format!("Company {n}")));
            properties.insert("domain".into(), json!(format!("company{n}.example")));
            properties.insert("phone".into(), json!(format!("+1444{:07}", n % 10_000_000)));
            properties.insert("industry".into(), json!("COMPUTER_SOFTWARE"));
        }
        properties
    }

    /// Record `n`'s properties and modification time, unless it does not exist or is archived.
    fn get(&self, object: &str, n: u64) -> Option<(Map<String, Value>, i64)> {
        if self.archived.contains(&n) {
            return None;
        }
        if let Some(changed) = self.changed.get(&n) {
            return Some(changed.clone());
        }
        (1..=self.count)
            .contains(&n)
            .then(|| (Self::generated(object, n), EPOCH_MS + (n as i64) * 1000))
    }

    /// Live record numbers from `from`, ascending.
    fn live_from<'a>(&'a self, from: u64) -> impl Iterator<Item = u64> + 'a {
        let generated = from.max(1)..=self.count;
        let created = self
            .changed
            .range(from.max(self.count + 1)..)
            .map(|(n, _)| *n);
        generated
            .chain(created)
            .filter(move |n| !self.archived.contains(n))
    }
}

#[derive(Debug)]
struct RateWindow {
    max: u32,
    interval: Duration,
    started: Instant,
    used: u32,
}

#[derive(Debug, Default)]
struct Data {
    objects: BTreeMap<String, Dataset>,
    window: Option<RateWindow>,
    custom_properties: Vec<String>,
}

/// A running fake HubSpot.
#[derive(Debug)]
pub struct FakeHubSpot {
    pub server: FakeServer,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    pub auth: Arc<AuthServer>,
    data: Arc<Mutex<Data>>,
}

#[derive(Clone)]
struct AppState {
    auth: Arc<AuthServer>,
    data: Arc<Mutex<Data>>,
}

impl FakeHubSpot {
    /// Connects a HubSpot integration as its OAuth flow leaves it, without the browser: tokens
    /// this fake issued for `scopes` (the access token expiring at `expires_at`) in the vault,
    /// and the connect in the log, made by the caller of `context`.
    pub async fn connect(
        &self,
        repo: &command::repository::Repository,
        vault: &adapters::vault::Vault,
        context: &domain::aggregate::CommandContext,
        scopes: &[&str],
        expires_at: Option<domain::Timestamp>,
    ) -> anyhow::Result<domain::IntegrationId> {
        let (access, refresh) = self.auth.issue(scopes);
        let mut connect =
            domain::testing::connect_command("hubspot", domain::catalog::AppScope::Workspace, &[]);
        let id = connect.integration;
        let credentials = adapters::provider::Credentials {
            access_token: Some(secrecy::SecretString::from(access)),
            refresh_token: Some(secrecy::SecretString::from(refresh)),
            expires_at,
            ..adapters::provider::Credentials::default()
        };
        connect.credential_ref = vault.put(id, &credentials.to_secret()).await?;
        command::lifecycle::connect(
            repo,
            context,
            connect,
            command::lifecycle::DEFAULT_ABANDON_AFTER,
        )
        .await?;
        Ok(id)
    }

    /// Starts a fake with `contacts` contacts and `companies` companies.
    pub async fn start(contacts: u64, companies: u64) -> std::io::Result<Self> {
        Self::start_on(
            contacts,
            companies,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
    }

    pub async fn start_on(
        contacts: u64,
        companies: u64,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<Self> {
        let auth = Arc::new(AuthServer::new(TokenPolicy {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            accepts_basic: false,
            expires_in: Some(1800),
            refresh_returns_token: true,
            rotate: false,
            invalid_grant_extra: json!({
                "status": "BAD_REFRESH_TOKEN",
                "message": "refresh token is invalid, expired or revoked",
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            token_extra: json!({"hub_id": PORTAL_ID, "token_use": "access_token"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }));
        let mut data = Data::default();
        data.objects
            .insert("contacts".into(), Dataset::new(contacts));
        data.objects
            .insert("companies".into(), Dataset::new(companies));
        let data = Arc::new(Mutex::new(data));
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        let state = AppState {
            auth: auth.clone(),
            data: data.clone(),
        };
        let api = Router::new()
            .route("/account-info/v3/details", get(account_details))
            .route("/crm/v3/objects/{object}", get(list).post(create))
            .route("/crm/v3/objects/{object}/search", post(search))
            .route("/crm/v3/objects/{object}/batch/upsert", post(upsert))
            .route("/crm/v3/objects/{object}/{id}", patch(update))
            .route("/crm/v3/properties/{object}", get(properties))
            .with_state(state.clone())
            .layer(axum::middleware::from_fn_with_state(
                FaultLayer {
                    faults: faults.clone(),
                    counters: counters.clone(),
                    shape: FaultShape {
                        rate_limited: r#"{"status":"error","message":"You have reached your ten secondly limit.","errorType":"RATE_LIMIT","correlationId":"00000000-0000-0000-0000-000000000000","policyName":"TEN_SECONDLY_ROLLING"}"#,
                        unavailable: r#"{"status":"error","message":"Service Unavailable","category":"SERVICE_UNAVAILABLE"}"#,
                        quota: None,
                    },
                },
                apply_faults,
            ));
        let oauth = Router::new()
            .route("/oauth/v1/refresh-tokens/{token}", delete(revoke))
            .with_state(state)
            .merge(super::oauth::routes(
                auth.clone(),
                "/oauth/authorize",
                "/oauth/v1/token",
                None,
            ));
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
        self.data.lock().expect("fake HubSpot data lock")
    }

    /// Changes a record's properties (creating it if it is new), as a user would in HubSpot.
    pub fn set(&self, object: &str, id: u64, properties: &[(&str, &str)]) {
        let mut data = self.data();
        let dataset = data.objects.entry(object.into()).or_default();
        let mut current = dataset
            .get(object, id)
            .map(|(properties, _)| properties)
            .unwrap_or_else(|| Dataset::generated(object, id));
        for (name, value) in properties {
            current.insert((*name).into(), json!(value));
        }
        dataset.archived.remove(&id);
        dataset.next_id = dataset.next_id.max(id + 1);
        dataset
            .changed
            .insert(id, (current, adapters::providers::now_millis()));
    }

    /// Archives a record (HubSpot's delete).
    pub fn archive(&self, object: &str, id: u64) {
        self.data()
            .objects
            .entry(object.into())
            .or_default()
            .archived
            .insert(id);
    }

    /// Adds a custom property to every object's property list.
    pub fn add_custom_property(&self, name: &str) {
        self.data().custom_properties.push(name.into());
    }

    /// Answers with `X-HubSpot-RateLimit-*` headers for a window of `max` calls per `interval`,
    /// and a 429 past it.
    pub fn rate_window(&self, max: u32, interval: Duration) {
        self.data().window = Some(RateWindow {
            max,
            interval,
            started: Instant::now(),
            used: 0,
        });
    }

    /// The record numbers that a full list would return now.
    pub fn live_ids(&self, object: &str) -> Vec<u64> {
        let data = self.data();
        data.objects
            .get(object)
            .map(|dataset| dataset.live_from(1).collect())
            .unwrap_or_default()
    }
}

type Answer = Result<Response, Response>;

fn unauthorized(refusal: Refusal) -> Response {
    let body = match refusal {
        Refusal::Expired => json!({
            "status": "error",
            "message": "The OAuth token used to make this call expired 5 minute(s) ago.",
            "category": "EXPIRED_AUTHENTICATION",
        }),
        Refusal::Missing | Refusal::Invalid => json!({
            "status": "error",
            "message": "Authentication credentials not found.",
            "category": "INVALID_AUTHENTICATION",
        }),
    };
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// Checks the token and counts the call against the rate window; returns the window's headers.
fn admit(state: &AppState, headers: &HeaderMap) -> Result<HeaderMap, Response> {
    state.auth.check_bearer(headers).map_err(unauthorized)?;
    let mut data = state.data.lock().expect("fake HubSpot data lock");
    let mut answer = HeaderMap::new();
    if let Some(window) = &mut data.window {
        if window.started.elapsed() >= window.interval {
            window.started = Instant::now();
            window.used = 0;
        }
        if window.used >= window.max {
            return Err(json_response(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"status":"error","message":"You have reached your ten secondly limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}"#,
            ));
        }
        window.used += 1;
        let header = |value: u64| HeaderValue::from_str(&value.to_string()).expect("digits");
        answer.insert("x-hubspot-ratelimit-max", header(window.max.into()));
        answer.insert(
            "x-hubspot-ratelimit-remaining",
            header((window.max - window.used).into()),
        );
        answer.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            header(window.interval.as_millis() as u64),
        );
    }
    Ok(answer)
}

fn iso(millis: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

const DEFAULT_PROPERTIES: &[&str] = &[
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
];

fn object_json(
    object: &str,
    n: u64,
    properties: &Map<String, Value>,
    modified: i64,
    wanted: Option<&[String]>,
) -> Value {
    // `None`: every property, as write answers carry them; `Some(&[])`: the defaults.
    let created = iso(EPOCH_MS + (n as i64) * 1000);
    let modified_iso = iso(modified);
    let modified_name = if object == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    };
    let mut all = properties.clone();
    all.insert("createdate".into(), json!(created));
    all.insert(modified_name.into(), json!(modified_iso));
    all.insert("hs_object_id".into(), json!(n.to_string()));
    let selected: Map<String, Value> = if let Some(wanted) = wanted.filter(|w| !w.is_empty()) {
        wanted
            .iter()
            .map(|name| (name.clone(), all.get(name).cloned().unwrap_or(Value::Null)))
            .collect()
    } else if wanted.is_some() {
        all.into_iter()
            .filter(|(name, _)| {
                DEFAULT_PROPERTIES.contains(&name.as_str()) || name == modified_name
            })
            .collect()
    } else {
        all
    };
    json!({
        "id": n.to_string(),
        "properties": selected,
        "createdAt": created,
        "updatedAt": modified_iso,
        "archived": false,
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u64>,
    after: Option<String>,
    properties: Option<String>,
    archived: Option<bool>,
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"status": "error", "message": message, "category": "VALIDATION_ERROR"})),
    )
        .into_response()
}

async fn account_details(State(state): State<AppState>, headers: HeaderMap) -> Answer {
    let rate = admit(&state, &headers)?;
    Ok((
        rate,
        Json(json!({
            "portalId": PORTAL_ID,
            "accountType": "STANDARD",
            "timeZone": "US/Eastern",
            "companyCurrency": "USD",
            "additionalCurrencies": [],
            "utcOffset": "-05:00",
            "utcOffsetMilliseconds": -18_000_000,
            "uiDomain": "app.hubspot.com",
            "dataHostingLocation": "na1",
        })),
    )
        .into_response())
}

async fn list(
    State(state): State<AppState>,
    Path(object): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Answer {
    let rate = admit(&state, &headers)?;
    let limit = query.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(bad_request("limit must be between 1 and 100"));
    }
    if query.archived == Some(true) {
        return Ok((rate, Json(json!({"results": []}))).into_response());
    }
    let from = match query.after.as_deref() {
        None => 1,
        Some(after) => after
            .parse::<u64>()
            .map_err(|_| bad_request("after must be a cursor this API returned"))?,
    };
    let wanted: Vec<String> = query
        .properties
        .as_deref()
        .map(|list| {
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let data = state.data.lock().expect("fake HubSpot data lock");
    let Some(dataset) = data.objects.get(&object) else {
        return Err(bad_request(&format!(
            "Unable to infer object type from: {object}"
        )));
    };
    let mut ids = dataset.live_from(from);
    let mut results = Vec::with_capacity(limit as usize);
    for n in ids.by_ref().take(limit as usize) {
        if let Some((properties, modified)) = dataset.get(&object, n) {
            results.push(object_json(
                &object,
                n,
                &properties,
                modified,
                Some(&wanted),
            ));
        }
    }
    let mut body = json!({"results": results});
    if let Some(next) = ids.next() {
        body["paging"] = json!({"next": {
            "after": next.to_string(),
            "link": format!("https://api.hubapi.com/crm/v3/objects/{object}?after={next}"),
        }});
    }
    Ok((rate, Json(body)).into_response())
}

async fn search(
    State(state): State<AppState>,
    Path(object): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    // Search endpoints send no rate-limit headers.
    admit(&state, &headers)?;
    let limit = body.get("limit").and_then(Value::as_u64).unwrap_or(10);
    if limit > 200 {
        return Err(bad_request("limit must be at most 200"));
    }
    let after: u64 = body
        .get("after")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .parse()
        .map_err(|_| bad_request("after must be a number"))?;
    if after + limit > 10_000 {
        return Err(bad_request(
            "Cannot page past 10000 results. Narrow the search with filters.",
        ));
    }
    let filter = body.pointer("/filterGroups/0/filters/0");
    let since: Option<i64> = filter
        .and_then(|f| f.get("value"))
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok());
    let query_text = body
        .get("query")
        .and_then(Value::as_str)
        .map(str::to_lowercase);
    let wanted: Vec<String> = body
        .get("properties")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let data = state.data.lock().expect("fake HubSpot data lock");
    let Some(dataset) = data.objects.get(&object) else {
        return Err(bad_request(&format!(
            "Unable to infer object type from: {object}"
        )));
    };
    let mut matches: Vec<(i64, u64, Map<String, Value>)> = dataset
        .live_from(1)
        .filter_map(|n| dataset.get(&object, n).map(|(p, m)| (m, n, p)))
        .filter(|(modified, _, _)| since.is_none_or(|since| *modified >= since))
        .filter(|(_, _, properties)| {
            query_text.as_ref().is_none_or(|text| {
                properties
                    .values()
                    .filter_map(Value::as_str)
                    .any(|value| value.to_lowercase().contains(text.as_str()))
            })
        })
        .collect();
    matches.sort_by_key(|(modified, n, _)| (*modified, *n));
    let total = matches.len();
    let page: Vec<Value> = matches
        .iter()
        .skip(after as usize)
        .take(limit as usize)
        .map(|(modified, n, properties)| {
            object_json(&object, *n, properties, *modified, Some(&wanted))
        })
        .collect();
    let mut answer = json!({"total": total, "results": page});
    if (after + limit) < total as u64 {
        answer["paging"] = json!({"next": {"after": (after + limit).to_string()}});
    }
    Ok(Json(answer).into_response())
}

fn properties_of(body: &Value) -> Result<Map<String, Value>, Response> {
    body.get("properties")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| bad_request("properties is required"))
}

fn conflict_if_email_taken(
    dataset: &Dataset,
    object: &str,
    email: Option<&str>,
) -> Result<(), Response> {
    let Some(email) = email else { return Ok(()) };
    if let Some(existing) = find_by_email(dataset, object, email) {
        return Err((
            StatusCode::CONFLICT,
            Json(json!({
                "status": "error",
                "message": format!("Contact already exists. Existing ID: {existing}"),
                "correlationId": uuid::Uuid::now_v7().to_string(),
                "category": "CONFLICT",
            })),
        )
            .into_response());
    }
    Ok(())
}

fn find_by_email(dataset: &Dataset, object: &str, email: &str) -> Option<u64> {
    // Only changed records can share a generated email's shape with a new one; a generated
    // record's email names its number.
    if let Some(n) = email
        .strip_prefix("contact")
        .and_then(|rest| rest.strip_suffix("@example.com"))
        .and_then(|n| n.parse::<u64>().ok())
    {
        if dataset
            .get(object, n)
            .is_some_and(|(p, _)| p.get("email").and_then(Value::as_str) == Some(email))
        {
            return Some(n);
        }
    }
    dataset
        .changed
        .iter()
        .find(|(n, (p, _))| {
            !dataset.archived.contains(n) && p.get("email").and_then(Value::as_str) == Some(email)
        })
        .map(|(n, _)| *n)
}

async fn create(
    State(state): State<AppState>,
    Path(object): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    let rate = admit(&state, &headers)?;
    let properties = properties_of(&body)?;
    let mut data = state.data.lock().expect("fake HubSpot data lock");
    let dataset = data.objects.entry(object.clone()).or_default();
    conflict_if_email_taken(
        dataset,
        &object,
        properties.get("email").and_then(Value::as_str),
    )?;
    let n = dataset.next_id;
    dataset.next_id += 1;
    let now = adapters::providers::now_millis();
    dataset.changed.insert(n, (properties.clone(), now));
    Ok((
        StatusCode::CREATED,
        rate,
        Json(object_json(&object, n, &properties, now, None)),
    )
        .into_response())
}

async fn upsert(
    State(state): State<AppState>,
    Path(object): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    let rate = admit(&state, &headers)?;
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_request("inputs is required"))?;
    let mut data = state.data.lock().expect("fake HubSpot data lock");
    let dataset = data.objects.entry(object.clone()).or_default();
    let now = adapters::providers::now_millis();
    let mut results = Vec::new();
    for input in inputs {
        let email = input
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_request("each input needs an id"))?;
        let mut properties = properties_of(input)?;
        properties.insert("email".into(), json!(email));
        let n = match find_by_email(dataset, &object, email) {
            Some(existing) => {
                let mut merged = dataset
                    .get(&object, existing)
                    .map(|(p, _)| p)
                    .unwrap_or_default();
                merged.extend(properties);
                properties = merged;
                existing
            }
            None => {
                let n = dataset.next_id;
                dataset.next_id += 1;
                n
            }
        };
        dataset.changed.insert(n, (properties.clone(), now));
        results.push(object_json(&object, n, &properties, now, None));
    }
    Ok((
        rate,
        Json(json!({"status": "COMPLETE", "results": results})),
    )
        .into_response())
}

async fn update(
    State(state): State<AppState>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    let rate = admit(&state, &headers)?;
    let changes = properties_of(&body)?;
    let n: u64 = id.parse().map_err(|_| bad_request("id must be a number"))?;
    let mut data = state.data.lock().expect("fake HubSpot data lock");
    let dataset = data.objects.entry(object.clone()).or_default();
    let Some((mut properties, _)) = dataset.get(&object, n) else {
        return Err((
            StatusCode::NOT_FOUND,
            Json(json!({"status": "error", "message": "resource not found", "category": "OBJECT_NOT_FOUND"})),
        )
            .into_response());
    };
    properties.extend(changes);
    let now = adapters::providers::now_millis();
    dataset.changed.insert(n, (properties.clone(), now));
    Ok((rate, Json(object_json(&object, n, &properties, now, None))).into_response())
}

async fn properties(
    State(state): State<AppState>,
    Path(object): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let rate = admit(&state, &headers)?;
    let data = state.data.lock().expect("fake HubSpot data lock");
    let mut names: Vec<String> = Dataset::generated(&object, 1).keys().cloned().collect();
    names.extend(["createdate", "hs_object_id"].map(str::to_owned));
    names.push(if object == "contacts" {
        "lastmodifieddate".into()
    } else {
        "hs_lastmodifieddate".into()
    });
    names.extend(data.custom_properties.iter().cloned());
    let results: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({
                "name": name, "label": name, "type": "string", "fieldType": "text",
                "groupName": "contactinformation", "description": "", "options": [],
                "hidden": false, "hubspotDefined": true, "archived": false,
            })
        })
        .collect();
    Ok((rate, Json(json!({"results": results}))).into_response())
}

async fn revoke(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let _ = state.auth.revoke(&token);
    StatusCode::NO_CONTENT.into_response()
}
