//! The simulation bites: each of pgfm's timing and ordering rules, broken on purpose here
//! (and only here), lets the simulation find a broken invariant within a few seeds. Each
//! test runs seeds from 1 until one fails and asserts that one did within its budget; the
//! seed count it needed is printed (`--nocapture`) and recorded in the note.

use std::sync::Arc;

use pgfm_core::decide::{self, Action, ClusterView, LocalView};
use pgfm_core::engine::{Engine, Rules};
use pgfm_core::lease::{HeldLease, LeaseSettings, LeaseStep};
use pgfm_core::Lsn;
use pgfm_sim::{FaultSet, Options};

/// Run seeds 1.. with `engine` until an invariant breaks; the seed and what broke, or
/// None within `budget` seeds.
fn first_failure(
    engine: Arc<dyn Engine>,
    budget: u64,
    configure: impl Fn(&mut Options),
) -> Option<(u64, String)> {
    for seed in 1..=budget {
        let mut options = Options::new(seed);
        options.engine = engine.clone();
        configure(&mut options);
        let report = pgfm_sim::run(options);
        if let Some(v) = report.violations.first() {
            println!("caught at seed {seed} ({seed} seeds run): {v}");
            return Some((seed, v.clone()));
        }
    }
    None
}

/// The primary never fences itself when its renewals stop (no `Fence` step).
struct NeverFences;

impl Engine for NeverFences {
    fn lease_step(
        &self,
        now_ms: u64,
        is_primary: bool,
        writable: bool,
        held: &HeldLease,
        settings: &LeaseSettings,
    ) -> Vec<LeaseStep> {
        Rules
            .lease_step(now_ms, is_primary, writable, held, settings)
            .into_iter()
            .filter(|s| !matches!(s, LeaseStep::Fence(_)))
            .collect()
    }
}

/// The coordinator promotes once the lease itself has run out, without the drift margin.
struct NoDriftMargin;

impl Engine for NoDriftMargin {
    fn coordinate(&self, cluster: &ClusterView, now_ms: u64) -> Vec<Action> {
        let mut cluster = cluster.clone();
        cluster.settings.lease.drift_margin_ms = 0;
        decide::coordinate(&cluster, now_ms)
    }
}

/// A new coordinator decides at once, before it applied an entry of its own term.
struct DecidesOnElection;

impl Engine for DecidesOnElection {
    fn may_coordinate(&self, leading_term: Option<u64>, _applied_term: u64) -> bool {
        leading_term.is_some()
    }
}

/// The primary narrows the committed synchronous set as soon as the new members stream,
/// not once they flushed past the switch point.
struct NarrowsEarly;

impl Engine for NarrowsEarly {
    fn reconcile(&self, cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
        let mut local = local.clone();
        if local.report.sync_switch_lsn.is_some() {
            local.report.sync_switch_lsn = Some(Lsn(0));
        }
        decide::reconcile(cluster, &local, now_ms)
    }
}

#[test]
fn a_primary_that_never_fences_is_caught() {
    // The host watchdog is the second line (it resets a primary that stops renewing):
    // without it, as on a host that has none, the missing fence shows.
    let found = first_failure(Arc::new(NeverFences), 50, |o| {
        o.faults = "partition,partition-out".parse::<FaultSet>().unwrap();
        o.watchdog = "off".into();
    });
    assert!(found.is_some(), "no violation in 50 seeds");
}

#[test]
fn a_promotion_without_the_drift_margin_is_caught() {
    let found = first_failure(Arc::new(NoDriftMargin), 500, |o| {
        o.faults = "partition,partition-out,stalls"
            .parse::<FaultSet>()
            .unwrap();
        o.fault_count = Some(3);
    });
    assert!(found.is_some(), "no violation in 500 seeds");
}

#[test]
fn a_coordinator_deciding_on_election_is_caught() {
    let found = first_failure(Arc::new(DecidesOnElection), 500, |_| {});
    assert!(found.is_some(), "no violation in 500 seeds");
}

#[test]
fn narrowing_the_synchronous_set_early_is_caught() {
    let found = first_failure(Arc::new(NarrowsEarly), 500, |o| {
        o.synchronous = "on".into();
        o.faults = "host-crash,slow-link".parse::<FaultSet>().unwrap();
        o.fault_count = Some(3);
    });
    assert!(found.is_some(), "no violation in 500 seeds");
}
