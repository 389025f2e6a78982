//! The agent: one per node. It runs the embedded Raft member, serves the HTTP API, probes
//! its PostgreSQL and reports to the coordinator (the probe loop), keeps or gives up the
//! primary's lease (the lease loop), and turns the decision engine's actions into I/O (the
//! decide loop and the executor).

mod commands;
pub mod config;
mod executor;
mod health;
mod hooks;
mod lease;
mod memory;
mod platform;
pub mod status;
mod systemd;

pub use systemd::Notifier as SystemdNotifier;
mod vip;
mod watchdog;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;
use tracing::Instrument;

use pgfm_api::{AgedReport, AgentApi, ApiClient, ClusterStatus, ReportOutcome};
use pgfm_coord::{Coordinator, EmbeddedRaft, ProposeError, RaftSettings};
use pgfm_core::decide::{track_replicas, Action, ClusterView, LocalView, Observed, Settings};
use pgfm_core::lease::HeldLease;
use pgfm_core::transport::Transport;
use pgfm_core::{DataDirState, Generation, Member, NodeReport};
use pgfm_postgres::probe::{Target, Verdict};
use pgfm_postgres::{Database, OsUser, Postgres, PostgresSettings, Probe, RemoteProbe};

use crate::config::Config;
use crate::memory::{Memory, Outcome};
pub use crate::platform::{Clock, DeviceFile, Platform, SystemClock, Watchdog, WatchdogDevice};

/// The cluster-wide settings in force in `state`: committed (issue 15), else `config`'s.
fn settings_in_force(state: &pgfm_core::ClusterState, config: &Config) -> Settings {
    match &state.settings {
        Some(committed) => committed.values.clone(),
        None => config.settings(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks is replaced whole on every write, never left half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the coordinator's lease clock rests on (see `renewal_watch`).
#[derive(Debug, Default)]
struct RenewalSeen {
    /// The lease as last applied here, when (monotonic ms; 0: this agent's start), and
    /// until when its renewals hold it.
    clock: pgfm_core::lease::LeaseClock,
    /// The Raft term of the last applied entry taken into account.
    applied_term: u64,
    /// The switchover under way as last applied here, and when it last changed (a step:
    /// requested, handed over, forced): `switchover_timeout` counts from then.
    switchover: Option<pgfm_core::model::Switchover>,
    switchover_at_ms: u64,
}

/// When a loop last went round (monotonic ms of the agent's clock; 0: not yet).
#[derive(Default)]
struct LoopTicks {
    probe: std::sync::atomic::AtomicU64,
    lease: std::sync::atomic::AtomicU64,
}

pub struct Agent {
    config: Config,
    token: Arc<str>,
    raft: EmbeddedRaft,
    postgres: Option<Arc<dyn Database>>,
    /// This data node's interface for the virtual IP, when its file has `[vip]`, opened at
    /// start (for the file's address, if any).
    vip_base: Option<Arc<dyn pgfm_net::VirtualIp>>,
    /// The virtual IP it carries: `vip_base` moved to the cluster's `vip.address`
    /// (`Agent::follow_vip_address`); None while the cluster has none.
    vip: Mutex<Option<Arc<dyn pgfm_net::VirtualIp>>>,
    /// The cluster's address this node was found unable to carry (no `[vip]` in its
    /// file), said once in the log.
    vip_unplaced: Mutex<Option<String>>,
    /// Whether the file's own address was checked for at start (a previous agent may have
    /// left it on this host, and the cluster's may since have moved).
    vip_stale_checked: std::sync::atomic::AtomicBool,
    clock: Arc<dyn Clock>,
    /// The rules it applies (`pgfm_core::engine::Rules`).
    engine: Arc<dyn pgfm_core::engine::Engine>,
    /// How requests reach the other agents.
    transport: Arc<dyn Transport>,
    /// The latest report from each agent known here (soft state, never persisted).
    reports: Mutex<BTreeMap<String, Observed>>,
    /// What a long action is doing right now ("cloning from pg1").
    activity: Mutex<Option<String>>,
    /// The reasons and failures of the last decision round, shown in this node's info.
    notes: Mutex<Vec<String>>,
    /// The coordinator's own reasons for holding back (bootstrap refused, ...).
    coordinator_notes: Mutex<Vec<String>>,
    /// This node's own lease, when it is the primary.
    lease: Mutex<HeldLease>,
    /// When this agent last saw a renewal, a release or a new generation applied (the
    /// coordinator's lease clock), and the term of the last entry it has taken into account.
    renewal_seen: Mutex<RenewalSeen>,
    /// When this agent became coordinator (None while it is not).
    coordinator_since: Mutex<Option<u64>>,
    /// `pgfm resume` was run here: the decide loop takes it into its memory
    /// (`Memory::resume`) before it next decides or takes in an action's outcomes.
    resume_asked: AtomicBool,
    /// The agent is about to stop its PostgreSQL on purpose (a fence, from the lease loop or
    /// the executor; a hand-over; a stop to rewind): set before the stop, taken into the
    /// decide loop's memory, so that the postmaster's disappearance is not taken for a crash.
    db_stop_expected: AtomicBool,
    /// Wakes the probe loop at once (after an action changed the local PostgreSQL).
    probe_now: tokio::sync::Notify,
    /// Wakes the decide loop at once (a new report, a new committed state).
    decide_now: tokio::sync::Notify,
    /// Wakes the coordinate loop at once.
    coordinate_now: tokio::sync::Notify,
    /// The last probe's duration in ms, plus one (0: no probe yet).
    probe_latency_ms: std::sync::atomic::AtomicU64,
    /// When the probe and lease loops last went round (for systemd's watchdog).
    loop_ticks: LoopTicks,
    /// When this node's TLS set ends, and when that was read (agent ms; read again after
    /// a minute, the files may have been renewed).
    tls_expiry: Mutex<Option<(u64, Option<std::time::SystemTime>)>>,
    /// The keys of this node's file that differ from the committed settings, as last
    /// logged.
    file_differs: Mutex<Vec<String>>,
    /// Asked to stop (stop-cluster): the run loop ends the agent.
    shutdown: tokio::sync::Notify,
    /// Where the WAL was when this agent, as primary, last changed
    /// `synchronous_standby_names`, and in which generation: the decide loop's
    /// `Memory::sync_switch`, copied here after each action for the probe loop's report.
    sync_switch: Mutex<Option<(Generation, pgfm_core::Lsn)>>,
    /// The operator's requests this agent carried out (`Memory::carried_out`), copied the
    /// same way.
    carried_out: Mutex<memory::CarriedOut>,
    /// The host watchdog (data nodes; its mode is off on a witness), armed by the lease
    /// loop while this node holds the lease.
    watchdog: Mutex<watchdog::HostWatchdog>,
}

impl Agent {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
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

    /// The cluster-wide settings in force: the committed ones, else this node's file's
    /// (before the first coordinator committed them).
    fn settings(&self) -> Settings {
        self.raft
            .settings()
            .unwrap_or_else(|| self.config.settings())
    }

    fn view(&self) -> ClusterView {
        let wall_clock_ms = self.clock.wall_clock_ms();
        let state = self.raft.state();
        // Invariant 3: the lease clock must belong to the state it is judged with. The
        // renewal watch may not have taken the latest applied change into account yet (a
        // promotion this agent just committed): then that change was applied just now, and
        // the lease it starts is counted from now — never from the previous generation's
        // last renewal, which would expire the new primary's lease at once.
        let now = self.now_ms();
        let settings = settings_in_force(&state, &self.config);
        let (clock, switchover_step_ms) = {
            let seen = lock(&self.renewal_seen);
            let clock = seen.clock.time(&state, now, &settings.lease);
            let step = if seen.switchover == state.switchover {
                seen.switchover_at_ms
            } else {
                now
            };
            (clock, state.switchover.as_ref().map(|_| step))
        };
        ClusterView {
            name: self.config.name.clone(),
            settings,
            state,
            voters: self.raft.voters().into_iter().map(|(n, _)| n).collect(),
            reports: lock(&self.reports).clone(),
            last_renewal_seen_ms: Some(clock.seen_ms),
            lease_until_ms: Some(clock.until_ms),
            switchover_step_ms,
            coordinator_since_ms: *lock(&self.coordinator_since),
            wall_clock_ms,
            // The coordinate loop's own (`Memory::measured`): only its failovers read them.
            measured: BTreeMap::new(),
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
        ApiClient::over(
            self.transport.clone(),
            address,
            &self.token,
            Duration::from_secs(2),
        )
    }

    /// Whether the committed primary's database answers, asked only while its agent looks
    /// down (that is when the coordinator needs to know).
    async fn check_primary(
        &self,
        remote: &mut dyn RemoteProbe,
    ) -> Option<(pgfm_core::Generation, Verdict)> {
        let state = self.raft.state();
        let primary = state
            .primary
            .as_deref()
            .filter(|p| *p != self.config.name)?;
        let now = self.now_ms();
        // Check as soon as one report is late or two renewals are missed: the answer must
        // be in before the lease runs out, or the coordinator cannot fail over, and a dead
        // host's TCP connect takes the whole probe_timeout to fail. Renewals come every
        // renew_interval, reports only every probe interval.
        let settings = settings_in_force(&state, &self.config);
        let late_after = settings.probe_interval_ms * 3 / 2;
        let recent = lock(&self.reports)
            .get(primary)
            .is_some_and(|o| now.saturating_sub(o.received_at_ms) <= late_after);
        let renewed = now.saturating_sub(lock(&self.renewal_seen).clock.seen_ms)
            < self.renewals_late_after_ms();
        if recent && renewed {
            return None;
        }
        let member = state.members.get(primary)?;
        let pg = self.config.postgres.as_ref();
        let target = Target {
            host: member.pg_host.clone()?,
            port: member.pg_port?,
            user: pg
                .map(|p| p.superuser.clone())
                .unwrap_or_else(|| "postgres".into()),
            passfile: pg.and_then(|p| p.passfile.clone()),
            timeout: Duration::from_millis(settings.probe_timeout_ms),
            ssl_root: self.config.tls.as_ref().map(|t| t.ca.clone()),
        };
        Some((state.generation, remote.check(&target).await))
    }

    /// How long without a renewal applied here before the primary looks down: two missed.
    fn renewals_late_after_ms(&self) -> u64 {
        self.settings().lease.renew_interval_ms * 2
    }

    /// How long this node's TLS set stays valid, in seconds (wall-clock: certificates are
    /// valid in calendar time); read from its files at most once a minute.
    fn tls_valid_for_s(&self) -> Option<i64> {
        let files = self.config.tls.as_ref()?;
        let now = self.now_ms();
        let mut cached = lock(&self.tls_expiry);
        if cached.is_none_or(|(at, _)| now.saturating_sub(at) >= 60_000) {
            *cached = Some((now, pgfm_tls::expiry(files).ok()));
        }
        let expiry = cached.and_then(|(_, expiry)| expiry)?;
        Some(match expiry.duration_since(std::time::SystemTime::now()) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        })
    }

    /// The cluster-wide keys this node's file sets to other values than the committed
    /// ones: logged once each time they change, and reported for `cluster-status`.
    fn file_differs(&self) -> Vec<String> {
        let differs = match self.raft.settings() {
            Some(committed) => self.config.differences(&committed),
            None => Vec::new(),
        };
        let mut logged = lock(&self.file_differs);
        if *logged != differs {
            for difference in &differs {
                tracing::warn!(
                    file = %self.config.file.display(),
                    "{difference}: the cluster's committed value is used (pgfm show-config; \
                     remove the key from this file, or pgfm edit-config to change it)"
                );
            }
            *logged = differs.clone();
        }
        differs
    }

    /// Probe the local PostgreSQL (data nodes) and describe this node.
    async fn make_report(
        &self,
        prober: &mut Option<Box<dyn Probe>>,
        remote: &mut dyn RemoteProbe,
    ) -> NodeReport {
        let mut report = NodeReport::new(&self.config.name, self.config.kind);
        if let Some((generation, verdict)) = self.check_primary(remote).await {
            report.sees_primary = verdict.answering();
            report.primary_checked = Some(generation);
            report.primary_check = Some(verdict.describe());
        }
        report.vip = self.vip_report().await;
        report.tls_valid_for_s = self.tls_valid_for_s();
        report.file_differs = self.file_differs();
        report.watchdog = self
            .postgres
            .is_some()
            .then(|| lock(&self.watchdog).report());
        let (_, generation) = self.raft.primary();
        report.sync_switch_lsn = lock(&self.sync_switch)
            .filter(|(g, _)| *g == generation)
            .map(|(_, lsn)| lsn);
        let done = *lock(&self.carried_out);
        report.reloaded = done.reloaded;
        report.restarted = done.restarted;
        let mut problem = None;
        if let (Some(pg), Some(prober)) = (&self.postgres, prober.as_mut()) {
            match pg.data_dir_state() {
                Ok(state) => report.data_dir = Some(state),
                Err(e) => problem = Some(e),
            }
            let running = pg.running_pid().is_some();
            if !running && report.data_dir.is_some_and(|d| d != DataDirState::Empty) {
                match pg.recovery_unfinished() {
                    Ok(unfinished) => report.recovery_unfinished = unfinished,
                    Err(e) => {
                        // Not knowing how the directory may start, nothing starts it.
                        report.data_dir = None;
                        problem = Some(e);
                    }
                }
            }
            if running {
                let started = tokio::time::Instant::now();
                if let Err(e) = prober.probe(&mut report).await {
                    problem = Some(format!("probe failed: {e}"));
                }
                let ms = started.elapsed().as_millis() as u64;
                self.probe_latency_ms.store(ms + 1, Ordering::SeqCst);
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

    /// Keep `report`, received `age_ms` ago (by the coordinator, for relayed reports).
    fn remember(&self, report: NodeReport, age_ms: u64) {
        let received_at_ms = self.now_ms().saturating_sub(age_ms);
        let mut reports = lock(&self.reports);
        if reports
            .get(&report.name)
            .is_some_and(|o| o.received_at_ms > received_at_ms)
        {
            return;
        }
        let observed = Observed {
            report,
            received_at_ms,
        };
        reports.insert(observed.report.name.clone(), observed);
    }

    fn fresh_reports(&self) -> Vec<AgedReport> {
        let now = self.now_ms();
        let ttl = self.settings().report_ttl_ms;
        lock(&self.reports)
            .values()
            .filter(|o| now.saturating_sub(o.received_at_ms) <= ttl)
            .map(|o| AgedReport {
                report: o.report.clone(),
                age_ms: now.saturating_sub(o.received_at_ms),
            })
            .collect()
    }

    /// The probe loop: every probe interval, probe and report to the coordinator.
    async fn probe_loop(
        self: Arc<Self>,
        mut remote: Box<dyn RemoteProbe>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut prober = self.postgres.as_ref().map(|pg| pg.prober());
        let probe_ticker = |ms: u64| {
            let mut ticker = tokio::time::interval(Duration::from_millis(ms));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        };
        let mut interval_ms = self.settings().probe_interval_ms;
        // The start and probe timeouts the database was last given: its file's at first.
        let ms = |d: Duration| d.as_millis() as u64;
        let mut timeouts = (
            ms(self.config.timing.start_timeout),
            ms(self.config.timing.probe_timeout),
        );
        let mut ticker = probe_ticker(interval_ms);
        let mut last_send_error = String::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.probe_now.notified() => {}
                _ = stop.changed() => return,
            }
            // A committed change of `timing.probe_interval` (or the first commit of the
            // cluster's settings) takes effect from the next probe on.
            let settings = self.settings();
            if settings.probe_interval_ms != interval_ms {
                interval_ms = settings.probe_interval_ms;
                ticker = probe_ticker(interval_ms);
                ticker.reset();
            }
            let now_timeouts = (settings.start_timeout_ms, settings.probe_timeout_ms);
            if let (Some(pg), true) = (&self.postgres, now_timeouts != timeouts) {
                timeouts = now_timeouts;
                pg.set_timeouts(
                    Duration::from_millis(settings.start_timeout_ms),
                    Duration::from_millis(settings.probe_timeout_ms),
                );
                // The prober keeps the timeout it was made with.
                prober = Some(pg.prober());
            }
            let report = self.make_report(&mut prober, remote.as_mut()).await;
            self.loop_ticks
                .probe
                .store(self.now_ms().max(1), std::sync::atomic::Ordering::Relaxed);
            self.remember(report.clone(), 0);
            self.wake_decisions();
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
                    for aged in ack
                        .reports
                        .into_iter()
                        .filter(|a| a.report.name != self.config.name)
                    {
                        self.remember(aged.report, aged.age_ms);
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

    /// Wake the decide and coordinate loops at once (a new report, a committed change).
    fn wake_decisions(&self) {
        self.decide_now.notify_one();
        self.coordinate_now.notify_one();
    }

    /// The coordinate loop: while this agent leads, make the cluster's decisions (bootstrap,
    /// failover, switchover) every 200 ms, at once on news, and the moment the primary's
    /// lease runs out. It runs apart from the decide loop so that a long local action (a
    /// clone, a start, a rewind) never holds up a failover (invariant 9); its actions are
    /// proposals and quick reads only.
    async fn coordinate_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut memory = Memory::default();
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let expires_in = {
                let seen = lock(&self.renewal_seen);
                seen.clock
                    .expires_at_ms(&self.settings().lease)
                    .saturating_sub(self.now_ms())
            };
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.coordinate_now.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(expires_in)), if expires_in > 0 => {}
                _ = stop.changed() => return,
            }
            let now = self.now_ms();
            // Invariant 3: a coordinator decides once it has taken into account an entry of
            // the term it leads.
            let applied_term = lock(&self.renewal_seen).applied_term;
            let is_coordinator = self
                .engine
                .may_coordinate(self.raft.leading_term(), applied_term);
            {
                let mut since = lock(&self.coordinator_since);
                match (is_coordinator, *since) {
                    (true, None) => {
                        tracing::info!(generation = %self.raft.state().generation, "this agent is now the coordinator");
                        *since = Some(now);
                    }
                    (false, Some(_)) => *since = None,
                    _ => {}
                }
            }
            if !is_coordinator {
                lock(&self.coordinator_notes).clear();
                continue;
            }
            let mut view = self.view();
            view.measured = memory.measured.clone();
            let actions = self.engine.coordinate(&view, now);
            self.run_coordinator(&view, actions, &mut memory).await;
        }
    }

    /// Carry out the coordinator's `actions` in order, folding what each did into the
    /// coordinate loop's `memory`; their notes are the coordinator's problems until the next
    /// round. (`coordinate` answers only proposals, WAL measures and holds: none of them
    /// acts on the local PostgreSQL, which is the decide loop's.)
    async fn run_coordinator(&self, view: &ClusterView, actions: Vec<Action>, memory: &mut Memory) {
        let mut notes = Vec::new();
        for action in actions {
            let done = self.execute(view, action, memory).await;
            for outcome in done.outcomes {
                memory.fold(outcome);
            }
            notes.extend(done.note);
        }
        self.keep_notes(&self.coordinator_notes, view.state.generation, notes);
    }

    /// The decide loop: register, then reconcile this node's own PostgreSQL, every 200 ms
    /// and at once on news.
    async fn decide_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut memory = Memory {
            carried_out: memory::CarriedOut::load(&self.config.state_dir),
            ..Memory::default()
        };
        *lock(&self.carried_out) = memory.carried_out;
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let me = self.me();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.decide_now.notified() => {}
                // A postmaster crash is handled at once, not at the next tick.
                _ = async {
                    match &self.postgres {
                        Some(pg) => pg.exited().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = stop.changed() => return,
            }
            let now = self.now_ms();
            // Priority and promotable come from the config only at the first registration;
            // afterwards `pgfm set-priority` owns them.
            let registered = self.raft.state().members.get(&me.name).cloned();
            let wanted = match &registered {
                Some(m) => Member {
                    priority: m.priority,
                    promotable: m.promotable,
                    ..me.clone()
                },
                None => me.clone(),
            };
            if registered.as_ref() != Some(&wanted) {
                self.register(&wanted).await;
                continue;
            }
            let db_running = self.watch_db(&mut memory, now);
            let view = self.view();
            self.follow_vip_address(&view).await;
            let Some((report, probed_ms)) = view
                .reports
                .get(&me.name)
                .filter(|o| o.received_at_ms > memory.last_action_ms)
                .map(|o| (o.report.clone(), o.received_at_ms))
            else {
                continue;
            };
            let generation = view.state.generation;
            self.take_resume(&mut memory);
            // PostgreSQL answered: whatever failed before, it runs now.
            if report.db_up {
                memory.db_answered();
            }
            memory.replicas = track_replicas(&memory.replicas, &report, probed_ms);
            let local = LocalView {
                name: me.name.clone(),
                kind: me.kind,
                is_coordinator: false,
                report,
                db_running,
                writable: self.postgres.as_ref().is_some_and(|pg| pg.writable()),
                lease_valid: {
                    let lease = lock(&self.lease);
                    lease.generation == Some(generation) && lease.valid(now, &self.settings().lease)
                },
                crashed_at_ms: memory.db.crashed_at_ms,
                resume_requested: memory.resume_requested,
                rewind_failed: memory.rewind_failed_in(generation),
                start_failures: memory.starts.failures,
                start_error: memory.starts.last_error.clone(),
                start_recloned: memory.starts.recloned,
                reloaded: memory.carried_out.reloaded,
                restarted: memory.carried_out.restarted,
                replicas: memory.replicas.clone(),
            };
            // Every start writes pgfm.conf with the parameters in force.
            if let Some(pg) = &self.postgres {
                pg.set_parameters(pgfm_core::decide::node_parameters(&view, &local, now));
            }
            let actions = self.engine.reconcile(&view, &local, now);
            self.run_local(&view, actions, &mut memory).await;
        }
    }

    /// Carry out this node's `actions` in order. What each did is folded into the decide
    /// loop's `memory` as soon as it ends — after an operator's resume that came while it
    /// ran, as if the resume had cleared the memory then — and the switch point is
    /// published before the action's end is noted and the probe woken: that probe is what
    /// the next decision rests on. The notes are this node's info until the next round.
    async fn run_local(&self, view: &ClusterView, actions: Vec<Action>, memory: &mut Memory) {
        let mut notes = Vec::new();
        for action in actions {
            let done = self.execute(view, action, memory).await;
            self.take_resume(memory);
            let carried_out = memory.carried_out;
            for outcome in done.outcomes {
                memory.fold(outcome);
            }
            *lock(&self.sync_switch) = memory.sync_switch;
            *lock(&self.carried_out) = memory.carried_out;
            if memory.carried_out != carried_out {
                if let Err(e) = memory.carried_out.save(&self.config.state_dir) {
                    tracing::error!(error = %e, "keeping the reloads and restarts carried out in state_dir failed: an agent started again would do the last ones again");
                }
            }
            if done.acted {
                // The next decision waits for a probe made after this action.
                memory.fold(Outcome::Acted {
                    at_ms: self.now_ms(),
                });
                self.probe_now.notify_one();
            }
            notes.extend(done.note);
        }
        self.keep_notes(&self.notes, view.state.generation, notes);
    }

    /// Keep a round's `notes` where reports and status read them, logged when they change.
    fn keep_notes(&self, kept: &Mutex<Vec<String>>, generation: Generation, notes: Vec<String>) {
        let mut kept = lock(kept);
        if *kept != notes {
            for note in &notes {
                tracing::info!(%generation, "holding: {note}");
            }
        }
        *kept = notes;
    }

    /// Take an operator's `pgfm resume`, if one came, into the decide loop's `memory`.
    fn take_resume(&self, memory: &mut Memory) {
        if self.resume_asked.swap(false, Ordering::SeqCst) {
            memory.resume();
        }
    }

    /// Say that the agent is about to stop its PostgreSQL on purpose (see
    /// `db_stop_expected`).
    fn expect_db_down(&self) {
        self.db_stop_expected.store(true, Ordering::SeqCst);
    }

    /// Notice the local postmaster disappearing without the agent stopping it.
    fn watch_db(&self, memory: &mut Memory, now: u64) -> bool {
        let Some(pg) = &self.postgres else {
            return false;
        };
        let running = pg.running_pid().is_some();
        if self.db_stop_expected.swap(false, Ordering::SeqCst) {
            memory.db.expect_down = true;
        }
        if memory.watch_db(running, now) {
            tracing::error!(generation = %self.raft.state().generation, "PostgreSQL died without being stopped");
            // What it left behind is read by a probe of the stopped directory: now.
            self.probe_now.notify_one();
        }
        running
    }

    /// Keep track of when renewals and promotions are applied here (the coordinator's
    /// lease clock).
    async fn renewal_watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut applied = self.raft.watch();
        let mut last_shape = None;
        // Whether the probe loop was woken for the renewals now late.
        let mut late_told = false;
        loop {
            let late_in = {
                let seen = lock(&self.renewal_seen);
                (seen.clock.seen_ms + self.renewals_late_after_ms()).saturating_sub(self.now_ms())
            };
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(late_in)), if !late_told => {
                    // The primary missed two renewals: check its database now, not at the
                    // next probe tick, so that the evidence a failover needs is in by the
                    // time its lease runs out.
                    late_told = true;
                    let primary = self.raft.state().primary;
                    if primary.is_some_and(|p| p != self.config.name) {
                        self.probe_now.notify_one();
                    }
                    continue;
                }
                _ = stop.changed() => return,
            }
            let (state, term, shape, switchover) = {
                let a = applied.borrow_and_update();
                let s = &a.state;
                let switchover = s.switchover.clone();
                let shape = (
                    s.generation,
                    s.primary.clone(),
                    s.lease_released,
                    s.switchover.clone(),
                    s.members.len(),
                );
                (
                    s.clone(),
                    a.last_applied.map_or(0, |l| l.leader_id.term),
                    shape,
                    switchover,
                )
            };
            let now = self.now_ms();
            {
                let lease = settings_in_force(&state, &self.config).lease;
                let mut seen = lock(&self.renewal_seen);
                let clock = seen.clock.time(&state, now, &lease);
                if clock != seen.clock {
                    seen.clock = clock;
                    late_told = false;
                }
                if seen.switchover != switchover {
                    seen.switchover = switchover;
                    seen.switchover_at_ms = now;
                }
                seen.applied_term = term;
            }
            // Anything but a renewal changes what agents should do: probe and decide now
            // rather than at the next tick (a switchover is a chain of such steps).
            if last_shape.as_ref() != Some(&shape) {
                last_shape = Some(shape);
                self.probe_now.notify_one();
                self.wake_decisions();
            }
        }
    }

    /// `pgfm resume`: let a node waiting for the operator rejoin.
    pub fn resume(&self) -> String {
        self.resume_asked.store(true, Ordering::SeqCst);
        format!(
            "{}: resume requested; the node rejoins at its next decision",
            self.config.name
        )
    }

    async fn register(&self, me: &Member) {
        match self
            .raft
            .propose(pgfm_core::Command::Register { member: me.clone() })
            .await
        {
            Ok(()) => tracing::info!(node = %me.name, "registered with the cluster"),
            Err(ProposeError::Refused(refused)) => {
                let note = format!("registration refused: {refused}");
                let mut notes = lock(&self.notes);
                if notes.first() != Some(&note) {
                    tracing::error!("{note}");
                    *notes = vec![note];
                }
            }
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
            auto_failover: view.settings.auto_failover,
            now_ms: self.now_ms(),
            problems,
            tls: self.config.tls.is_some(),
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

    async fn resume(&self) -> Result<String, String> {
        let mut said = Vec::new();
        if self.raft.state().paused {
            said.push(self.set_paused(false).await.map_err(|r| format!("{r:?}"))?);
        }
        said.push(Agent::resume(self));
        Ok(said.join("; "))
    }

    async fn promote(
        &self,
        request: pgfm_api::PromoteRequest,
    ) -> Result<pgfm_api::PromoteStarted, pgfm_api::Refusal> {
        self.start_promotion(request).await
    }

    async fn set_priority(
        &self,
        request: pgfm_api::PriorityRequest,
    ) -> Result<String, pgfm_api::Refusal> {
        self.change_priority(request).await
    }

    async fn set_synchronous(
        &self,
        request: pgfm_api::SynchronousRequest,
    ) -> Result<String, pgfm_api::Refusal> {
        self.change_synchronous(request).await
    }

    async fn pause(&self) -> Result<String, pgfm_api::Refusal> {
        self.set_paused(true).await
    }

    async fn settings(&self) -> pgfm_api::SettingsView {
        self.show_settings()
    }

    async fn edit_settings(
        &self,
        request: pgfm_api::EditSettingsRequest,
    ) -> Result<String, pgfm_api::Refusal> {
        self.change_settings(request).await
    }

    async fn cancel_switchover(&self) -> Result<String, pgfm_api::Refusal> {
        Agent::cancel_switchover(self).await
    }

    async fn stop_cluster(&self) -> Result<String, pgfm_api::Refusal> {
        self.stop_all().await
    }

    async fn stop_agent(&self) -> String {
        self.stop_soon();
        format!("{}: stopping (PostgreSQL keeps running)", self.config.name)
    }

    async fn allow_node(
        &self,
        request: pgfm_api::AllowRequest,
    ) -> Result<String, pgfm_api::Refusal> {
        self.allow(request).await
    }

    async fn disallow_node(
        &self,
        request: pgfm_api::DisallowRequest,
    ) -> Result<String, pgfm_api::Refusal> {
        self.disallow(request).await
    }

    async fn health(&self, check: pgfm_api::HealthCheck) -> pgfm_api::Health {
        self.check_health(check)
    }

    async fn metrics(&self) -> pgfm_api::Metrics {
        self.collect_metrics()
    }

    async fn history(&self) -> Vec<pgfm_api::HistoryEntry> {
        self.history_entries()
    }

    async fn wal_position(&self) -> Result<pgfm_api::WalPosition, pgfm_api::Refusal> {
        let Some(pg) = &self.postgres else {
            return Err(pgfm_api::Refusal::Refused(format!(
                "{} is a witness: it holds no WAL",
                self.config.name
            )));
        };
        match pg.wal_position().await {
            Ok(position) => Ok(pgfm_api::WalPosition {
                in_recovery: position.is_some(),
                position,
            }),
            Err(e) => Err(pgfm_api::Refusal::Refused(format!(
                "PostgreSQL on {} does not answer: {e}",
                self.config.name
            ))),
        }
    }

    async fn switchover(
        &self,
        request: pgfm_api::SwitchoverRequest,
    ) -> Result<pgfm_api::SwitchoverStarted, pgfm_api::Refusal> {
        self.start_switchover(request).await
    }

    async fn maintenance(
        &self,
        request: pgfm_api::MaintenanceRequest,
    ) -> Result<pgfm_api::MaintenanceStarted, pgfm_api::Refusal> {
        self.change_maintenance(request).await
    }

    async fn schedule_switchover(
        &self,
        request: pgfm_api::ScheduleRequest,
    ) -> Result<String, pgfm_api::Refusal> {
        self.schedule(request).await
    }

    async fn reload(
        &self,
        request: pgfm_api::ReloadRequest,
    ) -> Result<pgfm_api::NodesAsked, pgfm_api::Refusal> {
        self.request_reload(request).await
    }

    async fn set_tags(&self, request: pgfm_api::TagsRequest) -> Result<String, pgfm_api::Refusal> {
        self.change_tags(request).await
    }

    async fn restart(
        &self,
        request: pgfm_api::RestartRequest,
    ) -> Result<pgfm_api::NodesAsked, pgfm_api::Refusal> {
        self.request_restart(request).await
    }

    async fn schedule_restart(
        &self,
        request: pgfm_api::ScheduleRestartRequest,
    ) -> Result<String, pgfm_api::Refusal> {
        self.schedule_restart_at(request).await
    }

    async fn cancel_restart(
        &self,
        request: pgfm_api::CancelRequest,
    ) -> Result<String, pgfm_api::Refusal> {
        self.cancel_scheduled_restart(request).await
    }

    async fn reinit(&self, request: pgfm_api::ReinitRequest) -> Result<String, pgfm_api::Refusal> {
        self.start_reinit(request).await
    }

    async fn report(&self, report: NodeReport) -> ReportOutcome {
        if !self.raft.is_coordinator() {
            return ReportOutcome::NotCoordinator(self.raft.coordinator());
        }
        if !self.raft.voters().iter().any(|(n, _)| *n == report.name) {
            tracing::warn!(node = %report.name, "refused a report from an agent that is not a member (disallowed?)");
            return ReportOutcome::NotCoordinator(self.raft.coordinator());
        }
        self.remember(report, 0);
        self.wake_decisions();
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

pub(crate) fn postgres_for(config: &Config) -> anyhow::Result<Option<Postgres>> {
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
        ssl: config.tls.as_ref().map(|t| pgfm_postgres::SslFiles {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        }),
    })))
}

/// Certificates rotated on disk reach the running PostgreSQL too: when the agent's own TLS
/// takes a new set (checked, and only a usable one: `pgfm_tls::Tls`), the server's copies
/// are refreshed and it reloads. Looked at every 5 s.
async fn postgres_tls_loop(agent: Arc<Agent>, tls: Arc<pgfm_tls::Tls>) {
    let Some(pg) = agent.postgres.clone() else {
        return;
    };
    let mut seen = tls.version();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let version = tls.version();
        if version == seen {
            continue;
        }
        // Tried again 5 s later when it fails.
        match pg.refresh_ssl().await {
            Ok(reloaded) => {
                seen = version;
                if reloaded {
                    tracing::info!(
                        cert = %tls.files().cert.display(),
                        "TLS: the certificate files changed; PostgreSQL reloaded with them"
                    );
                }
            }
            Err(e) => tracing::warn!("TLS: giving PostgreSQL the new certificate failed: {e:#}"),
        }
    }
}

/// Run the agent until SIGTERM or SIGINT. PostgreSQL keeps running when the agent stops.
/// `systemd`: the service manager that started it (`SystemdNotifier::take_from_env`).
pub async fn run(config: Config, systemd: Option<SystemdNotifier>) -> anyhow::Result<Stopped> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let token = config.read_token()?;
    let tls = config.load_tls()?;
    let _lock = lock_state_dir(&config)?;
    let platform = Platform::production(&config, tls.clone()).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on node.listen {}", config.listen))?;
    let running = start(config, token, platform).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let rotation = tls
        .clone()
        .map(|tls| tokio::spawn(postgres_tls_loop(running.agent.clone(), tls)));
    let server = match tls {
        Some(tls) => serve(
            running.router(),
            pgfm_tls::TlsListener::new(listener, tls)?,
            stop_rx,
        ),
        None => serve(running.router(), listener, stop_rx),
    };
    let (systemd_stop, systemd_stopped) = watch::channel(false);
    let systemd = systemd.map(|notifier| {
        tokio::spawn(systemd::notify_loop(
            running.agent.clone(),
            notifier,
            systemd_stopped,
        ))
    });
    let stopped = wait_for_stop(&running.agent).await?;
    // systemd hears of the stop first: the watchdog is not enforced while the loops end.
    let _ = systemd_stop.send(true);
    if let Some(task) = systemd {
        let _ = task.await;
    }
    if let Some(task) = rotation {
        task.abort();
    }
    running.stop().await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(stopped)
}

/// An agent started by `start`: its loops run until `stop`.
pub struct Running {
    agent: Arc<Agent>,
    raft: EmbeddedRaft,
    token: Arc<str>,
    loops: Loops,
    stop: watch::Sender<bool>,
}

/// Start an agent on `platform`: open its Raft state, register nothing yet, and spawn its
/// loops (on the current Tokio runtime). Serving its router is the caller's part.
pub async fn start(config: Config, token: Arc<str>, platform: Platform) -> anyhow::Result<Running> {
    let raft = EmbeddedRaft::start(
        &config.name,
        &config.state_dir.join("raft"),
        &config.peer_list(),
        platform.transport.clone(),
        token.clone(),
        &RaftSettings::default(),
    )
    .await?;
    let host_watchdog = watchdog::HostWatchdog::new(
        config.watchdog.mode,
        platform.watchdog,
        // The lease in force as this agent starts: its own log's, once the cluster
        // committed its settings; a later change is followed by the lease loop
        // (`HostWatchdog::retime`).
        settings_in_force(&raft.state(), &config)
            .lease
            .watchdog_timeout_s(),
    );
    let agent = Arc::new(Agent {
        config,
        token: token.clone(),
        raft: raft.clone(),
        postgres: platform.database,
        vip_base: platform.vip,
        vip: Mutex::new(None),
        vip_unplaced: Mutex::new(None),
        vip_stale_checked: std::sync::atomic::AtomicBool::new(false),
        clock: platform.clock,
        engine: platform.engine,
        transport: platform.transport,
        reports: Mutex::new(BTreeMap::new()),
        activity: Mutex::new(None),
        notes: Mutex::new(Vec::new()),
        coordinator_notes: Mutex::new(Vec::new()),
        lease: Mutex::new(HeldLease::default()),
        renewal_seen: Mutex::new(RenewalSeen::default()),
        coordinator_since: Mutex::new(None),
        resume_asked: AtomicBool::new(false),
        db_stop_expected: AtomicBool::new(false),
        probe_now: tokio::sync::Notify::new(),
        decide_now: tokio::sync::Notify::new(),
        coordinate_now: tokio::sync::Notify::new(),
        probe_latency_ms: std::sync::atomic::AtomicU64::new(0),
        loop_ticks: LoopTicks::default(),
        tls_expiry: Mutex::new(None),
        file_differs: Mutex::new(Vec::new()),
        sync_switch: Mutex::new(None),
        carried_out: Mutex::new(Default::default()),
        shutdown: tokio::sync::Notify::new(),
        watchdog: Mutex::new(host_watchdog),
    });
    count_from_start(&agent);
    tracing::info!(
        cluster = %agent.config.cluster,
        listen = %agent.config.listen,
        kind = ?agent.config.kind,
        "agent started"
    );
    let (stop, stop_rx) = watch::channel(false);
    let loops = spawn_loops(&agent, platform.remote, stop_rx);
    Ok(Running {
        agent,
        raft,
        token,
        loops,
        stop,
    })
}

impl Running {
    /// The committed state as this agent has applied it.
    pub fn cluster_state(&self) -> pgfm_core::ClusterState {
        pgfm_coord::Coordinator::state(&self.raft)
    }

    /// The committed primary and generation as applied here, without copying the state.
    pub fn primary(&self) -> (Option<String>, Generation) {
        self.raft.primary()
    }

    /// `node`'s maintenance as applied here, without copying the state.
    pub fn maintenance_of(&self, node: &str) -> Option<pgfm_core::model::Maintenance> {
        self.raft.maintenance_of(node)
    }

    /// This agent leads Raft: it is the coordinator.
    pub fn is_coordinator(&self) -> bool {
        pgfm_coord::Coordinator::is_coordinator(&self.raft)
    }

    /// The agent's API and the Raft RPCs, behind the cluster token: what `run` serves on
    /// its listener, and where the simulation delivers requests.
    pub fn router(&self) -> axum::Router {
        pgfm_api::router(self.agent.clone())
            .merge(pgfm_coord::http::router(self.raft.clone()))
            .layer(axum::middleware::from_fn_with_state(
                self.token.clone(),
                pgfm_api::auth::require_token,
            ))
    }

    /// Stop the loops, then release the VIP and stop Raft, in the one order that keeps
    /// the host watchdog from resetting a node that stops gracefully. PostgreSQL keeps
    /// running.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let (agent, raft, loops) = (self.agent, self.raft, self.loops);
        // PostgreSQL keeps running: a graceful stop must not reset the host, however long
        // the other loops take to end their current action. The lease loop, the only
        // feeder, ends first.
        let _ = loops.lease.await;
        lock(&agent.watchdog).stop(agent.raft.state().generation);
        let _ = tokio::join!(loops.probe, loops.decide, loops.coordinate, loops.renewals);
        // Clients must not keep writing to a primary no agent watches over.
        agent
            .release_vip(agent.raft.state().generation, "the agent is stopping")
            .await;
        raft.shutdown().await;
    }
}

/// `[vip]`: the virtual IP, opened on its interface.
pub(crate) async fn open_vip(
    config: &Config,
) -> anyhow::Result<Option<Arc<dyn pgfm_net::VirtualIp>>> {
    let Some(v) = &config.vip else {
        return Ok(None);
    };
    // The file's address until the cluster's is known (`Agent::follow_vip_address`).
    let (address, prefix) = v
        .address
        .as_deref()
        .and_then(|a| pgfm_core::settings::vip_address(a).ok())
        .unwrap_or((std::net::Ipv4Addr::UNSPECIFIED, 32));
    let spec = pgfm_net::VipSpec {
        address,
        prefix,
        interface: v.interface.clone(),
    };
    let what = match &v.address {
        Some(_) => spec.to_string(),
        None => format!("on {}", v.interface),
    };
    let vip = pgfm_net::Vip::open(spec)
        .await
        .with_context(|| format!("config {}: [vip] {what}", config.file.display()))?;
    Ok(Some(Arc::new(vip)))
}

/// As if just applied: this agent counts any lease (and switchover step) from its own
/// start.
fn count_from_start(agent: &Agent) {
    let state = agent.raft.state();
    let lease = settings_in_force(&state, &agent.config).lease;
    let mut seen = lock(&agent.renewal_seen);
    seen.clock = pgfm_core::lease::LeaseClock::start(&state, 0, &lease);
    seen.switchover = state.switchover.clone();
}

/// Serve `app` on `listener` (TCP, or TLS over it) until `stop` turns true.
fn serve<L>(
    app: axum::Router,
    listener: L,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt;
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        // tap_io: the peer's address reaches the handlers (ConnectInfo) for any listener.
        axum::serve(listener.tap_io(|_| ()), service)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await
    })
}

/// The agent's loops, each running until `stop` turns true.
struct Loops {
    probe: tokio::task::JoinHandle<()>,
    decide: tokio::task::JoinHandle<()>,
    coordinate: tokio::task::JoinHandle<()>,
    renewals: tokio::task::JoinHandle<()>,
    lease: tokio::task::JoinHandle<()>,
}

fn spawn_loops(
    agent: &Arc<Agent>,
    remote: Box<dyn RemoteProbe>,
    stop: watch::Receiver<bool>,
) -> Loops {
    let span = tracing::Span::current();
    let probe = tokio::spawn(
        agent
            .clone()
            .probe_loop(remote, stop.clone())
            .instrument(span.clone()),
    );
    let decide = tokio::spawn(
        agent
            .clone()
            .decide_loop(stop.clone())
            .instrument(span.clone()),
    );
    let coordinate = tokio::spawn(
        agent
            .clone()
            .coordinate_loop(stop.clone())
            .instrument(span.clone()),
    );
    let renewals = tokio::spawn(
        agent
            .clone()
            .renewal_watch(stop.clone())
            .instrument(span.clone()),
    );
    let lease = tokio::spawn(agent.clone().lease_loop(stop).instrument(span));
    Loops {
        probe,
        decide,
        coordinate,
        renewals,
        lease,
    }
}

/// Wait for SIGTERM, SIGINT or a stop request.
async fn wait_for_stop(agent: &Agent) -> anyhow::Result<Stopped> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    Ok(tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM: stopping the agent (PostgreSQL keeps running)");
            Stopped::Signal
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: stopping the agent (PostgreSQL keeps running)");
            Stopped::Signal
        }
        _ = agent.shutdown.notified() => {
            // Let the answer to the stop request leave first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            tracing::info!("stop requested: stopping the agent (PostgreSQL keeps running)");
            Stopped::Asked
        }
    })
}

/// Why the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT (systemctl stop, Ctrl-C).
    Signal,
    /// `pgfm stop-cluster` (or a stop request to this agent): a service manager must not
    /// start it again (`pgfm agent` exits with `Stopped::ASKED_EXIT`).
    Asked,
}

impl Stopped {
    /// The exit status of `pgfm agent` stopped on request, which `pgfm.service` lists in
    /// `RestartPreventExitStatus`.
    pub const ASKED_EXIT: u8 = 4;
}
