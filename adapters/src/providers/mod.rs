//! The provider clients, one module each, and the registry that picks one by app.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use url::Url;

use crate::http::{ProviderError, ProviderHttp};
use crate::provider::Provider;

pub mod caldav;
pub mod gmail;
pub mod google_calendar;
pub mod hubspot;
pub mod salesforce;
pub mod todoist;
pub mod twilio;
pub mod zendesk;

/// Where each provider's API lives. Defaults are the providers' public hosts; tests and
/// private deployments point them elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub hubspot_api: Url,
    pub google_calendar_api: Url,
    pub gmail_api: Url,
    pub todoist_api: Url,
    /// `{subdomain}` stands for the connection's subdomain.
    pub zendesk_api_template: String,
    /// Each Twilio region's API host.
    pub twilio_regions: BTreeMap<String, Url>,
}

fn default_url(text: &str) -> Url {
    Url::parse(text).expect("a valid default URL")
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            hubspot_api: default_url(hubspot::DEFAULT_API_BASE),
            google_calendar_api: default_url(google_calendar::DEFAULT_API_BASE),
            gmail_api: default_url(gmail::DEFAULT_API_BASE),
            todoist_api: default_url(todoist::DEFAULT_API_BASE),
            zendesk_api_template: zendesk::DEFAULT_API_TEMPLATE.to_owned(),
            twilio_regions: twilio::Twilio::default_regions(),
        }
    }
}

/// Every provider client, by app id.
#[derive(Clone, Debug)]
pub struct Providers {
    by_app: BTreeMap<&'static str, Arc<dyn Provider>>,
}

impl Providers {
    pub fn new(endpoints: &Endpoints, http: &ProviderHttp) -> Self {
        let mut by_app: BTreeMap<&'static str, Arc<dyn Provider>> = BTreeMap::new();
        let hubspot = hubspot::HubSpot::new(endpoints.hubspot_api.clone(), http.clone());
        by_app.insert("hubspot", Arc::new(hubspot));
        by_app.insert(
            "google-calendar",
            Arc::new(google_calendar::GoogleCalendar::new(
                endpoints.google_calendar_api.clone(),
                http.clone(),
            )),
        );
        by_app.insert(
            "gmail",
            Arc::new(gmail::Gmail::new(endpoints.gmail_api.clone(), http.clone())),
        );
        by_app.insert("caldav", Arc::new(caldav::CalDav::new(http.clone())));
        by_app.insert(
            "salesforce",
            Arc::new(salesforce::Salesforce::new(http.clone())),
        );
        by_app.insert(
            "todoist",
            Arc::new(todoist::Todoist::new(
                endpoints.todoist_api.clone(),
                http.clone(),
            )),
        );
        by_app.insert(
            "zendesk",
            Arc::new(zendesk::Zendesk::new(
                endpoints.zendesk_api_template.clone(),
                http.clone(),
            )),
        );
        by_app.insert(
            "twilio",
            Arc::new(twilio::Twilio::new(
                endpoints.twilio_regions.clone(),
                http.clone(),
            )),
        );
        Self { by_app }
    }

    pub fn get(&self, app: &str) -> Option<&Arc<dyn Provider>> {
        self.by_app.get(app)
    }
}

/// `path` under `base`, whether or not `base` ends with a slash.
pub(crate) fn endpoint(base: &Url, path: &str) -> Result<Url, ProviderError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let with_slash = format!("{}/", base.path());
        base.set_path(&with_slash);
    }
    base.join(path.trim_start_matches('/'))
        .map_err(|error| ProviderError::Misconfigured(format!("bad provider URL {path}: {error}")))
}

/// A field that must be a string (or a number, which some APIs use for ids).
pub(crate) fn string_field(item: &Value, name: &str) -> Result<String, ProviderError> {
    match item.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        _ => Err(ProviderError::protocol(format!("an item has no `{name}`"))),
    }
}

/// A refusal of a tool's arguments, before any call to the provider.
pub(crate) fn bad_arguments(detail: impl Into<String>) -> ProviderError {
    ProviderError::Rejected {
        status: 400,
        detail: detail.into(),
    }
}

/// A string argument of a tool, or a refusal naming it.
pub(crate) fn str_argument<'a>(
    arguments: &'a Value,
    tool: &str,
    name: &str,
) -> Result<&'a str, ProviderError> {
    arguments
        .get(name)
        .and_then(Value::as_str)
        .filter(|value| !value.trim().is_empty())
        .ok_or_else(|| bad_arguments(format!("{tool} needs a `{name}` string")))
}

/// `Ok` when `object` is the one object `app` syncs (`known`), else a refusal naming it.
pub(crate) fn only_object(app: &str, object: &str, known: &str) -> Result<(), ProviderError> {
    if object == known {
        Ok(())
    } else {
        Err(bad_arguments(format!("{app} has no {object}")))
    }
}

/// The fixed fields of an app's one object.
pub(crate) fn fixed_fields(
    app: &str,
    object: &str,
    known: &str,
    fields: &[&str],
) -> Result<Vec<String>, ProviderError> {
    only_object(app, object, known)?;
    Ok(fields.iter().map(|f| (*f).to_owned()).collect())
}

/// A refusal of a tool the app does not have.
pub(crate) fn unknown_tool(app: &str, tool: &str) -> ProviderError {
    bad_arguments(format!("{app} has no tool {tool}"))
}

/// A stable identifier derived from an idempotency key: lowercase hex, `len` characters at
/// most 64. The same key always names the same object at the provider.
pub(crate) fn id_from_key(key: &str, len: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut text = hex::encode(digest);
    text.truncate(len.min(64));
    text
}

/// Now, in milliseconds since the Unix epoch, as the providers write times.
pub fn now_millis() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_join_under_a_base_with_or_without_a_slash() {
        let with = Url::parse("http://127.0.0.1:9/hubspot/").expect("url");
        let without = Url::parse("http://127.0.0.1:9/hubspot").expect("url");
        for base in [with, without] {
            assert_eq!(
                endpoint(&base, "/crm/v3/objects/contacts")
                    .expect("joins")
                    .as_str(),
                "http://127.0.0.1:9/hubspot/crm/v3/objects/contacts"
            );
        }
    }
}
