//! A planned switchover: the old primary stops cleanly and hands over (`hand_over`, its
//! part, run by `reconcile`); the coordinator promotes the target once it has replayed
//! everything, or rolls back (`switchover`).

use super::{cluster_hold, hold, Action, ClusterView, Forward, LocalView};
use crate::model::{Command, DbRole, Switchover};

/// The coordinator's part of a planned switchover: once the old primary has stopped and
/// handed over, promote the target as soon as it has replayed the old primary's final
/// record (its shutdown checkpoint), so nothing acknowledged is lost; roll back — the old
/// primary, which holds every commit and whose generation never changed, starts again as
/// primary — if the target is gone or a step overran `switchover_timeout` (invariant 9).
pub(super) fn switchover(cluster: &ClusterView, sw: &Switchover, now_ms: u64) -> Vec<Action> {
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
        vec![Action::Propose { command: Command::CancelSwitchover {
            generation: state.generation,
            at_unix_ms: cluster.wall_clock_ms,
            reason: format!(
                "switchover from {} to {} rolled back: {why}; {} stays the primary of generation {}",
                sw.from, sw.to, sw.from, state.generation
            ),
            lease_renewals: None,
        }, forward: Forward::Never }]
    };
    // Its target may no longer be promoted (put under maintenance since, say): the log
    // would refuse the promotion at every step.
    if let Err(why) = state.promotable(&sw.to) {
        return cancel(why.to_string());
    }
    let Some(final_lsn) = sw.final_lsn.filter(|_| state.lease_released) else {
        // The primary renews its lease until it hands over: once the lease has run out it
        // is dead, frozen or cut off, and no hand-over will come. Waiting out the timeout
        // would only hold up the failover.
        if cluster.lease_expires_at_ms() <= now_ms {
            return stopped_renewing(cluster, sw);
        }
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
            vec![Action::Propose {
                command: Command::Promote {
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
                },
                forward: Forward::Never,
            }]
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

/// The old primary of `sw` stopped renewing its lease before it handed over. A switchover
/// ends there: the primary stays, and the failover rules take over from here. A
/// `pgfm promote` goes on as the operator's promotion, by a failover (to the same target if
/// the operator named it). Judged on the renewals applied here: the log refuses the cancel
/// if one (or the hand-over) was applied since.
fn stopped_renewing(cluster: &ClusterView, sw: &Switchover) -> Vec<Action> {
    let generation = cluster.state.generation;
    let reason = if sw.promotion {
        format!(
            "pgfm promote: {} stopped renewing its lease without handing over; {} is promoted \
             by a failover instead, once another agent finds {}'s database down",
            sw.from, sw.to, sw.from
        )
    } else {
        format!(
            "switchover from {} to {} rolled back: {} stopped renewing its lease without \
             handing over; it stays the primary of generation {generation} until a failover",
            sw.from, sw.to, sw.from
        )
    };
    vec![Action::Propose {
        command: Command::CancelSwitchover {
            generation,
            at_unix_ms: cluster.wall_clock_ms,
            reason,
            lease_renewals: Some(cluster.state.lease_renewals),
        },
        forward: Forward::Never,
    }]
}

/// The old primary's part of a switchover: stop cleanly and hand over (`Action::HandOver`
/// releases the lease with the final WAL position), once the target streams from it — it
/// must take the final WAL from this primary — unless forced.
pub(super) fn hand_over(cluster: &ClusterView, local: &LocalView, sw: &Switchover) -> Vec<Action> {
    let me = &local.report;
    if cluster.state.lease_released {
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
    vec![Action::HandOver {
        to: sw.to.clone(),
        generation: cluster.state.generation,
        seq: sw.seq,
        force: sw.force,
    }]
}

/// How long past its time a scheduled switchover waits for the cluster to allow it (a
/// standby catching up after a batch job) before it is dropped, with the reason.
pub const SCHEDULE_GRACE_MS: u64 = 60_000;

/// `pgfm switchover --at TIME`: once the time has come (by the coordinator's wall clock) and
/// no switchover is under way, start it as `pgfm switchover` would, by the same check
/// (`operator::check_switchover`); while that refuses, wait up to `SCHEDULE_GRACE_MS`, then
/// drop it, saying why.
pub(super) fn scheduled(cluster: &ClusterView, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    let Some(s) = &state.scheduled_switchover else {
        return Vec::new();
    };
    let wall = cluster.wall_clock_ms;
    let due = crate::types::utc(s.at_unix_ms);
    let drop = |why: String| {
        vec![Action::Propose {
            command: Command::DropScheduledSwitchover {
                reason: format!(
                    "the switchover scheduled at {due} by {} did not start: {why}",
                    s.by
                ),
                at_unix_ms: wall,
                scheduled_at_unix_ms: s.at_unix_ms,
            },
            forward: Forward::Never,
        }]
    };
    // Asked of another primary: a failover or a switchover came first.
    if s.generation != state.generation {
        return drop(format!(
            "the primary changed since it was asked (generation {} then, {} now)",
            s.generation, state.generation
        ));
    }
    if wall < s.at_unix_ms {
        return Vec::new();
    }
    let late = wall >= s.at_unix_ms + SCHEDULE_GRACE_MS;
    let grace = SCHEDULE_GRACE_MS / 1000;
    if let Some(sw) = &state.switchover {
        return match late {
            true => drop(format!(
                "a switchover from {} to {} was under way until {grace} s past its time",
                sw.from, sw.to
            )),
            false => Vec::new(),
        };
    }
    match crate::operator::check_switchover(cluster, now_ms, s.to.as_deref()) {
        Ok(handover) => vec![Action::Propose {
            command: Command::StartScheduledSwitchover {
                to: handover.to,
                generation: handover.generation,
                scheduled_at_unix_ms: s.at_unix_ms,
            },
            forward: Forward::Never,
        }],
        Err(refusal) if !late => vec![cluster_hold(format!(
            "the switchover scheduled at {due} waits: {refusal} (dropped {grace} s past its time)"
        ))],
        Err(refusal) => drop(format!("{refusal} (still so {grace} s past its time)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::coordinate;
    use crate::testing::*;
    use crate::types::Lsn;

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
        // The step started at 1 s; 5 s later the coordinator gives up (pg1 still renews).
        v.last_renewal_seen_ms = Some(5_800);
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
                [Action::Propose { command: Command::Promote { lost_bytes: None, handover: Some(_), reason, .. }, .. }]
                    if reason.contains("pg1 could not stop cleanly")
            ),
            "{promoted:?}"
        );
    }

    /// A primary that stops renewing its lease (its host died) before it hands over never
    /// will: the switchover ends when the lease runs out, not `switchover_timeout` later.
    /// A `pgfm promote` that chose the hand-over because the primary still looked alive
    /// goes on as the operator's promotion: a failover to the same target, even paused.
    #[test]
    fn a_primary_that_stops_renewing_ends_the_switchover_when_its_lease_runs_out() {
        let mut v = primary_with(&["pg2"]);
        v.state.switchover = Some(switchover_pg1_to_pg2());
        v.switchover_step_ms = Some(1_000);
        v.last_renewal_seen_ms = Some(900);
        // The tests' lease (3 s) and drift margin (0.5 s) from the last renewal seen at 0.9 s.
        check_coordinator(
            &v,
            4_399,
            &["cluster hold: switchover from pg1 to pg2: waiting for pg1 to stop cleanly and hand over"],
        );
        check_coordinator(&v, 4_400, &["cancel switchover: switchover from pg1 to pg2 rolled back: pg1 stopped renewing its lease without handing over; it stays the primary of generation 1 until a failover"]);

        v.state.switchover.as_mut().unwrap().promotion = true;
        v.state.paused = true;
        let decided = coordinate(&v, 4_400);
        let [Action::Propose { command, .. }] = decided.as_slice() else {
            panic!("{decided:?}");
        };
        assert_eq!(
            show(decided.clone()),
            ["cancel switchover: pgfm promote: pg1 stopped renewing its lease without handing over; pg2 is promoted by a failover instead, once another agent finds pg1's database down"]
        );
        // Judged on the renewals applied: one applied since makes the log refuse it.
        let mut renewed = v.state.clone();
        renewed
            .apply(&Command::RenewLease {
                node: "pg1".into(),
                generation: crate::types::Generation(1),
                lease_ms: None,
            })
            .unwrap();
        assert!(renewed.apply(command).is_err());
        v.state.apply(command).unwrap();
        assert_eq!(v.state.switchover, None);
        // The operator named no target (`pgfm promote`): the failover chooses.
        let asked = crate::model::PromotionRequest {
            to: None,
            force: false,
            generation: crate::types::Generation(1),
            lease_renewals: Some(v.state.lease_renewals),
        };
        assert_eq!(v.state.promotion_asked(), Some(&asked));
        // pg2 found pg1's database down: the operator's promotion goes ahead, paused or not.
        for o in v.reports.values_mut() {
            o.received_at_ms = 4_300;
        }
        v.reports.get_mut("pg1").unwrap().received_at_ms = 900;
        judged(&mut v, "pg2", Some(false));
        check_coordinator(&v, 4_400, &["promote pg2 g2 from pg1 losing 0"]);
        // pg1 renews again: it is alive, and the operator's promotion of it is over.
        v.state
            .apply(&Command::RenewLease {
                node: "pg1".into(),
                generation: crate::types::Generation(1),
                lease_ms: None,
            })
            .unwrap();
        v.last_renewal_seen_ms = Some(4_400);
        v.reports.get_mut("pg1").unwrap().received_at_ms = 4_400;
        assert_eq!(v.state.promotion_asked(), None);
        check_coordinator(&v, 4_400, &[]);
    }

    /// `pgfm switchover --at TIME`: nothing before its time; then started as `pgfm
    /// switchover` would; while the cluster refuses it, held, then dropped with the reason
    /// `SCHEDULE_GRACE_MS` past its time; it starts once only (the log refuses a second).
    #[test]
    fn a_scheduled_switchover_starts_at_its_time_or_is_dropped_saying_why() {
        use crate::model::ScheduledSwitchover;
        use crate::testing::{behind, lab};
        let mut v = lab(2);
        v.state
            .apply(&Command::ScheduleSwitchover {
                scheduled: ScheduledSwitchover {
                    at_unix_ms: 60_000,
                    to: None,
                    by: "dba@db1".into(),
                    generation: crate::types::Generation(1),
                },
            })
            .unwrap();
        v.wall_clock_ms = 59_999;
        assert!(scheduled(&v, NOW).is_empty());
        v.wall_clock_ms = 60_000;
        let start = scheduled(&v, NOW);
        assert_eq!(
            show(start.clone()),
            [
                "propose StartScheduledSwitchover { to: \"pg2\", generation: Generation(1), \
              scheduled_at_unix_ms: 60000 }"
            ]
        );
        let Action::Propose { command, .. } = &start[0] else {
            unreachable!()
        };
        let mut after = v.state.clone();
        after.apply(command).unwrap();
        assert_eq!(
            after.switchover.as_ref().map(|s| s.to.as_str()),
            Some("pg2")
        );
        assert!(after.scheduled_switchover.is_none());
        assert!(after.apply(command).is_err(), "started twice");

        behind(&mut v, "pg2", 100_000_000);
        assert_eq!(
            show(scheduled(&v, NOW)),
            [
                "cluster hold: the switchover scheduled at 1970-01-01T00:01:00Z waits: no \
              standby is in sync with pg1: a switchover now could lose data (No standby \
              database is in sync with the primary: pg2 is 100000000 bytes behind (max_lag \
              1048576). Promoting now could lose data.) (dropped 60 s past its time)"
            ]
        );
        v.wall_clock_ms = 60_000 + SCHEDULE_GRACE_MS;
        let dropped = scheduled(&v, NOW);
        let Action::Propose { command, .. } = &dropped[0] else {
            panic!("{dropped:?}")
        };
        let mut after = v.state.clone();
        after.apply(command).unwrap();
        assert!(after.scheduled_switchover.is_none() && after.switchover.is_none());
        let kept = after.cancelled_switchovers.last().unwrap();
        assert!(
            kept.reason.starts_with(
                "the switchover scheduled at 1970-01-01T00:01:00Z by dba@db1 did not start: no \
                 standby is in sync with pg1"
            ),
            "{}",
            kept.reason
        );
    }
}
