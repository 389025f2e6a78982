//! A model of the PostgreSQL servers of a simulated cluster, driven by the real agents
//! through `Database`, `Probe` and `RemoteProbe` exactly as they drive PostgreSQL.
//!
//! Each node has a data directory (its WAL as a list of records, `standby.signal`, pgfm's
//! rewind marker, the settings files pgfm writes, its replication slots) and at most one
//! postmaster. The simulator calls `tick` every few ms of global simulated time: standbys
//! stream over the simulated network, primaries release the commits their synchronous
//! standbys confirmed, and a neutral client commits to every server that takes writes. The
//! agents' operations (start, promote, rewind, ...) take time drawn from the model's seeded
//! generator, sleep on the calling node's virtual clock and take effect at their end, as
//! the production ones (`pgfm_postgres::control`) do, with the same refusals and texts.
//!
//! **Safety check:** whenever a server becomes a primary (promoted, or started without
//! `standby.signal`), every commit acknowledged synchronously so far must be in its WAL;
//! otherwise a violation is recorded for the simulator (`take_violations`).
//!
//! Determinism: no clock, no hash iteration, no randomness but the model's `Rng`; the lock
//! is never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::bail;
use tokio::sync::Notify;
use tokio::time::sleep;

use pgfm_core::transport::Pending;
use pgfm_core::{
    DataDirState, DbRole, Lsn, NodeReport, ReplicaInfo, SyncRule, Timeline, TimelineFork,
};
use pgfm_postgres::control::{slot_name, HandOverStop, StartAs, Upstream};
use pgfm_postgres::probe::{sync_rule, sync_setting, Target, Verdict};
use pgfm_postgres::{Database, InitdbPlan, Probe, RemoteProbe};

use crate::hosts::Hosts;
use crate::rng::Rng;

/// The model, shared by the simulator and every node's `Database`.
pub type Shared = Arc<Mutex<PgModel>>;

/// Where initdb's WAL ends: the first record.
const WAL_START: u64 = 0x300_0000;
/// Every record is this long, so that a record's index gives its position.
const RECORD: u64 = 0x100;
/// The neutral writer commits this often on each server that takes writes.
const WRITE_EVERY_MS: u64 = 20;
/// PostgreSQL's defaults: a walsender (walreceiver) that hears nothing from the other side
/// for this long gives up. pgfm does not change them.
const WAL_SENDER_TIMEOUT_MS: u64 = 60_000;
const WAL_RECEIVER_TIMEOUT_MS: u64 = 60_000;
/// `wal_retrieve_retry_interval` in pgfm.conf: a standby retries streaming this often.
const RETRY_MS: u64 = 500;
/// `connect_timeout=2` in `primary_conninfo`.
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// How fast a standby catches up: records copied per ms of simulated time.
const RECORDS_PER_MS: u64 = 50;
/// A query on an open connection (a local network round trip).
const QUERY: Duration = Duration::from_millis(1);

const REFUSED: &str = "error connecting to server: Connection refused (os error 111)";
const STARTING: &str = "the database system is starting up";
const STOPPING: &str = "the database system is shutting down";
const CLOSED: &str = "server closed the connection unexpectedly";

fn lock(model: &Shared) -> MutexGuard<'_, PgModel> {
    // Every change under this lock is made whole before it is released.
    model.lock().unwrap_or_else(|p| p.into_inner())
}

/// A commit the neutral writer got acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: u64,
    /// The server that acknowledged it.
    pub node: String,
    pub timeline: Timeline,
    /// Where its record starts: a server whose WAL reaches past it holds the commit.
    pub lsn: Lsn,
    /// Acknowledged because the synchronous standbys confirmed it (the rule in force named
    /// standbys when it was committed and when it was released), not asynchronously.
    pub synchronous: bool,
    pub acked_at_ms: u64,
}

/// The summary of what the writer got acknowledged, and lost on the current primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub acked_sync: usize,
    pub acked_async: usize,
    pub lost_sync: usize,
    pub lost_async: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Commit(u64),
    /// An online checkpoint (`CHECKPOINT`, the end of crash recovery).
    Checkpoint,
    /// A shutdown checkpoint: the last record of a clean stop.
    Shutdown,
    /// The first record of a new timeline, written by a promotion.
    Switch,
}

/// One WAL record. `uid` is unique in the model: two lists that hold the same record at
/// the same index hold the same records before it (a list only grows by new records or by
/// copying a prefix of another).
#[derive(Debug, Clone, Copy)]
struct Record {
    uid: u64,
    timeline: u32,
    kind: Kind,
}

/// Where the record at `index` starts (and the one before it ends).
fn lsn_at(index: usize) -> Lsn {
    Lsn(WAL_START + index as u64 * RECORD)
}

/// A server's WAL, as written and flushed.
#[derive(Debug, Clone, Default)]
struct Wal(Vec<Record>);

impl Wal {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// The end of the last record: the server's position.
    fn end(&self) -> Lsn {
        lsn_at(self.len())
    }

    fn timeline(&self) -> u32 {
        self.0.last().map_or(1, |r| r.timeline)
    }

    fn push(&mut self, uid: u64, timeline: u32, kind: Kind) -> usize {
        self.0.push(Record {
            uid,
            timeline,
            kind,
        });
        self.len() - 1
    }

    fn same_at(&self, other: &Wal, index: usize) -> bool {
        match (self.0.get(index), other.0.get(index)) {
            (Some(a), Some(b)) => a.uid == b.uid,
            _ => false,
        }
    }

    fn is_prefix_of(&self, other: &Wal) -> bool {
        self.0.is_empty() || (self.len() <= other.len() && self.same_at(other, self.len() - 1))
    }

    /// How many records the two have in common from the start (agreeing at an index means
    /// agreeing before it: a binary search).
    fn common(&self, other: &Wal) -> usize {
        let (mut low, mut high) = (0, self.len().min(other.len()));
        while low < high {
            let mid = (low + high) / 2;
            if self.same_at(other, mid) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    fn holds(&self, index: usize, uid: u64) -> bool {
        self.0.get(index).is_some_and(|r| r.uid == uid)
    }

    /// The timeline history file's content: where each earlier timeline ended.
    fn forks(&self) -> Vec<TimelineFork> {
        let mut forks = Vec::new();
        for (i, pair) in self.0.windows(2).enumerate() {
            if pair[1].kind == Kind::Switch {
                forks.push(TimelineFork {
                    timeline: Timeline(pair[0].timeline),
                    ended_at: lsn_at(i + 1),
                });
            }
        }
        forks
    }

    /// `Latest checkpoint location` in pg_controldata.
    fn last_checkpoint(&self) -> Lsn {
        let last = self
            .0
            .iter()
            .rposition(|r| matches!(r.kind, Kind::Checkpoint | Kind::Shutdown));
        lsn_at(last.unwrap_or(0))
    }
}

/// `Database cluster state` in pg_controldata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    ShutDown,
    ShutDownInRecovery,
    InProduction,
    InArchiveRecovery,
}

impl Control {
    fn text(self) -> &'static str {
        match self {
            Control::ShutDown => "shut down",
            Control::ShutDownInRecovery => "shut down in recovery",
            Control::InProduction => "in production",
            Control::InArchiveRecovery => "in archive recovery",
        }
    }
}

/// What `PG_VERSION` stands for: a cluster in the data directory.
#[derive(Debug, Clone)]
struct Cluster {
    wal: Wal,
    control: Control,
    slots: BTreeSet<String>,
    /// Left half written by a pg_basebackup whose host died: PostgreSQL cannot start it.
    broken: bool,
    /// Timelines whose history files `pg_wal` holds besides those of its own WAL's:
    /// fetched by the WAL receiver, copied by a clone or a rewind, written by pgfm before a
    /// promotion (`Database::promote`'s `at_least`).
    histories: BTreeSet<u32>,
    /// Those of `histories` pgfm wrote before a promotion: a comment and no parent.
    /// PostgreSQL never fetches a history file it has, nor tells these from real ones.
    reserved: BTreeSet<u32>,
}

impl Control {
    /// Recovery had not ended when the server stopped: a standby's directory, or a
    /// promotion's cut off before it ended.
    fn in_recovery(self) -> bool {
        matches!(
            self,
            Control::InArchiveRecovery | Control::ShutDownInRecovery
        )
    }
}

impl Cluster {
    /// Every timeline `pg_wal` has a history file for.
    fn history_files(&self) -> BTreeSet<u32> {
        let mut files = self.histories.clone();
        files.extend(self.wal.0.iter().map(|r| r.timeline).filter(|t| *t > 1));
        files
    }

    /// The timeline a promotion starts: PostgreSQL's `findNewestTimeLine(current) + 1`,
    /// which walks up from the current timeline while the next one's history file exists.
    fn next_timeline(&self) -> u32 {
        self.newest_timeline() + 1
    }

    /// `findNewestTimeLine(current)`: a standby's recovery target under
    /// `recovery_target_timeline = 'latest'`.
    fn newest_timeline(&self) -> u32 {
        let files = self.history_files();
        let mut newest = self.wal.timeline();
        while files.contains(&(newest + 1)) {
            newest += 1;
        }
        newest
    }
}

/// The data directory, as far as pgfm reads and writes it.
#[derive(Debug, Clone, Default)]
struct DataDir {
    cluster: Option<Cluster>,
    standby_signal: bool,
    /// `pgfm.rewind`.
    marker: bool,
    /// `pgfm-sync.conf` (None: absent).
    sync_conf: Option<SyncRule>,
    /// `primary_conninfo` in `pgfm.conf`.
    conf_upstream: Option<Upstream>,
}

impl DataDir {
    fn wal(&self) -> Option<&Wal> {
        self.cluster.as_ref().map(|c| &c.wal)
    }

    /// `prepare`: the settings for a start as `upstream`'s standby or as the primary.
    fn prepare(&mut self, path: &str, how: StartAs<'_>) -> anyhow::Result<()> {
        let Some(cluster) = self.cluster.as_mut() else {
            bail!("reading {path}/postgresql.conf: No such file or directory (os error 2)");
        };
        self.conf_upstream = how.upstream().cloned();
        if let StartAs::Primary = how {
            self.standby_signal = false;
        } else {
            self.sync_conf = None;
            self.standby_signal = true;
            // pgfm's reserved files above every real timeline (`datadir::reserved_histories`).
            let real_top = cluster
                .history_files()
                .into_iter()
                .filter(|t| !cluster.reserved.contains(t))
                .chain([cluster.wal.timeline()])
                .max()
                .unwrap_or(1);
            let above: BTreeSet<u32> = cluster.reserved.split_off(&(real_top + 1));
            cluster.histories.retain(|t| !above.contains(t));
        }
        if let StartAs::Primary | StartAs::ToPromote = how {
            self.marker = false;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Spawned, not accepting connections yet.
    Starting,
    Ready,
    /// `pg_promote` runs: the WAL receiver is gone.
    Promoting,
    /// A fast shutdown: sessions are gone, walsenders pass the last WAL on.
    Stopping,
}

/// A commit written, waiting for its synchronous standbys.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    commit: u64,
    index: usize,
    timeline: u32,
    /// The rule in force when it was committed named standbys.
    synchronous: bool,
}

/// A running postmaster.
#[derive(Debug)]
struct Run {
    pid: i32,
    phase: Phase,
    in_recovery: bool,
    /// `primary_conninfo` in force.
    upstream: Option<Upstream>,
    /// `synchronous_standby_names` in force.
    sync: SyncRule,
    /// `pg_last_wal_receive_lsn()`: None until the WAL receiver first streamed.
    received: Option<Lsn>,
    /// Records replayed.
    replayed: usize,
    /// On a promoted primary: where receiving and replay ended.
    recovery_end: Option<(Option<Lsn>, Lsn)>,
    waiting: Vec<Waiting>,
    /// The agent's `Database` that started it: told when it exits (its parent learns).
    exited: Option<Arc<Notify>>,
    next_attempt_ms: u64,
    /// Why the WAL receiver does not stream, as PostgreSQL logs it.
    receiver_error: Option<String>,
    /// While `Starting`: when start-up is over. The postmaster gets there on its own, whether
    /// or not the agent that started it still waits (`pg_ctl start` returns, the server
    /// stays).
    ready_at_ms: u64,
}

impl Run {
    /// A postmaster just spawned (`exited`: who learns when it dies).
    fn starting(pid: i32, in_recovery: bool, exited: Option<Arc<Notify>>) -> Run {
        Run {
            pid,
            phase: Phase::Starting,
            in_recovery,
            upstream: None,
            sync: SyncRule::default(),
            received: None,
            replayed: 0,
            recovery_end: None,
            waiting: Vec::new(),
            exited,
            next_attempt_ms: 0,
            receiver_error: None,
            ready_at_ms: 0,
        }
    }
}

#[derive(Debug)]
struct Server {
    name: String,
    host: String,
    port: u16,
    dir: DataDir,
    run: Option<Run>,
    rng: Rng,
    /// Goes up when the host dies: what ran on it then never finishes.
    host_epoch: u64,
    /// pg_basebackup is writing into the data directory.
    cloning: bool,
    /// Why the postmaster of this pid exited during start-up, for `start` to say.
    start_failure: Option<(i32, String)>,
}

impl Server {
    fn path(&self) -> String {
        format!("/sim/{}/data", self.name)
    }

    fn log_file(&self) -> String {
        format!("/sim/{}/postgresql.log", self.name)
    }

    fn running(&self, pid: i32) -> Option<&Run> {
        self.run.as_ref().filter(|r| r.pid == pid)
    }

    fn running_mut(&mut self, pid: i32) -> anyhow::Result<&mut Run> {
        match self.run.as_mut().filter(|r| r.pid == pid) {
            Some(run) => Ok(run),
            None => bail!("{CLOSED}"),
        }
    }

    fn cluster_mut(&mut self) -> anyhow::Result<&mut Cluster> {
        let path = self.path();
        match self.dir.cluster.as_mut() {
            Some(cluster) => Ok(cluster),
            None => bail!("{path} holds no cluster"),
        }
    }

    fn state(&self) -> Result<DataDirState, String> {
        let d = &self.dir;
        match &d.cluster {
            Some(_) if d.marker => Ok(DataDirState::FencedPrimary),
            Some(_) if d.standby_signal => Ok(DataDirState::Standby),
            Some(_) => Ok(DataDirState::Primary),
            None if d.standby_signal || d.marker || d.sync_conf.is_some() => Err(format!(
                "data_dir {} is not empty but holds no PostgreSQL cluster (no PG_VERSION): empty \
                 it so that the node can be cloned, or fix data_dir",
                self.path()
            )),
            None => Ok(DataDirState::Empty),
        }
    }

    /// The postmaster dies with every process of it (the agent that started it learns).
    fn kill(&mut self) {
        if let Some(run) = self.run.take() {
            if let Some(exited) = run.exited {
                exited.notify_one();
            }
        }
    }
}

/// One replication connection: a walsender on `upstream`, a WAL receiver on `standby`.
/// Each side lives on until its process dies, it learns the other side is gone, or it
/// hears nothing for its timeout (a cut network, a dead or frozen host).
#[derive(Debug, Clone)]
struct Link {
    standby: String,
    upstream: String,
    /// The `primary_conninfo` it was opened with.
    conninfo: Upstream,
    slot: String,
    standby_pid: i32,
    upstream_pid: i32,
    walsender_pid: i32,
    sender: bool,
    receiver: bool,
    sender_heard_ms: u64,
    receiver_heard_ms: u64,
    /// What the standby last reported: records flushed and replayed.
    flushed: usize,
    replayed: usize,
    /// The walsender has sent all there was once: `streaming`, else `catchup`.
    caught_up: bool,
}

/// What a new connection to a server meets.
enum Reach {
    Answers(i32),
    Fails(String),
    /// No answer: the caller waits out its timeout.
    Hangs,
}

pub struct PgModel {
    hosts: Arc<dyn Hosts>,
    servers: BTreeMap<String, Server>,
    links: Vec<Link>,
    /// Standbys whose link from their upstream is slow: one record every this many ms.
    slow: BTreeMap<String, u64>,
    commits: Vec<Commit>,
    /// Every commit written: its record's index and uid.
    written: BTreeMap<u64, (usize, u64)>,
    violations: Vec<String>,
    now_ms: u64,
    writing: bool,
    next_write_ms: u64,
    next_commit: u64,
    next_uid: u64,
    next_pid: i32,
    /// Who started each timeline, and when: a number started twice is two forks that
    /// PostgreSQL cannot tell apart.
    timelines: BTreeMap<u32, (String, u64)>,
    probe_timeout: Duration,
    /// The agents' `timing.start_timeout`: how long a promotion waits for replay.
    start_timeout: Duration,
    /// Per node: the parameters its agent set (`Database::set_parameters`), and the digest
    /// of those its `pgfm.conf` was last written with (at a start, or `write_parameters`).
    parameters: BTreeMap<String, BTreeMap<String, String>>,
    parameters_written: BTreeMap<String, u64>,
}

impl Cluster {
    /// What initdb leaves: timeline 1, a shutdown checkpoint, stopped cleanly.
    fn initdb() -> Cluster {
        let mut wal = Wal::default();
        wal.push(1, 1, Kind::Shutdown);
        Cluster {
            wal,
            control: Control::ShutDown,
            slots: BTreeSet::new(),
            broken: false,
            histories: BTreeSet::new(),
            reserved: BTreeSet::new(),
        }
    }
}

impl PgModel {
    /// Servers for `nodes`; `initialised` is the one data dir that holds a freshly initdb'd
    /// cluster (no standby.signal, stopped); the others are empty directories. `hosts`
    /// answers host/network questions. Each server listens on its node's name, port 5432.
    pub fn new(seed: u64, nodes: &[&str], initialised: &str, hosts: Arc<dyn Hosts>) -> PgModel {
        let root = Rng::new(seed);
        let mut servers = BTreeMap::new();
        for (i, node) in nodes.iter().enumerate() {
            let mut dir = DataDir::default();
            if *node == initialised {
                dir.cluster = Some(Cluster::initdb());
            }
            let server = Server {
                name: node.to_string(),
                host: node.to_string(),
                port: 5432,
                dir,
                run: None,
                rng: root.fork(i as u64 + 1),
                host_epoch: 0,
                cloning: false,
                start_failure: None,
            };
            servers.insert(node.to_string(), server);
        }
        PgModel {
            hosts,
            servers,
            links: Vec::new(),
            slow: BTreeMap::new(),
            commits: Vec::new(),
            written: BTreeMap::new(),
            violations: Vec::new(),
            now_ms: 0,
            writing: true,
            next_write_ms: 0,
            next_commit: 0,
            next_uid: 1,
            next_pid: 4000,
            timelines: BTreeMap::new(),
            probe_timeout: Duration::from_secs(2),
            start_timeout: Duration::from_secs(120),
            parameters: BTreeMap::new(),
            parameters_written: BTreeMap::new(),
        }
    }

    /// `node`'s `pgfm.conf` written with the parameters its agent set.
    fn write_parameters(&mut self, node: &str) {
        let digest =
            pgfm_core::parameters::digest(self.parameters.get(node).unwrap_or(&BTreeMap::new()));
        self.parameters_written.insert(node.to_string(), digest);
    }

    /// Where `node`'s PostgreSQL listens (default: the node's name, port 5432).
    pub fn set_address(&mut self, node: &str, host: &str, port: u16) {
        if let Some(s) = self.servers.get_mut(node) {
            s.host = host.to_string();
            s.port = port;
        }
    }

    /// The agents' `timing.probe_timeout`: how long their own connections wait.
    pub fn set_probe_timeout(&mut self, timeout: Duration) {
        self.probe_timeout = timeout;
    }

    /// Slow the link into `standby` to one record every `every_ms` (None: full speed): a
    /// congested network or a standby whose disk stalls, still `streaming` once it caught up.
    pub fn slow_link(&mut self, standby: &str, every_ms: Option<u64>) {
        match every_ms {
            Some(ms) => self.slow.insert(standby.to_string(), ms.max(1)),
            None => self.slow.remove(standby),
        };
    }

    /// Start or stop the neutral writer.
    pub fn set_writing(&mut self, on: bool) {
        self.writing = on;
    }

    /// Advance background work to the global simulated time `now_ms`: standbys replay,
    /// stream and report; primaries release the commits their standbys confirmed; the
    /// neutral writer writes.
    pub fn tick(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.now_ms).max(1);
        self.now_ms = self.now_ms.max(now_ms);
        let dead: Vec<String> = self
            .servers
            .values()
            .filter(|s| s.run.is_some() && !self.hosts.up(&s.name))
            .map(|s| s.name.clone())
            .collect();
        for node in dead {
            self.host_down(&node);
        }
        self.finish_starts();
        self.replay();
        let mut links = std::mem::take(&mut self.links);
        for link in &mut links {
            let budget = match self.slow.get(&link.standby) {
                Some(&every) => u64::from(now_ms / every > (now_ms - elapsed) / every),
                None => elapsed * RECORDS_PER_MS,
            };
            self.update_link(link, budget);
        }
        links.retain(|l| l.sender || l.receiver);
        self.links = links;
        self.connect_standbys();
        self.write();
        self.release_commits();
    }

    /// The host was reset or died: every process of it dies at once, the data directory
    /// stays as it was on disk. A postmaster that dies so tells its agent (`exited`).
    pub fn host_down(&mut self, node: &str) {
        let Some(s) = self.servers.get_mut(node) else {
            return;
        };
        s.host_epoch += 1;
        s.kill();
        if s.cloning {
            // pg_basebackup dies before it can remove what it wrote.
            s.cloning = false;
            s.dir.cluster = Some(Cluster {
                wal: Wal::default(),
                control: Control::InProduction,
                slots: BTreeSet::new(),
                broken: true,
                histories: BTreeSet::new(),
                reserved: BTreeSet::new(),
            });
        }
    }

    /// The host came back: nothing runs until its agent starts PostgreSQL.
    pub fn host_up(&mut self, node: &str) {
        if let Some(s) = self.servers.get_mut(node) {
            debug_assert!(s.run.is_none(), "{node}: a postmaster survived its host");
        }
    }

    /// Only the postmaster died (kill -9; its sessions die with it): `exited` fires.
    pub fn crash_postmaster(&mut self, node: &str) {
        if let Some(s) = self.servers.get_mut(node) {
            s.kill();
        }
    }

    /// Servers with a postmaster (starting, recovering or serving), on a host that is up.
    pub fn running_now(&self) -> Vec<String> {
        self.servers
            .values()
            .filter(|s| s.run.is_some() && self.hosts.up(&s.name))
            .map(|s| s.name.clone())
            .collect()
    }

    /// Servers accepting writes right now: running, not in recovery, host up, not frozen.
    pub fn writable_now(&self) -> Vec<String> {
        self.servers
            .values()
            .filter(|s| {
                s.run
                    .as_ref()
                    .is_some_and(|r| r.phase == Phase::Ready && !r.in_recovery)
                    && self.hosts.up(&s.name)
                    && !self.hosts.frozen(&s.name)
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// Every acknowledged commit, in the order of acknowledgement.
    pub fn commits(&self) -> &[Commit] {
        &self.commits
    }

    /// Whether `node`'s WAL holds the commit `commit_id`.
    pub fn holds(&self, node: &str, commit_id: u64) -> bool {
        let (Some(wal), Some((index, uid))) = (
            self.servers.get(node).and_then(|s| s.dir.wal()),
            self.written.get(&commit_id),
        ) else {
            return false;
        };
        wal.holds(*index, *uid)
    }

    /// What the writer got acknowledged, and how much of it `primary` lacks.
    pub fn counters(&self, primary: Option<&str>) -> Counters {
        let mut counters = Counters::default();
        for c in &self.commits {
            let lost = primary.is_some_and(|p| !self.holds(p, c.id));
            match (c.synchronous, lost) {
                (true, false) => counters.acked_sync += 1,
                (true, true) => {
                    counters.acked_sync += 1;
                    counters.lost_sync += 1;
                }
                (false, false) => counters.acked_async += 1,
                (false, true) => {
                    counters.acked_async += 1;
                    counters.lost_async += 1;
                }
            }
        }
        counters
    }

    /// Violations found when they happened: drained by the simulator after every tick.
    pub fn take_violations(&mut self) -> Vec<String> {
        std::mem::take(&mut self.violations)
    }

    /// A short line per server for a trace.
    pub fn describe(&self) -> Vec<String> {
        self.servers
            .values()
            .map(|s| self.describe_one(s))
            .collect()
    }

    fn describe_one(&self, s: &Server) -> String {
        let host = if !self.hosts.up(&s.name) {
            " [host down]"
        } else if self.hosts.frozen(&s.name) {
            " [frozen]"
        } else {
            ""
        };
        let position = |wal: &Wal| format!("tl{} lsn {}", wal.timeline(), wal.end());
        let Some(wal) = s.dir.wal() else {
            return format!("{}: empty{host}", s.name);
        };
        let Some(run) = &s.run else {
            let state = match s.state() {
                Ok(state) => format!("{state:?}"),
                Err(e) => e,
            };
            return format!("{}: stopped ({state}) {}{host}", s.name, position(wal));
        };
        let phase = match run.phase {
            Phase::Ready => "",
            Phase::Starting => " starting",
            Phase::Promoting => " promoting",
            Phase::Stopping => " stopping",
        };
        if run.in_recovery {
            let from = run.upstream.as_ref().map_or("?", |u| u.name.as_str());
            let streaming = self.links.iter().any(|l| l.standby == s.name && l.receiver);
            let how = match (&run.receiver_error, streaming) {
                (_, true) => "streaming".to_string(),
                (Some(e), false) => format!("not streaming: {e}"),
                (None, false) => "not streaming".to_string(),
            };
            format!(
                "{}: standby{phase} of {from} {} replayed {}, {how}{host}",
                s.name,
                position(wal),
                lsn_at(run.replayed)
            )
        } else {
            let replicas: Vec<String> = self
                .links
                .iter()
                .filter(|l| l.upstream == s.name && l.sender)
                .map(|l| format!("{} at {}", l.standby, lsn_at(l.flushed)))
                .collect();
            format!(
                "{}: primary{phase} {} sync {}, walsenders: [{}]{host}",
                s.name,
                position(wal),
                run.sync,
                replicas.join(", ")
            )
        }
    }

    /// `node`'s `Database`, as its agent holds it. As in production, its `exited` fires
    /// whenever a postmaster started through this handle exits, whatever the cause (a
    /// crash, a host death, or the agent's own stop or fence): the agent tells them apart
    /// by `running_pid` and what it expected. A new handle (an agent restarted) is not
    /// told of a postmaster an earlier one started.
    pub fn database(model: &Shared, node: &str) -> Arc<dyn Database> {
        Arc::new(SimDatabase {
            model: model.clone(),
            node: node.to_string(),
            exited: Arc::new(Notify::new()),
        })
    }

    /// Checks of other nodes' PostgreSQL made from `node`.
    pub fn remote_probe(model: &Shared, node: &str) -> Box<dyn RemoteProbe> {
        Box::new(SimRemoteCheck {
            model: model.clone(),
            from: node.to_string(),
            kept: None,
        })
    }

    // ---- the network and connections ----

    fn up(&self, node: &str) -> bool {
        self.hosts.up(node)
    }

    fn frozen(&self, node: &str) -> bool {
        self.hosts.frozen(node)
    }

    /// Packets get from `a` to `b` and back: a TCP connection can be made.
    fn path(&self, a: &str, b: &str) -> bool {
        a == b || (self.hosts.reachable(a, b) && self.hosts.reachable(b, a))
    }

    /// Packets get from `a` to `b`, both hosts running.
    fn one_way(&self, a: &str, b: &str) -> bool {
        self.up(a) && self.up(b) && (a == b || self.hosts.reachable(a, b))
    }

    fn node_at(&self, host: &str) -> Option<String> {
        self.servers
            .values()
            .find(|s| s.host == host)
            .map(|s| s.name.clone())
    }

    /// What a new connection from `from` to `host:port` meets now.
    fn reach(&self, from: &str, host: &str, port: u16) -> Reach {
        let Some(node) = self.node_at(host) else {
            return Reach::Fails(format!(
                "could not translate host name \"{host}\" to address: Name or service not known"
            ));
        };
        if !self.up(&node) || !self.path(from, &node) {
            return Reach::Hangs;
        }
        let s = &self.servers[&node];
        let Some(run) = s.run.as_ref().filter(|_| s.port == port) else {
            return Reach::Fails(REFUSED.to_string());
        };
        if self.frozen(&node) {
            return Reach::Hangs;
        }
        match run.phase {
            Phase::Starting => Reach::Fails(STARTING.to_string()),
            Phase::Stopping => Reach::Fails(STOPPING.to_string()),
            Phase::Ready | Phase::Promoting => Reach::Answers(run.pid),
        }
    }

    fn reach_own(&self, node: &str) -> Reach {
        match self.servers.get(node) {
            Some(s) => self.reach(node, &s.host, s.port),
            None => Reach::Fails(format!("{node} has no PostgreSQL in the simulation")),
        }
    }

    fn server(&self, node: &str) -> anyhow::Result<&Server> {
        match self.servers.get(node) {
            Some(s) => Ok(s),
            None => bail!("{node} has no PostgreSQL in the simulation"),
        }
    }

    fn server_mut(&mut self, node: &str) -> anyhow::Result<&mut Server> {
        match self.servers.get_mut(node) {
            Some(s) => Ok(s),
            None => bail!("{node} has no PostgreSQL in the simulation"),
        }
    }

    /// How long one of `node`'s operations takes, drawn from its own generator.
    fn draw(&mut self, node: &str, low_ms: u64, high_ms: u64) -> Duration {
        let ms = match self.servers.get_mut(node) {
            Some(s) => s.rng.range(low_ms, high_ms + 1),
            None => low_ms,
        };
        Duration::from_millis(ms)
    }

    fn uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    fn pid(&mut self) -> i32 {
        self.next_pid += 1;
        self.next_pid
    }

    // ---- background work (tick) ----

    /// Standbys replay what they received by the previous tick.
    fn replay(&mut self) {
        let hosts = &self.hosts;
        for s in self.servers.values_mut() {
            let len = s.dir.wal().map_or(0, Wal::len);
            if let Some(run) = s.run.as_mut() {
                if run.in_recovery && run.phase != Phase::Starting && !hosts.frozen(&s.name) {
                    run.replayed = len;
                }
            }
        }
    }

    fn update_link(&mut self, link: &mut Link, budget: u64) {
        let now = self.now_ms;
        let sender_alive = self
            .servers
            .get(&link.upstream)
            .is_some_and(|s| s.running(link.upstream_pid).is_some());
        let receiver_alive = self.servers.get(&link.standby).is_some_and(|s| {
            s.running(link.standby_pid).is_some_and(|r| {
                r.phase == Phase::Ready
                    && r.in_recovery
                    && r.upstream.as_ref() == Some(&link.conninfo)
            })
        });
        link.sender &= sender_alive;
        link.receiver &= receiver_alive;
        let (u, s) = (link.upstream.clone(), link.standby.clone());
        let downstream = self.one_way(&u, &s);
        let upstream = self.one_way(&s, &u);
        let (u_frozen, s_frozen) = (self.frozen(&u), self.frozen(&s));
        // A side whose peer process is gone learns it at once when the peer's host answers
        // (a FIN, or an RST to its next packet); otherwise only from its timeout.
        if link.sender && !link.receiver && downstream && upstream && !u_frozen {
            link.sender = false;
        }
        if link.receiver && !link.sender && downstream && upstream && !s_frozen {
            link.receiver = false;
            self.retry_later(&s, RETRY_MS, CLOSED);
        }
        if link.sender && link.receiver {
            if downstream && !u_frozen {
                link.receiver_heard_ms = now;
                if !s_frozen {
                    self.stream(link, budget);
                }
            }
            if upstream && !s_frozen {
                link.sender_heard_ms = now;
                if let Some(st) = self.servers.get(&s) {
                    link.flushed = st.dir.wal().map_or(0, Wal::len);
                    link.replayed = st.run.as_ref().map_or(0, |r| r.replayed);
                }
            }
        }
        if link.sender && !u_frozen && now > link.sender_heard_ms + WAL_SENDER_TIMEOUT_MS {
            link.sender = false;
        }
        if link.receiver && !s_frozen && now > link.receiver_heard_ms + WAL_RECEIVER_TIMEOUT_MS {
            link.receiver = false;
            self.retry_later(&s, RETRY_MS, "terminating walreceiver due to timeout");
        }
    }

    /// Copy up to `budget` records the standby lacks from its upstream.
    fn stream(&mut self, link: &mut Link, budget: u64) {
        let (Some(uw), Some(sw)) = (
            self.servers.get(&link.upstream).and_then(|s| s.dir.wal()),
            self.servers.get(&link.standby).and_then(|s| s.dir.wal()),
        ) else {
            return;
        };
        if !sw.is_prefix_of(uw) {
            // Cannot happen on an open connection: both lists only grow, the standby's
            // from the upstream's.
            link.receiver = false;
            return;
        }
        let from = sw.len();
        let to = uw.len().min(from + budget as usize);
        let records = uw.0[from..to].to_vec();
        let caught_up = to == uw.len();
        let Some(st) = self.servers.get_mut(&link.standby) else {
            return;
        };
        let Some(cluster) = st.dir.cluster.as_mut() else {
            return;
        };
        cluster.wal.0.extend(records);
        let end = cluster.wal.end();
        if let Some(run) = st.run.as_mut() {
            run.received = Some(end);
        }
        link.caught_up |= caught_up;
    }

    fn retry_later(&mut self, node: &str, ms: u64, why: &str) {
        let now = self.now_ms;
        if let Some(run) = self.servers.get_mut(node).and_then(|s| s.run.as_mut()) {
            run.next_attempt_ms = now + ms;
            run.receiver_error = Some(why.to_string());
        }
    }

    /// Standbys without a WAL receiver try to stream (every `wal_retrieve_retry_interval`).
    fn connect_standbys(&mut self) {
        let now = self.now_ms;
        let ready: Vec<String> = self
            .servers
            .values()
            .filter(|s| {
                s.run.as_ref().is_some_and(|r| {
                    r.phase == Phase::Ready
                        && r.in_recovery
                        && r.upstream.is_some()
                        && now >= r.next_attempt_ms
                })
            })
            .filter(|s| self.up(&s.name) && !self.frozen(&s.name))
            .filter(|s| !self.links.iter().any(|l| l.standby == s.name && l.receiver))
            .map(|s| s.name.clone())
            .collect();
        for node in ready {
            match self.try_stream(&node) {
                Ok(link) => {
                    self.fetch_histories(&node, &link.upstream);
                    if let Some(run) = self.servers.get_mut(&node).and_then(|s| s.run.as_mut()) {
                        run.receiver_error = None;
                        let end = lsn_at(link.flushed);
                        run.received = Some(run.received.map_or(end, |r| r.max(end)));
                    }
                    self.links.push(link);
                }
                Err((why, retry)) => self.retry_later(&node, retry, &why),
            }
        }
    }

    /// A WAL receiver that connects fetches the upstream's history files for the timelines
    /// above its own, up to the upstream's.
    fn fetch_histories(&mut self, node: &str, upstream: &str) {
        let Some(theirs) = self
            .servers
            .get(upstream)
            .and_then(|s| s.dir.cluster.as_ref())
        else {
            return;
        };
        let (files, top) = (theirs.history_files(), theirs.wal.timeline());
        if let Some(mine) = self
            .servers
            .get_mut(node)
            .and_then(|s| s.dir.cluster.as_mut())
        {
            let own = mine.wal.timeline();
            mine.histories
                .extend(files.into_iter().filter(|t| *t > own && *t <= top));
        }
    }

    /// pgfm's history files for the timelines from just above `node`'s own up to
    /// `at_least - 1` (`datadir::missing_histories`).
    fn reserve_timelines(&mut self, node: &str, at_least: Timeline) -> anyhow::Result<()> {
        let cluster = self.server_mut(node)?.cluster_mut()?;
        let own = cluster.wal.timeline();
        for timeline in own + 1..at_least.0 {
            if cluster.histories.insert(timeline) {
                cluster.reserved.insert(timeline);
            }
        }
        Ok(())
    }

    /// Open a replication connection for `node`, or say why PostgreSQL would not (and when
    /// it tries again).
    fn try_stream(&mut self, node: &str) -> Result<Link, (String, u64)> {
        let now = self.now_ms;
        let s = &self.servers[node];
        let Some(run) = s.run.as_ref() else {
            return Err(("not running".into(), RETRY_MS));
        };
        let Some(conninfo) = run.upstream.clone() else {
            return Err(("no primary_conninfo".into(), RETRY_MS));
        };
        let at = format!(
            "connection to server at \"{}\", port {} failed",
            conninfo.host, conninfo.port
        );
        let timeout = (
            format!("{at}: timeout expired"),
            CONNECT_TIMEOUT_MS + RETRY_MS,
        );
        let upstream = match self.reach(node, &conninfo.host, conninfo.port) {
            Reach::Hangs => return Err(timeout),
            Reach::Fails(e) => return Err((format!("{at}: {e}"), RETRY_MS)),
            Reach::Answers(_) => self.node_at(&conninfo.host).unwrap_or_default(),
        };
        if upstream == node {
            return Err(("primary_conninfo names this server".into(), RETRY_MS));
        }
        let us = &self.servers[&upstream];
        let (Some(ur), Some(uc), Some(sw)) = (us.run.as_ref(), &us.dir.cluster, s.dir.wal()) else {
            return Err((format!("{at}: {REFUSED}"), RETRY_MS));
        };
        // No slot: "" (a cascading standby streams without one).
        let slot = if conninfo.with_slot {
            slot_name(node)
        } else {
            String::new()
        };
        if conninfo.with_slot && !uc.slots.contains(&slot) {
            return Err((
                format!(
                    "could not start WAL streaming: ERROR:  replication slot \"{slot}\" does not exist"
                ),
                RETRY_MS,
            ));
        }
        if let Some(busy) = self
            .links
            .iter()
            .find(|l| l.upstream == upstream && l.slot == slot && l.sender && !slot.is_empty())
        {
            return Err((
                format!(
                    "could not start WAL streaming: ERROR:  replication slot \"{slot}\" is active \
                     for PID {}",
                    busy.walsender_pid
                ),
                RETRY_MS,
            ));
        }
        if !sw.is_prefix_of(&uc.wal) {
            return Err((divergence(sw, &uc.wal), RETRY_MS));
        }
        let link = Link {
            standby: node.to_string(),
            upstream: upstream.clone(),
            conninfo,
            slot,
            standby_pid: run.pid,
            upstream_pid: ur.pid,
            walsender_pid: 0,
            sender: true,
            receiver: true,
            sender_heard_ms: now,
            receiver_heard_ms: now,
            flushed: sw.len(),
            replayed: run.replayed,
            caught_up: sw.len() == uc.wal.len(),
        };
        Ok(Link {
            walsender_pid: self.pid(),
            ..link
        })
    }

    /// The neutral writer: one commit on every server that takes writes.
    fn write(&mut self) {
        if !self.writing || self.now_ms < self.next_write_ms {
            return;
        }
        self.next_write_ms = self.now_ms + WRITE_EVERY_MS;
        for node in self.writable_now() {
            self.next_commit += 1;
            let (commit, uid) = (self.next_commit, self.uid());
            let Some(s) = self.servers.get_mut(&node) else {
                continue;
            };
            let (Some(run), Some(cluster)) = (s.run.as_mut(), s.dir.cluster.as_mut()) else {
                continue;
            };
            let timeline = cluster.wal.timeline();
            let index = cluster.wal.push(uid, timeline, Kind::Commit(commit));
            run.waiting.push(Waiting {
                commit,
                index,
                timeline,
                synchronous: !run.sync.is_async(),
            });
            self.written.insert(commit, (index, uid));
        }
    }

    /// Primaries acknowledge the waiting commits their rule in force lets go.
    fn release_commits(&mut self) {
        let now = self.now_ms;
        let primaries: Vec<(String, SyncRule)> = self
            .servers
            .values()
            .filter(|s| self.up(&s.name) && !self.frozen(&s.name))
            .filter_map(|s| {
                let run = s.run.as_ref()?;
                (!run.in_recovery && !run.waiting.is_empty())
                    .then(|| (s.name.clone(), run.sync.clone()))
            })
            .collect();
        for (node, rule) in primaries {
            let flushed = self.sync_flushed(&node, &rule);
            let Some(run) = self.servers.get_mut(&node).and_then(|s| s.run.as_mut()) else {
                continue;
            };
            let (done, waiting): (Vec<Waiting>, Vec<Waiting>) =
                run.waiting.drain(..).partition(|w| w.index < flushed);
            run.waiting = waiting;
            for w in done {
                self.commits.push(Commit {
                    id: w.commit,
                    node: node.clone(),
                    timeline: Timeline(w.timeline),
                    lsn: lsn_at(w.index),
                    synchronous: w.synchronous && !rule.is_async(),
                    acked_at_ms: now,
                });
            }
        }
    }

    /// How many records `primary`'s synchronous standbys have flushed, as `rule` counts
    /// them (PostgreSQL's `SyncRepGetSyncRecPtr`): all of them when asynchronous.
    fn sync_flushed(&self, primary: &str, rule: &SyncRule) -> usize {
        if rule.is_async() {
            return usize::MAX;
        }
        // Candidates: named walsenders that stream, in priority order (the order of the
        // names `sync_setting` writes).
        let mut candidates: Vec<&Link> = self
            .links
            .iter()
            .filter(|l| l.upstream == primary && l.sender && l.caught_up)
            .filter(|l| rule.names.contains(&l.standby))
            .collect();
        if candidates.len() < rule.count {
            return 0;
        }
        if rule.count >= rule.names.len() {
            // FIRST n: the n of highest priority, each of them.
            candidates.sort_by(|a, b| a.standby.cmp(&b.standby));
            return candidates
                .iter()
                .take(rule.count)
                .map(|l| l.flushed)
                .min()
                .unwrap_or(0);
        }
        // ANY n: the n-th highest.
        let mut flushed: Vec<usize> = candidates.iter().map(|l| l.flushed).collect();
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        flushed[rule.count - 1]
    }

    /// `pg_stat_replication.sync_state` of `link` on a primary whose rule is `rule`.
    fn sync_state(&self, rule: &SyncRule, link: &Link) -> &'static str {
        if rule.is_async() || !rule.names.contains(&link.standby) {
            return "async";
        }
        if !link.caught_up {
            return "potential";
        }
        if rule.count < rule.names.len() {
            return "quorum";
        }
        let mut chosen: Vec<&str> = self
            .links
            .iter()
            .filter(|l| l.upstream == link.upstream && l.sender && l.caught_up)
            .filter(|l| rule.names.contains(&l.standby))
            .map(|l| l.standby.as_str())
            .collect();
        chosen.sort_unstable();
        if chosen.iter().take(rule.count).any(|n| *n == link.standby) {
            "sync"
        } else {
            "potential"
        }
    }

    /// A server became a primary (`how`): every synchronously acknowledged commit must be
    /// in its WAL.
    fn check_new_primary(&mut self, node: &str, how: &str) {
        let missing: Vec<&Commit> = self
            .commits
            .iter()
            .filter(|c| c.synchronous && !self.holds(node, c.id))
            .collect();
        if let Some(first) = missing.first() {
            let text = format!(
                "{node} {how} without {} synchronously acknowledged commit(s), the first: commit \
                 {} acknowledged by {} at {} on timeline {} at {} ms",
                missing.len(),
                first.id,
                first.node,
                first.lsn,
                first.timeline,
                first.acked_at_ms
            );
            self.violations.push(text);
        }
    }

    // ---- the steps of the agents' operations (each under one lock) ----

    /// `start`, up to the spawned postmaster: the pid and how long start-up takes.
    fn spawn(
        &mut self,
        node: &str,
        how: StartAs<'_>,
        exited: &Arc<Notify>,
    ) -> anyhow::Result<(i32, Duration)> {
        let pid = self.pid();
        let s = self.server_mut(node)?;
        if let Some(run) = &s.run {
            bail!(
                "a postmaster (pid {}) is already running on {}",
                run.pid,
                s.path()
            );
        }
        let path = s.path();
        s.dir.prepare(&path, how)?;
        s.run = Some(Run::starting(
            pid,
            s.dir.standby_signal,
            Some(exited.clone()),
        ));
        let wait = self.draw(node, 200, 800);
        let ready_at_ms = self.now_ms + wait.as_millis() as u64;
        self.server_mut(node)?.running_mut(pid)?.ready_at_ms = ready_at_ms;
        Ok((pid, wait))
    }

    /// Every postmaster whose start-up time is over finishes it (or dies, saying why).
    fn finish_starts(&mut self) {
        let due: Vec<(String, i32)> = self
            .servers
            .values()
            .filter_map(|s| s.run.as_ref().map(|r| (s, r)))
            .filter(|(s, r)| {
                r.phase == Phase::Starting
                    && r.ready_at_ms <= self.now_ms
                    && !self.hosts.frozen(&s.name)
            })
            .map(|(s, r)| (s.name.clone(), r.pid))
            .collect();
        for (node, pid) in due {
            if let Err(e) = self.finish_start(&node, pid) {
                if let Some(s) = self.servers.get_mut(&node) {
                    s.start_failure = Some((pid, format!("{e:#}")));
                }
            }
        }
    }

    /// How the start-up of `pid` went: None while it goes on.
    fn start_outcome(&self, node: &str, pid: i32) -> Option<anyhow::Result<()>> {
        let Ok(s) = self.server(node) else {
            return Some(Err(anyhow::anyhow!("no server {node}")));
        };
        match s.running(pid) {
            Some(run) if run.phase == Phase::Starting => None,
            Some(_) => Some(Ok(())),
            None => Some(Err(match &s.start_failure {
                Some((failed, why)) if *failed == pid => anyhow::anyhow!("{why}"),
                _ => anyhow::anyhow!(
                    "postmaster exited during start-up (signal: 9 (SIGKILL)); see {}",
                    s.log_file()
                ),
            })),
        }
    }

    /// Start-up is over (`finish_starts`): it accepts connections, or it died meanwhile.
    fn finish_start(&mut self, node: &str, pid: i32) -> anyhow::Result<()> {
        let uid = self.uid();
        let s = self.server_mut(node)?;
        let log = s.log_file();
        if s.running(pid).is_none() {
            bail!("postmaster exited during start-up (signal: 9 (SIGKILL)); see {log}");
        }
        if s.dir.cluster.as_ref().is_none_or(|c| c.broken) {
            s.kill();
            bail!(
                "postmaster exited during start-up (exit status: 1: PANIC:  could not locate a \
                 valid checkpoint record); see {log}"
            );
        }
        let in_recovery = s.dir.standby_signal;
        let upstream = s.dir.conf_upstream.clone().filter(|_| in_recovery);
        let sync = s.dir.sync_conf.clone().unwrap_or_default();
        let cluster = s.cluster_mut()?;
        let (own, newest) = (cluster.wal.timeline(), cluster.newest_timeline());
        if in_recovery && newest != own && cluster.reserved.contains(&newest) {
            s.kill();
            bail!(
                "postmaster exited during start-up (exit status: 1: FATAL:  requested timeline \
                 {newest} is not a child of this server's history); see {log}"
            );
        }
        // Started as the primary, a directory whose recovery had not ended ends it on its
        // own timeline: no new one, a second history of a timeline another node wrote.
        let unpromoted = (!in_recovery && cluster.control.in_recovery()).then_some(own);
        if in_recovery {
            cluster.control = Control::InArchiveRecovery;
        } else {
            // Crash recovery, if the last stop was not clean, ends with a checkpoint.
            if cluster.control != Control::ShutDown {
                let timeline = cluster.wal.timeline();
                cluster.wal.push(uid, timeline, Kind::Checkpoint);
            }
            cluster.control = Control::InProduction;
        }
        let replayed = cluster.wal.len();
        let run = s.running_mut(pid)?;
        run.phase = Phase::Ready;
        run.in_recovery = in_recovery;
        run.upstream = upstream;
        run.sync = sync;
        run.replayed = replayed;
        if let Some(timeline) = unpromoted {
            let text = format!(
                "{node} started as a primary from a standby's data directory: it ended recovery \
                 on timeline {timeline} without starting a new one"
            );
            self.violations.push(text);
        }
        if !in_recovery {
            self.check_new_primary(node, "started as a primary");
        }
        Ok(())
    }

    fn replay_caught_up(&self, node: &str, pid: i32) -> anyhow::Result<Option<bool>> {
        let s = self.server(node)?;
        let Some(run) = s.running(pid) else {
            bail!("reading replay progress: {CLOSED}");
        };
        if !run.in_recovery {
            return Ok(None);
        }
        Ok(Some(run.received.is_none_or(|r| lsn_at(run.replayed) >= r)))
    }

    fn begin_promotion(&mut self, node: &str, pid: i32) -> anyhow::Result<Duration> {
        let run = self.server_mut(node)?.running_mut(pid)?;
        run.phase = Phase::Promoting;
        Ok(self.draw(node, 50, 200))
    }

    /// `pg_promote` ends: the rest of the local WAL replayed, a new timeline begins.
    fn finish_promotion(&mut self, node: &str, pid: i32) -> anyhow::Result<()> {
        let uid = self.uid();
        let now = self.now_ms;
        let s = self.server_mut(node)?;
        if s.running(pid).is_none_or(|r| r.phase != Phase::Promoting) {
            bail!("pg_promote: {CLOSED}");
        }
        let cluster = s.cluster_mut()?;
        let timeline = cluster.next_timeline();
        let replayed = cluster.wal.len();
        cluster.wal.push(uid, timeline, Kind::Switch);
        cluster.control = Control::InProduction;
        // PostgreSQL removes standby.signal when it promotes; pgfm.conf loses the upstream.
        s.dir.standby_signal = false;
        s.dir.conf_upstream = None;
        let run = s.running_mut(pid)?;
        run.phase = Phase::Ready;
        run.in_recovery = false;
        run.upstream = None;
        run.replayed = replayed;
        run.recovery_end = Some((run.received, lsn_at(replayed)));
        if let Some((other, at_ms)) = self.timelines.get(&timeline) {
            let text = format!(
                "{node} promoted to timeline {timeline}, which {other} started at {at_ms} ms on \
                 another fork"
            );
            self.violations.push(text);
        }
        self.timelines.insert(timeline, (node.to_string(), now));
        self.check_new_primary(node, &format!("promoted to timeline {timeline}"));
        Ok(())
    }

    /// `pg_reload_conf()`: the settings files in force.
    fn reload(&mut self, node: &str, pid: i32) -> anyhow::Result<()> {
        let s = self.server_mut(node)?;
        let (sync, upstream) = (
            s.dir.sync_conf.clone().unwrap_or_default(),
            s.dir.conf_upstream.clone(),
        );
        let run = s.running_mut(pid)?;
        run.sync = sync;
        run.upstream = upstream;
        Ok(())
    }

    fn current_lsn(&self, node: &str, pid: i32) -> anyhow::Result<Lsn> {
        let s = self.server(node)?;
        let Some(run) = s.running(pid) else {
            bail!("reading the WAL position: {CLOSED}");
        };
        if run.in_recovery {
            bail!("reading the WAL position: recovery is in progress");
        }
        Ok(s.dir.wal().map_or(lsn_at(0), Wal::end))
    }

    /// `pg_ctl stop -m fast` begins: the pid, and the least it takes. None: nothing runs.
    fn begin_fast_stop(&mut self, node: &str) -> Option<(i32, Duration)> {
        let uid = self.uid();
        let s = self.servers.get_mut(node)?;
        let run = s.run.as_mut()?;
        let pid = run.pid;
        match run.phase {
            Phase::Stopping => return Some((pid, Duration::ZERO)),
            Phase::Starting => {
                s.kill();
                return Some((pid, Duration::ZERO));
            }
            Phase::Ready | Phase::Promoting => {}
        }
        run.phase = Phase::Stopping;
        // The sessions are ended: commits waiting for standbys are never acknowledged.
        run.waiting.clear();
        if !run.in_recovery {
            if let Some(cluster) = s.dir.cluster.as_mut() {
                let timeline = cluster.wal.timeline();
                cluster.wal.push(uid, timeline, Kind::Shutdown);
                cluster.control = Control::ShutDown;
            }
        }
        Some((pid, self.draw(node, 50, 300)))
    }

    /// Whether the fast stop of `pid` is over: a primary's walsenders wait until every
    /// standby still connected has flushed the shutdown checkpoint.
    fn fast_stop_done(&mut self, node: &str, pid: i32) -> bool {
        let Some(s) = self.servers.get(node) else {
            return true;
        };
        let Some(run) = s.running(pid) else {
            return true;
        };
        let end = s.dir.wal().map_or(0, Wal::len);
        let passed_on = self
            .links
            .iter()
            .filter(|l| l.upstream == node && l.sender)
            .all(|l| l.flushed >= end);
        if !run.in_recovery && !passed_on {
            return false;
        }
        let in_recovery = run.in_recovery;
        let Some(s) = self.servers.get_mut(node) else {
            return true;
        };
        if in_recovery {
            if let Some(cluster) = s.dir.cluster.as_mut() {
                cluster.control = Control::ShutDownInRecovery;
            }
        }
        s.kill();
        true
    }

    /// `pg_controldata`: the cluster state and the latest checkpoint.
    fn control_data(&self, node: &str) -> anyhow::Result<(String, Lsn)> {
        let s = self.server(node)?;
        match s.dir.cluster.as_ref().filter(|c| !c.broken) {
            Some(c) => Ok((c.control.text().to_string(), c.wal.last_checkpoint())),
            None => bail!(
                "pg_controldata failed: pg_controldata: fatal: could not open file \
                 \"{}/global/pg_control\" for reading: No such file or directory",
                s.path()
            ),
        }
    }

    /// `CHECKPOINT` on `node` (a primary writes a record; a standby's is a restartpoint).
    fn checkpoint(&mut self, node: &str, pid: i32) -> anyhow::Result<()> {
        let uid = self.uid();
        let s = self.server_mut(node)?;
        let in_recovery = s.running_mut(pid)?.in_recovery;
        if !in_recovery {
            let cluster = s.cluster_mut()?;
            let timeline = cluster.wal.timeline();
            cluster.wal.push(uid, timeline, Kind::Checkpoint);
        }
        Ok(())
    }

    /// pg_rewind, once it has run: `Err` says why it failed (the caller marks the
    /// directory again).
    fn rewind_onto(&mut self, node: &str, upstream: &Upstream) -> Result<(), String> {
        let uid = self.uid();
        let s = &self.servers[node];
        if s.run.is_some() {
            return Err(
                "FATAL:  lock file \"postmaster.pid\" already exists; pg_rewind: error: \
                 postgres single-user mode in target cluster failed"
                    .into(),
            );
        }
        if s.dir.cluster.as_ref().is_none_or(|c| c.broken) {
            return Err(format!(
                "pg_rewind: error: could not open file \"{}/global/pg_control\" for reading: No \
                 such file or directory",
                s.path()
            ));
        }
        let at = format!(
            "pg_rewind: error: connection to server at \"{}\", port {} failed",
            upstream.host, upstream.port
        );
        let source = match self.reach(node, &upstream.host, upstream.port) {
            Reach::Answers(_) => self.node_at(&upstream.host).unwrap_or_default(),
            Reach::Fails(e) => return Err(format!("{at}: {e}")),
            Reach::Hangs => return Err(format!("{at}: timeout expired")),
        };
        let Some((source_wal, source_files)) = self.servers[&source]
            .dir
            .cluster
            .as_ref()
            .map(|c| (c.wal.clone(), c.history_files()))
        else {
            return Err(format!("{at}: {REFUSED}"));
        };
        let Some(target) = self
            .servers
            .get_mut(node)
            .and_then(|s| s.dir.cluster.as_mut())
        else {
            return Err("the target has no cluster".into());
        };
        // A target not shut down cleanly is first recovered in single-user mode, which
        // ends with a shutdown checkpoint.
        if !matches!(
            target.control,
            Control::ShutDown | Control::ShutDownInRecovery
        ) {
            let timeline = target.wal.timeline();
            target.wal.push(uid, timeline, Kind::Shutdown);
            target.control = Control::ShutDown;
        }
        // "No rewind required" when both are on the same timeline (even if the target is
        // ahead) or the target is an ancestor of the source; otherwise the target gets
        // the source's WAL from the fork on, and recovers up to the source's end.
        let same_timeline = target.wal.timeline() == source_wal.timeline();
        if !same_timeline && !target.wal.is_prefix_of(&source_wal) {
            target.wal = source_wal;
            target.histories = source_files;
            target.reserved.clear();
            target.control = Control::InArchiveRecovery;
        }
        Ok(())
    }

    fn create_slots(&mut self, node: &str, pid: i32, slots: &[String]) -> anyhow::Result<()> {
        let s = self.server_mut(node)?;
        s.running_mut(pid)?;
        let cluster = s.cluster_mut()?;
        cluster.slots.extend(slots.iter().cloned());
        Ok(())
    }

    fn remove_slots(&mut self, node: &str, pid: i32, slots: &[String]) -> anyhow::Result<()> {
        let s = self.server_mut(node)?;
        s.running_mut(pid)?;
        let cluster = s.cluster_mut()?;
        for slot in slots {
            cluster.slots.remove(slot);
        }
        // pg_terminate_backend on the walsenders that used them.
        for link in self
            .links
            .iter_mut()
            .filter(|l| l.upstream == node && slots.contains(&l.slot))
        {
            link.sender = false;
        }
        Ok(())
    }

    /// pg_basebackup begins: refused on a directory that is not empty.
    fn begin_clone(
        &mut self,
        node: &str,
        upstream: &Upstream,
    ) -> anyhow::Result<(u64, i32, Duration)> {
        let failed =
            |e: String| anyhow::anyhow!("pg_basebackup from {} failed: {e}", upstream.name);
        let source_pid = match self.reach(node, &upstream.host, upstream.port) {
            Reach::Answers(pid) => pid,
            Reach::Fails(e) => return Err(failed(format!("pg_basebackup: error: {e}"))),
            Reach::Hangs => return Err(failed("pg_basebackup: error: timeout expired".into())),
        };
        let s = self.server_mut(node)?;
        if s.state() != Ok(DataDirState::Empty) {
            let path = s.path();
            return Err(failed(format!(
                "pg_basebackup: error: directory \"{path}\" exists but is not empty"
            )));
        }
        s.cloning = true;
        let epoch = s.host_epoch;
        Ok((epoch, source_pid, self.draw(node, 1_000, 3_000)))
    }

    /// pg_basebackup ends: a copy of the source's directory (WAL up to the backup's end,
    /// its settings files and signal files; no slots), or nothing if the source went away.
    fn finish_clone(
        &mut self,
        node: &str,
        epoch: u64,
        upstream: &Upstream,
        source_pid: i32,
    ) -> anyhow::Result<()> {
        if self.server(node)?.host_epoch != epoch {
            bail!("pg_basebackup from {} was killed", upstream.name);
        }
        self.server_mut(node)?.cloning = false;
        let source = self.node_at(&upstream.host).unwrap_or_default();
        let copy = self
            .servers
            .get(&source)
            .filter(|s| s.running(source_pid).is_some() && !self.frozen(&s.name))
            .filter(|s| self.up(&s.name) && self.path(node, &s.name))
            .map(|s| s.dir.clone());
        let Some(copy) = copy else {
            bail!(
                "pg_basebackup from {} failed: pg_basebackup: error: could not read COPY data: \
                 {CLOSED}",
                upstream.name
            );
        };
        let s = self.server_mut(node)?;
        s.dir = DataDir {
            cluster: copy.cluster.map(|c| Cluster {
                histories: c.history_files(),
                reserved: BTreeSet::new(),
                wal: c.wal,
                control: c.control,
                slots: BTreeSet::new(),
                broken: false,
            }),
            ..copy
        };
        Ok(())
    }
}

/// Why a standby whose WAL is not a prefix of its upstream's cannot stream, in
/// PostgreSQL's words (it judges by timelines; the model by the records themselves).
fn divergence(standby: &Wal, upstream: &Wal) -> String {
    let (mine, theirs) = (standby.timeline(), upstream.timeline());
    let common = standby.common(upstream);
    if mine == theirs {
        if upstream.is_prefix_of(standby) {
            return format!(
                "could not receive data from WAL stream: ERROR:  requested starting point {} is \
                 ahead of the WAL flush position of this server {}",
                standby.end(),
                upstream.end()
            );
        }
        return format!(
            "invalid record at {}: incorrect prev-link (timeline {mine} differs from the \
             upstream's)",
            lsn_at(common)
        );
    }
    let forks = upstream.forks();
    match forks.iter().position(|f| f.timeline.0 == mine) {
        Some(i) => {
            let next = forks.get(i + 1).map_or(theirs, |f| f.timeline.0);
            format!(
                "new timeline {next} forked off current database system timeline {mine} before \
                 current recovery point {}",
                standby.end()
            )
        }
        None if theirs < mine => {
            format!("highest timeline {theirs} of the primary is behind recovery timeline {mine}")
        }
        None => format!(
            "could not receive data from WAL stream: ERROR:  requested timeline {mine} is not in \
             this server's history"
        ),
    }
}

/// One node's PostgreSQL as its agent holds it.
struct SimDatabase {
    model: Shared,
    node: String,
    /// Told when a postmaster this handle started exits (as its parent, the agent learns).
    exited: Arc<Notify>,
}

impl SimDatabase {
    fn model(&self) -> MutexGuard<'_, PgModel> {
        lock(&self.model)
    }

    /// A new connection from this node to `reach`'s server: its pid, or the error libpq
    /// gives (after its timeout when nothing answers).
    async fn connect(&self, reach: impl FnOnce(&PgModel) -> Reach) -> Result<i32, String> {
        let (reach, timeout) = {
            let m = self.model();
            (reach(&m), m.probe_timeout)
        };
        match reach {
            Reach::Answers(pid) => {
                sleep(QUERY).await;
                Ok(pid)
            }
            Reach::Fails(e) => Err(e),
            Reach::Hangs => {
                sleep(timeout).await;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    async fn connect_own(&self) -> Result<i32, String> {
        self.connect(|m| m.reach_own(&self.node)).await
    }

    async fn connect_to(&self, upstream: &Upstream) -> Result<i32, String> {
        self.connect(|m| m.reach(&self.node, &upstream.host, upstream.port))
            .await
    }

    async fn pause(&self, low_ms: u64, high_ms: u64) {
        let wait = self.model().draw(&self.node, low_ms, high_ms);
        sleep(wait).await;
    }

    async fn start(&self, how: StartAs<'_>) -> anyhow::Result<u32> {
        self.model().write_parameters(&self.node);
        let (pid, wait) = self.model().spawn(&self.node, how, &self.exited)?;
        sleep(wait).await;
        loop {
            // Bound first: the lock must be released before the sleep.
            let outcome = self.model().start_outcome(&self.node, pid);
            match outcome {
                Some(result) => return result.map(|()| pid as u32),
                None => sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Replay all WAL received, then promote (as `Postgres::promote`).
    async fn promote(&self, at_least: Timeline) -> anyhow::Result<()> {
        let pid = self
            .connect_own()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to promote: {e}"))?;
        let start_timeout = self.model().start_timeout;
        let started = tokio::time::Instant::now();
        loop {
            // Bound first: the lock must be released before an arm locks again.
            let caught_up = self.model().replay_caught_up(&self.node, pid)?;
            match caught_up {
                None => {
                    // Not in recovery: already a primary; pgfm.conf loses the upstream.
                    self.model().server_mut(&self.node)?.dir.conf_upstream = None;
                    return Ok(());
                }
                Some(true) => break,
                Some(false) => {}
            }
            if started.elapsed() > start_timeout {
                bail!("replay did not catch up with the WAL received within {start_timeout:?}");
            }
            sleep(Duration::from_millis(20)).await;
        }
        self.model().reserve_timelines(&self.node, at_least)?;
        let wait = self.model().begin_promotion(&self.node, pid)?;
        sleep(wait).await;
        self.model().finish_promotion(&self.node, pid)
    }

    /// Rewrite the settings for `upstream` and reload (as `Postgres::follow`).
    async fn follow(&self, upstream: &Upstream) -> anyhow::Result<()> {
        {
            let mut m = self.model();
            let s = m.server_mut(&self.node)?;
            let path = s.path();
            s.dir.prepare(&path, StartAs::Standby(upstream))?;
        }
        let pid = self
            .connect_own()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to reload: {e}"))?;
        self.pause(5, 30).await;
        self.model()
            .reload(&self.node, pid)
            .map_err(|e| anyhow::anyhow!("pg_reload_conf(): {e}"))
    }

    async fn set_sync_standbys(&self, rule: &SyncRule) -> anyhow::Result<Lsn> {
        self.write_sync_conf(rule)?;
        let pid = self
            .connect_own()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to reload: {e}"))?;
        self.pause(5, 30).await;
        self.model()
            .reload(&self.node, pid)
            .map_err(|e| anyhow::anyhow!("reading the setting: {e}"))?;
        // The walsenders take the new setting on their next wake-up.
        sleep(Duration::from_millis(100)).await;
        self.model().current_lsn(&self.node, pid)
    }

    fn write_sync_conf(&self, rule: &SyncRule) -> anyhow::Result<String> {
        self.model().server_mut(&self.node)?.dir.sync_conf = Some(rule.clone());
        Ok(sync_setting(rule))
    }

    /// An immediate stop, then `standby.signal` and the rewind marker (as
    /// `Postgres::fence`).
    async fn fence(&self) -> anyhow::Result<()> {
        let epoch = {
            let mut m = self.model();
            let s = m.server_mut(&self.node)?;
            let was_running = s.run.is_some();
            s.kill();
            was_running.then_some(s.host_epoch)
        };
        if epoch.is_some() {
            self.pause(5, 50).await;
        }
        let mut m = self.model();
        let s = m.server_mut(&self.node)?;
        if epoch.is_some_and(|e| e != s.host_epoch) {
            bail!("the host died while fencing");
        }
        s.dir.standby_signal = true;
        s.dir.marker = true;
        Ok(())
    }

    /// `pg_ctl stop -m fast -t LIMIT`: `Err` when it is not over within `limit` (whole
    /// seconds, at least one).
    async fn stop_fast(&self, limit: Duration) -> Result<(), String> {
        let Some((pid, least)) = self.model().begin_fast_stop(&self.node) else {
            return Ok(());
        };
        let limit = Duration::from_secs(limit.as_secs().max(1));
        let started = tokio::time::Instant::now();
        sleep(least).await;
        loop {
            if self.model().fast_stop_done(&self.node, pid) {
                return Ok(());
            }
            if started.elapsed() >= limit {
                return Err(format!(
                    "pg_ctl stop failed: pg_ctl: server does not shut down within {} s",
                    limit.as_secs()
                ));
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// As `Postgres::stop_for_handover`.
    async fn stop_for_handover(
        &self,
        limit: Duration,
        force: bool,
    ) -> anyhow::Result<HandOverStop> {
        let clean = self.stop_fast(limit).await;
        {
            let mut m = self.model();
            let s = m.server_mut(&self.node)?;
            if clean.is_err() {
                s.kill();
            }
            s.dir.standby_signal = true;
        }
        sleep(QUERY).await;
        let (state, final_lsn) = self.model().control_data(&self.node)?;
        if state == "shut down" {
            return Ok(HandOverStop {
                final_lsn,
                clean: true,
            });
        }
        let why = format!(
            "PostgreSQL was not shut down cleanly (pg_controldata: {state:?}): its final WAL \
             position is not known"
        );
        if !force {
            bail!("{why}; nothing is handed over");
        }
        self.model().server_mut(&self.node)?.dir.marker = true;
        Ok(HandOverStop {
            final_lsn,
            clean: false,
        })
    }

    async fn stop_to_rewind(&self) -> anyhow::Result<()> {
        self.stop_fast(Duration::from_secs(60))
            .await
            .map_err(anyhow::Error::msg)?;
        let mut m = self.model();
        let s = m.server_mut(&self.node)?;
        s.dir.standby_signal = true;
        s.dir.marker = true;
        Ok(())
    }

    /// As `Postgres::rewind`: a checkpoint on the upstream, the directory marked through
    /// every step, pg_rewind, then this node's standby settings.
    async fn rewind(&self, upstream: &Upstream) -> anyhow::Result<()> {
        let source_pid = self
            .connect_to(upstream)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {} to checkpoint: {e}", upstream.name))?;
        self.pause(10, 50).await;
        let epoch = {
            let mut m = self.model();
            let source = m.node_at(&upstream.host).unwrap_or_default();
            m.checkpoint(&source, source_pid)
                .map_err(|e| anyhow::anyhow!("CHECKPOINT on {}: {e}", upstream.name))?;
            let s = m.server_mut(&self.node)?;
            s.dir.marker = true;
            s.dir.standby_signal = false;
            s.host_epoch
        };
        self.pause(300, 1_500).await;
        let mut m = self.model();
        if m.server(&self.node)?.host_epoch != epoch {
            bail!("pg_rewind was killed");
        }
        let result = m.rewind_onto(&self.node, upstream);
        let s = m.server_mut(&self.node)?;
        if let Err(e) = result {
            s.dir.standby_signal = true;
            s.dir.marker = true;
            bail!("pg_rewind failed: {e}");
        }
        let path = s.path();
        s.dir.prepare(&path, StartAs::Standby(upstream))?;
        s.dir.marker = false;
        Ok(())
    }

    /// As `Postgres::initialise`: initdb and the rest take a while aside, and the cluster
    /// appears in the data directory whole, unless the host died meanwhile.
    async fn initialise(&self) -> anyhow::Result<()> {
        let (epoch, wait) = {
            let mut m = self.model();
            let wait = m.draw(&self.node, 500, 2_000);
            let s = m.server_mut(&self.node)?;
            if s.state() != Ok(DataDirState::Empty) {
                bail!(
                    "data_dir {} is no longer empty: not initialising over it",
                    s.path()
                );
            }
            (s.host_epoch, wait)
        };
        sleep(wait).await;
        let mut m = self.model();
        let s = m.server_mut(&self.node)?;
        if s.host_epoch != epoch {
            bail!("initdb was killed");
        }
        if s.state() != Ok(DataDirState::Empty) {
            bail!(
                "data_dir {} is no longer empty: not initialising over it",
                s.path()
            );
        }
        s.dir.cluster = Some(Cluster::initdb());
        Ok(())
    }

    /// As `Postgres::clone_from`: this node's slot on `upstream`, then pg_basebackup.
    async fn clone_from(&self, upstream: &Upstream) -> anyhow::Result<()> {
        let slot = slot_name(&self.node);
        if upstream.with_slot {
            let source_pid = self.connect_to(upstream).await.map_err(|e| {
                anyhow::anyhow!("connecting to {} to create slot {slot}: {e}", upstream.name)
            })?;
            let mut m = self.model();
            let source = m.node_at(&upstream.host).unwrap_or_default();
            m.create_slots(&source, source_pid, std::slice::from_ref(&slot))
                .map_err(|e| anyhow::anyhow!("on {}: creating slot {slot}: {e}", upstream.name))?;
        }
        let (epoch, source_pid, wait) = self.model().begin_clone(&self.node, upstream)?;
        sleep(wait).await;
        self.model()
            .finish_clone(&self.node, epoch, upstream, source_pid)
    }

    async fn reclone(&self, upstream: &Upstream) -> anyhow::Result<()> {
        self.move_aside()?;
        self.clone_from(upstream).await
    }

    /// As `Postgres::move_aside`: no data directory left.
    fn move_aside(&self) -> anyhow::Result<()> {
        let mut m = self.model();
        let s = m.server_mut(&self.node)?;
        if let Some(run) = &s.run {
            // Production refuses to move the directory from under a running postmaster.
            bail!(
                "a postmaster (pid {}) is running on {}: stop it before moving the directory \
                 aside",
                run.pid,
                s.path()
            );
        }
        s.dir = DataDir::default();
        Ok(())
    }

    async fn slots(&self, slots: &[String], create: bool) -> anyhow::Result<()> {
        let verb = if create { "create" } else { "drop" };
        let pid = self
            .connect_own()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {verb} slots: {e}"))?;
        self.pause(1, 5).await;
        let mut m = self.model();
        let done = if create {
            m.create_slots(&self.node, pid, slots)
        } else {
            m.remove_slots(&self.node, pid, slots)
        };
        done.map_err(|e| anyhow::anyhow!("{verb} slots {}: {e}", slots.join(", ")))
    }

    async fn wal_position(&self) -> Result<Option<Lsn>, String> {
        let pid = self.connect_own().await?;
        let m = self.model();
        let run = m
            .servers
            .get(&self.node)
            .and_then(|s| s.running(pid))
            .ok_or_else(|| CLOSED.to_string())?;
        Ok(run
            .in_recovery
            .then(|| run.received.max(Some(lsn_at(run.replayed))))
            .flatten())
    }
}

impl Database for SimDatabase {
    fn data_dir_state(&self) -> Result<DataDirState, String> {
        match self.model().servers.get(&self.node) {
            Some(s) => s.state(),
            None => Err(format!("{} has no PostgreSQL in the simulation", self.node)),
        }
    }
    fn recovery_unfinished(&self) -> Result<bool, String> {
        match self.model().servers.get(&self.node) {
            Some(s) => Ok(s
                .dir
                .cluster
                .as_ref()
                .is_some_and(|c| c.control.in_recovery())),
            None => Err(format!("{} has no PostgreSQL in the simulation", self.node)),
        }
    }
    fn running_pid(&self) -> Option<i32> {
        let m = self.model();
        m.servers.get(&self.node)?.run.as_ref().map(|r| r.pid)
    }
    fn writable(&self) -> bool {
        let m = self.model();
        m.servers
            .get(&self.node)
            .is_some_and(|s| s.run.is_some() && !s.dir.standby_signal)
    }
    fn exited(&self) -> Pending<'_, ()> {
        Box::pin(self.exited.notified())
    }
    /// Every agent of a simulated cluster runs with the same committed settings: the
    /// model keeps one value for all of them.
    fn set_timeouts(&self, start: Duration, probe: Duration) {
        let mut m = self.model();
        m.start_timeout = start;
        m.probe_timeout = probe;
    }
    fn prober(&self) -> Box<dyn Probe> {
        Box::new(SimProber {
            model: self.model.clone(),
            node: self.node.clone(),
        })
    }
    fn wal_position(&self) -> Pending<'_, Result<Option<Lsn>, String>> {
        Box::pin(SimDatabase::wal_position(self))
    }
    fn write_sync_conf(&self, rule: &SyncRule) -> anyhow::Result<String> {
        SimDatabase::write_sync_conf(self, rule)
    }
    fn set_sync_standbys<'a>(&'a self, rule: &'a SyncRule) -> Pending<'a, anyhow::Result<Lsn>> {
        Box::pin(SimDatabase::set_sync_standbys(self, rule))
    }
    fn start<'a>(&'a self, how: StartAs<'a>) -> Pending<'a, anyhow::Result<u32>> {
        Box::pin(SimDatabase::start(self, how))
    }
    /// The simulation runs without TLS.
    fn refresh_ssl(&self) -> Pending<'_, anyhow::Result<bool>> {
        Box::pin(async { Ok(false) })
    }
    fn initialise<'a>(&'a self, _plan: &'a InitdbPlan) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(SimDatabase::initialise(self))
    }
    fn clone_from<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(SimDatabase::clone_from(self, upstream))
    }
    fn move_aside(&self) -> anyhow::Result<()> {
        SimDatabase::move_aside(self)
    }
    fn reclone<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(SimDatabase::reclone(self, upstream))
    }
    fn promote(&self, at_least: Timeline) -> Pending<'_, anyhow::Result<()>> {
        Box::pin(SimDatabase::promote(self, at_least))
    }
    fn follow<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(SimDatabase::follow(self, upstream))
    }
    fn fence(&self) -> Pending<'_, anyhow::Result<()>> {
        Box::pin(SimDatabase::fence(self))
    }
    fn stop_to_rewind(&self) -> Pending<'_, anyhow::Result<()>> {
        Box::pin(SimDatabase::stop_to_rewind(self))
    }
    fn set_parameters(&self, parameters: BTreeMap<String, String>) {
        self.model()
            .parameters
            .insert(self.node.clone(), parameters);
    }
    fn write_parameters<'a>(
        &'a self,
        _upstream: Option<&'a Upstream>,
    ) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.model().write_parameters(&self.node);
            Ok(())
        })
    }
    fn stop(&self) -> Pending<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.stop_fast(Duration::from_secs(60))
                .await
                .map_err(anyhow::Error::msg)
        })
    }
    fn rewind<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(SimDatabase::rewind(self, upstream))
    }
    fn stop_for_handover(
        &self,
        limit: Duration,
        force: bool,
    ) -> Pending<'_, anyhow::Result<HandOverStop>> {
        Box::pin(SimDatabase::stop_for_handover(self, limit, force))
    }
    fn ensure_slots<'a>(&'a self, slots: &'a [String]) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(self.slots(slots, true))
    }
    fn drop_slots<'a>(&'a self, slots: &'a [String]) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(self.slots(slots, false))
    }
}

/// The agent's prober of its own server (as `Prober`).
struct SimProber {
    model: Shared,
    node: String,
}

impl SimProber {
    async fn probe(&mut self, report: &mut NodeReport) -> Result<(), String> {
        report.forget_database();
        let (reach, timeout) = {
            let m = lock(&self.model);
            (m.reach_own(&self.node), m.probe_timeout)
        };
        let pid = match reach {
            Reach::Answers(pid) => pid,
            Reach::Fails(e) => return Err(e),
            Reach::Hangs => {
                sleep(timeout).await;
                return Err(format!("probe got no answer within {timeout:?}"));
            }
        };
        sleep(QUERY).await;
        let result = lock(&self.model).fill_report(&self.node, pid, report);
        if result.is_err() {
            report.db_up = false;
            report.role = None;
        }
        result
    }
}

impl Probe for SimProber {
    fn probe<'a>(&'a mut self, report: &'a mut NodeReport) -> Pending<'a, Result<(), String>> {
        Box::pin(SimProber::probe(self, report))
    }
}

impl PgModel {
    /// The report fields `Prober::probe` fills, from `pid`'s server as it is now.
    fn fill_report(&self, node: &str, pid: i32, report: &mut NodeReport) -> Result<(), String> {
        let s = self.servers.get(node).ok_or_else(|| CLOSED.to_string())?;
        let (Some(run), Some(wal)) = (s.running(pid), s.dir.wal()) else {
            return Err(CLOSED.into());
        };
        report.db_up = true;
        report.timeline = Some(Timeline(wal.timeline()));
        report.parameters_digest = self.parameters_written.get(node).copied();
        if run.in_recovery {
            report.role = Some(DbRole::Standby);
            report.received_lsn = run.received;
            report.replayed_lsn = Some(lsn_at(run.replayed));
            report.conninfo_upstream = run
                .upstream
                .as_ref()
                .map(|u| format!("{}:{}", u.host, u.port));
            report.conninfo_slot = run
                .upstream
                .as_ref()
                .filter(|u| u.with_slot)
                .map(|_| slot_name(node));
            let receiving = self.links.iter().any(|l| l.standby == node && l.receiver);
            report.receiver = receiving.then(|| "streaming".to_string());
            return Ok(());
        }
        report.role = Some(DbRole::Primary);
        report.current_lsn = Some(wal.end());
        if let Some((received, replayed)) = run.recovery_end {
            report.received_lsn = received;
            report.replayed_lsn = Some(replayed);
        }
        report.slots = s
            .dir
            .cluster
            .as_ref()
            .map(|c| c.slots.iter().cloned().collect())
            .unwrap_or_default();
        let mut replicas: Vec<ReplicaInfo> = self
            .links
            .iter()
            .filter(|l| l.upstream == node && l.sender)
            .map(|l| ReplicaInfo {
                application_name: l.standby.clone(),
                state: if l.caught_up { "streaming" } else { "catchup" }.to_string(),
                sync_state: self.sync_state(&run.sync, l).to_string(),
                replay_lsn: Some(lsn_at(l.replayed)),
                flush_lsn: Some(lsn_at(l.flushed)),
                // The walsender sends all the primary flushed (a socket takes it).
                sent_lsn: Some(wal.end()),
            })
            .collect();
        replicas.sort_by(|a, b| a.application_name.cmp(&b.application_name));
        report.replicas = replicas;
        report.sync = Some(sync_rule(&sync_setting(&run.sync)));
        if wal.timeline() > 1 {
            report.forks = wal.forks();
        }
        Ok(())
    }

    /// A check from `from` of the server at `target` (as `RemoteCheck::check`), given the
    /// connection kept from the last check (`kept`: the server's pid): how long it takes,
    /// the verdict, and the connection to keep.
    fn remote_check(
        &self,
        from: &str,
        target: &Target,
        kept: Option<i32>,
    ) -> (Duration, Verdict, Option<i32>) {
        let timeout = target.timeout;
        let address = format!("{}:{}", target.host, target.port);
        let no_answer =
            || Verdict::CannotTell(format!("connected, but no answer within {timeout:?}"));
        let Some(node) = self.node_at(&target.host) else {
            return (
                QUERY,
                Verdict::CannotTell(format!(
                    "connecting to {address}: failed to lookup address information: Name or \
                     service not known"
                )),
                None,
            );
        };
        let s = &self.servers[&node];
        let answers = self.up(&node) && self.path(from, &node) && !self.frozen(&node);
        if let Some(pid) = kept {
            let same = s
                .running(pid)
                .is_some_and(|r| r.phase != Phase::Stopping && s.port == target.port);
            if same && answers {
                return (
                    QUERY,
                    Verdict::Answering("it answered a query".into()),
                    kept,
                );
            }
            if !answers {
                // The query goes out on the open connection and nothing comes back.
                return (timeout * 2, no_answer(), None);
            }
            // The server went away while its host answers: the connection was closed.
        }
        if !self.up(&node) || !self.path(from, &node) {
            let down = format!("no TCP connection to {address} within {timeout:?}");
            return (timeout, Verdict::Down(down), None);
        }
        let Some(run) = s.run.as_ref().filter(|_| s.port == target.port) else {
            let refused = format!("{address}: Connection refused (os error 111)");
            return (QUERY, Verdict::Down(refused), None);
        };
        if self.frozen(&node) {
            // The kernel accepts the connection; the frozen postmaster never answers.
            return (timeout * 2, no_answer(), None);
        }
        match run.phase {
            Phase::Starting => (
                QUERY,
                Verdict::Answering(format!("it answered: {STARTING}")),
                None,
            ),
            Phase::Stopping => (
                QUERY,
                Verdict::Answering(format!("it answered: {STOPPING}")),
                None,
            ),
            Phase::Ready | Phase::Promoting => (
                QUERY,
                Verdict::Answering("it accepted a connection".into()),
                Some(run.pid),
            ),
        }
    }
}

/// Checks of other nodes' PostgreSQL from one node, keeping a connection between checks
/// (as `RemoteCheck`).
struct SimRemoteCheck {
    model: Shared,
    from: String,
    /// The server (host, port) and pid the kept connection is to.
    kept: Option<(String, u16, i32)>,
}

impl SimRemoteCheck {
    async fn check(&mut self, target: &Target) -> Verdict {
        let kept = self
            .kept
            .take()
            .filter(|(h, p, _)| *h == target.host && *p == target.port)
            .map(|(_, _, pid)| pid);
        let (wait, verdict, keep) = lock(&self.model).remote_check(&self.from, target, kept);
        sleep(wait).await;
        self.kept = keep.map(|pid| (target.host.clone(), target.port, pid));
        verdict
    }
}

impl RemoteProbe for SimRemoteCheck {
    fn check<'a>(&'a mut self, target: &'a Target) -> Pending<'a, Verdict> {
        Box::pin(SimRemoteCheck::check(self, target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::time::Instant;

    /// Hosts that run and reach each other unless a test says otherwise.
    #[derive(Default)]
    struct World {
        down: Mutex<BTreeSet<String>>,
        frozen: Mutex<BTreeSet<String>>,
        cut: Mutex<BTreeSet<(String, String)>>,
    }

    impl Hosts for World {
        fn up(&self, host: &str) -> bool {
            !self.down.lock().unwrap().contains(host)
        }
        fn frozen(&self, host: &str) -> bool {
            self.frozen.lock().unwrap().contains(host)
        }
        fn reachable(&self, from: &str, to: &str) -> bool {
            !self
                .cut
                .lock()
                .unwrap()
                .contains(&(from.to_string(), to.to_string()))
        }
    }

    /// Three nodes, pg1 initialised, driven on the test's paused clock.
    struct Sim {
        model: Shared,
        world: Arc<World>,
        base: Instant,
        dbs: BTreeMap<String, Arc<dyn Database>>,
    }

    fn upstream(node: &str) -> Upstream {
        Upstream {
            name: node.to_string(),
            host: node.to_string(),
            port: 5432,
            with_slot: true,
        }
    }

    fn rule(count: usize, names: &[&str]) -> SyncRule {
        SyncRule::new(count, names.iter().map(|n| n.to_string()).collect())
    }

    impl Sim {
        fn new() -> Sim {
            Sim::seeded(7)
        }

        fn seeded(seed: u64) -> Sim {
            let world = Arc::new(World::default());
            let nodes = ["pg1", "pg2", "pg3"];
            let model: Shared =
                Arc::new(Mutex::new(PgModel::new(seed, &nodes, "pg1", world.clone())));
            let dbs = nodes
                .iter()
                .map(|n| (n.to_string(), PgModel::database(&model, n)))
                .collect();
            Sim {
                model,
                world,
                base: Instant::now(),
                dbs,
            }
        }

        fn db(&self, node: &str) -> &dyn Database {
            self.dbs[node].as_ref()
        }

        fn model(&self) -> MutexGuard<'_, PgModel> {
            lock(&self.model)
        }

        /// Run `op` on this node's clock while the model ticks every 5 ms.
        async fn run<T>(&self, op: impl Future<Output = T>) -> T {
            tokio::pin!(op);
            loop {
                // The tick first when both are due: `wait(5)` must tick.
                tokio::select! {
                    biased;
                    _ = sleep(Duration::from_millis(5)) => {
                        let now = self.base.elapsed().as_millis() as u64;
                        self.model().tick(now);
                    }
                    out = &mut op => return out,
                }
            }
        }

        async fn wait(&self, ms: u64) {
            self.run(sleep(Duration::from_millis(ms))).await
        }

        /// Tick until `done` holds, failing after `within_ms` with what it waited for.
        async fn until(&self, what: &str, within_ms: u64, done: impl Fn(&PgModel) -> bool) {
            let deadline = Instant::now() + Duration::from_millis(within_ms);
            while !done(&self.model()) {
                assert!(
                    Instant::now() < deadline,
                    "waited {within_ms} ms for {what}: {:#?}",
                    self.model().describe()
                );
                self.wait(5).await;
            }
        }

        async fn probe(&self, node: &str) -> NodeReport {
            let mut report = NodeReport::new(node, pgfm_core::NodeKind::Data);
            let mut prober = self.db(node).prober();
            let probed = self.run(prober.probe(&mut report)).await;
            assert_eq!(probed, Ok(()), "probing {node}");
            report
        }

        fn cut(&self, a: &str, b: &str) {
            let mut cut = self.world.cut.lock().unwrap();
            cut.insert((a.to_string(), b.to_string()));
            cut.insert((b.to_string(), a.to_string()));
        }

        fn heal(&self) {
            self.world.cut.lock().unwrap().clear();
        }

        fn kill_host(&self, node: &str) {
            self.world.down.lock().unwrap().insert(node.to_string());
            self.model().host_down(node);
        }

        fn revive_host(&self, node: &str) {
            self.world.down.lock().unwrap().remove(node);
            self.model().host_up(node);
        }

        async fn primary(&self, node: &str) {
            self.run(self.db(node).start(StartAs::Primary))
                .await
                .unwrap();
        }

        /// Cloned from `of` and started as its standby, streaming.
        async fn standby(&self, node: &str, of: &str) {
            let up = upstream(of);
            self.run(self.db(node).clone_from(&up)).await.unwrap();
            self.run(self.db(node).start(StartAs::Standby(&up)))
                .await
                .unwrap();
            self.until(&format!("{node} to stream from {of}"), 2_000, |m| {
                m.links
                    .iter()
                    .any(|l| l.standby == node && l.receiver && l.caught_up)
            })
            .await;
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_primary_started_from_the_initialised_directory_takes_writes() {
        let sim = Sim::new();
        assert_eq!(sim.db("pg1").data_dir_state(), Ok(DataDirState::Primary));
        assert_eq!(sim.db("pg2").data_dir_state(), Ok(DataDirState::Empty));
        let empty = sim
            .run(sim.db("pg2").start(StartAs::Primary))
            .await
            .unwrap_err();
        assert!(
            format!("{empty:#}").contains("postgresql.conf"),
            "{empty:#}"
        );
        assert_eq!(sim.db("pg2").running_pid(), None);

        sim.primary("pg1").await;
        assert!(sim.db("pg1").writable());
        let again = sim
            .run(sim.db("pg1").start(StartAs::Primary))
            .await
            .unwrap_err();
        assert!(
            format!("{again:#}").contains("already running"),
            "{again:#}"
        );
        sim.until("ten commits", 1_000, |m| m.commits().len() >= 10)
            .await;
        {
            let m = sim.model();
            assert_eq!(m.writable_now(), ["pg1"]);
            assert!(m
                .commits()
                .iter()
                .all(|c| !c.synchronous && c.node == "pg1" && m.holds("pg1", c.id)));
            assert!(!m.holds("pg2", m.commits()[0].id));
        }
        let report = sim.probe("pg1").await;
        assert_eq!(report.role, Some(DbRole::Primary));
        assert_eq!(report.timeline, Some(Timeline(1)));
        assert!(report.current_lsn > Some(lsn_at(10)), "{report:?}");
        assert_eq!(report.sync, Some(SyncRule::default()));
        assert!(report.forks.is_empty() && report.replicas.is_empty());
        assert_eq!(sim.run(sim.db("pg1").wal_position()).await, Ok(None));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_cloned_standby_streams_and_holds_every_commit() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.run(sim.db("pg2").clone_from(&upstream("pg1")))
            .await
            .unwrap();
        // pg_basebackup runs without -R: the directory is a standby's only once the agent
        // starts it as one.
        assert_eq!(sim.db("pg2").data_dir_state(), Ok(DataDirState::Primary));
        let twice = sim.run(sim.db("pg2").clone_from(&upstream("pg1"))).await;
        assert!(format!("{:#}", twice.unwrap_err()).contains("not empty"));
        sim.run(sim.db("pg2").start(StartAs::Standby(&upstream("pg1"))))
            .await
            .unwrap();
        assert_eq!(sim.db("pg2").data_dir_state(), Ok(DataDirState::Standby));
        assert!(!sim.db("pg2").writable());
        sim.wait(500).await;

        let pg2 = sim.probe("pg2").await;
        assert_eq!(pg2.role, Some(DbRole::Standby));
        assert_eq!(pg2.receiver.as_deref(), Some("streaming"));
        assert_eq!(pg2.conninfo_upstream.as_deref(), Some("pg1:5432"));
        assert_eq!(pg2.timeline, Some(Timeline(1)));
        let pg1 = sim.probe("pg1").await;
        assert_eq!(pg1.slots, ["pg2"]);
        let replica = &pg1.replicas[0];
        assert_eq!(
            (replica.application_name.as_str(), replica.state.as_str()),
            ("pg2", "streaming")
        );
        assert_eq!(replica.sync_state, "async");
        let position = sim.run(sim.db("pg2").wal_position()).await.unwrap();
        assert!(position > Some(lsn_at(1)), "{position:?}");

        sim.model().set_writing(false);
        sim.wait(100).await;
        let m = sim.model();
        assert!(m.commits().len() > 20);
        for c in m.commits() {
            assert!(m.holds("pg2", c.id), "pg2 lacks commit {c:?}");
        }
    }

    /// Commits wait for the named standby's flush; cut off, it confirms nothing (its
    /// walsender lingers for wal_sender_timeout), and they go once it is back.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_synchronous_commit_waits_for_its_standby_and_never_comes_when_it_is_cut_off() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        let switch = sim
            .run(sim.db("pg1").set_sync_standbys(&rule(1, &["pg2"])))
            .await
            .unwrap();
        let pg1 = sim.probe("pg1").await;
        assert_eq!(pg1.sync, Some(rule(1, &["pg2"])));
        assert_eq!(pg1.replicas[0].sync_state, "sync");
        for _ in 0..100 {
            sim.wait(5).await;
            let m = sim.model();
            for c in m.commits().iter().filter(|c| c.lsn >= switch) {
                assert!(c.synchronous, "{c:?} after the switch at {switch}");
                assert!(
                    m.holds("pg2", c.id),
                    "acknowledged before pg2 had it: {c:?}"
                );
            }
        }

        sim.cut("pg1", "pg2");
        sim.wait(10).await;
        let acked = sim.model().commits().len();
        sim.wait(5_000).await;
        assert_eq!(
            sim.model().commits().len(),
            acked,
            "acknowledged while cut off"
        );
        assert_eq!(sim.model().writable_now(), ["pg1"]);
        let pg1 = sim.probe("pg1").await;
        assert_eq!(pg1.replicas.len(), 1, "the walsender lingers: {pg1:?}");
        sim.until("the walsender to time out", 60_000, |m| {
            !m.links.iter().any(|l| l.upstream == "pg1" && l.sender)
        })
        .await;
        assert_eq!(sim.model().commits().len(), acked);

        sim.heal();
        sim.until("the waiting commits to be acknowledged", 65_000, |m| {
            m.commits().len() > acked + 100
        })
        .await;
        let m = sim.model();
        assert!(m.commits().iter().all(|c| m.holds("pg2", c.id)));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn promoting_a_standby_that_misses_a_synchronous_commit_is_a_violation() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        sim.standby("pg3", "pg1").await;
        sim.run(sim.db("pg1").set_sync_standbys(&rule(1, &["pg2"])))
            .await
            .unwrap();
        sim.cut("pg1", "pg3");
        sim.until("synchronous commits pg3 lacks", 1_000, |m| {
            m.commits()
                .iter()
                .any(|c| c.synchronous && !m.holds("pg3", c.id))
        })
        .await;
        sim.kill_host("pg1");

        sim.run(sim.db("pg2").promote(Timeline(2))).await.unwrap();
        assert_eq!(sim.model().take_violations(), Vec::<String>::new());
        assert_eq!(sim.probe("pg2").await.timeline, Some(Timeline(2)));
        assert_eq!(sim.db("pg2").data_dir_state(), Ok(DataDirState::Primary));

        sim.run(sim.db("pg3").promote(Timeline(3))).await.unwrap();
        assert_eq!(sim.probe("pg3").await.timeline, Some(Timeline(3)));
        let violations = sim.model().take_violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].starts_with("pg3 promoted to timeline 3 without"),
            "{violations:?}"
        );
        let lost = sim.model().counters(Some("pg3"));
        assert!(
            lost.lost_sync > 0 && lost.acked_sync >= lost.lost_sync,
            "{lost:?}"
        );
    }

    /// Chaos soak seed 2, run 44: pg2 was promoted and died before it said which timeline
    /// it started; pg3, promoted next, lacked pg2's history file and started the same
    /// number on another fork. Told the floor the state machine reserved, it starts above.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn two_promotions_never_start_the_same_timeline_when_told_the_floor() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        sim.standby("pg3", "pg1").await;
        sim.kill_host("pg1");
        sim.run(sim.db("pg2").promote(Timeline::default()))
            .await
            .unwrap();
        assert_eq!(sim.probe("pg2").await.timeline, Some(Timeline(2)));
        sim.kill_host("pg2");
        sim.run(sim.db("pg3").promote(Timeline::default()))
            .await
            .unwrap();
        let violations = sim.model().take_violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].starts_with("pg3 promoted to timeline 2, which pg2 started"),
            "{violations:?}"
        );

        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        sim.standby("pg3", "pg1").await;
        sim.kill_host("pg1");
        sim.run(sim.db("pg2").promote(Timeline(2))).await.unwrap();
        sim.kill_host("pg2");
        sim.run(sim.db("pg3").promote(Timeline(3))).await.unwrap();
        assert_eq!(sim.probe("pg3").await.timeline, Some(Timeline(3)));
        assert_eq!(sim.model().take_violations(), Vec::<String>::new());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_promotion_cut_off_ends_only_by_a_promotion_whatever_it_reserved() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        // pg2 reserved timelines 2 and 3 for its promotion, and its host died before it.
        sim.model().reserve_timelines("pg2", Timeline(4)).unwrap();
        sim.kill_host("pg1");
        sim.kill_host("pg2");
        sim.revive_host("pg2");
        assert_eq!(sim.db("pg2").recovery_unfinished(), Ok(true));
        assert_eq!(sim.db("pg2").data_dir_state(), Ok(DataDirState::Standby));
        // Started as the primary, it would end recovery on timeline 1.
        sim.run(sim.db("pg2").start(StartAs::ToPromote))
            .await
            .unwrap();
        let report = sim.probe("pg2").await;
        assert_eq!(report.role, Some(DbRole::Standby));
        sim.run(sim.db("pg2").promote(Timeline(4))).await.unwrap();
        assert_eq!(sim.probe("pg2").await.timeline, Some(Timeline(4)));
        assert_eq!(sim.model().take_violations(), Vec::<String>::new());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_standby_starts_without_the_history_files_a_failed_promotion_reserved() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        sim.model().reserve_timelines("pg2", Timeline(3)).unwrap();
        sim.kill_host("pg2");
        sim.revive_host("pg2");
        // PostgreSQL would take timeline 2's reserved file for its recovery target and
        // refuse it ("not a child of this server's history"); pgfm removes it first.
        sim.run(sim.db("pg2").start(StartAs::Standby(&upstream("pg1"))))
            .await
            .unwrap();
        sim.until("pg2 to stream from pg1", 2_000, |m| {
            m.links.iter().any(|l| l.standby == "pg2" && l.receiver)
        })
        .await;
        // Not removed, the start fails as PostgreSQL's does.
        sim.kill_host("pg2");
        sim.revive_host("pg2");
        sim.model().reserve_timelines("pg2", Timeline(3)).unwrap();
        sim.model().server_mut("pg2").unwrap().dir.standby_signal = true;
        let pid = sim.model().pid();
        let failed = {
            let mut m = sim.model();
            let s = m.server_mut("pg2").unwrap();
            s.run = Some(Run::starting(pid, true, None));
            m.finish_start("pg2", pid).unwrap_err()
        };
        assert!(
            failed
                .to_string()
                .contains("requested timeline 2 is not a child"),
            "{failed}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_fenced_primary_is_rewound_onto_the_new_primary_and_streams_from_it() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        sim.cut("pg1", "pg2");
        sim.wait(300).await;
        let only_on_pg1 = sim.model().commits().last().unwrap().id;
        sim.run(sim.db("pg1").fence()).await.unwrap();
        assert_eq!(
            sim.db("pg1").data_dir_state(),
            Ok(DataDirState::FencedPrimary)
        );
        assert_eq!(sim.db("pg1").running_pid(), None);
        assert!(!sim.db("pg1").writable());
        sim.heal();

        sim.run(sim.db("pg2").promote(Timeline(2))).await.unwrap();
        sim.run(sim.db("pg2").ensure_slots(&["pg1".to_string()]))
            .await
            .unwrap();
        sim.run(sim.db("pg1").rewind(&upstream("pg2")))
            .await
            .unwrap();
        assert_eq!(sim.db("pg1").data_dir_state(), Ok(DataDirState::Standby));
        assert!(!sim.model().holds("pg1", only_on_pg1));
        sim.run(sim.db("pg1").start(StartAs::Standby(&upstream("pg2"))))
            .await
            .unwrap();
        sim.wait(500).await;
        let pg1 = sim.probe("pg1").await;
        assert_eq!(pg1.receiver.as_deref(), Some("streaming"));
        assert_eq!(pg1.timeline, Some(Timeline(2)));
        let newest = sim.model().commits().last().unwrap().clone();
        assert_eq!(newest.node, "pg2");
        sim.until("pg1 to receive pg2's newest commit", 2_000, |m| {
            m.holds("pg1", newest.id)
        })
        .await;
    }

    /// pg_rewind refuses a running server; pgfm then marks the directory, whatever it was.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_rewind_of_a_running_server_fails_and_leaves_it_marked() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        let refused = sim.run(sim.db("pg2").rewind(&upstream("pg1"))).await;
        let text = format!("{:#}", refused.unwrap_err());
        assert!(text.contains("postmaster.pid"), "{text}");
        assert_eq!(
            sim.db("pg2").data_dir_state(),
            Ok(DataDirState::FencedPrimary)
        );
    }

    /// A standby that holds WAL past the point where the new primary's timeline forked off
    /// is refused, and the engine's own rule calls it diverged.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_standby_that_diverged_does_not_stream() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        sim.standby("pg3", "pg1").await;
        sim.cut("pg1", "pg2");
        sim.wait(300).await;
        sim.kill_host("pg1");
        sim.run(sim.db("pg2").promote(Timeline(2))).await.unwrap();
        sim.run(sim.db("pg2").ensure_slots(&["pg3".to_string()]))
            .await
            .unwrap();
        sim.run(sim.db("pg3").follow(&upstream("pg2")))
            .await
            .unwrap();
        sim.wait(2_000).await;

        let pg3 = sim.probe("pg3").await;
        assert_eq!(pg3.receiver, None);
        assert_eq!(pg3.conninfo_upstream.as_deref(), Some("pg2:5432"));
        let pg2 = sim.probe("pg2").await;
        assert!(pg2.replicas.is_empty(), "{pg2:?}");
        let trace = sim.model().describe().join("\n");
        assert!(
            trace.contains("new timeline 2 forked off current database system timeline 1"),
            "{trace}"
        );
        let state = pgfm_core::ClusterState {
            timeline: pg2.timeline,
            forks: pg2.forks.clone(),
            ..Default::default()
        };
        assert!(state.divergence(&pg3).is_some(), "{pg2:?} {pg3:?}");
    }

    /// A switchover's stop: the standby gets the shutdown checkpoint before the postmaster
    /// exits; a crashed primary's end of WAL is not known, and only a forced hand-over
    /// goes on, marking the directory.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_clean_stop_hands_over_its_end_of_wal_and_a_crash_does_not() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        let stop = sim
            .run(
                sim.db("pg1")
                    .stop_for_handover(Duration::from_secs(5), false),
            )
            .await
            .unwrap();
        assert!(stop.clean);
        assert_eq!(sim.db("pg1").data_dir_state(), Ok(DataDirState::Standby));
        sim.wait(50).await;
        let pg2 = sim.probe("pg2").await;
        assert!(pg2.replayed_lsn > Some(stop.final_lsn), "{pg2:?} {stop:?}");

        sim.run(sim.db("pg1").start(StartAs::Primary))
            .await
            .unwrap();
        sim.model().crash_postmaster("pg1");
        let unclean = sim
            .run(
                sim.db("pg1")
                    .stop_for_handover(Duration::from_secs(5), false),
            )
            .await;
        let text = format!("{:#}", unclean.unwrap_err());
        assert!(text.contains("\"in production\""), "{text}");
        let forced = sim
            .run(
                sim.db("pg1")
                    .stop_for_handover(Duration::from_secs(5), true),
            )
            .await
            .unwrap();
        assert!(!forced.clean);
        assert_eq!(
            sim.db("pg1").data_dir_state(),
            Ok(DataDirState::FencedPrimary)
        );
    }

    /// The verdicts of another node's check, worded as production's; and the agent learns
    /// of a crash through `exited`.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn remote_checks_judge_as_production_does() {
        let sim = Sim::new();
        sim.primary("pg1").await;
        let mut check = PgModel::remote_probe(&sim.model, "pg2");
        let target = Target {
            host: "pg1".into(),
            port: 5432,
            user: "postgres".into(),
            passfile: None,
            timeout: Duration::from_secs(2),
            ssl_root: None,
        };
        let mut verdict = async || sim.run(check.check(&target)).await;
        assert_eq!(
            verdict().await,
            Verdict::Answering("it accepted a connection".into())
        );
        assert_eq!(
            verdict().await,
            Verdict::Answering("it answered a query".into())
        );
        sim.world.frozen.lock().unwrap().insert("pg1".into());
        let started = Instant::now();
        assert!(
            matches!(verdict().await, Verdict::CannotTell(t) if t.starts_with("connected, but no answer"))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(4));
        sim.world.frozen.lock().unwrap().clear();

        sim.model().crash_postmaster("pg1");
        let exited = tokio::time::timeout(Duration::ZERO, sim.db("pg1").exited()).await;
        assert!(exited.is_ok(), "exited did not fire");
        assert_eq!(
            verdict().await,
            Verdict::Down("pg1:5432: Connection refused (os error 111)".into())
        );
        sim.cut("pg2", "pg1");
        assert_eq!(
            verdict().await,
            Verdict::Down("no TCP connection to pg1:5432 within 2s".into())
        );
    }

    /// A failover with a standby left behind, as a trace: the commits and the servers.
    async fn failover_trace(seed: u64) -> (Vec<Commit>, Vec<String>) {
        let sim = Sim::seeded(seed);
        sim.primary("pg1").await;
        sim.standby("pg2", "pg1").await;
        sim.standby("pg3", "pg1").await;
        sim.run(sim.db("pg1").set_sync_standbys(&rule(1, &["pg2", "pg3"])))
            .await
            .unwrap();
        sim.cut("pg1", "pg3");
        sim.wait(700).await;
        sim.kill_host("pg1");
        sim.run(sim.db("pg2").promote(Timeline(2))).await.unwrap();
        sim.run(sim.db("pg2").ensure_slots(&["pg3".to_string()]))
            .await
            .unwrap();
        sim.run(sim.db("pg3").follow(&upstream("pg2")))
            .await
            .unwrap();
        sim.wait(1_000).await;
        let m = sim.model();
        (m.commits().to_vec(), m.describe())
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_same_seed_runs_the_same_way() {
        let first = failover_trace(11).await;
        assert!(first.0.len() > 30, "{first:?}");
        assert_eq!(failover_trace(11).await, first);
        assert_ne!(
            failover_trace(12).await,
            first,
            "the seed draws the timings"
        );
    }

    /// Whatever the host was doing when it died does not finish: a start leaves no
    /// postmaster, a clone leaves a half-written directory that cannot start (and is
    /// re-cloned).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_host_that_dies_during_an_operation_never_sees_it_finish() {
        let sim = Sim::new();
        let kill_after = |ms: u64, node: &'static str| {
            let sim = &sim;
            async move {
                sleep(Duration::from_millis(ms)).await;
                sim.kill_host(node);
            }
        };
        let (started, ()) = sim
            .run(async {
                tokio::join!(
                    sim.db("pg1").start(StartAs::Primary),
                    kill_after(100, "pg1")
                )
            })
            .await;
        let text = format!("{:#}", started.unwrap_err());
        assert!(text.contains("exited during start-up"), "{text}");
        assert_eq!(sim.db("pg1").running_pid(), None);
        sim.revive_host("pg1");
        sim.primary("pg1").await;

        let up = upstream("pg1");
        let (cloned, ()) = sim
            .run(async { tokio::join!(sim.db("pg2").clone_from(&up), kill_after(500, "pg2")) })
            .await;
        assert!(cloned.is_err());
        sim.revive_host("pg2");
        // pg_basebackup died before removing what it wrote: PG_VERSION and no signal.
        assert_eq!(sim.db("pg2").data_dir_state(), Ok(DataDirState::Primary));
        let broken = sim
            .run(sim.db("pg2").start(StartAs::Standby(&up)))
            .await
            .unwrap_err();
        assert!(
            format!("{broken:#}").contains("valid checkpoint"),
            "{broken:#}"
        );
        assert_eq!(sim.db("pg2").running_pid(), None);
        let exited = tokio::time::timeout(Duration::ZERO, sim.db("pg2").exited()).await;
        assert!(
            exited.is_ok(),
            "the failed start's postmaster exit was not told"
        );

        sim.run(sim.db("pg2").reclone(&up)).await.unwrap();
        sim.run(sim.db("pg2").start(StartAs::Standby(&up)))
            .await
            .unwrap();
        sim.until("pg2 to stream after the re-clone", 2_000, |m| {
            m.links.iter().any(|l| l.standby == "pg2" && l.receiver)
        })
        .await;
    }
}
