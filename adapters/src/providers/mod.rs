//! The provider clients, one module each, and the registry that picks one by app.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use url::Url;

use crate::http::{ProviderError, ProviderHttp};
use crate::provider::Provider;

pub mod hubspot;

/// Where each provider's API lives. Defaults are the providers' public hosts; tests and
/// private deployments point them elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub hubspot_api: Url,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            hubspot_api: Url::parse(hubspot::DEFAULT_API_BASE).expect("a valid default URL"),
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

pub(crate) fn now_millis() -> i64 {
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
