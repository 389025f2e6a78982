//! The decision engine: `decide(&ClusterView, &LocalView, now) -> Vec<Action>`.
//!
//! Pure (invariant 6): no I/O, no clock, no randomness. The committed state is the intent,
//! the reports are observations; the engine says what this agent should do to bring one
//! towards the other, and every refusal comes back as an action carrying its reason, so
//! that the executor can log it and `cluster-status` can show it.

use std::collections::BTreeMap;

use crate::model::{ClusterState, Command, DataDirState, DbRole, NodeKind, NodeReport};
use crate::types::Generation;

/// A report and when (on the receiving agent's monotonic clock, in ms) it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub report: NodeReport,
    pub received_at_ms: u64,
}

/// What this agent knows about the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub state: ClusterState,
    /// Names of every voting member of the Raft cluster (the allowed node list).
    pub voters: Vec<String>,
    /// The latest report from each agent, as held by the coordinator.
    pub reports: BTreeMap<String, Observed>,
    /// A report older than this is stale: its agent counts as down.
    pub report_ttl_ms: u64,
}

impl ClusterView {
    /// The report from `name` if it is fresh at `now_ms`.
    pub fn fresh_report(&self, name: &str, now_ms: u64) -> Option<&NodeReport> {
        self.reports
            .get(name)
            .filter(|o| now_ms.saturating_sub(o.received_at_ms) <= self.report_ttl_ms)
            .map(|o| &o.report)
    }
}

/// What this agent knows about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalView {
    pub name: String,
    pub kind: NodeKind,
    pub is_coordinator: bool,
    /// This agent's latest probe of its own PostgreSQL.
    pub report: NodeReport,
}

/// Something the executor should do. Each action names the generation it serves
/// (invariant 7: logged with its generation, idempotent, retried on the next tick).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Commit a command in the Raft log (coordinator only).
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
    /// This node does nothing for now, for the reason given (shown in its info, logged once).
    Hold { reason: String },
    /// The coordinator holds the cluster back, for the reason given (shown in status
    /// problems, logged once).
    ClusterHold { reason: String },
}

/// The engine's answer, with a short name for the log.
pub type Decision = Vec<Action>;

pub fn decide(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Decision {
    let mut actions = Vec::new();
    if local.is_coordinator {
        actions.extend(coordinate(cluster, now_ms));
    }
    if local.kind == NodeKind::Data {
        actions.extend(reconcile_local(cluster, local, now_ms));
    }
    actions
}

/// The coordinator's part: choose the first primary once every data node has reported.
fn coordinate(cluster: &ClusterView, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    if state.primary.is_some() {
        return Vec::new();
    }
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
        [only] => vec![Action::Propose(Command::Bootstrap {
            primary: only.to_string(),
            generation: state.generation.next(),
        })],
        several => vec![cluster_hold(format!(
            "refusing to choose a primary: {} are all not in recovery; leave exactly one \
             (give the others a standby.signal or an empty data_dir)",
            several.join(" and ")
        ))],
    }
}

/// A data node's part: bring its own PostgreSQL to the role the committed state gives it.
fn reconcile_local(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    let me = &local.report;
    let generation = state.generation;
    let Some(primary) = state.primary.as_deref() else {
        let reason = match (me.db_up, me.role, me.data_dir) {
            (true, Some(DbRole::Primary), _) | (false, _, Some(DataDirState::Primary)) => {
                "bootstrap candidate: waiting for the coordinator to choose the first primary"
            }
            (false, _, Some(DataDirState::Empty)) => {
                "empty data_dir: waiting for a primary to clone from"
            }
            _ => "standby: waiting for the cluster to have a primary",
        };
        return vec![hold(reason.to_string())];
    };

    if me.db_up {
        return match (primary == local.name, me.role) {
            (true, Some(DbRole::Standby)) => vec![hold(format!(
                "named primary of generation {generation} but PostgreSQL is in recovery"
            ))],
            (false, Some(DbRole::Primary)) => vec![hold(format!(
                "PostgreSQL is not in recovery but the primary of generation {generation} \
                 is {primary}"
            ))],
            _ => Vec::new(),
        };
    }

    match me.data_dir {
        None => vec![hold("data_dir could not be read".to_string())],
        Some(DataDirState::Empty) if primary == local.name => vec![hold(format!(
            "named primary of generation {generation} but data_dir is empty"
        ))],
        Some(DataDirState::Empty) => match cluster.fresh_report(primary, now_ms) {
            Some(r) if r.db_up && r.role == Some(DbRole::Primary) => vec![Action::Clone {
                upstream: primary.to_string(),
                generation,
            }],
            _ => vec![hold(format!(
                "empty data_dir: waiting for primary {primary} to accept connections"
            ))],
        },
        // Invariant 4: only the committed primary starts without standby.signal.
        Some(_) if primary == local.name => vec![Action::StartPrimary { generation }],
        Some(_) => vec![Action::StartStandby {
            upstream: primary.to_string(),
            generation,
        }],
    }
}

fn hold(reason: String) -> Action {
    Action::Hold { reason }
}

fn cluster_hold(reason: String) -> Action {
    Action::ClusterHold { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Member;

    fn member(name: &str) -> Member {
        let kind = if name == "witness" {
            NodeKind::Witness
        } else {
            NodeKind::Data
        };
        Member {
            name: name.into(),
            kind,
            address: "127.0.0.1:7000".into(),
            pg_host: Some("127.0.0.1".into()),
            pg_port: Some(5432),
            priority: 1,
            promotable: true,
        }
    }

    /// How a node looks in a test: running primary, running standby, stopped with a data
    /// dir of the given kind, or silent (no report).
    #[derive(Clone, Copy)]
    enum Seen {
        Running(DbRole),
        Stopped(DataDirState),
        Silent,
    }

    fn report(name: &str, seen: Seen) -> NodeReport {
        let mut r = NodeReport::new(name, member(name).kind);
        match seen {
            Seen::Running(role) => {
                r.db_up = true;
                r.role = Some(role);
                r.data_dir = Some(match role {
                    DbRole::Primary => DataDirState::Primary,
                    DbRole::Standby => DataDirState::Standby,
                });
            }
            Seen::Stopped(dir) => r.data_dir = Some(dir),
            Seen::Silent => {}
        }
        r
    }

    fn view(primary: Option<&str>, nodes: &[(&str, Seen)]) -> ClusterView {
        let mut state = ClusterState::default();
        for (name, _) in nodes {
            state.members.insert(name.to_string(), member(name));
        }
        if let Some(p) = primary {
            state.primary = Some(p.into());
            state.generation = Generation(1);
        }
        let reports = nodes
            .iter()
            .filter(|(_, seen)| !matches!(seen, Seen::Silent))
            .map(|(name, seen)| {
                let observed = Observed {
                    report: report(name, *seen),
                    received_at_ms: 1_000,
                };
                (name.to_string(), observed)
            })
            .collect();
        ClusterView {
            voters: nodes.iter().map(|(n, _)| n.to_string()).collect(),
            state,
            reports,
            report_ttl_ms: 3_000,
        }
    }

    fn check(cluster: &ClusterView, me: &str, coordinator: bool, expected: &[&str]) {
        let report = cluster
            .reports
            .get(me)
            .map(|o| o.report.clone())
            .unwrap_or_else(|| NodeReport::new(me, member(me).kind));
        let local = LocalView {
            name: me.into(),
            kind: member(me).kind,
            is_coordinator: coordinator,
            report,
        };
        let got: Vec<String> = decide(cluster, &local, 2_000)
            .iter()
            .map(|a| match a {
                Action::Propose(Command::Bootstrap {
                    primary,
                    generation,
                }) => format!("bootstrap {primary} g{generation}"),
                Action::Propose(other) => format!("propose {other:?}"),
                Action::StartPrimary { generation } => format!("start primary g{generation}"),
                Action::StartStandby {
                    upstream,
                    generation,
                } => format!("start standby of {upstream} g{generation}"),
                Action::Clone {
                    upstream,
                    generation,
                } => format!("clone {upstream} g{generation}"),
                Action::Hold { reason } => format!("hold: {reason}"),
                Action::ClusterHold { reason } => format!("cluster hold: {reason}"),
            })
            .collect();
        assert_eq!(got, expected);
    }

    use DataDirState::{Empty, Primary as Writable, Standby as Recovering};
    use Seen::{Running, Silent, Stopped};

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
                "cluster hold: refusing to choose a primary: pg1 and pg2 are all not in recovery; leave \
                 exactly one (give the others a standby.signal or an empty data_dir)",
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
                "cluster hold: no data node holds a database that can become the primary: initialise \
                 one (initdb) or remove standby.signal from the one that should lead",
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
        v.report_ttl_ms = 500;
        v.reports.get_mut("pg1").unwrap().received_at_ms = 1_900;
        check(&v, "pg1", true, &["cluster hold: bootstrap waits for reports from pg2", "hold: bootstrap candidate: waiting for the coordinator to choose the first primary"]);
    }

    #[test]
    fn the_committed_primary_starts_as_primary_and_others_as_standbys() {
        let v = view(
            Some("pg1"),
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Stopped(Recovering)),
                ("pg3", Stopped(Writable)),
            ],
        );
        check(&v, "pg1", false, &["start primary g1"]);
        check(&v, "pg2", false, &["start standby of pg1 g1"]);
        // Invariant 4: a node with no standby.signal that is not the primary boots as standby.
        check(&v, "pg3", false, &["start standby of pg1 g1"]);
    }

    #[test]
    fn an_empty_node_clones_once_the_primary_is_up() {
        let v = view(
            Some("pg1"),
            &[("pg1", Stopped(Writable)), ("pg2", Stopped(Empty))],
        );
        check(
            &v,
            "pg2",
            false,
            &["hold: empty data_dir: waiting for primary pg1 to accept connections"],
        );
        let v = view(
            Some("pg1"),
            &[("pg1", Running(DbRole::Primary)), ("pg2", Stopped(Empty))],
        );
        check(&v, "pg2", false, &["clone pg1 g1"]);
        check(&v, "pg1", false, &[]);
    }

    #[test]
    fn a_running_node_in_the_wrong_role_is_reported() {
        let v = view(
            Some("pg1"),
            &[
                ("pg1", Running(DbRole::Standby)),
                ("pg2", Running(DbRole::Primary)),
            ],
        );
        check(
            &v,
            "pg1",
            false,
            &["hold: named primary of generation 1 but PostgreSQL is in recovery"],
        );
        check(
            &v,
            "pg2",
            false,
            &["hold: PostgreSQL is not in recovery but the primary of generation 1 is pg1"],
        );
    }

    #[test]
    fn the_named_primary_with_an_empty_data_dir_holds() {
        let v = view(Some("pg1"), &[("pg1", Stopped(Empty))]);
        check(
            &v,
            "pg1",
            false,
            &["hold: named primary of generation 1 but data_dir is empty"],
        );
    }
}
