//! End-to-end: a real cluster forms, replicates, and survives its agents being killed.

use std::time::Duration;

use pgfm_lab::harness::{node, text, wait_for, Lab};

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

/// Two data nodes and a witness form a cluster: pg1 becomes the primary of generation 1,
/// pg2 clones itself and streams, the witness votes; status shows all of it, and a row
/// written on the primary is read on the standby.
#[test]
fn a_lab_forms_and_replicates() {
    let lab = Lab::up(PGFM, 2);
    let status = lab.wait_healthy("pg2", SETTLE);
    assert_eq!(status["cluster"], "lab");
    assert_eq!(status["generation"], 1);
    assert_eq!(status["primary"], "pg1");
    assert!(status["coordinator"].is_string(), "{status}");
    for (name, kind, db) in [
        ("pg1", "primary", "up"),
        ("pg2", "standby", "up"),
        ("witness", "witness", "n/a"),
    ] {
        let n = node(&status, name);
        assert_eq!(n["kind"], kind, "{name}: {n}");
        assert_eq!(n["agent"], "up", "{name}: {n}");
        assert_eq!(n["db"], db, "{name}: {n}");
    }
    assert_eq!(node(&status, "pg2")["in_sync"], true);
    assert!(node(&status, "pg1")["lsn"]
        .as_str()
        .is_some_and(|l| l.contains('/')));
    assert_eq!(node(&status, "pg1")["timeline"], 1);

    let output = crate::pgfm()
        .args(["cluster-status", "-c"])
        .arg(lab.config("witness"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        shown.contains("Standby database(s) in sync with primary. It is safe to promote."),
        "{shown}"
    );
    assert!(shown.contains("\tPrimary     pg1"), "{shown}");

    lab.psql(
        "pg1",
        "CREATE TABLE story (id int PRIMARY KEY, said text); INSERT INTO story VALUES (1, 'hello')",
    )
    .unwrap();
    let read = wait_for("the row on the standby", Duration::from_secs(20), || {
        lab.psql("pg2", "SELECT said FROM story WHERE id = 1")
            .and_then(|r| {
                if r.is_empty() {
                    Err("no row yet".into())
                } else {
                    Ok(r)
                }
            })
    });
    assert_eq!(read, "hello");
    let err = lab
        .psql("pg2", "INSERT INTO story VALUES (2, 'no')")
        .unwrap_err();
    assert!(err.contains("read-only"), "the standby took a write: {err}");

    let again = lab.run(&["lab", "up"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("a lab already exists"),
        "{}",
        text(&again)
    );
    assert_eq!(
        lab.cluster_status("pg1").unwrap().1,
        0,
        "a second lab up broke the first"
    );
}

/// Each agent in turn is killed with SIGKILL and started again: it comes back with its Raft
/// state (no new cluster, same primary and generation) and the cluster is healthy again;
/// a standby whose whole host died comes back streaming. Without a watchdog, which would
/// reset the primary's host when its agent dies (see `safety.rs`).
#[test]
fn agents_killed_with_sigkill_rejoin_with_their_state() {
    let lab = Lab::up_with(PGFM, 2, &["watchdog.mode=\"off\""]);
    lab.wait_healthy("witness", SETTLE);
    lab.psql(
        "pg1",
        "CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 100)",
    )
    .unwrap();

    for (victim, observer) in [("witness", "pg1"), ("pg2", "witness"), ("pg1", "pg2")] {
        let killed = lab.run(&["lab", "kill", victim, "--agent-only"]);
        assert!(killed.status.success(), "{}", text(&killed));
        wait_for(&format!("{victim}'s agent to show DOWN"), SETTLE, || {
            let (status, code) = lab.cluster_status(observer)?;
            match node(&status, victim)["agent"].as_str() {
                Some("down") if code != 0 => Ok(()),
                other => Err(format!("agent {other:?}, exit {code}")),
            }
        });
        let started = lab.run(&["lab", "start", victim]);
        assert!(started.status.success(), "{}", text(&started));
        let status = lab.wait_healthy(victim, SETTLE);
        assert_eq!(
            status["generation"], 1,
            "{victim} came back to a new generation"
        );
        assert_eq!(status["primary"], "pg1");
        let log = lab.log(victim);
        assert_eq!(
            log.matches("initialised a new cluster").count(),
            1,
            "{victim} re-initialised:\n{log}"
        );
    }

    // The standby's host dies: agent and postmaster. Started again, it streams again.
    let killed = lab.run(&["lab", "kill", "pg2"]);
    assert!(killed.status.success(), "{}", text(&killed));
    assert!(lab.lab_node("pg2").postgres_pid.is_none());
    let started = lab.run(&["lab", "start", "pg2"]);
    assert!(started.status.success(), "{}", text(&started));
    let status = lab.wait_healthy("pg2", SETTLE);
    assert_eq!(node(&status, "pg2")["kind"], "standby");
    lab.psql("pg1", "INSERT INTO kept VALUES (101)").unwrap();
    wait_for("101 rows on pg2", Duration::from_secs(20), || {
        match lab.psql("pg2", "SELECT count(*) FROM kept")?.as_str() {
            "101" => Ok(()),
            other => Err(other.to_string()),
        }
    });
}
