//! Probing a PostgreSQL server: role, WAL positions, timeline, WAL receiver and walsenders,
//! over one kept-open connection, every query under a hard timeout (tokio-postgres's
//! `connect_timeout` covers the socket only).

use std::path::PathBuf;
use std::time::Duration;

use pgfm_core::{DbRole, Lsn, NodeReport, ReplicaInfo, SyncRule, Timeline, TimelineFork};
use tokio_postgres::{Client, NoTls};

/// How to reach one server.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub passfile: Option<PathBuf>,
    pub timeout: Duration,
    /// The cluster CA: connect over TLS and check the server's certificate against it
    /// and `host` (verify-full); None: plain TCP.
    pub ssl_root: Option<PathBuf>,
}

/// The connection settings for `target`'s `postgres` database, with the password from the
/// passfile (tokio-postgres does not read one).
fn config_for(target: &Target, application: &str) -> Result<tokio_postgres::Config, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .dbname("postgres")
        .application_name(application)
        .connect_timeout(target.timeout);
    if let Some(path) = &target.passfile {
        let contents = std::fs::read_to_string(path)
            .map_err(|e| format!("reading passfile {}: {e}", path.display()))?;
        if let Some(pw) = crate::passfile::lookup(
            &contents,
            &target.host,
            target.port,
            "postgres",
            &target.user,
        ) {
            config.password(pw);
        }
    }
    Ok(config)
}

/// Open a connection to `target`'s `postgres` database.
pub async fn connect(target: &Target) -> Result<Client, String> {
    let config = config_for(target, "pgfm")?;
    tokio::time::timeout(target.timeout, open(&config, target))
        .await
        .map_err(|_| format!("no answer within {:?}", target.timeout))?
        .map_err(|e| match e {
            Opened::Failed(e) => describe(&e),
            Opened::Setup(e) => e,
        })
}

/// Why a connection was not opened: the server's (or the network's) error, or this side's
/// TLS setup.
enum Opened {
    Failed(tokio_postgres::Error),
    Setup(String),
}

/// Connect with `config`, over TLS verified against `target.ssl_root` when set, and run
/// the connection on its own task (it ends when the server goes away or the client is
/// dropped).
async fn open(config: &tokio_postgres::Config, target: &Target) -> Result<Client, Opened> {
    let Some(ca) = &target.ssl_root else {
        let (client, connection) = config.connect(NoTls).await.map_err(Opened::Failed)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(client);
    };
    let tls = crate::ssl::connector(ca).map_err(Opened::Setup)?;
    let mut config = config.clone();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect(tls).await.map_err(Opened::Failed)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A database error's message (tokio-postgres's Display hides the server's text).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

pub struct Prober {
    target: Target,
    client: Option<Client>,
}

// A standby's timeline: the newest one it holds WAL of. The checkpoint's timeline lags
// (it moves at restartpoints) and the WAL receiver's is gone while it reconnects — at a
// failover, exactly when it matters — so the names of the WAL segments in pg_wal say it.
const ROLE_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
     CASE WHEN pg_is_in_recovery() THEN greatest( \
              (SELECT timeline_id FROM pg_control_checkpoint()), \
              (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir() \
               WHERE name ~ '^[0-9A-F]{24}$')) \
          ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END";
const RECEIVER_SQL: &str = "SELECT status, received_tli FROM pg_stat_wal_receiver";
const CONNINFO_SQL: &str =
    "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')";
const SLOTS_SQL: &str =
    "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1";
const SENDERS_SQL: &str = "SELECT application_name, coalesce(state, ''), \
     coalesce(sync_state, ''), replay_lsn::text, flush_lsn::text, sent_lsn::text \
     FROM pg_stat_replication \
     ORDER BY application_name";

impl Prober {
    pub fn new(target: Target) -> Prober {
        Prober {
            target,
            client: None,
        }
    }

    /// Probe the server and fill `report`'s database fields. On failure the fields say the
    /// database is down and `Err` carries why.
    pub async fn probe(&mut self, report: &mut NodeReport) -> Result<(), String> {
        report.forget_database();
        let timeout = self.target.timeout;
        let result = match tokio::time::timeout(timeout, self.probe_inner(report)).await {
            Ok(result) => result,
            Err(_) => Err(format!("probe got no answer within {timeout:?}")),
        };
        if result.is_err() {
            // A fresh connection next time: this one may be wedged.
            self.client = None;
            report.db_up = false;
            report.role = None;
        }
        result
    }

    async fn probe_inner(&mut self, report: &mut NodeReport) -> Result<(), String> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(connect(&self.target).await?);
        }
        let Some(client) = self.client.as_ref() else {
            return Err("no connection".into());
        };
        let row = client
            .query_one(ROLE_SQL, &[])
            .await
            .map_err(|e| describe(&e))?;
        let in_recovery: bool = row.get(0);
        let lsn = |i: usize| -> Result<Option<Lsn>, String> {
            let text: Option<String> = row.get(i);
            text.map(|t| t.parse::<Lsn>().map_err(|e| e.to_string()))
                .transpose()
        };
        report.db_up = true;
        report.role = Some(if in_recovery {
            DbRole::Standby
        } else {
            DbRole::Primary
        });
        report.current_lsn = lsn(1)?;
        report.received_lsn = lsn(2)?;
        report.replayed_lsn = lsn(3)?;
        let timeline: Option<i32> = row.get(4);
        report.timeline = timeline.map(|t| Timeline(t as u32));
        for row in client
            .query(
                SETTINGS_SQL,
                &[&pgfm_core::parameters::HOT_STANDBY_MINIMUMS.to_vec()],
            )
            .await
            .map_err(|e| describe(&e))?
        {
            let name: String = row.get(0);
            if row.get::<_, bool>(2) {
                report.pending_restart.push(name.clone());
            }
            if let Ok(value) = row.get::<_, String>(1).parse::<i64>() {
                if pgfm_core::parameters::HOT_STANDBY_MINIMUMS.contains(&name.as_str()) {
                    report.hot_standby.insert(name, value);
                }
            }
        }
        // What the agent wrote into pgfm.conf (its first lines say so).
        if let Ok(row) = client
            .query_one("SELECT pg_read_file('pgfm.conf', 0, 4096)", &[])
            .await
        {
            report.parameters_digest = parameters_digest(&row.get::<_, String>(0));
        }

        if in_recovery {
            let row = client
                .query_one(CONNINFO_SQL, &[])
                .await
                .map_err(|e| describe(&e))?;
            let conninfo: String = row.get(0);
            let slot: String = row.get(1);
            report.conninfo_upstream = conninfo_host_port(&conninfo);
            report.conninfo_slot = Some(slot).filter(|s| !s.is_empty());
            if let Some(row) = client
                .query_opt(RECEIVER_SQL, &[])
                .await
                .map_err(|e| describe(&e))?
            {
                let status: Option<String> = row.get(0);
                let tli: Option<i32> = row.get(1);
                report.receiver = status;
                if let Some(tli) = tli {
                    report.timeline = Some(Timeline(tli as u32));
                }
            }
        } else {
            for row in client
                .query(SLOTS_SQL, &[])
                .await
                .map_err(|e| describe(&e))?
            {
                report.slots.push(row.get(0));
            }
            for row in client
                .query(SENDERS_SQL, &[])
                .await
                .map_err(|e| describe(&e))?
            {
                let lsn = |i: usize| -> Option<Lsn> {
                    let text: Option<String> = row.get(i);
                    text.and_then(|t| t.parse().ok())
                };
                report.replicas.push(ReplicaInfo {
                    application_name: row.get(0),
                    state: row.get(1),
                    sync_state: row.get(2),
                    replay_lsn: lsn(3),
                    flush_lsn: lsn(4),
                    sent_lsn: lsn(5),
                });
            }
            let names: String = client
                .query_one("SHOW synchronous_standby_names", &[])
                .await
                .map_err(|e| describe(&e))?
                .get(0);
            report.sync = Some(sync_rule(&names));
            if let Some(timeline) = report.timeline.filter(|t| t.0 > 1) {
                // Unreadable: left empty, which the engine never records as the history.
                let file = format!("pg_wal/{:08X}.history", timeline.0);
                if let Ok(row) = client.query_one("SELECT pg_read_file($1)", &[&file]).await {
                    report.forks = timeline_history(&row.get::<_, String>(0));
                }
            }
        }
        Ok(())
    }
}

/// The parameters waiting for a restart, and the hot-standby minimums.
const SETTINGS_SQL: &str = "SELECT name, setting, pending_restart FROM pg_settings \
     WHERE pending_restart OR name = ANY($1) ORDER BY name";

/// The digest `pgfm.conf` says it was written with (`# parameters HEX`).
pub fn parameters_digest(conf: &str) -> Option<u64> {
    conf.lines()
        .find_map(|l| l.strip_prefix(crate::control::PARAMETERS_LINE))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The forks in a timeline history file: one line per earlier timeline, `parent
/// switchpoint reason`, tab-separated; comments and blank lines skipped.
pub fn timeline_history(text: &str) -> Vec<TimelineFork> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let timeline = fields.next()?.parse().ok().map(Timeline)?;
            let ended_at = fields.next()?.parse::<Lsn>().ok()?;
            Some(TimelineFork { timeline, ended_at })
        })
        .collect()
}

/// What a `synchronous_standby_names` value asks for: `FIRST 1 ("a", b)`, `ANY 2 (a, b)`,
/// `2 (a, b)` or a plain list `a, b` (one of them); `*` stays a name. For what a failover
/// may rely on, `FIRST k` of more than `k` names is `k` of them, as `ANY k` is.
pub fn sync_rule(value: &str) -> SyncRule {
    let (head, list) = match (value.find('('), value.rfind(')')) {
        (Some(open), Some(close)) if open < close => (&value[..open], &value[open + 1..close]),
        _ => ("", value),
    };
    let names: std::collections::BTreeSet<String> = list
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let count = head
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    SyncRule::new(count, names)
}

/// The `synchronous_standby_names` value for `rule`: `FIRST n` when each named standby must
/// confirm (pg_stat_replication then says `sync`), `ANY n` for a quorum, empty for none.
pub fn sync_setting(rule: &SyncRule) -> String {
    if rule.is_async() {
        return String::new();
    }
    let quoted: Vec<String> = rule.names.iter().map(|n| format!("\"{n}\"")).collect();
    let method = if rule.count == rule.names.len() {
        "FIRST"
    } else {
        "ANY"
    };
    format!("{method} {} ({})", rule.count, quoted.join(", "))
}

/// The newest WAL position `target` holds as a standby (received or replayed), read now;
/// None when it runs as a primary.
pub async fn standby_wal_position(target: &Target) -> Result<Option<Lsn>, String> {
    let client = connect(target).await?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, \
             pg_last_wal_replay_lsn()::text",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let lsn = |i: usize| {
        row.get::<_, Option<String>>(i)
            .and_then(|t| t.parse::<Lsn>().ok())
    };
    Ok(lsn(1).max(lsn(2)))
}

/// The `host:port` named by a libpq connection string (keyword/value form).
pub fn conninfo_host_port(conninfo: &str) -> Option<String> {
    let mut host = None;
    let mut port = None;
    let mut rest = conninfo.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('\'') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            value.push(next);
                        }
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        match key.trim() {
            "host" => host = Some(value),
            "port" => port = Some(value),
            _ => {}
        }
        rest = remaining.trim_start();
    }
    Some(format!(
        "{}:{}",
        host?,
        port.unwrap_or_else(|| "5432".into())
    ))
}

/// What a check of another node's PostgreSQL found (invariant 10: only an observer able
/// to judge says "down").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The server answered: a query, a login refused, a password asked for.
    Answering(String),
    /// Nothing answers: connection refused, reset, no answer in time.
    Down(String),
    /// The check failed on this side (no passfile, a client error): it says nothing.
    CannotTell(String),
}

impl Verdict {
    /// `Some(true)` answering, `Some(false)` down, None cannot tell.
    pub fn answering(&self) -> Option<bool> {
        match self {
            Verdict::Answering(_) => Some(true),
            Verdict::Down(_) => Some(false),
            Verdict::CannotTell(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Verdict::Answering(how) => format!("answering ({how})"),
            Verdict::Down(how) => format!("down ({how})"),
            Verdict::CannotTell(why) => format!("cannot tell ({why})"),
        }
    }
}

/// Judge a failed attempt once the TCP connection was made: the server's own answer (an
/// error it sent, a password it asked for) means it is alive; the connection refused or cut
/// by the other side means nothing serves there; anything else — this side's errors, or no
/// answer on an open connection (a postmaster that hangs, whose open sessions may still
/// commit) — says nothing.
fn judge(e: &tokio_postgres::Error) -> Verdict {
    if let Some(db) = e.as_db_error() {
        return Verdict::Answering(format!("it answered: {}", db.message()));
    }
    // The whole chain: tokio-postgres puts the detail ("password missing") in the source.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    let mut io_kind = None;
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind = io_kind.or(Some(io.kind()));
        }
        cause = c.source();
    }
    // tokio-postgres says so only once the server asked for a password.
    if text.contains("password missing") {
        return Verdict::Answering("it asked for a password".into());
    }
    match io_kind {
        Some(kind) if gone(kind) => Verdict::Down(text),
        _ => Verdict::CannotTell(text),
    }
}

/// Socket errors that only the other side (or the network to it) causes.
fn gone(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | HostUnreachable
            | NetworkUnreachable
            | TimedOut
            | UnexpectedEof
            | BrokenPipe
    )
}

/// Whether anything accepts TCP connections at `target` (invariant 10: "down" only when the
/// connection is refused, unreachable or not made in time; this side's errors say nothing).
async fn tcp_verdict(target: &Target) -> Option<Verdict> {
    let address = format!("{}:{}", target.host, target.port);
    match tokio::time::timeout(target.timeout, tokio::net::TcpStream::connect(&address)).await {
        Err(_) => Some(Verdict::Down(format!(
            "no TCP connection to {address} within {:?}",
            target.timeout
        ))),
        Ok(Err(e)) if gone(e.kind()) => Some(Verdict::Down(format!("{address}: {e}"))),
        Ok(Err(e)) => Some(Verdict::CannotTell(format!("connecting to {address}: {e}"))),
        Ok(Ok(_)) => None,
    }
}

/// Whether this agent can reach another node's PostgreSQL (the primary's, to tell a dead
/// agent from a dead database). One kept-open connection, one `SELECT 1` per check.
pub struct RemoteCheck {
    target: Option<Target>,
    client: Option<Client>,
}

impl RemoteCheck {
    pub fn new() -> RemoteCheck {
        RemoteCheck {
            target: None,
            client: None,
        }
    }

    /// Whether the server at `target` answers. A server that refuses the login (say, a
    /// witness without credentials) still answers: it is alive and may take writes.
    pub async fn check(&mut self, target: &Target) -> Verdict {
        if self.target.as_ref().map(|t| (&t.host, t.port)) != Some((&target.host, target.port)) {
            self.client = None;
            self.target = Some(target.clone());
        }
        let attempt = async {
            if let Some(client) = self.client.as_ref().filter(|c| !c.is_closed()) {
                return match client.simple_query("SELECT 1").await {
                    Ok(_) => Verdict::Answering("it answered a query".into()),
                    Err(e) => judge(&e),
                };
            }
            let config = match config_for(target, "pgfm-check") {
                Ok(config) => config,
                Err(e) => return Verdict::CannotTell(e),
            };
            if let Some(verdict) = tcp_verdict(target).await {
                return verdict;
            }
            match open(&config, target).await {
                Ok(client) => {
                    self.client = Some(client);
                    Verdict::Answering("it accepted a connection".into())
                }
                Err(Opened::Failed(e)) => judge(&e),
                // This side cannot make the connection: that says nothing of the server.
                Err(Opened::Setup(e)) => Verdict::CannotTell(e),
            }
        };
        // The TCP connection has its own deadline (a timeout there is "down"); once it is
        // made, no answer in time says nothing: the postmaster may hang while its open
        // sessions commit.
        let verdict = tokio::time::timeout(target.timeout * 2, attempt)
            .await
            .unwrap_or_else(|_| {
                Verdict::CannotTell(format!(
                    "connected, but no answer within {:?}",
                    target.timeout
                ))
            });
        if verdict.answering() != Some(true) {
            self.client = None;
        }
        verdict
    }
}

impl Default for RemoteCheck {
    fn default() -> RemoteCheck {
        RemoteCheck::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{conninfo_host_port, sync_rule, sync_setting};
    use pgfm_core::SyncRule;

    #[test]
    fn sync_standby_names_are_read_in_every_form() {
        let rule = |count: usize, names: &[&str]| {
            SyncRule::new(count, names.iter().map(|n| n.to_string()).collect())
        };
        assert_eq!(sync_rule(""), SyncRule::default());
        assert_eq!(sync_rule("FIRST 1 (\"pg2\")"), rule(1, &["pg2"]));
        assert_eq!(
            sync_rule("ANY 2 (pg2, \"pg3\", pg4)"),
            rule(2, &["pg2", "pg3", "pg4"])
        );
        assert_eq!(sync_rule("2 (pg2, pg3)"), rule(2, &["pg2", "pg3"]));
        assert_eq!(sync_rule("pg2,pg3"), rule(1, &["pg2", "pg3"]));
        assert_eq!(sync_rule("*"), rule(1, &["*"]));
        // What pgfm writes reads back the same.
        for r in [
            rule(0, &[]),
            rule(1, &["pg2"]),
            rule(2, &["pg2", "pg3"]),
            rule(1, &["pg2", "pg3"]),
        ] {
            assert_eq!(sync_rule(&sync_setting(&r)), r, "{}", sync_setting(&r));
        }
        assert_eq!(
            sync_setting(&rule(1, &["pg2", "pg3"])),
            "ANY 1 (\"pg2\", \"pg3\")"
        );
        assert_eq!(
            sync_setting(&rule(2, &["pg2", "pg3"])),
            "FIRST 2 (\"pg2\", \"pg3\")"
        );
    }

    #[test]
    fn reads_a_timeline_history_file() {
        let text = "1\t0/3000148\tno recovery target specified\n\n\
                    # comment\n2\t0/5000000\tat restore point\n";
        assert_eq!(
            super::timeline_history(text),
            vec![
                pgfm_core::TimelineFork {
                    timeline: pgfm_core::Timeline(1),
                    ended_at: pgfm_core::Lsn(0x3000148),
                },
                pgfm_core::TimelineFork {
                    timeline: pgfm_core::Timeline(2),
                    ended_at: pgfm_core::Lsn(0x5000000),
                },
            ]
        );
    }

    /// Invariant 10: a check that fails on its own side says nothing; a refused connection
    /// says down.
    #[tokio::test]
    async fn a_check_judges_only_what_it_can() {
        use super::{RemoteCheck, Target, Verdict};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = |passfile: Option<&str>| Target {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            passfile: passfile.map(Into::into),
            timeout: std::time::Duration::from_secs(2),
            ssl_root: None,
        };
        let mut check = RemoteCheck::new();
        let refused = check.check(&target(None)).await;
        assert!(matches!(refused, Verdict::Down(_)), "{refused:?}");
        let no_passfile = check
            .check(&target(Some("/nonexistent/pgfm-test-passfile")))
            .await;
        assert!(
            matches!(no_passfile, Verdict::CannotTell(_)),
            "{no_passfile:?}"
        );
    }

    #[test]
    fn reads_host_and_port_from_conninfo() {
        let check =
            |c: &str, e: Option<&str>| assert_eq!(conninfo_host_port(c).as_deref(), e, "{c}");
        check(
            "host=127.0.0.1 port=5433 user=replicator",
            Some("127.0.0.1:5433"),
        );
        check(
            "user=r host='10.0.0.1' passfile='/my dir/pgpass' port=6000",
            Some("10.0.0.1:6000"),
        );
        check("host=db1", Some("db1:5432"));
        check("", None);
        check("port=5432", None);
    }
}
