//! Synchronous replication on the serving primary: which standbys each commit waits for,
//! committed before PostgreSQL widens and after it narrows.

use std::collections::BTreeSet;

use super::reconcile::not_serving;
use super::{Action, ClusterView, Forward, LocalView};
use crate::model::{Command, DbRole, SyncMode, SyncRule};

/// Synchronous replication on the serving primary, one step per decision. The committed
/// rule must hold for every commit acknowledged under PostgreSQL's setting, old and new: it
/// is widened first (more members, a smaller quorum), then `synchronous_standby_names`
/// changes, and the committed rule narrows once enough of the new members have flushed past
/// the WAL position where the new setting took over.
pub(super) fn manage_sync(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
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
        vec![Action::Propose {
            command: Command::SetSyncSet {
                node: local.name.clone(),
                generation,
                members: rule.names,
                quorum: rule.count,
            },
            forward: Forward::ToCoordinator,
        }]
    };
    let set = || {
        vec![Action::SetSyncStandbys {
            rule: desired.clone(),
            generation,
        }]
    };
    if desired.is_async() {
        // Degrading to asynchronous is committed first: a primary cut off from the majority
        // cannot, so it keeps waiting rather than acknowledge commits a failover would lose.
        // While synchronous replication is asked for, the primary itself is the committed
        // set: the commits acknowledged synchronously so far are on it and on no standby
        // known to have them all, so its loss promotes nobody until a standby has caught up
        // (committed empty, any standby would be promoted and lose them — Patroni keeps the
        // leader alone in its /sync key the same way). Turned off, nothing is kept.
        let degraded = if cluster.sync_settings().mode == SyncMode::Off {
            SyncRule::default()
        } else {
            SyncRule::new(1, BTreeSet::from([local.name.clone()]))
        };
        if committed != degraded {
            return commit(degraded);
        }
        if *current != desired {
            return set();
        }
        return Vec::new();
    }
    if !covers(&committed, &desired) {
        return commit(if committed.is_async() {
            desired
        } else {
            SyncRule::new(
                committed.count.min(desired.count),
                committed.names.union(&desired.names).cloned().collect(),
            )
        });
    }
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
/// `report_ttl` after its host died. One that its walsender still calls streaming but that
/// has confirmed nothing of what it was sent for `report_ttl` gives its place to one that
/// streams (never fewer names for it): a host frozen, powered off or cut off one way keeps
/// its walsender for `wal_sender_timeout` (60 s), and every commit waited as long (chaos
/// soak seed 1, run 24). It never names fewer than `minimum`: it keeps the lost ones
/// (commits wait for them) or names members that are not there yet.
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
    // Named only to keep `minimum` (commits then wait for it): a node under maintenance,
    // after every other member — while other standbys are missing, or for good when its
    // operator waived the minimum (`Maintenance::forced`).
    let member = |name: &str| name != local.name && state.may_be_synchronous(name);
    let candidate = |name: &str| member(name) && state.may_promote(name);
    let stalled = |name: &str| {
        local
            .replicas
            .get(name)
            .is_some_and(|p| p.stalled(cluster.settings.report_ttl_ms))
    };
    let streaming: BTreeSet<&str> = local
        .report
        .replicas
        .iter()
        .filter(|r| r.state == "streaming" && candidate(&r.application_name))
        .map(|r| r.application_name.as_str())
        .filter(|name| !stalled(name))
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
    // A stalled one is not among those streaming, but only gives its place to one that
    // streams: it is kept while there is room and its agent says it runs.
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
            .filter(|n| member(n))
            .collect();
        rest.sort_by_key(|n| (!candidate(n), std::cmp::Reverse(priority(n)), *n));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::slot_for;
    use crate::decide::track_replicas;
    use crate::model::SyncSettings;
    use crate::testing::*;
    use crate::types::Lsn;
    use std::collections::BTreeMap;

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
        // majority cannot, so it keeps waiting), then PostgreSQL stops waiting. The
        // committed set becomes the primary alone: what was acknowledged synchronously is
        // on it, and on no standby known to have it all.
        v.settings.sync.minimum = 0;
        let me = |v: &ClusterView| {
            let mut l = local(v, "pg1", false);
            l.report = v.reports["pg1"].report.clone();
            l
        };
        v.reports.get_mut("pg1").unwrap().received_at_ms = 10_000;
        check_local(&v, &me(&v), 10_000, &["commit sync FIRST 1 (pg1) g1"]);
        v.state.sync_set = ["pg1".to_string()].into();
        v.state.sync_quorum = 1;
        check_local(&v, &me(&v), 10_000, &["sync asynchronous g1"]);
        v.reports.get_mut("pg1").unwrap().report.sync = Some(SyncRule::default());
        check_local(&v, &me(&v), 10_000, &[]);

        // pg2 streams again: widened to "pg1 or pg2" first, then PostgreSQL waits for pg2,
        // then the set narrows to pg2 once it flushed past the switch.
        v.reports.get_mut("pg2").unwrap().received_at_ms = 10_000;
        v.reports.get_mut("pg1").unwrap().report.replicas = vec![streaming("pg2", 900_000)];
        check_local(&v, &me(&v), 10_000, &["commit sync ANY 1 (pg1,pg2) g1"]);
        v.state.sync_set = ["pg1".to_string(), "pg2".to_string()].into();
        check_local(&v, &me(&v), 10_000, &["sync FIRST 1 (pg2) g1"]);
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.sync = Some(rule(1, &["pg2"]));
            r.sync_switch_lsn = Some(Lsn(950_000));
        }
        check_local(&v, &me(&v), 10_000, &[]);
        v.reports.get_mut("pg1").unwrap().report.replicas = vec![streaming("pg2", 960_000)];
        check_local(&v, &me(&v), 10_000, &["commit sync FIRST 1 (pg2) g1"]);
    }

    /// A standby tagged `nosync`, `nofailover` or `replicate_from` is never named, not even
    /// to keep the minimum (commits would wait for one that cannot confirm them, or a
    /// failover would have no standby to promote).
    #[test]
    fn a_tagged_standby_is_never_a_synchronous_one() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.settings.sync.mode = SyncMode::On;
        v.settings.sync.minimum = 1;
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.slots = vec![slot_for("pg2"), slot_for("pg3")];
            r.replicas = vec![streaming("pg2", 900_000), streaming("pg3", 900_000)];
            r.sync = Some(SyncRule::default());
        }
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg2) g1"]);
        tag(&mut v, "pg2", "nosync=true");
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg3) g1"]);
        tag(&mut v, "pg3", "nofailover=true");
        check(&v, "pg1", false, &["commit sync FIRST 1 (pg1) g1"]);
        tag(&mut v, "pg3", "nofailover=false");
        tag(&mut v, "pg3", "replicate_from=pg2");
        check(
            &v,
            "pg1",
            false,
            &["commit sync FIRST 1 (pg1) g1", "drop slots pg3 g1"],
        );
    }

    /// A standby whose walsender still says streaming but that confirms nothing it was sent
    /// — its host frozen, powered off or cut off one way, which PostgreSQL notices only
    /// after `wal_sender_timeout` (60 s) — gives its place to one that streams once probes
    /// `report_ttl` apart found it so; with none to take it, it keeps it (commits wait).
    /// Chaos soak seed 1, run 24.
    #[test]
    fn a_synchronous_standby_that_confirms_nothing_gives_its_place_up() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.settings.sync.mode = SyncMode::On;
        v.state.sync_set = ["pg2".to_string()].into();
        v.state.sync_quorum = 1;
        let sending = |name: &str, flush: u64| crate::ReplicaInfo {
            sent_lsn: Some(Lsn(1_000_000)),
            ..streaming(name, flush)
        };
        {
            let r = &mut v.reports.get_mut("pg1").unwrap().report;
            r.slots = vec![slot_for("pg2"), slot_for("pg3")];
            r.replicas = vec![sending("pg2", 900_000), sending("pg3", 990_000)];
            r.sync = Some(rule(1, &["pg2"]));
            r.current_lsn = Some(Lsn(1_000_000));
        }
        let report = v.reports["pg1"].report.clone();
        let mut me = local(&v, "pg1", false);
        // Probed first at NOW_MS - 2 s: pg2 behind, pg3 behind too (commits in flight).
        let first = NOW_MS - 2_000;
        me.replicas = track_replicas(&BTreeMap::new(), &report, first);
        assert_eq!(me.replicas["pg2"].since_ms, first);
        // 2 s on, pg3 moved, pg2 did not: under `report_ttl` (3 s), pg2 keeps its place.
        let mut moved = report.clone();
        moved.replicas[1] = sending("pg3", 995_000);
        me.replicas = track_replicas(&me.replicas, &moved, NOW_MS);
        assert_eq!(me.replicas["pg2"].since_ms, first);
        assert_eq!(me.replicas["pg3"].since_ms, NOW_MS);
        check_local(&v, &me, NOW_MS, &[]);
        // Decided on again and again (an agent paused, then resumed), the same probes
        // span 2 s: nothing stalled.
        let again = track_replicas(&me.replicas, &moved, NOW_MS);
        assert_eq!(again, me.replicas);
        check_local(&v, &me, NOW_MS + 10_000, &[]);
        // A probe 3 s after the first finds pg2 still confirming nothing: pg3 takes the
        // place, committed first.
        me.replicas = track_replicas(&me.replicas, &moved, first + 3_000);
        assert!(me.replicas["pg2"].stalled(3_000));
        check_local(&v, &me, first + 3_000, &["commit sync ANY 1 (pg2,pg3) g1"]);
        // With pg3 gone, none takes pg2's place: it keeps it, commits wait for it — strict
        // or not (a stall never makes the primary name fewer).
        v.reports
            .get_mut("pg1")
            .unwrap()
            .report
            .replicas
            .truncate(1);
        me.report.replicas.truncate(1);
        v.reports.get_mut("pg3").unwrap().received_at_ms = 0;
        check_local(&v, &me, first + 3_000, &[]);
        v.settings.sync.minimum = 1;
        check_local(&v, &me, first + 3_000, &[]);
        // The primary's own disk holds WAL back: nothing is sent, so nobody is waited for,
        // whatever it has written.
        let mut held = report.clone();
        held.replicas = vec![streaming("pg2", 900_000)];
        let held_back = track_replicas(&me.replicas, &held, NOW_MS + 5_000);
        assert_eq!(held_back["pg2"].since_ms, NOW_MS + 5_000);
        // A standby no longer streaming is forgotten.
        held.replicas.clear();
        assert!(track_replicas(&held_back, &held, NOW_MS + 6_000).is_empty());
    }

    #[test]
    fn turned_off_the_committed_set_is_emptied() {
        let mut v = primary_with(&["pg2"]);
        v.state.sync_set = ["pg2".to_string()].into();
        v.state.sync_quorum = 1;
        let r = &mut v.reports.get_mut("pg1").unwrap().report;
        r.slots = vec![slot_for("pg2")];
        r.sync = Some(rule(1, &["pg2"]));
        check(&v, "pg1", false, &["commit sync asynchronous g1"]);
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
}
