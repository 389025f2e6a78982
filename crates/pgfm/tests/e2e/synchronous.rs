//! Synchronous replication on real PostgreSQL: the primary names its synchronous standby
//! only once the set is committed, a lost standby blocks commits in strict mode and is
//! dropped (asynchronous, said in status) otherwise, and — on the netns lab — a primary cut
//! off from its standby acknowledges nothing that a failover then loses.

use std::process::Command;
use std::time::Duration;

use pgfm_lab::harness::{
    node, text, wait_for, Lab, NetnsLab, SplitBrainWatch, VipWatch, WaitForWrites,
};
use pgfm_lab::writers::{ids, Writer, BENCH_TABLE};

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

/// One INSERT in its own transaction on `node`: Ok when acknowledged within 3 s, Err with
/// why not. (statement_timeout cannot end a commit's wait for a synchronous standby: the
/// wait comes after the statement; the client gives up instead, as applications do.)
fn commit_one(lab: &Lab, node: &str) -> Result<(), String> {
    let mut child = Command::new("psql")
        .arg(lab.dsn(node))
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "CREATE TABLE IF NOT EXISTS s (id serial)"])
        .args(["-c", "INSERT INTO s DEFAULT VALUES"])
        .env("PGCONNECT_TIMEOUT", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            return if status.success() {
                Ok(())
            } else {
                Err(stderr)
            };
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the commit waited 3 s for the synchronous standby".to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SQL counting how many of `ids` are in `bench`.
fn count_of(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    format!(
        "SELECT count(*) FROM bench WHERE id = ANY('{{{}}}'::bigint[])",
        list.join(",")
    )
}

fn sync_of(status: &serde_json::Value) -> (Vec<String>, Vec<String>, bool) {
    let s = &status["synchronous"];
    let list = |key: &str| -> Vec<String> {
        s[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    (
        list("committed"),
        list("waiting_for"),
        s["degraded"] == true,
    )
}

fn wait_sync(lab: &Lab, committed: &[&str], waiting_for: &[&str]) -> serde_json::Value {
    wait_for(
        &format!("synchronous set {committed:?}, waiting for {waiting_for:?}"),
        SETTLE,
        || {
            let (status, _) = lab.cluster_status("witness")?;
            let (c, w, _) = sync_of(&status);
            if c == committed && w == waiting_for {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    )
}

/// The `bench` table on pg1, a watch that no two of `nodes` are writable at once, and the
/// neutral writer through a multi-host connection string, already writing.
fn start_writing(lab: &Lab, nodes: &[&str]) -> (SplitBrainWatch, Writer) {
    lab.psql("pg1", BENCH_TABLE).unwrap();
    let watch = SplitBrainWatch::start(lab, nodes);
    let writer = Writer::start(lab.writer_config(nodes), 1);
    writer.wait_more(51, "the writer to write");
    (watch, writer)
}

/// Wait until the primary's pg_stat_replication shows `standby` in `state`.
fn wait_sync_state(lab: &Lab, standby: &str, state: &str) {
    wait_for(&format!("{standby} {state} on the primary"), SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        if node(&status, standby)["sync_state"] == state {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
}

/// Strict: the synchronous standby's host dies and commits wait (no acknowledged commit
/// without its copy) for as long as it is away; it comes back and they go through.
#[test]
fn strict_mode_waits_for_a_lost_synchronous_standby() {
    let lab = Lab::up_with(
        PGFM,
        2,
        &["replication.synchronous=\"on\"", "replication.strict=true"],
    );
    wait_sync(&lab, &["pg2"], &["pg2"]);
    wait_sync_state(&lab, "pg2", "sync");
    assert_eq!(
        lab.psql("pg1", "SHOW synchronous_standby_names").unwrap(),
        "FIRST 1 (\"pg2\")"
    );
    commit_one(&lab, "pg1").unwrap();

    lab.run_ok(&["lab", "kill", "pg2"]);
    // Past the bound a non-strict primary would use (the standby's report going stale).
    wait_for("pg2's agent to count as down", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        match node(&status, "pg2")["agent"].as_str() {
            Some("down") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let refused = commit_one(&lab, "pg1").expect_err("a commit was acknowledged without pg2");
    assert!(refused.contains("synchronous standby"), "{refused}");
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(
        sync_of(&status),
        (vec!["pg2".into()], vec!["pg2".into()], false)
    );

    // The primary's postmaster crashes and its agent restarts it: it comes back waiting
    // for pg2, not asynchronous.
    lab.run_ok(&["lab", "kill", "pg1", "--postgres-only"]);
    wait_for("pg1 restarted in place", SETTLE, || {
        lab.psql("pg1", "SELECT pg_is_in_recovery()").and_then(|r| {
            if r == "f" {
                Ok(())
            } else {
                Err(r)
            }
        })
    });
    let refused = commit_one(&lab, "pg1").expect_err("acknowledged after a restart without pg2");
    assert!(refused.contains("synchronous standby"), "{refused}");

    lab.run_ok(&["lab", "start", "pg2"]);
    wait_for("commits to be acknowledged again", SETTLE, || {
        commit_one(&lab, "pg1")
    });
}

/// Not strict: the synchronous standby's host dies; once its agent counts as down the
/// primary stops waiting (status says DEGRADED, the log says so) and the committed set is
/// the primary alone (what was acknowledged synchronously is on no standby known to have
/// it all: a failover now would promote nobody); the standby comes back and is synchronous
/// again.
#[test]
fn non_strict_mode_degrades_then_recovers() {
    let lab = Lab::up_with(PGFM, 2, &["replication.synchronous=\"on\""]);
    wait_sync(&lab, &["pg2"], &["pg2"]);

    lab.run_ok(&["lab", "kill", "pg2"]);
    let status = wait_sync(&lab, &["pg1"], &[]);
    assert!(sync_of(&status).2, "degraded: {status}");
    assert_eq!(status["promote_status"]["safe"], false, "{status}");
    commit_one(&lab, "pg1").expect("commits go through asynchronously");
    assert!(lab.log("pg1").contains("synchronous replication off"));

    lab.run_ok(&["lab", "start", "pg2"]);
    wait_sync(&lab, &["pg2"], &["pg2"]);
    commit_one(&lab, "pg1").unwrap();
}

/// Three data nodes, one synchronous standby: at the primary's host death only that
/// standby may be promoted, and no acknowledged write is lost.
#[test]
fn failover_promotes_the_synchronous_standby_and_loses_nothing() {
    let lab = Lab::up_with(PGFM, 3, &["replication.synchronous=\"on\""]);
    // Whichever standby streamed first is the synchronous one.
    let sync = wait_for("one synchronous standby", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        match sync_of(&status) {
            (c, w, false) if c.len() == 1 && c == w => Ok(c[0].clone()),
            other => Err(format!("{other:?}")),
        }
    });
    let other = if sync == "pg2" { "pg3" } else { "pg2" };
    wait_sync_state(&lab, &sync, "sync");
    wait_sync_state(&lab, other, "async");
    let (watch, writer) = start_writing(&lab, &["pg1", "pg2", "pg3"]);
    lab.run_ok(&["lab", "kill", "pg1"]);
    lab.wait_for_primary_change(&sync, 2);
    writer.wait_more(21, "writes on the new primary");
    let ids = ids(&writer.finish());
    let found = lab.psql(&sync, &count_of(&ids)).unwrap();
    assert_eq!(found, ids.len().to_string(), "acknowledged writes lost");
    assert!(watch.finish() > 0);
    // The new primary makes the remaining standby its synchronous one.
    wait_sync(&lab, &[other], &[other]);
}

/// On the netns lab: the primary cut off from the others cannot get its commits
/// acknowledged by its synchronous standby, so the failover that follows loses nothing.
#[test]
fn a_cut_off_primary_acknowledges_nothing_that_is_lost() {
    let Some(lab) = NetnsLab::up(PGFM, &["replication.synchronous=\"on\""]) else {
        return;
    };
    wait_sync(&lab, &["pg2"], &["pg2"]);
    lab.psql("pg1", BENCH_TABLE).unwrap();
    let watch = SplitBrainWatch::start(&lab, &["pg1", "pg2"]);
    let vips = VipWatch::start(&lab, &["pg1", "pg2"]);
    let writer = Writer::start(lab.vip_writer_config(), 1);
    writer.wait_more(51, "the writer to write");
    lab.run_ok(&["lab", "partition", "pg1"]);
    lab.wait_for_primary_change("pg2", 2);
    writer.wait_more(21, "writes through the VIP on pg2");
    let ids = ids(&writer.finish());
    let found = lab.psql("pg2", &count_of(&ids)).unwrap();
    assert_eq!(found, ids.len().to_string(), "acknowledged writes lost");
    assert!(watch.finish() > 0);
    vips.finish();
    lab.run_ok(&["lab", "heal"]);
    lab.wait_primary("witness", "pg2", 2, SETTLE);
}

/// `pgfm set-synchronous` on a running cluster of three data nodes: asynchronous, then on
/// (one standby confirms each commit), quorum (any one of both), two copies (both), a
/// setting that would block every commit refused, and off again; each step committed and
/// done by the primary without a restart.
#[test]
fn the_mode_changes_at_run_time() {
    let lab = Lab::up(PGFM, 3);
    let set = |args: &[&str]| {
        crate::pgfm()
            .arg("set-synchronous")
            .arg("-c")
            .arg(lab.config("pg3"))
            .args(args)
            .output()
            .expect("running pgfm set-synchronous")
    };
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert!(status["synchronous"].is_null(), "{status}");

    let out = set(&["on"]);
    assert!(out.status.success(), "{}", text(&out));
    let sync = wait_for("one synchronous standby", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        match sync_of(&status) {
            (c, w, false) if c.len() == 1 && c == w => Ok(c[0].clone()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_sync_state(&lab, &sync, "sync");
    let other = if sync == "pg2" { "pg3" } else { "pg2" };
    lab.expect_health(&sync, "/sync", 200);
    lab.expect_health(&sync, "/async", 503);
    lab.expect_health(other, "/async", 200);
    lab.expect_health(other, "/sync", 503);
    lab.expect_health("pg1", "/sync", 503);
    let (status, _) = lab.cluster_status("pg1").unwrap();
    // A revision of the cluster's settings, in their history.
    assert_eq!(status["synchronous"]["source"], "settings", "{status}");
    assert_eq!(status["synchronous"]["mode"], "on", "{status}");
    let config = lab.cli("pg2", &["show-config", "--json"]);
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    let last = config["history"].as_array().and_then(|h| h.last()).cloned();
    assert_eq!(
        last.as_ref().map(|l| l["by"].clone()),
        Some("pgfm set-synchronous".into()),
        "{config}"
    );
    commit_one(&lab, "pg1").unwrap();

    let out = set(&["quorum"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_sync(&lab, &["pg2", "pg3"], &["pg2", "pg3"]);
    wait_sync_state(&lab, "pg2", "quorum");
    wait_sync_state(&lab, "pg3", "quorum");
    lab.expect_health(other, "/sync", 200);
    assert_eq!(
        lab.psql("pg1", "SHOW synchronous_standby_names").unwrap(),
        "ANY 1 (\"pg2\", \"pg3\")"
    );
    commit_one(&lab, "pg1").unwrap();

    let out = set(&["quorum", "--standbys", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("both standbys confirming each commit", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        let s = &status["synchronous"];
        (s["committed_quorum"] == 2 && s["waiting_count"] == 2)
            .then_some(())
            .ok_or_else(|| status.to_string())
    });
    wait_sync_state(&lab, "pg2", "sync");
    commit_one(&lab, "pg1").unwrap();

    // Three copies with two standbys would block every commit: refused, nothing changed.
    let out = set(&["on", "--standbys", "3", "--strict"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("every commit would wait forever"),
        "{}",
        text(&out)
    );
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(status["synchronous"]["standbys"], 2, "{status}");

    let out = set(&["off"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("asynchronous again", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        status["synchronous"]
            .is_null()
            .then_some(())
            .ok_or_else(|| status.to_string())
    });
    assert_eq!(
        lab.psql("pg1", "SHOW synchronous_standby_names").unwrap(),
        ""
    );
    commit_one(&lab, "pg1").unwrap();
    assert!(lab.log("pg1").contains("synchronous replication off"));
}

/// Quorum (ANY 1 of pg2, pg3): the primary's host dies under write load; the coordinator
/// reads both standbys' positions after the lease ran out, promotes the most advanced, and
/// no acknowledged write is lost. The old primary comes back into the quorum.
#[test]
fn a_quorum_failover_promotes_the_most_advanced_and_loses_nothing() {
    let lab = Lab::up_with(PGFM, 3, &["replication.synchronous=\"quorum\""]);
    wait_sync(&lab, &["pg2", "pg3"], &["pg2", "pg3"]);
    let (watch, writer) = start_writing(&lab, &["pg1", "pg2", "pg3"]);
    lab.run_ok(&["lab", "kill", "pg1"]);
    let new = wait_for("a new primary", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        match status["primary"].as_str() {
            Some(p) if p != "pg1" && status["generation"].as_u64() >= Some(2) => Ok(p.to_string()),
            _ => Err(status.to_string()),
        }
    });
    writer.wait_more(21, "writes on the new primary");
    let ids = ids(&writer.finish());
    let found = lab.psql(&new, &count_of(&ids)).unwrap();
    assert_eq!(found, ids.len().to_string(), "acknowledged writes lost");
    assert!(watch.finish() > 0);
    // The coordinator that promoted is whichever of them won the election after pg1's death.
    assert!(
        ["pg2", "pg3", "witness"]
            .iter()
            .any(|n| lab.log(n).contains("WAL position measured")),
        "the coordinator promoted without reading the positions"
    );
    let other = if new == "pg2" { "pg3" } else { "pg2" };
    lab.run_ok(&["lab", "start", "pg1"]);
    wait_sync(&lab, &["pg1", other], &["pg1", other]);
}

/// The bench's fault runs as a test with a fixed seed (`pgfm bench failover --synchronous
/// --seed 1`; the bench runs 20): as root on the netns lab, host death, postmaster crash
/// and isolation of the primary, else the first two on the loopback lab. No acknowledged
/// write is lost and there are never two writers (the bench exits non-zero otherwise).
#[test]
fn seeded_fault_runs_lose_no_acknowledged_write() {
    let dir = pgfm_lab::harness::scratch_dir("bench");
    let mut command = crate::pgfm();
    command.args(["bench", "failover", "--synchronous", "on", "--seed", "1"]);
    command.args(["--runs", "3", "--json", "--dir"]).arg(&dir);
    command.args(["--scenario", "host-death", "--scenario", "postmaster-crash"]);
    if pgfm_lab::harness::is_root() {
        command.args(["--netns", "--scenario", "primary-isolation"]);
    }
    let output = command.output().expect("running pgfm bench failover");
    if dir.exists() {
        // A failed bench keeps its lab for inspection: a test removes it.
        let _ = crate::pgfm()
            .args(["lab", "down", "--dir"])
            .arg(&dir)
            .output();
    }
    assert!(output.status.success(), "{}", text(&output));
    let runs: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(runs.len(), 3, "{}", text(&output));
    for run in &runs {
        assert_eq!(run["lost"], 0, "{run}");
        assert_eq!(run["two_writer_moments"], 0, "{run}");
        assert!(run["acknowledged"].as_u64() > Some(50), "{run}");
    }
    let scenarios: std::collections::BTreeSet<&str> =
        runs.iter().filter_map(|r| r["scenario"].as_str()).collect();
    assert!(scenarios.len() >= 2, "the seed drew {scenarios:?}");
}
