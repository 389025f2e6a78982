//! What an agent runs on, handed in by whoever starts it: its clock, the transport to the
//! other agents, its PostgreSQL, how it checks another node's PostgreSQL, and its host
//! watchdog's device. `Platform::production` opens the real ones (the system clock, HTTP,
//! PostgreSQL processes, `/dev/watchdog`); the simulation (`crates/sim`) hands in its own
//! — the agent's code is the same either way.

use std::sync::Arc;
use std::time::Duration;

use pgfm_core::engine::{Engine, Rules};
use pgfm_core::transport::Transport;
use pgfm_postgres::{Database, RemoteProbe};

use crate::config::Config;
pub use crate::watchdog::{DeviceFile, Watchdog, WatchdogDevice};

/// The agent's clock. Lease and decision times are read from it, and nowhere else.
pub trait Clock: Send + Sync {
    /// Monotonic milliseconds since the agent started.
    fn now_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch, only to stamp the history.
    fn wall_clock_ms(&self) -> u64;
}

/// The system's monotonic and wall clocks.
pub struct SystemClock {
    started: std::time::Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            started: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn wall_clock_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    }
}

pub struct Platform {
    pub clock: Arc<dyn Clock>,
    /// The rules: `Rules` everywhere but in the simulation's mutation tests.
    pub engine: Arc<dyn Engine>,
    pub transport: Arc<dyn Transport>,
    /// A data node's PostgreSQL (None on a witness).
    pub database: Option<Arc<dyn Database>>,
    /// How the probe loop checks the primary's PostgreSQL while its agent looks down.
    pub remote: Box<dyn RemoteProbe>,
    pub watchdog: Box<dyn WatchdogDevice>,
    /// The virtual IP, when this data node has one configured.
    pub vip: Option<Arc<dyn pgfm_net::VirtualIp>>,
}

impl Platform {
    /// The real thing, as `config` says: PostgreSQL run as its OS user, HTTPS with `tls`
    /// (plain HTTP when TLS is off) between the agents, the configured watchdog device
    /// and VIP.
    pub async fn production(
        config: &Config,
        tls: Option<Arc<pgfm_tls::Tls>>,
    ) -> anyhow::Result<Platform> {
        Ok(Platform {
            clock: Arc::new(SystemClock::new()),
            engine: Arc::new(Rules),
            transport: Arc::new(pgfm_api::HttpTransport::new(
                Duration::from_millis(500),
                tls,
            )),
            database: crate::postgres_for(config)?.map(|pg| Arc::new(pg) as Arc<dyn Database>),
            remote: Box::new(pgfm_postgres::probe::RemoteCheck::new()),
            watchdog: Box::new(DeviceFile(config.watchdog.device.clone())),
            vip: crate::open_vip(config).await?,
        })
    }
}
