//! A rolling restart asked for later (`pgfm restart [NODE ...] [--pending] [--in-place]
//! --at TIME`), carried out by the coordinator when its time comes, the way `pgfm restart`
//! does it from the operator's terminal: each node in turn goes under maintenance (the
//! primary, last, hands over first — or restarts in place when asked), stops, comes out of
//! maintenance, and streams again before the next. Every step is a committed command
//! (`Command::AdvanceScheduledRestart`), judged by the same checks as the operator's
//! (`operator::check_maintenance`); a step, or the wait for one, that takes longer than
//! `step_limit_ms` ends it, saying why — the node it was at back out of maintenance.

use super::{cluster_hold, Action, ClusterView, Forward};
use crate::model::{Command, DbRole, RestartAdvance, RestartPhase, RestartStep, ScheduledRestart};
use crate::operator::{check_maintenance, check_restart, MaintenanceAsk};
use crate::settings::Settings;
use crate::standing;

/// How long one node's restart, or the wait before it, may take: a start (crash recovery
/// included), a switchover, and a minute for the rest.
pub fn step_limit_ms(settings: &Settings) -> u64 {
    settings.start_timeout_ms + settings.switchover_timeout_ms + 60_000
}

/// The coordinator's next move for the scheduled restart, if any (only while no switchover
/// is under way: the primary's hand-over is a step of its own). `failing_over`: the
/// primary's lease is being judged (`decide::failover` said something): no step begins,
/// and a node under maintenance for the restart comes out of it at once, so that it may
/// be promoted.
pub(super) fn scheduled_restart(
    cluster: &ClusterView,
    now_ms: u64,
    failing_over: Option<&str>,
) -> Vec<Action> {
    let state = &cluster.state;
    let Some(s) = &state.scheduled_restart else {
        return Vec::new();
    };
    let wall = cluster.wall_clock_ms;
    if wall < s.at_unix_ms {
        return Vec::new();
    }
    let advance = |advance: RestartAdvance, with: Option<Command>| {
        vec![Action::Propose {
            command: Command::AdvanceScheduledRestart {
                scheduled_at_unix_ms: s.at_unix_ms,
                advance,
                with: with.map(Box::new),
                at_unix_ms: wall,
            },
            forward: Forward::Never,
        }]
    };
    let limit = step_limit_ms(&cluster.settings);
    let late = wall > s.progress_unix_ms + limit;
    let due = crate::types::utc(s.at_unix_ms);
    // Out of the maintenance it put the node under, never an operator's.
    let leave = |node: &str| {
        s.owns_maintenance(state, node)
            .then(|| Command::LeaveMaintenance {
                node: node.to_string(),
            })
    };
    let stop = |why: String, node: Option<&str>| {
        let with = node.and_then(leave);
        let out = match with.is_some() {
            true => format!("; {} is taken out of maintenance", node.unwrap_or_default()),
            false => String::new(),
        };
        advance(
            RestartAdvance::End {
                reason: Some(format!("{why}{out}")),
            },
            with,
        )
    };
    if let Some(why) = failing_over {
        let at = s.step.as_ref().map(|step| step.node.as_str());
        if at.is_some_and(|node| s.owns_maintenance(state, node)) || late {
            return stop(format!("stopped: the primary is in trouble ({why})"), at);
        }
        return Vec::new();
    }
    if let Some(step) = &s.step {
        let node = step.node.as_str();
        let report = cluster.fresh_report(node, now_ms);
        let (done, waiting) = match &step.phase {
            RestartPhase::Stopping => {
                let stopped =
                    state.primary.as_deref() != Some(node) && report.is_some_and(|r| !r.db_up);
                if stopped || !state.maintenance.contains_key(node) {
                    // Stopped (or taken out of maintenance by the operator): it starts.
                    let starting = RestartStep {
                        node: node.to_string(),
                        phase: RestartPhase::Starting,
                    };
                    return advance(RestartAdvance::Step(starting), leave(node));
                }
                (false, "to stop")
            }
            // Back as `pgfm restart` waits for it: streaming, within `max_lag` (the next
            // node leaves only once this one could take over).
            RestartPhase::Starting => (
                standing::of(cluster, node, now_ms).in_sync == Some(true),
                "to stream in sync again",
            ),
            RestartPhase::InPlace { count } => {
                let back = report.is_some_and(|r| {
                    r.restarted >= *count && r.db_up && r.role == Some(DbRole::Primary)
                });
                (back, "to run as the primary again")
            }
        };
        if done {
            return advance(
                RestartAdvance::Done {
                    node: node.to_string(),
                    why: None,
                },
                None,
            );
        }
        if late {
            return stop(
                format!(
                    "stopped: {node} did not come back within {} s (waiting for it {waiting})",
                    limit / 1000
                ),
                Some(node),
            );
        }
        return vec![cluster_hold(format!(
            "the restart scheduled at {due}: waiting for {node} {waiting} ({} of {})",
            s.done.len() + 1,
            s.done.len() + remaining(cluster, s).len()
        ))];
    }
    let Some(node) = remaining(cluster, s).into_iter().next() else {
        return advance(RestartAdvance::End { reason: None }, None);
    };
    let pass_over = |why: String| {
        advance(
            RestartAdvance::Done {
                node: node.clone(),
                why: Some(why),
            },
            None,
        )
    };
    if let Some(m) = state.maintenance.get(&node) {
        return pass_over(format!("under maintenance (by {}): left alone", m.by));
    }
    let primary = state.primary.as_deref() == Some(node.as_str());
    // As `pgfm restart`: only a running primary or standby is restarted (a stopped one
    // starts with its parameters anyway).
    let Some(report) = cluster.fresh_report(&node, now_ms) else {
        return match late {
            true => pass_over("its agent did not report: not restarted".to_string()),
            false => vec![cluster_hold(format!(
                "the restart scheduled at {due}: waiting for a report from {node}"
            ))],
        };
    };
    let role = match primary {
        true => DbRole::Primary,
        false => DbRole::Standby,
    };
    if !(report.db_up && report.role == Some(role)) {
        return pass_over(format!(
            "not running as the {}: not restarted",
            match primary {
                true => "primary",
                false => "standby",
            }
        ));
    }
    if s.pending && report.pending_restart.is_empty() {
        return pass_over("no parameter pending restart".to_string());
    }
    let begun = if primary && s.in_place {
        check_restart(cluster, &node).map(|(command, count)| {
            let phase = RestartPhase::InPlace { count };
            (command, phase)
        })
    } else {
        let by = s.maintenance_by();
        let ask = MaintenanceAsk {
            node: &node,
            on: true,
            keep_running: false,
            // As `pgfm restart` does: below the synchronous minimum the primary keeps
            // naming the node (commits wait for its restart), never fewer.
            force: true,
            by: &by,
            at_unix_ms: wall,
        };
        check_maintenance(cluster, now_ms, &ask).map(|plan| (plan.command, RestartPhase::Stopping))
    };
    match begun {
        Ok((command, phase)) => advance(
            RestartAdvance::Step(RestartStep {
                node: node.clone(),
                phase,
            }),
            Some(command),
        ),
        Err(refusal) if late => stop(
            format!(
                "stopped before {node}: {refusal} (still so after {} s)",
                limit / 1000
            ),
            None,
        ),
        Err(refusal) => vec![cluster_hold(format!(
            "the restart scheduled at {due} waits before {node}: {refusal}"
        ))],
    }
}

/// The nodes still to restart, in order: the standbys (as asked, or by name), then the
/// primary. A node no longer a member is left out.
pub fn remaining(cluster: &ClusterView, s: &ScheduledRestart) -> Vec<String> {
    let state = &cluster.state;
    let asked: Vec<String> = match s.nodes.is_empty() {
        true => state.data_members().map(|m| m.name.clone()).collect(),
        false => s.nodes.clone(),
    };
    let primary = state.primary.as_deref();
    let mut left: Vec<String> = asked
        .into_iter()
        .filter(|n| state.members.contains_key(n) && !s.done.contains(n))
        .collect();
    // Stable: the primary last, the others in their order.
    left.sort_by_key(|n| Some(n.as_str()) == primary);
    left
}

#[cfg(test)]
mod tests {
    use crate::decide::{coordinate, Action};
    use crate::model::{Command, DbRole, RestartAdvance, RestartPhase, ScheduledRestart};
    use crate::testing::*;

    fn schedule(v: &mut crate::decide::ClusterView, pending: bool, in_place: bool) {
        v.state
            .apply(&Command::ScheduleRestart {
                scheduled: ScheduledRestart {
                    at_unix_ms: 1_000,
                    nodes: Vec::new(),
                    pending,
                    in_place,
                    by: "dba@db1".into(),
                    done: Vec::new(),
                    passed_over: Vec::new(),
                    step: None,
                    progress_unix_ms: 0,
                },
            })
            .unwrap();
    }

    /// The coordinator's one proposal, applied; what it advanced.
    fn step(v: &mut crate::decide::ClusterView, now: u64) -> RestartAdvance {
        let actions = coordinate(v, now);
        let [Action::Propose { command, .. }] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        v.state.apply(command).expect("the step applies");
        match command {
            Command::AdvanceScheduledRestart { advance, .. } => advance.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn streaming(v: &mut crate::decide::ClusterView, node: &str, up: bool) {
        let r = &mut v.reports.get_mut(node).unwrap().report;
        r.db_up = up;
        r.role = up.then_some(DbRole::Standby);
        r.receiver = up.then(|| "streaming".to_string());
    }

    /// Not before its time; then each standby in turn under maintenance, stopped, out of
    /// it, streaming; then the primary by a switchover first; the end.
    #[test]
    fn a_scheduled_restart_takes_each_node_through_maintenance_in_turn() {
        let mut v = primary_with(&["pg2", "pg3"]);
        for n in ["pg2", "pg3"] {
            streaming(&mut v, n, true);
        }
        schedule(&mut v, false, false);
        assert!(coordinate(&v, NOW_MS).is_empty(), "before its time");
        v.wall_clock_ms = 2_000;
        for n in ["pg2", "pg3"] {
            assert!(
                matches!(step(&mut v, NOW_MS), RestartAdvance::Step(s) if s.node == n && s.phase == RestartPhase::Stopping)
            );
            assert!(v.state.maintenance.contains_key(n));
            check_coordinator(&v, NOW_MS, &[&format!("cluster hold: the restart scheduled at 1970-01-01T00:00:01Z: waiting for {n} to stop ({} of 3)", if n == "pg2" { 1 } else { 2 })]);
            streaming(&mut v, n, false);
            assert!(
                matches!(step(&mut v, NOW_MS), RestartAdvance::Step(s) if s.phase == RestartPhase::Starting)
            );
            assert!(!v.state.maintenance.contains_key(n));
            streaming(&mut v, n, true);
            assert!(matches!(step(&mut v, NOW_MS), RestartAdvance::Done { node, .. } if node == n));
        }
        // The primary: under maintenance with a switchover away first.
        assert!(matches!(step(&mut v, NOW_MS), RestartAdvance::Step(s) if s.node == "pg1"));
        assert!(v.state.switchover.is_some(), "it hands over first");
        assert!(v.state.maintenance.contains_key("pg1"));
    }

    /// `--pending` passes over a node with nothing pending; `--in-place` restarts the
    /// primary where it runs; a step that never ends stops the restart, the node out of
    /// maintenance; the operator's cancel does the same.
    #[test]
    fn a_scheduled_restart_passes_over_stops_at_its_limit_and_is_cancelled() {
        let mut v = primary_with(&["pg2"]);
        streaming(&mut v, "pg2", true);
        v.wall_clock_ms = 2_000;
        schedule(&mut v, true, true);
        assert!(
            matches!(step(&mut v, NOW_MS), RestartAdvance::Done { node, why: Some(_) } if node == "pg2")
        );
        v.reports.get_mut("pg1").unwrap().report.pending_restart = vec!["shared_buffers".into()];
        assert!(
            matches!(step(&mut v, NOW_MS), RestartAdvance::Step(s) if s.phase == RestartPhase::InPlace { count: 1 })
        );
        assert_eq!(v.state.restarts.get("pg1"), Some(&1));
        v.reports.get_mut("pg1").unwrap().report.restarted = 1;
        assert!(matches!(step(&mut v, NOW_MS), RestartAdvance::Done { .. }));
        assert!(matches!(
            step(&mut v, NOW_MS),
            RestartAdvance::End { reason: None }
        ));
        assert!(v.state.scheduled_restart.is_none());

        let mut v = primary_with(&["pg2"]);
        streaming(&mut v, "pg2", true);
        v.wall_clock_ms = 2_000;
        schedule(&mut v, false, false);
        assert!(matches!(step(&mut v, NOW_MS), RestartAdvance::Step(_)));
        v.wall_clock_ms += super::step_limit_ms(&v.settings) + 1;
        assert!(
            matches!(step(&mut v, NOW_MS), RestartAdvance::End { reason: Some(r) } if r.contains("pg2 did not come back"))
        );
        assert!(v.state.maintenance.is_empty() && v.state.scheduled_restart.is_none());

        let mut v = primary_with(&["pg2"]);
        streaming(&mut v, "pg2", true);
        v.wall_clock_ms = 2_000;
        schedule(&mut v, false, false);
        assert!(matches!(step(&mut v, NOW_MS), RestartAdvance::Step(_)));
        let cancel = crate::operator::cancel_scheduled_restart(&v.state, "dba@db1", 3_000).unwrap();
        v.state.apply(&cancel).unwrap();
        assert!(v.state.maintenance.is_empty() && v.state.scheduled_restart.is_none());
    }

    /// The review's cases: a failover judged ends a step under way (its node out of
    /// maintenance, to be promotable); an operator's own maintenance is never ended by the
    /// restart; a node not running is passed over, not stopped and waited for; a late
    /// duplicate of a step already applied is refused by the log; how it ended is kept.
    #[test]
    fn a_scheduled_restart_yields_to_a_failover_and_to_the_operator() {
        let mut v = primary_with(&["pg2", "pg3"]);
        for n in ["pg2", "pg3"] {
            streaming(&mut v, n, true);
        }
        v.wall_clock_ms = 2_000;
        schedule(&mut v, false, false);
        let before = v.clone();
        let actions = coordinate(&v, NOW_MS);
        let [Action::Propose { command, .. }] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        v.state.apply(command).unwrap();
        assert!(v.state.apply(command).is_err(), "a duplicate is refused");
        // pg1's host dies: the step ends, pg2 out of maintenance.
        let mut failing = expired(v.clone());
        let ended = coordinate(&failing, NOW);
        let end = ended
            .iter()
            .find_map(|a| match a {
                Action::Propose {
                    command: c @ Command::AdvanceScheduledRestart { .. },
                    ..
                } => Some(c.clone()),
                _ => None,
            })
            .expect("the restart ends");
        failing.state.apply(&end).unwrap();
        assert!(failing.state.maintenance.is_empty());
        let ended = failing.state.restart_ended.as_ref().unwrap();
        assert!(
            ended
                .stopped
                .as_deref()
                .unwrap()
                .contains("the primary is in trouble"),
            "{ended:?}"
        );

        // The operator puts pg2 under maintenance by hand mid-step: never ended by it.
        v.state.maintenance.get_mut("pg2").unwrap().by = "dba@db1".into();
        v.wall_clock_ms += super::step_limit_ms(&v.settings) + 1;
        assert!(
            matches!(step(&mut v, NOW_MS), RestartAdvance::End { reason: Some(r) } if !r.contains("out of maintenance"))
        );
        assert!(
            v.state.maintenance.contains_key("pg2"),
            "the operator's maintenance stays"
        );

        // A standby not running is passed over.
        let mut v = before;
        v.wall_clock_ms = 2_000;
        streaming(&mut v, "pg2", false);
        assert!(
            matches!(step(&mut v, NOW_MS), RestartAdvance::Done { node, why: Some(w) } if node == "pg2" && w.contains("not running"))
        );
        assert!(v.state.maintenance.is_empty());
    }
}
