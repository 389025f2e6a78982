//! The JSON the API speaks. `ClusterStatus` is the schema of `cluster-status --json`,
//! documented in the README: change both together.

use serde::{Deserialize, Serialize};

use pgfm_core::{Lsn, NodeReport, Timeline, WatchdogMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKindStatus {
    Primary,
    Standby,
    Witness,
    Idle,
    /// Under maintenance (`pgfm maintenance NODE on`): never promoted, never synchronous;
    /// its PostgreSQL stopped unless kept running.
    Maintenance,
    /// A kind a newer agent knows and this program does not.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Up {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DbStatus {
    #[serde(rename = "up")]
    Up,
    #[serde(rename = "down")]
    Down,
    #[serde(rename = "n/a")]
    NotApplicable,
}

/// One member of the cluster as `cluster-status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub kind: NodeKindStatus,
    pub agent: Up,
    pub db: DbStatus,
    /// The node's host (where its agent and PostgreSQL listen).
    pub address: String,
    pub agent_port: u16,
    pub pg_port: Option<u16>,
    /// The newest WAL position on the node: current on a primary, received on a standby.
    pub lsn: Option<Lsn>,
    pub replayed_lsn: Option<Lsn>,
    pub timeline: Option<Timeline>,
    /// How far this standby's replay is behind the primary, in bytes.
    pub lag_bytes: Option<u64>,
    /// Streaming and within `max_lag` of the primary.
    pub in_sync: Option<bool>,
    pub priority: Option<u32>,
    pub promotable: Option<bool>,
    /// Whether the node carries the virtual IP (null: no VIP configured, or no report).
    #[serde(default)]
    pub vip: Option<bool>,
    /// Standbys: `sync_state` in the primary's `pg_stat_replication` (`sync`, `potential`,
    /// `async`).
    #[serde(default)]
    pub sync_state: Option<String>,
    /// Data nodes: the host watchdog (null: a witness, or no report).
    #[serde(default)]
    pub watchdog: Option<WatchdogStatus>,
    /// Under maintenance: since when, who put it there, whether PostgreSQL keeps running
    /// (null: not under maintenance).
    #[serde(default)]
    pub maintenance: Option<pgfm_core::model::Maintenance>,
    /// PostgreSQL parameters changed that take effect only at a restart
    /// (`pg_settings.pending_restart`).
    #[serde(default)]
    pub pending_restart: Vec<String>,
    /// Data nodes: the tags set (`pgfm set-tag`), as `set-tag` takes them (`nofailover`,
    /// `replicate_from=pg2`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// A standby: the node it streams from now (null: not streaming, or a primary).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Data nodes: how many reloads asked by `pgfm reload` its agent has carried out since
    /// it started.
    #[serde(default)]
    pub reloaded: u64,
    /// Data nodes: how many restarts in place (`pgfm restart --in-place`) its agent has
    /// carried out since it started.
    #[serde(default)]
    pub restarted: u64,
    /// What the node is doing or waiting for.
    pub info: String,
}

/// A data node's host watchdog (`[watchdog]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogStatus {
    /// `off`, `automatic` or `required`.
    pub mode: WatchdogMode,
    /// Armed now: the node is the primary and holds the lease.
    pub armed: bool,
    /// The timeout the answering agent's lease settings give, in seconds (null: none fits).
    pub timeout_s: Option<u64>,
    /// Why the node cannot use it (null: it can, as far as its agent can tell without
    /// arming it).
    pub problem: Option<String>,
}

/// Synchronous replication as configured and as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// `on` (`FIRST n`), `quorum` (`ANY n`), or `off` while a change to asynchronous is
    /// still under way.
    pub mode: String,
    /// How many standbys every commit waits for.
    pub standbys: usize,
    /// The fewest standbys the primary names when standbys are lost (then commits wait).
    pub minimum: usize,
    /// `minimum` is `standbys`: commits wait rather than have fewer copies.
    pub strict: bool,
    /// Where the settings come from: `settings` (the cluster's committed settings, `pgfm
    /// show-config`), `config` (each agent's `[replication]`, before the first commit) or
    /// `set-synchronous` (committed at run time by an agent from before settings were).
    pub source: String,
    /// The committed synchronous set: the only standbys a failover may promote.
    pub committed: Vec<String>,
    /// How many of `committed` hold every acknowledged commit (all of them with `on`).
    pub committed_quorum: usize,
    /// The standbys the primary's `synchronous_standby_names` names now.
    pub waiting_for: Vec<String>,
    /// How many of `waiting_for` each commit waits for.
    pub waiting_count: usize,
    /// Fewer synchronous standbys than asked (none: asynchronous); acknowledged commits may
    /// then exist only on the primary.
    pub degraded: bool,
}

/// The virtual IP and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatus {
    /// `ADDRESS/PREFIX`.
    pub address: String,
    /// The nodes that carry it now (exactly the primary when all is well).
    pub on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteStatus {
    pub safe: bool,
    pub message: String,
}

/// The answer to `GET /v1/status` and the output of `pgfm cluster-status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The agent that coordinates (the Raft leader), if one is elected.
    pub coordinator: Option<String>,
    /// The agent that answered.
    pub answered_by: String,
    pub generation: u64,
    pub primary: Option<String>,
    /// Maintenance mode (`pgfm pause`): no automatic failover.
    #[serde(default)]
    pub paused: bool,
    /// The answering coordinator's `auto_failover` setting.
    #[serde(default = "yes")]
    pub auto_failover: bool,
    pub max_lag_bytes: u64,
    pub nodes: Vec<NodeStatus>,
    /// The allowed node list: every voting member.
    pub allowed: Vec<String>,
    /// Promotable standbys, most preferred first.
    pub priority_list: Vec<String>,
    pub promote_status: PromoteStatus,
    /// The virtual IP, when the data nodes have one configured.
    #[serde(default)]
    pub vip: Option<VipStatus>,
    /// Synchronous replication, when the answering agent has it on (null: asynchronous).
    #[serde(default)]
    pub synchronous: Option<SyncStatus>,
    /// A switchover asked for later (`pgfm switchover --at TIME`; null: none).
    #[serde(default)]
    pub scheduled_switchover: Option<pgfm_core::model::ScheduledSwitchover>,
    /// A rolling restart asked for later (pgfm restart --at TIME), with how far it got;
    /// null: none.
    #[serde(default)]
    pub scheduled_restart: Option<pgfm_core::model::ScheduledRestart>,
    /// How the last scheduled restart ended (until another is scheduled); null: none.
    #[serde(default)]
    pub last_restart: Option<pgfm_core::model::RestartEnded>,
    /// Things an operator should look at (bootstrap refused, a node in the wrong role, ...).
    pub problems: Vec<String>,
    /// The answering agent serves HTTPS with mutual TLS (false: `[tls] mode = "off"`).
    #[serde(default = "yes")]
    pub tls: bool,
}

impl ClusterStatus {
    /// Whether everything is as it should be: every member up, a primary, a standby in
    /// sync. `cluster-status` exits non-zero otherwise.
    pub fn healthy(&self) -> bool {
        let all_up = self.nodes.iter().all(|n| {
            // A node under maintenance, stopped as asked, is as it should be.
            let stopped_as_asked = n.maintenance.as_ref().is_some_and(|m| !m.keep_running);
            n.agent == Up::Up
                && (n.db != DbStatus::Down || stopped_as_asked)
                && n.kind != NodeKindStatus::Idle
        });
        all_up && self.primary.is_some() && self.promote_status.safe
    }

    /// Whether the primary waits for exactly its committed synchronous standbys, as many as
    /// asked (true when synchronous replication is off).
    pub fn sync_settled(&self) -> bool {
        self.synchronous.as_ref().is_none_or(|s| {
            !s.degraded
                && s.mode != "off"
                && s.committed == s.waiting_for
                && s.committed_quorum == s.waiting_count
        })
    }
}

fn yes() -> bool {
    true
}

/// The answer to `POST /v1/report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// False when the receiver is not the coordinator; `coordinator` says who is.
    pub accepted: bool,
    pub coordinator: Option<String>,
    /// The coordinator's fresh reports from every agent, so that each agent sees the cluster.
    pub reports: Vec<AgedReport>,
}

/// A report relayed by the coordinator, with how long ago it received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgedReport {
    pub report: NodeReport,
    pub age_ms: u64,
}

/// The body of every error the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A command's answer in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

/// The body of `POST /v1/switchover`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    /// The standby to hand over to; the most advanced in-sync standby when absent.
    pub to: Option<String>,
}

/// The body of `POST /v1/switchover/schedule`: `pgfm switchover [--to NODE] --at TIME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRequest {
    /// The standby to hand over to; the one `pgfm switchover` would choose then when absent.
    pub to: Option<String>,
    /// When (ms since the epoch, UTC).
    pub at_unix_ms: u64,
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The answer to an accepted switchover: it is under way (committed in the Raft log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverStarted {
    pub from: String,
    pub to: String,
    /// The generation of `from`; the switchover ends with `to` primary of the next one.
    pub generation: u64,
}

/// What `/metrics` exposes about one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub node: String,
    /// `primary`, `standby`, `witness` or `idle`.
    pub role: String,
    pub generation: u64,
    pub is_coordinator: bool,
    /// Milliseconds left on this node's primary lease (primary only).
    pub lease_remaining_ms: Option<u64>,
    pub failovers_total: u64,
    pub switchovers_total: u64,
    /// Duration of this agent's last probe of its PostgreSQL.
    pub probe_latency_ms: Option<u64>,
    /// Each standby's replay lag behind the primary, as this agent knows it.
    pub lag_bytes: Vec<(String, u64)>,
    /// Each member's agent up (1) or down (0), as this agent knows it.
    pub agents_up: Vec<(String, bool)>,
    /// With synchronous replication: how many standbys each commit waits for now, and
    /// whether that is fewer than asked.
    pub sync_waiting: Option<(usize, bool)>,
    /// Seconds until this agent's TLS certificate or the cluster CA ends (None: TLS off).
    pub tls_valid_for_s: Option<i64>,
}

/// One promotion in `GET /v1/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub generation: u64,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    pub lsn: Option<Lsn>,
    /// WAL the old primary had that the new one lacks, as far as known (None: unknown).
    pub lost_bytes: Option<u64>,
    /// `lost_bytes` is a lower bound: the old primary's lease ran out, so it may have
    /// written more after its last report.
    #[serde(default)]
    pub lost_at_least: bool,
    /// A switchover that did not happen (rolled back or cancelled, `reason` says why):
    /// `to` was not promoted, `from` stayed the primary of `generation`.
    #[serde(default)]
    pub cancelled: bool,
    /// A cancelled hand-over of `pgfm promote` whose primary stopped renewing its lease:
    /// the promotion goes on as a failover to `to`.
    #[serde(default)]
    pub failover_instead: bool,
}

impl HistoryEntry {
    /// Where the entry stands in the history: the promotion to generation g, then the
    /// switchovers cancelled in g (by time), then the promotion to g + 1.
    pub fn order(&self) -> (u64, u64) {
        (
            2 * self.generation + u64::from(self.cancelled),
            self.at_unix_ms,
        )
    }
}

/// A health check's answer: `ok` decides 200 or 503.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub node: String,
    pub role: String,
    pub generation: u64,
    pub detail: String,
}

/// The body of `POST /v1/promote`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub to: Option<String>,
    /// Accept a target that lags (the answer says how much may be lost).
    #[serde(default)]
    pub force: bool,
}

/// The answer to an accepted `pgfm promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteStarted {
    /// The primary being replaced (None: there is none).
    pub from: Option<String>,
    /// The node to promote (None: the coordinator picks the best candidate).
    pub to: Option<String>,
    /// The generation being replaced; the promotion makes the next one.
    pub generation: u64,
    /// How it proceeds, in words.
    pub how: String,
}

/// The body of `POST /v1/priority`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityRequest {
    pub node: String,
    pub priority: u32,
}

/// The answer to `GET /v1/wal-position`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalPosition {
    pub in_recovery: bool,
    /// As a standby: the newest WAL received or replayed.
    pub position: Option<pgfm_core::Lsn>,
}

/// The body of `POST /v1/synchronous` (set-synchronous). Absent numbers keep the value in
/// force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynchronousRequest {
    /// `off`, `on` or `quorum`.
    pub mode: String,
    #[serde(default)]
    pub standbys: Option<usize>,
    #[serde(default)]
    pub minimum: Option<usize>,
    /// `minimum` = `standbys`.
    #[serde(default)]
    pub strict: bool,
}

/// `GET /v1/config` (show-config): the cluster-wide settings in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsView {
    /// The committed revision; 0 before the first coordinator committed any (`settings`
    /// are then the answering agent's own file's).
    pub revision: u64,
    pub settings: pgfm_core::settings::Settings,
    /// The latest commits, oldest first: who changed which keys, and when.
    pub history: Vec<pgfm_core::settings::SettingsChange>,
    /// Keys of the answering agent's own file that differ from `settings`.
    pub file_differs: Vec<String>,
}

/// The body of `POST /v1/config` (edit-config): the whole of the new settings, and the
/// revision they were edited from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditSettingsRequest {
    pub base_revision: u64,
    pub settings: pgfm_core::settings::Settings,
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The body of `POST /v1/maintenance`: `pgfm maintenance NODE on|off`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    pub node: String,
    /// true: on; false: off.
    pub on: bool,
    /// `--keep-running`: PostgreSQL stays up, out of failover and synchronous replication
    /// only.
    #[serde(default)]
    pub keep_running: bool,
    /// `--force`: even when the primary would be left without a promotable standby in sync,
    /// or the synchronous minimum could not be met without the node.
    #[serde(default)]
    pub force: bool,
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The answer to an accepted `pgfm maintenance`: committed; for the primary, the switchover
/// away from it is under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceStarted {
    pub message: String,
    pub switchover: Option<SwitchoverStarted>,
}

/// The body of `POST /v1/tags`: `pgfm set-tag NODE KEY=VALUE ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagsRequest {
    pub node: String,
    /// `KEY=VALUE` as typed (`pgfm_core::tags::Tag::parse`), changed together.
    pub tags: Vec<String>,
    /// `--force`: even when the primary would be left without a promotable standby in sync,
    /// or fewer standbys could be synchronous than the minimum.
    #[serde(default)]
    pub force: bool,
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The body of `POST /v1/reload`: `pgfm reload [NODE ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRequest {
    /// The data nodes to reload (empty: every one).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The answer to an accepted `pgfm reload` or `pgfm restart --in-place`: the count each
/// node's reloads (`NodeStatus::reloaded`) or restarts (`NodeStatus::restarted`) reach once
/// it has carried this one out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesAsked {
    pub message: String,
    pub asked: std::collections::BTreeMap<String, u64>,
}

/// The body of `POST /v1/restart`: `pgfm restart --in-place`, for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRequest {
    pub node: String,
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The body of `POST /v1/restart/schedule`: `pgfm restart [NODE ...] [--pending]
/// [--in-place] --at TIME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRestartRequest {
    /// The data nodes (empty: every one).
    pub nodes: Vec<String>,
    pub pending: bool,
    pub in_place: bool,
    /// When (ms since the epoch, UTC).
    pub at_unix_ms: u64,
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The body of `POST /v1/restart/cancel`: `pgfm restart --cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The body of `POST /v1/reinit`: `pgfm reinit NODE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReinitRequest {
    pub node: String,
    /// Who asked: `user@host` of the CLI.
    pub by: String,
}

/// The body of `POST /v1/members` (allow-node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRequest {
    pub name: String,
    /// The node's agent address, `ip:port`.
    pub address: String,
}

/// The body of `POST /v1/members/remove` (disallow-node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisallowRequest {
    pub name: String,
    /// Also when it is the primary, or when the rest would not have a majority up.
    #[serde(default)]
    pub force: bool,
}
