//! Controlling a node's PostgreSQL: render the settings pgfm owns (`pgfm.conf`), write or
//! remove `standby.signal`, start the postmaster as the agent's child, stop it, and clone an
//! empty data directory from the primary with `pg_basebackup`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use pgfm_core::{DataDirState, Lsn, SyncRule, Timeline};

pub use crate::initdb::{initdb, single_user_sql};

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
    /// The node's TLS files: the server runs with `ssl = on`, and every connection pgfm
    /// makes to a PostgreSQL is verify-full against the cluster CA. None: plain TCP.
    pub ssl: Option<crate::ssl::SslFiles>,
}

/// The server a standby streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Stream (and clone) with this node's own replication slot on it
    /// (`pgfm_core::decide::slot_of`): from the primary, unless the node is a cascading
    /// standby.
    pub with_slot: bool,
}

/// How PostgreSQL is started.
#[derive(Debug, Clone, Copy)]
pub enum StartAs<'a> {
    /// The primary: no `standby.signal`.
    Primary,
    /// A standby streaming from the upstream.
    Standby(&'a Upstream),
    /// A standby with no upstream, to be promoted: a directory whose recovery had not
    /// ended (`datadir::recovery_unfinished`) ends it only through a promotion, on a new
    /// timeline.
    ToPromote,
}

impl<'a> StartAs<'a> {
    /// The server it streams from, as a standby of one.
    pub fn upstream(self) -> Option<&'a Upstream> {
        match self {
            StartAs::Standby(upstream) => Some(upstream),
            StartAs::Primary | StartAs::ToPromote => None,
        }
    }
}

/// The file pgfm owns inside the data directory, included from `postgresql.conf`.
pub const MANAGED_CONF: &str = "pgfm.conf";
/// `synchronous_standby_names`, written by the primary's agent while it runs and removed
/// at every start (a node starts asynchronous; its agent, as primary, names the standbys).
pub const SYNC_CONF: &str = "pgfm-sync.conf";
/// The line of `pgfm.conf` that says which parameters it was written with
/// (`pgfm_core::parameters::digest`, in hex).
pub const PARAMETERS_LINE: &str = "# parameters ";

pub struct Postgres {
    pub settings: PostgresSettings,
    /// `start_timeout` and `probe_timeout` in force: the settings' at first, then the
    /// cluster's (`Database::set_timeouts`).
    timeouts: std::sync::Mutex<(Duration, Duration)>,
    /// Notified when a postmaster this process started exits (it is its parent, so it
    /// learns at once).
    exited: std::sync::Arc<tokio::sync::Notify>,
    /// The cluster's PostgreSQL parameters for this node (`Database::set_parameters`),
    /// written into `pgfm.conf` at every start and by `write_parameters`.
    parameters: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// A replication slot name for a node: lower case, `[a-z0-9_]`.
pub fn slot_name(node: &str) -> String {
    pgfm_core::decide::slot_for(node)
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

/// How a switchover's stop went (`Postgres::stop_for_handover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOverStop {
    /// The end of WAL after a clean shutdown; the last checkpoint otherwise.
    pub final_lsn: Lsn,
    pub clean: bool,
}

impl Postgres {
    pub fn new(settings: PostgresSettings) -> Postgres {
        Postgres {
            timeouts: std::sync::Mutex::new((settings.start_timeout, settings.probe_timeout)),
            settings,
            exited: Default::default(),
            parameters: Default::default(),
        }
    }

    /// The parameters `pgfm.conf` is written with from now on.
    pub fn set_parameters(&self, parameters: std::collections::BTreeMap<String, String>) {
        *self.parameters.lock().unwrap_or_else(|e| e.into_inner()) = parameters;
    }

    /// Write `pgfm.conf` again with the parameters in force (its standby settings
    /// pointing at `upstream`), and have the running server reload it.
    pub async fn write_parameters(&self, upstream: Option<&Upstream>) -> anyhow::Result<()> {
        let s = &self.settings;
        let managed = s.data_dir.join(MANAGED_CONF);
        s.os_user
            .write_file(&managed, &self.render_managed_conf(upstream), 0o600)
            .with_context(|| format!("writing {}", managed.display()))?;
        if self.running_pid().is_some() {
            self.reload().await?;
        }
        Ok(())
    }

    /// How long a start (crash recovery included) may take.
    pub fn start_timeout(&self) -> Duration {
        self.timeouts.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// How long a connection to a server may take to answer.
    pub fn probe_timeout(&self) -> Duration {
        self.timeouts.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// The cluster's `timing.start_timeout` and `timing.probe_timeout`, from now on.
    pub fn set_timeouts(&self, start: Duration, probe: Duration) {
        *self.timeouts.lock().unwrap_or_else(|e| e.into_inner()) = (start, probe);
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
            timeout: self.probe_timeout(),
            ssl_root: self.settings.ssl.as_ref().map(|f| f.ca.clone()),
        }
    }

    /// Install the node's TLS files for the server and the tools run as its OS user (when
    /// TLS is on).
    fn install_ssl(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        if let Some(files) = &s.ssl {
            crate::ssl::install(files, &s.data_dir, &s.os_user)?;
        }
        Ok(())
    }

    /// Certificates rotated on disk reach the running server: its copies are refreshed and,
    /// when one changed, it reloads (`pg_reload_conf()`: PostgreSQL rereads its TLS files;
    /// if they are unusable it keeps the ones it has). Whether it was told to.
    pub async fn refresh_ssl(&self) -> anyhow::Result<bool> {
        let s = &self.settings;
        let Some(files) = &s.ssl else {
            return Ok(false);
        };
        if self.running_pid().is_none() || !crate::ssl::install(files, &s.data_dir, &s.os_user)? {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    /// The libpq keywords that make a connection of a tool run as the OS user verified
    /// (none when TLS is off).
    fn ssl_conninfo(&self) -> Vec<String> {
        let s = &self.settings;
        s.ssl
            .iter()
            .flat_map(|_| crate::ssl::conninfo(&s.data_dir))
            .map(|(k, v)| format!("{k}={}", conninfo_value(&v)))
            .collect()
    }

    /// The settings pgfm owns. Passwords never appear here: `primary_conninfo` names the
    /// passfile instead.
    pub fn render_managed_conf(&self, upstream: Option<&Upstream>) -> String {
        let s = &self.settings;
        let parameters = self
            .parameters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut lines = vec![
            format!(
                "{PARAMETERS_LINE}{:016x}",
                pgfm_core::parameters::digest(&parameters)
            ),
            "# Written by the pgfm agent at every start and when the cluster's".to_string(),
            "# [postgresql.parameters] change (pgfm edit-config); edits here are lost.".to_string(),
            "# Put your own settings in postgresql.conf.".to_string(),
            // Defaults an operator may change through [postgresql.parameters] (below).
            "max_wal_senders = 10".to_string(),
            "max_replication_slots = 10".to_string(),
            "wal_keep_size = '512MB'".to_string(),
            // Retry streaming quickly after a switch of primary (the default waits 5 s).
            "wal_retrieve_retry_interval = '500ms'".to_string(),
        ];
        lines.extend(
            parameters
                .iter()
                .map(|(name, value)| format!("{name} = {}", quote(value))),
        );
        lines.extend([
            // pgfm's own, after the parameters (the last one in a file wins).
            format!("listen_addresses = {}", quote(&s.listen_addresses)),
            format!("port = {}", s.port),
            "wal_level = replica".to_string(),
            "hot_standby = on".to_string(),
            "wal_log_hints = on".to_string(),
            "hot_standby_feedback = on".to_string(),
            format!("cluster_name = {}", quote(&s.node_name)),
            format!("include_if_exists = {}", quote(SYNC_CONF)),
        ]);
        if let Some(dir) = &s.socket_dir {
            lines.push(format!(
                "unix_socket_directories = {}",
                quote(&dir.display().to_string())
            ));
        }
        if s.ssl.is_some() {
            for (key, value) in crate::ssl::server_settings(&s.data_dir) {
                lines.push(format!("{key} = {}", quote(&value)));
            }
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
            conninfo.extend(self.ssl_conninfo());
            lines.push(format!("primary_conninfo = {}", quote(&conninfo.join(" "))));
            if up.with_slot {
                lines.push(format!(
                    "primary_slot_name = {}",
                    quote(&slot_name(&s.node_name))
                ));
            }
        }
        // The default since PostgreSQL 12, written whatever the role: a restart-only
        // parameter left out of a promoted standby's rewritten file would show as "pending
        // restart" on the primary.
        lines.push("recovery_target_timeline = 'latest'".to_string());
        lines.join("\n") + "\n"
    }

    /// Write `pgfm.conf`, make sure `postgresql.conf` includes it, and write or remove
    /// `standby.signal` (invariant 4: a node is a standby unless told to be the primary).
    /// A standby starts without the history files a failed promotion reserved
    /// (`datadir::reserved_histories`).
    pub fn prepare(&self, how: StartAs<'_>) -> anyhow::Result<()> {
        let upstream = how.upstream();
        let s = &self.settings;
        self.install_ssl()?;
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
        if !matches!(how, StartAs::Primary) {
            // A standby starts asynchronous; as primary its agent names the standbys.
            remove_if_present(&s.data_dir.join(SYNC_CONF))?;
        }
        let signal = s.data_dir.join("standby.signal");
        if let StartAs::Primary = how {
            remove_if_present(&signal)?;
        } else {
            user.write_file(&signal, "", 0o600)
                .with_context(|| format!("writing {}", signal.display()))?;
            let pg_wal = s.data_dir.join("pg_wal");
            let reserved = datadir::reserved_histories(&pg_wal)
                .with_context(|| format!("reading {}", pg_wal.display()))?;
            for path in reserved {
                remove_if_present(&path)?;
            }
        }
        if let StartAs::Primary | StartAs::ToPromote = how {
            // The committed primary starts as it is: nothing to rewind against.
            remove_if_present(&s.data_dir.join(datadir::REWIND_MARKER))?;
        }
        Ok(())
    }

    /// Switchover: shut down cleanly (fast: sessions are ended, the shutdown checkpoint is
    /// written and streamed to the standbys), mark the directory a standby, and return
    /// where the WAL ends (the shutdown checkpoint's location). A clean shutdown waits for
    /// the walsenders to pass the final WAL on: a standby that does not answer would hold
    /// it up for `wal_sender_timeout`, so after `limit` it is stopped at once instead
    /// (invariant 9). The end of WAL is known whenever the shutdown checkpoint was written
    /// (`pg_controldata` says "shut down"; the target may still lack it, and the
    /// coordinator then rolls back); otherwise nothing is handed over — unless `force`
    /// (`pgfm promote --force`): then the directory is marked for a rewind (it may hold WAL
    /// the target never gets) and the stop reported unclean, its last checkpoint standing
    /// in for the unknown end.
    pub async fn stop_for_handover(
        &self,
        limit: Duration,
        force: bool,
    ) -> anyhow::Result<HandOverStop> {
        let s = &self.settings;
        let clean = self.stop_within("fast", limit).await;
        if clean.is_err() {
            self.stop("immediate").await?;
        }
        // A standby's directory from now on: it starts again as the primary only if the
        // switchover is rolled back and the committed state says so (invariant 4).
        s.os_user
            .write_file(&s.data_dir.join("standby.signal"), "", 0o600)
            .context("writing standby.signal")?;
        // The final position is the end of WAL only after a clean shutdown; a directory
        // left by a crash or an immediate stop (a retried hand-over) has WAL past its last
        // checkpoint, which a promotion resting on it would lose.
        if let Err(e) = &clean {
            // Typically the walsenders wait for a standby that does not answer, after the
            // shutdown checkpoint was written: the end of WAL is still known (below).
            tracing::warn!(
                "the clean shutdown did not finish within {limit:?} ({e:#}): stopped immediately"
            );
        }
        let (state, final_lsn) = self.control_data().await?;
        let why = (state != "shut down").then(|| {
            format!(
                "PostgreSQL was not shut down cleanly (pg_controldata: {state:?}): its final WAL \
                 position is not known"
            )
        });
        match why {
            None => Ok(HandOverStop {
                final_lsn,
                clean: true,
            }),
            Some(why) if force => {
                self.mark_for_rewind()?;
                tracing::warn!("{why}; handing over anyway (pgfm promote --force)");
                Ok(HandOverStop {
                    final_lsn,
                    clean: false,
                })
            }
            Some(why) => bail!("{why}; nothing is handed over"),
        }
    }

    /// `Database cluster state` and `Latest checkpoint location` from `pg_controldata` (the
    /// server must be stopped for the checkpoint to be the end of WAL).
    async fn control_data(&self) -> anyhow::Result<(String, Lsn)> {
        let s = &self.settings;
        let output = s
            .os_user
            .command(s.bin_dir.join("pg_controldata"))
            .arg("-D")
            .arg(&s.data_dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .await
            .context("running pg_controldata")?;
        if !output.status.success() {
            bail!(
                "pg_controldata failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("Latest checkpoint location:"))
            .context("pg_controldata printed no latest checkpoint location")?;
        let state = text
            .lines()
            .find_map(|l| l.strip_prefix("Database cluster state:"))
            .context("pg_controldata printed no cluster state")?;
        let lsn = line
            .trim()
            .parse::<Lsn>()
            .map_err(|e| anyhow::anyhow!("pg_controldata: {e}"))?;
        Ok((state.trim().to_string(), lsn))
    }

    /// Completes when a postmaster started by this process exits.
    pub async fn exited(&self) {
        self.exited.notified().await
    }

    /// Whether PostgreSQL runs here and would take writes (no `standby.signal`).
    pub fn writable(&self) -> bool {
        self.running_pid().is_some() && !self.settings.data_dir.join("standby.signal").exists()
    }

    /// Stop PostgreSQL at once (immediate shutdown: every session is cut, nothing more is
    /// committed), then mark the data directory so that it only runs again as a standby
    /// after a rewind.
    ///
    /// Invariant 10: the fence leaves no process of the old postmaster alive, whatever its
    /// process group (backends call setsid(), and one whose postmaster died can still
    /// commit). Its processes are named (pid and start time) before any signal; SIGQUIT
    /// asks for an immediate shutdown; a postmaster still there after 2 s, or stopped
    /// (SIGSTOP: a SIGQUIT stays pending, a SIGKILL does not), is frozen with its whole tree
    /// and killed; then every process named is SIGKILLed if still alive. An error when one
    /// survives that, after the data directory is marked.
    pub async fn fence(&self) -> anyhow::Result<()> {
        use crate::procs;
        use nix::sys::signal::Signal;
        let s = &self.settings;
        let mut left = Vec::new();
        if let Some(root) = self.running_pid().and_then(procs::identify) {
            // Named now: once the postmaster is gone no parent pid leads to them.
            let mut tree = procs::descendants(root);
            root.signal(Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(2);
            while root.alive() && !root.stopped() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if root.alive() {
                // Hung or stopped: freeze the tree so that nothing forks, then kill it.
                let frozen = tokio::task::spawn_blocking(move || procs::freeze_tree(root))
                    .await
                    .unwrap_or_default();
                tree.extend(frozen);
            }
            tree.push(root);
            tree.sort();
            tree.dedup();
            for p in &tree {
                p.signal(Signal::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                left = procs::survivors(&tree);
                if left.is_empty() || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let user = &s.os_user;
        user.write_file(&s.data_dir.join("standby.signal"), "", 0o600)
            .context("writing standby.signal")?;
        user.write_file(
            &s.data_dir.join(datadir::REWIND_MARKER),
            "fenced by pgfm\n",
            0o600,
        )
        .context("writing the rewind marker")?;
        if !left.is_empty() {
            let pids: Vec<String> = left.iter().map(|p| p.to_string()).collect();
            bail!(
                "processes of the fenced postmaster survived SIGKILL: pids {}",
                pids.join(", ")
            );
        }
        Ok(())
    }

    /// Synchronous replication on the running primary: commits wait as `rule` says. Returns
    /// the WAL position once the new setting is in force: every commit acknowledged under
    /// the old one is before it.
    pub async fn set_sync_standbys(&self, rule: &SyncRule) -> anyhow::Result<Lsn> {
        let value = self.write_sync_conf(rule)?;
        let client = self.reload().await?;
        // The postmaster rereads the file, then each process (the walsenders that release
        // waiting commits among them) on its next wake-up: wait until a new session sees
        // the value, and a little longer for the walsenders.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let fresh = probe::connect(&self.probe_target())
                .await
                .map_err(|e| anyhow::anyhow!("connecting to check the reload: {e}"))?;
            let seen: String = fresh
                .query_one("SHOW synchronous_standby_names", &[])
                .await
                .map_err(|e| anyhow::anyhow!("reading the setting: {}", probe::describe(&e)))?
                .get(0);
            if seen == value {
                break;
            }
            if Instant::now() > deadline {
                bail!("synchronous_standby_names is still {seen:?} 10 s after the reload");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| anyhow::anyhow!("reading the WAL position: {}", probe::describe(&e)))?
            .get(0);
        lsn.parse::<Lsn>()
            .map_err(|e| anyhow::anyhow!("pg_current_wal_lsn(): {e}"))
    }

    /// Write `synchronous_standby_names` for `rule` for the next start or reload; the value
    /// written.
    pub fn write_sync_conf(&self, rule: &SyncRule) -> anyhow::Result<String> {
        let s = &self.settings;
        let value = probe::sync_setting(rule);
        let path = s.data_dir.join(SYNC_CONF);
        let text = format!(
            "# Written by the pgfm agent of the primary; removed when it starts as a standby.\n\
             synchronous_standby_names = {}\n",
            quote(&value)
        );
        s.os_user
            .write_file(&path, &text, 0o600)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(value)
    }

    /// Replay all WAL received, then promote (pg_promote, waiting for it to finish) to
    /// timeline `at_least` or a later one, and rewrite pgfm.conf without
    /// `primary_conninfo`.
    pub async fn promote(&self, at_least: Timeline) -> anyhow::Result<()> {
        let client = probe::connect(&self.probe_target())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to promote: {e}"))?;
        // Invariant 5: the candidate replays everything it received before promoting.
        let deadline = Instant::now() + self.start_timeout();
        loop {
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn() >= \
                     pg_last_wal_receive_lsn(), true)",
                    &[],
                )
                .await
                .map_err(|e| anyhow::anyhow!("reading replay progress: {}", probe::describe(&e)))?;
            let (in_recovery, caught_up): (bool, bool) = (row.get(0), row.get(1));
            if !in_recovery {
                return self.write_managed_conf(None);
            }
            if caught_up {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "replay did not catch up with the WAL received within {:?}",
                    self.start_timeout()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.reserve_timelines(at_least)?;
        // pg_promote(wait) looks every 100 ms; the writers wait for every one of them.
        let signalled: bool = client
            .query_one("SELECT pg_promote(false)", &[])
            .await
            .map_err(|e| anyhow::anyhow!("pg_promote: {}", probe::describe(&e)))?
            .get(0);
        if !signalled {
            bail!("pg_promote could not signal the postmaster");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| anyhow::anyhow!("waiting for the promotion: {}", probe::describe(&e)))?
                .get(0);
            if !in_recovery {
                return self.write_managed_conf(None);
            }
            if Instant::now() > deadline {
                bail!("the promotion did not finish within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Write the history files that make PostgreSQL's promotion start timeline `at_least`
    /// or a later one (`datadir::missing_histories`).
    fn reserve_timelines(&self, at_least: Timeline) -> anyhow::Result<()> {
        let pg_wal = self.settings.data_dir.join("pg_wal");
        let missing = datadir::missing_histories(&pg_wal, at_least)
            .with_context(|| format!("reading {}", pg_wal.display()))?;
        for timeline in &missing {
            let path = pg_wal.join(datadir::history_file(*timeline));
            self.settings
                .os_user
                .write_file(&path, &datadir::reserved_history(*timeline), 0o600)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|t| t.to_string()).collect();
            tracing::info!(
                "timeline(s) {} may have been started by other nodes: wrote their history \
                 files so that this promotion starts timeline {at_least} or a later one",
                list.join(", ")
            );
        }
        Ok(())
    }

    fn write_managed_conf(&self, upstream: Option<&Upstream>) -> anyhow::Result<()> {
        let managed = self.settings.data_dir.join(MANAGED_CONF);
        self.settings
            .os_user
            .write_file(&managed, &self.render_managed_conf(upstream), 0o600)
            .with_context(|| format!("writing {}", managed.display()))
    }

    /// Point the running standby at `upstream`: rewrite `primary_conninfo` and reload
    /// (PostgreSQL 13+ reconnects its WAL receiver without a restart).
    pub async fn follow(&self, upstream: &Upstream) -> anyhow::Result<()> {
        self.prepare(StartAs::Standby(upstream))?;
        self.reload().await.map(|_| ())
    }

    /// `pg_reload_conf()` on the running server; the connection it used.
    async fn reload(&self) -> anyhow::Result<tokio_postgres::Client> {
        let client = probe::connect(&self.probe_target())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to reload: {e}"))?;
        client
            .simple_query("SELECT pg_reload_conf()")
            .await
            .map_err(|e| anyhow::anyhow!("pg_reload_conf(): {}", probe::describe(&e)))?;
        Ok(client)
    }

    /// Create the physical replication slots that are missing on this (primary) server.
    pub async fn ensure_slots(&self, slots: &[String]) -> anyhow::Result<()> {
        let client = probe::connect(&self.probe_target())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to create slots: {e}"))?;
        for slot in slots {
            create_slot(&client, slot).await?;
        }
        Ok(())
    }

    /// Drop replication slots on this (primary) server (those of departed nodes).
    pub async fn drop_slots(&self, slots: &[String]) -> anyhow::Result<()> {
        let client = probe::connect(&self.probe_target())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to drop slots: {e}"))?;
        for slot in slots {
            // The departed node may still stream: end its walsender, then drop the slot once
            // it is released (a moment later).
            client
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active",
                    &[slot],
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!("ending the walsender of {slot}: {}", probe::describe(&e))
                })?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let dropped = client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE slot_name = $1 AND NOT active",
                        &[slot],
                    )
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("dropping slot {slot}: {}", probe::describe(&e))
                    })?;
                if dropped > 0 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Rewind this stopped former primary against `upstream`, then write its standby
    /// settings. Forces a checkpoint on `upstream` first: right after a promotion, before
    /// that checkpoint, pg_rewind would say "no rewind required" and do nothing.
    pub async fn rewind(&self, upstream: &Upstream) -> anyhow::Result<()> {
        let s = &self.settings;
        let target = self.target_of(upstream);
        let client = probe::connect(&target)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {} to checkpoint: {e}", upstream.name))?;
        client.simple_query("CHECKPOINT").await.map_err(|e| {
            anyhow::anyhow!("CHECKPOINT on {}: {}", upstream.name, probe::describe(&e))
        })?;
        drop(client);
        let mut source = vec![
            format!("host={}", conninfo_value(&upstream.host)),
            format!("port={}", upstream.port),
            format!("user={}", conninfo_value(&s.superuser)),
            "dbname=postgres".to_string(),
        ];
        if let Some(pf) = &s.passfile {
            source.push(format!(
                "passfile={}",
                conninfo_value(&pf.display().to_string())
            ));
        }
        self.install_ssl()?;
        source.extend(self.ssl_conninfo());
        // The directory is a former primary's until the rewind has succeeded: the marker says
        // so through every step, so that a failed rewind (whatever it left) is never taken
        // for a standby's directory and started as one (it is rewound again or re-cloned).
        self.mark_for_rewind()?;
        // A fenced primary stopped with an immediate shutdown: pg_rewind first runs crash
        // recovery in single-user mode, which refuses to start with standby.signal. The
        // marker still says what the directory is while the signal is away.
        let signal = s.data_dir.join("standby.signal");
        remove_if_present(&signal)?;
        let output = s
            .os_user
            .command(s.bin_dir.join("pg_rewind"))
            .arg("-D")
            .arg(&s.data_dir)
            .arg(format!("--source-server={}", source.join(" ")))
            .stdin(Stdio::null())
            .output()
            .await
            .context("running pg_rewind");
        let output = match output {
            Ok(output) if output.status.success() => output,
            other => {
                s.os_user
                    .write_file(&signal, "", 0o600)
                    .context("writing standby.signal back")?;
                // pg_rewind may have removed the marker with the files it replaced.
                self.mark_for_rewind()?;
                other?
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let errors: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| l.contains("error") || l.contains("FATAL"))
                .collect();
            let last = match errors.as_slice() {
                [] => stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output")
                    .to_string(),
                lines => lines.join("; "),
            };
            bail!("pg_rewind failed: {}", last.trim());
        }
        // pg_rewind copied the source's configuration files: put this node's back.
        self.prepare(StartAs::Standby(upstream))?;
        remove_if_present(&s.data_dir.join(datadir::REWIND_MARKER))?;
        Ok(())
    }

    /// Mark the data directory as one that must be rewound (or re-cloned) before it runs
    /// again: a former primary's, or a standby's that diverged from the primary.
    pub fn mark_for_rewind(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        s.os_user
            .write_file(
                &s.data_dir.join(datadir::REWIND_MARKER),
                "must be rewound before it runs again (pgfm)\n",
                0o600,
            )
            .context("writing the rewind marker")
    }

    /// A standby holding WAL the primary's timeline lacks: stop it (fast) and mark it for a
    /// rewind, so that it rejoins as a former primary does.
    pub async fn stop_to_rewind(&self) -> anyhow::Result<()> {
        self.stop("fast").await?;
        let s = &self.settings;
        s.os_user
            .write_file(&s.data_dir.join("standby.signal"), "", 0o600)
            .context("writing standby.signal")?;
        self.mark_for_rewind()
    }

    /// Move the data directory aside (keeping the previous copy only) and clone afresh.
    /// Refused, changing nothing, when the file system cannot hold the old copy and a new
    /// one of about the same size.
    pub async fn reclone(&self, upstream: &Upstream) -> anyhow::Result<()> {
        self.move_aside()?;
        self.clone_from(upstream).await
    }

    /// Move the stopped data directory aside, as `data_dir.pgfm-old` (the previous copy
    /// there is removed), leaving no data directory: the next clone fills a new one.
    /// Refused, changing nothing, when PostgreSQL runs, or when the file system cannot
    /// hold the old copy and a new one of about the same size.
    pub fn move_aside(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        if let Some(pid) = self.running_pid() {
            bail!(
                "a postmaster (pid {pid}) is running on {}: stop it before moving the \
                 directory aside",
                s.data_dir.display()
            );
        }
        let aside = PathBuf::from(format!("{}.pgfm-old", s.data_dir.display()));
        let needed = datadir::size_on_disk(&s.data_dir);
        let parent = s.data_dir.parent().unwrap_or(Path::new("/"));
        let stat = nix::sys::statvfs::statvfs(parent)
            .with_context(|| format!("reading the free space of {}", parent.display()))?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64
            + if aside.exists() {
                datadir::size_on_disk(&aside)
            } else {
                0
            };
        if free < needed {
            bail!(
                "not enough disk space to re-clone: {} holds {} MB and is kept aside, {} MB \
                 are free in {}; free some space (or remove {} yourself)",
                s.data_dir.display(),
                needed / 1_000_000,
                free / 1_000_000,
                parent.display(),
                s.data_dir.display()
            );
        }
        if aside.exists() {
            std::fs::remove_dir_all(&aside)
                .with_context(|| format!("removing {}", aside.display()))?;
        }
        std::fs::rename(&s.data_dir, &aside)
            .with_context(|| format!("moving {} aside", s.data_dir.display()))?;
        Ok(())
    }

    fn target_of(&self, upstream: &Upstream) -> Target {
        Target {
            host: upstream.host.clone(),
            port: upstream.port,
            user: self.settings.superuser.clone(),
            passfile: self.settings.passfile.clone(),
            timeout: self.probe_timeout(),
            ssl_root: self.settings.ssl.as_ref().map(|f| f.ca.clone()),
        }
    }

    /// Start the postmaster as this agent's child (as `os_user`, in its own process group so
    /// that a terminal's Ctrl-C aimed at the agent does not reach it), and wait until it
    /// accepts connections. Returns the postmaster's pid.
    pub async fn start(&self, how: StartAs<'_>) -> anyhow::Result<u32> {
        let s = &self.settings;
        if let Some(pid) = self.running_pid() {
            bail!(
                "a postmaster (pid {pid}) is already running on {}",
                s.data_dir.display()
            );
        }
        self.prepare(how)?;
        // The file of a server that died with its host: never taken for the new one's.
        let stale = datadir::pid_file(&s.data_dir);
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
        let exited = self.exited.clone();
        tokio::spawn(async move {
            // Reap the postmaster whenever it ends, so that it never lingers as a zombie.
            let status = child.wait().await;
            tracing::warn!(pid, ?status, "postmaster exited");
            exited.notify_one();
            let _ = exited_tx.send(status.map(|s| s.to_string()).unwrap_or_default());
        });
        let start_timeout = self.start_timeout();
        let deadline = Instant::now() + start_timeout;
        loop {
            if let Ok(status) = exited_rx.try_recv() {
                bail!(
                    "postmaster exited during start-up ({status}); see {}",
                    s.log_file.display()
                );
            }
            match datadir::postmaster_status(&s.data_dir, pid, stale.as_ref()).as_deref() {
                Some("ready") | Some("standby") => return Ok(pid),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL did not accept connections within {:?}; see {}",
                    start_timeout,
                    s.log_file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop the server with `pg_ctl stop -m MODE` (`fast` or `immediate`).
    pub async fn stop(&self, mode: &str) -> anyhow::Result<()> {
        self.stop_within(mode, Duration::from_secs(60)).await
    }

    /// `pg_ctl stop -m MODE`, waiting at most `limit` (whole seconds, at least one).
    pub async fn stop_within(&self, mode: &str, limit: Duration) -> anyhow::Result<()> {
        let s = &self.settings;
        if self.running_pid().is_none() {
            return Ok(());
        }
        let seconds = limit.as_secs().max(1).to_string();
        let output = s
            .os_user
            .command(s.bin_dir.join("pg_ctl"))
            .args(["stop", "-w", "-t", &seconds, "-m", mode, "-D"])
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

    /// Make sure `upstream` has this node's replication slot (when it streams with one),
    /// then fill the empty data directory with a base backup of it. Idempotent: the slot is
    /// created only when absent and pg_basebackup removes what it wrote when it fails.
    pub async fn clone_from(&self, upstream: &Upstream) -> anyhow::Result<()> {
        let s = &self.settings;
        let slot = slot_name(&s.node_name);
        if upstream.with_slot {
            let client = probe::connect(&self.target_of(upstream))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("connecting to {} to create slot {slot}: {e}", upstream.name)
                })?;
            create_slot(&client, &slot)
                .await
                .with_context(|| format!("on {}", upstream.name))?;
        }

        s.os_user
            .make_private_dir(&s.data_dir)
            .with_context(|| format!("creating data_dir {}", s.data_dir.display()))?;
        let mut cmd = s.os_user.command(s.bin_dir.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&s.data_dir)
            .args(["-h", &upstream.host, "-p", &upstream.port.to_string()])
            .args(["-U", &s.replication_user])
            .args(["-X", "stream", "-c", "fast", "--no-password"])
            .env("PGAPPNAME", &s.node_name)
            .stdin(Stdio::null());
        if upstream.with_slot {
            cmd.args(["-S", &slot]);
        }
        if let Some(pf) = &s.passfile {
            cmd.env("PGPASSFILE", pf);
        }
        if s.ssl.is_some() {
            self.install_ssl()?;
            let files = crate::ssl::installed(&s.data_dir);
            cmd.env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", &files.ca);
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

/// Remove `path`; already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

async fn create_slot(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<()> {
    client
        .execute(
            // Reserve WAL from now on: a node that rejoins later finds what it needs.
            "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS \
             (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating slot {slot}: {}", probe::describe(&e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With TLS on, the server serves it with the files beside its data directory, and a
    /// standby streams verify-full against the cluster CA: the settings say so.
    #[test]
    fn tls_on_means_ssl_on_and_verified_streaming() {
        let os_user = OsUser::current()
            .or_else(|_| OsUser::lookup("postgres"))
            .unwrap();
        let settings = |ssl| PostgresSettings {
            node_name: "pg2".into(),
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            data_dir: "/var/lib/postgresql/15/main".into(),
            host: "10.0.0.12".into(),
            port: 5432,
            listen_addresses: "10.0.0.12".into(),
            socket_dir: None,
            os_user: os_user.clone(),
            superuser: "postgres".into(),
            replication_user: "replicator".into(),
            passfile: None,
            log_file: "/var/lib/pgfm/postgres.log".into(),
            start_timeout: Duration::from_secs(20),
            probe_timeout: Duration::from_secs(1),
            ssl,
        };
        let upstream = Upstream {
            name: "pg1".into(),
            host: "10.0.0.11".into(),
            port: 5432,
            with_slot: true,
        };
        let files = crate::ssl::SslFiles {
            ca: "/etc/pgfm/ca.crt".into(),
            cert: "/etc/pgfm/node.crt".into(),
            key: "/etc/pgfm/node.key".into(),
        };
        let on = Postgres::new(settings(Some(files))).render_managed_conf(Some(&upstream));
        for line in [
            "ssl = 'on'",
            "ssl_cert_file = '/var/lib/postgresql/15/main.pgfm-tls/server.crt'",
            "ssl_key_file = '/var/lib/postgresql/15/main.pgfm-tls/server.key'",
            "ssl_ca_file = '/var/lib/postgresql/15/main.pgfm-tls/ca.crt'",
            "primary_conninfo = 'host=10.0.0.11 port=5432 user=replicator application_name=pg2 \
             connect_timeout=2 sslmode=verify-full \
             sslrootcert=/var/lib/postgresql/15/main.pgfm-tls/ca.crt'",
        ] {
            assert!(on.lines().any(|l| l == line), "{line}\n{on}");
        }
        let off = Postgres::new(settings(None)).render_managed_conf(Some(&upstream));
        assert!(!off.contains("ssl"), "{off}");
    }

    /// A start waits for its own postmaster's `postmaster.pid`, not the one a server that
    /// died with its host left in the data directory (saying `ready`). Chaos soak seed 1,
    /// run 6: the agent took that file for its new postmaster's and started two more.
    #[test]
    fn a_start_waits_for_its_own_postmaster_not_a_dead_ones_pid_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = std::env::temp_dir().join(format!("pgfm-start-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (bin, data) = (base.join("bin"), base.join("data"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("postgresql.conf"), "").unwrap();
        // The dead server's file: another pid, an older start, "ready".
        std::fs::write(
            data.join("postmaster.pid"),
            "999999\n/data\n1700000000\n5432\n/tmp\n*\n  1037   4980959\nready   \n",
        )
        .unwrap();
        // A postmaster that takes 300 ms to write its own file, then serves (sleeps).
        let postgres = bin.join("postgres");
        std::fs::write(
            &postgres,
            "#!/bin/sh\nsleep 0.3\nprintf '%s\\n%s\\n%s\\n5432\\n/tmp\\n*\\n  1 2\\nready   \\n' \
             $$ \"$2\" \"$(date +%s)\" > \"$2/postmaster.pid.new\"\n\
             mv \"$2/postmaster.pid.new\" \"$2/postmaster.pid\"\nexec sleep 30\n",
        )
        .unwrap();
        std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).unwrap();
        // As root (CI), the server runs as postgres, as in production.
        let os_user = OsUser::current()
            .or_else(|_| OsUser::lookup("postgres"))
            .unwrap();
        os_user.own(&data).unwrap();
        let pg = Postgres::new(PostgresSettings {
            node_name: "pg1".into(),
            bin_dir: bin,
            data_dir: data.clone(),
            host: "127.0.0.1".into(),
            port: 5432,
            listen_addresses: "127.0.0.1".into(),
            socket_dir: None,
            os_user,
            superuser: "postgres".into(),
            replication_user: "replicator".into(),
            passfile: None,
            log_file: base.join("postgres.log"),
            start_timeout: Duration::from_secs(20),
            probe_timeout: Duration::from_secs(1),
            ssl: None,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let pid = runtime.block_on(pg.start(StartAs::Primary)).unwrap();
        let took = started.elapsed();
        let file = datadir::pid_file(&data).unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert_eq!(file.pid, pid, "the start returned another postmaster's pid");
        assert!(
            took >= Duration::from_millis(300),
            "up after {took:?}: the dead server's file was read"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

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
