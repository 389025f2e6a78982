//! Controlling a node's PostgreSQL: render the settings pgfm owns (`pgfm.conf`), write or
//! remove `standby.signal`, start the postmaster as the agent's child, stop it, and clone an
//! empty data directory from the primary with `pg_basebackup`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use pgfm_core::DataDirState;

use crate::datadir;
use crate::probe::{self, Target};
use crate::run_as::OsUser;

/// Everything needed to run one node's PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub node_name: String,
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub listen_addresses: String,
    pub socket_dir: Option<PathBuf>,
    pub os_user: OsUser,
    pub superuser: String,
    pub replication_user: String,
    pub passfile: Option<PathBuf>,
    pub log_file: PathBuf,
    pub start_timeout: Duration,
    pub probe_timeout: Duration,
}

/// The server a standby streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// The file pgfm owns inside the data directory, included from `postgresql.conf`.
pub const MANAGED_CONF: &str = "pgfm.conf";

pub struct Postgres {
    pub settings: PostgresSettings,
}

/// A replication slot name for a node: lower case, `[a-z0-9_]`.
pub fn slot_name(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq keyword value, quoted when it needs to be.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\']) {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

impl Postgres {
    pub fn new(settings: PostgresSettings) -> Postgres {
        Postgres { settings }
    }

    pub fn data_dir_state(&self) -> Result<DataDirState, String> {
        datadir::inspect_data_dir(&self.settings.data_dir)
    }

    pub fn running_pid(&self) -> Option<i32> {
        datadir::running_postmaster(&self.settings.data_dir)
    }

    /// How the agent reaches its own server for probes.
    pub fn probe_target(&self) -> Target {
        Target {
            host: self.settings.host.clone(),
            port: self.settings.port,
            user: self.settings.superuser.clone(),
            passfile: self.settings.passfile.clone(),
            timeout: self.settings.probe_timeout,
        }
    }

    /// The settings pgfm owns. Passwords never appear here: `primary_conninfo` names the
    /// passfile instead.
    pub fn render_managed_conf(&self, upstream: Option<&Upstream>) -> String {
        let s = &self.settings;
        let mut lines = vec![
            "# Written by the pgfm agent at every start; edits here are lost.".to_string(),
            "# Put your own settings in postgresql.conf.".to_string(),
            format!("listen_addresses = {}", quote(&s.listen_addresses)),
            format!("port = {}", s.port),
            "wal_level = replica".to_string(),
            "hot_standby = on".to_string(),
            "wal_log_hints = on".to_string(),
            "max_wal_senders = 10".to_string(),
            "max_replication_slots = 10".to_string(),
            "wal_keep_size = '512MB'".to_string(),
            "hot_standby_feedback = on".to_string(),
            format!("cluster_name = {}", quote(&s.node_name)),
        ];
        if let Some(dir) = &s.socket_dir {
            lines.push(format!(
                "unix_socket_directories = {}",
                quote(&dir.display().to_string())
            ));
        }
        if let Some(up) = upstream {
            let mut conninfo = vec![
                format!("host={}", conninfo_value(&up.host)),
                format!("port={}", up.port),
                format!("user={}", conninfo_value(&s.replication_user)),
                format!("application_name={}", conninfo_value(&s.node_name)),
                "connect_timeout=2".to_string(),
            ];
            if let Some(pf) = &s.passfile {
                conninfo.push(format!(
                    "passfile={}",
                    conninfo_value(&pf.display().to_string())
                ));
            }
            lines.push(format!("primary_conninfo = {}", quote(&conninfo.join(" "))));
            lines.push(format!(
                "primary_slot_name = {}",
                quote(&slot_name(&s.node_name))
            ));
            lines.push("recovery_target_timeline = 'latest'".to_string());
        }
        lines.join("\n") + "\n"
    }

    /// Write `pgfm.conf`, make sure `postgresql.conf` includes it, and write or remove
    /// `standby.signal` (invariant 4: a node is a standby unless told to be the primary).
    pub fn prepare(&self, upstream: Option<&Upstream>) -> anyhow::Result<()> {
        let s = &self.settings;
        let user = &s.os_user;
        let conf = s.data_dir.join("postgresql.conf");
        let current = std::fs::read_to_string(&conf)
            .with_context(|| format!("reading {}", conf.display()))?;
        let include = format!("include_if_exists = '{MANAGED_CONF}'");
        if !current.lines().any(|l| l.trim() == include) {
            let updated = format!("{}\n# Added by pgfm.\n{include}\n", current.trim_end());
            user.write_file(&conf, &updated, 0o600)
                .with_context(|| format!("writing {}", conf.display()))?;
        }
        let managed = s.data_dir.join(MANAGED_CONF);
        user.write_file(&managed, &self.render_managed_conf(upstream), 0o600)
            .with_context(|| format!("writing {}", managed.display()))?;
        let signal = s.data_dir.join("standby.signal");
        match upstream {
            Some(_) => user
                .write_file(&signal, "", 0o600)
                .with_context(|| format!("writing {}", signal.display()))?,
            None => match std::fs::remove_file(&signal) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", signal.display())),
            },
        }
        Ok(())
    }

    /// Start the postmaster as this agent's child (as `os_user`, in its own process group so
    /// that a terminal's Ctrl-C aimed at the agent does not reach it), and wait until it
    /// accepts connections. Returns the postmaster's pid.
    pub async fn start(&self, upstream: Option<&Upstream>) -> anyhow::Result<u32> {
        let s = &self.settings;
        if let Some(pid) = self.running_pid() {
            bail!(
                "a postmaster (pid {pid}) is already running on {}",
                s.data_dir.display()
            );
        }
        self.prepare(upstream)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log_file)
            .with_context(|| format!("opening the PostgreSQL log {}", s.log_file.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let mut child = s
            .os_user
            .command(s.bin_dir.join("postgres"))
            .arg("-D")
            .arg(&s.data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .with_context(|| format!("starting {}", s.bin_dir.join("postgres").display()))?;
        let pid = child.id().unwrap_or_default();
        let (exited_tx, mut exited_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Reap the postmaster whenever it ends, so that it never lingers as a zombie.
            let status = child.wait().await;
            tracing::warn!(pid, ?status, "postmaster exited");
            let _ = exited_tx.send(status.map(|s| s.to_string()).unwrap_or_default());
        });
        let deadline = Instant::now() + s.start_timeout;
        loop {
            if let Ok(status) = exited_rx.try_recv() {
                bail!(
                    "postmaster exited during start-up ({status}); see {}",
                    s.log_file.display()
                );
            }
            match datadir::postmaster_status(&s.data_dir).as_deref() {
                Some("ready") | Some("standby") => return Ok(pid),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL did not accept connections within {:?}; see {}",
                    s.start_timeout,
                    s.log_file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop the server with `pg_ctl stop -m MODE` (`fast` or `immediate`).
    pub async fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let s = &self.settings;
        if self.running_pid().is_none() {
            return Ok(());
        }
        let output = s
            .os_user
            .command(s.bin_dir.join("pg_ctl"))
            .args(["stop", "-w", "-t", "60", "-m", mode, "-D"])
            .arg(&s.data_dir)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running pg_ctl stop")?;
        if !output.status.success() && self.running_pid().is_some() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Make sure `upstream` has this node's replication slot, then fill the empty data
    /// directory with a base backup of it. Idempotent: the slot is created only when absent
    /// and pg_basebackup removes what it wrote when it fails.
    pub async fn clone_from(&self, upstream: &Upstream) -> anyhow::Result<()> {
        let s = &self.settings;
        let slot = slot_name(&s.node_name);
        let target = Target {
            host: upstream.host.clone(),
            port: upstream.port,
            user: s.superuser.clone(),
            passfile: s.passfile.clone(),
            timeout: s.probe_timeout,
        };
        let client = probe::connect(&target).await.map_err(|e| {
            anyhow::anyhow!("connecting to {} to create slot {slot}: {e}", upstream.name)
        })?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1) WHERE NOT EXISTS \
                 (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "creating slot {slot} on {}: {}",
                    upstream.name,
                    probe::describe(&e)
                )
            })?;
        drop(client);

        s.os_user
            .make_private_dir(&s.data_dir)
            .with_context(|| format!("creating data_dir {}", s.data_dir.display()))?;
        let mut cmd = s.os_user.command(s.bin_dir.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&s.data_dir)
            .args(["-h", &upstream.host, "-p", &upstream.port.to_string()])
            .args(["-U", &s.replication_user, "-S", &slot])
            .args(["-X", "stream", "-c", "fast", "--no-password"])
            .env("PGAPPNAME", &s.node_name)
            .stdin(Stdio::null());
        if let Some(pf) = &s.passfile {
            cmd.env("PGPASSFILE", pf);
        }
        let output = cmd.output().await.context("running pg_basebackup")?;
        if !output.status.success() {
            bail!(
                "pg_basebackup from {} failed: {}",
                upstream.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Run `initdb` on `data_dir` as `user` (the lab's first node), with checksums so that
/// pg_rewind works, and `superuser` with the password in `pwfile`.
pub async fn initdb(
    bin_dir: &Path,
    data_dir: &Path,
    user: &OsUser,
    superuser: &str,
    pwfile: &Path,
) -> anyhow::Result<()> {
    user.make_private_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let output = user
        .command(bin_dir.join("initdb"))
        .arg("-D")
        .arg(data_dir)
        .args(["-U", superuser, "--auth=scram-sha-256", "--data-checksums"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null())
        .output()
        .await
        .context("running initdb")?;
    if !output.status.success() {
        bail!(
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Run SQL in single-user mode on a stopped cluster (the lab uses it to create the
/// replication role before any agent starts).
pub async fn single_user_sql(
    bin_dir: &Path,
    data_dir: &Path,
    user: &OsUser,
    sql: &str,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = user
        .command(bin_dir.join("postgres"))
        .args(["--single", "-j", "-D"])
        .arg(data_dir)
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting postgres --single")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(sql.as_bytes())
            .await
            .context("writing SQL")?;
    }
    let output = child
        .wait_with_output()
        .await
        .context("waiting for postgres --single")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stderr.contains("ERROR") {
        bail!("postgres --single failed: {}", stderr.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_valid_identifiers() {
        assert_eq!(slot_name("pg1"), "pg1");
        assert_eq!(slot_name("DB-East.2"), "db_east_2");
    }

    #[test]
    fn conninfo_values_are_quoted_when_needed() {
        assert_eq!(conninfo_value("127.0.0.1"), "127.0.0.1");
        assert_eq!(conninfo_value("/tmp/my dir/pgpass"), "'/tmp/my dir/pgpass'");
        assert_eq!(conninfo_value("it's"), "'it\\'s'");
    }
}
