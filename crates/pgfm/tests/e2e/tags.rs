//! End-to-end: per-node tags (issue 15, item 5), `pgfm set-tag NODE KEY=VALUE ...`, on real
//! PostgreSQL: `noloadbalance` takes a standby out of `/replica`; `clonefrom` makes a
//! re-clone come from that standby; `replicate_from` makes a standby cascade, and it keeps
//! streaming across a failover of the primary and of its upstream; `nofailover` keeps it
//! from being promoted meanwhile. Refusals change nothing.

use std::time::Duration;

use pgfm_lab::harness::{node, text, wait_for, Lab};
use serde_json::Value;

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

/// Wait until `name` streams from `upstream` (as the witness's status says, from the
/// address in its `primary_conninfo`), and holds every row of `kept` its upstream holds.
fn wait_streaming_from(lab: &Lab, name: &str, upstream: &str) -> Value {
    let status = wait_for(&format!("{name} streaming from {upstream}"), SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        let n = node(&status, name);
        match (n["upstream"].as_str(), n["in_sync"].as_bool()) {
            (Some(u), Some(true)) if u == upstream => Ok(status),
            _ => Err(n.to_string()),
        }
    });
    let rows = lab.psql(upstream, "SELECT count(*) FROM kept").unwrap();
    wait_for(&format!("{rows} rows on {name}"), SETTLE, || {
        match lab.psql(name, "SELECT count(*) FROM kept")? {
            n if n == rows => Ok(()),
            n => Err(format!("{n} rows")),
        }
    });
    status
}

/// pg2 with a walsender for `standby`, as pg2's own `pg_stat_replication` says.
fn sends_to(lab: &Lab, upstream: &str, standby: &str) -> bool {
    lab.psql(
        upstream,
        &format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{standby}' \
             AND state = 'streaming'"
        ),
    )
    .is_ok_and(|n| n == "1")
}

#[test]
fn a_cascading_standby_keeps_streaming_across_a_failover_of_the_primary_and_of_its_upstream() {
    let lab = Lab::up(PGFM, 3);
    lab.wait_healthy("witness", SETTLE);
    lab.committed_rows("pg1", "pg3", 100);

    // Refused, with the reason; nothing changed.
    for (args, says) in [
        (
            vec!["pg3", "replicate_from=pg3"],
            "replicate_from would make a loop: pg3 -> pg3",
        ),
        (
            vec!["witness", "nosync=true"],
            "node witness is not a registered data node",
        ),
        (vec!["pg3", "noreplica=true"], "unknown tag \"noreplica\""),
        (
            vec!["pg3", "nosync=maybe"],
            "nosync takes true or false (on/off, yes/no, 1/0), not \"maybe\"",
        ),
        (
            vec!["pg2", "nofailover=false"],
            "nothing to change: pg2 already has nofailover=false",
        ),
    ] {
        let mut all = vec!["set-tag"];
        all.extend(args.iter().copied());
        let output = lab.cli("witness", &all);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", text(&output));
        assert!(
            text(&output).contains("refused, nothing was changed") && text(&output).contains(says),
            "{args:?}: {}",
            text(&output)
        );
    }
    let (status, _) = lab.cluster_status("witness").unwrap();
    for name in ["pg1", "pg2", "pg3"] {
        assert_eq!(
            node(&status, name)["tags"],
            serde_json::json!([]),
            "{status}"
        );
    }

    // noloadbalance: /replica answers 503 on pg2 while it is set.
    lab.expect_health("pg2", "/replica", 200);
    lab.cli_ok("pg1", &["set-tag", "pg2", "noloadbalance=true"]);
    lab.expect_health("pg2", "/replica", 503);
    lab.cli_ok("pg1", &["set-tag", "pg2", "noloadbalance=false"]);
    lab.expect_health("pg2", "/replica", 200);

    // clonefrom: pg3's re-clone comes from pg2, then pg3 streams from the primary.
    lab.cli_ok("witness", &["set-tag", "pg2", "clonefrom=true"]);
    lab.cli_ok("witness", &["reinit", "pg3"]);
    assert!(
        lab.log("pg3").contains("cloning from pg2"),
        "{}",
        lab.log("pg3")
    );
    wait_streaming_from(&lab, "pg3", "pg1");

    // replicate_from: pg3 cascades from pg2, and the primary keeps no slot for it.
    lab.cli_ok(
        "witness",
        &["set-tag", "pg3", "replicate_from=pg2", "nofailover=true"],
    );
    let status = wait_streaming_from(&lab, "pg3", "pg2");
    assert_eq!(
        node(&status, "pg3")["tags"],
        serde_json::json!(["nofailover", "replicate_from=pg2"]),
        "{status}"
    );
    assert!(sends_to(&lab, "pg2", "pg3"));
    wait_for("pg1 to drop pg3's slot", SETTLE, || {
        match lab.psql(
            "pg1",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pg3'",
        )? {
            n if n == "0" => Ok(()),
            n => Err(format!("{n} slots")),
        }
    });
    let said = text(&lab.cli("witness", &["cluster-status"]));
    assert!(
        said.contains("nofailover, replicate_from=pg2; streams from pg2"),
        "{said}"
    );

    // The primary fails: pg2, its upstream, is promoted (pg3 may not be); pg3 streams on.
    lab.run_ok(&["lab", "kill", "pg1"]);
    lab.wait_for_primary_change("pg2", 2);
    lab.psql("pg2", "INSERT INTO kept VALUES (1001)").unwrap();
    wait_streaming_from(&lab, "pg3", "pg2");
    lab.run_ok(&["lab", "start", "pg1"]);
    lab.wait_primary("witness", "pg2", 2, SETTLE);

    // Its upstream, now the primary, fails: pg1 is promoted, and pg3 follows it.
    lab.run_ok(&["lab", "kill", "pg2"]);
    lab.wait_for_primary_change("pg1", 3);
    lab.psql("pg1", "INSERT INTO kept VALUES (1002)").unwrap();
    wait_streaming_from(&lab, "pg3", "pg1");
    // Its timeline is read from its WAL segments: timeline 3's first one arrives a moment
    // after it streams.
    wait_for("pg3 on timeline 3", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        match node(&status, "pg3")["timeline"].as_u64() {
            Some(3) => Ok(()),
            other => Err(format!("timeline {other:?}")),
        }
    });
    assert_eq!(lab.psql("pg3", "SELECT count(*) FROM kept").unwrap(), "102");

    // Its upstream back: pg3 cascades from it again.
    lab.run_ok(&["lab", "start", "pg2"]);
    wait_streaming_from(&lab, "pg3", "pg2");
    assert!(sends_to(&lab, "pg2", "pg3"));
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(status["generation"], 3, "{status}");
}
