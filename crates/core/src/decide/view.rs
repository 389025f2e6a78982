//! What the engine decides on: this agent's view of the cluster (`ClusterView`), of itself
//! (`LocalView`), and the settings from its config.

use std::collections::BTreeMap;

use crate::model::{ClusterState, NodeKind, NodeReport, SyncSettings};
use crate::types::Lsn;

/// A report and when (on the receiving agent's monotonic clock, in ms) it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub report: NodeReport,
    pub received_at_ms: u64,
}

pub use crate::settings::{OnCrash, RejoinMode, Settings};

/// What this agent knows about the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// This agent's name.
    pub name: String,
    pub state: ClusterState,
    /// Names of every voting member of the Raft cluster (the allowed node list).
    pub voters: Vec<String>,
    /// The latest report from each agent, as held by the coordinator.
    pub reports: BTreeMap<String, Observed>,
    /// The settings in force: the committed ones (`ClusterState::settings`), else this
    /// agent's file's (`ClusterState::settings_in_force`).
    pub settings: Settings,
    /// When this agent applied the latest lease renewal, release or promotion (monotonic ms).
    pub last_renewal_seen_ms: Option<u64>,
    /// Until when the renewals this agent applied hold the primary's lease, each for the
    /// lease it was timed with (`lease::LeaseClock`); None: `timing.lease` after
    /// `last_renewal_seen_ms`.
    pub lease_until_ms: Option<u64>,
    /// When this agent became a coordinator that has applied an entry of its own term
    /// (monotonic ms); None when it is not.
    pub coordinator_since_ms: Option<u64>,
    /// Wall-clock time, only to stamp the history.
    pub wall_clock_ms: u64,
    /// WAL positions this agent measured on other nodes' PostgreSQL (`Action::MeasureWal`).
    pub measured: BTreeMap<String, Measured>,
    /// When this agent applied the current switchover's latest step (its request, its
    /// hand-over, a force), monotonic ms: `switchover_timeout` counts from it.
    pub switchover_step_ms: Option<u64>,
}

/// A WAL position read straight from a node's PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// When the query was sent (monotonic ms): the position is at least as new.
    pub at_ms: u64,
    /// The newest WAL the node holds as a standby; None: it did not answer as a standby.
    pub position: Option<Lsn>,
}

impl ClusterView {
    /// The report from `name` if it is fresh at `now_ms`.
    pub fn fresh_report(&self, name: &str, now_ms: u64) -> Option<&NodeReport> {
        self.reports
            .get(name)
            .filter(|o| now_ms.saturating_sub(o.received_at_ms) <= self.settings.report_ttl_ms)
            .map(|o| &o.report)
    }

    /// When the primary's lease runs out by this agent's count (monotonic ms): `lease +
    /// drift_margin` after the last renewal it applied.
    pub fn lease_expires_at_ms(&self) -> u64 {
        match self.lease_until_ms {
            Some(until) => until + self.settings.lease.drift_margin_ms,
            None => crate::lease::expired_at_ms(self.last_renewal_seen_ms, &self.settings.lease),
        }
    }

    /// The synchronous replication settings in force: set at run time, else from config.
    pub fn sync_settings(&self) -> SyncSettings {
        self.state.replication.unwrap_or(self.settings.sync)
    }
}

/// What this agent knows about itself, read this very tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalView {
    pub name: String,
    pub kind: NodeKind,
    pub is_coordinator: bool,
    /// This agent's latest probe of its own PostgreSQL.
    pub report: NodeReport,
    /// A postmaster is running on the data directory now.
    pub db_running: bool,
    /// A postmaster is running on the data directory without `standby.signal` now: it
    /// takes (or will take) writes.
    pub writable: bool,
    /// This agent holds an unexpired lease for the current generation.
    pub lease_valid: bool,
    /// PostgreSQL died without the agent stopping it, at this time (monotonic ms).
    pub crashed_at_ms: Option<u64>,
    /// An operator ran `pgfm resume` on this node.
    pub resume_requested: bool,
    /// The last rewind against the current primary failed, with this error.
    pub rewind_failed: Option<String>,
    /// PostgreSQL failed to start this many times in a row (0: it has run since), and the
    /// last error.
    pub start_failures: u32,
    pub start_error: Option<String>,
    /// A re-clone was tried in this streak of failed starts: another would not help.
    pub start_recloned: bool,
    /// How many of the reloads asked of this node (`ClusterState::reloads`) it carried out
    /// since its agent started.
    pub reloaded: u64,
    /// The same for the restarts in place (`ClusterState::restarts`).
    pub restarted: u64,
    /// On a primary: since when each streaming standby has confirmed nothing new while WAL
    /// waited for it (`track_replicas`).
    pub replicas: BTreeMap<String, ReplicaProgress>,
}

/// What a primary last saw a standby confirm, by the times of its own probes (monotonic
/// ms): since when it has confirmed nothing new while WAL it was sent waited, and the
/// latest probe that found it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaProgress {
    pub flush: Option<Lsn>,
    /// The probe that last saw it make progress, or have nothing to confirm.
    pub since_ms: u64,
    /// The latest probe since then.
    pub seen_ms: u64,
}

impl ReplicaProgress {
    /// Probes `bound_ms` apart or more found it confirming nothing of what it was sent. By
    /// the probes' times, not the reader's: an agent paused, then deciding on the probe it
    /// made before, does not take its own pause for the standby's.
    pub fn stalled(&self, bound_ms: u64) -> bool {
        self.seen_ms.saturating_sub(self.since_ms) >= bound_ms
    }
}

/// The primary's standbys' progress after `report`, its probe made at `probed_ms`, from
/// `before`: a standby whose flush position moved, or that has flushed all it was sent,
/// makes progress then; one that confirms nothing new of what it was sent keeps its time.
/// Sent, not written: WAL the primary's own disk holds back is sent to nobody, and no
/// standby is waited for. Only standbys the report lists as streaming are kept.
pub fn track_replicas(
    before: &BTreeMap<String, ReplicaProgress>,
    report: &NodeReport,
    probed_ms: u64,
) -> BTreeMap<String, ReplicaProgress> {
    report
        .replicas
        .iter()
        .filter(|r| r.state == "streaming")
        .map(|r| {
            let waiting = match (r.flush_lsn, r.sent_lsn) {
                (Some(flush), Some(sent)) => flush < sent,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            let since_ms = match before.get(&r.application_name) {
                Some(p) if waiting && p.flush == r.flush_lsn => p.since_ms,
                _ => probed_ms,
            };
            let progress = ReplicaProgress {
                flush: r.flush_lsn,
                since_ms,
                seen_ms: probed_ms.max(since_ms),
            };
            (r.application_name.clone(), progress)
        })
        .collect()
}
