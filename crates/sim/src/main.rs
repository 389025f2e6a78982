//! `pgfm-sim`: run simulated clusters, one seed with its trace or many with a progress
//! line and a summary. A failing seed prints the command that replays it.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;

use pgfm_sim::{FaultSet, Options, Report};

#[derive(Debug, Parser)]
#[command(name = "pgfm-sim", about = "Deterministic simulation of pgfm clusters")]
struct Args {
    /// The first seed (the only one without --seeds).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many seeds to run, from --seed on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Fault kinds to draw from: all, or a comma-separated list (host-crash, agent-crash,
    /// postmaster-crash, freeze, agent-freeze, partition, partition-out, partition-in,
    /// lossy).
    #[arg(long, default_value = "all")]
    faults: FaultSet,
    /// Faults per run (default: one to three, drawn from the seed).
    #[arg(long)]
    fault_count: Option<usize>,
    #[arg(long, default_value_t = 3)]
    data_nodes: usize,
    /// off, on or quorum.
    #[arg(long, default_value = "off", value_parser = ["off", "on", "quorum"])]
    synchronous: String,
    /// Print the run's trace (agent logs and the simulator's lines).
    #[arg(long)]
    trace: bool,
    /// Threads running seeds (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
}

fn options(args: &Args, seed: u64) -> Options {
    let mut options = Options::new(seed);
    options.faults = args.faults.clone();
    options.fault_count = args.fault_count;
    options.data_nodes = args.data_nodes;
    options.synchronous = args.synchronous.clone();
    options
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.seeds <= 1 {
        let mut options = options(&args, args.seed);
        options.trace = args.trace;
        let started = Instant::now();
        let report = pgfm_sim::run(options.clone());
        for line in &report.trace {
            println!("{line}");
        }
        print_report(&report, &options);
        println!("(ran {:.1} s of simulated time in {:.2} s)", report.ran_ms as f64 / 1000.0, started.elapsed().as_secs_f64());
        return if report.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    search(&args)
}

fn print_report(report: &Report, options: &Options) {
    println!(
        "seed {}: {} fault(s) [{}], {} promotion(s), commits {} sync / {} async ({} async not on the final primary), {} messages ({} lost)",
        report.seed,
        report.faults.len(),
        report.faults.join("; "),
        report.promotions,
        report.commits_sync,
        report.commits_async,
        report.lost_async,
        report.messages,
        report.messages_lost,
    );
    for v in &report.violations {
        println!("VIOLATION {v}");
    }
    if !report.violations.is_empty() {
        println!("replay: {}", options.replay_command());
    }
}

/// Many seeds on `jobs` threads: a progress line, then a summary.
fn search(args: &Args) -> ExitCode {
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = Arc::new(AtomicU64::new(args.seed));
    let end = args.seed + args.seeds;
    let done = Arc::new(AtomicU64::new(0));
    let failed: Arc<Mutex<Vec<(Report, Options)>>> = Arc::default();
    let totals: Arc<Mutex<[u64; 4]>> = Arc::default();
    let started = Instant::now();
    println!(
        "pgfm-sim: seeds {}..{} ({} runs), faults {}, {} data nodes + witness, synchronous {}, {jobs} threads",
        args.seed,
        end - 1,
        args.seeds,
        args.faults,
        args.data_nodes,
        args.synchronous
    );
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (next, done, failed, totals) = (&next, &done, &failed, &totals);
            scope.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    return;
                }
                let options = options(args, seed);
                let report = pgfm_sim::run(options.clone());
                {
                    let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                    t[0] += report.promotions;
                    t[1] += report.faults.len() as u64;
                    t[2] += report.lost_async;
                    t[3] += report.ran_ms;
                }
                if !report.violations.is_empty() {
                    println!();
                    print_report(&report, &options);
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((report, options));
                }
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                let bad = failed.lock().map(|f| f.len()).unwrap_or(0);
                print!(
                    "\r{n}/{} seeds, {bad} failing, {:.0} s",
                    args.seeds,
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stdout().flush();
            });
        }
    });
    let failed = failed.lock().map(|f| f.len()).unwrap_or(0);
    let t = *totals.lock().unwrap_or_else(|p| p.into_inner());
    println!();
    println!(
        "summary: {} seeds in {:.0} s ({:.0} simulated hours), {} faults, {} promotions, {} async commits not on the final primary; {failed} seed(s) broke an invariant",
        args.seeds,
        started.elapsed().as_secs_f64(),
        t[3] as f64 / 3_600_000.0,
        t[1],
        t[0],
        t[2],
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
