//! Newtypes for the values pgfm reasons about: node ids, WAL positions, timelines and
//! generations. An LSN is never a string and never compared as one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether `name` may name a node or a cluster: names are used as Raft identities, slot
/// names, file names and certificate names, so they stay plain (1-63 of a-z, 0-9, '-', '_').
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A node's Raft identity. Derived from the node's name (FNV-1a, 64 bits) so that every
/// agent computes the same id from the same config without a registry of numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    pub fn from_name(name: &str) -> NodeId {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in name.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        NodeId(hash)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A PostgreSQL WAL position (`pg_lsn`), shown the way PostgreSQL shows it: `0/3018058`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `other` up to `self`, zero when `other` is ahead.
    pub fn bytes_after(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 0/3018058")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid = |part: &str| !part.is_empty() && part.len() <= 8;
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A PostgreSQL timeline id; it goes up at every promotion. (The default, 0, is none.)
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timeline(pub u32);

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The fencing token of a primary: goes up by exactly one per promotion, committed in the
/// Raft log before PostgreSQL is promoted (invariant 1). Zero means "no primary yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

impl Generation {
    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A wall-clock time (ms since the epoch) as the operator reads it: RFC 3339, UTC, to the
/// second (`2026-12-02T03:00:00Z`).
pub fn utc(unix_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<u64>) {
        let parsed = text.parse::<Lsn>().ok().map(|l| l.0);
        assert_eq!(parsed, expected, "parsing {text:?}");
        if let Some(value) = expected {
            let shown = Lsn(value).to_string();
            assert_eq!(
                shown.parse::<Lsn>().map(|l| l.0),
                Ok(value),
                "round trip of {text:?}"
            );
        }
    }

    #[test]
    fn lsn_parse_and_format() {
        check("0/3018058", Some(0x3018058));
        check("0/0", Some(0));
        check("16/B374D848", Some(0x16_B374_D848));
        check("ffffffff/ffffffff", Some(u64::MAX));
        check("0/3018058 ", None);
        check("03018058", None);
        check("/1", None);
        check("1/", None);
        check("g/1", None);
        check("1/123456789", None);
        check("-1/2", None);
    }

    #[test]
    fn lsn_display_matches_postgres() {
        assert_eq!(Lsn(0x3018058).to_string(), "0/3018058");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn lsn_orders_numerically_not_textually() {
        let a: Lsn = "0/9000000".parse().unwrap();
        let b: Lsn = "0/10000000".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.bytes_after(a), 0x10000000 - 0x9000000);
        assert_eq!(a.bytes_after(b), 0);
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(NodeId::from_name("pg1"), NodeId::from_name("pg1"));
        assert_ne!(NodeId::from_name("pg1"), NodeId::from_name("pg2"));
        assert_ne!(NodeId::from_name("pg1"), NodeId::from_name("witness"));
    }
}
