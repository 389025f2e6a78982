//! `pgfm-sim`: run simulated clusters, one seed with its trace or many with a progress
//! line and a summary. A failing seed prints the command that replays it.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Mutex;
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
    /// `[watchdog] mode` of the data nodes.
    #[arg(long, default_value = "required", value_parser = ["required", "automatic", "off"])]
    watchdog: String,
    /// Print the run's trace (agent logs and the simulator's lines).
    #[arg(long)]
    trace: bool,
    /// Threads running seeds (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// A `[timing]` setting of every agent, KEY=VALUE as in the config file (quotes
    /// optional); repeatable. Example: --timing lease=2400ms --timing safety_margin=800ms
    #[arg(long = "timing", value_parser = timing_setting)]
    timing: Vec<(String, String)>,
    /// How far each host's clock rate may be from 1 (0.03: ±3 %).
    #[arg(long, default_value_t = 0.03, value_parser = drift_bound)]
    drift: f64,
    /// Every data directory starts empty: the cluster forms by initdb on the node the
    /// agents choose, the others clone it.
    #[arg(long)]
    from_empty: bool,
}

/// A clock-rate bound from 0 up to (not including) 1.
fn drift_bound(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(d) if (0.0..1.0).contains(&d) => Ok(d),
        _ => Err(format!(
            "a fraction from 0 up to 1, for example 0.03 for ±3 % (got {text:?})"
        )),
    }
}

/// `lease=2400ms` as the TOML pair `("lease", "\"2400ms\"")`: a duration is a string there.
fn timing_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .filter(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty())
        .ok_or_else(|| format!("write it as KEY=VALUE, for example lease=2400ms (got {text:?})"))?;
    let value = value.trim().trim_matches('"');
    Ok((key.trim().to_string(), format!("\"{value}\"")))
}

fn options(args: &Args, seed: u64) -> Options {
    let mut options = Options::new(seed);
    options.faults = args.faults.clone();
    options.fault_count = args.fault_count;
    options.data_nodes = args.data_nodes;
    options.synchronous = args.synchronous.clone();
    options.watchdog = args.watchdog.clone();
    options.timing = args.timing.clone();
    options.drift = args.drift;
    options.from_empty = args.from_empty;
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
        println!(
            "(ran {:.1} s of simulated time in {:.2} s)",
            report.ran_ms as f64 / 1000.0,
            started.elapsed().as_secs_f64()
        );
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
    let end = args.seed + args.seeds;
    let started = Instant::now();
    println!(
        "pgfm-sim: seeds {}..{} ({} runs), faults {}, {} data nodes + witness, synchronous {}, watchdog {}, {jobs} threads",
        args.seed,
        end - 1,
        args.seeds,
        args.faults,
        args.data_nodes,
        args.synchronous,
        args.watchdog,
    );
    // done, failing, faults, promotions, async commits lost, simulated ms
    let tally: Mutex<[u64; 6]> = Mutex::default();
    let seen = |report: &Report| {
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        t[0] += 1;
        t[1] += u64::from(!report.violations.is_empty());
        t[2] += report.faults.len() as u64;
        t[3] += report.promotions;
        t[4] += report.lost_async;
        t[5] += report.ran_ms;
        if !report.violations.is_empty() {
            println!(
                "\nseed {} broke an invariant: {}",
                report.seed, report.violations[0]
            );
        }
        // A progress line about once a second of work.
        if t[0].is_multiple_of(10) || t[0] == args.seeds {
            print!(
                "\r{}/{} seeds, {} failing, {:.0} s",
                t[0],
                args.seeds,
                t[1],
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stdout().flush();
        }
    };
    let failed = pgfm_sim::search::search(args.seed..end, jobs, &|seed| options(args, seed), &seen);
    let t = *tally.lock().unwrap_or_else(|p| p.into_inner());
    println!();
    println!(
        "summary: {} seeds in {:.0} s ({:.1} simulated hours), {} faults, {} promotions, {} async commits not on the final primary; {} seed(s) broke an invariant",
        args.seeds,
        started.elapsed().as_secs_f64(),
        t[5] as f64 / 3_600_000.0,
        t[2],
        t[3],
        t[4],
        failed.len(),
    );
    for (report, options) in &failed {
        print_report(report, options);
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
