//! Every bug the simulation found, pinned: the faults of the run that broke an invariant,
//! scripted at the times they struck (so that later changes to how faults are drawn do not
//! lose the scenario), each checked to hold now.

use pgfm_sim::faults::{Fault, Kind, Target};
use pgfm_sim::Options;

fn fault(at_ms: u64, kind: Kind, target: Target, duration_ms: u64) -> Fault {
    Fault {
        at_ms,
        kind,
        target,
        duration_ms,
    }
}

/// Found by seed 348 (synchronous on, host crashes and a slow link): pg1 (primary) died and
/// its synchronous standby pg2 was promoted; pg2 died 0.3 s later, before pg3 — behind a
/// slow replication link, never in the synchronous set — caught up with it. The promotion
/// had cleared the committed synchronous set, so pg3 was promoted without the commits pg1
/// had acknowledged. Now the new primary alone is the set until a standby caught up with
/// it: pg3 is not promoted, and when pg2's host is back pg2 serves again with every commit.
#[test]
fn a_new_primary_lost_before_a_standby_caught_up_promotes_nobody() {
    let mut options = Options::new(348);
    options.synchronous = "on".into();
    options.script = Some(vec![
        fault(10_000, Kind::SlowLink, Target::Node(2), 20_000),
        fault(16_000, Kind::HostCrash, Target::Primary, 5_000),
        fault(20_300, Kind::HostCrash, Target::Primary, 12_000),
    ]);
    let report = pgfm_sim::run(options);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.promotions, 1, "faults: {:?}", report.faults);
}

/// Found by seed 283 (synchronous on, host crashes and a slow link, five faults): with the
/// witness and pg3 down and pg1's replication slowed, pg1 (primary, not strict) was left
/// with no standby to name and degraded to asynchronous; the committed set was emptied.
/// pg1's host then died and a standby was promoted without the commits pg1 had
/// acknowledged synchronously before it degraded. Now degrading leaves pg1 alone in the committed set: its loss promotes
/// nobody, and pg1 serves again, with every commit, when its host is back.
#[test]
fn degrading_to_asynchronous_keeps_what_was_acknowledged_synchronously() {
    let mut options = Options::new(283);
    options.synchronous = "on".into();
    options.script = Some(vec![
        fault(11_470, Kind::HostCrash, Target::Node(3), 9_232),
        fault(14_075, Kind::HostCrash, Target::Node(2), 9_725),
        fault(19_410, Kind::SlowLink, Target::Node(0), 11_383),
        fault(22_900, Kind::HostCrash, Target::Node(0), 6_045),
    ]);
    let report = pgfm_sim::run(options);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.promotions, 0, "faults: {:?}", report.faults);
}
