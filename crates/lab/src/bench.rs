//! `pgfm bench failover`: a neutral writer against a lab while faults are injected.
//!
//! The writer commits one INSERT of a sequential id per transaction every 10 ms through a
//! multi-host connection string with `target_session_attrs=read-write`, reconnecting at
//! once on error. Per run we measure the write downtime (the longest gap between two
//! acknowledged writes), acknowledged writes missing afterwards, moments when two nodes
//! accepted writes, and the old primary's rejoin time.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;

use pgfm_api::{ClusterStatus, NodeKindStatus};

use crate::drive::LabDriver;
use crate::writers::{longest_gap, overlaps, WriteWatch, Writer, BENCH_TABLE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The primary's agent and postmaster are SIGKILLed (its host dies).
    HostDeath,
    /// Only the primary's postmaster is SIGKILLed (its agent lives).
    PostmasterCrash,
    /// The primary is cut off from every other node (--netns); the client still reaches
    /// it. Healed after the failover.
    PrimaryIsolation,
}

#[derive(Debug, Args)]
pub struct FailoverBench {
    /// Runs per scenario.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Scenarios to run (default: both).
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Where to build the lab (removed at the end).
    #[arg(long, default_value = "/tmp/pgfm-bench")]
    dir: std::path::PathBuf,
    /// One JSON line per run instead of the summary table.
    #[arg(long)]
    json: bool,
    /// Every node its own host (a --netns lab, root only); the writer connects through the
    /// virtual IP only. Default scenarios then: host-death and primary-isolation.
    #[arg(long)]
    netns: bool,
    /// Synchronous replication in the lab (`[replication] synchronous`; `--synchronous`
    /// alone: on): then no acknowledged write may be lost in any scenario.
    #[arg(long, value_name = "off|on|quorum", num_args = 0..=1, default_missing_value = "on",
          value_parser = ["off", "on", "quorum"])]
    synchronous: Option<String>,
    /// Data nodes in the lab (a quorum needs 3: two standbys).
    #[arg(long, default_value_t = 2)]
    data_nodes: usize,
    /// One lab for every run, each run's fault drawn from the scenarios by a generator
    /// seeded with this (the same seed, the same sequence); --runs is then the total.
    #[arg(long)]
    seed: Option<u64>,
    /// Mutual TLS between the agents (`[tls] mode`), to measure what it costs.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    tls: String,
}

impl FailoverBench {
    fn synchronous(&self) -> bool {
        self.synchronous.as_deref().is_some_and(|m| m != "off")
    }
}

/// The faults of a seeded run: `runs` draws from `scenarios` (splitmix64), so that a
/// failing sequence can be replayed.
pub fn seeded_sequence(scenarios: &[Scenario], runs: usize, seed: u64) -> Vec<Scenario> {
    let mut rng = crate::seeded::Rng::new(seed);
    (0..runs).filter_map(|_| rng.pick(scenarios)).collect()
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    scenario: Scenario,
    run: usize,
    old_primary: String,
    new_primary: String,
    generation: u64,
    downtime_ms: u64,
    /// From the fault to the new primary's first writable sample (the split-brain watch
    /// asks each node directly, not through the VIP): the failover without the client's own
    /// timeouts and reconnection.
    promoted_ms: Option<u64>,
    acknowledged: usize,
    lost: usize,
    two_writer_moments: usize,
    rejoin_ms: Option<u64>,
}

/// The neutral writer and the split-brain watch (every data node, every 10 ms), started
/// against the lab.
fn start_load(driver: &LabDriver, first_id: i64) -> anyhow::Result<(Writer, WriteWatch)> {
    let config = driver.lab()?.writer_config("pgfm-bench-writer")?;
    let targets = driver
        .data_nodes()?
        .into_iter()
        .map(|(name, _)| Ok((name.clone(), driver.target(&name)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((
        Writer::start(config, first_id),
        WriteWatch::start(targets, Duration::from_millis(10)),
    ))
}

pub(crate) async fn create_bench_table(driver: &LabDriver, node: &str) -> anyhow::Result<()> {
    let client = pgfm_postgres::probe::connect(&driver.target(node)?)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {node}: {e}"))?;
    client
        .simple_query(BENCH_TABLE)
        .await
        .context("creating the bench table")?;
    Ok(())
}

/// Which of `ids` (acknowledged writes) are on `node`.
pub(crate) async fn kept_ids(
    driver: &LabDriver,
    node: &str,
    ids: &[i64],
) -> anyhow::Result<std::collections::BTreeSet<i64>> {
    let client = pgfm_postgres::probe::connect(&driver.target(node)?)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {node}: {e}"))?;
    let rows = client
        .query("SELECT id FROM bench WHERE id = ANY($1)", &[&ids])
        .await
        .context("reading the acknowledged rows back")?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

fn node_kind(status: &ClusterStatus, name: &str) -> Option<NodeKindStatus> {
    status.nodes.iter().find(|n| n.name == name).map(|n| n.kind)
}

pub(crate) fn healthy(status: &ClusterStatus) -> Option<ClusterStatus> {
    let standbys_in_sync = status
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKindStatus::Standby)
        .all(|n| n.in_sync == Some(true));
    // With synchronous replication, a run starts only once the primary waits for its
    // standby again (right after a rejoin it is still asynchronous for a moment).
    (status.healthy() && standbys_in_sync && status.sync_settled()).then(|| status.clone())
}

/// One fault against the lab: wait for a healthy cluster, start the writer, inject the
/// fault, wait until writes flow steadily again, bring the old primary back, and count
/// what was lost. Returns the first id the next run may use.
async fn one_run(
    driver: &LabDriver,
    scenario: Scenario,
    run: usize,
    first_id: i64,
) -> anyhow::Result<(RunResult, i64)> {
    let settle = Duration::from_secs(90);
    let before = driver.wait("a healthy cluster", settle, healthy).await?;
    let old = before.primary.clone().context("no primary")?;
    let generation = before.generation;

    let (writer, watch) = start_load(driver, first_id)?;
    warm_up(&writer).await?;
    let fault = Instant::now();
    match scenario {
        Scenario::PrimaryIsolation => driver.partition(&old)?,
        _ => driver.kill(&old, scenario == Scenario::PostmasterCrash)?,
    }
    wait_until_steady(driver, &writer, scenario, fault, generation, &old, settle).await?;
    let acks = writer.finish();

    let after = driver
        .wait("a primary after the fault", settle, |s| {
            s.primary.as_ref().map(|_| s.clone())
        })
        .await?;
    let new = after.primary.clone().context("no primary")?;
    let rejoin_ms = rejoin(driver, scenario, &old, settle).await?;
    let samples = watch.finish();
    let two_writers = overlaps(&samples).len();
    let promoted_ms = samples
        .iter()
        .filter(|w| w.node == new && w.from > fault)
        .map(|w| w.from.duration_since(fault).as_millis() as u64)
        .min();
    let (acknowledged, lost, downtime) = count_losses(driver, &new, &acks, fault).await?;
    // The writer skips ids whose write was not acknowledged (they may exist anyway): the
    // next run starts well clear of every id this one may have used.
    let next_id = first_id + 10_000_000;
    Ok((
        RunResult {
            scenario,
            run,
            old_primary: old,
            new_primary: new,
            generation: after.generation.max(generation),
            downtime_ms: downtime.as_millis() as u64,
            promoted_ms,
            acknowledged,
            lost,
            two_writer_moments: two_writers,
            rejoin_ms,
        },
        next_id,
    ))
}

/// Warm up: the writer must be writing before the fault.
pub(crate) async fn warm_up(writer: &Writer) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.count() < 50 {
        if Instant::now() > deadline {
            bail!("the writer could not write before the fault");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Done when a new primary leads a new generation (after a host death or an isolation)
/// and writes have then flowed without a gap for a second (a backend that outlived its
/// postmaster may acknowledge one more write right after the fault; a cut-off primary
/// acknowledges writes until it fences itself). `generation` and `old` are the
/// generation and the primary before the fault.
async fn wait_until_steady(
    driver: &LabDriver,
    writer: &Writer,
    scenario: Scenario,
    fault: Instant,
    generation: u64,
    old: &str,
    settle: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + settle;
    let mut promoted_at = (scenario == Scenario::PostmasterCrash).then_some(fault);
    loop {
        let steady = writer
            .acks
            .lock()
            .map(|a| steady_since(&a, fault, promoted_at))
            .unwrap_or(false);
        if promoted_at.is_none()
            && driver.status().await.is_ok_and(|s| {
                s.generation > generation && s.primary.as_deref().is_some_and(|p| p != old)
            })
        {
            promoted_at = Some(Instant::now());
        }
        if steady {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("writes did not resume steadily within {settle:?} of the fault");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `acks` show writes a second past the promotion and no gap over 200 ms in the
/// last second.
fn steady_since(acks: &[(i64, Instant)], fault: Instant, promoted_at: Option<Instant>) -> bool {
    let recent: Vec<Instant> = acks
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at > fault)
        .collect();
    let gap_end = recent
        .windows(2)
        .rev()
        .find(|w| w[1].duration_since(w[0]) > Duration::from_millis(200))
        .map(|w| w[1])
        .or(recent.first().copied());
    let since_promotion = promoted_at.is_some_and(|p| {
        recent
            .last()
            .is_some_and(|last| *last >= p + Duration::from_secs(1))
    });
    since_promotion && gap_end.is_some_and(|end| end.elapsed() >= Duration::from_secs(1))
}

/// After a host death or an isolation, bring the old primary back (start it, or heal the
/// partition) and time until it streams again.
async fn rejoin(
    driver: &LabDriver,
    scenario: Scenario,
    old: &str,
    settle: Duration,
) -> anyhow::Result<Option<u64>> {
    if !matches!(scenario, Scenario::HostDeath | Scenario::PrimaryIsolation) {
        return Ok(None);
    }
    let started = Instant::now();
    if scenario == Scenario::HostDeath {
        driver.start(old)?;
    } else {
        driver.heal()?;
    }
    driver
        .wait("the old primary to stream again", settle, |s| {
            let n = s.nodes.iter().find(|n| n.name == old)?;
            (node_kind(s, old) == Some(NodeKindStatus::Standby) && n.in_sync == Some(true))
                .then_some(())
        })
        .await?;
    Ok(Some(started.elapsed().as_millis() as u64))
}

/// The acknowledged writes, how many of them `new` lacks, and the write downtime.
async fn count_losses(
    driver: &LabDriver,
    new: &str,
    acks: &[(i64, Instant)],
    fault: Instant,
) -> anyhow::Result<(usize, usize, Duration)> {
    let ids: Vec<i64> = acks.iter().map(|(id, _)| *id).collect();
    let kept = kept_ids(driver, new, &ids).await?;
    let lost = ids.len() - kept.len();
    // Downtime counts only writes that survived: a write acknowledged and then lost is no
    // write at all.
    let surviving: Vec<(i64, Instant)> = acks
        .iter()
        .filter(|(id, _)| kept.contains(id))
        .copied()
        .collect();
    let downtime = longest_gap(&surviving, fault);
    Ok((ids.len(), lost, downtime))
}

pub(crate) fn median(values: &mut [u64]) -> Option<u64> {
    values.sort_unstable();
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2),
    }
}

pub fn failover(args: FailoverBench) -> anyhow::Result<std::process::ExitCode> {
    let scenarios = chosen_scenarios(&args)?;
    let rt = crate::runtime()?;
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    if !args.json {
        print_failover_header(&args);
    }
    if args.data_nodes < 2 {
        bail!(
            "--data-nodes {} leaves no standby to fail over to (at least 2)",
            args.data_nodes
        );
    }
    // One lab per scenario, or one lab for a seeded sequence of them.
    let labs: Vec<Vec<Scenario>> = match args.seed {
        Some(seed) => vec![seeded_sequence(&scenarios, args.runs, seed)],
        None => scenarios.iter().map(|s| vec![*s; args.runs]).collect(),
    };
    let mut all = Vec::new();
    for sequence in labs {
        all.extend(run_lab(&rt, &exe, &args, sequence)?);
    }
    if !args.json {
        print_failover_table(&all);
    }
    // A primary cut off from its standbys keeps acknowledging commits until it fences
    // itself; with asynchronous replication those are lost by design (synchronous
    // replication is what prevents it). Two writers are never acceptable.
    let async_loss =
        |r: &RunResult| r.scenario == Scenario::PrimaryIsolation && !args.synchronous();
    if !args.json && all.iter().any(|r| async_loss(r) && r.lost > 0) {
        println!(
            "\nprimary-isolation: the writes lost were acknowledged by the cut-off primary \
             before it fenced itself, and never reached a standby (asynchronous replication)."
        );
    }
    let unsafe_runs = all
        .iter()
        .any(|r| (r.lost > 0 && !async_loss(r)) || r.two_writer_moments > 0);
    Ok(if unsafe_runs {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// The scenarios asked for, or the defaults for this kind of lab.
fn chosen_scenarios(args: &FailoverBench) -> anyhow::Result<Vec<Scenario>> {
    let scenarios = match (args.scenario.is_empty(), args.netns) {
        (true, false) => vec![Scenario::HostDeath, Scenario::PostmasterCrash],
        (true, true) => vec![Scenario::HostDeath, Scenario::PrimaryIsolation],
        (false, _) => args.scenario.clone(),
    };
    if scenarios.contains(&Scenario::PrimaryIsolation) && !args.netns {
        bail!("--scenario primary-isolation needs --netns (a partition needs separate hosts)");
    }
    Ok(scenarios)
}

/// What the bench measures, on what machine and with which settings.
fn print_failover_header(args: &FailoverBench) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "pgfm bench failover: {}; lab of {} data nodes + witness on this machine ({cores} cores){}{}, TLS {}, default settings ({}, probe 1 s); writer: one INSERT per transaction every 10 ms, {}, reconnecting at once",
        match args.seed {
            Some(seed) => format!("{} run(s) in all, faults drawn with seed {seed}", args.runs),
            None => format!("{} run(s) per scenario", args.runs),
        },
        args.data_nodes,
        if args.netns { ", each node in its own network namespace" } else { "" },
        match args.synchronous.as_deref() {
            Some(mode) if mode != "off" => format!(", synchronous replication {mode}"),
            _ => String::new(),
        },
        args.tls,
        pgfm_core::lease::LeaseSettings::default().describe(),
        if args.netns {
            "through the virtual IP only"
        } else {
            "multi-host, target_session_attrs=read-write"
        }
    );
}

/// Build a lab, run `sequence` of faults against it one after the other, and take it
/// down (or keep it for inspection when a run fails).
fn run_lab(
    rt: &tokio::runtime::Runtime,
    exe: &std::path::Path,
    args: &FailoverBench,
    sequence: Vec<Scenario>,
) -> anyhow::Result<Vec<RunResult>> {
    let settings: Vec<String> = args
        .synchronous
        .iter()
        .map(|mode| format!("replication.synchronous=\"{mode}\""))
        .chain((args.tls == "off").then(|| "tls.mode=\"off\"".to_string()))
        .collect();
    let (driver, _) = LabDriver::up(exe, &args.dir, args.data_nodes, &settings, args.netns)?;
    let result = rt.block_on(async {
        create_bench_table(&driver, "pg1").await?;
        let mut next = 1;
        let mut results = Vec::new();
        for (run, scenario) in (1..).zip(sequence) {
            let (result, after) = one_run(&driver, scenario, run, next).await?;
            next = after;
            print_run(run, &result, args.json)?;
            results.push(result);
        }
        anyhow::Ok(results)
    });
    let results = match result {
        Ok(results) => results,
        Err(e) => return Err(driver.kept_for_inspection(e)),
    };
    driver.down()?;
    Ok(results)
}

/// One run's line: JSON, or text.
fn print_run(run: usize, result: &RunResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        println!(
            "  {:?} run {run}: {} -> {} (generation {}), downtime {} ms, writable after {}, {} acknowledged, {} lost, {} two-writer moments{}",
            result.scenario,
            result.old_primary,
            result.new_primary,
            result.generation,
            result.downtime_ms,
            result
                .promoted_ms
                .map_or_else(|| "n/a".into(), |m| format!("{m} ms")),
            result.acknowledged,
            result.lost,
            result.two_writer_moments,
            result.rejoin_ms.map(|r| format!(", rejoined in {r} ms")).unwrap_or_default()
        );
    }
    Ok(())
}

/// The summary: one line per scenario run, with medians.
fn print_failover_table(all: &[RunResult]) {
    println!();
    println!(
        "scenario          runs  downtime median  max      writable after  lost  two-writer moments  rejoin median"
    );
    for scenario in [
        Scenario::HostDeath,
        Scenario::PostmasterCrash,
        Scenario::PrimaryIsolation,
    ] {
        let runs: Vec<&RunResult> = all.iter().filter(|r| r.scenario == scenario).collect();
        if runs.is_empty() {
            continue;
        }
        let mut downtimes: Vec<u64> = runs.iter().map(|r| r.downtime_ms).collect();
        let mut rejoins: Vec<u64> = runs.iter().filter_map(|r| r.rejoin_ms).collect();
        let mut promoted: Vec<u64> = runs.iter().filter_map(|r| r.promoted_ms).collect();
        println!(
            "{:<17} {:<5} {:<16} {:<8} {:<15} {:<5} {:<19} {}",
            format!("{scenario:?}"),
            runs.len(),
            format!("{} ms", median(&mut downtimes).unwrap_or(0)),
            format!("{} ms", downtimes.iter().max().unwrap_or(&0)),
            median(&mut promoted)
                .map(|m| format!("{m} ms"))
                .unwrap_or_else(|| "n/a".into()),
            runs.iter().map(|r| r.lost).sum::<usize>(),
            runs.iter().map(|r| r.two_writer_moments).sum::<usize>(),
            median(&mut rejoins)
                .map(|m| format!("{m} ms"))
                .unwrap_or_else(|| "n/a".into())
        );
    }
}

#[derive(Debug, Args)]
pub struct SwitchoverBench {
    /// Switchovers, back and forth.
    #[arg(long, default_value = "10")]
    runs: usize,
    /// Where to build the lab (removed at the end).
    #[arg(long, default_value = "/tmp/pgfm-bench")]
    dir: std::path::PathBuf,
    /// One JSON line per run instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Serialize)]
struct SwitchoverRun {
    run: usize,
    from: String,
    to: String,
    generation: u64,
    downtime_ms: u64,
    command_ms: u64,
    old_primary_streaming_at_return: bool,
}

/// `pgfm bench switchover`: N switchovers back and forth under the neutral writer.
pub fn switchover(args: SwitchoverBench) -> anyhow::Result<std::process::ExitCode> {
    let rt = crate::runtime()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if !args.json {
        println!(
            "pgfm bench switchover: {} switchover(s) back and forth; lab of 2 data nodes + witness on this machine ({cores} cores), default settings; writer: one INSERT per transaction every 10 ms, multi-host, target_session_attrs=read-write",
            args.runs
        );
    }
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    let (driver, _) = LabDriver::up(&exe, &args.dir, 2, &[], false)?;
    let config = driver.dir.join("witness").join("pgfm.toml");
    let outcome = rt.block_on(async {
        create_bench_table(&driver, "pg1").await?;
        let (writer, watch) = start_load(&driver, 1)?;
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let result = one_switchover(&driver, &exe, &config, &writer, run).await?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                println!(
                    "  run {run}: {} -> {} (generation {}), write downtime {} ms, command {} ms, old primary streaming at return: {}",
                    result.from, result.to, result.generation, result.downtime_ms, result.command_ms, result.old_primary_streaming_at_return
                );
            }
            runs.push(result);
        }
        let ids: Vec<i64> = writer.finish().iter().map(|(id, _)| *id).collect();
        let two_writers = overlaps(&watch.finish()).len();
        let primary = driver.status().await?.primary.context("no primary at the end")?;
        let lost = ids.len() - kept_ids(&driver, &primary, &ids).await?.len();
        anyhow::Ok((runs, ids.len(), lost, two_writers))
    });
    let (runs, acknowledged, lost, two_writers) = match outcome {
        Ok(found) => found,
        Err(e) => return Err(driver.kept_for_inspection(e)),
    };
    driver.down()?;
    let mut downtimes: Vec<u64> = runs.iter().map(|r| r.downtime_ms).collect();
    let streaming = runs
        .iter()
        .filter(|r| r.old_primary_streaming_at_return)
        .count();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"summary": true, "runs": runs.len(), "median_downtime_ms": median(&mut downtimes.clone()), "max_downtime_ms": downtimes.iter().max(), "acknowledged": acknowledged, "lost": lost, "two_writer_moments": two_writers, "old_primary_streaming_at_return": streaming})
        );
    } else {
        println!();
        println!(
            "switchover: {} runs, write downtime median {} ms, max {} ms; {acknowledged} writes acknowledged, {lost} lost; {two_writers} two-writer moments; old primary streaming at return in {streaming} of {} runs",
            runs.len(),
            median(&mut downtimes).unwrap_or(0),
            downtimes.iter().max().unwrap_or(&0),
            runs.len()
        );
    }
    Ok(if lost > 0 || two_writers > 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// One switchover by `pgfm switchover`, timed from the command's start, once the cluster
/// is healthy and the writer has written for half a second.
async fn one_switchover(
    driver: &LabDriver,
    exe: &std::path::Path,
    config: &std::path::Path,
    writer: &Writer,
    run: usize,
) -> anyhow::Result<SwitchoverRun> {
    let before = driver
        .wait("a healthy cluster", Duration::from_secs(90), healthy)
        .await?;
    let from = before.primary.clone().context("no primary")?;
    // Let the writer settle for half a second, then switch over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let output = tokio::process::Command::new(exe)
        .args(["switchover", "-c"])
        .arg(config)
        .output()
        .await
        .context("running pgfm switchover")?;
    let command_ms = started.elapsed().as_millis() as u64;
    if !output.status.success() {
        bail!(
            "pgfm switchover failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let after = driver.status().await?;
    let to = after
        .primary
        .clone()
        .context("no primary after the switchover")?;
    let streaming = after
        .nodes
        .iter()
        .any(|n| n.name == from && n.kind == NodeKindStatus::Standby && n.in_sync == Some(true));
    // Keep writing a second so that the gap after the switchover is measured whole.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let downtime = longest_gap(&writer.acknowledged(), started);
    Ok(SwitchoverRun {
        run,
        from,
        to,
        generation: after.generation,
        downtime_ms: downtime.as_millis() as u64,
        command_ms,
        old_primary_streaming_at_return: streaming,
    })
}

#[derive(Debug, Args)]
pub struct RestartBench {
    /// Rolling restarts of every data node, one after the other.
    #[arg(long, default_value = "5")]
    runs: usize,
    /// Data nodes (and a witness).
    #[arg(long, default_value = "3")]
    data_nodes: usize,
    /// Where to build the lab (removed at the end).
    #[arg(long, default_value = "/tmp/pgfm-bench")]
    dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Serialize)]
struct RestartRun {
    run: usize,
    /// The longest pause of the writer's acknowledgements during the restart.
    downtime_ms: u64,
    command_ms: u64,
    promotions: u64,
}

/// `pgfm bench restart`: N rolling restarts (`pgfm restart`, every data node, the primary
/// by a switchover) under the neutral writer; the longest write pause of each, then the
/// writes acknowledged and lost, and moments with two writers, over all of them.
pub fn restart(args: RestartBench) -> anyhow::Result<std::process::ExitCode> {
    let rt = crate::runtime()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "pgfm bench restart: {} rolling restart(s) of every data node (pgfm restart); lab of {} data nodes + witness on this machine ({cores} cores), default settings, asynchronous; writer: one INSERT per transaction every 10 ms, multi-host, target_session_attrs=read-write",
        args.runs, args.data_nodes
    );
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    let (driver, _) = LabDriver::up(&exe, &args.dir, args.data_nodes, &[], false)?;
    let config = driver.dir.join("witness").join("pgfm.toml");
    let outcome = rt.block_on(async {
        create_bench_table(&driver, "pg1").await?;
        let (writer, watch) = start_load(&driver, 1)?;
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let before = driver
                .wait("a healthy cluster", Duration::from_secs(90), healthy)
                .await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let started = Instant::now();
            let output = tokio::process::Command::new(&exe)
                .args(["restart", "-c"])
                .arg(&config)
                .output()
                .await
                .context("running pgfm restart")?;
            let command_ms = started.elapsed().as_millis() as u64;
            if !output.status.success() {
                bail!(
                    "pgfm restart failed: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = driver.status().await?;
            let result = RestartRun {
                run,
                downtime_ms: longest_gap(&writer.acknowledged(), started).as_millis() as u64,
                command_ms,
                promotions: after.generation - before.generation,
            };
            println!(
                "  run {run}: write downtime {} ms, command {} ms, {} promotion(s)",
                result.downtime_ms, result.command_ms, result.promotions
            );
            runs.push(result);
        }
        let ids: Vec<i64> = writer.finish().iter().map(|(id, _)| *id).collect();
        let two_writers = overlaps(&watch.finish()).len();
        let primary = driver
            .status()
            .await?
            .primary
            .context("no primary at the end")?;
        let lost = ids.len() - kept_ids(&driver, &primary, &ids).await?.len();
        anyhow::Ok((runs, ids.len(), lost, two_writers))
    });
    let (runs, acknowledged, lost, two_writers) = match outcome {
        Ok(found) => found,
        Err(e) => return Err(driver.kept_for_inspection(e)),
    };
    driver.down()?;
    let mut downtimes: Vec<u64> = runs.iter().map(|r| r.downtime_ms).collect();
    let mut commands: Vec<u64> = runs.iter().map(|r| r.command_ms).collect();
    println!();
    println!(
        "restart: {} runs, write downtime median {} ms, max {} ms; command median {} ms; {acknowledged} writes acknowledged, {lost} lost; {two_writers} two-writer moments",
        runs.len(),
        median(&mut downtimes).unwrap_or(0),
        downtimes.iter().max().unwrap_or(&0),
        median(&mut commands).unwrap_or(0),
    );
    Ok(if lost > 0 || two_writers > 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

#[derive(Debug, Args)]
pub struct BootstrapBench {
    /// Clusters formed, one after the other.
    #[arg(long, default_value = "5")]
    runs: usize,
    /// Data nodes, all empty (and a witness).
    #[arg(long, default_value = "3")]
    data_nodes: usize,
    /// Every node its own host in a network namespace (root), with TLS on, as in the field.
    #[arg(long)]
    netns: bool,
    /// Where to build each lab (removed after each run).
    #[arg(long, default_value = "/tmp/pgfm-bench")]
    dir: std::path::PathBuf,
}

/// One cluster formed from empty data directories, from the agents' logs.
#[derive(Debug, Clone, Serialize)]
struct BootstrapRun {
    /// From the first agent's start to the chosen node's initdb.
    to_initdb_ms: u64,
    /// initdb, the roles and pg_hba.conf on the chosen node.
    initdb_ms: u64,
    /// From the first agent's start to the last standby streaming.
    to_streaming_ms: u64,
}

/// `pgfm bench bootstrap`: N clusters formed from empty data directories; each timed from
/// the first agent's start to the last standby streaming, from the agents' own log lines.
pub fn bootstrap(args: BootstrapBench) -> anyhow::Result<std::process::ExitCode> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "pgfm bench bootstrap: {} run(s); {} empty data nodes + witness, {}, TLS on, default settings, on this machine ({cores} cores); from the first agent's start to the last standby streaming",
        args.runs,
        args.data_nodes,
        if args.netns { "each in its own network namespace" } else { "on 127.0.0.1" },
    );
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let more = ["--from-empty".to_string()];
        let (driver, _) =
            LabDriver::up_with(&exe, &args.dir, args.data_nodes, &[], args.netns, &more)?;
        let measured = bootstrap_times(&driver, args.data_nodes);
        let measured = match measured {
            Ok(m) => m,
            Err(e) => return Err(driver.kept_for_inspection(e)),
        };
        driver.down()?;
        println!(
            "  run {run}: initdb after {} ms, took {} ms; every standby streaming after {} ms",
            measured.to_initdb_ms, measured.initdb_ms, measured.to_streaming_ms
        );
        runs.push(measured);
    }
    let mut streaming: Vec<u64> = runs.iter().map(|r| r.to_streaming_ms).collect();
    let mut initdb: Vec<u64> = runs.iter().map(|r| r.initdb_ms).collect();
    println!(
        "\nbootstrap: {} runs, empty to streaming median {} ms (max {} ms), of which initdb median {} ms",
        runs.len(),
        median(&mut streaming).unwrap_or(0),
        streaming.iter().max().unwrap_or(&0),
        median(&mut initdb).unwrap_or(0),
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// The times of one formation, read from the agents' logs (their timestamps, RFC 3339).
fn bootstrap_times(driver: &LabDriver, data_nodes: usize) -> anyhow::Result<BootstrapRun> {
    let mut started = None;
    let mut initdb = None;
    let mut initialised = None;
    let mut streaming = Vec::new();
    let nodes = (1..=data_nodes)
        .map(|i| format!("pg{i}"))
        .chain(std::iter::once("witness".to_string()));
    for node in nodes {
        let log = std::fs::read_to_string(driver.dir.join(&node).join("agent.log"))?;
        for line in log.lines() {
            let Some(at) = line
                .split_whitespace()
                .next()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
            else {
                continue;
            };
            if line.contains("agent started") {
                started = Some(started.map_or(at, |s: std::time::SystemTime| s.min(at)));
            } else if line.contains("initialising the cluster (initdb)") {
                initdb = Some(at);
            } else if line.contains("cluster initialised") {
                initialised = Some(at);
            } else if line.contains("cloned and streaming") {
                streaming.push(at);
            }
        }
    }
    let ms = |from: Option<std::time::SystemTime>, to: Option<std::time::SystemTime>| {
        let (from, to) = from
            .zip(to)
            .context("a step missing from the agents' logs")?;
        Ok::<u64, anyhow::Error>(to.duration_since(from).unwrap_or_default().as_millis() as u64)
    };
    if streaming.len() + 1 != data_nodes {
        bail!(
            "{} of {} standbys said they stream",
            streaming.len(),
            data_nodes - 1
        );
    }
    Ok(BootstrapRun {
        to_initdb_ms: ms(started, initdb)?,
        initdb_ms: ms(initdb, initialised)?,
        to_streaming_ms: ms(started, streaming.into_iter().max())?,
    })
}
