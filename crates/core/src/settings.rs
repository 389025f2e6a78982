//! The cluster-wide settings (issue 15): what every agent must agree on — `[timing]`,
//! `[failover]`, `[replication]` — as one value committed in the Raft log, with a revision
//! and a history of who changed what. Their checks live here, so that `check-config` on a
//! file, `pgfm edit-config` and the state machine refuse the same values with the same
//! words.

use serde::{Deserialize, Serialize};

use crate::lease::LeaseSettings;
use crate::model::{SyncMode, SyncSettings};

/// What a primary does when its PostgreSQL dies under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCrash {
    /// Restart in place if it is back within `crash_restart_bound_ms`, else fail over.
    Restart,
    /// Give up the lease at once, so that a standby takes over.
    Failover,
}

/// How a former primary comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejoinMode {
    Rewind,
    RewindOrClone,
    Manual,
}

impl OnCrash {
    pub fn as_str(self) -> &'static str {
        match self {
            OnCrash::Restart => "restart",
            OnCrash::Failover => "failover",
        }
    }
}

impl RejoinMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejoinMode::Rewind => "rewind",
            RejoinMode::RewindOrClone => "rewind-or-clone",
            RejoinMode::Manual => "manual",
        }
    }
}

/// The settings every agent uses the same: committed in the log once the cluster has a
/// coordinator (`ClusterState::settings`), taken from the bootstrapping coordinator's file
/// before that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How often each agent probes its PostgreSQL and reports.
    #[serde(default = "defaults::probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// How long a probe (or the check of another node's database) may take.
    #[serde(default = "defaults::probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// A report older than this is stale: its agent counts as down.
    pub report_ttl_ms: u64,
    /// How long PostgreSQL may take to start (crash recovery included).
    #[serde(default = "defaults::start_timeout_ms")]
    pub start_timeout_ms: u64,
    pub lease: LeaseSettings,
    /// Synchronous replication (`ClusterState::replication`, set by an older agent's `pgfm
    /// set-synchronous` before settings were committed, wins: see
    /// `ClusterView::sync_settings`).
    pub sync: SyncSettings,
    /// A candidate must be within this many bytes of the best known WAL position.
    pub max_lag: u64,
    pub auto_failover: bool,
    pub on_crash: OnCrash,
    pub crash_restart_bound_ms: u64,
    pub rejoin: RejoinMode,
    /// Invariant 9: a switchover step (the hand-over, the target's replay) that takes longer
    /// than this is rolled back.
    pub switchover_timeout_ms: u64,
    /// A standby whose PostgreSQL fails to start this many times in a row is re-cloned
    /// (`rejoin = "rewind-or-clone"`) or held for the operator; a primary gives up its lease.
    pub start_attempts: u32,
    /// PostgreSQL's own parameters for every data node (`[postgresql.parameters]`), by
    /// name: each agent writes them into the file it owns and reloads (`parameters`).
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, String>,
    /// The virtual IP that follows the primary, `ADDRESS/PREFIX` (`[vip] address`); None:
    /// no VIP. Each data node carries it on the interface its own file names.
    #[serde(default)]
    pub vip_address: Option<String>,
}

mod defaults {
    pub fn probe_interval_ms() -> u64 {
        1000
    }
    pub fn probe_timeout_ms() -> u64 {
        2000
    }
    pub fn start_timeout_ms() -> u64 {
        120_000
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            probe_interval_ms: defaults::probe_interval_ms(),
            probe_timeout_ms: defaults::probe_timeout_ms(),
            report_ttl_ms: 3_000,
            start_timeout_ms: defaults::start_timeout_ms(),
            lease: LeaseSettings::default(),
            sync: SyncSettings::default(),
            max_lag: 1024 * 1024,
            auto_failover: true,
            on_crash: OnCrash::Restart,
            crash_restart_bound_ms: 10_000,
            rejoin: RejoinMode::RewindOrClone,
            switchover_timeout_ms: 5_000,
            start_attempts: 3,
            parameters: Default::default(),
            vip_address: None,
        }
    }
}

/// One setting's value, as the operator writes it in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A duration: `"2400ms"`, `"5s"`.
    Ms(u64),
    Count(u64),
    Flag(bool),
    Word(&'static str),
    /// Free text, such as an address; empty: none.
    Text(String),
}

impl Value {
    /// The value as TOML: durations and words quoted.
    pub fn toml(&self) -> String {
        match self {
            Value::Ms(_) | Value::Word(_) => format!("\"{self}\""),
            Value::Count(_) | Value::Flag(_) => self.to_string(),
            Value::Text(text) => toml_string(text),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Ms(ms) => f.write_str(&duration(*ms)),
            Value::Count(n) => write!(f, "{n}"),
            Value::Flag(b) => write!(f, "{b}"),
            Value::Word(w) => f.write_str(w),
            Value::Text(text) if text.is_empty() => f.write_str("(none)"),
            Value::Text(text) => f.write_str(text),
        }
    }
}

/// The section of PostgreSQL's parameters, as a file writes it.
pub const PARAMETERS: &str = "postgresql.parameters";

/// A parameter name as a TOML key: bare when it can be, else quoted (an extension's,
/// `"auto_explain.log_min_duration"`).
fn toml_key(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        toml_string(name)
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration the way a config file writes it: whole seconds as `"5s"`, else `"2400ms"`.
pub fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Why settings cannot be used: the key, as written in a file, and what is wrong with it
/// (`check-config` prints `config FILE: KEY MESSAGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.key, self.message)
    }
}

impl Settings {
    /// Every setting by its key, in the order a file lists them.
    pub fn entries(&self) -> Vec<(&'static str, Value)> {
        let s = &self.sync;
        vec![
            ("timing.probe_interval", Value::Ms(self.probe_interval_ms)),
            ("timing.probe_timeout", Value::Ms(self.probe_timeout_ms)),
            ("timing.report_ttl", Value::Ms(self.report_ttl_ms)),
            ("timing.start_timeout", Value::Ms(self.start_timeout_ms)),
            ("timing.lease", Value::Ms(self.lease.lease_ms)),
            (
                "timing.renew_interval",
                Value::Ms(self.lease.renew_interval_ms),
            ),
            (
                "timing.safety_margin",
                Value::Ms(self.lease.safety_margin_ms),
            ),
            ("timing.drift_margin", Value::Ms(self.lease.drift_margin_ms)),
            ("failover.max_lag", Value::Count(self.max_lag)),
            ("failover.auto_failover", Value::Flag(self.auto_failover)),
            ("failover.on_crash", Value::Word(self.on_crash.as_str())),
            (
                "failover.crash_restart_bound",
                Value::Ms(self.crash_restart_bound_ms),
            ),
            ("failover.rejoin", Value::Word(self.rejoin.as_str())),
            (
                "failover.switchover_timeout",
                Value::Ms(self.switchover_timeout_ms),
            ),
            (
                "failover.start_attempts",
                Value::Count(self.start_attempts.into()),
            ),
            ("replication.synchronous", Value::Word(s.mode.as_str())),
            ("replication.sync_standbys", Value::Count(s.standbys as u64)),
            (
                "replication.minimum_standbys",
                Value::Count(s.minimum as u64),
            ),
            (
                "vip.address",
                Value::Text(self.vip_address.clone().unwrap_or_default()),
            ),
        ]
    }

    /// Every PostgreSQL parameter by its key (`postgresql.parameters.work_mem`), by name.
    pub fn parameter_entries(&self) -> Vec<(String, String)> {
        self.parameters
            .iter()
            .map(|(name, value)| (format!("{PARAMETERS}.{name}"), value.clone()))
            .collect()
    }

    /// The settings as the sections of a config file (`pgfm show-config`, the text
    /// `pgfm edit-config` opens); `[postgresql.parameters]` last, always there.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let mut section = "";
        for (key, value) in self.entries() {
            let (s, name) = key.split_once('.').unwrap_or(("", key));
            if s != section {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("[{s}]\n"));
                section = s;
            }
            out.push_str(&format!("{name} = {}\n", value.toml()));
        }
        out.push_str(&format!("\n[{PARAMETERS}]\n"));
        for (name, value) in &self.parameters {
            out.push_str(&format!("{} = {}\n", toml_key(name), toml_string(value)));
        }
        out
    }

    /// What differs from `before`, key by key: `(key, before, now)`; a parameter set or
    /// removed is `(unset)` on the other side.
    pub fn changes_from(&self, before: &Settings) -> Vec<Change> {
        let mut changes: Vec<Change> = before
            .entries()
            .into_iter()
            .zip(self.entries())
            .filter(|((_, old), (_, new))| old != new)
            .map(|((key, old), (_, new))| Change {
                key: key.to_string(),
                from: old.to_string(),
                to: new.to_string(),
            })
            .collect();
        let names: std::collections::BTreeSet<&String> = before
            .parameters
            .keys()
            .chain(self.parameters.keys())
            .collect();
        let unset = || "(unset)".to_string();
        for name in names {
            let (old, new) = (before.parameters.get(name), self.parameters.get(name));
            if old != new {
                changes.push(Change {
                    key: format!("{PARAMETERS}.{name}"),
                    from: old.cloned().unwrap_or_else(unset),
                    to: new.cloned().unwrap_or_else(unset),
                });
            }
        }
        changes
    }

    /// The first reason these settings cannot keep the cluster safe or working, if any.
    pub fn problem(&self) -> Option<Problem> {
        let problem = |key: &str, message: String| {
            Some(Problem {
                key: key.to_string(),
                message,
            })
        };
        let d = duration;
        if self.probe_interval_ms < 100 {
            return problem(
                "timing.probe_interval",
                format!("is {}; use at least 100ms", d(self.probe_interval_ms)),
            );
        }
        if self.report_ttl_ms <= self.probe_interval_ms {
            return problem(
                "timing.report_ttl",
                format!(
                    "is {}, not longer than timing.probe_interval ({}); every agent would flap \
                     between up and down (make it at least twice the probe interval)",
                    d(self.report_ttl_ms),
                    d(self.probe_interval_ms)
                ),
            );
        }
        if self.probe_timeout_ms == 0 {
            return problem(
                "timing.probe_timeout",
                "is 0s (a probe needs time to connect; the default is 2s)".to_string(),
            );
        }
        if self.start_timeout_ms < 1000 {
            return problem(
                "timing.start_timeout",
                format!(
                    "is {} (PostgreSQL needs at least 1s to start; the default is 120s)",
                    d(self.start_timeout_ms)
                ),
            );
        }
        if let Some(why) = self.lease.problem() {
            return problem("[timing]", format!("lease settings do not work: {why}"));
        }
        if self.switchover_timeout_ms < 1000 {
            return problem(
                "failover.switchover_timeout",
                format!(
                    "is {} (a clean shutdown and the target's replay need at least 1s; the \
                     default is 5s)",
                    d(self.switchover_timeout_ms)
                ),
            );
        }
        if self.start_attempts == 0 {
            return problem(
                "failover.start_attempts",
                "is 0 (set it to at least 1; the default is 3)".to_string(),
            );
        }
        if self.sync.standbys == 0 {
            return problem(
                "replication.sync_standbys",
                "is 0 (at least 1; for no synchronous standby set synchronous = \"off\")"
                    .to_string(),
            );
        }
        let synchronous = self.sync.mode != SyncMode::Off;
        for (name, value) in &self.parameters {
            if let Some(why) = crate::parameters::problem(name, value, synchronous) {
                return problem(&format!("{PARAMETERS}.{name}"), why);
            }
        }
        if let Some(address) = &self.vip_address {
            if let Err(why) = vip_address(address) {
                return problem("vip.address", why);
            }
        }
        if self.sync.minimum > self.sync.standbys {
            return problem(
                "replication.minimum_standbys",
                format!(
                    "is {}, more than sync_standbys ({}) (at most sync_standbys; that many is \
                     what strict = true means)",
                    self.sync.minimum, self.sync.standbys
                ),
            );
        }
        None
    }
}

/// A virtual IP written `ADDRESS/PREFIX` (`"10.0.0.100/24"`), or why it cannot be one.
pub fn vip_address(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad = |why: &str| {
        format!("{text:?} {why} (write it as ADDRESS/PREFIX, such as \"10.0.0.100/24\")")
    };
    let (address, prefix) = text.split_once('/').ok_or_else(|| bad("has no prefix"))?;
    let address: std::net::IpAddr = address
        .trim()
        .parse()
        .map_err(|_| bad("is not an IP address"))?;
    let std::net::IpAddr::V4(address) = address else {
        return Err(bad(
            "is IPv6; pgfm moves IPv4 virtual IPs only (announced with ARP)",
        ));
    };
    let prefix: u8 = prefix
        .trim()
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| bad("has a prefix outside 1..32"))?;
    Ok((address, prefix))
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Off => "off",
            SyncMode::On => "on",
            SyncMode::Quorum => "quorum",
        }
    }
}

/// One key changed by a commit of settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    pub from: String,
    pub to: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.from, self.to)
    }
}

/// One commit of settings, as kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsChange {
    pub revision: u64,
    /// Who changed them: `pgfm edit-config` names the operator's user and host; the first
    /// commit names the node whose file it came from.
    pub by: String,
    pub at_unix_ms: u64,
    /// Empty for the first commit (every value is new).
    pub changes: Vec<Change>,
}

/// The settings in force for the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedSettings {
    /// 1 for the first commit, one more for each change: `edit-config` names the revision it
    /// edited, and the log refuses an edit of an older one.
    pub revision: u64,
    pub values: Settings,
    /// The latest commits, oldest first (at most `HISTORY` of them).
    pub history: Vec<SettingsChange>,
}

impl CommittedSettings {
    /// How many commits the history keeps.
    pub const HISTORY: usize = 50;

    /// The next revision: `values` committed by `by`.
    pub fn commit(&mut self, values: Settings, by: &str, at_unix_ms: u64) {
        let changes = values.changes_from(&self.values);
        self.revision += 1;
        self.values = values;
        self.history.push(SettingsChange {
            revision: self.revision,
            by: by.to_string(),
            at_unix_ms,
            changes,
        });
        if self.history.len() > Self::HISTORY {
            self.history.remove(0);
        }
    }

    /// The first commit.
    pub fn first(values: Settings, by: &str, at_unix_ms: u64) -> CommittedSettings {
        CommittedSettings {
            revision: 1,
            values,
            history: vec![SettingsChange {
                revision: 1,
                by: by.to_string(),
                at_unix_ms,
                changes: Vec::new(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each check names the key a file uses and says how to fix it.
    #[test]
    fn each_bad_value_is_named_by_its_key() {
        fn check(edit: impl Fn(&mut Settings), expected: &str) {
            let mut s = Settings::default();
            edit(&mut s);
            assert_eq!(
                s.problem().map(|p| p.to_string()).as_deref(),
                Some(expected)
            );
        }
        assert_eq!(Settings::default().problem(), None);
        check(
            |s| s.probe_interval_ms = 50,
            "timing.probe_interval is 50ms; use at least 100ms",
        );
        check(|s| s.report_ttl_ms = 1000, "timing.report_ttl is 1s, not longer than timing.probe_interval (1s); every agent would flap between up and down (make it at least twice the probe interval)");
        check(|s| s.lease.lease_ms = 2000, "[timing] lease settings do not work: lease - safety_margin is 1200 ms; it must be at least 1500 ms, or electing a new coordinator would fence the primary");
        check(|s| s.switchover_timeout_ms = 200, "failover.switchover_timeout is 200ms (a clean shutdown and the target's replay need at least 1s; the default is 5s)");
        check(
            |s| s.start_attempts = 0,
            "failover.start_attempts is 0 (set it to at least 1; the default is 3)",
        );
        check(|s| s.sync.standbys = 0, "replication.sync_standbys is 0 (at least 1; for no synchronous standby set synchronous = \"off\")");
        check(|s| s.sync.minimum = 2, "replication.minimum_standbys is 2, more than sync_standbys (1) (at most sync_standbys; that many is what strict = true means)");
        check(
            |s| s.start_timeout_ms = 10,
            "timing.start_timeout is 10ms (PostgreSQL needs at least 1s to start; the default is 120s)",
        );
    }

    /// A commit records what changed, and the history stays bounded.
    #[test]
    fn a_commit_records_its_changes() {
        let mut committed = CommittedSettings::first(Settings::default(), "pg1", 1);
        let mut next = Settings {
            switchover_timeout_ms: 8_000,
            ..Settings::default()
        };
        next.sync.mode = SyncMode::On;
        committed.commit(next.clone(), "dba@host", 2);
        assert_eq!(committed.revision, 2);
        let changes: Vec<String> = committed.history[1]
            .changes
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            changes,
            [
                "failover.switchover_timeout: 5s -> 8s",
                "replication.synchronous: off -> on"
            ]
        );
        for n in 0..100 {
            committed.commit(next.clone(), &format!("n{n}"), 3);
        }
        assert_eq!(committed.history.len(), CommittedSettings::HISTORY);
        assert_eq!(committed.revision, 102);
    }

    /// The text `show-config` prints lists every key under its section.
    #[test]
    fn the_settings_read_as_a_config_file() {
        let text = Settings::default().to_toml();
        assert!(
            text.starts_with("[timing]\nprobe_interval = \"1s\"\n"),
            "{text}"
        );
        assert!(text.contains("\n[failover]\nmax_lag = 1048576\n"), "{text}");
        assert!(text.contains("rejoin = \"rewind-or-clone\"\n"), "{text}");
        assert!(
            text.ends_with(
                "minimum_standbys = 0\n\n[vip]\naddress = \"\"\n\n[postgresql.parameters]\n"
            ),
            "{text}"
        );
        assert!(text.contains("lease = \"2400ms\"\n"), "{text}");
        let mut with = Settings::default();
        with.parameters.insert("work_mem".into(), "64MB".into());
        with.parameters
            .insert("auto_explain.log_min_duration".into(), "1s".into());
        with.parameters
            .insert("search_path".into(), "\"$user\", public".into());
        assert!(
            with.to_toml().ends_with(
                "[postgresql.parameters]\n\"auto_explain.log_min_duration\" = \"1s\"\n\
                 search_path = \"\\\"$user\\\", public\"\nwork_mem = \"64MB\"\n"
            ),
            "{}",
            with.to_toml()
        );
        let changes: Vec<String> = with
            .changes_from(&Settings::default())
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            changes[2],
            "postgresql.parameters.work_mem: (unset) -> 64MB"
        );
        with.parameters.insert("port".into(), "1".into());
        assert_eq!(
            with.problem().map(|p| p.to_string()).as_deref(),
            Some("postgresql.parameters.port is set by pgfm: each node's own, set in its [postgres] section")
        );
    }
}
