//! Many seeds at once: each thread takes the next seed, runs it and hands its report to
//! `seen` (a progress line, a tally); the reports that broke an invariant come back.
//! Used by `pgfm-sim --seeds N` and by the seeds test.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::world::{run, Options, Report};

/// Run every seed of `seeds` on `jobs` threads with the options `options_for` makes.
pub fn search(
    seeds: Range<u64>,
    jobs: usize,
    options_for: &(dyn Fn(u64) -> Options + Sync),
    seen: &(dyn Fn(&Report) + Sync),
) -> Vec<(Report, Options)> {
    let next = AtomicU64::new(seeds.start);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    return;
                }
                let options = options_for(seed);
                let report = run(options.clone());
                seen(&report);
                if !report.violations.is_empty() {
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((report, options));
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    failed.sort_by_key(|(r, _)| r.seed);
    failed
}

/// What to print about a failing run: its violations, the replay command and the end of
/// its trace (the run again, with the trace on).
pub fn explain(options: &Options, trace_lines: usize) -> String {
    let mut traced = options.clone();
    traced.trace = true;
    let report = run(traced);
    let mut text = String::new();
    let skip = report.trace.len().saturating_sub(trace_lines);
    for line in &report.trace[skip..] {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&format!("faults: {}\n", report.faults.join("; ")));
    for v in &report.violations {
        text.push_str(&format!("VIOLATION {v}\n"));
    }
    text.push_str(&format!("replay: {}\n", options.replay_command()));
    text
}
