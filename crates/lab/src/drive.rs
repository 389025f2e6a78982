//! Driving a lab (the demo, the bench and the end-to-end tests): the lab commands run as
//! subprocesses of the `pgfm` binary, the status comes from the agents' API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use pgfm_api::{ClusterStatus, HistoryEntry};
use pgfm_postgres::probe::Target;

use crate::commands::{self as lab, LabFile};

pub struct LabDriver {
    pub dir: PathBuf,
    /// The `pgfm` binary that runs the lab's commands and agents.
    pub exe: PathBuf,
}

impl LabDriver {
    /// `pgfm lab up` run by `exe`; returns the driver and what lab up printed. With
    /// `netns`, every node is its own host, and this thread moves into the lab's client
    /// namespace.
    pub fn up(
        exe: &Path,
        dir: &Path,
        data_nodes: usize,
        settings: &[String],
        netns: bool,
    ) -> anyhow::Result<(LabDriver, String)> {
        LabDriver::up_with(exe, dir, data_nodes, settings, netns, &[])
    }

    /// `up`, with more arguments for `pgfm lab up` (`--data-disk 512`, ...).
    pub fn up_with(
        exe: &Path,
        dir: &Path,
        data_nodes: usize,
        settings: &[String],
        netns: bool,
        more: &[String],
    ) -> anyhow::Result<(LabDriver, String)> {
        let driver = LabDriver {
            dir: lab::absolute(dir)?,
            exe: exe.to_path_buf(),
        };
        let mut args = vec![
            "lab".to_string(),
            "up".into(),
            "--data-nodes".into(),
            data_nodes.to_string(),
        ];
        for setting in settings {
            args.push("--set".into());
            args.push(setting.clone());
        }
        if netns {
            args.push("--netns".into());
        }
        args.extend(more.iter().cloned());
        let printed = driver.pgfm(&args)?;
        lab::enter_client_network(&driver.lab()?)?;
        Ok((driver, printed))
    }

    /// Run `pgfm ARGS --dir DIR`, whatever it answers.
    pub fn output<S: AsRef<str>>(&self, args: &[S]) -> std::io::Result<std::process::Output> {
        std::process::Command::new(&self.exe)
            .args(args.iter().map(|a| a.as_ref()))
            .arg("--dir")
            .arg(&self.dir)
            .output()
    }

    /// Run `pgfm ARGS --dir DIR`; its standard output, or an error with its standard error.
    pub fn pgfm<S: AsRef<str>>(&self, args: &[S]) -> anyhow::Result<String> {
        let output = self.output(args).context("running pgfm")?;
        if !output.status.success() {
            bail!(
                "pgfm {} failed: {}{}",
                args.iter()
                    .map(|a| a.as_ref())
                    .collect::<Vec<_>>()
                    .join(" "),
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn kill(&self, node: &str, postgres_only: bool) -> anyhow::Result<()> {
        let mut args = vec!["lab", "kill", node];
        if postgres_only {
            args.push("--postgres-only");
        }
        self.pgfm(&args).map(|_| ())
    }

    pub fn start(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "start", node]).map(|_| ())
    }

    /// Cut `node` off from the other nodes (a --netns lab).
    pub fn partition(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "partition", node]).map(|_| ())
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        self.pgfm(&["lab", "heal"]).map(|_| ())
    }

    /// Cut `node` off from every other node, one way (it still sends) or both ways.
    pub fn partition_way(&self, node: &str, one_way: bool) -> anyhow::Result<()> {
        let mut args = vec!["lab", "partition", node];
        if one_way {
            args.push("--one-way");
        }
        self.pgfm(&args).map(|_| ())
    }

    /// SIGKILL only `node`'s agent (its PostgreSQL lives on).
    pub fn kill_agent(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "kill", node, "--agent-only"])
            .map(|_| ())
    }

    /// SIGSTOP every process of `node`'s host (`thaw` resumes them).
    pub fn freeze(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "freeze", node]).map(|_| ())
    }

    pub fn thaw(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "thaw", node]).map(|_| ())
    }

    /// SIGSTOP only `node`'s agent process (its PostgreSQL runs on); `thaw_agent` resumes it.
    pub fn freeze_agent(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "freeze", node, "--agent-only"])
            .map(|_| ())
    }

    pub fn thaw_agent(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "thaw", node, "--agent-only"])
            .map(|_| ())
    }

    /// Fill `node`'s data disk (a lab built with --data-disk); `free_disk` empties it.
    pub fn fill_disk(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "fill-disk", node]).map(|_| ())
    }

    pub fn free_disk(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "free-disk", node]).map(|_| ())
    }

    /// Remove every WAL segment of `node`, whose PostgreSQL must be down.
    pub fn damage_wal(&self, node: &str) -> anyhow::Result<()> {
        self.pgfm(&["lab", "damage-wal", node]).map(|_| ())
    }

    /// Whether `node`'s agent process runs (frozen counts as running).
    pub fn agent_running(&self, node: &str) -> anyhow::Result<bool> {
        let lab = self.lab()?;
        Ok(crate::host::agent_running(&self.dir, lab.node(node)?))
    }

    pub fn down(&self) -> anyhow::Result<()> {
        self.pgfm(&["lab", "down"]).map(|_| ())
    }

    /// The end of a bench: the lab down, or with `keep` left running and said where (on
    /// standard error: with --json, standard output is JSON lines only).
    pub fn down_unless(&self, keep: bool) -> anyhow::Result<()> {
        if !keep {
            return self.down();
        }
        eprintln!(
            "the lab is left in {} (pgfm lab down --dir {} removes it)",
            self.dir.display(),
            self.dir.display()
        );
        Ok(())
    }

    /// A failed run leaves its lab for a post-mortem: its logs say what went wrong.
    pub fn kept_for_inspection(&self, e: anyhow::Error) -> anyhow::Error {
        e.context(format!(
            "the lab is left in {} for inspection (pgfm lab down --dir {} removes it)",
            self.dir.display(),
            self.dir.display()
        ))
    }

    pub fn lab(&self) -> anyhow::Result<LabFile> {
        lab::read_lab(&self.dir)
    }

    pub async fn status(&self) -> anyhow::Result<ClusterStatus> {
        lab::any_status(&self.lab()?).await
    }

    /// `status`, waiting at most `timeout` for each agent.
    pub async fn status_within(&self, timeout: Duration) -> anyhow::Result<ClusterStatus> {
        lab::any_status_within(&self.lab()?, timeout).await
    }

    /// Every promotion the cluster committed (`pgfm history`), from the first agent that
    /// answers within `timeout`.
    pub async fn history(&self, timeout: Duration) -> anyhow::Result<Vec<HistoryEntry>> {
        let lab = self.lab()?;
        let mut last = None;
        for node in &lab.nodes {
            match lab::client(&lab, node, timeout)?.history().await {
                Ok(history) => return Ok(history),
                Err(e) => last = Some(anyhow::Error::from(e)),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the lab has no nodes")))
    }

    /// Poll the status every 50 ms until `check` returns Some, or fail after `timeout`
    /// saying what we waited for.
    pub async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&ClusterStatus) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = self.status().await {
                if let Some(found) = check(&status) {
                    return Ok(found);
                }
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How to reach a data node's PostgreSQL as the lab's superuser.
    pub fn target(&self, node: &str) -> anyhow::Result<Target> {
        let lab = self.lab()?;
        let n = lab
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("the lab has no node {node}"))?;
        Ok(Target {
            host: n.host.clone(),
            port: n
                .pg_port
                .with_context(|| format!("{node} has no database"))?,
            user: "postgres".into(),
            passfile: Some(lab.passfile.clone()),
            timeout: Duration::from_secs(1),
            ssl_root: lab.tls.then(|| lab.tls_files(n).ca),
        })
    }

    /// Every data node's name and PostgreSQL port.
    pub fn data_nodes(&self) -> anyhow::Result<Vec<(String, u16)>> {
        Ok(self
            .lab()?
            .nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.pg_port?)))
            .collect())
    }
}
