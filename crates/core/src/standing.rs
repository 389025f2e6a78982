//! How each node stands now, judged from the committed state and the fresh reports: the
//! serving primary, a standby (how far behind, whether in sync), idle, a witness; who may
//! be promoted; and whether promoting now could lose data. `cluster-status` shows these and
//! the operator commands (`operator`) judge by them, so that what the operator reads is
//! what the coordinator goes by.

use crate::decide::ClusterView;
use crate::model::{ClusterState, DbRole, Member, NodeKind, NodeReport, ReplicaInfo};
use crate::types::Lsn;

/// What a node is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The committed primary, its database running as a primary.
    Primary,
    /// A running standby, not the committed primary, in a cluster that has one.
    Standby,
    /// Anything else: down, silent, or running in a role it should not have.
    Idle,
    Witness,
}

/// One node as it stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing<'a> {
    pub role: Role,
    pub member: Option<&'a Member>,
    /// Its fresh report; None: its agent counts as down.
    pub report: Option<&'a NodeReport>,
    /// A standby's walsender on the serving primary.
    pub sender: Option<&'a ReplicaInfo>,
    /// How far a standby's replay is behind the primary's current position, when both are
    /// known.
    pub lag_bytes: Option<u64>,
    /// A standby streams and is within `max_lag` of the primary; None for the other roles.
    pub in_sync: Option<bool>,
    /// On the priority list (`eligible`).
    pub eligible: bool,
}

impl Standing<'_> {
    /// The newest WAL position the node holds, whatever its role.
    pub fn lsn(&self) -> Option<Lsn> {
        self.report.and_then(NodeReport::wal_position)
    }

    /// A running standby the operator lets be promoted (in sync or not).
    pub fn promotable_standby(&self) -> bool {
        self.role == Role::Standby && self.eligible
    }

    /// A running standby, promotable and in sync with the primary: a switchover to it, or
    /// a promotion of it, loses nothing.
    pub fn promotable_in_sync(&self) -> bool {
        self.promotable_standby() && self.in_sync == Some(true)
    }
}

/// The committed primary's fresh report, if its database runs as a primary and its lease
/// holds. A primary that gave its lease up, or whose lease ran out (counted as the
/// coordinator counts it, `ClusterView::lease_expires_at_ms`), has fenced itself or been reset by its
/// watchdog: its last report, still fresh for up to `report_ttl`, no longer says it serves.
pub fn serving_primary(view: &ClusterView, now_ms: u64) -> Option<&NodeReport> {
    if view.state.lease_released || now_ms >= view.lease_expires_at_ms() {
        return None;
    }
    view.state
        .primary
        .as_deref()
        .and_then(|p| view.fresh_report(p, now_ms))
        .filter(|r| r.db_up && r.role == Some(DbRole::Primary))
}

/// How `name` stands at `now_ms`.
pub fn of<'a>(view: &'a ClusterView, name: &str, now_ms: u64) -> Standing<'a> {
    let state = &view.state;
    let member = state.members.get(name);
    let report = view.fresh_report(name, now_ms);
    let primary = serving_primary(view, now_ms);
    let is_witness = member.map(|m| m.kind) == Some(NodeKind::Witness)
        || report.map(|r| r.kind) == Some(NodeKind::Witness);
    let is_primary = state.primary.as_deref() == Some(name);
    let role = if is_witness {
        Role::Witness
    } else {
        match (report.is_some_and(|r| r.db_up), report.and_then(|r| r.role)) {
            (true, Some(DbRole::Primary)) if is_primary => Role::Primary,
            (true, Some(DbRole::Standby)) if !is_primary && state.primary.is_some() => {
                Role::Standby
            }
            _ => Role::Idle,
        }
    };
    let mut standing = Standing {
        role,
        member,
        report,
        sender: None,
        lag_bytes: None,
        in_sync: None,
        eligible: eligible(state, name),
    };
    if role == Role::Standby {
        // The primary's own view of each walsender is the consistent one: same clock,
        // same moment as its current LSN.
        let sender = primary.and_then(|p| p.replicas.iter().find(|r| r.application_name == name));
        let replayed = sender
            .and_then(|s| s.replay_lsn)
            .or(report.and_then(|r| r.replayed_lsn));
        let lag = primary
            .and_then(|p| p.current_lsn)
            .zip(replayed)
            .map(|(p, r)| p.bytes_after(r));
        let streaming = sender.is_some_and(|s| s.state == "streaming")
            || report.and_then(|r| r.receiver.as_deref()) == Some("streaming");
        standing.sender = sender;
        standing.lag_bytes = lag;
        standing.in_sync = Some(streaming && lag.is_some_and(|l| l <= view.settings.max_lag));
    }
    standing
}

/// Whether `name` is on the priority list: a data member the operator lets be promoted,
/// not under maintenance, other than the primary.
pub fn eligible(state: &ClusterState, name: &str) -> bool {
    state.primary.as_deref() != Some(name) && state.may_promote(name)
}

/// The members that may be promoted, the preferred first (highest priority, then by name).
pub fn priority_list(state: &ClusterState) -> Vec<&Member> {
    let mut list: Vec<&Member> = state
        .data_members()
        .filter(|m| eligible(state, &m.name))
        .collect();
    list.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    list
}

/// How many members could be synchronous standbys: on the priority list, and not tagged
/// out of synchronous replication (`ClusterState::may_be_synchronous`).
pub fn synchronous_candidates(state: &ClusterState) -> usize {
    priority_list(state)
        .iter()
        .filter(|m| state.may_be_synchronous(&m.name))
        .count()
}

/// Whether promoting a standby now would lose nothing, and why (`cluster-status`'s
/// "Promote Status", and the reason a switchover is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteStatus {
    pub safe: bool,
    pub message: String,
}

pub fn promote_status(view: &ClusterView, now_ms: u64) -> PromoteStatus {
    let verdict = |safe: bool, message: String| PromoteStatus { safe, message };
    if serving_primary(view, now_ms).is_none() {
        return verdict(false, "No primary database was found.".to_string());
    }
    let standbys: Vec<(&str, Standing)> = view
        .voters
        .iter()
        .map(|name| (name.as_str(), of(view, name, now_ms)))
        .filter(|(_, s)| s.role == Role::Standby)
        .collect();
    if standbys.is_empty() {
        return verdict(false, "No standby databases were found.".to_string());
    }
    if standbys.iter().any(|(_, s)| s.promotable_in_sync()) {
        return verdict(
            true,
            "Standby database(s) in sync with primary. It is safe to promote.".to_string(),
        );
    }
    let max_lag = view.settings.max_lag;
    let reasons: Vec<String> = standbys
        .iter()
        .map(|(name, s)| {
            if !s.eligible {
                format!("{name} is not promotable")
            } else {
                match s.lag_bytes {
                    Some(lag) if lag > max_lag => {
                        format!("{name} is {lag} bytes behind (max_lag {max_lag})")
                    }
                    Some(_) => format!("{name} is not streaming"),
                    None => format!("{name}'s position is unknown"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{behind, lab, not_streaming, priority, silent, NOW};

    /// How `name` stands after `fault`: its role, lag and whether in sync, and whether it
    /// is on the priority list.
    fn check(
        fault: fn(&mut ClusterView),
        name: &str,
        expected: (Role, Option<u64>, Option<bool>, bool),
    ) {
        let mut v = lab(3);
        fault(&mut v);
        let s = of(&v, name, NOW);
        assert_eq!(
            (s.role, s.lag_bytes, s.in_sync, s.eligible),
            expected,
            "{name}"
        );
    }

    #[test]
    fn each_node_stands_as_the_state_and_the_fresh_reports_say() {
        use Role::*;
        let healthy: fn(&mut ClusterView) = |_| {};
        check(healthy, "pg1", (Primary, None, None, false));
        check(healthy, "pg2", (Standby, Some(0), Some(true), true));
        check(healthy, "witness", (Witness, None, None, false));
        // Within max_lag (1 MiB) is in sync; beyond, or not streaming, is not.
        check(
            |v| behind(v, "pg2", 1 << 20),
            "pg2",
            (Standby, Some(1 << 20), Some(true), true),
        );
        check(
            |v| behind(v, "pg2", 2_000_000),
            "pg2",
            (Standby, Some(2_000_000), Some(false), true),
        );
        check(
            |v| not_streaming(v, "pg2"),
            "pg2",
            (Standby, Some(0), Some(false), true),
        );
        // A standby whose agent is silent, or whose database is down, is idle.
        check(|v| silent(v, "pg2"), "pg2", (Idle, None, None, true));
        check(
            |v| v.reports.get_mut("pg2").unwrap().report.db_up = false,
            "pg2",
            (Idle, None, None, true),
        );
        // A running primary that is not the committed one is idle; so is a standby while
        // the cluster has no primary.
        check(
            |v| v.state.primary = Some("pg2".into()),
            "pg1",
            (Idle, None, None, true),
        );
        check(|v| v.state.primary = None, "pg2", (Idle, None, None, true));
        // Without the primary's report, a standby's lag is unknown and it is not in sync.
        check(
            |v| silent(v, "pg1"),
            "pg2",
            (Standby, None, Some(false), true),
        );
        check(
            |v| priority(v, "pg2", 0),
            "pg2",
            (Standby, Some(0), Some(true), false),
        );
        check(
            |v| v.state.members.get_mut("pg2").unwrap().promotable = false,
            "pg2",
            (Standby, Some(0), Some(true), false),
        );
    }

    /// A member may be promoted only when promotable with a priority above 0; the list
    /// leaves out the primary and witnesses, the highest priority first, then by name.
    #[test]
    fn the_priority_list_holds_the_members_that_can_be_promoted() {
        let mut v = lab(4);
        priority(&mut v, "pg2", 10);
        priority(&mut v, "pg4", 0);
        v.state.members.get_mut("witness").unwrap().priority = 100;
        let list: Vec<&str> = priority_list(&v.state)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(list, ["pg3", "pg2"]);
        for (promotable, priority, expected) in [
            (true, 1, true),
            (true, 0, false),
            (false, 1, false),
            (false, 0, false),
        ] {
            let m = Member {
                promotable,
                priority,
                ..crate::testing::lab_member("pg2")
            };
            assert_eq!(m.can_be_promoted(), expected, "{m:?}");
        }
    }

    #[test]
    fn the_promote_status_says_why_promoting_now_could_lose_data() {
        let check = |fault: fn(&mut ClusterView), safe: bool, message: &str| {
            let mut v = lab(3);
            fault(&mut v);
            let status = promote_status(&v, NOW);
            assert_eq!(status.message, message);
            assert_eq!(status.safe, safe, "{message}");
        };
        check(
            |_| {},
            true,
            "Standby database(s) in sync with primary. It is safe to promote.",
        );
        check(
            |v| v.reports.get_mut("pg1").unwrap().report.db_up = false,
            false,
            "No primary database was found.",
        );
        check(
            |v| {
                silent(v, "pg2");
                silent(v, "pg3");
            },
            false,
            "No standby databases were found.",
        );
        check(
            |v| {
                priority(v, "pg2", 0);
                behind(v, "pg3", 2_000_000);
            },
            false,
            "No standby database is in sync with the primary: pg2 is not promotable; pg3 is \
             2000000 bytes behind (max_lag 1048576). Promoting now could lose data.",
        );
        check(
            |v| {
                not_streaming(v, "pg2");
                silent(v, "pg3");
            },
            false,
            "No standby database is in sync with the primary: pg2 is not streaming. Promoting \
             now could lose data.",
        );
        check(
            |v| {
                let primary = &mut v.reports.get_mut("pg1").unwrap().report;
                primary.current_lsn = None;
            },
            false,
            "No standby database is in sync with the primary: pg2's position is unknown; pg3's \
             position is unknown. Promoting now could lose data.",
        );
    }
}
