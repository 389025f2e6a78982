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

/// `pgfm edit-config` through the witness with `editor` as `$EDITOR`, answered yes.
fn edit_in_editor(lab: &Lab, editor: &str) -> std::process::Output {
    let mut edit = lab
        .cli_command("witness", &["edit-config"])
        .env("EDITOR", editor)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    edit.stdin.take().unwrap().write_all(b"y\n").unwrap();
    edit.wait_with_output().unwrap()
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
        &["--set", "timing.renew_interval=1s"],
        "[timing] lease settings do not work: renew_interval (1000 ms) must fit twice into lease - safety_margin (1600 ms)",
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
    let output = lab.cli(
        "pg2",
        &["edit-config", "--set", "failover.auto_failover=false"],
    );
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
    lab.wait_problem(
        "witness",
        "automatic failover is off (auto_failover = false)",
    );
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(status["generation"], 1, "nobody may be promoted: {status}");
    assert_eq!(
        pgfm_lab::harness::node(&status, "pg2")["kind"],
        "standby",
        "{status}"
    );

    // Another operator commits while this one is in the editor: this edit is refused as
    // stale, nothing of it changed, and the text is kept for another try.
    let other = format!(
        "{PGFM} edit-config -c {} --set failover.max_lag=2097152 >/dev/null && sed -i \
         's/^auto_failover = false/auto_failover = true/'",
        lab.config("pg2").display()
    );
    let output = edit_in_editor(&lab, &other);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains(
            "the settings were edited at revision 2, but revision 3 has been committed since"
        ) && text(&output).contains("your edit is kept in"),
        "{}",
        text(&output)
    );
    wait_revision(&lab, &["pg2", "witness"], 3);
    assert_eq!(
        settings(&lab, "witness")["settings"]["auto_failover"],
        false
    );

    // Back on through $EDITOR: the diff is shown, the answer is yes.
    let output = edit_in_editor(
        &lab,
        "sed -i 's/^auto_failover = false/auto_failover = true/'",
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("failover.auto_failover: false -> true")
            && text(&output).contains("Commit them? [y/N]"),
        "{}",
        text(&output)
    );
    let status = lab.wait_for_primary_change("pg2", 2);
    assert_eq!(status["primary"], "pg2", "{status}");
    wait_revision(&lab, &["pg2", "witness"], 4);
}

/// The timeout of `node`'s host watchdog, as `cluster-status` shows it.
fn watchdog_timeout(lab: &Lab, node: &str) -> Option<u64> {
    let (status, _) = lab.cluster_status("witness").ok()?;
    pgfm_lab::harness::node(&status, node)["watchdog"]["timeout_s"].as_u64()
}

/// The lease is lengthened while the cluster runs: the primary's agent takes it at once
/// (its host watchdog's timeout follows), and when its host dies the coordinator waits for
/// the new lease before it promotes. Shortened again on the new primary, the watchdog
/// follows back.
#[test]
fn a_lease_changed_at_run_time_is_the_one_a_failover_waits_for() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    assert_eq!(watchdog_timeout(&lab, "pg1"), Some(1));
    // (6 s - 250 ms - 300 ms) in whole seconds: pg1 armed again with the new timeout.
    set_lease(&lab, "pg2", "6s", 2, ("pg1", 5));
    lab.wait_healthy("witness", SETTLE);

    let (before, _) = lab.cluster_status("witness").unwrap();
    let killed = std::time::SystemTime::now();
    lab.run_ok(&["lab", "kill", "pg1"]);
    let status = lab.wait_for_primary_change("pg2", 2);
    let history = lab.client("witness");
    let promoted = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(history.history())
        .unwrap()
        .into_iter()
        .find(|e| e.generation == 2 && !e.cancelled)
        .expect("the promotion in the history");
    let waited = promoted.at_unix_ms as i64
        - killed
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
    // Its last renewal was sent at most a renew interval (300 ms) before the kill, timed
    // with 6 s: no promotion before 5.7 s, whatever the machine's load (with the old lease
    // it came after about 2.8 s).
    assert!(
        waited >= 5_700,
        "promoted {waited} ms after pg1's host died ({}), coordinator {} before: {status}",
        promoted.reason,
        before["coordinator"]
    );

    lab.run_ok(&["lab", "start", "pg1"]);
    lab.wait_healthy("witness", SETTLE);
    set_lease(&lab, "pg1", "2400ms", 3, ("pg2", 1));
}

/// `edit-config --set timing.lease=LEASE` through `via`, committed as `revision` on every
/// agent, then the primary's host watchdog armed with the timeout `primary.1`.
fn set_lease(lab: &Lab, via: &str, lease: &str, revision: u64, primary: (&str, u64)) {
    let set = format!("timing.lease={lease}");
    let output = lab.cli(via, &["edit-config", "--set", &set]);
    assert!(output.status.success(), "{}", text(&output));
    wait_revision(lab, &["pg1", "pg2", "witness"], revision);
    let (node, timeout) = primary;
    wait_for(
        &format!("{node}'s watchdog to take the {lease} lease"),
        SETTLE,
        || match watchdog_timeout(lab, node) {
            Some(t) if t == timeout => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}
