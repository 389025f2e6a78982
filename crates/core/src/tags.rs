//! Per-node tags (`pgfm set-tag NODE KEY=VALUE`), committed in the Raft log: how the cluster
//! treats one data node beyond its priority. Patroni's users know them by the same names.
//!
//! - `nofailover`: never promoted (failover, switchover, promotion).
//! - `nosync`: never a synchronous standby.
//! - `noloadbalance`: its `/replica` health check answers 503, so a load balancer sends it
//!   no reads.
//! - `replicate_from = NODE`: cascading replication — it streams from the standby NODE
//!   while that one streams, else from the primary (`decide::stream_source`). It is never a
//!   synchronous standby (PostgreSQL counts only the primary's own walsenders), and it uses
//!   no replication slot: a slot on the primary would keep WAL for a node that does not
//!   stream from it, so it relies on `wal_keep_size`.
//! - `clonefrom`: a preferred source for clones (`pg_basebackup` from this standby rather
//!   than from the primary).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One data node's tags; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    #[serde(default, skip_serializing_if = "is_false")]
    pub nofailover: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub nosync: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub noloadbalance: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_from: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub clonefrom: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Tags {
    /// No tag is set.
    pub fn is_empty(&self) -> bool {
        *self == Tags::default()
    }

    /// Never named in `synchronous_standby_names`: `nosync`, or a cascading standby.
    pub fn never_sync(&self) -> bool {
        self.nosync || self.replicate_from.is_some()
    }

    /// The tags set, as `set-tag` takes them (`nofailover`, `replicate_from=pg2`).
    pub fn list(&self) -> Vec<String> {
        let mut out = Vec::new();
        let flags = [
            ("nofailover", self.nofailover),
            ("nosync", self.nosync),
            ("noloadbalance", self.noloadbalance),
        ];
        out.extend(
            flags
                .iter()
                .filter(|(_, on)| *on)
                .map(|(k, _)| k.to_string()),
        );
        if let Some(node) = &self.replicate_from {
            out.push(format!("replicate_from={node}"));
        }
        if self.clonefrom {
            out.push("clonefrom".to_string());
        }
        out
    }
}

/// One change of one tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "key", content = "value", rename_all = "snake_case")]
pub enum Tag {
    Nofailover(bool),
    Nosync(bool),
    Noloadbalance(bool),
    /// None: stream from the primary again.
    ReplicateFrom(Option<String>),
    Clonefrom(bool),
}

/// The keys `set-tag` knows.
pub const KEYS: [&str; 5] = [
    "nofailover",
    "nosync",
    "noloadbalance",
    "replicate_from",
    "clonefrom",
];

impl Tag {
    /// `KEY=VALUE` as typed: a flag takes true/false (on/off, yes/no, 1/0);
    /// `replicate_from` a node name, or an empty value (or `none`) to stream from the
    /// primary again.
    pub fn parse(text: &str) -> Result<Tag, String> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!(
                "{text:?} is not KEY=VALUE (keys: {})",
                KEYS.join(", ")
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        let flag = || match value.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(true),
            "false" | "off" | "no" | "0" => Ok(false),
            _ => Err(format!(
                "{key} takes true or false (on/off, yes/no, 1/0), not {value:?}"
            )),
        };
        Ok(match key {
            "nofailover" => Tag::Nofailover(flag()?),
            "nosync" => Tag::Nosync(flag()?),
            "noloadbalance" => Tag::Noloadbalance(flag()?),
            "clonefrom" => Tag::Clonefrom(flag()?),
            "replicate_from" | "replicatefrom" => {
                let none = value.is_empty() || value.eq_ignore_ascii_case("none");
                Tag::ReplicateFrom((!none).then(|| value.to_string()))
            }
            _ => {
                return Err(format!(
                    "unknown tag {key:?} (the tags are {})",
                    KEYS.join(", ")
                ))
            }
        })
    }

    /// `tags` with this change.
    pub fn applied_to(&self, tags: &Tags) -> Tags {
        let mut out = tags.clone();
        match self {
            Tag::Nofailover(on) => out.nofailover = *on,
            Tag::Nosync(on) => out.nosync = *on,
            Tag::Noloadbalance(on) => out.noloadbalance = *on,
            Tag::ReplicateFrom(node) => out.replicate_from = node.clone(),
            Tag::Clonefrom(on) => out.clonefrom = *on,
        }
        out
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tag::Nofailover(on) => write!(f, "nofailover={on}"),
            Tag::Nosync(on) => write!(f, "nosync={on}"),
            Tag::Noloadbalance(on) => write!(f, "noloadbalance={on}"),
            Tag::ReplicateFrom(Some(node)) => write!(f, "replicate_from={node}"),
            Tag::ReplicateFrom(None) => write!(f, "replicate_from="),
            Tag::Clonefrom(on) => write!(f, "clonefrom={on}"),
        }
    }
}

/// The node `replicate_from` leads back to `node` through, if setting `node`'s to `to`
/// would make a loop (`pg3 -> pg2 -> pg3`).
pub fn replication_loop(tags: &BTreeMap<String, Tags>, node: &str, to: &str) -> Option<String> {
    let mut seen = vec![node.to_string()];
    let mut at = to.to_string();
    loop {
        if seen.contains(&at) {
            seen.push(at);
            return Some(seen.join(" -> "));
        }
        seen.push(at.clone());
        match tags.get(&at).and_then(|t| t.replicate_from.clone()) {
            Some(next) => at = next,
            None => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_parsed_as_typed_and_bad_ones_say_why() {
        assert_eq!(Tag::parse("nofailover=true"), Ok(Tag::Nofailover(true)));
        assert_eq!(Tag::parse("nosync = off"), Ok(Tag::Nosync(false)));
        assert_eq!(Tag::parse("noloadbalance=1"), Ok(Tag::Noloadbalance(true)));
        assert_eq!(Tag::parse("clonefrom=yes"), Ok(Tag::Clonefrom(true)));
        assert_eq!(
            Tag::parse("replicate_from=pg2"),
            Ok(Tag::ReplicateFrom(Some("pg2".into())))
        );
        assert_eq!(Tag::parse("replicate_from="), Ok(Tag::ReplicateFrom(None)));
        assert_eq!(
            Tag::parse("replicate_from=none"),
            Ok(Tag::ReplicateFrom(None))
        );
        assert_eq!(
            Tag::parse("nofailover"),
            Err(
                "\"nofailover\" is not KEY=VALUE (keys: nofailover, nosync, noloadbalance, \
                 replicate_from, clonefrom)"
                    .into()
            )
        );
        assert_eq!(
            Tag::parse("nosync=maybe"),
            Err("nosync takes true or false (on/off, yes/no, 1/0), not \"maybe\"".into())
        );
        assert_eq!(
            Tag::parse("noreplica=true"),
            Err(
                "unknown tag \"noreplica\" (the tags are nofailover, nosync, noloadbalance, \
                 replicate_from, clonefrom)"
                    .into()
            )
        );
    }

    #[test]
    fn a_change_applies_to_one_tag_and_lists_as_typed() {
        let tags = Tag::ReplicateFrom(Some("pg2".into())).applied_to(&Tags::default());
        let tags = Tag::Nofailover(true).applied_to(&tags);
        assert_eq!(tags.list(), ["nofailover", "replicate_from=pg2"]);
        assert!(tags.never_sync());
        let back = Tag::ReplicateFrom(None).applied_to(&Tag::Nofailover(false).applied_to(&tags));
        assert!(back.is_empty());
        assert_eq!(Tag::ReplicateFrom(None).to_string(), "replicate_from=");
    }

    #[test]
    fn a_replication_loop_is_found_with_its_path() {
        let mut tags = BTreeMap::new();
        tags.insert(
            "pg2".to_string(),
            Tag::ReplicateFrom(Some("pg3".into())).applied_to(&Tags::default()),
        );
        assert_eq!(
            replication_loop(&tags, "pg3", "pg2"),
            Some("pg3 -> pg2 -> pg3".into())
        );
        assert_eq!(replication_loop(&tags, "pg4", "pg2"), None);
        assert_eq!(
            replication_loop(&tags, "pg3", "pg3"),
            Some("pg3 -> pg3".into())
        );
    }
}
