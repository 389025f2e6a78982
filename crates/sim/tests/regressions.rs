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
