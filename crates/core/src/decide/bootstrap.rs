//! The coordinator chooses the first primary.

use super::{cluster_hold, Action, ClusterView, Forward};
use crate::model::{Command, DataDirState};

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
    let mut all_empty = true;
    for member in state.data_members() {
        match cluster.fresh_report(&member.name, now_ms) {
            None => silent.push(member.name.as_str()),
            Some(report) => {
                if report.would_accept_writes() {
                    candidates.push(member.name.as_str());
                }
                all_empty &= !report.db_up && report.data_dir == Some(DataDirState::Empty);
            }
        }
    }
    if !silent.is_empty() {
        return vec![cluster_hold(format!(
            "bootstrap waits for reports from {}",
            silent.join(", ")
        ))];
    }
    if let Some(chosen) = &state.initdb {
        return match candidates.as_slice() {
            [only] if *only == chosen.node => bootstrap_of(only, cluster),
            [] => vec![cluster_hold(format!(
                "waiting for {} to initialise the cluster (initdb), chosen because every \
                 data directory was empty",
                chosen.node
            ))],
            others => vec![cluster_hold(format!(
                "refusing to choose a primary: {} was chosen to initialise the cluster, but \
                 {} hold a database that is not in recovery; empty the others' data_dir, or \
                 pgfm disallow-node {} if it is gone for good",
                chosen.node,
                others.join(" and "),
                chosen.node
            ))],
        };
    }
    if candidates.is_empty() && all_empty && state.data_members().next().is_some() {
        return choose_initdb(cluster);
    }
    match candidates.as_slice() {
        [] => vec![cluster_hold(
            "no data node holds a database that can become the primary: initialise one \
             (initdb) or remove standby.signal from the one that should lead"
                .to_string(),
        )],
        [only] => bootstrap_of(only, cluster),
        several => vec![cluster_hold(format!(
            "refusing to choose a primary: {} are all not in recovery; leave exactly one \
             (give the others a standby.signal or an empty data_dir)",
            several.join(" and ")
        ))],
    }
}

/// Make `primary` the first primary (generation 1), unless it is under maintenance.
fn bootstrap_of(primary: &str, cluster: &ClusterView) -> Vec<Action> {
    if cluster.state.maintenance.contains_key(primary) {
        return vec![cluster_hold(format!(
            "{primary}, the node to become the first primary, is under maintenance: pgfm \
             maintenance {primary} off lets the cluster start"
        ))];
    }
    vec![Action::Propose {
        command: Command::Bootstrap {
            primary: primary.to_string(),
            generation: cluster.state.generation.next(),
        },
        forward: Forward::Never,
    }]
}

/// Every data directory is empty: choose the node that runs initdb — the promotable data
/// node of highest priority, then the first by name — and commit the choice before it acts.
fn choose_initdb(cluster: &ClusterView) -> Vec<Action> {
    let best = cluster
        .state
        .data_members()
        .filter(|m| cluster.state.may_promote(&m.name))
        .min_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    match best {
        Some(node) => vec![Action::Propose {
            command: Command::ChooseInitdb {
                node: node.name.clone(),
                at_unix_ms: cluster.wall_clock_ms,
            },
            forward: Forward::Never,
        }],
        None => vec![cluster_hold(
            "every data directory is empty but no data node may be promoted (priority 0 or \
             promotable = false everywhere): none can initialise the cluster"
                .to_string(),
        )],
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

    /// Every data directory empty: the coordinator chooses the promotable data node of
    /// highest priority (then the first by name) and commits that before anyone acts; only
    /// the chosen node runs initdb, the others wait to clone it.
    #[test]
    fn an_empty_cluster_chooses_one_node_to_initialise_it() {
        use crate::model::{Command, InitdbChoice};
        let mut v = view(
            None,
            &[
                ("pg1", Stopped(Empty)),
                ("pg2", Stopped(Empty)),
                ("pg3", Stopped(Empty)),
                ("witness", Stopped(Empty)),
            ],
        );
        v.state.members.get_mut("pg2").unwrap().priority += 1;
        check(&v, "witness", true, &["choose pg2 for initdb"]);
        v.state.members.get_mut("pg2").unwrap().promotable = false;
        check(&v, "witness", true, &["choose pg1 for initdb"]);
        // Nobody acts before the choice is committed.
        check(
            &v,
            "pg1",
            false,
            &["hold: empty data_dir: waiting for a primary to clone from"],
        );
        v.state
            .apply(&Command::ChooseInitdb {
                node: "pg1".into(),
                at_unix_ms: 0,
            })
            .unwrap();
        assert_eq!(
            v.state.initdb,
            Some(InitdbChoice {
                node: "pg1".into(),
                at_unix_ms: 0
            })
        );
        check(&v, "pg1", false, &["initdb g1"]);
        check(
            &v,
            "pg3",
            false,
            &["hold: empty data_dir: waiting for pg1 to initialise the cluster, then to clone it"],
        );
        check(
            &v,
            "witness",
            true,
            &[
                "cluster hold: waiting for pg1 to initialise the cluster (initdb), chosen because \
               every data directory was empty",
            ],
        );
        // A choice is made once: a second one (a new coordinator's stale view) is refused.
        assert!(v
            .state
            .apply(&Command::ChooseInitdb {
                node: "pg3".into(),
                at_unix_ms: 0
            })
            .is_err());
    }

    /// Once chosen, only the chosen node may become the first primary, by the log's own
    /// rule: a database initialised by hand elsewhere meanwhile is refused, and the
    /// coordinator says why and what to do.
    #[test]
    fn only_the_chosen_node_becomes_the_first_primary() {
        use crate::model::{Command, CommandError};
        let mut v = view(
            None,
            &[
                ("pg1", Stopped(Empty)),
                ("pg2", Stopped(Writable)),
                ("witness", Stopped(Empty)),
            ],
        );
        v.state
            .apply(&Command::ChooseInitdb {
                node: "pg1".into(),
                at_unix_ms: 0,
            })
            .unwrap();
        check(
            &v,
            "witness",
            true,
            &[
                "cluster hold: refusing to choose a primary: pg1 was chosen to initialise the \
               cluster, but pg2 hold a database that is not in recovery; empty the others' \
               data_dir, or pgfm disallow-node pg1 if it is gone for good",
            ],
        );
        assert_eq!(
            v.state.apply(&Command::Bootstrap {
                primary: "pg2".into(),
                generation: crate::Generation(1),
            }),
            Err(CommandError::InitdbChosen("pg1".into()))
        );
        // The chosen node, initialised, is bootstrapped.
        let mut done = view(
            None,
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Stopped(Empty)),
                ("witness", Stopped(Empty)),
            ],
        );
        done.state.initdb = v.state.initdb.clone();
        check(&done, "witness", true, &["bootstrap pg1 g1"]);
        // The chosen node gone for good: disallowing it gives the choice up.
        v.state
            .apply(&Command::RemoveMember { name: "pg1".into() })
            .unwrap();
        assert_eq!(v.state.initdb, None);
        v.voters.retain(|n| n != "pg1");
        check(&v, "witness", true, &["bootstrap pg2 g1"]);
    }
}
