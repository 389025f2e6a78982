//! `pgfm switchover`, `pgfm maintenance NODE on|off`, `pgfm restart`, `pgfm reinit` and
//! `pgfm reload`:
//! ask the agent,
//! then follow the cluster's status until what was asked is done, rolled back, or the
//! deadline passes.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pgfm_api::{
    ApiClient, ApiError, ClusterStatus, DbStatus, MaintenanceRequest, NodeKindStatus,
    SwitchoverStarted,
};
use tokio::runtime::Runtime;

/// How long the CLI follows a switchover, or a node leaving or entering maintenance.
const DEADLINE: Duration = Duration::from_secs(120);

/// How a switchover the CLI followed ended.
enum Ended {
    /// `done` held of the status, in this generation.
    Done(u64),
    /// Rolled back or cancelled: the history's reason.
    RolledBack(String),
}

/// The cancelled switchovers in `generation`'s history (0 when the agent did not answer).
fn cancelled_in(rt: &Runtime, client: &ApiClient, generation: u64) -> Vec<pgfm_api::HistoryEntry> {
    rt.block_on(client.history())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.cancelled && e.generation == generation)
        .collect()
}

/// The cancellations already in the history of the current generation: those after them
/// are the switchover's about to be asked.
fn cancelled_before(rt: &Runtime, client: &ApiClient) -> Option<(u64, usize)> {
    let generation = rt.block_on(client.status()).ok()?.generation;
    Some((generation, cancelled_in(rt, client, generation).len()))
}

/// Follow `started` until `done` holds of the status, or it was rolled back (a cancellation
/// of its generation after the `before` ones).
fn follow_switchover(
    rt: &Runtime,
    client: &ApiClient,
    started: &SwitchoverStarted,
    before: Option<(u64, usize)>,
    done: impl Fn(&ClusterStatus) -> bool,
) -> anyhow::Result<Ended> {
    let cancelled_before = match before {
        Some((g, n)) if g == started.generation => n,
        _ => 0,
    };
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    loop {
        if let Ok(status) = rt.block_on(client.status()) {
            if done(&status) {
                return Ok(Ended::Done(status.generation));
            }
            if status.generation == started.generation {
                let cancelled = cancelled_in(rt, client, started.generation);
                if cancelled.len() > cancelled_before {
                    let reason = cancelled.last().map(|e| e.reason.clone());
                    return Ok(Ended::RolledBack(reason.unwrap_or_default()));
                }
            }
            last = status.problems.join("; ");
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the switchover did not complete within {} s; last seen: {last}",
                DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `started` ended with its target the primary of the next generation and its old
/// primary as `old` says.
fn switched(
    status: &ClusterStatus,
    started: &SwitchoverStarted,
    old: impl Fn(&pgfm_api::NodeStatus) -> bool,
) -> bool {
    status.generation == started.generation + 1
        && status.primary.as_deref() == Some(started.to.as_str())
        && status
            .nodes
            .iter()
            .find(|n| n.name == started.from)
            .is_some_and(old)
}

/// `pgfm switchover`: ask, then follow the cluster until the old primary streams from the
/// new one.
pub(crate) fn switchover(client: &ApiClient, to: Option<String>) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    let started_at = Instant::now();
    let before = cancelled_before(&rt, client);
    let started = match rt.block_on(client.switchover(to)) {
        Ok(started) => started,
        Err(ApiError::Failed {
            status: 409,
            message,
            ..
        }) => {
            eprintln!("pgfm: switchover refused, nothing was changed: {message}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "Switchover from {} to {} under way (generation {} -> {})...",
        started.from,
        started.to,
        started.generation,
        started.generation + 1
    );
    let streams =
        |n: &pgfm_api::NodeStatus| n.kind == NodeKindStatus::Standby && n.in_sync == Some(true);
    match follow_switchover(&rt, client, &started, before, |s| {
        switched(s, &started, streams)
    })? {
        Ended::Done(generation) => {
            println!(
                "Switchover complete in {:.1} s: {} is the primary of generation {}; {} streams from it.",
                started_at.elapsed().as_secs_f64(),
                started.to,
                generation,
                started.from
            );
            Ok(ExitCode::SUCCESS)
        }
        Ended::RolledBack(reason) => {
            eprintln!("pgfm: {reason}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Where `node` stands, once it is where `pgfm maintenance` asked (`on`, `keep_running`):
/// what to say then. Under maintenance: its PostgreSQL stopped (or, kept running, out of
/// every synchronous rule), or its agent down (nothing starts it). Out of it: streaming in
/// sync, the primary, or waiting for the operator (`pgfm resume`).
fn arrived(status: &ClusterStatus, node: &str, on: bool, keep_running: bool) -> Option<String> {
    let n = status.nodes.iter().find(|n| n.name == node)?;
    let up = n.agent == pgfm_api::Up::Up;
    let synchronous = status.synchronous.as_ref().is_some_and(|s| {
        s.committed
            .iter()
            .chain(&s.waiting_for)
            .any(|name| name == node)
    });
    match (on, keep_running) {
        (true, _) if n.kind != NodeKindStatus::Maintenance => None,
        (true, _) if !up => Some(format!(
            "its agent is down, so whether its PostgreSQL runs is not known: nothing will \
             start it, and its agent stops it when it is back, until pgfm maintenance {node} off"
        )),
        (true, true) if n.db == DbStatus::Up && !synchronous => Some(
            "PostgreSQL keeps running, out of failover and synchronous replication".to_string(),
        ),
        (true, true) if n.db == DbStatus::Down => {
            Some("its PostgreSQL is down, and pgfm leaves it to you".to_string())
        }
        (true, false) if n.db == DbStatus::Down => Some(format!(
            "PostgreSQL is stopped and stays stopped until pgfm maintenance {node} off"
        )),
        (true, _) => None,
        (false, _) if n.kind == NodeKindStatus::Standby && n.in_sync == Some(true) => {
            Some("it streams in sync again".to_string())
        }
        (false, _) if n.kind == NodeKindStatus::Primary => Some("it is the primary".to_string()),
        (false, _) if n.info.contains("pgfm resume") => {
            Some(format!("it waits for you: {}", n.info))
        }
        (false, _) => None,
    }
}

/// `pgfm maintenance NODE on|off`: ask, then follow the cluster until the node is where
/// it was asked to be (`arrived`), after the switchover away from it when it was the
/// primary.
pub(crate) fn maintenance(
    client: &ApiClient,
    request: MaintenanceRequest,
) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    Ok(match change_maintenance(&rt, client, request)? {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}

/// `pgfm maintenance`'s steps, said as they go: whether the node got where it was asked to
/// be (false: refused, or rolled back, with the reason said).
fn change_maintenance(
    rt: &Runtime,
    client: &ApiClient,
    request: MaintenanceRequest,
) -> anyhow::Result<bool> {
    let started_at = Instant::now();
    let before = cancelled_before(rt, client);
    let node = request.node.clone();
    let (on, keep_running) = (request.on, request.keep_running);
    let started = match rt.block_on(client.maintenance(&request)) {
        Ok(started) => started,
        Err(ApiError::Failed {
            status: 409,
            message,
            ..
        }) => {
            eprintln!("pgfm: maintenance refused, nothing was changed: {message}");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}.", started.message);
    let there = |s: &ClusterStatus| arrived(s, &node, on, keep_running);
    if let Some(sw) = &started.switchover {
        println!(
            "Switchover from {} to {} under way (generation {} -> {})...",
            sw.from,
            sw.to,
            sw.generation,
            sw.generation + 1
        );
        let done = |s: &ClusterStatus| switched(s, sw, |_| true) && there(s).is_some();
        if let Ended::RolledBack(reason) = follow_switchover(rt, client, sw, before, done)? {
            // Rolled back because the primary stopped renewing its lease, the maintenance
            // stays (`ClusterState::cancel_switchover`).
            let still = rt.block_on(client.status()).ok().is_some_and(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.name == node && n.maintenance.is_some())
            });
            let what = if still {
                "it stays under maintenance and will stay stopped once it is no longer the \
                 primary (pgfm cluster-status says what to do)"
            } else {
                "it is not under maintenance (the switchover and the maintenance are one step)"
            };
            eprintln!("pgfm: {reason}; {node}: {what}");
            return Ok(false);
        }
    }
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    let said = loop {
        if let Ok(status) = rt.block_on(client.status()) {
            if let Some(said) = there(&status) {
                break said;
            }
            last = status
                .nodes
                .iter()
                .find(|n| n.name == node)
                .map(|n| n.info.clone())
                .unwrap_or_default();
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{node} did not get there within {} s (the change is committed; pgfm \
                 cluster-status shows where it is); last seen: {last}",
                DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started_at.elapsed().as_secs_f64();
    let state = if on {
        "under maintenance"
    } else {
        "out of maintenance"
    };
    println!("{node} is {state} ({took:.1} s): {said}.");
    Ok(true)
}

/// `pgfm restart [NODE ...] [--pending]`: restart PostgreSQL on the data nodes named (all
/// of them by default; with `--pending`, those with a parameter pending restart), one at
/// a time — the standbys first, each back and streaming in sync before the next, then the
/// primary, by a switchover to a standby in sync. Each node is restarted by going under
/// maintenance and out of it: it leaves the synchronous standbys before it stops (the
/// synchronous minimum is kept: commits wait rather than have fewer copies), and the
/// primary hands over first, so writes pause for one switchover only. Stops at the first
/// step that fails, saying where.
pub(crate) fn restart(
    client: &ApiClient,
    named: Vec<String>,
    pending: bool,
    in_place: bool,
) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    let started_at = Instant::now();
    let status = rt.block_on(client.status())?;
    let refuse = |why: String| {
        eprintln!("pgfm: restart refused, nothing was changed: {why}");
        Ok(ExitCode::from(1))
    };
    let Some(primary) = status.primary.clone() else {
        return refuse("the cluster has no running primary: see pgfm cluster-status".into());
    };
    let data: Vec<&pgfm_api::NodeStatus> = status
        .nodes
        .iter()
        .filter(|n| n.pg_port.is_some())
        .collect();
    for name in &named {
        let Some(n) = data.iter().find(|n| n.name == *name) else {
            let names: Vec<&str> = data.iter().map(|n| n.name.as_str()).collect();
            return refuse(format!(
                "{name} is not a data node (they are {})",
                names.join(", ")
            ));
        };
        if !matches!(n.kind, NodeKindStatus::Primary | NodeKindStatus::Standby) {
            return refuse(format!(
                "{name} is not running as the primary or a standby ({:?}: {}); pgfm \
                 cluster-status says why",
                n.kind, n.info
            ));
        }
    }
    let mut chosen: Vec<&pgfm_api::NodeStatus> = data
        .into_iter()
        .filter(|n| named.is_empty() || named.contains(&n.name))
        .filter(|n| matches!(n.kind, NodeKindStatus::Primary | NodeKindStatus::Standby))
        .filter(|n| !pending || !n.pending_restart.is_empty())
        .collect();
    // The standbys first, by name; the primary last.
    chosen.sort_by_key(|n| (n.name == primary, n.name.clone()));
    if chosen.is_empty() {
        println!(
            "Nothing to restart{}.",
            if pending {
                ": no node has a parameter pending restart"
            } else {
                ""
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<String> = chosen.iter().map(|n| n.name.clone()).collect();
    println!(
        "Restarting PostgreSQL on {}, in that order.",
        names.join(", ")
    );
    for (i, name) in names.iter().enumerate() {
        let how = match (*name == primary, in_place) {
            (true, false) => " (the primary: it switches over first)",
            (true, true) => " (the primary, in place: writes pause for the restart)",
            _ => "",
        };
        println!("== {name} ({} of {}){how}", i + 1, names.len());
        if *name == primary && in_place {
            if !restart_in_place(&rt, client, name, status.generation)? {
                eprintln!(
                    "pgfm: restart stopped at {name}: {i} of {} restarted ({})",
                    names.len(),
                    names[..i].join(", ")
                );
                return Ok(ExitCode::from(1));
            }
            continue;
        }
        let step = |on: bool| MaintenanceRequest {
            node: name.clone(),
            on,
            keep_running: false,
            force: true,
            by: super::settings::who(),
        };
        if !change_maintenance(&rt, client, step(true))? {
            eprintln!(
                "pgfm: restart stopped at {name}: {} of {} restarted ({})",
                i,
                names.len(),
                names[..i].join(", ")
            );
            return Ok(ExitCode::from(1));
        }
        if !change_maintenance(&rt, client, step(false))? {
            eprintln!(
                "pgfm: restart stopped at {name}, which is still under maintenance (pgfm \
                 maintenance {name} off starts it): {i} of {} restarted",
                names.len()
            );
            return Ok(ExitCode::from(1));
        }
    }
    println!(
        "Restarted {} in {:.1} s.",
        names.join(", "),
        started_at.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `pgfm restart --in-place` of the primary `name` of `generation`: asked (committed), then
/// followed until it runs as the primary again after its restart, in the same generation.
/// False, having said why, when refused or not back by the deadline.
fn restart_in_place(
    rt: &Runtime,
    client: &ApiClient,
    name: &str,
    generation: u64,
) -> anyhow::Result<bool> {
    let request = pgfm_api::RestartRequest {
        node: name.to_string(),
        by: super::settings::who(),
    };
    let asked = match rt.block_on(client.restart(&request)) {
        Ok(asked) => asked,
        Err(ApiError::Failed {
            status: 409,
            message,
            ..
        }) => {
            eprintln!("pgfm: restart of {name} refused, nothing was changed: {message}");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let count = asked.asked.get(name).copied().unwrap_or(u64::MAX);
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    loop {
        if let Ok(status) = rt.block_on(client.status()) {
            if status.generation != generation {
                eprintln!(
                    "pgfm: the cluster failed over during the restart of {name} (generation {}, \
                     primary {}): see pgfm history",
                    status.generation,
                    status.primary.as_deref().unwrap_or("none")
                );
                return Ok(false);
            }
            if let Some(n) = status.nodes.iter().find(|n| n.name == name) {
                if n.restarted >= count && n.kind == NodeKindStatus::Primary && n.db == DbStatus::Up
                {
                    println!("{name} restarted in place, the primary of generation {generation}");
                    return Ok(true);
                }
                last = n.info.clone();
            }
        }
        if Instant::now() >= deadline {
            eprintln!(
                "pgfm: {name} is not back as the primary within {} s (last: {last}); the \
                 restart stays asked: pgfm cluster-status shows where it is",
                DEADLINE.as_secs()
            );
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long `pgfm reinit` follows a re-clone: a base backup of a large database takes a
/// while.
const REINIT_DEADLINE: Duration = Duration::from_secs(3600);

/// `pgfm reinit NODE`: ask, then follow the node, saying each step it reports, until it
/// streams in sync from the primary again.
pub(crate) fn reinit(client: &ApiClient, node: String) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    let started_at = Instant::now();
    let request = pgfm_api::ReinitRequest {
        node: node.clone(),
        by: super::settings::who(),
    };
    match rt.block_on(client.reinit(&request)) {
        Ok(m) => println!("{}.", m.message),
        Err(ApiError::Failed {
            status: 409,
            message,
            ..
        }) => {
            eprintln!("pgfm: reinit refused, nothing was changed: {message}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    }
    let deadline = Instant::now() + REINIT_DEADLINE;
    let mut said = String::new();
    // Seen on its way (stopping, stopped, cloning), then streaming in sync again: the
    // status right after the request may still show it as it was.
    let mut left = false;
    loop {
        if let Ok(status) = rt.block_on(client.status()) {
            if let Some(n) = status.nodes.iter().find(|n| n.name == node) {
                let cloning = n.info.contains("re-clone") || n.info.contains("cloning");
                left |= cloning || n.db == DbStatus::Down;
                let back = n.kind == NodeKindStatus::Standby && n.in_sync == Some(true);
                if left && back && !cloning {
                    break;
                }
                if !n.info.is_empty() && n.info != said {
                    println!("  {}: {}", node, n.info);
                    said = n.info.clone();
                }
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{node} was not streaming in sync within {} s (the re-clone is asked; pgfm \
                 cluster-status shows where it is); last seen: {said}",
                REINIT_DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{node} is re-cloned and streams in sync ({:.1} s); its old data directory is kept \
         aside as data_dir.pgfm-old.",
        started_at.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// How long `pgfm reload` waits for the agents to carry it out.
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

/// `pgfm reload [NODE ...]`: ask (committed), then wait until each node's agent has
/// reloaded its PostgreSQL, saying what still waits for a restart. A node whose PostgreSQL
/// is down is named (it reads its configuration when it starts); one not done by the
/// deadline too, and the exit is 2.
pub(crate) fn reload(client: &ApiClient, nodes: Vec<String>) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    let request = pgfm_api::ReloadRequest {
        nodes,
        by: super::settings::who(),
    };
    let started = match rt.block_on(client.reload(&request)) {
        Ok(started) => started,
        Err(ApiError::Failed {
            status: 409,
            message,
            ..
        }) => {
            eprintln!("pgfm: reload refused, nothing was changed: {message}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}.", started.message);
    let deadline = Instant::now() + RELOAD_DEADLINE;
    let mut waiting = started.asked.clone();
    while !waiting.is_empty() {
        if let Ok(status) = rt.block_on(client.status()) {
            waiting.retain(|name, asked| {
                let Some(n) = status.nodes.iter().find(|n| n.name == *name) else {
                    println!("{name}: no longer a member");
                    return false;
                };
                if n.reloaded >= *asked {
                    let pending = match n.pending_restart.as_slice() {
                        [] => String::new(),
                        names => format!(" (pending restart: {})", names.join(", ")),
                    };
                    println!("{name}: reloaded{pending}");
                    return false;
                }
                if n.db != DbStatus::Up {
                    println!(
                        "{name}: PostgreSQL is not running: it reads its configuration when it \
                         starts"
                    );
                    return false;
                }
                true
            });
        }
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = waiting.keys().map(String::as_str).collect();
            eprintln!(
                "pgfm: {} did not reload within {} s (is its agent running? pgfm cluster-status \
                 shows it); the reload stays asked and is carried out when it can be",
                names.join(", "),
                RELOAD_DEADLINE.as_secs()
            );
            return Ok(ExitCode::from(2));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--at TIME` as typed: an RFC 3339 time, UTC (`2026-12-24T03:00:00Z`, `2026-12-24
/// 03:00:00`), or a delay from now (`+30m`); ms since the epoch.
fn parse_at(text: &str, now: std::time::SystemTime) -> Result<u64, String> {
    let text = text.trim();
    let at = match text.strip_prefix('+') {
        Some(delay) => humantime::parse_duration(delay.trim())
            .map(|d| now + d)
            .map_err(|e| format!("--at {text:?}: {e} (a delay is like +30m or +2h)"))?,
        None => humantime::parse_rfc3339_weak(text).map_err(|e| {
            format!(
                "--at {text:?}: {e} (give a UTC time like 2026-12-24T03:00:00Z, or a delay like \
                 +30m)"
            )
        })?,
    };
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("--at {text:?} is before 1970"))
}

/// `pgfm switchover [--to NODE] --at TIME`: scheduled (committed); the coordinator starts
/// it then. Exits 1 when refused or the time cannot be read.
pub(crate) fn schedule_switchover(
    client: &ApiClient,
    to: Option<String>,
    at: &str,
) -> anyhow::Result<ExitCode> {
    let at_unix_ms = match parse_at(at, std::time::SystemTime::now()) {
        Ok(ms) => ms,
        Err(e) => {
            eprintln!("pgfm: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let request = pgfm_api::ScheduleRequest {
        to,
        at_unix_ms,
        by: super::settings::who(),
    };
    super::refusable(super::runtime()?.block_on(client.schedule_switchover(&request)))
}

/// `pgfm restart [NODE ...] [--pending] [--in-place] --at TIME`: committed; the
/// coordinator carries it out then.
pub(crate) fn schedule_restart(
    client: &ApiClient,
    mut request: pgfm_api::ScheduleRestartRequest,
    at: &str,
) -> anyhow::Result<ExitCode> {
    request.at_unix_ms = match parse_at(at, std::time::SystemTime::now()) {
        Ok(ms) => ms,
        Err(e) => {
            eprintln!("pgfm: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    super::refusable(super::runtime()?.block_on(client.schedule_restart(&request)))
}

/// `pgfm restart --cancel`.
pub(crate) fn cancel_restart(client: &ApiClient) -> anyhow::Result<ExitCode> {
    let request = pgfm_api::CancelRequest {
        by: super::settings::who(),
    };
    super::refusable(super::runtime()?.block_on(client.cancel_restart(&request)))
}

#[cfg(test)]
mod tests {
    use super::parse_at;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_time_is_read_as_utc_or_a_delay_and_a_bad_one_says_what_to_give() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_at("+30m", now), Ok(1_800_001_800_000));
        assert_eq!(parse_at("2027-01-15T08:00:00Z", now), Ok(1_800_000_000_000));
        assert_eq!(parse_at("2027-01-15 08:00:00", now), Ok(1_800_000_000_000));
        let bad = parse_at("tomorrow", now).unwrap_err();
        assert!(
            bad.contains("give a UTC time like 2026-12-24T03:00:00Z"),
            "{bad}"
        );
        let bad = parse_at("+soon", now).unwrap_err();
        assert!(bad.contains("a delay is like +30m"), "{bad}");
    }
}
