//! Where a standby streams from and is cloned from, by its tags (`crate::tags`): the
//! primary, or — `replicate_from` — a standby that streams itself (cascading replication),
//! and — `clonefrom` — a standby preferred as the source of a base backup. A tagged source
//! that does not stream (down, lost, diverged, put aside) is passed over for the primary, so
//! a cascading standby follows the primary when its upstream is lost, and the new primary
//! when its upstream is promoted (it is the primary then).

use super::reconcile::slot_for;
use super::ClusterView;
use crate::model::{ClusterState, DbRole};

/// Where `node` streams from: the standby its `replicate_from` names while that one
/// streams, else `primary`.
pub(super) fn stream_source<'a>(
    cluster: &'a ClusterView,
    node: &str,
    primary: &'a str,
    now_ms: u64,
) -> &'a str {
    match cluster.state.tags_of(node).replicate_from.as_deref() {
        Some(upstream) if upstream != node && streams(cluster, upstream, primary, now_ms) => {
            // The name as the state holds it, for the lifetime.
            cluster
                .state
                .members
                .get_key_value(upstream)
                .map_or(primary, |(k, _)| k.as_str())
        }
        _ => primary,
    }
}

/// Where `node`'s empty data directory is cloned from: a standby tagged `clonefrom` that
/// streams (the first by name), else None (the primary). A node that will stream from the
/// primary is cloned from a standby only once the primary keeps its slot: the WAL after
/// the standby's copy is then still there on the primary when the clone starts streaming.
pub(super) fn clone_source<'a>(
    cluster: &'a ClusterView,
    node: &str,
    primary: &str,
    now_ms: u64,
) -> Option<&'a str> {
    let slot_kept = |slot: String| {
        cluster
            .fresh_report(primary, now_ms)
            .is_some_and(|r| r.slots.contains(&slot))
    };
    if !slot_of(&cluster.state, node, primary).is_none_or(slot_kept) {
        return None;
    }
    cluster
        .state
        .tags
        .iter()
        .filter(|(name, tags)| tags.clonefrom && name.as_str() != node)
        .map(|(name, _)| name.as_str())
        .find(|name| streams(cluster, name, primary, now_ms))
}

/// The replication slot `node` streams with from `upstream`: its own, on the primary; none
/// from a standby (a slot there, kept after the node moved back to the primary, would hold
/// WAL on that standby for nobody) and none for a cascading standby at all (the primary
/// keeps no slot for it, which would hold WAL for a node that streams elsewhere).
pub fn slot_of(state: &ClusterState, node: &str, upstream: &str) -> Option<String> {
    let cascading = state.tags_of(node).replicate_from.is_some();
    (state.primary.as_deref() == Some(upstream) && !cascading).then(|| slot_for(node))
}

/// Whether the standby `name` is a source to stream or clone from now: the primary, or a
/// data node running as a standby whose WAL receiver streams, on the primary's timeline,
/// not put aside by the operator.
fn streams(cluster: &ClusterView, name: &str, primary: &str, now_ms: u64) -> bool {
    let state = &cluster.state;
    if name == primary {
        return true;
    }
    if state.maintenance.contains_key(name) || state.reinit.contains_key(name) {
        return false;
    }
    cluster.fresh_report(name, now_ms).is_some_and(|r| {
        r.db_up
            && r.role == Some(DbRole::Standby)
            && r.receiver.as_deref() == Some("streaming")
            && state.divergence(r).is_none()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{lab, not_streaming, tag, NOW};

    const NOW_MS: u64 = NOW;

    #[test]
    fn a_cascading_standby_streams_from_its_upstream_while_that_one_streams() {
        let mut v = lab(3);
        assert_eq!(stream_source(&v, "pg3", "pg1", NOW_MS), "pg1");
        tag(&mut v, "pg3", "replicate_from=pg2");
        assert_eq!(stream_source(&v, "pg3", "pg1", NOW_MS), "pg2");
        // Its upstream promoted: it is the primary.
        assert_eq!(stream_source(&v, "pg3", "pg2", NOW_MS), "pg2");
        // Its upstream lost: the primary.
        not_streaming(&mut v, "pg2");
        assert_eq!(stream_source(&v, "pg3", "pg1", NOW_MS), "pg1");
    }

    #[test]
    fn a_cascading_standby_has_no_slot_and_a_standby_has_none_from_another_standby() {
        let mut v = lab(3);
        assert_eq!(slot_of(&v.state, "pg3", "pg1"), Some("pg3".into()));
        assert_eq!(slot_of(&v.state, "pg3", "pg2"), None);
        tag(&mut v, "pg3", "replicate_from=pg2");
        assert_eq!(slot_of(&v.state, "pg3", "pg1"), None);
    }

    #[test]
    fn a_clone_comes_from_a_streaming_clonefrom_standby_else_the_primary() {
        let mut v = lab(3);
        assert_eq!(clone_source(&v, "pg3", "pg1", NOW_MS), None);
        tag(&mut v, "pg2", "clonefrom=true");
        // Not before the primary keeps pg3's slot (unless pg3 will not stream from it).
        v.reports.get_mut("pg1").unwrap().report.slots = vec![];
        assert_eq!(clone_source(&v, "pg3", "pg1", NOW_MS), None);
        tag(&mut v, "pg3", "replicate_from=pg2");
        assert_eq!(clone_source(&v, "pg3", "pg1", NOW_MS), Some("pg2"));
        tag(&mut v, "pg3", "replicate_from=");
        v.reports.get_mut("pg1").unwrap().report.slots = vec![slot_for("pg3")];
        assert_eq!(clone_source(&v, "pg3", "pg1", NOW_MS), Some("pg2"));
        assert_eq!(clone_source(&v, "pg2", "pg1", NOW_MS), None);
        not_streaming(&mut v, "pg2");
        assert_eq!(clone_source(&v, "pg3", "pg1", NOW_MS), None);
    }

    /// The decisions that carry it out: the cascading standby follows its upstream, with no
    /// slot; it starts from it; the primary drops its slot and creates none for it; a clone
    /// comes from the `clonefrom` standby.
    #[test]
    fn a_cascading_standby_is_pointed_at_its_upstream_and_the_primary_keeps_no_slot_for_it() {
        use crate::decide::slot_for;
        use crate::testing::{check, primary_with, Empty, Recovering, Stopped};
        let mut v = primary_with(&["pg2", "pg3"]);
        v.state.members.get_mut("pg2").unwrap().pg_port = Some(5002);
        v.reports.get_mut("pg2").unwrap().report.receiver = Some("streaming".into());
        v.reports.get_mut("pg1").unwrap().report.slots = vec![slot_for("pg2"), slot_for("pg3")];
        check(&v, "pg3", false, &[]);
        check(&v, "pg1", false, &[]);
        tag(&mut v, "pg3", "replicate_from=pg2");
        check(&v, "pg3", false, &["follow pg2 g1"]);
        check(&v, "pg1", false, &["drop slots pg3 g1"]);
        v.reports.get_mut("pg1").unwrap().report.slots = vec![slot_for("pg2")];
        check(&v, "pg1", false, &[]);
        {
            let r = &mut v.reports.get_mut("pg3").unwrap().report;
            r.conninfo_upstream = Some("127.0.0.1:5002".into());
            r.conninfo_slot = None;
        }
        check(&v, "pg3", false, &[]);
        // Its upstream stops streaming: back to the primary, still with no slot.
        v.reports.get_mut("pg2").unwrap().report.receiver = None;
        check(&v, "pg3", false, &["follow pg1 g1"]);

        let mut stopped = primary_with(&["pg2", "pg3"]);
        stopped.reports.get_mut("pg2").unwrap().report.receiver = Some("streaming".into());
        tag(&mut stopped, "pg3", "replicate_from=pg2");
        let pg3 = crate::testing::report("pg3", Stopped(Recovering));
        stopped.reports.get_mut("pg3").unwrap().report = pg3.clone();
        check(&stopped, "pg3", false, &["start standby of pg2 g1"]);
        tag(&mut stopped, "pg2", "clonefrom=true");
        stopped.reports.get_mut("pg3").unwrap().report =
            crate::testing::report("pg3", Stopped(Empty));
        check(&stopped, "pg3", false, &["clone pg2 g1"]);
    }
}
