//! The coordinator fails over: once the primary's lease is gone and another agent found its
//! database down, it promotes the most advanced standby that may hold every acknowledged
//! commit — on its own, or when an operator asks (`pgfm promote`).
//!
//! `failover` reads as its steps, in the order they are checked: the lease gone, the
//! evidence, the permission, the candidates, the quorum, then the promotion. Each step
//! either finds what the next one needs or ends the decision with what to do instead (a
//! hold, or nothing for now).

use std::collections::BTreeMap;

use super::{cluster_hold, Action, ClusterView, Decision, Forward};
use crate::model::{Command, DbRole, Member, NodeKind, PromotionRequest};
use crate::types::Lsn;

/// A step's finding, or what the coordinator decides instead of going on.
type Step<T> = Result<T, Decision>;

/// The coordinator's part while there is a primary and no switchover: promote a standby once
/// the primary is gone, or say why not (yet).
pub(super) fn failover(cluster: &ClusterView, primary: &str, now_ms: u64) -> Decision {
    let steps = || -> Step<Decision> {
        let gone = lease_gone(cluster, primary, now_ms)?;
        let judged = evidence(cluster, primary, &gone, now_ms)?;
        let request = permission(cluster, &gone)?;
        let force = request.is_some_and(|r| r.force);
        let mut candidates = candidates(cluster, primary, request, now_ms);
        quorum(cluster, &gone, force, &mut candidates)?;
        Ok(promote_best(
            cluster, primary, &gone, judged, request, candidates,
        ))
    };
    steps().unwrap_or_else(|instead| instead)
}

/// How the primary's lease ended.
struct LeaseGone {
    /// The primary gave it up (its PostgreSQL stopped) rather than let it run out.
    released: bool,
    /// "primary pg1 gave up its lease", "the lease of primary pg1 expired".
    why: String,
    /// No commit was acknowledged after this moment (monotonic ms): the release was
    /// applied here, or the lease ran out.
    stopped_at_ms: u64,
}

/// The lease gone: no standby is promoted while the primary's lease may still be valid
/// (invariant 3). It is gone once the primary released it, or once it ran out, counted from
/// the last renewal this agent applied; until then the coordinator waits, and says so if the
/// primary has stopped reporting.
fn lease_gone(cluster: &ClusterView, primary: &str, now_ms: u64) -> Step<LeaseGone> {
    let expires = cluster.lease_expires_at_ms();
    let released = cluster.state.lease_released;
    if !released && now_ms < expires {
        if cluster.fresh_report(primary, now_ms).is_none() {
            return Err(vec![cluster_hold(format!(
                "primary {primary} is not reporting: its lease runs out in {} ms, then a \
                 standby may be promoted",
                expires - now_ms
            ))]);
        }
        return Err(Vec::new());
    }
    Ok(LeaseGone {
        released,
        why: if released {
            format!("primary {primary} gave up its lease")
        } else {
            format!("the lease of primary {primary} expired")
        },
        stopped_at_ms: if released {
            cluster.last_renewal_seen_ms.unwrap_or(0)
        } else {
            expires
        },
    })
}

/// The evidence: the primary's agent may be dead while its PostgreSQL still serves;
/// promoting then would make two writable primaries, and only an agent can fence it. So,
/// unless the primary gave its lease up, some other agent must have found its database down,
/// and none may have found it answering. Only verdicts on this generation's primary count:
/// a report still fresh from before the last promotion judged the primary before it. Gives
/// how the old primary was judged gone, for the history.
fn evidence(cluster: &ClusterView, primary: &str, gone: &LeaseGone, now_ms: u64) -> Step<String> {
    let why = &gone.why;
    let generation = cluster.state.generation;
    // Invariant 10: only an agent able to judge says "down"; one whose probe failed on its
    // own side reports no verdict ("cannot tell") and does not count. Each check: the
    // node, whether the database answered it, how the check went (None: no verdict).
    let checks: Vec<(&str, Option<bool>, Option<&str>)> = cluster
        .voters
        .iter()
        .filter(|v| v.as_str() != primary)
        .filter_map(|v| cluster.fresh_report(v, now_ms).map(|r| (v.as_str(), r)))
        .map(|(v, r)| {
            // None: an agent from before reports named the generation (a rolling upgrade).
            if r.primary_checked.is_none_or(|g| g == generation) {
                (v, r.sees_primary, r.primary_check.as_deref())
            } else {
                (v, None, None)
            }
        })
        .collect();
    let evidence = checks
        .iter()
        .map(|(v, answering, how)| match (answering, how) {
            (_, Some(how)) => format!("{v}: {how}"),
            (Some(true), None) => format!("{v}: answering"),
            (Some(false), None) => format!("{v}: down"),
            (None, None) => format!("{v}: not checked"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let seen_by: Vec<&str> = checks
        .iter()
        .filter(|(_, answering, _)| *answering == Some(true))
        .map(|(v, _, _)| *v)
        .collect();
    if !gone.released && !seen_by.is_empty() {
        return Err(vec![cluster_hold(format!(
            "{why} but its database still answers {}: not promoting while it may take \
             writes (restart its agent, or stop its PostgreSQL) [{evidence}]",
            seen_by.join(", ")
        ))]);
    }
    if !gone.released
        && !checks
            .iter()
            .any(|(_, answering, _)| *answering == Some(false))
    {
        return Err(vec![cluster_hold(format!(
            "{why}: waiting for another agent to find its database down before promoting \
             [{evidence}]"
        ))]);
    }
    // The history says who judged the old primary down, and how.
    Ok(if gone.released {
        why.clone()
    } else {
        format!("{why} (its database: {evidence})")
    })
}

/// The permission: an operator's `pgfm promote` in this generation always allows the
/// failover; without one it is automatic unless `auto_failover = false` or the cluster is
/// paused (maintenance mode). Gives the operator's request, if any: it may name the standby,
/// and `--force` waives the lag rules.
fn permission<'a>(
    cluster: &'a ClusterView,
    gone: &LeaseGone,
) -> Step<Option<&'a PromotionRequest>> {
    let state = &cluster.state;
    let why = &gone.why;
    let request = state.promotion_asked();
    if request.is_none() && !cluster.settings.auto_failover {
        return Err(vec![cluster_hold(format!(
            "failover needed: {why}, and automatic failover is off (auto_failover = false): \
             run pgfm promote"
        ))]);
    }
    if request.is_none() && state.paused {
        return Err(vec![cluster_hold(format!(
            "failover needed: {why}, but the cluster is paused (maintenance mode): run pgfm \
             resume, or pgfm promote"
        ))]);
    }
    Ok(request)
}

/// A standby that may be promoted.
struct Candidate<'a> {
    name: &'a str,
    priority: u32,
    /// Its WAL position.
    position: Lsn,
    /// Bytes the best position known has that it lacks.
    behind: u64,
}

/// The standbys that may be promoted, and why the others may not.
struct Candidates<'a> {
    /// The most advanced first, then the highest priority, then by name.
    eligible: Vec<Candidate<'a>>,
    /// Why each other standby may not be promoted.
    refused: Vec<String>,
    /// The best WAL position known anywhere, the old primary's last report included.
    best: Option<Lsn>,
}

/// The candidates: every data node but the old primary (only the one the operator named,
/// if they named one) that `candidate` accepts. The most advanced come first, as EFM does:
/// the other standbys then hold no WAL the new primary lacks and can follow it by a reload.
/// Priority breaks ties.
fn candidates<'a>(
    cluster: &'a ClusterView,
    primary: &str,
    request: Option<&'a PromotionRequest>,
    now_ms: u64,
) -> Candidates<'a> {
    let best = cluster
        .reports
        .values()
        .filter(|o| o.report.kind == NodeKind::Data)
        .filter_map(|o| o.report.wal_position())
        .max();
    let wanted = request.and_then(|r| r.to.as_deref());
    let force = request.is_some_and(|r| r.force);
    let mut refused = Vec::new();
    let mut eligible = Vec::new();
    for member in cluster
        .state
        .data_members()
        .filter(|m| m.name != primary && wanted.is_none_or(|w| w == m.name))
    {
        match candidate(cluster, member, best, force, now_ms) {
            Ok(c) => eligible.push(c),
            Err(why) => refused.push(why),
        }
    }
    eligible.sort_by(|a, b| {
        b.position
            .cmp(&a.position)
            .then(b.priority.cmp(&a.priority))
            .then(a.name.cmp(b.name))
    });
    Candidates {
        eligible,
        refused,
        best,
    }
}

/// Whether `member` may be promoted: promotable, in the synchronous set if there is one,
/// its agent up and its watchdog as required, a running standby on the primary's timeline,
/// within `max_lag` of the best position known (invariant 5). `force` (`pgfm promote
/// --force`) waives the synchronous set, the timeline and `max_lag`. Err: why not.
fn candidate<'a>(
    cluster: &ClusterView,
    member: &'a Member,
    best: Option<Lsn>,
    force: bool,
    now_ms: u64,
) -> Result<Candidate<'a>, String> {
    let state = &cluster.state;
    let settings = &cluster.settings;
    let name = member.name.as_str();
    // The log's own rule (`ClusterState::promotable`): what it would refuse is never
    // chosen — a `nofailover` node chosen first would stall every failover round.
    if !member.can_be_promoted() {
        return Err(format!("{name} is not promotable"));
    }
    if let Err(why) = state.promotable(name) {
        return Err(why.to_string());
    }
    // Synchronous replication: only the committed sync set may hold every commit the old
    // primary acknowledged.
    if !state.sync_set.is_empty() && !state.sync_set.contains(name) && !force {
        if let Some(holder) = state.sole_holder() {
            return Err(format!(
                "{name} is not known to hold every acknowledged commit: only {holder} does \
                 (since its promotion, or since synchronous replication degraded, no standby \
                 caught up with it)"
            ));
        }
        return Err(format!(
            "{name} is not a synchronous standby (the synchronous set is {})",
            state
                .sync_set
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let Some(report) = cluster.fresh_report(name, now_ms) else {
        return Err(format!("{name}'s agent is down"));
    };
    // Invariant 10: `[watchdog] mode = "required"` never makes a primary without one.
    if let Some(problem) = report
        .watchdog
        .as_ref()
        .filter(|w| !w.allows_primary())
        .and_then(|w| w.problem.as_deref())
    {
        return Err(format!(
            "{name} requires a watchdog and has none ({problem})"
        ));
    }
    if !(report.db_up && report.role == Some(DbRole::Standby)) {
        return Err(format!("{name} is not a running standby"));
    }
    let Some(position) = report.wal_position() else {
        return Err(format!("{name}'s WAL position is unknown"));
    };
    // Invariant 5: a candidate is on the primary's timeline; WAL compared across timelines
    // says nothing about who holds the acknowledged commits.
    if let Some(why) = state.divergence(report) {
        return Err(format!("{name} {why}"));
    }
    if let (Some(theirs), Some(current), false) = (report.timeline, state.timeline, force) {
        if theirs != current {
            return Err(format!(
                "{name} is on timeline {theirs}, the primary was on timeline {current}"
            ));
        }
    }
    // Invariant 5: no lagging promotion.
    let behind = best.map(|b| b.bytes_after(position)).unwrap_or(0);
    if behind > settings.max_lag && !force {
        return Err(format!(
            "{name} is {behind} bytes behind the best known position (max_lag {})",
            settings.max_lag
        ));
    }
    Ok(Candidate {
        name,
        priority: member.priority,
        position,
        behind,
    })
}

/// The quorum: with a synchronous quorum (and while a sync set is changing members) every
/// acknowledged commit is on `count` of the committed set, so `len - count + 1` members
/// reached after the old primary stopped include one that has them all; the candidate must
/// be as advanced as any of them, measured, not as reported. Until enough of them answered,
/// the coordinator measures them (`MeasureWal`) and holds. `force` skips the rule.
fn quorum(
    cluster: &ClusterView,
    gone: &LeaseGone,
    force: bool,
    candidates: &mut Candidates,
) -> Step<()> {
    let committed = cluster.state.committed_sync();
    if committed.is_async() || committed.count >= committed.names.len() || force {
        return Ok(());
    }
    let need = committed.names.len() - committed.count + 1;
    let reached: BTreeMap<&str, Lsn> = committed
        .names
        .iter()
        .filter_map(|m| {
            let measured = cluster
                .measured
                .get(m)
                .filter(|w| w.at_ms >= gone.stopped_at_ms)?;
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
        return Err(vec![
            Action::MeasureWal {
                members: committed.names.iter().cloned().collect(),
                generation: cluster.state.generation,
            },
            cluster_hold(format!(
                "failover needed: {}; every acknowledged commit is on {} of the synchronous \
                 standbys {}: waiting to reach {need} of them (reached: {})",
                gone.why,
                committed.count,
                list(committed.names.iter().map(String::as_str).collect()),
                list(reached.keys().copied().collect()),
            )),
        ]);
    }
    let (top_name, top) = reached
        .iter()
        .max_by_key(|(name, position)| (**position, std::cmp::Reverse(**name)))
        .map(|(n, p)| (*n, *p))
        .expect("need is at least 1");
    let best = candidates.best;
    let refused = &mut candidates.refused;
    candidates
        .eligible
        .retain_mut(|c| match reached.get(c.name).filter(|p| **p >= top) {
            Some(measured) => {
                // The measured position is the final one; reports may predate it.
                c.position = *measured;
                c.behind = best
                    .map(|b| b.max(top))
                    .unwrap_or(top)
                    .bytes_after(*measured);
                true
            }
            None => {
                refused.push(format!(
                    "{} is behind synchronous standby {top_name} ({top})",
                    c.name
                ));
                false
            }
        });
    Ok(())
}

/// The promotion of the first candidate, or a hold that says why no standby can be
/// promoted.
fn promote_best(
    cluster: &ClusterView,
    primary: &str,
    gone: &LeaseGone,
    judged: String,
    request: Option<&PromotionRequest>,
    candidates: Candidates,
) -> Decision {
    let state = &cluster.state;
    let Some(chosen) = candidates.eligible.first() else {
        return vec![cluster_hold(format!(
            "failover needed: {}, but no standby can be promoted: {}",
            gone.why,
            if candidates.refused.is_empty() {
                "there are no standbys".to_string()
            } else {
                candidates.refused.join("; ")
            }
        ))];
    };
    vec![Action::Propose {
        command: Command::Promote {
            node: chosen.name.to_string(),
            generation: state.generation.next(),
            from: Some(primary.to_string()),
            reason: match request {
                Some(r) if r.force => format!("pgfm promote --force: {judged}"),
                Some(_) => format!("pgfm promote: {judged}"),
                None => judged,
            },
            lsn: Some(chosen.position),
            // What the old primary last reported is all that is known of what it wrote
            // (nothing: unknown); one whose lease ran out may have written more after it.
            lost_bytes: cluster
                .reports
                .get(primary)
                .and_then(|o| o.report.wal_position())
                .map(|_| chosen.behind),
            at_unix_ms: cluster.wall_clock_ms,
            lease_renewals: (!gone.released).then_some(state.lease_renewals),
            handover: None,
            lost_at_least: !gone.released,
        },
        forward: Forward::Never,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{decide, Measured};
    use crate::model::{PromotionRequest, WatchdogMode, WatchdogReport};
    use crate::testing::*;
    use crate::types::Generation;

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
        v.reports.get_mut("pg2").unwrap().report.watchdog = Some(WatchdogReport {
            mode: WatchdogMode::Required,
            armed: false,
            problem: Some("/dev/watchdog: No such file or directory".into()),
            timeout_s: None,
        });
        check_coordinator(&v, 9_000, &["promote pg3 g2 from pg1 losing 0"]);
    }

    #[test]
    fn no_failover_while_the_primary_database_still_answers() {
        let mut v = failover_view();
        judged(&mut v, "pg2", Some(true));
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: the lease of primary pg1 expired but its database still answers pg2: not promoting while it may take writes (restart its agent, or stop its PostgreSQL) [pg2: answering; pg3: down; witness: down]"],
        );
    }

    #[test]
    fn no_failover_before_another_agent_found_the_primary_database_down() {
        let mut v = failover_view();
        for name in ["pg2", "pg3", "witness"] {
            judged(&mut v, name, None);
        }
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: the lease of primary pg1 expired: waiting for another agent to find its database down before promoting [pg2: not checked; pg3: not checked; witness: not checked]"],
        );
        judged(&mut v, "witness", Some(false));
        check_coordinator(&v, 9_000, &["promote pg2 g2 from pg1 losing 0"]);
    }

    /// A verdict is about one generation's primary: a report still fresh from before the
    /// last promotion found the primary before this one down, and says nothing of this one.
    #[test]
    fn a_verdict_on_an_earlier_primary_is_no_evidence() {
        let mut v = failover_view();
        for o in v.reports.values_mut() {
            o.report.primary_checked = Some(crate::types::Generation(0));
        }
        check_coordinator(
            &v,
            9_000,
            &["cluster hold: the lease of primary pg1 expired: waiting for another agent to find its database down before promoting [pg2: not checked; pg3: not checked; witness: not checked]"],
        );
        judged(&mut v, "pg3", Some(false));
        check_coordinator(&v, 9_000, &["promote pg2 g2 from pg1 losing 0"]);
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
        v.state.promotion_request = Some(PromotionRequest {
            to: Some("pg3".into()),
            force: false,
            generation: Generation(1),
            lease_renewals: None,
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
        v.state.promotion_request = Some(PromotionRequest {
            to: Some("pg2".into()),
            force: false,
            generation: Generation(1),
            lease_renewals: None,
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

    /// Found by the simulation (seed 348, synchronous on, host-crash and slow-link): the
    /// synchronous standby pg2 was promoted when pg1 died, then died itself before the
    /// lagging pg3 caught up with it; pg3 was promoted without the commits pg1 had
    /// acknowledged. After a promotion under a synchronous rule the new primary alone is
    /// the committed set: its loss promotes nobody (without `--force`), and says why.
    #[test]
    fn a_new_primary_lost_before_a_standby_caught_up_promotes_nobody() {
        let mut v = failover_view();
        // pg1 is the primary of generation 1, promoted under a synchronous rule.
        v.state.sync_set = ["pg1".to_string()].into();
        v.state.sync_quorum = 1;
        let actions = show(decide(&v, &local(&v, "witness", true), 10_000));
        assert!(
            actions[0].contains("no standby can be promoted")
                && actions[0].contains(
                    "pg2 is not known to hold every acknowledged commit: only pg1 does (since \
                     its promotion, or since synchronous replication degraded"
                ),
            "{actions:?}"
        );
        // While the set widens to a standby (pg1 and pg3, one of them), the quorum step
        // needs the answer of both: pg1's cannot come.
        v.state.sync_set = ["pg1".to_string(), "pg3".to_string()].into();
        let actions = show(decide(&v, &local(&v, "witness", true), 10_000));
        assert!(
            !actions.iter().any(|a| a.starts_with("promote")),
            "{actions:?}"
        );
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
                    o.report.primary_checked = Some(v.state.generation);
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
                    if let Action::Propose { command: Command::Promote { node, .. }, .. } = action {
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
                    let generation = v.state.generation;
                    for (name, (fresh, up, standby, lsn, sees)) in names.iter().zip(&step.nodes) {
                        let o = v.reports.get_mut(*name).unwrap();
                        if *fresh {
                            o.received_at_ms = now;
                            // A verdict is on the primary of the generation it was made in:
                            // one not refreshed may be on the one before.
                            o.report.sees_primary = if **name == primary { None } else { *sees };
                            o.report.primary_checked = Some(generation);
                        }
                        let r = &mut o.report;
                        r.db_up = *up;
                        let role = if **name == primary { DbRole::Primary } else if *standby { DbRole::Standby } else { DbRole::Primary };
                        r.role = Some(role);
                        r.current_lsn = Some(Lsn(*lsn));
                        r.received_lsn = Some(Lsn(*lsn));
                        r.replayed_lsn = Some(Lsn(*lsn));
                    }
                    let w = v.reports.get_mut("witness").unwrap();
                    w.received_at_ms = now;
                    w.report.sees_primary = step.nodes[0].4;
                    w.report.primary_checked = Some(generation);
                    let before = v.clone();
                    let mut me = local(&v, "witness", true);
                    me.kind = NodeKind::Witness;
                    let proposals: Vec<Command> = decide(&v, &me, now)
                        .into_iter()
                        .filter_map(|a| match a { Action::Propose { command: c, .. } => Some(c), _ => None })
                        .collect();
                    let promotions = proposals.iter().filter(|c| matches!(c, Command::Promote { .. })).count();
                    prop_assert!(promotions <= 1, "{promotions} promotions in one decision");
                    for command in proposals {
                        if let Command::Promote { node, .. } = &command {
                            let m = &before.state.members[node];
                            prop_assert!(m.can_be_promoted(), "promoted non-promotable {node}");
                            let r = before.fresh_report(node, now).expect("promoted a node without a fresh report");
                            prop_assert!(r.db_up && r.role == Some(DbRole::Standby), "promoted {node}, not a running standby");
                            let best = before.reports.values().filter_map(|o| o.report.wal_position()).max().unwrap();
                            prop_assert!(best.bytes_after(r.wal_position().unwrap()) <= before.settings.max_lag, "promoted lagging {node}");
                            let verdicts = || before.voters.iter().filter(|n| **n != primary).filter_map(|n| before.fresh_report(n, now)).filter(|r| r.primary_checked == Some(generation)).map(|r| r.sees_primary);
                            let down_seen = verdicts().any(|s| s == Some(false));
                            let up_seen = verdicts().any(|s| s == Some(true));
                            prop_assert!(before.state.lease_released || (down_seen && !up_seen), "promoted without evidence the primary is down");
                            prop_assert!(now >= before.lease_expires_at_ms(), "promoted before the lease expired");
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

    /// A standby tagged `nofailover` is never the one chosen, even first by position,
    /// priority and name: the log would refuse it, round after round (review of issue 15).
    #[test]
    fn a_nofailover_standby_is_passed_over() {
        let mut v = failover_view();
        priority(&mut v, "pg3", PRIORITY);
        tag(&mut v, "pg2", "nofailover=true");
        check_coordinator(&v, 10_000, &["promote pg3 g2 from pg1 losing 0"]);
    }
}
