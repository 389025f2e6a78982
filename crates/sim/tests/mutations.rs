//! The simulation bites: pgfm's timing and ordering rules, each broken on purpose here
//! (and only here, through the `Engine` the agents are handed), let the simulation find a
//! broken invariant. The searches run seeds from 1 until one fails and print how many it
//! took (`cargo test --release -p pgfm-sim --test mutations -- --ignored --nocapture`);
//! the numbers are in the note. The quick tests replay the first failing seed each
//! search found, so that every test run shows the check still bites.

use std::sync::Arc;

use pgfm_core::decide::{self, Action, ClusterView, LocalView};
use pgfm_core::engine::{Engine, Rules};
use pgfm_core::lease::{HeldLease, LeaseSettings, LeaseStep};
use pgfm_core::{Command, Lsn};
use pgfm_sim::faults::{Fault, Kind, Target};
use pgfm_sim::{FaultSet, Options};

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

/// A new coordinator decides at once, before it applied an entry of its own term. With
/// `unchecked`, its promotions also leave out the renewal count they were judged on, so
/// that the log cannot refuse a stale one.
struct DecidesOnElection {
    unchecked: bool,
}

impl Engine for DecidesOnElection {
    fn may_coordinate(&self, leading_term: Option<u64>, _applied_term: u64) -> bool {
        leading_term.is_some()
    }

    fn coordinate(&self, cluster: &ClusterView, now_ms: u64) -> Vec<Action> {
        let mut actions = decide::coordinate(cluster, now_ms);
        if self.unchecked {
            for action in &mut actions {
                if let Action::Propose {
                    command: Command::Promote { lease_renewals, .. },
                    ..
                } = action
                {
                    *lease_renewals = None;
                }
            }
        }
        actions
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

/// The coordinator counts every renewal with the lease of its own settings, as before issue
/// 15, not with the lease the renewal was timed with.
struct IgnoresCarriedLease;

impl Engine for IgnoresCarriedLease {
    fn coordinate(&self, cluster: &ClusterView, now_ms: u64) -> Vec<Action> {
        let mut cluster = cluster.clone();
        cluster.lease_until_ms = None;
        decide::coordinate(&cluster, now_ms)
    }
}

/// A mutation, the runs that expose it, and the first seed found to.
struct Mutation {
    engine: Arc<dyn Engine>,
    configure: fn(&mut Options),
    budget: u64,
}

impl Mutation {
    fn options(&self, seed: u64) -> Options {
        let mut options = Options::new(seed);
        options.engine = self.engine.clone();
        (self.configure)(&mut options);
        options
    }

    /// Seeds from 1 until an invariant breaks: the seed and what broke.
    fn search(&self) -> Option<(u64, String)> {
        for seed in 1..=self.budget {
            let report = pgfm_sim::run(self.options(seed));
            if let Some(v) = report.violations.first() {
                println!("caught at seed {seed} ({seed} seeds run): {v}");
                return Some((seed, v.clone()));
            }
        }
        None
    }

    /// The first `seeds` runs keep every invariant with pgfm's own rules: the runs that
    /// expose the mutation are runs pgfm survives.
    fn sound(&self, seeds: u64) {
        for seed in 1..=seeds {
            let mut options = self.options(seed);
            options.engine = Arc::new(Rules);
            let report = pgfm_sim::run(options);
            assert!(
                report.violations.is_empty(),
                "seed {seed} breaks an invariant with pgfm's own rules: {:?}",
                report.violations
            );
        }
    }

    /// The seed breaks an invariant with the mutation, and none without it.
    fn replay(&self, seed: u64) {
        let broken = pgfm_sim::run(self.options(seed));
        assert!(
            !broken.violations.is_empty(),
            "seed {seed} no longer catches the mutation; search again (--ignored)"
        );
        let mut sound = self.options(seed);
        sound.engine = Arc::new(Rules);
        let report = pgfm_sim::run(sound);
        assert!(
            report.violations.is_empty(),
            "seed {seed} breaks an invariant with pgfm's own rules: {:?}",
            report.violations
        );
    }
}

fn faults(text: &str) -> FaultSet {
    text.parse().unwrap_or_default()
}

fn never_fences() -> Mutation {
    Mutation {
        engine: Arc::new(NeverFences),
        // The host watchdog is the second line (it resets a primary that stops renewing):
        // without it, as on a host that has none, the missing fence shows.
        configure: |o| {
            o.faults = faults("partition,partition-out");
            o.watchdog = "off".into();
        },
        budget: 50,
    }
}

/// The drift margin where it is the only guard: a thin safety margin (200 ms, which the
/// config accepts), no host watchdog (a host without one; the watchdog, counting in real
/// time, otherwise resets a slow-clocked primary by the end of its lease), and the drift
/// margin an operator sets for clocks that may be ±15 % apart (1 s: VMs whose clocks are
/// not trusted). A cut-off primary fences `lease - safety_margin` (2.2 s) after its last
/// renewal by its own clock; the coordinator promotes `lease + drift_margin` (3.4 s) after
/// it by its own, which stays after the fence up to ±21 % (3.4 s / 1.21 > 2.2 s / 0.79).
/// Without the margin (2.4 s) a coordinator whose clock is fast promotes before a slow
/// primary fences: 2.4 s / 1.1 + the promotion (about 0.2 s) < 2.2 s / 0.9. A short
/// `probe_timeout` (0.5 s): another agent's check of a silent host fails only after it, and
/// with the default 2 s the evidence, not the lease, decides when a cut-off primary is
/// replaced. (With the default timing the mutation cannot show: a fast coordinator's
/// 2.4 s counts later than a slow primary's 1.6 s unless the clocks are 50 % apart.)
fn no_drift_margin() -> Mutation {
    Mutation {
        engine: Arc::new(NoDriftMargin),
        configure: |o| {
            o.faults = faults("partition,partition-out");
            o.drift = 0.15;
            o.watchdog = "off".into();
            o.timing = vec![
                ("safety_margin".into(), "\"200ms\"".into()),
                ("drift_margin".into(), "\"1s\"".into()),
                ("probe_timeout".into(), "\"500ms\"".into()),
            ];
        },
        budget: 500,
    }
}

/// A new coordinator deciding before it applied an entry of its own term. Renewals the old
/// coordinator committed just before it died are in the new one's log, but it learns they
/// were committed only with its own term's first entry: deciding at once, it counts the
/// lease from the renewal before them. With the defaults that is at most a renewal interval
/// (0.3 s) against `safety_margin + drift_margin` (1.2 s). The runs give that gap its best
/// chance: renewals every 1 s, safety margin 200 ms, drift margin 100 ms, clocks exact;
/// agents that probe every 500 ms with a 500 ms timeout (the evidence comes before the
/// lease, as in `no_drift_margin`); four data nodes, so that the others are a majority
/// without the primary and the coordinator; lossy links; the coordinator's host dying and
/// the primary cut off a moment later, their moments drawn from the seed. Not caught in
/// 1,000 seeds: openraft tells the followers of a new commit index at once, so a new
/// coordinator lacks at most what was committed in the last few milliseconds, and the
/// renewal count each promotion carries covers the rest (issue 13's note).
fn decides_on_election() -> Mutation {
    Mutation {
        engine: Arc::new(DecidesOnElection { unchecked: true }),
        configure: |o| {
            o.data_nodes = 4;
            o.drift = 0.0;
            o.watchdog = "off".into();
            o.timing = [
                ("renew_interval", "1s"),
                ("safety_margin", "200ms"),
                ("drift_margin", "100ms"),
                ("probe_interval", "500ms"),
                ("probe_timeout", "500ms"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), format!("\"{v}\"")))
            .collect();
            let mut rng = pgfm_sim::rng::Rng::new(o.seed);
            let crash_at = 12_000 + rng.range(0, 3_000);
            o.script = Some(vec![
                Fault::new(crash_at - 2_000, Kind::Lossy, Target::Coordinator, 4_000),
                Fault::new(
                    crash_at,
                    Kind::HostCrash,
                    Target::Coordinator,
                    rng.range(5_000, 20_000),
                ),
                Fault::new(
                    crash_at + rng.range(0, 300),
                    Kind::Partition,
                    Target::Primary,
                    rng.range(6_000, 15_000),
                ),
            ]);
        },
        budget: 1_000,
    }
}

/// Narrowing the synchronous set early. Faults drawn at random (synchronous on, host
/// crashes and slow links, five a run) did not catch it in 1,000 seeds: it takes three in
/// one order. So the faults are that scenario, their moments and lengths drawn from the
/// seed: pg3's WAL arrives slowly (it falls behind while pg2 acknowledges every commit),
/// pg2's host dies, the primary names pg3 instead (the mutation narrows the committed set
/// to pg3 at once, before pg3 has the commits only pg2 held), and the primary's host dies
/// while pg3 is still behind. pgfm's rules keep pg2 in the set until pg3 flushed past the
/// switch, so pg3 alone is not promoted (`replay` checks that too).
fn narrows_early() -> Mutation {
    Mutation {
        engine: Arc::new(NarrowsEarly),
        configure: |o| {
            o.synchronous = "on".into();
            let mut rng = pgfm_sim::rng::Rng::new(o.seed);
            let slow_at = 10_000 + rng.range(0, 3_000);
            let standby_dies = slow_at + rng.range(500, 6_000);
            let primary_dies = standby_dies + rng.range(2_000, 9_000);
            o.script = Some(vec![
                Fault::new(
                    slow_at,
                    Kind::SlowLink,
                    Target::Node(2),
                    rng.range(8_000, 25_000),
                ),
                Fault::new(
                    standby_dies,
                    Kind::HostCrash,
                    Target::Node(1),
                    rng.range(5_000, 30_000),
                ),
                Fault::new(
                    primary_dies,
                    Kind::HostCrash,
                    Target::Primary,
                    rng.range(5_000, 30_000),
                ),
            ]);
        },
        budget: 1_000,
    }
}

#[test]
fn a_primary_that_never_fences_is_caught() {
    never_fences().replay(1);
}

#[test]
fn a_promotion_without_the_drift_margin_is_caught() {
    no_drift_margin().replay(230);
}

/// A lease shortened while the cluster runs. The danger is one renewal long: the primary
/// renewed with the long lease, the coordinator applies the shorter one, and the primary is
/// cut off before its next renewal (timed with the shorter lease) gets through. So the runs
/// are that scenario, their moments drawn from the seed: an operator lengthens the lease
/// (to up to twice 4 s), sets it back after a while, and the primary is cut off from
/// everyone 0-300 ms after that; the margins thin (safety 200 ms, drift 100 ms), clocks
/// exact, no host watchdog (it would reset the cut-off primary by the end of its long lease
/// — after a mutated coordinator promoted).
fn ignores_carried_lease() -> Mutation {
    Mutation {
        engine: Arc::new(IgnoresCarriedLease),
        configure: |o| {
            o.drift = 0.0;
            o.watchdog = "off".into();
            o.timing = [
                ("lease", "4s"),
                ("safety_margin", "200ms"),
                ("drift_margin", "100ms"),
                ("probe_interval", "500ms"),
                ("probe_timeout", "500ms"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), format!("\"{v}\"")))
            .collect();
            let mut rng = pgfm_sim::rng::Rng::new(o.seed);
            let change_at = 10_000 + rng.range(0, 3_000);
            let back_after = rng.range(2_000, 6_000);
            o.script = Some(vec![
                Fault::new(
                    change_at,
                    Kind::LeaseChange,
                    Target::Coordinator,
                    back_after,
                ),
                Fault::new(
                    change_at + back_after + rng.range(0, 300),
                    Kind::Partition,
                    Target::Primary,
                    rng.range(10_000, 20_000),
                ),
            ]);
        },
        budget: 1_000,
    }
}

#[test]
fn a_coordinator_ignoring_the_lease_a_renewal_carries_is_caught() {
    ignores_carried_lease().replay(2);
}

#[test]
fn narrowing_the_synchronous_set_early_is_caught() {
    narrows_early().replay(3);
}

#[test]
#[ignore = "a search: run with --ignored --release"]
fn the_mutations_runs_keep_every_invariant_with_pgfm_s_rules() {
    for mutation in [
        no_drift_margin(),
        decides_on_election(),
        narrows_early(),
        ignores_carried_lease(),
    ] {
        mutation.sound(300);
    }
}

#[test]
#[ignore = "a search: run with --ignored --release"]
fn search_a_primary_that_never_fences() {
    assert!(never_fences().search().is_some());
}

#[test]
#[ignore = "a search: run with --ignored --release"]
fn search_a_promotion_without_the_drift_margin() {
    assert!(no_drift_margin().search().is_some());
}

#[test]
#[ignore = "a search: run with --ignored --release"]
fn search_a_coordinator_deciding_on_election() {
    assert!(decides_on_election().search().is_some());
}

#[test]
#[ignore = "a search: run with --ignored --release"]
fn search_a_coordinator_ignoring_the_lease_a_renewal_carries() {
    assert!(ignores_carried_lease().search().is_some());
}

#[test]
#[ignore = "a search: run with --ignored --release"]
fn search_narrowing_the_synchronous_set_early() {
    assert!(narrows_early().search().is_some());
}
