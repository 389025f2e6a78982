//! What the engine answers: the actions an executor carries out.

use crate::model::{Command, SyncRule};
use crate::types::Generation;

/// Something the executor should do. Each action names the generation it serves
/// (invariant 7: logged with its generation, idempotent, retried on the next tick).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Commit a command in the Raft log.
    Propose(Command),
    /// Start the local PostgreSQL as the primary of `generation`.
    StartPrimary { generation: Generation },
    /// Start the local PostgreSQL as a standby streaming from `upstream`.
    StartStandby {
        upstream: String,
        generation: Generation,
    },
    /// Fill the empty data directory with a base backup of `upstream`, then start.
    Clone {
        upstream: String,
        generation: Generation,
    },
    /// Replay all received WAL, then promote the local standby (already committed).
    Promote { generation: Generation },
    /// Point the running standby at `upstream` (reload, no restart).
    Follow {
        upstream: String,
        generation: Generation,
    },
    /// Stop the local PostgreSQL at once: it may accept writes it must not.
    Fence {
        generation: Generation,
        reason: String,
    },
    /// Stop the local standby (fast) and mark its data directory for a rewind: it holds WAL
    /// the primary's timeline does not have, and can never stream as it is.
    StopToRewind {
        generation: Generation,
        reason: String,
    },
    /// Rewind the former primary against `upstream`, then start it as a standby.
    Rewind {
        upstream: String,
        generation: Generation,
    },
    /// Move the data directory aside and clone afresh from `upstream`.
    Reclone {
        upstream: String,
        generation: Generation,
    },
    /// Switchover: stop the local primary cleanly, mark it a standby, and commit the
    /// hand-over with its final WAL position (which releases the lease).
    HandOver {
        to: String,
        generation: Generation,
        /// The switchover it ends (`Switchover::seq`).
        seq: u64,
        /// `pgfm promote --force`: hand over even when the clean shutdown does not finish.
        force: bool,
    },
    /// Drop the replication slots of departed nodes on the local primary.
    DropSlots {
        slots: Vec<String>,
        generation: Generation,
    },
    /// Create replication slots on the local primary.
    EnsureSlots {
        slots: Vec<String>,
        generation: Generation,
    },
    /// Set the local primary's `synchronous_standby_names` to `rule` and reload; then note
    /// the WAL position.
    SetSyncStandbys {
        rule: SyncRule,
        generation: Generation,
    },
    /// Read the WAL position of these nodes' PostgreSQL now (the coordinator, before a
    /// failover that must find the most advanced of a synchronous quorum).
    MeasureWal {
        members: Vec<String>,
        generation: Generation,
    },
    /// Add the virtual IP on this node (the serving primary) and announce it.
    TakeVip { generation: Generation },
    /// Remove the virtual IP from this node: it is not (or no longer) the serving primary.
    ReleaseVip {
        generation: Generation,
        reason: String,
    },
    /// This node does nothing for now, for the reason given (shown in its info, logged once).
    Hold { reason: String },
    /// The coordinator holds the cluster back, for the reason given (shown in status
    /// problems, logged once).
    ClusterHold { reason: String },
}

/// The engine's answer.
pub type Decision = Vec<Action>;
