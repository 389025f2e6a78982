//! The `pgfm` binary: the command line over the agent (`pgfm_agent`), the API client
//! (`pgfm_api`) and the lab (`pgfm_lab`) — parsing, dispatch, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use pgfm_agent::config::{Config, DEFAULT_CONFIG};
use pgfm_api::status_text;
use pgfm_lab::{bench, calm, chaos, demo};

mod maintenance;
mod settings;

#[derive(Parser)]
#[command(name = "pgfm", version, about = "PostgreSQL failover manager")]
struct Cli {
    /// Talk to the agent at this URL (https://host:port) instead of the one named by -c.
    #[arg(long, global = true, env = "PGFM_AGENT")]
    agent: Option<String>,
    /// The cluster token file to use with --agent (default: the token_file of -c).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// A directory with ca.crt and node.crt/node.key (a node's, as pgfm init writes them)
    /// or client.crt/client.key (pgfm init --add --client) to present to --agent
    /// (default: the [tls] files of -c).
    #[arg(long, global = true)]
    tls_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Commands,
}

/// `--agent`, `--token-file` and `--tls-dir`, for the commands that talk to an agent.
#[derive(Clone, Default)]
struct Target {
    agent: Option<String>,
    token_file: Option<PathBuf>,
    tls_dir: Option<PathBuf>,
}

static TARGET: std::sync::OnceLock<Target> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Commands {
    /// Write every file a new cluster needs, one directory per node: config, token,
    /// passfile, the cluster CA and each node's certificate. Then copy each node's
    /// directory to its host. Nothing is started or contacted.
    Init(InitArgs),
    /// Run this node's agent (one per node).
    Agent {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file without starting anything.
    CheckConfig {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the cluster: members, roles, WAL positions, whether it is safe to promote.
    /// Exits 1 when a member is down, there is no primary or no standby is in sync, and 2
    /// when no agent answered.
    ClusterStatus {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print the status as JSON (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Planned, lossless switchover: the primary shuts down cleanly, the target receives
    /// everything and is promoted, the old primary streams from it. Returns when done.
    /// Exits 1 when refused (nothing changed), 2 on errors.
    Switchover {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The standby to hand over to (default: the most advanced standby in sync).
        #[arg(long, conflicts_with = "cancel")]
        to: Option<String>,
        /// Cancel the switchover under way: the old primary stays, or starts again as, the
        /// primary (nothing is lost: its generation never changed). With none under way,
        /// cancel the scheduled one.
        #[arg(long)]
        cancel: bool,
        /// Schedule it instead: the coordinator starts it at TIME, UTC (2026-12-24T03:00:00Z,
        /// or "2026-12-24 03:00:00"), or after a delay (+30m). Shown in cluster-status until
        /// it starts; cancelled by --cancel.
        #[arg(long, conflicts_with = "cancel", value_name = "TIME")]
        at: Option<String>,
    },
    /// Operator failover (EFM's promote): fences the old primary first (a hand-over when it
    /// runs, its lease expiring when it does not); works with automatic failover off.
    /// Exits 1 when refused (nothing changed).
    Promote {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The standby to promote (default: the best one).
        #[arg(long)]
        to: Option<String>,
        /// Accept a target that lags; the refusal without it says how much could be lost.
        #[arg(long)]
        force: bool,
    },
    /// Put a data node under maintenance, or end it. On: the node is never promoted and
    /// never a synchronous standby, and its PostgreSQL is stopped cleanly (after it left
    /// the synchronous standbys) and stays stopped across agent restarts and reboots; the
    /// primary first switches over to the best standby in sync. Off: it starts as a
    /// standby, rewound if it has to be, and takes its place again. Returns when done.
    /// Exits 1 when refused (nothing changed), 2 on errors.
    Maintenance {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        node: String,
        #[arg(value_enum)]
        state: OnOff,
        /// Keep PostgreSQL running: out of failover and synchronous replication only.
        #[arg(long)]
        keep_running: bool,
        /// Even when the primary would be left with no promotable standby in sync, or the
        /// synchronous minimum could not be met without this node (commits then wait for it).
        #[arg(long)]
        force: bool,
    },
    /// Restart PostgreSQL, one node at a time: the standbys first (each back and streaming
    /// in sync before the next), then the primary by a switchover to a standby in sync, so
    /// that writes pause for one switchover. Each node leaves the synchronous standbys
    /// before it stops. Exits 1 when refused or stopped (saying where), 2 on errors.
    Restart {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The data nodes to restart (default: all of them).
        nodes: Vec<String>,
        /// Only those with a PostgreSQL parameter pending restart.
        #[arg(long)]
        pending: bool,
        /// Restart the primary where it runs instead of switching over first: writes pause
        /// for the whole restart, and no standby in sync is needed.
        #[arg(long)]
        in_place: bool,
        /// Schedule it instead: the coordinator carries it out at TIME, UTC
        /// (2026-12-24T03:00:00Z, or "2026-12-24 03:00:00"), or after a delay (+30m), the
        /// same way, node by node; --pending is judged for each node when its turn comes.
        /// Shown in cluster-status with how far it got; cancelled by --cancel.
        #[arg(long, value_name = "TIME", conflicts_with = "cancel")]
        at: Option<String>,
        /// Cancel the scheduled restart (the node it is at comes out of maintenance).
        #[arg(long, conflicts_with_all = ["pending", "in_place", "nodes"])]
        cancel: bool,
    },
    /// Re-clone a standby from the primary: it leaves the synchronous standbys, stops, its
    /// data directory is moved aside (data_dir.pgfm-old), and it is cloned afresh. Refused
    /// for the primary. Returns once it streams in sync. Exits 1 when refused, 2 on errors.
    Reinit {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        node: String,
    },
    /// Reload PostgreSQL's configuration (postgresql.conf, pg_hba.conf, pgfm.conf) on data
    /// nodes: the ones named, or every one. Committed; returns once each has reloaded,
    /// saying what waits for a restart. Exits 1 when refused, 2 on errors.
    Reload {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        nodes: Vec<String>,
    },
    /// Change a data node's tags, cluster-wide, together: nofailover (never promoted),
    /// nosync (never a synchronous standby), noloadbalance (/replica answers 503),
    /// replicate_from=NODE (stream from that standby while it streams; empty: from the
    /// primary), clonefrom (a preferred source for clones). Flags take true or false.
    /// Exits 1 when refused (nothing changed), 2 on errors.
    SetTag {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        node: String,
        /// KEY=VALUE, one or more.
        #[arg(required = true)]
        tags: Vec<String>,
        /// Even when the primary would be left without a promotable standby in sync, or
        /// fewer standbys could be synchronous than replication.minimum_standbys.
        #[arg(long)]
        force: bool,
    },
    /// Change a data node's failover priority, cluster-wide (0 = never promote).
    SetPriority {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        node: String,
        priority: u32,
    },
    /// Synchronous replication for the whole cluster, at run time: off, on (each of N
    /// standbys confirms every commit) or quorum (any N of the streaming standbys). It is
    /// committed and overrides every agent's [replication] from then on.
    SetSynchronous {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(value_parser = ["off", "on", "quorum"])]
        mode: String,
        /// How many standbys each commit waits for (default: unchanged).
        #[arg(long)]
        standbys: Option<usize>,
        /// The fewest standbys named when standbys are lost; then commits wait (default:
        /// unchanged).
        #[arg(long)]
        minimum: Option<usize>,
        /// Never fewer than --standbys: commits wait rather than have fewer copies.
        #[arg(long)]
        strict: bool,
    },
    /// The cluster-wide settings in force ([timing], [failover], [replication]), committed
    /// in the log: their revision and who changed what. The text can be given back to
    /// edit-config --file.
    ShowConfig {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Change the cluster-wide settings: every agent applies them without a restart.
    /// Without --set or --file, opens $EDITOR on them, shows the changes and asks. Checked
    /// as check-config checks a file; refused (nothing changed) when invalid or when someone
    /// else changed them since. The lease's timing may change too.
    EditConfig {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// KEY=VALUE, such as failover.switchover_timeout=10s (repeat it); the other keys
        /// keep their values. No question asked.
        #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "file")]
        sets: Vec<String>,
        /// A file of [timing], [failover] and [replication] keys (show-config's text); the
        /// keys it leaves out keep their values. No question asked.
        #[arg(long)]
        file: Option<PathBuf>,
        /// With $EDITOR: commit without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Let a node (back) into the cluster: it becomes a voting member.
    AllowNode {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        name: String,
        /// Its agent's address, ip:port.
        address: String,
    },
    /// Remove a node from the cluster; refused for the primary or when the rest would
    /// have no majority up, unless --force.
    DisallowNode {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Stop every agent of the cluster; PostgreSQL keeps running; the cluster is left paused.
    StopCluster {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Maintenance mode: no automatic failover anywhere until `pgfm resume`.
    Pause {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// This node's own status; exits 1 when its database is down or it is idle.
    NodeStatus {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Every promotion: generation, time, reason, from, to, data loss if any.
    History {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// End maintenance mode (after `pgfm pause`), and let this node rejoin when it waits for
    /// the operator (rejoin = "manual", or a failed rewind).
    Resume {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// A guided tour on a throw-away lab: fail over, rejoin, with timings.
    Demo {
        #[arg(long, default_value = "/tmp/pgfm-demo")]
        dir: PathBuf,
        /// Leave the lab running at the end.
        #[arg(long)]
        keep: bool,
    },
    /// Measure failover under a neutral writer.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// A real cluster on this machine, for trying pgfm out and for tests.
    Lab {
        #[command(subcommand)]
        command: pgfm_lab::LabCommand,
    },
    /// Print the shell completion script for bash, zsh or fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (pgfm.1 and one per command) into a directory.
    #[command(hide = true)]
    Manpages {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct InitArgs {
    /// The cluster's name (1-63 of a-z, 0-9, '-', '_').
    #[arg(long, required_unless_present = "add", conflicts_with = "add")]
    cluster: Option<String>,
    /// A data node, NAME=ADDRESS (its IP; the agent and PostgreSQL listen there). Repeat.
    #[arg(long = "data", value_name = "NAME=ADDRESS")]
    data: Vec<String>,
    /// A witness (an agent without a database), NAME=ADDRESS. Repeat.
    #[arg(long = "witness", value_name = "NAME=ADDRESS")]
    witness: Vec<String>,
    /// The virtual IP that follows the primary, ADDRESS/PREFIX in the data nodes' subnet.
    #[arg(long, requires = "interface", conflicts_with = "add")]
    vip: Option<String>,
    /// The network interface the VIP goes on, the same on every data node.
    #[arg(long, conflicts_with = "add")]
    interface: Option<String>,
    /// Synchronous replication: every commit waits for a standby ("on" or "off").
    #[arg(long, default_value = "off", value_parser = ["on", "off"], conflicts_with = "add")]
    synchronous: String,
    /// Where to write: a new or empty directory (DIR/<node>/ for each node, DIR/ca/).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Add the --data/--witness nodes (and --client certificates) to the cluster pgfm
    /// init wrote into --out (same CA, token, passwords and settings).
    #[arg(long)]
    add: bool,
    /// With --add: a certificate for a client that is not a node (HAProxy's health checks,
    /// monitoring, the CLI off the nodes), in DIR/clients/NAME/. Repeat.
    #[arg(long = "client", value_name = "NAME", requires = "add")]
    clients: Vec<String>,
    /// Overwrite: a new cluster in a used --out, or new files (a new certificate) for a
    /// node --add names again.
    #[arg(long)]
    force: bool,
    /// Where the node's files are installed on its host.
    #[arg(long, default_value = "/etc/pgfm", conflicts_with = "add")]
    etc_dir: PathBuf,
    /// The agent's state directory on every node.
    #[arg(long, default_value = "/var/lib/pgfm", conflicts_with = "add")]
    state_dir: PathBuf,
    /// PostgreSQL's data directory on every data node.
    #[arg(
        long,
        default_value = "/var/lib/postgresql/15/main",
        conflicts_with = "add"
    )]
    data_dir: PathBuf,
    /// The port every agent listens on.
    #[arg(long, default_value_t = 7400, conflicts_with = "add")]
    agent_port: u16,
    /// The port every PostgreSQL listens on.
    #[arg(long, default_value_t = 5432, conflicts_with = "add")]
    pg_port: u16,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Host death and postmaster crash of the primary, several runs each.
    Failover(bench::FailoverBench),
    /// Switchovers back and forth.
    Switchover(bench::SwitchoverBench),
    /// Rolling restarts of every data node (pgfm restart) under the writer.
    Restart(bench::RestartBench),
    /// Clusters formed from empty data directories: from the agents' start to every
    /// standby streaming.
    Bootstrap(bench::BootstrapBench),
    /// A soak of drawn faults on a --netns lab (host deaths, crashes, freezes, partitions,
    /// double faults, damaged WAL, a full disk): lost writes, two writers, rejoins.
    Chaos(chaos::ChaosBench),
    /// No false failovers: CPU hogs on every core and the primary's agent stopped again and
    /// again for up to lease - safety margin - 1 s; nothing may be promoted, fenced or reset.
    Calm(calm::CalmBench),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGFM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A client for the agent named by a config file: its address, token and TLS files (the
/// CLI presents the node's certificate). `--agent`, `--token-file` and `--tls-dir` stand
/// in for them; the config is needed only for what they do not give.
fn local_agent(config: &std::path::Path) -> anyhow::Result<pgfm_api::ApiClient> {
    let target = TARGET.get().cloned().unwrap_or_default();
    let loaded = std::cell::OnceCell::new();
    let load = || {
        loaded
            .get_or_init(|| Config::load_static(config))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let token = match &target.token_file {
        Some(file) => std::fs::read_to_string(file)
            .map(|t| t.trim().to_string())
            .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", file.display()))?,
        None => load()?.read_token()?.to_string(),
    };
    let address = match target.agent {
        Some(url) => url,
        None => load()?.listen.to_string(),
    };
    let tls = match &target.tls_dir {
        Some(dir) => {
            // A node's directory, or a client's (pgfm init --add --client).
            let (cert, key) = if dir.join(pgfm_init::files::NODE_CERT).exists() {
                (pgfm_init::files::NODE_CERT, pgfm_init::files::NODE_KEY)
            } else {
                (pgfm_init::files::CLIENT_CERT, pgfm_init::files::CLIENT_KEY)
            };
            Some(
                pgfm_tls::Tls::load_client(pgfm_tls::TlsFiles {
                    ca: dir.join(pgfm_init::files::CA_CERT),
                    cert: dir.join(cert),
                    key: dir.join(key),
                })
                .map_err(|e| anyhow::anyhow!("--tls-dir {}: {e}", dir.display()))?,
            )
        }
        None => load()
            .map_err(|e| {
                e.context(
                    "the TLS files come from the config; give -c, or --tls-dir with a \
                     node's ca.crt, node.crt and node.key",
                )
            })?
            .load_tls()?,
    };
    Ok(pgfm_api::ApiClient::new(
        &address,
        &token,
        Duration::from_secs(5),
        tls,
    ))
}

/// Print a command's answer; a refusal exits 1 with its reason.
fn refusable(answer: Result<pgfm_api::Message, pgfm_api::ApiError>) -> anyhow::Result<ExitCode> {
    match answer {
        Ok(m) => {
            println!("{}", m.message);
            Ok(ExitCode::SUCCESS)
        }
        Err(pgfm_api::ApiError::Failed {
            status: 409,
            message,
            ..
        }) => {
            eprintln!("pgfm: refused, nothing was changed: {message}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// `pgfm init`: write a cluster's files, or add nodes to one. Bad input exits 1 with the
/// fix, having written nothing.
fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    use pgfm_core::NodeKind;
    let nodes: Result<Vec<_>, _> = args
        .data
        .iter()
        .map(|d| pgfm_init::NodeSpec::parse(NodeKind::Data, d))
        .chain(
            args.witness
                .iter()
                .map(|w| pgfm_init::NodeSpec::parse(NodeKind::Witness, w)),
        )
        .collect();
    if args.add && args.data.is_empty() && args.witness.is_empty() && !args.clients.is_empty() {
        return init_clients(&args.out, &args.clients, args.force);
    }
    let written = nodes.and_then(|nodes| {
        if args.add {
            let written = pgfm_init::add(&args.out, nodes, args.force)?;
            pgfm_init::add_clients(&args.out, &args.clients, args.force)?;
            return Ok(written);
        }
        let spec = pgfm_init::ClusterSpec {
            cluster: args.cluster.unwrap_or_default(),
            nodes,
            vip: pgfm_init::VipSpec::parse(args.vip.as_deref(), args.interface.as_deref())?,
            synchronous: args.synchronous == "on",
            layout: pgfm_init::Layout {
                etc_dir: args.etc_dir,
                state_dir: args.state_dir,
                data_dir: args.data_dir,
                agent_port: args.agent_port,
                pg_port: args.pg_port,
            },
        };
        pgfm_init::create(spec, &args.out, args.force)
    });
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            eprintln!("pgfm init: {e}; nothing was written");
            return Ok(ExitCode::from(1));
        }
    };
    let names: Vec<&str> = written.nodes.iter().map(|(n, _)| n.name.as_str()).collect();
    println!(
        "pgfm init: wrote the files of {} for cluster {} in {}. Install them:",
        names.join(", "),
        written.spec.cluster,
        args.out.display()
    );
    print!("{}", written.instructions());
    let etc = written.spec.layout.etc_dir.display();
    if args.add {
        println!(
            "Then start each new agent (pgfm agent -c {etc}/pgfm.toml) and, on any member, let \
             it in: {}",
            written
                .nodes
                .iter()
                .map(|(n, _)| format!(
                    "pgfm allow-node {} {}:{}",
                    n.name, n.address, written.spec.layout.agent_port
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    } else {
        println!(
            "Then check each node (pgfm check-config -c {etc}/pgfm.toml) and start its agent \
             (pgfm agent -c {etc}/pgfm.toml)."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `pgfm init --add --client NAME ...`: client certificates alone.
fn init_clients(out: &std::path::Path, names: &[String], force: bool) -> anyhow::Result<ExitCode> {
    match pgfm_init::add_clients(out, names, force) {
        Ok(dirs) => {
            for dir in dirs {
                println!(
                    "pgfm init: wrote {dir}/: for HAProxy, check-ssl crt {dir}/client.pem \
                     ca-file {dir}/ca.crt; for the CLI, --tls-dir {dir}",
                    dir = dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("pgfm init: {e}; nothing was written");
            Ok(ExitCode::from(1))
        }
    }
}

/// `pgfm manpages --out DIR`: pgfm.1 and pgfm-<command>.1 for every visible command.
fn manpages(out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let command = <Cli as clap::CommandFactory>::command();
    let mut written = 0;
    let mut pages = vec![(String::from("pgfm"), command.clone())];
    for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("pgfm-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("pgfm {}", sub.get_name()));
        pages.push((name, page));
    }
    for (name, page) in pages {
        let file = out.join(format!("{name}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page.version(env!("CARGO_PKG_VERSION")))
            .render(&mut text)
            .with_context(|| format!("rendering {name}"))?;
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        written += 1;
    }
    println!("wrote {written} man pages into {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `pgfm agent`: run this node's agent until it is stopped.
fn agent(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    // Before any thread starts: the variables are removed for the agent's children.
    let systemd = pgfm_agent::SystemdNotifier::take_from_env();
    init_logging();
    let config = Config::load(config)?;
    let span = tracing::info_span!("agent", node = %config.name);
    let _entered = span.enter();
    match runtime()?.block_on(pgfm_agent::run(config, systemd))? {
        pgfm_agent::Stopped::Signal => Ok(ExitCode::SUCCESS),
        // Stopped by pgfm stop-cluster: systemd must not start it again.
        pgfm_agent::Stopped::Asked => Ok(ExitCode::from(pgfm_agent::Stopped::ASKED_EXIT)),
    }
}

fn check_config(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    println!(
        "config {}: valid ({} node {} of cluster {}, {} peers)",
        config.file.display(),
        config.kind.as_str(),
        config.name,
        config.cluster,
        config.peers.len()
    );
    if let Some(files) = &config.tls {
        if let Ok(until) = pgfm_tls::expiry(files) {
            let left = until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            let days = left.as_secs() / (24 * 3600);
            println!(
                "TLS: {} and the cluster CA are valid until {} ({days} days)",
                files.cert.display(),
                humantime::format_rfc3339_seconds(until)
            );
            if days < 30 {
                eprintln!(
                    "warning: renew {} within {days} days (pgfm init --add --force with this \
                     node, where the cluster's ca/ directory is)",
                    files.cert.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cluster_status(config: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let client = local_agent(config)?;
    let status = runtime()?.block_on(client.status())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status_text::render(&status));
    }
    Ok(if status.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn history(config: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let history = runtime()?.block_on(local_agent(config)?.history())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&history)?);
    } else {
        print!("{}", status_text::history(&history));
    }
    Ok(ExitCode::SUCCESS)
}

fn resume(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let client = local_agent(config)?;
    let answer = runtime()?.block_on(client.resume())?;
    println!("{}", answer.message);
    Ok(ExitCode::SUCCESS)
}

fn node_status(config: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let name = Config::load_static(config)?.name;
    let status = runtime()?.block_on(local_agent(config)?.status())?;
    let node = status
        .nodes
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| anyhow::anyhow!("{name} is not in the cluster status"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(node)?);
    } else {
        print!("{}", status_text::node(node, &status));
    }
    let bad = node.db == pgfm_api::DbStatus::Down || node.kind == pgfm_api::NodeKindStatus::Idle;
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `pgfm promote`: ask, then follow the cluster until the new generation has a primary.
fn promote(config: &std::path::Path, to: Option<String>, force: bool) -> anyhow::Result<ExitCode> {
    let client = local_agent(config)?;
    let rt = runtime()?;
    let started_at = std::time::Instant::now();
    // A hand-over rolled back in this generation: the cancellations already in the history
    // are not this promotion's. Not known (the agent did not answer): none is reported.
    let cancelled_of = |generation: u64| -> Option<Vec<pgfm_api::HistoryEntry>> {
        let history = rt.block_on(client.history()).ok()?;
        Some(
            history
                .into_iter()
                .filter(|e| e.cancelled && e.generation == generation)
                .collect(),
        )
    };
    let before = rt
        .block_on(client.status())
        .ok()
        .and_then(|s| cancelled_of(s.generation).map(|cancelled| (s.generation, cancelled.len())));
    let mut cancelled_before = before.map_or(0, |(_, n)| n);
    let before = before.map(|(g, _)| g);
    let started = match rt.block_on(client.promote(to, force)) {
        Ok(started) => started,
        Err(pgfm_api::ApiError::Failed {
            status: 409,
            message,
            ..
        }) => {
            eprintln!("pgfm: promote refused, nothing was changed: {message}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    println!("Promotion accepted: {}.", started.how);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(status) = rt.block_on(client.status()) {
            if status.generation > started.generation && status.primary.is_some() {
                // A hand-over that went on as a failover, said even when the promotion
                // came too soon after it to be seen on its own.
                if before == Some(started.generation) {
                    let cancelled = cancelled_of(started.generation).unwrap_or_default();
                    if let Some(e) = cancelled.get(cancelled_before..).and_then(|c| c.last()) {
                        println!("{}.", e.reason);
                    }
                }
                let lost = rt
                    .block_on(client.history())
                    .ok()
                    .and_then(|h| {
                        h.iter()
                            .find(|e| !e.cancelled && e.generation == status.generation)
                            .map(status_text::lost_text)
                    })
                    .unwrap_or_else(|| "unknown".into());
                println!(
                    "{} is the primary of generation {} ({:.1} s); data lost: {lost}.",
                    status.primary.as_deref().unwrap_or("?"),
                    status.generation,
                    started_at.elapsed().as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            // Through a hand-over, the promotion may be rolled back (the primary did not
            // hand over in time, the target went away): the history says why. One whose
            // primary stopped renewing goes on as a failover: keep following it.
            if status.generation == started.generation && before == Some(started.generation) {
                let cancelled = cancelled_of(started.generation).unwrap_or_default();
                if cancelled.len() > cancelled_before {
                    cancelled_before = cancelled.len();
                    if let Some(e) = cancelled.last() {
                        if e.failover_instead {
                            println!("{}.", e.reason);
                        } else {
                            eprintln!("pgfm: the promotion did not happen: {}", e.reason);
                            return Ok(ExitCode::from(1));
                        }
                    }
                }
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("no new primary within 120 s: see pgfm cluster-status");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pgfm switchover --cancel`.
fn cancel_switchover(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let client = local_agent(config)?;
    refusable(runtime()?.block_on(client.cancel_switchover()))
}

/// `pgfm maintenance NODE on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = TARGET.set(Target {
        agent: cli.agent.clone(),
        token_file: cli.token_file.clone(),
        tls_dir: cli.tls_dir.clone(),
    });
    if !matches!(cli.command, Commands::Agent { .. }) {
        // A command piped into `head` should end quietly, not panic on a closed stdout.
        // SAFETY: called before any thread starts; SIG_DFL has no handler to race with.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgfm: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Commands::Init(args) => init(args),
        Commands::Agent { config } => agent(&config),
        Commands::CheckConfig { config } => check_config(&config),
        Commands::ClusterStatus { config, json } => cluster_status(&config, json),
        Commands::Switchover {
            config,
            cancel: true,
            ..
        } => cancel_switchover(&config),
        Commands::Switchover {
            config,
            to,
            at: Some(at),
            ..
        } => maintenance::schedule_switchover(&local_agent(&config)?, to, &at),
        Commands::Switchover { config, to, .. } => {
            maintenance::switchover(&local_agent(&config)?, to)
        }
        Commands::Reinit { config, node } => maintenance::reinit(&local_agent(&config)?, node),
        Commands::Reload { config, nodes } => maintenance::reload(&local_agent(&config)?, nodes),
        Commands::Restart {
            config,
            cancel: true,
            ..
        } => maintenance::cancel_restart(&local_agent(&config)?),
        Commands::Restart {
            config,
            nodes,
            pending,
            in_place,
            at: Some(at),
            ..
        } => maintenance::schedule_restart(
            &local_agent(&config)?,
            pgfm_api::ScheduleRestartRequest {
                nodes,
                pending,
                in_place,
                at_unix_ms: 0,
                by: settings::who(),
            },
            &at,
        ),
        Commands::Restart {
            config,
            nodes,
            pending,
            in_place,
            ..
        } => maintenance::restart(&local_agent(&config)?, nodes, pending, in_place),
        Commands::Maintenance {
            config,
            node,
            state,
            keep_running,
            force,
        } => maintenance::maintenance(
            &local_agent(&config)?,
            pgfm_api::MaintenanceRequest {
                node,
                on: state == OnOff::On,
                keep_running,
                force,
                by: settings::who(),
            },
        ),
        Commands::Promote { config, to, force } => promote(&config, to, force),
        Commands::SetTag {
            config,
            node,
            tags,
            force,
        } => {
            let request = pgfm_api::TagsRequest {
                node,
                tags,
                force,
                by: settings::who(),
            };
            refusable(runtime()?.block_on(local_agent(&config)?.set_tags(&request)))
        }
        Commands::SetPriority {
            config,
            node,
            priority,
        } => refusable(runtime()?.block_on(local_agent(&config)?.set_priority(&node, priority))),
        Commands::SetSynchronous {
            config,
            mode,
            standbys,
            minimum,
            strict,
        } => {
            let request = pgfm_api::SynchronousRequest {
                mode,
                standbys,
                minimum,
                strict,
            };
            refusable(runtime()?.block_on(local_agent(&config)?.set_synchronous(&request)))
        }
        Commands::ShowConfig { config, json } => settings::show(&local_agent(&config)?, json),
        Commands::EditConfig {
            config,
            sets,
            file,
            yes,
        } => {
            let how = match (sets.is_empty(), file) {
                (false, _) => settings::Edit::Set(sets),
                (true, Some(file)) => settings::Edit::File(file),
                (true, None) => settings::Edit::Editor,
            };
            settings::edit(&local_agent(&config)?, how, yes)
        }
        Commands::AllowNode {
            config,
            name,
            address,
        } => refusable(runtime()?.block_on(local_agent(&config)?.allow_node(&name, &address))),
        Commands::DisallowNode {
            config,
            name,
            force,
        } => refusable(runtime()?.block_on(local_agent(&config)?.disallow_node(&name, force))),
        Commands::StopCluster { config } => {
            refusable(runtime()?.block_on(local_agent(&config)?.stop_cluster()))
        }
        Commands::Pause { config } => refusable(runtime()?.block_on(local_agent(&config)?.pause())),
        Commands::NodeStatus { config, json } => node_status(&config, json),
        Commands::History { config, json } => history(&config, json),
        Commands::Resume { config } => resume(&config),
        Commands::Lab { command } => pgfm_lab::run(command),
        Commands::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "pgfm", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Commands::Manpages { out } => manpages(&out),
        Commands::Demo { dir, keep } => demo::run(&dir, keep),
        Commands::Bench {
            command: BenchCommand::Failover(args),
        } => bench::failover(args),
        Commands::Bench {
            command: BenchCommand::Switchover(args),
        } => bench::switchover(args),
        Commands::Bench {
            command: BenchCommand::Bootstrap(args),
        } => bench::bootstrap(args),
        Commands::Bench {
            command: BenchCommand::Restart(args),
        } => bench::restart(args),
        Commands::Bench {
            command: BenchCommand::Chaos(args),
        } => chaos::chaos(args),
        Commands::Bench {
            command: BenchCommand::Calm(args),
        } => calm::calm(args),
    }
}
