//! What systemd hears from an agent it started (`Type=notify`, see `dist/pgfm.service`):
//! `READY=1` once the agent is a member of the cluster, `STATUS=` its role as it changes,
//! and `WATCHDOG=1` while its loops run (a stuck agent stops feeding and systemd restarts
//! it; PostgreSQL keeps running and the new agent adopts it). Nothing at all when systemd
//! did not start the agent (no `NOTIFY_SOCKET`).

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pgfm_coord::Coordinator;
use tokio::sync::watch;

use crate::Agent;

/// The socket systemd listens on for this service, and how often it wants to hear.
pub struct Notifier {
    socket: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace) and
    /// `WATCHDOG_USEC`, which are then removed from the environment, so that PostgreSQL
    /// (built with systemd support on Debian) and the hooks, which inherit it, do not
    /// speak for the agent. Call it before any other thread starts.
    pub fn take_from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = watchdog_interval();
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        let path = path.to_string_lossy();
        let target = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(path.as_ref()).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(Notifier {
            socket,
            target,
            watchdog,
        })
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.target) {
            tracing::debug!("telling systemd {message:?}: {e}");
        }
    }
}

/// How often systemd wants to hear from the agent: half its `WatchdogSec`, if set.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
}

/// Tell systemd how the agent is doing until `stop`.
pub(crate) async fn notify_loop(
    agent: Arc<Agent>,
    notifier: Notifier,
    mut stop: watch::Receiver<bool>,
) {
    let watchdog = notifier.watchdog;
    let mut ticker = tokio::time::interval(
        watchdog
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1)),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    let mut said = String::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {
                notifier.send("STOPPING=1\nSTATUS=stopping (PostgreSQL keeps running)");
                return;
            }
        }
        let state = agent.raft.state();
        let status = status_line(&agent, &state);
        let joined = state.members.contains_key(&agent.config.name);
        let mut message = Vec::new();
        if joined && !ready {
            ready = true;
            message.push("READY=1".to_string());
        }
        if status != said {
            message.push(format!("STATUS={status}"));
            said = status;
        }
        if watchdog.is_some() && agent.loops_alive() {
            message.push("WATCHDOG=1".to_string());
        }
        if !message.is_empty() {
            notifier.send(&message.join("\n"));
        }
    }
}

/// The agent's role in a line: "primary of generation 3, coordinator".
fn status_line(agent: &Agent, state: &pgfm_core::ClusterState) -> String {
    let me = agent.config.name.as_str();
    let mut line = if !state.members.contains_key(me) {
        "joining the cluster".to_string()
    } else if state.primary.as_deref() == Some(me) {
        format!("primary of generation {}", state.generation.0)
    } else if agent.postgres.is_none() {
        "witness".to_string()
    } else {
        match &state.primary {
            Some(primary) => format!("standby of {primary} (generation {})", state.generation.0),
            None => "data node, no primary yet".to_string(),
        }
    };
    if agent.raft.is_coordinator() {
        line.push_str(", coordinator");
    }
    line
}

impl Agent {
    /// Whether the probe loop, and on a data node the lease loop, went round lately: what
    /// `WATCHDOG=1` vouches for.
    fn loops_alive(&self) -> bool {
        let now = self.now_ms();
        let settings = self.settings();
        let probe_bound = (settings.probe_interval_ms + settings.probe_timeout_ms) * 2;
        let recent = |at: u64, bound: u64| at > 0 && now.saturating_sub(at) <= bound;
        let probe = recent(
            self.loop_ticks.probe.load(Ordering::Relaxed),
            probe_bound.max(5_000),
        );
        let lease =
            self.postgres.is_none() || recent(self.loop_ticks.lease.load(Ordering::Relaxed), 5_000);
        probe && lease
    }
}
