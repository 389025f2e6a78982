//! A data node brings its own PostgreSQL to the role the committed state gives it.

use super::maintenance::{primary_under_maintenance, reinit, restart_in_place, under_maintenance};
use super::switchover::hand_over;
use super::upstream::{clone_source, slot_of, stream_source};
use super::{hold, Action, ClusterView, Forward, LocalView, OnCrash, RejoinMode};
use crate::model::{Command, DataDirState, DbRole};
use crate::types::Generation;

/// A data node's part: bring its own PostgreSQL to the role the committed state gives it.
pub(super) fn reconcile_local(
    cluster: &ClusterView,
    local: &LocalView,
    now_ms: u64,
) -> Vec<Action> {
    let me = &local.report;
    let Some(primary) = cluster.state.primary.as_deref() else {
        let chosen = cluster.state.initdb.as_ref().map(|c| c.node.as_str());
        let reason = match (me.db_up, me.role, me.data_dir) {
            (false, _, Some(DataDirState::Empty)) if chosen == Some(local.name.as_str()) => {
                return vec![Action::Initdb {
                    generation: cluster.state.generation.next(),
                }];
            }
            (true, Some(DbRole::Primary), _) | (false, _, Some(DataDirState::Primary)) => {
                "bootstrap candidate: waiting for the coordinator to choose the first primary"
                    .to_string()
            }
            (false, _, Some(DataDirState::Empty)) => match chosen {
                Some(node) => format!(
                    "empty data_dir: waiting for {node} to initialise the cluster, then to \
                     clone it"
                ),
                None => "empty data_dir: waiting for a primary to clone from".to_string(),
            },
            _ => "standby: waiting for the cluster to have a primary".to_string(),
        };
        return vec![hold(reason)];
    };
    if primary == local.name {
        reconcile_primary(cluster, local, now_ms)
    } else {
        reconcile_standby(cluster, local, primary, now_ms)
    }
}

/// The committed primary: hand over if a switchover asks it to; else, if its PostgreSQL
/// runs, promote it or look after it; else start it, or give up the lease.
fn reconcile_primary(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    if let Some(sw) = state
        .switchover
        .as_ref()
        .filter(|s| s.from == local.name && s.generation == state.generation)
    {
        return hand_over(cluster, local, sw);
    }
    if local.db_running {
        return running_primary(cluster, local);
    }
    stopped_primary(cluster, local, now_ms)
}

/// The committed primary's PostgreSQL runs: promote it while it is still a standby (once
/// this node holds the lease), else keep its replication slots — one for each other data
/// node, none for a departed one or a cascading standby.
fn running_primary(cluster: &ClusterView, local: &LocalView) -> Vec<Action> {
    let state = &cluster.state;
    let me = &local.report;
    let generation = state.generation;
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
        // A cascading standby streams elsewhere, with no slot: one here would hold WAL for
        // it forever (`upstream::slot_of`).
        let cascading = |name: &str| state.tags_of(name).replicate_from.is_some();
        let missing: Vec<String> = state
            .data_members()
            .filter(|m| m.name != local.name && !cascading(&m.name))
            .map(|m| slot_for(&m.name))
            .filter(|slot| !me.slots.contains(slot))
            .collect();
        if !missing.is_empty() {
            return vec![Action::EnsureSlots {
                slots: missing,
                generation,
            }];
        }
        let unused: Vec<String> = state
            .departed
            .iter()
            .map(|n| slot_for(n))
            .chain(
                state
                    .data_members()
                    .filter(|m| m.name != local.name && cascading(&m.name))
                    .map(|m| slot_for(&m.name)),
            )
            .filter(|slot| me.slots.contains(slot))
            .collect();
        if !unused.is_empty() {
            return vec![Action::DropSlots {
                slots: unused,
                generation,
            }];
        }
    }
    restart_in_place(cluster, local).into_iter().collect()
}

/// Give up the lease of `generation` (a standby may take over), saying `why`.
pub(super) fn give_up_lease(local: &LocalView, generation: Generation, why: &str) -> Vec<Action> {
    vec![
        Action::Propose {
            command: Command::ReleaseLease {
                node: local.name.clone(),
                generation,
            },
            forward: Forward::ToCoordinator,
        },
        hold(format!(
            "{why}: giving up the lease of generation {generation}"
        )),
    ]
}

/// The committed primary's PostgreSQL is not running: give up the lease when it crashed and
/// is not back (`keeps_lease_after_crash`), keeps failing to start, or an operator forced a
/// promotion; else start it (invariant 4: only while holding the lease). Giving the lease up
/// only helps when a standby may take over: while synchronous replication knows only this
/// node to hold every acknowledged commit, none may, so it keeps the lease and starts again.
fn stopped_primary(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let state = &cluster.state;
    let settings = &cluster.settings;
    let generation = state.generation;
    if state.lease_released {
        return vec![hold(format!(
            "gave up the lease of generation {generation}: waiting for a standby to take over"
        ))];
    }
    if let Some(m) = state.maintenance.get(&local.name) {
        if m.keeps_stopped() {
            return primary_under_maintenance(cluster, local, m);
        }
    }
    if forced_promotion(cluster) {
        return give_up_lease(
            local,
            generation,
            "an operator forced a promotion (pgfm promote --force) while PostgreSQL is down",
        );
    }
    if let Some(crashed) = local.crashed_at_ms {
        if !keeps_lease_after_crash(cluster, local, crashed, now_ms) {
            return give_up_lease(local, generation, "PostgreSQL crashed and is not back");
        }
    }
    let no_taker = no_taker(cluster, local);
    if local.start_failures >= settings.start_attempts {
        if no_taker {
            return vec![hold(format!(
                "{}: keeping the lease of generation {generation}, since no standby holds \
                 every acknowledged commit (only {} does): fix the cause, then run pgfm resume \
                 on this node; or run pgfm promote --force to promote a standby without what \
                 only {} holds",
                start_failures(local),
                local.name,
                local.name
            ))];
        }
        return give_up_lease(local, generation, &start_failures(local));
    }
    match local.report.data_dir {
        None => vec![hold("data_dir could not be read".to_string())],
        Some(DataDirState::Empty) => vec![hold(format!(
            "named primary of generation {generation} but data_dir is empty"
        ))],
        // Invariant 4: start as the primary only while holding the lease.
        Some(_) if !local.lease_valid => vec![hold(format!(
            "primary of generation {generation}: waiting for the lease before starting"
        ))],
        // The report was made while PostgreSQL still ran (it just died): whether its
        // recovery had ended is read only from a stopped directory, and a promotion cut off
        // by the crash must start a new timeline (simulation seed 458: started as a primary
        // on the old timeline). Wait for a probe of the stopped directory.
        Some(_) if local.report.db_up => vec![hold(format!(
            "primary of generation {generation}: PostgreSQL just stopped; looking at its data \
             directory before starting it"
        ))],
        // A promotion cut off before it ended (a crash after it was committed): recovery
        // ends only through the promotion, which starts a new timeline (`running_primary`).
        Some(_) if local.report.recovery_unfinished => {
            vec![Action::StartToPromote { generation }]
        }
        Some(_) => vec![Action::StartPrimary { generation }],
    }
}

/// Any other data node: a standby of `primary`.
fn reconcile_standby(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    now_ms: u64,
) -> Vec<Action> {
    if let Some(m) = cluster.state.maintenance.get(&local.name) {
        return under_maintenance(cluster, local, primary, m, now_ms);
    }
    if let Some(r) = cluster.state.reinit.get(&local.name) {
        return reinit(cluster, local, primary, r, now_ms);
    }
    if local.db_running {
        running_standby(cluster, local, primary, now_ms)
    } else {
        stopped_standby(cluster, local, primary, now_ms)
    }
}

/// A standby's PostgreSQL runs: fence it if it accepts writes, stop it to be rewound if it
/// diverged from the primary's timeline, point it at where it should stream from (the
/// primary, or its `replicate_from` standby) if it streams from elsewhere.
pub(super) fn running_standby(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    now_ms: u64,
) -> Vec<Action> {
    let state = &cluster.state;
    let me = &local.report;
    let generation = state.generation;
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
    let source = stream_source(cluster, &local.name, primary, now_ms);
    let wanted = state
        .members
        .get(source)
        .and_then(|m| Some(format!("{}:{}", m.pg_host.as_ref()?, m.pg_port?)));
    let slot = slot_of(state, &local.name, source);
    if me.db_up
        && me.role == Some(DbRole::Standby)
        && wanted.is_some()
        && (me.conninfo_upstream != wanted || me.conninfo_slot != slot)
    {
        return vec![Action::Follow {
            upstream: source.to_string(),
            generation,
        }];
    }
    restart_in_place(cluster, local).into_iter().collect()
}

/// A standby's PostgreSQL is not running: by its data directory, clone it (empty), rejoin
/// it (a former primary), deal with its failed starts, or start it as a standby.
fn stopped_standby(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    now_ms: u64,
) -> Vec<Action> {
    let generation = cluster.state.generation;
    let upstream = stream_source(cluster, &local.name, primary, now_ms).to_string();
    // The primary accepts connections: it can be cloned, rewound against, streamed from.
    let primary_up = cluster
        .fresh_report(primary, now_ms)
        .is_some_and(|r| r.db_up && r.role == Some(DbRole::Primary));
    let clone_from = clone_source(cluster, &local.name, primary, now_ms)
        .or(primary_up.then_some(primary))
        .map(str::to_string);
    match local.report.data_dir {
        None => vec![hold("data_dir could not be read".to_string())],
        Some(DataDirState::Empty) => match clone_from {
            Some(upstream) => vec![Action::Clone {
                upstream,
                generation,
            }],
            None => vec![hold(format!(
                "empty data_dir: waiting for primary {primary} to accept connections"
            ))],
        },
        Some(DataDirState::Primary) | Some(DataDirState::FencedPrimary) => {
            former_primary(cluster, local, primary, primary_up)
        }
        Some(DataDirState::Standby) if local.start_failures >= cluster.settings.start_attempts => {
            failing_standby(cluster, local, primary, primary_up)
        }
        // Invariant 4: every node that is not the primary boots as a standby.
        Some(DataDirState::Standby) => vec![Action::StartStandby {
            upstream,
            generation,
        }],
    }
}

/// A former primary rejoins as a standby of `primary` as `rejoin` says: rewound against it
/// (re-cloned if the rewind failed, under `rewind-or-clone`), and under `manual` only once
/// an operator ran `pgfm resume` on it.
fn former_primary(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    primary_up: bool,
) -> Vec<Action> {
    let settings = &cluster.settings;
    let generation = cluster.state.generation;
    let upstream = primary.to_string();
    if settings.rejoin == RejoinMode::Manual && !local.resume_requested {
        return vec![hold(format!(
            "former primary, rejoin = manual: run pgfm resume on this node to rejoin {primary}"
        ))];
    }
    if !primary_up {
        return vec![hold(format!(
            "former primary: waiting for primary {primary} to accept connections to rewind \
             against it"
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
            "rewind against {primary} failed ({error}); fix it, then run pgfm resume, or set \
             rejoin = \"rewind-or-clone\""
        ))],
    }
}

/// A standby whose PostgreSQL failed to start `start_attempts` times in a row: re-cloned
/// once under `rewind-or-clone`, else held with the fix for the operator.
fn failing_standby(
    cluster: &ClusterView,
    local: &LocalView,
    primary: &str,
    primary_up: bool,
) -> Vec<Action> {
    let why = start_failures(local);
    match (cluster.settings.rejoin, primary_up) {
        _ if local.start_recloned => vec![hold(format!(
            "{why}, also after a fresh clone: the cause is outside the data directory \
             (settings, port, memory): fix it, then run pgfm resume on this node"
        ))],
        (RejoinMode::RewindOrClone, true) => vec![Action::Reclone {
            upstream: primary.to_string(),
            generation: cluster.state.generation,
        }],
        (RejoinMode::RewindOrClone, false) => vec![hold(format!(
            "{why}: waiting for primary {primary} to accept connections to re-clone from it"
        ))],
        _ => vec![hold(format!(
            "{why}: fix the data directory, then run pgfm resume on this node (or set rejoin = \
             \"rewind-or-clone\" to re-clone it)"
        ))],
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

/// The serving primary commits the timeline it runs on and its history, so that every node
/// can tell a standby that diverged from it (invariant 5), even once it is gone.
pub(super) fn record_timeline(cluster: &ClusterView, local: &LocalView) -> Vec<Action> {
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
    vec![Action::Propose {
        command: Command::SetTimeline {
            node: local.name.clone(),
            generation: state.generation,
            timeline,
            forks: me.forks.clone(),
        },
        forward: Forward::ToCoordinator,
    }]
}

/// Why this node is not the serving primary (None: it is — the committed primary, running
/// writable, holding the lease, not handing over).
pub(super) fn not_serving(cluster: &ClusterView, local: &LocalView) -> Option<String> {
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

/// The committed primary's PostgreSQL crashed and its agent restarts it in place: it holds
/// the lease (no other node can be promoted) and keeps it through the crash. Clients of the
/// VIP then get "connection refused" at once and reconnect as soon as it is back, rather
/// than wait out a connect timeout on an address nobody answers.
pub(super) fn restarting_in_place(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> bool {
    let state = &cluster.state;
    state.lease_holder() == Some(local.name.as_str())
        && state.switchover.is_none()
        && local.lease_valid
        && !forced_promotion(cluster)
        && local
            .crashed_at_ms
            .is_some_and(|c| keeps_lease_after_crash(cluster, local, c, now_ms))
}

/// Whether the primary keeps its lease after its PostgreSQL crashed at `crashed_ms`, and
/// restarts it in place: under `on_crash = "restart"` within `crash_restart_bound`, and
/// always while no standby may take over (`no_taker`).
fn keeps_lease_after_crash(
    cluster: &ClusterView,
    local: &LocalView,
    crashed_ms: u64,
    now_ms: u64,
) -> bool {
    let settings = &cluster.settings;
    no_taker(cluster, local)
        || match settings.on_crash {
            OnCrash::Failover => false,
            OnCrash::Restart => now_ms < crashed_ms + settings.crash_restart_bound_ms,
        }
}

/// No standby may take over from this primary: synchronous replication knows it alone to
/// hold every acknowledged commit (`ClusterState::sole_holder`). Giving its lease up would
/// leave the cluster waiting for nobody.
pub(super) fn no_taker(cluster: &ClusterView, local: &LocalView) -> bool {
    cluster.state.sole_holder() == Some(local.name.as_str())
}

/// An operator forced a promotion in this generation (`pgfm promote --force`): the primary,
/// if its PostgreSQL is down, gives its lease up so that the promotion need not wait for it
/// to run out.
fn forced_promotion(cluster: &ClusterView) -> bool {
    cluster.state.promotion_asked().is_some_and(|r| r.force)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PromotionRequest;
    use crate::testing::*;
    use crate::types::Timeline;

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
    fn a_promotion_cut_off_before_it_ended_is_finished_by_a_promotion_not_a_start() {
        // pg2 was committed the primary of generation 2 and went down before its promotion
        // ended: its directory is still a standby's (pg_control: in archive recovery).
        let mut v = view(
            Some("pg2"),
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Stopped(Recovering)),
                ("pg3", Running(DbRole::Standby)),
            ],
        );
        v.state.generation = Generation(2);
        v.reports.get_mut("pg2").unwrap().report.recovery_unfinished = true;
        check(&v, "pg2", false, &["start to promote g2"]);
        let mut me = local(&v, "pg2", false);
        me.lease_valid = false;
        check_local(
            &v,
            &me,
            NOW_MS,
            &["hold: primary of generation 2: waiting for the lease before starting"],
        );
        // Its PostgreSQL, about to be promoted, dies: the report made while it ran says
        // nothing of the stopped directory (recovery not read): nothing starts until a probe
        // of the stopped directory says how.
        {
            let report = &mut v.reports.get_mut("pg2").unwrap().report;
            (report.db_up, report.role, report.recovery_unfinished) =
                (true, Some(DbRole::Standby), false);
        }
        let mut died = local(&v, "pg2", false);
        died.db_running = false;
        check_local(
            &v,
            &died,
            NOW_MS,
            &["hold: primary of generation 2: PostgreSQL just stopped; looking at its data directory before starting it"],
        );
        // Up as a standby, it is promoted (a new timeline), once it holds the lease.
        let report = &mut v.reports.get_mut("pg2").unwrap().report;
        (report.db_up, report.role, report.recovery_unfinished) =
            (true, Some(DbRole::Standby), false);
        check(&v, "pg2", false, &["pg_promote g2"]);
        // A switchover's old primary, stopped cleanly and marked a standby, whose
        // switchover was rolled back: its recovery had ended; it starts as it was.
        let v = view(
            Some("pg1"),
            &[
                ("pg1", Stopped(Recovering)),
                ("pg2", Running(DbRole::Standby)),
            ],
        );
        check(&v, "pg1", false, &["start primary g1"]);
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

    /// Giving the lease up helps only if a standby may take over: while synchronous
    /// replication knows the primary alone to hold every acknowledged commit (a chaos soak
    /// found a cluster waiting for nobody), it keeps the lease and starts again, and holds
    /// after its start attempts with the way out; an operator's promotion lets it go.
    #[test]
    fn a_primary_that_alone_holds_every_commit_keeps_its_lease() {
        let mut v = view(
            Some("pg1"),
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Running(DbRole::Standby)),
                ("witness", Stopped(Empty)),
            ],
        );
        v.state.sync_set = ["pg1".to_string()].into();
        let mut me = local(&v, "pg1", false);
        // Crashed, past crash_restart_bound, or under on_crash = "failover": restarted in
        // place, the VIP kept.
        me.crashed_at_ms = Some(1_000);
        check_local(&v, &me, 60_000, &["start primary g1"]);
        assert!(restarting_in_place(&v, &me, 60_000));
        let mut failover = v.clone();
        failover.settings.on_crash = OnCrash::Failover;
        check_local(&failover, &me, 2_000, &["start primary g1"]);
        me.crashed_at_ms = None;
        me.start_failures = 3;
        check_local(&v, &me, 2_000, &["hold: PostgreSQL failed to start 3 times in a row (last: unknown error): keeping the lease of generation 1, since no standby holds every acknowledged commit (only pg1 does): fix the cause, then run pgfm resume on this node; or run pgfm promote --force to promote a standby without what only pg1 holds"]);
        v.state.promotion_request = Some(PromotionRequest {
            to: None,
            force: true,
            generation: Generation(1),
            lease_renewals: None,
        });
        check_local(&v, &me, 2_000, &["release pg1 g1", "hold: an operator forced a promotion (pgfm promote --force) while PostgreSQL is down: giving up the lease of generation 1"]);
        // Without --force the request changes nothing: no standby may be promoted anyway.
        v.state.promotion_request.as_mut().unwrap().force = false;
        check_local(&v, &me, 2_000, &["hold: PostgreSQL failed to start 3 times in a row (last: unknown error): keeping the lease of generation 1, since no standby holds every acknowledged commit (only pg1 does): fix the cause, then run pgfm resume on this node; or run pgfm promote --force to promote a standby without what only pg1 holds"]);
        // A standby in the set may take over: the lease is given up as before.
        v.state.promotion_request = None;
        v.state.sync_set = ["pg1".to_string(), "pg2".to_string()].into();
        check_local(&v, &me, 2_000, &["release pg1 g1", "hold: PostgreSQL failed to start 3 times in a row (last: unknown error): giving up the lease of generation 1"]);
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
}
