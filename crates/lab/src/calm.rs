//! `pgfm bench calm`: no false failovers (issue 13, item 5). A healthy, reachable primary
//! on a slow machine must not be failed over: with every core kept busy by CPU hogs at the
//! lab's own priority, and the primary's agent alone stopped again and again (SIGSTOP, its
//! PostgreSQL running on) for up to `lease - safety_margin - 1 s`, nothing may be promoted,
//! fenced or reset, under the neutral writer and the split-brain watch, for `--minutes`.
//!
//! The steps (a wait, then a pause) are drawn from the seed (`measure::draw`); the hogs and
//! the stopped agent are guards that undo themselves on every way out (`stress`). The
//! bench stops and resumes the agent itself, not through `pgfm lab freeze --agent-only`:
//! a command started on a saturated machine takes an unknown time to run, and the pause is
//! what is measured.

mod measure;
mod stress;

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use pgfm_api::{ClusterStatus, HistoryEntry};
use pgfm_core::WatchdogMode;

use crate::bench::{create_bench_table, kept_ids, warm_up};
use crate::chaos::wait_rejoined;
use crate::drive::LabDriver;
use crate::writers::{Writable, WriteWatch, Writer};
use crate::LabFile;

use measure::{classify, draw, logged_at, pause_before, Event, Numbers, Observed, Pause};
use stress::{Hogs, Paused};

#[derive(Debug, Args)]
pub struct CalmBench {
    /// How long to keep the machine slow (minutes; the issue asks for at least 30).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Every node its own host in a network namespace (root only); the writer then reaches
    /// the primary through the virtual IP, as clients do.
    #[arg(long)]
    netns: bool,
    /// Data nodes in the lab (and a witness).
    #[arg(long, default_value_t = 3)]
    data_nodes: usize,
    /// Synchronous replication (`--synchronous` alone: on).
    #[arg(long, value_name = "off|on|quorum", num_args = 0..=1, default_missing_value = "on",
          value_parser = ["off", "on", "quorum"])]
    synchronous: Option<String>,
    /// The longest pause of the primary's agent, in ms (default: lease - safety_margin -
    /// 1 s of the lab's timing).
    #[arg(long, value_name = "MS")]
    max_pause: Option<u64>,
    /// CPU hogs: busy loops, one process each (default: one per CPU).
    #[arg(long, value_name = "N")]
    hogs: Option<usize>,
    /// The seed the waits and pauses are drawn from (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// A setting for every agent's config, as `pgfm lab up --set` takes it; repeatable.
    /// Example: --set timing.lease=2400ms
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    settings: Vec<String>,
    /// Where to build the lab (removed at the end unless --keep).
    #[arg(long, default_value = "/tmp/pgfm-calm")]
    dir: PathBuf,
    /// One JSON line per minute and a summary line on standard output, nothing else.
    #[arg(long)]
    json: bool,
    /// Leave the lab running at the end (its logs hold the whole story).
    #[arg(long)]
    keep: bool,
}

impl CalmBench {
    /// The command that runs this bench again with the same draws.
    fn rerun(&self, plan: &Plan) -> String {
        let mut command = format!("pgfm bench calm --minutes {}", self.minutes);
        if self.netns {
            command.push_str(" --netns");
        }
        command.push_str(&format!(" --data-nodes {}", self.data_nodes));
        if let Some(mode) = &self.synchronous {
            command.push_str(&format!(" --synchronous {mode}"));
        }
        command.push_str(&format!(
            " --max-pause {} --hogs {} --seed {}",
            plan.max_pause_ms, plan.hogs, plan.seed
        ));
        for setting in &self.settings {
            command.push_str(&format!(" --set '{setting}'"));
        }
        command
    }
}

/// What the bench runs with, once the lab says its timing.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    seed: u64,
    minutes: u64,
    hogs: usize,
    max_pause_ms: u64,
    /// The lease timing in the agents' config, in words, and where it was read.
    timing: String,
    timing_from: PathBuf,
    watchdog: String,
    watchdog_timeout_s: Option<u64>,
}

pub fn calm(args: CalmBench) -> anyhow::Result<ExitCode> {
    if args.data_nodes < 2 {
        bail!(
            "--data-nodes {} leaves no standby that could be promoted, and so nothing to \
             measure (at least 2; 3 by default)",
            args.data_nodes
        );
    }
    if args.minutes == 0 {
        bail!("--minutes 0 measures nothing (the issue asks for at least 30)");
    }
    let mut settings = args.settings.clone();
    settings.extend(
        args.synchronous
            .iter()
            .map(|mode| format!("replication.synchronous=\"{mode}\"")),
    );
    let rt = crate::runtime()?;
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    let (driver, _) = LabDriver::up(&exe, &args.dir, args.data_nodes, &settings, args.netns)?;
    let plan = match plan(&args, &driver.lab()?) {
        Ok(plan) => plan,
        Err(e) => return Err(driver.kept_for_inspection(e)),
    };
    if !args.json {
        print_header(&args, &plan);
    }
    let outcome = match rt.block_on(soak(&driver, &args, &plan)) {
        Ok(outcome) => outcome,
        Err(e) => return Err(driver.kept_for_inspection(e)),
    };
    if args.json {
        let summary = serde_json::json!({
            "summary": true,
            "plan": &plan,
            "rerun": args.rerun(&plan),
            "interrupted": outcome.interrupted,
            "numbers": &outcome.numbers,
            "calm": outcome.numbers.calm(),
            "promotions": outcome.promotions.iter().map(|h| serde_json::json!({
                "generation": h.generation, "at_unix_ms": h.at_unix_ms, "from": h.from,
                "to": h.to, "reason": h.reason})).collect::<Vec<_>>(),
            "events": outcome.events.iter().map(|e| serde_json::json!({
                "event": e.event, "node": e.node, "line": e.line})).collect::<Vec<_>>(),
            "notes": &outcome.notes,
        });
        println!("{summary}");
    } else {
        print_summary(&args, &plan, &outcome);
    }
    driver.down_unless(args.keep)?;
    Ok(if outcome.numbers.calm() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The seed, the hogs and the longest pause, with the timing the lab's agents run with: read
/// back from the config `lab up` wrote for the first data node (the defaults and every
/// `--set`), by the agent's own parser.
fn plan(args: &CalmBench, lab: &LabFile) -> anyhow::Result<Plan> {
    let node = lab
        .nodes
        .iter()
        .find(|n| n.pg_port.is_some())
        .context("the lab has no data node")?;
    let config = pgfm_agent::config::Config::load_static(&node.config).with_context(|| {
        format!(
            "reading the timing the lab wrote into {}",
            node.config.display()
        )
    })?;
    let lease = config.timing.lease;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let watchdog_on = config.watchdog.mode != WatchdogMode::Off;
    Ok(Plan {
        seed: args.seed.unwrap_or_else(crate::seeded::clock_seed),
        minutes: args.minutes,
        hogs: args.hogs.unwrap_or(cores),
        max_pause_ms: args
            .max_pause
            .unwrap_or_else(|| measure::default_max_pause_ms(&lease)),
        timing: lease.describe(),
        timing_from: node.config.clone(),
        watchdog: format!("{:?}", config.watchdog.mode).to_lowercase(),
        watchdog_timeout_s: lease.watchdog_timeout_s().filter(|_| watchdog_on),
    })
}

/// What the bench saw, at its end.
struct Outcome {
    numbers: Numbers,
    /// The history's promotions during the bench.
    promotions: Vec<HistoryEntry>,
    events: Vec<Logged>,
    pauses: Vec<Pause>,
    notes: Vec<String>,
    interrupted: bool,
}

/// An event found in a node's log.
#[derive(Debug, Clone)]
struct Logged {
    event: Event,
    node: String,
    line: String,
}

/// The lab's logs that record events (every node's `agent.log`, every data node's
/// `watchdog.log`), read from where they ended when the stress began.
struct Logs {
    files: Vec<(String, PathBuf, u64)>,
    found: Vec<Logged>,
}

impl Logs {
    fn from_now(lab: &LabFile) -> Logs {
        let mut files = Vec::new();
        for node in &lab.nodes {
            for name in ["agent.log", "watchdog.log"] {
                let path = lab.dir.join(&node.name).join(name);
                let end = std::fs::metadata(&path).map_or(0, |m| m.len());
                files.push((node.name.clone(), path, end));
            }
        }
        Logs {
            files,
            found: Vec::new(),
        }
    }

    /// Read the whole lines written since the last scan.
    fn scan(&mut self) {
        for (node, path, offset) in &mut self.files {
            let Ok(mut file) = std::fs::File::open(&*path) else {
                continue;
            };
            let mut text = Vec::new();
            if file.seek(SeekFrom::Start(*offset)).is_err() || file.read_to_end(&mut text).is_err()
            {
                continue;
            }
            // A line still being written is read at the next scan.
            let Some(end) = text.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            *offset += end as u64 + 1;
            for line in String::from_utf8_lossy(&text[..end]).lines() {
                if let Some(event) = classify(line) {
                    self.found.push(Logged {
                        event,
                        node: node.clone(),
                        line: line.trim().to_string(),
                    });
                }
            }
        }
    }

    fn events(&self) -> Vec<Event> {
        self.found.iter().map(|l| l.event).collect()
    }
}

/// The load: the neutral writer (through the virtual IP in a --netns lab) and one
/// split-brain watch per data node, so that a slow node never slows the others' sampling.
struct Load {
    writer: Writer,
    watches: Vec<WriteWatch>,
}

impl Load {
    fn start(driver: &LabDriver) -> anyhow::Result<Load> {
        let config = driver.lab()?.writer_config("pgfm-bench-calm")?;
        let mut watches = Vec::new();
        for (name, _) in driver.data_nodes()? {
            let target = driver.target(&name)?;
            watches.push(WriteWatch::start(
                vec![(name, target)],
                Duration::from_millis(10),
            ));
        }
        Ok(Load {
            writer: Writer::start(config, 1),
            watches,
        })
    }

    fn writable(&self) -> Vec<Writable> {
        self.watches.iter().flat_map(WriteWatch::so_far).collect()
    }

    fn finish(self) -> (Vec<(i64, Instant)>, Vec<Writable>) {
        let acks = self.writer.finish();
        let writable = self
            .watches
            .into_iter()
            .flat_map(WriteWatch::finish)
            .collect();
        (acks, writable)
    }
}

/// What the stress loop keeps as it goes.
struct Run {
    started: Instant,
    generations: (u64, u64),
    coordinator: Option<String>,
    coordinator_changes: usize,
    pauses: Vec<Pause>,
    logs: Logs,
    notes: Vec<String>,
}

impl Run {
    fn numbers(&self, load: &Load, lost: Option<usize>) -> Numbers {
        Numbers::of(&Observed {
            started: self.started,
            now: Instant::now(),
            pauses: &self.pauses,
            generations: self.generations,
            events: &self.logs.events(),
            acks: &load.writer.acknowledged(),
            writable: &load.writable(),
            lost,
            coordinator_changes: self.coordinator_changes,
        })
    }

    fn note(&mut self, json: bool, text: String) {
        if !json {
            println!("  {text}");
        }
        self.notes.push(text);
    }
}

/// The bench on a lab that is up: a healthy cluster, the load, the hogs, the stress until
/// the time is up (or Ctrl-C), the measures.
async fn soak(driver: &LabDriver, args: &CalmBench, plan: &Plan) -> anyhow::Result<Outcome> {
    let healthy = match wait_rejoined(driver, Duration::from_secs(120)).await {
        Ok(status) => status,
        Err(missing) => bail!(
            "the cluster was not healthy with every standby streaming before the stress ({})",
            missing.join("; ")
        ),
    };
    let primary = healthy.primary.clone().context("no primary")?;
    create_bench_table(driver, &primary).await?;
    let load = Load::start(driver)?;
    warm_up(&load.writer).await?;
    let mut hogs = Hogs::start(plan.hogs)?;
    let mut run = Run {
        started: Instant::now(),
        generations: (healthy.generation, healthy.generation),
        coordinator: healthy.coordinator.clone(),
        coordinator_changes: 0,
        pauses: Vec::new(),
        logs: Logs::from_now(&driver.lab()?),
        notes: Vec::new(),
    };
    if !args.json {
        println!(
            "stress begins at {} (hogs: pids {:?}); primary {primary}, generation {}",
            humantime::format_rfc3339_seconds(SystemTime::now()),
            hogs.pids(),
            healthy.generation
        );
    }
    let interrupted = tokio::select! {
        done = stress(driver, args, plan, &mut run, &load, &mut hogs) => {
            done?;
            false
        }
        _ = tokio::signal::ctrl_c() => true,
    };
    // Measured on a quiet machine: reading the rows back is no part of the stress.
    drop(hogs);
    if interrupted {
        run.note(
            args.json,
            "interrupted (Ctrl-C): the stress ended early".into(),
        );
    }
    // Writes go on a second past the stress, so that the last gap is measured whole.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = Instant::now();
    let (acks, writable) = load.finish();
    let last = driver
        .wait(
            "a primary after the stress",
            Duration::from_secs(120),
            |s| s.primary.clone().map(|p| (p, s.generation)),
        )
        .await?;
    run.generations.1 = run.generations.1.max(last.1);
    let ids: Vec<i64> = acks.iter().map(|(id, _)| *id).collect();
    let kept = kept_ids(driver, &last.0, &ids).await?;
    run.logs.scan();
    let promotions: Vec<HistoryEntry> = match driver.history(Duration::from_secs(2)).await {
        Ok(history) => history
            .into_iter()
            .filter(|h| h.generation > run.generations.0 && !h.cancelled)
            .collect(),
        Err(e) => {
            run.notes
                .push(format!("the history could not be read: {e:#}"));
            Vec::new()
        }
    };
    let numbers = Numbers::of(&Observed {
        started: run.started,
        now: end,
        pauses: &run.pauses,
        generations: run.generations,
        events: &run.logs.events(),
        acks: &acks,
        writable: &writable,
        lost: Some(ids.len() - kept.len()),
        coordinator_changes: run.coordinator_changes,
    });
    Ok(Outcome {
        numbers,
        promotions,
        events: run.logs.found,
        pauses: run.pauses,
        notes: run.notes,
        interrupted,
    })
}

/// The stress itself, until `--minutes` have passed: wait a drawn time, find the primary,
/// stop its agent for a drawn pause, resume it; a progress line every minute.
async fn stress(
    driver: &LabDriver,
    args: &CalmBench,
    plan: &Plan,
    run: &mut Run,
    load: &Load,
    hogs: &mut Hogs,
) -> anyhow::Result<()> {
    let deadline = run.started + Duration::from_secs(plan.minutes * 60);
    let mut next_minute = 1;
    for n in 0.. {
        let step = draw(plan.seed, n, plan.max_pause_ms);
        let wake = (Instant::now() + Duration::from_millis(step.wait_ms)).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
        if Instant::now() >= deadline {
            break;
        }
        if let Some((primary, coordinator)) = find_primary(driver, args, run).await? {
            pause(driver, run, &primary, coordinator, step.pause_ms).await?;
        }
        if run.started.elapsed() >= Duration::from_secs(next_minute * 60) {
            report(args, run, load, hogs, next_minute);
            next_minute += 1;
        }
    }
    // The last minute's line, unless the last pause already printed it.
    if next_minute <= plan.minutes {
        report(args, run, load, hogs, plan.minutes);
    }
    Ok(())
}

/// The primary to pause now, and whether it also coordinates; None when there is none to
/// pause. Counts what changed since the last look (a new generation, a new coordinator),
/// starts again any node whose host its watchdog reset, and after either waits until every
/// node has rejoined before the stress goes on.
async fn find_primary(
    driver: &LabDriver,
    args: &CalmBench,
    run: &mut Run,
) -> anyhow::Result<Option<(String, bool)>> {
    let status: ClusterStatus = match driver.status_within(Duration::from_secs(1)).await {
        Ok(status) => status,
        Err(e) => {
            run.note(args.json, format!("no agent answered ({e:#}); no pause"));
            return Ok(None);
        }
    };
    let mut broken = false;
    if status.generation > run.generations.1 {
        run.generations.1 = status.generation;
        broken = true;
        run.note(
            args.json,
            format!(
                "PROMOTION: generation {}, primary {}",
                status.generation,
                status.primary.as_deref().unwrap_or("none")
            ),
        );
    }
    if status.coordinator.is_some() && status.coordinator != run.coordinator {
        run.coordinator_changes += usize::from(run.coordinator.is_some());
        run.coordinator = status.coordinator.clone();
    }
    for node in driver.lab()?.nodes {
        if !driver.agent_running(&node.name)? {
            // Its watchdog reset the host (the logs say so): it boots again, as a host does.
            driver.start(&node.name)?;
            broken = true;
            run.note(
                args.json,
                format!("{}'s host was reset: started again", node.name),
            );
        }
    }
    let status = if broken || status.primary.is_none() {
        let since = Instant::now();
        match wait_rejoined(driver, Duration::from_secs(120)).await {
            Ok(status) => {
                run.note(
                    args.json,
                    format!(
                        "every node rejoined {:.1} s later; the stress goes on",
                        since.elapsed().as_secs_f64()
                    ),
                );
                status
            }
            Err(missing) => bail!(
                "the cluster did not recover within 120 s: {}",
                missing.join("; ")
            ),
        }
    } else {
        status
    };
    Ok(status.primary.clone().map(|p| {
        let coordinates = status.coordinator.as_ref() == Some(&p);
        (p, coordinates)
    }))
}

/// Stop `node`'s agent for `pause_ms`, then resume it; the pause is recorded.
async fn pause(
    driver: &LabDriver,
    run: &mut Run,
    node: &str,
    coordinator: bool,
    pause_ms: u64,
) -> anyhow::Result<()> {
    let lab = driver.lab()?;
    let Some(agent) = crate::host::agent(&driver.dir, lab.node(node)?) else {
        return Ok(());
    };
    let wall = SystemTime::now();
    let Some(paused) = Paused::stop(agent) else {
        return Ok(());
    };
    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    let held = paused.resume();
    run.pauses.push(Pause {
        node: node.to_string(),
        wall,
        drawn_ms: pause_ms,
        held,
        coordinator,
    });
    Ok(())
}

/// A progress line: the numbers so far, the load average and the hogs still running.
fn report(args: &CalmBench, run: &mut Run, load: &Load, hogs: &mut Hogs, minute: u64) {
    run.logs.scan();
    let numbers = run.numbers(load, None);
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok());
    let running = hogs.running();
    if args.json {
        let line = serde_json::json!({"minute": minute, "numbers": numbers, "load1": load1, "hogs_running": running});
        println!("{line}");
        return;
    }
    println!(
        "minute {minute} ({} s): {} pauses (median {}, max {}); promotions {}, fences {}, \
         watchdog resets {}, two-writer moments {}; {} writes acknowledged, longest gap {}; \
         load {}, {running} hogs",
        numbers.elapsed_s,
        numbers.pauses,
        ms_text(numbers.pause_median_ms),
        ms_text(numbers.pause_max_ms),
        numbers.promotions,
        numbers.fences,
        numbers.watchdog_resets,
        numbers.two_writer_moments,
        numbers.acknowledged,
        secs(numbers.write_gap_ms),
        load1.map_or("?".into(), |l| format!("{l:.1}")),
    );
}

fn ms_text(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{ms} ms"))
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

/// This process's nice value (from /proc/self/stat), which the hogs share.
fn nice() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, nice 19.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(16)?.parse().ok()
}

/// What the bench runs, on what, with which settings, and what it measures.
fn print_header(args: &CalmBench, plan: &Plan) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "pgfm bench calm: {} minutes of a slow machine under a healthy primary, seed {}",
        plan.minutes, plan.seed
    );
    println!("  rerun: {}", args.rerun(plan));
    println!(
        "  lab: {} data nodes + witness on this machine ({cores} cores), {}; {}",
        args.data_nodes,
        if args.netns {
            "each in its own network namespace, the writer through the virtual IP"
        } else {
            "on 127.0.0.1, the writer through a multi-host connection string"
        },
        match args.synchronous.as_deref() {
            Some(mode) if mode != "off" => format!("synchronous replication {mode}"),
            _ => "asynchronous replication".to_string(),
        },
    );
    println!(
        "  timing (read from {}): {}; watchdog {}{}",
        plan.timing_from.display(),
        plan.timing,
        plan.watchdog,
        plan.watchdog_timeout_s
            .map_or(String::new(), |s| format!(" (timeout {s} s)")),
    );
    println!(
        "  stress: {} CPU hogs (busy sh loops at nice {}, as the lab's agents and PostgreSQL); \
         every {}-{} s (drawn) the primary's agent alone is stopped (SIGSTOP; its PostgreSQL \
         runs on) for a pause drawn uniformly from 0-{} ms{}, then resumed",
        plan.hogs,
        nice().map_or("?".into(), |n| n.to_string()),
        measure::WAIT_MS.0 / 1000,
        measure::WAIT_MS.1 / 1000,
        plan.max_pause_ms,
        if args.max_pause.is_none() {
            " (lease - safety margin - 1 s)"
        } else {
            ""
        },
    );
    if let Some(note) = measure::watchdog_note(plan.max_pause_ms, plan.watchdog_timeout_s) {
        println!("  note: {note}");
    }
    println!(
        "  measures: promotions = generations gained; fences = \"fencing PostgreSQL\" in an \
         agent's log; watchdog resets = \"FIRED\" in a watchdog driver's log; two-writer \
         moments = two data nodes' pg_is_in_recovery() false at once (each asked every 10 ms); \
         longest gap between acknowledged writes (one INSERT every 10 ms); lost = acknowledged, \
         missing from the final primary"
    );
}

/// The summary, and the story of anything that should not have happened.
fn print_summary(args: &CalmBench, plan: &Plan, o: &Outcome) {
    let n = &o.numbers;
    println!();
    println!(
        "{} of stress{}: {} pauses of the primary's agent (median {}, max {}; {} of them of \
         the coordinator too), {} coordinator changes",
        secs(n.elapsed_s * 1000),
        if o.interrupted { " (interrupted)" } else { "" },
        n.pauses,
        ms_text(n.pause_median_ms),
        ms_text(n.pause_max_ms),
        n.pauses_of_coordinator,
        n.coordinator_changes,
    );
    println!(
        "promotions: {}; primary fences: {}; watchdog resets: {}; two-writer moments: {}",
        n.promotions, n.fences, n.watchdog_resets, n.two_writer_moments
    );
    println!(
        "writes: {} acknowledged, {} lost; longest gap between acknowledged writes: {}",
        n.acknowledged,
        n.lost.map_or("?".into(), |l| l.to_string()),
        secs(n.write_gap_ms)
    );
    for h in &o.promotions {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(h.at_unix_ms);
        println!(
            "  promoted: generation {} at {}, {} -> {}: {}{}",
            h.generation,
            humantime::format_rfc3339_millis(at),
            h.from.as_deref().unwrap_or("none"),
            h.to,
            h.reason,
            after_pause(&o.pauses, Some(at))
        );
    }
    for e in o.events.iter().take(20) {
        println!(
            "  {}: {}{}",
            e.node,
            e.line,
            after_pause(&o.pauses, logged_at(&e.line))
        );
    }
    if o.events.len() > 20 {
        println!("  ... and {} more in the lab's logs", o.events.len() - 20);
    }
    println!(
        "verdict: {} (timing: {}; {} hogs; max pause {} ms; seed {})",
        if n.calm() {
            "calm: no promotion, fence, reset, lost write or second writer"
        } else {
            "NOT CALM"
        },
        plan.timing,
        plan.hogs,
        plan.max_pause_ms,
        plan.seed
    );
    println!("rerun: {}", args.rerun(plan));
}

/// `(N ms after a pause of M ms of NODE's agent began)`, for an event logged `at`.
fn after_pause(pauses: &[Pause], at: Option<SystemTime>) -> String {
    let Some((p, since)) = at.and_then(|at| pause_before(pauses, at)) else {
        return String::new();
    };
    format!(
        " ({} ms after a pause of {} ms of {}'s agent began, drawn {} ms)",
        since.as_millis(),
        p.held.as_millis(),
        p.node,
        p.drawn_ms
    )
}
