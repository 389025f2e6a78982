//! Two promotions on real PostgreSQL never start the same timeline number (chaos soak seed
//! 2, run 44): pg2 is promoted and dies before the cluster learns its timeline; pg3 — which
//! never streamed from pg2, so has no history file for pg2's timeline — is promoted next.
//! Left to itself PostgreSQL gives pg3 the same number on another fork; pg_rewind then
//! says "no rewind required" and pg2 never streams again. Told the floor the state machine
//! reserved (`Postgres::promote`'s `at_least`), pg3 starts a later timeline, its history
//! names only the real parent, and pg2 is rewound onto it and streams.
//!
//! Runs as root (PostgreSQL itself as `postgres`) with PostgreSQL's binaries installed;
//! skipped otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgfm_core::{Lsn, Timeline};
use pgfm_postgres::control::{
    initdb, single_user_sql, Postgres, PostgresSettings, StartAs, Upstream,
};
use pgfm_postgres::datadir::{recovery_unfinished, reserved_history};
use pgfm_postgres::probe::{self, timeline_history};
use pgfm_postgres::run_as::OsUser;

const PASSWORD: &str = "timelines-test";

struct Node {
    pg: Postgres,
    upstream: Upstream,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn node(base: &Path, name: &str, bin_dir: &Path, os_user: &OsUser, passfile: &Path) -> Node {
    let port = free_port();
    let dir = base.join(name);
    let pg = Postgres::new(PostgresSettings {
        node_name: name.to_string(),
        bin_dir: bin_dir.to_path_buf(),
        data_dir: dir.join("data"),
        host: "127.0.0.1".into(),
        port,
        listen_addresses: "127.0.0.1".into(),
        socket_dir: Some(base.to_path_buf()),
        os_user: os_user.clone(),
        superuser: "postgres".into(),
        replication_user: "replicator".into(),
        passfile: Some(passfile.to_path_buf()),
        log_file: base.join(format!("{name}.log")),
        start_timeout: Duration::from_secs(60),
        probe_timeout: Duration::from_secs(5),
        ssl: None,
    });
    let upstream = Upstream {
        name: name.to_string(),
        host: "127.0.0.1".into(),
        port,
        with_slot: true,
    };
    Node { pg, upstream }
}

async fn sql(node: &Node, query: &str) -> Vec<tokio_postgres::Row> {
    let client = probe::connect(&node.pg.probe_target())
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", node.upstream.name));
    client
        .query(query, &[])
        .await
        .unwrap_or_else(|e| panic!("{query} on {}: {}", node.upstream.name, probe::describe(&e)))
}

/// The timeline the server writes (a primary) or streams (a standby; 0 when its WAL
/// receiver is not connected).
async fn timeline(node: &Node) -> u32 {
    let rows = sql(
        node,
        "SELECT CASE WHEN pg_is_in_recovery() \
           THEN (SELECT coalesce(max(received_tli), 0) FROM pg_stat_wal_receiver) \
           ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
    )
    .await;
    rows[0].get::<_, i32>(0) as u32
}

async fn rows_of(node: &Node) -> Vec<String> {
    sql(node, "SELECT v FROM t ORDER BY v")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Wait until `standby` replayed `primary`'s current WAL position.
async fn caught_up(standby: &Node, primary: &Node) {
    let rows = sql(primary, "SELECT pg_current_wal_lsn()::text").await;
    let target: Lsn = rows[0].get::<_, String>(0).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sql(
            standby,
            "SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0')",
        )
        .await;
        let replayed: Lsn = rows[0].get::<_, String>(0).parse().unwrap();
        if replayed >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} replayed {replayed}, not {target}, within 60 s",
            standby.upstream.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_promotion_after_a_lost_one_starts_a_later_timeline_and_the_lost_one_is_rewound() {
    let Some(bin_dir) = pgfm_postgres::binaries::find_bin_dir() else {
        eprintln!("skipped: no PostgreSQL binaries");
        return;
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (PostgreSQL runs as postgres)");
        return;
    }
    let os_user = OsUser::lookup("postgres").expect("the postgres OS user");
    let base = std::env::temp_dir().join(format!("pgfm-timelines-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    os_user.make_private_dir(&base).unwrap();
    let passfile = base.join("passfile");
    os_user
        .write_file(&passfile, &format!("*:*:*:*:{PASSWORD}\n"), 0o600)
        .unwrap();
    let pwfile = base.join("pw");
    os_user.write_file(&pwfile, PASSWORD, 0o600).unwrap();
    let nodes: Vec<Node> = ["pg1", "pg2", "pg3"]
        .iter()
        .map(|n| node(&base, n, &bin_dir, &os_user, &passfile))
        .collect();
    let (pg1, pg2, pg3) = (&nodes[0], &nodes[1], &nodes[2]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            initdb(
                &bin_dir,
                &pg1.pg.settings.data_dir,
                &os_user,
                "postgres",
                &pwfile,
            )
            .await
            .unwrap();
            let role =
                format!("CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{PASSWORD}';\n");
            single_user_sql(&bin_dir, &pg1.pg.settings.data_dir, &os_user, &role)
                .await
                .unwrap();
            pg1.pg.start(StartAs::Primary).await.unwrap();
            sql(pg1, "CREATE TABLE t (v text)").await;
            sql(pg1, "INSERT INTO t VALUES ('pg1')").await;
            for standby in [pg2, pg3] {
                standby.pg.clone_from(&pg1.upstream).await.unwrap();
                standby
                    .pg
                    .start(StartAs::Standby(&pg1.upstream))
                    .await
                    .unwrap();
            }
            sql(pg1, "INSERT INTO t VALUES ('pg1 again')").await;
            for standby in [pg2, pg3] {
                caught_up(standby, pg1).await;
            }
            pg1.pg.stop("immediate").await.unwrap();

            // pg2 is promoted (the state machine reserved timeline 2 for it), takes a write
            // and dies: nobody learnt its timeline.
            pg2.pg.promote(Timeline(2)).await.unwrap();
            assert_eq!(timeline(pg2).await, 2);
            sql(pg2, "INSERT INTO t VALUES ('pg2 alone')").await;
            pg2.pg.stop("immediate").await.unwrap();

            // A primary that crashed was in production; a standby had not ended recovery.
            assert_eq!(recovery_unfinished(&pg1.pg.settings.data_dir), Ok(false));
            pg3.pg.stop("immediate").await.unwrap();
            assert_eq!(recovery_unfinished(&pg3.pg.settings.data_dir), Ok(true));
            // pg3's first promotion was cut off once it had reserved timeline 2: it starts
            // as a standby to be promoted, without that file (PostgreSQL would take it for
            // its recovery target and stop: "not a child of this server's history").
            let reserved = pg3.pg.settings.data_dir.join("pg_wal/00000002.history");
            pg3.pg
                .settings
                .os_user
                .write_file(&reserved, &reserved_history(Timeline(2)), 0o600)
                .unwrap();
            pg3.pg.start(StartAs::ToPromote).await.unwrap();
            let rows = sql(pg3, "SELECT pg_is_in_recovery()").await;
            assert!(rows[0].get::<_, bool>(0), "pg3 started in recovery");

            // pg3 is promoted next, told timeline 3 at least: it has no history file of
            // timeline 2, and PostgreSQL alone would start timeline 2 again.
            assert!(!pg3
                .pg
                .settings
                .data_dir
                .join("pg_wal/00000002.history")
                .exists());
            pg3.pg.promote(Timeline(3)).await.unwrap();
            assert_eq!(timeline(pg3).await, 3);
            let pg_wal = pg3.pg.settings.data_dir.join("pg_wal");
            assert!(
                timeline_history(&read(pg_wal.join("00000002.history"))).is_empty(),
                "the reserved timeline's file names no parent"
            );
            let history = timeline_history(&read(pg_wal.join("00000003.history")));
            assert_eq!(
                history.iter().map(|f| f.timeline).collect::<Vec<_>>(),
                vec![Timeline(1)],
                "timeline 3 forked off timeline 1, its real parent"
            );
            sql(pg3, "INSERT INTO t VALUES ('pg3')").await;

            // pg2 comes back: it has diverged on timeline 2, and is rewound onto pg3.
            pg3.pg
                .ensure_slots(&[pgfm_postgres::control::slot_name("pg2")])
                .await
                .unwrap();
            pg2.pg.rewind(&pg3.upstream).await.unwrap();
            pg2.pg.start(StartAs::Standby(&pg3.upstream)).await.unwrap();
            caught_up(pg2, pg3).await;
            assert_eq!(timeline(pg2).await, 3);
            assert_eq!(rows_of(pg2).await, vec!["pg1", "pg1 again", "pg3"]);
        })
    }));
    for node in &nodes {
        let _ = rt.block_on(node.pg.stop("immediate"));
    }
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&base);
    } else {
        eprintln!("kept for reading: {}", base.display());
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
