//! End-to-end: node maintenance (issue 15), the seed's case 1 in one command — the primary
//! switched away from, its PostgreSQL stopped and kept stopped across a "reboot", out of
//! failover, then back as a streaming standby — and its refusals changing nothing.

use std::time::Duration;

use pgfm_lab::harness::{node, text, wait_for, Lab};
use serde_json::Value;

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

/// `pgfm cluster-status --json` asked of the witness.
fn status(lab: &Lab) -> Value {
    lab.cluster_status("witness").expect("cluster-status").0
}

/// A refused command: exit 1, the reason said, nothing changed.
fn refused(lab: &Lab, args: &[&str], says: &str) {
    let before = status(lab);
    let output = lab.cli("witness", args);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {said}");
    assert!(
        said.contains("refused, nothing was changed") && said.contains(says),
        "{args:?} should say {says:?}: {said}"
    );
    let after = status(lab);
    assert_eq!(after["generation"], before["generation"], "{args:?}");
    assert_eq!(after["primary"], before["primary"], "{args:?}");
    for n in ["pg1", "pg2"] {
        assert_eq!(
            node(&after, n)["maintenance"],
            node(&before, n)["maintenance"],
            "{args:?} changed {n}'s maintenance"
        );
    }
}

/// The seed's case 1 (maintenance of the primary's host, with a reboot) on a primary and one
/// standby. Refused at first: pg2 would be left with no standby to fail over to; with
/// `--force`, pg1 hands over to pg2 and stops. Killed and started again (a reboot), its
/// agent keeps PostgreSQL stopped and nothing promotes it or switches over to it. `off`:
/// it starts as a standby of pg2 and streams in sync, with every row written meanwhile.
#[test]
fn the_primary_under_maintenance_stays_down_across_a_reboot_then_streams() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    lab.committed_rows("pg1", "pg2", 100);

    refused(
        &lab,
        &["maintenance", "pg1", "on"],
        "with pg1 under maintenance, pg2 would have no promotable standby in sync with it",
    );
    refused(
        &lab,
        &["maintenance", "witness", "on"],
        "witness is not a registered data node",
    );
    refused(
        &lab,
        &["maintenance", "pg2", "off"],
        "pg2 is not under maintenance",
    );

    let output = lab.cli("witness", &["maintenance", "pg1", "on", "--force"]);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("hands over to pg2")
            && said.contains("PostgreSQL is stopped and stays stopped"),
        "{said}"
    );
    let now = status(&lab);
    assert_eq!(now["primary"], "pg2", "{now}");
    assert_eq!(now["generation"], 2, "{now}");
    let pg1 = node(&now, "pg1");
    assert_eq!(pg1["kind"], "maintenance", "{now}");
    assert_eq!(pg1["db"], "down", "{now}");
    assert!(
        pg1["maintenance"]["by"]
            .as_str()
            .is_some_and(|by| by.contains('@')),
        "{now}"
    );
    assert!(
        !now["priority_list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "pg1"),
        "{now}"
    );
    let shown = text(&lab.cli("witness", &["cluster-status"]));
    assert!(
        shown.contains("Maintenance") && shown.contains("pg1         since"),
        "{shown}"
    );
    lab.psql("pg2", "INSERT INTO kept SELECT generate_series(101, 150)")
        .unwrap();

    // A reboot of pg1's host: its agent comes back and keeps PostgreSQL down.
    let log_before = lab.log("pg1").len();
    lab.run_ok(&["lab", "kill", "pg1"]);
    lab.run_ok(&["lab", "start", "pg1"]);
    // Its new agent's own words, in its log: not a report from before the kill.
    wait_for(
        "pg1's restarted agent to hold its PostgreSQL down",
        SETTLE,
        || {
            let log = lab.log("pg1");
            let since = &log[log_before.min(log.len())..];
            if since.contains("agent started") && since.contains("PostgreSQL stays stopped") {
                Ok(())
            } else {
                Err(since.to_string())
            }
        },
    );
    wait_for("pg1's restarted agent to report", SETTLE, || {
        let now = status(&lab);
        match (&node(&now, "pg1")["agent"], &node(&now, "pg1")["db"]) {
            (a, d) if a == "up" && d == "down" => Ok(()),
            _ => Err(now.to_string()),
        }
    });
    let since = lab.log("pg1")[log_before..].to_string();
    assert!(!since.contains("starting PostgreSQL"), "{since}");
    // Out of failover: no switchover or promotion to it.
    refused(
        &lab,
        &["switchover", "--to", "pg1"],
        "pg1 is under maintenance (put there by",
    );
    refused(
        &lab,
        &["promote", "--to", "pg1", "--force"],
        "pg1 is under maintenance (put there by",
    );
    refused(
        &lab,
        &["maintenance", "pg1", "on"],
        "pg1 is under maintenance",
    );

    let output = lab.cli("pg2", &["maintenance", "pg1", "off"]);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("pg1 is out of maintenance") && said.contains("it streams in sync again"),
        "{said}"
    );
    let now = lab.wait_healthy("witness", SETTLE);
    assert_eq!(node(&now, "pg1")["kind"], "standby", "{now}");
    assert!(node(&now, "pg1")["maintenance"].is_null(), "{now}");
    wait_for("pg1 to hold every row", SETTLE, || {
        match lab
            .psql("pg1", "SELECT count(*) FROM kept WHERE id > 0")?
            .as_str()
        {
            "150" => Ok(()),
            n => Err(format!("{n} rows")),
        }
    });
}
