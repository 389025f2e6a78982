//! Building the cluster status (what `cluster-status` shows) from the committed state and
//! the reports this agent holds. No I/O: the caller passes everything in. How each node
//! stands (its role, lag, in sync) and the promote status are core's rules
//! (`pgfm_core::standing`), the ones the operator commands are judged by.

use pgfm_api::{
    ClusterStatus, DbStatus, NodeKindStatus, NodeStatus, PromoteStatus, SyncStatus, Up, VipStatus,
    WatchdogStatus,
};
use pgfm_core::decide::ClusterView;
use pgfm_core::standing::{self, Role};
use pgfm_core::{NodeKind, SyncMode};

/// Who is asking and who coordinates, for the header of the status.
pub struct Context<'a> {
    pub cluster: &'a str,
    pub answered_by: &'a str,
    pub coordinator: Option<&'a str>,
    /// `(name, agent address)` of every voter.
    pub voters: &'a [(String, String)],
    pub auto_failover: bool,
    pub now_ms: u64,
    /// Reasons the coordinator is holding back (bootstrap refused, ...).
    pub problems: Vec<String>,
    /// The answering agent serves HTTPS with mutual TLS.
    pub tls: bool,
}

pub fn build(ctx: &Context<'_>, view: &ClusterView) -> ClusterStatus {
    let state = &view.state;
    let primary_report = standing::serving_primary(view, ctx.now_ms);

    let nodes: Vec<NodeStatus> = ctx
        .voters
        .iter()
        .map(|(name, agent_address)| node_status(view, ctx.now_ms, name, agent_address))
        .collect();

    let mut problems = ctx.problems.clone();
    if !ctx.tls {
        problems.push(format!(
            "TLS is off on {} ([tls] mode = \"off\"): agents and the CLI talk plain HTTP, and \
             anyone who can read the network can read the cluster token and promote",
            ctx.answered_by
        ));
    }
    for (name, _) in ctx.voters {
        let valid_for = view
            .fresh_report(name, ctx.now_ms)
            .and_then(|r| r.tls_valid_for_s);
        problems.extend(valid_for.and_then(|s| certificate_problem(name, s)));
        if let Some(report) = view.fresh_report(name, ctx.now_ms) {
            if !report.file_differs.is_empty() {
                problems.push(format!(
                    "{name}'s pgfm.toml differs from the cluster's settings, which it uses: {} \
                     (remove the keys from its file; pgfm edit-config changes the cluster's)",
                    report.file_differs.join("; ")
                ));
            }
        }
    }
    if let Some(m) = state
        .primary
        .as_ref()
        .and_then(|p| state.maintenance.get(p))
    {
        if state.switchover.is_none() {
            let p = state.primary.as_deref().unwrap_or_default();
            problems.push(format!(
                "{p} is under maintenance (put there by {}) but still the primary: the \
                 switchover away from it was cut short (it stopped renewing its lease); pgfm \
                 switchover finishes it, pgfm maintenance {p} off ends the maintenance",
                m.by
            ));
        }
    }
    let vip = vip_status(view, ctx.now_ms, &nodes);
    if let Some(vip) = &vip {
        problems.extend(vip_problems(
            vip,
            state.primary.as_deref(),
            primary_report.is_some(),
        ));
    }

    let priority_list = standing::priority_list(state)
        .into_iter()
        .map(|m| m.name.clone())
        .collect();
    let promote_status = standing::promote_status(view, ctx.now_ms);
    ClusterStatus {
        cluster: ctx.cluster.to_string(),
        coordinator: ctx.coordinator.map(str::to_string),
        answered_by: ctx.answered_by.to_string(),
        generation: state.generation.0,
        primary: state.primary.clone().filter(|_| primary_report.is_some()),
        paused: state.paused,
        auto_failover: ctx.auto_failover,
        max_lag_bytes: view.settings.max_lag,
        nodes,
        allowed: ctx.voters.iter().map(|(n, _)| n.clone()).collect(),
        priority_list,
        promote_status: PromoteStatus {
            safe: promote_status.safe,
            message: promote_status.message,
        },
        vip,
        synchronous: sync_status(view, primary_report),
        scheduled_switchover: state.scheduled_switchover.clone(),
        scheduled_restart: state.scheduled_restart.clone(),
        last_restart: state.restart_ended.clone(),
        problems,
        tls: ctx.tls,
    }
}

/// Warn this long before a node's certificate (or the CA) ends.
const CERTIFICATE_WARNING_S: i64 = 30 * 24 * 3600;

/// A node's TLS set that ends within `CERTIFICATE_WARNING_S`, or has ended, in words.
fn certificate_problem(name: &str, valid_for_s: i64) -> Option<String> {
    let renew = format!(
        "renew it where the cluster's ca/ directory is (pgfm init --add --force --data \
         {name}=ADDRESS, or --witness) and copy node.crt and node.key to {name}: agents use \
         them without a restart"
    );
    if valid_for_s <= 0 {
        Some(format!(
            "{name}'s TLS certificate or the cluster CA has expired: no agent accepts its \
             connections; {renew}"
        ))
    } else if valid_for_s < CERTIFICATE_WARNING_S {
        Some(format!(
            "{name}'s TLS certificate or the cluster CA expires in {} day(s); {renew}",
            valid_for_s / (24 * 3600)
        ))
    } else {
        None
    }
}

/// One row of the members table: how `name` stands, as core judges it, and what its
/// agent last reported.
fn node_status(view: &ClusterView, now_ms: u64, name: &str, agent_address: &str) -> NodeStatus {
    let node = standing::of(view, name, now_ms);
    let member = node.member;
    let report = node.report;
    let (address, agent_port) = split_address(agent_address);
    let maintenance = view.state.maintenance.get(name);
    let kind = match node.role {
        Role::Primary => NodeKindStatus::Primary,
        _ if maintenance.is_some() => NodeKindStatus::Maintenance,
        Role::Standby => NodeKindStatus::Standby,
        Role::Idle => NodeKindStatus::Idle,
        Role::Witness => NodeKindStatus::Witness,
    };
    let db_up = report.is_some_and(|r| r.db_up);
    let info = node_info(view, name, report, kind);
    NodeStatus {
        name: name.to_string(),
        kind,
        agent: if report.is_some() { Up::Up } else { Up::Down },
        db: if kind == NodeKindStatus::Witness {
            DbStatus::NotApplicable
        } else if db_up {
            DbStatus::Up
        } else {
            DbStatus::Down
        },
        address,
        agent_port,
        pg_port: member.and_then(|m| m.pg_port),
        lsn: node.lsn(),
        replayed_lsn: report.and_then(|r| r.replayed_lsn),
        timeline: report.and_then(|r| r.timeline),
        lag_bytes: node.lag_bytes,
        in_sync: node.in_sync,
        priority: member
            .filter(|m| m.kind == NodeKind::Data)
            .map(|m| m.priority),
        promotable: member
            .filter(|m| m.kind == NodeKind::Data)
            .map(|m| m.promotable),
        vip: report.and_then(|r| r.vip.as_ref()).map(|v| v.held),
        sync_state: node.sender.map(|s| s.sync_state.clone()),
        watchdog: report
            .and_then(|r| r.watchdog.as_ref())
            .map(|w| WatchdogStatus {
                mode: w.mode,
                armed: w.armed,
                timeout_s: w
                    .timeout_s
                    .or_else(|| view.settings.lease.watchdog_timeout_s()),
                problem: w.problem.clone(),
            }),
        maintenance: maintenance.cloned(),
        pending_restart: report
            .map(|r| r.pending_restart.clone())
            .unwrap_or_default(),
        tags: view.state.tags_of(name).list(),
        upstream: upstream_of(view, report),
        reloaded: report.map_or(0, |r| r.reloaded),
        restarted: report.map_or(0, |r| r.restarted),
        info,
    }
}

/// The member a standby streams from now: the one at the address of its
/// `primary_conninfo`, while its WAL receiver streams.
fn upstream_of(view: &ClusterView, report: Option<&pgfm_core::NodeReport>) -> Option<String> {
    let report = report.filter(|r| r.receiver.as_deref() == Some("streaming"))?;
    let at = report.conninfo_upstream.as_deref()?;
    view.state
        .members
        .values()
        .find(|m| {
            m.pg_host
                .as_ref()
                .zip(m.pg_port)
                .is_some_and(|(h, p)| format!("{h}:{p}") == at)
        })
        .map(|m| m.name.clone())
}

/// The Info column: what the agent reported, or why there is no report, or for a
/// standby with nothing to say, where it receives WAL from.
fn node_info(
    view: &ClusterView,
    name: &str,
    report: Option<&pgfm_core::NodeReport>,
    kind: NodeKindStatus,
) -> String {
    let mut info = report.map(|r| r.info.clone()).unwrap_or_default();
    if report.is_none() {
        info = match view.reports.get(name) {
            Some(_) => "agent stopped reporting".to_string(),
            None => "no report from this agent yet".to_string(),
        };
    } else if info.is_empty() && kind == NodeKindStatus::Standby {
        let receiver = report.and_then(|r| r.receiver.clone());
        let from = upstream_of(view, report).or_else(|| view.state.primary.clone());
        info = match (receiver, from) {
            (Some(status), Some(from)) => format!("{status} from {from}"),
            _ => "not receiving WAL".to_string(),
        };
    }
    if let Some(r) = report.filter(|r| !r.pending_restart.is_empty()) {
        let pending = format!("pending restart: {}", r.pending_restart.join(", "));
        info = if info.is_empty() {
            pending
        } else {
            format!("{info}; {pending}")
        };
    }
    info
}

/// Synchronous replication as set, as committed and as the primary does it (None when it
/// is off and nothing is left to undo).
fn sync_status(view: &ClusterView, primary: Option<&pgfm_core::NodeReport>) -> Option<SyncStatus> {
    let sync = view.sync_settings();
    let committed = view.state.committed_sync();
    let waiting = primary.and_then(|r| r.sync.clone()).unwrap_or_default();
    if sync.mode == SyncMode::Off && committed.is_async() && waiting.is_async() {
        return None;
    }
    Some(SyncStatus {
        mode: sync.mode.to_string(),
        standbys: sync.standbys,
        minimum: sync.minimum,
        strict: sync.strict(),
        source: if view.state.replication.is_some() {
            "set-synchronous"
        } else if view.state.settings.is_some() {
            "settings"
        } else {
            "config"
        }
        .to_string(),
        degraded: sync.mode != SyncMode::Off && waiting.count < sync.standbys,
        committed: committed.names.into_iter().collect(),
        committed_quorum: committed.count,
        waiting_count: waiting.count,
        waiting_for: waiting.names.into_iter().collect(),
    })
}

/// The VIP's address (from any data node's report) and the nodes that carry it.
fn vip_status(view: &ClusterView, now_ms: u64, nodes: &[NodeStatus]) -> Option<VipStatus> {
    let address = view
        .reports
        .keys()
        .filter_map(|n| view.fresh_report(n, now_ms))
        .find_map(|r| r.vip.as_ref().map(|v| v.address.clone()))?;
    Some(VipStatus {
        address,
        on: nodes
            .iter()
            .filter(|n| n.vip == Some(true))
            .map(|n| n.name.clone())
            .collect(),
    })
}

fn vip_problems(vip: &VipStatus, primary: Option<&str>, primary_up: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let elsewhere: Vec<&str> = vip
        .on
        .iter()
        .map(String::as_str)
        .filter(|n| Some(*n) != primary)
        .collect();
    if !elsewhere.is_empty() {
        problems.push(format!(
            "the virtual IP {} is on {}, which is not the primary (its agent removes it)",
            vip.address,
            elsewhere.join(" and ")
        ));
    }
    if let Some(p) = primary.filter(|_| primary_up) {
        if !vip.on.iter().any(|n| n == p) {
            problems.push(format!(
                "the virtual IP {} is not on the primary {p} yet",
                vip.address
            ));
        }
    }
    problems
}

fn split_address(address: &str) -> (String, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().unwrap_or_default()),
        None => (address.to_string(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::certificate_problem;

    #[test]
    fn a_certificate_near_its_end_or_past_it_is_a_problem_with_the_way_out() {
        let day = 24 * 3600;
        assert_eq!(certificate_problem("pg1", 31 * day), None);
        let soon = certificate_problem("pg1", 12 * day + 5).unwrap();
        assert_eq!(
            soon,
            "pg1's TLS certificate or the cluster CA expires in 12 day(s); renew it where the \
             cluster's ca/ directory is (pgfm init --add --force --data pg1=ADDRESS, or \
             --witness) and copy node.crt and node.key to pg1: agents use them without a \
             restart"
        );
        let gone = certificate_problem("pg2", -5).unwrap();
        assert!(
            gone.starts_with("pg2's TLS certificate or the cluster CA has expired: no agent accepts its connections; renew it"),
            "{gone}"
        );
    }
}
