//! The coordinator chooses the first primary.

use super::{cluster_hold, Action, ClusterView, Forward};
use crate::model::Command;

pub(super) fn bootstrap(cluster: &ClusterView, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    let unregistered: Vec<&str> = cluster
        .voters
        .iter()
        .filter(|v| !state.members.contains_key(*v))
        .map(String::as_str)
        .collect();
    if !unregistered.is_empty() {
        return vec![cluster_hold(format!(
            "bootstrap waits for the agents of {} to start",
            unregistered.join(", ")
        ))];
    }
    let mut silent = Vec::new();
    let mut candidates = Vec::new();
    for member in state.data_members() {
        match cluster.fresh_report(&member.name, now_ms) {
            None => silent.push(member.name.as_str()),
            Some(report) if report.would_accept_writes() => candidates.push(member.name.as_str()),
            Some(_) => {}
        }
    }
    if !silent.is_empty() {
        return vec![cluster_hold(format!(
            "bootstrap waits for reports from {}",
            silent.join(", ")
        ))];
    }
    match candidates.as_slice() {
        [] => vec![cluster_hold(
            "no data node holds a database that can become the primary: initialise one \
             (initdb) or remove standby.signal from the one that should lead"
                .to_string(),
        )],
        [only] => vec![Action::Propose {
            command: Command::Bootstrap {
                primary: only.to_string(),
                generation: state.generation.next(),
            },
            forward: Forward::Never,
        }],
        several => vec![cluster_hold(format!(
            "refusing to choose a primary: {} are all not in recovery; leave exactly one \
             (give the others a standby.signal or an empty data_dir)",
            several.join(" and ")
        ))],
    }
}

#[cfg(test)]
mod tests {
    use crate::model::DbRole;
    use crate::testing::*;

    #[test]
    fn bootstrap_chooses_the_only_writable_node() {
        let v = view(
            None,
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Stopped(Empty)),
                ("witness", Stopped(Empty)),
            ],
        );
        check(&v, "witness", true, &["bootstrap pg1 g1"]);
        check(
            &v,
            "pg1",
            false,
            &["hold: bootstrap candidate: waiting for the coordinator to choose the first primary"],
        );
        check(
            &v,
            "pg2",
            false,
            &["hold: empty data_dir: waiting for a primary to clone from"],
        );
    }

    #[test]
    fn bootstrap_adopts_a_running_primary() {
        let v = view(
            None,
            &[
                ("pg1", Running(DbRole::Standby)),
                ("pg2", Running(DbRole::Primary)),
            ],
        );
        check(
            &v,
            "pg1",
            true,
            &[
                "bootstrap pg2 g1",
                "hold: standby: waiting for the cluster to have a primary",
            ],
        );
    }

    #[test]
    fn bootstrap_refuses_two_writable_nodes() {
        let v = view(
            None,
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Running(DbRole::Primary)),
            ],
        );
        check(
            &v,
            "pg2",
            true,
            &[
                "cluster hold: refusing to choose a primary: pg1 and pg2 are all not in \
                 recovery; leave exactly one (give the others a standby.signal or an empty \
                 data_dir)",
                "hold: bootstrap candidate: waiting for the coordinator to choose the first primary",
            ],
        );
    }

    #[test]
    fn bootstrap_waits_for_every_data_node() {
        let v = view(
            None,
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Silent),
                ("witness", Stopped(Empty)),
            ],
        );
        check(
            &v,
            "witness",
            true,
            &["cluster hold: bootstrap waits for reports from pg2"],
        );
        let mut v = v;
        v.state.members.remove("pg2");
        check(
            &v,
            "witness",
            true,
            &["cluster hold: bootstrap waits for the agents of pg2 to start"],
        );
    }

    #[test]
    fn bootstrap_needs_a_writable_node() {
        let v = view(
            None,
            &[("pg1", Stopped(Recovering)), ("pg2", Stopped(Empty))],
        );
        check(
            &v,
            "pg1",
            true,
            &[
                "cluster hold: no data node holds a database that can become the primary: \
                 initialise one (initdb) or remove standby.signal from the one that should lead",
                "hold: standby: waiting for the cluster to have a primary",
            ],
        );
    }

    #[test]
    fn stale_reports_do_not_count() {
        let mut v = view(
            None,
            &[("pg1", Stopped(Writable)), ("pg2", Stopped(Writable))],
        );
        v.reports.get_mut("pg2").unwrap().received_at_ms = 0;
        v.settings.report_ttl_ms = 500;
        v.reports.get_mut("pg1").unwrap().received_at_ms = 1_900;
        check(
            &v,
            "pg1",
            true,
            &[
                "cluster hold: bootstrap waits for reports from pg2",
                "hold: bootstrap candidate: waiting for the coordinator to choose the first primary",
            ],
        );
    }
}
