//! A new cluster from an empty data directory (the node chosen by `Command::ChooseInitdb`):
//! initdb into a directory beside `data_dir`, the replication role, `pg_hba.conf` for the
//! cluster's members, and only then the rename into place. `data_dir` is thus either empty
//! or a whole cluster, whatever moment the agent dies at; a half-made directory left by an
//! earlier attempt is moved aside and the step begins again.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};

use crate::control::{remove_if_present, Postgres};
use crate::passfile;
use crate::run_as::{write_private, OsUser};

/// How the cluster is made (`[bootstrap]`) and whom its `pg_hba.conf` lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitdbPlan {
    pub cluster: String,
    pub encoding: String,
    /// None: initdb's own choice (the agent's environment; `C` under systemd).
    pub locale: Option<String>,
    pub data_checksums: bool,
    /// Every member's host: probes and `pg_rewind` come from them as the superuser, and
    /// data nodes stream as the replication user.
    pub peers: Vec<HbaPeer>,
    /// The operator's own lines (`[bootstrap] pg_hba`), after pgfm's.
    pub extra_hba: Vec<String>,
}

/// A host of the cluster in `pg_hba.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaPeer {
    pub name: String,
    /// An IP address or a host name.
    pub host: String,
    /// A data node: it streams and clones, as the replication user.
    pub replication: bool,
}

/// The directory initdb works in, beside `data_dir` on the same file system.
pub fn work_dir(data_dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pgfm-initdb", data_dir.display()))
}

/// Where a half-made work directory is kept for a look (the latest only).
pub fn failed_dir(data_dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pgfm-initdb-failed", data_dir.display()))
}

/// Where a new cluster may be made: `data_dir` itself (not a symbolic link, not a mount
/// point: the cluster is renamed onto it from beside it) under a directory that exists
/// (pgfm creates `data_dir`, never the directories above it: a missing one is more likely
/// a volume not mounted or a typing mistake than a wish). Checked before initdb, so that a
/// place that can never work costs no initdb.
fn check_place(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .with_context(|| format!("data_dir {} has no parent directory", data_dir.display()))?;
    let above = std::fs::metadata(parent).map_err(|e| {
        anyhow::anyhow!(
            "{} (above data_dir) cannot be used: {e}; is its volume mounted? pgfm creates \
             data_dir but never the directories above it",
            parent.display()
        )
    })?;
    match std::fs::symlink_metadata(data_dir) {
        Ok(meta) if meta.file_type().is_symlink() => bail!(
            "data_dir {} is a symbolic link: set [postgres] data_dir to the directory it \
             points to",
            data_dir.display()
        ),
        Ok(meta) if meta.dev() != above.dev() => bail!(
            "data_dir {} is a mount point; PostgreSQL advises a directory below it: set \
             [postgres] data_dir = \"{}/data\"",
            data_dir.display(),
            data_dir.display()
        ),
        _ => Ok(()),
    }
}

/// `pg_hba.conf` of a new cluster: local connections by peer authentication, and for
/// each member's host exactly what pgfm needs from it, over TLS (`hostssl`) when TLS is
/// on, with scram-sha-256 — nothing wider; then the operator's lines.
pub fn render_hba(
    plan: &InitdbPlan,
    superuser: &str,
    replication_user: &str,
    node: &str,
    tls: bool,
) -> String {
    let kind = if tls { "hostssl" } else { "host" };
    let mut text = format!(
        "# pg_hba.conf of cluster {cluster}, written by pgfm on {node} when it initialised the\n\
         # cluster. pgfm does not change it afterwards: a node added later needs its lines here\n\
         # (and on every data node), then SELECT pg_reload_conf().\n\
         # TYPE   DATABASE     USER          ADDRESS              METHOD\n\
         local    all          all                                peer\n",
        cluster = plan.cluster,
    );
    let mut seen = Vec::new();
    for peer in &plan.peers {
        let address = hba_address(&peer.host);
        text.push_str(&format!("# {}\n", peer.name));
        let mut lines = vec![("all", superuser)];
        if peer.replication {
            lines.push(("replication", replication_user));
        }
        for (database, user) in lines {
            let line = format!(
                "{kind:<8} {database:<12} {user:<13} {address:<20} scram-sha-256\n",
                user = quote_name(user)
            );
            if !seen.contains(&line) {
                text.push_str(&line);
                seen.push(line);
            }
        }
    }
    if !plan.extra_hba.is_empty() {
        text.push_str("# [bootstrap] pg_hba\n");
        for line in &plan.extra_hba {
            text.push_str(line.trim());
            text.push('\n');
        }
    }
    text
}

/// An address as pg_hba.conf wants it: one host (`/32`, `/128`) or a host name.
fn hba_address(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => format!("{a}/32"),
        Ok(IpAddr::V6(a)) => format!("{a}/128"),
        Err(_) => host.to_string(),
    }
}

/// A role name in pg_hba.conf, always quoted: unquoted, `all`, `replication` and a few
/// others are keywords (`initialise` refuses a name holding a double quote).
fn quote_name(name: &str) -> String {
    format!("\"{name}\"")
}

/// `name` as an SQL identifier.
fn sql_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as an SQL string literal.
fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl Postgres {
    /// Initialise a new cluster into the empty data directory, as `plan` says: initdb (the
    /// superuser's password from the passfile), the replication role, `pg_hba.conf`, all in
    /// `work_dir`, then renamed onto `data_dir`. Any directory an earlier attempt left is
    /// moved to `failed_dir` first. The programs it runs die with the agent, so none goes on
    /// writing into a directory a retry has moved aside.
    pub async fn initialise(&self, plan: &InitdbPlan) -> anyhow::Result<()> {
        let s = &self.settings;
        let data_dir = &s.data_dir;
        check_place(data_dir)?;
        for name in [&s.superuser, &s.replication_user] {
            if name.contains('"') {
                bail!("role name {name:?} holds a double quote, which pg_hba.conf cannot name");
            }
        }
        if !matches!(
            crate::datadir::inspect_data_dir(data_dir),
            Ok(pgfm_core::DataDirState::Empty)
        ) {
            bail!(
                "data_dir {} is no longer empty: not initialising over it",
                data_dir.display()
            );
        }
        let (superuser_pw, replication_pw) = self.bootstrap_passwords()?;
        let work = work_dir(data_dir);
        let pwfile = PathBuf::from(format!("{}.pgfm-initdb.pw", data_dir.display()));
        remove_if_present(&pwfile)?;
        if work.exists() {
            let failed = failed_dir(data_dir);
            if failed.exists() {
                std::fs::remove_dir_all(&failed)
                    .with_context(|| format!("removing {}", failed.display()))?;
            }
            std::fs::rename(&work, &failed)
                .with_context(|| format!("moving the half-made {} aside", work.display()))?;
            tracing::warn!(
                dir = %failed.display(),
                "an earlier initdb did not finish: its directory is kept aside, initialising again"
            );
        }
        write_private(&pwfile, &format!("{superuser_pw}\n"), Some(&s.os_user))?;
        let made = initdb_with(&s.bin_dir, &work, &s.os_user, &s.superuser, &pwfile, plan).await;
        remove_if_present(&pwfile)?;
        made?;
        // The superuser streams too when it is the replication user: initdb made it.
        if s.replication_user != s.superuser {
            let sql = format!(
                "CREATE ROLE {} WITH REPLICATION LOGIN PASSWORD {};\n",
                sql_identifier(&s.replication_user),
                sql_literal(&replication_pw)
            );
            single_user_sql(&s.bin_dir, &work, &s.os_user, &sql)
                .await
                // PostgreSQL repeats a failed statement, password and all, in its error.
                .map_err(|e| {
                    anyhow::anyhow!("{}", format!("{e:#}").replace(&replication_pw, "********"))
                })?;
        }
        let hba = render_hba(
            plan,
            &s.superuser,
            &s.replication_user,
            &s.node_name,
            s.ssl.is_some(),
        );
        let hba_file = work.join("pg_hba.conf");
        s.os_user
            .write_file(&hba_file, &hba, 0o600)
            .context("writing pg_hba.conf")?;
        for durable in [&hba_file, &work] {
            std::fs::File::open(durable)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", durable.display()))?;
        }
        // Onto the empty data_dir (rename replaces an empty directory), then made durable.
        std::fs::rename(&work, data_dir).with_context(|| {
            format!(
                "moving the new cluster from {} onto data_dir {}",
                work.display(),
                data_dir.display()
            )
        })?;
        if let Some(parent) = data_dir.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", parent.display()))?;
        }
        Ok(())
    }

    /// The superuser's and the replication user's passwords, from the passfile: a new
    /// cluster gets exactly the passwords every node connects with.
    fn bootstrap_passwords(&self) -> anyhow::Result<(String, String)> {
        let s = &self.settings;
        let Some(path) = &s.passfile else {
            bail!(
                "initialising the cluster needs the passwords of {} and {}: set [postgres] \
                 passfile (pgfm init writes one)",
                s.superuser,
                s.replication_user
            );
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the passfile {}", path.display()))?;
        let find = |database: &str, user: &str| {
            passfile::lookup(&text, &s.host, s.port, database, user).with_context(|| {
                format!(
                    "initialising the cluster: the passfile {} has no password for {user} \
                     (add a line *:*:*:{user}:PASSWORD)",
                    path.display()
                )
            })
        };
        Ok((
            find("postgres", &s.superuser)?,
            find("replication", &s.replication_user)?,
        ))
    }
}

/// Run `initdb` on `data_dir` as `user`, with `superuser` and the password in `pwfile`,
/// and `plan`'s encoding, locale and checksums.
pub async fn initdb_with(
    bin_dir: &Path,
    data_dir: &Path,
    user: &OsUser,
    superuser: &str,
    pwfile: &Path,
    plan: &InitdbPlan,
) -> anyhow::Result<()> {
    user.make_private_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut cmd = user.std_command(bin_dir.join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", superuser, "--auth=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .arg(format!("--encoding={}", plan.encoding));
    if let Some(locale) = &plan.locale {
        cmd.arg(format!("--locale={locale}"));
    }
    if plan.data_checksums {
        cmd.arg("--data-checksums");
    }
    let output = run_dying_with_agent(cmd, None)
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

/// Run `initdb` on `data_dir` as `user` (the lab's first node), with checksums so that
/// pg_rewind works, and `superuser` with the password in `pwfile`.
pub async fn initdb(
    bin_dir: &Path,
    data_dir: &Path,
    user: &OsUser,
    superuser: &str,
    pwfile: &Path,
) -> anyhow::Result<()> {
    let plan = InitdbPlan {
        cluster: String::new(),
        encoding: "UTF8".to_string(),
        locale: None,
        data_checksums: true,
        peers: Vec::new(),
        extra_hba: Vec::new(),
    };
    initdb_with(bin_dir, data_dir, user, superuser, pwfile, &plan).await
}

/// Run SQL in single-user mode on a stopped cluster.
pub async fn single_user_sql(
    bin_dir: &Path,
    data_dir: &Path,
    user: &OsUser,
    sql: &str,
) -> anyhow::Result<()> {
    let mut cmd = user.std_command(bin_dir.join("postgres"));
    cmd.args(["--single", "-j", "-D"])
        .arg(data_dir)
        .arg("postgres");
    let output = run_dying_with_agent(cmd, Some(sql.as_bytes().to_vec()))
        .await
        .context("running postgres --single")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stderr.contains("ERROR") {
        bail!("postgres --single failed: {}", stderr.trim());
    }
    Ok(())
}

/// Run `cmd` to its end (with `stdin` written to it), killed if the agent dies first: a
/// program that outlived it would go on writing into a directory the agent's retry moves
/// aside. The kernel's parent-death signal fires when the *thread* that forked the child
/// ends, and a runtime's threads come and go (an idle blocking thread ends after 10 s):
/// so the child is forked from one thread that lasts as long as the process, and the
/// signal is set after the switch to the OS user (which would clear it).
async fn run_dying_with_agent(
    mut cmd: std::process::Command,
    stdin: Option<Vec<u8>>,
) -> std::io::Result<std::process::Output> {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    let agent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe; nothing here allocates.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent died between the fork and the prctl: the signal will never come.
            if nix::libc::getppid() as u32 != agent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = spawn_from_lasting_thread(cmd)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(&input)?;
        }
        child.wait_with_output()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Fork `cmd` from the process's one lasting spawner thread (started at first use).
fn spawn_from_lasting_thread(cmd: std::process::Command) -> std::io::Result<std::process::Child> {
    type Reply = std::sync::mpsc::Sender<std::io::Result<std::process::Child>>;
    static SPAWNER: std::sync::OnceLock<
        std::sync::Mutex<std::sync::mpsc::Sender<(std::process::Command, Reply)>>,
    > = std::sync::OnceLock::new();
    let gone = || std::io::Error::other("the thread that starts PostgreSQL's tools is gone");
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<(std::process::Command, Reply)>();
        let _ = std::thread::Builder::new()
            .name("pgfm-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        std::sync::Mutex::new(tx)
    });
    let (reply, answer) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(peers: &[(&str, &str, bool)]) -> InitdbPlan {
        InitdbPlan {
            cluster: "main".into(),
            encoding: "UTF8".into(),
            locale: None,
            data_checksums: true,
            peers: peers
                .iter()
                .map(|(name, host, replication)| HbaPeer {
                    name: name.to_string(),
                    host: host.to_string(),
                    replication: *replication,
                })
                .collect(),
            extra_hba: vec!["hostssl all app 10.0.1.0/24 scram-sha-256".into()],
        }
    }

    /// Each member gets exactly what pgfm needs from its host — TLS only, scram only —
    /// and nothing wider; the operator's lines come after.
    #[test]
    fn pg_hba_lets_in_the_members_and_nothing_wider() {
        let p = plan(&[
            ("pg1", "10.0.0.11", true),
            ("pg2", "10.0.0.12", true),
            ("w1", "10.0.0.13", false),
            ("pg3", "fd00::3", true),
        ]);
        let text = render_hba(&p, "postgres", "replicator", "pg1", true);
        let rules: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        fn rule(s: &str) -> Vec<&str> {
            s.split_whitespace().collect()
        }
        assert_eq!(
            rules,
            vec![
                rule("local all all peer"),
                rule("hostssl all \"postgres\" 10.0.0.11/32 scram-sha-256"),
                rule("hostssl replication \"replicator\" 10.0.0.11/32 scram-sha-256"),
                rule("hostssl all \"postgres\" 10.0.0.12/32 scram-sha-256"),
                rule("hostssl replication \"replicator\" 10.0.0.12/32 scram-sha-256"),
                rule("hostssl all \"postgres\" 10.0.0.13/32 scram-sha-256"),
                rule("hostssl all \"postgres\" fd00::3/128 scram-sha-256"),
                rule("hostssl replication \"replicator\" fd00::3/128 scram-sha-256"),
                rule("hostssl all app 10.0.1.0/24 scram-sha-256"),
            ]
        );
        // Without TLS (tls.mode = "off"), plain host lines; members on one host once.
        let p = plan(&[("pg1", "127.0.0.1", true), ("pg2", "127.0.0.1", true)]);
        let text = render_hba(&p, "Admin", "replicator", "pg1", false);
        assert_eq!(text.matches("\nhost ").count(), 2, "{text}");
        assert!(text.contains("\"Admin\""), "{text}");
        assert!(text.contains("\"replicator\""), "{text}");
        assert!(!text.contains("hostssl all all") && !text.contains("trust"));
    }

    /// A place that can never hold the new cluster is refused before initdb, with the fix.
    #[test]
    fn a_data_dir_that_cannot_work_is_refused_before_initdb() {
        let base = std::env::temp_dir().join(format!("pgfm-place-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real")).unwrap();
        // The usual: data_dir absent (or empty) under an existing directory.
        assert!(check_place(&base.join("data")).is_ok());
        assert!(check_place(&base.join("real")).is_ok());
        let unmounted = check_place(&base.join("volume/data"))
            .unwrap_err()
            .to_string();
        assert!(unmounted.contains("is its volume mounted?"), "{unmounted}");
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        let link = check_place(&base.join("link")).unwrap_err().to_string();
        assert!(link.contains("is a symbolic link"), "{link}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(sql_identifier("repl\"x"), "\"repl\"\"x\"");
        assert_eq!(sql_literal("it's"), "'it''s'");
    }
}
