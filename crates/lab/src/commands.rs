//! `pgfm lab`: a real cluster on this machine (data nodes pg1..pgN and a witness, each with
//! its own agent and ports on 127.0.0.1), in the layout DESIGN.md "The lab" describes.
//! Only pg1 is initialised by initdb; the other data nodes' agents clone themselves.
//! With `--netns` (netns.rs) every node is its own host in a network namespace, with a
//! virtual IP, and partitions are real.
//!
//! Each data node also has a hardware watchdog, played by `pgfm lab watchdog-driver`
//! (host.rs; `lab up --watchdog off` leaves it out). Besides DESIGN's layout, a data node's
//! directory holds:
//!
//! ```text
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
use pgfm_postgres::control::{initdb, single_user_sql};
use pgfm_postgres::{find_bin_dir, OsUser};

use pgfm_api::status_text;

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

    /// Where clients write: through the virtual IP only in a --netns lab (as clients do in
    /// the field), to every data node (multi-host, the writable one wins) otherwise.
    pub fn writer_config(&self, application_name: &str) -> anyhow::Result<tokio_postgres::Config> {
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
        Ok(config)
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
        } => {
            let mut settings = settings;
            if let Some(mode) = synchronous {
                settings.push(format!("replication.synchronous=\"{mode}\""));
            }
            let mut extra = parse_settings(&settings)?;
            if watchdog != "off" {
                add_watchdog(&mut extra, &watchdog);
            }
            let shape = Shape {
                data_nodes,
                netns,
                data_disk_mb: data_disk,
            };
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

/// A token or password: the one `pgfm init` makes.
fn random_secret() -> anyhow::Result<String> {
    Ok(pgfm_init::random_secret()?)
}

fn write_private(path: &Path, contents: &str, owner: Option<&OsUser>) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(user) = owner {
        user.own(path)?;
    }
    Ok(())
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
        ]
        .contains(&section)
        {
            bail!("--set {setting:?}: the lab only sets keys of [timing], [failover], [hooks], [replication], [watchdog] and [tls]");
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

/// Whether the configs keep TLS on (the default; `--set tls.mode=off` turns it off).
pub(crate) fn wants_tls(extra: &Extra) -> bool {
    !extra.iter().any(|(section, keys)| {
        section == "tls"
            && keys
                .iter()
                .any(|(k, v)| k == "mode" && v.trim_matches('"') == "off")
    })
}

/// Whether the data nodes' configs ask for a watchdog (then each gets a driver).
pub(crate) fn wants_watchdog(extra: &Extra) -> bool {
    extra.iter().any(|(section, keys)| {
        section == "watchdog"
            && keys
                .iter()
                .any(|(k, v)| k == "mode" && v.trim_matches('"') != "off")
    })
}

pub(crate) fn node_config(lab: &LabFile, node: &LabNode, peers: &str, extra: &Extra) -> String {
    let node_dir = lab.dir.join(&node.name);
    let mut text = format!(
        "# pgfm lab: agent config of {name}\n\
         cluster = \"{cluster}\"\n\
         token_file = \"{token}\"\n\n\
         [node]\n\
         name = \"{name}\"\n\
         kind = \"{kind}\"\n\
         listen = \"{host}:{agent_port}\"\n\
         state_dir = \"{state}\"\n\n\
         {peers}\n",
        name = node.name,
        cluster = lab.cluster,
        token = lab.token_file.display(),
        kind = node.kind,
        host = node.host,
        agent_port = node.agent_port,
        state = node_dir.join("state").display(),
    );
    if let (Some(port), Some(data_dir)) = (node.pg_port, &node.data_dir) {
        text.push_str(&format!(
            "[postgres]\n\
             bin_dir = \"{bin}\"\n\
             data_dir = \"{data}\"\n\
             host = \"{host}\"\n\
             listen_addresses = \"{listen}\"\n\
             port = {port}\n\
             socket_dir = \"{socket}\"\n\
             os_user = \"{user}\"\n\
             passfile = \"{passfile}\"\n\
             log_file = \"{log}\"\n",
            bin = lab.bin_dir.display(),
            data = data_dir.display(),
            host = node.host,
            // On its own host PostgreSQL also answers on the VIP.
            listen = if lab.netns.is_some() {
                "*"
            } else {
                node.host.as_str()
            },
            socket = node_dir.display(),
            user = lab.os_user,
            passfile = lab.passfile.display(),
            log = node_dir.join("postgres.log").display(),
        ));
    }
    if let (Some(ns), Some(_)) = (&lab.netns, node.pg_port) {
        text.push_str(&format!(
            "\n[vip]\naddress = \"{}\"\ninterface = \"eth0\"\n",
            ns.vip
        ));
    }
    let mut sections = extra.clone();
    if lab.tls && !sections.iter().any(|(s, _)| s == "tls") {
        sections.push(("tls".to_string(), Vec::new()));
    }
    for (section, keys) in &sections {
        let mut keys = keys.clone();
        if section == "tls" && lab.tls {
            let files = lab.tls_files(node);
            for (key, path) in [("ca", files.ca), ("cert", files.cert), ("key", files.key)] {
                if !keys.iter().any(|(k, _)| k == key) {
                    keys.push((key.to_string(), format!("\"{}\"", path.display())));
                }
            }
        }
        if section == "watchdog" {
            // A witness holds no lease: no watchdog.
            if node.pg_port.is_none() {
                continue;
            }
            if lab.watchdog && !keys.iter().any(|(k, _)| k == "device") {
                let fifo = host::watchdog_fifo(&lab.dir, &node.name);
                keys.push(("device".to_string(), format!("\"{}\"", fifo.display())));
            }
        }
        text.push_str(&format!("\n[{section}]\n"));
        for (key, value) in &keys {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    text
}

/// What `lab up` builds: how many data nodes, on which network, on which disks.
pub(crate) struct Shape {
    pub data_nodes: usize,
    pub netns: bool,
    /// Each data node's data directory on a tmpfs of this many MB (`--data-disk`).
    pub data_disk_mb: Option<u64>,
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
    let secrets = write_secrets(dir, &os_user)?;
    let mut lab = plan_lab(dir, shape, extra, bin_dir, &os_user, &secrets)?;
    write_configs(&lab, extra)?;
    write_lab(&lab)?;
    disk::mount_data_disks(&lab, &os_user)?;
    build_network(&lab)?;
    init_pg1(&lab, &os_user, &secrets)?;
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

/// The lab's secrets, written into its directory.
struct Secrets {
    token_file: PathBuf,
    passfile: PathBuf,
    superuser_pw: String,
    replication_pw: String,
}

/// Create the lab's directory and write the cluster token and the passfile into it.
fn write_secrets(dir: &Path, os_user: &OsUser) -> anyhow::Result<Secrets> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // PostgreSQL, run as another user when we are root, must be able to reach its files.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let token_file = dir.join("token");
    write_private(&token_file, &random_secret()?, None)?;
    let superuser_pw = random_secret()?;
    let replication_pw = random_secret()?;
    let passfile = dir.join("pgpass");
    write_private(
        &passfile,
        &format!("*:*:*:postgres:{superuser_pw}\n*:*:*:replicator:{replication_pw}\n"),
        Some(os_user),
    )?;
    Ok(Secrets {
        token_file,
        passfile,
        superuser_pw,
        replication_pw,
    })
}

/// Name the nodes, choose their addresses and ports, and make their directories.
fn plan_lab(
    dir: &Path,
    shape: &Shape,
    extra: &Extra,
    bin_dir: PathBuf,
    os_user: &OsUser,
    secrets: &Secrets,
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
        passfile: secrets.passfile.clone(),
        token_file: secrets.token_file.clone(),
        nodes: Vec::new(),
        netns: netns.clone(),
        watchdog: wants_watchdog(extra),
        data_disk_mb: shape.data_disk_mb,
        tls: wants_tls(extra),
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

/// Write every node's pgfm.toml and check that the agent accepts it.
fn write_configs(lab: &LabFile, extra: &Extra) -> anyhow::Result<()> {
    let peers: String = lab
        .nodes
        .iter()
        .map(|n| {
            format!(
                "[[peers]]\nname = \"{}\"\naddress = \"{}:{}\"\n",
                n.name, n.host, n.agent_port
            )
        })
        .collect::<Vec<_>>()
        .join("");
    if lab.tls {
        write_tls(lab)?;
    }
    for node in &lab.nodes {
        std::fs::write(&node.config, node_config(lab, node, &peers, extra))
            .with_context(|| format!("writing {}", node.config.display()))?;
    }
    for node in &lab.nodes {
        pgfm_agent::config::Config::load_static(&node.config)?;
    }
    Ok(())
}

/// The lab's CA (its key kept as `DIR/ca.key`, for tests that renew a certificate) and a
/// certificate for each node, made out for its address.
fn write_tls(lab: &LabFile) -> anyhow::Result<()> {
    let ca = pgfm_init::pki::Authority::create(&lab.cluster)?;
    std::fs::write(lab.dir.join(pgfm_init::files::CA_CERT), &ca.pem.cert)?;
    write_private(&lab.dir.join("ca.key"), &ca.pem.key, None)?;
    for node in &lab.nodes {
        let address: std::net::IpAddr = node
            .host
            .parse()
            .with_context(|| format!("{}'s address {}", node.name, node.host))?;
        let pem = ca.issue(&lab.cluster, &node.name, &[address])?;
        let files = lab.tls_files(node);
        std::fs::write(&files.ca, &ca.pem.cert)?;
        std::fs::write(&files.cert, &pem.cert)?;
        write_private(&files.key, &pem.key, None)?;
    }
    Ok(())
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

/// Only pg1 is initialised; the replication role is made before any agent starts.
fn init_pg1(lab: &LabFile, os_user: &OsUser, secrets: &Secrets) -> anyhow::Result<()> {
    let rt = runtime()?;
    let pg1_data = lab.nodes[0]
        .data_dir
        .clone()
        .context("pg1 has no data_dir")?;
    let pwfile = lab.dir.join("pg1").join("initdb.pw");
    write_private(&pwfile, &secrets.superuser_pw, Some(os_user))?;
    let made = rt.block_on(async {
        initdb(&lab.bin_dir, &pg1_data, os_user, "postgres", &pwfile).await?;
        let replication_pw = &secrets.replication_pw;
        let sql =
            format!("CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{replication_pw}';\n");
        single_user_sql(&lab.bin_dir, &pg1_data, os_user, &sql).await
    });
    let _ = std::fs::remove_file(&pwfile);
    made?;
    if lab.netns.is_some() {
        // The other hosts (and the client) connect from the lab's subnet.
        let hba = pg1_data.join("pg_hba.conf");
        let mut text =
            std::fs::read_to_string(&hba).with_context(|| format!("reading {}", hba.display()))?;
        text.push_str(&format!(
            "\n# pgfm lab --netns: the lab's hosts\nhost all all {subnet} scram-sha-256\nhost replication all {subnet} scram-sha-256\n",
            subnet = netns::SUBNET
        ));
        std::fs::write(&hba, text).with_context(|| format!("writing {}", hba.display()))?;
    }
    Ok(())
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
