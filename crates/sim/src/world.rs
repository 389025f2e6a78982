//! One simulated run: build the cluster from the seed (nodes, clock rates, network, the
//! PostgreSQL model, the faults), then step the global time a millisecond at a time —
//! strike and undo faults, deliver the network's due messages, run every agent that can
//! run up to now, let PostgreSQL stream and the writer write, reset a host whose watchdog
//! ran out — and check the invariants after every step (`check.rs`). The same options
//! make the same run, line for line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pgfm_core::engine::{Engine, Rules};
use pgfm_core::transport::Failure;

use crate::check::Checker;
use crate::faults::{self, Fault, FaultSet, Kind, Target};
use crate::hosts::Hosts;
use crate::net::{Event, NetSettings, SharedNet};
use crate::node::{Env, Node, NodeSpec, SimTime};
use crate::postgres::{PgModel, Shared};
use crate::rng::Rng;
use crate::trace::{self, Trace};
use crate::vip::VipTable;

/// What to simulate.
#[derive(Clone)]
pub struct Options {
    pub seed: u64,
    pub data_nodes: usize,
    /// `[replication] synchronous`: off, on or quorum.
    pub synchronous: String,
    pub faults: FaultSet,
    /// Faults per run (None: one to three, drawn).
    pub fault_count: Option<usize>,
    /// These faults instead of drawn ones: a scenario a seed found, pinned as a test.
    pub script: Option<Vec<Fault>>,
    /// How long the cluster runs without a fault at the end, after which it must have a
    /// writable primary (ms).
    pub quiet_ms: u64,
    /// How far a host's clock rate may be from 1 (0.03: ±3 %). The lease rules hold up to
    /// about ±10 % here with the default timing (the watchdog's path is the tightest: its
    /// last feed at `lease - reset - watchdog` on the primary's clock, then `watchdog +
    /// reset` counted in global time, must come before `lease + drift_margin` on the
    /// coordinator's: `1.15 s / (1 - e) + 1.25 s <= 2.8 s / (1 + e)`). A real watchdog counts
    /// at its host's rate, which leaves about ±8 % (`2.15 s / (1 - e) + 0.25 s <= 2.8 s /
    /// (1 + e)`); real monotonic clocks are within 0.01 %.
    pub drift: f64,
    /// `[watchdog] mode` of the data nodes: required, automatic or off.
    pub watchdog: String,
    /// Keep the trace (agent logs and the simulator's lines).
    pub trace: bool,
    /// The rules the agents apply: `Rules`, or a deliberately broken variant.
    pub engine: Arc<dyn Engine>,
    /// `[timing]` keys of every agent's config other than the defaults, as `(key, value)`
    /// in TOML (`("lease", "\"2400ms\"")`): `pgfm-sim --timing lease=2400ms`.
    pub timing: Vec<(String, String)>,
    /// Every data directory starts empty: the agents choose one node to run initdb and
    /// the others clone it (`pgfm-sim --from-empty`). Otherwise pg1 starts initialised.
    pub from_empty: bool,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            data_nodes: 3,
            synchronous: "off".into(),
            faults: FaultSet::default(),
            fault_count: None,
            script: None,
            quiet_ms: 15_000,
            drift: 0.03,
            watchdog: "required".into(),
            trace: false,
            engine: Arc::new(Rules),
            timing: Vec::new(),
            from_empty: false,
        }
    }

    /// The command that replays this run with its trace.
    pub fn replay_command(&self) -> String {
        let timing: String = self
            .timing
            .iter()
            .map(|(k, v)| format!(" --timing {k}={}", v.trim_matches('"')))
            .collect();
        format!(
            "cargo run --release -p pgfm-sim -- --seed {} --data-nodes {} --synchronous {} --watchdog {} --faults {}{}{timing}{}{} --trace",
            self.seed,
            self.data_nodes,
            self.synchronous,
            self.watchdog,
            self.faults,
            self.fault_count
                .map(|n| format!(" --fault-count {n}"))
                .unwrap_or_default(),
            if self.drift == Options::new(0).drift {
                String::new()
            } else {
                format!(" --drift {}", self.drift)
            },
            if self.from_empty { " --from-empty" } else { "" },
        )
    }
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    /// Invariants broken, in the order found (the run stops at the first).
    pub violations: Vec<String>,
    /// The faults that struck, in words.
    pub faults: Vec<String>,
    /// Simulated time run (ms).
    pub ran_ms: u64,
    /// Acknowledged commits, synchronous and asynchronous, and the asynchronous ones missing
    /// from the final primary.
    pub commits_sync: u64,
    pub commits_async: u64,
    pub lost_async: u64,
    /// The longest time between two acknowledged commits, from the first (ms): a failover,
    /// or commits waiting for a synchronous standby.
    pub longest_write_gap_ms: u64,
    /// Promotions committed (the final generation - 1).
    pub promotions: u64,
    pub messages: u64,
    pub messages_lost: u64,
    pub trace: Vec<String>,
}

/// Host flags the PostgreSQL model asks about, kept in step with the nodes.
struct HostTable {
    flags: Mutex<BTreeMap<String, (bool, bool)>>,
    net: SharedNet,
}

impl Hosts for HostTable {
    fn up(&self, host: &str) -> bool {
        self.flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .is_some_and(|f| f.0)
    }
    fn frozen(&self, host: &str) -> bool {
        self.flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .is_some_and(|f| f.1)
    }
    fn reachable(&self, from: &str, to: &str) -> bool {
        self.net.lock().reachable(from, to)
    }
}

/// Something the simulator does at a given time.
#[derive(Debug, Clone)]
enum Due {
    Strike(Fault),
    /// The end of a fault on node `usize`.
    Undo(Kind, usize),
    /// A watchdog reset takes the host down.
    Reset(usize),
    /// A host that was reset boots again.
    Boot(usize),
    /// An agent starts for the first time.
    Launch(usize),
    /// One stall of an agent (`Kind::Stalls`), ended by an `Undo(AgentFreeze)`.
    Stall(usize),
}

pub struct World {
    options: Options,
    now_ms: u64,
    time: SimTime,
    net: SharedNet,
    hosts: Arc<HostTable>,
    pg: Shared,
    nodes: Vec<Node>,
    rng: Rng,
    due: BTreeMap<(u64, u64), Due>,
    due_seq: u64,
    token: Arc<str>,
    /// The lease the run started with, once an operator changed it (`Kind::LeaseChange`).
    base_lease: Option<pgfm_core::lease::LeaseSettings>,
    vip: Arc<VipTable>,
    dir: PathBuf,
    checker: Checker,
    trace: Trace,
    report: Report,
    /// When the last fault ends (ms): the quiet period starts then.
    faults_end_ms: u64,
}

/// The step of the global clock: network deliveries, the PostgreSQL model and faults
/// happen on these boundaries (each agent's own timers fire at their exact times).
const QUANTUM_MS: u64 = 5;

/// The wall clock at the simulation's start (ms since the epoch), every run the same.
const WALL_BASE_MS: u64 = 1_800_000_000_000;

/// Warm-up before the first fault: the cluster forms, clones and streams.
const WARM_UP_MS: u64 = 8_000;

/// Run one simulation to its end or its first violation.
pub fn run(options: Options) -> Report {
    let time = SimTime::default();
    // openraft's election timeouts: from the seed, like everything else.
    pgfm_coord::runtime::seed_elections(Rng::new(options.seed).fork(5).next_u64());
    let trace = Trace::new(time.clone(), options.trace);
    let _capture = trace.capture();
    let mut world = match World::new(options, time, trace) {
        Ok(world) => world,
        Err(e) => {
            return Report {
                violations: vec![format!("the simulation could not start: {e:#}")],
                ..Report::default()
            }
        }
    };
    world.start();
    let end = world.end_ms();
    while world.now_ms < end && world.checker.violations.is_empty() {
        world.step();
    }
    if world.checker.violations.is_empty() {
        world.check_live();
    }
    world.finish()
}

impl World {
    fn new(options: Options, time: SimTime, trace: Trace) -> anyhow::Result<World> {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let root = Rng::new(options.seed);
        let names: Vec<String> = (1..=options.data_nodes)
            .map(|i| format!("pg{i}"))
            .chain(std::iter::once("witness".to_string()))
            .collect();
        let addresses: BTreeMap<String, String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (address(i), n.clone()))
            .collect();
        let net = SharedNet::new(NetSettings::default(), root.fork(1), addresses);
        let hosts = Arc::new(HostTable {
            flags: Mutex::new(names.iter().map(|n| (n.clone(), (true, false))).collect()),
            net: net.clone(),
        });
        let data: Vec<&str> = names[..options.data_nodes]
            .iter()
            .map(String::as_str)
            .collect();
        let initialised = if options.from_empty { "" } else { data[0] };
        let pg_model = PgModel::new(options.seed, &data, initialised, hosts.clone());
        let vip = VipTable::new(
            pgfm_net::VipSpec {
                address: std::net::Ipv4Addr::new(10, 77, 0, 100),
                prefix: 24,
                interface: "eth0".into(),
            },
            hosts.clone(),
        );
        let pg: Shared = Arc::new(Mutex::new(pg_model));
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "pgfm-sim-{}-{}-{run}",
            std::process::id(),
            options.seed
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut rng = root.fork(2);
        let peers: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("[[peers]]\nname = \"{n}\"\naddress = \"{}\"\n", address(i)))
            .collect();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let data = i < options.data_nodes;
            let rate = 1.0 + (rng.range(0, 2001) as f64 / 1000.0 - 1.0) * options.drift;
            let config_text = node_config(&dir, i, name, data, &peers, &options);
            nodes.push(Node::new(NodeSpec {
                name: name.clone(),
                data,
                config_path: dir.join(format!("{name}.toml")),
                config_text,
                rate,
            }));
        }
        let mut fault_rng = root.fork(3);
        let count = options
            .fault_count
            .unwrap_or_else(|| fault_rng.range(1, 4) as usize);
        let plan = match &options.script {
            Some(script) => script.clone(),
            // A cluster formed from empty data directories is struck while it forms too.
            None => {
                let from = if options.from_empty { 500 } else { WARM_UP_MS };
                faults::plan(
                    &mut fault_rng,
                    &options.faults,
                    nodes.len(),
                    count,
                    from,
                    from + 15_000,
                )
            }
        };
        let faults_end_ms = plan
            .iter()
            .map(|f| f.at_ms + f.duration_ms)
            .max()
            .unwrap_or(WARM_UP_MS);
        let mut world = World {
            report: Report {
                seed: options.seed,
                ..Report::default()
            },
            options,
            now_ms: 0,
            time,
            net,
            hosts,
            pg,
            nodes,
            rng: root.fork(4),
            due: BTreeMap::new(),
            due_seq: 0,
            token: Arc::from("simulated-cluster-token"),
            base_lease: None,
            vip,
            dir,
            checker: Checker::default(),
            trace,
            faults_end_ms,
        };
        let rates: Vec<String> = world
            .nodes
            .iter()
            .map(|n| format!("{} {:.3}", n.spec.name, n.spec.rate))
            .collect();
        world
            .trace
            .say(format!("clock rates: {}", rates.join(", ")));
        for fault in plan {
            world.schedule(fault.at_ms, Due::Strike(fault));
        }
        Ok(world)
    }

    /// The run ends a quiet period after the last fault (and its reset, if any) ended.
    fn end_ms(&self) -> u64 {
        self.faults_end_ms.max(WARM_UP_MS) + self.options.quiet_ms
    }

    fn schedule(&mut self, at_ms: u64, due: Due) {
        self.due_seq += 1;
        self.due.insert((at_ms, self.due_seq), due);
    }

    /// Each agent starts at its own moment in the first half second, as agents started by
    /// hand or by systemd do: started together, their timers would tick in step, and every
    /// election would split the vote.
    fn start(&mut self) {
        for i in 0..self.nodes.len() {
            let at = self.rng.range(0, 500);
            self.schedule(at, Due::Launch(i));
        }
    }

    fn start_agent(&mut self, i: usize) {
        trace::set_current(self.nodes[i].name());
        let env = Env {
            net: &self.net,
            pg: &self.pg,
            time: &self.time,
            engine: &self.options.engine,
            token: &self.token,
            vip: &self.vip,
            seed: self.options.seed,
            wall_base_ms: WALL_BASE_MS,
        };
        let started = self.nodes[i].start_agent(&env);
        trace::set_current("");
        if let Err(e) = started {
            let name = self.nodes[i].name().to_string();
            self.checker.violation(
                self.now_ms,
                format!("the agent of {name} did not start: {e:#}"),
            );
        }
    }

    /// One millisecond of the cluster's life.
    fn step(&mut self) {
        self.now_ms += QUANTUM_MS;
        self.time.set(self.now_ms);
        self.net.lock().set_now(self.now_ms);
        self.strike_due();
        self.watch_watchdogs();
        self.deliver();
        for i in 0..self.nodes.len() {
            trace::set_current(self.nodes[i].name());
            self.nodes[i].run_until(self.now_ms);
        }
        trace::set_current("");
        self.lock_pg().tick(self.now_ms);
        self.checker
            .check(self.now_ms, &self.nodes, &self.pg, &self.vip, &self.trace);
    }

    fn lock_pg(&self) -> std::sync::MutexGuard<'_, PgModel> {
        self.pg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deliver every message due by now.
    fn deliver(&mut self) {
        loop {
            let Some(event) = self.net.lock().next_due(self.now_ms) else {
                return;
            };
            match event {
                Event::Answer { reply, answer } => {
                    let _ = reply.send(answer);
                }
                Event::Deliver {
                    from,
                    to,
                    request,
                    reply,
                } => {
                    let Some(i) = self.index(&to) else { continue };
                    let node = &mut self.nodes[i];
                    let connect_timeout = self.net.lock().settings.connect_timeout_ms;
                    let url = request.url();
                    if !self.net.lock().reachable(&from, &to) || !node.up {
                        // No SYN-ACK ever comes: the connection attempt times out.
                        if let Some(reply) = reply {
                            let why = format!(
                                "error sending request for url ({url}): client error (Connect): operation timed out"
                            );
                            self.net
                                .lock()
                                .fail(reply, connect_timeout, Failure::Connect, why);
                        }
                    } else if !node.agent_running() {
                        if let Some(reply) = reply {
                            let why = format!(
                                "error sending request for url ({url}): client error (Connect): tcp connect error: Connection refused (os error 111)"
                            );
                            self.net.lock().fail(reply, 1, Failure::Connect, why);
                        }
                    } else {
                        node.deliver(&self.net, from, request, reply);
                    }
                }
            }
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == name)
    }

    fn sync_hosts(&self) {
        let mut flags = self.hosts.flags.lock().unwrap_or_else(|p| p.into_inner());
        for node in &self.nodes {
            flags.insert(node.name().to_string(), (node.up, node.frozen));
        }
    }

    /// The committed primary as the most advanced agent has applied it.
    fn primary(&self) -> Option<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.primary())
            .max_by_key(|(_, generation)| *generation)
            .and_then(|(p, _)| p)
    }

    fn coordinator(&self) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.up && n.is_coordinator())
            .map(|n| n.name().to_string())
    }

    fn strike_due(&mut self) {
        while let Some((&(at, seq), _)) = self.due.first_key_value() {
            if at > self.now_ms {
                return;
            }
            let Some(due) = self.due.remove(&(at, seq)) else {
                return;
            };
            match due {
                Due::Strike(fault) => self.strike(fault),
                Due::Undo(kind, i) => self.undo(kind, i),
                Due::Reset(i) => self.reset(i),
                Due::Boot(i) => self.boot(i),
                Due::Launch(i) => self.start_agent(i),
                Due::Stall(i) => self.nodes[i].agent_frozen = true,
            }
            self.sync_hosts();
        }
    }

    fn strike(&mut self, fault: Fault) {
        let name = match &fault.target {
            Target::Primary => self.primary(),
            Target::Coordinator => self.coordinator(),
            Target::Node(i) => self.nodes.get(*i).map(|n| n.name().to_string()),
        };
        let Some(i) = name.as_deref().and_then(|n| self.index(n)) else {
            self.trace.say(format!(
                "fault {} on the {:?}: nobody is that now",
                fault.kind, fault.target
            ));
            return;
        };
        let name = self.nodes[i].name().to_string();
        let words = format!(
            "{} {} ({:?}) at {} ms for {} ms",
            fault.kind, name, fault.target, self.now_ms, fault.duration_ms
        );
        self.trace.say(format!("FAULT {words}"));
        self.report.faults.push(words);
        let node = &mut self.nodes[i];
        match fault.kind {
            Kind::HostCrash => {
                if node.up {
                    self.power_off(i);
                }
            }
            Kind::AgentCrash => node.kill_agent(),
            Kind::PostmasterCrash => {
                self.lock_pg().crash_postmaster(&name);
                return;
            }
            Kind::Freeze => node.frozen = true,
            Kind::AgentFreeze => node.agent_frozen = true,
            Kind::Partition | Kind::PartitionIn | Kind::PartitionOut => {
                let others: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| n.name().to_string())
                    .filter(|n| *n != name)
                    .collect();
                let mut net = self.net.lock();
                for other in &others {
                    if fault.kind != Kind::PartitionIn {
                        net.cut(&name, other);
                    }
                    if fault.kind != Kind::PartitionOut {
                        net.cut(other, &name);
                    }
                }
            }
            Kind::Lossy => {
                let mut net = self.net.lock();
                net.settings.drop_chance = 0.05;
                net.settings.duplicate_chance = 0.05;
                net.settings.slow_chance = 0.2;
            }
            Kind::Stalls => {
                let end = self.now_ms + fault.duration_ms;
                for j in 0..self.nodes.len() {
                    let mut at = self.now_ms;
                    loop {
                        at += self.rng.range(200, 3_000);
                        if at >= end {
                            break;
                        }
                        let stall = self.rng.range(50, 1_500);
                        self.schedule(at, Due::Stall(j));
                        self.schedule(at + stall, Due::Undo(Kind::AgentFreeze, j));
                        at += stall;
                    }
                }
                return;
            }
            Kind::SlowLink => {
                let every = self.rng.range(20, 100);
                self.lock_pg().slow_link(&name, Some(every));
            }
            Kind::LeaseChange => self.edit_lease(i, true),
            Kind::Maintenance => self.maintenance(i, true),
            Kind::Tags => self.tags(i, true),
            Kind::Restart => self.restart(i, true),
        }
        let until = self.now_ms + fault.duration_ms;
        self.schedule(until, Due::Undo(fault.kind, i));
    }

    fn undo(&mut self, kind: Kind, i: usize) {
        let name = self.nodes[i].name().to_string();
        self.trace.say(format!("END {kind} {name}"));
        match kind {
            Kind::HostCrash => {
                if self.nodes[i].up {
                    return;
                }
                self.boot(i);
            }
            Kind::AgentCrash => {
                if self.nodes[i].up && !self.nodes[i].agent_running() {
                    self.start_agent(i);
                }
            }
            Kind::PostmasterCrash => {}
            Kind::Freeze => self.nodes[i].frozen = false,
            Kind::AgentFreeze => self.nodes[i].agent_frozen = false,
            Kind::Partition | Kind::PartitionIn | Kind::PartitionOut => {
                let others: Vec<String> = self.nodes.iter().map(|n| n.name().to_string()).collect();
                let mut net = self.net.lock();
                for other in &others {
                    net.heal(&name, other);
                    net.heal(other, &name);
                }
            }
            Kind::Stalls => {}
            Kind::SlowLink => self.lock_pg().slow_link(&name, None),
            Kind::LeaseChange => self.edit_lease(i, false),
            Kind::Maintenance => self.maintenance(i, false),
            Kind::Tags => self.tags(i, false),
            Kind::Restart => self.restart(i, false),
            Kind::Lossy => {
                let mut net = self.net.lock();
                let normal = NetSettings::default();
                net.settings.drop_chance = normal.drop_chance;
                net.settings.duplicate_chance = normal.duplicate_chance;
                net.settings.slow_chance = normal.slow_chance;
            }
        }
    }

    /// An operator's `pgfm edit-config --set timing.lease=...` through node `i`'s agent: a
    /// lease drawn between the shortest the checks allow and twice the run's (`change`), or
    /// the run's again. Refused (another edit won, no coordinator), it changes nothing,
    /// like the command.
    fn edit_lease(&mut self, i: usize, change: bool) {
        let Some(committed) = self.nodes[i].state().and_then(|s| s.settings) else {
            self.trace
                .say("lease change: no agent, or no settings committed yet");
            return;
        };
        let base = *self.base_lease.get_or_insert(committed.values.lease);
        let mut settings = committed.values.clone();
        settings.lease.lease_ms = if change {
            let floor = (base.safety_margin_ms + pgfm_core::lease::LeaseSettings::MIN_BUDGET_MS)
                .max(base.safety_margin_ms + 2 * base.renew_interval_ms)
                .max(
                    1_000
                        + pgfm_core::lease::LeaseSettings::WATCHDOG_RESET_MS
                        + base.renew_interval_ms,
                );
            self.rng.range(floor, (2 * base.lease_ms).max(floor + 1))
        } else {
            base.lease_ms
        };
        self.trace.say(format!(
            "lease change through {}: revision {}, lease {} ms",
            self.nodes[i].name(),
            committed.revision,
            settings.lease.lease_ms
        ));
        let body = pgfm_api::EditSettingsRequest {
            base_revision: committed.revision,
            settings,
            by: "simulated operator".into(),
        };
        self.ask(i, "/v1/config", &body);
    }

    /// An operator's command: `body` posted to `path` of node `via`'s agent. Its answer
    /// (or refusal) is not awaited, as an operator's command whose answer is lost.
    fn ask(&mut self, via: usize, path: &str, body: &impl serde::Serialize) {
        let request = pgfm_core::transport::Request {
            method: pgfm_core::transport::Method::Post,
            address: self.nodes[via].name().to_string(),
            path: path.into(),
            token: self.token.to_string(),
            body: serde_json::to_vec(body).ok(),
            timeout: std::time::Duration::from_secs(5),
        };
        let net = self.net.clone();
        self.nodes[via].deliver(&net, "operator".into(), request, None);
    }

    /// An operator's `pgfm maintenance NODE on|off` for node `i` (a witness too: refused, as
    /// the command is), through its own agent, or another's while its host is down. On:
    /// `--keep-running` and `--force` drawn. Off: asked again each second while an agent
    /// still has the node under maintenance (an operator retries a command that got no
    /// answer), so that every node is back before the quiet period ends.
    fn maintenance(&mut self, i: usize, on: bool) {
        let name = self.nodes[i].name().to_string();
        let (keep_running, force) = if on {
            (self.rng.range(0, 3) == 0, self.rng.range(0, 2) == 0)
        } else {
            let still = self.any_agent_sees(|s| s.maintenance.contains_key(&name));
            if !still {
                self.trace
                    .say(format!("maintenance of {name}: over on every agent"));
                return;
            }
            self.schedule(self.now_ms + 1_000, Due::Undo(Kind::Maintenance, i));
            (false, false)
        };
        let Some(via) = self.agent_for(i) else {
            self.trace.say("maintenance: no agent runs");
            return;
        };
        self.trace.say(format!(
            "maintenance {name} {} through {} (keep running {keep_running}, force {force})",
            if on { "on" } else { "off" },
            self.nodes[via].name()
        ));
        let body = pgfm_api::MaintenanceRequest {
            node: name,
            on,
            keep_running,
            force,
            by: "simulated operator".into(),
        };
        self.ask(via, "/v1/maintenance", &body);
    }

    /// Whether an agent that runs sees `f` hold in its cluster state (an operator's change
    /// still in force somewhere).
    fn any_agent_sees(&self, f: impl Fn(&pgfm_core::ClusterState) -> bool) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.up)
            .filter_map(|n| n.state())
            .any(|s| f(&s))
    }

    /// Whose agent an operator's command on node `i` goes through: its own, else the first
    /// that runs.
    fn agent_for(&self, i: usize) -> Option<usize> {
        std::iter::once(i)
            .chain(0..self.nodes.len())
            .find(|&j| self.nodes[j].up && self.nodes[j].agent_running())
    }

    /// An operator's `pgfm restart [NODE] --at TIME` through node `i`'s agent (or another's):
    /// node `i`'s data node alone or every one, `--pending` and `--in-place` drawn, 1 to 4 s
    /// ahead. Undone: `pgfm restart --cancel`, asked again each second while an agent still
    /// sees it scheduled, so that none outlives the faults.
    fn restart(&mut self, i: usize, schedule: bool) {
        let name = self.nodes[i].name().to_string();
        let Some(via) = self.agent_for(i) else {
            self.trace.say("restart: no agent runs");
            return;
        };
        if !schedule {
            let still = self.any_agent_sees(|s| s.scheduled_restart.is_some());
            if !still {
                self.trace.say("scheduled restart: over on every agent");
                return;
            }
            self.schedule(self.now_ms + 1_000, Due::Undo(Kind::Restart, i));
            self.trace.say(format!(
                "restart --cancel through {}",
                self.nodes[via].name()
            ));
            let body = pgfm_api::CancelRequest {
                by: "simulated operator".into(),
            };
            self.ask(via, "/v1/restart/cancel", &body);
            return;
        }
        let nodes = match self.rng.range(0, 2) == 0 && name != "witness" {
            true => vec![name],
            false => Vec::new(),
        };
        let body = pgfm_api::ScheduleRestartRequest {
            nodes,
            pending: self.rng.range(0, 3) == 0,
            in_place: self.rng.range(0, 2) == 0,
            at_unix_ms: WALL_BASE_MS + self.now_ms + self.rng.range(1_000, 4_001),
            by: "simulated operator".into(),
        };
        self.trace.say(format!(
            "restart {:?} --at +{} ms (pending {}, in place {}) through {}",
            body.nodes,
            body.at_unix_ms - WALL_BASE_MS - self.now_ms,
            body.pending,
            body.in_place,
            self.nodes[via].name()
        ));
        self.ask(via, "/v1/restart/schedule", &body);
    }

    /// An operator's `pgfm set-tag NODE ...` for node `i` (a witness too: refused, as the
    /// command is), through its own agent or another's. Set: one tag drawn (`replicate_from`
    /// another data node, `nosync`, `nofailover`, `clonefrom`), `--force` drawn. Cleared:
    /// every tag off, asked again each second while an agent still sees one (an operator
    /// retries a command that got no answer), so that none outlives the faults.
    fn tags(&mut self, i: usize, set: bool) {
        let name = self.nodes[i].name().to_string();
        let (tags, force) = if set {
            let others: Vec<String> = self
                .nodes
                .iter()
                .map(|n| n.name().to_string())
                .filter(|n| *n != name && n != "witness")
                .collect();
            let tag = match self.rng.range(0, 4) {
                0 => match self.rng.pick(&others) {
                    Some(upstream) => format!("replicate_from={upstream}"),
                    None => "nosync=true".to_string(),
                },
                1 => "nosync=true".to_string(),
                2 => "nofailover=true".to_string(),
                _ => "clonefrom=true".to_string(),
            };
            (vec![tag], self.rng.range(0, 2) == 0)
        } else {
            let still = self.any_agent_sees(|s| s.tags.contains_key(&name));
            if !still {
                self.trace
                    .say(format!("tags of {name}: cleared on every agent"));
                return;
            }
            self.schedule(self.now_ms + 1_000, Due::Undo(Kind::Tags, i));
            let off = [
                "nofailover=false",
                "nosync=false",
                "replicate_from=",
                "clonefrom=false",
            ];
            (off.map(str::to_string).to_vec(), true)
        };
        let Some(via) = self.agent_for(i) else {
            self.trace.say("set-tag: no agent runs");
            return;
        };
        self.trace.say(format!(
            "set-tag {name} {} through {} (force {force})",
            tags.join(" "),
            self.nodes[via].name()
        ));
        let body = pgfm_api::TagsRequest {
            node: name,
            tags,
            force,
            by: "simulated operator".into(),
        };
        self.ask(via, "/v1/tags", &body);
    }

    /// A watchdog whose deadline passed resets its host within `WATCHDOG_RESET_MS`.
    fn watch_watchdogs(&mut self) {
        for i in 0..self.nodes.len() {
            let fired = {
                let mut timer = self.nodes[i]
                    .watchdog
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match timer.deadline_ms {
                    Some(deadline) if deadline <= self.now_ms && self.nodes[i].up => {
                        timer.deadline_ms = None;
                        true
                    }
                    _ => false,
                }
            };
            if fired {
                let name = self.nodes[i].name().to_string();
                self.trace
                    .say(format!("WATCHDOG of {name} ran out: resetting the host"));
                let delay = self
                    .rng
                    .range(0, pgfm_core::lease::LeaseSettings::WATCHDOG_RESET_MS + 1);
                self.schedule(self.now_ms + delay, Due::Reset(i));
            }
        }
    }

    fn reset(&mut self, i: usize) {
        let name = self.nodes[i].name().to_string();
        self.trace.say(format!("RESET {name}"));
        self.report
            .faults
            .push(format!("watchdog reset of {name} at {} ms", self.now_ms));
        self.power_off(i);
        let boot = self.now_ms + self.rng.range(3_000, 10_001);
        self.faults_end_ms = self.faults_end_ms.max(boot);
        self.schedule(boot, Due::Boot(i));
    }

    /// Host `i` stops at once: its processes, its VIP, its watchdog (after the reboot that
    /// runs only once opened again, even if an agent armed it between the timer running
    /// out and the reset).
    fn power_off(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let name = node.name().to_string();
        node.kill_agent();
        node.up = false;
        node.frozen = false;
        node.watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deadline_ms = None;
        self.vip.host_down(&name);
        self.lock_pg().host_down(&name);
    }

    fn boot(&mut self, i: usize) {
        if self.nodes[i].up {
            return;
        }
        let name = self.nodes[i].name().to_string();
        self.trace.say(format!("BOOT {name}"));
        self.nodes[i].up = true;
        self.nodes[i].frozen = false;
        self.sync_hosts();
        self.lock_pg().host_up(&name);
        self.start_agent(i);
    }

    /// Liveness, at the end of the quiet period: one writable PostgreSQL, the committed
    /// primary, taking the writer's commits.
    fn check_live(&mut self) {
        let writable = self.lock_pg().writable_now();
        let primary = self.primary();
        let recent = self
            .lock_pg()
            .commits()
            .iter()
            .any(|c| c.acked_at_ms + 3_000 >= self.now_ms);
        let healthy = writable.len() == 1
            && primary.as_deref() == writable.first().map(|s| s.as_str())
            && recent;
        if !healthy {
            self.checker.violation(
                self.now_ms,
                format!(
                    "no working primary after {} ms without faults: writable {writable:?}, \
                     committed primary {primary:?}, commits acknowledged in the last 3 s: {recent}",
                    self.options.quiet_ms
                ),
            );
        }
    }

    fn finish(mut self) -> Report {
        let final_primary = self.primary();
        let mut report = std::mem::take(&mut self.report);
        let pg = self.pg.lock().unwrap_or_else(|p| p.into_inner());
        for commit in pg.commits() {
            if commit.synchronous {
                report.commits_sync += 1;
            } else {
                report.commits_async += 1;
                if let Some(p) = &final_primary {
                    if !pg.holds(p, commit.id) {
                        report.lost_async += 1;
                    }
                }
            }
        }
        let mut acked: Vec<u64> = pg.commits().iter().map(|c| c.acked_at_ms).collect();
        acked.sort_unstable();
        report.longest_write_gap_ms = acked.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        drop(pg);
        report.promotions = self
            .nodes
            .iter()
            .filter_map(|n| n.primary())
            .map(|(_, g)| g.0)
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        {
            let net = self.net.lock();
            report.messages = net.sent;
            report.messages_lost = net.lost;
        }
        report.ran_ms = self.now_ms;
        report.violations = self.checker.violations.clone();
        if self.trace.on() {
            for line in self.lock_pg().describe() {
                self.trace.say(format!("END STATE {line}"));
            }
        }
        report.trace = self.trace.lines();
        for node in &mut self.nodes {
            node.kill_agent();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

/// A node's agent address (never bound: the network is simulated).
fn address(i: usize) -> String {
    format!("10.77.0.{}:7000", i + 1)
}

fn node_config(
    dir: &std::path::Path,
    i: usize,
    name: &str,
    data: bool,
    peers: &str,
    options: &Options,
) -> String {
    let node_dir = dir.join(name);
    let kind = if data { "data" } else { "witness" };
    let mut text = format!(
        "cluster = \"sim\"\n\
         token_file = \"{token}\"\n\n\
         [node]\n\
         name = \"{name}\"\n\
         kind = \"{kind}\"\n\
         listen = \"{address}\"\n\
         state_dir = \"{state}\"\n\n\
         {peers}\n",
        token = dir.join("token").display(),
        address = address(i),
        state = node_dir.join("state").display(),
    );
    if data {
        text.push_str(&format!(
            "[postgres]\n\
             bin_dir = \"/usr/lib/postgresql/15/bin\"\n\
             data_dir = \"{data}\"\n\
             host = \"{name}\"\n\
             port = 5432\n\
             os_user = \"postgres\"\n\
             log_file = \"{log}\"\n\n\
             [vip]\n\
             address = \"10.77.0.100/24\"\n\
             interface = \"eth0\"\n\n\
             [watchdog]\n\
             mode = \"{watchdog}\"\n\
             device = \"/dev/watchdog\"\n\n",
            data = node_dir.join("data").display(),
            log = node_dir.join("postgres.log").display(),
            watchdog = options.watchdog,
        ));
    } else {
        // The cluster's address, which the witness commits when it forms the cluster.
        text.push_str("[vip]\naddress = \"10.77.0.100/24\"\n\n");
    }
    text.push_str(&format!(
        "[replication]\nsynchronous = \"{}\"\n",
        options.synchronous
    ));
    if !options.timing.is_empty() {
        text.push_str("\n[timing]\n");
        for (key, value) in &options.timing {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    text
}
