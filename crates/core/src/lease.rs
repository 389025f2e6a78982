//! The primary's lease (invariants 2 and 3), as pure functions of monotonic times in ms.
//!
//! The primary renews through the Raft log every `renew_interval` and times each lease from
//! the moment the renewal was *sent*. If it cannot renew, it fences its PostgreSQL at
//! `lease - safety_margin`. The coordinator counts `lease + drift_margin` from the last
//! renewal it applied, and only then may promote another node. A new coordinator counts so
//! only once it has applied an entry of the term it leads (the agent's part): by then it has
//! applied every renewal committed before it led, each no earlier than it was sent.

/// Lease timing, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseSettings {
    pub lease_ms: u64,
    pub renew_interval_ms: u64,
    pub safety_margin_ms: u64,
    pub drift_margin_ms: u64,
}

impl Default for LeaseSettings {
    fn default() -> LeaseSettings {
        // lease - safety_margin (1.6 s) leaves room for a Raft election after the
        // coordinator's host went silent (up to about 0.8 s, after a last renewal up to
        // renew_interval old) even on a loaded machine; lease + drift_margin (2.8 s) is how
        // long a dead primary is waited for (`pgfm bench failover`: median 2.74 s). With
        // openraft's elections at 300-600 ms these settings fenced a healthy primary in 1 of
        // about 100 coordinator host deaths in the simulation; at 200-400 ms in none (issue
        // 13's note; README "Choosing the timing").
        LeaseSettings {
            lease_ms: 2400,
            renew_interval_ms: 300,
            safety_margin_ms: 800,
            drift_margin_ms: 400,
        }
    }
}

impl LeaseSettings {
    /// The shortest `lease - safety_margin` that survives losing the coordinator: a Raft
    /// election takes up to 0.8 s with pgfm's timing (see `coord::RaftSettings`), and the
    /// last renewal may be a `renew_interval` older than the coordinator's death.
    pub const MIN_BUDGET_MS: u64 = 1500;

    /// Time a host reset needs, kept between the watchdog firing and the earliest moment a
    /// coordinator may promote another node.
    pub const WATCHDOG_RESET_MS: u64 = 250;

    /// The host watchdog's timeout, in whole seconds (the kernel's unit), for these settings.
    /// The primary feeds it until `HeldLease::feed_until_ms`, so the host has reset by the
    /// end of the lease (`sent + lease`) whatever the timeout, and the coordinator waits
    /// `drift_margin` more, for the clocks' disagreement (invariant 10). The longest timeout
    /// that still lets the primary feed it a whole `renew_interval` after each renewal is
    /// chosen: the longer it is, the longer an agent may stall (a loaded machine, a paused
    /// process) without resetting a healthy host. None: the lease leaves no whole second.
    pub fn watchdog_timeout_s(&self) -> Option<u64> {
        let budget = self
            .lease_ms
            .checked_sub(Self::WATCHDOG_RESET_MS + self.renew_interval_ms)?;
        Some(budget / 1000).filter(|s| *s >= 1)
    }

    /// The settings in words, for reports: `lease 2.4 s, renew 300 ms, ...`.
    pub fn describe(&self) -> String {
        let secs = |ms: u64| format!("{} s", ms as f64 / 1000.0);
        format!(
            "lease {}, renew {} ms, safety margin {}, drift margin {} ms",
            secs(self.lease_ms),
            self.renew_interval_ms,
            secs(self.safety_margin_ms),
            self.drift_margin_ms
        )
    }

    /// Why these settings cannot keep the invariants, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.safety_margin_ms >= self.lease_ms {
            return Some(format!(
                "safety_margin ({} ms) must be shorter than lease ({} ms)",
                self.safety_margin_ms, self.lease_ms
            ));
        }
        if self.lease_ms - self.safety_margin_ms < Self::MIN_BUDGET_MS {
            return Some(format!(
                "lease - safety_margin is {} ms; it must be at least {} ms, or electing a new \
                 coordinator would fence the primary",
                self.lease_ms - self.safety_margin_ms,
                Self::MIN_BUDGET_MS
            ));
        }
        if self.renew_interval_ms * 2 > self.lease_ms - self.safety_margin_ms {
            return Some(format!(
                "renew_interval ({} ms) must fit twice into lease - safety_margin ({} ms), so \
                 that one lost renewal does not fence the primary",
                self.renew_interval_ms,
                self.lease_ms - self.safety_margin_ms
            ));
        }
        None
    }
}

/// What the primary's agent knows about its own lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldLease {
    /// The generation the lease belongs to.
    pub generation: Option<crate::types::Generation>,
    /// When the last successful renewal was sent, plus the lease.
    pub valid_until_ms: Option<u64>,
    /// When the last renewal was sent (successful or not).
    pub last_attempt_ms: Option<u64>,
    /// A renewal is on its way.
    pub in_flight: bool,
    /// The last renewal failed (no coordinator, a timeout): retry sooner.
    pub last_failed: bool,
    /// When the agent started: before its first renewal, the lease it may still hold from
    /// before a restart is assumed to run until `started + lease - safety_margin`.
    pub started_ms: u64,
}

impl HeldLease {
    /// The moment this agent must have fenced its PostgreSQL unless it renews first.
    pub fn fence_at_ms(&self, s: &LeaseSettings) -> u64 {
        let until = self.valid_until_ms.unwrap_or(self.started_ms + s.lease_ms);
        until.saturating_sub(s.safety_margin_ms)
    }

    /// Until when this agent may feed a host watchdog of `timeout_s`: a reset `timeout_s`
    /// after the last feed is over by the end of the lease (`sent + lease`), a
    /// `drift_margin` before a coordinator may promote another node, and it is never fed
    /// after the fence deadline (a PostgreSQL the fence failed to stop is reset, not kept
    /// alive).
    pub fn feed_until_ms(&self, s: &LeaseSettings, timeout_s: u64) -> u64 {
        let until = self.valid_until_ms.unwrap_or(self.started_ms + s.lease_ms);
        until
            .saturating_sub(LeaseSettings::WATCHDOG_RESET_MS + timeout_s * 1000)
            .min(self.fence_at_ms(s))
    }

    /// Whether the lease is valid now (with the safety margin kept).
    pub fn valid(&self, now_ms: u64, s: &LeaseSettings) -> bool {
        self.valid_until_ms
            .is_some_and(|until| now_ms < until.saturating_sub(s.safety_margin_ms))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStep {
    /// Send a renewal now.
    Renew,
    /// Stop PostgreSQL now (immediate shutdown), for this reason.
    Fence(String),
}

/// The primary side, checked every few tens of milliseconds by the agent.
/// `is_primary`: the committed state names this node primary, holding the lease.
/// `writable`: a postmaster runs on a data directory without `standby.signal`.
pub fn primary_step(
    now_ms: u64,
    is_primary: bool,
    writable: bool,
    held: &HeldLease,
    s: &LeaseSettings,
) -> Vec<LeaseStep> {
    let mut steps = Vec::new();
    if writable && !is_primary {
        steps.push(LeaseStep::Fence(
            "PostgreSQL accepts writes but this node does not hold the lease (it is not the \
             committed primary, or it gave the lease up)"
                .to_string(),
        ));
        return steps;
    }
    // Invariant 2: fence before the lease can expire.
    if writable && now_ms >= held.fence_at_ms(s) {
        steps.push(LeaseStep::Fence(format!(
            "the lease was not renewed in time (fence deadline passed by {} ms)",
            now_ms - held.fence_at_ms(s)
        )));
    }
    // After a failure (typically: the coordinator just died) retry every 100 ms, so that the
    // lease is renewed as soon as a new coordinator is elected.
    let interval = if held.last_failed {
        s.renew_interval_ms.min(100)
    } else {
        s.renew_interval_ms
    };
    let due = held
        .last_attempt_ms
        .is_none_or(|last| now_ms >= last + interval);
    if is_primary && due && !held.in_flight {
        steps.push(LeaseStep::Renew);
    }
    steps
}

/// Whether the Raft leader may make the coordinator's decisions yet (invariant 3): once it
/// has taken into account an entry of the term it leads (`applied_term`, the term of the
/// last entry whose renewals it timed), every renewal committed before it led has been
/// applied here, each timed no earlier than it was sent, and the lease can be counted from
/// the last one. Before that it may not have seen the latest renewal, and would count an
/// expired lease that is not.
pub fn may_coordinate(leading_term: Option<u64>, applied_term: u64) -> bool {
    leading_term == Some(applied_term)
}

/// The coordinator's clock of the primary's lease (invariant 3): the lease (generation,
/// renewals, released) it last timed, when it applied it, and until when the renewals
/// applied so far hold the lease — each for the lease it was timed with
/// (`Command::RenewLease::lease_ms`), counted from when it was applied here, which is no
/// earlier than it was sent. So the lease can change while the cluster runs: a primary
/// and the coordinator count each renewal with the same value. It never ends earlier
/// than a renewal applied before promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseClock {
    pub lease: (crate::types::Generation, u64, bool),
    /// When this agent applied that lease (monotonic ms).
    pub seen_ms: u64,
    /// Until when the renewals applied hold the lease, before the drift margin.
    pub until_ms: u64,
}

impl LeaseClock {
    /// The lease of `state`, at this agent's start (`now_ms`): every renewal in it was sent
    /// before, so the longest lease any of them was timed with is counted from now.
    pub fn start(state: &crate::model::ClusterState, now_ms: u64, s: &LeaseSettings) -> Self {
        Self::new_period(state, now_ms, s)
    }

    /// A lease period that starts now (this agent's start, a promotion, a release):
    /// counted for the longest lease any of its renewals was timed with, and never less
    /// than this agent's.
    fn new_period(state: &crate::model::ClusterState, now_ms: u64, s: &LeaseSettings) -> Self {
        LeaseClock {
            lease: Self::of(state),
            seen_ms: now_ms,
            until_ms: now_ms + state.lease_timed_after(0).unwrap_or(0).max(s.lease_ms),
        }
    }

    fn of(state: &crate::model::ClusterState) -> (crate::types::Generation, u64, bool) {
        (state.generation, state.lease_renewals, state.lease_released)
    }

    /// The clock once `state` is taken into account at `now_ms`. Unchanged when its lease
    /// is the one timed. New renewals of the same lease hold it for the longest lease any of
    /// them was timed with from now, and never less than before. Anything else (a
    /// promotion, a release) starts a new lease, counted from now — never from the previous
    /// generation's last renewal, which would expire a new primary's lease at once.
    pub fn time(&self, state: &crate::model::ClusterState, now_ms: u64, s: &LeaseSettings) -> Self {
        let lease = Self::of(state);
        if lease == self.lease {
            return *self;
        }
        let renewed = lease.0 == self.lease.0 && lease.2 == self.lease.2 && lease.1 > self.lease.1;
        if !renewed {
            return Self::new_period(state, now_ms, s);
        }
        let timed = state.lease_timed_after(self.lease.1).unwrap_or(s.lease_ms);
        LeaseClock {
            lease,
            seen_ms: now_ms,
            until_ms: self.until_ms.max(now_ms + timed),
        }
    }

    /// When the primary's lease has surely expired on this clock: `drift_margin` after it
    /// ends.
    pub fn expires_at_ms(&self, s: &LeaseSettings) -> u64 {
        self.until_ms + s.drift_margin_ms
    }
}

/// The coordinator side: when the primary's lease has surely expired on this clock.
/// `last_renewal_seen_ms`: when this agent applied the latest renewal, release or promotion
/// (None: at its start, 0). Applied is after sent, so this is never before the primary's
/// own expiry (plus the drift margin for clock rates).
pub fn expired_at_ms(last_renewal_seen_ms: Option<u64>, s: &LeaseSettings) -> u64 {
    last_renewal_seen_ms.unwrap_or(0) + s.lease_ms + s.drift_margin_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A promotion the coordinator has applied but not timed yet restarts the lease clock
    /// now (found by CI: a second promotion 44 ms after the first, judged on the old
    /// generation's last renewal).
    #[test]
    fn the_lease_clock_belongs_to_the_state_it_judges() {
        use crate::types::Generation;
        let s = LeaseSettings::default();
        let mut state = primary_state();
        state.lease_renewals = 7;
        let timed = LeaseClock::start(&state, 1_000, &s);
        assert_eq!(timed.time(&state, 9_000, &s), timed);
        state.generation = Generation(2);
        state.lease_renewals = 0;
        let promoted = timed.time(&state, 9_000, &s);
        assert_eq!(
            (promoted.seen_ms, promoted.until_ms),
            (9_000, 9_000 + s.lease_ms)
        );
        assert!(promoted.expires_at_ms(&s) > 9_000);
    }

    /// pg1, primary of generation 1, no renewal yet.
    fn primary_state() -> crate::model::ClusterState {
        crate::model::ClusterState {
            primary: Some("pg1".into()),
            generation: crate::types::Generation(1),
            ..Default::default()
        }
    }

    fn renew(state: &mut crate::model::ClusterState, lease_ms: u64) {
        state
            .apply(&crate::model::Command::RenewLease {
                node: "pg1".into(),
                generation: crate::types::Generation(1),
                lease_ms: Some(lease_ms),
            })
            .unwrap();
    }

    /// Each renewal is counted out with the lease it was timed with; a shorter one never
    /// ends what a longer one applied before promised, and one the clock did not see
    /// between two looks still counts.
    #[test]
    fn each_renewal_counts_with_its_own_lease() {
        let s = LeaseSettings::default();
        let mut state = primary_state();
        let clock = LeaseClock::start(&state, 0, &s);
        renew(&mut state, 4_000);
        let clock = clock.time(&state, 100, &s);
        assert_eq!(clock.until_ms, 4_100);
        renew(&mut state, 2_000);
        let clock = clock.time(&state, 400, &s);
        assert_eq!(clock.until_ms, 4_100, "the 4 s renewal still holds");
        renew(&mut state, 2_000);
        let clock = clock.time(&state, 2_500, &s);
        assert_eq!(clock.until_ms, 4_500);
        // Two renewals applied between looks, the first timed with a longer lease.
        renew(&mut state, 6_000);
        renew(&mut state, 2_000);
        let clock = clock.time(&state, 3_000, &s);
        assert_eq!(clock.until_ms, 9_000);
        assert_eq!(state.lease_timed_after(0), Some(6_000));
        assert_eq!(state.lease_timed_after(4), Some(2_000));
        assert_eq!(state.lease_timed_after(5), None);
    }

    /// A leader decides once it has taken into account an entry of the term it leads;
    /// not before, and never when it does not lead.
    #[test]
    fn a_new_coordinator_waits_for_an_entry_of_its_term() {
        for (leading, applied, expected) in [
            (Some(3), 3, true),
            (Some(3), 2, false),
            (None, 3, false),
            (None, 0, false),
        ] {
            assert_eq!(
                may_coordinate(leading, applied),
                expected,
                "{leading:?} {applied}"
            );
        }
    }

    /// The watchdog resets the host by the end of the lease, a drift margin before any
    /// coordinator may promote, and is refused when the lease leaves it no whole second.
    #[test]
    fn the_watchdog_fires_before_a_promotion() {
        for (lease, renew, safety, drift, expected) in [
            (3500, 500, 1000, 500, Some(2)),
            // The defaults: fed until 1.15 s after each renewal was sent.
            (2400, 300, 800, 400, Some(1)),
            (2400, 500, 800, 400, Some(1)),
            (2000, 500, 500, 200, Some(1)),
            (1600, 400, 100, 100, None),
        ] {
            let s = LeaseSettings {
                lease_ms: lease,
                renew_interval_ms: renew,
                safety_margin_ms: safety,
                drift_margin_ms: drift,
            };
            assert_eq!(s.watchdog_timeout_s(), expected, "{s:?}");
            let Some(t) = expected else { continue };
            for valid_until in [None, Some(10_000 + lease)] {
                let held = HeldLease {
                    valid_until_ms: valid_until,
                    started_ms: 10_000,
                    ..HeldLease::default()
                };
                let feed_until = held.feed_until_ms(&s, t);
                // The reset: by the end of the lease sent at 10 s, a drift margin before
                // any promotion.
                assert!(
                    feed_until + t * 1000 + LeaseSettings::WATCHDOG_RESET_MS <= 10_000 + lease,
                    "{s:?}"
                );
                // Never fed past the fence deadline; fed for a whole renewal interval.
                assert!(feed_until <= held.fence_at_ms(&s), "{s:?}");
                assert!(feed_until >= 10_000 + renew, "{s:?}");
            }
        }
    }

    const S: LeaseSettings = LeaseSettings {
        lease_ms: 3000,
        renew_interval_ms: 500,
        safety_margin_ms: 1000,
        drift_margin_ms: 500,
    };

    fn check(now: u64, is_primary: bool, writable: bool, held: HeldLease, expected: &[&str]) {
        let got: Vec<String> = primary_step(now, is_primary, writable, &held, &S)
            .into_iter()
            .map(|s| match s {
                LeaseStep::Renew => "renew".to_string(),
                LeaseStep::Fence(why) => format!("fence: {why}"),
            })
            .collect();
        assert_eq!(
            got, expected,
            "now {now}, primary {is_primary}, writable {writable}, {held:?}"
        );
    }

    #[test]
    fn the_primary_renews_and_fences_on_time() {
        let fresh = HeldLease {
            started_ms: 0,
            ..HeldLease::default()
        };
        check(0, true, true, fresh, &["renew"]);
        let renewed = HeldLease {
            generation: None,
            valid_until_ms: Some(3_100),
            last_attempt_ms: Some(100),
            in_flight: false,
            last_failed: false,
            started_ms: 0,
        };
        check(400, true, true, renewed, &[]);
        check(600, true, true, renewed, &["renew"]);
        // After a failed attempt, retry within 100 ms.
        let failed = HeldLease {
            last_failed: true,
            ..renewed
        };
        check(199, true, true, failed, &[]);
        check(200, true, true, failed, &["renew"]);
        check(
            2_099,
            true,
            true,
            HeldLease {
                in_flight: true,
                ..renewed
            },
            &[],
        );
        check(
            2_100,
            true,
            true,
            HeldLease {
                in_flight: true,
                ..renewed
            },
            &["fence: the lease was not renewed in time (fence deadline passed by 0 ms)"],
        );
        // Not writable (already stopped, or a standby): nothing to fence.
        check(5_000, true, false, renewed, &["renew"]);
        check(
            10,
            false,
            true,
            renewed,
            &["fence: PostgreSQL accepts writes but this node does not hold the lease (it is not the committed primary, or it gave the lease up)"],
        );
        check(10, false, false, renewed, &[]);
        assert_eq!(S.problem(), None);
        assert_eq!(
            S.describe(),
            "lease 3 s, renew 500 ms, safety margin 1 s, drift margin 500 ms"
        );
        let bad = LeaseSettings {
            renew_interval_ms: 1500,
            ..S
        };
        assert!(bad.problem().unwrap().contains("must fit twice"));
    }

    #[test]
    fn the_coordinator_counts_from_the_last_renewal_it_applied() {
        assert_eq!(expired_at_ms(Some(1_000), &S), 4_500);
        assert_eq!(expired_at_ms(None, &S), 3_500);
    }

    proptest! {
        /// The lease changes while the primary renews (each renewal timed with one of
        /// several leases, as a committed change reaches the primary): whatever commits,
        /// whatever is acknowledged, and however rarely the coordinator looks, the primary's
        /// fence deadline is never after the coordinator's expiry.
        #[test]
        fn a_lease_changed_at_run_time_never_outlives_the_coordinator_s_count(
            renewals in proptest::collection::vec(
                (prop_oneof![Just(2_400u64), Just(4_000), Just(1_600 + 300)], any::<bool>(), any::<bool>(), 0u64..400, 1u64..600),
                1..60,
            ),
            looks in proptest::collection::vec(0u64..1_000, 1..200),
        ) {
            let s = LeaseSettings { lease_ms: 2_400, renew_interval_ms: 300, safety_margin_ms: 200, drift_margin_ms: 0 };
            let mut state = primary_state();
            let mut clock = LeaseClock::start(&state, 0, &s);
            let mut held = HeldLease::default();
            // Renewal k: sent at `sent`, committed (applied by the coordinator) `delay` later
            // if it commits, acknowledged to the primary if it commits and the answer is not lost.
            let mut sent = 0;
            let mut events: Vec<(u64, u64, u64, bool)> = Vec::new(); // (applied at, sent at, lease, acked)
            let mut last_applied = 0;
            for (lease, commits, acked, delay, gap) in renewals {
                sent += gap;
                if commits {
                    // Applied in order, each no earlier than sent.
                    last_applied = last_applied.max(sent + delay);
                    events.push((last_applied, sent, lease, acked));
                }
            }
            let mut looks = looks.into_iter().scan(0u64, |t, gap| { *t += gap; Some(*t) });
            let mut next_look = looks.next();
            for (applied, sent, lease, acked) in events {
                // The coordinator's stored clock, updated now and then (the renewal watch).
                while let Some(look) = next_look.filter(|l| *l < applied) {
                    clock = clock.time(&state, look, &s);
                    next_look = looks.next();
                }
                renew(&mut state, lease);
                if acked {
                    let until = sent + lease;
                    held.valid_until_ms = Some(held.valid_until_ms.map_or(until, |u| u.max(until)));
                }
                // What the coordinator judges on now: its stored clock, brought up to date
                // (`Agent::view`).
                let judged = clock.time(&state, applied, &s);
                let fence = held.fence_at_ms(&s);
                prop_assert!(
                    held.valid_until_ms.is_none() || fence < judged.expires_at_ms(&s),
                    "fence at {fence}, expiry {}", judged.expires_at_ms(&s)
                );
            }
        }

        /// Whatever happens to renewals, a writable primary is fenced (by the step that
        /// runs every `tick` ms) before any coordinator can count its lease as expired.
        #[test]
        fn a_primary_that_cannot_renew_is_fenced_before_expiry(
            renew_ok in proptest::collection::vec(any::<bool>(), 1..60),
            tick in 10u64..100,
            commit_delay in 0u64..400,
        ) {
            let mut held = HeldLease { started_ms: 0, ..HeldLease::default() };
            // The coordinator's view: when it applied the newest renewal.
            let mut applied: Option<u64> = None;
            let mut pending: Option<(u64, bool)> = None; // (sent at, will succeed)
            let mut outcomes = renew_ok.into_iter();
            let mut fenced_at = None;
            let mut now = 0;
            while now < 60_000 && fenced_at.is_none() {
                if let Some((sent, ok)) = pending {
                    if now >= sent + commit_delay {
                        pending = None;
                        held.in_flight = false;
                        held.last_failed = !ok;
                        if ok {
                            held.valid_until_ms = Some(sent + S.lease_ms);
                            applied = Some(now);
                        }
                    }
                }
                for step in primary_step(now, true, true, &held, &S) {
                    match step {
                        LeaseStep::Fence(_) => fenced_at = Some(now),
                        LeaseStep::Renew => {
                            let ok = outcomes.next().unwrap_or(false);
                            held.last_attempt_ms = Some(now);
                            held.in_flight = true;
                            pending = Some((now, ok));
                        }
                    }
                }
                now += tick;
            }
            let fenced_at = fenced_at.expect("renewals stopped succeeding, so it must fence");
            // The coordinator's expiry, counted from the last renewal it applied.
            let expiry = expired_at_ms(applied, &S);
            prop_assert!(fenced_at + tick < expiry, "fenced at {fenced_at}, expiry {expiry}");
        }
    }
}
