//! Building the cluster status (what `cluster-status` shows) from the committed state and
//! the reports this agent holds. No I/O: the caller passes everything in.

use pgfm_api::{
    ClusterStatus, DbStatus, NodeKindStatus, NodeStatus, PromoteStatus, SyncStatus, Up, VipStatus,
    WatchdogStatus,
};
use pgfm_core::decide::ClusterView;
use pgfm_core::{DbRole, NodeKind, SyncMode};

/// Who is asking and who coordinates, for the header of the status.
pub struct Context<'a> {
    pub cluster: &'a str,
    pub answered_by: &'a str,
    pub coordinator: Option<&'a str>,
    /// `(name, agent address)` of every voter.
    pub voters: &'a [(String, String)],
    pub max_lag: u64,
    pub auto_failover: bool,
    pub now_ms: u64,
    /// Reasons the coordinator is holding back (bootstrap refused, ...).
    pub problems: Vec<String>,
}

pub fn build(ctx: &Context<'_>, view: &ClusterView) -> ClusterStatus {
    let state = &view.state;
    let primary_report = state
        .primary
        .as_deref()
        .and_then(|p| view.fresh_report(p, ctx.now_ms))
        .filter(|r| r.db_up && r.role == Some(DbRole::Primary));
    let primary_lsn = primary_report.and_then(|r| r.current_lsn);

    let mut nodes = Vec::new();
    for (name, agent_address) in ctx.voters {
        let member = state.members.get(name);
        let report = view.fresh_report(name, ctx.now_ms);
        let (address, agent_port) = split_address(agent_address);
        let is_witness = member.map(|m| m.kind) == Some(NodeKind::Witness)
            || report.map(|r| r.kind) == Some(NodeKind::Witness);
        let db_up = report.is_some_and(|r| r.db_up);
        let role = report.and_then(|r| r.role);
        let is_primary = state.primary.as_deref() == Some(name.as_str());
        let kind = if is_witness {
            NodeKindStatus::Witness
        } else {
            match (db_up, role) {
                (true, Some(DbRole::Primary)) if is_primary => NodeKindStatus::Primary,
                (true, Some(DbRole::Standby)) if !is_primary && state.primary.is_some() => {
                    NodeKindStatus::Standby
                }
                _ => NodeKindStatus::Idle,
            }
        };

        // The primary's own view of each walsender is the consistent one: same clock,
        // same moment as its current LSN.
        let sender =
            primary_report.and_then(|p| p.replicas.iter().find(|r| r.application_name == *name));
        let (lag_bytes, in_sync) = if kind == NodeKindStatus::Standby {
            let replayed = sender
                .and_then(|s| s.replay_lsn)
                .or(report.and_then(|r| r.replayed_lsn));
            let lag = primary_lsn.zip(replayed).map(|(p, r)| p.bytes_after(r));
            let streaming = sender.is_some_and(|s| s.state == "streaming")
                || report.and_then(|r| r.receiver.as_deref()) == Some("streaming");
            let in_sync = streaming && lag.is_some_and(|l| l <= ctx.max_lag);
            (lag, Some(in_sync))
        } else {
            (None, None)
        };

        let mut info = report.map(|r| r.info.clone()).unwrap_or_default();
        if report.is_none() {
            info = match view.reports.get(name) {
                Some(_) => "agent stopped reporting".to_string(),
                None => "no report from this agent yet".to_string(),
            };
        } else if info.is_empty() && kind == NodeKindStatus::Standby {
            let receiver = report.and_then(|r| r.receiver.clone());
            info = match (receiver, &state.primary) {
                (Some(status), Some(p)) => format!("{status} from {p}"),
                _ => "not receiving WAL".to_string(),
            };
        }

        nodes.push(NodeStatus {
            name: name.clone(),
            kind,
            agent: if report.is_some() { Up::Up } else { Up::Down },
            db: if is_witness {
                DbStatus::NotApplicable
            } else if db_up {
                DbStatus::Up
            } else {
                DbStatus::Down
            },
            address,
            agent_port,
            pg_port: member.and_then(|m| m.pg_port),
            lsn: report.and_then(|r| r.wal_position()),
            replayed_lsn: report.and_then(|r| r.replayed_lsn),
            timeline: report.and_then(|r| r.timeline),
            lag_bytes,
            in_sync,
            priority: member
                .filter(|m| m.kind == NodeKind::Data)
                .map(|m| m.priority),
            promotable: member
                .filter(|m| m.kind == NodeKind::Data)
                .map(|m| m.promotable),
            vip: report.and_then(|r| r.vip.as_ref()).map(|v| v.held),
            sync_state: sender
                .filter(|_| kind == NodeKindStatus::Standby)
                .map(|s| s.sync_state.clone()),
            watchdog: report
                .and_then(|r| r.watchdog.as_ref())
                .map(|w| WatchdogStatus {
                    mode: w.mode,
                    armed: w.armed,
                    timeout_s: view.settings.lease.watchdog_timeout_s(),
                    problem: w.problem.clone(),
                }),
            info,
        });
    }

    let mut problems = ctx.problems.clone();
    let vip = vip_status(view, ctx.now_ms, &nodes);
    if let Some(vip) = &vip {
        problems.extend(vip_problems(
            vip,
            state.primary.as_deref(),
            primary_report.is_some(),
        ));
    }

    let mut priority_list: Vec<_> = state
        .data_members()
        .filter(|m| Some(&m.name) != state.primary.as_ref() && m.promotable && m.priority > 0)
        .collect();
    priority_list.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    let priority_list: Vec<String> = priority_list.into_iter().map(|m| m.name.clone()).collect();

    let promote_status = promote_status(
        &nodes,
        primary_report.is_some(),
        &priority_list,
        ctx.max_lag,
    );
    ClusterStatus {
        cluster: ctx.cluster.to_string(),
        coordinator: ctx.coordinator.map(str::to_string),
        answered_by: ctx.answered_by.to_string(),
        generation: state.generation.0,
        primary: state.primary.clone().filter(|_| primary_report.is_some()),
        paused: state.paused,
        auto_failover: ctx.auto_failover,
        max_lag_bytes: ctx.max_lag,
        nodes,
        allowed: ctx.voters.iter().map(|(n, _)| n.clone()).collect(),
        priority_list,
        promote_status,
        vip,
        synchronous: sync_status(view, primary_report),
        problems,
    }
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

fn promote_status(
    nodes: &[NodeStatus],
    primary_up: bool,
    priority_list: &[String],
    max_lag: u64,
) -> PromoteStatus {
    let verdict = |safe: bool, message: String| PromoteStatus { safe, message };
    if !primary_up {
        return verdict(false, "No primary database was found.".to_string());
    }
    let standbys: Vec<&NodeStatus> = nodes
        .iter()
        .filter(|n| n.kind == NodeKindStatus::Standby)
        .collect();
    if standbys.is_empty() {
        return verdict(false, "No standby databases were found.".to_string());
    }
    let promotable_in_sync = standbys
        .iter()
        .any(|n| n.in_sync == Some(true) && priority_list.contains(&n.name));
    if promotable_in_sync {
        return verdict(
            true,
            "Standby database(s) in sync with primary. It is safe to promote.".to_string(),
        );
    }
    let reasons: Vec<String> = standbys
        .iter()
        .map(|n| {
            if !priority_list.contains(&n.name) {
                format!("{} is not promotable", n.name)
            } else {
                match n.lag_bytes {
                    Some(lag) if lag > max_lag => {
                        format!("{} is {lag} bytes behind (max_lag {max_lag})", n.name)
                    }
                    Some(_) => format!("{} is not streaming", n.name),
                    None => format!("{}'s position is unknown", n.name),
                }
            }
        })
        .collect();
    verdict(
        false,
        format!(
            "No standby database is in sync with the primary: {}. Promoting now could lose data.",
            reasons.join("; ")
        ),
    )
}

fn split_address(address: &str) -> (String, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().unwrap_or_default()),
        None => (address.to_string(), 0),
    }
}
