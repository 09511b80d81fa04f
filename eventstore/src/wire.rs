//! The wire format of change events: how an event travels on `HARMONY_EVENTS` and to every
//! downstream consumer.
//!
//! A message body is one JSON object in the structured mode of CloudEvents 1.0: the required
//! attributes `specversion`, `id`, `source` and `type`, the optional `subject`, `time` and
//! `datacontenttype`, the event's `data`, and extension attributes (lower-case names, primitive
//! values, as the specification asks) for everything the log needs to rebuild the event and its
//! hash chain exactly:
//!
//! | attribute | meaning |
//! |---|---|
//! | `id` | the event id (UUID v7); the idempotency key, also sent as `Nats-Msg-Id` |
//! | `source` | `/workspaces/<workspace>` |
//! | `type` | the event type, e.g. `IntegrationConnected` |
//! | `subject` | the stream: `integration-<uuid>` or `workspace-<id>` |
//! | `time` | when it happened (`metadata.occurred_at`), RFC 3339 in UTC with microseconds |
//! | `datacontenttype` | `application/json` |
//! | `data` | the event's data, in RFC 8785 canonical form |
//! | `streamversion` | the event's version in its stream (1, 2, 3 …) |
//! | `eventschema` | the schema number of `data` (older ones are upcast when read) |
//! | `chainhash` | the stream's SHA-256 chain after this event, hex |
//! | `workspace`, `owner` | the workspace, and the owner of a personal integration (absent otherwise) |
//! | `actor` | `user:<id>` or `system:<reason>` |
//! | `correlationid`, `causationid` | what the event belongs to and what caused it (`causationid` may be absent) |
//!
//! On JetStream the subject is `harmony.events.<workspace>.<owner>.<integration>.<type>`.
//! The headers repeat what a consumer may route on without parsing the body:
//! `Harmony-Event-Type`, `Harmony-Event-Id`, `Harmony-Event-Schema`, and `Content-Type:
//! application/cloudevents+json`. A published attribute never changes meaning; new ones may be
//! added, and consumers ignore what they do not know.

use std::borrow::Cow;

use domain::{Actor, EventId, Metadata, StreamName, Timestamp, UserId, WorkspaceId};
use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;
use serde_json::value::RawValue;

use crate::chain::ChainHash;
use crate::error::StoreError;
use crate::types::RecordedEvent;

/// The CloudEvents version of the envelope.
pub const SPEC_VERSION: &str = "1.0";
/// The `Content-Type` header of a structured-mode CloudEvent in JSON.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// Header carrying the event type.
pub const HEADER_EVENT_TYPE: &str = "Harmony-Event-Type";
/// Header carrying the event id.
pub const HEADER_EVENT_ID: &str = "Harmony-Event-Id";
/// Header carrying the schema number of the event's data.
pub const HEADER_EVENT_SCHEMA: &str = "Harmony-Event-Schema";

/// The parts of an event the envelope is made from, borrowed from wherever they live.
#[derive(Debug, Clone, Copy)]
pub struct EventParts<'a> {
    pub id: &'a EventId,
    pub stream: &'a StreamName,
    pub version: u64,
    pub event_type: &'a str,
    pub schema: u32,
    /// The data in RFC 8785 canonical form.
    pub canonical_data: &'a str,
    pub metadata: &'a Metadata,
    pub hash: &'a ChainHash,
}

impl<'a> From<&'a RecordedEvent> for EventParts<'a> {
    fn from(event: &'a RecordedEvent) -> Self {
        Self {
            id: &event.id,
            stream: &event.stream,
            version: event.version,
            event_type: &event.event_type,
            schema: event.schema,
            canonical_data: &event.data_json,
            metadata: &event.metadata,
            hash: &event.hash,
        }
    }
}

/// The envelope's shape, as a serializer would write it.
#[cfg(test)]
#[derive(Serialize)]
struct Outgoing<'a> {
    specversion: &'static str,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    streamversion: u64,
    eventschema: u32,
    chainhash: String,
    workspace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    actor: String,
    correlationid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<String>,
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    specversion: Cow<'a, str>,
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    event_type: String,
    subject: Cow<'a, str>,
    time: Cow<'a, str>,
    streamversion: u64,
    eventschema: u32,
    chainhash: Cow<'a, str>,
    workspace: Cow<'a, str>,
    #[serde(default)]
    owner: Option<Cow<'a, str>>,
    actor: Cow<'a, str>,
    correlationid: Cow<'a, str>,
    #[serde(default)]
    causationid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The `source` attribute of a workspace's events.
pub fn source(workspace: &WorkspaceId) -> String {
    format!("/workspaces/{workspace}")
}

/// The actor as one string: `user:<id>` or `system:<reason>`.
pub fn actor_text(actor: &Actor) -> String {
    match actor {
        Actor::User(user) => format!("user:{user}"),
        Actor::System(reason) => format!("system:{reason}"),
    }
}

fn parse_actor(text: &str) -> Result<Actor, String> {
    match text.split_once(':') {
        Some(("user", user)) => user
            .parse::<UserId>()
            .map(Actor::User)
            .map_err(|error| format!("actor: {error}")),
        Some(("system", reason)) => Ok(Actor::System(reason.to_owned())),
        _ => Err(format!("actor {text:?} is neither user:… nor system:…")),
    }
}

/// The JSON body of an event.
///
/// Written field by field rather than through a serializer: `data` is already canonical JSON,
/// and most other values (ids, slugs, numbers, hex, timestamps) need no escaping, so this is
/// a few copies into one buffer. A test holds it equal to the serialized form.
pub fn encode(parts: EventParts<'_>) -> Result<Vec<u8>, StoreError> {
    use std::io::Write;
    let metadata = parts.metadata;
    let mut out = Vec::with_capacity(parts.canonical_data.len() + 640);
    let string = |out: &mut Vec<u8>, text: &str| {
        serde_json::to_writer(out, text).expect("writing a string to a Vec cannot fail");
    };
    let io = |error: std::io::Error| StoreError::InvalidData(error.to_string());
    write!(
        out,
        r#"{{"specversion":"{SPEC_VERSION}","id":"{}","source":"/workspaces/{}","type":"#,
        parts.id, metadata.workspace
    )
    .map_err(io)?;
    string(&mut out, parts.event_type);
    out.extend_from_slice(br#","subject":"#);
    string(&mut out, parts.stream.as_str());
    write!(
        out,
        r#","time":"{}","datacontenttype":"application/json","streamversion":{},"eventschema":{},"chainhash":"{}","workspace":"{}""#,
        metadata.occurred_at,
        parts.version,
        parts.schema,
        parts.hash,
        metadata.workspace
    )
    .map_err(io)?;
    if let Some(owner) = &metadata.owner {
        write!(out, r#","owner":"{owner}""#).map_err(io)?;
    }
    out.extend_from_slice(br#","actor":"#);
    string(&mut out, &actor_text(&metadata.actor));
    write!(out, r#","correlationid":"{}""#, metadata.correlation_id).map_err(io)?;
    if let Some(causation) = &metadata.causation_id {
        write!(out, r#","causationid":"{causation}""#).map_err(io)?;
    }
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(parts.canonical_data.as_bytes());
    out.push(b'}');
    Ok(out)
}

/// [`encode`] through serde, the reference the fast form is checked against.
#[cfg(test)]
fn encode_serialized(parts: EventParts<'_>) -> Vec<u8> {
    let data: &RawValue = serde_json::from_str(parts.canonical_data).unwrap();
    let metadata = parts.metadata;
    serde_json::to_vec(&Outgoing {
        specversion: SPEC_VERSION,
        id: parts.id.to_string(),
        source: source(&metadata.workspace),
        event_type: parts.event_type,
        subject: parts.stream.as_str(),
        time: metadata.occurred_at.to_string(),
        datacontenttype: "application/json",
        streamversion: parts.version,
        eventschema: parts.schema,
        chainhash: parts.hash.to_hex(),
        workspace: metadata.workspace.as_str(),
        owner: metadata.owner.as_ref().map(UserId::as_str),
        actor: actor_text(&metadata.actor),
        correlationid: metadata.correlation_id.to_string(),
        causationid: metadata.causation_id.map(|id| id.to_string()),
        data,
    })
    .unwrap()
}

/// Rebuilds the event from a body, at `position`. The error says what is wrong with the body.
pub fn decode(body: &[u8], position: u64) -> Result<RecordedEvent, StoreError> {
    decode_inner(body, position).map_err(|reason| StoreError::Corrupt { position, reason })
}

fn decode_inner(body: &[u8], position: u64) -> Result<RecordedEvent, String> {
    let incoming: Incoming<'_> =
        serde_json::from_slice(body).map_err(|error| format!("not a Harmony event: {error}"))?;
    if incoming.specversion != SPEC_VERSION {
        return Err(format!(
            "CloudEvents specversion {} is not {SPEC_VERSION}",
            incoming.specversion
        ));
    }
    let uuid = |what: &str, text: &str| {
        uuid::Uuid::parse_str(text).map_err(|error| format!("{what}: {error}"))
    };
    let mut hash = [0u8; 32];
    hex::decode_to_slice(incoming.chainhash.as_bytes(), &mut hash)
        .map_err(|error| format!("chainhash: {error}"))?;
    let metadata = Metadata {
        workspace: WorkspaceId::try_from(incoming.workspace.into_owned())
            .map_err(|error| format!("workspace: {error}"))?,
        owner: incoming
            .owner
            .map(|owner| UserId::try_from(owner.into_owned()))
            .transpose()
            .map_err(|error| format!("owner: {error}"))?,
        actor: parse_actor(&incoming.actor)?,
        correlation_id: uuid("correlationid", &incoming.correlationid)?,
        causation_id: incoming
            .causationid
            .map(|id| uuid("causationid", &id))
            .transpose()?,
        occurred_at: Timestamp::parse(&incoming.time).map_err(|error| format!("time: {error}"))?,
    };
    Ok(RecordedEvent {
        id: EventId(uuid("id", &incoming.id)?),
        stream: StreamName::from_stored(incoming.subject.into_owned()),
        version: incoming.streamversion,
        position,
        event_type: incoming.event_type,
        schema: incoming.eventschema,
        data_json: incoming.data.get().to_owned(),
        metadata,
        hash: ChainHash(hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(owner: Option<&str>, actor: Actor, causation: bool) -> RecordedEvent {
        RecordedEvent {
            id: EventId::new(),
            stream: StreamName::from_stored("integration-0192f1c4-6a8e-7cc1-9a4e-3c1d2b7e9f10"),
            version: 7,
            position: 42,
            event_type: "SyncCompleted".into(),
            schema: 2,
            data_json: crate::chain::canonical_data(
                &serde_json::json!({"b": [1, 2.5], "a": "é \"q\""}),
            )
            .unwrap(),
            metadata: Metadata {
                workspace: "acme".parse().unwrap(),
                owner: owner.map(|o| o.parse().unwrap()),
                actor,
                correlation_id: uuid::Uuid::now_v7(),
                causation_id: causation.then(uuid::Uuid::now_v7),
                occurred_at: Timestamp::now(),
            },
            hash: ChainHash([9; 32]),
        }
    }

    #[test]
    fn an_event_round_trips_through_its_envelope() {
        for event in [
            sample(
                None,
                Actor::System("scheduled sync: every 15 min".into()),
                false,
            ),
            sample(Some("max"), Actor::User("max".parse().unwrap()), true),
        ] {
            let body = encode(EventParts::from(&event)).unwrap();
            assert_eq!(body, encode_serialized(EventParts::from(&event)));
            assert_eq!(decode(&body, 42).unwrap(), event);
        }
    }

    #[test]
    fn the_envelope_carries_the_cloudevents_attributes() {
        let event = sample(Some("max"), Actor::User("max".parse().unwrap()), true);
        let body: serde_json::Value =
            serde_json::from_slice(&encode(EventParts::from(&event)).unwrap()).unwrap();
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], event.id.to_string());
        assert_eq!(body["source"], "/workspaces/acme");
        assert_eq!(body["type"], "SyncCompleted");
        assert_eq!(body["subject"], event.stream.as_str());
        assert_eq!(body["time"], event.metadata.occurred_at.to_string());
        assert_eq!(body["datacontenttype"], "application/json");
        assert_eq!(body["data"]["a"], "é \"q\"");
        assert_eq!(body["streamversion"], 7);
        assert_eq!(body["owner"], "max");
        assert_eq!(body["actor"], "user:max");
        for key in body.as_object().unwrap().keys() {
            assert!(
                key.len() <= 20 && key.bytes().all(|b| b.is_ascii_lowercase()),
                "{key} is not a valid CloudEvents attribute name"
            );
        }
    }

    #[test]
    fn a_foreign_body_is_named_corrupt_at_its_position() {
        for body in [&b"not json"[..], br#"{"specversion":"1.0","id":"x"}"#] {
            let error = decode(body, 5).unwrap_err();
            assert!(
                matches!(error, StoreError::Corrupt { position: 5, .. }),
                "{error:?}"
            );
        }
    }
}
