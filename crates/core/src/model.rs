//! The cluster model: the committed state kept in the Raft log (intent) and the reports
//! agents make about their PostgreSQL (observations).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{Generation, Lsn, NodeId, Timeline};

/// What a node is: a data node runs PostgreSQL, a witness only votes and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Data,
    Witness,
}

impl NodeKind {
    /// Its name in configs and on the wire: "data" or "witness".
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Data => "data",
            NodeKind::Witness => "witness",
        }
    }
}

/// A member of the cluster as committed in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub kind: NodeKind,
    /// The agent's HTTP address, `host:port`.
    pub address: String,
    /// Where other nodes reach this node's PostgreSQL (data nodes only).
    pub pg_host: Option<String>,
    pub pg_port: Option<u16>,
    /// Higher is preferred at failover; 0 never promotes.
    pub priority: u32,
    pub promotable: bool,
}

impl Member {
    pub fn id(&self) -> NodeId {
        NodeId::from_name(&self.name)
    }

    /// Whether the operator lets this member become the primary: promotable and a priority
    /// above 0 (invariant 5's first condition). It says nothing of its kind, its database
    /// or its lag: a witness never runs PostgreSQL, whatever it registered.
    pub fn can_be_promoted(&self) -> bool {
        self.promotable && self.priority > 0
    }
}

/// A change to the committed state. Every command is checked against the state it applies
/// to, so that a stale coordinator's proposal is refused rather than applied twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// An agent records (or updates) how to reach it and its failover settings.
    Register { member: Member },
    /// Every data node's data directory is empty: `node` (and no other) initialises the
    /// cluster with initdb, then becomes its first primary. Committed before it acts, so
    /// that two nodes never both initialise one (issue 14).
    ChooseInitdb { node: String, at_unix_ms: u64 },
    /// The first primary of the cluster, generation 1.
    Bootstrap {
        primary: String,
        generation: Generation,
    },
    /// The primary renews its lease (invariant 2). Refused unless `node` is the primary of
    /// `generation` and has not released its lease.
    RenewLease {
        node: String,
        generation: Generation,
        /// The lease this renewal was timed with, from its sending (`timing.lease`, ms): the
        /// coordinator counts it out with the same value (`lease::LeaseClock`), so that the
        /// lease can change while the cluster runs. None: an agent from before.
        #[serde(default)]
        lease_ms: Option<u64>,
    },
    /// The primary confirms its PostgreSQL is stopped and gives up its lease, so that the
    /// coordinator need not wait for the lease to expire (invariant 3).
    ReleaseLease {
        node: String,
        generation: Generation,
    },
    /// An operator asked the primary `from` of `generation` to hand over to `to`: the
    /// primary shuts down cleanly and releases its lease with its final WAL position.
    RequestSwitchover {
        from: String,
        to: String,
        generation: Generation,
        /// `pgfm promote --force`: promote `to` even if it has not replayed everything.
        #[serde(default)]
        force: bool,
        /// Asked by `pgfm promote`, not `pgfm switchover` (see `Switchover::promotion`).
        #[serde(default)]
        promotion: bool,
        /// `pgfm promote --to`: the operator named `to` (see `Switchover::named`).
        #[serde(default)]
        named: bool,
    },
    /// The primary of a switchover stopped cleanly at `final_lsn` (its shutdown checkpoint)
    /// and gives up its lease.
    HandOver {
        node: String,
        generation: Generation,
        final_lsn: Lsn,
        /// The switchover it ends (`Switchover::seq`): a hand-over delayed past a rollback
        /// must never end a later switchover of the same primary, whose WAL has moved on.
        #[serde(default)]
        seq: u64,
        /// A forced switchover whose primary could not stop cleanly: `final_lsn` is only
        /// its last checkpoint, what came after it may be lost.
        #[serde(default)]
        unclean: bool,
    },
    /// The switchover cannot complete (its target went away, it ran past
    /// `switchover_timeout`, or an operator cancelled it): the old primary, which holds every
    /// commit and whose generation never changed, takes back its lease and restarts.
    CancelSwitchover {
        generation: Generation,
        reason: String,
        /// Wall-clock time of the decision, for the history.
        #[serde(default)]
        at_unix_ms: u64,
        /// Judged on the primary's lease: no renewal applied since this count, and the lease
        /// not given up (a hand-over). The log refuses the cancel once either changed; None
        /// for a cancel not judged on the lease (a timeout, the operator's). A `pgfm
        /// promote` cancelled so goes on as a failover (`ClusterState::promotion_request`).
        #[serde(default)]
        lease_renewals: Option<u64>,
    },
    /// `pgfm promote --force` during a switchover of `generation`: the primary hands over
    /// without waiting for the target to stream, and the target is promoted without
    /// waiting for it to replay the final position.
    ForceSwitchover { generation: Generation },
    /// The primary of `generation` runs on `timeline`; `forks` is its timeline history:
    /// where each earlier timeline ended (and the next one began).
    SetTimeline {
        node: String,
        generation: Generation,
        timeline: Timeline,
        forks: Vec<TimelineFork>,
    },
    /// `pgfm promote` while the primary of `generation` is gone: promote `to` (or the best
    /// candidate) once its lease has expired, even with automatic failover off or paused;
    /// `force` accepts a candidate beyond `max_lag`.
    RequestPromotion {
        to: Option<String>,
        force: bool,
        generation: Generation,
    },
    /// `pgfm set-priority`: failover preference of a data node (0: never promote).
    SetPriority { node: String, priority: u32 },
    /// `pgfm pause` / `pgfm resume`: maintenance mode, no automatic failover.
    SetPaused { paused: bool },
    /// The primary of `generation` sets the synchronous standby set and its quorum (see
    /// `ClusterState::sync_set`).
    SetSyncSet {
        node: String,
        generation: Generation,
        members: std::collections::BTreeSet<String>,
        /// How many members hold every acknowledged commit (at most `members.len()`).
        #[serde(default)]
        quorum: usize,
    },
    /// `pgfm set-synchronous` of an agent from before settings were committed: the
    /// synchronous replication settings of the whole cluster. Applied to the committed
    /// settings when there are some (a new revision).
    SetReplication { settings: SyncSettings },
    /// The cluster-wide settings (issue 15): the first commit (`base_revision` 0) takes the
    /// bootstrapping coordinator's file; each later one is an edit of `base_revision`, and
    /// is refused once another edit has committed since (`StaleSettings`).
    SetSettings {
        base_revision: u64,
        settings: crate::settings::Settings,
        /// Who: the operator's `user@host`, or the node whose file gave the first values.
        by: String,
        at_unix_ms: u64,
    },
    /// `pgfm maintenance NODE on`: `node` is never promoted, never a synchronous standby,
    /// and (unless `keep_running`) its PostgreSQL is stopped and stays stopped. When `node`
    /// is the primary, `handover` asks it to switch over first, in the same entry: the
    /// maintenance and its switchover are committed together or not at all, and a
    /// switchover rolled back ends the maintenance with it.
    EnterMaintenance {
        node: String,
        maintenance: Maintenance,
        #[serde(default)]
        handover: Option<MaintenanceHandover>,
    },
    /// `pgfm maintenance NODE off`: `node` takes its place again (it starts as a standby,
    /// rewound if it has to be).
    LeaveMaintenance { node: String },
    /// `pgfm reinit NODE`: the standby `node` is re-cloned — stopped once no synchronous
    /// rule counts on it, its data directory moved aside, cloned afresh from the primary.
    RequestReinit {
        node: String,
        by: String,
        at_unix_ms: u64,
    },
    /// `node`'s data directory was moved aside for its reinit: from here on it is cloned as
    /// any empty one is.
    ReinitDone { node: String },
    /// `pgfm switchover --at TIME`: a switchover the coordinator starts at that time, as
    /// `pgfm switchover` would (`decide::switchover::scheduled`).
    ScheduleSwitchover { scheduled: ScheduledSwitchover },
    /// `pgfm restart ... --at TIME`: a rolling restart the coordinator carries out then.
    ScheduleRestart { scheduled: ScheduledRestart },
    /// The scheduled restart (the one at `scheduled_at_unix_ms`) moves on: `with`, the
    /// command of the step (maintenance on or off, a restart in place), is applied first,
    /// and nothing changes if it is refused.
    AdvanceScheduledRestart {
        scheduled_at_unix_ms: u64,
        advance: RestartAdvance,
        with: Option<Box<Command>>,
        /// Wall-clock time of the decision.
        at_unix_ms: u64,
    },
    /// The scheduled switchover's time came and it may start: the switchover from the
    /// primary of `generation` to `to` is requested and the schedule ends, together.
    StartScheduledSwitchover {
        to: String,
        generation: Generation,
        /// Which schedule (`ScheduledSwitchover::at_unix_ms`): a decision about one that was
        /// cancelled and replaced must not start the next.
        scheduled_at_unix_ms: u64,
    },
    /// The scheduled switchover is dropped: `pgfm switchover --cancel`, or it could not start
    /// in time (`reason`). Kept in the history as a cancelled switchover.
    DropScheduledSwitchover {
        reason: String,
        at_unix_ms: u64,
        /// Which schedule, as for `StartScheduledSwitchover`.
        scheduled_at_unix_ms: u64,
    },
    /// `pgfm reload [NODE ...]`: each data node in `nodes` reloads PostgreSQL's
    /// configuration (`ClusterState::reloads` counts them).
    RequestReload { nodes: Vec<String> },
    /// `pgfm restart --in-place`: `node`'s PostgreSQL is restarted where it runs, the
    /// primary too (no switchover: writes pause for the restart).
    RequestRestart { node: String },
    /// `pgfm set-tag NODE KEY=VALUE ...`: a data node's tags (`crate::tags`), changed
    /// together or not at all.
    SetTags {
        node: String,
        tags: Vec<crate::tags::Tag>,
    },
    /// `pgfm disallow-node`: the node leaves; its details are forgotten and it may not
    /// register again until `pgfm allow-node`.
    RemoveMember { name: String },
    /// `pgfm allow-node`: a departed name may register again.
    Welcome { name: String },
    /// Make `node` the primary of `generation` (the next one), committed before PostgreSQL
    /// is promoted (invariant 1).
    Promote {
        node: String,
        generation: Generation,
        from: Option<String>,
        reason: String,
        /// The candidate's WAL position and the best position known, when chosen.
        lsn: Option<Lsn>,
        /// Bytes the old primary was known to have that the candidate did not.
        lost_bytes: Option<u64>,
        at_unix_ms: u64,
        /// When the promotion rests on the old primary's lease having run out: how many
        /// renewals of it the coordinator had applied when it judged so. The log refuses
        /// the promotion if a renewal was applied since (a deposed coordinator's stale
        /// judgement, forwarded after a partition healed, must not depose a live primary).
        #[serde(default)]
        lease_renewals: Option<u64>,
        /// When the promotion ends a switchover: the old primary's final position. The log
        /// refuses it unless that hand-over is still the committed one (a switchover rolled
        /// back, its old primary writing again, must never see its target promoted).
        #[serde(default)]
        handover: Option<Lsn>,
        /// `lost_bytes` is a lower bound: the old primary was not stopped cleanly and may
        /// have written more after its last report.
        #[serde(default)]
        lost_at_least: bool,
    },
}

/// A data node under maintenance (`Command::EnterMaintenance`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub since_unix_ms: u64,
    /// Who: the operator's `user@host`.
    pub by: String,
    /// `--keep-running`: its PostgreSQL stays up, out of failover and synchronous
    /// replication only (a restart of PostgreSQL the operator does by hand).
    pub keep_running: bool,
    /// `--force` waived the synchronous minimum: the primary's commits keep waiting for this
    /// node, and it stops all the same (see `decide::reconcile`).
    #[serde(default)]
    pub forced: bool,
}

impl Maintenance {
    /// Its PostgreSQL is to be stopped and kept stopped (not `keep_running`).
    pub fn keeps_stopped(&self) -> bool {
        !self.keep_running
    }
}

/// A rolling restart asked for later (`pgfm restart [NODE ...] [--pending] [--in-place]
/// --at TIME`): the coordinator restarts each node as `pgfm restart` does — a maintenance
/// on then off, the standbys one at a time, the primary last (a switchover first, or in
/// place) — each back before the next (`decide::restart`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRestart {
    /// When it starts (ms since the epoch, UTC).
    pub at_unix_ms: u64,
    /// The data nodes asked (empty: every one).
    pub nodes: Vec<String>,
    /// Only those with a PostgreSQL parameter pending restart, when their turn comes.
    pub pending: bool,
    /// The primary restarted where it runs (no switchover).
    pub in_place: bool,
    /// Who: the operator's `user@host`.
    pub by: String,
    /// The nodes done (restarted, or passed over), in order.
    #[serde(default)]
    pub done: Vec<String>,
    /// Those of `done` passed over, each with why.
    #[serde(default)]
    pub passed_over: Vec<(String, String)>,
    /// The node being restarted, if one is.
    #[serde(default)]
    pub step: Option<RestartStep>,
    /// When it last moved on (ms since the epoch): a step, or the wait for one, that
    /// takes longer than `decide::restart::step_limit_ms` ends it.
    #[serde(default)]
    pub progress_unix_ms: u64,
}

impl ScheduledRestart {
    /// Who a node's maintenance is said to be put there by, for this restart: the
    /// restart takes out of maintenance only what it put there.
    pub fn maintenance_by(&self) -> String {
        format!(
            "pgfm restart at {} (asked by {})",
            crate::types::utc(self.at_unix_ms),
            self.by
        )
    }

    /// Whether `node` is under maintenance for this restart (not by an operator).
    pub fn owns_maintenance(&self, state: &ClusterState, node: &str) -> bool {
        state
            .maintenance
            .get(node)
            .is_some_and(|m| m.by == self.maintenance_by())
    }
}

/// A scheduled restart that ended: what it did, and why it stopped if it did not finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartEnded {
    /// When it was scheduled for, and by whom.
    pub scheduled_at_unix_ms: u64,
    pub by: String,
    /// When it ended.
    pub at_unix_ms: u64,
    /// The nodes restarted, in order.
    pub restarted: Vec<String>,
    /// The nodes passed over, each with why.
    pub passed_over: Vec<(String, String)>,
    /// Why it stopped before the end; None: it finished.
    pub stopped: Option<String>,
}

/// The node a scheduled restart is at, and how far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartStep {
    pub node: String,
    pub phase: RestartPhase,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPhase {
    /// Put under maintenance (the primary hands over first): waiting for it to stop.
    Stopping,
    /// Out of maintenance again: waiting for it to stream.
    Starting,
    /// The primary restarted in place: waiting for the `count`-th restart asked of it.
    InPlace { count: u64 },
}

/// How a scheduled restart moves on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartAdvance {
    /// A node's step begins or changes phase.
    Step(RestartStep),
    /// `node` is done (restarted, or passed over: `why`).
    Done { node: String, why: Option<String> },
    /// It ends: every node done (`reason` None), or stopped for `reason`.
    End { reason: Option<String> },
}

/// A switchover asked for later (`pgfm switchover --at TIME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSwitchover {
    /// When the coordinator starts it (wall clock, ms since the epoch).
    pub at_unix_ms: u64,
    /// The standby named (None: the one `pgfm switchover` would choose then).
    pub to: Option<String>,
    /// Who: the operator's `user@host`.
    pub by: String,
    /// The generation it was asked in: a failover or switchover since drops it (it was
    /// asked of another primary).
    #[serde(default)]
    pub generation: Generation,
}

/// A standby to be re-cloned (`Command::RequestReinit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reinit {
    pub since_unix_ms: u64,
    /// Who: the operator's `user@host`.
    pub by: String,
}

/// The switchover that starts the maintenance of the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceHandover {
    pub to: String,
    /// The generation of the primary under maintenance.
    pub generation: Generation,
}

/// Where a timeline of the current primary's history ended: the next timeline began at
/// `ended_at`. A node on `timeline` holding WAL past it has diverged from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineFork {
    pub timeline: Timeline,
    pub ended_at: Lsn,
}

/// One promotion, as kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub generation: Generation,
    pub at_unix_ms: u64,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    pub lsn: Option<Lsn>,
    pub lost_bytes: Option<u64>,
    /// `lost_bytes` is a lower bound (see `Command::Promote`).
    #[serde(default)]
    pub lost_at_least: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("the cluster already has primary {primary} at generation {generation}")]
    AlreadyBootstrapped {
        primary: String,
        generation: Generation,
    },
    #[error("generation {proposed} proposed, but the next generation is {expected}")]
    WrongGeneration {
        proposed: Generation,
        expected: Generation,
    },
    #[error("node {0} is not a registered data node")]
    NotADataNode(String),
    #[error("node {node} does not hold the lease of generation {generation}")]
    NotLeaseHolder {
        node: String,
        generation: Generation,
    },
    #[error("node {0} is not promotable")]
    NotPromotable(String),
    #[error(
        "the lease of generation {generation} was renewed after the decision was made \
         ({seen} renewals seen, {applied} applied): the primary is alive"
    )]
    LeaseRenewed {
        generation: Generation,
        seen: u64,
        applied: u64,
    },
    #[error("{0}")]
    BadSettings(String),
    #[error("a switchover to {0} is already under way")]
    SwitchoverUnderWay(String),
    #[error("no switchover is under way in generation {0}")]
    NoSwitchover(Generation),
    #[error("the primary of generation {0} has handed over since the decision was made")]
    HandedOver(Generation),
    #[error(
        "the hand-over at {0} this promotion rests on is no longer committed (the switchover \
         was cancelled or rolled back)"
    )]
    HandOverGone(Lsn),
    #[error("node {0} is not a member")]
    UnknownNode(String),
    #[error("node {0} was disallowed: run pgfm allow-node {0} ADDRESS on a member to let it back")]
    Departed(String),
    #[error(
        "{0} was chosen to initialise the cluster: only it may become the first primary \
         (pgfm disallow-node {0} gives the choice up, if that node is gone for good)"
    )]
    InitdbChosen(String),
    #[error(
        "the settings were edited at revision {base}, but revision {current} has been \
         committed since (pgfm show-config shows it; edit again)"
    )]
    StaleSettings { base: u64, current: u64 },
    #[error(
        "{node} is under maintenance (put there by {by}; pgfm maintenance {node} off ends it)"
    )]
    InMaintenance { node: String, by: String },
    #[error("{0} is not under maintenance")]
    NotInMaintenance(String),
    #[error(
        "{0} is the primary: its maintenance starts with a switchover away from it, and none \
         was asked (generation changed?)"
    )]
    MaintenanceOfPrimary(String),
    #[error(
        "{0} is the primary: switch over first (pgfm switchover), then re-clone it as a \
         standby"
    )]
    ReinitOfPrimary(String),
    #[error("a re-clone of {node} is under way (asked by {by})")]
    ReinitUnderWay { node: String, by: String },
    #[error("no re-clone of {0} is under way")]
    NoReinit(String),
    #[error("{0} is tagged nofailover (pgfm set-tag {0} nofailover=false lets it be promoted)")]
    NoFailover(String),
    #[error("replicate_from would make a loop: {0}")]
    ReplicationLoop(String),
    #[error(
        "{0} may not be a synchronous standby (tagged nosync, nofailover or replicate_from, \
         or not promotable)"
    )]
    NeverSynchronous(String),
    #[error(
        "a switchover is already scheduled, at {} (pgfm switchover --cancel cancels it)",
        crate::types::utc(*at_unix_ms)
    )]
    SwitchoverScheduled { at_unix_ms: u64 },
    #[error("no switchover is scheduled")]
    NoScheduledSwitchover,
    #[error(
        "a restart is already scheduled, at {} (pgfm restart --cancel cancels it)",
        crate::types::utc(*at_unix_ms)
    )]
    RestartScheduled { at_unix_ms: u64 },
    #[error("no restart is scheduled")]
    NoScheduledRestart,
}

/// From the `from_renewal`-th renewal of a generation on, the primary timed its renewals
/// with a lease of `lease_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTiming {
    pub from_renewal: u64,
    pub lease_ms: u64,
}

/// The data node chosen to initialise an empty cluster (`Command::ChooseInitdb`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitdbChoice {
    pub node: String,
    pub at_unix_ms: u64,
}

/// An operator's `pgfm promote` while the primary is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionRequest {
    pub to: Option<String>,
    pub force: bool,
    pub generation: Generation,
    /// Left by a hand-over whose primary stopped renewing (`CancelSwitchover::lease_renewals`):
    /// in force only while no renewal has been applied since this count. A primary that
    /// renews again is alive, and the operator's promotion of it is over.
    #[serde(default)]
    pub lease_renewals: Option<u64>,
}

/// A switchover that did not happen, as kept in the history: the old primary stayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelledSwitchover {
    pub generation: Generation,
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// A `pgfm promote` whose primary stopped renewing: it went on as a failover
    /// (`Command::CancelSwitchover::lease_renewals`).
    #[serde(default)]
    pub failover_instead: bool,
}

/// A planned switchover under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    pub from: String,
    pub to: String,
    /// `pgfm promote --force` through a live primary: promote `to` without waiting for it
    /// to replay everything.
    #[serde(default)]
    pub force: bool,
    /// The generation of `from`.
    pub generation: Generation,
    /// Where `from` stopped (its shutdown checkpoint), once it has.
    pub final_lsn: Option<Lsn>,
    /// Which switchover of the cluster this is (`ClusterState::switchover_seq`).
    #[serde(default)]
    pub seq: u64,
    /// Forced, its primary could not stop cleanly (see `Command::HandOver`).
    #[serde(default)]
    pub unclean: bool,
    /// Asked by `pgfm promote` through a primary that looked alive: if that primary stops
    /// renewing its lease without handing over, the promotion goes ahead as a failover.
    #[serde(default)]
    pub promotion: bool,
    /// The operator named `to` (`pgfm promote --to`); otherwise a promotion that goes on as
    /// a failover lets the failover choose (the synchronous set first).
    #[serde(default)]
    pub named: bool,
    /// It starts the maintenance of `from` (`Command::EnterMaintenance`): rolled back, the
    /// maintenance ends with it.
    #[serde(default)]
    pub maintenance: bool,
}

/// The committed cluster state: what the cluster intends. Only changed by applying
/// commands from the Raft log, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub members: BTreeMap<String, Member>,
    pub primary: Option<String>,
    pub generation: Generation,
    /// Lease renewals committed in this generation; the coordinator restarts its lease
    /// timer whenever it sees this change.
    #[serde(default)]
    pub lease_renewals: u64,
    /// The leases this generation's renewals were timed with: each change, from the
    /// renewal that first carried it (`Command::RenewLease::lease_ms`).
    #[serde(default)]
    pub lease_timings: Vec<LeaseTiming>,
    /// The primary of this generation confirmed it is stopped and gave up its lease.
    #[serde(default)]
    pub lease_released: bool,
    /// Every promotion, oldest first.
    #[serde(default)]
    pub history: Vec<Promotion>,
    /// A planned switchover under way, if any.
    #[serde(default)]
    pub switchover: Option<Switchover>,
    /// Switchovers rolled back or cancelled, oldest first.
    #[serde(default)]
    pub cancelled_switchovers: Vec<CancelledSwitchover>,
    /// How many switchovers were requested: each one's `seq`.
    #[serde(default)]
    pub switchover_seq: u64,
    /// An operator's promotion waiting for the old primary's lease to expire.
    #[serde(default)]
    pub promotion_request: Option<PromotionRequest>,
    /// Maintenance mode: no automatic failover.
    #[serde(default)]
    pub paused: bool,
    /// Nodes disallowed by the operator (their replication slots are dropped).
    #[serde(default)]
    pub departed: std::collections::BTreeSet<String>,
    /// Synchronous replication: the standbys that may hold a commit the primary of this
    /// generation acknowledged. Widened here before the primary's
    /// `synchronous_standby_names` widens, narrowed only after it narrowed and the remaining
    /// standbys caught up; a failover promotes only from this set while it is not empty.
    /// Empty: asynchronous (or not set up yet in this generation).
    #[serde(default)]
    pub sync_set: std::collections::BTreeSet<String>,
    /// How many members of `sync_set` hold every acknowledged commit: all of them in
    /// `synchronous = "on"` (`FIRST n`), `n` of them in quorum mode (`ANY n`), and fewer
    /// than all while a change of members is under way. A failover must reach
    /// `sync_set.len() - sync_quorum + 1` members and promote the most advanced of them.
    #[serde(default)]
    pub sync_quorum: usize,
    /// Synchronous replication settings set at run time (`pgfm set-synchronous`); None: each
    /// agent's `[replication]` section.
    #[serde(default)]
    pub replication: Option<SyncSettings>,
    /// The timeline the primary of this generation runs on, once it said so (None right
    /// after a promotion).
    #[serde(default)]
    pub timeline: Option<Timeline>,
    /// The primary's timeline history: where each earlier timeline ended.
    #[serde(default)]
    pub forks: Vec<TimelineFork>,
    /// The highest timeline a primary of this cluster may have started: raised by each
    /// `SetTimeline`, and by each promotion to one above it — the lowest timeline that
    /// promotion's node may start (`Database::promote`). PostgreSQL picks one above the
    /// newest history file in its own `pg_wal`; a node promoted after another that died
    /// before its `SetTimeline` committed does not have that one's file, and would start
    /// the same timeline number on a different fork (chaos soak seed 2, run 44).
    #[serde(default)]
    pub highest_timeline: Timeline,
    /// Before the first primary, when every data directory was empty: the node chosen to
    /// run initdb. Kept afterwards, for the history.
    #[serde(default)]
    pub initdb: Option<InitdbChoice>,
    /// The cluster-wide settings, once committed (issue 15); None before the first
    /// coordinator commits its file's, and in the log of an older cluster until then.
    #[serde(default)]
    pub settings: Option<crate::settings::CommittedSettings>,
    /// Data nodes under maintenance (`pgfm maintenance NODE on`), by name.
    #[serde(default)]
    pub maintenance: BTreeMap<String, Maintenance>,
    /// Standbys to be re-cloned (`pgfm reinit NODE`), by name, until their data directory
    /// was moved aside.
    #[serde(default)]
    pub reinit: BTreeMap<String, Reinit>,
    /// Data nodes' tags (`pgfm set-tag`), by name; a node with none is not listed.
    #[serde(default)]
    pub tags: BTreeMap<String, crate::tags::Tags>,
    /// How many reloads of PostgreSQL's configuration were asked of each data node (`pgfm
    /// reload`); its agent carries out each new one while PostgreSQL runs.
    #[serde(default)]
    pub reloads: BTreeMap<String, u64>,
    /// How many restarts in place were asked of each data node (`pgfm restart
    /// --in-place`); its agent stops PostgreSQL cleanly for each new one, and starts it
    /// again as it starts any.
    #[serde(default)]
    pub restarts: BTreeMap<String, u64>,
    /// A switchover asked for later (`pgfm switchover --at TIME`), until it starts or is
    /// dropped.
    #[serde(default)]
    pub scheduled_switchover: Option<ScheduledSwitchover>,
    /// A rolling restart asked for later (`pgfm restart --at TIME`), until it ends.
    #[serde(default)]
    pub scheduled_restart: Option<ScheduledRestart>,
    /// How the last scheduled restart ended, until another is scheduled.
    #[serde(default)]
    pub restart_ended: Option<RestartEnded>,
}

/// What a primary's commits wait for: `count` of the standbys `names` (`FIRST count` when
/// that is all of them, else `ANY count`). No names: asynchronous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncRule {
    pub count: usize,
    pub names: std::collections::BTreeSet<String>,
}

impl SyncRule {
    pub fn new(count: usize, names: std::collections::BTreeSet<String>) -> SyncRule {
        SyncRule {
            count: count.min(names.len()),
            names,
        }
    }

    pub fn is_async(&self) -> bool {
        self.names.is_empty() || self.count == 0
    }

    /// What PostgreSQL on `primary` must wait for so that this committed rule holds: the
    /// primary holds each of its own commits, so it counts as one of the `count` when it is
    /// a member (after a promotion in synchronous mode the committed set is the new primary
    /// alone, until a standby has caught up with it: nothing to wait for).
    pub fn for_primary(&self, primary: &str) -> SyncRule {
        if !self.names.contains(primary) {
            return self.clone();
        }
        let mut names = self.names.clone();
        names.remove(primary);
        SyncRule::new(self.count.saturating_sub(1), names)
    }
}

impl std::fmt::Display for SyncRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_async() {
            return f.write_str("asynchronous");
        }
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let method = if self.count == self.names.len() {
            "FIRST"
        } else {
            "ANY"
        };
        write!(f, "{method} {} ({})", self.count, names.join(","))
    }
}

/// How the primary waits for standbys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Asynchronous.
    #[default]
    Off,
    /// `FIRST n (...)`: every commit waits for each of `n` named standbys.
    On,
    /// `ANY n (...)` over every eligible standby: every commit waits for any `n` of them.
    Quorum,
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[replication]` (or `pgfm set-synchronous`): how the primary names its synchronous
/// standbys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSettings {
    pub mode: SyncMode,
    /// How many standbys each commit waits for.
    pub standbys: usize,
    /// With fewer streaming standbys than `standbys`, the primary names fewer, down to this
    /// many, then keeps waiting for absent ones (no acknowledged commit without that many
    /// copies). 0: it may end up asynchronous; `standbys`: strict.
    pub minimum: usize,
}

impl Default for SyncSettings {
    fn default() -> SyncSettings {
        SyncSettings {
            mode: SyncMode::Off,
            standbys: 1,
            minimum: 0,
        }
    }
}

impl SyncSettings {
    pub fn strict(&self) -> bool {
        self.minimum >= self.standbys
    }

    /// Why these settings cannot be used, if they cannot, naming the two numbers as the
    /// caller's user knows them (config keys, command-line flags).
    pub fn problem(&self, standbys: &str, minimum: &str) -> Option<String> {
        if self.standbys == 0 {
            Some(format!("{standbys} must be at least 1"))
        } else if self.minimum > self.standbys {
            Some(format!(
                "{minimum} ({}) is more than {standbys} ({})",
                self.minimum, self.standbys
            ))
        } else {
            None
        }
    }
}

impl ClusterState {
    /// The node that holds the lease of the current generation: the primary, unless it gave
    /// the lease up.
    pub fn lease_holder(&self) -> Option<&str> {
        self.primary.as_deref().filter(|_| !self.lease_released)
    }

    /// `name`'s tags (none set: the defaults).
    pub fn tags_of(&self, name: &str) -> &crate::tags::Tags {
        static NONE: crate::tags::Tags = crate::tags::Tags {
            nofailover: false,
            nosync: false,
            noloadbalance: false,
            replicate_from: None,
            clonefrom: false,
        };
        self.tags.get(name).unwrap_or(&NONE)
    }

    /// Whether `name` may be named a synchronous standby: a data member the operator lets
    /// be promoted (a failover promotes only from the synchronous standbys), not tagged
    /// `nofailover`, `nosync` or `replicate_from` (PostgreSQL counts only the primary's own
    /// walsenders). Under maintenance it may still be named, to keep the minimum.
    pub fn may_be_synchronous(&self, name: &str) -> bool {
        let tags = self.tags_of(name);
        !tags.never_sync()
            && !tags.nofailover
            && self
                .members
                .get(name)
                .is_some_and(|m| m.kind == NodeKind::Data && m.can_be_promoted())
    }

    /// Whether `name` may become the primary: a data member the operator lets be promoted
    /// (`Member::can_be_promoted`), not tagged `nofailover`, not under maintenance or being
    /// re-cloned.
    pub fn may_promote(&self, name: &str) -> bool {
        self.promotable(name).is_ok()
    }

    /// `name`, if it may become the primary; else why not, in the log's words.
    pub fn promotable(&self, name: &str) -> Result<&Member, CommandError> {
        match self.members.get(name) {
            Some(m) if m.kind != NodeKind::Data => Err(CommandError::NotADataNode(name.into())),
            Some(m) if !m.can_be_promoted() => Err(CommandError::NotPromotable(name.into())),
            Some(_) if self.maintenance.contains_key(name) => Err(CommandError::InMaintenance {
                node: name.into(),
                by: self.maintenance[name].by.clone(),
            }),
            Some(_) if self.reinit.contains_key(name) => Err(CommandError::ReinitUnderWay {
                node: name.into(),
                by: self.reinit[name].by.clone(),
            }),
            Some(_) if self.tags_of(name).nofailover => Err(CommandError::NoFailover(name.into())),
            Some(m) => Ok(m),
            None => Err(CommandError::NotADataNode(name.into())),
        }
    }

    /// The primary, when it alone is known to hold every acknowledged commit: synchronous
    /// replication committed a set of only the primary (since its promotion, or since it
    /// degraded), so no standby may take over from it without `--force`.
    pub fn sole_holder(&self) -> Option<&str> {
        self.primary
            .as_deref()
            .filter(|p| self.sync_set.len() == 1 && self.sync_set.contains(*p))
    }

    /// The operator's promotion asked in this generation, while it is in force: one left by
    /// a hand-over ends with the primary's next renewal.
    pub fn promotion_asked(&self) -> Option<&PromotionRequest> {
        self.promotion_request.as_ref().filter(|r| {
            r.generation == self.generation
                && r.lease_renewals.is_none_or(|n| n == self.lease_renewals)
        })
    }

    /// The committed synchronous rule: `sync_quorum` of `sync_set`.
    pub fn committed_sync(&self) -> SyncRule {
        SyncRule::new(self.sync_quorum, self.sync_set.clone())
    }

    /// Applies `command` if the state allows it; refused, the state is unchanged. Each
    /// command has its own function below with its checks.
    pub fn apply(&mut self, command: &Command) -> Result<(), CommandError> {
        match command {
            Command::Register { member } => self.register(member),
            Command::RemoveMember { name } => self.remove_member(name),
            Command::EnterMaintenance {
                node,
                maintenance,
                handover,
            } => self.enter_maintenance(node, maintenance, handover.as_ref()),
            Command::LeaveMaintenance { node } => self.leave_maintenance(node),
            Command::RequestReinit {
                node,
                by,
                at_unix_ms,
            } => self.request_reinit(node, by, *at_unix_ms),
            Command::ReinitDone { node } => match self.reinit.remove(node) {
                Some(_) => Ok(()),
                None => Err(CommandError::NoReinit(node.clone())),
            },
            Command::SetTags { node, tags } => self.set_tags(node, tags),
            Command::RequestReload { nodes } => self.request_reload(nodes),
            Command::RequestRestart { node } => self.request_restart(node),
            Command::ScheduleSwitchover { scheduled } => self.schedule_switchover(scheduled),
            Command::ScheduleRestart { scheduled } => self.schedule_restart(scheduled),
            Command::AdvanceScheduledRestart {
                scheduled_at_unix_ms,
                advance,
                with,
                at_unix_ms,
            } => self.advance_scheduled_restart(
                *scheduled_at_unix_ms,
                advance,
                with.as_deref(),
                *at_unix_ms,
            ),
            Command::StartScheduledSwitchover {
                to,
                generation,
                scheduled_at_unix_ms,
            } => self.start_scheduled_switchover(to, *generation, *scheduled_at_unix_ms),
            Command::DropScheduledSwitchover {
                reason,
                at_unix_ms,
                scheduled_at_unix_ms,
            } => self.drop_scheduled_switchover(reason, *at_unix_ms, *scheduled_at_unix_ms),
            Command::Welcome { name } => self.welcome(name),
            Command::ChooseInitdb { node, at_unix_ms } => self.choose_initdb(node, *at_unix_ms),
            Command::Bootstrap {
                primary,
                generation,
            } => self.bootstrap(primary, *generation),
            Command::RenewLease {
                node,
                generation,
                lease_ms,
            } => self.renew_lease(node, *generation, *lease_ms),
            Command::ReleaseLease { node, generation } => self.release_lease(node, *generation),
            Command::RequestSwitchover {
                from,
                to,
                generation,
                force,
                promotion,
                named,
            } => self.request_switchover(from, to, *generation, *force, (*promotion, *named)),
            Command::RequestPromotion {
                to,
                force,
                generation,
            } => self.request_promotion(to.as_ref(), *force, *generation),
            Command::SetPriority { node, priority } => self.set_priority(node, *priority),
            Command::SetPaused { paused } => self.set_paused(*paused),
            Command::SetReplication { settings } => self.set_replication(settings),
            Command::SetSettings {
                base_revision,
                settings,
                by,
                at_unix_ms,
            } => self.set_settings(*base_revision, settings, by, *at_unix_ms),
            Command::SetSyncSet {
                node,
                generation,
                members,
                quorum,
            } => self.set_sync_set(node, *generation, members, *quorum),
            Command::HandOver {
                node,
                generation,
                final_lsn,
                seq,
                unclean,
            } => self.hand_over(node, *generation, *final_lsn, *seq, *unclean),
            Command::ForceSwitchover { generation } => self.force_switchover(*generation),
            Command::SetTimeline {
                node,
                generation,
                timeline,
                forks,
            } => self.set_timeline(node, *generation, *timeline, forks),
            Command::CancelSwitchover {
                generation,
                reason,
                at_unix_ms,
                lease_renewals,
            } => self.cancel_switchover(*generation, reason, *at_unix_ms, *lease_renewals),
            Command::Promote {
                node,
                generation,
                from,
                reason,
                lsn,
                lost_bytes,
                at_unix_ms,
                lease_renewals,
                handover,
                lost_at_least,
            } => self.promote(
                Promotion {
                    generation: *generation,
                    at_unix_ms: *at_unix_ms,
                    from: from.clone(),
                    to: node.clone(),
                    reason: reason.clone(),
                    lsn: *lsn,
                    lost_bytes: *lost_bytes,
                    lost_at_least: *lost_at_least,
                },
                *lease_renewals,
                *handover,
            ),
        }
    }

    /// An agent registers (or updates) its member entry, unless it was disallowed.
    fn register(&mut self, member: &Member) -> Result<(), CommandError> {
        if self.departed.contains(&member.name) {
            return Err(CommandError::Departed(member.name.clone()));
        }
        self.members.insert(member.name.clone(), member.clone());
        Ok(())
    }

    /// `pgfm disallow-node`: forget the member and keep it out.
    fn remove_member(&mut self, name: &str) -> Result<(), CommandError> {
        self.members.remove(name);
        self.maintenance.remove(name);
        self.reinit.remove(name);
        self.tags.remove(name);
        // `reloads` and `restarts` are kept: a node that joins again with the same state
        // directory remembers having carried out that many, and would pass over new ones
        // counted from zero.
        // A node chosen to initialise the cluster and gone for good: the choice is given up
        // (the way out an operator has); a later round chooses again among the others.
        if self.primary.is_none() && self.initdb.as_ref().is_some_and(|c| c.node == name) {
            self.initdb = None;
        }
        self.departed.insert(name.to_string());
        Ok(())
    }

    /// `pgfm allow-node`: a departed name may register again.
    fn welcome(&mut self, name: &str) -> Result<(), CommandError> {
        self.departed.remove(name);
        Ok(())
    }

    /// The node that initialises an empty cluster: only before the first primary, only
    /// once, only a registered data node that may be promoted.
    fn choose_initdb(&mut self, node: &str, at_unix_ms: u64) -> Result<(), CommandError> {
        if let Some(current) = &self.primary {
            return Err(CommandError::AlreadyBootstrapped {
                primary: current.clone(),
                generation: self.generation,
            });
        }
        if let Some(chosen) = &self.initdb {
            return Err(CommandError::InitdbChosen(chosen.node.clone()));
        }
        self.promotable(node)?;
        self.initdb = Some(InitdbChoice {
            node: node.to_string(),
            at_unix_ms,
        });
        Ok(())
    }

    /// The first primary: only once, only generation 1, only a registered data node — the
    /// one chosen to initialise the cluster, if one was (two initialised nodes must never
    /// both serve).
    fn bootstrap(&mut self, primary: &str, generation: Generation) -> Result<(), CommandError> {
        if let Some(current) = &self.primary {
            return Err(CommandError::AlreadyBootstrapped {
                primary: current.clone(),
                generation: self.generation,
            });
        }
        if let Some(chosen) = self.initdb.as_ref().filter(|c| c.node != primary) {
            return Err(CommandError::InitdbChosen(chosen.node.clone()));
        }
        if let Some(m) = self.maintenance.get(primary) {
            return Err(CommandError::InMaintenance {
                node: primary.to_string(),
                by: m.by.clone(),
            });
        }
        if generation != self.generation.next() {
            return Err(CommandError::WrongGeneration {
                proposed: generation,
                expected: self.generation.next(),
            });
        }
        match self.members.get(primary) {
            Some(m) if m.kind == NodeKind::Data => {}
            _ => return Err(CommandError::NotADataNode(primary.to_string())),
        }
        self.primary = Some(primary.to_string());
        self.generation = generation;
        self.lease_renewals = 0;
        self.lease_timings.clear();
        self.lease_released = false;
        Ok(())
    }

    /// Invariant 2: only the primary of the current generation, still holding its lease,
    /// renews it.
    fn renew_lease(
        &mut self,
        node: &str,
        generation: Generation,
        lease_ms: Option<u64>,
    ) -> Result<(), CommandError> {
        self.check_lease_holder(node, generation)?;
        self.lease_renewals += 1;
        if let Some(lease_ms) = lease_ms {
            if self.lease_timings.last().map(|t| t.lease_ms) != Some(lease_ms) {
                self.lease_timings.push(LeaseTiming {
                    from_renewal: self.lease_renewals,
                    lease_ms,
                });
            }
        }
        Ok(())
    }

    /// The longest lease any renewal of this generation after the `after`-th was timed with
    /// (None: none of them said): what the coordinator must count out from when it applied
    /// them, having last timed the `after`-th.
    pub fn lease_timed_after(&self, after: u64) -> Option<u64> {
        let in_force_at = |n: u64| {
            self.lease_timings
                .iter()
                .rev()
                .find(|t| t.from_renewal <= n)
                .map(|t| t.lease_ms)
        };
        if after >= self.lease_renewals {
            return None;
        }
        let later = self
            .lease_timings
            .iter()
            .filter(|t| t.from_renewal > after + 1 && t.from_renewal <= self.lease_renewals)
            .map(|t| t.lease_ms);
        in_force_at(after + 1).into_iter().chain(later).max()
    }

    /// Invariant 3: the primary gives up its lease (its PostgreSQL is stopped), so that a
    /// standby need not wait for it to run out.
    fn release_lease(&mut self, node: &str, generation: Generation) -> Result<(), CommandError> {
        self.check_lease_holder(node, generation)?;
        self.lease_released = true;
        Ok(())
    }

    /// `node` is the primary of `generation`, the current one, and has not released its lease.
    fn check_lease_holder(&self, node: &str, generation: Generation) -> Result<(), CommandError> {
        if self.lease_holder() != Some(node) || generation != self.generation {
            return Err(CommandError::NotLeaseHolder {
                node: node.to_string(),
                generation,
            });
        }
        Ok(())
    }

    /// `node` is the primary of `generation`, the current one (whether or not it still holds
    /// the lease).
    fn check_primary(&self, node: &str, generation: Generation) -> Result<(), CommandError> {
        if generation != self.generation || self.primary.as_deref() != Some(node) {
            return Err(CommandError::NotLeaseHolder {
                node: node.to_string(),
                generation,
            });
        }
        Ok(())
    }

    /// `pgfm switchover`: one at a time, from the lease holder to another promotable data
    /// node.
    fn request_switchover(
        &mut self,
        from: &str,
        to: &str,
        generation: Generation,
        force: bool,
        (promotion, named): (bool, bool),
    ) -> Result<(), CommandError> {
        if let Some(s) = &self.switchover {
            return Err(CommandError::SwitchoverUnderWay(s.to.clone()));
        }
        self.check_lease_holder(from, generation)?;
        if to == from {
            return Err(CommandError::NotADataNode(to.to_string()));
        }
        self.promotable(to)?;
        self.switchover_seq += 1;
        self.switchover = Some(Switchover {
            from: from.to_string(),
            to: to.to_string(),
            force,
            generation,
            final_lsn: None,
            seq: self.switchover_seq,
            unclean: false,
            promotion,
            named,
            maintenance: false,
        });
        Ok(())
    }

    /// `pgfm promote` while the primary of the current generation is gone: kept until the
    /// coordinator acts on it; `to`, if named, must be a promotable data node.
    fn request_promotion(
        &mut self,
        to: Option<&String>,
        force: bool,
        generation: Generation,
    ) -> Result<(), CommandError> {
        if generation != self.generation {
            return Err(CommandError::WrongGeneration {
                proposed: generation,
                expected: self.generation,
            });
        }
        if let Some(to) = to {
            if !self.members.contains_key(to) {
                return Err(CommandError::UnknownNode(to.clone()));
            }
            self.promotable(to)?;
        }
        self.promotion_request = Some(PromotionRequest {
            to: to.cloned(),
            force,
            generation,
            lease_renewals: None,
        });
        Ok(())
    }

    /// `pgfm maintenance NODE on`: a data node not under maintenance yet; the primary only
    /// with the switchover away from it that `handover` asks, begun in the same step.
    fn enter_maintenance(
        &mut self,
        node: &str,
        maintenance: &Maintenance,
        handover: Option<&MaintenanceHandover>,
    ) -> Result<(), CommandError> {
        match self.members.get(node) {
            Some(m) if m.kind == NodeKind::Data => {}
            Some(_) => return Err(CommandError::NotADataNode(node.to_string())),
            None => return Err(CommandError::UnknownNode(node.to_string())),
        }
        if let Some(m) = self.maintenance.get(node) {
            return Err(CommandError::InMaintenance {
                node: node.to_string(),
                by: m.by.clone(),
            });
        }
        if let Some(sw) = self.switchover.as_ref().filter(|sw| sw.to == node) {
            return Err(CommandError::SwitchoverUnderWay(sw.to.clone()));
        }
        let is_primary = self.primary.as_deref() == Some(node);
        match (is_primary, handover) {
            (true, None) => return Err(CommandError::MaintenanceOfPrimary(node.to_string())),
            (true, Some(h)) => {
                self.request_switchover(node, &h.to, h.generation, false, (false, false))?;
                if let Some(sw) = self.switchover.as_mut() {
                    sw.maintenance = true;
                }
            }
            // The primary changed since the request was judged.
            (false, Some(h)) => {
                return Err(CommandError::NotLeaseHolder {
                    node: node.to_string(),
                    generation: h.generation,
                })
            }
            (false, None) => {}
        }
        self.maintenance
            .insert(node.to_string(), maintenance.clone());
        Ok(())
    }

    /// `pgfm reinit NODE`: a data node other than the primary, not under maintenance (its
    /// PostgreSQL is kept stopped: end it first), not being re-cloned already.
    fn request_reinit(
        &mut self,
        node: &str,
        by: &str,
        at_unix_ms: u64,
    ) -> Result<(), CommandError> {
        match self.members.get(node) {
            Some(m) if m.kind == NodeKind::Data => {}
            Some(_) => return Err(CommandError::NotADataNode(node.to_string())),
            None => return Err(CommandError::UnknownNode(node.to_string())),
        }
        if self.primary.as_deref() == Some(node) {
            return Err(CommandError::ReinitOfPrimary(node.to_string()));
        }
        if let Some(m) = self.maintenance.get(node) {
            return Err(CommandError::InMaintenance {
                node: node.to_string(),
                by: m.by.clone(),
            });
        }
        if let Some(r) = self.reinit.get(node) {
            return Err(CommandError::ReinitUnderWay {
                node: node.to_string(),
                by: r.by.clone(),
            });
        }
        self.reinit.insert(
            node.to_string(),
            Reinit {
                since_unix_ms: at_unix_ms,
                by: by.to_string(),
            },
        );
        Ok(())
    }

    /// `pgfm switchover --at TIME`: one at a time; a standby named must be one that may be
    /// promoted.
    /// `pgfm restart --at TIME`: one at a time, of data nodes.
    fn schedule_restart(&mut self, scheduled: &ScheduledRestart) -> Result<(), CommandError> {
        for node in &scheduled.nodes {
            match self.members.get(node) {
                Some(m) if m.kind == NodeKind::Data => {}
                Some(_) => return Err(CommandError::NotADataNode(node.clone())),
                None => return Err(CommandError::UnknownNode(node.clone())),
            }
        }
        if let Some(s) = &self.scheduled_restart {
            return Err(CommandError::RestartScheduled {
                at_unix_ms: s.at_unix_ms,
            });
        }
        self.restart_ended = None;
        self.scheduled_restart = Some(ScheduledRestart {
            done: Vec::new(),
            passed_over: Vec::new(),
            step: None,
            progress_unix_ms: scheduled.at_unix_ms,
            ..scheduled.clone()
        });
        Ok(())
    }

    /// The scheduled restart at `scheduled_at_unix_ms` moves on; `with` first, all or
    /// nothing.
    fn advance_scheduled_restart(
        &mut self,
        scheduled_at_unix_ms: u64,
        advance: &RestartAdvance,
        with: Option<&Command>,
        at_unix_ms: u64,
    ) -> Result<(), CommandError> {
        let Some(s) = self
            .scheduled_restart
            .as_ref()
            .filter(|s| s.at_unix_ms == scheduled_at_unix_ms)
        else {
            return Err(CommandError::NoScheduledRestart);
        };
        // Judged on the step it names (invariant 3): a late duplicate of a decision already
        // applied is refused.
        let stale = match advance {
            RestartAdvance::Done { node, .. } => {
                s.done.contains(node) || s.step.as_ref().is_some_and(|st| st.node != *node)
            }
            RestartAdvance::Step(step) => {
                s.done.contains(&step.node)
                    || s.step
                        .as_ref()
                        .is_some_and(|st| st.node != step.node || *st == *step)
            }
            RestartAdvance::End { .. } => false,
        };
        if stale {
            return Err(CommandError::NoScheduledRestart);
        }
        let mut next = s.clone();
        if let Some(with) = with {
            self.apply(with)?;
        }
        next.progress_unix_ms = at_unix_ms;
        match advance {
            RestartAdvance::Step(step) => next.step = Some(step.clone()),
            RestartAdvance::Done { node, why } => {
                next.step = None;
                next.done.push(node.clone());
                if let Some(why) = why {
                    next.passed_over.push((node.clone(), why.clone()));
                }
            }
            RestartAdvance::End { reason } => {
                self.restart_ended = Some(RestartEnded {
                    scheduled_at_unix_ms: next.at_unix_ms,
                    by: next.by.clone(),
                    at_unix_ms,
                    restarted: next
                        .done
                        .iter()
                        .filter(|n| !next.passed_over.iter().any(|(p, _)| p == *n))
                        .cloned()
                        .collect(),
                    passed_over: next.passed_over.clone(),
                    stopped: reason.clone(),
                });
                self.scheduled_restart = None;
                return Ok(());
            }
        }
        self.scheduled_restart = Some(next);
        Ok(())
    }

    fn schedule_switchover(&mut self, scheduled: &ScheduledSwitchover) -> Result<(), CommandError> {
        if let Some(s) = &self.scheduled_switchover {
            return Err(CommandError::SwitchoverScheduled {
                at_unix_ms: s.at_unix_ms,
            });
        }
        if scheduled.generation != self.generation {
            return Err(CommandError::WrongGeneration {
                proposed: scheduled.generation,
                expected: self.generation,
            });
        }
        if let Some(to) = &scheduled.to {
            self.promotable(to)?;
        }
        self.scheduled_switchover = Some(scheduled.clone());
        Ok(())
    }

    /// The scheduled switchover starts: requested as `pgfm switchover` would, and no longer
    /// scheduled — both or neither, so that it never starts twice.
    fn start_scheduled_switchover(
        &mut self,
        to: &str,
        generation: Generation,
        scheduled_at_unix_ms: u64,
    ) -> Result<(), CommandError> {
        self.scheduled(scheduled_at_unix_ms)?;
        let from = self.primary.clone().unwrap_or_default();
        self.request_switchover(&from, to, generation, false, (false, false))?;
        self.scheduled_switchover = None;
        Ok(())
    }

    /// The switchover scheduled at `at_unix_ms`, if it is the one scheduled.
    fn scheduled(&self, at_unix_ms: u64) -> Result<&ScheduledSwitchover, CommandError> {
        self.scheduled_switchover
            .as_ref()
            .filter(|s| s.at_unix_ms == at_unix_ms)
            .ok_or(CommandError::NoScheduledSwitchover)
    }

    /// The scheduled switchover is dropped, kept in the history with `reason`.
    fn drop_scheduled_switchover(
        &mut self,
        reason: &str,
        at_unix_ms: u64,
        scheduled_at_unix_ms: u64,
    ) -> Result<(), CommandError> {
        self.scheduled(scheduled_at_unix_ms)?;
        let Some(s) = self.scheduled_switchover.take() else {
            return Err(CommandError::NoScheduledSwitchover);
        };
        self.cancelled_switchovers.push(CancelledSwitchover {
            generation: self.generation,
            at_unix_ms,
            from: self.primary.clone().unwrap_or_default(),
            to: s
                .to
                .unwrap_or_else(|| "the standby chosen then".to_string()),
            reason: reason.to_string(),
            failover_instead: false,
        });
        Ok(())
    }

    /// `pgfm restart --in-place`: a data node not under maintenance (it would stay stopped).
    fn request_restart(&mut self, node: &str) -> Result<(), CommandError> {
        match self.members.get(node) {
            Some(m) if m.kind == NodeKind::Data => {}
            Some(_) => return Err(CommandError::NotADataNode(node.to_string())),
            None => return Err(CommandError::UnknownNode(node.to_string())),
        }
        if let Some(m) = self.maintenance.get(node) {
            return Err(CommandError::InMaintenance {
                node: node.to_string(),
                by: m.by.clone(),
            });
        }
        *self.restarts.entry(node.to_string()).or_default() += 1;
        Ok(())
    }

    /// `pgfm reload NODE ...`: every one a data node, or none is asked.
    fn request_reload(&mut self, nodes: &[String]) -> Result<(), CommandError> {
        for node in nodes {
            match self.members.get(node) {
                Some(m) if m.kind == NodeKind::Data => {}
                Some(_) => return Err(CommandError::NotADataNode(node.to_string())),
                None => return Err(CommandError::UnknownNode(node.to_string())),
            }
        }
        for node in nodes {
            *self.reloads.entry(node.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// `pgfm set-tag NODE KEY=VALUE ...`: `nofailover` is refused for the target of the
    /// switchover under way; `replicate_from` must name another data node and make no loop.
    fn set_tags(&mut self, node: &str, tags: &[crate::tags::Tag]) -> Result<(), CommandError> {
        let mut all = self.tags.clone();
        for tag in tags {
            self.check_tag(&all, node, tag)?;
            let changed = tag.applied_to(all.get(node).unwrap_or(&Default::default()));
            if changed.is_empty() {
                all.remove(node);
            } else {
                all.insert(node.to_string(), changed);
            }
        }
        self.tags = all;
        Ok(())
    }

    /// Whether `tag` may be set on `node`, with the tags `all`.
    fn check_tag(
        &self,
        all: &BTreeMap<String, crate::tags::Tags>,
        node: &str,
        tag: &crate::tags::Tag,
    ) -> Result<(), CommandError> {
        use crate::tags::Tag;
        match self.members.get(node) {
            Some(m) if m.kind == NodeKind::Data => {}
            Some(_) => return Err(CommandError::NotADataNode(node.to_string())),
            None => return Err(CommandError::UnknownNode(node.to_string())),
        }
        match tag {
            Tag::Nofailover(true) => {
                if let Some(sw) = self.switchover.as_ref().filter(|sw| sw.to == node) {
                    return Err(CommandError::SwitchoverUnderWay(sw.to.clone()));
                }
            }
            Tag::ReplicateFrom(Some(upstream)) => {
                match self.members.get(upstream) {
                    Some(m) if m.kind == NodeKind::Data => {}
                    Some(_) => return Err(CommandError::NotADataNode(upstream.clone())),
                    None => return Err(CommandError::UnknownNode(upstream.clone())),
                }
                if let Some(path) = crate::tags::replication_loop(all, node, upstream) {
                    return Err(CommandError::ReplicationLoop(path));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `pgfm maintenance NODE off`.
    fn leave_maintenance(&mut self, node: &str) -> Result<(), CommandError> {
        match self.maintenance.remove(node) {
            Some(_) => Ok(()),
            None => Err(CommandError::NotInMaintenance(node.to_string())),
        }
    }

    /// `pgfm set-priority`, on a data node.
    fn set_priority(&mut self, node: &str, priority: u32) -> Result<(), CommandError> {
        match self.members.get_mut(node) {
            Some(m) if m.kind == NodeKind::Data => {
                m.priority = priority;
                Ok(())
            }
            Some(_) => Err(CommandError::NotADataNode(node.to_string())),
            None => Err(CommandError::UnknownNode(node.to_string())),
        }
    }

    /// `pgfm pause` / `pgfm resume`.
    fn set_paused(&mut self, paused: bool) -> Result<(), CommandError> {
        self.paused = paused;
        Ok(())
    }

    /// `pgfm set-synchronous`, if the settings can be used.
    fn set_replication(&mut self, settings: &SyncSettings) -> Result<(), CommandError> {
        if let Some(problem) = settings.problem("sync_standbys", "minimum_standbys") {
            return Err(CommandError::BadSettings(problem));
        }
        match &mut self.settings {
            Some(committed) => {
                let mut values = committed.values.clone();
                values.sync = *settings;
                committed.commit(values, "pgfm set-synchronous", 0);
            }
            None => self.replication = Some(*settings),
        }
        Ok(())
    }

    /// The cluster-wide settings, if they can be used and edit the revision in force. The
    /// lease's timing may change too: each renewal says which lease it was timed with
    /// (`lease::LeaseClock`). A run-time `set-synchronous` from before is folded into them.
    fn set_settings(
        &mut self,
        base_revision: u64,
        settings: &crate::settings::Settings,
        by: &str,
        at_unix_ms: u64,
    ) -> Result<(), CommandError> {
        if let Some(problem) = settings.problem() {
            return Err(CommandError::BadSettings(problem.to_string()));
        }
        let current = self.settings.as_ref().map_or(0, |c| c.revision);
        if base_revision != current {
            return Err(CommandError::StaleSettings {
                base: base_revision,
                current,
            });
        }
        match &mut self.settings {
            None => {
                self.settings = Some(crate::settings::CommittedSettings::first(
                    settings.clone(),
                    by,
                    at_unix_ms,
                ));
            }
            Some(committed) => committed.commit(settings.clone(), by, at_unix_ms),
        }
        self.replication = None;
        Ok(())
    }

    /// The primary of the current generation commits its synchronous set: data nodes (the
    /// primary itself while it is the only one known to hold every acknowledged commit,
    /// see `promote`), a quorum between 1 and their number (0 for none).
    fn set_sync_set(
        &mut self,
        node: &str,
        generation: Generation,
        members: &std::collections::BTreeSet<String>,
        quorum: usize,
    ) -> Result<(), CommandError> {
        self.check_primary(node, generation)?;
        if let Some(bad) = members.iter().find(|m| {
            self.members
                .get(*m)
                .is_none_or(|member| member.kind != NodeKind::Data)
        }) {
            return Err(CommandError::NotADataNode(bad.clone()));
        }
        // Named anew only if it may be (a decision made before a tag changed); one named
        // already may stay while it is taken out, and the primary itself may be named (the
        // sole holder of every commit).
        if let Some(bad) = members
            .iter()
            .find(|m| *m != node && !self.sync_set.contains(*m) && !self.may_be_synchronous(m))
        {
            return Err(CommandError::NeverSynchronous(bad.clone()));
        }
        if quorum > members.len() || (quorum == 0 && !members.is_empty()) {
            return Err(CommandError::BadSettings(format!(
                "a synchronous quorum of {quorum} out of {} standbys",
                members.len()
            )));
        }
        self.sync_set = members.clone();
        self.sync_quorum = quorum;
        Ok(())
    }

    /// The old primary of the switchover `seq` stopped at `final_lsn` and gives up its
    /// lease.
    fn hand_over(
        &mut self,
        node: &str,
        generation: Generation,
        final_lsn: Lsn,
        seq: u64,
        unclean: bool,
    ) -> Result<(), CommandError> {
        let under_way = self
            .switchover
            .as_ref()
            .is_some_and(|s| s.from == node && s.generation == generation && s.seq == seq);
        if !under_way || self.lease_released || self.generation != generation {
            return Err(CommandError::NoSwitchover(generation));
        }
        self.lease_released = true;
        if let Some(s) = self.switchover.as_mut() {
            s.final_lsn = Some(final_lsn);
            s.unclean = unclean;
        }
        Ok(())
    }

    /// `pgfm promote --force` during the switchover of the current generation.
    fn force_switchover(&mut self, generation: Generation) -> Result<(), CommandError> {
        match self.switchover.as_mut() {
            Some(s) if s.generation == generation && self.generation == generation => {
                s.force = true;
                Ok(())
            }
            _ => Err(CommandError::NoSwitchover(generation)),
        }
    }

    /// The primary of the current generation says which timeline it runs on.
    fn set_timeline(
        &mut self,
        node: &str,
        generation: Generation,
        timeline: Timeline,
        forks: &[TimelineFork],
    ) -> Result<(), CommandError> {
        self.check_primary(node, generation)?;
        self.timeline = Some(timeline);
        self.forks = forks.to_vec();
        self.highest_timeline = self.highest_timeline.max(timeline);
        Ok(())
    }

    /// The switchover of the current generation is rolled back: the old primary takes its
    /// lease back; the history keeps why. A cancel judged on the lease (`lease_renewals`: the
    /// primary stopped renewing without handing over) is refused once a renewal or the
    /// hand-over was applied after it was judged; for a `pgfm promote` it leaves the
    /// promotion asked for, in force while the primary stays silent.
    fn cancel_switchover(
        &mut self,
        generation: Generation,
        reason: &str,
        at_unix_ms: u64,
        lease_renewals: Option<u64>,
    ) -> Result<(), CommandError> {
        let Some(sw) = self
            .switchover
            .as_ref()
            .filter(|s| s.generation == generation && self.generation == generation)
        else {
            return Err(CommandError::NoSwitchover(generation));
        };
        if let Some(seen) = lease_renewals {
            if self.lease_released {
                return Err(CommandError::HandedOver(generation));
            }
            if seen != self.lease_renewals {
                return Err(CommandError::LeaseRenewed {
                    generation,
                    seen,
                    applied: self.lease_renewals,
                });
            }
        }
        // The primary stopped renewing: no hand-over will come, the promotion goes on.
        let failover_instead = lease_renewals.is_some() && sw.promotion;
        self.cancelled_switchovers.push(CancelledSwitchover {
            generation,
            at_unix_ms,
            from: sw.from.clone(),
            to: sw.to.clone(),
            reason: reason.to_string(),
            failover_instead,
        });
        if failover_instead {
            self.promotion_request = Some(PromotionRequest {
                to: sw.named.then(|| sw.to.clone()),
                force: sw.force,
                generation,
                lease_renewals: Some(self.lease_renewals),
            });
        }
        // The maintenance asked with it did not begin: the operator is told, and the node
        // serves on. Not when the primary stopped renewing (judged on the lease): it is
        // dead, frozen or cut off, and should it come back after a failover it must stay
        // stopped, as its operator asked (`pgfm cluster-status` says so while it is still
        // the primary).
        if sw.maintenance && lease_renewals.is_none() {
            self.maintenance.remove(&sw.from);
        }
        self.switchover = None;
        self.lease_released = false;
        Ok(())
    }

    /// Invariant 1: `promotion.to` becomes the primary of the next generation — a
    /// promotable data node, on a judgement still true: no renewal applied since the lease
    /// was judged run out (`lease_renewals`), the hand-over it rests on still committed
    /// (`handover`).
    fn promote(
        &mut self,
        promotion: Promotion,
        lease_renewals: Option<u64>,
        handover: Option<Lsn>,
    ) -> Result<(), CommandError> {
        let node = &promotion.to.clone();
        if promotion.generation != self.generation.next() {
            return Err(CommandError::WrongGeneration {
                proposed: promotion.generation,
                expected: self.generation.next(),
            });
        }
        if let Some(seen) = lease_renewals {
            if !self.lease_released && seen != self.lease_renewals {
                return Err(CommandError::LeaseRenewed {
                    generation: self.generation,
                    seen,
                    applied: self.lease_renewals,
                });
            }
        }
        if let Some(final_lsn) = handover {
            let committed = self.lease_released
                && self.switchover.as_ref().is_some_and(|s| {
                    s.to == *node
                        && s.generation == self.generation
                        && s.final_lsn == Some(final_lsn)
                });
            if !committed {
                return Err(CommandError::HandOverGone(final_lsn));
            }
        }
        self.promotable(node)?;
        self.primary = Some(node.clone());
        self.generation = promotion.generation;
        self.history.push(promotion);
        self.lease_renewals = 0;
        self.lease_timings.clear();
        self.lease_released = false;
        self.switchover = None;
        self.promotion_request = None;
        // Invariant 5: every commit acknowledged so far is on the new primary — and, under a
        // synchronous rule, on no other node known to hold them all: until a standby has
        // caught up with it (its `manage_sync` widens the set with standbys, then narrows
        // it to them once they flushed past the switch), the new primary is the set, and
        // its loss promotes nobody. (Cleared, a second failover would promote any standby
        // and lose what the first kept.)
        let synchronous = !self.committed_sync().is_async();
        self.sync_set.clear();
        self.sync_quorum = 0;
        if synchronous {
            self.sync_set.insert(node.clone());
            self.sync_quorum = 1;
        }
        // The new primary says which timeline it starts once it has; it starts one no
        // primary before it may have started.
        let highest = self.timeline.unwrap_or_default().max(self.highest_timeline);
        self.highest_timeline = Timeline(highest.0 + 1);
        self.timeline = None;
        Ok(())
    }

    /// Why `report`'s node cannot stream from the primary as it is: it holds WAL past the
    /// point where the primary's timeline forked off its own (it stayed with a cut-off
    /// primary, or was ahead of the promoted standby), or it is on a timeline the primary's
    /// history does not have. None: it can follow (or nothing is known to say otherwise).
    pub fn divergence(&self, report: &NodeReport) -> Option<String> {
        let current = self.timeline?;
        let theirs = report.timeline?;
        if theirs == current {
            return None;
        }
        // Replayed, as PostgreSQL judges it: WAL received but not replayed (a torn record's
        // tail after the old primary died) is simply replaced by the new timeline's.
        let position = match report.role {
            Some(DbRole::Primary) => report.current_lsn?,
            _ => report.replayed_lsn?,
        };
        match self.forks.iter().find(|f| f.timeline == theirs) {
            Some(fork) if position > fork.ended_at => Some(format!(
                "has replayed WAL up to {position} on timeline {theirs}, past {} where the \
                 primary's timeline {current} forked off it",
                fork.ended_at
            )),
            Some(_) => None,
            None => Some(format!(
                "is on timeline {theirs}, which is not in the history of the primary's \
                 timeline {current}"
            )),
        }
    }

    pub fn data_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.kind == NodeKind::Data)
    }
}

/// What PostgreSQL said about its role when probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbRole {
    Primary,
    Standby,
}

/// The virtual IP as one data node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipReport {
    /// `ADDRESS/PREFIX`.
    pub address: String,
    /// Whether this node carries it now.
    pub held: bool,
}

/// `[watchdog] mode`: whether the primary's agent arms the host watchdog while it holds
/// the lease (Patroni's three modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogMode {
    /// Never armed.
    #[default]
    Off,
    /// Armed when the device can be opened; without one the node still becomes primary.
    Automatic,
    /// The node never becomes primary without an armed watchdog.
    Required,
}

impl std::fmt::Display for WatchdogMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WatchdogMode::Off => "off",
            WatchdogMode::Automatic => "automatic",
            WatchdogMode::Required => "required",
        })
    }
}

/// The host watchdog as a data node's agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogReport {
    pub mode: WatchdogMode,
    /// Armed now (this node is the primary and holds the lease).
    pub armed: bool,
    /// Why the watchdog cannot be used (the device cannot be opened, the timeout is not
    /// accepted); None when it can.
    #[serde(default)]
    pub problem: Option<String>,
    /// The timeout it is armed with, or will be (s): it follows a change of the lease's
    /// timing once a feed under it is allowed, so it may lag the settings for a renewal.
    /// None: an agent from before (or mode off).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

impl WatchdogReport {
    /// Whether this node may become the primary as far as its watchdog goes: `required`
    /// needs a usable one.
    pub fn allows_primary(&self) -> bool {
        self.mode != WatchdogMode::Required || self.problem.is_none()
    }
}

/// What is in a data node's data directory, read without starting PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataDirState {
    /// Missing or empty: the node must be cloned from the primary.
    Empty,
    /// A cluster without `standby.signal`: started as is, it would accept writes.
    Primary,
    /// A cluster with `standby.signal`: started as is, it would be a standby.
    Standby,
    /// A former primary that pgfm fenced (`standby.signal` and pgfm's rewind marker): it
    /// may have WAL the new primary lacks, so it rejoins only through a rewind.
    FencedPrimary,
}

/// One walsender as the primary sees it in `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    pub replay_lsn: Option<Lsn>,
    /// What the standby has made durable: a synchronous commit waits for this.
    #[serde(default)]
    pub flush_lsn: Option<Lsn>,
    /// What the walsender has sent it (only WAL the primary flushed is sent).
    #[serde(default)]
    pub sent_lsn: Option<Lsn>,
}

/// One agent's report about itself, made every probe interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    pub kind: NodeKind,
    /// Whether PostgreSQL answered the probe (always false for a witness).
    pub db_up: bool,
    pub role: Option<DbRole>,
    pub data_dir: Option<DataDirState>,
    /// `pg_current_wal_lsn()` on a primary.
    pub current_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()` / `pg_last_wal_replay_lsn()` on a standby.
    pub received_lsn: Option<Lsn>,
    pub replayed_lsn: Option<Lsn>,
    pub timeline: Option<Timeline>,
    /// The WAL receiver's status on a standby (`streaming`, ...), None when not receiving.
    pub receiver: Option<String>,
    /// Walsenders on a primary.
    pub replicas: Vec<ReplicaInfo>,
    /// Physical replication slots on a primary.
    #[serde(default)]
    pub slots: Vec<String>,
    /// The `host:port` in this standby's `primary_conninfo`.
    #[serde(default)]
    pub conninfo_upstream: Option<String>,
    /// This standby's `primary_slot_name` (None: none).
    #[serde(default)]
    pub conninfo_slot: Option<String>,
    /// How many of the reloads asked of this node (`ClusterState::reloads`) its agent has
    /// carried out since it started.
    #[serde(default)]
    pub reloaded: u64,
    /// How many of the restarts in place asked of this node (`ClusterState::restarts`) its
    /// agent has carried out since it started.
    #[serde(default)]
    pub restarted: u64,
    /// Whether this agent could connect to the committed primary's PostgreSQL at its last
    /// probe (None: not tried, e.g. on the primary itself).
    #[serde(default)]
    pub sees_primary: Option<bool>,
    /// The generation whose primary `sees_primary` and `primary_check` are about: a verdict
    /// on an earlier generation's primary says nothing of the current one's.
    #[serde(default)]
    pub primary_checked: Option<Generation>,
    /// pg_control says recovery had not ended when the stopped data directory last ran: a
    /// standby's, or one whose promotion was cut off before it ended (or a base backup or
    /// a rewind never started). Started as the primary it would end recovery on its old
    /// timeline without starting a new one, a second history of a timeline another node
    /// wrote; so it ends recovery only by a promotion. False while PostgreSQL runs.
    #[serde(default)]
    pub recovery_unfinished: bool,
    /// The virtual IP, on a data node configured with one.
    #[serde(default)]
    pub vip: Option<VipReport>,
    /// On a primary: what `synchronous_standby_names` asks for (no names: asynchronous).
    #[serde(default)]
    pub sync: Option<SyncRule>,
    /// On a primary: its WAL position once its agent last changed
    /// `synchronous_standby_names` (every commit acknowledged under the old setting is
    /// before it).
    #[serde(default)]
    pub sync_switch_lsn: Option<Lsn>,
    /// On a primary: its timeline history (where each earlier timeline ended).
    #[serde(default)]
    pub forks: Vec<TimelineFork>,
    /// How this agent's last check of the committed primary's database went, in words
    /// ("refused the connection", "cannot tell: ..."), when it checked.
    #[serde(default)]
    pub primary_check: Option<String>,
    /// The host watchdog, on a data node (None: a witness, or an agent that predates it).
    #[serde(default)]
    pub watchdog: Option<WatchdogReport>,
    /// How long this agent's TLS certificate (or the cluster CA, whichever ends first)
    /// stays valid, in seconds from the report (negative: expired; None: TLS off, or an
    /// agent that predates it).
    #[serde(default)]
    pub tls_valid_for_s: Option<i64>,
    /// Cluster-wide keys this agent's file sets to another value than the committed
    /// settings (`timing.lease = 3s in this file; the cluster's is 2400ms`): the committed
    /// ones are used, and the operator is told.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_differs: Vec<String>,
    /// The parameters PostgreSQL holds back until a restart (`pg_settings.pending_restart`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// What its `pgfm.conf` was written with (`parameters::digest` of the parameters);
    /// None when unknown (PostgreSQL down, an agent from before).
    #[serde(default)]
    pub parameters_digest: Option<u64>,
    /// The hot-standby minimums it runs with (`parameters::HOT_STANDBY_MINIMUMS`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hot_standby: BTreeMap<String, i64>,
    /// What the agent is doing or waiting for, or the last probe error.
    pub info: String,
}

impl NodeReport {
    /// Clear every field a probe of the database fills: before a probe, so that a failed
    /// one says the database is down, never what an earlier one saw.
    pub fn forget_database(&mut self) {
        self.db_up = false;
        self.role = None;
        self.current_lsn = None;
        self.received_lsn = None;
        self.replayed_lsn = None;
        self.timeline = None;
        self.receiver = None;
        self.replicas.clear();
        self.slots.clear();
        self.conninfo_upstream = None;
        self.conninfo_slot = None;
        self.sync = None;
        self.forks.clear();
        self.pending_restart.clear();
        self.parameters_digest = None;
        self.hot_standby.clear();
    }

    pub fn new(name: &str, kind: NodeKind) -> NodeReport {
        NodeReport {
            name: name.to_string(),
            kind,
            db_up: false,
            role: None,
            data_dir: None,
            current_lsn: None,
            received_lsn: None,
            replayed_lsn: None,
            timeline: None,
            receiver: None,
            replicas: Vec::new(),
            slots: Vec::new(),
            conninfo_upstream: None,
            conninfo_slot: None,
            reloaded: 0,
            restarted: 0,
            sees_primary: None,
            primary_checked: None,
            recovery_unfinished: false,
            vip: None,
            sync: None,
            sync_switch_lsn: None,
            forks: Vec::new(),
            primary_check: None,
            watchdog: None,
            tls_valid_for_s: None,
            file_differs: Vec::new(),
            pending_restart: Vec::new(),
            parameters_digest: None,
            hot_standby: BTreeMap::new(),
            info: String::new(),
        }
    }

    /// The newest WAL position this node holds, whatever its role.
    pub fn wal_position(&self) -> Option<Lsn> {
        match self.role {
            Some(DbRole::Primary) => self.current_lsn,
            Some(DbRole::Standby) => self.received_lsn.max(self.replayed_lsn),
            None => None,
        }
    }

    /// Whether this node, as found, would take writes: running as a primary, or stopped with
    /// a data directory that has no `standby.signal`.
    pub fn would_accept_writes(&self) -> bool {
        if self.db_up {
            self.role == Some(DbRole::Primary)
        } else {
            self.data_dir == Some(DataDirState::Primary)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn member(name: &str, kind: NodeKind) -> Member {
        Member {
            name: name.into(),
            kind,
            address: format!("127.0.0.1:{}", 7000 + name.len()),
            pg_host: (kind == NodeKind::Data).then(|| "127.0.0.1".into()),
            pg_port: (kind == NodeKind::Data).then_some(5432),
            priority: 1,
            promotable: true,
        }
    }

    fn check(commands: &[Command], expected: Result<(Option<&str>, u64), CommandError>) {
        let mut state = ClusterState::default();
        let mut result = Ok(());
        for command in commands {
            result = state.apply(command);
        }
        let got = result.map(|()| (state.primary.as_deref(), state.generation.0));
        assert_eq!(got, expected, "applying {commands:?}");
    }

    /// pg1, pg2, pg3 and a witness registered, pg1 the primary of generation 1.
    fn formed() -> ClusterState {
        let mut state = ClusterState::default();
        for (name, kind) in [
            ("pg1", NodeKind::Data),
            ("pg2", NodeKind::Data),
            ("pg3", NodeKind::Data),
            ("witness", NodeKind::Witness),
        ] {
            state
                .apply(&Command::Register {
                    member: member(name, kind),
                })
                .unwrap();
        }
        state
            .apply(&Command::Bootstrap {
                primary: "pg1".into(),
                generation: Generation(1),
            })
            .unwrap();
        state
    }

    /// Maintenance: data nodes only, once at a time; the primary only with the switchover
    /// away from it, begun in the same step, and a rolled-back switchover ends it; a node
    /// under maintenance is never the target of a switchover, a promotion or a failover.
    /// A refused command changes nothing.
    /// Tags change together or not at all: one bad tag of several refuses them all; a
    /// `nofailover` node is never the target of a switchover or a promotion; a member that
    /// leaves takes its tags with it.
    #[test]
    fn tags_are_checked_against_the_state() {
        use crate::tags::Tag;
        let mut state = formed();
        let set = |node: &str, tags: &[&str]| Command::SetTags {
            node: node.into(),
            tags: tags.iter().map(|t| Tag::parse(t).unwrap()).collect(),
        };
        state.apply(&set("pg2", &["replicate_from=pg3"])).unwrap();
        let before = state.clone();
        assert_eq!(
            state.apply(&set("pg3", &["nosync=true", "replicate_from=pg2"])),
            Err(CommandError::ReplicationLoop("pg3 -> pg2 -> pg3".into()))
        );
        assert_eq!(state, before, "a refused command changed the state");
        assert_eq!(
            state.apply(&set("witness", &["nosync=true"])),
            Err(CommandError::NotADataNode("witness".into()))
        );
        assert_eq!(
            state.apply(&set("pg3", &["replicate_from=pg9"])),
            Err(CommandError::UnknownNode("pg9".into()))
        );
        assert_eq!(state, before, "a refused command changed the state");

        state.apply(&set("pg3", &["nofailover=true"])).unwrap();
        assert!(!state.may_promote("pg3") && !state.may_be_synchronous("pg3"));
        assert!(state.may_promote("pg2") && !state.may_be_synchronous("pg2"));
        assert_eq!(
            state.apply(&Command::RequestSwitchover {
                from: "pg1".into(),
                to: "pg3".into(),
                generation: Generation(1),
                force: false,
                promotion: false,
                named: false,
            }),
            Err(CommandError::NoFailover("pg3".into()))
        );
        // Not named a synchronous standby anew (a decision made before the tag).
        let sync = |members: &[&str]| Command::SetSyncSet {
            node: "pg1".into(),
            generation: Generation(1),
            members: members.iter().map(|m| m.to_string()).collect(),
            quorum: 1,
        };
        assert_eq!(
            state.apply(&sync(&["pg3"])),
            Err(CommandError::NeverSynchronous("pg3".into()))
        );
        state.apply(&sync(&["pg1"])).unwrap();
        state.apply(&set("pg3", &["nofailover=false"])).unwrap();
        state.apply(&sync(&["pg3"])).unwrap();
        state.apply(&set("pg3", &["nosync=true"])).unwrap();
        state.apply(&sync(&["pg3"])).unwrap();
        state.apply(&set("pg3", &["nosync=false"])).unwrap();
        assert!(!state.tags.contains_key("pg3"), "no tag left: no entry");
        state
            .apply(&Command::RemoveMember { name: "pg2".into() })
            .unwrap();
        assert!(state.tags.is_empty());
    }

    #[test]
    fn maintenance_is_checked_against_the_state() {
        let mut state = formed();
        let by = |who: &str| Maintenance {
            since_unix_ms: 7,
            by: who.into(),
            keep_running: false,
            forced: false,
        };
        let enter = |node: &str, handover: Option<&str>| Command::EnterMaintenance {
            node: node.into(),
            maintenance: by("dba@db1"),
            handover: handover.map(|to| MaintenanceHandover {
                to: to.into(),
                generation: Generation(1),
            }),
        };
        let refused = |state: &ClusterState, command: Command, error: CommandError| {
            let mut after = state.clone();
            assert_eq!(after.apply(&command), Err(error), "{command:?}");
            assert_eq!(&after, state, "{command:?} changed the state");
        };
        refused(
            &state,
            enter("witness", None),
            CommandError::NotADataNode("witness".into()),
        );
        refused(
            &state,
            enter("pg9", None),
            CommandError::UnknownNode("pg9".into()),
        );
        refused(
            &state,
            enter("pg1", None),
            CommandError::MaintenanceOfPrimary("pg1".into()),
        );
        refused(
            &state,
            enter("pg2", Some("pg3")),
            CommandError::NotLeaseHolder {
                node: "pg2".into(),
                generation: Generation(1),
            },
        );
        refused(
            &state,
            Command::LeaveMaintenance { node: "pg2".into() },
            CommandError::NotInMaintenance("pg2".into()),
        );

        state.apply(&enter("pg3", None)).unwrap();
        assert!(!state.may_promote("pg3") && state.may_promote("pg2"));
        let in_maintenance = CommandError::InMaintenance {
            node: "pg3".into(),
            by: "dba@db1".into(),
        };
        assert_eq!(
            in_maintenance.to_string(),
            "pg3 is under maintenance (put there by dba@db1; pgfm maintenance pg3 off ends it)"
        );
        refused(&state, enter("pg3", None), in_maintenance.clone());
        refused(
            &state,
            Command::RequestSwitchover {
                from: "pg1".into(),
                to: "pg3".into(),
                generation: Generation(1),
                force: false,
                promotion: false,
                named: false,
            },
            in_maintenance.clone(),
        );
        refused(
            &state,
            Command::RequestPromotion {
                to: Some("pg3".into()),
                force: true,
                generation: Generation(1),
            },
            in_maintenance.clone(),
        );
        refused(
            &state,
            Command::Promote {
                node: "pg3".into(),
                generation: Generation(2),
                from: Some("pg1".into()),
                reason: String::new(),
                lsn: None,
                lost_bytes: None,
                at_unix_ms: 0,
                lease_renewals: None,
                handover: None,
                lost_at_least: false,
            },
            in_maintenance,
        );

        // The primary: its switchover begins with it; rolled back, the maintenance ends.
        let mut primary = state.clone();
        primary.apply(&enter("pg1", Some("pg2"))).unwrap();
        let sw = primary.switchover.clone().unwrap();
        assert_eq!(
            (sw.from.as_str(), sw.to.as_str(), sw.maintenance),
            ("pg1", "pg2", true)
        );
        assert!(primary.maintenance.contains_key("pg1"));
        primary
            .apply(&Command::CancelSwitchover {
                generation: Generation(1),
                reason: "rolled back".into(),
                at_unix_ms: 8,
                lease_renewals: None,
            })
            .unwrap();
        assert!(!primary.maintenance.contains_key("pg1"));
        assert!(primary.switchover.is_none());
        // Cancelled because pg1 stopped renewing its lease (dead, frozen, cut off): the
        // maintenance stays, so that after a failover pg1 comes back and stays stopped.
        let mut silent = state.clone();
        silent.apply(&enter("pg1", Some("pg2"))).unwrap();
        refused(
            &silent,
            enter("pg2", None),
            CommandError::SwitchoverUnderWay("pg2".into()),
        );
        silent
            .apply(&Command::CancelSwitchover {
                generation: Generation(1),
                reason: "pg1 stopped renewing".into(),
                at_unix_ms: 8,
                lease_renewals: Some(0),
            })
            .unwrap();
        assert!(silent.maintenance.contains_key("pg1"));
        // Towards a node under maintenance, nothing begins.
        refused(
            &state,
            enter("pg1", Some("pg3")),
            CommandError::InMaintenance {
                node: "pg3".into(),
                by: "dba@db1".into(),
            },
        );

        state
            .apply(&Command::LeaveMaintenance { node: "pg3".into() })
            .unwrap();
        assert!(state.may_promote("pg3"));
        // A node that leaves the cluster leaves its maintenance behind.
        state.apply(&enter("pg3", None)).unwrap();
        state
            .apply(&Command::RemoveMember { name: "pg3".into() })
            .unwrap();
        assert!(state.maintenance.is_empty());
    }

    #[test]
    fn bootstrap_is_checked_against_the_state() {
        let pg1 = Command::Register {
            member: member("pg1", NodeKind::Data),
        };
        let witness = Command::Register {
            member: member("witness", NodeKind::Witness),
        };
        let boot = |name: &str, g| Command::Bootstrap {
            primary: name.into(),
            generation: Generation(g),
        };
        check(&[pg1.clone(), boot("pg1", 1)], Ok((Some("pg1"), 1)));
        check(
            &[pg1.clone(), boot("pg1", 2)],
            Err(CommandError::WrongGeneration {
                proposed: Generation(2),
                expected: Generation(1),
            }),
        );
        check(
            &[pg1.clone(), boot("pg1", 1), boot("pg1", 1)],
            Err(CommandError::AlreadyBootstrapped {
                primary: "pg1".into(),
                generation: Generation(1),
            }),
        );
        check(
            &[witness, boot("witness", 1)],
            Err(CommandError::NotADataNode("witness".into())),
        );
        check(
            &[boot("pg9", 1)],
            Err(CommandError::NotADataNode("pg9".into())),
        );
    }

    /// The synchronous rule is set by the primary of the generation only, never with a
    /// quorum larger than its members, and may name the primary itself while a standby
    /// catches up with it; settings set at run time are checked; after a promotion under a
    /// synchronous rule the new primary alone is the set (it alone is known to hold every
    /// acknowledged commit), under an asynchronous one the rule stays asynchronous.
    /// The cluster-wide settings: the first commit, then edits of the revision in force
    /// only; bad values and a stale edit are refused and change nothing; a `set-synchronous` from before them is folded in, and one after
    /// them is a new revision.
    #[test]
    fn settings_are_committed_by_revision() {
        use crate::settings::Settings;
        let set = |base_revision, settings: &Settings| Command::SetSettings {
            base_revision,
            settings: settings.clone(),
            by: "dba@host".into(),
            at_unix_ms: 7,
        };
        let mut state = ClusterState::default();
        let early = SyncSettings {
            mode: SyncMode::On,
            ..SyncSettings::default()
        };
        state
            .apply(&Command::SetReplication { settings: early })
            .unwrap();
        let first = Settings {
            sync: early,
            ..Settings::default()
        };
        assert_eq!(
            state.apply(&set(1, &first)),
            Err(CommandError::StaleSettings {
                base: 1,
                current: 0
            })
        );
        state.apply(&set(0, &first)).unwrap();
        assert_eq!(state.replication, None);
        let committed = state.settings.clone().unwrap();
        assert_eq!((committed.revision, committed.values.sync), (1, early));

        let mut bad = first.clone();
        bad.start_attempts = 0;
        let mut slower = first.clone();
        slower.switchover_timeout_ms = 9_000;
        for (command, expected) in [
            (set(1, &bad), "failover.start_attempts is 0 (set it to at least 1; the default is 3)"),
            (set(0, &slower), "the settings were edited at revision 0, but revision 1 has been committed since (pgfm show-config shows it; edit again)"),
        ] {
            assert_eq!(state.apply(&command).unwrap_err().to_string(), expected);
            assert_eq!(state.settings.as_ref(), Some(&committed));
        }
        state.apply(&set(1, &slower)).unwrap();
        slower.lease.lease_ms = 4_000;
        state.apply(&set(2, &slower)).unwrap();
        let off = SyncSettings::default();
        state
            .apply(&Command::SetReplication { settings: off })
            .unwrap();
        let now = state.settings.unwrap();
        assert_eq!((now.revision, now.values.sync), (4, off));
        assert_eq!(now.values.switchover_timeout_ms, 9_000);
        assert_eq!(now.history[1].by, "dba@host");
        assert_eq!(now.history[3].by, "pgfm set-synchronous");
        assert_eq!(state.replication, None);
    }

    #[test]
    fn the_synchronous_rule_and_settings_are_checked() {
        let mut state = ClusterState::default();
        for c in [
            Command::Register {
                member: member("pg1", NodeKind::Data),
            },
            Command::Register {
                member: member("pg2", NodeKind::Data),
            },
            Command::Register {
                member: member("pg3", NodeKind::Data),
            },
            Command::Bootstrap {
                primary: "pg1".into(),
                generation: Generation(1),
            },
        ] {
            state.apply(&c).unwrap();
        }
        let set = |node: &str, members: &[&str], quorum| Command::SetSyncSet {
            node: node.into(),
            generation: Generation(1),
            members: members.iter().map(|m| m.to_string()).collect(),
            quorum,
        };
        assert!(state.apply(&set("pg2", &["pg3"], 1)).is_err());
        assert!(state.apply(&set("pg1", &["pg2"], 2)).is_err());
        assert!(state.apply(&set("pg1", &["pg2", "pg3"], 0)).is_err());
        assert!(state.apply(&set("pg1", &["pg1", "witness"], 1)).is_err());
        state.apply(&set("pg1", &["pg1", "pg2"], 1)).unwrap();
        state.apply(&set("pg1", &["pg2", "pg3"], 1)).unwrap();
        assert_eq!((state.sync_set.len(), state.sync_quorum), (2, 1));
        let bad = SyncSettings {
            mode: SyncMode::Quorum,
            standbys: 1,
            minimum: 2,
        };
        assert!(state
            .apply(&Command::SetReplication { settings: bad })
            .is_err());
        assert_eq!(state.replication, None);
        let good = SyncSettings { minimum: 1, ..bad };
        state
            .apply(&Command::SetReplication { settings: good })
            .unwrap();
        assert_eq!(state.replication, Some(good));
        state
            .apply(&Command::ReleaseLease {
                node: "pg1".into(),
                generation: Generation(1),
            })
            .unwrap();
        state
            .apply(&Command::Promote {
                node: "pg2".into(),
                generation: Generation(2),
                from: Some("pg1".into()),
                reason: "test".into(),
                lsn: None,
                lost_bytes: None,
                at_unix_ms: 0,
                lease_renewals: None,
                handover: None,
                lost_at_least: false,
            })
            .unwrap();
        assert_eq!(
            state.committed_sync(),
            SyncRule::new(1, ["pg2".into()].into())
        );
        assert_eq!(
            state.committed_sync().for_primary("pg2"),
            SyncRule::default()
        );
        assert_eq!(
            state.replication,
            Some(good),
            "settings outlive a promotion"
        );
    }

    /// Each promotion reserves a timeline above every one a primary may have started, with
    /// or without its predecessor's `SetTimeline` (chaos soak seed 2, run 44: a primary
    /// that died before saying its timeline left no trace, and the next one started the
    /// same number on another fork).
    #[test]
    fn every_promotion_reserves_a_timeline_no_primary_may_have_started() {
        let mut state = ClusterState::default();
        for name in ["pg1", "pg2", "pg3"] {
            state
                .apply(&Command::Register {
                    member: member(name, NodeKind::Data),
                })
                .unwrap();
        }
        let apply = |state: &mut ClusterState, command: Command| state.apply(&command).unwrap();
        let promote = |node: &str, generation: u64| Command::Promote {
            node: node.into(),
            generation: Generation(generation),
            from: None,
            reason: "test".into(),
            lsn: None,
            lost_bytes: None,
            at_unix_ms: 0,
            lease_renewals: None,
            handover: None,
            lost_at_least: false,
        };
        let timeline = |node: &str, generation: u64, timeline: u32| Command::SetTimeline {
            node: node.into(),
            generation: Generation(generation),
            timeline: Timeline(timeline),
            forks: Vec::new(),
        };
        apply(
            &mut state,
            Command::Bootstrap {
                primary: "pg1".into(),
                generation: Generation(1),
            },
        );
        apply(&mut state, timeline("pg1", 1, 1));
        assert_eq!(state.highest_timeline, Timeline(1));
        apply(&mut state, promote("pg2", 2));
        assert_eq!(state.highest_timeline, Timeline(2), "pg2 starts 2");
        // pg2 dies before its SetTimeline: the next promotion starts above it anyway.
        apply(&mut state, promote("pg3", 3));
        assert_eq!(state.highest_timeline, Timeline(3), "pg3 starts 3");
        // PostgreSQL picked a later one (history files of its own): the next starts above.
        apply(&mut state, timeline("pg3", 3, 7));
        apply(&mut state, promote("pg1", 4));
        assert_eq!(state.highest_timeline, Timeline(8));
        // A state from before the field (0) starts above the committed timeline.
        state.highest_timeline = Timeline::default();
        apply(&mut state, timeline("pg1", 4, 8));
        state.highest_timeline = Timeline::default();
        apply(&mut state, promote("pg2", 5));
        assert_eq!(state.highest_timeline, Timeline(9));
    }

    /// A switchover's promotion rests on its hand-over: once the switchover was rolled back
    /// (the old primary writing again in the same generation) the log refuses it.
    #[test]
    fn a_switchover_promotion_after_its_rollback_is_refused() {
        let mut state = ClusterState::default();
        let handover = Command::HandOver {
            node: "pg1".into(),
            generation: Generation(1),
            final_lsn: Lsn(100),
            seq: 1,
            unclean: false,
        };
        let promote = Command::Promote {
            node: "pg2".into(),
            generation: Generation(2),
            from: Some("pg1".into()),
            reason: "switchover from pg1 to pg2".into(),
            lsn: None,
            lost_bytes: Some(0),
            at_unix_ms: 0,
            lease_renewals: None,
            handover: Some(Lsn(100)),
            lost_at_least: false,
        };
        for c in [
            Command::Register {
                member: member("pg1", NodeKind::Data),
            },
            Command::Register {
                member: member("pg2", NodeKind::Data),
            },
            Command::Bootstrap {
                primary: "pg1".into(),
                generation: Generation(1),
            },
            Command::RequestSwitchover {
                from: "pg1".into(),
                to: "pg2".into(),
                generation: Generation(1),
                force: false,
                promotion: false,
                named: false,
            },
            Command::ForceSwitchover {
                generation: Generation(1),
            },
            handover.clone(),
            Command::CancelSwitchover {
                generation: Generation(1),
                reason: "test".into(),
                at_unix_ms: 0,
                lease_renewals: None,
            },
        ] {
            state.apply(&c).unwrap();
        }
        assert_eq!(
            state.apply(&promote),
            Err(CommandError::HandOverGone(Lsn(100)))
        );
        assert_eq!(state.primary.as_deref(), Some("pg1"));
        assert!(state
            .apply(&Command::ForceSwitchover {
                generation: Generation(1)
            })
            .is_err());
        // A hand-over of the rolled-back switchover, delayed in the network, never ends the
        // next one (the primary has written past its final position since).
        state
            .apply(&Command::RequestSwitchover {
                from: "pg1".into(),
                to: "pg2".into(),
                generation: Generation(1),
                force: false,
                promotion: false,
                named: false,
            })
            .unwrap();
        assert_eq!(
            state.apply(&handover),
            Err(CommandError::NoSwitchover(Generation(1)))
        );
        assert!(!state.lease_released);
    }

    /// A promotion judged on an expired lease is refused once a renewal was applied after
    /// the judgement (a deposed coordinator's decision forwarded after a partition heals).
    #[test]
    fn a_promotion_on_a_stale_lease_judgement_is_refused() {
        let register = |name: &str| Command::Register {
            member: member(name, NodeKind::Data),
        };
        let promote = |seen| Command::Promote {
            node: "pg2".into(),
            generation: Generation(2),
            from: Some("pg1".into()),
            reason: "the lease of primary pg1 expired".into(),
            lsn: None,
            lost_bytes: None,
            at_unix_ms: 0,
            lease_renewals: seen,
            handover: None,
            lost_at_least: false,
        };
        let renew = Command::RenewLease {
            node: "pg1".into(),
            generation: Generation(1),
            lease_ms: None,
        };
        let boot = Command::Bootstrap {
            primary: "pg1".into(),
            generation: Generation(1),
        };
        let start = [register("pg1"), register("pg2"), boot];
        let with = |tail: &[Command]| [start.as_slice(), tail].concat();
        check(
            &with(&[renew.clone(), promote(Some(1))]),
            Ok((Some("pg2"), 2)),
        );
        check(
            &with(&[renew.clone(), promote(Some(0))]),
            Err(CommandError::LeaseRenewed {
                generation: Generation(1),
                seen: 0,
                applied: 1,
            }),
        );
        // A released lease needs no judgement; neither does a hand-over's promotion.
        let release = Command::ReleaseLease {
            node: "pg1".into(),
            generation: Generation(1),
        };
        check(
            &with(&[renew, release, promote(Some(0))]),
            Ok((Some("pg2"), 2)),
        );
        check(&with(&[promote(None)]), Ok((Some("pg2"), 2)));
    }
}
