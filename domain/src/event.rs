//! Versioned events and their upcasting.
//!
//! A published event type keeps its name and meaning forever. When its shape must change, the
//! new shape gets the next `schema` number and an upcaster turns every older stored shape into
//! it, one step at a time, before decoding. Code therefore only ever sees the current shape.

use serde_json::Value;

/// Why a stored event could not be turned into a domain event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    #[error("{event_type} schema {schema} is newer than this build understands (up to {known})")]
    FutureSchema {
        event_type: String,
        schema: u32,
        known: u32,
    },
    #[error("{event_type} schema {schema} has no upcaster")]
    NoUpcaster { event_type: String, schema: u32 },
    #[error("{event_type} schema {schema} does not decode: {reason}")]
    Malformed {
        event_type: String,
        schema: u32,
        reason: String,
    },
}

/// An event of an aggregate, with its stable type name and current schema.
pub trait DomainEvent: Sized + Clone + std::fmt::Debug + PartialEq {
    /// The published name, e.g. `IntegrationConnected`.
    fn event_type(&self) -> &'static str;
    /// The current schema number of this type.
    fn schema(&self) -> u32;
    /// The event's data as JSON (without type, schema or metadata).
    fn to_data(&self) -> Value;
    /// The current schema number for a type name, or `None` for a name this aggregate never
    /// published.
    fn current_schema(event_type: &str) -> Option<u32>;
    /// Turns `data` written with `schema` into the shape of `schema + 1`.
    fn upcast_step(event_type: &str, schema: u32, data: Value) -> Result<Value, EventDecodeError>;
    /// Decodes data already in the current shape.
    fn decode_current(event_type: &str, data: Value) -> Result<Self, EventDecodeError>;

    /// Decodes a stored event of any known schema. `Ok(None)` means the type belongs to no
    /// event of this aggregate (a reader may skip it); a known type that cannot be decoded is
    /// an error.
    fn decode(
        event_type: &str,
        schema: u32,
        mut data: Value,
    ) -> Result<Option<Self>, EventDecodeError> {
        let Some(current) = Self::current_schema(event_type) else {
            return Ok(None);
        };
        if schema > current {
            return Err(EventDecodeError::FutureSchema {
                event_type: event_type.to_owned(),
                schema,
                known: current,
            });
        }
        let mut at = schema;
        while at < current {
            data = Self::upcast_step(event_type, at, data)?;
            at += 1;
        }
        Self::decode_current(event_type, data).map(Some)
    }
}

/// Declares an event enum whose variants each wrap one payload struct, with its schema number,
/// and implements [`DomainEvent`] for it. Upcasters are supplied as a function. Beside it, a
/// fieldless `kind` enum names each type without its data: what a reader that only routes
/// events by type matches on, so that no code outside the domain spells a type name.
macro_rules! event_enum {
    (
        $(#[$doc:meta])*
        $name:ident, kind = $kind:ident, upcast = $upcast:path, {
            $( $(#[$vdoc:meta])* $variant:ident($payload:ty) = $schema:literal ),+ $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $name {
            $( $(#[$vdoc])* $variant($payload) ),+
        }

        #[doc = concat!("The type of a [`", stringify!($name), "`], without its data.")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $kind {
            $( $variant ),+
        }

        impl $kind {
            /// The kind a stored event's type name stands for; `None` for a name this
            /// aggregate never published. Names never change meaning, so no upcasting is
            /// needed to route by kind.
            pub fn of(event_type: &str) -> Option<Self> {
                match event_type { $( stringify!($variant) => Some(Self::$variant), )+ _ => None }
            }

            /// The published name.
            pub fn name(self) -> &'static str {
                match self { $( Self::$variant => stringify!($variant) ),+ }
            }
        }

        impl $name {
            /// This event's type, without its data.
            pub fn kind(&self) -> $kind {
                match self { $( Self::$variant(_) => $kind::$variant ),+ }
            }
        }

        impl $crate::event::DomainEvent for $name {
            fn event_type(&self) -> &'static str {
                match self { $( Self::$variant(_) => stringify!($variant) ),+ }
            }

            fn schema(&self) -> u32 {
                match self { $( Self::$variant(_) => $schema ),+ }
            }

            fn to_data(&self) -> serde_json::Value {
                let value = match self { $( Self::$variant(payload) => serde_json::to_value(payload) ),+ };
                value.expect("event payloads are plain structs with string map keys")
            }

            fn current_schema(event_type: &str) -> Option<u32> {
                match event_type { $( stringify!($variant) => Some($schema), )+ _ => None }
            }

            fn upcast_step(
                event_type: &str,
                schema: u32,
                data: serde_json::Value,
            ) -> Result<serde_json::Value, $crate::event::EventDecodeError> {
                $upcast(event_type, schema, data)
            }

            fn decode_current(
                event_type: &str,
                data: serde_json::Value,
            ) -> Result<Self, $crate::event::EventDecodeError> {
                let schema = Self::current_schema(event_type).unwrap_or(0);
                let malformed = |error: serde_json::Error| $crate::event::EventDecodeError::Malformed {
                    event_type: event_type.to_owned(),
                    schema,
                    reason: error.to_string(),
                };
                match event_type {
                    $( stringify!($variant) => serde_json::from_value(data).map(Self::$variant).map_err(malformed), )+
                    other => Err($crate::event::EventDecodeError::Malformed {
                        event_type: other.to_owned(),
                        schema,
                        reason: "unknown event type".to_owned(),
                    }),
                }
            }
        }
    };
}

pub(crate) use event_enum;

/// For event enums that have never changed shape.
pub(crate) fn no_upcasters(
    event_type: &str,
    schema: u32,
    _data: Value,
) -> Result<Value, EventDecodeError> {
    Err(EventDecodeError::NoUpcaster {
        event_type: event_type.to_owned(),
        schema,
    })
}
