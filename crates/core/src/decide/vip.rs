//! Where the virtual IP belongs: on the serving primary.

use super::reconcile::{not_serving, restarting_in_place};
use super::{Action, ClusterView, LocalView};

/// The VIP follows the primary: this node takes it only while it is the committed primary,
/// its PostgreSQL runs writable, it holds the lease, and it is not handing over; it keeps it
/// only so long, or while its crashed PostgreSQL is being restarted in place.
pub(super) fn place_vip(cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{decide, slot_for};
    use crate::model::{DbRole, Switchover, VipReport};
    use crate::testing::*;
    use crate::types::Generation;

    #[test]
    fn the_vip_is_carried_only_by_the_serving_primary() {
        let mut v = primary_with(&["pg2"]);
        let vip = |held| {
            Some(VipReport {
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

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
                    v.state.switchover = Some(Switchover { seq: 1, unclean: false, promotion: false, named: false, maintenance: false, from: names[me].into(), to: names[1 - me].into(), force: false, generation: v.state.generation, final_lsn: None });
                }
                v.reports.get_mut(names[me]).unwrap().report.vip = Some(VipReport { address: "10.0.0.100/24".into(), held });
                let mut local = local(&v, names[me], false);
                local.writable = writable;
                local.lease_valid = lease_valid;
                let actions = decide(&v, &local, 2_000);
                let takes = actions.iter().filter(|a| matches!(a, Action::TakeVip { .. })).count();
                let releases = actions.iter().filter(|a| matches!(a, Action::ReleaseVip { .. })).count();
                prop_assert!(takes + releases <= 1, "{}", lines(&actions));
                if takes == 1 {
                    let serving = primary == Some(me) && up && !standby && writable && lease_valid && !handing_over;
                    prop_assert!(serving && !held, "took the VIP while not serving:{}", lines(&actions));
                    prop_assert!(!actions.iter().any(|a| matches!(a, Action::Fence { .. } | Action::HandOver { .. })), "{}", lines(&actions));
                }
                if releases == 1 {
                    prop_assert!(held, "{}", lines(&actions));
                }
            }
        }
    }
}
