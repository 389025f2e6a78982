//! Fixtures for core's tests, in one place.
//!
//! The engine's: a cluster of data nodes (`pg1`, `pg2`, ...) and a `witness`, built from
//! what each node is seen doing, and `check`, which compares a decision with short lines
//! (`show`). The operator commands' and the standing's (at the end, "The lab's shape"): a
//! cluster as `pgfm lab up N` looks once healthy (`lab`), and the faults the end-to-end
//! tests cause, as they change the model (`silent`, `behind`, `not_streaming`, `priority`).
//!
//! Every number the fixtures fix is named here, so that a test can rely on it:
//!
//! - time: every report arrives at `RECEIVED_MS` (1 s), `check` decides at `NOW_MS` (2 s),
//!   and a report stays fresh for 3 s (`report_ttl`);
//! - the lease: 3 s plus a 0.5 s drift margin, last renewed at 0, so it runs out at 3.5 s;
//! - WAL: every running node is at `POSITION` (0/F4240), every standby streams from the
//!   primary and has flushed and replayed all of it;
//! - members: every data node is promotable with priority `PRIORITY`, except pg3, whose
//!   priority is `PG3_PRIORITY` (lower); every data node's PostgreSQL is at `PG_ADDRESS`.

use std::collections::BTreeMap;

use crate::decide::{
    decide, Action, ClusterView, Decision, LocalView, Observed, OnCrash, RejoinMode, Settings,
};
use crate::lease::LeaseSettings;
use crate::model::{
    ClusterState, Command, DataDirState, DbRole, Member, NodeKind, NodeReport, ReplicaInfo,
    Switchover, SyncRule, SyncSettings,
};
use crate::types::{Generation, Lsn};

pub(crate) use DataDirState::{Empty, FencedPrimary, Primary as Writable, Standby as Recovering};
pub(crate) use Seen::{Running, Silent, Stopped};

/// When every report in a `view` arrived (monotonic ms).
pub(crate) const RECEIVED_MS: u64 = 1_000;
/// When `check` decides (monotonic ms): the reports are fresh, the lease has not run out.
pub(crate) const NOW_MS: u64 = 2_000;
/// The WAL position of every running node in a `view`: the primary's `current_lsn`, each
/// standby's received, replayed and flushed positions.
pub(crate) const POSITION: Lsn = Lsn(1_000_000);
/// The failover priority of every data node but pg3.
pub(crate) const PRIORITY: u32 = 100;
/// pg3's failover priority: lower than the others', so that it loses a tie.
pub(crate) const PG3_PRIORITY: u32 = 50;
/// Where every data node's PostgreSQL listens. They all share it, so a running standby's
/// upstream (`PG_ADDRESS`, see `report`) is whichever node is the primary: a test sees a
/// `Follow` only when it changes a standby's `conninfo_upstream`.
pub(crate) const PG_ADDRESS: (&str, u16) = ("127.0.0.1", 5003);

/// How a test names a node's member entry: a data node, promotable, with priority
/// `PRIORITY` (pg3: `PG3_PRIORITY`) and PostgreSQL at `PG_ADDRESS`; the node named
/// `witness` is the witness (no PostgreSQL).
pub(crate) fn member(name: &str) -> Member {
    let witness = name == "witness";
    Member {
        name: name.into(),
        kind: if witness {
            NodeKind::Witness
        } else {
            NodeKind::Data
        },
        address: "127.0.0.1:7000".into(),
        pg_host: (!witness).then(|| PG_ADDRESS.0.into()),
        pg_port: (!witness).then_some(PG_ADDRESS.1),
        priority: if name == "pg3" {
            PG3_PRIORITY
        } else {
            PRIORITY
        },
        promotable: true,
    }
}

/// How a node looks in a test: running primary, running standby, stopped with a data
/// dir of the given kind, or silent (no report).
#[derive(Clone, Copy)]
pub(crate) enum Seen {
    Running(DbRole),
    Stopped(DataDirState),
    Silent,
}

/// The report of `name` seen as `seen`. A running primary is at `POSITION`; a running
/// standby has received and replayed up to `POSITION` and streams from `PG_ADDRESS`. No
/// report has replicas (`view` adds them), replication slots, a timeline, a VIP, a
/// synchronous setting or a verdict on the primary (`sees_primary`): a test that needs one
/// sets it (`judged`).
pub(crate) fn report(name: &str, seen: Seen) -> NodeReport {
    let mut r = NodeReport::new(name, member(name).kind);
    match seen {
        Seen::Running(role) => {
            r.db_up = true;
            r.role = Some(role);
            r.data_dir = Some(match role {
                DbRole::Primary => DataDirState::Primary,
                DbRole::Standby => DataDirState::Standby,
            });
            match role {
                DbRole::Primary => r.current_lsn = Some(POSITION),
                DbRole::Standby => {
                    r.received_lsn = Some(POSITION);
                    r.replayed_lsn = Some(POSITION);
                    r.conninfo_upstream = Some(format!("{}:{}", PG_ADDRESS.0, PG_ADDRESS.1));
                    r.conninfo_slot = Some(crate::decide::slot_for(name));
                }
            }
        }
        Seen::Stopped(dir) => r.data_dir = Some(dir),
        Seen::Silent => {}
    }
    r
}

/// A cluster of `nodes`, every one a registered member and a Raft voter, with `primary`
/// the committed primary of generation 1 (None: not bootstrapped, generation 0).
///
/// Each node that is not `Silent` reported at `RECEIVED_MS`; the running primary reports
/// every running standby streaming from it, flushed to `POSITION`. This agent is a
/// coordinator since 0 and saw the last lease renewal at 0; the current switchover step
/// (if a test adds one) began at `RECEIVED_MS`; the wall clock says 42. No WAL positions
/// were measured. The settings are pinned here, so that the numbers in the tests do not
/// move with the defaults.
pub(crate) fn view(primary: Option<&str>, nodes: &[(&str, Seen)]) -> ClusterView {
    let mut state = committed(settings());
    for (name, _) in nodes {
        state.members.insert(name.to_string(), member(name));
    }
    if let Some(p) = primary {
        state.primary = Some(p.into());
        state.generation = Generation(1);
    }
    let mut reports = nodes
        .iter()
        .filter(|(_, seen)| !matches!(seen, Seen::Silent))
        .map(|(name, seen)| {
            let observed = Observed {
                report: report(name, *seen),
                received_at_ms: RECEIVED_MS,
            };
            (name.to_string(), observed)
        })
        .collect::<BTreeMap<String, Observed>>();
    let streaming: Vec<ReplicaInfo> = nodes
        .iter()
        .filter(|(_, seen)| matches!(seen, Seen::Running(DbRole::Standby)))
        .map(|(name, _)| streaming(name, POSITION.0))
        .collect();
    for o in reports.values_mut() {
        if o.report.role == Some(DbRole::Primary) {
            o.report.replicas = streaming.clone();
        }
    }
    ClusterView {
        name: "witness".to_string(),
        voters: nodes.iter().map(|(n, _)| n.to_string()).collect(),
        state,
        reports,
        settings: settings(),
        last_renewal_seen_ms: Some(0),
        lease_until_ms: None,
        coordinator_since_ms: Some(0),
        wall_clock_ms: 42,
        measured: BTreeMap::new(),
        switchover_step_ms: Some(RECEIVED_MS),
    }
}

/// A state whose cluster-wide settings are committed (as every cluster's are once its
/// first coordinator ran), so that the tests see no first commit of them.
fn committed(settings: Settings) -> ClusterState {
    ClusterState {
        settings: Some(crate::settings::CommittedSettings::first(
            settings, "pg1", 0,
        )),
        ..ClusterState::default()
    }
}

/// The settings of every `view`.
fn settings() -> Settings {
    Settings {
        // Runs out 3.5 s after the last renewal (lease + drift margin).
        lease: LeaseSettings {
            lease_ms: 3000,
            renew_interval_ms: 500,
            safety_margin_ms: 1000,
            drift_margin_ms: 500,
        },
        // Asynchronous.
        sync: SyncSettings::default(),
        max_lag: 1024 * 1024,
        auto_failover: true,
        on_crash: OnCrash::Restart,
        crash_restart_bound_ms: 10_000,
        rejoin: RejoinMode::RewindOrClone,
        report_ttl_ms: 3_000,
        switchover_timeout_ms: 5_000,
        start_attempts: 3,
        ..Settings::default()
    }
}

/// pg1 the running primary of generation 1, `standbys` running standbys, and a witness
/// (stopped, its data directory empty: it has none).
pub(crate) fn primary_with(standbys: &[&str]) -> ClusterView {
    let nodes: Vec<(&str, Seen)> = std::iter::once(("pg1", Running(DbRole::Primary)))
        .chain(standbys.iter().map(|n| (*n, Running(DbRole::Standby))))
        .chain(std::iter::once(("witness", Stopped(Empty))))
        .collect();
    view(Some("pg1"), &nodes)
}

/// `primary_with(pg2, pg3)` whose primary's host died: see `expired`.
pub(crate) fn failover_view() -> ClusterView {
    expired(primary_with(&["pg2", "pg3"]))
}

/// `v` with pg1's host dead: its last report arrived at 0 (stale from 3 s on), and every
/// other agent reported at 10 s that it found pg1's database down.
pub(crate) fn expired(mut v: ClusterView) -> ClusterView {
    v.reports.get_mut("pg1").unwrap().received_at_ms = 0;
    v.settings.report_ttl_ms = 3_000;
    for o in v.reports.values_mut() {
        if o.report.name != "pg1" {
            o.received_at_ms = 10_000;
        }
    }
    for name in ["pg2", "pg3", "witness"] {
        judged(&mut v, name, Some(false));
    }
    v
}

/// `name`'s agent, at its last check of the current generation's primary, found its
/// database answering (`Some(true)`), down (`Some(false)`), or could not tell (None). No-op
/// for a node without a report.
pub(crate) fn judged(v: &mut ClusterView, name: &str, answering: Option<bool>) {
    let generation = v.state.generation;
    if let Some(o) = v.reports.get_mut(name) {
        o.report.sees_primary = answering;
        o.report.primary_checked = Some(generation);
    }
}

/// A switchover from pg1 to pg2 asked in generation 1 (the first, `seq` 1, not forced),
/// pg1 not stopped yet.
pub(crate) fn switchover_pg1_to_pg2() -> Switchover {
    Switchover {
        from: "pg1".into(),
        to: "pg2".into(),
        force: false,
        generation: Generation(1),
        final_lsn: None,
        seq: 1,
        unclean: false,
        promotion: false,
        named: false,
        maintenance: false,
    }
}

/// What `me` knows of itself in `cluster`: its report there (an empty one if it has
/// none), its PostgreSQL running as that report says and writable as a running primary.
/// It holds the lease; nothing crashed, no start or rewind failed, no resume was asked.
pub(crate) fn local(cluster: &ClusterView, me: &str, coordinator: bool) -> LocalView {
    let report = cluster
        .reports
        .get(me)
        .map(|o| o.report.clone())
        .unwrap_or_else(|| NodeReport::new(me, member(me).kind));
    LocalView {
        name: me.into(),
        kind: member(me).kind,
        is_coordinator: coordinator,
        db_running: report.db_up,
        writable: report.db_up && report.role == Some(DbRole::Primary),
        report,
        lease_valid: true,
        crashed_at_ms: None,
        resume_requested: false,
        rewind_failed: None,
        start_failures: 0,
        start_error: None,
        start_recloned: false,
        reloaded: 0,
        restarted: 0,
        replicas: Default::default(),
    }
}

/// A standby as its primary sees it: streaming, flushed and replayed up to `flush`.
pub(crate) fn streaming(name: &str, flush: u64) -> ReplicaInfo {
    ReplicaInfo {
        application_name: name.into(),
        state: "streaming".into(),
        sync_state: "async".into(),
        replay_lsn: Some(Lsn(flush)),
        flush_lsn: Some(Lsn(flush)),
        sent_lsn: Some(Lsn(flush)),
    }
}

/// `count` of `names`.
pub(crate) fn rule(count: usize, names: &[&str]) -> SyncRule {
    SyncRule::new(count, names.iter().map(|n| n.to_string()).collect())
}

/// Each action as a short line that names what a test checks: "promote pg2 g2 from pg1
/// losing 0", "hold: ...".
pub(crate) fn show(actions: Vec<Action>) -> Vec<String> {
    actions.iter().map(short).collect()
}

/// One short line per action, for `check`. Long: one arm per kind of action, nothing more.
fn short(action: &Action) -> String {
    match action {
        Action::Propose {
            command:
                Command::Bootstrap {
                    primary,
                    generation,
                },
            ..
        } => format!("bootstrap {primary} g{generation}"),
        Action::Propose {
            command: Command::ChooseInitdb { node, .. },
            ..
        } => format!("choose {node} for initdb"),
        Action::Propose {
            command: Command::SetSettings {
                base_revision, by, ..
            },
            ..
        } => format!("settings on {base_revision} by {by}"),
        Action::Initdb { generation } => format!("initdb g{generation}"),
        Action::Propose {
            command:
                Command::Promote {
                    node,
                    generation,
                    from,
                    lost_bytes,
                    ..
                },
            ..
        } => format!(
            "promote {node} g{generation} from {} losing {}",
            from.as_deref().unwrap_or("-"),
            lost_bytes.unwrap_or(0)
        ),
        Action::Propose {
            command: Command::ReleaseLease { node, generation },
            ..
        } => {
            format!("release {node} g{generation}")
        }
        Action::Propose {
            command: Command::CancelSwitchover { reason, .. },
            ..
        } => {
            format!("cancel switchover: {reason}")
        }
        Action::Propose {
            command:
                Command::SetSyncSet {
                    members,
                    generation,
                    quorum,
                    ..
                },
            ..
        } => format!(
            "commit sync {} g{generation}",
            SyncRule::new(*quorum, members.clone())
        ),
        Action::Propose { command: other, .. } => format!("propose {other:?}"),
        Action::StartPrimary { generation } => format!("start primary g{generation}"),
        Action::StartToPromote { generation } => format!("start to promote g{generation}"),
        Action::StartStandby {
            upstream,
            generation,
        } => format!("start standby of {upstream} g{generation}"),
        Action::Clone {
            upstream,
            generation,
        } => format!("clone {upstream} g{generation}"),
        Action::Promote { generation } => format!("pg_promote g{generation}"),
        Action::Follow {
            upstream,
            generation,
        } => format!("follow {upstream} g{generation}"),
        Action::Fence { generation, .. } => format!("fence g{generation}"),
        Action::StopToRewind { generation, reason } => {
            format!("stop to rewind g{generation}: {reason}")
        }
        Action::StopCleanly { generation, .. } => {
            format!("stop g{generation}")
        }
        Action::MoveAside { generation, .. } => format!("move aside g{generation}"),
        Action::Rewind {
            upstream,
            generation,
        } => format!("rewind from {upstream} g{generation}"),
        Action::Reclone {
            upstream,
            generation,
        } => format!("reclone from {upstream} g{generation}"),
        Action::HandOver { to, generation, .. } => {
            format!("hand over to {to} g{generation}")
        }
        Action::EnsureSlots { slots, generation } => {
            format!("slots {} g{generation}", slots.join(","))
        }
        Action::Reload {
            count, generation, ..
        } => format!("reload #{count} g{generation}"),
        Action::RestartInPlace { count, generation } => {
            format!("restart in place #{count} g{generation}")
        }
        Action::WriteParameters {
            parameters,
            generation,
            ..
        } => format!(
            "write parameters {} g{generation}",
            parameters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Action::DropSlots { slots, generation } => {
            format!("drop slots {} g{generation}", slots.join(","))
        }
        Action::SetSyncStandbys { rule, generation } => {
            format!("sync {rule} g{generation}")
        }
        Action::MeasureWal {
            members,
            generation,
        } => format!("measure {} g{generation}", members.join(",")),
        Action::TakeVip { generation } => format!("take vip g{generation}"),
        Action::ReleaseVip { generation, reason } => {
            format!("release vip g{generation}: {reason}")
        }
        Action::Hold { reason } => format!("hold: {reason}"),
        Action::ClusterHold { reason } => format!("cluster hold: {reason}"),
    }
}

/// The actions in full (`Action`'s `Display`), one a line: for failure messages.
pub(crate) fn lines(actions: &[Action]) -> String {
    actions
        .iter()
        .map(|a| format!("\n  {a}"))
        .collect::<String>()
}

/// Asserts that `local` decides `expected` (as `show` writes it) at `now`.
pub(crate) fn check_local(cluster: &ClusterView, local: &LocalView, now: u64, expected: &[&str]) {
    let actions: Decision = decide(cluster, local, now);
    let full = lines(&actions);
    assert_eq!(show(actions), expected, "{} decided:{full}", local.name);
}

/// Asserts that `me` (`local`: holding the lease) decides `expected` at `NOW_MS`.
pub(crate) fn check(cluster: &ClusterView, me: &str, coordinator: bool, expected: &[&str]) {
    check_local(cluster, &local(cluster, me, coordinator), NOW_MS, expected);
}

/// Asserts that the witness, as the coordinator, decides `expected` at `now` (it has no
/// PostgreSQL: only the coordinator's part decides anything).
pub(crate) fn check_coordinator(v: &ClusterView, now: u64, expected: &[&str]) {
    check_local(v, &local(v, "witness", true), now, expected);
}

// The lab's shape.

/// The time every test judges at (monotonic ms); every healthy report arrived just now.
pub(crate) const NOW: u64 = 10_000;
/// The primary's current position, and every caught-up standby's.
pub(crate) const TOP: Lsn = Lsn(100_000_000);

/// A member as `pgfm lab up` registers it: `member`, but with an agent port of its own,
/// PostgreSQL on 5432, and the same priority (`PRIORITY`) for every data node, pg3 too.
pub(crate) fn lab_member(name: &str) -> Member {
    let base = member(name);
    Member {
        address: format!("127.0.0.1:{}", 7000 + name.len()),
        pg_port: base.pg_port.map(|_| 5432),
        priority: PRIORITY,
        ..base
    }
}

/// `pgfm lab up data_nodes`: pg1 the running primary of generation 1, pg2.. running
/// standbys streaming from it and caught up, a witness; the voters in that order.
pub(crate) fn lab(data_nodes: usize) -> ClusterView {
    let names: Vec<String> = (1..=data_nodes)
        .map(|i| format!("pg{i}"))
        .chain(std::iter::once("witness".to_string()))
        .collect();
    let mut state = committed(Settings::default());
    for name in &names {
        state.members.insert(name.clone(), lab_member(name));
    }
    state.primary = Some("pg1".into());
    state.generation = Generation(1);
    let mut reports = BTreeMap::new();
    for name in &names {
        let mut r = NodeReport::new(name, lab_member(name).kind);
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
                    sent_lsn: Some(TOP),
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
        name: "witness".to_string(),
        state,
        voters: names,
        reports,
        settings: Settings::default(),
        last_renewal_seen_ms: Some(NOW),
        lease_until_ms: None,
        coordinator_since_ms: Some(0),
        wall_clock_ms: 42,
        measured: BTreeMap::new(),
        switchover_step_ms: None,
    }
}

fn report_of<'a>(v: &'a mut ClusterView, name: &str) -> &'a mut NodeReport {
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
    let r = report_of(v, name);
    r.received_lsn = Some(at);
    r.replayed_lsn = Some(at);
    for replica in &mut report_of(v, "pg1").replicas {
        if replica.application_name == name {
            replica.replay_lsn = Some(at);
            replica.flush_lsn = Some(at);
        }
    }
}

/// A running standby whose WAL receiver is not streaming (the primary has no walsender
/// for it).
pub(crate) fn not_streaming(v: &mut ClusterView, name: &str) {
    report_of(v, name).receiver = None;
    report_of(v, "pg1")
        .replicas
        .retain(|r| r.application_name != name);
}

/// `pgfm set-priority name priority`.
pub(crate) fn priority(v: &mut ClusterView, name: &str, priority: u32) {
    if let Some(m) = v.state.members.get_mut(name) {
        m.priority = priority;
    }
}

/// `pgfm set-tag name KEY=VALUE`, applied as the log applies it.
pub(crate) fn tag(v: &mut ClusterView, name: &str, tag: &str) {
    let tag = crate::tags::Tag::parse(tag).expect("a valid tag");
    let command = crate::model::Command::SetTags {
        node: name.into(),
        tags: vec![tag],
    };
    v.state.apply(&command).expect("the tag applies");
}
