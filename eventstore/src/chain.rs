//! The per-stream hash chain.
//!
//! `hash(n) = SHA-256(hash(n-1) ‖ canonical(n))`, with 32 zero bytes before the first event.
//! `canonical(n)` is the RFC 8785 (JCS) form of the JSON object
//! `{"data", "id", "metadata", "schema", "stream", "type", "version"}`. It deliberately leaves
//! out the global position, which differs between backends, so that a stream's chain is the
//! same on sled, on JetStream and in an export.

use std::collections::HashMap;

use domain::{EventId, Metadata, StreamName};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::types::RecordedEvent;
use crate::EventStore;

pub use crate::hash::ChainHash;

/// The canonical form of an event's data, as stored and hashed.
pub fn canonical_data(data: &serde_json::Value) -> Result<String, StoreError> {
    if already_canonical(data) {
        return serde_json::to_string(data)
            .map_err(|error| StoreError::InvalidData(error.to_string()));
    }
    serde_json_canonicalizer::to_string(data)
        .map_err(|error| StoreError::InvalidData(error.to_string()))
}

/// The largest integer an IEEE double holds exactly: RFC 8785 writes numbers as doubles.
const EXACT_INTEGER: u64 = 1 << 53;

/// Whether `value`'s plain serialization already is its RFC 8785 form, as it is for what
/// events carry: objects sort their keys by bytes (a `BTreeMap`), which is the canonical
/// UTF-16 order for ASCII keys; strings are escaped as ECMAScript escapes them; integers up
/// to 2^53 are written alike. Floating-point numbers (written as ECMAScript writes doubles),
/// larger integers and non-ASCII keys take the canonicalizer.
fn already_canonical(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(number) => {
            number.as_u64().is_some_and(|n| n <= EXACT_INTEGER)
                || number
                    .as_i64()
                    .is_some_and(|n| n.unsigned_abs() <= EXACT_INTEGER)
        }
        Value::Array(items) => items.iter().all(already_canonical),
        Value::Object(members) => members
            .iter()
            .all(|(key, value)| key.is_ascii() && already_canonical(value)),
    }
}

/// The canonical bytes of an event up to, not including, its version: `version` is the last
/// key in canonical order, so everything before it can be computed before the version is
/// known (outside the log's single writer). Followed by [`canonical_suffix`], it makes the
/// whole canonical form.
pub fn canonical_prefix(
    id: &EventId,
    stream: &StreamName,
    event_type: &str,
    schema: u32,
    canonical_data: &str,
    metadata: &Metadata,
) -> Result<Vec<u8>, StoreError> {
    let metadata = canonical_metadata(metadata)?;
    Ok(canonical_prefix_with(
        id,
        stream,
        event_type,
        schema,
        canonical_data,
        &metadata,
    ))
}

/// The canonical form of event metadata. Events of one batch usually share it, so writers
/// compute it once per batch and use [`canonical_prefix_with`].
///
/// Metadata has a fixed shape of strings and nulls, so its canonical form is written directly,
/// keys in RFC 8785 order; a test holds it equal to the general canonicalizer's output.
pub fn canonical_metadata(metadata: &Metadata) -> Result<String, StoreError> {
    use std::fmt::Write;
    let quoted = |text: &str| serde_json::to_string(text).expect("a string always serializes");
    let (actor_key, actor) = match &metadata.actor {
        domain::Actor::User(user) => ("user", quoted(user.as_str())),
        domain::Actor::System(reason) => ("system", quoted(reason)),
    };
    let optional = |value: Option<String>| value.map_or_else(|| "null".to_owned(), |v| quoted(&v));
    let mut text = String::with_capacity(256);
    write!(
        text,
        r#"{{"actor":{{"{actor_key}":{actor}}},"causation_id":{},"correlation_id":"{}","occurred_at":"{}","owner":{},"workspace":{}}}"#,
        optional(metadata.causation_id.map(|id| id.to_string())),
        metadata.correlation_id,
        metadata.occurred_at,
        optional(metadata.owner.as_ref().map(ToString::to_string)),
        quoted(metadata.workspace.as_str()),
    )
    .expect("writing to a String cannot fail");
    Ok(text)
}

/// [`canonical_prefix`] with the metadata already canonical.
pub fn canonical_prefix_with(
    id: &EventId,
    stream: &StreamName,
    event_type: &str,
    schema: u32,
    canonical_data: &str,
    metadata: &str,
) -> Vec<u8> {
    let quoted = |text: &str| serde_json::to_string(text).expect("a string always serializes");
    // Keys in RFC 8785 order (all ASCII, so byte order is UTF-16 order).
    let text = format!(
        r#"{{"data":{canonical_data},"id":"{id}","metadata":{metadata},"schema":{schema},"stream":{},"type":{},"version":"#,
        quoted(stream.as_str()),
        quoted(event_type),
    );
    text.into_bytes()
}

/// What an append computes of each event before its version is known: the data in canonical
/// form and the canonical bytes up to the version. Events of one batch usually share their
/// metadata, whose canonical form is then computed once.
#[derive(Debug)]
pub struct CanonicalParts {
    pub data: String,
    pub prefix: Vec<u8>,
}

/// [`CanonicalParts`] of each event of a batch for `stream`.
pub fn canonical_batch(
    stream: &StreamName,
    events: &[crate::types::NewEvent],
) -> Result<Vec<CanonicalParts>, StoreError> {
    let mut parts = Vec::with_capacity(events.len());
    let mut last_metadata: Option<(&Metadata, String)> = None;
    for event in events {
        if !matches!(&last_metadata, Some((metadata, _)) if **metadata == event.metadata) {
            last_metadata = Some((&event.metadata, canonical_metadata(&event.metadata)?));
        }
        let (_, metadata) = last_metadata.as_ref().expect("set just above");
        let data = canonical_data(&event.data)?;
        let prefix = canonical_prefix_with(
            &event.id,
            stream,
            &event.event_type,
            event.schema,
            &data,
            metadata,
        );
        parts.push(CanonicalParts { data, prefix });
    }
    Ok(parts)
}

/// The end of the canonical form: the version and the closing brace.
pub fn canonical_suffix(version: u64) -> String {
    format!("{version}}}")
}

/// The canonical bytes of an event, given its data already in canonical form.
pub fn canonical_bytes(
    id: &EventId,
    stream: &StreamName,
    version: u64,
    event_type: &str,
    schema: u32,
    canonical_data: &str,
    metadata: &Metadata,
) -> Result<Vec<u8>, StoreError> {
    let mut bytes = canonical_prefix(id, stream, event_type, schema, canonical_data, metadata)?;
    bytes.extend_from_slice(canonical_suffix(version).as_bytes());
    Ok(bytes)
}

/// The link after `previous` for an event whose canonical form is `prefix` then the suffix
/// of `version`, without assembling the bytes.
pub fn link_parts(previous: &ChainHash, prefix: &[u8], version: u64) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(previous.0);
    hasher.update(prefix);
    hasher.update(canonical_suffix(version).as_bytes());
    ChainHash(hasher.finalize().into())
}

/// The next link of a chain.
pub fn link(previous: &ChainHash, canonical: &[u8]) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(previous.0);
    hasher.update(canonical);
    ChainHash(hasher.finalize().into())
}

/// Recomputes an event's hash from its content and the previous link.
pub fn recompute(previous: &ChainHash, event: &RecordedEvent) -> Result<ChainHash, StoreError> {
    let data = canonical_data(&event.data()?)?;
    let bytes = canonical_bytes(
        &event.id,
        &event.stream,
        event.version,
        &event.event_type,
        event.schema,
        &data,
        &event.metadata,
    )?;
    Ok(link(previous, &bytes))
}

/// The first place a chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokenLink {
    pub version: u64,
    pub position: u64,
    pub reason: String,
}

/// The outcome of checking one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub stream: StreamName,
    pub events: u64,
    /// The last good link: the head of the stream when nothing is broken.
    pub head: ChainHash,
    pub broken: Option<BrokenLink>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// One stream's chain as far as it has been checked, event by event.
#[derive(Clone, Debug)]
struct ChainCheck {
    report: VerifyReport,
}

impl ChainCheck {
    fn new(stream: StreamName) -> Self {
        Self {
            report: VerifyReport {
                stream,
                events: 0,
                head: ChainHash::GENESIS,
                broken: None,
            },
        }
    }

    /// Checks the stream's next event: its version follows, it is the stream's, and its hash
    /// is the one its content and the previous link make. False once the chain is broken.
    fn next(&mut self, event: &RecordedEvent) -> bool {
        let report = &mut self.report;
        if report.broken.is_some() {
            return false;
        }
        let expected_version = report.events + 1;
        let broken = |reason: String| BrokenLink {
            version: event.version,
            position: event.position,
            reason,
        };
        let failure = if event.version != expected_version {
            Some(broken(format!(
                "version {} follows version {}",
                event.version, report.events
            )))
        } else if event.stream != report.stream {
            Some(broken(format!("event belongs to stream {}", event.stream)))
        } else {
            match recompute(&report.head, event) {
                Ok(hash) if hash == event.hash => None,
                Ok(hash) => Some(broken(format!(
                    "stored hash {} but content hashes to {hash}",
                    event.hash
                ))),
                Err(error) => Some(broken(error.to_string())),
            }
        };
        if failure.is_some() {
            report.broken = failure;
            return false;
        }
        report.head = event.hash;
        report.events = expected_version;
        true
    }
}

/// Checks the chain of `events`, one stream's in version order. With `from_first_kept`, the
/// stream's oldest events may be gone (aged out): the first event given is taken at its word
/// and every later link must follow from it; otherwise the chain must start at version 1.
pub(crate) fn check_events(
    stream: StreamName,
    events: &[RecordedEvent],
    from_first_kept: bool,
) -> VerifyReport {
    let mut check = ChainCheck::new(stream);
    let mut rest = events;
    if let (true, Some(first)) = (from_first_kept, events.first()) {
        check.report.events = first.version;
        check.report.head = first.hash;
        rest = &events[1..];
    }
    for event in rest {
        if !check.next(event) {
            break;
        }
    }
    check.report
}

/// Reads `stream` from its start and checks every link: versions 1, 2, 3 … without a gap, and
/// each stored hash equal to the one recomputed from the event's content.
pub async fn verify_stream<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamName,
) -> Result<VerifyReport, StoreError> {
    const PAGE: usize = 1024;
    let mut check = ChainCheck::new(stream.clone());
    loop {
        let page = store
            .read_stream(stream, check.report.events + 1, PAGE)
            .await?;
        let page_len = page.len();
        for event in &page {
            if !check.next(event) {
                return Ok(check.report);
            }
        }
        if page_len < PAGE {
            return Ok(check.report);
        }
    }
}

/// Every stream's chain checked in one pass over the log: each event is checked against the
/// one before it in its stream as the log is read, so verifying the whole log reads it once,
/// however many streams it holds. Feed it the log in position order with [`LogVerifier::next`].
#[derive(Debug, Default)]
pub struct LogVerifier {
    at: HashMap<StreamName, usize>,
    checks: Vec<ChainCheck>,
}

impl LogVerifier {
    /// Checks the next event of the log. Whether it is the first of its stream.
    pub fn next(&mut self, event: &RecordedEvent) -> bool {
        let (index, first) = match self.at.get(&event.stream) {
            Some(index) => (*index, false),
            None => {
                self.at.insert(event.stream.clone(), self.checks.len());
                self.checks.push(ChainCheck::new(event.stream.clone()));
                (self.checks.len() - 1, true)
            }
        };
        self.checks[index].next(event);
        first
    }

    /// Each stream's report, as [`verify_stream`] would make it of the log read so far, in the
    /// order the streams first appeared.
    pub fn finish(self) -> Vec<VerifyReport> {
        self.checks.into_iter().map(|check| check.report).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON of every kind: integers small and large, floats, strings with control and
    /// non-ASCII characters, keys ASCII or not.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[\\x00-\\x7f\u{e9}\u{2028}\u{fffd}\u{1f600}]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    "[a-zA-Z_\\x00-\\x1f\u{e9}\u{ff5e}\u{1f600}]{0,6}",
                    inner,
                    0..6
                )
                .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_plain_serialization_is_taken_only_where_it_is_canonical(value in any_json()) {
            let canonical = serde_json_canonicalizer::to_string(&value).unwrap();
            prop_assert_eq!(canonical_data(&value).unwrap(), canonical);
        }
    }

    #[test]
    fn keys_whose_byte_order_is_not_their_utf16_order_are_sorted_canonically() {
        // U+FF5E sorts before U+1F600 by bytes, after it by UTF-16 code units.
        let value = serde_json::json!({"\u{ff5e}": 1, "\u{1f600}": 2, "a": 3});
        assert_eq!(
            canonical_data(&value).unwrap(),
            "{\"a\":3,\"\u{1f600}\":2,\"\u{ff5e}\":1}"
        );
        let float = serde_json::json!({"a": 1.5e300});
        assert_eq!(canonical_data(&float).unwrap(), "{\"a\":1.5e+300}");
        let big = serde_json::json!({"n": u64::MAX});
        assert_eq!(
            canonical_data(&big).unwrap(),
            "{\"n\":18446744073709552000}"
        );
    }

    #[test]
    fn the_canonical_form_is_rfc_8785_and_its_parts_hash_like_the_whole() {
        let metadata: Metadata = serde_json::from_value(serde_json::json!({
            "workspace": "acme", "owner": null, "actor": {"system": "t"},
            "correlation_id": "0192f1c4-6a8e-7cc1-9a4e-3c1d2b7e9f10", "causation_id": null,
            "occurred_at": "2026-01-01T00:00:00.000000Z"
        }))
        .unwrap();
        let id: EventId = "0192f1c4-6a8e-7cc1-9a4e-3c1d2b7e9f11".parse().unwrap();
        let stream = StreamName::from_stored("integration-x");
        let data = canonical_data(&serde_json::json!({"b": 1.0, "a": [true, "é\u{1}"], "c": 1e21}))
            .unwrap();
        assert_eq!(data, r#"{"a":[true,"é\u0001"],"b":1,"c":1e+21}"#);
        let whole = canonical_bytes(&id, &stream, 12, "T", 1, &data, &metadata).unwrap();
        let text = String::from_utf8(whole.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"data":{"a""#) && text.ends_with(r#","type":"T","version":12}"#),
            "{text}"
        );
        assert!(text.contains(
            r#""metadata":{"actor":{"system":"t"},"causation_id":null,"correlation_id":"#
        ));
        let prefix = canonical_prefix(&id, &stream, "T", 1, &data, &metadata).unwrap();
        let general = |m: &Metadata| serde_json_canonicalizer::to_string(m).unwrap();
        assert_eq!(canonical_metadata(&metadata).unwrap(), general(&metadata));
        let personal = Metadata {
            owner: Some("max".parse().unwrap()),
            actor: domain::Actor::User("max".parse().unwrap()),
            causation_id: Some(uuid::Uuid::nil()),
            ..metadata.clone()
        };
        assert_eq!(canonical_metadata(&personal).unwrap(), general(&personal));
        let awkward = Metadata {
            actor: domain::Actor::System("quote \" and \u{7f} and é and \u{1F600}".into()),
            ..metadata.clone()
        };
        assert_eq!(canonical_metadata(&awkward).unwrap(), general(&awkward));
        assert_eq!(
            link_parts(&ChainHash::GENESIS, &prefix, 12),
            link(&ChainHash::GENESIS, &whole)
        );
    }
}
