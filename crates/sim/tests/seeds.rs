//! The simulation's share of every test run: a thousand seeded runs of a cluster of three
//! data nodes and a witness, each under one to three faults of every kind, asynchronous,
//! synchronous and quorum replication in turn, checked after every simulated millisecond.
//! More seeds: `cargo run --release -p pgfm-sim -- --seeds 100000`.

use pgfm_sim::{search, Options};

const SEEDS: u64 = 1_000;

fn options_for(seed: u64) -> Options {
    let mut options = Options::new(seed);
    options.synchronous = ["off", "on", "quorum"][(seed % 3) as usize].to_string();
    options
}

/// Every invariant holds in every one of the thousand runs; a failing seed prints its
/// violations, the end of its trace and the command that replays it.
#[test]
fn a_thousand_seeded_runs_keep_every_invariant() {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let failed = search::search(1..SEEDS + 1, jobs, &options_for, &|_| {});
    let explained: Vec<String> = failed
        .iter()
        .take(3)
        .map(|(_, options)| search::explain(options, 120))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {SEEDS} seeds broke an invariant (seeds {:?}); the first:\n{}",
        failed.len(),
        failed.iter().map(|(r, _)| r.seed).collect::<Vec<_>>(),
        explained.join("\n")
    );
}

/// Clusters formed from empty data directories (one node chosen for initdb, the others
/// cloning it), struck by faults while they form: a hundred seeds, all three replication
/// modes. More: `cargo run --release -p pgfm-sim -- --from-empty --seeds 10000`.
#[test]
fn clusters_formed_from_empty_directories_keep_every_invariant() {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let from_empty = |seed| {
        let mut options = options_for(seed);
        options.from_empty = true;
        options
    };
    let failed = search::search(1..101, jobs, &from_empty, &|_| {});
    let seeds: Vec<u64> = failed.iter().map(|(r, _)| r.seed).collect();
    assert!(
        failed.is_empty(),
        "seeds {seeds:?} broke an invariant; the first:\n{}",
        failed
            .first()
            .map(|(_, o)| search::explain(o, 120))
            .unwrap_or_default()
    );
}

/// The same seed, the same run: two runs of one seed write the same trace, line for line.
#[test]
fn a_seed_replays_byte_for_byte() {
    let mut options = options_for(7);
    options.trace = true;
    let first = pgfm_sim::run(options.clone());
    let second = pgfm_sim::run(options);
    assert!(
        first.trace.len() > 100,
        "a trace of {} lines",
        first.trace.len()
    );
    assert_eq!(first.trace, second.trace);
}
