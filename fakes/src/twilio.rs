//! A fake Twilio region (REST API 2010-04-01): Basic auth with the account SID and auth token,
//! the account resource, Messages and Calls lists newest first with `next_page_uri` paging
//! (a relative path, `PageToken` included) and the `DateSent>=` / `StartTime>=` filters,
//! sending an SMS (form-encoded, 201, no idempotency), and Twilio's error envelope.
//!
//! Credentials are per region, as at Twilio: one fake is one region.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::store::Collection;
use super::{basic_credentials, object, with_faults, Counters, FakeServer, FaultShape, Faults};

#[derive(Debug, Default)]
struct Data {
    messages: Collection,
    calls: Collection,
    next: u64,
}

#[derive(Clone)]
struct AppState {
    sid: String,
    token: String,
    data: Arc<Mutex<Data>>,
}

impl AppState {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Twilio data lock")
    }
}

/// A running fake Twilio region.
#[derive(Debug)]
pub struct FakeTwilio {
    pub server: FakeServer,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    data: Arc<Mutex<Data>>,
}

/// Day `n` of January 2026 in Twilio's RFC 2822 form, and as a date.
fn day(n: u64) -> (String, String) {
    let d = n % 28 + 1;
    (
        format!("Thu, {d:02} Jan 2026 17:44:46 +0000"),
        format!("2026-01-{d:02}"),
    )
}

fn message(
    sid: &str,
    account: &str,
    n: u64,
    to: &str,
    body: &str,
    status: &str,
) -> Map<String, Value> {
    let (sent, date) = day(n);
    object(json!({
        "sid": sid, "account_sid": account, "api_version": "2010-04-01",
        "body": body, "direction": "outbound-api", "from": "+12019235161", "to": to,
        "status": status, "num_segments": "1", "num_media": "0", "price": "-0.00750",
        "price_unit": "USD", "error_code": null, "error_message": null,
        "date_created": sent, "date_sent": sent, "date_updated": sent, "_date": date,
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
    }))
}

fn call(sid: &str, account: &str, n: u64) -> Map<String, Value> {
    let (start, date) = day(n);
    object(json!({
        "sid": sid, "account_sid": account, "status": "completed", "direction": "inbound",
        "from": "+14155550100", "to": "+14155550199", "start_time": start, "end_time": start,
        "duration": "42", "price": "-0.0085", "price_unit": "USD", "parent_call_sid": null,
        "_date": date,
        "uri": format!("/2010-04-01/Accounts/{account}/Calls/{sid}.json"),
    }))
}

fn sid(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:032x}")
}

impl FakeTwilio {
    /// Starts a region holding account `sid` with `auth_token`, `messages` messages and
    /// `calls` calls (message and call `n` dated January `n % 28 + 1`, 2026).
    pub async fn start(
        account_sid: &str,
        auth_token: &str,
        messages: u64,
        calls: u64,
    ) -> std::io::Result<Self> {
        let mut data = Data::default();
        for n in 1..=messages {
            let id = sid("SM", n);
            data.messages.put(
                &id,
                message(
                    &id,
                    account_sid,
                    n,
                    "+18182008801",
                    &format!("Message {n}"),
                    "delivered",
                ),
            );
        }
        for n in 1..=calls {
            let id = sid("CA", n);
            data.calls.put(&id, call(&id, account_sid, n));
        }
        data.next = messages.max(calls) + 1;
        let data = Arc::new(Mutex::new(data));
        let state = AppState {
            sid: account_sid.to_owned(),
            token: auth_token.to_owned(),
            data: data.clone(),
        };
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        let router = Router::new()
            .route("/2010-04-01/Accounts/{account}", get(account))
            .route(
                "/2010-04-01/Accounts/{account}/{list}",
                get(list).post(send),
            )
            .with_state(state);
        let router = with_faults(
            router,
            &faults,
            &counters,
            FaultShape {
                rate_limited: r#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#,
                unavailable: r#"{"code":20500,"message":"An internal server error has occurred","more_info":"https://www.twilio.com/docs/errors/20500","status":500}"#,
                quota: None,
            },
        );
        Ok(Self {
            server: FakeServer::start(router).await?,
            faults,
            counters,
            data,
        })
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().expect("fake Twilio data lock")
    }

    /// A message's delivery status changes.
    pub fn set_status(&self, n: u64, status: &str) {
        let mut data = self.data();
        let id = sid("SM", n);
        if let Some(entry) = data.messages.get(&id) {
            let mut changed = entry.data.clone();
            changed.insert("status".into(), json!(status));
            data.messages.put(&id, changed);
        }
    }

    /// The SID of message `n`.
    pub fn message_sid(n: u64) -> String {
        sid("SM", n)
    }

    /// Bodies of the messages sent through the API.
    pub fn sent(&self) -> Vec<String> {
        self.data()
            .messages
            .live()
            .filter(|(_, e)| e.data["status"] == "queued")
            .filter_map(|(_, e)| e.data["body"].as_str().map(str::to_owned))
            .collect()
    }
}

type Answer = Result<Response, Response>;

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message,
                    "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                    "status": status.as_u16()})),
    )
        .into_response()
}

fn admit(state: &AppState, account: &str, headers: &HeaderMap) -> Result<(), Response> {
    match basic_credentials(headers) {
        Some((user, password)) if user == state.sid && password == state.token => {}
        _ => {
            return Err(twilio_error(
                StatusCode::UNAUTHORIZED,
                20003,
                "Authenticate",
            ))
        }
    }
    if account.trim_end_matches(".json") != state.sid {
        return Err(twilio_error(
            StatusCode::FORBIDDEN,
            20003,
            "Authenticate: the account in the URL is not yours",
        ));
    }
    Ok(())
}

async fn account(
    State(state): State<AppState>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &account, &headers)?;
    if !account.ends_with(".json") {
        return Err(twilio_error(StatusCode::NOT_FOUND, 20404, "Not found"));
    }
    Ok(Json(json!({
        "sid": state.sid, "friendly_name": "Acme support line", "status": "active",
        "type": "Full", "owner_account_sid": state.sid,
        "date_created": "Thu, 30 Jul 2015 20:00:00 +0000",
        "uri": format!("/2010-04-01/Accounts/{}.json", state.sid),
    }))
    .into_response())
}

async fn list(
    State(state): State<AppState>,
    Path((account, list)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Answer {
    admit(&state, &account, &headers)?;
    // `DateSent>=2026-01-01` arrives as the parameter `DateSent>` with the value `2026-01-01`.
    let query: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(raw.as_deref().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let number = |name: &str, default: usize| -> Result<usize, Response> {
        query.get(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| twilio_error(StatusCode::BAD_REQUEST, 20001, "Invalid parameter"))
        })
    };
    let (key, from) = match list.as_str() {
        "Messages.json" => ("messages", query.get("DateSent>").cloned()),
        "Calls.json" => ("calls", query.get("StartTime>").cloned()),
        _ => return Err(twilio_error(StatusCode::NOT_FOUND, 20404, "Not found")),
    };
    let size = number("PageSize", 50)?;
    if !(1..=1000).contains(&size) {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            20001,
            "PageSize must be 1 to 1000",
        ));
    }
    let page = number("Page", 0)?;
    let offset = match (query.get("PageToken"), page) {
        (None, 0) => 0,
        (Some(token), _) => token
            .strip_prefix("PA")
            .and_then(|t| t.parse::<usize>().ok())
            .ok_or_else(|| twilio_error(StatusCode::BAD_REQUEST, 21481, "Invalid PageToken"))?,
        (None, _) => {
            return Err(twilio_error(
                StatusCode::BAD_REQUEST,
                21481,
                "Page without PageToken",
            ))
        }
    };
    let data = state.data();
    let collection = if key == "messages" {
        &data.messages
    } else {
        &data.calls
    };
    // Newest first.
    let matching: Vec<&Map<String, Value>> = collection
        .live()
        .rev()
        .map(|(_, e)| &e.data)
        .filter(|d| {
            from.as_deref()
                .is_none_or(|from| d["_date"].as_str().is_some_and(|date| date >= from))
        })
        .collect();
    let items: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(size)
        .map(|d| {
            let mut d = (*d).clone();
            d.remove("_date");
            Value::Object(d)
        })
        .collect();
    let base = format!("/2010-04-01/Accounts/{}/{list}", state.sid);
    let next = (offset + items.len() < matching.len()).then(|| {
        format!(
            "{base}?PageSize={size}&Page={}&PageToken=PA{}",
            page + 1,
            offset + items.len()
        )
    });
    let mut body = Map::new();
    body.insert(key.into(), json!(items));
    body.insert(
        "uri".into(),
        json!(format!("{base}?PageSize={size}&Page={page}")),
    );
    body.insert(
        "first_page_uri".into(),
        json!(format!("{base}?PageSize={size}&Page=0")),
    );
    body.insert("next_page_uri".into(), json!(next));
    body.insert("previous_page_uri".into(), Value::Null);
    body.insert("page".into(), json!(page));
    body.insert("page_size".into(), json!(size));
    body.insert("start".into(), json!(offset));
    body.insert("end".into(), json!(offset + items.len().saturating_sub(1)));
    Ok(Json(Value::Object(body)).into_response())
}

#[derive(Debug, Deserialize)]
struct SendForm {
    #[serde(rename = "To")]
    to: Option<String>,
    #[serde(rename = "From")]
    from: Option<String>,
    #[serde(rename = "Body")]
    body: Option<String>,
}

async fn send(
    State(state): State<AppState>,
    Path((account, list)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<SendForm>,
) -> Answer {
    admit(&state, &account, &headers)?;
    if list != "Messages.json" {
        return Err(twilio_error(StatusCode::NOT_FOUND, 20404, "Not found"));
    }
    let to = form.to.unwrap_or_default();
    let valid = to.starts_with('+') && to.len() > 8 && to[1..].bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    if form.from.is_none() {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        ));
    }
    let Some(body) = form.body else {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            21602,
            "Message body is required.",
        ));
    };
    let mut data = state.data();
    let n = data.next;
    data.next += 1;
    let id = sid("SM", 1_000_000 + n);
    let mut sent = message(&id, &state.sid, 27, &to, &body, "queued");
    sent.insert("price".into(), Value::Null);
    data.messages.put(&id, sent.clone());
    sent.remove("_date");
    Ok((StatusCode::CREATED, Json(Value::Object(sent))).into_response())
}
