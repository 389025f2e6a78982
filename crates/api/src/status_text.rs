//! The text of `cluster-status`, in the spirit of EFM's: a members table, the allowed and
//! priority lists, the promote status, idle nodes and problems.

use std::fmt::Write;

use crate::{ClusterStatus, DbStatus, NodeKindStatus, NodeStatus, Up};

fn kind(n: &NodeStatus) -> &'static str {
    match n.kind {
        NodeKindStatus::Primary => "Primary",
        NodeKindStatus::Standby => "Standby",
        NodeKindStatus::Witness => "Witness",
        NodeKindStatus::Idle => "Idle",
        NodeKindStatus::Maintenance => "Maintenance",
        NodeKindStatus::Unknown => "?",
    }
}

fn agent_word(n: &NodeStatus) -> &'static str {
    match n.agent {
        Up::Up => "UP",
        Up::Down => "DOWN",
    }
}

fn db_word(n: &NodeStatus) -> &'static str {
    match n.db {
        DbStatus::Up => "UP",
        DbStatus::Down => "DOWN",
        DbStatus::NotApplicable => "N/A",
    }
}

fn address(n: &NodeStatus) -> String {
    match n.pg_port {
        Some(port) => format!("{}:{port}", n.address),
        None => format!("{}:{}", n.address, n.agent_port),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1024 * 1024 * 1024 => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
        n => format!("{:.1} GiB", n as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(List is empty.)".to_string()
    } else {
        names.join(" ")
    }
}

const RULE: &str = "---------------------------------------------------------------------------";

pub fn render(s: &ClusterStatus) -> String {
    let mut out = String::new();
    header(&mut out, s);
    members(&mut out, s);
    lists(&mut out, s);
    promote_status(&mut out, s);
    idle_nodes(&mut out, s);
    maintenance(&mut out, s);
    tags(&mut out, s);
    scheduled(&mut out, s);
    scheduled_restart(&mut out, s);
    problems(&mut out, s);
    out
}

/// The cluster's name, whether failover is automatic, the coordinator, the VIP, the
/// synchronous mode and the watchdogs.
fn header(w: &mut String, s: &ClusterStatus) {
    let _ = writeln!(w, "Cluster Status: {}", s.cluster);
    if s.paused {
        let _ = writeln!(
            w,
            "Automatic failover is disabled: maintenance mode (pgfm resume ends it)."
        );
    } else if !s.auto_failover {
        let _ = writeln!(w, "Automatic failover is disabled (auto_failover = false).");
    }
    let _ = writeln!(
        w,
        "Coordinator: {}    Generation: {}    Answered by: {}",
        s.coordinator.as_deref().unwrap_or("(none elected)"),
        s.generation,
        s.answered_by
    );
    if let Some(vip) = &s.vip {
        let on = match vip.on.as_slice() {
            [] => "on no node".to_string(),
            nodes => format!("on {}", nodes.join(" and ")),
        };
        let _ = writeln!(w, "Virtual IP: {} {on}", vip.address);
    }
    if let Some(sync) = &s.synchronous {
        let standbys: Vec<&str> = s
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKindStatus::Standby)
            .map(|n| n.name.as_str())
            .collect();
        let _ = writeln!(w, "{}", sync_line(sync, &standbys));
    }
    if let Some(line) = watchdog_line(&s.nodes) {
        let _ = writeln!(w, "{line}");
    }
    let _ = writeln!(w);
}

/// The members table, with a VIP column when the cluster has a virtual IP.
fn members(w: &mut String, s: &ClusterStatus) {
    // EFM's VIP column: the address on the node that carries it, marked with '*'.
    let vip_column = |n: &NodeStatus| match (&s.vip, n.vip) {
        (Some(vip), Some(true)) => {
            let address = vip.address.split('/').next().unwrap_or_default();
            format!("{address}*")
        }
        _ => String::new(),
    };
    if s.vip.is_some() {
        let _ = writeln!(
            w,
            "\tAgent Type  Name        Address                Agent  DB     VIP              Info"
        );
    } else {
        let _ = writeln!(
            w,
            "\tAgent Type  Name        Address                Agent  DB     Info"
        );
    }
    let _ = writeln!(w, "\t{RULE}");
    for n in &s.nodes {
        let (agent, db) = (agent_word(n), db_word(n));
        let vip = if s.vip.is_some() {
            format!("{:<16} ", vip_column(n))
        } else {
            String::new()
        };
        let line = format!(
            "\t{:<11} {:<11} {:<22} {:<6} {:<6} {vip}{}",
            kind(n),
            n.name,
            address(n),
            agent,
            db,
            n.info
        );
        let _ = writeln!(w, "{}", line.trim_end());
    }
    let _ = writeln!(w);
}

/// The allowed node list and the standby priority list.
fn lists(w: &mut String, s: &ClusterStatus) {
    let _ = writeln!(w, "Allowed node list:");
    let _ = writeln!(w, "\t{}", list(&s.allowed));
    let _ = writeln!(w);
    let _ = writeln!(w, "Standby priority list:");
    let _ = writeln!(w, "\t{}", list(&s.priority_list));
    let _ = writeln!(w);
}

/// The primary's and the standbys' WAL positions, then whether a standby can be promoted.
fn promote_status(w: &mut String, s: &ClusterStatus) {
    let _ = writeln!(w, "Promote Status:");
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "\tDB Type     Name        Address                WAL Loc      Info"
    );
    let _ = writeln!(w, "\t{RULE}");
    for n in s
        .nodes
        .iter()
        .filter(|n| matches!(n.kind, NodeKindStatus::Primary | NodeKindStatus::Standby))
    {
        let info = promote_info(n, s);
        let lsn = n
            .lsn
            .map(|l| l.to_string())
            .unwrap_or_else(|| "UNKNOWN".into());
        let line = format!(
            "\t{:<11} {:<11} {:<22} {:<12} {}",
            kind(n),
            n.name,
            address(n),
            lsn,
            info
        );
        let _ = writeln!(w, "{}", line.trim_end());
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "\t{}", s.promote_status.message);
}

/// The Info column of the promote status: the primary's timeline, or how far a standby
/// has replayed and how it replicates.
fn promote_info(n: &NodeStatus, s: &ClusterStatus) -> String {
    match n.kind {
        NodeKindStatus::Primary => n
            .timeline
            .map(|t| format!("timeline {t}"))
            .unwrap_or_default(),
        _ => {
            let replayed = n
                .replayed_lsn
                .map(|l| format!("replayed {l}"))
                .unwrap_or_else(|| "replayed ?".into());
            let lag = n
                .lag_bytes
                .map(|l| format!(", lag {}", bytes(l)))
                .unwrap_or_default();
            let sync = match n.in_sync {
                Some(false) => ", NOT in sync",
                _ => "",
            };
            // With synchronous replication: what the primary's pg_stat_replication says.
            let role = match (&s.synchronous, n.sync_state.as_deref()) {
                (Some(_), Some("sync")) => ", synchronous",
                (Some(_), Some("quorum")) => ", in the synchronous quorum",
                (Some(_), Some("potential")) => ", potential synchronous",
                (Some(_), Some("async")) => ", asynchronous",
                _ => "",
            };
            format!("{replayed}{lag}{sync}{role}")
        }
    }
}

/// The idle nodes, if any.
fn idle_nodes(w: &mut String, s: &ClusterStatus) {
    let idle: Vec<&NodeStatus> = s
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKindStatus::Idle)
        .collect();
    if idle.is_empty() {
        return;
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Idle Node Status (idle nodes are not candidates for promotion):"
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "\tName        Address                WAL Loc      Info");
    let _ = writeln!(w, "\t{RULE}");
    for n in idle {
        let lsn = n
            .lsn
            .map(|l| l.to_string())
            .unwrap_or_else(|| "UNKNOWN".into());
        let line = format!("\t{:<11} {:<22} {:<12} {}", n.name, address(n), lsn, n.info);
        let _ = writeln!(w, "{}", line.trim_end());
    }
}

/// The nodes under maintenance, if any: since when, by whom, how to end it.
fn maintenance(w: &mut String, s: &ClusterStatus) {
    let under: Vec<(&NodeStatus, &pgfm_core::model::Maintenance)> = s
        .nodes
        .iter()
        .filter_map(|n| n.maintenance.as_ref().map(|m| (n, m)))
        .collect();
    if under.is_empty() {
        return;
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Maintenance (never promoted, never synchronous; pgfm maintenance NODE off ends it):"
    );
    let _ = writeln!(w);
    for (n, m) in under {
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.since_unix_ms);
        let postgres = match (m.keep_running, n.db) {
            (true, _) => "PostgreSQL kept running",
            (false, DbStatus::Up) => "PostgreSQL stopping",
            (false, _) => "PostgreSQL stopped",
        };
        let _ = writeln!(
            w,
            "\t{:<11} since {} by {}: {postgres}{}",
            n.name,
            humantime::format_rfc3339_seconds(since),
            m.by,
            if m.forced {
                " (forced past the synchronous minimum: commits wait for it)"
            } else {
                ""
            }
        );
    }
}

/// The tagged nodes, if any, and where each standby that cascades streams from now.
fn tags(w: &mut String, s: &ClusterStatus) {
    let tagged: Vec<&NodeStatus> = s.nodes.iter().filter(|n| !n.tags.is_empty()).collect();
    if tagged.is_empty() {
        return;
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "Tags (pgfm set-tag NODE KEY=VALUE changes them):");
    let _ = writeln!(w);
    for n in tagged {
        let streams = match &n.upstream {
            Some(up) if n.tags.iter().any(|t| t.starts_with("replicate_from=")) => {
                format!("; streams from {up}")
            }
            _ => String::new(),
        };
        let _ = writeln!(w, "\t{:<11} {}{streams}", n.name, n.tags.join(", "));
    }
}

/// The switchover scheduled, if any.
fn scheduled(w: &mut String, s: &ClusterStatus) {
    let Some(sw) = &s.scheduled_switchover else {
        return;
    };
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Scheduled switchover: at {} to {} (asked by {}; pgfm switchover --cancel cancels it)",
        pgfm_core::types::utc(sw.at_unix_ms),
        sw.to
            .as_deref()
            .unwrap_or("the standby in sync chosen then"),
        sw.by
    );
}

/// The rolling restart scheduled, if any, and how far it got; else how the last one
/// ended.
fn scheduled_restart(w: &mut String, s: &ClusterStatus) {
    if let (None, Some(e)) = (&s.scheduled_restart, &s.last_restart) {
        let list = |v: &[String]| match v.is_empty() {
            true => "none".to_string(),
            false => v.join(", "),
        };
        let passed: Vec<String> = e
            .passed_over
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect();
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "Last scheduled restart (at {}, asked by {}): {} at {}; restarted: {}; passed over: {}",
            pgfm_core::types::utc(e.scheduled_at_unix_ms),
            e.by,
            match &e.stopped {
                None => "finished".to_string(),
                Some(why) => format!("ended early, {why}"),
            },
            pgfm_core::types::utc(e.at_unix_ms),
            list(&e.restarted),
            list(&passed)
        );
    }
    let Some(r) = &s.scheduled_restart else {
        return;
    };
    let nodes = match r.nodes.is_empty() {
        true => "every data node".to_string(),
        false => r.nodes.join(", "),
    };
    let how = match (r.pending, r.in_place) {
        (true, true) => " with a parameter pending restart, the primary in place",
        (true, false) => " with a parameter pending restart",
        (false, true) => ", the primary in place",
        (false, false) => "",
    };
    let at = match (&r.step, r.done.is_empty()) {
        (Some(step), _) => format!(
            "; restarting {} now ({}), done: {}",
            step.node,
            match step.phase {
                pgfm_core::model::RestartPhase::Stopping => "stopping",
                pgfm_core::model::RestartPhase::Starting => "starting",
                pgfm_core::model::RestartPhase::InPlace { .. } => "in place",
            },
            if r.done.is_empty() {
                "none".to_string()
            } else {
                r.done.join(", ")
            }
        ),
        (None, false) => format!("; done: {}", r.done.join(", ")),
        (None, true) => String::new(),
    };
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Scheduled restart: at {} of {nodes}{how} (asked by {}; pgfm restart --cancel cancels it){at}",
        pgfm_core::types::utc(r.at_unix_ms),
        r.by
    );
}

/// The problems, if any.
fn problems(w: &mut String, s: &ClusterStatus) {
    if s.problems.is_empty() {
        return;
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "Problems:");
    for p in &s.problems {
        let _ = writeln!(w, "\t{p}");
    }
}

/// The text of `pgfm node-status`.
pub fn node(n: &NodeStatus, s: &ClusterStatus) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "Node: {} ({})    Cluster: {}    Generation: {}",
        n.name,
        kind(n),
        s.cluster,
        s.generation
    );
    let _ = writeln!(
        w,
        "Agent: {}    DB: {}    Address: {}",
        agent_word(n),
        db_word(n),
        address(n)
    );
    if let Some(lsn) = n.lsn {
        let _ = writeln!(
            w,
            "WAL: {lsn}{}",
            n.timeline
                .map(|t| format!(" on timeline {t}"))
                .unwrap_or_default()
        );
    }
    if let Some(lag) = n.lag_bytes {
        let _ = writeln!(
            w,
            "Lag: {}{}",
            bytes(lag),
            if n.in_sync == Some(true) {
                " (in sync)"
            } else {
                " (NOT in sync)"
            }
        );
    }
    if let (Some(p), Some(pr)) = (n.priority, n.promotable) {
        let _ = writeln!(
            w,
            "Priority: {p}{}",
            if pr { "" } else { " (not promotable)" }
        );
    }
    if let Some(watchdog) = &n.watchdog {
        let _ = writeln!(w, "Watchdog: {}", watchdog_text(watchdog));
    }
    if !n.info.is_empty() {
        let _ = writeln!(w, "Info: {}", n.info);
    }
    out
}

/// `required, armed (1 s)`, `required`, `automatic, unavailable: ...`.
fn watchdog_text(w: &crate::WatchdogStatus) -> String {
    match (w.armed, &w.problem, w.timeout_s) {
        (true, _, Some(t)) => format!("{}, armed ({t} s)", w.mode),
        (true, _, None) => format!("{}, armed", w.mode),
        (false, Some(problem), _) => format!("{}, unavailable: {problem}", w.mode),
        (false, None, _) => w.mode.to_string(),
    }
}

/// `Watchdog: pg1 required, armed (1 s); pg2 required`, unless no data node uses one.
fn watchdog_line(nodes: &[NodeStatus]) -> Option<String> {
    let reported: Vec<(&str, &crate::WatchdogStatus)> = nodes
        .iter()
        .filter_map(|n| Some((n.name.as_str(), n.watchdog.as_ref()?)))
        .collect();
    let used = reported
        .iter()
        .any(|(_, w)| w.mode != pgfm_core::WatchdogMode::Off);
    if !used {
        return None;
    }
    let each: Vec<String> = reported
        .iter()
        .map(|(name, w)| format!("{name} {}", watchdog_text(w)))
        .collect();
    Some(format!("Watchdog: {}", each.join("; ")))
}

/// The text of `pgfm history`.
pub fn history(entries: &[crate::HistoryEntry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Generation  Time (UTC)            From      To        Lost       Reason"
    );
    if entries.is_empty() {
        let _ = writeln!(out, "(no promotion since the cluster was formed)");
    }
    for e in entries {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_unix_ms);
        let lost = lost_text(e);
        let _ = writeln!(
            out,
            "{:<11} {:<21} {:<9} {:<9} {:<10} {}",
            e.generation,
            humantime::format_rfc3339_seconds(at).to_string(),
            e.from.as_deref().unwrap_or("-"),
            e.to,
            lost,
            e.reason
        );
    }
    out
}

/// `pgfm show-config`: the settings in force as the sections of a config file, after a
/// header of comments (the revision, the keys of the answering agent's file that differ)
/// and before the history of changes, as comments too: the text can be saved and given to
/// `pgfm edit-config --file` as it is.
pub fn settings(view: &crate::SettingsView) -> String {
    let mut out = String::new();
    if view.revision == 0 {
        let _ = writeln!(
            out,
            "# Not committed yet: this agent's own file's settings (the first coordinator \
             commits its own)."
        );
    } else {
        let _ = writeln!(
            out,
            "# The cluster's settings, revision {} (pgfm edit-config changes them).",
            view.revision
        );
    }
    for difference in &view.file_differs {
        let _ = writeln!(
            out,
            "# WARNING: {difference} (this agent uses the cluster's)"
        );
    }
    out.push('\n');
    out.push_str(&view.settings.to_toml());
    if !view.history.is_empty() {
        let _ = writeln!(out, "\n# History (oldest first):");
    }
    for change in &view.history {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(change.at_unix_ms);
        let what = if change.changes.is_empty() {
            "first values".to_string()
        } else {
            change
                .changes
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "#   revision {} at {} by {}: {what}",
            change.revision,
            humantime::format_rfc3339_seconds(at),
            change.by
        );
    }
    out
}

/// `Synchronous replication (quorum, 1 of 2 standbys): commits wait for any 1 of pg2, pg3;
/// failover candidates: ...`
/// `standbys`: the nodes that run as standbys now (a committed set of one that is none of
/// them is the primary alone, alive or not).
fn sync_line(sync: &crate::SyncStatus, standbys: &[&str]) -> String {
    let mut mode = vec![sync.mode.clone()];
    if sync.mode != "off" {
        mode.push(format!("{} standby(s)", sync.standbys));
        if sync.strict {
            mode.push("strict".into());
        } else if sync.minimum > 0 {
            mode.push(format!("at least {}", sync.minimum));
        }
    }
    if sync.source == "set-synchronous" {
        mode.push("set by pgfm set-synchronous".into());
    }
    let any = |count: usize, names: &[String]| {
        if count < names.len() {
            format!("any {count} of {}", names.join(", "))
        } else {
            names.join(", ")
        }
    };
    let now = if sync.waiting_for.is_empty() || sync.waiting_count == 0 {
        if sync.mode == "off" {
            "commits wait for no standby".to_string()
        } else {
            "DEGRADED: commits wait for no standby (asynchronous)".to_string()
        }
    } else {
        format!(
            "commits wait for {}{}",
            any(sync.waiting_count, &sync.waiting_for),
            if sync.degraded {
                format!(" (fewer than the {} asked)", sync.standbys)
            } else {
                String::new()
            }
        )
    };
    let candidates = if sync.committed.is_empty() {
        "any standby (nothing is committed as synchronous)".to_string()
    } else if sync.committed.len() == 1 && !standbys.contains(&sync.committed[0].as_str()) {
        format!(
            "none running (only {} is known to hold every synchronously acknowledged commit)",
            sync.committed[0]
        )
    } else if sync.committed_quorum < sync.committed.len() {
        format!(
            "the most advanced of {} that answer ({} of them must)",
            sync.committed.join(", "),
            sync.committed.len() - sync.committed_quorum + 1
        )
    } else {
        sync.committed.join(", ")
    };
    format!(
        "Synchronous replication ({}): {now}; failover candidates: {candidates}",
        mode.join(", ")
    )
}

/// What a promotion lost, as known: "none", "2.0 KiB", ">= 8.0 KiB" (the old primary's
/// lease ran out: it may have written more after its last report), "unknown" (nothing
/// known, or a lower bound of nothing). Never "none" for a primary that was not stopped.
pub fn lost_text(e: &crate::HistoryEntry) -> String {
    if e.cancelled {
        return "-".to_string();
    }
    match (e.lost_bytes, e.lost_at_least) {
        (Some(0), false) => "none".to_string(),
        (Some(n), false) => bytes(n),
        (Some(n), true) if n > 0 => format!(">= {}", bytes(n)),
        _ => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PromoteStatus;
    use pgfm_core::{Lsn, Timeline};

    fn node(name: &str, kind: NodeKindStatus, port: Option<u16>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            kind,
            agent: Up::Up,
            db: if port.is_some() {
                DbStatus::Up
            } else {
                DbStatus::NotApplicable
            },
            address: "127.0.0.1".into(),
            agent_port: 7003,
            pg_port: port,
            lsn: port.map(|_| Lsn(0x3000060)),
            replayed_lsn: None,
            timeline: Some(Timeline(1)),
            lag_bytes: None,
            in_sync: None,
            priority: None,
            promotable: None,
            vip: None,
            sync_state: None,
            watchdog: None,
            maintenance: None,
            pending_restart: Vec::new(),
            tags: Vec::new(),
            upstream: None,
            reloaded: 0,
            restarted: 0,
            info: String::new(),
        }
    }

    fn healthy() -> ClusterStatus {
        let mut standby = node("pg2", NodeKindStatus::Standby, Some(5433));
        standby.replayed_lsn = Some(Lsn(0x3000060));
        standby.lag_bytes = Some(0);
        standby.in_sync = Some(true);
        standby.info = "streaming from pg1".into();
        ClusterStatus {
            cluster: "lab".into(),
            coordinator: Some("witness".into()),
            answered_by: "pg1".into(),
            generation: 1,
            primary: Some("pg1".into()),
            paused: false,
            auto_failover: true,
            max_lag_bytes: 1048576,
            nodes: vec![
                node("pg1", NodeKindStatus::Primary, Some(5432)),
                standby,
                node("witness", NodeKindStatus::Witness, None),
            ],
            allowed: vec!["pg1".into(), "pg2".into(), "witness".into()],
            priority_list: vec!["pg2".into()],
            promote_status: PromoteStatus {
                safe: true,
                message: "Standby database(s) in sync with primary. It is safe to promote.".into(),
            },
            vip: None,
            synchronous: None,
            problems: vec![],
            scheduled_switchover: None,
            scheduled_restart: None,
            last_restart: None,
            tls: true,
        }
    }

    #[test]
    fn node_status_text() {
        let status = healthy();
        insta::assert_snapshot!(
            "node_status_standby",
            super::node(&status.nodes[1], &status)
        );
        insta::assert_snapshot!(
            "node_status_witness",
            super::node(&status.nodes[2], &status)
        );
    }

    /// The history reads in the order things happened: the promotion to a generation, the
    /// switchovers cancelled in it, the promotion to the next. (A `pgfm promote` whose
    /// hand-over went on as a failover: promoted to 2, cancelled in 2, promoted to 3.)
    #[test]
    fn history_order() {
        let entry = |generation: u64, at_unix_ms: u64, cancelled: bool| crate::HistoryEntry {
            generation,
            at_unix_ms,
            from: Some("pg1".into()),
            to: "pg2".into(),
            reason: String::new(),
            lsn: None,
            lost_bytes: None,
            lost_at_least: false,
            cancelled,
            failover_instead: false,
        };
        let mut entries = [
            entry(3, 500, false),
            entry(2, 450, true),
            entry(2, 400, true),
            entry(2, 100, false),
            entry(1, 50, true),
        ];
        entries.sort_by_key(crate::HistoryEntry::order);
        let order: Vec<(u64, bool)> = entries
            .iter()
            .map(|e| (e.generation, e.cancelled))
            .collect();
        assert_eq!(
            order,
            [(1, true), (2, false), (2, true), (2, true), (3, false)]
        );
        assert_eq!(entries[2].at_unix_ms, 400);
    }

    #[test]
    fn history_text() {
        let entries = vec![
            crate::HistoryEntry {
                generation: 2,
                at_unix_ms: 1_795_629_345_862,
                from: Some("pg1".into()),
                to: "pg2".into(),
                reason: "the lease of primary pg1 expired".into(),
                lsn: Some(Lsn(0x3027C50)),
                lost_bytes: Some(0),
                lost_at_least: false,
                cancelled: false,
                failover_instead: false,
            },
            crate::HistoryEntry {
                generation: 3,
                at_unix_ms: 1_795_629_372_000,
                from: Some("pg2".into()),
                to: "pg3".into(),
                reason: "the lease of primary pg2 expired".into(),
                lsn: Some(Lsn(0x3037C50)),
                lost_bytes: Some(8192),
                lost_at_least: true,
                cancelled: false,
                failover_instead: false,
            },
            crate::HistoryEntry {
                generation: 4,
                at_unix_ms: 1_795_629_400_000,
                from: Some("pg3".into()),
                to: "pg1".into(),
                reason: "the lease of primary pg3 expired".into(),
                lsn: None,
                lost_bytes: Some(0),
                lost_at_least: true,
                cancelled: false,
                failover_instead: false,
            },
            crate::HistoryEntry {
                generation: 4,
                at_unix_ms: 1_795_629_500_000,
                from: Some("pg1".into()),
                to: "pg2".into(),
                reason: "switchover from pg1 to pg2 rolled back: pg2 did not replay up to 0/3037E68 within switchover_timeout (5 s) (at 0/3037DB0); pg1 stays the primary of generation 4".into(),
                lsn: None,
                lost_bytes: Some(0),
                lost_at_least: false,
                cancelled: true,
                failover_instead: false,
            },
        ];
        insta::assert_snapshot!(history(&entries));
        insta::assert_snapshot!("history_empty", history(&[]));
    }

    #[test]
    fn healthy_cluster_text() {
        let status = healthy();
        assert!(status.healthy());
        insta::assert_snapshot!(render(&status));
    }

    #[test]
    fn vip_cluster_text() {
        let mut status = healthy();
        status.vip = Some(crate::VipStatus {
            address: "10.0.0.100/24".into(),
            on: vec!["pg1".into()],
        });
        status.nodes[0].vip = Some(true);
        status.nodes[1].vip = Some(false);
        status.nodes[1].sync_state = Some("sync".into());
        status.synchronous = Some(crate::SyncStatus {
            mode: "on".into(),
            standbys: 1,
            minimum: 0,
            strict: false,
            source: "config".into(),
            committed: vec!["pg2".into()],
            committed_quorum: 1,
            waiting_for: vec!["pg2".into()],
            waiting_count: 1,
            degraded: false,
        });
        insta::assert_snapshot!(render(&status));
    }

    /// A node under maintenance: its kind in the table, and a section saying since when,
    /// by whom and whether its PostgreSQL is stopped.
    #[test]
    fn maintenance_cluster_text() {
        let mut status = healthy();
        let pg2 = &mut status.nodes[1];
        pg2.kind = NodeKindStatus::Maintenance;
        pg2.db = DbStatus::Down;
        pg2.lag_bytes = None;
        pg2.in_sync = None;
        pg2.info = "under maintenance (put there by dba@db1; pgfm maintenance pg2 off ends it): \
                    PostgreSQL stays stopped"
            .into();
        pg2.maintenance = Some(pgfm_core::model::Maintenance {
            since_unix_ms: 1_795_629_345_000,
            by: "dba@db1".into(),
            keep_running: false,
            forced: false,
        });
        status.priority_list.clear();
        status.promote_status = crate::PromoteStatus {
            safe: false,
            message: "No standby databases were found.".into(),
        };
        insta::assert_snapshot!(render(&status));
    }

    #[test]
    fn synchronous_replication_lines() {
        let sync =
            |mode: &str, standbys, minimum, committed: &[&str], quorum, waiting: &[&str], count| {
                let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
                crate::SyncStatus {
                    mode: mode.into(),
                    standbys,
                    minimum,
                    strict: minimum >= standbys,
                    source: "set-synchronous".into(),
                    committed: names(committed),
                    committed_quorum: quorum,
                    waiting_for: names(waiting),
                    waiting_count: count,
                    degraded: mode != "off" && count < standbys,
                }
            };
        let lines = [
            sync("quorum", 1, 0, &["pg2", "pg3"], 1, &["pg2", "pg3"], 1),
            sync("on", 2, 1, &["pg2"], 1, &["pg2"], 1),
            sync("on", 1, 1, &["pg2"], 1, &["pg2"], 1),
            sync("on", 1, 0, &[], 0, &[], 0),
            sync("on", 1, 0, &["pg1"], 1, &[], 0),
            sync("off", 1, 0, &["pg2"], 1, &[], 0),
            sync("off", 1, 0, &[], 0, &[], 0),
        ]
        .iter()
        .map(|s| super::sync_line(s, &["pg2", "pg3"]))
        .collect::<Vec<_>>()
        .join("\n");
        insta::assert_snapshot!(lines);
    }

    /// The primary's watchdog is armed; a standby's cannot be used.
    #[test]
    fn watchdog_cluster_text() {
        let mut status = healthy();
        let watchdog = |armed, problem: Option<&str>| crate::WatchdogStatus {
            mode: pgfm_core::WatchdogMode::Required,
            armed,
            timeout_s: Some(1),
            problem: problem.map(str::to_string),
        };
        status.nodes[0].watchdog = Some(watchdog(true, None));
        status.nodes[1].watchdog = Some(watchdog(
            false,
            Some("the watchdog driver is not running (nothing reads /tmp/pgfm-lab/pg2/watchdog)"),
        ));
        insta::assert_snapshot!(render(&status));
        insta::assert_snapshot!(
            "node_status_primary_watchdog",
            super::node(&status.nodes[0], &status)
        );
        // Every node off: no line.
        for n in &mut status.nodes[..2] {
            n.watchdog = Some(crate::WatchdogStatus {
                mode: pgfm_core::WatchdogMode::Off,
                armed: false,
                timeout_s: Some(1),
                problem: None,
            });
        }
        assert_eq!(watchdog_line(&status.nodes), None);
    }

    #[test]
    fn degraded_cluster_text() {
        let mut status = healthy();
        status.nodes[1].kind = NodeKindStatus::Idle;
        status.nodes[1].agent = Up::Down;
        status.nodes[1].db = DbStatus::Down;
        status.nodes[1].info = "agent stopped reporting".into();
        status.priority_list.clear();
        status.promote_status = PromoteStatus {
            safe: false,
            message: "No standby databases were found.".into(),
        };
        status.problems = vec!["bootstrap waits for reports from pg3".into()];
        status.paused = true;
        assert!(!status.healthy());
        insta::assert_snapshot!(render(&status));
    }

    /// `pgfm show-config`: the header, the sections, the history; a file that differs.
    #[test]
    fn settings_text() {
        let mut committed = pgfm_core::settings::CommittedSettings::first(
            Default::default(),
            "pg1 (its pgfm.toml, the first coordinator's)",
            1_795_629_345_862,
        );
        let mut next = committed.values.clone();
        next.switchover_timeout_ms = 8_000;
        committed.commit(next, "dba@db1", 1_795_629_400_000);
        let view = crate::SettingsView {
            revision: committed.revision,
            settings: committed.values,
            history: committed.history,
            file_differs: vec![
                "failover.switchover_timeout = 5s in this file; the cluster's is 8s".into(),
            ],
        };
        insta::assert_snapshot!(settings(&view));
    }
}
