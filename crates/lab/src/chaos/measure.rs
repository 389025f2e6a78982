//! What a chaos run measured, from what the writer, the split-brain watches, the status log
//! and the injector recorded: pure functions over instants, tested here.
//!
//! - **Write gap with a majority up**: the longest stretch without an acknowledged write
//!   (that survived) during which a majority of the voters and at least one data node were
//!   free of every fault the soak injected, by the injector's own record. Time when the
//!   faults left no majority, or no data node, is not counted: no failover manager can
//!   make a primary then. The lease wait, the election, the promotion and the writer's
//!   reconnection are counted: they are what pgfm costs.
//! - **Lost, synchronous / asynchronous**: an acknowledged write missing from the final
//!   primary. In a synchronous soak a write counts as asynchronous only when the writable
//!   server, asked just before and just after its acknowledgement, had no
//!   `synchronous_standby_names` (degraded, or a new primary not yet given its synchronous
//!   standby); otherwise it counts as synchronous.
//! - **Lease window**: with asynchronous replication a primary loses what it acknowledged
//!   and had not yet sent when it stops. Fenced because it could no longer renew its lease,
//!   it stops at most `lease - safety_margin` after its last renewal: a lost write is
//!   explained when it was acknowledged within `lease - safety_margin` (and `WINDOW_BEFORE`
//!   for replication's own lag) before the server that acknowledged it stopped taking writes,
//!   as the split-brain watch saw it (the end of its stretch of writable samples). Killed by
//!   the soak (host death, postmaster crash), it loses only replication's lag: the window is
//!   `WINDOW_BEFORE`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::median;
use crate::writers::Writable;

/// How much longer than `lease - safety_margin` before it stopped a server may have
/// acknowledged a write it never sent (asynchronous replication's lag here is a few ms).
pub const WINDOW_BEFORE: Duration = Duration::from_millis(200);

/// Samples of one server writable less than this apart belong to one stretch (the watch
/// asks every 10 ms; a query may wait up to its 1 s timeout).
const JOIN: Duration = Duration::from_millis(1_500);

/// How far outside its stretch's first and last sample a write may still be its server's
/// (the watch's own pace and query time).
const SLACK: Duration = Duration::from_millis(100);

/// A stretch that ended this close before a kill of its server (recorded once `pgfm lab
/// kill` returned) ended with the kill.
const KILLED_WITHIN: Duration = Duration::from_millis(500);

/// A node broken by the soak from `from` until `to` (None: until the end of the run).
#[derive(Debug, Clone)]
pub struct Broken {
    pub node: String,
    /// Its vote is lost (agent dead, frozen, or cut off).
    pub voter: bool,
    /// It cannot be the primary (a data node dead, frozen, cut off, or with a full disk).
    pub candidate: bool,
    /// Its PostgreSQL was killed at `from` (host death, postmaster crash): it stopped
    /// taking writes then, not at a fence.
    pub killed: bool,
    pub from: Instant,
    pub to: Option<Instant>,
}

/// The stretches up to `end` when the faults left fewer than a majority of `voters`, or no
/// data node of `data_nodes`, unbroken.
pub fn unavailable(
    broken: &[Broken],
    voters: usize,
    data_nodes: usize,
    end: Instant,
) -> Vec<(Instant, Instant)> {
    // (when, node, +1 at a fault / -1 at its repair, costs a vote, costs a candidate).
    let mut events: Vec<(Instant, &str, i64, bool, bool)> = Vec::new();
    for b in broken {
        let to = b.to.unwrap_or(end).min(end).max(b.from);
        events.push((b.from, &b.node, 1, b.voter, b.candidate));
        events.push((to, &b.node, -1, b.voter, b.candidate));
    }
    // At the same instant repairs come first: a zero-length fault breaks nothing.
    events.sort_by_key(|(at, _, step, _, _)| (*at, *step));
    // Per node, how many faults now cost its vote and its candidacy: a node hit twice
    // counts once.
    let mut per_node: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    let majority = voters / 2 + 1;
    let mut down_since: Option<Instant> = None;
    let mut found = Vec::new();
    for (at, node, step, voter, candidate) in events {
        let counts = per_node.entry(node).or_default();
        counts.0 += if voter { step } else { 0 };
        counts.1 += if candidate { step } else { 0 };
        let voters_down = per_node.values().filter(|c| c.0 > 0).count();
        let candidates_down = per_node.values().filter(|c| c.1 > 0).count();
        let up = voters.saturating_sub(voters_down) >= majority
            && data_nodes.saturating_sub(candidates_down) >= 1;
        match (up, down_since) {
            (false, None) => down_since = Some(at),
            (true, Some(since)) => {
                if at > since {
                    found.push((since, at));
                }
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(since) = down_since {
        if end > since {
            found.push((since, end));
        }
    }
    found
}

/// The longest stretch between consecutive acknowledged writes (`acks`, in order) from the
/// last one at or before `from` (or `from`) to `to`, counting only time outside `down`.
pub fn longest_gap_while_up(
    acks: &[Instant],
    from: Instant,
    to: Instant,
    down: &[(Instant, Instant)],
) -> Duration {
    let start = acks
        .iter()
        .rev()
        .find(|at| **at <= from)
        .copied()
        .unwrap_or(from);
    let mut points: Vec<Instant> = vec![start];
    points.extend(acks.iter().copied().filter(|at| *at > start && *at <= to));
    if to > *points.last().unwrap_or(&start) {
        points.push(to);
    }
    points
        .windows(2)
        .map(|w| longest_piece((w[0], w[1]), down))
        .max()
        .unwrap_or_default()
}

/// The longest part of `span` outside every interval of `down`.
fn longest_piece(span: (Instant, Instant), down: &[(Instant, Instant)]) -> Duration {
    let mut pieces = vec![span];
    for &(d0, d1) in down {
        pieces = pieces
            .into_iter()
            .flat_map(|(a, b)| {
                if d1 <= a || d0 >= b {
                    return vec![(a, b)];
                }
                let mut left = Vec::new();
                if d0 > a {
                    left.push((a, d0));
                }
                if d1 < b {
                    left.push((d1, b));
                }
                left
            })
            .collect();
    }
    pieces
        .iter()
        .map(|(a, b)| b.duration_since(*a))
        .max()
        .unwrap_or_default()
}

/// Lost writes (their acknowledgement times) split into (synchronous, asynchronous):
/// everything is asynchronous in an asynchronous soak; in a synchronous one a write is
/// asynchronous only when the samples of the writable server (`(when, its commits waited
/// for a standby)`) on both sides of it say that it waited for none.
pub fn split_losses(
    lost: &[Instant],
    samples: &[(Instant, bool)],
    synchronous: bool,
) -> (Vec<Instant>, Vec<Instant>) {
    if !synchronous {
        return (Vec::new(), lost.to_vec());
    }
    let degraded = |at: &Instant| {
        let before = samples.iter().rev().find(|(t, _)| t <= at);
        let after = samples.iter().find(|(t, _)| t >= at);
        match (before, after) {
            (None, None) => false,
            (Some((_, sync)), None) | (None, Some((_, sync))) => !sync,
            (Some((_, a)), Some((_, b))) => !a && !b,
        }
    };
    lost.iter().partition(|at| !degraded(at))
}

/// One server's stretch of writable samples: from its first to its last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stretch {
    pub node: String,
    pub from: Instant,
    pub to: Instant,
}

/// The split-brain watch's samples (any order) as each server's stretches of writability.
pub fn stretches(samples: &[Writable]) -> Vec<Stretch> {
    let mut sorted: Vec<&Writable> = samples.iter().collect();
    sorted.sort_by_key(|w| (w.node.clone(), w.from));
    let mut found: Vec<Stretch> = Vec::new();
    for w in sorted {
        match found.last_mut() {
            Some(s) if s.node == w.node && w.from <= s.to + JOIN => s.to = s.to.max(w.to),
            _ => found.push(Stretch {
                node: w.node.clone(),
                from: w.from,
                to: w.to,
            }),
        }
    }
    found
}

/// Asynchronous losses set against the lease window of the server that acknowledged them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseWindow {
    /// Lost writes acknowledged inside the window.
    pub inside: usize,
    /// Lost writes acknowledged outside it, or when no server was seen writable.
    pub outside: usize,
    /// Every write acknowledged inside the windows that lost writes: what could be lost.
    pub acknowledged_inside: usize,
    /// The earliest a lost write was acknowledged before its server stopped taking writes.
    pub longest_before_stop_ms: Option<u64>,
}

/// `lost` (acknowledgement times) against `[to - window - WINDOW_BEFORE, to]` of the
/// writable stretch each was acknowledged in — `[to - WINDOW_BEFORE, to]` when the stretch
/// ended with a kill of its server (`kills`: who, when); `acks`: every acknowledged write.
pub fn lease_window(
    lost: &[Instant],
    acks: &[Instant],
    stretches: &[Stretch],
    window: Duration,
    kills: &[(&str, Instant)],
) -> LeaseWindow {
    let covering = |at: &Instant| {
        stretches
            .iter()
            .find(|s| *at + SLACK >= s.from && *at <= s.to + SLACK)
    };
    let killed = |s: &Stretch| {
        kills
            .iter()
            .any(|(node, at)| *node == s.node && s.to <= *at + SLACK && s.to + KILLED_WITHIN >= *at)
    };
    let opens = |s: &Stretch| {
        let reach = if killed(s) {
            WINDOW_BEFORE
        } else {
            window + WINDOW_BEFORE
        };
        s.to.checked_sub(reach)
            .unwrap_or(s.from)
            .max(s.from.checked_sub(SLACK).unwrap_or(s.from))
    };
    let mut found = LeaseWindow::default();
    let mut losing: Vec<&Stretch> = Vec::new();
    for at in lost {
        match covering(at) {
            Some(s) if *at >= opens(s) => {
                found.inside += 1;
                let before = s.to.saturating_duration_since(*at).as_millis() as u64;
                found.longest_before_stop_ms = found.longest_before_stop_ms.max(Some(before));
                if !losing.contains(&s) {
                    losing.push(s);
                }
            }
            _ => found.outside += 1,
        }
    }
    found.acknowledged_inside = acks
        .iter()
        .filter(|at| {
            losing
                .iter()
                .any(|s| **at >= opens(s) && **at <= s.to + SLACK)
        })
        .count();
    found
}

/// What one run measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Numbers {
    pub acknowledged: usize,
    pub lost_sync: usize,
    pub lost_async: usize,
    pub lease_window: LeaseWindow,
    pub two_writer_moments: usize,
    /// The longest gap between surviving acknowledged writes since the fault.
    pub write_gap_ms: u64,
    /// The same, counting only time while a majority and a data node were unbroken.
    pub gap_majority_up_ms: u64,
    /// From the last repair until every node streamed again (None: some never did).
    pub rejoin_ms: Option<u64>,
    pub never_rejoined: Vec<String>,
}

/// A summary of several runs' numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub runs: usize,
    pub acknowledged: usize,
    pub lost_sync: usize,
    pub lost_async: usize,
    /// Asynchronous losses outside every lease window.
    pub lost_unexplained: usize,
    pub two_writer_moments: usize,
    /// Runs after which some node never rejoined.
    pub runs_not_rejoined: usize,
    pub write_gap_median_ms: Option<u64>,
    pub write_gap_max_ms: Option<u64>,
    pub gap_majority_up_median_ms: Option<u64>,
    pub gap_majority_up_max_ms: Option<u64>,
    pub rejoin_median_ms: Option<u64>,
}

impl Tally {
    pub fn of<'a>(runs: impl IntoIterator<Item = &'a Numbers>) -> Tally {
        let mut t = Tally::default();
        let (mut gaps, mut gaps_up, mut rejoins) = (Vec::new(), Vec::new(), Vec::new());
        for n in runs {
            t.runs += 1;
            t.acknowledged += n.acknowledged;
            t.lost_sync += n.lost_sync;
            t.lost_async += n.lost_async;
            t.lost_unexplained += n.lease_window.outside;
            t.two_writer_moments += n.two_writer_moments;
            t.runs_not_rejoined += usize::from(!n.never_rejoined.is_empty());
            gaps.push(n.write_gap_ms);
            gaps_up.push(n.gap_majority_up_ms);
            rejoins.extend(n.rejoin_ms);
        }
        t.write_gap_max_ms = gaps.iter().max().copied();
        t.gap_majority_up_max_ms = gaps_up.iter().max().copied();
        t.write_gap_median_ms = median(&mut gaps);
        t.gap_majority_up_median_ms = median(&mut gaps_up);
        t.rejoin_median_ms = median(&mut rejoins);
        t
    }

    /// Whether these runs met the bar: never two writers, every node rejoined, and —
    /// with synchronous replication — nothing acknowledged lost at all, or — without —
    /// every loss inside a lease window.
    pub fn safe(&self, synchronous: bool) -> bool {
        let losses_allowed = match synchronous {
            true => self.lost_sync + self.lost_async == 0,
            false => self.lost_sync == 0 && self.lost_unexplained == 0,
        };
        self.two_writer_moments == 0 && self.runs_not_rejoined == 0 && losses_allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        static ZERO: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        *ZERO
    }

    fn ms(n: u64) -> Instant {
        t0() + Duration::from_millis(n)
    }

    fn broken(node: &str, voter: bool, candidate: bool, from: u64, to: Option<u64>) -> Broken {
        Broken {
            node: node.into(),
            voter,
            candidate,
            killed: false,
            from: ms(from),
            to: to.map(ms),
        }
    }

    fn check_unavailable(broken: &[Broken], expected: &[(u64, u64)]) {
        let found: Vec<(u64, u64)> = unavailable(broken, 4, 3, ms(10_000))
            .iter()
            .map(|(a, b)| {
                (
                    a.duration_since(t0()).as_millis() as u64,
                    b.duration_since(t0()).as_millis() as u64,
                )
            })
            .collect();
        assert_eq!(found, expected, "{broken:?}");
    }

    /// Three data nodes and a witness: four voters, a majority is three.
    #[test]
    fn a_majority_is_lost_only_with_two_voters_down() {
        check_unavailable(&[], &[]);
        check_unavailable(&[broken("pg1", true, true, 100, Some(900))], &[]);
        // Witness and primary dead at once: no majority until the first is back.
        check_unavailable(
            &[
                broken("witness", true, false, 100, Some(3_000)),
                broken("pg1", true, true, 150, Some(8_000)),
            ],
            &[(150, 3_000)],
        );
        // Never repaired: down until the end.
        check_unavailable(
            &[
                broken("pg1", true, true, 100, None),
                broken("pg2", true, true, 5_000, None),
            ],
            &[(5_000, 10_000)],
        );
        // A full disk costs a candidate, not a vote.
        check_unavailable(&[broken("pg1", false, true, 100, Some(900))], &[]);
        // The same node twice counts once.
        check_unavailable(
            &[
                broken("pg1", true, true, 100, Some(900)),
                broken("pg1", true, true, 200, Some(800)),
            ],
            &[],
        );
        // A zero-length fault (a postmaster crash) breaks nothing.
        check_unavailable(
            &[
                broken("pg1", true, true, 100, Some(100)),
                broken("pg2", true, true, 100, Some(500)),
            ],
            &[],
        );
    }

    #[test]
    fn no_candidate_left_is_unavailable_too() {
        let all_data = [
            broken("pg1", false, true, 0, Some(2_000)),
            broken("pg2", false, true, 500, Some(2_500)),
            broken("pg3", false, true, 1_000, Some(1_500)),
        ];
        check_unavailable(&all_data, &[(1_000, 1_500)]);
    }

    fn check_gap(acks: &[u64], from: u64, to: u64, down: &[(u64, u64)], expected_ms: u64) {
        let acks: Vec<Instant> = acks.iter().map(|a| ms(*a)).collect();
        let down: Vec<(Instant, Instant)> = down.iter().map(|(a, b)| (ms(*a), ms(*b))).collect();
        assert_eq!(
            longest_gap_while_up(&acks, ms(from), ms(to), &down),
            Duration::from_millis(expected_ms),
            "acks {:?} down {down:?}",
            acks.len()
        );
    }

    #[test]
    fn the_gap_counts_only_time_with_a_majority_up() {
        // A 5 s gap after the fault, nothing down: all of it.
        check_gap(&[0, 10, 5_010, 5_020], 15, 5_020, &[], 5_000);
        // No majority for 3 s of it: the longest piece left is 1.5 s.
        check_gap(&[0, 10, 5_010, 5_020], 15, 5_020, &[(1_000, 4_000)], 1_010);
        // The gap started before the fault: counted from the last write before it.
        check_gap(&[0, 3_000], 2_000, 3_000, &[], 3_000);
        // Writes never resumed: the gap runs to the end of the run.
        check_gap(&[0, 10], 15, 9_010, &[], 9_000);
        // Down over the whole gap: nothing counted but the writes' own pace.
        check_gap(&[0, 10, 5_010, 5_020], 15, 5_020, &[(0, 6_000)], 0);
        check_gap(&[], 0, 0, &[], 0);
    }

    #[test]
    fn losses_are_asynchronous_only_when_the_status_says_so_on_both_sides() {
        let samples = [
            (ms(0), true),
            (ms(100), false),
            (ms(200), false),
            (ms(300), true),
        ];
        let lost = [ms(50), ms(150), ms(250), ms(400)];
        let counts = |(s, a): (Vec<Instant>, Vec<Instant>)| (s.len(), a.len());
        let (sync, asynchronous) = split_losses(&lost, &samples, true);
        assert_eq!(asynchronous, [ms(150)]);
        assert_eq!(sync.len(), 3);
        assert_eq!(counts(split_losses(&lost, &samples, false)), (0, 4));
        assert_eq!(counts(split_losses(&lost, &[], true)), (4, 0));
    }

    fn writable(node: &str, from: u64, to: u64) -> Writable {
        Writable {
            node: node.into(),
            from: ms(from),
            to: ms(to),
        }
    }

    #[test]
    fn samples_join_into_stretches_per_server() {
        let samples = [
            writable("pg2", 5_000, 5_005),
            writable("pg1", 0, 5),
            writable("pg1", 10, 15),
            writable("pg1", 3_000, 3_005),
            writable("pg2", 5_010, 5_015),
        ];
        let found: Vec<(String, u64, u64)> = stretches(&samples)
            .into_iter()
            .map(|s| {
                let at = |i: Instant| i.duration_since(t0()).as_millis() as u64;
                (s.node, at(s.from), at(s.to))
            })
            .collect();
        assert_eq!(
            found,
            [
                ("pg1".into(), 0, 15),
                ("pg1".into(), 3_000, 3_005),
                ("pg2".into(), 5_000, 5_015)
            ]
        );
    }

    #[test]
    fn losses_inside_the_lease_window_are_explained() {
        let window = Duration::from_millis(2_500);
        let acks: Vec<Instant> = (0..60).map(|i| ms(i * 100)).collect();
        // pg1 took writes until 4 s, pg2 from 5 s: pg1's window is 1.3 s to 4 s (and the
        // watch's slack after it: 29 writes).
        let seen = stretches(&[writable("pg1", 0, 4_000), writable("pg2", 5_000, 6_000)]);
        let found = lease_window(&[ms(1_300), ms(3_900)], &acks, &seen, window, &[]);
        assert_eq!(
            found,
            LeaseWindow {
                inside: 2,
                outside: 0,
                acknowledged_inside: 29,
                longest_before_stop_ms: Some(2_700),
            }
        );
        // Earlier than the window, or when no server was seen writable: unexplained.
        let found = lease_window(&[ms(1_200), ms(4_500)], &acks, &seen, window, &[]);
        assert_eq!((found.inside, found.outside), (0, 2));
        // A new primary that stopped within the window of its start may lose all it took
        // (1.9 s to 2.5 s with the slack: 7 writes).
        let seen = stretches(&[writable("pg3", 2_000, 2_400)]);
        let found = lease_window(&[ms(2_000), ms(2_400)], &acks, &seen, window, &[]);
        assert_eq!((found.inside, found.acknowledged_inside), (2, 7));
        // Killed (not fenced) at 4.1 s: only replication's lag is explained, 3.8 s to 4 s.
        let seen = stretches(&[writable("pg1", 0, 4_000)]);
        let kills = [("pg1", ms(4_100))];
        let found = lease_window(&[ms(3_500), ms(3_900)], &acks, &seen, window, &kills);
        assert_eq!((found.inside, found.outside), (1, 1));
        assert_eq!(found.acknowledged_inside, 4);
        // Another node's kill, or one long after the stretch ended, changes nothing.
        let other = [("pg2", ms(4_100)), ("pg1", ms(9_000))];
        let found = lease_window(&[ms(3_500), ms(3_900)], &acks, &seen, window, &other);
        assert_eq!((found.inside, found.outside), (2, 0));
    }

    #[test]
    fn a_tally_sums_and_takes_medians() {
        let run = |lost_async, outside, gap, rejoin: Option<u64>, never: &[&str]| Numbers {
            acknowledged: 100,
            lost_async,
            lease_window: LeaseWindow {
                outside,
                ..Default::default()
            },
            write_gap_ms: gap,
            gap_majority_up_ms: gap / 2,
            rejoin_ms: rejoin,
            never_rejoined: never.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        let runs = [
            run(5, 0, 4_000, Some(3_000), &[]),
            run(0, 0, 6_000, Some(5_000), &[]),
            run(2, 1, 5_000, None, &["pg2"]),
        ];
        let t = Tally::of(&runs);
        assert_eq!(
            (
                t.runs,
                t.acknowledged,
                t.lost_async,
                t.lost_unexplained,
                t.runs_not_rejoined
            ),
            (3, 300, 7, 1, 1)
        );
        assert_eq!(
            (t.write_gap_median_ms, t.write_gap_max_ms),
            (Some(5_000), Some(6_000))
        );
        assert_eq!(t.gap_majority_up_median_ms, Some(2_500));
        assert_eq!(t.rejoin_median_ms, Some(4_000));
        assert!(!t.safe(false));
        // Explained asynchronous losses pass without synchronous replication only.
        assert!(Tally::of(&runs[..2]).safe(false));
        assert!(!Tally::of(&runs[..2]).safe(true));
        assert!(Tally::of(&runs[1..2]).safe(true));
        assert_eq!(Tally::of(&[]).write_gap_median_ms, None);
    }
}
