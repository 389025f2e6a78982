//! End-to-end: the cluster-wide settings committed in the log (issue 15) — shown, edited
//! with `--set`, `--file` and `$EDITOR`, applied by every agent with no restart, and each
//! refusal changing nothing.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use pgfm_lab::harness::{text, wait_for, Lab};
use serde_json::Value;

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

/// `pgfm show-config --json` asked of `via`.
fn settings(lab: &Lab, via: &str) -> Value {
    let output = lab.cli(via, &["show-config", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("show-config --json")
}

/// Wait until every agent has applied `revision`.
fn wait_revision(lab: &Lab, nodes: &[&str], revision: u64) {
    for node in nodes {
        wait_for(
            &format!("{node} to apply settings revision {revision}"),
            SETTLE,
            || match settings(lab, node)["revision"].as_u64() {
                Some(r) if r == revision => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}

/// A refused edit: exit 1, the reason said, and revision `revision` still in force.
fn refused(lab: &Lab, args: &[&str], says: &str, revision: u64) {
    let mut all = vec!["edit-config"];
    all.extend_from_slice(args);
    let output = lab.cli("pg2", &all);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {}", text(&output));
    assert!(
        text(&output).contains("refused, nothing was changed") && text(&output).contains(says),
        "{args:?}: {}",
        text(&output)
    );
    assert_eq!(settings(lab, "witness")["revision"], revision, "{args:?}");
}

/// The first coordinator commits its file's settings; then an operator turns automatic
/// failover off through one agent. Every agent applies it with no restart: pg1's host
/// dies and nobody is promoted, the coordinator saying why. Turned back on through
/// `$EDITOR`, the cluster fails over at once. Every refusal changes nothing.
#[test]
fn settings_edited_at_run_time_take_effect_on_every_agent_without_a_restart() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    let all = ["pg1", "pg2", "witness"];
    wait_revision(&lab, &all, 1);
    let first = settings(&lab, "pg1");
    assert!(
        first["history"][0]["by"]
            .as_str()
            .is_some_and(|by| by.contains("its pgfm.toml")),
        "{first}"
    );
    assert_eq!(first["settings"]["auto_failover"], true);

    refused(
        &lab,
        &["--set", "timing.lease=4s"],
        "timing.lease: 2400ms -> 4s cannot change while the cluster runs",
        1,
    );
    refused(
        &lab,
        &["--set", "failover.start_attempts=0"],
        "failover.start_attempts is 0 (set it to at least 1; the default is 3)",
        1,
    );
    refused(
        &lab,
        &["--set", "postgres.port=5433"],
        "postgres.port is not a cluster-wide setting",
        1,
    );
    refused(
        &lab,
        &[
            "--set",
            "replication.synchronous=on",
            "--set",
            "replication.sync_standbys=2",
            "--set",
            "replication.strict=true",
        ],
        "replication.minimum_standbys = 2 needs that many promotable standbys and the cluster has 1",
        1,
    );
    let bad = lab.dir.join("bad-settings.toml");
    std::fs::write(&bad, "[failover]\nswitchover_timeout = \"200ms\"\n").unwrap();
    refused(
        &lab,
        &["--file", bad.to_str().unwrap()],
        "failover.switchover_timeout is 200ms",
        1,
    );

    // Off, through pg2: every agent has it, none restarted.
    let output = lab.cli("pg2", &["edit-config", "--set", "failover.auto_failover=false"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("failover.auto_failover: true -> false"),
        "{}",
        text(&output)
    );
    wait_revision(&lab, &all, 2);
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(status["auto_failover"], false, "{status}");
    let history = settings(&lab, "pg1")["history"].clone();
    assert_eq!(history[1]["changes"][0]["key"], "failover.auto_failover");

    lab.run_ok(&["lab", "kill", "pg1"]);
    lab.wait_problem("witness", "automatic failover is off (auto_failover = false)");
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(status["generation"], 1, "nobody may be promoted: {status}");
    assert_eq!(
        pgfm_lab::harness::node(&status, "pg2")["kind"],
        "standby",
        "{status}"
    );

    // Back on through $EDITOR: the diff is shown, the answer is yes.
    let mut edit = lab
        .cli_command("witness", &["edit-config"])
        .env(
            "EDITOR",
            "sed -i 's/^auto_failover = false/auto_failover = true/'",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    edit.stdin.take().unwrap().write_all(b"y\n").unwrap();
    let output = edit.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("failover.auto_failover: false -> true")
            && text(&output).contains("Commit them? [y/N]"),
        "{}",
        text(&output)
    );
    let status = lab.wait_for_primary_change("pg2", 2);
    assert_eq!(status["primary"], "pg2", "{status}");
    wait_revision(&lab, &["pg2", "witness"], 3);
}
