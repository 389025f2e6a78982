//! PostgreSQL's own parameters on a data node (`[postgresql.parameters]`): what its
//! `pgfm.conf` holds (`node_parameters`: the committed ones, the hot-standby minimums held
//! in the order PostgreSQL needs, `crate::parameters::for_node`), and rewriting it, with a
//! reload, when the running server's file was written with others (`write_parameters`).
//! A parameter that needs a restart then shows in `pg_settings.pending_restart`, which the
//! node reports.

use std::collections::BTreeMap;

use super::upstream::stream_source;
use super::{Action, ClusterView, LocalView};
use crate::model::DbRole;
use crate::parameters::{digest, for_node, Running};

/// The parameters `local`'s `pgfm.conf` should hold now.
pub fn node_parameters(
    cluster: &ClusterView,
    local: &LocalView,
    now_ms: u64,
) -> BTreeMap<String, String> {
    let state = &cluster.state;
    let is_primary = state.primary.as_deref() == Some(local.name.as_str());
    let primary_runs: Option<&Running> = state
        .primary
        .as_deref()
        .filter(|_| !is_primary)
        .and_then(|p| cluster.fresh_report(p, now_ms))
        .filter(|r| r.db_up && !r.hot_standby.is_empty())
        .map(|r| &r.hot_standby);
    let standbys_run: Vec<&Running> = cluster
        .reports
        .keys()
        .filter(|name| **name != local.name)
        .filter_map(|name| cluster.fresh_report(name, now_ms))
        .filter(|r| r.db_up && r.role == Some(DbRole::Standby) && !r.hot_standby.is_empty())
        .map(|r| &r.hot_standby)
        .collect();
    for_node(
        &cluster.settings.parameters,
        is_primary,
        primary_runs,
        &standbys_run,
    )
}

/// Rewrite the running server's `pgfm.conf` (and reload) when it was written with other
/// parameters than `node_parameters`. Not while it hands over (it is stopping), nor when
/// what it was written with is not known (an agent from before: written at its next
/// start).
pub(super) fn write_parameters(
    cluster: &ClusterView,
    local: &LocalView,
    now_ms: u64,
) -> Vec<Action> {
    let me = &local.report;
    let handing_over = cluster
        .state
        .switchover
        .as_ref()
        .is_some_and(|s| s.from == local.name);
    let Some(written) = me
        .parameters_digest
        .filter(|_| local.db_running && me.db_up)
    else {
        return Vec::new();
    };
    if handing_over {
        return Vec::new();
    }
    let wanted = node_parameters(cluster, local, now_ms);
    if digest(&wanted) == written {
        return Vec::new();
    }
    vec![Action::WriteParameters {
        parameters: wanted,
        upstream: upstream_now(cluster, local, now_ms),
        generation: cluster.state.generation,
    }]
}

/// `pgfm reload`: a reload asked of this node that it has not carried out, while its
/// PostgreSQL runs (one that starts later reads its configuration anyway, and is reloaded
/// then all the same). Not while it hands over (it is stopping).
pub(super) fn reload(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let asked = cluster.state.reloads.get(&local.name).copied().unwrap_or(0);
    let handing_over = cluster
        .state
        .switchover
        .as_ref()
        .is_some_and(|s| s.from == local.name);
    if asked <= local.reloaded || !(local.db_running && local.report.db_up) || handing_over {
        return Vec::new();
    }
    vec![Action::Reload {
        count: asked,
        upstream: upstream_now(cluster, local, now_ms),
        generation: cluster.state.generation,
    }]
}

/// Where a standby's rewritten `pgfm.conf` points: where it streams from now (None on the
/// primary, or with none).
fn upstream_now(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Option<String> {
    let primary = cluster.state.primary.as_deref()?;
    (primary != local.name)
        .then(|| stream_source(cluster, &local.name, primary, now_ms).to_string())
}

#[cfg(test)]
mod tests {
    use crate::model::DbRole;
    use crate::parameters::digest;
    use crate::testing::*;

    /// The committed parameters reach each running node's file once (then the digest it
    /// reports matches); a raise of max_connections reaches the standby first.
    #[test]
    fn committed_parameters_are_written_once_and_in_order() {
        let mut v = primary_with(&["pg2"]);
        v.settings
            .parameters
            .insert("work_mem".into(), "64MB".into());
        v.settings
            .parameters
            .insert("max_connections".into(), "200".into());
        v.reports.get_mut("pg1").unwrap().report.slots = vec![crate::decide::slot_for("pg2")];
        for node in ["pg1", "pg2"] {
            let r = &mut v.reports.get_mut(node).unwrap().report;
            r.parameters_digest = Some(digest(&Default::default()));
            r.hot_standby = [("max_connections".to_string(), 100)].into();
        }
        check(
            &v,
            "pg1",
            false,
            &["write parameters max_connections=100,work_mem=64MB g1"],
        );
        check(
            &v,
            "pg2",
            false,
            &["write parameters max_connections=200,work_mem=64MB g1"],
        );
        // pg2 runs with 200 (restarted): pg1 may write 200 too.
        v.reports.get_mut("pg2").unwrap().report.hot_standby =
            [("max_connections".to_string(), 200)].into();
        check(
            &v,
            "pg1",
            false,
            &["write parameters max_connections=200,work_mem=64MB g1"],
        );
        // Written: nothing more to do.
        let wanted = v.settings.parameters.clone();
        v.reports.get_mut("pg1").unwrap().report.parameters_digest = Some(digest(&wanted));
        check(&v, "pg1", false, &[]);
        // Unknown, or PostgreSQL down: written at its next start.
        v.reports.get_mut("pg1").unwrap().report.parameters_digest = None;
        check(&v, "pg1", false, &[]);
        let stopped = view(
            Some("pg1"),
            &[
                ("pg1", Stopped(Writable)),
                ("pg2", Running(DbRole::Standby)),
            ],
        );
        let mut stopped = stopped;
        stopped.settings.parameters = wanted;
        check(&stopped, "pg1", false, &["start primary g1"]);
    }

    /// `pgfm reload`: each reload asked of a node is carried out once, while its
    /// PostgreSQL runs; a cascading standby's file keeps pointing at its upstream.
    #[test]
    fn a_reload_asked_is_carried_out_once_while_postgres_runs() {
        let mut v = primary_with(&["pg2", "pg3"]);
        v.state
            .apply(&crate::model::Command::RequestReload {
                nodes: vec!["pg2".into(), "pg3".into()],
            })
            .unwrap();
        v.reports.get_mut("pg2").unwrap().report.receiver = Some("streaming".into());
        assert!(super::reload(&v, &local(&v, "pg1", false), NOW_MS).is_empty());
        check(&v, "pg2", false, &["reload #1 g1"]);
        let mut me = local(&v, "pg2", false);
        me.reloaded = 1;
        check_local(&v, &me, NOW_MS, &[]);
        me.db_running = false;
        me.reloaded = 0;
        me.report.db_up = false;
        assert!(super::reload(&v, &me, NOW_MS).is_empty());
        tag(&mut v, "pg3", "replicate_from=pg2");
        let pg3 = local(&v, "pg3", false);
        match super::reload(&v, &pg3, NOW_MS).as_slice() {
            [crate::decide::Action::Reload { upstream, .. }] => {
                assert_eq!(upstream.as_deref(), Some("pg2"))
            }
            other => panic!("{other:?}"),
        }
    }
}
