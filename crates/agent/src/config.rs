//! The agent's configuration: one TOML file per node. Parsed into a raw form (unknown keys
//! rejected), then validated into a `Config` whose types rule out bad states. Every error
//! names the file, the key, what is wrong and how to fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use pgfm_core::decide::{OnCrash, RejoinMode};
use pgfm_core::lease::LeaseSettings;
use pgfm_core::settings::Settings;
use pgfm_core::types::valid_name;
use pgfm_core::NodeKind;
use pgfm_core::{SyncMode, SyncSettings, WatchdogMode};
use pgfm_postgres::binaries;
use pgfm_postgres::OsUser;
pub use pgfm_tls::TlsFiles;

/// The default place of the config file.
pub const DEFAULT_CONFIG: &str = "/etc/pgfm/pgfm.toml";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config {}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "config {}: {} {}",
                self.file.display(),
                self.key,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

// ---- raw form: exactly what the file says ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<String>,
    token_file: Option<PathBuf>,
    node: Option<RawNode>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    postgres: Option<RawPostgres>,
    #[serde(default)]
    timing: RawTiming,
    #[serde(default)]
    failover: RawFailover,
    #[serde(default)]
    hooks: RawHooks,
    vip: Option<RawVip>,
    #[serde(default)]
    replication: RawReplication,
    watchdog: Option<RawWatchdog>,
    tls: Option<RawTls>,
    #[serde(default)]
    bootstrap: RawBootstrap,
    #[serde(default)]
    postgresql: RawPostgresql,
}

/// `[postgresql.parameters]`: PostgreSQL's own parameters, for the whole cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgresql {
    #[serde(default)]
    parameters: BTreeMap<String, toml::Value>,
}

/// The parameters as PostgreSQL reads them: strings as they are, numbers and booleans as
/// written (`max_connections = 200`, `jit = false`). A table or an array is refused.
fn parse_parameters(
    check: &Check,
    raw: &RawPostgresql,
) -> Result<BTreeMap<String, String>, ConfigError> {
    raw.parameters
        .iter()
        .map(|(name, value)| {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(check.err(
                        &format!("{}.{name}", pgfm_core::settings::PARAMETERS),
                        "is not a string, a number or true/false",
                    ))
                }
            };
            Ok((name.clone(), text))
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBootstrap {
    encoding: Option<String>,
    locale: Option<String>,
    data_checksums: Option<bool>,
    #[serde(default)]
    pg_hba: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    mode: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatchdog {
    mode: Option<String>,
    device: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    synchronous: Option<String>,
    sync_standbys: Option<usize>,
    strict: Option<bool>,
    minimum_standbys: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    address: Option<String>,
    interface: Option<String>,
    check_before_promotion: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    check_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    fence: Option<String>,
    post_promotion: Option<String>,
    notification: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    kind: Option<String>,
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    priority: Option<u32>,
    promotable: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<String>,
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    bin_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    listen_addresses: Option<String>,
    socket_dir: Option<PathBuf>,
    os_user: Option<String>,
    superuser: Option<String>,
    replication_user: Option<String>,
    passfile: Option<PathBuf>,
    log_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    #[serde(default, with = "humantime_serde")]
    probe_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    probe_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    report_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    start_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    lease: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    renew_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    safety_margin: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drift_margin: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    max_lag: Option<u64>,
    auto_failover: Option<bool>,
    on_crash: Option<String>,
    #[serde(default, with = "humantime_serde")]
    crash_restart_bound: Option<Duration>,
    rejoin: Option<String>,
    #[serde(default, with = "humantime_serde")]
    switchover_timeout: Option<Duration>,
    start_attempts: Option<u32>,
}

// ---- validated form ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    pub bin_dir: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub listen_addresses: String,
    pub socket_dir: Option<PathBuf>,
    pub os_user: String,
    pub superuser: String,
    pub replication_user: String,
    pub passfile: Option<PathBuf>,
    pub log_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub report_ttl: Duration,
    pub start_timeout: Duration,
    pub lease: LeaseSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub max_lag: u64,
    pub auto_failover: bool,
    pub on_crash: OnCrash,
    pub crash_restart_bound: Duration,
    pub rejoin: RejoinMode,
    /// A switchover step (hand-over, the target's replay) longer than this is rolled back.
    pub switchover_timeout: Duration,
    /// Failed starts of PostgreSQL in a row before a standby is re-cloned (or held) and a
    /// primary gives up its lease.
    pub start_attempts: u32,
}

/// Commands run on events (EFM's scripts), through `sh -c`, with the event in `PGFM_*`
/// environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run by the coordinator before it commits a promotion; a non-zero exit aborts it.
    pub fence: Option<String>,
    /// Run on the new primary once PostgreSQL is promoted.
    pub post_promotion: Option<String>,
    /// Run for every event (promotion committed, fenced, promoted).
    pub notification: Option<String>,
    pub timeout: Duration,
}

/// `[watchdog]`: the host watchdog the primary's agent arms while it holds the lease, so
/// that a primary whose agent hangs or dies is reset before another node may be promoted
/// (invariant 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    /// A character device (the kernel's watchdog API, `/dev/watchdog`) or a FIFO (the
    /// lab's stand-in, `pgfm lab watchdog-driver`).
    pub device: PathBuf,
}

/// `[bootstrap]`: how this node initialises the cluster if it is chosen to, when every
/// data node's data directory is empty (initdb's options, and pg_hba.conf lines of the
/// operator's after pgfm's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapConfig {
    pub encoding: String,
    /// None: initdb's default (from the agent's environment; `C` under systemd).
    pub locale: Option<String>,
    pub data_checksums: bool,
    pub pg_hba: Vec<String>,
}

/// The virtual IP that follows the primary (EFM's `virtual.ip`): this node's part. The
/// address is the cluster's (`Settings::vip_address`, committed); a file's `address` is
/// what the first bootstrap commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    /// `ADDRESS/PREFIX` as this file writes it (checked), if it does.
    pub address: Option<String>,
    /// Where this node carries the address.
    pub interface: String,
    /// Before promoting, check that no other host answers for the address (EFM's
    /// `check.vip.before.promotion`).
    pub check_before_promotion: bool,
    /// How long a promotion waits for the address to fall silent before it gives up.
    pub check_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub file: PathBuf,
    pub cluster: String,
    pub token_file: PathBuf,
    pub name: String,
    pub kind: NodeKind,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub priority: u32,
    pub promotable: bool,
    pub peers: Vec<Peer>,
    /// Present exactly when `kind` is `Data`.
    pub postgres: Option<PostgresConfig>,
    pub timing: Timing,
    pub failover: Failover,
    pub hooks: Hooks,
    pub vip: Option<VipConfig>,
    /// `vip.address`, the cluster's virtual IP as this file gives it (a witness's file
    /// too): what the first bootstrap commits.
    pub vip_address: Option<String>,
    /// `[replication]`: synchronous replication.
    pub sync: SyncSettings,
    /// `[postgresql.parameters]`.
    pub parameters: BTreeMap<String, String>,
    pub watchdog: WatchdogConfig,
    /// `[tls]`: the files of mutual TLS between agents and from the CLI; None when
    /// `mode = "off"` (plain HTTP).
    pub tls: Option<TlsFiles>,
    pub bootstrap: BootstrapConfig,
    /// The cluster-wide keys this file sets (`timing.lease`, ...): once the cluster's
    /// settings are committed, those that differ from them are warned about.
    pub cluster_keys: BTreeSet<String>,
}

/// The TOML itself; a syntax error or an unknown key names its line.
fn parse_toml(check: &Check, text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| toml_error(check, text, e))
}

/// A TOML error, with the line it is on.
fn toml_error(check: &Check, text: &str, e: toml::de::Error) -> ConfigError {
    let at = e
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: ")
        })
        .unwrap_or_default();
    check.err("", format!("{at}{}", e.message().trim()))
}

/// `[node]`, validated.
struct NodeSection {
    name: String,
    kind: NodeKind,
    listen: SocketAddr,
    state_dir: PathBuf,
    priority: u32,
    promotable: bool,
}

fn parse_node(check: &Check, raw: Option<RawNode>) -> Result<NodeSection, ConfigError> {
    let node = check.required(raw, "[node]", "add a [node] section")?;
    let name = check.name(node.name, "node.name")?;
    let kind = match check
        .required(node.kind, "node.kind", "set it to \"data\" or \"witness\"")?
        .as_str()
    {
        "data" => NodeKind::Data,
        "witness" => NodeKind::Witness,
        other => {
            return Err(check.err(
                "node.kind",
                format!("is {other:?} (set it to \"data\" or \"witness\")"),
            ))
        }
    };
    let listen_text = check.required(node.listen, "node.listen", "set it to ip:port")?;
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        check.err(
            "node.listen",
            format!("{listen_text:?} is not an ip:port address (for example \"10.0.0.1:7400\")"),
        )
    })?;
    let state_dir = check.required(
        node.state_dir,
        "node.state_dir",
        "set it to a directory the agent owns, such as /var/lib/pgfm",
    )?;
    let state_dir = check.absolute(state_dir, "node.state_dir")?;
    Ok(NodeSection {
        name,
        kind,
        listen,
        state_dir,
        priority: node.priority.unwrap_or(100),
        promotable: node.promotable.unwrap_or(true),
    })
}

/// `[[peers]]`: every agent once, this one too, at the address it listens on.
fn parse_peers(
    check: &Check,
    raw: Vec<RawPeer>,
    name: &str,
    listen: SocketAddr,
) -> Result<Vec<Peer>, ConfigError> {
    let mut peers = Vec::new();
    let mut names = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for (i, peer) in raw.into_iter().enumerate() {
        let key = format!("peers[{i}]");
        let peer_name = check.name(peer.name, &format!("{key}.name"))?;
        let address = check.required(
            peer.address,
            &format!("{key}.address"),
            "set it to the peer agent's ip:port",
        )?;
        if address.parse::<SocketAddr>().is_err() {
            return Err(check.err(
                &format!("{key}.address"),
                format!("{address:?} is not an ip:port address"),
            ));
        }
        if !names.insert(peer_name.clone()) {
            return Err(check.err(
                &format!("{key}.name"),
                format!("{peer_name:?} is listed twice"),
            ));
        }
        if !addresses.insert(address.clone()) {
            return Err(check.err(
                &format!("{key}.address"),
                format!("{address:?} is used by two peers"),
            ));
        }
        peers.push(Peer {
            name: peer_name,
            address,
        });
    }
    match peers.iter().find(|p| p.name == name) {
        None => {
            return Err(check.err(
                "peers",
                format!("do not include this node {name:?} (list every agent, this one too)"),
            ))
        }
        Some(me) if me.address.parse::<SocketAddr>().ok() != Some(listen) => {
            return Err(check.err(
                "peers",
                format!(
                    "give {name:?} the address {} but node.listen is {listen} (make them equal)",
                    me.address
                ),
            ))
        }
        Some(_) => {}
    }
    Ok(peers)
}

/// `[postgres]`: required on a data node, refused on a witness.
fn parse_postgres(
    check: &Check,
    raw: Option<RawPostgres>,
    kind: NodeKind,
    listen: SocketAddr,
    state_dir: &Path,
) -> Result<Option<PostgresConfig>, ConfigError> {
    let pg = match (kind, raw) {
        (NodeKind::Witness, Some(_)) => {
            return Err(check.err(
                "[postgres]",
                "is set on a witness, which has no database (remove the section or set \
                 node.kind = \"data\")",
            ))
        }
        (NodeKind::Witness, None) => return Ok(None),
        (NodeKind::Data, None) => {
            return Err(check.err(
                "[postgres]",
                "is missing; a data node needs it (at least data_dir and port)",
            ))
        }
        (NodeKind::Data, Some(pg)) => pg,
    };
    let data_dir = check.required(
        pg.data_dir,
        "postgres.data_dir",
        "set it to the PGDATA directory",
    )?;
    let data_dir = check.absolute(data_dir, "postgres.data_dir")?;
    let port = check.required(pg.port, "postgres.port", "set it, usually 5432")?;
    if port == 0 {
        return Err(check.err("postgres.port", "is 0 (use a real port such as 5432)"));
    }
    let host = pg.host.unwrap_or_else(|| listen.ip().to_string());
    let bin_dir = pg
        .bin_dir
        .map(|p| check.absolute(p, "postgres.bin_dir"))
        .transpose()?;
    let socket_dir = pg
        .socket_dir
        .map(|p| check.absolute(p, "postgres.socket_dir"))
        .transpose()?;
    let passfile = pg
        .passfile
        .map(|p| check.absolute(p, "postgres.passfile"))
        .transpose()?;
    let log_file = pg
        .log_file
        .map(|p| check.absolute(p, "postgres.log_file"))
        .transpose()?
        .unwrap_or_else(|| state_dir.join("postgres.log"));
    Ok(Some(PostgresConfig {
        bin_dir,
        data_dir,
        listen_addresses: pg.listen_addresses.unwrap_or_else(|| host.clone()),
        host,
        port,
        socket_dir,
        os_user: pg.os_user.unwrap_or_else(|| "postgres".to_string()),
        superuser: pg.superuser.unwrap_or_else(|| "postgres".to_string()),
        replication_user: pg
            .replication_user
            .unwrap_or_else(|| "replicator".to_string()),
        passfile,
        log_file,
    }))
}

/// `[timing]`: the probe and the lease.
/// `[timing]`, its values as they are: they are checked with the rest of the cluster-wide
/// settings (`pgfm_core::settings::Settings::problem`).
fn parse_timing(raw: &RawTiming) -> Timing {
    let probe_interval = raw.probe_interval.unwrap_or(Duration::from_secs(1));
    let ms = |d: Duration| d.as_millis() as u64;
    let defaults = LeaseSettings::default();
    Timing {
        probe_interval,
        probe_timeout: raw.probe_timeout.unwrap_or(Duration::from_secs(2)),
        report_ttl: raw.report_ttl.unwrap_or(probe_interval * 3),
        start_timeout: raw.start_timeout.unwrap_or(Duration::from_secs(120)),
        lease: LeaseSettings {
            lease_ms: raw.lease.map(ms).unwrap_or(defaults.lease_ms),
            renew_interval_ms: raw
                .renew_interval
                .map(ms)
                .unwrap_or(defaults.renew_interval_ms),
            safety_margin_ms: raw
                .safety_margin
                .map(ms)
                .unwrap_or(defaults.safety_margin_ms),
            drift_margin_ms: raw.drift_margin.map(ms).unwrap_or(defaults.drift_margin_ms),
        },
    }
}

/// The cluster-wide settings a file gives: `[timing]`, `[failover]`, `[replication]`.
fn cluster_settings(
    timing: &Timing,
    failover: &Failover,
    sync: SyncSettings,
    parameters: BTreeMap<String, String>,
    vip_address: Option<String>,
) -> Settings {
    let ms = |d: Duration| d.as_millis() as u64;
    Settings {
        probe_interval_ms: ms(timing.probe_interval),
        probe_timeout_ms: ms(timing.probe_timeout),
        report_ttl_ms: ms(timing.report_ttl),
        start_timeout_ms: ms(timing.start_timeout),
        lease: timing.lease,
        sync,
        max_lag: failover.max_lag,
        auto_failover: failover.auto_failover,
        on_crash: failover.on_crash,
        crash_restart_bound_ms: ms(failover.crash_restart_bound),
        rejoin: failover.rejoin,
        switchover_timeout_ms: ms(failover.switchover_timeout),
        start_attempts: failover.start_attempts,
        parameters,
        vip_address,
    }
}

/// The cluster-wide keys a file sets (`timing.lease`, ...), whatever their values: the
/// ones its agent warns about when the cluster's committed value differs.
fn keys_set(raw: &RawConfig) -> BTreeSet<String> {
    let t = &raw.timing;
    let f = &raw.failover;
    let r = &raw.replication;
    let set = [
        ("timing.probe_interval", t.probe_interval.is_some()),
        ("timing.probe_timeout", t.probe_timeout.is_some()),
        ("timing.report_ttl", t.report_ttl.is_some()),
        ("timing.start_timeout", t.start_timeout.is_some()),
        ("timing.lease", t.lease.is_some()),
        ("timing.renew_interval", t.renew_interval.is_some()),
        ("timing.safety_margin", t.safety_margin.is_some()),
        ("timing.drift_margin", t.drift_margin.is_some()),
        ("failover.max_lag", f.max_lag.is_some()),
        ("failover.auto_failover", f.auto_failover.is_some()),
        ("failover.on_crash", f.on_crash.is_some()),
        (
            "failover.crash_restart_bound",
            f.crash_restart_bound.is_some(),
        ),
        ("failover.rejoin", f.rejoin.is_some()),
        (
            "failover.switchover_timeout",
            f.switchover_timeout.is_some(),
        ),
        ("failover.start_attempts", f.start_attempts.is_some()),
        (
            "vip.address",
            raw.vip.as_ref().is_some_and(|v| v.address.is_some()),
        ),
        ("replication.synchronous", r.synchronous.is_some()),
        ("replication.sync_standbys", r.sync_standbys.is_some()),
        // `strict` is a way to write the minimum.
        (
            "replication.minimum_standbys",
            r.minimum_standbys.is_some() || r.strict.is_some(),
        ),
    ];
    set.into_iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| key.to_string())
        .chain(
            raw.postgresql
                .parameters
                .keys()
                .map(|name| format!("{}.{name}", pgfm_core::settings::PARAMETERS)),
        )
        .collect()
}

/// The cluster-wide sections alone, as `pgfm edit-config` takes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    timing: RawTiming,
    #[serde(default)]
    failover: RawFailover,
    #[serde(default)]
    replication: RawReplication,
    #[serde(default)]
    postgresql: RawPostgresql,
    #[serde(default)]
    vip: RawVipSettings,
}

/// `[vip]` as `pgfm edit-config` takes it: the address alone (the interface is a node's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVipSettings {
    address: Option<String>,
}

/// Settings for the whole cluster written as `[timing]`, `[failover]` and `[replication]`
/// (the text `pgfm edit-config` opens, or its `--file`), checked as `check-config` checks a
/// node's file, with the same messages; `source` names the text in them. A key left out
/// takes its default.
pub fn parse_settings(source: &Path, text: &str) -> Result<Settings, ConfigError> {
    let check = Check { file: source };
    let raw: RawSettings = toml::from_str(text).map_err(|e| toml_error(&check, text, e))?;
    let timing = parse_timing(&raw.timing);
    let on_crash = parse_on_crash(&check, raw.failover.on_crash.as_deref())?;
    let sync = parse_replication(&check, &raw.replication)?;
    let failover = parse_failover(&check, &raw.failover, on_crash)?;
    let parameters = parse_parameters(&check, &raw.postgresql)?;
    let vip_address = raw.vip.address.filter(|a| !a.is_empty());
    let settings = cluster_settings(&timing, &failover, sync, parameters, vip_address);
    match settings.problem() {
        Some(problem) => Err(check.err(&problem.key, problem.message)),
        None => Ok(settings),
    }
}

/// `current` with what `text` sets (`pgfm edit-config --file`): the keys it leaves out keep
/// their values. Its syntax and keys are checked on its own, with its own line numbers;
/// the result as a whole, as `check-config` checks a file.
pub fn settings_with(
    current: &Settings,
    source: &Path,
    text: &str,
) -> Result<Settings, ConfigError> {
    let check = Check { file: source };
    let _: RawSettings = toml::from_str(text).map_err(|e| toml_error(&check, text, e))?;
    let overlay: toml::Table = toml::from_str(text).map_err(|e| toml_error(&check, text, e))?;
    let current_text = current.to_toml();
    let mut merged: toml::Table =
        toml::from_str(&current_text).map_err(|e| toml_error(&check, &current_text, e))?;
    for (section, table) in overlay {
        let (Some(toml::Value::Table(into)), toml::Value::Table(table)) =
            (merged.get_mut(&section), table)
        else {
            continue;
        };
        // `strict` is a way to write the minimum: set alone, it replaces it.
        if table.contains_key("strict") && !table.contains_key("minimum_standbys") {
            into.remove("minimum_standbys");
        }
        merge_into(into, table);
    }
    let merged = toml::to_string(&merged).map_err(|e| check.err("", e.to_string()))?;
    parse_settings(source, &merged)
}

/// `table`'s keys into `into`, tables merged key by key (`[postgresql.parameters]`: a file
/// naming one parameter keeps the others). An empty string removes a parameter.
fn merge_into(into: &mut toml::Table, table: toml::Table) {
    for (key, value) in table {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => merge_into(inner, more),
            (_, toml::Value::String(empty)) if empty.is_empty() => {
                into.remove(&key);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// `current` with `KEY=VALUE` each (`pgfm edit-config --set`): a duration as `10s`, a word
/// as `on`, a number or `true`/`false` as they are. A key that is not cluster-wide is
/// refused with the list of those that are.
pub fn settings_set(current: &Settings, sets: &[String]) -> Result<Settings, ConfigError> {
    let source = Path::new("--set");
    let check = Check { file: source };
    let known: Vec<&str> = current
        .entries()
        .into_iter()
        .map(|(key, _)| key)
        .chain(["replication.strict"])
        .collect();
    let mut overlay = toml::Table::new();
    for set in sets {
        let Some((key, value)) = set.split_once('=') else {
            return Err(check.err(
                set,
                "is not KEY=VALUE (for example --set failover.switchover_timeout=10s)",
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        let parameter = key
            .strip_prefix(pgfm_core::settings::PARAMETERS)
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|name| !name.is_empty());
        if let Some(name) = parameter {
            // Always a string: PostgreSQL reads `200` and `'200'` alike.
            if let toml::Value::Table(postgresql) = overlay
                .entry("postgresql".to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                if let toml::Value::Table(parameters) = postgresql
                    .entry("parameters".to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                {
                    parameters.insert(name.to_string(), toml::Value::String(value.to_string()));
                }
            }
            continue;
        }
        let Some((section, name)) = key.split_once('.').filter(|_| known.contains(&key)) else {
            return Err(check.err(
                key,
                format!(
                    "is not a cluster-wide setting; those are {}, and {}.NAME for a PostgreSQL \
                     parameter (a node's own keys stay in its pgfm.toml)",
                    known.join(", "),
                    pgfm_core::settings::PARAMETERS
                ),
            ));
        };
        let value = match format!("v = {value}").parse::<toml::Table>() {
            Ok(mut parsed) => parsed
                .remove("v")
                .unwrap_or(toml::Value::String(value.into())),
            Err(_) => toml::Value::String(value.to_string()),
        };
        if let toml::Value::Table(table) = overlay
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            table.insert(name.to_string(), value);
        }
    }
    let text = toml::to_string(&overlay).map_err(|e| check.err("", e.to_string()))?;
    // The lines are those of a text the operator never saw.
    settings_with(current, source, &text).map_err(|mut e| {
        if let Some((_, message)) = e
            .message
            .strip_prefix("line ")
            .and_then(|m| m.split_once(": "))
        {
            e.message = message.to_string();
        }
        if e.message.ends_with("expected a duration") {
            e.message += " (a duration needs its unit: 3s, 2400ms)";
        }
        e
    })
}

/// `failover.on_crash`, checked apart from the rest of `[failover]` (see `Config::parse`).
fn parse_on_crash(check: &Check, raw: Option<&str>) -> Result<OnCrash, ConfigError> {
    match raw {
        None | Some("restart") => Ok(OnCrash::Restart),
        Some("failover") => Ok(OnCrash::Failover),
        Some(other) => Err(check.err(
            "failover.on_crash",
            format!("is {other:?} (set it to \"restart\" or \"failover\")"),
        )),
    }
}

/// `[failover]`, with `on_crash` already checked.
fn parse_failover(
    check: &Check,
    raw: &RawFailover,
    on_crash: OnCrash,
) -> Result<Failover, ConfigError> {
    let rejoin = match raw.rejoin.as_deref() {
        None | Some("rewind-or-clone") => RejoinMode::RewindOrClone,
        Some("rewind") => RejoinMode::Rewind,
        Some("manual") => RejoinMode::Manual,
        Some(other) => {
            return Err(check.err(
                "failover.rejoin",
                format!("is {other:?} (set it to \"rewind\", \"rewind-or-clone\" or \"manual\")"),
            ))
        }
    };
    Ok(Failover {
        max_lag: raw.max_lag.unwrap_or(1024 * 1024),
        auto_failover: raw.auto_failover.unwrap_or(true),
        on_crash,
        crash_restart_bound: raw.crash_restart_bound.unwrap_or(Duration::from_secs(10)),
        rejoin,
        switchover_timeout: raw.switchover_timeout.unwrap_or(Duration::from_secs(5)),
        start_attempts: raw.start_attempts.unwrap_or(3),
    })
}

/// `[replication]`: synchronous replication.
fn parse_replication(check: &Check, raw: &RawReplication) -> Result<SyncSettings, ConfigError> {
    let mode = match raw.synchronous.as_deref() {
        None | Some("off") => SyncMode::Off,
        Some("on") => SyncMode::On,
        Some("quorum") => SyncMode::Quorum,
        Some(other) => {
            return Err(check.err(
                "replication.synchronous",
                format!("is {other:?} (set it to \"off\", \"on\" or \"quorum\")"),
            ))
        }
    };
    let sync_standbys = raw.sync_standbys.unwrap_or(1);
    let strict = raw.strict.unwrap_or(false);
    let minimum = match raw.minimum_standbys {
        Some(m) if strict && m != sync_standbys => {
            return Err(check.err(
                "replication.minimum_standbys",
                format!(
                    "is {m} with strict = true, which means minimum_standbys = \
                     sync_standbys ({sync_standbys}) (set one of them, not both)"
                ),
            ))
        }
        Some(m) => m,
        None if strict => sync_standbys,
        None => 0,
    };
    Ok(SyncSettings {
        mode,
        standbys: sync_standbys,
        minimum,
    })
}

/// `[hooks]`: a blank command is no command.
fn parse_hooks(raw: RawHooks) -> Hooks {
    Hooks {
        fence: raw.fence.filter(|c| !c.trim().is_empty()),
        post_promotion: raw.post_promotion.filter(|c| !c.trim().is_empty()),
        notification: raw.notification.filter(|c| !c.trim().is_empty()),
        timeout: raw.timeout.unwrap_or(Duration::from_secs(30)),
    }
}

/// `[tls]`: on unless `mode = "off"`; the files default to `ca.crt`, `node.crt` and
/// `node.key` beside the token file, where `pgfm init` puts them.
fn parse_tls(
    check: &Check,
    raw: Option<RawTls>,
    token_file: &Path,
) -> Result<Option<TlsFiles>, ConfigError> {
    let raw = raw.unwrap_or(RawTls {
        mode: None,
        ca: None,
        cert: None,
        key: None,
    });
    match raw.mode.as_deref() {
        None | Some("on") => {}
        Some("off") => return Ok(None),
        Some(other) => {
            return Err(check.err(
                "tls.mode",
                format!(
                    "is {other:?} (set it to \"on\", the default, or \"off\" for plain HTTP, \
                     which lets anyone on the network read the cluster token)"
                ),
            ))
        }
    }
    let beside = token_file.parent().unwrap_or(Path::new("/"));
    let file = |value: Option<PathBuf>, key: &str, default: &str| match value {
        Some(path) => check.absolute(path, key),
        None => Ok(beside.join(default)),
    };
    Ok(Some(TlsFiles {
        ca: file(raw.ca, "tls.ca", "ca.crt")?,
        cert: file(raw.cert, "tls.cert", "node.crt")?,
        key: file(raw.key, "tls.key", "node.key")?,
    }))
}

fn parse_watchdog(
    check: &Check,
    raw: Option<RawWatchdog>,
    kind: NodeKind,
    lease: &LeaseSettings,
) -> Result<WatchdogConfig, ConfigError> {
    let raw = raw.unwrap_or(RawWatchdog {
        mode: None,
        device: None,
    });
    let mode = match raw.mode.as_deref() {
        None | Some("off") => WatchdogMode::Off,
        Some("automatic") => WatchdogMode::Automatic,
        Some("required") => WatchdogMode::Required,
        Some(other) => {
            return Err(check.err(
                "watchdog.mode",
                format!("is {other:?} (set it to \"off\", \"automatic\" or \"required\")"),
            ))
        }
    };
    let device = raw
        .device
        .map(|p| check.absolute(p, "watchdog.device"))
        .transpose()?
        .unwrap_or_else(|| PathBuf::from("/dev/watchdog"));
    if mode == WatchdogMode::Off {
        return Ok(WatchdogConfig { mode, device });
    }
    // An error rather than a warning, as for [vip]: a witness never holds the lease, so a
    // watchdog there protects nothing, and the file was likely meant for a data node.
    if kind == NodeKind::Witness {
        return Err(check.err(
            "watchdog.mode",
            format!(
                "is \"{mode}\" on a witness, which holds no lease and runs no database (remove \
                 the section or set mode = \"off\")"
            ),
        ));
    }
    if lease.watchdog_timeout_s().is_none() {
        return Err(check.err(
            "[watchdog]",
            format!(
                "needs lease - renew_interval of at least {} s (they are {} ms - {} ms): the \
                 primary feeds it for a renew_interval after each renewal, and the host must \
                 reset, a whole second after the last feed, {} ms before the lease ends \
                 (raise timing.lease or lower timing.renew_interval, or set mode = \"off\")",
                (1000 + LeaseSettings::WATCHDOG_RESET_MS) as f64 / 1000.0,
                lease.lease_ms,
                lease.renew_interval_ms,
                LeaseSettings::WATCHDOG_RESET_MS
            ),
        ));
    }
    Ok(WatchdogConfig { mode, device })
}

/// pg_hba.conf's connection types: the first word of every line of `[bootstrap] pg_hba`.
const HBA_TYPES: [&str; 6] = [
    "local",
    "host",
    "hostssl",
    "hostnossl",
    "hostgssenc",
    "hostnogssenc",
];

fn parse_bootstrap(check: &Check, raw: RawBootstrap) -> Result<BootstrapConfig, ConfigError> {
    let word = |key: &str, value: &str, example: &str| {
        if value.is_empty()
            || !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(check.err(
                key,
                format!("is {value:?}: give a name such as {example:?} (letters, digits, - _ . @)"),
            ));
        }
        Ok(value.to_string())
    };
    let encoding = word(
        "bootstrap.encoding",
        raw.encoding.as_deref().unwrap_or("UTF8"),
        "UTF8",
    )?;
    let locale = raw
        .locale
        .map(|l| word("bootstrap.locale", &l, "C.UTF-8"))
        .transpose()?;
    for (i, line) in raw.pg_hba.iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let minimum = if fields.first() == Some(&"local") {
            4
        } else {
            5
        };
        let problem = if line.contains('\n') {
            Some("holds a line break: give each line as its own string".to_string())
        } else if !fields.first().is_some_and(|t| HBA_TYPES.contains(t)) {
            Some(format!(
                "does not begin with a connection type ({})",
                HBA_TYPES.join(", ")
            ))
        } else if fields.len() < minimum {
            Some(format!(
                "has {} fields, {} needs at least {minimum} (TYPE DATABASE USER{} METHOD)",
                fields.len(),
                fields[0],
                if minimum == 5 { " ADDRESS" } else { "" }
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(check.err(
                &format!("bootstrap.pg_hba[{i}]"),
                format!(
                    "{line:?} {problem}; for example \"hostssl all all 10.0.1.0/24 \
                     scram-sha-256\""
                ),
            ));
        }
    }
    Ok(BootstrapConfig {
        encoding,
        locale,
        data_checksums: raw.data_checksums.unwrap_or(true),
        pg_hba: raw.pg_hba,
    })
}

fn parse_vip(check: &Check, mut raw: RawVip) -> Result<VipConfig, ConfigError> {
    // `address = ""`, as show-config prints none: no address in this file.
    raw.address = raw.address.filter(|a| !a.is_empty());
    if let Some(text) = &raw.address {
        pgfm_core::settings::vip_address(text).map_err(|why| check.err("vip.address", why))?;
    }
    let interface = check.required(
        raw.interface,
        "vip.interface",
        "name the interface that carries the cluster's network, such as \"eth0\"",
    )?;
    Ok(VipConfig {
        address: raw.address,
        interface,
        check_before_promotion: raw.check_before_promotion.unwrap_or(true),
        check_timeout: raw.check_timeout.unwrap_or(Duration::from_secs(5)),
    })
}

struct Check<'a> {
    file: &'a Path,
}

impl Check<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn required<T>(&self, value: Option<T>, key: &str, hint: &str) -> Result<T, ConfigError> {
        value.ok_or_else(|| self.err(key, format!("is missing ({hint})")))
    }

    fn name(&self, value: Option<String>, key: &str) -> Result<String, ConfigError> {
        let name = self.required(value, key, "add a name such as \"pg1\"")?;
        if !valid_name(&name) {
            return Err(self.err(
                key,
                format!("{name:?} is not a valid name (use 1-63 of a-z, 0-9, '-' and '_')"),
            ));
        }
        Ok(name)
    }

    fn absolute(&self, path: PathBuf, key: &str) -> Result<PathBuf, ConfigError> {
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(self.err(
                key,
                format!("{:?} is not an absolute path (write it from /)", path),
            ))
        }
    }
}

impl Config {
    /// Read and validate `file`, including what it names on this machine (token file,
    /// PostgreSQL binaries, OS user, passfile).
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let config = Config::load_static(file)?;
        config.check_environment()?;
        Ok(config)
    }

    /// Read and validate `file` without looking at anything else on the machine.
    pub fn load_static(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            message: format!("cannot be read: {e} (pass the right file with -c)"),
        })?;
        Config::parse(file, &text)
    }

    /// Parse and validate config text; `file` is used in error messages.
    ///
    /// The sections are checked in a fixed order, so that a file with several mistakes
    /// always reports the same one first: `failover.on_crash` comes before `[vip]` and the
    /// rest of `[failover]` after `[watchdog]`, as they always have.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let check = Check { file };
        let raw = parse_toml(&check, text)?;
        let cluster_keys = keys_set(&raw);

        let cluster = check.name(raw.cluster, "cluster")?;
        let token_file = check.required(
            raw.token_file,
            "token_file",
            "point it at a file holding the cluster's shared secret",
        )?;
        let token_file = check.absolute(token_file, "token_file")?;

        let node = parse_node(&check, raw.node)?;
        let peers = parse_peers(&check, raw.peers, &node.name, node.listen)?;
        let postgres = parse_postgres(
            &check,
            raw.postgres,
            node.kind,
            node.listen,
            &node.state_dir,
        )?;
        let timing = parse_timing(&raw.timing);
        let on_crash = parse_on_crash(&check, raw.failover.on_crash.as_deref())?;
        // A witness may name the cluster's address (it may be the agent that forms the
        // cluster and commits it), never carry it.
        let (vip, vip_address) = match raw.vip {
            None => (None, None),
            Some(mut v) if node.kind == NodeKind::Witness => {
                v.address = v.address.filter(|a| !a.is_empty());
                if v.interface.is_some()
                    || v.check_before_promotion.is_some()
                    || v.check_timeout.is_some()
                {
                    return Err(check.err(
                        "vip",
                        "sets a node's keys on a witness, which never carries the virtual IP \
                         (keep address alone, the cluster's, or remove the section)",
                    ));
                }
                if let Some(text) = &v.address {
                    pgfm_core::settings::vip_address(text)
                        .map_err(|why| check.err("vip.address", why))?;
                }
                (None, v.address)
            }
            Some(v) => {
                let vip = parse_vip(&check, v)?;
                let address = vip.address.clone();
                (Some(vip), address)
            }
        };
        let sync = parse_replication(&check, &raw.replication)?;
        let failover = parse_failover(&check, &raw.failover, on_crash)?;
        let parameters = parse_parameters(&check, &raw.postgresql)?;
        if let Some(problem) = cluster_settings(
            &timing,
            &failover,
            sync,
            parameters.clone(),
            vip_address.clone(),
        )
        .problem()
        {
            return Err(check.err(&problem.key, problem.message));
        }
        let watchdog = parse_watchdog(&check, raw.watchdog, node.kind, &timing.lease)?;
        let tls = parse_tls(&check, raw.tls, &token_file)?;
        let bootstrap = parse_bootstrap(&check, raw.bootstrap)?;
        Ok(Config {
            file: file.to_path_buf(),
            cluster,
            token_file,
            name: node.name,
            kind: node.kind,
            listen: node.listen,
            state_dir: node.state_dir,
            priority: node.priority,
            promotable: node.promotable,
            peers,
            postgres,
            timing,
            failover,
            hooks: parse_hooks(raw.hooks),
            vip,
            vip_address,
            sync,
            parameters,
            watchdog,
            tls,
            bootstrap,
            cluster_keys,
        })
    }

    /// The cluster-wide settings this file gives: the cluster's until its first
    /// coordinator committed them (`ClusterState::settings`).
    pub fn settings(&self) -> Settings {
        cluster_settings(
            &self.timing,
            &self.failover,
            self.sync,
            self.parameters.clone(),
            self.vip_address.clone(),
        )
    }

    /// The keys this file sets to another value than `committed`'s, each with both values:
    /// `timing.lease = 3s in this file; the cluster's is 2400ms`.
    pub fn differences(&self, committed: &Settings) -> Vec<String> {
        let mine = self.settings().entries();
        committed
            .entries()
            .into_iter()
            .zip(mine)
            .filter(|((key, theirs), (_, ours))| theirs != ours && self.cluster_keys.contains(*key))
            .map(|((key, theirs), (_, ours))| {
                format!("{key} = {ours} in this file; the cluster's is {theirs}")
            })
            .chain(self.parameters.iter().filter_map(|(name, ours)| {
                let key = format!("{}.{name}", pgfm_core::settings::PARAMETERS);
                match committed.parameters.get(name) {
                    Some(theirs) if theirs == ours => None,
                    Some(theirs) => Some(format!(
                        "{key} = {ours} in this file; the cluster's is {theirs}"
                    )),
                    None => Some(format!("{key} = {ours} in this file; the cluster has none")),
                }
            }))
            .collect()
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        Check { file: &self.file }.err(key, message)
    }

    /// Read the cluster token; it must be non-empty and readable by its owner only.
    pub fn read_token(&self) -> Result<Arc<str>, ConfigError> {
        let key = "token_file";
        let path = &self.token_file;
        let meta = std::fs::metadata(path).map_err(|e| {
            self.err(
                key,
                format!(
                    "{}: {e} (create it with a random secret, mode 600)",
                    path.display()
                ),
            )
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(self.err(
                key,
                format!(
                    "{} can be read by other users (chmod 600 {})",
                    path.display(),
                    path.display()
                ),
            ));
        }
        let token = std::fs::read_to_string(path)
            .map_err(|e| self.err(key, format!("{}: {e}", path.display())))?;
        let token = token.trim();
        if token.len() < 16 {
            return Err(self.err(
                key,
                format!(
                    "{} holds {} characters; use a random secret of at least 16",
                    path.display(),
                    token.len()
                ),
            ));
        }
        Ok(Arc::from(token))
    }

    /// The PostgreSQL bin directory: configured, else detected.
    pub fn bin_dir(&self) -> Result<Option<PathBuf>, ConfigError> {
        let Some(pg) = &self.postgres else {
            return Ok(None);
        };
        match &pg.bin_dir {
            Some(dir) => match binaries::missing_program(dir) {
                None => Ok(Some(dir.clone())),
                Some(program) => Err(self.err(
                    "postgres.bin_dir",
                    format!(
                        "{:?} has no {program} (set bin_dir to the PostgreSQL server's bin \
                         directory or install postgresql)",
                        dir.display().to_string()
                    ),
                )),
            },
            None => binaries::find_bin_dir().map(Some).ok_or_else(|| {
                self.err(
                    "postgres.bin_dir",
                    "is not set and no PostgreSQL server binaries were found (install \
                     postgresql or set bin_dir)",
                )
            }),
        }
    }

    /// Check what the config names on this machine.
    pub fn check_environment(&self) -> Result<(), ConfigError> {
        self.read_token()?;
        self.load_tls()?;
        if let Some(pg) = &self.postgres {
            self.bin_dir()?;
            OsUser::lookup(&pg.os_user).map_err(|e| self.err("postgres.os_user", e))?;
            if let Some(pf) = &pg.passfile {
                let meta = std::fs::metadata(pf)
                    .map_err(|e| self.err("postgres.passfile", format!("{}: {e}", pf.display())))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(self.err(
                        "postgres.passfile",
                        format!(
                            "{} can be read by other users; libpq ignores it (chmod 600)",
                            pf.display()
                        ),
                    ));
                }
                // PostgreSQL's stream and pg_basebackup read it as the OS user.
                let user =
                    OsUser::lookup(&pg.os_user).map_err(|e| self.err("postgres.os_user", e))?;
                user.can_read(pf)
                    .map_err(|e| self.err("postgres.passfile", e))?;
            }
        }
        Ok(())
    }

    /// The TLS set of `[tls]`, read and checked (None when TLS is off): the certificate
    /// must chain to the CA, be valid now and name this node's listen address.
    pub fn load_tls(&self) -> Result<Option<Arc<pgfm_tls::Tls>>, ConfigError> {
        let Some(files) = &self.tls else {
            return Ok(None);
        };
        pgfm_tls::Tls::load(files.clone(), &self.listen.ip().to_string())
            .map(Some)
            .map_err(|e| {
                self.err(
                    "[tls]",
                    format!(
                        "{e} (pgfm init writes these files; to run without TLS, which sends \
                         the cluster token in clear, set mode = \"off\" in [tls] on every node)"
                    ),
                )
            })
    }

    /// Warnings that do not stop the agent.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.tls.is_none() {
            warnings.push(format!(
                "config {}: [tls] mode = \"off\": agents and the CLI talk plain HTTP, and \
                 anyone who can read the network can read the cluster token",
                self.file.display()
            ));
        }
        if self.peers.len() < 3 {
            warnings.push(format!(
                "config {}: peers lists {} agent(s); a cluster needs at least three voting \
                 agents (two data nodes and a witness) to ever fail over safely",
                self.file.display(),
                self.peers.len()
            ));
        }
        warnings
    }

    /// `(name, address)` of every configured peer.
    pub fn peer_list(&self) -> Vec<(String, String)> {
        self.peers
            .iter()
            .map(|p| (p.name.clone(), p.address.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "lab"
token_file = "/etc/pgfm/token"

[node]
name = "pg1"
kind = "data"
listen = "127.0.0.1:7001"
state_dir = "/var/lib/pgfm"

[[peers]]
name = "pg1"
address = "127.0.0.1:7001"
[[peers]]
name = "pg2"
address = "127.0.0.1:7002"
[[peers]]
name = "witness"
address = "127.0.0.1:7003"

[postgres]
data_dir = "/var/lib/postgresql/15/main"
port = 5432
"#;

    /// Apply `edit` (a replacement of one line or a suffix) to GOOD and check the error.
    fn check(from: &str, to: &str, expected: &str) {
        assert!(GOOD.contains(from), "test edit {from:?} does not apply");
        let text = GOOD.replacen(from, to, 1);
        let got = match Config::parse(Path::new("pg1.toml"), &text) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expected, "after replacing {from:?} with {to:?}");
    }

    #[test]
    fn a_good_config_validates_with_defaults() {
        let config = Config::parse(Path::new("pg1.toml"), GOOD).unwrap();
        let pg = config.postgres.as_ref().unwrap();
        assert_eq!(pg.host, "127.0.0.1");
        assert_eq!(pg.os_user, "postgres");
        assert_eq!(pg.log_file, PathBuf::from("/var/lib/pgfm/postgres.log"));
        assert_eq!(config.timing.report_ttl, Duration::from_secs(3));
        assert_eq!(config.priority, 100);
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn each_mistake_has_its_message() {
        check(
            "cluster = \"lab\"",
            "",
            "config pg1.toml: cluster is missing (add a name such as \"pg1\")",
        );
        check("cluster = \"lab\"", "cluster = \"Lab 1\"", "config pg1.toml: cluster \"Lab 1\" is not a valid name (use 1-63 of a-z, 0-9, '-' and '_')");
        check(
            "token_file = \"/etc/pgfm/token\"",
            "token_file = \"token\"",
            "config pg1.toml: token_file \"token\" is not an absolute path (write it from /)",
        );
        check(
            "kind = \"data\"",
            "kind = \"database\"",
            "config pg1.toml: node.kind is \"database\" (set it to \"data\" or \"witness\")",
        );
        check("listen = \"127.0.0.1:7001\"", "listen = \"localhost\"", "config pg1.toml: node.listen \"localhost\" is not an ip:port address (for example \"10.0.0.1:7400\")");
        check("state_dir = \"/var/lib/pgfm\"", "", "config pg1.toml: node.state_dir is missing (set it to a directory the agent owns, such as /var/lib/pgfm)");
        check(
            "name = \"pg2\"",
            "name = \"pg1\"",
            "config pg1.toml: peers[1].name \"pg1\" is listed twice",
        );
        check(
            "address = \"127.0.0.1:7002\"",
            "address = \"127.0.0.1:7001\"",
            "config pg1.toml: peers[1].address \"127.0.0.1:7001\" is used by two peers",
        );
        check("address = \"127.0.0.1:7001\"", "address = \"127.0.0.1:7009\"", "config pg1.toml: peers give \"pg1\" the address 127.0.0.1:7009 but node.listen is 127.0.0.1:7001 (make them equal)");
        check("[[peers]]\nname = \"pg1\"\naddress = \"127.0.0.1:7001\"\n", "", "config pg1.toml: peers do not include this node \"pg1\" (list every agent, this one too)");
        check(
            "port = 5432",
            "",
            "config pg1.toml: postgres.port is missing (set it, usually 5432)",
        );
        check(
            "port = 5432",
            "port = 99999",
            "config pg1.toml: line 23: invalid value: integer `99999`, expected u16",
        );
        check(
            "data_dir = \"/var/lib/postgresql/15/main\"\n",
            "",
            "config pg1.toml: postgres.data_dir is missing (set it to the PGDATA directory)",
        );
        check("kind = \"data\"", "kind = \"witness\"", "config pg1.toml: [postgres] is set on a witness, which has no database (remove the section or set node.kind = \"data\")");
        check("[postgres]\ndata_dir = \"/var/lib/postgresql/15/main\"\nport = 5432\n", "", "config pg1.toml: [postgres] is missing; a data node needs it (at least data_dir and port)");
        check("port = 5432", "port = 5432\nprot = 1", "config pg1.toml: line 24: unknown field `prot`, expected one of `bin_dir`, `data_dir`, `host`, `port`, `listen_addresses`, `socket_dir`, `os_user`, `superuser`, `replication_user`, `passfile`, `log_file`");
        check("port = 5432", "port = 5432\n[timing]\nprobe_interval = \"1s\"\nreport_ttl = \"1s\"", "config pg1.toml: timing.report_ttl is 1s, not longer than timing.probe_interval (1s); every agent would flap between up and down (make it at least twice the probe interval)");
        check(
            "port = 5432",
            "port = 5432\n[timing]\nprobe_interval = \"soon\"",
            "config pg1.toml: line 25: invalid value: string \"soon\", expected a duration",
        );
    }

    #[test]
    fn failover_and_lease_mistakes_have_their_messages() {
        check("port = 5432", "port = 5432\n[timing]\nlease = \"800ms\"", "config pg1.toml: [timing] lease settings do not work: safety_margin (800 ms) must be shorter than lease (800 ms)");
        check("port = 5432", "port = 5432\n[failover]\non_crash = \"panic\"", "config pg1.toml: failover.on_crash is \"panic\" (set it to \"restart\" or \"failover\")");
        check("port = 5432", "port = 5432\n[failover]\nrejoin = \"auto\"", "config pg1.toml: failover.rejoin is \"auto\" (set it to \"rewind\", \"rewind-or-clone\" or \"manual\")");
        check("port = 5432", "port = 5432\n[failover]\nswitchover_timeout = \"200ms\"", "config pg1.toml: failover.switchover_timeout is 200ms (a clean shutdown and the target's replay need at least 1s; the default is 5s)");
        check("port = 5432", "port = 5432\n[failover]\nstart_attempts = 0", "config pg1.toml: failover.start_attempts is 0 (set it to at least 1; the default is 3)");
        check("port = 5432", "port = 5432\n[vip]\naddress = \"10.0.0.100\"\ninterface = \"eth0\"", "config pg1.toml: vip.address \"10.0.0.100\" has no prefix (write it as ADDRESS/PREFIX, such as \"10.0.0.100/24\")");
        check("port = 5432", "port = 5432\n[vip]\naddress = \"fd00::1/64\"\ninterface = \"eth0\"", "config pg1.toml: vip.address \"fd00::1/64\" is IPv6; pgfm moves IPv4 virtual IPs only (announced with ARP) (write it as ADDRESS/PREFIX, such as \"10.0.0.100/24\")");
        check("port = 5432", "port = 5432\n[vip]\naddress = \"10.0.0.100/24\"", "config pg1.toml: vip.interface is missing (name the interface that carries the cluster's network, such as \"eth0\")");
        check("port = 5432", "port = 5432\n[vip]\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\ncheck_timeout = \"2s\"", "ok");
        check(
            "port = 5432",
            "port = 5432\n[replication]\nsynchronous = \"yes\"",
            "config pg1.toml: replication.synchronous is \"yes\" (set it to \"off\", \"on\" or \"quorum\")",
        );
        check("port = 5432", "port = 5432\n[replication]\nsynchronous = \"on\"\nsync_standbys = 0", "config pg1.toml: replication.sync_standbys is 0 (at least 1; for no synchronous standby set synchronous = \"off\")");
        check(
            "port = 5432",
            "port = 5432\n[replication]\nsynchronous = \"on\"\nstrict = true",
            "ok",
        );
        check(
            "port = 5432",
            "port = 5432\n[replication]\nsynchronous = \"quorum\"\nsync_standbys = 2\nminimum_standbys = 1",
            "ok",
        );
        check("port = 5432", "port = 5432\n[replication]\nsynchronous = \"quorum\"\nminimum_standbys = 2", "config pg1.toml: replication.minimum_standbys is 2, more than sync_standbys (1) (at most sync_standbys; that many is what strict = true means)");
        check("port = 5432", "port = 5432\n[replication]\nsynchronous = \"on\"\nsync_standbys = 2\nminimum_standbys = 1\nstrict = true", "config pg1.toml: replication.minimum_standbys is 1 with strict = true, which means minimum_standbys = sync_standbys (2) (set one of them, not both)");
        check("port = 5432", "port = 5432\n[failover]\nauto_failover = false\nrejoin = \"manual\"\non_crash = \"failover\"\ncrash_restart_bound = \"5s\"", "ok");
    }

    /// `pgfm edit-config --set` and `--file`: what they change, what they keep, and each
    /// mistake in check-config's words.
    #[test]
    fn settings_are_edited_with_check_config_s_messages() {
        let current = Config::parse(Path::new("pg1.toml"), GOOD)
            .unwrap()
            .settings();
        // The changes made, or the error, in words.
        let shown = |edited: Result<Settings, ConfigError>| match edited {
            Ok(s) => s
                .changes_from(&current)
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => e.to_string(),
        };
        let set = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            shown(settings_set(&current, &sets))
        };
        assert_eq!(
            set(&[
                "failover.switchover_timeout=10s",
                "replication.synchronous=on"
            ]),
            "failover.switchover_timeout: 5s -> 10s, replication.synchronous: off -> on"
        );
        assert_eq!(
            set(&["failover.auto_failover = false"]),
            "failover.auto_failover: true -> false"
        );
        assert_eq!(
            set(&["replication.synchronous=quorum", "replication.sync_standbys=2", "replication.strict=true"]),
            "replication.synchronous: off -> quorum, replication.sync_standbys: 1 -> 2, replication.minimum_standbys: 0 -> 2"
        );
        assert_eq!(
            set(&["failover.start_attempts=0"]),
            "config --set: failover.start_attempts is 0 (set it to at least 1; the default is 3)"
        );
        assert_eq!(set(&["timing.report_ttl=500ms"]), "config --set: timing.report_ttl is 500ms, not longer than timing.probe_interval (1s); every agent would flap between up and down (make it at least twice the probe interval)");
        assert_eq!(
            set(&["timing.lease=4000"]),
            "config --set: invalid type: integer `4000`, expected a duration (a duration needs its unit: 3s, 2400ms)"
        );
        assert_eq!(set(&["replication.synchronous=yes"]), "config --set: replication.synchronous is \"yes\" (set it to \"off\", \"on\" or \"quorum\")");
        assert!(set(&["postgres.port=5433"]).starts_with("config --set: postgres.port is not a cluster-wide setting; those are timing.probe_interval, "), "{}", set(&["postgres.port=5433"]));
        assert_eq!(set(&["failover.max_lag"]), "config --set: failover.max_lag is not KEY=VALUE (for example --set failover.switchover_timeout=10s)");

        let file = |text: &str| shown(settings_with(&current, Path::new("new.toml"), text));
        assert_eq!(
            file("[failover]\nmax_lag = 0\n"),
            "failover.max_lag: 1048576 -> 0"
        );
        assert_eq!(file("[failover]\nmax_lagg = 0\n"), "config new.toml: line 2: unknown field `max_lagg`, expected one of `max_lag`, `auto_failover`, `on_crash`, `crash_restart_bound`, `rejoin`, `switchover_timeout`, `start_attempts`");
        assert_eq!(file("[postgres]\nport = 1\n"), "config new.toml: line 1: unknown field `postgres`, expected one of `timing`, `failover`, `replication`, `postgresql`, `vip`");
        // The virtual IP's address is the cluster's; its interface is a node's.
        assert_eq!(
            set(&["vip.address=10.0.0.100/24"]),
            "vip.address: (none) -> 10.0.0.100/24"
        );
        assert_eq!(
            set(&["vip.address=10.0.0.100"]),
            "config --set: vip.address \"10.0.0.100\" has no prefix (write it as ADDRESS/PREFIX, such as \"10.0.0.100/24\")"
        );
        assert!(
            set(&["vip.interface=eth0"])
                .starts_with("config --set: vip.interface is not a cluster-wide setting"),
            "{}",
            set(&["vip.interface=eth0"])
        );
        let with_vip = settings_set(&current, &["vip.address=10.0.0.100/24".into()]).unwrap();
        assert_eq!(
            parse_settings(Path::new("edit"), &with_vip.to_toml()).unwrap(),
            with_vip
        );
        assert_eq!(
            shown(
                settings_set(&with_vip, &["vip.address=".into()]).inspect(|s| {
                    assert_eq!(s.vip_address, None);
                })
            ),
            ""
        );
        // PostgreSQL's parameters: set, merged, removed with an empty value, checked.
        let with_mem =
            settings_set(&current, &["postgresql.parameters.work_mem=64MB".into()]).unwrap();
        assert_eq!(
            shown(Ok(with_mem.clone())),
            "postgresql.parameters.work_mem: (unset) -> 64MB"
        );
        assert_eq!(
            shown(settings_with(&with_mem, Path::new("new.toml"), "[postgresql.parameters]\nmax_connections = 200\n").inspect(|s| {
                assert_eq!(s.parameters["work_mem"], "64MB");
            })),
            "postgresql.parameters.max_connections: (unset) -> 200, postgresql.parameters.work_mem: (unset) -> 64MB"
        );
        let removed = settings_set(&with_mem, &["postgresql.parameters.work_mem=".into()]).unwrap();
        assert!(removed.parameters.is_empty(), "{:?}", removed.parameters);
        assert_eq!(
            set(&["postgresql.parameters.port=5433"]),
            "config --set: postgresql.parameters.port is set by pgfm: each node's own, set in its [postgres] section"
        );
        assert_eq!(
            set(&["postgresql.parameters.work_mme=1MB"]),
            "config --set: postgresql.parameters.work_mme is not a parameter PostgreSQL knows (pg_settings lists them; an extension's is written with its prefix, as auto_explain.log_min_duration)"
        );
        assert_eq!(
            file("[postgresql.parameters]\nwork_mem = [1]\n"),
            "config new.toml: postgresql.parameters.work_mem is not a string, a number or true/false"
        );
        // The editor's text with parameters reads back the same.
        let text = with_mem.to_toml();
        assert_eq!(parse_settings(Path::new("edit"), &text).unwrap(), with_mem);
        // The editor's text is the whole of the settings: what it leaves out is the default.
        let whole = parse_settings(Path::new("edit"), &current.to_toml()).unwrap();
        assert_eq!(whole, current);
    }

    #[test]
    fn bootstrap_options_and_their_mistakes() {
        let config = Config::parse(Path::new("pg1.toml"), GOOD).unwrap();
        assert_eq!(
            config.bootstrap,
            BootstrapConfig {
                encoding: "UTF8".into(),
                locale: None,
                data_checksums: true,
                pg_hba: Vec::new(),
            }
        );
        let with = |section: &str| format!("port = 5432\n[bootstrap]\n{section}");
        check("port = 5432", &with("encoding = \"LATIN1\"\nlocale = \"C.UTF-8\"\ndata_checksums = false\npg_hba = [\"hostssl all app 10.0.1.0/24 scram-sha-256\", \"local all all peer\"]"), "ok");
        check("port = 5432", &with("locale = \"en_US UTF8\""), "config pg1.toml: bootstrap.locale is \"en_US UTF8\": give a name such as \"C.UTF-8\" (letters, digits, - _ . @)");
        check("port = 5432", &with("pg_hba = [\"hots all all 10.0.1.0/24 md5\"]"), "config pg1.toml: bootstrap.pg_hba[0] \"hots all all 10.0.1.0/24 md5\" does not begin with a connection type (local, host, hostssl, hostnossl, hostgssenc, hostnogssenc); for example \"hostssl all all 10.0.1.0/24 scram-sha-256\"");
        check("port = 5432", &with("pg_hba = [\"local all all peer\", \"hostssl all all scram-sha-256\"]"), "config pg1.toml: bootstrap.pg_hba[1] \"hostssl all all scram-sha-256\" has 4 fields, hostssl needs at least 5 (TYPE DATABASE USER ADDRESS METHOD); for example \"hostssl all all 10.0.1.0/24 scram-sha-256\"");
    }

    #[test]
    fn watchdog_mistakes_have_their_messages() {
        let config = Config::parse(Path::new("pg1.toml"), GOOD).unwrap();
        assert_eq!(
            config.watchdog,
            WatchdogConfig {
                mode: WatchdogMode::Off,
                device: PathBuf::from("/dev/watchdog"),
            }
        );
        let with = |section: &str| format!("port = 5432\n[watchdog]\n{section}");
        check("port = 5432", &with("mode = \"required\""), "ok");
        check(
            "port = 5432",
            &with("mode = \"automatic\"\ndevice = \"/tmp/lab/pg1/watchdog\""),
            "ok",
        );
        check("port = 5432", &with("mode = \"on\""), "config pg1.toml: watchdog.mode is \"on\" (set it to \"off\", \"automatic\" or \"required\")");
        check("port = 5432", &with("mode = \"required\"\ndevice = \"watchdog\""), "config pg1.toml: watchdog.device \"watchdog\" is not an absolute path (write it from /)");
        check(
            "port = 5432",
            &with("mode = \"required\"\ntimeout = 5"),
            "config pg1.toml: line 26: unknown field `timeout`, expected `mode` or `device`",
        );
        // 1.6 s - 750 ms leaves 600 ms after the reset time: no whole second.
        let tight = "[timing]\nlease = \"1600ms\"\nsafety_margin = \"100ms\"\nrenew_interval = \"750ms\"\ndrift_margin = \"100ms\"";
        check("port = 5432", &format!("port = 5432\n{tight}\n[watchdog]\nmode = \"automatic\""), "config pg1.toml: [watchdog] needs lease - renew_interval of at least 1.25 s (they are 1600 ms - 750 ms): the primary feeds it for a renew_interval after each renewal, and the host must reset, a whole second after the last feed, 250 ms before the lease ends (raise timing.lease or lower timing.renew_interval, or set mode = \"off\")");
        check(
            "port = 5432",
            &format!("port = 5432\n{tight}\n[watchdog]\nmode = \"off\""),
            "ok",
        );
        let witness = GOOD
            .replace("kind = \"data\"", "kind = \"witness\"")
            .replace(
                "[postgres]\ndata_dir = \"/var/lib/postgresql/15/main\"\nport = 5432\n",
                "",
            );
        for (section, expected) in [
            ("mode = \"off\"", "ok".to_string()),
            ("mode = \"required\"", "config witness.toml: watchdog.mode is \"required\" on a witness, which holds no lease and runs no database (remove the section or set mode = \"off\")".to_string()),
        ] {
            let text = format!("{witness}\n[watchdog]\n{section}\n");
            let got = match Config::parse(Path::new("witness.toml"), &text) {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            assert_eq!(got, expected, "{section}");
        }
        // A witness names the cluster's virtual IP (it may form the cluster and commit it),
        // never an interface to carry it on.
        for (section, expected) in [
            ("address = \"10.0.0.100/24\"", "ok"),
            ("address = \"\"", "none"),
            ("address = \"10.0.0.100/24\"\ninterface = \"eth0\"", "config witness.toml: vip sets a node's keys on a witness, which never carries the virtual IP (keep address alone, the cluster's, or remove the section)"),
            ("address = \"10.0.0.100\"", "config witness.toml: vip.address \"10.0.0.100\" has no prefix (write it as ADDRESS/PREFIX, such as \"10.0.0.100/24\")"),
        ] {
            let text = format!("{witness}\n[vip]\n{section}\n");
            match Config::parse(Path::new("witness.toml"), &text) {
                Ok(config) if expected == "none" => {
                    assert_eq!(config.settings().vip_address, None, "{section}");
                }
                Ok(config) => {
                    assert_eq!(expected, "ok", "{section}");
                    assert_eq!(config.settings().vip_address.as_deref(), Some("10.0.0.100/24"));
                }
                Err(e) => assert_eq!(e.to_string(), expected, "{section}"),
            }
        }
    }

    #[test]
    fn environment_errors_name_the_key_and_the_fix() {
        let dir = std::env::temp_dir().join(format!("pgfm-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        let text = GOOD.replace("/etc/pgfm/token", &token.display().to_string());
        let config = Config::parse(Path::new("pg1.toml"), &text).unwrap();

        let err = config.read_token().unwrap_err().to_string();
        assert!(
            err.starts_with("config pg1.toml: token_file ")
                && err.contains("create it with a random secret"),
            "{err}"
        );
        std::fs::write(&token, "0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = config.read_token().unwrap_err().to_string();
        assert!(
            err.contains("can be read by other users (chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&*config.read_token().unwrap(), "0123456789abcdef0123");

        let text = text.replace("port = 5432", "port = 5432\nbin_dir = \"/nonexistent/bin\"");
        let config = Config::parse(Path::new("pg1.toml"), &text).unwrap();
        assert_eq!(
            config.bin_dir().unwrap_err().to_string(),
            "config pg1.toml: postgres.bin_dir \"/nonexistent/bin\" has no postgres (set bin_dir to the PostgreSQL server's bin directory or install postgresql)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_agents_are_warned_about() {
        let text = GOOD.replace(
            "[[peers]]\nname = \"witness\"\naddress = \"127.0.0.1:7003\"\n",
            "",
        );
        let config = Config::parse(Path::new("pg1.toml"), &text).unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("at least three voting agents"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pgfm.toml");
        let config = Config::load_static(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.kind, NodeKind::Data);
        assert_eq!(config.peers.len(), 3);
        assert!(config.warnings().is_empty());
    }
}
