//! What `pgfm bench calm` draws and measures, as pure functions tested here: each step of
//! the stress drawn from the seed, the default longest pause from the lease settings, the
//! events the lab's logs record (a fence, a watchdog reset), moments with two writers, and
//! the arithmetic of the progress lines and the summary.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use pgfm_core::lease::LeaseSettings;

use crate::bench::median;
use crate::seeded::Rng;
use crate::writers::{longest_gap, Writable};

/// The wait between two pauses is drawn uniformly from this range (ms): often enough that a
/// 30-minute bench pauses the agent several hundred times, far enough apart that each pause
/// meets a lease renewed since the last one.
pub const WAIT_MS: (u64, u64) = (1_000, 4_000);

/// One step of the stress: wait, then stop the primary's agent for `pause_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub wait_ms: u64,
    pub pause_ms: u64,
}

/// Step `n` of the bench seeded with `seed`: the wait from `WAIT_MS`, the pause uniformly
/// from `0..=max_pause_ms`. Each step draws from a fork of its own, so that step 40 is the
/// same however the steps before it went.
pub fn draw(seed: u64, n: u64, max_pause_ms: u64) -> Step {
    let mut rng = Rng::new(seed).fork(n);
    Step {
        wait_ms: rng.between(WAIT_MS.0, WAIT_MS.1),
        pause_ms: rng.between(0, max_pause_ms),
    }
}

/// The longest pause issue 13 says a healthy primary must survive: `lease - safety_margin -
/// 1 s`. The primary renews every `renew_interval` and must have renewed within `lease -
/// safety_margin` or fence itself; the second left over is for the renewal that was due
/// during the pause to go through once the agent runs again (0 when the settings leave
/// less).
pub fn default_max_pause_ms(lease: &LeaseSettings) -> u64 {
    lease
        .lease_ms
        .saturating_sub(lease.safety_margin_ms)
        .saturating_sub(1_000)
}

/// Whether a pause of up to `max_pause_ms` outlasts the host watchdog's timeout: the agent
/// feeds the watchdog on every lease-loop tick, so a pause longer than the timeout leaves it
/// unfed and the lab's watchdog driver resets the host. What the header says, if so.
pub fn watchdog_note(max_pause_ms: u64, watchdog_timeout_s: Option<u64>) -> Option<String> {
    let timeout_ms = watchdog_timeout_s? * 1_000;
    (max_pause_ms >= timeout_ms).then(|| {
        format!(
            "pauses of {timeout_ms} ms or more outlast the watchdog's timeout ({} s): the agent \
             cannot feed it while stopped, so its host is reset unless the pause ends first",
            timeout_ms / 1_000
        )
    })
}

/// What a line of a node's logs says happened, when it is something a calm run must not
/// see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// The agent fenced its PostgreSQL (`agent.log`: every fence goes through
    /// `fence_now`, which logs "fencing PostgreSQL" first).
    Fence,
    /// The lab's watchdog driver reset the host (`watchdog.log`: "FIRED: the deadline").
    WatchdogReset,
}

/// The event `line` records, if any.
pub fn classify(line: &str) -> Option<Event> {
    if line.contains("fencing PostgreSQL") {
        Some(Event::Fence)
    } else if line.contains("FIRED: the deadline") {
        Some(Event::WatchdogReset)
    } else {
        None
    }
}

/// When a log line was written: its first word, RFC 3339 as the agents' and the watchdog
/// driver's logs begin (None for a line that does not start so).
pub fn logged_at(line: &str) -> Option<SystemTime> {
    let word = line.split_whitespace().next()?;
    humantime::parse_rfc3339_weak(word.trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(word).ok())
}

/// One pause of the primary's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub node: String,
    /// When it began, by the wall clock (as the logs say).
    pub wall: SystemTime,
    /// Drawn, and held: from the agent seen stopped to SIGCONT sent.
    pub drawn_ms: u64,
    pub held: Duration,
    /// The paused agent was the coordinator (the Raft leader).
    pub coordinator: bool,
}

/// The last pause that began at or before `at` (wall clock), and how long before.
pub fn pause_before(pauses: &[Pause], at: SystemTime) -> Option<(&Pause, Duration)> {
    pauses
        .iter()
        .filter_map(|p| Some((p, at.duration_since(p.wall).ok()?)))
        .min_by_key(|(_, since)| *since)
}

/// Moments when two different servers were writable at once, as `writers::overlaps` counts
/// them, in one sweep over the samples ordered by start: a 30-minute bench has a hundred
/// thousand samples, too many to compare pairwise.
pub fn two_writer_moments(samples: &[Writable]) -> usize {
    let mut sorted: Vec<&Writable> = samples.iter().collect();
    sorted.sort_by_key(|w| w.from);
    let mut found = 0;
    for (i, a) in sorted.iter().enumerate() {
        // Every later sample starts no earlier than `a`: it overlaps `a` exactly when it
        // starts before `a` ends.
        for b in sorted[i + 1..].iter().take_while(|b| b.from <= a.to) {
            found += usize::from(a.node != b.node);
        }
    }
    found
}

/// Everything the bench saw up to `now`, raw.
pub struct Observed<'a> {
    pub started: Instant,
    pub now: Instant,
    pub pauses: &'a [Pause],
    /// The generation when the stress began, and the newest one seen since.
    pub generations: (u64, u64),
    pub events: &'a [Event],
    pub acks: &'a [(i64, Instant)],
    pub writable: &'a [Writable],
    /// Acknowledged writes missing from the final primary (known only at the end).
    pub lost: Option<usize>,
    pub coordinator_changes: usize,
}

/// The numbers of a progress line and of the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Numbers {
    pub elapsed_s: u64,
    pub pauses: usize,
    pub pause_median_ms: Option<u64>,
    pub pause_max_ms: Option<u64>,
    /// Pauses of the agent that was also the coordinator.
    pub pauses_of_coordinator: usize,
    pub promotions: u64,
    pub fences: usize,
    pub watchdog_resets: usize,
    /// The longest time between two acknowledged writes since the stress began.
    pub write_gap_ms: u64,
    pub acknowledged: usize,
    pub lost: Option<usize>,
    pub two_writer_moments: usize,
    pub coordinator_changes: usize,
}

impl Numbers {
    pub fn of(o: &Observed) -> Numbers {
        let mut held: Vec<u64> = o.pauses.iter().map(|p| ms(p.held)).collect();
        let count = |kind| o.events.iter().filter(|e| **e == kind).count();
        let acks: Vec<(i64, Instant)> = o
            .acks
            .iter()
            .filter(|(_, at)| *at >= o.started)
            .copied()
            .collect();
        // Up to now, not only to the last write: writes that stopped altogether are the
        // longest gap of all.
        let mut gap = longest_gap(&acks, o.started);
        let last = acks.last().map_or(o.started, |(_, at)| *at);
        gap = gap.max(o.now.saturating_duration_since(last));
        Numbers {
            elapsed_s: o.now.saturating_duration_since(o.started).as_secs(),
            pauses: held.len(),
            pause_max_ms: held.iter().max().copied(),
            pause_median_ms: median(&mut held),
            pauses_of_coordinator: o.pauses.iter().filter(|p| p.coordinator).count(),
            promotions: o.generations.1.saturating_sub(o.generations.0),
            fences: count(Event::Fence),
            watchdog_resets: count(Event::WatchdogReset),
            write_gap_ms: ms(gap),
            acknowledged: acks.len(),
            lost: o.lost,
            two_writer_moments: two_writer_moments(o.writable),
            coordinator_changes: o.coordinator_changes,
        }
    }

    /// Whether the run was calm: nothing failed over, fenced, reset or lost, and never two
    /// writers.
    pub fn calm(&self) -> bool {
        self.promotions == 0
            && self.fences == 0
            && self.watchdog_resets == 0
            && self.two_writer_moments == 0
            && self.lost.unwrap_or(0) == 0
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writers::overlaps;

    fn t0() -> Instant {
        static ZERO: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        *ZERO
    }

    fn at(n: u64) -> Instant {
        t0() + Duration::from_millis(n)
    }

    #[test]
    fn steps_are_drawn_from_the_seed_and_stay_in_range() {
        let steps: Vec<Step> = (0..500).map(|n| draw(7, n, 1_500)).collect();
        for s in &steps {
            assert!((1_000..=4_000).contains(&s.wait_ms), "{s:?}");
            assert!(s.pause_ms <= 1_500, "{s:?}");
        }
        // The same seed, the same steps; another seed, others.
        assert_eq!(steps[40], draw(7, 40, 1_500));
        assert_ne!(
            steps[..10],
            (0..10).map(|n| draw(8, n, 1_500)).collect::<Vec<_>>()[..]
        );
        // Uniform over the range: both ends are reached, and the median is near the middle.
        let mut pauses: Vec<u64> = steps.iter().map(|s| s.pause_ms).collect();
        assert!(pauses.iter().any(|p| *p < 100) && pauses.iter().any(|p| *p > 1_400));
        let middle = median(&mut pauses).unwrap();
        assert!((600..=900).contains(&middle), "{middle}");
        // No pause at all when there is no room for one.
        assert_eq!(draw(7, 3, 0).pause_ms, 0);
    }

    fn check_max_pause(lease_ms: u64, safety_margin_ms: u64, expected: u64) {
        let lease = LeaseSettings {
            lease_ms,
            safety_margin_ms,
            ..LeaseSettings::default()
        };
        assert_eq!(default_max_pause_ms(&lease), expected, "{lease:?}");
    }

    #[test]
    fn the_default_pause_is_lease_minus_safety_margin_minus_a_second() {
        check_max_pause(3_500, 1_000, 1_500);
        assert_eq!(default_max_pause_ms(&LeaseSettings::default()), 600);
        check_max_pause(2_400, 400, 1_000);
        check_max_pause(2_400, 1_000, 400);
        check_max_pause(1_800, 1_000, 0);
        check_max_pause(1_000, 1_500, 0);
    }

    #[test]
    fn the_header_warns_when_a_pause_can_outlast_the_watchdog() {
        assert!(watchdog_note(1_500, Some(1)).is_some());
        assert!(watchdog_note(1_000, Some(1)).is_some());
        assert_eq!(watchdog_note(999, Some(1)), None);
        assert_eq!(watchdog_note(1_500, Some(2)), None);
        assert_eq!(watchdog_note(1_500, None), None);
    }

    #[test]
    fn log_lines_are_classified_and_dated() {
        let fence = "2026-05-09T07:29:33.186123Z ERROR agent{node=pg1}: pgfm_agent::lease: \
                     fencing PostgreSQL generation=1 reason=\"the lease was not renewed\"";
        let reset = "2026-05-09T07:29:34.200Z FIRED: the deadline of pg1's watchdog (1 s) \
                     passed 12 ms ago: resetting the host";
        assert_eq!(classify(fence), Some(Event::Fence));
        assert_eq!(classify(reset), Some(Event::WatchdogReset));
        assert_eq!(
            classify("2026-05-09T07:29:34.300Z FIRED: killed agent"),
            None
        );
        assert_eq!(classify("INFO lease renewed"), None);
        let dated = |line| {
            logged_at(line).map(|t| {
                t.duration_since(humantime::parse_rfc3339("2026-05-09T07:29:33Z").unwrap())
                    .unwrap()
                    .as_millis()
            })
        };
        assert_eq!(dated(fence), Some(186));
        assert_eq!(dated(reset), Some(1_200));
        assert_eq!(dated("fencing PostgreSQL"), None);
    }

    #[test]
    fn an_event_is_set_against_the_last_pause_before_it() {
        let base = humantime::parse_rfc3339("2026-05-09T07:00:00Z").unwrap();
        let pause = |s: u64, held: u64| Pause {
            node: "pg1".into(),
            wall: base + Duration::from_secs(s),
            drawn_ms: held,
            held: Duration::from_millis(held),
            coordinator: false,
        };
        let pauses = [pause(10, 300), pause(13, 1_400), pause(20, 50)];
        let found = |s: u64| {
            pause_before(&pauses, base + Duration::from_millis(s))
                .map(|(p, since)| (p.drawn_ms, since.as_millis() as u64))
        };
        assert_eq!(found(14_100), Some((1_400, 1_100)));
        assert_eq!(found(25_000), Some((50, 5_000)));
        assert_eq!(found(9_000), None);
    }

    fn w(node: &str, from: u64, to: u64) -> Writable {
        Writable {
            node: node.into(),
            from: at(from),
            to: at(to),
        }
    }

    #[test]
    fn two_writers_are_counted_as_the_pairwise_check_counts_them() {
        let tables: Vec<Vec<Writable>> = vec![
            vec![],
            vec![w("pg1", 0, 10), w("pg1", 20, 30), w("pg2", 40, 50)],
            vec![
                w("pg1", 0, 10),
                w("pg1", 20, 30),
                w("pg2", 40, 50),
                w("pg2", 5, 6),
            ],
            vec![
                w("pg2", 25, 26),
                w("pg1", 0, 100),
                w("pg3", 99, 120),
                w("pg1", 110, 111),
            ],
            vec![w("pg1", 0, 10), w("pg2", 10, 20), w("pg1", 20, 30)],
        ];
        for samples in tables {
            assert_eq!(
                two_writer_moments(&samples),
                overlaps(&samples).len(),
                "{samples:?}"
            );
        }
    }

    #[test]
    fn the_numbers_add_up() {
        let pause = |s: u64, held: u64, coordinator: bool| Pause {
            node: "pg1".into(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(s),
            drawn_ms: held,
            held: Duration::from_millis(held),
            coordinator,
        };
        let pauses = [
            pause(1_000, 700, false),
            pause(3_000, 100, true),
            pause(6_000, 1_400, false),
            pause(9_000, 200, false),
        ];
        // Writes every 10 ms from 500 ms, with one gap from 6 000 to 7 250; one write from
        // before the stress is not counted.
        let mut acks: Vec<(i64, Instant)> = vec![(0, at(400))];
        acks.extend((50..600).map(|i| (i, at(i as u64 * 10))));
        acks.extend((725..1_000).map(|i| (i, at(i as u64 * 10))));
        let events = [Event::Fence, Event::WatchdogReset, Event::Fence];
        let writable = [w("pg1", 0, 10), w("pg2", 5, 15)];
        let observed = Observed {
            started: at(450),
            now: at(10_000),
            pauses: &pauses,
            generations: (3, 5),
            events: &events,
            acks: &acks,
            writable: &writable,
            lost: Some(2),
            coordinator_changes: 1,
        };
        let n = Numbers::of(&observed);
        assert_eq!(
            n,
            Numbers {
                elapsed_s: 9,
                pauses: 4,
                pause_median_ms: Some(450),
                pause_max_ms: Some(1_400),
                pauses_of_coordinator: 1,
                promotions: 2,
                fences: 2,
                watchdog_resets: 1,
                write_gap_ms: 1_260,
                acknowledged: 550 + 275,
                lost: Some(2),
                two_writer_moments: 1,
                coordinator_changes: 1,
            }
        );
        assert!(!n.calm());
        let quiet = Observed {
            pauses: &pauses[..2],
            generations: (3, 3),
            events: &[],
            writable: &writable[..1],
            lost: Some(0),
            ..observed
        };
        let n = Numbers::of(&quiet);
        assert!(n.calm(), "{n:?}");
        // Writes that stopped for good: the gap runs to now.
        let stalled = Observed {
            now: at(20_000),
            ..quiet
        };
        assert_eq!(Numbers::of(&stalled).write_gap_ms, 20_000 - 9_990);
        // A lost write alone is no calm run either.
        let lost = Observed {
            lost: Some(1),
            ..quiet
        };
        assert!(!Numbers::of(&lost).calm());
    }
}
