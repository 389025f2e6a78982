//! The agent: one per node. It runs the embedded Raft member, serves the HTTP API, probes
//! its PostgreSQL and reports to the coordinator (the probe loop), and turns the decision
//! engine's actions into I/O (the decide loop and the executor).

mod executor;
pub mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;
use tracing::Instrument;

use pgfm_api::{AgentApi, ApiClient, ClusterStatus, ReportOutcome};
use pgfm_coord::{Coordinator, EmbeddedRaft, RaftSettings};
use pgfm_core::decide::{ClusterView, LocalView, Observed};
use pgfm_core::{Member, NodeReport};
use pgfm_postgres::{OsUser, Postgres, PostgresSettings, Prober};

use crate::config::Config;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks is replaced whole on every write, never left half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Agent {
    config: Config,
    token: Arc<str>,
    raft: EmbeddedRaft,
    postgres: Option<Postgres>,
    started: Instant,
    /// The latest report from each agent known here (soft state, never persisted).
    reports: Mutex<BTreeMap<String, Observed>>,
    /// What a long action is doing right now ("cloning from pg1").
    activity: Mutex<Option<String>>,
    /// The reasons and failures of the last decision round, shown in this node's info.
    notes: Mutex<Vec<String>>,
    /// The coordinator's own reasons for holding back (bootstrap refused, ...).
    coordinator_notes: Mutex<Vec<String>>,
}

impl Agent {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn me(&self) -> Member {
        let pg = self.config.postgres.as_ref();
        Member {
            name: self.config.name.clone(),
            kind: self.config.kind,
            address: self.config.listen.to_string(),
            pg_host: pg.map(|p| p.host.clone()),
            pg_port: pg.map(|p| p.port),
            priority: self.config.priority,
            promotable: self.config.promotable,
        }
    }

    fn view(&self) -> ClusterView {
        ClusterView {
            state: self.raft.state(),
            voters: self.raft.voters().into_iter().map(|(n, _)| n).collect(),
            reports: lock(&self.reports).clone(),
            report_ttl_ms: self.config.timing.report_ttl.as_millis() as u64,
        }
    }

    fn address_of(&self, name: &str) -> Option<String> {
        self.raft
            .voters()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    fn client(&self, address: &str) -> ApiClient {
        ApiClient::new(address, &self.token, Duration::from_secs(2))
    }

    /// Probe the local PostgreSQL (data nodes) and describe this node.
    async fn make_report(&self, prober: &mut Option<Prober>) -> NodeReport {
        let mut report = NodeReport::new(&self.config.name, self.config.kind);
        let mut problem = None;
        if let (Some(pg), Some(prober)) = (&self.postgres, prober.as_mut()) {
            match pg.data_dir_state() {
                Ok(state) => report.data_dir = Some(state),
                Err(e) => problem = Some(e),
            }
            if pg.running_pid().is_some() {
                if let Err(e) = prober.probe(&mut report).await {
                    problem = Some(format!("probe failed: {e}"));
                }
            }
        }
        let activity = lock(&self.activity).clone();
        let notes = lock(&self.notes).join("; ");
        report.info = activity
            .or(problem)
            .or((!notes.is_empty()).then_some(notes))
            .unwrap_or_default();
        report
    }

    fn remember(&self, report: NodeReport) {
        let now = self.now_ms();
        let observed = Observed {
            report,
            received_at_ms: now,
        };
        lock(&self.reports).insert(observed.report.name.clone(), observed);
    }

    fn fresh_reports(&self) -> Vec<NodeReport> {
        let now = self.now_ms();
        let ttl = self.config.timing.report_ttl.as_millis() as u64;
        lock(&self.reports)
            .values()
            .filter(|o| now.saturating_sub(o.received_at_ms) <= ttl)
            .map(|o| o.report.clone())
            .collect()
    }

    /// The probe loop: every probe interval, probe and report to the coordinator.
    async fn probe_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut prober = self
            .postgres
            .as_ref()
            .map(|pg| Prober::new(pg.probe_target()));
        let mut ticker = tokio::time::interval(self.config.timing.probe_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_send_error = String::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let report = self.make_report(&mut prober).await;
            self.remember(report.clone());
            if self.raft.is_coordinator() {
                continue;
            }
            let Some(coordinator) = self.raft.coordinator() else {
                continue;
            };
            let Some(address) = self.address_of(&coordinator) else {
                continue;
            };
            match self.client(&address).report(&report).await {
                Ok(ack) => {
                    last_send_error.clear();
                    for r in ack
                        .reports
                        .into_iter()
                        .filter(|r| r.name != self.config.name)
                    {
                        self.remember(r);
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if text != last_send_error {
                        tracing::warn!(%coordinator, error = %text, "cannot report to the coordinator");
                        last_send_error = text;
                    }
                }
            }
        }
    }

    /// The decide loop: register, then decide and execute every probe interval.
    async fn decide_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.config.timing.probe_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let me = self.me();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if self.raft.state().members.get(&me.name) != Some(&me) {
                self.register(&me).await;
                continue;
            }
            let view = self.view();
            let Some(report) = view.reports.get(&me.name).map(|o| o.report.clone()) else {
                continue;
            };
            let local = LocalView {
                name: me.name.clone(),
                kind: me.kind,
                is_coordinator: self.raft.is_coordinator(),
                report,
            };
            let actions = pgfm_core::decide(&view, &local, self.now_ms());
            self.execute_all(&view, local.is_coordinator, actions).await;
        }
    }

    async fn register(&self, me: &Member) {
        match self
            .raft
            .propose(pgfm_core::Command::Register { member: me.clone() })
            .await
        {
            Ok(Ok(())) => tracing::info!(node = %me.name, "registered with the cluster"),
            Ok(Err(refused)) => tracing::error!(%refused, "registration refused"),
            Err(e) => tracing::debug!(%e, "registration not committed yet"),
        }
    }

    /// Answer `cluster-status` from what this agent holds.
    fn local_status(&self, mut problems: Vec<String>) -> ClusterStatus {
        let view = self.view();
        let coordinator = self.raft.coordinator();
        if coordinator.is_none() {
            problems.push(
                "no coordinator is elected: fewer than a majority of agents can reach each other"
                    .to_string(),
            );
        }
        problems.extend(lock(&self.coordinator_notes).iter().cloned());
        let voters = self.raft.voters();
        let ctx = status::Context {
            cluster: &self.config.cluster,
            answered_by: &self.config.name,
            coordinator: coordinator.as_deref(),
            voters: &voters,
            max_lag: self.config.max_lag,
            now_ms: self.now_ms(),
            problems,
        };
        status::build(&ctx, &view)
    }
}

impl AgentApi for Agent {
    async fn status(&self) -> Result<ClusterStatus, String> {
        if self.raft.is_coordinator() {
            return Ok(self.local_status(Vec::new()));
        }
        // The coordinator holds every agent's report: ask it, and fall back to what this
        // agent knows, saying so, when it cannot be reached.
        let Some(coordinator) = self.raft.coordinator() else {
            return Ok(self.local_status(Vec::new()));
        };
        let Some(address) = self.address_of(&coordinator) else {
            return Ok(self.local_status(Vec::new()));
        };
        match self.client(&address).status().await {
            Ok(status) => Ok(status),
            Err(e) => Ok(self.local_status(vec![format!(
                "answered by {} alone: the coordinator {coordinator} did not answer ({e})",
                self.config.name
            )])),
        }
    }

    async fn report(&self, report: NodeReport) -> ReportOutcome {
        if !self.raft.is_coordinator() {
            return ReportOutcome::NotCoordinator(self.raft.coordinator());
        }
        if !self.raft.voters().iter().any(|(n, _)| *n == report.name) {
            tracing::warn!(node = %report.name, "ignored a report from an agent that is not a member");
            return ReportOutcome::NotCoordinator(self.raft.coordinator());
        }
        self.remember(report);
        ReportOutcome::Accepted(self.fresh_reports())
    }
}

/// Take the state directory for this agent alone: a second agent on it would corrupt the
/// Raft log.
fn lock_state_dir(config: &Config) -> anyhow::Result<Flock<std::fs::File>> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let path = config.state_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another pgfm agent is running on state_dir {} ({e}); stop it first",
            config.state_dir.display()
        )
    })
}

fn postgres_for(config: &Config) -> anyhow::Result<Option<Postgres>> {
    let Some(pg) = &config.postgres else {
        return Ok(None);
    };
    let bin_dir = config.bin_dir()?.context("no PostgreSQL bin directory")?;
    let os_user = OsUser::lookup(&pg.os_user).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(Postgres::new(PostgresSettings {
        node_name: config.name.clone(),
        bin_dir,
        data_dir: pg.data_dir.clone(),
        host: pg.host.clone(),
        port: pg.port,
        listen_addresses: pg.listen_addresses.clone(),
        socket_dir: pg.socket_dir.clone(),
        os_user,
        superuser: pg.superuser.clone(),
        replication_user: pg.replication_user.clone(),
        passfile: pg.passfile.clone(),
        log_file: pg.log_file.clone(),
        start_timeout: config.timing.start_timeout,
        probe_timeout: config.timing.probe_timeout,
    })))
}

/// Run the agent until SIGTERM or SIGINT. PostgreSQL keeps running when the agent stops.
pub async fn run(config: Config) -> anyhow::Result<()> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let token = config.read_token()?;
    let _lock = lock_state_dir(&config)?;
    let postgres = postgres_for(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on node.listen {}", config.listen))?;
    let raft = EmbeddedRaft::start(
        &config.name,
        &config.state_dir.join("raft"),
        &config.peer_list(),
        token.clone(),
        &RaftSettings::default(),
    )
    .await?;
    let agent = Arc::new(Agent {
        config,
        token: token.clone(),
        raft: raft.clone(),
        postgres,
        started: Instant::now(),
        reports: Mutex::new(BTreeMap::new()),
        activity: Mutex::new(None),
        notes: Mutex::new(Vec::new()),
        coordinator_notes: Mutex::new(Vec::new()),
    });
    tracing::info!(
        cluster = %agent.config.cluster,
        listen = %agent.config.listen,
        kind = ?agent.config.kind,
        "agent started"
    );

    let app = pgfm_api::router(agent.clone())
        .merge(pgfm_coord::http::router(raft.clone()))
        .layer(axum::middleware::from_fn_with_state(
            token,
            pgfm_api::auth::require_token,
        ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, service)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
        })
    };
    let span = tracing::Span::current();
    let probe = tokio::spawn(
        agent
            .clone()
            .probe_loop(stop_rx.clone())
            .instrument(span.clone()),
    );
    let decide = tokio::spawn(agent.clone().decide_loop(stop_rx).instrument(span));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping the agent (PostgreSQL keeps running)"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping the agent (PostgreSQL keeps running)"),
    }
    let _ = stop_tx.send(true);
    let _ = tokio::join!(probe, decide);
    raft.shutdown().await;
    let _ = server.await;
    Ok(())
}
