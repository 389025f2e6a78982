//! The decision engine: `decide(&ClusterView, &LocalView, now) -> Vec<Action>`.
//!
//! Pure (invariant 6): no I/O, no clock, no randomness. The committed state is the intent,
//! the reports are observations; the engine says what this agent should do to bring one
//! towards the other, and every refusal comes back as an action carrying its reason, so
//! that the executor can log it and `cluster-status` can show it.
//!
//! One file per topic, each with its tests:
//!
//! - `view`: what the engine decides on; `action`: what it answers;
//! - the coordinator's part (`coordinate`): `bootstrap`, `failover`, `switchover`;
//! - a data node's part (`reconcile`): `vip`, `sync`, and `reconcile` (its PostgreSQL's
//!   role, its timeline), `maintenance` (a node put aside by the operator), `parameters`
//!   (PostgreSQL's own, in the file the agent owns), `upstream` (where a standby streams
//!   and is cloned from, by its tags);
//! - their tests, beside each topic, share the fixtures of `crate::testing`.

use crate::model::{Command, NodeKind, WatchdogMode};

mod action;
mod bootstrap;
mod failover;
mod maintenance;
mod parameters;
mod reconcile;
mod restart;
mod switchover;
mod sync;
mod upstream;
mod view;
mod vip;

pub use action::{Action, Decision, Forward};
pub use parameters::node_parameters;
pub use reconcile::slot_for;
pub use restart::{remaining as restart_remaining, step_limit_ms as restart_step_limit_ms};
pub use switchover::SCHEDULE_GRACE_MS;
pub use upstream::slot_of;
pub use view::{
    track_replicas, ClusterView, LocalView, Measured, Observed, OnCrash, RejoinMode,
    ReplicaProgress, Settings,
};

use bootstrap::bootstrap;
use failover::failover;
use reconcile::{reconcile_local, record_timeline};
use switchover::switchover;
use sync::manage_sync;
use vip::place_vip;

/// What this agent should do now: the coordinator's part, if it is the coordinator, then
/// its own node's part.
pub fn decide(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Decision {
    let mut actions = Vec::new();
    if local.is_coordinator {
        actions.extend(coordinate(cluster, now_ms));
    }
    actions.extend(reconcile(cluster, local, now_ms));
    actions
}

/// A data node's own part: its VIP, its synchronous standbys and timeline when it is the
/// primary, its PostgreSQL's role. The agent runs it apart from `coordinate`, so that a
/// long local action (a clone, a start) never holds up a failover (invariant 9).
pub fn reconcile(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Decision {
    let mut actions = Vec::new();
    if local.kind == NodeKind::Data {
        // The VIP first: a release must come before a hand-over stops the database.
        actions.extend(place_vip(cluster, local, now_ms));
        actions.extend(manage_sync(cluster, local, now_ms));
        actions.extend(record_timeline(cluster, local));
        actions.extend(reconcile_local(cluster, local, now_ms));
        actions.extend(parameters::write_parameters(cluster, local, now_ms));
        actions.extend(parameters::reload(cluster, local, now_ms));
    }
    actions
}

/// The coordinator's part: choose the first primary, see a switchover through, and fail over
/// when the primary's lease is gone. Only `Propose`, `MeasureWal` and `ClusterHold`: quick,
/// never local work.
pub fn coordinate(cluster: &ClusterView, now_ms: u64) -> Decision {
    let state = &cluster.state;
    let mut actions = first_settings(cluster);
    actions.extend(match (&state.primary, &state.switchover) {
        (None, _) => bootstrap(cluster, now_ms),
        // Invariant 3: until it has applied an entry of its own term, a new coordinator may
        // not have timed every renewal committed before it led: it judges no lease, nor
        // the steps of a switchover.
        (Some(_), _) if cluster.coordinator_since_ms.is_none() => Vec::new(),
        (Some(_), Some(sw)) => switchover(cluster, sw, now_ms),
        (Some(primary), None) => {
            let mut actions = failover(cluster, primary, now_ms);
            // While a failover is being judged no restart step begins (it would take a
            // standby away), and one under way ends (its node may be the one to promote).
            let failing_over = actions.first().map(|a| match a {
                Action::ClusterHold { reason } => reason.clone(),
                _ => "a failover is under way".to_string(),
            });
            actions.extend(switchover::scheduled(cluster, now_ms));
            actions.extend(restart::scheduled_restart(
                cluster,
                now_ms,
                failing_over.as_deref(),
            ));
            actions
        }
    });
    actions
}

/// Before anything else, the first coordinator commits the settings it runs with — its
/// file's — for the whole cluster (issue 15), so that the next coordinator decides by the
/// same ones. A cluster from before committed settings gets them the same way. Never
/// forwarded: another coordinator commits its own.
fn first_settings(cluster: &ClusterView) -> Vec<Action> {
    if cluster.state.settings.is_some() {
        return Vec::new();
    }
    let mut settings = cluster.settings.clone();
    settings.sync = cluster.sync_settings();
    // Invariant 10: the lease must leave a whole second to every host watchdog in use
    // (each data node's own file was checked so, the coordinator's may be a witness's).
    if settings.lease.watchdog_timeout_s().is_none() {
        let watched: Vec<&str> = cluster
            .reports
            .values()
            .filter(|o| {
                o.report
                    .watchdog
                    .as_ref()
                    .is_some_and(|w| w.mode != WatchdogMode::Off)
            })
            .map(|o| o.report.name.as_str())
            .collect();
        if !watched.is_empty() {
            return vec![cluster_hold(format!(
                "the first settings, from {}'s pgfm.toml, leave the host watchdog of {} no whole \
                 second (timing.lease - renew_interval - 250 ms is under 1 s): fix [timing] in \
                 that file and restart its agent",
                cluster.name,
                watched.join(", ")
            ))];
        }
    }
    vec![Action::Propose {
        command: Command::SetSettings {
            base_revision: 0,
            settings,
            by: format!("{} (its pgfm.toml, the first coordinator's)", cluster.name),
            at_unix_ms: cluster.wall_clock_ms,
        },
        forward: Forward::Never,
    }]
}

/// This node waits, for `reason`.
fn hold(reason: String) -> Action {
    Action::Hold { reason }
}

/// The coordinator holds the cluster back, for `reason`.
fn cluster_hold(reason: String) -> Action {
    Action::ClusterHold { reason }
}

#[cfg(test)]
mod tests {
    use crate::decide::slot_for;
    use crate::decide::{coordinate, reconcile, Action, Decision, Forward};
    use crate::model::{DbRole, SyncMode, SyncRule, TimelineFork};
    use crate::testing::*;
    use crate::types::{Lsn, Timeline};

    /// Which proposals the executor may forward to another coordinator, for every command
    /// the engine proposes. The coordinator's decisions are never forwarded: each rests on
    /// what this agent saw while it led, and once it no longer leads the new coordinator
    /// must judge afresh (ARCHITECTURE: stale decisions after a partition).
    ///
    /// - `Bootstrap`: chosen from the reports this coordinator holds; another may hold
    ///   others (a node that came up writable since).
    /// - `Promote` (a failover): judged on a lease this coordinator timed on its own clock,
    ///   and on the positions it measured.
    /// - `Promote` (the end of a switchover): judged on the target's replay as it saw it.
    /// - `CancelSwitchover`: a step timed out on this coordinator's clock; the new one
    ///   times the step from when it applied it.
    ///
    /// A data node's own facts are forwarded: its lease given up (`ReleaseLease`), the
    /// timeline it runs on (`SetTimeline`), the synchronous set its PostgreSQL is about to
    /// wait for (`SetSyncSet`) are true whoever commits them.
    /// The first coordinator commits its file's settings before anything else, in a new
    /// cluster and in one from before settings were committed, without holding up a
    /// failover; and with a `set-synchronous` from before them folded in.
    #[test]
    fn the_first_coordinator_commits_its_settings() {
        let mut fresh = view(
            None,
            &[("pg1", Stopped(Writable)), ("witness", Stopped(Empty))],
        );
        fresh.state.settings = None;
        fresh.state.replication = Some(crate::model::SyncSettings {
            mode: SyncMode::On,
            ..Default::default()
        });
        let actions = coordinate(&fresh, NOW_MS);
        assert_eq!(
            show(actions.clone()),
            [
                "settings on 0 by witness (its pgfm.toml, the first coordinator's)",
                "bootstrap pg1 g1"
            ]
        );
        let Action::Propose {
            command: crate::model::Command::SetSettings { settings, .. },
            forward,
        } = &actions[0]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(
            (settings.sync.mode, *forward),
            (SyncMode::On, Forward::Never)
        );

        let mut old = failover_view();
        old.state.settings = None;
        assert_eq!(
            show(coordinate(&old, 3_500)),
            [
                "settings on 0 by witness (its pgfm.toml, the first coordinator's)",
                "promote pg2 g2 from pg1 losing 0"
            ]
        );
        assert_eq!(
            show(coordinate(&failover_view(), 3_500)),
            ["promote pg2 g2 from pg1 losing 0"]
        );

        // The coordinator's file (a witness's, say) leaves a data node's host watchdog no
        // whole second: held, with the fix, rather than committed.
        fresh.state.replication = None;
        fresh.settings.lease.renew_interval_ms = 1_000;
        fresh.settings.lease.lease_ms = 2_200;
        fresh.settings.lease.safety_margin_ms = 200;
        fresh.reports.get_mut("pg1").unwrap().report.watchdog =
            Some(crate::model::WatchdogReport {
                mode: crate::model::WatchdogMode::Required,
                armed: false,
                problem: None,
                timeout_s: None,
            });
        assert_eq!(
            show(coordinate(&fresh, NOW_MS))[0],
            "cluster hold: the first settings, from witness's pgfm.toml, leave the host watchdog of pg1 no whole second (timing.lease - renew_interval - 250 ms is under 1 s): fix [timing] in that file and restart its agent"
        );
    }

    #[test]
    fn only_a_node_s_own_facts_are_forwarded_never_the_coordinator_s_decisions() {
        fn check(decision: Decision, expected: &[&str]) {
            let proposals: Vec<String> = decision
                .into_iter()
                .filter_map(|a| match &a {
                    Action::Propose { forward, .. } => {
                        Some(format!("{}: {forward:?}", show(vec![a.clone()])[0]))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(proposals, expected);
        }
        let first = view(
            None,
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Stopped(Empty)),
                ("witness", Stopped(Empty)),
            ],
        );
        check(coordinate(&first, NOW_MS), &["bootstrap pg1 g1: Never"]);
        check(
            coordinate(&failover_view(), 3_500),
            &["promote pg2 g2 from pg1 losing 0: Never"],
        );

        let mut switching = primary_with(&["pg2"]);
        switching.state.switchover = Some(switchover_pg1_to_pg2());
        let mut handed_over = switching.clone();
        handed_over.state.lease_released = true;
        handed_over.state.switchover.as_mut().unwrap().final_lsn = Some(POSITION);
        // Replayed past the hand-over: the shutdown checkpoint.
        handed_over
            .reports
            .get_mut("pg2")
            .unwrap()
            .report
            .replayed_lsn = Some(Lsn(1_000_120));
        check(
            coordinate(&handed_over, NOW_MS),
            &["promote pg2 g2 from pg1 losing 0: Never"],
        );
        switching
            .reports
            .get_mut("pg1")
            .unwrap()
            .report
            .replicas
            .clear();
        // pg1 still renews its lease: it is the hand-over that is late.
        switching.last_renewal_seen_ms = Some(5_800);
        check(
            coordinate(&switching, 6_000),
            &["cancel switchover: switchover from pg1 to pg2 rolled back: pg1 did not hand over within switchover_timeout (5 s); pg1 stays the primary of generation 1: Never"],
        );

        let stopped = view(
            Some("pg1"),
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Running(DbRole::Standby)),
                ("witness", Stopped(Empty)),
            ],
        );
        let mut failing = local(&stopped, "pg1", false);
        failing.start_failures = 3;
        check(
            reconcile(&stopped, &failing, NOW_MS),
            &["release pg1 g1: ToCoordinator"],
        );

        let mut serving = primary_with(&["pg2"]);
        {
            let pg1 = &mut serving.reports.get_mut("pg1").unwrap().report;
            pg1.slots = vec![slot_for("pg2")];
            pg1.timeline = Some(Timeline(1));
            pg1.sync = Some(SyncRule::default());
        }
        serving.settings.sync.mode = SyncMode::On;
        check(
            reconcile(&serving, &local(&serving, "pg1", false), NOW_MS),
            &[
                "commit sync FIRST 1 (pg2) g1: ToCoordinator",
                "propose SetTimeline { node: \"pg1\", generation: Generation(1), timeline: Timeline(1), forks: [] }: ToCoordinator",
            ],
        );
    }

    /// Issue 11, case 5: a standby that stayed with a cut-off primary holds WAL past the point
    /// where the new primary's timeline forked; it is stopped to be rewound, never followed
    /// as it is, and never promoted. A standby behind the fork point follows as usual.
    #[test]
    fn a_diverged_standby_is_rewound_and_never_promoted() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.state.timeline = Some(Timeline(2));
        v.state.forks = vec![TimelineFork {
            timeline: Timeline(1),
            ended_at: Lsn(900_000),
        }];
        for node in ["pg1", "pg2"] {
            v.reports.get_mut(node).unwrap().report.timeline = Some(Timeline(2));
        }
        let pg3 = &mut v.reports.get_mut("pg3").unwrap().report;
        pg3.timeline = Some(Timeline(1));
        check(&v, "pg3", false, &["stop to rewind g1: diverged from primary pg1: this standby has replayed WAL up to 0/F4240 on timeline 1, past 0/DBBA0 where the primary's timeline 2 forked off it"]);
        // Behind the fork point: it can follow the new timeline.
        let pg3 = &mut v.reports.get_mut("pg3").unwrap().report;
        pg3.received_lsn = Some(Lsn(800_000));
        pg3.replayed_lsn = Some(Lsn(800_000));
        check(&v, "pg3", false, &[]);
        // Received past it but not replayed (a torn record after the old primary died):
        // PostgreSQL follows the new timeline, so does pgfm.
        v.reports.get_mut("pg3").unwrap().report.received_lsn = Some(Lsn(950_000));
        check(&v, "pg3", false, &[]);
        // A timeline the primary's history does not have.
        v.reports.get_mut("pg3").unwrap().report.timeline = Some(Timeline(3));
        check(&v, "pg3", false, &["stop to rewind g1: diverged from primary pg1: this standby is on timeline 3, which is not in the history of the primary's timeline 2"]);
        // At a failover neither is a candidate; pg2, on the primary's timeline, is.
        let mut v = expired(v);
        let pg3 = &mut v.reports.get_mut("pg3").unwrap().report;
        pg3.timeline = Some(Timeline(1));
        pg3.received_lsn = Some(Lsn(2_000_000));
        pg3.replayed_lsn = Some(Lsn(2_000_000));
        v.state.members.get_mut("pg2").unwrap().promotable = false;
        check_coordinator(&v, 10_000, &["cluster hold: failover needed: the lease of primary pg1 expired, but no standby can be promoted: pg2 is not promotable; pg3 has replayed WAL up to 0/1E8480 on timeline 1, past 0/DBBA0 where the primary's timeline 2 forked off it"]);
    }
}
