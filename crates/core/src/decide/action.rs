//! What the engine answers: the actions an executor carries out.

use crate::model::{Command, SyncRule};
use crate::types::Generation;

/// Something the executor should do. Each action names the generation it serves
/// (invariant 7: logged with its generation, idempotent, retried on the next tick).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Commit a command in the Raft log, through this agent or, when `forward` allows it,
    /// through whichever agent leads.
    Propose { command: Command, forward: Forward },
    /// Start the local PostgreSQL as the primary of `generation`.
    StartPrimary { generation: Generation },
    /// Start the local PostgreSQL, the primary of `generation`, as a standby with no
    /// upstream, to be promoted: its data directory's recovery had not ended
    /// (`NodeReport::recovery_unfinished`), and only a promotion ends it on a new timeline.
    StartToPromote { generation: Generation },
    /// Start the local PostgreSQL as a standby streaming from `upstream`.
    StartStandby {
        upstream: String,
        generation: Generation,
    },
    /// Initialise the cluster in the empty data directory (this node was chosen,
    /// `ClusterState::initdb`): initdb aside, the roles, pg_hba.conf, then moved into place.
    /// It serves the first generation, `generation`.
    Initdb { generation: Generation },
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
    /// Stop the local standby cleanly (fast); the engine keeps it stopped: the node is under
    /// maintenance (`ClusterState::maintenance`) or to be re-cloned (`ClusterState::reinit`).
    StopCleanly {
        generation: Generation,
        reason: String,
    },
    /// Move the stopped data directory aside (`data_dir.pgfm-old`): `pgfm reinit`; the
    /// empty directory is cloned next.
    MoveAside {
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
    /// Write `parameters` into the running server's `pgfm.conf` and reload.
    WriteParameters {
        parameters: std::collections::BTreeMap<String, String>,
        /// Where the standby settings point: where it streams from now (None: the primary).
        upstream: Option<String>,
        generation: Generation,
    },
    /// `pgfm restart --in-place`: stop PostgreSQL cleanly (it is started again as any
    /// stopped one is); the `count`-th restart asked of this node.
    RestartInPlace { count: u64, generation: Generation },
    /// `pgfm reload`: write `pgfm.conf` again and have PostgreSQL reload its
    /// configuration; the `count`-th reload asked of this node.
    Reload {
        count: u64,
        /// As `WriteParameters`.
        upstream: Option<String>,
        generation: Generation,
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

/// Whether a proposal may be forwarded to the coordinator when this agent is not it. The
/// engine says so with each proposal, by the part that makes it: what a node states about
/// itself is true whoever commits it; what the coordinator judges about the cluster is
/// valid only while the one who judged leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// A data node's own fact (`reconcile`: the timeline it runs on, the synchronous set its
    /// PostgreSQL waits for, the lease it gives up): committed through whichever agent leads.
    ToCoordinator,
    /// The coordinator's decision (`coordinate`: the first primary, a promotion, a switchover
    /// rolled back). It rests on what this agent saw while it led — the reports it holds,
    /// the leases it timed on its own clock — so it is committed here while this agent leads
    /// and dropped once it does not: the new coordinator decides afresh from its own view.
    /// (An openraft leader cut off by a partition keeps believing it leads until it hears
    /// of the new one; forwarding its judgement then would have the new coordinator commit
    /// a decision made on a stale view.)
    Never,
}

/// One short line a person reads: "start as primary of generation 3", "promote (generation
/// 4)", "hold: <reason>".
impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Propose { command, .. } => write!(f, "propose {}", Proposal(command)),
            Action::StartPrimary { generation } => {
                write!(f, "start as primary of generation {generation}")
            }
            Action::StartToPromote { generation } => write!(
                f,
                "start as a standby with no upstream, to be promoted (generation {generation})"
            ),
            Action::StartStandby {
                upstream,
                generation,
            } => write!(
                f,
                "start as a standby of {upstream} (generation {generation})"
            ),
            Action::Initdb { generation } => write!(
                f,
                "initialise the cluster with initdb (for generation {generation})"
            ),
            Action::Clone {
                upstream,
                generation,
            } => write!(f, "clone {upstream} (generation {generation})"),
            Action::Promote { generation } => write!(f, "promote (generation {generation})"),
            Action::Follow {
                upstream,
                generation,
            } => write!(f, "follow {upstream} (generation {generation})"),
            Action::Fence { generation, reason } => {
                write!(f, "fence (generation {generation}): {reason}")
            }
            Action::StopToRewind { generation, reason } => {
                write!(f, "stop to rewind (generation {generation}): {reason}")
            }
            Action::MoveAside { generation, reason } => write!(
                f,
                "move the data directory aside (generation {generation}): {reason}"
            ),
            Action::StopCleanly { generation, reason } => {
                write!(f, "stop cleanly (generation {generation}): {reason}")
            }
            Action::Rewind {
                upstream,
                generation,
            } => write!(f, "rewind against {upstream} (generation {generation})"),
            Action::Reclone {
                upstream,
                generation,
            } => write!(f, "re-clone from {upstream} (generation {generation})"),
            Action::HandOver {
                to,
                generation,
                seq,
                force,
            } => write!(
                f,
                "hand over to {to} (generation {generation}, switchover {seq}{})",
                if *force { ", forced" } else { "" }
            ),
            Action::WriteParameters {
                parameters,
                generation,
                ..
            } => write!(
                f,
                "write {} PostgreSQL parameter(s) into pgfm.conf and reload (generation \
                 {generation})",
                parameters.len()
            ),
            Action::RestartInPlace { count, generation } => write!(
                f,
                "stop PostgreSQL cleanly to restart it in place, as asked by pgfm restart \
                 --in-place (#{count}, generation {generation})"
            ),
            Action::Reload {
                count, generation, ..
            } => write!(
                f,
                "reload PostgreSQL's configuration, as asked by pgfm reload (#{count}, \
                 generation {generation})"
            ),
            Action::DropSlots { slots, generation } => write!(
                f,
                "drop replication slots {} (generation {generation})",
                slots.join(", ")
            ),
            Action::EnsureSlots { slots, generation } => write!(
                f,
                "create replication slots {} (generation {generation})",
                slots.join(", ")
            ),
            Action::SetSyncStandbys { rule, generation } => write!(
                f,
                "wait for synchronous standbys {rule} (generation {generation})"
            ),
            Action::MeasureWal {
                members,
                generation,
            } => write!(
                f,
                "measure the WAL position of {} (generation {generation})",
                members.join(", ")
            ),
            Action::TakeVip { generation } => {
                write!(f, "take the virtual IP (generation {generation})")
            }
            Action::ReleaseVip { generation, reason } => {
                write!(
                    f,
                    "release the virtual IP (generation {generation}): {reason}"
                )
            }
            Action::Hold { reason } => write!(f, "hold: {reason}"),
            Action::ClusterHold { reason } => write!(f, "hold the cluster: {reason}"),
        }
    }
}

/// A command the engine proposes, in words; a command it never proposes (an operator's, an
/// agent's registration) as it is.
struct Proposal<'a>(&'a Command);

impl std::fmt::Display for Proposal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Command::ChooseInitdb { node, .. } => write!(
                f,
                "{node} to initialise the cluster (every data directory is empty)"
            ),
            Command::Bootstrap {
                primary,
                generation,
            } => write!(
                f,
                "{primary} as the first primary (generation {generation})"
            ),
            Command::Promote {
                node,
                generation,
                from,
                ..
            } => match from {
                Some(from) => write!(
                    f,
                    "{node} as the primary of generation {generation}, after {from}"
                ),
                None => write!(f, "{node} as the primary of generation {generation}"),
            },
            Command::ReleaseLease { node, generation } => {
                write!(
                    f,
                    "that {node} gives up the lease of generation {generation}"
                )
            }
            Command::CancelSwitchover {
                generation, reason, ..
            } => write!(
                f,
                "cancelling the switchover of generation {generation}: {reason}"
            ),
            Command::SetSyncSet {
                members,
                quorum,
                generation,
                ..
            } => write!(
                f,
                "the synchronous set {} (generation {generation})",
                SyncRule::new(*quorum, members.clone())
            ),
            Command::SetTimeline {
                node,
                generation,
                timeline,
                ..
            } => write!(
                f,
                "that {node} runs on timeline {timeline} (generation {generation})"
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rule;

    fn check(action: Action, expected: &str) {
        assert_eq!(action.to_string(), expected, "{action:?}");
    }

    #[test]
    fn an_action_reads_as_a_line() {
        let g = Generation(3);
        check(
            Action::StartPrimary { generation: g },
            "start as primary of generation 3",
        );
        check(Action::Promote { generation: g }, "promote (generation 3)");
        check(
            Action::StartToPromote { generation: g },
            "start as a standby with no upstream, to be promoted (generation 3)",
        );
        check(
            Action::StartStandby {
                upstream: "pg1".into(),
                generation: g,
            },
            "start as a standby of pg1 (generation 3)",
        );
        check(
            Action::HandOver {
                to: "pg2".into(),
                generation: g,
                seq: 2,
                force: true,
            },
            "hand over to pg2 (generation 3, switchover 2, forced)",
        );
        check(
            Action::SetSyncStandbys {
                rule: rule(1, &["pg2", "pg3"]),
                generation: g,
            },
            "wait for synchronous standbys ANY 1 (pg2,pg3) (generation 3)",
        );
        check(
            Action::Hold {
                reason: "data_dir could not be read".into(),
            },
            "hold: data_dir could not be read",
        );
        check(
            Action::Propose {
                command: Command::Promote {
                    node: "pg2".into(),
                    generation: Generation(4),
                    from: Some("pg1".into()),
                    reason: "the lease of primary pg1 expired".into(),
                    lsn: None,
                    lost_bytes: None,
                    at_unix_ms: 0,
                    lease_renewals: None,
                    handover: None,
                    lost_at_least: false,
                },
                forward: Forward::Never,
            },
            "propose pg2 as the primary of generation 4, after pg1",
        );
        check(
            Action::Propose {
                command: Command::SetPaused { paused: true },
                forward: Forward::ToCoordinator,
            },
            "propose SetPaused { paused: true }",
        );
    }
}
