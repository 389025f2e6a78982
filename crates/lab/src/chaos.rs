//! `pgfm bench chaos`: a soak of drawn faults against one `--netns` lab under the neutral
//! writer. Each run waits until every node streams, draws a fault (or two) from the seed
//! (`draw`), injects it and repairs it when drawn (`inject`), waits until every node has
//! rejoined, and measures (`measure`): acknowledged writes lost (synchronous and
//! asynchronous apart, the asynchronous ones set against the lease window), moments with
//! two writable nodes, the longest write gap while a majority and a candidate were up, and
//! the nodes that never rejoined. A run whose cluster does not recover in time is repaired
//! as far as the lab can (and says so); the soak stops, keeping the lab, when it cannot.

mod draw;
mod inject;
mod measure;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use pgfm_api::{ClusterStatus, NodeKindStatus, Up};
use pgfm_core::lease::LeaseSettings;

use crate::bench::{create_bench_table, healthy, kept_ids, warm_up};
use crate::drive::LabDriver;
use crate::writers::{overlaps, Writable, WriteWatch, Writer};

pub use draw::FaultKind;
use draw::{draw, Plan};
use inject::Injected;
use measure::{
    lease_window, longest_gap_while_up, split_losses, stretches, unavailable, Numbers, Tally,
};

#[derive(Debug, Args)]
pub struct ChaosBench {
    /// Every node its own host in a network namespace (required: partitions and host deaths
    /// need separate hosts; root only).
    #[arg(long)]
    netns: bool,
    /// How many runs.
    #[arg(long, default_value_t = 10)]
    runs: u64,
    /// The seed each run's faults are drawn from (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The number of the first run: a run draws from the seed and its number alone, so
    /// `--seed S --first-run K --runs 1` replays run K of a soak.
    #[arg(long, default_value_t = 1)]
    first_run: u64,
    /// The faults to draw from (repeatable; default: all of them).
    #[arg(long, value_enum)]
    fault: Vec<FaultKind>,
    /// Synchronous replication (`--synchronous` alone: on): then no acknowledged write may
    /// be lost.
    #[arg(long, value_name = "off|on|quorum", num_args = 0..=1, default_missing_value = "on",
          value_parser = ["off", "on", "quorum"])]
    synchronous: Option<String>,
    /// Data nodes in the lab (and a witness).
    #[arg(long, default_value_t = 3)]
    data_nodes: usize,
    /// Each data node's data directory on a tmpfs of this many MB (for the disk-full
    /// fault; never the machine's disk).
    #[arg(long, default_value_t = 1024, value_name = "MB")]
    data_disk: u64,
    /// How long a run waits for every node to rejoin after its last repair (seconds).
    #[arg(long, default_value_t = 120)]
    recover_within: u64,
    /// Where to build the lab (removed at the end, kept when the soak stops on an error).
    #[arg(long, default_value = "/tmp/pgfm-chaos")]
    dir: PathBuf,
    /// One JSON line per run and a summary line instead of text.
    #[arg(long)]
    json: bool,
    /// Leave the lab running at the end (its logs hold every run's story).
    #[arg(long)]
    keep: bool,
}

impl ChaosBench {
    fn synchronous(&self) -> bool {
        self.synchronous.as_deref().is_some_and(|m| m != "off")
    }

    fn kinds(&self) -> Vec<FaultKind> {
        if self.fault.is_empty() {
            FaultKind::ALL.to_vec()
        } else {
            self.fault.clone()
        }
    }

    /// The command that replays run `run` of this soak alone.
    fn replay(&self, seed: u64, run: u64) -> String {
        let mut command =
            format!("pgfm bench chaos --netns --seed {seed} --first-run {run} --runs 1");
        if let Some(mode) = &self.synchronous {
            command.push_str(&format!(" --synchronous {mode}"));
        }
        if self.data_nodes != 3 {
            command.push_str(&format!(" --data-nodes {}", self.data_nodes));
        }
        for kind in &self.fault {
            command.push_str(&format!(" --fault {}", kind.name()));
        }
        command
    }
}

/// One run's draw, what it hit, and what it measured.
#[derive(Debug, Clone, Serialize)]
struct ChaosRun {
    run: u64,
    seed: u64,
    /// When it started (UTC, as the agents' logs say).
    started: String,
    fault: FaultKind,
    plan: String,
    /// The node each hit was resolved to.
    nodes: Vec<String>,
    old_primary: String,
    new_primary: Option<String>,
    generation_before: u64,
    generation_after: u64,
    #[serde(flatten)]
    numbers: Numbers,
    /// What the soak had to do, beyond the plan, for the cluster to recover.
    repairs: Vec<String>,
    notes: Vec<String>,
}

pub fn chaos(args: ChaosBench) -> anyhow::Result<ExitCode> {
    if !args.netns {
        bail!(
            "pgfm bench chaos needs --netns: its partitions and host deaths need every node on \
             a host of its own (a network namespace each, which needs root), and its writer \
             reaches the primary through the virtual IP as clients do"
        );
    }
    if args.data_nodes < 2 {
        bail!(
            "--data-nodes {} leaves no standby to fail over to (at least 2; 3 by default)",
            args.data_nodes
        );
    }
    let seed = args.seed.unwrap_or_else(crate::seeded::clock_seed);
    let kinds = args.kinds();
    if !args.json {
        print_header(&args, seed, &kinds);
    }
    let settings: Vec<String> = args
        .synchronous
        .iter()
        .map(|mode| format!("replication.synchronous=\"{mode}\""))
        .collect();
    // The data disks only when a run may fill one.
    let mut more = Vec::new();
    if kinds.contains(&FaultKind::DiskFull) {
        more = vec!["--data-disk".to_string(), args.data_disk.to_string()];
    }
    let rt = crate::runtime()?;
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    let (driver, _) = LabDriver::up_with(&exe, &args.dir, args.data_nodes, &settings, true, &more)?;
    let (runs, stopped) = rt.block_on(soak(&driver, &args, seed, &kinds));
    let tally = Tally::of(runs.iter().map(|r| &r.numbers));
    if args.json {
        println!(
            "{}",
            serde_json::json!({"summary": true, "seed": seed, "synchronous": args.synchronous(), "stopped": stopped.as_ref().map(|e| format!("{e:#}")), "total": tally})
        );
    } else {
        print_table(&runs, &kinds);
        print_verdict(&runs, &tally, &args, seed);
    }
    match stopped {
        Some(e) => Err(driver.kept_for_inspection(e)),
        None => {
            driver.down_unless(args.keep)?;
            Ok(if tally.safe(args.synchronous()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Every run, one after the other, until the last or until one leaves a cluster the lab
/// cannot repair: the runs done, and why the soak stopped early.
async fn soak(
    driver: &LabDriver,
    args: &ChaosBench,
    seed: u64,
    kinds: &[FaultKind],
) -> (Vec<ChaosRun>, Option<anyhow::Error>) {
    let mut done = Vec::new();
    if let Err(e) = create_bench_table(driver, "pg1").await {
        return (done, Some(e));
    }
    // The writer skips ids whose write was not acknowledged (they may exist anyway): each
    // run starts well clear of every id the one before may have used.
    let mut first_id = 1;
    for run in args.first_run..args.first_run + args.runs {
        let plan = draw(seed, run, kinds);
        // The wall clock, to find the run in the agents' logs.
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        if !args.json {
            println!("run {run} ({started}): {plan}");
        }
        match one_run(driver, args, seed, run, &plan, first_id).await {
            Ok((mut result, stop)) => {
                result.started = started;
                if !args.json {
                    print_run(&result, args.synchronous());
                } else if let Ok(line) = serde_json::to_string(&result) {
                    println!("{line}");
                }
                done.push(result);
                if let Some(why) = stop {
                    return (done, Some(anyhow::anyhow!(why)));
                }
            }
            Err(e) => {
                let replay = args.replay(seed, run);
                return (done, Some(e.context(format!("run {run} ({replay})"))));
            }
        }
        first_id += 10_000_000;
    }
    (done, None)
}

/// One run: a healthy cluster streaming everywhere, the load, the plan carried out, the
/// recovery, the measures. Returns the run and, when the cluster could not be repaired,
/// why the soak must stop.
async fn one_run(
    driver: &LabDriver,
    args: &ChaosBench,
    seed: u64,
    run: u64,
    plan: &Plan,
    first_id: i64,
) -> anyhow::Result<(ChaosRun, Option<String>)> {
    let within = Duration::from_secs(args.recover_within);
    let before = match wait_rejoined(driver, within).await {
        Ok(status) => status,
        Err(missing) => bail!(
            "the cluster was not healthy with every node streaming before the fault ({})",
            missing.join("; ")
        ),
    };
    let old = before.primary.clone().context("no primary")?;
    let load = Load::start(driver, first_id)?;
    warm_up(&load.writer).await?;
    let injected = inject::carry_out(driver, plan, &before).await?;
    let recovery = recover(driver, &injected, within).await?;
    // Writes go on a second past the recovery, so that the last gap is measured whole.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = Instant::now();
    let loaded = load.finish();
    let new = recovery.status.as_ref().and_then(|s| s.primary.clone());
    let numbers = match &new {
        Some(primary) => measure(driver, args, &loaded, &injected, &recovery, primary, end).await?,
        None => Numbers {
            acknowledged: loaded.acks.len(),
            never_rejoined: recovery.never_rejoined.clone(),
            ..Numbers::default()
        },
    };
    let mut notes = injected.notes.clone();
    if let Some((a, b)) = overlaps(&loaded.writable).first() {
        notes.push(format!(
            "{} and {} were writable at once, {} ms after the fault",
            a.node,
            b.node,
            b.from
                .saturating_duration_since(injected.fault_at)
                .as_millis()
        ));
    }
    let result = ChaosRun {
        run,
        seed,
        started: String::new(),
        fault: plan.kind,
        plan: plan.to_string(),
        nodes: injected.nodes.clone(),
        old_primary: old,
        new_primary: new,
        generation_before: before.generation,
        generation_after: recovery
            .status
            .as_ref()
            .map_or(before.generation, |s| s.generation),
        numbers,
        repairs: recovery.repairs,
        notes,
    };
    Ok((result, recovery.stop))
}

/// The run's measures, once `primary` is the final primary.
async fn measure(
    driver: &LabDriver,
    args: &ChaosBench,
    loaded: &Loaded,
    injected: &Injected,
    recovery: &Recovery,
    primary: &str,
    end: Instant,
) -> anyhow::Result<Numbers> {
    let ids: Vec<i64> = loaded.acks.iter().map(|(id, _)| *id).collect();
    let kept = kept_ids(driver, primary, &ids).await?;
    let (surviving, lost): (Vec<Instant>, Vec<Instant>) = {
        let (kept_acks, lost_acks): (Vec<_>, Vec<_>) =
            loaded.acks.iter().partition(|(id, _)| kept.contains(id));
        let at = |acks: Vec<&(i64, Instant)>| acks.iter().map(|(_, at)| *at).collect();
        (at(kept_acks), at(lost_acks))
    };
    let (lost_sync, lost_async) = split_losses(&lost, &loaded.sync_samples, args.synchronous());
    let lease = LeaseSettings::default();
    let window = Duration::from_millis(lease.lease_ms - lease.safety_margin_ms);
    let all: Vec<Instant> = loaded.acks.iter().map(|(_, at)| *at).collect();
    let lab = driver.lab()?;
    let data_nodes = lab.nodes.iter().filter(|n| n.pg_port.is_some()).count();
    let down = unavailable(&injected.broken, lab.nodes.len(), data_nodes, end);
    let kills: Vec<(&str, Instant)> = injected
        .broken
        .iter()
        .filter(|b| b.killed)
        .map(|b| (b.node.as_str(), b.from))
        .collect();
    let ms = |d: Duration| d.as_millis() as u64;
    Ok(Numbers {
        acknowledged: ids.len(),
        lost_sync: lost_sync.len(),
        lost_async: lost_async.len(),
        lease_window: lease_window(
            &lost_async,
            &all,
            &stretches(&loaded.writable),
            window,
            &kills,
        ),
        two_writer_moments: overlaps(&loaded.writable).len(),
        write_gap_ms: ms(longest_gap_while_up(
            &surviving,
            injected.fault_at,
            end,
            &[],
        )),
        gap_majority_up_ms: ms(longest_gap_while_up(
            &surviving,
            injected.fault_at,
            end,
            &down,
        )),
        rejoin_ms: recovery.rejoin_ms,
        never_rejoined: recovery.never_rejoined.clone(),
    })
}

/// How a run's cluster came back.
struct Recovery {
    /// The last status seen (None: no agent answered).
    status: Option<ClusterStatus>,
    /// From the last repair until every node streamed, when they did by themselves.
    rejoin_ms: Option<u64>,
    /// The nodes that had not rejoined by the deadline.
    never_rejoined: Vec<String>,
    /// What the soak then did.
    repairs: Vec<String>,
    /// Why the soak must stop (the cluster could not be repaired).
    stop: Option<String>,
}

/// Wait until every node has rejoined; if some do not within `within`, repair what the lab
/// can, step by step (heal, thaw, free and start everything; restart the nodes left out;
/// rebuild them from the primary), waiting again after each step.
async fn recover(
    driver: &LabDriver,
    injected: &Injected,
    within: Duration,
) -> anyhow::Result<Recovery> {
    let missing = match wait_rejoined(driver, within).await {
        Ok(status) => {
            return Ok(Recovery {
                status: Some(status),
                rejoin_ms: Some(injected.repaired_at.elapsed().as_millis() as u64),
                never_rejoined: Vec::new(),
                repairs: Vec::new(),
                stop: None,
            })
        }
        Err(missing) => missing,
    };
    let mut repairs = vec![format!(
        "not rejoined {} s after the last repair: {}",
        within.as_secs(),
        missing.join("; ")
    )];
    let never_rejoined: Vec<String> = missing
        .iter()
        .filter_map(|m| m.split(':').next())
        .map(str::to_string)
        .collect();
    for step in 0..3 {
        let status = driver.status_within(Duration::from_secs(1)).await.ok();
        let primary = status.as_ref().and_then(|s| s.primary.clone());
        let left: Vec<String> = match &status {
            Some(s) => not_rejoined(s, &driver.lab()?.nodes)
                .into_iter()
                .filter_map(|m| m.split(':').next().map(str::to_string))
                .collect(),
            None => Vec::new(),
        };
        match step {
            0 => repairs.extend(inject::repair_everything(driver)?),
            1 => {
                for node in left.iter().filter(|n| n.as_str() != "(cluster)") {
                    driver.kill(node, false)?;
                    driver.start(node)?;
                    repairs.push(format!("restarted {node}'s host"));
                }
            }
            _ => {
                for node in left.iter().filter(|n| n.as_str() != "(cluster)") {
                    match inject::rebuild(driver, node, primary.as_deref()) {
                        Ok(()) => repairs.push(format!("rebuilt {node} from the primary")),
                        Err(e) => repairs.push(format!("could not rebuild {node}: {e:#}")),
                    }
                }
            }
        }
        match wait_rejoined(driver, within).await {
            Ok(status) => {
                return Ok(Recovery {
                    status: Some(status),
                    rejoin_ms: None,
                    never_rejoined,
                    repairs,
                    stop: None,
                })
            }
            Err(still) => repairs.push(format!("still not rejoined: {}", still.join("; "))),
        }
    }
    let status = driver.status_within(Duration::from_secs(1)).await.ok();
    Ok(Recovery {
        status,
        rejoin_ms: None,
        never_rejoined,
        stop: Some(format!(
            "the cluster did not recover, even after: {}",
            repairs.join("; ")
        )),
        repairs,
    })
}

/// Wait until the cluster is healthy and every node has rejoined (the primary writable,
/// every other data node streaming in sync, every agent up); the status, or what was still
/// missing at the deadline.
pub(crate) async fn wait_rejoined(
    driver: &LabDriver,
    within: Duration,
) -> Result<ClusterStatus, Vec<String>> {
    let deadline = Instant::now() + within;
    let mut missing = vec!["no agent answered".to_string()];
    loop {
        let nodes = driver.lab().map(|l| l.nodes).unwrap_or_default();
        if let Ok(status) = driver.status_within(Duration::from_secs(1)).await {
            missing = not_rejoined(&status, &nodes);
            if missing.is_empty() {
                return Ok(status);
            }
        }
        if Instant::now() > deadline {
            return Err(missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The nodes of `nodes` that have not rejoined according to `status`, each as
/// `name: what it is`; `(cluster): ...` when they all have but the cluster is not healthy
/// yet (no primary, synchronous replication not settled, ...).
fn not_rejoined(status: &ClusterStatus, nodes: &[crate::LabNode]) -> Vec<String> {
    let mut missing = Vec::new();
    for node in nodes {
        let Some(seen) = status.nodes.iter().find(|n| n.name == node.name) else {
            missing.push(format!("{}: not in the cluster's status", node.name));
            continue;
        };
        let rejoined = match (node.pg_port, status.primary.as_deref() == Some(&node.name)) {
            (None, _) => seen.agent == Up::Up,
            (Some(_), true) => seen.kind == NodeKindStatus::Primary,
            (Some(_), false) => {
                seen.agent == Up::Up
                    && seen.kind == NodeKindStatus::Standby
                    && seen.in_sync == Some(true)
            }
        };
        if !rejoined {
            let info = if seen.info.is_empty() {
                format!("{:?}", seen.kind).to_lowercase()
            } else {
                seen.info.clone()
            };
            missing.push(format!("{}: {info}", node.name));
        }
    }
    if missing.is_empty() && healthy(status).is_none() {
        let problems = if status.problems.is_empty() {
            "not healthy yet".to_string()
        } else {
            status.problems.join("; ")
        };
        missing.push(format!("(cluster): {problems}"));
    }
    missing
}

/// The load of one run: the neutral writer through the virtual IP, one split-brain watch
/// per data node (so that a dead or frozen node never slows the others' sampling), and one
/// watch per data node of whether, while writable, it makes commits wait for a standby.
struct Load {
    writer: Writer,
    watches: Vec<WriteWatch>,
    sync_watches: Vec<SyncWatch>,
}

/// What the load saw.
struct Loaded {
    acks: Vec<(i64, Instant)>,
    writable: Vec<Writable>,
    /// When a writable node was asked, and whether its commits waited for a standby.
    sync_samples: Vec<(Instant, bool)>,
}

impl Load {
    fn start(driver: &LabDriver, first_id: i64) -> anyhow::Result<Load> {
        let config = driver.lab()?.writer_config("pgfm-bench-chaos")?;
        let (mut watches, mut sync_watches) = (Vec::new(), Vec::new());
        for (name, _) in driver.data_nodes()? {
            let target = driver.target(&name)?;
            sync_watches.push(SyncWatch::start(target.clone()));
            watches.push(WriteWatch::start(
                vec![(name, target)],
                Duration::from_millis(10),
            ));
        }
        Ok(Load {
            writer: Writer::start(config, first_id),
            watches,
            sync_watches,
        })
    }

    fn finish(self) -> Loaded {
        let acks = self.writer.finish();
        let mut writable: Vec<Writable> = self
            .watches
            .into_iter()
            .flat_map(WriteWatch::finish)
            .collect();
        writable.sort_by_key(|w| w.from);
        let mut sync_samples: Vec<(Instant, bool)> = self
            .sync_watches
            .into_iter()
            .flat_map(SyncWatch::finish)
            .collect();
        sync_samples.sort_by_key(|(at, _)| *at);
        Loaded {
            acks,
            writable,
            sync_samples,
        }
    }
}

/// Samples one data node every 20 ms, on a thread of its own: while it is writable, whether
/// its commits wait for a synchronous standby (`synchronous_standby_names` is set). The
/// server's own setting, not the cluster's status: that is what decides whether an
/// acknowledged commit has a copy.
struct SyncWatch {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, bool)>>>,
    handle: Option<JoinHandle<()>>,
}

impl SyncWatch {
    fn start(target: pgfm_postgres::probe::Target) -> SyncWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<(Instant, bool)>>> = Default::default();
        let (flag, into) = (stop.clone(), samples.clone());
        let handle = std::thread::spawn(move || {
            let Ok(rt) = crate::runtime() else { return };
            rt.block_on(async move {
                let mut client: Option<tokio_postgres::Client> = None;
                let sql = "SELECT NOT pg_is_in_recovery(), \
                           current_setting('synchronous_standby_names') <> ''";
                while !flag.load(Ordering::SeqCst) {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = pgfm_postgres::probe::connect(&target).await.ok();
                    }
                    if let Some(c) = client.as_ref() {
                        let asked = Instant::now();
                        match tokio::time::timeout(target.timeout, c.query_one(sql, &[])).await {
                            Ok(Ok(row)) if row.get::<_, bool>(0) => {
                                if let Ok(mut samples) = into.lock() {
                                    samples.push((asked, row.get::<_, bool>(1)));
                                }
                            }
                            Ok(Ok(_)) => {}
                            _ => client = None,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        });
        SyncWatch {
            stop,
            samples,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<(Instant, bool)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for SyncWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

/// What the soak runs, on what, and what it measures.
fn print_header(args: &ChaosBench, seed: u64, kinds: &[FaultKind]) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let lease = LeaseSettings::default();
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    println!(
        "pgfm bench chaos: runs {}..{} with seed {seed}, faults drawn from: {}",
        args.first_run,
        args.first_run + args.runs - 1,
        names.join(", ")
    );
    println!(
        "  replay one run alone: {}",
        args.replay(seed, args.first_run)
    );
    println!(
        "  lab: {} data nodes + witness on this machine ({cores} cores), each in its own network namespace{}; {}; default settings ({}, probe 1 s, watchdog required)",
        args.data_nodes,
        if kinds.contains(&FaultKind::DiskFull) {
            format!(", data directories on a {} MB tmpfs each", args.data_disk)
        } else {
            String::new()
        },
        match args.synchronous.as_deref() {
            Some(mode) if mode != "off" => format!("synchronous replication {mode}"),
            _ => "asynchronous replication".to_string(),
        },
        lease.describe()
    );
    println!(
        "  load: one INSERT per transaction every 10 ms through the virtual IP, reconnecting at once; each data node's pg_is_in_recovery() every 10 ms (one watcher per node)"
    );
    println!(
        "  measures: lost = acknowledged, missing from the final primary; write gap = longest time between two surviving acknowledged writes after the fault; \
         gap with a majority up = the same, counting only time when a majority of the voters and a data node were free of injected faults; \
         lease window = the last {} ms (lease - safety margin, + {} ms of replication lag; only the lag when the soak killed it) before the server that acknowledged a lost write stopped taking writes, as the split-brain watch saw it",
        lease.lease_ms - lease.safety_margin_ms,
        measure::WINDOW_BEFORE.as_millis()
    );
}

/// One run's line.
fn print_run(r: &ChaosRun, synchronous: bool) {
    let n = &r.numbers;
    let lost = if synchronous {
        format!(
            "lost {} synchronous + {} while degraded",
            n.lost_sync, n.lost_async
        )
    } else {
        format!("lost {}", n.lost_async)
    };
    let window = if n.lost_async > 0 {
        format!(
            " ({} inside the lease window, {} outside; {} acknowledged in it; the earliest {} before its server stopped taking writes)",
            n.lease_window.inside,
            n.lease_window.outside,
            n.lease_window.acknowledged_inside,
            n.lease_window
                .longest_before_stop_ms
                .map(secs)
                .unwrap_or_else(|| "-".into())
        )
    } else {
        String::new()
    };
    let rejoin = match (&n.rejoin_ms, n.never_rejoined.is_empty()) {
        (Some(ms), _) => format!("rejoined {} after the last repair", secs(*ms)),
        (None, false) => format!("NEVER REJOINED: {}", n.never_rejoined.join(", ")),
        (None, true) => "rejoined".to_string(),
    };
    println!(
        "  hit {}: {} -> {} (generation {} -> {}); write gap {}, {} with a majority up; {} acknowledged, {lost}{window}; {} two-writer moments; {rejoin}",
        r.nodes.join(", "),
        r.old_primary,
        r.new_primary.as_deref().unwrap_or("none"),
        r.generation_before,
        r.generation_after,
        secs(n.write_gap_ms),
        secs(n.gap_majority_up_ms),
        n.acknowledged,
        n.two_writer_moments,
    );
    for line in r.repairs.iter().chain(&r.notes) {
        println!("    {line}");
    }
}

/// The summary: one line per fault kind and one for all, with medians.
fn print_table(runs: &[ChaosRun], kinds: &[FaultKind]) {
    println!();
    println!(
        "{:<25} {:>4} {:>9} {:>10} {:>9} {:>10} {:>17} {:>17} {:>8} {:>12}",
        "fault",
        "runs",
        "lost sync",
        "lost async",
        "unexplnd",
        "two-writer",
        "gap median/max",
        "majority-up gap",
        "rejoin",
        "not rejoined"
    );
    let row = |name: &str, t: &Tally| {
        let pair = |m: Option<u64>, x: Option<u64>| {
            format!(
                "{} / {}",
                m.map(secs).unwrap_or_else(|| "-".into()),
                x.map(secs).unwrap_or_else(|| "-".into())
            )
        };
        println!(
            "{:<25} {:>4} {:>9} {:>10} {:>9} {:>10} {:>17} {:>17} {:>8} {:>12}",
            name,
            t.runs,
            t.lost_sync,
            t.lost_async,
            t.lost_unexplained,
            t.two_writer_moments,
            pair(t.write_gap_median_ms, t.write_gap_max_ms),
            pair(t.gap_majority_up_median_ms, t.gap_majority_up_max_ms),
            t.rejoin_median_ms.map(secs).unwrap_or_else(|| "-".into()),
            t.runs_not_rejoined
        );
    };
    for kind in kinds {
        let of_kind: Vec<&Numbers> = runs
            .iter()
            .filter(|r| r.fault == *kind)
            .map(|r| &r.numbers)
            .collect();
        if !of_kind.is_empty() {
            row(kind.name(), &Tally::of(of_kind));
        }
    }
    row("all", &Tally::of(runs.iter().map(|r| &r.numbers)));
}

/// The answers to the questions, in words.
fn print_verdict(runs: &[ChaosRun], tally: &Tally, args: &ChaosBench, seed: u64) {
    let lease = LeaseSettings::default();
    println!();
    println!(
        "moments with two writable nodes: {}",
        tally.two_writer_moments
    );
    if args.synchronous() {
        println!(
            "acknowledged writes lost: {} synchronous, {} acknowledged while the writable server named no synchronous standby (degraded, or newly promoted)",
            tally.lost_sync, tally.lost_async
        );
    } else {
        println!(
            "acknowledged writes lost (asynchronous): {}",
            tally.lost_async
        );
    }
    if tally.lost_async > 0 {
        let longest = runs
            .iter()
            .filter_map(|r| r.numbers.lease_window.longest_before_stop_ms)
            .max();
        let inside: usize = runs
            .iter()
            .map(|r| r.numbers.lease_window.acknowledged_inside)
            .sum();
        println!(
            "  {} of them inside the lease window of the server that acknowledged them (acknowledged at most {} ms before it stopped taking writes; lease - safety margin = {} ms; {inside} writes were acknowledged inside those windows), {} outside",
            tally.lost_async - tally.lost_unexplained,
            longest.unwrap_or(0),
            lease.lease_ms - lease.safety_margin_ms,
            tally.lost_unexplained
        );
    }
    let longest = runs.iter().max_by_key(|r| r.numbers.gap_majority_up_ms);
    if let Some(r) = longest {
        println!(
            "longest write gap while a majority and a candidate were up: {} (run {}: {})",
            secs(r.numbers.gap_majority_up_ms),
            r.run,
            r.plan
        );
    }
    let never: Vec<String> = runs
        .iter()
        .filter(|r| !r.numbers.never_rejoined.is_empty())
        .map(|r| format!("run {}: {}", r.run, r.numbers.never_rejoined.join(", ")))
        .collect();
    if never.is_empty() {
        println!("nodes that never rejoined: none");
    } else {
        println!("nodes that never rejoined: {}", never.join("; "));
        for r in runs.iter().filter(|r| !r.numbers.never_rejoined.is_empty()) {
            println!("  replay run {}: {}", r.run, args.replay(seed, r.run));
        }
    }
}
