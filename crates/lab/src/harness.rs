//! The end-to-end tests' view of a lab: real PostgreSQL and real agent processes driven
//! through the `pgfm` binary (`LabDriver`), polling with deadlines, and the watches that
//! fail a test on split brain. Everything here panics with what it waited for and what it
//! last saw: it is meant for tests, where a panic is the report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use pgfm_postgres::probe::Target;

use crate::commands::{dsn, lab_status, runtime, LabNodeStatus, LabStatus};
use crate::writers::{overlaps, Session, Writable, Writer};
use crate::LabDriver;

/// The exit code, standard output and standard error of a command, for a failure message.
pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A port free on 127.0.0.1 now, below the kernel's ephemeral range (from 32768 here), so
/// that no outgoing connection takes it before the test's server binds it.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = 10_000 + (std::process::id() as usize * 7919) % 20_000;
    loop {
        let port = (start + NEXT.fetch_add(1, Ordering::SeqCst) % 20_000) as u16;
        let port = if port >= 32_000 { port - 20_000 } else { port };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A fresh directory under /tmp that PostgreSQL (run as another user when we are root) can
/// reach; not created.
pub fn scratch_dir(purpose: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(format!(
        "/tmp/pgfm-test-{purpose}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Poll `probe` every 200 ms until it returns Ok, or panic after `timeout` saying what we
/// waited for and what was last seen.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) => last = seen,
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A lab for one test: up when made, its agents' logs printed if the test panics, down
/// when dropped.
pub struct Lab {
    pub driver: LabDriver,
}

impl std::ops::Deref for Lab {
    type Target = LabDriver;
    fn deref(&self) -> &LabDriver {
        &self.driver
    }
}

impl Lab {
    /// `pgfm lab up` (run by `pgfm`, the binary under test) with `data_nodes` data nodes
    /// and a witness.
    pub fn up(pgfm: &str, data_nodes: usize) -> Lab {
        Lab::up_with(pgfm, data_nodes, &[])
    }

    /// `pgfm lab up` with `--set` settings for every agent.
    pub fn up_with(pgfm: &str, data_nodes: usize, settings: &[&str]) -> Lab {
        Lab::build(pgfm, "lab", data_nodes, settings, false, &[])
    }

    /// `pgfm lab up --from-empty` with `--set` settings: every data directory empty, the
    /// agents bootstrapping the cluster as in the field (a --netns lab always is).
    pub fn up_from_empty(pgfm: &str, data_nodes: usize, settings: &[&str]) -> Lab {
        Lab::build(
            pgfm,
            "empty",
            data_nodes,
            settings,
            false,
            &["--from-empty".to_string()],
        )
    }

    fn build(
        pgfm: &str,
        purpose: &str,
        data_nodes: usize,
        settings: &[&str],
        netns: bool,
        more: &[String],
    ) -> Lab {
        let dir = scratch_dir(purpose);
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        match LabDriver::up_with(Path::new(pgfm), &dir, data_nodes, &settings, netns, more) {
            Ok((driver, _)) => Lab { driver },
            Err(e) => {
                // Whatever was started goes down; its logs say why it failed.
                let lab = Lab {
                    driver: LabDriver {
                        dir,
                        exe: PathBuf::from(pgfm),
                    },
                };
                lab.print_logs();
                panic!("lab up failed: {e:#}");
            }
        }
    }

    /// A `pgfm` command (run by the binary under test), with no arguments yet.
    pub fn pgfm(&self) -> Command {
        Command::new(&self.exe)
    }

    /// `pgfm ARGS --dir DIR`, whatever it answers.
    pub fn run(&self, args: &[&str]) -> Output {
        self.output(args).expect("running pgfm")
    }

    /// `pgfm ARGS --dir DIR`, which must succeed.
    pub fn run_ok(&self, args: &[&str]) {
        let output = self.run(args);
        assert!(output.status.success(), "{args:?}: {}", text(&output));
    }

    /// `pgfm ARGS -c <via's config>`: an operator command asked of `via`'s agent.
    pub fn cli_command(&self, via: &str, args: &[&str]) -> Command {
        let mut command = self.pgfm();
        command.args(args).arg("-c").arg(self.config(via));
        command
    }

    /// `cli_command`, run to its end.
    pub fn cli(&self, via: &str, args: &[&str]) -> Output {
        self.cli_command(via, args).output().expect("running pgfm")
    }

    /// `cli`, which must succeed: what it printed.
    pub fn cli_ok(&self, via: &str, args: &[&str]) -> String {
        let output = self.cli(via, args);
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        text(&output)
    }

    /// `n` rows committed in table `kept` on `primary`, and replayed on `standby`.
    pub fn committed_rows(&self, primary: &str, standby: &str, n: u32) {
        self.psql(
            primary,
            &format!("CREATE TABLE IF NOT EXISTS kept (id int); INSERT INTO kept SELECT generate_series(1, {n})"),
        )
        .unwrap();
        wait_for(
            &format!("{n} rows on {standby}"),
            Duration::from_secs(60),
            || match self.psql(standby, "SELECT count(*) FROM kept")? {
                c if c == n.to_string() => Ok(()),
                other => Err(other),
            },
        );
    }

    /// `node`'s agent config.
    pub fn config(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("pgfm.toml")
    }

    /// What `pgfm lab status` shows.
    pub fn lab_status(&self) -> LabStatus {
        let lab = self.lab().expect("the lab's file");
        lab_status(&lab, &runtime().expect("a runtime"))
    }

    /// One node of `lab_status`.
    pub fn lab_node(&self, node: &str) -> LabNodeStatus {
        let status = self.lab_status();
        status
            .nodes
            .into_iter()
            .find(|n| n.name == node)
            .unwrap_or_else(|| panic!("no node {node} in the lab"))
    }

    /// A client of `node`'s agent API, with the lab's token.
    pub fn client(&self, node: &str) -> pgfm_api::ApiClient {
        let lab = self.lab().expect("the lab's file");
        let token = std::fs::read_to_string(&lab.token_file).expect("the lab's token");
        self.client_with_token(node, token.trim())
    }

    /// A client of `node`'s agent API (with the lab's certificates) sending `token`.
    pub fn client_with_token(&self, node: &str, token: &str) -> pgfm_api::ApiClient {
        let lab = self.lab().expect("the lab's file");
        let n = lab.node(node).expect("a lab node");
        pgfm_api::ApiClient::new(
            &format!("{}:{}", n.host, n.agent_port),
            token,
            Duration::from_secs(2),
            lab.client_tls(n).expect("the lab's TLS files"),
        )
    }

    /// Wait until the health endpoint `path` on `node` answers `want`.
    pub fn expect_health(&self, node: &str, path: &str, want: u16) {
        let rt = runtime().expect("a runtime");
        let client = self.client(node);
        wait_for(
            &format!("{path} on {node} to answer {want}"),
            Duration::from_secs(60),
            || match rt.block_on(client.health(path)) {
                Ok((c, _)) if c == want => Ok(()),
                Ok((other, body)) => Err(format!("answered {other}: {body:?}")),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// `pgfm cluster-status --json` asked of `node`'s agent: the JSON and the exit code.
    pub fn cluster_status(&self, node: &str) -> Result<(Value, i32), String> {
        let output = self
            .pgfm()
            .args(["cluster-status", "--json", "-c"])
            .arg(self.config(node))
            .output()
            .map_err(|e| e.to_string())?;
        let code = output.status.code().unwrap_or(-1);
        match serde_json::from_slice(&output.stdout) {
            Ok(json) => Ok((json, code)),
            Err(_) => Err(text(&output)),
        }
    }

    /// The coordinator `asked`'s agent names, once it names one other than `not`.
    pub fn wait_coordinator(&self, asked: &str, not: Option<&str>) -> String {
        wait_for("a coordinator", Duration::from_secs(60), || {
            let (status, _) = self.cluster_status(asked)?;
            match status["coordinator"].as_str() {
                Some(c) if Some(c) != not => Ok(c.to_string()),
                _ => Err(status.to_string()),
            }
        })
    }

    /// Make one of `wanted` the coordinator: while another leads, restart that agent alone
    /// (its PostgreSQL keeps running) so that a new one is elected. For labs without a
    /// watchdog (one would reset the host whose agent stopped). Returns the coordinator.
    pub fn move_coordinator_to_one_of(&self, wanted: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let coordinator = self.wait_coordinator("witness", None);
            if wanted.contains(&coordinator.as_str()) {
                return coordinator;
            }
            assert!(
                Instant::now() < deadline,
                "none of {wanted:?} became the coordinator"
            );
            self.run_ok(&["lab", "kill", &coordinator, "--agent-only"]);
            let observer = if coordinator == "witness" {
                wanted[0]
            } else {
                "witness"
            };
            self.wait_coordinator(observer, Some(&coordinator));
            self.run_ok(&["lab", "start", &coordinator]);
            self.wait_healthy("witness", Duration::from_secs(60));
        }
    }

    /// Wait until `node`'s agent reports a healthy cluster (exit 0) and return the status.
    pub fn wait_healthy(&self, node: &str, timeout: Duration) -> Value {
        wait_for(
            &format!("a healthy cluster-status from {node}"),
            timeout,
            || match self.cluster_status(node)? {
                (json, 0) => Ok(json),
                (json, code) => Err(format!("exit {code}: {json}")),
            },
        )
    }

    /// Wait until `observer`'s cluster-status lists a problem that contains `needle`; that
    /// status and its exit code.
    pub fn wait_problem(&self, observer: &str, needle: &str) -> (Value, i32) {
        wait_for(
            &format!("{observer}'s cluster-status to say {needle:?}"),
            Duration::from_secs(60),
            || {
                let (status, code) = self.cluster_status(observer)?;
                let says = status["problems"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p.as_str().is_some_and(|p| p.contains(needle)))
                });
                if says {
                    Ok((status, code))
                } else {
                    Err(status.to_string())
                }
            },
        )
    }

    /// Wait until `observer`'s cluster-status shows `name`'s agent down; that status. A dead
    /// host's last report counts for `report_ttl` (3 s): after the lease and its drift
    /// margin (2.8 s), so possibly after the failover.
    pub fn wait_agent_down(&self, observer: &str, name: &str) -> Value {
        wait_for(
            &format!("{observer}'s cluster-status to show {name}'s agent down"),
            Duration::from_secs(60),
            || {
                let (status, _) = self.cluster_status(observer)?;
                if node(&status, name)["agent"] == "down" {
                    Ok(status)
                } else {
                    Err(status.to_string())
                }
            },
        )
    }

    /// The committed primary whose database is up, from `observer`'s agent.
    pub fn primary(&self, observer: &str) -> Option<String> {
        let (status, _) = self.cluster_status(observer).ok()?;
        status["primary"].as_str().map(str::to_string)
    }

    /// Wait (asking the witness) until `primary` leads at `generation`; fails at once if the
    /// generation goes past it (it must go up by exactly one per promotion).
    pub fn wait_for_primary_change(&self, primary: &str, generation: u64) -> Value {
        wait_for(
            &format!("{primary} promoted in generation {generation}"),
            Duration::from_secs(60),
            || {
                let (status, _) = self.cluster_status("witness")?;
                match (status["primary"].as_str(), status["generation"].as_u64()) {
                    (Some(p), Some(g)) if p == primary && g == generation => Ok(status),
                    (_, Some(g)) if g > generation => panic!("generation jumped to {g}: {status}"),
                    _ => Err(status.to_string()),
                }
            },
        )
    }

    /// Wait until `observer` sees `primary` as primary at `generation` and every other data
    /// node streaming from it.
    pub fn wait_primary(
        &self,
        observer: &str,
        primary: &str,
        generation: u64,
        timeout: Duration,
    ) -> Value {
        wait_for(
            &format!("{primary} primary of generation {generation}, others streaming"),
            timeout,
            || {
                let (status, code) = self.cluster_status(observer)?;
                let ok =
                    status["primary"] == primary && status["generation"] == generation && code == 0;
                if ok {
                    Ok(status)
                } else {
                    Err(format!("exit {code}: {status}"))
                }
            },
        )
    }

    /// `node`'s connection string as the lab's superuser.
    pub fn dsn(&self, node: &str) -> String {
        // From lab.json alone: `lab_node` would ask every agent for the cluster's status
        // on each of the tests' polled queries.
        let lab = self.lab().expect("the lab's file");
        dsn(&lab, lab.node(node).expect("a lab node")).expect("a data node's dsn")
    }

    /// Run SQL through psql on `node`; the unaligned output or the error text.
    pub fn psql(&self, node: &str, sql: &str) -> Result<String, String> {
        let output = Command::new("psql")
            .arg(self.dsn(node))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "3")
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }

    /// Every id the writer saw acknowledged is in `primary`'s bench table now: nothing
    /// acknowledged was lost.
    pub fn all_acknowledged_on(&self, primary: &str, acked: &[i64]) {
        let present: std::collections::BTreeSet<i64> = self
            .psql(primary, "SELECT id FROM bench")
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let lost: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged writes are not on {primary}: {lost:?}",
            lost.len()
        );
    }

    /// `node`'s agent log so far.
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(node).join("agent.log")).unwrap_or_default()
    }

    /// The address of a data node's PostgreSQL as the lab's superuser (2 s timeout).
    pub fn pg_target(&self, node: &str) -> Target {
        let mut target = self.target(node).expect("a data node");
        target.timeout = Duration::from_secs(2);
        target
    }

    /// A multi-host, read-write session with whichever of `nodes` is the primary.
    pub fn writer_config(&self, nodes: &[&str]) -> Session {
        let lab = self.lab().expect("the lab's file");
        let mut config = lab
            .superuser_config("pgfm-test-writer")
            .expect("the lab's superuser");
        for name in nodes {
            let node = lab.node(name).expect("a lab node");
            config
                .host(&node.host)
                .port(node.pg_port.expect("a data node"));
        }
        Session {
            config,
            ssl_root: lab.client_ssl_root(),
        }
    }

    fn print_logs(&self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let log = entry.path().join("agent.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {} (last 40 lines)", log.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        if self.dir.join("lab.json").exists() {
            if let Ok(output) = self.output(&["lab", "down"]) {
                if !output.status.success() {
                    eprintln!("lab down failed: {}", text(&output));
                }
            }
        }
    }
}

/// The node entry called `name` in a cluster-status JSON.
pub fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {status}"))
}

/// The split-brain watch over some of a lab's data nodes, every 20 ms; `finish` panics if
/// two of them ever accepted writes at overlapping moments.
pub struct SplitBrainWatch(crate::writers::WriteWatch);

impl SplitBrainWatch {
    pub fn start(lab: &Lab, nodes: &[&str]) -> SplitBrainWatch {
        let targets = nodes
            .iter()
            .map(|n| (n.to_string(), lab.pg_target(n)))
            .collect();
        SplitBrainWatch(crate::writers::WriteWatch::start(
            targets,
            Duration::from_millis(20),
        ))
    }

    /// Stop; panics if two nodes were writable at overlapping moments. Returns how many
    /// writable samples were seen.
    pub fn finish(self) -> usize {
        let samples: Vec<Writable> = self.0.finish();
        if let Some((a, b)) = overlaps(&samples).first() {
            panic!(
                "{} and {} accepted writes at the same moment",
                a.node, b.node
            );
        }
        samples.len()
    }
}

/// Waiting on the neutral writer.
pub trait WaitForWrites {
    /// Wait until `more` writes past the ones acknowledged so far are acknowledged.
    fn wait_more(&self, more: usize, what: &str);
}

impl WaitForWrites for Writer {
    fn wait_more(&self, more: usize, what: &str) {
        let from = self.count();
        wait_for(what, Duration::from_secs(60), || match self.count() {
            n if n >= from + more => Ok(()),
            n => Err(format!("{} since", n - from)),
        });
    }
}

/// A `--netns` lab: every node its own host, a VIP, and the calling thread moved into the
/// lab's client namespace (threads and processes it starts afterwards are there too).
pub struct NetnsLab {
    pub lab: Lab,
    /// Its namespaces and VIP, as lab.json records them.
    pub ns: crate::netns::NetnsLab,
}

impl std::ops::Deref for NetnsLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl NetnsLab {
    /// None (after printing why) when not root: namespaces need root.
    pub fn up(pgfm: &str, settings: &[&str]) -> Option<NetnsLab> {
        NetnsLab::up_with(pgfm, 2, settings)
    }

    /// A `--netns` lab with `data_nodes` data nodes and a witness.
    pub fn up_with(pgfm: &str, data_nodes: usize, settings: &[&str]) -> Option<NetnsLab> {
        if !is_root() {
            println!("SKIPPED: network namespaces need root; this scenario runs as root only");
            return None;
        }
        let lab = Lab::build(pgfm, "netns", data_nodes, settings, true, &[]);
        let ns = lab
            .lab()
            .expect("the lab's file")
            .netns
            .expect("a --netns lab");
        Some(NetnsLab { lab, ns })
    }

    /// The --netns lab in `dir`, brought up by the test itself (a `pgfm lab up` it ran as a
    /// child, to act while the lab forms); this thread moves into its client namespace.
    pub fn adopt(pgfm: &str, dir: &Path) -> NetnsLab {
        let lab = Lab {
            driver: LabDriver {
                dir: dir.to_path_buf(),
                exe: PathBuf::from(pgfm),
            },
        };
        let file = lab.lab().expect("the lab's file");
        crate::commands::enter_client_network(&file).expect("entering the client namespace");
        let ns = file.netns.expect("a --netns lab");
        NetnsLab { lab, ns }
    }

    /// A session through the VIP only, as the lab's superuser.
    pub fn vip_writer_config(&self) -> Session {
        self.lab()
            .expect("the lab's file")
            .writer_config("pgfm-test-writer")
            .expect("the lab's superuser")
    }

    /// The nodes among `nodes` whose kernel carries the VIP with their link up.
    pub fn vip_holders(&self, nodes: &[&str]) -> Vec<String> {
        vip_holders(&self.ns, nodes)
    }

    /// Whether `node`'s interface has `address` (`ADDRESS/PREFIX`), up or not.
    pub fn carries(&self, node: &str, address: &str) -> bool {
        crate::netns::carries(&self.ns, node, address).unwrap_or(false)
    }

    /// The VIP the lab configured, `ADDRESS/PREFIX`.
    pub fn vip(&self) -> &str {
        &self.ns.vip
    }
}

/// The nodes among `nodes` whose kernel carries the VIP with their link up, asked of the
/// kernels.
fn vip_holders(ns: &crate::netns::NetnsLab, nodes: &[&str]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| crate::netns::has_vip(ns, n).unwrap_or(false))
        .map(|n| n.to_string())
        .collect()
}

/// Samples, every 50 ms, which live nodes carry the VIP; at the end it says whether two
/// ever did at once, and the sequence of holders seen.
pub struct VipWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Vec<String>>>>,
}

impl VipWatch {
    pub fn start(lab: &NetnsLab, nodes: &[&str]) -> VipWatch {
        let ns = lab.ns.clone();
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: Vec<Vec<String>> = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
                let holders = vip_holders(&ns, &names);
                if seen.last() != Some(&holders) {
                    seen.push(holders);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        VipWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop; panics if two nodes carried the VIP at once. Returns the distinct holders in
    /// the order seen (e.g. `[["pg1"], [], ["pg2"]]`).
    pub fn finish(mut self) -> Vec<Vec<String>> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self
            .handle
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        if let Some(two) = seen.iter().find(|h| h.len() > 1) {
            panic!(
                "the VIP was on {} at once (holders seen: {seen:?})",
                two.join(" and ")
            );
        }
        seen
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
