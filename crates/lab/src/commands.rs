//! `pgfm lab`: a real cluster on this machine (data nodes pg1..pgN and a witness, each with
//! its own agent and ports on 127.0.0.1), in the layout DESIGN.md "The lab" describes.
//! With `--netns` (netns.rs) every node is its own host in a network namespace, with a
//! virtual IP, and partitions are real.
//!
//! The nodes are built as an operator builds them: `pgfm init` (the library, with every
//! node's own directories and ports) writes each node's files into `DIR/init/`, and each
//! node's directory is installed as `DIR/<node>/` (its `/etc/pgfm`), its config adapted to
//! the lab (`node_config`: PostgreSQL's binaries, OS user, socket and log, the watchdog's
//! FIFO, `--set`). With `lab up --from-empty`, always with `--netns`, every data directory
//! starts empty and the agents bootstrap the cluster as in the field: they choose the first
//! primary and run initdb there (`[bootstrap]`, whose `pg_hba` lets the lab's clients in),
//! and the others clone it. Without it, quicker, `lab up` runs initdb on pg1 itself before
//! any agent starts (`init_pg1`) and the other data nodes' agents clone themselves.
//!
//! Each data node also has a hardware watchdog, played by `pgfm lab watchdog-driver`
//! (host.rs; `lab up --watchdog off` leaves it out). Besides DESIGN's layout, the lab's
//! directory holds:
//!
//! ```text
//! DIR/init/                    what pgfm init wrote (ca/, cluster/, <node>/): the operator's copy
//! DIR/token, pgpass            the cluster's token and passfile, for the lab's clients
//! DIR/ca.crt, ca.key           the cluster CA, for tests that issue certificates
//! DIR/<node>/pgfm.toml, token, ca.crt, node.crt, node.key [, pgpass]   the node's installed files
//! DIR/<node>/watchdog          the FIFO its agent arms ([watchdog] device; mode 600)
//! DIR/<node>/watchdog.pid      the driver's pid
//! DIR/<node>/watchdog.log      arm, disarm, and what it killed when it fired
//! DIR/<node>/disk/             with --data-disk: its own tmpfs, holding data/ (disk.rs)
//! ```

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use pgfm_api::{ApiClient, ClusterStatus, NodeKindStatus};
use pgfm_core::NodeKind;
use pgfm_init::{ClusterSpec, Layout, NodeSpec, VipSpec};
use pgfm_postgres::control::{initdb, single_user_sql};
use pgfm_postgres::run_as::write_private;
use pgfm_postgres::{find_bin_dir, OsUser};

use pgfm_api::status_text;

use crate::writers::Session;
use crate::{disk, host, netns};

const DEFAULT_DIR: &str = "/tmp/pgfm-lab";

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build and start a lab; returns when every agent is up and every standby streams.
    Up {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Number of data nodes (pg1..pgN), at least 2.
        #[arg(long, default_value_t = 2)]
        data_nodes: usize,
        /// Print the lab status as JSON instead of the cluster status.
        #[arg(long)]
        json: bool,
        /// A setting for every agent's config, as SECTION.KEY=TOML-VALUE; repeatable.
        /// Example: --set failover.auto_failover=false --set 'failover.rejoin="manual"'
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        settings: Vec<String>,
        /// Every node in its own network namespace on a bridge, with a virtual IP that
        /// follows the primary and a client namespace to reach it from (root only).
        #[arg(long)]
        netns: bool,
        /// Synchronous replication for the whole lab (`[replication] synchronous`);
        /// `--set replication.sync_standbys=N`, `--set replication.minimum_standbys=M` and
        /// `--set replication.strict=true` refine it.
        #[arg(long, value_name = "off|on|quorum", value_parser = ["off", "on", "quorum"])]
        synchronous: Option<String>,
        /// Every data node's `[watchdog] mode`, its device the FIFO of the node's watchdog
        /// driver (started with the lab); `off` leaves both out.
        #[arg(
            long,
            default_value = "required",
            value_name = "required|automatic|off",
            value_parser = ["required", "automatic", "off"]
        )]
        watchdog: String,
        /// Each data node's data directory on a file system of its own of this many MB (a
        /// tmpfs mounted at DIR/<node>/disk, root only), so that `lab fill-disk` can fill it
        /// without touching the machine's disk.
        #[arg(long, value_name = "MB")]
        data_disk: Option<u64>,
        /// Every data directory empty, as in the field: the agents choose the first primary
        /// and run initdb there (`[bootstrap]`; `--set bootstrap.KEY=VALUE` refines it), and
        /// the others clone it. Without it, `lab up` runs initdb on pg1 itself before any
        /// agent starts (quicker). Always so with --netns.
        #[arg(long)]
        from_empty: bool,
    },
    /// Stop everything the lab started and remove its directory.
    Down {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// SIGKILL a node: its agent and its postmaster (host death), or only one of them.
    Kill {
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Kill only the postmaster (a database crash; the agent lives on).
        #[arg(long, conflicts_with = "agent_only")]
        postgres_only: bool,
        /// Kill only the agent (PostgreSQL keeps running).
        #[arg(long)]
        agent_only: bool,
    },
    /// Start a node's agent again (after `lab kill`), and its watchdog driver if it has none.
    Start {
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Freeze a node's host: SIGSTOP its agent, its postmaster and all its children (not its
    /// watchdog driver, which keeps counting).
    Freeze {
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Stop only the agent process (a slow or stalled agent): its PostgreSQL, a child of
        /// it, keeps running.
        #[arg(long)]
        agent_only: bool,
    },
    /// Undo `lab freeze`: SIGCONT every process of the node.
    Thaw {
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Resume only the agent process (after `lab freeze --agent-only`).
        #[arg(long)]
        agent_only: bool,
    },
    /// A data node's watchdog (started by `lab up` and `lab start`; see host.rs).
    #[command(hide = true)]
    WatchdogDriver {
        node: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Cut the network between a node and other nodes (a --netns lab): frames are dropped
    /// silently, in both directions unless --one-way. The client keeps reaching every node.
    Partition {
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The nodes to cut it from (comma-separated); default: every other node.
        #[arg(long, value_delimiter = ',')]
        from: Vec<String>,
        /// Only the traffic towards NODE is lost: it can send but not receive.
        #[arg(long)]
        one_way: bool,
    },
    /// Undo every partition (a --netns lab).
    Heal {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Fill a data node's disk (a lab built with --data-disk): one file takes every free
    /// byte of the file system its data directory is on.
    FillDisk {
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Undo `lab fill-disk`: remove the file that fills the node's disk.
    FreeDisk {
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Damage a stopped data node's pg_wal: remove every WAL segment, so that neither crash
    /// recovery nor pg_rewind can use it (refused while its postmaster runs).
    DamageWal {
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show the lab's nodes (ports, pids, connection strings) and the cluster status.
    Status {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// `DIR/lab.json`: what the lab made. Scripts and tests rely on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabFile {
    pub cluster: String,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub os_user: String,
    pub passfile: PathBuf,
    pub token_file: PathBuf,
    pub nodes: Vec<LabNode>,
    /// Set when every node is its own host in a network namespace (`--netns`).
    #[serde(default)]
    pub netns: Option<netns::NetnsLab>,
    /// Every data node has a watchdog driver (`lab up --watchdog required|automatic`).
    #[serde(default)]
    pub watchdog: bool,
    /// Each data node's data directory is on a tmpfs of this many MB of its own, mounted at
    /// `DIR/<node>/disk` (`lab up --data-disk`).
    #[serde(default)]
    pub data_disk_mb: Option<u64>,
    /// Agents and clients talk HTTPS with mutual TLS: each node's directory holds the lab
    /// CA's certificate and its own, as `pgfm init` lays them out (`ca.crt`, `node.crt`,
    /// `node.key`; off with `lab up --set tls.mode=off`).
    #[serde(default)]
    pub tls: bool,
    /// Every data directory started empty and the agents bootstrapped the cluster
    /// (`lab up --from-empty`, or `--netns`); otherwise `lab up` initialised pg1 itself.
    #[serde(default)]
    pub from_empty: bool,
}

impl LabFile {
    /// The TLS files `node` uses (as an agent and as the lab's client of it).
    pub fn tls_files(&self, node: &LabNode) -> pgfm_tls::TlsFiles {
        let dir = self.dir.join(&node.name);
        pgfm_tls::TlsFiles {
            ca: dir.join(pgfm_init::files::CA_CERT),
            cert: dir.join(pgfm_init::files::NODE_CERT),
            key: dir.join(pgfm_init::files::NODE_KEY),
        }
    }

    /// What a client of `node`'s agent presents (None when the lab runs without TLS).
    pub fn client_tls(
        &self,
        node: &LabNode,
    ) -> anyhow::Result<Option<std::sync::Arc<pgfm_tls::Tls>>> {
        if !self.tls {
            return Ok(None);
        }
        Ok(Some(pgfm_tls::Tls::load(self.tls_files(node), &node.host)?))
    }

    /// A read-write session as the lab's superuser (1 s connect timeout), to no host yet.
    pub fn superuser_config(
        &self,
        application_name: &str,
    ) -> anyhow::Result<tokio_postgres::Config> {
        let passfile = std::fs::read_to_string(&self.passfile)
            .with_context(|| format!("reading {}", self.passfile.display()))?;
        let password =
            pgfm_postgres::passfile::lookup(&passfile, "127.0.0.1", 0, "postgres", "postgres")
                .with_context(|| {
                    format!("no password for postgres in {}", self.passfile.display())
                })?;
        let mut config = tokio_postgres::Config::new();
        config
            .user("postgres")
            .password(password)
            .dbname("postgres")
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(1))
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        Ok(config)
    }

    /// The CA a client of the lab's PostgreSQL verifies it with, when the lab lets its
    /// clients in over TLS only: a lab bootstrapped from empty with TLS on, whose
    /// `pg_hba.conf` the agents wrote (`client_hba`). None when plain connections are let
    /// in (initdb's own `pg_hba.conf`, or TLS off).
    pub fn client_ssl_root(&self) -> Option<PathBuf> {
        (self.from_empty && self.tls).then(|| self.dir.join(pgfm_init::files::CA_CERT))
    }

    /// Where clients write: through the virtual IP only in a --netns lab (as clients do in
    /// the field), to every data node (multi-host, the writable one wins) otherwise.
    pub fn writer_config(&self, application_name: &str) -> anyhow::Result<Session> {
        let mut config = self.superuser_config(application_name)?;
        match &self.netns {
            Some(ns) => {
                let vip = ns.vip.split('/').next().unwrap_or_default();
                config.host(vip).port(netns::PG_PORT);
            }
            None => {
                for node in &self.nodes {
                    if let Some(port) = node.pg_port {
                        config.host(&node.host).port(port);
                    }
                }
            }
        }
        Ok(Session {
            config,
            ssl_root: self.client_ssl_root(),
        })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("the lab has no node {name}"))
    }
}

fn loopback() -> String {
    "127.0.0.1".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    pub name: String,
    /// `data` or `witness`.
    pub kind: String,
    /// The address its agent and PostgreSQL listen on.
    #[serde(default = "loopback")]
    pub host: String,
    pub agent_port: u16,
    pub pg_port: Option<u16>,
    pub config: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub agent_pid: Option<u32>,
    /// The pid of its watchdog driver (data nodes of a lab with a watchdog).
    #[serde(default)]
    pub watchdog_pid: Option<u32>,
}

/// `lab status --json`: lab.json's nodes with live pids and a connection string.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabStatus {
    pub cluster: String,
    pub dir: PathBuf,
    pub nodes: Vec<LabNodeStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNodeStatus {
    pub name: String,
    pub kind: String,
    /// The role the cluster gives the node right now (`primary`, `standby`, `witness`,
    /// `idle`), or null when no agent answered.
    pub role: Option<NodeKindStatus>,
    pub host: String,
    /// The node's network namespace (a --netns lab).
    pub netns: Option<String>,
    /// Whether the node's kernel carries the virtual IP (a --netns lab).
    pub vip: Option<bool>,
    pub agent_port: u16,
    pub pg_port: Option<u16>,
    pub agent_pid: Option<u32>,
    pub agent_running: bool,
    pub postgres_pid: Option<i32>,
    /// The node's watchdog driver, if it runs.
    pub watchdog_pid: Option<u32>,
    pub dsn: Option<String>,
    pub config: PathBuf,
    pub agent_log: PathBuf,
    pub postgres_log: Option<PathBuf>,
}

pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up {
            dir,
            data_nodes,
            json,
            settings,
            netns,
            synchronous,
            watchdog,
            data_disk,
            from_empty,
        } => {
            let extra = up_settings(&settings, synchronous.as_deref(), &watchdog)?;
            let shape = Shape {
                data_nodes,
                netns,
                data_disk_mb: data_disk,
                from_empty: from_empty || netns,
            };
            if !shape.from_empty && extra.iter().any(|(section, _)| section == "bootstrap") {
                bail!(
                    "--set bootstrap.*: the agents read [bootstrap] only when they initialise \
                     the cluster themselves; add --from-empty (without it lab up runs initdb \
                     on pg1 itself)"
                );
            }
            up(&absolute(&dir)?, &shape, json, &extra)
        }
        LabCommand::Down { dir } => down(&absolute(&dir)?),
        LabCommand::Status { dir, json } => status(&absolute(&dir)?, json),
        LabCommand::Kill {
            node,
            dir,
            postgres_only,
            agent_only,
        } => kill_node(&lab_dir(dir)?, &node, !agent_only, !postgres_only),
        LabCommand::Start { node, dir } => start_node(&lab_dir(dir)?, &node),
        LabCommand::Freeze {
            node,
            dir,
            agent_only,
        } => freeze_node(&lab_dir(dir)?, &node, true, agent_only),
        LabCommand::Thaw {
            node,
            dir,
            agent_only,
        } => freeze_node(&lab_dir(dir)?, &node, false, agent_only),
        LabCommand::WatchdogDriver { node, dir } => host::run_driver(&absolute(&dir)?, &node),
        LabCommand::Partition {
            node,
            dir,
            from,
            one_way,
        } => partition(&lab_dir(dir)?, &node, &from, one_way),
        LabCommand::Heal { dir } => heal(&lab_dir(dir)?),
        LabCommand::FillDisk { node, dir } => disk::fill(&lab_dir(dir)?, &node),
        LabCommand::FreeDisk { node, dir } => disk::free(&lab_dir(dir)?, &node),
        LabCommand::DamageWal { node, dir } => disk::damage_wal(&lab_dir(dir)?, &node),
    }
}

fn lab_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    absolute(&dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)))
}

pub fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(dir))
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Free ports on 127.0.0.1, all distinct (every listener is held until all are chosen).
/// `n` distinct ports free on 127.0.0.1, drawn below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768 and up here): a port from that range may be taken by any
/// outgoing connection between the moment it is chosen and the moment a server binds it.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let (low, high) = (10_000u32, ephemeral_start().clamp(10_500, 32_768));
    let mut seed = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("reading /dev/urandom")?;
    let mut draw = u32::from_le_bytes(seed);
    let mut held = Vec::new();
    for _ in 0..(n * 200) {
        if held.len() == n {
            break;
        }
        draw = draw.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let port = (low + draw % (high - low)) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < n {
        bail!(
            "found only {} free ports on 127.0.0.1 in {low}..{high}",
            held.len()
        );
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Copy `from` to `to` as `write_private` writes it: how an operator installs a file of
/// `pgfm init`'s output on its node.
fn install_private(from: &Path, to: &Path, owner: Option<&OsUser>) -> anyhow::Result<()> {
    let contents =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    write_private(to, &contents, owner)
}

pub fn read_lab(dir: &Path) -> anyhow::Result<LabFile> {
    let path = dir.join("lab.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no lab in {} (no lab.json; start one with pgfm lab up --dir {})",
            dir.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

fn write_lab(lab: &LabFile) -> anyhow::Result<()> {
    let path = lab.dir.join("lab.json");
    std::fs::write(&path, serde_json::to_string_pretty(lab)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// `--set` settings grouped by section: `[(section, [(key, value)])]`.
type Extra = Vec<(String, Vec<(String, String)>)>;

pub(crate) fn parse_settings(settings: &[String]) -> anyhow::Result<Extra> {
    let mut extra: Extra = Vec::new();
    for setting in settings {
        let parsed = setting
            .split_once('=')
            .and_then(|(path, value)| Some((path.split_once('.')?, value)));
        let Some(((section, key), value)) = parsed else {
            bail!("--set {setting:?}: write it as SECTION.KEY=VALUE, for example failover.auto_failover=false");
        };
        if ![
            "timing",
            "failover",
            "hooks",
            "replication",
            "watchdog",
            "tls",
            "bootstrap",
        ]
        .contains(&section)
        {
            bail!("--set {setting:?}: the lab only sets keys of [timing], [failover], [hooks], [replication], [watchdog], [tls] and [bootstrap]");
        }
        let entry = match extra.iter_mut().find(|(s, _)| s == section) {
            Some(entry) => entry,
            None => {
                extra.push((section.to_string(), Vec::new()));
                extra.last_mut().context("just pushed")?
            }
        };
        entry.1.push((key.to_string(), value.to_string()));
    }
    Ok(extra)
}

/// What `lab up` sets in every agent's config besides what it always sets (`node_config`):
/// `--set`, `--synchronous` (over a `--set replication.synchronous`) and `--watchdog`
/// (under a `--set watchdog.mode`).
pub(crate) fn up_settings(
    settings: &[String],
    synchronous: Option<&str>,
    watchdog: &str,
) -> anyhow::Result<Extra> {
    let mut settings = settings.to_vec();
    if let Some(mode) = synchronous {
        settings.push(format!("replication.synchronous=\"{mode}\""));
    }
    let mut extra = parse_settings(&settings)?;
    // Said even when off: pgfm init's configs ask for the host's watchdog ("automatic"),
    // which a lab must never arm.
    add_watchdog(&mut extra, watchdog);
    Ok(extra)
}

/// `lab up --watchdog MODE`: `[watchdog] mode` for every data node, unless `--set` says
/// otherwise (its keys win); the device is each node's own FIFO (see `node_config`).
pub(crate) fn add_watchdog(extra: &mut Extra, mode: &str) {
    let entry = match extra.iter_mut().position(|(s, _)| s == "watchdog") {
        Some(i) => &mut extra[i],
        None => {
            extra.push(("watchdog".to_string(), Vec::new()));
            let last = extra.len() - 1;
            &mut extra[last]
        }
    };
    if !entry.1.iter().any(|(k, _)| k == "mode") {
        entry
            .1
            .insert(0, ("mode".to_string(), format!("\"{mode}\"")));
    }
}

/// The string value `extra` gives `section.key`, without its quotes (the last one given).
fn setting<'a>(extra: &'a Extra, section: &str, key: &str) -> Option<&'a str> {
    extra
        .iter()
        .filter(|(s, _)| s == section)
        .flat_map(|(_, keys)| keys)
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .next_back()
}

/// Whether the configs keep TLS on (the default; `--set tls.mode=off` turns it off).
pub(crate) fn wants_tls(extra: &Extra) -> bool {
    setting(extra, "tls", "mode") != Some("off")
}

/// Whether the data nodes' configs ask for a watchdog (then each gets a driver).
pub(crate) fn wants_watchdog(extra: &Extra) -> bool {
    setting(extra, "watchdog", "mode").is_some_and(|mode| mode != "off")
}

/// The `[bootstrap] pg_hba` line that lets the lab's clients (the writer, the tests,
/// psql) in, after the lines the agents write for the cluster's members: from the client
/// namespace in a --netns lab, from 127.0.0.1 otherwise; over TLS only when the lab has
/// it (its clients then verify the server: `LabFile::client_ssl_root`).
pub(crate) fn client_hba(netns: bool, tls: bool) -> String {
    let kind = if tls { "hostssl" } else { "host" };
    let from = if netns {
        format!("{}/32", netns::CLIENT_ADDRESS)
    } else {
        "127.0.0.1/32".to_string()
    };
    format!("{kind} all all {from} scram-sha-256")
}

/// `text` as a TOML string, quoted and escaped.
fn toml_string(text: &str) -> String {
    toml_edit::Value::from(text).to_string()
}

/// The `pgfm init` spec of the lab's cluster: every node at its lab address, with its own
/// directories under DIR/<node> and its own ports (they share one file system, and on
/// loopback one address), the VIP of a --netns lab on each host's `eth0`.
pub(crate) fn cluster_spec(lab: &LabFile, synchronous: bool) -> anyhow::Result<ClusterSpec> {
    let nodes = lab
        .nodes
        .iter()
        .map(|node| {
            let address = node
                .host
                .parse()
                .with_context(|| format!("{}'s address {}", node.name, node.host))?;
            let etc_dir = lab.dir.join(&node.name);
            Ok(NodeSpec {
                name: node.name.clone(),
                kind: if node.pg_port.is_some() {
                    NodeKind::Data
                } else {
                    NodeKind::Witness
                },
                address,
                layout: Some(Layout {
                    state_dir: etc_dir.join("state"),
                    // A witness has none; its layout needs one all the same.
                    data_dir: node
                        .data_dir
                        .clone()
                        .unwrap_or_else(|| etc_dir.join("data")),
                    etc_dir,
                    agent_port: node.agent_port,
                    pg_port: node.pg_port.unwrap_or(netns::PG_PORT),
                }),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let vip = match &lab.netns {
        Some(ns) => VipSpec::parse(Some(&ns.vip), Some(netns::INTERFACE))?,
        None => None,
    };
    Ok(ClusterSpec {
        cluster: lab.cluster.clone(),
        nodes,
        vip,
        synchronous,
        // Every node has its own layout: the cluster's is no node's.
        layout: Layout::default(),
    })
}

/// What only a lab sets in a data node's config: the PostgreSQL binaries, OS user, socket
/// and log of a host shared with other nodes, the watchdog driver's FIFO, and for a lab
/// built from empty the `pg_hba.conf` line of its clients. `--set` keys win over these.
fn lab_settings(lab: &LabFile, node: &LabNode) -> Extra {
    if node.data_dir.is_none() {
        return Vec::new();
    }
    let node_dir = lab.dir.join(&node.name);
    let path = |p: &Path| toml_string(&p.display().to_string());
    let mut settings = vec![(
        "postgres".to_string(),
        vec![
            ("bin_dir".to_string(), path(&lab.bin_dir)),
            ("socket_dir".to_string(), path(&node_dir)),
            ("os_user".to_string(), toml_string(&lab.os_user)),
            ("log_file".to_string(), path(&node_dir.join("postgres.log"))),
        ],
    )];
    if lab.watchdog {
        let fifo = host::watchdog_fifo(&lab.dir, &node.name);
        settings.push((
            "watchdog".to_string(),
            vec![("device".to_string(), path(&fifo))],
        ));
    }
    if lab.from_empty {
        let line = client_hba(lab.netns.is_some(), lab.tls);
        settings.push((
            "bootstrap".to_string(),
            vec![("pg_hba".to_string(), format!("[{}]", toml_string(&line)))],
        ));
    }
    settings
}

/// A node's pgfm.toml: `rendered`, the one `pgfm init` wrote for it, with the lab's own
/// settings and then `extra` (`--set`, `--synchronous`, `--watchdog`) merged in, each key
/// once: a key the lab or `--set` gives replaces pgfm init's (`[watchdog] mode`,
/// `[replication] synchronous`).
pub(crate) fn node_config(
    lab: &LabFile,
    node: &LabNode,
    rendered: &str,
    extra: &Extra,
) -> anyhow::Result<String> {
    let mut config: toml_edit::DocumentMut = rendered
        .parse()
        .with_context(|| format!("reading the config pgfm init wrote for {}", node.name))?;
    for (section, keys) in lab_settings(lab, node).iter().chain(extra) {
        // A witness holds no lease and has no database: no watchdog, nothing to initdb.
        if node.data_dir.is_none() && (section == "watchdog" || section == "bootstrap") {
            continue;
        }
        let table = config
            .entry(section)
            .or_insert_with(toml_edit::table)
            .as_table_mut()
            .with_context(|| format!("[{section}] of {}'s config is not a table", node.name))?;
        for (key, text) in keys {
            let mut value = text.parse::<toml_edit::Value>().map_err(|e| {
                anyhow::anyhow!(
                    "--set {section}.{key}={text}: not a TOML value ({e}); write strings in \
                     quotes, for example --set '{section}.{key}=\"...\"'",
                    e = e.to_string().trim()
                )
            })?;
            value.decor_mut().clear();
            table.insert(key, toml_edit::Item::Value(value));
        }
    }
    Ok(format!(
        "# pgfm lab: the config pgfm init wrote for {name} ({init}), with the lab's own\n\
         # settings and --set merged in.\n{config}",
        name = node.name,
        init = lab
            .dir
            .join("init")
            .join(&node.name)
            .join(pgfm_init::files::CONFIG)
            .display()
    ))
}

/// What `lab up` builds: how many data nodes, on which network, on which disks, from what.
pub(crate) struct Shape {
    pub data_nodes: usize,
    pub netns: bool,
    /// Each data node's data directory on a tmpfs of this many MB (`--data-disk`).
    pub data_disk_mb: Option<u64>,
    /// Every data directory empty, the agents bootstrapping (`--from-empty`, `--netns`).
    pub from_empty: bool,
}

fn up(dir: &Path, shape: &Shape, json: bool, extra: &Extra) -> anyhow::Result<ExitCode> {
    let fresh = !dir.exists();
    let result = build(dir, shape, json, extra);
    // A lab that failed before any agent started leaves nothing behind.
    if result.is_err() && fresh && !dir.join("lab.json").exists() {
        disk::unmount_under(dir);
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// `lab up` once its directory is known to be new: each step below leaves lab.json
/// describing what exists so far, so that `lab down` can remove a lab that failed half-way.
fn build(dir: &Path, shape: &Shape, json: bool, extra: &Extra) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    check_can_build(dir, shape)?;
    let os_user = postgres_os_user()?;
    let bin_dir = find_bin_dir().context(
        "no PostgreSQL server binaries found (install postgresql, e.g. apt-get install postgresql)",
    )?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // PostgreSQL, run as another user when we are root, must be able to reach its files.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let mut lab = plan_lab(dir, shape, extra, bin_dir, &os_user)?;
    write_node_files(&lab, extra, &os_user)?;
    write_lab(&lab)?;
    disk::mount_data_disks(&lab, &os_user)?;
    build_network(&lab)?;
    if !lab.from_empty {
        init_pg1(&lab, &os_user)?;
    }
    start_agents(&mut lab)?;

    // From here on this command talks to the lab as its client does.
    enter_client_network(&lab)?;
    let rt = runtime()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let ready = rt.block_on(wait_ready(&lab, shape.data_nodes, deadline));
    match ready {
        Ok(status) => {
            print_lab_up(&lab, &rt, &status, json, started)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "pgfm: the lab in {} did not become ready: {e:#}\nSee {}/*/agent.log and \
                 postgres.log; remove it with pgfm lab down --dir {}",
                dir.display(),
                dir.display(),
                dir.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Refuse, before anything is written, a lab that cannot be built here.
fn check_can_build(dir: &Path, shape: &Shape) -> anyhow::Result<()> {
    let data_nodes = shape.data_nodes;
    if shape.netns {
        netns::check_can_build()?;
    }
    if let Some(mb) = shape.data_disk_mb {
        disk::check_can_mount(mb)?;
    }
    if dir.join("lab.json").exists() {
        bail!(
            "a lab already exists in {d}; see it with pgfm lab status --dir {d}, or remove it \
             with pgfm lab down --dir {d}",
            d = dir.display()
        );
    }
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} exists and is not a lab (no lab.json): choose another --dir",
            dir.display()
        );
    }
    if data_nodes < 2 {
        bail!("--data-nodes {data_nodes}: a lab needs at least 2 data nodes (and gets a witness)");
    }
    Ok(())
}

/// The OS user PostgreSQL runs as: `postgres` when we are root, else ourselves.
fn postgres_os_user() -> anyhow::Result<OsUser> {
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        OsUser::lookup("postgres")
    } else {
        OsUser::current()
    }
    .map_err(|e| anyhow::anyhow!("choosing the OS user for PostgreSQL: {e}"))
}

/// Name the nodes, choose their addresses and ports, and make their directories.
fn plan_lab(
    dir: &Path,
    shape: &Shape,
    extra: &Extra,
    bin_dir: PathBuf,
    os_user: &OsUser,
) -> anyhow::Result<LabFile> {
    let (data_nodes, netns) = (shape.data_nodes, shape.netns);
    let names: Vec<String> = (1..=data_nodes)
        .map(|i| format!("pg{i}"))
        .chain(std::iter::once("witness".to_string()))
        .collect();
    // On their own hosts every node uses the usual ports; on one host each needs its own.
    let ports = if netns {
        let agents = names.iter().map(|_| netns::AGENT_PORT);
        agents
            .chain((0..data_nodes).map(|_| netns::PG_PORT))
            .collect()
    } else {
        free_ports(names.len() + data_nodes)?
    };
    let netns = netns.then(|| {
        let prefix = netns::prefix_for(dir);
        netns::NetnsLab {
            hub: netns::namespace(&prefix, "hub"),
            client: netns::namespace(&prefix, "client"),
            vip: netns::VIP.to_string(),
            prefix,
        }
    });
    let mut lab = LabFile {
        cluster: "lab".to_string(),
        dir: dir.to_path_buf(),
        bin_dir,
        os_user: os_user.name.clone(),
        passfile: dir.join(pgfm_init::files::PASSFILE),
        token_file: dir.join(pgfm_init::files::TOKEN),
        nodes: Vec::new(),
        netns: netns.clone(),
        watchdog: wants_watchdog(extra),
        data_disk_mb: shape.data_disk_mb,
        tls: wants_tls(extra),
        from_empty: shape.from_empty,
    };
    for (i, name) in names.iter().enumerate() {
        let is_data = i < data_nodes;
        let node_dir = dir.join(name);
        std::fs::create_dir_all(&node_dir)?;
        std::fs::set_permissions(&node_dir, std::fs::Permissions::from_mode(0o755))?;
        os_user.own(&node_dir)?;
        lab.nodes.push(LabNode {
            name: name.clone(),
            kind: if is_data { "data" } else { "witness" }.to_string(),
            host: if netns.is_some() {
                netns::node_address(i)
            } else {
                loopback()
            },
            agent_port: ports[i],
            pg_port: is_data.then(|| ports[names.len() + i]),
            config: node_dir.join("pgfm.toml"),
            data_dir: is_data.then(|| match shape.data_disk_mb {
                Some(_) => disk::mount_point(dir, name).join("data"),
                None => node_dir.join("data"),
            }),
            agent_pid: None,
            watchdog_pid: None,
        });
    }
    Ok(lab)
}

/// Every node's files, made as an operator makes them: `pgfm init` into DIR/init, then
/// each node's directory installed into DIR/<node> (pgpass owned by PostgreSQL's OS user)
/// with its config adapted to the lab; every config checked by the agent's own rules.
fn write_node_files(lab: &LabFile, extra: &Extra, os_user: &OsUser) -> anyhow::Result<()> {
    use pgfm_init::files::{CA_CERT, CONFIG, NODE_CERT, NODE_KEY, PASSFILE, TOKEN};
    let synchronous = setting(extra, "replication", "synchronous") == Some("on");
    let written = pgfm_init::create(
        cluster_spec(lab, synchronous)?,
        &lab.dir.join("init"),
        false,
    )
    .context("pgfm init for the lab")?;
    install_lab_files(lab, &written, os_user)?;
    for (spec, from) in &written.nodes {
        let node = lab.node(&spec.name)?;
        let to = lab.dir.join(&node.name);
        for file in [TOKEN, CA_CERT, NODE_CERT, NODE_KEY] {
            install_private(&from.join(file), &to.join(file), None)?;
        }
        if spec.kind == NodeKind::Data {
            // PostgreSQL's tools, run as its OS user, read it.
            install_private(&from.join(PASSFILE), &to.join(PASSFILE), Some(os_user))?;
        }
        let rendered = std::fs::read_to_string(from.join(CONFIG))
            .with_context(|| format!("reading {}", from.join(CONFIG).display()))?;
        std::fs::write(&node.config, node_config(lab, node, &rendered, extra)?)
            .with_context(|| format!("writing {}", node.config.display()))?;
    }
    for node in &lab.nodes {
        pgfm_agent::config::Config::load_static(&node.config)?;
    }
    Ok(())
}

/// The files the lab's clients use, from pgfm init's output: the cluster token and the
/// passfile (`LabFile::token_file`, `passfile`), and the CA with its key (`DIR/ca.crt`,
/// `DIR/ca.key`, for tests that issue a certificate).
fn install_lab_files(
    lab: &LabFile,
    written: &pgfm_init::Written,
    os_user: &OsUser,
) -> anyhow::Result<()> {
    use pgfm_init::files::{CA_CERT, CA_KEY, PASSFILE, TOKEN};
    let data_node = written
        .nodes
        .iter()
        .find(|(n, _)| n.kind == NodeKind::Data)
        .map(|(_, dir)| dir)
        .context("pgfm init wrote no data node")?;
    install_private(&data_node.join(TOKEN), &lab.token_file, None)?;
    install_private(&data_node.join(PASSFILE), &lab.passfile, Some(os_user))?;
    let ca = std::fs::read_to_string(written.ca_dir.join(CA_CERT))
        .with_context(|| format!("reading {}", written.ca_dir.join(CA_CERT).display()))?;
    std::fs::write(lab.dir.join(CA_CERT), ca)?;
    install_private(&written.ca_dir.join(CA_KEY), &lab.dir.join(CA_KEY), None)
}

/// For a --netns lab, its network namespaces (after lab.json, which `lab down` reads to
/// remove what a failed build leaves).
fn build_network(lab: &LabFile) -> anyhow::Result<()> {
    if let Some(ns) = &lab.netns {
        netns::remove(&ns.prefix)?;
        let hosts: Vec<(String, String)> = lab
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.host.clone()))
            .chain(std::iter::once((
                "client".to_string(),
                netns::CLIENT_ADDRESS.to_string(),
            )))
            .collect();
        netns::build(ns, &hosts).context("building the lab's network namespaces")?;
    }
    Ok(())
}

/// The loopback lab's shortcut (not `--from-empty`): pg1 alone is initialised, its
/// replication role made, before any agent starts, with the passwords of the lab's
/// passfile; initdb's own pg_hba.conf lets every node and client in from 127.0.0.1.
fn init_pg1(lab: &LabFile, os_user: &OsUser) -> anyhow::Result<()> {
    let rt = runtime()?;
    let pg1_data = lab.nodes[0]
        .data_dir
        .clone()
        .context("pg1 has no data_dir")?;
    let passfile = std::fs::read_to_string(&lab.passfile)
        .with_context(|| format!("reading {}", lab.passfile.display()))?;
    let password = |user: &str| {
        pgfm_postgres::passfile::lookup(&passfile, "127.0.0.1", 0, "postgres", user)
            .with_context(|| format!("no password for {user} in {}", lab.passfile.display()))
    };
    let (superuser_pw, replication_pw) = (
        password(pgfm_init::SUPERUSER)?,
        password(pgfm_init::REPLICATION_USER)?,
    );
    let pwfile = lab.dir.join("pg1").join("initdb.pw");
    write_private(&pwfile, &superuser_pw, Some(os_user))?;
    let made = rt.block_on(async {
        initdb(
            &lab.bin_dir,
            &pg1_data,
            os_user,
            pgfm_init::SUPERUSER,
            &pwfile,
        )
        .await?;
        let sql = format!(
            "CREATE ROLE {} WITH REPLICATION LOGIN PASSWORD '{replication_pw}';\n",
            pgfm_init::REPLICATION_USER
        );
        single_user_sql(&lab.bin_dir, &pg1_data, os_user, &sql).await
    });
    let _ = std::fs::remove_file(&pwfile);
    made
}

/// Start the watchdog drivers, then the agents, recording each pid in lab.json at once.
fn start_agents(lab: &mut LabFile) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    if lab.watchdog {
        // Before the agents: an agent arms its watchdog before it takes the lease.
        let started = host::start_drivers(&exe, lab);
        write_lab(lab)?;
        started?;
    }
    for i in 0..lab.nodes.len() {
        lab.nodes[i].agent_pid = Some(spawn_agent(
            &exe,
            &lab.dir,
            &lab.nodes[i],
            lab.netns.as_ref(),
        )?);
        // Recorded at once: `lab down` after a crash here must find every agent.
        write_lab(lab)?;
    }
    Ok(())
}

/// What `lab up` prints once the lab is ready: its status and how to connect.
fn print_lab_up(
    lab: &LabFile,
    rt: &tokio::runtime::Runtime,
    status: &ClusterStatus,
    json: bool,
    started: Instant,
) -> anyhow::Result<()> {
    let dir = &lab.dir;
    if json {
        println!("{}", serde_json::to_string_pretty(&lab_status(lab, rt))?);
        return Ok(());
    }
    print!("{}", status_text::render(status));
    println!();
    if let Some(ns) = &lab.netns {
        let vip = ns.vip.split('/').next().unwrap_or_default();
        let witness = lab.nodes.iter().find(|n| n.pg_port.is_none());
        println!(
            "Lab up in {:.1} s in {}, every node in its own network namespace \
             ({}-*). Its addresses are reachable only from the lab's client namespace: run \
             every command there (from this host's own namespace they would leave by its \
             default route). Connect to the primary through the virtual IP with:\n  \
             ip netns exec {} psql \"host={vip} port={} user=postgres \
             dbname=postgres passfile={}\"\nAsk the cluster with:\n  \
             ip netns exec {} pgfm cluster-status -c {}\nStop it with: pgfm lab down --dir {}",
            started.elapsed().as_secs_f64(),
            dir.display(),
            ns.prefix,
            ns.client,
            netns::PG_PORT,
            lab.passfile.display(),
            ns.client,
            witness
                .map(|w| w.config.display().to_string())
                .unwrap_or_default(),
            dir.display()
        );
        return Ok(());
    }
    println!(
        "Lab up in {:.1} s in {}. Connect to the primary with:\n  psql \"{}\"\nStop it with: pgfm lab down --dir {}",
        started.elapsed().as_secs_f64(),
        dir.display(),
        status
            .primary
            .as_deref()
            .and_then(|p| lab.nodes.iter().find(|n| n.name == p))
            .and_then(|n| dsn(lab, n))
            .unwrap_or_default(),
        dir.display()
    );
    Ok(())
}

/// Start one agent detached from this command (own session, output to agent.log), in
/// the node's network namespace for a --netns lab.
fn spawn_agent(
    exe: &Path,
    dir: &Path,
    node: &LabNode,
    netns: Option<&netns::NetnsLab>,
) -> anyhow::Result<u32> {
    let node_dir = dir.join(&node.name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node_dir.join("agent.log"))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("agent")
        .arg("-c")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // The lab's stalled-disk fault: milliseconds written to DIR/<node>/disk-stall
        // delay every fsync of the agent's Raft files (see coord's durable.rs).
        .env("PGFM_LAB_DISK_STALL", node_dir.join("disk-stall"))
        .process_group(0);
    if let Some(ns) = netns {
        let handle = pgfm_net::netns::Handle::open(&netns::namespace(&ns.prefix, &node.name))?;
        // SAFETY: the closure only calls setns(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(move || handle.enter());
        }
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting the agent of {}", node.name))?;
    let pid = child.id();
    std::fs::write(node_dir.join("agent.pid"), format!("{pid}\n"))?;
    Ok(pid)
}

/// Move the calling thread (and what it starts afterwards) into the lab's client
/// namespace, from which a --netns lab's addresses are reachable; nothing for other labs.
pub fn enter_client_network(lab: &LabFile) -> anyhow::Result<()> {
    if let Some(ns) = &lab.netns {
        pgfm_net::netns::enter(&ns.client).with_context(|| {
            format!(
                "this lab's nodes are reachable only from its client namespace {} (as root)",
                ns.client
            )
        })?;
    }
    Ok(())
}

pub(crate) fn client(
    lab: &LabFile,
    node: &LabNode,
    timeout: Duration,
) -> anyhow::Result<ApiClient> {
    let token = std::fs::read_to_string(&lab.token_file)
        .with_context(|| format!("reading {}", lab.token_file.display()))?;
    Ok(ApiClient::new(
        &format!("{}:{}", node.host, node.agent_port),
        token.trim(),
        timeout,
        lab.client_tls(node)?,
    ))
}

/// The cluster status as the majority sees it. Every agent is asked at once; an agent cut
/// off from the others answers with what it alone knows (and an isolated coordinator
/// still believes it leads), so the answer with the newest generation wins, one built by
/// the coordinator itself first among equals.
pub async fn any_status(lab: &LabFile) -> anyhow::Result<ClusterStatus> {
    any_status_within(lab, Duration::from_secs(3)).await
}

/// `any_status`, waiting at most `timeout` for each agent: a dead or frozen host then
/// delays the answer by no more than that.
pub async fn any_status_within(lab: &LabFile, timeout: Duration) -> anyhow::Result<ClusterStatus> {
    let mut asked = tokio::task::JoinSet::new();
    for node in &lab.nodes {
        let client = client(lab, node, timeout)?;
        asked.spawn(async move { client.status().await });
    }
    let rank = |s: &ClusterStatus| (s.generation, s.coordinator.as_ref() == Some(&s.answered_by));
    let mut best: Option<ClusterStatus> = None;
    let mut last = None;
    while let Some(answer) = asked.join_next().await {
        match answer {
            Ok(Ok(status)) => {
                if best.as_ref().is_none_or(|b| rank(&status) > rank(b)) {
                    best = Some(status);
                }
            }
            Ok(Err(e)) => last = Some(anyhow::Error::from(e)),
            Err(e) => last = Some(anyhow::Error::from(e)),
        }
    }
    match (best, last) {
        (Some(status), _) => Ok(status),
        (None, Some(e)) => Err(e),
        (None, None) => bail!("the lab has no nodes"),
    }
}

/// Wait until every agent is up, there is a primary and every standby streams in sync.
async fn wait_ready(
    lab: &LabFile,
    data_nodes: usize,
    deadline: Instant,
) -> anyhow::Result<ClusterStatus> {
    let mut waiting_for: String;
    loop {
        for node in &lab.nodes {
            if let Some(pid) = node.agent_pid {
                if !process_alive(pid) {
                    bail!(
                        "the agent of {} (pid {pid}) exited; see {}",
                        node.name,
                        lab.dir.join(&node.name).join("agent.log").display()
                    );
                }
            }
        }
        match any_status(lab).await {
            Ok(status) => {
                let standbys = status
                    .nodes
                    .iter()
                    .filter(|n| n.kind == NodeKindStatus::Standby && n.in_sync == Some(true))
                    .count();
                let vip_placed = status
                    .vip
                    .as_ref()
                    .is_none_or(|v| status.primary.as_ref().is_some_and(|p| v.on == [p.clone()]));
                if status.healthy()
                    && status.nodes.len() == lab.nodes.len()
                    && standbys == data_nodes - 1
                    && vip_placed
                    && status.sync_settled()
                {
                    return Ok(status);
                }
                waiting_for = status
                    .nodes
                    .iter()
                    .filter(|n| !n.info.is_empty())
                    .map(|n| format!("{}: {}", n.name, n.info))
                    .chain(status.problems.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; ");
            }
            Err(e) => waiting_for = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!("timed out; last seen: {waiting_for}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn process_alive(pid: u32) -> bool {
    // A zombie (exited, not reaped) counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is the agent of this node (not a recycled pid of something else).
pub(crate) fn is_our_agent(pid: u32, node: &LabNode) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        text.contains(" agent ") && text.contains(&node.config.display().to_string())
    })
}

pub(crate) fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    process_alive(pid as u32).then_some(pid)
}

pub(crate) fn dsn(lab: &LabFile, node: &LabNode) -> Option<String> {
    node.pg_port.map(|port| {
        format!(
            "host={} port={port} user=postgres dbname=postgres passfile={}",
            node.host,
            lab.passfile.display()
        )
    })
}

/// What `lab status` shows: lab.json with live pids, roles and connection strings.
pub fn lab_status(lab: &LabFile, rt: &tokio::runtime::Runtime) -> LabStatus {
    let cluster = rt.block_on(any_status(lab)).ok();
    let nodes = lab
        .nodes
        .iter()
        .map(|node| {
            let node_dir = lab.dir.join(&node.name);
            let role = cluster
                .as_ref()
                .and_then(|c| c.nodes.iter().find(|n| n.name == node.name))
                .map(|n| n.kind);
            LabNodeStatus {
                name: node.name.clone(),
                kind: node.kind.clone(),
                role,
                host: node.host.clone(),
                netns: lab
                    .netns
                    .as_ref()
                    .map(|ns| netns::namespace(&ns.prefix, &node.name)),
                vip: lab
                    .netns
                    .as_ref()
                    .and_then(|ns| netns::has_vip(ns, &node.name).ok()),
                agent_port: node.agent_port,
                pg_port: node.pg_port,
                agent_pid: node.agent_pid,
                agent_running: node
                    .agent_pid
                    .is_some_and(|p| process_alive(p) && is_our_agent(p, node)),
                postgres_pid: node.data_dir.as_deref().and_then(postmaster_pid),
                watchdog_pid: host::driver_pid(&lab.dir, node),
                dsn: dsn(lab, node),
                config: node.config.clone(),
                agent_log: node_dir.join("agent.log"),
                postgres_log: node
                    .data_dir
                    .as_ref()
                    .map(|_| node_dir.join("postgres.log")),
            }
        })
        .collect();
    LabStatus {
        cluster: lab.cluster.clone(),
        dir: lab.dir.clone(),
        nodes,
    }
}

fn status(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let lab = read_lab(dir)?;
    enter_client_network(&lab)?;
    let rt = runtime()?;
    let summary = lab_status(&lab, &rt);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Lab in {}:", lab.dir.display());
    println!();
    println!("\tNode      Agent port  Agent pid       PG port  Postmaster pid  Watchdog pid");
    for n in &summary.nodes {
        let agent = match (n.agent_pid, n.agent_running) {
            (Some(pid), true) => pid.to_string(),
            (Some(pid), false) => format!("{pid} (stopped)"),
            (None, _) => "-".to_string(),
        };
        let line = format!(
            "\t{:<9} {:<11} {:<15} {:<8} {:<15} {}",
            n.name,
            n.agent_port,
            agent,
            n.pg_port
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            n.postgres_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            n.watchdog_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into())
        );
        println!("{}", line.trim_end());
    }
    println!();
    match rt.block_on(any_status(&lab)) {
        Ok(status) => {
            print!("{}", status_text::render(&status));
            Ok(if status.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(e) => {
            println!("No agent answered: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process_alive(pid as u32) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !process_alive(pid as u32)
}

fn down(dir: &Path) -> anyhow::Result<ExitCode> {
    let lab = match read_lab(dir) {
        Ok(lab) => lab,
        Err(e) => {
            // A --netns build that died before lab.json leaves only namespaces.
            let removed = netns::remove(&netns::prefix_for(dir))?;
            let unmounted = disk::unmount_under(dir);
            if removed.is_empty() && unmounted.is_empty() {
                return Err(e);
            }
            if !unmounted.is_empty() {
                println!("Unmounted {}.", unmounted.join(", "));
            }
            if removed.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            println!("Removed the network namespaces {}.", removed.join(", "));
            return Ok(ExitCode::SUCCESS);
        }
    };
    for node in &lab.nodes {
        let Some(pid) = node.agent_pid else { continue };
        if !(process_alive(pid) && is_our_agent(pid, node)) {
            continue;
        }
        let pid = pid as i32;
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if !wait_gone(pid, Duration::from_secs(5)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
    // Stopped agents disarmed their watchdogs (killed ones did not): the drivers go next,
    // before they reset anything.
    for node in &lab.nodes {
        host::stop_driver(dir, node);
    }
    // The agents leave PostgreSQL running when they stop: stop each postmaster (SIGQUIT is
    // an immediate shutdown: the lab's data is thrown away next).
    for node in &lab.nodes {
        let Some(data_dir) = &node.data_dir else {
            continue;
        };
        if let Some(pid) = postmaster_pid(data_dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            if !wait_gone(pid, Duration::from_secs(10)) {
                // Hung or frozen (`lab freeze`): the postmaster and all its children.
                host::kill_processes(dir, node, false, true);
            }
        }
    }
    if let Some(ns) = &lab.netns {
        let removed = netns::remove(&ns.prefix)?;
        if !removed.is_empty() {
            println!("Removed the network namespaces {}.", removed.join(", "));
        }
    }
    // The data disks go once nothing of PostgreSQL holds them (removing the directory
    // first would empty them and then fail on their mount points).
    disk::unmount_under(dir);
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("Lab in {} stopped and removed.", dir.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn find_node<'a>(lab: &'a mut LabFile, name: &str) -> anyhow::Result<&'a mut LabNode> {
    let names: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
    lab.nodes
        .iter_mut()
        .find(|n| n.name == name)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the lab has no node {name:?} (its nodes: {})",
                names.join(", ")
            )
        })
}

fn kill_node(dir: &Path, name: &str, postgres: bool, agent: bool) -> anyhow::Result<ExitCode> {
    let mut lab = read_lab(dir)?;
    let node = find_node(&mut lab, name)?.clone();
    let mut killed = Vec::new();
    let mut driver = None;
    if agent && postgres {
        // A host dies with all its processes: the agent and what it started, the postmaster
        // and every child (backends call setsid(): the postmaster's process group misses
        // them, and a backend whose postmaster died can still commit). Its watchdog goes
        // first, so that a stale deadline cannot kill the node after `lab start`.
        driver = host::stop_driver(dir, &node);
        killed.extend(host::kill_processes(dir, &node, true, true));
    } else if agent {
        if let Some(pid) = node
            .agent_pid
            .filter(|p| process_alive(*p) && is_our_agent(*p, &node))
        {
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
            wait_gone(pid as i32, Duration::from_secs(5));
            killed.push(format!("agent (pid {pid})"));
        }
    } else if let Some(pid) = node.data_dir.as_deref().and_then(postmaster_pid) {
        // A postmaster crash: only the postmaster.
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        wait_gone(pid, Duration::from_secs(5));
        killed.push(format!("postmaster (pid {pid})"));
    }
    if let (Some(ns), true) = (&lab.netns, agent && postgres) {
        // The host is gone: its kernel no longer answers either (nor for the VIP).
        netns::set_link(ns, name, false)?;
        killed.push("its network link".to_string());
    }
    if killed.is_empty() {
        println!("{name}: nothing was running");
    } else {
        println!("{name}: killed {} with SIGKILL", killed.join("; "));
    }
    if let Some(pid) = driver {
        println!("{name}: its watchdog driver (pid {pid}) is gone too; lab start starts a new one");
    }
    Ok(ExitCode::SUCCESS)
}

fn start_node(dir: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let mut lab = read_lab(dir)?;
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    let netns_of_lab = lab.netns.clone();
    let with_watchdog = lab.watchdog;
    let node = find_node(&mut lab, name)?;
    if let Some(pid) = node
        .agent_pid
        .filter(|p| process_alive(*p) && is_our_agent(*p, node))
    {
        bail!("the agent of {name} is already running (pid {pid})");
    }
    if let Some(ns) = &netns_of_lab {
        // A host that comes back has lost the addresses it did not configure at boot.
        netns::drop_vip(ns, name)?;
        netns::set_link(ns, name, true)?;
    }
    // After a host death the node boots with a fresh watchdog (after an agent's death the
    // old one keeps its timer, as the kernel's does).
    let mut driver = None;
    if with_watchdog && node.data_dir.is_some() && host::driver_pid(dir, node).is_none() {
        let pid = host::spawn_driver(&exe, dir, node)?;
        node.watchdog_pid = Some(pid);
        driver = Some(pid);
    }
    let pid = spawn_agent(&exe, dir, node, netns_of_lab.as_ref())?;
    node.agent_pid = Some(pid);
    write_lab(&lab)?;
    match driver {
        Some(driver) => {
            println!("{name}: agent started (pid {pid}), watchdog driver (pid {driver})")
        }
        None => println!("{name}: agent started (pid {pid})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `lab freeze` / `lab thaw`: a host that stops running (a hung VM, a long pause) and goes
/// on again. The watchdog driver is not part of it and keeps counting.
fn freeze_node(dir: &Path, name: &str, freeze: bool, agent_only: bool) -> anyhow::Result<ExitCode> {
    let mut lab = read_lab(dir)?;
    let node = find_node(&mut lab, name)?.clone();
    let signal = if freeze {
        Signal::SIGSTOP
    } else {
        Signal::SIGCONT
    };
    let done = if agent_only {
        host::signal_agent(dir, &node, signal).into_iter().collect()
    } else {
        host::signal_processes(dir, &node, signal)
    };
    let verb = if freeze { "froze" } else { "thawed" };
    if done.is_empty() {
        println!("{name}: nothing was running");
    } else {
        println!("{name}: {verb} {}", done.join("; "));
    }
    if freeze {
        if let Some(pid) = host::driver_pid(dir, &node) {
            println!("{name}: its watchdog driver (pid {pid}) keeps counting");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn netns_lab(lab: &LabFile, command: &str) -> anyhow::Result<netns::NetnsLab> {
    lab.netns.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "pgfm lab {command} needs a lab built with --netns (the lab in {} shares one host)",
            lab.dir.display()
        )
    })
}

fn partition(dir: &Path, name: &str, from: &[String], one_way: bool) -> anyhow::Result<ExitCode> {
    let mut lab = read_lab(dir)?;
    let ns = netns_lab(&lab, "partition")?;
    let node = find_node(&mut lab, name)?.clone();
    let others: Vec<LabNode> = if from.is_empty() {
        lab.nodes
            .iter()
            .filter(|n| n.name != name)
            .cloned()
            .collect()
    } else {
        from.iter()
            .map(|f| find_node(&mut lab, f).map(|n| n.clone()))
            .collect::<anyhow::Result<_>>()?
    };
    for other in &others {
        // Traffic towards the node is lost; unless one-way, traffic from it too.
        netns::cut(&ns, &other.name, &node.host)?;
        if !one_way {
            netns::cut(&ns, name, &other.host)?;
        }
    }
    let names: Vec<&str> = others.iter().map(|n| n.name.as_str()).collect();
    if one_way {
        println!(
            "{name}: cut off one way: what {} send to it is lost; it can still send",
            names.join(", ")
        );
    } else {
        println!("{name}: cut off from {}", names.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn heal(dir: &Path) -> anyhow::Result<ExitCode> {
    let lab = read_lab(dir)?;
    let ns = netns_lab(&lab, "heal")?;
    for node in &lab.nodes {
        netns::heal(&ns, &node.name)?;
    }
    println!("every partition healed");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pgfm_agent::config::Config;

    /// `node`'s config as `lab up` writes it for `lab` and `extra`, from the one pgfm init
    /// renders for the lab's spec.
    pub(crate) fn config_of(lab: &LabFile, node: &str, extra: &Extra) -> String {
        let synchronous = setting(extra, "replication", "synchronous") == Some("on");
        let spec = cluster_spec(lab, synchronous).unwrap();
        let rendered = pgfm_init::render::node_config(&spec, spec.node(node).unwrap());
        node_config(lab, lab.node(node).unwrap(), &rendered, extra).unwrap()
    }

    /// A lab of two data nodes and a witness, as `plan_lab` makes it.
    fn lab(netns: bool, from_empty: bool, extra: &Extra) -> LabFile {
        let dir = PathBuf::from("/tmp/pgfm-lab-unit");
        let nodes = ["pg1", "pg2", "witness"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let data = *name != "witness";
                LabNode {
                    name: name.to_string(),
                    kind: if data { "data" } else { "witness" }.to_string(),
                    host: if netns {
                        netns::node_address(i)
                    } else {
                        loopback()
                    },
                    agent_port: if netns {
                        netns::AGENT_PORT
                    } else {
                        11_000 + i as u16
                    },
                    pg_port: data.then_some(if netns {
                        netns::PG_PORT
                    } else {
                        12_000 + i as u16
                    }),
                    config: dir.join(name).join("pgfm.toml"),
                    data_dir: data.then(|| dir.join(name).join("data")),
                    agent_pid: None,
                    watchdog_pid: None,
                }
            })
            .collect();
        LabFile {
            cluster: "lab".to_string(),
            dir: dir.clone(),
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            os_user: "postgres".to_string(),
            passfile: dir.join("pgpass"),
            token_file: dir.join("token"),
            nodes,
            netns: netns.then(|| netns::NetnsLab {
                prefix: "pgfm-test".to_string(),
                hub: "pgfm-test-hub".to_string(),
                client: "pgfm-test-client".to_string(),
                vip: netns::VIP.to_string(),
            }),
            watchdog: wants_watchdog(extra),
            data_disk_mb: None,
            tls: wants_tls(extra),
            from_empty,
        }
    }

    fn settings(settings: &[&str], synchronous: Option<&str>, watchdog: &str) -> Extra {
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        up_settings(&settings, synchronous, watchdog).unwrap()
    }

    /// The `[bootstrap] pg_hba` lines `config` asks for (None: no `[bootstrap]`).
    fn hba_of(config: &str) -> Option<Vec<String>> {
        let doc: toml_edit::DocumentMut = config.parse().unwrap();
        let lines = doc.get("bootstrap")?.get("pg_hba")?.as_array()?;
        Some(
            lines
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect(),
        )
    }

    /// The config as the agent reads it (`[bootstrap]` included).
    fn parsed(lab: &LabFile, node: &str, text: &str) -> Config {
        Config::parse(&lab.node(node).unwrap().config, text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_clients_line_is_from_their_address_over_tls_when_the_lab_has_it() {
        let check = |netns: bool, tls: bool, expected: &str| {
            assert_eq!(client_hba(netns, tls), expected, "netns {netns}, tls {tls}");
        };
        check(true, true, "hostssl all all 10.254.0.2/32 scram-sha-256");
        check(true, false, "host all all 10.254.0.2/32 scram-sha-256");
        check(false, true, "hostssl all all 127.0.0.1/32 scram-sha-256");
        check(false, false, "host all all 127.0.0.1/32 scram-sha-256");
    }

    /// A --netns lab: pgfm init's config for each host (its address, its VIP, PostgreSQL
    /// on every address for the VIP), the lab's paths, the client's pg_hba line, and the
    /// lab's watchdog choice instead of pgfm init's "automatic".
    #[test]
    fn a_netns_lab_gets_pgfm_init_s_config_with_the_lab_s_own_settings() {
        let extra = settings(&[], Some("on"), "required");
        let lab = lab(true, true, &extra);
        cluster_spec(&lab, true).unwrap().check().unwrap();
        let text = config_of(&lab, "pg2", &extra);
        let config = parsed(&lab, "pg2", &text);
        let node_dir = lab.dir.join("pg2");
        assert_eq!(config.listen.to_string(), "10.254.0.12:7400");
        assert_eq!(config.token_file, node_dir.join("token"));
        assert_eq!(config.state_dir, node_dir.join("state"));
        assert_eq!(config.peers.len(), 3);
        let pg = config.postgres.as_ref().unwrap();
        assert_eq!(pg.data_dir, node_dir.join("data"));
        assert_eq!(pg.listen_addresses, "*");
        assert_eq!(pg.bin_dir, Some(lab.bin_dir.clone()));
        assert_eq!(pg.socket_dir, Some(node_dir.clone()));
        assert_eq!(pg.passfile, Some(node_dir.join("pgpass")));
        assert_eq!(pg.log_file, node_dir.join("postgres.log"));
        assert_eq!(config.vip.unwrap().interface, "eth0");
        assert_eq!(config.sync.mode, pgfm_core::SyncMode::On);
        assert_eq!(config.watchdog.mode, pgfm_core::WatchdogMode::Required);
        assert_eq!(config.watchdog.device, node_dir.join("watchdog"));
        assert_eq!(config.tls.unwrap().key, node_dir.join("node.key"));
        assert_eq!(
            hba_of(&text),
            Some(vec![
                "hostssl all all 10.254.0.2/32 scram-sha-256".to_string()
            ])
        );
        // The witness: no database, no watchdog, nothing to bootstrap.
        let witness = config_of(&lab, "witness", &extra);
        let config = parsed(&lab, "witness", &witness);
        assert!(config.postgres.is_none());
        assert_eq!(config.watchdog.mode, pgfm_core::WatchdogMode::Off);
        assert_eq!(hba_of(&witness), None);
    }

    /// The loopback lab: its own ports on 127.0.0.1, and `[bootstrap]` only when it is
    /// built from empty.
    #[test]
    fn a_loopback_lab_bootstraps_only_from_empty() {
        let extra = settings(&["tls.mode=\"off\""], None, "off");
        let quick = lab(false, false, &extra);
        cluster_spec(&quick, false).unwrap().check().unwrap();
        let text = config_of(&quick, "pg1", &extra);
        let config = parsed(&quick, "pg1", &text);
        assert_eq!(config.listen.to_string(), "127.0.0.1:11000");
        assert_eq!(config.postgres.unwrap().listen_addresses, "127.0.0.1");
        assert_eq!(
            config
                .peers
                .iter()
                .map(|p| p.address.as_str())
                .collect::<Vec<_>>(),
            ["127.0.0.1:11000", "127.0.0.1:11001", "127.0.0.1:11002"]
        );
        assert_eq!(config.tls, None);
        // --watchdog off overrides pgfm init's "automatic": a lab never arms the host's.
        assert_eq!(config.watchdog.mode, pgfm_core::WatchdogMode::Off);
        assert_eq!(hba_of(&text), None);

        let empty = lab(false, true, &extra);
        let text = config_of(&empty, "pg1", &extra);
        parsed(&empty, "pg1", &text);
        assert_eq!(
            hba_of(&text),
            Some(vec!["host all all 127.0.0.1/32 scram-sha-256".to_string()])
        );
    }

    /// `--set` merges into the sections pgfm init and the lab write, each key once: its
    /// keys win, and a section of its own is added.
    #[test]
    fn set_merges_into_the_sections_each_key_once() {
        let extra = settings(
            &[
                "replication.strict=true",
                "bootstrap.pg_hba=[\"host all all 10.9.0.0/16 md5\"]",
                "bootstrap.data_checksums=false",
                "timing.probe_interval=\"500ms\"",
            ],
            Some("on"),
            "automatic",
        );
        let lab = lab(false, true, &extra);
        let text = config_of(&lab, "pg1", &extra);
        for header in [
            "[replication]",
            "[postgres]",
            "[watchdog]",
            "[bootstrap]",
            "[timing]",
        ] {
            assert_eq!(text.matches(header).count(), 1, "{header}\n{text}");
        }
        assert_eq!(text.matches("synchronous =").count(), 1, "{text}");
        assert_eq!(text.matches("mode =").count(), 1, "{text}");
        let config = parsed(&lab, "pg1", &text);
        assert_eq!(config.sync.minimum, 1);
        assert_eq!(config.watchdog.mode, pgfm_core::WatchdogMode::Automatic);
        assert_eq!(config.timing.probe_interval, Duration::from_millis(500));
        assert_eq!(
            hba_of(&text),
            Some(vec!["host all all 10.9.0.0/16 md5".to_string()])
        );
        assert!(text.contains("data_checksums = false"), "{text}");

        let bad = settings(&["failover.rejoin=manual"], None, "off");
        let error = node_config(&lab, lab.node("pg1").unwrap(), "", &bad).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("--set failover.rejoin=manual: not a TOML value ("),
            "{error}"
        );
    }

    /// `lab up`'s files, without starting anything: pgfm init's output installed on each
    /// node, private, the passfiles PostgreSQL's, every certificate valid for its node,
    /// and the lab's own copies where its clients and tests look for them.
    #[test]
    fn a_lab_s_nodes_are_pgfm_init_s_output_installed() {
        use std::os::unix::fs::MetadataExt;
        let dir = PathBuf::from(format!("/tmp/pgfm-lab-unit-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let os_user = postgres_os_user().unwrap();
        let extra = settings(&[], None, "required");
        let shape = Shape {
            data_nodes: 2,
            netns: false,
            data_disk_mb: None,
            from_empty: true,
        };
        let bin_dir = find_bin_dir();
        let bin = bin_dir.clone().unwrap_or_else(|| "/usr/bin".into());
        let lab = plan_lab(&dir, &shape, &extra, bin, &os_user).unwrap();
        write_node_files(&lab, &extra, &os_user).unwrap();
        let private = |path: &Path, owner: u32| {
            let meta =
                std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(meta.mode() & 0o777, 0o600, "{}", path.display());
            assert_eq!(meta.uid(), owner, "{}", path.display());
        };
        let me = nix::unistd::Uid::effective().as_raw();
        for node in &lab.nodes {
            let node_dir = dir.join(&node.name);
            for file in ["token", "ca.crt", "node.crt", "node.key"] {
                private(&node_dir.join(file), me);
            }
            match node.data_dir {
                Some(_) => private(&node_dir.join("pgpass"), os_user.uid),
                None => assert!(!node_dir.join("pgpass").exists()),
            }
            // With PostgreSQL installed, everything the agent checks before it starts.
            let config = match bin_dir {
                Some(_) => Config::load(&node.config),
                None => Config::load_static(&node.config),
            }
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.token_file, node_dir.join("token"));
            assert!(lab.client_tls(node).unwrap().is_some(), "{}", node.name);
        }
        private(&lab.token_file, me);
        private(&lab.passfile, os_user.uid);
        private(&dir.join("ca.key"), me);
        pgfm_init::pki::Authority::load(pgfm_init::pki::Pem {
            cert: std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
            key: std::fs::read_to_string(dir.join("ca.key")).unwrap(),
        })
        .unwrap();
        lab.superuser_config("unit").unwrap();
        assert_eq!(lab.client_ssl_root(), Some(dir.join("ca.crt")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
