//! A node the operator puts aside. Maintenance (`pgfm maintenance NODE on|off`,
//! `ClusterState::maintenance`): a node under maintenance is never promoted
//! (`ClusterState::may_promote`, which the failover, the switchover and the priority list
//! go by) and never a synchronous standby (`sync::desired_sync`); here, what the node
//! itself does — leave the synchronous standbys, then stop its PostgreSQL and keep it
//! stopped. A re-clone (`pgfm reinit NODE`, `ClusterState::reinit`): the same stop, then
//! the data directory moved aside; the empty one is cloned as any is.

use super::reconcile::{give_up_lease, no_taker, running_standby};
use super::{hold, Action, ClusterView, LocalView};

/// A node under maintenance (`pgfm maintenance NODE on`): its PostgreSQL is stopped cleanly
/// once no synchronous rule counts on it — the primary's PostgreSQL no longer waits for it,
/// and the committed set no longer needs it, so that a failover can promote the others —
/// and stays stopped, across agent restarts and reboots, until `pgfm maintenance NODE off`.
/// One its operator forced past the synchronous minimum stops all the same. Kept running
/// (`--keep-running`), it is left to its operator: looked after as a standby while it runs
/// (pointed at the primary, rewound if it diverged), never started (the operator may be
/// restarting it by hand). A writable one is fenced, as any standby.
pub(super) fn under_maintenance(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    maintenance: &crate::model::Maintenance,
    now_ms: u64,
) -> Vec<Action> {
    let why = maintenance_why(maintenance, &local.name);
    match (local.db_running, maintenance.keep_running) {
        (false, false) => vec![hold(format!("{why}: PostgreSQL stays stopped"))],
        (false, true) => vec![hold(format!(
            "{why}, kept running: PostgreSQL is down, and left to its operator (start it, or \
             end the maintenance)"
        ))],
        (true, true) => running_standby(cluster, local, primary, now_ms),
        (true, false) => stop_once_free(cluster, local, primary, why, maintenance.forced, now_ms),
    }
}

/// "under maintenance (put there by dba@db1; pgfm maintenance pg3 off ends it)".
fn maintenance_why(maintenance: &crate::model::Maintenance, name: &str) -> String {
    format!(
        "under maintenance (put there by {}; pgfm maintenance {name} off ends it)",
        maintenance.by
    )
}

/// The running standby `local`, to be stopped (for `why`): fenced first if it takes
/// writes; else stopped cleanly once no synchronous rule counts on it (`counted_on`), or
/// at once when `forced`.
fn stop_once_free(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    why: String,
    forced: bool,
    now_ms: u64,
) -> Vec<Action> {
    if local.writable {
        return running_standby(cluster, local, primary, now_ms);
    }
    if !forced {
        if let Some(rule) = counted_on(cluster, &local.name, primary, now_ms) {
            return vec![hold(format!(
                "{why}: waiting to leave the synchronous standbys ({rule}) before PostgreSQL \
                 stops"
            ))];
        }
    }
    vec![Action::StopCleanly {
        generation: cluster.state.generation,
        reason: why,
    }]
}

/// The committed primary under maintenance, its PostgreSQL stopped, with no switchover
/// away from it (the one its maintenance began was cut short: it stopped renewing its
/// lease, its host rebooted): it stays stopped, and gives its lease up so that a standby
/// takes over — unless none may (it alone is known to hold every acknowledged commit),
/// then the cluster waits for the operator.
pub(super) fn primary_under_maintenance(
    cluster: &ClusterView,
    local: &LocalView,
    maintenance: &crate::model::Maintenance,
) -> Vec<Action> {
    let name = &local.name;
    let why = maintenance_why(maintenance, name);
    if no_taker(cluster, local) {
        return vec![hold(format!(
            "{why}: PostgreSQL stays stopped, and no standby may take over (only {name} is \
             known to hold every acknowledged commit): end the maintenance to serve again"
        ))];
    }
    give_up_lease(
        local,
        cluster.state.generation,
        &format!("{why}: PostgreSQL stays stopped"),
    )
}

/// A standby to be re-cloned (`pgfm reinit`): stopped cleanly once no synchronous rule
/// counts on it (a writable one fenced first), its data directory moved aside, and then,
/// the directory gone, the reinit is over: `stopped_standby` clones it as any empty one.
pub(super) fn reinit(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    reinit: &crate::model::Reinit,
    now_ms: u64,
) -> Vec<Action> {
    let generation = cluster.state.generation;
    let name = &local.name;
    let why = format!("re-clone asked by {}", reinit.by);
    if local.db_running {
        return stop_once_free(cluster, local, primary, why, false, now_ms);
    }
    match local.report.data_dir {
        Some(crate::model::DataDirState::Empty) => vec![
            Action::Propose {
                command: crate::model::Command::ReinitDone { node: name.clone() },
                forward: super::Forward::ToCoordinator,
            },
            hold(format!(
                "{why}: the data directory was moved aside; cloning from {primary} next"
            )),
        ],
        // Unreadable: moving it aside is what the operator asked, and what fixes it.
        _ => vec![Action::MoveAside {
            generation,
            reason: why,
        }],
    }
}

/// The synchronous rule that still counts on `name`, if one does: the committed set, or
/// the one the primary's PostgreSQL waits for (its last fresh report).
fn counted_on(cluster: &ClusterView, name: &str, primary: &str, now_ms: u64) -> Option<String> {
    let committed = cluster.state.committed_sync();
    if committed.names.contains(name) {
        return Some(format!("committed: {committed}"));
    }
    cluster
        .fresh_report(primary, now_ms)
        .and_then(|r| r.sync.as_ref())
        .filter(|rule| rule.names.contains(name))
        .map(|rule| format!("{primary} waits for {rule}"))
}

/// `pgfm restart --in-place`: a restart asked of this running node that it has not carried
/// out: it stops cleanly, and the engine starts it again as it starts any stopped node (the
/// primary while it holds the lease, invariant 4). Not while it hands over.
pub(super) fn restart_in_place(cluster: &ClusterView, local: &LocalView) -> Option<Action> {
    let state = &cluster.state;
    let asked = state.restarts.get(&local.name).copied().unwrap_or(0);
    let handing_over = state
        .switchover
        .as_ref()
        .is_some_and(|s| s.from == local.name);
    (asked > local.restarted && local.db_running && local.report.db_up && !handing_over).then_some(
        Action::RestartInPlace {
            count: asked,
            generation: state.generation,
        },
    )
}

#[cfg(test)]
mod tests {
    use crate::decide::coordinate;
    use crate::model::{DbRole, Maintenance, SyncMode};
    use crate::testing::*;

    /// `name` under maintenance, put there by dba@db1 (`keep_running`, `forced` as given).
    fn under(v: &mut crate::decide::ClusterView, name: &str, keep_running: bool, forced: bool) {
        v.state.maintenance.insert(
            name.to_string(),
            Maintenance {
                since_unix_ms: 42,
                by: "dba@db1".into(),
                keep_running,
                forced,
            },
        );
    }

    const WHY: &str = "under maintenance (put there by dba@db1; pgfm maintenance pg3 off ends it)";

    /// The seed's case 1 on a standby: out of the synchronous standbys first (the primary's
    /// PostgreSQL, then the committed set), then stopped cleanly, then kept stopped — its
    /// agent restarted or its host rebooted, nothing starts it — until maintenance off.
    #[test]
    fn a_standby_under_maintenance_leaves_the_synchronous_standbys_then_stops_and_stays_stopped() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.settings.sync.mode = SyncMode::Quorum;
        v.state.sync_set = ["pg2".to_string(), "pg3".to_string()].into();
        v.state.sync_quorum = 1;
        {
            let pg1 = &mut v.reports.get_mut("pg1").unwrap().report;
            pg1.sync = Some(rule(1, &["pg2", "pg3"]));
            pg1.slots = vec![
                crate::decide::slot_for("pg2"),
                crate::decide::slot_for("pg3"),
            ];
        }
        under(&mut v, "pg3", false, false);
        check(
            &v,
            "pg3",
            false,
            &[&format!("hold: {WHY}: waiting to leave the synchronous standbys (committed: ANY 1 (pg2,pg3)) before PostgreSQL stops")],
        );
        // The primary names pg2 alone and commits it: pg3 may stop.
        check(&v, "pg1", false, &["sync FIRST 1 (pg2) g1"]);
        v.reports.get_mut("pg1").unwrap().report.sync = Some(rule(1, &["pg2"]));
        check(
            &v,
            "pg3",
            false,
            &[&format!("hold: {WHY}: waiting to leave the synchronous standbys (committed: ANY 1 (pg2,pg3)) before PostgreSQL stops")],
        );
        v.state.sync_set = ["pg2".to_string()].into();
        check(&v, "pg3", false, &["stop g1"]);
        // Stopped: it stays so, whatever its directory says.
        let mut stopped = v.clone();
        stopped.reports.get_mut("pg3").unwrap().report = report("pg3", Stopped(Recovering));
        check(
            &stopped,
            "pg3",
            false,
            &[&format!("hold: {WHY}: PostgreSQL stays stopped")],
        );
        stopped.reports.get_mut("pg3").unwrap().report = report("pg3", Stopped(Writable));
        check(
            &stopped,
            "pg3",
            false,
            &[&format!("hold: {WHY}: PostgreSQL stays stopped")],
        );
        // Maintenance off: it starts as a standby again (a former primary is rewound).
        stopped.state.maintenance.clear();
        check(&stopped, "pg3", false, &["rewind from pg1 g1"]);
    }

    /// Asynchronous, it stops at once; forced past the synchronous minimum it stops while
    /// the primary still waits for it; kept running it is a standby like any, out of the
    /// synchronous standbys; a writable one is fenced first.
    #[test]
    fn how_a_node_under_maintenance_stops_or_keeps_running() {
        let mut v = primary_with(&["pg2", "pg3"]);
        under(&mut v, "pg3", false, false);
        check(&v, "pg3", false, &["stop g1"]);

        v.settings.sync.mode = SyncMode::On;
        v.state.sync_set = ["pg3".to_string()].into();
        v.state.sync_quorum = 1;
        under(&mut v, "pg3", false, true);
        check(&v, "pg3", false, &["stop g1"]);

        under(&mut v, "pg3", true, false);
        check(&v, "pg3", false, &[]);
        v.reports.get_mut("pg3").unwrap().report = report("pg3", Stopped(Recovering));
        check(
            &v,
            "pg3",
            false,
            &[&format!("hold: {WHY}, kept running: PostgreSQL is down, and left to its operator (start it, or end the maintenance)")],
        );

        let mut writable = primary_with(&["pg2", "pg3"]);
        under(&mut writable, "pg3", false, false);
        writable.reports.get_mut("pg3").unwrap().report = report("pg3", Running(DbRole::Primary));
        check(&writable, "pg3", false, &["fence g1"]);
    }

    /// The primary under maintenance whose switchover away was cut short (it stopped
    /// renewing: its host rebooted) comes back and stays stopped: it gives its lease up so
    /// that a standby takes over, or, the only holder of every acknowledged commit, waits.
    #[test]
    fn a_primary_under_maintenance_that_comes_back_gives_its_lease_up() {
        let mut v = view(
            Some("pg1"),
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Running(DbRole::Standby)),
                ("witness", Stopped(Empty)),
            ],
        );
        under(&mut v, "pg1", false, false);
        let why = "under maintenance (put there by dba@db1; pgfm maintenance pg1 off ends it)";
        check(
            &v,
            "pg1",
            false,
            &[
                "release pg1 g1",
                &format!(
                    "hold: {why}: PostgreSQL stays stopped: giving up the lease of generation 1"
                ),
            ],
        );
        v.state.sync_set = ["pg1".to_string()].into();
        v.state.sync_quorum = 1;
        check(
            &v,
            "pg1",
            false,
            &[&format!("hold: {why}: PostgreSQL stays stopped, and no standby may take over (only pg1 is known to hold every acknowledged commit): end the maintenance to serve again")],
        );
    }

    /// A re-clone: out of the synchronous standbys first, stopped, moved aside, then over
    /// (the empty directory is cloned as any).
    #[test]
    fn a_standby_to_re_clone_stops_moves_its_directory_aside_then_is_cloned() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.state.reinit.insert(
            "pg3".into(),
            crate::model::Reinit {
                since_unix_ms: 1,
                by: "dba@db1".into(),
            },
        );
        v.state.sync_set = ["pg3".to_string()].into();
        v.state.sync_quorum = 1;
        check(
            &v,
            "pg3",
            false,
            &["hold: re-clone asked by dba@db1: waiting to leave the synchronous standbys (committed: FIRST 1 (pg3)) before PostgreSQL stops"],
        );
        v.state.sync_set.clear();
        v.state.sync_quorum = 0;
        check(&v, "pg3", false, &["stop g1"]);
        v.reports.get_mut("pg3").unwrap().report = report("pg3", Stopped(Recovering));
        check(&v, "pg3", false, &["move aside g1"]);
        v.reports.get_mut("pg3").unwrap().report = report("pg3", Stopped(Empty));
        check(
            &v,
            "pg3",
            false,
            &[
                "propose ReinitDone { node: \"pg3\" }",
                "hold: re-clone asked by dba@db1: the data directory was moved aside; cloning from pg1 next",
            ],
        );
        v.state.reinit.clear();
        check(&v, "pg3", false, &["clone pg1 g1"]);
    }

    /// Never promoted, whatever else it has for it; never named by the primary's
    /// synchronous rule, unless the minimum needs it (its operator forced that).
    #[test]
    fn a_node_under_maintenance_is_never_promoted_nor_synchronous_unless_the_minimum_needs_it() {
        let mut v = failover_view();
        under(&mut v, "pg2", false, false);
        check_coordinator(&v, 10_000, &["promote pg3 g2 from pg1 losing 0"]);
        under(&mut v, "pg3", true, false);
        let actions = show(coordinate(&v, 10_000));
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert!(
            actions[0].contains("pg2 is under maintenance (put there by dba@db1; pgfm maintenance pg2 off ends it); pg3 is under maintenance"),
            "{actions:?}"
        );

        let mut v = primary_with(&["pg2", "pg3"]);
        v.settings.sync.mode = SyncMode::On;
        v.settings.sync.standbys = 1;
        {
            let pg1 = &mut v.reports.get_mut("pg1").unwrap().report;
            pg1.sync = Some(crate::model::SyncRule::default());
            pg1.slots = vec![
                crate::decide::slot_for("pg2"),
                crate::decide::slot_for("pg3"),
            ];
        }
        under(&mut v, "pg2", false, false);
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg3) g1"]);
        // Both under maintenance, a minimum of one: the primary keeps naming one of them,
        // so that no commit is acknowledged without a standby's copy.
        under(&mut v, "pg3", false, true);
        v.settings.sync.minimum = 1;
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg2) g1"]);
        v.settings.sync.minimum = 0;
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg1) g1"]);
    }

    /// `pgfm restart --in-place`: a running node stops cleanly once for each restart asked,
    /// never twice for one (its agent carried it out), never while stopped or handing over,
    /// and never under maintenance (refused when asked).
    #[test]
    fn a_restart_in_place_is_carried_out_once_while_postgres_runs() {
        use crate::model::{Command, CommandError};
        let mut v = primary_with(&["pg2", "pg3"]);
        v.state
            .apply(&Command::RequestRestart { node: "pg1".into() })
            .unwrap();
        v.reports.get_mut("pg1").unwrap().report.slots = vec![
            crate::decide::slot_for("pg2"),
            crate::decide::slot_for("pg3"),
        ];
        check(&v, "pg1", false, &["restart in place #1 g1"]);
        let mut pg1 = local(&v, "pg1", false);
        pg1.restarted = 1;
        check_local(&v, &pg1, NOW_MS, &[]);
        // Stopped for it: started again as the primary, not stopped again.
        let mut stopped = v.clone();
        stopped.reports.get_mut("pg1").unwrap().report =
            report("pg1", Stopped(crate::model::DataDirState::Primary));
        let pg1 = local(&stopped, "pg1", false);
        assert!(super::restart_in_place(&stopped, &pg1).is_none());
        // Not while it hands over: the switchover stops it anyway.
        v.state
            .apply(&Command::RequestSwitchover {
                from: "pg1".into(),
                to: "pg2".into(),
                generation: v.state.generation,
                force: false,
                promotion: false,
                named: false,
            })
            .unwrap();
        assert!(super::restart_in_place(&v, &local(&v, "pg1", false)).is_none());
        under(&mut v, "pg3", false, false);
        assert!(matches!(
            v.state
                .apply(&Command::RequestRestart { node: "pg3".into() }),
            Err(CommandError::InMaintenance { .. })
        ));
        assert!(matches!(
            v.state.apply(&Command::RequestRestart {
                node: "witness".into()
            }),
            Err(CommandError::NotADataNode(_))
        ));
    }
}
