//! End-to-end: PostgreSQL's own parameters set for the whole cluster (issue 15, item 2) —
//! written by every agent into the file it owns and reloaded, those needing a restart shown
//! as pending on every node, the hot-standby minimums held in PostgreSQL's order, and the
//! parameters pgfm owns refused.

use std::time::Duration;

use pgfm_lab::harness::{node, text, wait_for, Lab, WaitForWrites};
use pgfm_lab::writers::{Writer, BENCH_TABLE};

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

/// `pgfm edit-config --set KEY=VALUE` through the witness, which must succeed.
fn set(lab: &Lab, key_value: &str) {
    let output = lab.cli("witness", &["edit-config", "--set", key_value]);
    assert!(output.status.success(), "{key_value}: {}", text(&output));
}

/// `SHOW name` on `node`, once it says `value`.
fn wait_show(lab: &Lab, node_name: &str, name: &str, value: &str) {
    wait_for(
        &format!("{node_name} to show {name} = {value}"),
        SETTLE,
        || match lab.psql(node_name, &format!("SHOW {name}"))? {
            v if v == value => Ok(()),
            other => Err(other),
        },
    );
}

/// Each data node's status says these parameters wait for a restart: `(node, names)`.
fn wait_pending(lab: &Lab, expected: &[(&str, &[&str])]) {
    wait_for(&format!("{expected:?} pending restart"), SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        for (n, pending) in expected {
            let shown: Vec<&str> = node(&status, n)["pending_restart"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            if shown != *pending {
                return Err(status.to_string());
            }
        }
        Ok(())
    });
}

/// The line `name = ...` of `node`'s pgfm.conf.
fn conf_line(lab: &Lab, node_name: &str, name: &str) -> String {
    let conf = std::fs::read_to_string(lab.dir.join(node_name).join("data").join("pgfm.conf"))
        .unwrap_or_default();
    conf.lines()
        .find(|l| l.starts_with(&format!("{name} = ")))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn parameters_set_for_the_cluster_reach_every_node_and_say_what_waits_for_a_restart() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    let started = |n: &str| lab.psql(n, "SELECT pg_postmaster_start_time()").unwrap();
    let before = (started("pg1"), started("pg2"));

    // A reloadable parameter: applied everywhere, no restart.
    set(&lab, "postgresql.parameters.work_mem=64MB");
    wait_show(&lab, "pg1", "work_mem", "64MB");
    wait_show(&lab, "pg2", "work_mem", "64MB");
    assert_eq!((started("pg1"), started("pg2")), before);

    // One that needs a restart: pending on every node, the running value unchanged.
    set(&lab, "postgresql.parameters.shared_buffers=256MB");
    wait_pending(
        &lab,
        &[("pg1", &["shared_buffers"]), ("pg2", &["shared_buffers"])],
    );
    assert_eq!(lab.psql("pg1", "SHOW shared_buffers").unwrap(), "128MB");
    let shown = text(&lab.cli("witness", &["cluster-status"]));
    assert!(shown.contains("pending restart: shared_buffers"), "{shown}");

    // A hot-standby minimum raised: the standby's file has it (pending there), the
    // primary's keeps what the standby runs with until the standby runs with more.
    set(&lab, "postgresql.parameters.max_connections=200");
    wait_pending(
        &lab,
        &[
            ("pg1", &["shared_buffers"]),
            ("pg2", &["max_connections", "shared_buffers"]),
        ],
    );
    assert_eq!(
        conf_line(&lab, "pg2", "max_connections"),
        "max_connections = '200'"
    );
    assert_eq!(
        conf_line(&lab, "pg1", "max_connections"),
        "max_connections = '100'"
    );

    // Refused, nothing changed.
    let revision = |lab: &Lab| {
        let output = lab.cli("witness", &["show-config", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()["revision"].clone()
    };
    let at = revision(&lab);
    for (key_value, says) in [
        (
            "postgresql.parameters.port=6543",
            "postgresql.parameters.port is set by pgfm",
        ),
        (
            "postgresql.parameters.work_mme=1MB",
            "postgresql.parameters.work_mme is not a parameter PostgreSQL knows",
        ),
    ] {
        let output = lab.cli("witness", &["edit-config", "--set", key_value]);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(text(&output).contains(says), "{}", text(&output));
    }
    assert_eq!(revision(&lab), at);

    // `pgfm restart --pending` under a writer: pg2 first, then pg1 by a switchover (one
    // promotion: writes pause for one switchover), nothing acknowledged lost, nothing
    // pending any more, every node running with the new values.
    lab.psql("pg1", BENCH_TABLE).unwrap();
    let writer = Writer::start(lab.writer_config(&["pg1", "pg2"]), 1);
    writer.wait_more(20, "the writer to write on pg1");
    let output = lab.cli("witness", &["restart", "--pending"]);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("Restarting PostgreSQL on pg2, pg1, in that order."),
        "{said}"
    );
    let status = lab.wait_primary("witness", "pg2", 2, SETTLE);
    assert_eq!(node(&status, "pg1")["kind"], "standby", "{status}");
    wait_pending(&lab, &[("pg1", &[]), ("pg2", &[])]);
    writer.wait_more(20, "the writer to write on pg2");
    let acked = writer.finish();
    for n in ["pg1", "pg2"] {
        assert_eq!(lab.psql(n, "SHOW shared_buffers").unwrap(), "256MB", "{n}");
        assert_eq!(lab.psql(n, "SHOW max_connections").unwrap(), "200", "{n}");
    }
    let ids: Vec<i64> = acked.iter().map(|(id, _)| *id).collect();
    lab.all_acknowledged_on("pg2", &ids);
    assert!(acked.len() > 40, "{} writes", acked.len());
    let nothing = text(&lab.cli("witness", &["restart", "--pending"]));
    assert!(
        nothing.contains("Nothing to restart: no node has a parameter pending restart"),
        "{nothing}"
    );

    // `pgfm reload`: a setting edited by hand in pg1's postgresql.conf takes effect on
    // pg1 alone; an unknown node and the witness are refused.
    let conf = lab.dir.join("pg1").join("data").join("postgresql.conf");
    let mut text_conf = std::fs::read_to_string(&conf).unwrap();
    text_conf.push_str("\nlog_min_duration_statement = 1234\n");
    std::fs::write(&conf, text_conf).unwrap();
    for (who, says) in [
        ("pg9", "unknown node \"pg9\""),
        ("witness", "node witness is not a registered data node"),
    ] {
        let output = lab.cli("witness", &["reload", who]);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(text(&output).contains(says), "{}", text(&output));
    }
    let said = lab.cli_ok("pg2", &["reload", "pg1"]);
    assert!(said.contains("pg1: reloaded"), "{said}");
    assert_eq!(
        lab.psql("pg1", "SHOW log_min_duration_statement").unwrap(),
        "1234ms"
    );
    assert_eq!(
        lab.psql("pg2", "SHOW log_min_duration_statement").unwrap(),
        "-1"
    );
    let said = lab.cli_ok("witness", &["reload"]);
    assert!(
        said.contains("pg1: reloaded") && said.contains("pg2: reloaded"),
        "{said}"
    );

    // `pgfm restart --pending --in-place`: the standby as before, the primary where it runs
    // (no switchover: the same primary and generation), nothing pending after.
    set(&lab, "postgresql.parameters.shared_buffers=192MB");
    wait_pending(
        &lab,
        &[("pg1", &["shared_buffers"]), ("pg2", &["shared_buffers"])],
    );
    let primary_started = started("pg2");
    let said = lab.cli_ok("witness", &["restart", "--pending", "--in-place"]);
    assert!(
        said.contains("pg2 restarted in place, the primary of generation 2"),
        "{said}"
    );
    let status = lab.wait_primary("witness", "pg2", 2, SETTLE);
    assert_eq!(status["generation"], 2, "{status}");
    wait_pending(&lab, &[("pg1", &[]), ("pg2", &[])]);
    assert_ne!(started("pg2"), primary_started);
    for n in ["pg1", "pg2"] {
        assert_eq!(lab.psql(n, "SHOW shared_buffers").unwrap(), "192MB", "{n}");
    }
}
