//! The decision engine: `decide(&ClusterView, &LocalView, now) -> Vec<Action>`.
//!
//! Pure (invariant 6): no I/O, no clock, no randomness. The committed state is the intent,
//! the reports are observations; the engine says what this agent should do to bring one
//! towards the other, and every refusal comes back as an action carrying its reason, so
//! that the executor can log it and `cluster-status` can show it.

use std::collections::{BTreeMap, BTreeSet};

use crate::lease;
use crate::model::{
    Command, DataDirState, DbRole, NodeKind, NodeReport, Switchover, SyncMode, SyncRule,
};
use crate::types::Lsn;

mod action;
#[cfg(test)]
pub(crate) mod testing;
mod view;

pub use action::{Action, Decision};
pub use view::{ClusterView, LocalView, Measured, Observed, OnCrash, RejoinMode, Settings};

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
    }
    actions
}

/// The serving primary commits the timeline it runs on and its history, so that every node
/// can tell a standby that diverged from it (invariant 5), even once it is gone.
fn record_timeline(cluster: &ClusterView, local: &LocalView) -> Vec<Action> {
    if not_serving(cluster, local).is_some() {
        return Vec::new();
    }
    let state = &cluster.state;
    let me = &local.report;
    let Some(timeline) = me.timeline else {
        return Vec::new();
    };
    // A history that could not be read is not recorded as empty.
    let known = timeline.0 == 1 || !me.forks.is_empty();
    if !known || (state.timeline == Some(timeline) && state.forks == me.forks) {
        return Vec::new();
    }
    vec![Action::Propose(Command::SetTimeline {
        node: local.name.clone(),
        generation: state.generation,
        timeline,
        forks: me.forks.clone(),
    })]
}

/// The VIP follows the primary: this node takes it only while it is the committed primary,
/// its PostgreSQL runs writable, it holds the lease, and it is not handing over; it keeps it
/// only so long, or while its crashed PostgreSQL is being restarted in place.
fn place_vip(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let Some(vip) = &local.report.vip else {
        return Vec::new();
    };
    let generation = cluster.state.generation;
    match (not_serving(cluster, local), vip.held) {
        (None, false) => vec![Action::TakeVip { generation }],
        (Some(_), true) if restarting_in_place(cluster, local, now_ms) => Vec::new(),
        (Some(reason), true) => vec![Action::ReleaseVip { generation, reason }],
        _ => Vec::new(),
    }
}

/// The committed primary's PostgreSQL crashed and its agent restarts it in place: it holds
/// the lease (no other node can be promoted) and is within `crash_restart_bound`. Clients of
/// the VIP then get "connection refused" at once and reconnect as soon as it is back, rather
/// than wait out a connect timeout on an address nobody answers.
fn restarting_in_place(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> bool {
    let state = &cluster.state;
    let settings = &cluster.settings;
    state.primary.as_deref() == Some(local.name.as_str())
        && !state.lease_released
        && state.switchover.is_none()
        && local.lease_valid
        && settings.on_crash == OnCrash::Restart
        && local
            .crashed_at_ms
            .is_some_and(|c| now_ms < c + settings.crash_restart_bound_ms)
}

/// Why this node is not the serving primary (None: it is — the committed primary, running
/// writable, holding the lease, not handing over).
fn not_serving(cluster: &ClusterView, local: &LocalView) -> Option<String> {
    let state = &cluster.state;
    if state.primary.as_deref() != Some(local.name.as_str()) {
        Some(match &state.primary {
            Some(p) => format!("{p} is the primary"),
            None => "there is no primary".to_string(),
        })
    } else if state
        .switchover
        .as_ref()
        .is_some_and(|s| s.from == local.name)
    {
        Some("handing over to a new primary".to_string())
    } else if !(local.db_running && local.writable && local.report.role == Some(DbRole::Primary)) {
        Some("PostgreSQL is not running as the primary".to_string())
    } else if !local.lease_valid {
        Some("this node does not hold the primary lease".to_string())
    } else {
        None
    }
}

/// Synchronous replication on the serving primary, one step per decision. The committed
/// rule must hold for every commit acknowledged under PostgreSQL's setting, old and new: it
/// is widened first (more members, a smaller quorum), then `synchronous_standby_names`
/// changes, and the committed rule narrows once enough of the new members have flushed past
/// the WAL position where the new setting took over.
fn manage_sync(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    if not_serving(cluster, local).is_some() {
        return Vec::new();
    }
    let Some(current) = &local.report.sync else {
        return Vec::new();
    };
    let generation = cluster.state.generation;
    let committed = cluster.state.committed_sync();
    let desired = desired_sync(cluster, local, current, now_ms);
    let commit = |rule: SyncRule| {
        vec![Action::Propose(Command::SetSyncSet {
            node: local.name.clone(),
            generation,
            members: rule.names,
            quorum: rule.count,
        })]
    };
    if desired.is_async() {
        // Degrading to asynchronous is committed first: a primary cut off from the majority
        // cannot, so it keeps waiting rather than acknowledge commits a failover would lose.
        if !committed.is_async() {
            return commit(SyncRule::default());
        }
    } else if !covers(&committed, &desired) {
        return commit(if committed.is_async() {
            desired
        } else {
            SyncRule::new(
                committed.count.min(desired.count),
                committed.names.union(&desired.names).cloned().collect(),
            )
        });
    }
    let set = || {
        vec![Action::SetSyncStandbys {
            rule: desired.clone(),
            generation,
        }]
    };
    if *current != desired {
        return set();
    }
    if committed == desired {
        return Vec::new();
    }
    // Narrowing: every commit acknowledged under the old setting is before the switch
    // position; `desired.count` of the new members must have it all.
    let Some(switch) = local.report.sync_switch_lsn else {
        // An agent restarted since: set the same rule again to learn a switch position.
        return set();
    };
    let caught_up =
        desired
            .names
            .iter()
            .filter(|name| {
                local.report.replicas.iter().any(|r| {
                    r.application_name == **name && r.flush_lsn.is_some_and(|f| f >= switch)
                })
            })
            .count();
    if caught_up >= desired.count {
        return commit(desired);
    }
    Vec::new()
}

/// Whether every commit acknowledged under the synchronous `rule` is on `committed.count`
/// members of `committed`.
fn covers(committed: &SyncRule, rule: &SyncRule) -> bool {
    !committed.is_async() && rule.names.is_subset(&committed.names) && committed.count <= rule.count
}

/// What the primary's commits should wait for. `on`: the first `standbys` streaming,
/// promotable standbys (the current ones first: no churn, then by priority), each of them;
/// `quorum`: any `standbys` of every streaming, promotable standby. A named standby that
/// stopped streaming keeps its place while its agent still reports it running (a
/// reconnect, not a loss): that is the bound before the primary names fewer — at most
/// `report_ttl` after its host died. It never names fewer than `minimum`: it keeps the lost
/// ones (commits wait for them) or names members that are not there yet.
fn desired_sync(
    cluster: &ClusterView,
    local: &LocalView,
    current: &SyncRule,
    now_ms: u64,
) -> SyncRule {
    let sync = cluster.sync_settings();
    let limit = match sync.mode {
        SyncMode::Off => return SyncRule::default(),
        SyncMode::On => sync.standbys,
        SyncMode::Quorum => usize::MAX,
    };
    let state = &cluster.state;
    let candidate = |name: &str| {
        name != local.name
            && state
                .members
                .get(name)
                .is_some_and(|m| m.kind == NodeKind::Data && m.promotable && m.priority > 0)
    };
    let streaming: BTreeSet<&str> = local
        .report
        .replicas
        .iter()
        .filter(|r| r.state == "streaming" && candidate(&r.application_name))
        .map(|r| r.application_name.as_str())
        .collect();
    let priority = |name: &str| state.members.get(name).map_or(0, |m| m.priority);
    let mut order: Vec<&str> = streaming.iter().copied().collect();
    order.sort_by_key(|n| {
        (
            !state.sync_set.contains(*n),
            std::cmp::Reverse(priority(n)),
            *n,
        )
    });
    let mut names: BTreeSet<String> = order.into_iter().take(limit).map(str::to_string).collect();
    for name in current.names.iter().filter(|n| candidate(n)) {
        let alive = cluster
            .fresh_report(name, now_ms)
            .is_some_and(|r| r.db_up && r.role == Some(DbRole::Standby));
        if names.len() < limit && alive {
            names.insert(name.clone());
        }
    }
    if names.len() < sync.minimum {
        let mut others: Vec<&str> = current
            .names
            .iter()
            .map(String::as_str)
            .chain(state.sync_set.iter().map(String::as_str))
            .filter(|n| candidate(n))
            .collect();
        let mut rest: Vec<&str> = state
            .data_members()
            .map(|m| m.name.as_str())
            .filter(|n| candidate(n))
            .collect();
        rest.sort_by_key(|n| (std::cmp::Reverse(priority(n)), *n));
        others.extend(rest);
        for name in others {
            if names.len() >= sync.minimum {
                break;
            }
            names.insert(name.to_string());
        }
    }
    let count = match sync.mode {
        SyncMode::Quorum => sync.standbys,
        _ => names.len(),
    };
    SyncRule::new(count, names)
}

/// The coordinator's part: choose the first primary, and fail over when the primary's lease
/// is gone. Only `Propose`, `MeasureWal` and `ClusterHold`: quick, never local work.
pub fn coordinate(cluster: &ClusterView, now_ms: u64) -> Decision {
    match &cluster.state.primary {
        None => bootstrap(cluster, now_ms),
        Some(primary) => failover(cluster, primary, now_ms),
    }
}

fn bootstrap(cluster: &ClusterView, now_ms: u64) -> Vec<Action> {
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

fn failover(cluster: &ClusterView, primary: &str, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    let settings = &cluster.settings;
    if cluster.coordinator_since_ms.is_none() {
        return Vec::new();
    }
    if let Some(sw) = &state.switchover {
        return switchover(cluster, sw, now_ms);
    }
    let expires = lease::expired_at_ms(cluster.last_renewal_seen_ms, &settings.lease);
    let released = state.lease_released;
    if !released && now_ms < expires {
        if cluster.fresh_report(primary, now_ms).is_none() {
            return vec![cluster_hold(format!(
                "primary {primary} is not reporting: its lease runs out in {} ms, then a \
                 standby may be promoted",
                expires - now_ms
            ))];
        }
        return Vec::new();
    }
    let why = if released {
        format!("primary {primary} gave up its lease")
    } else {
        format!("the lease of primary {primary} expired")
    };
    // The primary's agent may be dead while its PostgreSQL still serves: promoting then
    // would make two writable primaries, and only an agent can fence it. So, unless the
    // primary gave its lease up, some other agent must have found its database down, and
    // none may have found it answering.
    // Invariant 10: only an agent able to judge says "down"; one whose probe failed on its
    // own side reports no verdict ("cannot tell") and does not count.
    let checks: Vec<(&str, &NodeReport)> = cluster
        .voters
        .iter()
        .filter(|v| v.as_str() != primary)
        .filter_map(|v| cluster.fresh_report(v, now_ms).map(|r| (v.as_str(), r)))
        .collect();
    let evidence = checks
        .iter()
        .map(|(v, r)| match (&r.sees_primary, &r.primary_check) {
            (_, Some(how)) => format!("{v}: {how}"),
            (Some(true), None) => format!("{v}: answering"),
            (Some(false), None) => format!("{v}: down"),
            (None, None) => format!("{v}: not checked"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let seen_by: Vec<&str> = checks
        .iter()
        .filter(|(_, r)| r.sees_primary == Some(true))
        .map(|(v, _)| *v)
        .collect();
    if !released && !seen_by.is_empty() {
        return vec![cluster_hold(format!(
            "{why} but its database still answers {}: not promoting while it may take \
             writes (restart its agent, or stop its PostgreSQL) [{evidence}]",
            seen_by.join(", ")
        ))];
    }
    if !released && !checks.iter().any(|(_, r)| r.sees_primary == Some(false)) {
        return vec![cluster_hold(format!(
            "{why}: waiting for another agent to find its database down before promoting \
             [{evidence}]"
        ))];
    }
    // The history says who judged the old primary down, and how.
    let judged = if released {
        why.clone()
    } else {
        format!("{why} (its database: {evidence})")
    };
    let manual = state
        .promotion_request
        .as_ref()
        .filter(|r| r.generation == state.generation);
    if manual.is_none() && !settings.auto_failover {
        return vec![cluster_hold(format!(
            "failover needed: {why}, and automatic failover is off (auto_failover = false): \
             run pgfm promote"
        ))];
    }
    if manual.is_none() && state.paused {
        return vec![cluster_hold(format!(
            "failover needed: {why}, but the cluster is paused (maintenance mode): run pgfm \
             resume, or pgfm promote"
        ))];
    }
    // The best position known anywhere, the old primary's last report included.
    let best = cluster
        .reports
        .values()
        .filter(|o| o.report.kind == NodeKind::Data)
        .filter_map(|o| o.report.wal_position())
        .max();
    let mut refused = Vec::new();
    let mut eligible = Vec::new();
    let wanted = manual.and_then(|r| r.to.as_deref());
    let force = manual.is_some_and(|r| r.force);
    for member in state
        .data_members()
        .filter(|m| m.name != primary && wanted.is_none_or(|w| w == m.name))
    {
        let name = member.name.as_str();
        if !member.promotable || member.priority == 0 {
            refused.push(format!("{name} is not promotable"));
            continue;
        }
        // Synchronous replication: only the committed sync set may hold every commit the
        // old primary acknowledged.
        if !state.sync_set.is_empty() && !state.sync_set.contains(name) && !force {
            refused.push(format!(
                "{name} is not a synchronous standby (the synchronous set is {})",
                state
                    .sync_set
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        }
        let Some(report) = cluster.fresh_report(name, now_ms) else {
            refused.push(format!("{name}'s agent is down"));
            continue;
        };
        // Invariant 10: `[watchdog] mode = "required"` never makes a primary without one.
        if let Some(problem) = report
            .watchdog
            .as_ref()
            .filter(|w| !w.allows_primary())
            .and_then(|w| w.problem.as_deref())
        {
            refused.push(format!(
                "{name} requires a watchdog and has none ({problem})"
            ));
            continue;
        }
        if !(report.db_up && report.role == Some(DbRole::Standby)) {
            refused.push(format!("{name} is not a running standby"));
            continue;
        }
        let Some(position) = report.wal_position() else {
            refused.push(format!("{name}'s WAL position is unknown"));
            continue;
        };
        // Invariant 5: a candidate is on the primary's timeline; WAL compared across
        // timelines says nothing about who holds the acknowledged commits.
        if let Some(why) = state.divergence(report) {
            refused.push(format!("{name} {why}"));
            continue;
        }
        if let (Some(theirs), Some(current), false) = (report.timeline, state.timeline, force) {
            if theirs != current {
                refused.push(format!(
                    "{name} is on timeline {theirs}, the primary was on timeline {current}"
                ));
                continue;
            }
        }
        // Invariant 5: no lagging promotion.
        let behind = best.map(|b| b.bytes_after(position)).unwrap_or(0);
        if behind > settings.max_lag && !force {
            refused.push(format!(
                "{name} is {behind} bytes behind the best known position (max_lag {})",
                settings.max_lag
            ));
            continue;
        }
        eligible.push((member.priority, position, name, behind));
    }
    // The most advanced first, as EFM does: the other standbys then hold no WAL the new
    // primary lacks and can follow it by a reload. Priority breaks ties.
    eligible.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)).then(a.2.cmp(b.2)));
    // Quorum (and a sync set that is changing members): every acknowledged commit is on
    // `quorum` of the set, so `len - quorum + 1` members reached after the old primary
    // stopped include one that has them all; the candidate must be as advanced as any of them.
    let committed = cluster.state.committed_sync();
    if !committed.is_async() && committed.count < committed.names.len() && !force {
        let need = committed.names.len() - committed.count + 1;
        // No commit was acknowledged after this moment (the lease ran out, or it was given up).
        let stopped = if released {
            cluster.last_renewal_seen_ms.unwrap_or(0)
        } else {
            expires
        };
        let reached: BTreeMap<&str, Lsn> = committed
            .names
            .iter()
            .filter_map(|m| {
                let measured = cluster.measured.get(m).filter(|w| w.at_ms >= stopped)?;
                Some((m.as_str(), measured.position?))
            })
            .collect();
        if reached.len() < need {
            let list = |names: Vec<&str>| {
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            };
            return vec![
                Action::MeasureWal {
                    members: committed.names.iter().cloned().collect(),
                    generation: state.generation,
                },
                cluster_hold(format!(
                    "failover needed: {why}; every acknowledged commit is on {} of the \
                     synchronous standbys {}: waiting to reach {need} of them (reached: {})",
                    committed.count,
                    list(committed.names.iter().map(String::as_str).collect()),
                    list(reached.keys().copied().collect()),
                )),
            ];
        }
        let (top_name, top) = reached
            .iter()
            .max_by_key(|(name, position)| (**position, std::cmp::Reverse(**name)))
            .map(|(n, p)| (*n, *p))
            .expect("need is at least 1");
        eligible.retain_mut(|(_, position, name, behind)| {
            match reached.get(name).filter(|p| **p >= top) {
                Some(measured) => {
                    // The measured position is the final one; reports may predate it.
                    *position = *measured;
                    *behind = best
                        .map(|b| b.max(top))
                        .unwrap_or(top)
                        .bytes_after(*measured);
                    true
                }
                None => {
                    refused.push(format!(
                        "{name} is behind synchronous standby {top_name} ({top})"
                    ));
                    false
                }
            }
        });
    }
    match eligible.first() {
        None => vec![cluster_hold(format!(
            "failover needed: {why}, but no standby can be promoted: {}",
            if refused.is_empty() {
                "there are no standbys".to_string()
            } else {
                refused.join("; ")
            }
        ))],
        Some((_, position, name, behind)) => vec![Action::Propose(Command::Promote {
            node: name.to_string(),
            generation: state.generation.next(),
            from: Some(primary.to_string()),
            reason: match manual {
                Some(r) if r.force => format!("pgfm promote --force: {judged}"),
                Some(_) => format!("pgfm promote: {judged}"),
                None => judged,
            },
            lsn: Some(*position),
            // What the old primary last reported is all that is known of what it wrote
            // (nothing: unknown); one whose lease ran out may have written more after it.
            lost_bytes: cluster
                .reports
                .get(primary)
                .and_then(|o| o.report.wal_position())
                .map(|_| *behind),
            at_unix_ms: cluster.wall_clock_ms,
            lease_renewals: (!released).then_some(state.lease_renewals),
            handover: None,
            lost_at_least: !released,
        })],
    }
}

/// The coordinator's part of a planned switchover: once the old primary has stopped and
/// handed over, promote the target as soon as it has replayed the old primary's final
/// record (its shutdown checkpoint), so nothing acknowledged is lost; roll back — the old
/// primary, which holds every commit and whose generation never changed, starts again as
/// primary — if the target is gone or a step overran `switchover_timeout` (invariant 9).
fn switchover(cluster: &ClusterView, sw: &Switchover, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    let timeout = cluster.settings.switchover_timeout_ms;
    // A forced hand-over may wait out a whole clean shutdown before it stops immediately:
    // it gets twice as long.
    let timeout = if sw.force { 2 * timeout } else { timeout };
    let overdue = cluster
        .switchover_step_ms
        .is_some_and(|at| now_ms >= at + timeout);
    let limit = format!("switchover_timeout ({} s)", timeout as f64 / 1000.0);
    let cancel = |why: String| {
        vec![Action::Propose(Command::CancelSwitchover {
            generation: state.generation,
            at_unix_ms: cluster.wall_clock_ms,
            reason: format!(
                "switchover from {} to {} rolled back: {why}; {} stays the primary of generation {}",
                sw.from, sw.to, sw.from, state.generation
            ),
        })]
    };
    let Some(final_lsn) = sw.final_lsn.filter(|_| state.lease_released) else {
        if overdue {
            return cancel(format!("{} did not hand over within {limit}", sw.from));
        }
        return vec![cluster_hold(format!(
            "switchover from {} to {}: waiting for {} to stop cleanly and hand over",
            sw.from, sw.to, sw.from
        ))];
    };
    let target = cluster
        .fresh_report(&sw.to, now_ms)
        .filter(|r| r.db_up && r.role == Some(DbRole::Standby));
    match target {
        // The shutdown checkpoint is the last record: replaying past its start means
        // replaying it whole.
        Some(r) if r.replayed_lsn.is_some_and(|l| l > final_lsn) || sw.force => {
            let replayed = r.replayed_lsn.unwrap_or_default();
            let lost = if replayed > final_lsn {
                0
            } else {
                final_lsn.bytes_after(replayed)
            };
            vec![Action::Propose(Command::Promote {
                node: sw.to.clone(),
                generation: state.generation.next(),
                from: Some(sw.from.clone()),
                reason: if sw.unclean {
                    format!(
                        "pgfm promote --force: {} could not stop cleanly; {} promoted with what \
                         it had received",
                        sw.from, sw.to
                    )
                } else if sw.force {
                    format!("pgfm promote --force: {} handed over to {}", sw.from, sw.to)
                } else {
                    format!("switchover from {} to {}", sw.from, sw.to)
                },
                lsn: r.replayed_lsn,
                // After an unclean stop the old primary's end of WAL is not known.
                lost_bytes: (!sw.unclean).then_some(lost),
                at_unix_ms: cluster.wall_clock_ms,
                lease_renewals: None,
                handover: Some(final_lsn),
                lost_at_least: false,
            })]
        }
        Some(r) => {
            let at = r
                .replayed_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into());
            if overdue {
                return cancel(format!(
                    "{} did not replay up to {final_lsn} within {limit} (at {at})",
                    sw.to
                ));
            }
            vec![cluster_hold(format!(
                "switchover to {}: waiting for it to replay up to {final_lsn} (at {at}; rolled \
                 back after {limit})",
                sw.to
            ))]
        }
        None => cancel(format!("{} is no longer a running standby", sw.to)),
    }
}

/// A data node's part: bring its own PostgreSQL to the role the committed state gives it.
fn reconcile_local(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let me = &local.report;
    let Some(primary) = cluster.state.primary.as_deref() else {
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
    if primary == local.name {
        reconcile_primary(cluster, local, now_ms)
    } else {
        reconcile_standby(cluster, local, primary, now_ms)
    }
}

fn reconcile_primary(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    let settings = &cluster.settings;
    let me = &local.report;
    let generation = state.generation;
    if let Some(sw) = state
        .switchover
        .as_ref()
        .filter(|s| s.from == local.name && s.generation == generation)
    {
        if state.lease_released {
            return vec![hold(format!(
                "switchover: handed over to {}, waiting for its promotion",
                sw.to
            ))];
        }
        // The target must take the final WAL from this primary: a target that does not
        // stream now would wait for the shutdown checkpoint for ever.
        let streaming = me
            .replicas
            .iter()
            .any(|r| r.application_name == sw.to && r.state == "streaming");
        if local.db_running && me.db_up && !streaming && !sw.force {
            return vec![hold(format!(
                "switchover: waiting for {} to stream from this primary before handing over",
                sw.to
            ))];
        }
        return vec![Action::HandOver {
            to: sw.to.clone(),
            generation,
            seq: sw.seq,
            force: sw.force,
        }];
    }
    if local.db_running {
        if me.db_up && me.role == Some(DbRole::Standby) {
            // Invariant 1: the promotion is committed; the lease comes before the writes.
            if !local.lease_valid {
                return vec![hold(format!(
                    "promoted in generation {generation}: waiting for the lease before pg_promote"
                ))];
            }
            return vec![Action::Promote { generation }];
        }
        if me.db_up && me.role == Some(DbRole::Primary) {
            let missing: Vec<String> = state
                .data_members()
                .filter(|m| m.name != local.name)
                .map(|m| slot_for(&m.name))
                .filter(|slot| !me.slots.contains(slot))
                .collect();
            if !missing.is_empty() {
                return vec![Action::EnsureSlots {
                    slots: missing,
                    generation,
                }];
            }
            let departed: Vec<String> = state
                .departed
                .iter()
                .map(|n| slot_for(n))
                .filter(|slot| me.slots.contains(slot))
                .collect();
            if !departed.is_empty() {
                return vec![Action::DropSlots {
                    slots: departed,
                    generation,
                }];
            }
        }
        return Vec::new();
    }
    if state.lease_released {
        return vec![hold(format!(
            "gave up the lease of generation {generation}: waiting for a standby to take over"
        ))];
    }
    if let Some(crashed) = local.crashed_at_ms {
        let give_up = match settings.on_crash {
            OnCrash::Failover => true,
            OnCrash::Restart => now_ms >= crashed + settings.crash_restart_bound_ms,
        };
        if give_up {
            return vec![
                Action::Propose(Command::ReleaseLease {
                    node: local.name.clone(),
                    generation,
                }),
                hold(format!(
                    "PostgreSQL crashed and is not back: giving up the lease of generation \
                     {generation}"
                )),
            ];
        }
    }
    if local.start_failures >= settings.start_attempts {
        return vec![
            Action::Propose(Command::ReleaseLease {
                node: local.name.clone(),
                generation,
            }),
            hold(format!(
                "{}: giving up the lease of generation {generation}",
                start_failures(local)
            )),
        ];
    }
    match me.data_dir {
        None => vec![hold("data_dir could not be read".to_string())],
        Some(DataDirState::Empty) => vec![hold(format!(
            "named primary of generation {generation} but data_dir is empty"
        ))],
        // Invariant 4: start as the primary only while holding the lease.
        Some(_) if !local.lease_valid => vec![hold(format!(
            "primary of generation {generation}: waiting for the lease before starting"
        ))],
        Some(_) => vec![Action::StartPrimary { generation }],
    }
}

fn reconcile_standby(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    now_ms: u64,
) -> Vec<Action> {
    let state = &cluster.state;
    let me = &local.report;
    let generation = state.generation;
    let upstream = primary.to_string();
    let primary_report = cluster
        .fresh_report(primary, now_ms)
        .filter(|r| r.db_up && r.role == Some(DbRole::Primary));
    if local.db_running {
        if local.writable {
            return vec![Action::Fence {
                generation,
                reason: format!(
                    "PostgreSQL accepts writes but the primary of generation {generation} is \
                     {primary}"
                ),
            }];
        }
        // Invariant 5: WAL the primary's timeline lacks can never be streamed over; it is
        // rewound away (or the node re-cloned) before the node may stream or be promoted.
        if let Some(why) = state.divergence(me).filter(|_| me.db_up) {
            return vec![Action::StopToRewind {
                generation,
                reason: format!("diverged from primary {primary}: this standby {why}"),
            }];
        }
        let wanted = state
            .members
            .get(primary)
            .and_then(|m| Some(format!("{}:{}", m.pg_host.as_ref()?, m.pg_port?)));
        if me.db_up
            && me.role == Some(DbRole::Standby)
            && wanted.is_some()
            && me.conninfo_upstream != wanted
        {
            return vec![Action::Follow {
                upstream,
                generation,
            }];
        }
        return Vec::new();
    }
    match me.data_dir {
        None => vec![hold("data_dir could not be read".to_string())],
        Some(DataDirState::Empty) => match primary_report {
            Some(_) => vec![Action::Clone {
                upstream,
                generation,
            }],
            None => vec![hold(format!(
                "empty data_dir: waiting for primary {primary} to accept connections"
            ))],
        },
        Some(DataDirState::Primary) | Some(DataDirState::FencedPrimary) => {
            let settings = &cluster.settings;
            if settings.rejoin == RejoinMode::Manual && !local.resume_requested {
                return vec![hold(format!(
                    "former primary, rejoin = manual: run pgfm resume on this node to rejoin \
                     {primary}"
                ))];
            }
            if primary_report.is_none() {
                return vec![hold(format!(
                    "former primary: waiting for primary {primary} to accept connections to \
                     rewind against it"
                ))];
            }
            match (&local.rewind_failed, settings.rejoin) {
                (None, _) => vec![Action::Rewind {
                    upstream,
                    generation,
                }],
                (Some(_), RejoinMode::RewindOrClone) => vec![Action::Reclone {
                    upstream,
                    generation,
                }],
                (Some(error), _) => vec![hold(format!(
                    "rewind against {primary} failed ({error}); fix it, then run pgfm resume, \
                     or set rejoin = \"rewind-or-clone\""
                ))],
            }
        }
        Some(DataDirState::Standby) if local.start_failures >= cluster.settings.start_attempts => {
            let why = start_failures(local);
            match (cluster.settings.rejoin, primary_report) {
                _ if local.start_recloned => vec![hold(format!(
                    "{why}, also after a fresh clone: the cause is outside the data directory \
                     (settings, port, memory): fix it, then run pgfm resume on this node"
                ))],
                (RejoinMode::RewindOrClone, Some(_)) => vec![Action::Reclone {
                    upstream,
                    generation,
                }],
                (RejoinMode::RewindOrClone, None) => vec![hold(format!(
                    "{why}: waiting for primary {primary} to accept connections to re-clone \
                     from it"
                ))],
                _ => vec![hold(format!(
                    "{why}: fix the data directory, then run pgfm resume on this node (or set \
                     rejoin = \"rewind-or-clone\" to re-clone it)"
                ))],
            }
        }
        // Invariant 4: every node that is not the primary boots as a standby.
        Some(DataDirState::Standby) => vec![Action::StartStandby {
            upstream,
            generation,
        }],
    }
}

/// "PostgreSQL failed to start 3 times in a row (last: ...)".
fn start_failures(local: &LocalView) -> String {
    format!(
        "PostgreSQL failed to start {} times in a row (last: {})",
        local.start_failures,
        local.start_error.as_deref().unwrap_or("unknown error")
    )
}

/// The replication slot name of a node (as `pgfm-postgres` makes it).
pub fn slot_for(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
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
    use crate::decide::testing::*;
    use crate::model::SyncSettings;
    use crate::types::{Generation, Lsn, Timeline};

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
        // A former primary waits for the primary to be up, then rewinds before it starts.
        check(
            &v,
            "pg3",
            false,
            &["hold: former primary: waiting for primary pg1 to accept connections to rewind against it"],
        );
        // Invariant 4: without the lease, the primary does not start.
        let mut me = local(&v, "pg1", false);
        me.lease_valid = false;
        check_local(
            &v,
            &me,
            2_000,
            &["hold: primary of generation 1: waiting for the lease before starting"],
        );
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
        check(&v, "pg1", false, &["slots pg2 g1"]);
        let mut v = v;
        v.reports.get_mut("pg1").unwrap().report.slots = vec!["pg2".into()];
        check(&v, "pg1", false, &[]);
        // A disallowed node's slot goes; other slots (an operator's own) stay.
        v.reports.get_mut("pg1").unwrap().report.slots =
            vec!["pg2".into(), "pg3".into(), "backup".into()];
        v.state.departed.insert("pg3".into());
        check(&v, "pg1", false, &["drop slots pg3 g1"]);
    }

    #[test]
    fn a_node_running_in_the_wrong_role_is_fenced_or_promoted() {
        let v = view(
            Some("pg1"),
            &[
                ("pg1", Running(DbRole::Standby)),
                ("pg2", Running(DbRole::Primary)),
            ],
        );
        check(&v, "pg1", false, &["pg_promote g1"]);
        check(&v, "pg2", false, &["fence g1"]);
        let mut me = local(&v, "pg1", false);
        me.lease_valid = false;
        check_local(
            &v,
            &me,
            2_000,
            &["hold: promoted in generation 1: waiting for the lease before pg_promote"],
        );
    }

    #[test]
    fn a_standby_follows_the_committed_primary() {
        let mut v = view(
            Some("pg1"),
            &[
                ("pg1", Running(DbRole::Primary)),
                ("pg2", Running(DbRole::Standby)),
            ],
        );
        check(&v, "pg2", false, &[]);
        v.reports.get_mut("pg2").unwrap().report.conninfo_upstream = Some("127.0.0.1:5099".into());
        check(&v, "pg2", false, &["follow pg1 g1"]);
    }

    #[test]
    fn failover_waits_for_the_lease_to_expire() {
        let v = failover_view();
        // lease 3000 + drift 500 from the last renewal seen at 0.
        check_coordinator(&v, 3_499, &["cluster hold: primary pg1 is not reporting: its lease runs out in 1 ms, then a standby may be promoted"]);
        check_coordinator(&v, 3_500, &["promote pg2 g2 from pg1 losing 0"]);
        // A coordinator elected at 2000 counts from the last renewal it applied, not from
        // its election (the agent makes it wait until it has applied its own term's entry);
        // one that has not caught up yet decides nothing.
        let mut late = v.clone();
        late.coordinator_since_ms = Some(2_000);
        check_coordinator(&late, 3_500, &["promote pg2 g2 from pg1 losing 0"]);
        late.coordinator_since_ms = None;
        check_coordinator(&late, 9_000, &[]);
        // A renewal seen later restarts the count.
        let mut renewed = v.clone();
        renewed.last_renewal_seen_ms = Some(3_000);
        check_coordinator(&renewed, 6_499, &["cluster hold: primary pg1 is not reporting: its lease runs out in 1 ms, then a standby may be promoted"]);
        // While the primary reports, nothing is said.
        renewed.reports.get_mut("pg1").unwrap().received_at_ms = 6_000;
        check_coordinator(&renewed, 6_499, &[]);
        // A released lease needs no wait.
        let mut released = v;
        released.state.lease_released = true;
        check_coordinator(&released, 100, &["promote pg2 g2 from pg1 losing 0"]);
    }

    #[test]
    fn failover_chooses_by_position_then_priority_and_never_a_lagging_node() {
        let mut v = failover_view();
        // Equal positions: pg2 (priority 100) beats pg3 (50).
        check_coordinator(&v, 9_000, &["promote pg2 g2 from pg1 losing 0"]);
        // pg3 is further ahead: it wins whatever its priority.
        v.reports.get_mut("pg3").unwrap().report.received_lsn = Some(Lsn(1_500_000));
        check_coordinator(&v, 9_000, &["promote pg3 g2 from pg1 losing 0"]);
        // A non-promotable node ahead of everyone only raises the bar for the others.
        v.state.members.get_mut("pg3").unwrap().promotable = false;
        v.reports.get_mut("pg3").unwrap().report.received_lsn = Some(Lsn(3_000_000));
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: failover needed: the lease of primary pg1 expired, but no standby can be promoted: pg2 is 2000000 bytes behind the best known position (max_lag 1048576); pg3 is not promotable"],
        );
        v.state.members.get_mut("pg3").unwrap().promotable = true;
        // Both lag behind what the old primary last reported: nobody is promoted.
        v.reports.get_mut("pg1").unwrap().report.current_lsn = Some(Lsn(9_000_000));
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: failover needed: the lease of primary pg1 expired, but no standby can be promoted: pg2 is 8000000 bytes behind the best known position (max_lag 1048576); pg3 is 6000000 bytes behind the best known position (max_lag 1048576)"],
        );
    }

    #[test]
    fn failover_never_picks_a_non_promotable_or_stopped_node() {
        let mut v = failover_view();
        v.state.members.get_mut("pg2").unwrap().promotable = false;
        v.reports.get_mut("pg3").unwrap().report.db_up = false;
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: failover needed: the lease of primary pg1 expired, but no standby can be promoted: pg2 is not promotable; pg3 is not a running standby"],
        );
        // `[watchdog] mode = "required"` without a usable watchdog: never the new primary.
        let mut v = failover_view();
        v.reports.get_mut("pg2").unwrap().report.watchdog = Some(crate::model::WatchdogReport {
            mode: crate::model::WatchdogMode::Required,
            armed: false,
            problem: Some("/dev/watchdog: No such file or directory".into()),
        });
        check_coordinator(&v, 9_000, &["promote pg3 g2 from pg1 losing 0"]);
    }

    #[test]
    fn no_failover_while_the_primary_database_still_answers() {
        let mut v = failover_view();
        v.reports.get_mut("pg2").unwrap().report.sees_primary = Some(true);
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: the lease of primary pg1 expired but its database still answers pg2: not promoting while it may take writes (restart its agent, or stop its PostgreSQL) [pg2: answering; pg3: down; witness: down]"],
        );
    }

    #[test]
    fn no_failover_before_another_agent_found_the_primary_database_down() {
        let mut v = failover_view();
        for o in v.reports.values_mut() {
            o.report.sees_primary = None;
        }
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: the lease of primary pg1 expired: waiting for another agent to find its database down before promoting [pg2: not checked; pg3: not checked; witness: not checked]"],
        );
        v.reports.get_mut("witness").unwrap().report.sees_primary = Some(false);
        check_coordinator(&v, 9_000, &["promote pg2 g2 from pg1 losing 0"]);
    }

    #[test]
    fn a_switchover_hands_over_then_promotes_once_the_target_replayed_everything() {
        let mut v = primary_with(&["pg2"]);
        v.state.switchover = Some(switchover_pg1_to_pg2());
        check(&v, "pg1", false, &["hand over to pg2 g1"]);
        check_coordinator(
            &v,
            2_000,
            &["cluster hold: switchover from pg1 to pg2: waiting for pg1 to stop cleanly and hand over"],
        );
        v.state.lease_released = true;
        v.state.switchover.as_mut().unwrap().final_lsn = Some(Lsn(1_000_000));
        check(
            &v,
            "pg1",
            false,
            &["hold: switchover: handed over to pg2, waiting for its promotion"],
        );
        check_coordinator(&v, 2_000, &["cluster hold: switchover to pg2: waiting for it to replay up to 0/F4240 (at 0/F4240; rolled back after switchover_timeout (5 s))"]);
        v.reports.get_mut("pg2").unwrap().report.replayed_lsn = Some(Lsn(1_000_120));
        check_coordinator(&v, 2_000, &["promote pg2 g2 from pg1 losing 0"]);
        v.reports.get_mut("pg2").unwrap().report.db_up = false;
        check_coordinator(
            &v,
            2_000,
            &["cancel switchover: switchover from pg1 to pg2 rolled back: pg2 is no longer a running standby; pg1 stays the primary of generation 1"],
        );
    }

    /// Issue 11, case 1: a target that does not stream is waited for before the hand-over,
    /// and every step of a switchover ends within `switchover_timeout`: rolled back, the old
    /// primary (generation unchanged) takes over again; `promote --force` skips the waits.
    #[test]
    fn a_switchover_that_cannot_finish_is_rolled_back_in_time() {
        let mut v = primary_with(&["pg2"]);
        v.state.switchover = Some(switchover_pg1_to_pg2());
        v.reports.get_mut("pg1").unwrap().report.replicas.clear();
        check(
            &v,
            "pg1",
            false,
            &["hold: switchover: waiting for pg2 to stream from this primary before handing over"],
        );
        // The step started at 1 s; 5 s later the coordinator gives up.
        check_coordinator(&v, 6_000, &["cancel switchover: switchover from pg1 to pg2 rolled back: pg1 did not hand over within switchover_timeout (5 s); pg1 stays the primary of generation 1"]);
        v.state.switchover.as_mut().unwrap().force = true;
        check(&v, "pg1", false, &["hand over to pg2 g1"]);
        // Handed over, but the target never gets the shutdown checkpoint.
        for o in v.reports.values_mut() {
            o.received_at_ms = 5_000;
        }
        v.state.switchover.as_mut().unwrap().force = false;
        v.state.lease_released = true;
        v.state.switchover.as_mut().unwrap().final_lsn = Some(Lsn(1_000_000));
        check_coordinator(&v, 5_999, &["cluster hold: switchover to pg2: waiting for it to replay up to 0/F4240 (at 0/F4240; rolled back after switchover_timeout (5 s))"]);
        check_coordinator(&v, 6_000, &["cancel switchover: switchover from pg1 to pg2 rolled back: pg2 did not replay up to 0/F4240 within switchover_timeout (5 s) (at 0/F4240); pg1 stays the primary of generation 1"]);
        // pgfm promote --force: the target is promoted, the final record lost.
        v.state.switchover.as_mut().unwrap().force = true;
        check_coordinator(&v, 6_000, &["promote pg2 g2 from pg1 losing 0"]);
        // Forced through an unclean stop: what was lost is not known, and the history says so.
        v.state.switchover.as_mut().unwrap().unclean = true;
        let promoted = coordinate(&v, 6_000);
        assert!(
            matches!(
                promoted.as_slice(),
                [Action::Propose(Command::Promote { lost_bytes: None, handover: Some(_), reason, .. })]
                    if reason.contains("pg1 could not stop cleanly")
            ),
            "{promoted:?}"
        );
    }

    /// Issue 11, case 5: a standby that stayed with a cut-off primary holds WAL past the point
    /// where the new primary's timeline forked; it is stopped to be rewound, never followed
    /// as it is, and never promoted. A standby behind the fork point follows as usual.
    #[test]
    fn a_diverged_standby_is_rewound_and_never_promoted() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.state.timeline = Some(Timeline(2));
        v.state.forks = vec![crate::model::TimelineFork {
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

    /// The serving primary commits its timeline and history once; one whose history file
    /// could not be read (timeline above 1, no forks) records nothing.
    #[test]
    fn the_primary_records_its_timeline() {
        let mut v = primary_with(&["pg2"]);
        v.reports.get_mut("pg1").unwrap().report.slots = vec![slot_for("pg2")];
        v.reports.get_mut("pg1").unwrap().report.timeline = Some(Timeline(1));
        check(&v, "pg1", false, &["propose SetTimeline { node: \"pg1\", generation: Generation(1), timeline: Timeline(1), forks: [] }"]);
        v.state.timeline = Some(Timeline(1));
        check(&v, "pg1", false, &[]);
        v.reports.get_mut("pg1").unwrap().report.timeline = Some(Timeline(2));
        check(&v, "pg1", false, &[]);
    }

    /// Issue 11, case 2: a PostgreSQL that keeps failing to start is re-cloned under
    /// `rewind-or-clone`, held with the fix otherwise; a primary gives up its lease.
    #[test]
    fn repeated_start_failures_end_in_a_reclone_or_a_hold() {
        let v = view(
            Some("pg1"),
            &[
                ("pg1", Running(DbRole::Primary)),
                ("pg2", Stopped(Recovering)),
                ("witness", Stopped(Empty)),
            ],
        );
        let mut me = local(&v, "pg2", false);
        me.start_failures = 2;
        check_local(&v, &me, 2_000, &["start standby of pg1 g1"]);
        me.start_failures = 3;
        me.start_error = Some("PANIC: could not locate a valid checkpoint record".into());
        check_local(&v, &me, 2_000, &["reclone from pg1 g1"]);
        // Once only: a start that fails after a fresh clone has another cause.
        let mut again = me.clone();
        again.start_recloned = true;
        check_local(&v, &again, 2_000, &["hold: PostgreSQL failed to start 3 times in a row (last: PANIC: could not locate a valid checkpoint record), also after a fresh clone: the cause is outside the data directory (settings, port, memory): fix it, then run pgfm resume on this node"]);
        let mut manual = v.clone();
        manual.settings.rejoin = RejoinMode::Rewind;
        check_local(&manual, &me, 2_000, &["hold: PostgreSQL failed to start 3 times in a row (last: PANIC: could not locate a valid checkpoint record): fix the data directory, then run pgfm resume on this node (or set rejoin = \"rewind-or-clone\" to re-clone it)"]);
        let v = view(
            Some("pg1"),
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Running(DbRole::Standby)),
                ("witness", Stopped(Empty)),
            ],
        );
        let mut me = local(&v, "pg1", false);
        me.start_failures = 3;
        check_local(&v, &me, 2_000, &["release pg1 g1", "hold: PostgreSQL failed to start 3 times in a row (last: unknown error): giving up the lease of generation 1"]);
    }

    #[test]
    fn the_vip_is_carried_only_by_the_serving_primary() {
        let mut v = primary_with(&["pg2"]);
        let vip = |held| {
            Some(crate::model::VipReport {
                address: "10.0.0.100/24".into(),
                held,
            })
        };
        for node in ["pg1", "pg2"] {
            v.reports.get_mut(node).unwrap().report.vip = vip(false);
        }
        v.reports.get_mut("pg1").unwrap().report.slots = vec![slot_for("pg2")];
        check(&v, "pg1", false, &["take vip g1"]);
        check(&v, "pg2", false, &[]);
        // Held where it belongs: nothing to do.
        v.reports.get_mut("pg1").unwrap().report.vip = vip(true);
        check(&v, "pg1", false, &[]);
        // Without the lease the primary gives it up (the lease loop fences it too).
        let mut me = local(&v, "pg1", false);
        me.lease_valid = false;
        check_local(
            &v,
            &me,
            2_000,
            &["release vip g1: this node does not hold the primary lease"],
        );
        // PostgreSQL crashed and is restarted in place: the VIP stays (clients are refused
        // at once, nobody else can be promoted while the lease holds); past the bound, it
        // goes before the lease is given up.
        v.reports.get_mut("pg1").unwrap().report.db_up = false;
        let mut me = local(&v, "pg1", false);
        me.crashed_at_ms = Some(1_000);
        check_local(&v, &me, 2_000, &["start primary g1"]);
        check_local(
            &v,
            &me,
            11_000,
            &[
                "release vip g1: PostgreSQL is not running as the primary",
                "release pg1 g1",
                "hold: PostgreSQL crashed and is not back: giving up the lease of generation 1",
            ],
        );
        me.lease_valid = false;
        check_local(
            &v,
            &me,
            2_000,
            &[
                "release vip g1: PostgreSQL is not running as the primary",
                "hold: primary of generation 1: waiting for the lease before starting",
            ],
        );
        v.reports.get_mut("pg1").unwrap().report.db_up = true;
        // A switchover releases it before the hand-over stops the database.
        v.state.switchover = Some(switchover_pg1_to_pg2());
        check(
            &v,
            "pg1",
            false,
            &[
                "release vip g1: handing over to a new primary",
                "hand over to pg2 g1",
            ],
        );
        v.state.switchover = None;
        // A standby that finds the VIP on itself (a stale address after a reboot) drops it.
        v.reports.get_mut("pg2").unwrap().report.vip = vip(true);
        check(&v, "pg2", false, &["release vip g1: pg1 is the primary"]);
        // The new primary takes it only once PostgreSQL runs as the primary.
        v.state.primary = Some("pg2".into());
        v.state.generation = Generation(2);
        v.reports.get_mut("pg2").unwrap().report.vip = vip(false);
        check(&v, "pg2", false, &["pg_promote g2"]);
        v.reports.get_mut("pg2").unwrap().report = report("pg2", Running(DbRole::Primary));
        v.reports.get_mut("pg2").unwrap().report.vip = vip(false);
        let actions = show(decide(&v, &local(&v, "pg2", false), 2_000));
        assert_eq!(actions.first().map(String::as_str), Some("take vip g2"));
    }

    #[test]
    fn synchronous_standbys_are_committed_before_postgres_widens_and_after_it_narrows() {
        let mut v = primary_with(&["pg2"]);
        v.settings.sync.mode = SyncMode::On;
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.slots = vec![slot_for("pg2")];
            r.replicas = vec![streaming("pg2", 900_000)];
            r.sync = Some(SyncRule::default());
        }
        // Widen: the set is committed first, then PostgreSQL waits for pg2.
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg2) g1"]);
        v.state.sync_set = ["pg2".to_string()].into();
        v.state.sync_quorum = 1;
        check(&v, "pg1", false, &["sync FIRST 1 (pg2) g1"]);
        v.reports.get_mut("pg1").unwrap().report.sync = Some(rule(1, &["pg2"]));
        check(&v, "pg1", false, &[]);

        // pg2 stops streaming but its agent says it runs: a reconnect, keep waiting.
        v.reports.get_mut("pg1").unwrap().report.replicas.clear();
        check(&v, "pg1", false, &[]);
        // Its host died (no fresh report). Strict: keep waiting for it.
        v.reports.get_mut("pg2").unwrap().received_at_ms = 0;
        v.settings.sync.minimum = 1;
        check_local(&v, &local(&v, "pg1", false), 10_000, &[]);
        // Not strict: the degradation is committed first (a primary cut off from the
        // majority cannot, so it keeps waiting), then PostgreSQL stops waiting.
        v.settings.sync.minimum = 0;
        let me = |v: &ClusterView| {
            let mut l = local(v, "pg1", false);
            l.report = v.reports["pg1"].report.clone();
            l
        };
        v.reports.get_mut("pg1").unwrap().received_at_ms = 10_000;
        check_local(&v, &me(&v), 10_000, &["commit sync asynchronous g1"]);
        v.state.sync_set.clear();
        v.state.sync_quorum = 0;
        check_local(&v, &me(&v), 10_000, &["sync asynchronous g1"]);
        v.reports.get_mut("pg1").unwrap().report.sync = Some(SyncRule::default());
        check_local(&v, &me(&v), 10_000, &[]);
    }

    #[test]
    fn a_sync_role_moves_only_once_the_new_standby_has_caught_up() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.settings.sync.mode = SyncMode::On;
        v.state.sync_set = ["pg2".to_string()].into();
        v.state.sync_quorum = 1;
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.slots = vec![slot_for("pg2"), slot_for("pg3")];
            // pg2 is gone; pg3 streams.
            r.replicas = vec![streaming("pg3", 900_000)];
            r.sync = Some(rule(1, &["pg2"]));
        }
        check(&v, "pg1", false, &["commit sync ANY 1 (pg2,pg3) g1"]);
        v.state.sync_set = ["pg2".to_string(), "pg3".to_string()].into();
        v.state.sync_quorum = 1;
        check(&v, "pg1", false, &["sync FIRST 1 (pg3) g1"]);
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.sync = Some(rule(1, &["pg3"]));
            r.sync_switch_lsn = Some(Lsn(950_000));
        }
        // pg3 has not flushed past the switch yet: pg2 stays a candidate.
        check(&v, "pg1", false, &[]);
        v.reports.get_mut("pg1").unwrap().report.replicas = vec![streaming("pg3", 960_000)];
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg3) g1"]);
    }

    #[test]
    fn failover_promotes_only_a_synchronous_standby() {
        let mut v = failover_view();
        v.state.sync_set = ["pg3".to_string()].into();
        v.state.sync_quorum = 1;
        // pg2 is more advanced, but only pg3 may hold every acknowledged commit.
        v.reports.get_mut("pg2").unwrap().report.received_lsn = Some(Lsn(1_000_500));
        v.reports.get_mut("pg2").unwrap().report.replayed_lsn = Some(Lsn(1_000_500));
        check_coordinator(&v, 10_000, &["promote pg3 g2 from pg1 losing 500"]);
        // The synchronous standby is gone: nobody else is promoted.
        v.reports.get_mut("pg3").unwrap().report.db_up = false;
        let actions = show(decide(&v, &local(&v, "witness", true), 10_000));
        assert!(
            actions[0].contains("no standby can be promoted")
                && actions[0].contains("pg2 is not a synchronous standby"),
            "{actions:?}"
        );
    }

    #[test]
    fn quorum_waits_for_any_n_of_every_streaming_standby_and_narrows_after_catch_up() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.settings.sync.mode = SyncMode::Quorum;
        let me = |v: &ClusterView| {
            let mut l = local(v, "pg1", false);
            l.report = v.reports["pg1"].report.clone();
            l
        };
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.slots = vec![slot_for("pg2"), slot_for("pg3")];
            r.replicas = vec![streaming("pg2", 900_000), streaming("pg3", 900_000)];
            r.sync = Some(SyncRule::default());
        }
        check(&v, "pg1", false, &["commit sync ANY 1 (pg2,pg3) g1"]);
        v.state.sync_set = ["pg2".to_string(), "pg3".to_string()].into();
        v.state.sync_quorum = 1;
        check(&v, "pg1", false, &["sync ANY 1 (pg2,pg3) g1"]);
        v.reports.get_mut("pg1").unwrap().report.sync = Some(rule(1, &["pg2", "pg3"]));
        check(&v, "pg1", false, &[]);
        // pg3's host dies: once its report is stale, PostgreSQL stops listing it (the
        // committed set already covers the smaller rule), and the set narrows only when pg2
        // has every commit acknowledged before the switch (some may be on pg3 alone).
        v.reports.get_mut("pg3").unwrap().received_at_ms = 0;
        v.reports.get_mut("pg1").unwrap().received_at_ms = 10_000;
        v.reports.get_mut("pg1").unwrap().report.replicas = vec![streaming("pg2", 900_000)];
        check_local(&v, &me(&v), 10_000, &["sync FIRST 1 (pg2) g1"]);
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.sync = Some(rule(1, &["pg2"]));
            r.sync_switch_lsn = Some(Lsn(950_000));
        }
        check_local(&v, &me(&v), 10_000, &[]);
        v.reports.get_mut("pg1").unwrap().report.replicas = vec![streaming("pg2", 950_000)];
        check_local(&v, &me(&v), 10_000, &["commit sync FIRST 1 (pg2) g1"]);
        // With a floor of two standbys it keeps waiting for pg3 instead.
        v.settings.sync.standbys = 2;
        v.settings.sync.minimum = 2;
        v.state.sync_set = ["pg2".to_string(), "pg3".to_string()].into();
        v.state.sync_quorum = 2;
        v.reports.get_mut("pg1").unwrap().report.sync = Some(rule(2, &["pg2", "pg3"]));
        check_local(&v, &me(&v), 10_000, &[]);
        // A floor of one: it names pg2 alone, once the committed quorum says that commits
        // are on one of the two.
        v.settings.sync.minimum = 1;
        check_local(&v, &me(&v), 10_000, &["commit sync ANY 1 (pg2,pg3) g1"]);
        v.state.sync_quorum = 1;
        check_local(&v, &me(&v), 10_000, &["sync FIRST 1 (pg2) g1"]);
    }

    #[test]
    fn settings_set_at_run_time_win_over_the_config() {
        let mut v = primary_with(&["pg2"]);
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.slots = vec![slot_for("pg2")];
            r.replicas = vec![streaming("pg2", 900_000)];
            r.sync = Some(SyncRule::default());
        }
        check(&v, "pg1", false, &[]);
        v.state.replication = Some(SyncSettings {
            mode: SyncMode::On,
            ..SyncSettings::default()
        });
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg2) g1"]);
        // Turned off again: PostgreSQL stops waiting only after the set is committed empty.
        v.state.sync_set = ["pg2".to_string()].into();
        v.state.sync_quorum = 1;
        v.reports.get_mut("pg1").unwrap().report.sync = Some(rule(1, &["pg2"]));
        v.settings.sync.mode = SyncMode::On;
        v.state.replication = Some(SyncSettings::default());
        check(&v, "pg1", false, &["commit sync asynchronous g1"]);
    }

    #[test]
    fn a_quorum_failover_promotes_the_most_advanced_of_the_members_it_reached() {
        let mut v = failover_view();
        v.state.sync_set = ["pg2".to_string(), "pg3".to_string()].into();
        v.state.sync_quorum = 1;
        // Reports say pg2 is ahead; they may be older than the last commits.
        v.reports.get_mut("pg2").unwrap().report.received_lsn = Some(Lsn(1_000_500));
        let waiting = "cluster hold: failover needed: the lease of primary pg1 expired; every \
             acknowledged commit is on 1 of the synchronous standbys pg2, pg3: waiting to reach \
             2 of them";
        check_coordinator(
            &v,
            10_000,
            &["measure pg2,pg3 g1", &format!("{waiting} (reached: none)")],
        );
        // Positions read before the lease ran out do not count.
        let at = |at_ms, lsn| Measured {
            at_ms,
            position: Some(Lsn(lsn)),
        };
        v.measured.insert("pg2".into(), at(3_000, 1_000_500));
        v.measured.insert("pg3".into(), at(9_000, 1_000_700));
        check_coordinator(
            &v,
            10_000,
            &["measure pg2,pg3 g1", &format!("{waiting} (reached: pg3)")],
        );
        v.measured.insert("pg2".into(), at(9_000, 1_000_500));
        check_coordinator(&v, 10_000, &["promote pg3 g2 from pg1 losing 0"]);
        // The most advanced cannot be promoted (its agent is down): nobody is.
        v.reports.get_mut("pg3").unwrap().received_at_ms = 0;
        let actions = show(decide(&v, &local(&v, "witness", true), 10_000));
        assert!(
            actions[0].contains("pg2 is behind synchronous standby pg3"),
            "{actions:?}"
        );
        // With two copies of each commit (ANY 2 of 2), any one member is enough.
        v.state.sync_quorum = 2;
        v.measured.clear();
        check_coordinator(&v, 10_000, &["promote pg2 g2 from pg1 losing 0"]);
    }

    #[test]
    fn no_automatic_failover_when_it_is_off() {
        let mut v = failover_view();
        v.settings.auto_failover = false;
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: failover needed: the lease of primary pg1 expired, and automatic failover is off (auto_failover = false): run pgfm promote"],
        );
        // pgfm promote works with automatic failover off, and may name the node.
        v.state.promotion_request = Some(crate::model::PromotionRequest {
            to: Some("pg3".into()),
            force: false,
            generation: Generation(1),
        });
        check_coordinator(&v, 9_000, &["promote pg3 g2 from pg1 losing 0"]);
    }

    #[test]
    fn paused_clusters_do_not_fail_over_but_promote_force_overrides_max_lag() {
        let mut v = failover_view();
        v.state.paused = true;
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: failover needed: the lease of primary pg1 expired, but the cluster is paused (maintenance mode): run pgfm resume, or pgfm promote"],
        );
        v.reports.get_mut("pg1").unwrap().report.current_lsn = Some(Lsn(9_000_000));
        v.state.promotion_request = Some(crate::model::PromotionRequest {
            to: Some("pg2".into()),
            force: false,
            generation: Generation(1),
        });
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: failover needed: the lease of primary pg1 expired, but no standby can be promoted: pg2 is 8000000 bytes behind the best known position (max_lag 1048576)"],
        );
        v.state.promotion_request.as_mut().unwrap().force = true;
        check_coordinator(&v, 9_000, &["promote pg2 g2 from pg1 losing 8000000"]);
    }

    #[test]
    fn a_crashed_primary_restarts_within_the_bound_then_gives_up() {
        let v = view(
            Some("pg1"),
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Running(DbRole::Standby)),
            ],
        );
        let mut me = local(&v, "pg1", false);
        me.crashed_at_ms = Some(1_000);
        check_local(&v, &me, 2_000, &["start primary g1"]);
        check_local(
            &v,
            &me,
            11_000,
            &[
                "release pg1 g1",
                "hold: PostgreSQL crashed and is not back: giving up the lease of generation 1",
            ],
        );
        let mut v2 = v.clone();
        v2.settings.on_crash = OnCrash::Failover;
        check_local(
            &v2,
            &me,
            1_001,
            &[
                "release pg1 g1",
                "hold: PostgreSQL crashed and is not back: giving up the lease of generation 1",
            ],
        );
        let mut released = v;
        released.state.lease_released = true;
        check_local(
            &released,
            &me,
            2_000,
            &["hold: gave up the lease of generation 1: waiting for a standby to take over"],
        );
    }

    #[test]
    fn a_former_primary_rewinds_or_reclones_or_waits_for_resume() {
        let mut v = view(
            Some("pg2"),
            &[
                ("pg1", Stopped(FencedPrimary)),
                ("pg2", Running(DbRole::Primary)),
            ],
        );
        check(&v, "pg1", false, &["rewind from pg2 g1"]);
        let mut me = local(&v, "pg1", false);
        me.rewind_failed = Some("no common ancestor".into());
        check_local(&v, &me, 2_000, &["reclone from pg2 g1"]);
        v.settings.rejoin = RejoinMode::Rewind;
        check_local(
            &v,
            &me,
            2_000,
            &["hold: rewind against pg2 failed (no common ancestor); fix it, then run pgfm resume, or set rejoin = \"rewind-or-clone\""],
        );
        v.settings.rejoin = RejoinMode::Manual;
        check(
            &v,
            "pg1",
            false,
            &["hold: former primary, rejoin = manual: run pgfm resume on this node to rejoin pg2"],
        );
        let mut me = local(&v, "pg1", false);
        me.resume_requested = true;
        check_local(&v, &me, 2_000, &["rewind from pg2 g1"]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One step of a random history: what each of pg1..pg3 reports (or not), how far
        /// their WAL got, and how much time passes.
        #[derive(Debug, Clone)]
        struct Step {
            nodes: Vec<(bool, bool, bool, u64, Option<bool>)>, // fresh, db_up, standby, lsn, sees_primary
            advance_ms: u64,
        }

        fn step() -> impl Strategy<Value = Step> {
            (
                proptest::collection::vec(
                    (
                        any::<bool>(),
                        any::<bool>(),
                        any::<bool>(),
                        0u64..4_000_000,
                        proptest::option::of(any::<bool>()),
                    ),
                    3,
                ),
                0u64..3_000,
            )
                .prop_map(|(nodes, advance_ms)| Step { nodes, advance_ms })
        }

        proptest! {
            /// Whatever a data node sees, it takes the VIP only as the committed, running,
            /// lease-holding primary that is not handing over, never in the same decision
            /// as a fence or a hand-over, and releases it only when it carries it.
            #[test]
            fn the_vip_is_taken_only_by_the_serving_primary(
                me in 0usize..2,
                primary in proptest::option::of(0usize..2),
                up in any::<bool>(),
                standby in any::<bool>(),
                writable in any::<bool>(),
                lease_valid in any::<bool>(),
                handing_over in any::<bool>(),
                held in any::<bool>(),
            ) {
                let names = ["pg1", "pg2"];
                let role = if standby { DbRole::Standby } else { DbRole::Primary };
                let seen = if up { Running(role) } else { Stopped(Writable) };
                let mut v = view(primary.map(|p| names[p]), &[(names[me], seen), (names[1 - me], Running(DbRole::Standby)), ("witness", Stopped(Empty))]);
                if handing_over {
                    v.state.switchover = Some(Switchover { seq: 1, unclean: false, from: names[me].into(), to: names[1 - me].into(), force: false, generation: v.state.generation, final_lsn: None });
                }
                v.reports.get_mut(names[me]).unwrap().report.vip = Some(crate::model::VipReport { address: "10.0.0.100/24".into(), held });
                let mut local = local(&v, names[me], false);
                local.writable = writable;
                local.lease_valid = lease_valid;
                let actions = decide(&v, &local, 2_000);
                let takes = actions.iter().filter(|a| matches!(a, Action::TakeVip { .. })).count();
                let releases = actions.iter().filter(|a| matches!(a, Action::ReleaseVip { .. })).count();
                prop_assert!(takes + releases <= 1, "{actions:?}");
                if takes == 1 {
                    let serving = primary == Some(me) && up && !standby && writable && lease_valid && !handing_over;
                    prop_assert!(serving && !held, "took the VIP while not serving: {actions:?}");
                    prop_assert!(!actions.iter().any(|a| matches!(a, Action::Fence { .. } | Action::HandOver { .. })), "{actions:?}");
                }
                if releases == 1 {
                    prop_assert!(held, "{actions:?}");
                }
            }

            /// Quorum: every acknowledged commit is on `quorum` of the members of the sync
            /// set; whichever members answer and whatever stale positions the reports
            /// carry, a promoted node holds that commit.
            #[test]
            fn a_quorum_failover_never_loses_an_acknowledged_commit(
                quorum in 1usize..=3,
                positions in proptest::collection::vec(0u64..2_000, 3),
                acked_by in proptest::collection::vec(any::<bool>(), 3),
                answers in proptest::collection::vec(any::<bool>(), 3),
                stale in proptest::collection::vec(0u64..2_000, 3),
            ) {
                let members = ["pg2", "pg3", "pg4"];
                let mut v = view(Some("pg1"), &[("pg1", Silent), ("pg2", Running(DbRole::Standby)), ("pg3", Running(DbRole::Standby)), ("pg4", Running(DbRole::Standby)), ("witness", Stopped(Empty))]);
                v.settings.max_lag = u64::MAX;
                v.state.sync_set = members.iter().map(|m| m.to_string()).collect();
                v.state.sync_quorum = quorum;
                // The last acknowledged commit ends at `acked`: `quorum` members hold it (the
                // ones drawn first, then others as needed), the rest may or may not.
                let acked = 1_001_000;
                let mut holders: Vec<usize> = (0..3).filter(|i| acked_by[*i]).collect();
                holders.extend((0..3).filter(|i| !acked_by[*i]));
                holders.truncate(quorum);
                let truth: Vec<u64> = (0..3)
                    .map(|i| if holders.contains(&i) { acked + positions[i] } else { 1_000_000 + positions[i] })
                    .collect();
                for (i, name) in members.iter().enumerate() {
                    let o = v.reports.get_mut(*name).unwrap();
                    o.received_at_ms = 10_000;
                    o.report.sees_primary = Some(false);
                    // A report may predate the last commits it received.
                    let reported = Lsn(truth[i].saturating_sub(stale[i]));
                    o.report.received_lsn = Some(reported);
                    o.report.replayed_lsn = Some(reported);
                    if answers[i] {
                        v.measured.insert(name.to_string(), Measured { at_ms: 9_000, position: Some(Lsn(truth[i])) });
                    }
                }
                let mut me = local(&v, "witness", true);
                me.kind = NodeKind::Witness;
                for action in decide(&v, &me, 10_000) {
                    if let Action::Propose(Command::Promote { node, .. }) = action {
                        let i = members.iter().position(|m| *m == node).expect("promoted a member");
                        prop_assert!(truth[i] >= acked, "promoted {node} at {}, acknowledged up to {acked}", truth[i]);
                    }
                }
            }

            /// Over random sequences of views, the coordinator promotes at most once per
            /// generation, never a non-promotable, stopped or lagging node, and never while
            /// no other agent found the primary's database down.
            #[test]
            fn promotions_are_single_eligible_and_justified(
                promotable in proptest::collection::vec(any::<bool>(), 3),
                steps in proptest::collection::vec(step(), 1..40),
            ) {
                let names = ["pg1", "pg2", "pg3"];
                let mut v = view(Some("pg1"), &[("pg1", Running(DbRole::Primary)), ("pg2", Running(DbRole::Standby)), ("pg3", Running(DbRole::Standby)), ("witness", Stopped(Empty))]);
                for (name, p) in names.iter().zip(&promotable) {
                    v.state.members.get_mut(*name).unwrap().promotable = *p;
                }
                let mut now = 0;
                for step in steps {
                    now += step.advance_ms;
                    let primary = v.state.primary.clone().unwrap();
                    for (name, (fresh, up, standby, lsn, sees)) in names.iter().zip(&step.nodes) {
                        let o = v.reports.get_mut(*name).unwrap();
                        if *fresh {
                            o.received_at_ms = now;
                        }
                        let r = &mut o.report;
                        r.db_up = *up;
                        let role = if **name == primary { DbRole::Primary } else if *standby { DbRole::Standby } else { DbRole::Primary };
                        r.role = Some(role);
                        r.current_lsn = Some(Lsn(*lsn));
                        r.received_lsn = Some(Lsn(*lsn));
                        r.replayed_lsn = Some(Lsn(*lsn));
                        r.sees_primary = if **name == primary { None } else { *sees };
                    }
                    let w = v.reports.get_mut("witness").unwrap();
                    w.received_at_ms = now;
                    w.report.sees_primary = step.nodes[0].4;
                    let before = v.clone();
                    let mut me = local(&v, "witness", true);
                    me.kind = NodeKind::Witness;
                    let proposals: Vec<Command> = decide(&v, &me, now)
                        .into_iter()
                        .filter_map(|a| match a { Action::Propose(c) => Some(c), _ => None })
                        .collect();
                    let promotions = proposals.iter().filter(|c| matches!(c, Command::Promote { .. })).count();
                    prop_assert!(promotions <= 1, "{promotions} promotions in one decision");
                    for command in proposals {
                        if let Command::Promote { node, .. } = &command {
                            let m = &before.state.members[node];
                            prop_assert!(m.promotable && m.priority > 0, "promoted non-promotable {node}");
                            let r = before.fresh_report(node, now).expect("promoted a node without a fresh report");
                            prop_assert!(r.db_up && r.role == Some(DbRole::Standby), "promoted {node}, not a running standby");
                            let best = before.reports.values().filter_map(|o| o.report.wal_position()).max().unwrap();
                            prop_assert!(best.bytes_after(r.wal_position().unwrap()) <= before.settings.max_lag, "promoted lagging {node}");
                            let down_seen = before.voters.iter().filter(|n| **n != primary).filter_map(|n| before.fresh_report(n, now)).any(|r| r.sees_primary == Some(false));
                            let up_seen = before.voters.iter().filter(|n| **n != primary).filter_map(|n| before.fresh_report(n, now)).any(|r| r.sees_primary == Some(true));
                            prop_assert!(before.state.lease_released || (down_seen && !up_seen), "promoted without evidence the primary is down");
                            prop_assert!(now >= lease::expired_at_ms(before.last_renewal_seen_ms, &before.settings.lease), "promoted before the lease expired");
                        }
                        let generation = v.state.generation;
                        if v.state.apply(&command).is_ok() && matches!(command, Command::Promote { .. }) {
                            prop_assert_eq!(v.state.generation, generation.next());
                            // The new primary's lease starts now, as the agent would see it.
                            v.last_renewal_seen_ms = Some(now);
                        }
                    }
                }
                let generations: Vec<u64> = v.state.history.iter().map(|p| p.generation.0).collect();
                let expected: Vec<u64> = (2..2 + generations.len() as u64).collect();
                prop_assert_eq!(generations, expected, "one promotion per generation, in order");
            }
        }
    }
}
