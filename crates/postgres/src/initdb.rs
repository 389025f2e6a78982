//! A new cluster from an empty data directory (the node chosen by `Command::ChooseInitdb`):
//! initdb into a directory beside `data_dir`, the replication role, `pg_hba.conf` for the
//! cluster's members, and only then the rename into place. `data_dir` is thus either empty
//! or a whole cluster, whatever moment the agent dies at; a half-made directory left by an
//! earlier attempt is moved aside and the step begins again.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};

use crate::control::Postgres;
use crate::passfile;
use crate::run_as::OsUser;

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

/// A role name in pg_hba.conf: quoted unless plain.
fn quote_name(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
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
        let pwfile = PathBuf::from(format!("{}.pgfm-initdb.pw", data_dir.display()));
        s.os_user
            .write_file(&pwfile, &format!("{superuser_pw}\n"), 0o600)
            .with_context(|| format!("writing {}", pwfile.display()))?;
        let made = initdb_with(&s.bin_dir, &work, &s.os_user, &s.superuser, &pwfile, plan).await;
        let _ = std::fs::remove_file(&pwfile);
        made?;
        let sql = format!(
            "CREATE ROLE {} WITH REPLICATION LOGIN PASSWORD {};\n",
            sql_identifier(&s.replication_user),
            sql_literal(&replication_pw)
        );
        single_user_sql(&s.bin_dir, &work, &s.os_user, &sql).await?;
        let hba = render_hba(
            plan,
            &s.superuser,
            &s.replication_user,
            &s.node_name,
            s.ssl.is_some(),
        );
        s.os_user
            .write_file(&work.join("pg_hba.conf"), &hba, 0o600)
            .context("writing pg_hba.conf")?;
        // Onto the empty data_dir (rename replaces an empty directory), then made durable.
        std::fs::rename(&work, data_dir).map_err(|e| match e.raw_os_error() {
            Some(nix::libc::EXDEV) | Some(nix::libc::EBUSY) => anyhow::anyhow!(
                "cannot move the new cluster from {} onto data_dir {}: data_dir is a mount \
                 point ({e}); PostgreSQL advises a directory below it: set [postgres] \
                 data_dir = \"{}/data\"",
                work.display(),
                data_dir.display(),
                data_dir.display()
            ),
            _ => anyhow::anyhow!(
                "moving the new cluster from {} onto data_dir {}: {e}",
                work.display(),
                data_dir.display()
            ),
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
    let mut cmd = user.command(bin_dir.join("initdb"));
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
    dies_with_agent(&mut cmd);
    let output = cmd
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
    use tokio::io::AsyncWriteExt;
    let mut cmd = user.command(bin_dir.join("postgres"));
    cmd.args(["--single", "-j", "-D"])
        .arg(data_dir)
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    dies_with_agent(&mut cmd);
    let mut child = cmd.spawn().context("starting postgres --single")?;
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

/// The child is killed when the thread that started it ends — the agent's runtime, or the
/// agent killed: a program that outlived it would go on writing into a directory the
/// agent's retry moves aside. Set after the switch to the OS user, which would clear it.
fn dies_with_agent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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
                rule("hostssl all postgres 10.0.0.11/32 scram-sha-256"),
                rule("hostssl replication replicator 10.0.0.11/32 scram-sha-256"),
                rule("hostssl all postgres 10.0.0.12/32 scram-sha-256"),
                rule("hostssl replication replicator 10.0.0.12/32 scram-sha-256"),
                rule("hostssl all postgres 10.0.0.13/32 scram-sha-256"),
                rule("hostssl all postgres fd00::3/128 scram-sha-256"),
                rule("hostssl replication replicator fd00::3/128 scram-sha-256"),
                rule("hostssl all app 10.0.1.0/24 scram-sha-256"),
            ]
        );
        // Without TLS (tls.mode = "off"), plain host lines; members on one host once.
        let p = plan(&[("pg1", "127.0.0.1", true), ("pg2", "127.0.0.1", true)]);
        let text = render_hba(&p, "Admin", "replicator", "pg1", false);
        assert_eq!(text.matches("\nhost ").count(), 2, "{text}");
        assert!(text.contains("\"Admin\""), "{text}");
        assert!(!text.contains("hostssl all all") && !text.contains("trust"));
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(sql_identifier("repl\"x"), "\"repl\"\"x\"");
        assert_eq!(sql_literal("it's"), "'it''s'");
    }
}
