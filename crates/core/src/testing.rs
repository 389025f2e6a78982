//! A cluster to test the rules on, as `pgfm lab up N` looks once healthy, and the faults
//! the end-to-end tests cause, as they change the model.

use std::collections::BTreeMap;

use crate::decide::{ClusterView, Observed, Settings};
use crate::model::{ClusterState, DbRole, Member, NodeKind, NodeReport, ReplicaInfo};
use crate::types::{Generation, Lsn};

/// The time every test judges at (monotonic ms); every healthy report arrived just now.
pub(crate) const NOW: u64 = 10_000;
/// The primary's current position, and every caught-up standby's.
pub(crate) const TOP: Lsn = Lsn(100_000_000);

pub(crate) fn member(name: &str) -> Member {
    let kind = if name == "witness" {
        NodeKind::Witness
    } else {
        NodeKind::Data
    };
    Member {
        name: name.into(),
        kind,
        address: format!("127.0.0.1:{}", 7000 + name.len()),
        pg_host: (kind == NodeKind::Data).then(|| "127.0.0.1".into()),
        pg_port: (kind == NodeKind::Data).then_some(5432),
        priority: 100,
        promotable: true,
    }
}

/// `pgfm lab up data_nodes`: pg1 the running primary of generation 1, pg2.. running
/// standbys streaming from it and caught up, a witness; the voters in that order.
pub(crate) fn lab(data_nodes: usize) -> ClusterView {
    let names: Vec<String> = (1..=data_nodes)
        .map(|i| format!("pg{i}"))
        .chain(std::iter::once("witness".to_string()))
        .collect();
    let mut state = ClusterState::default();
    for name in &names {
        state.members.insert(name.clone(), member(name));
    }
    state.primary = Some("pg1".into());
    state.generation = Generation(1);
    let mut reports = BTreeMap::new();
    for name in &names {
        let mut r = NodeReport::new(name, member(name).kind);
        if name == "pg1" {
            r.db_up = true;
            r.role = Some(DbRole::Primary);
            r.current_lsn = Some(TOP);
            r.replicas = names
                .iter()
                .filter(|n| n.starts_with("pg") && *n != "pg1")
                .map(|n| ReplicaInfo {
                    application_name: n.clone(),
                    state: "streaming".into(),
                    sync_state: "async".into(),
                    replay_lsn: Some(TOP),
                    flush_lsn: Some(TOP),
                })
                .collect();
        } else if name.starts_with("pg") {
            r.db_up = true;
            r.role = Some(DbRole::Standby);
            r.received_lsn = Some(TOP);
            r.replayed_lsn = Some(TOP);
            r.receiver = Some("streaming".into());
        }
        let observed = Observed {
            report: r,
            received_at_ms: NOW,
        };
        reports.insert(name.clone(), observed);
    }
    ClusterView {
        state,
        voters: names,
        reports,
        settings: Settings::default(),
        last_renewal_seen_ms: Some(NOW),
        coordinator_since_ms: Some(0),
        wall_clock_ms: 42,
        measured: BTreeMap::new(),
        switchover_step_ms: None,
    }
}

fn report<'a>(v: &'a mut ClusterView, name: &str) -> &'a mut NodeReport {
    &mut v
        .reports
        .get_mut(name)
        .unwrap_or_else(|| panic!("no report of {name}"))
        .report
}

/// Its agent stopped reporting (`pgfm lab kill`): its last report is kept but stale.
pub(crate) fn silent(v: &mut ClusterView, name: &str) {
    if let Some(o) = v.reports.get_mut(name) {
        o.received_at_ms = 0;
    }
}

/// A standby that received and replayed `bytes` less than the primary has, which the
/// primary's walsender for it agrees with.
pub(crate) fn behind(v: &mut ClusterView, name: &str, bytes: u64) {
    let at = Lsn(TOP.0 - bytes);
    let r = report(v, name);
    r.received_lsn = Some(at);
    r.replayed_lsn = Some(at);
    for replica in &mut report(v, "pg1").replicas {
        if replica.application_name == name {
            replica.replay_lsn = Some(at);
            replica.flush_lsn = Some(at);
        }
    }
}

/// A running standby whose WAL receiver is not streaming (the primary has no walsender
/// for it).
pub(crate) fn not_streaming(v: &mut ClusterView, name: &str) {
    report(v, name).receiver = None;
    report(v, "pg1")
        .replicas
        .retain(|r| r.application_name != name);
}

/// `pgfm set-priority name priority`.
pub(crate) fn priority(v: &mut ClusterView, name: &str, priority: u32) {
    if let Some(m) = v.state.members.get_mut(name) {
        m.priority = priority;
    }
}
