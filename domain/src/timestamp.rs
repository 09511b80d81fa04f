//! Timestamps with one fixed textual form.
//!
//! Event metadata is hashed in its canonical JSON form, so a timestamp must print the same way
//! after any round trip through storage: always UTC, always six fractional digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, UtcOffset};

/// A UTC instant with microsecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Truncates to microseconds and converts to UTC, so that the value survives a round trip.
    pub fn from_datetime(at: OffsetDateTime) -> Self {
        let at = at.to_offset(UtcOffset::UTC);
        let micros = at.microsecond();
        Self(
            at.replace_nanosecond(micros * 1_000)
                .expect("a whole number of microseconds is a valid nanosecond value"),
        )
    }

    /// The current time. Rules never call this; the edges of the system do.
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    /// From microseconds since the Unix epoch.
    pub fn from_unix_micros(micros: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
            .ok()
            .map(Self)
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(&self) -> i64 {
        i64::try_from(self.0.unix_timestamp_nanos() / 1_000)
            .expect("timestamps stay within the years i64 microseconds can hold")
    }

    pub fn as_datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// This instant moved by `delta`, saturating at the ends of the representable range.
    pub fn plus(&self, delta: Duration) -> Self {
        Self(self.0.saturating_add(delta))
    }

    /// This instant `ago` earlier, saturating at the start of the representable range.
    pub fn minus(&self, ago: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_sub(Duration::try_from(ago).unwrap_or(Duration::MAX)),
        )
    }

    pub fn parse(text: &str) -> Result<Self, time::error::Parse> {
        OffsetDateTime::parse(text, &Rfc3339).map(Self::from_datetime)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        let text = self.0.format(&format).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl FromStr for Timestamp {
    type Err = time::error::Parse;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Text in human-readable formats (JSON, and so the hashed canonical form); microseconds since
/// the epoch in binary ones, which keeps stored records small and quick to decode.
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_i64(self.unix_micros())
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Self::parse(&text).map_err(serde::de::Error::custom)
        } else {
            let micros = i64::deserialize(deserializer)?;
            Self::from_unix_micros(micros)
                .ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn prints_utc_with_six_fraction_digits_and_round_trips() {
        let at = Timestamp::from_datetime(datetime!(2026-11-25 05:06:07.123456789 +02:00));
        assert_eq!(at.to_string(), "2026-11-25T03:06:07.123456Z");
        assert_eq!(Timestamp::parse(&at.to_string()).unwrap(), at);
        let whole = Timestamp::from_datetime(datetime!(2026-01-01 00:00:00 UTC));
        assert_eq!(whole.to_string(), "2026-01-01T00:00:00.000000Z");
        assert_eq!(
            Timestamp::from_unix_micros(whole.unix_micros()),
            Some(whole)
        );
    }
}
