//! Helpers for end-to-end tests: a real lab (real PostgreSQL, real agent processes) driven
//! through the `pgfm` binary, and polling with deadlines.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn pgfm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgfm"))
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A fresh directory under /tmp that PostgreSQL (run as another user when we are root) can
/// reach; not created.
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

/// Poll `probe` until it returns Some, or panic after `timeout` saying what we waited for
/// and what was last seen.
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

pub struct Lab {
    pub dir: PathBuf,
}

impl Lab {
    /// A client of `node`'s agent API, with the lab's token.
    pub fn client(&self, node: &str) -> pgfm_api::ApiClient {
        let token = std::fs::read_to_string(self.dir.join("token")).expect("the lab's token");
        let port = self.lab_node(node)["agent_port"]
            .as_u64()
            .expect("agent_port");
        pgfm_api::ApiClient::new(
            &format!("127.0.0.1:{port}"),
            token.trim(),
            Duration::from_secs(2),
        )
    }

    /// Wait until the health endpoint `path` on `node` answers `want`.
    pub fn expect_health(&self, node: &str, path: &str, want: u16) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // One client: building it runs `pgfm lab status`.
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

    /// `pgfm lab up` with `data_nodes` data nodes and a witness.
    pub fn up(data_nodes: usize) -> Lab {
        Lab::up_with(data_nodes, &[])
    }

    /// `pgfm lab up` with `--set` settings for every agent.
    pub fn up_with(data_nodes: usize, settings: &[&str]) -> Lab {
        let dir = scratch_dir("lab");
        let mut command = pgfm();
        command.args([
            "lab",
            "up",
            "--json",
            "--data-nodes",
            &data_nodes.to_string(),
            "--dir",
        ]);
        command.arg(&dir);
        for setting in settings {
            command.args(["--set", setting]);
        }
        let output = command.output().expect("running pgfm lab up");
        let lab = Lab { dir };
        assert!(output.status.success(), "lab up failed: {}", text(&output));
        lab
    }

    pub fn run(&self, args: &[&str]) -> Output {
        pgfm()
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .expect("running pgfm")
    }

    pub fn config(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("pgfm.toml")
    }

    /// `pgfm lab status --json`.
    pub fn lab_status(&self) -> Value {
        let output = self.run(&["lab", "status", "--json"]);
        assert!(
            output.status.success(),
            "lab status failed: {}",
            text(&output)
        );
        serde_json::from_slice(&output.stdout).expect("lab status JSON")
    }

    pub fn lab_node(&self, node: &str) -> Value {
        let status = self.lab_status();
        status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["name"] == node))
            .cloned()
            .unwrap_or_else(|| panic!("no node {node} in lab status {status}"))
    }

    /// `pgfm cluster-status --json` asked of `node`'s agent: the JSON and the exit code.
    pub fn cluster_status(&self, node: &str) -> Result<(Value, i32), String> {
        let output = pgfm()
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

    pub fn dsn(&self, node: &str) -> String {
        self.lab_node(node)["dsn"]
            .as_str()
            .expect("dsn")
            .to_string()
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

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(node).join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
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
        if self.dir.join("lab.json").exists() {
            let output = pgfm()
                .args(["lab", "down", "--dir"])
                .arg(&self.dir)
                .output();
            if let Ok(output) = output {
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

impl Lab {
    /// The address of a data node's PostgreSQL, as the lab made it.
    pub fn target(&self, node: &str) -> pgfm_postgres::probe::Target {
        let n = self.lab_node(node);
        pgfm_postgres::probe::Target {
            host: n["host"].as_str().unwrap_or("127.0.0.1").to_string(),
            port: n["pg_port"].as_u64().expect("pg_port") as u16,
            user: "postgres".into(),
            passfile: Some(self.dir.join("pgpass")),
            timeout: Duration::from_secs(2),
        }
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
}

/// Samples every data node's `pg_is_in_recovery()` while a scenario runs; at the end it
/// says whether two nodes ever accepted writes at overlapping moments.
pub struct WriteWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<pgfm_postgres::writers::Writable>>>,
}

impl WriteWatch {
    pub fn start(lab: &Lab, nodes: &[&str]) -> WriteWatch {
        let targets: Vec<(String, pgfm_postgres::probe::Target)> = nodes
            .iter()
            .map(|n| (n.to_string(), lab.target(n)))
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(pgfm_postgres::writers::sample_writable(
                targets,
                flag,
                Duration::from_millis(20),
            ))
        });
        WriteWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop watching; panics if two nodes were writable at overlapping moments. Returns
    /// how many writable samples were seen.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let samples = self
            .handle
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        if let Some((a, b)) = pgfm_postgres::writers::overlaps(&samples).first() {
            panic!(
                "{} and {} accepted writes at the same moment",
                a.node, b.node
            );
        }
        samples.len()
    }
}

impl Drop for WriteWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Lab {
    /// A multi-host, read-write connection to whichever data node is the primary.
    pub fn writer_config(&self, nodes: &[&str]) -> tokio_postgres::Config {
        let mut config = self.read_write_config();
        for n in nodes {
            let port = self.lab_node(n)["pg_port"].as_u64().unwrap() as u16;
            config.host("127.0.0.1").port(port);
        }
        config
    }

    /// The lab's superuser, a read-write session, a 1 s connect timeout; no host yet.
    pub fn read_write_config(&self) -> tokio_postgres::Config {
        let passfile = std::fs::read_to_string(self.dir.join("pgpass")).unwrap();
        let password =
            pgfm_postgres::passfile::lookup(&passfile, "127.0.0.1", 0, "postgres", "postgres")
                .unwrap();
        let mut config = tokio_postgres::Config::new();
        config
            .user("postgres")
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(1))
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        config
    }
}

/// The neutral writer (one INSERT of a sequential id every 10 ms into `bench`) on its own
/// thread, until `finish`.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub acks: pgfm_postgres::writers::Acks,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(config: tokio_postgres::Config) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acks: pgfm_postgres::writers::Acks = Default::default();
        let (flag, sink) = (stop.clone(), acks.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(pgfm_postgres::writers::write_sequence(
                config, 1, sink, flag,
            ));
        });
        Writer {
            stop,
            acks,
            handle: Some(handle),
        }
    }

    pub fn count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Wait until `more` writes past the ones acknowledged so far are acknowledged.
    pub fn wait_more(&self, more: usize, what: &str) {
        let from = self.count();
        wait_for(what, Duration::from_secs(60), || match self.count() {
            n if n >= from + more => Ok(()),
            n => Err(format!("{} since", n - from)),
        });
    }

    /// Stop writing; the acknowledged ids.
    pub fn finish(mut self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let acks = self.acks.lock().unwrap();
        acks.iter().map(|(id, _)| *id).collect()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A `--netns` lab: every node its own host, a VIP, and the calling thread moved into the
/// lab's client namespace (threads and processes it starts afterwards are there too).
pub struct NetnsLab {
    pub lab: Lab,
    pub prefix: String,
    pub client: String,
    pub vip: String,
}

impl std::ops::Deref for NetnsLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl NetnsLab {
    /// None (after printing why) when not root: namespaces need root.
    pub fn up(settings: &[&str]) -> Option<NetnsLab> {
        NetnsLab::up_with(2, settings)
    }

    /// A `--netns` lab with `data_nodes` data nodes and a witness.
    pub fn up_with(data_nodes: usize, settings: &[&str]) -> Option<NetnsLab> {
        if !is_root() {
            println!("SKIPPED: network namespaces need root; this scenario runs as root only");
            return None;
        }
        let dir = scratch_dir("netns");
        let mut command = pgfm();
        command.args(["lab", "up", "--netns", "--json", "--data-nodes"]);
        command.arg(data_nodes.to_string()).arg("--dir");
        command.arg(&dir);
        for setting in settings {
            command.args(["--set", setting]);
        }
        let output = command.output().expect("running pgfm lab up --netns");
        let lab = Lab { dir };
        assert!(
            output.status.success(),
            "lab up --netns failed: {}",
            text(&output)
        );
        let file: Value =
            serde_json::from_str(&std::fs::read_to_string(lab.dir.join("lab.json")).unwrap())
                .unwrap();
        let ns = &file["netns"];
        let netns = NetnsLab {
            prefix: ns["prefix"].as_str().unwrap().to_string(),
            client: ns["client"].as_str().unwrap().to_string(),
            vip: ns["vip"].as_str().unwrap().to_string(),
            lab,
        };
        pgfm_net::netns::enter(&netns.client).expect("entering the client namespace");
        Some(netns)
    }

    pub fn vip_address(&self) -> String {
        self.vip.split('/').next().unwrap().to_string()
    }

    /// A connection through the VIP only, as the lab's superuser.
    pub fn vip_writer_config(&self) -> tokio_postgres::Config {
        let mut config = self.read_write_config();
        config.host(self.vip_address()).port(5432);
        config
    }

    /// The namespaces of this lab that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        namespaces_with_prefix(&self.prefix)
    }
}

pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let start = format!("{prefix}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&start))
        .collect()
}

fn ip_output(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("running ip");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The nodes whose kernel carries `vip` with their link up, asked of the kernels.
pub fn vip_holders(prefix: &str, vip: &str, nodes: &[String]) -> Vec<String> {
    let needle = format!(" {vip} ");
    nodes
        .iter()
        .filter(|n| {
            let addresses = ip_output(&[
                "-n",
                &format!("{prefix}-{n}"),
                "-o",
                "-4",
                "addr",
                "show",
                "dev",
                "eth0",
            ]);
            let link = ip_output(&["-n", &format!("{prefix}-hub"), "-o", "link", "show", n]);
            let up = link
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"));
            addresses.contains(&needle) && up
        })
        .cloned()
        .collect()
}

/// Samples, every 50 ms, which live nodes carry the VIP; at the end it says whether two
/// ever did at once, and the sequence of holders seen.
pub struct VipWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<Vec<String>>>>,
}

impl VipWatch {
    pub fn start(lab: &NetnsLab, nodes: &[&str]) -> VipWatch {
        let (prefix, vip) = (lab.prefix.clone(), lab.vip.clone());
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: Vec<Vec<String>> = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let holders = vip_holders(&prefix, &vip, &nodes);
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
