//! Instants as nanoseconds since the Unix epoch, printed in RFC 3339.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant, in nanoseconds since 1970-01-01T00:00:00Z. Serialised as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}")))
    }
}

/// An RFC 3339 string, as it is serialised.
impl schemars::JsonSchema for Timestamp {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }
}

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_nanos() as i64),
            Err(e) => Timestamp(-(e.duration().as_nanos() as i64)),
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(self.0.unsigned_abs())
        }
    }

    /// Parse RFC 3339 (`2026-11-27T10:15:03Z`, with fractions, `Z` or a `±HH:MM` offset).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let s = s.trim();
        let (base, offset_ns) = split_offset(s)?;
        let t = humantime::parse_rfc3339_weak(base).ok()?;
        Some(Timestamp(Self::from_system(t).0 - offset_ns))
    }

    /// Seconds elapsed from `self` to `later` (0 when `later` is earlier).
    pub fn seconds_until(self, later: Timestamp) -> f64 {
        (later.0 - self.0).max(0) as f64 / 1e9
    }
}

/// Split a trailing `Z` or `±HH:MM` off an RFC 3339 time; returns the offset in nanoseconds.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(base) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Some((base, 0));
    }
    let tail = s.len().checked_sub(6)?;
    let (base, off) = s.split_at(tail);
    let sign = match off.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Some((s, 0)),
    };
    let h: i64 = off.get(1..3)?.parse().ok()?;
    let m: i64 = off.get(4..6)?.parse().ok()?;
    (off.as_bytes()[3] == b':').then_some((base, sign * (h * 3600 + m * 60) * 1_000_000_000))
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_micros(self.to_system()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_to_the_microsecond() {
        let t = Timestamp(1_790_000_000_123_456_000);
        let s = t.to_string();
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
        let z = Timestamp::parse_rfc3339("2026-11-27T10:15:03Z").unwrap();
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-27T11:15:03+01:00"),
            Some(z)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-27T10:15:03.5Z")
                .unwrap()
                .0
                - z.0,
            500_000_000
        );
        assert_eq!(
            serde_json::to_string(&z).unwrap(),
            "\"2026-11-27T10:15:03.000000Z\""
        );
    }
}
