//! What the decision loops remember of their own actions. The executor reports what an
//! action did as values (`Outcome`); the loop that ran it folds them into its `Memory`
//! (`Memory::fold`, pure) and builds its next decision's input from that — the decide loop
//! its `LocalView`, the coordinate loop the WAL positions it measured — so that no action
//! writes into state another part of the agent reads (invariant 7: a failed action is
//! retried by the next decision, which knows how it failed).

use std::collections::BTreeMap;

use pgfm_core::decide::{Measured, ReplicaProgress};
use pgfm_core::{Generation, Lsn};

/// Something an action did that a later decision must take into account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// An action on the local PostgreSQL finished at `at_ms` (monotonic; noted by the decide
    /// loop once it has taken in the action's other outcomes): the next decision waits for
    /// a probe made after it, so that it never acts on what the action just changed.
    Acted { at_ms: u64 },
    /// PostgreSQL is up after a start (as the primary, as a standby, after a rewind): a
    /// crash before it is over.
    Started,
    /// A start failed and no postmaster is left: PostgreSQL exited during start-up. Counts
    /// towards `start_attempts`; one still recovering past `start_timeout` is no failure.
    StartFailed { error: String },
    /// A re-clone was tried, whatever its result: the engine re-clones once in a streak of
    /// failed starts, then holds.
    Recloned,
    /// `pg_rewind` against the new primary failed in `generation`: the engine re-clones or
    /// holds, per `rejoin`, until an operator's resume.
    RewindFailed {
        generation: Generation,
        error: String,
    },
    /// The node rejoined, streaming from the primary (cloned, re-cloned, or rewound): an
    /// operator's resume is used up, an earlier rewind failure settled.
    Rejoined,
    /// The local primary's commits wait for a new synchronous rule since `lsn`, in
    /// `generation`: the switch point from which the new standbys must have flushed before
    /// the committed rule may narrow to them. Reported in this node's `NodeReport`.
    SyncSwitched { generation: Generation, lsn: Lsn },
    /// `node`'s PostgreSQL said where its WAL is (the coordinator's question, before a
    /// quorum failover).
    WalMeasured { node: String, measured: Measured },
    /// The `count`-th reload asked of this node (`pgfm reload`) was carried out.
    Reloaded { count: u64 },
    /// The `count`-th restart in place asked of this node was carried out (PostgreSQL
    /// stopped; the engine starts it again).
    Restarted { count: u64 },
    /// The fence hook refused a promotion at `at_ms` (monotonic): the next promotion waits
    /// `FENCE_HOOK_BACKOFF_MS` before running it again; `why` is what the hook said.
    FenceHookRefused { at_ms: u64, why: String },
}

/// How long a promotion waits after the fence hook refused one.
pub(super) const FENCE_HOOK_BACKOFF_MS: u64 = 5_000;

/// PostgreSQL's failed starts in a row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct StartRecord {
    pub failures: u32,
    pub last_error: Option<String>,
    /// A re-clone was tried during this streak.
    pub recloned: bool,
}

/// How many of the reloads and restarts in place asked of this node (`pgfm reload`,
/// `pgfm restart --in-place`) its agent carried out. Kept in the state directory
/// (`CARRIED_OUT_FILE`): an agent that starts again must not restart its PostgreSQL again
/// for a restart done before.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct CarriedOut {
    pub reloaded: u64,
    pub restarted: u64,
}

/// Where `CarriedOut` is kept, in the agent's state directory.
pub(super) const CARRIED_OUT_FILE: &str = "carried-out.json";

impl CarriedOut {
    /// What an agent before this one carried out (none: nothing, or a file it cannot read,
    /// said in the log).
    pub(super) fn load(state_dir: &std::path::Path) -> CarriedOut {
        let path = state_dir.join(CARRIED_OUT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "unreadable: the operator's reloads and restarts asked before are carried out again");
                CarriedOut::default()
            }),
            Err(_) => CarriedOut::default(),
        }
    }

    /// Keep it for the next agent (written aside, then renamed).
    pub(super) fn save(&self, state_dir: &std::path::Path) -> std::io::Result<()> {
        let path = state_dir.join(CARRIED_OUT_FILE);
        let aside = state_dir.join(format!("{CARRIED_OUT_FILE}.new"));
        std::fs::write(&aside, serde_json::to_vec(self).unwrap_or_default())?;
        std::fs::rename(&aside, &path)
    }
}

/// Whether the local postmaster died on its own (a crash) or was stopped by the agent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct DbWatch {
    pub was_running: bool,
    /// The agent is stopping or fencing it: its disappearance is no crash.
    pub expect_down: bool,
    /// When it died without being stopped (monotonic ms), until it is started again.
    pub crashed_at_ms: Option<u64>,
}

/// What a decision loop remembers between rounds: the outcomes of its own actions, folded,
/// and what it saw of its postmaster. Each loop owns one; the decide loop reads the local
/// fields, the coordinate loop `measured` and `fence_hook_refused`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Memory {
    /// When the last action on the local PostgreSQL finished (monotonic ms; 0: none yet).
    pub last_action_ms: u64,
    pub db: DbWatch,
    pub starts: StartRecord,
    /// The last rewind failure, with the generation it happened in.
    pub rewind_failed: Option<(Generation, String)>,
    /// An operator ran `pgfm resume`, and no rejoin has used it up yet.
    pub resume_requested: bool,
    /// Where the WAL was when this agent, as primary, last changed
    /// `synchronous_standby_names`, and in which generation.
    pub sync_switch: Option<(Generation, Lsn)>,
    /// The operator's requests to this node carried out since the agent started.
    pub carried_out: CarriedOut,
    /// WAL positions read from other nodes' PostgreSQL for a quorum failover.
    pub measured: BTreeMap<String, Measured>,
    /// When the fence hook last refused a promotion (monotonic ms), and why.
    pub fence_hook_refused: Option<(u64, String)>,
    /// As primary: what each standby last confirmed, and since when nothing new
    /// (`pgfm_core::decide::track_replicas`).
    pub replicas: BTreeMap<String, ReplicaProgress>,
}

impl Memory {
    /// Take in what an action did.
    pub(super) fn fold(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Acted { at_ms } => self.last_action_ms = at_ms,
            Outcome::Started => self.db.crashed_at_ms = None,
            Outcome::StartFailed { error } => {
                self.starts.failures += 1;
                self.starts.last_error = Some(error);
            }
            Outcome::Recloned => self.starts.recloned = true,
            Outcome::RewindFailed { generation, error } => {
                self.rewind_failed = Some((generation, error));
            }
            Outcome::Rejoined => {
                self.rewind_failed = None;
                self.resume_requested = false;
            }
            Outcome::SyncSwitched { generation, lsn } => {
                self.sync_switch = Some((generation, lsn));
            }
            Outcome::Reloaded { count } => {
                self.carried_out.reloaded = self.carried_out.reloaded.max(count)
            }
            Outcome::Restarted { count } => {
                self.carried_out.restarted = self.carried_out.restarted.max(count)
            }
            Outcome::WalMeasured { node, measured } => {
                self.measured.insert(node, measured);
            }
            Outcome::FenceHookRefused { at_ms, why } => {
                self.fence_hook_refused = Some((at_ms, why))
            }
        }
    }

    /// `pgfm resume`: the node may rejoin (under `rejoin = manual`), and whatever failed
    /// before — a rewind, starts — is tried again.
    pub(super) fn resume(&mut self) {
        self.resume_requested = true;
        self.rewind_failed = None;
        self.starts = StartRecord::default();
    }

    /// PostgreSQL answered a probe: whatever failed before, it runs now.
    pub(super) fn db_answered(&mut self) {
        self.starts = StartRecord::default();
    }

    /// The local postmaster is `running` at `now_ms`: true when it has just died without
    /// the agent stopping it (a crash, noted with its time).
    pub(super) fn watch_db(&mut self, running: bool, now_ms: u64) -> bool {
        let db = &mut self.db;
        let mut crashed = false;
        if db.was_running && !running {
            if db.expect_down {
                db.expect_down = false;
            } else {
                db.crashed_at_ms = Some(now_ms);
                crashed = true;
            }
        }
        db.was_running = running;
        crashed
    }

    /// The last rewind failure, if it happened in `generation` (one in an older generation
    /// was against another primary).
    pub(super) fn rewind_failed_in(&self, generation: Generation) -> Option<String> {
        self.rewind_failed
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, e)| e.clone())
    }

    /// While the fence hook's last refusal, less than `FENCE_HOOK_BACKOFF_MS` before
    /// `now_ms`, holds promotions back: what it said, and in how many ms it runs again.
    pub(super) fn fence_hook_refused_recently(&self, now_ms: u64) -> Option<(&str, u64)> {
        self.fence_hook_refused
            .as_ref()
            .filter(|(at, _)| now_ms < at + FENCE_HOOK_BACKOFF_MS)
            .map(|(at, why)| (why.as_str(), at + FENCE_HOOK_BACKOFF_MS - now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folds `outcomes` into `memory` and compares the result with `expected`.
    fn check(mut memory: Memory, outcomes: Vec<Outcome>, expected: Memory) {
        for outcome in outcomes.clone() {
            memory.fold(outcome);
        }
        assert_eq!(memory, expected, "after {outcomes:?}");
    }

    fn failed(error: &str) -> Outcome {
        Outcome::StartFailed {
            error: error.into(),
        }
    }

    fn starts(failures: u32, last_error: Option<&str>, recloned: bool) -> StartRecord {
        StartRecord {
            failures,
            last_error: last_error.map(Into::into),
            recloned,
        }
    }

    #[test]
    fn failed_starts_are_counted_in_a_row_until_postgres_answers() {
        check(
            Memory::default(),
            vec![failed("port in use"), failed("PANIC: no checkpoint")],
            Memory {
                starts: starts(2, Some("PANIC: no checkpoint"), false),
                ..Memory::default()
            },
        );
        // A re-clone counts whatever its result, and the streak goes on.
        check(
            Memory {
                starts: starts(3, Some("PANIC: no checkpoint"), false),
                ..Memory::default()
            },
            vec![Outcome::Recloned, failed("still no checkpoint")],
            Memory {
                starts: starts(4, Some("still no checkpoint"), true),
                ..Memory::default()
            },
        );
        let mut memory = Memory {
            starts: starts(4, Some("still no checkpoint"), true),
            ..Memory::default()
        };
        memory.db_answered();
        assert_eq!(memory, Memory::default());
    }

    #[test]
    fn a_start_ends_a_crash_and_a_rejoin_ends_a_rewind_failure_and_the_resume() {
        let g = Generation(3);
        let crashed = Memory {
            db: DbWatch {
                crashed_at_ms: Some(1_000),
                ..DbWatch::default()
            },
            ..Memory::default()
        };
        check(crashed, vec![Outcome::Started], Memory::default());
        check(
            Memory {
                resume_requested: true,
                ..Memory::default()
            },
            vec![Outcome::RewindFailed {
                generation: g,
                error: "pg_rewind: could not find common ancestor".into(),
            }],
            Memory {
                resume_requested: true,
                rewind_failed: Some((g, "pg_rewind: could not find common ancestor".into())),
                ..Memory::default()
            },
        );
        check(
            Memory {
                resume_requested: true,
                rewind_failed: Some((g, "pg_rewind failed".into())),
                ..Memory::default()
            },
            vec![Outcome::Rejoined],
            Memory::default(),
        );
    }

    #[test]
    fn a_rewind_failure_counts_only_in_its_generation() {
        let memory = Memory {
            rewind_failed: Some((Generation(2), "pg_rewind failed".into())),
            ..Memory::default()
        };
        assert_eq!(
            memory.rewind_failed_in(Generation(2)).as_deref(),
            Some("pg_rewind failed")
        );
        assert_eq!(memory.rewind_failed_in(Generation(3)), None);
    }

    #[test]
    fn resume_forgets_what_failed_and_asks_to_rejoin() {
        let mut memory = Memory {
            starts: starts(3, Some("port in use"), true),
            rewind_failed: Some((Generation(2), "pg_rewind failed".into())),
            ..Memory::default()
        };
        memory.resume();
        assert_eq!(
            memory,
            Memory {
                resume_requested: true,
                ..Memory::default()
            }
        );
    }

    #[test]
    fn the_latest_sync_switch_and_each_node_s_latest_measure_are_kept() {
        let measured = |at_ms, lsn| Measured {
            at_ms,
            position: Some(Lsn(lsn)),
        };
        check(
            Memory::default(),
            vec![
                Outcome::SyncSwitched {
                    generation: Generation(1),
                    lsn: Lsn(100),
                },
                Outcome::SyncSwitched {
                    generation: Generation(2),
                    lsn: Lsn(200),
                },
                Outcome::WalMeasured {
                    node: "pg2".into(),
                    measured: measured(1_000, 10),
                },
                Outcome::WalMeasured {
                    node: "pg3".into(),
                    measured: measured(1_000, 20),
                },
                Outcome::WalMeasured {
                    node: "pg2".into(),
                    measured: measured(2_000, 30),
                },
                Outcome::Acted { at_ms: 2_500 },
            ],
            Memory {
                last_action_ms: 2_500,
                sync_switch: Some((Generation(2), Lsn(200))),
                measured: [
                    ("pg2".to_string(), measured(2_000, 30)),
                    ("pg3".to_string(), measured(1_000, 20)),
                ]
                .into(),
                ..Memory::default()
            },
        );
    }

    #[test]
    fn a_refused_fence_hook_holds_promotions_back_for_a_while() {
        let mut memory = Memory::default();
        assert_eq!(memory.fence_hook_refused_recently(0), None);
        memory.fold(Outcome::FenceHookRefused {
            at_ms: 10_000,
            why: "fence hook exited 1".into(),
        });
        assert_eq!(
            memory.fence_hook_refused_recently(14_999),
            Some(("fence hook exited 1", 1))
        );
        assert_eq!(memory.fence_hook_refused_recently(15_000), None);
    }

    #[test]
    fn a_postmaster_gone_is_a_crash_unless_the_agent_stopped_it() {
        let mut memory = Memory::default();
        assert!(!memory.watch_db(false, 0), "never ran: no crash");
        assert!(!memory.watch_db(true, 1_000));
        assert!(memory.watch_db(false, 2_000), "died on its own");
        assert_eq!(memory.db.crashed_at_ms, Some(2_000));
        assert!(!memory.watch_db(false, 3_000), "noted once");
        memory.fold(Outcome::Started);
        assert!(!memory.watch_db(true, 4_000));
        memory.db.expect_down = true;
        assert!(!memory.watch_db(false, 5_000), "stopped by the agent");
        assert_eq!(memory.db.crashed_at_ms, None);
        assert!(!memory.db.expect_down, "expected once");
        assert!(!memory.watch_db(true, 6_000));
        assert!(memory.watch_db(false, 7_000));
    }
}
