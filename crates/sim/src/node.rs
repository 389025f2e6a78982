//! A simulated host: the real agent, started with `pgfm_agent::start` on a platform of
//! simulated parts, in its own single-threaded Tokio runtime with paused time. The
//! simulator runs the runtime up to the global time step by step; a frozen host's runtime
//! is simply not run (its processes make no progress, its timers come due all at once when
//! it resumes, as a SIGSTOPped process sees it), a crashed one is dropped with every task.
//! The host watchdog is a timer outside the runtime: it keeps counting while the host is
//! frozen.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use pgfm_agent::{Clock, Platform, Running, Watchdog, WatchdogDevice};
use pgfm_core::engine::Engine;
use pgfm_core::transport::{Failure, TransportError};
use pgfm_core::ClusterState;

use crate::net::{Answer, SharedNet};
use crate::postgres::{PgModel, Shared};

/// The simulation's global time (ms), readable from anywhere in the run.
#[derive(Clone, Default)]
pub struct SimTime(Arc<AtomicU64>);

impl SimTime {
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst)
    }
}

/// An agent's clock: its runtime's (virtual) monotonic time since it started, at this
/// host's rate (a drift of a few per cent from the others).
struct SimClock {
    base: tokio::time::Instant,
    rate: f64,
    /// The wall clock at the simulation's start (ms since the epoch): fixed, so that the
    /// history's stamps are the same on every run.
    wall_base_ms: u64,
    started_at_ms: u64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        (self.base.elapsed().as_millis() as f64 * self.rate) as u64
    }

    fn wall_clock_ms(&self) -> u64 {
        self.wall_base_ms + self.started_at_ms + self.now_ms()
    }
}

/// The host's watchdog timer: armed, fed and disarmed by the agent (through `SimDriver`),
/// counted in global time by the simulator.
#[derive(Debug, Default)]
pub struct WatchdogTimer {
    /// When it resets the host unless fed.
    pub deadline_ms: Option<u64>,
    timeout_ms: u64,
}

struct SimDevice {
    timer: Arc<Mutex<WatchdogTimer>>,
    time: SimTime,
}

impl WatchdogDevice for SimDevice {
    fn open(&self) -> anyhow::Result<Box<dyn Watchdog>> {
        Ok(Box::new(SimDriver {
            timer: self.timer.clone(),
            time: self.time.clone(),
        }))
    }
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    fn describe(&self) -> String {
        "the simulated host's watchdog".into()
    }
}

struct SimDriver {
    timer: Arc<Mutex<WatchdogTimer>>,
    time: SimTime,
}

impl SimDriver {
    fn with(&self, f: impl FnOnce(&mut WatchdogTimer, u64)) {
        let mut timer = self.timer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut timer, self.time.now_ms());
    }
}

impl Watchdog for SimDriver {
    fn arm(&mut self, timeout_s: u64) -> anyhow::Result<()> {
        self.with(|t, now| {
            t.timeout_ms = timeout_s * 1000;
            t.deadline_ms = Some(now + t.timeout_ms);
        });
        Ok(())
    }
    fn feed(&mut self) -> anyhow::Result<()> {
        self.with(|t, now| {
            if t.deadline_ms.is_some() {
                t.deadline_ms = Some(now + t.timeout_ms);
            }
        });
        Ok(())
    }
    fn disarm(&mut self) -> anyhow::Result<()> {
        self.with(|t, _| t.deadline_ms = None);
        Ok(())
    }
}

/// The agent process of a host, while it runs.
struct Process {
    router: axum::Router,
    running: Running,
    base: tokio::time::Instant,
    base_ms: u64,
    /// Frozen since it last ran: its next run jumps its clock at once.
    jump: bool,
    runtime: tokio::runtime::Runtime,
}

/// What a node is made of for a run.
pub struct NodeSpec {
    pub name: String,
    pub data: bool,
    pub config_text: String,
    pub config_path: PathBuf,
    /// This host's clock rate (1.0: exact).
    pub rate: f64,
}

pub struct Node {
    pub spec: NodeSpec,
    /// The host runs (not crashed, not reset).
    pub up: bool,
    /// Every process of the host is stopped (SIGSTOP).
    pub frozen: bool,
    /// Only the agent is stopped (SIGSTOP of the agent, PostgreSQL runs on).
    pub agent_frozen: bool,
    pub watchdog: Arc<Mutex<WatchdogTimer>>,
    /// Agent starts so far (each a new process).
    pub incarnation: u64,
    process: Option<Process>,
}

/// What every agent of a run shares.
pub struct Env<'a> {
    pub net: &'a SharedNet,
    pub pg: &'a Shared,
    pub time: &'a SimTime,
    pub engine: &'a Arc<dyn Engine>,
    pub token: &'a Arc<str>,
    pub vip: &'a Arc<crate::vip::VipTable>,
    pub seed: u64,
    pub wall_base_ms: u64,
}

impl Node {
    pub fn new(spec: NodeSpec) -> Node {
        Node {
            spec,
            up: true,
            frozen: false,
            agent_frozen: false,
            watchdog: Arc::default(),
            incarnation: 0,
            process: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn agent_running(&self) -> bool {
        self.process.is_some()
    }

    /// Whether the agent's code can run now.
    pub fn runnable(&self) -> bool {
        self.up && !self.frozen && !self.agent_frozen && self.process.is_some()
    }

    /// Start the agent (a new process: a new runtime, a clock from zero).
    pub fn start_agent(&mut self, with: &Env<'_>) -> anyhow::Result<()> {
        self.incarnation += 1;
        let now_ms = with.time.now_ms();
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&with.seed.to_le_bytes());
        seed[8..].copy_from_slice(
            &(self.incarnation ^ crate::rng::Rng::new(now_ms).next_u64()).to_le_bytes(),
        );
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_time().start_paused(true);
        builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed));
        let runtime = builder.build().context("building the node's runtime")?;
        let base = runtime.block_on(async { tokio::time::Instant::now() });
        let clock = SimClock {
            base,
            rate: self.spec.rate,
            wall_base_ms: with.wall_base_ms,
            started_at_ms: now_ms,
        };
        let name = self.spec.name.clone();
        let platform = Platform {
            clock: Arc::new(clock),
            engine: with.engine.clone(),
            transport: with.net.transport(&name),
            database: self.spec.data.then(|| PgModel::database(with.pg, &name)),
            remote: PgModel::remote_probe(with.pg, &name),
            watchdog: Box::new(SimDevice {
                timer: self.watchdog.clone(),
                time: with.time.clone(),
            }),
            vip: self.spec.data.then(|| with.vip.for_host(&name)),
        };
        let config =
            pgfm_agent::config::Config::parse(&self.spec.config_path, &self.spec.config_text)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let running = runtime.block_on(pgfm_agent::start(config, with.token.clone(), platform))?;
        let router = running.router();
        self.process = Some(Process {
            router,
            running,
            base,
            base_ms: now_ms,
            jump: false,
            runtime,
        });
        Ok(())
    }

    /// The agent process dies (kill -9): every task with it. PostgreSQL is the model's.
    pub fn kill_agent(&mut self) {
        if let Some(process) = self.process.take() {
            let Process {
                router,
                running,
                runtime,
                ..
            } = process;
            drop(router);
            drop(running);
            drop(runtime);
        }
        self.agent_frozen = false;
    }

    /// Run the agent's tasks up to the global time `now_ms`.
    pub fn run_until(&mut self, now_ms: u64) {
        if !(self.up && !self.frozen && !self.agent_frozen) {
            if let Some(p) = self.process.as_mut() {
                p.jump = true;
            }
            return;
        }
        let Some(p) = self.process.as_mut() else {
            return;
        };
        let target = p.base + Duration::from_millis(now_ms.saturating_sub(p.base_ms));
        let jump = std::mem::take(&mut p.jump);
        p.runtime.block_on(async move {
            if jump {
                // Resumed: everything overdue comes due at once, as after SIGCONT.
                let behind = target.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::advance(behind).await;
            }
            tokio::time::sleep_until(target).await;
        });
    }

    /// Hand `request` from `from` to the agent's router; its answer goes back through the
    /// network. The agent must be running (frozen is fine: it answers once it resumes).
    pub fn deliver(
        &mut self,
        net: &SharedNet,
        from: String,
        request: pgfm_core::transport::Request,
        reply: Option<tokio::sync::oneshot::Sender<Answer>>,
    ) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        let router = p.router.clone();
        let net = net.clone();
        let me = self.spec.name.clone();
        p.runtime.spawn(async move {
            let answer = handle(router, request).await;
            if let Some(reply) = reply {
                net.lock().answer(&from, &me, reply, answer);
            }
        });
    }

    /// The committed primary and generation as this agent has applied them (None: no
    /// agent runs).
    pub fn primary(&self) -> Option<(Option<String>, pgfm_core::Generation)> {
        self.process.as_ref().map(|p| p.running.primary())
    }

    /// This node's own maintenance as its agent applied it: None when it is not under
    /// maintenance, or when no agent runs (`agent_running` tells which).
    pub fn own_maintenance(&self) -> Option<pgfm_core::model::Maintenance> {
        self.process
            .as_ref()
            .and_then(|p| p.running.maintenance_of(self.name()))
    }

    pub fn is_coordinator(&self) -> bool {
        self.process
            .as_ref()
            .is_some_and(|p| p.running.is_coordinator())
    }

    /// The committed state as this agent has applied it (None: no agent runs).
    pub fn state(&self) -> Option<ClusterState> {
        self.process.as_ref().map(|p| p.running.cluster_state())
    }
}

/// One request through the agent's router, as axum would serve it from a socket.
async fn handle(router: axum::Router, request: pgfm_core::transport::Request) -> Answer {
    use tower::ServiceExt as _;
    let method = match request.method {
        pgfm_core::transport::Method::Get => axum::http::Method::GET,
        pgfm_core::transport::Method::Post => axum::http::Method::POST,
    };
    let mut builder = axum::http::Request::builder()
        .method(method)
        .uri(request.path.as_str())
        .header("authorization", format!("Bearer {}", request.token));
    if request.body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let body = axum::body::Body::from(request.body.unwrap_or_default());
    let http_request = builder
        .body(body)
        .map_err(|e| TransportError::new(Failure::Other, e.to_string()))?;
    let response = match router.oneshot(http_request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| TransportError::new(Failure::Other, e.to_string()))?;
    Ok(pgfm_core::transport::Response {
        status,
        body: body.to_vec(),
    })
}
