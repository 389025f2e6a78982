//! A lab node as a host: every process on it (its agent and what the agent started, its
//! postmaster and every child — backends call setsid(), so no process group holds them),
//! frozen, thawed or killed together; and its hardware watchdog, played by
//! `pgfm lab watchdog-driver`, one per data node.
//!
//! The driver makes the FIFO `DIR/<node>/watchdog` that the node's agent is configured with
//! (`[watchdog] device`) and reads the lines `arm SECONDS`, `feed` and `disarm` from it,
//! keeping a deadline as the kernel's watchdog keeps its timer. It holds the FIFO open for
//! reading and writing, so it never sees an end of file: an agent that dies without
//! "disarm" leaves the timer running, as the kernel's does. When the deadline passes it
//! "resets the host": SIGKILL to every process of the node and, in a --netns lab, the
//! node's link down, as `lab kill` does. It is no process of the node itself: `lab freeze`
//! leaves it counting, and only `lab kill` (host death: a new host boots with a new timer)
//! and `lab down` stop it.

use std::io::{Read as _, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use pgfm_postgres::procs::{self, Killed, Proc};

use crate::commands::{find_node, is_our_agent, postmaster_pid, process_alive, read_lab};
use crate::commands::{LabFile, LabNode};
use crate::netns;

/// How often the driver looks at its deadline: it fires at most this late.
const POLL: Duration = Duration::from_millis(20);

/// The FIFO a data node's agent arms.
pub fn watchdog_fifo(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join(node).join("watchdog")
}

/// The node's agent, if it runs: from `agent.pid` (rewritten by every start), else from
/// lab.json, and only if that pid is this node's pgfm agent.
pub(crate) fn agent(lab_dir: &Path, node: &LabNode) -> Option<Proc> {
    live_pid(lab_dir, node, "agent.pid", node.agent_pid, |pid| {
        is_our_agent(pid, node)
    })
    .and_then(|pid| procs::identify(pid as i32))
}

/// Whether the node's agent runs (stopped by `lab freeze` counts as running).
pub(crate) fn agent_running(lab_dir: &Path, node: &LabNode) -> bool {
    agent(lab_dir, node).is_some()
}

/// The pid in the node's `pid_file` (rewritten by every start), else the one lab.json
/// `recorded`, whichever is alive and `ours`.
fn live_pid(
    lab_dir: &Path,
    node: &LabNode,
    pid_file: &str,
    recorded: Option<u32>,
    ours: impl Fn(u32) -> bool,
) -> Option<u32> {
    let from_file = std::fs::read_to_string(lab_dir.join(&node.name).join(pid_file))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    [from_file, recorded]
        .into_iter()
        .flatten()
        .find(|pid| process_alive(*pid) && ours(*pid))
}

fn postmaster(node: &LabNode) -> Option<Proc> {
    procs::identify(postmaster_pid(node.data_dir.as_deref()?)?)
}

/// The node's processes as trees: `(what, root)`.
fn roots(
    lab_dir: &Path,
    node: &LabNode,
    agent_tree: bool,
    postgres: bool,
) -> Vec<(&'static str, Proc)> {
    let mut roots = Vec::new();
    if agent_tree {
        roots.extend(agent(lab_dir, node).map(|p| ("agent", p)));
    }
    if postgres {
        roots.extend(postmaster(node).map(|p| ("postmaster", p)));
    }
    roots
}

/// SIGKILL every process of the node's agent tree and/or its postmaster's tree, as one
/// host dies: all of them are frozen first, so that neither the agent (restarting
/// PostgreSQL) nor the postmaster (forking) acts while the others die. Returns what was
/// killed, in words.
pub fn kill_processes(
    lab_dir: &Path,
    node: &LabNode,
    agent_tree: bool,
    postgres: bool,
) -> Vec<String> {
    let frozen: Vec<(&str, Vec<Proc>)> = roots(lab_dir, node, agent_tree, postgres)
        .into_iter()
        .map(|(what, root)| (what, procs::freeze_tree(root)))
        .collect();
    for (_, tree) in &frozen {
        for p in tree.iter().rev() {
            p.signal(Signal::SIGKILL);
        }
    }
    frozen
        .into_iter()
        .filter(|(_, tree)| !tree.is_empty())
        .map(|(what, procs)| {
            let left = procs::wait_gone(&procs, Duration::from_secs(5));
            Killed { procs, left }.describe(what)
        })
        .collect()
}

/// `lab freeze` (SIGSTOP) and `lab thaw` (SIGCONT): every process of the node, never its
/// watchdog driver. Returns what was signalled, in words.
pub fn signal_processes(lab_dir: &Path, node: &LabNode, signal: Signal) -> Vec<String> {
    roots(lab_dir, node, true, true)
        .into_iter()
        .map(|(what, root)| {
            let tree = if signal == Signal::SIGSTOP {
                procs::freeze_tree(root)
            } else {
                procs::signal_tree(root, signal)
            };
            let below: Vec<String> = tree
                .iter()
                .filter(|p| **p != root)
                .map(Proc::to_string)
                .collect();
            if below.is_empty() {
                format!("{what} (pid {root})")
            } else {
                format!(
                    "{what} (pid {root}) and {} process(es) below it (pids {})",
                    below.len(),
                    below.join(", ")
                )
            }
        })
        .collect()
}

/// `lab freeze --agent-only` (SIGSTOP) and `lab thaw --agent-only` (SIGCONT): the agent
/// process alone, never its children — the postmaster is one (`Postgres::start`), and a
/// stalled agent is exactly one whose PostgreSQL runs on. What was signalled, in words.
pub fn signal_agent(lab_dir: &Path, node: &LabNode, signal: Signal) -> Option<String> {
    let agent = agent(lab_dir, node)?;
    agent
        .signal(signal)
        .then(|| format!("agent (pid {agent}) alone"))
}

/// Whether `pid` is the watchdog driver of this node of this lab.
fn is_our_driver(pid: u32, lab_dir: &Path, node: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        text.contains(" watchdog-driver ")
            && text.contains(&format!(" {node} "))
            && text.contains(&lab_dir.display().to_string())
    })
}

/// The node's running watchdog driver (from `watchdog.pid`, else lab.json).
pub fn driver_pid(lab_dir: &Path, node: &LabNode) -> Option<u32> {
    live_pid(lab_dir, node, "watchdog.pid", node.watchdog_pid, |pid| {
        is_our_driver(pid, lab_dir, &node.name)
    })
}

/// Stop the node's watchdog driver (its host died, or the lab goes down); its pid.
pub fn stop_driver(lab_dir: &Path, node: &LabNode) -> Option<u32> {
    let pid = driver_pid(lab_dir, node)?;
    let proc = procs::identify(pid as i32)?;
    proc.signal(Signal::SIGKILL);
    procs::wait_gone(&[proc], Duration::from_secs(5));
    Some(pid)
}

/// Start the node's watchdog driver detached (own session, output to watchdog.log), in the
/// root network namespace; returns once its FIFO is open for the agent.
pub fn spawn_driver(exe: &Path, lab_dir: &Path, node: &LabNode) -> anyhow::Result<u32> {
    let node_dir = lab_dir.join(&node.name);
    let pid_file = node_dir.join("watchdog.pid");
    let _ = std::fs::remove_file(&pid_file);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node_dir.join("watchdog.log"))?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["lab", "watchdog-driver", &node.name, "--dir"])
        .arg(lab_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure only calls setsid(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting the watchdog driver of {}", node.name))?;
    let pid = child.id();
    // Ready once it wrote its pid: the FIFO is open for reading by then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if written == Some(pid) {
            return Ok(pid);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the watchdog driver of {} exited ({status}); see {}",
                node.name,
                node_dir.join("watchdog.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the watchdog driver of {} (pid {pid}) did not open {} within 10 s",
                node.name,
                watchdog_fifo(lab_dir, &node.name).display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// watchdog.log, one timestamped line at a time.
struct Log {
    file: std::fs::File,
}

impl Log {
    fn say(&mut self, text: &str) {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let _ = writeln!(self.file, "{now} {text}");
    }
}

/// `pgfm lab watchdog-driver NODE --dir DIR`: the node's watchdog until killed.
pub fn run_driver(lab_dir: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let mut lab = read_lab(lab_dir)?;
    let node = find_node(&mut lab, name)?.clone();
    if node.data_dir.is_none() {
        bail!("{name} is a witness: it holds no lease and needs no watchdog");
    }
    let node_dir = lab_dir.join(name);
    let mut log = Log {
        file: std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node_dir.join("watchdog.log"))?,
    };
    let fifo = watchdog_fifo(lab_dir, name);
    // A FIFO left by an earlier driver may still be held by an agent: start afresh.
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("making the FIFO {}", fifo.display()))?;
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600))?;
    // Read and write: with a writer always open (this one) it never reads an end of file.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(&fifo)
        .with_context(|| format!("opening {}", fifo.display()))?;
    std::fs::write(
        node_dir.join("watchdog.pid"),
        format!("{}\n", std::process::id()),
    )?;
    log.say(&format!(
        "watchdog driver of {name} (pid {}) reads {}",
        std::process::id(),
        fifo.display()
    ));
    let mut timer = Timer::default();
    let mut pending = String::new();
    let mut buf = [0u8; 4096];
    loop {
        {
            let mut fds = [nix::poll::PollFd::new(
                reader.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let timeout =
                nix::poll::PollTimeout::try_from(POLL).unwrap_or(nix::poll::PollTimeout::ZERO);
            let _ = nix::poll::poll(&mut fds, timeout);
        }
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", fifo.display())),
            }
        }
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if let Some(said) = timer.command(line.trim(), Instant::now()) {
                log.say(&said);
            }
        }
        if let Some(overdue) = timer.expired(Instant::now()) {
            log.say(&format!(
                "FIRED: the deadline of {name}'s watchdog ({} s) passed {} ms ago: resetting \
                 the host",
                timer.timeout_s,
                overdue.as_millis()
            ));
            let mut killed = kill_processes(lab_dir, &node, true, true);
            if let Some(ns) = &lab.netns {
                match netns::set_link(ns, name, false) {
                    Ok(()) => killed.push("its network link".to_string()),
                    Err(e) => log.say(&format!("taking the link of {name} down failed: {e:#}")),
                }
            }
            if killed.is_empty() {
                log.say("FIRED: nothing of the node was running");
            } else {
                log.say(&format!("FIRED: killed {}", killed.join(", ")));
            }
            timer.deadline = None;
        }
    }
}

/// The driver's deadline, as the kernel keeps its timer.
#[derive(Debug, Default)]
struct Timer {
    deadline: Option<Instant>,
    timeout_s: u64,
}

impl Timer {
    /// Apply one line; what to log, if anything (feeds are not logged).
    fn command(&mut self, line: &str, now: Instant) -> Option<String> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("arm"), Some(seconds), None) => match seconds.parse::<u64>() {
                Ok(s) if s > 0 => {
                    self.timeout_s = s;
                    self.deadline = Some(now + Duration::from_secs(s));
                    Some(format!("armed: {s} s"))
                }
                _ => Some(format!(
                    "ignored {line:?}: the timeout must be whole seconds > 0"
                )),
            },
            (Some("feed"), None, None) => match self.deadline {
                Some(_) => {
                    self.deadline = Some(now + Duration::from_secs(self.timeout_s));
                    None
                }
                None => Some("ignored a feed: not armed".to_string()),
            },
            (Some("disarm"), None, None) => {
                let was = self.deadline.take();
                Some(match was {
                    Some(at) => format!(
                        "disarmed ({} ms before the deadline)",
                        at.saturating_duration_since(now).as_millis()
                    ),
                    None => "disarmed (was not armed)".to_string(),
                })
            }
            (None, _, _) => None,
            _ => Some(format!(
                "ignored {line:?} (expected arm SECONDS, feed or disarm)"
            )),
        }
    }

    /// How long ago the deadline passed, if it did.
    fn expired(&self, now: Instant) -> Option<Duration> {
        self.deadline
            .filter(|at| now >= *at)
            .map(|at| now.duration_since(at))
    }
}

/// The lab's watchdog drivers, started for every data node that has none running.
pub fn start_drivers(exe: &Path, lab: &mut LabFile) -> anyhow::Result<()> {
    let dir = lab.dir.clone();
    for node in lab.nodes.iter_mut().filter(|n| n.data_dir.is_some()) {
        if driver_pid(&dir, node).is_none() {
            node.watchdog_pid = Some(spawn_driver(exe, &dir, node)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfm_agent::config::{Config, WatchdogConfig};
    use pgfm_core::WatchdogMode;

    /// What the lab writes into each node's pgfm.toml for `lab up --watchdog MODE` and
    /// `--set`, read back by the agent's config.
    #[test]
    fn data_nodes_get_the_driver_fifo_and_the_witness_nothing() {
        let dir = PathBuf::from("/tmp/pgfm-lab-config-test");
        let node = |name: &str, data: bool| LabNode {
            name: name.to_string(),
            kind: if data { "data" } else { "witness" }.to_string(),
            host: "127.0.0.1".to_string(),
            agent_port: if data { 7001 } else { 7002 },
            pg_port: data.then_some(5432),
            config: dir.join(name).join("pgfm.toml"),
            data_dir: data.then(|| dir.join(name).join("data")),
            agent_pid: None,
            watchdog_pid: None,
        };
        let watchdog_of = |settings: &[&str], mode: &str, name: &str| {
            let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
            let extra = crate::commands::up_settings(&settings, None, mode).unwrap();
            let lab = LabFile {
                cluster: "lab".to_string(),
                dir: dir.clone(),
                bin_dir: PathBuf::from("/usr/bin"),
                os_user: "postgres".to_string(),
                passfile: dir.join("pgpass"),
                token_file: dir.join("token"),
                nodes: vec![node("pg1", true), node("witness", false)],
                netns: None,
                watchdog: crate::commands::wants_watchdog(&extra),
                data_disk_mb: None,
                tls: false,
                from_empty: false,
            };
            let n = lab.nodes.iter().find(|n| n.name == name).unwrap();
            let text = crate::commands::tests::config_of(&lab, name, &extra);
            let config = Config::parse(&n.config, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            (config.watchdog, lab.watchdog)
        };
        let fifo = dir.join("pg1").join("watchdog");
        let off = WatchdogConfig {
            mode: WatchdogMode::Off,
            device: PathBuf::from("/dev/watchdog"),
        };
        let on = |mode| WatchdogConfig {
            mode,
            device: fifo.clone(),
        };
        assert_eq!(
            watchdog_of(&[], "required", "pg1"),
            (on(WatchdogMode::Required), true)
        );
        assert_eq!(watchdog_of(&[], "required", "witness"), (off.clone(), true));
        assert_eq!(
            watchdog_of(&[], "automatic", "pg1"),
            (on(WatchdogMode::Automatic), true)
        );
        assert_eq!(watchdog_of(&[], "off", "pg1"), (off.clone(), false));
        // --set wins over --watchdog, and works with --watchdog off.
        let set = [
            "watchdog.mode=\"automatic\"",
            "failover.auto_failover=false",
        ];
        assert_eq!(
            watchdog_of(&set, "required", "pg1"),
            (on(WatchdogMode::Automatic), true)
        );
        assert_eq!(
            watchdog_of(&set, "off", "pg1"),
            (on(WatchdogMode::Automatic), true)
        );
        let set = ["watchdog.mode=\"off\""];
        assert!(
            !watchdog_of(&set, "required", "pg1").1,
            "no driver for mode off"
        );
    }

    fn check(
        timer: &mut Timer,
        line: &str,
        at_ms: u64,
        said: Option<&str>,
        deadline_ms: Option<u64>,
    ) {
        let zero = *ZERO;
        let got = timer.command(line, zero + Duration::from_millis(at_ms));
        assert_eq!(got.as_deref(), said, "{line:?}");
        assert_eq!(
            timer
                .deadline
                .map(|d| d.duration_since(zero).as_millis() as u64),
            deadline_ms,
            "{line:?}"
        );
    }

    static ZERO: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

    /// The protocol: arm sets the deadline, feed pushes it, disarm clears it; the deadline
    /// passes only while armed and unfed.
    #[test]
    fn the_driver_keeps_a_deadline() {
        let mut t = Timer::default();
        check(&mut t, "feed", 0, Some("ignored a feed: not armed"), None);
        check(&mut t, "arm 2", 10, Some("armed: 2 s"), Some(2010));
        check(&mut t, "feed", 500, None, Some(2500));
        assert_eq!(t.expired(*ZERO + Duration::from_millis(2499)), None);
        assert_eq!(
            t.expired(*ZERO + Duration::from_millis(2520)),
            Some(Duration::from_millis(20))
        );
        check(
            &mut t,
            "disarm",
            600,
            Some("disarmed (1900 ms before the deadline)"),
            None,
        );
        assert_eq!(t.expired(*ZERO + Duration::from_millis(9000)), None);
        check(
            &mut t,
            "arm 0",
            700,
            Some("ignored \"arm 0\": the timeout must be whole seconds > 0"),
            None,
        );
        check(
            &mut t,
            "arm x",
            700,
            Some("ignored \"arm x\": the timeout must be whole seconds > 0"),
            None,
        );
        check(
            &mut t,
            "reboot now",
            700,
            Some("ignored \"reboot now\" (expected arm SECONDS, feed or disarm)"),
            None,
        );
        check(&mut t, "", 700, None, None);
        check(
            &mut t,
            "disarm",
            800,
            Some("disarmed (was not armed)"),
            None,
        );
    }
}
