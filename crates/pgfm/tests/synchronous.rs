//! Synchronous replication on real PostgreSQL: the primary names its synchronous standby
//! only once the set is committed, a lost standby blocks commits in strict mode and is
//! dropped (asynchronous, said in status) otherwise, and — on the netns lab — a primary cut
//! off from its standby acknowledges nothing that a failover then loses.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{node, text, wait_for, Lab, NetnsLab, VipWatch, WriteWatch, Writer};

const SETTLE: Duration = Duration::from_secs(60);

fn run(lab: &Lab, args: &[&str]) {
    let output = lab.run(args);
    assert!(output.status.success(), "{args:?}: {}", text(&output));
}

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

    run(&lab, &["lab", "kill", "pg2"]);
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
    run(&lab, &["lab", "kill", "pg1", "--postgres-only"]);
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

    run(&lab, &["lab", "start", "pg2"]);
    wait_for("commits to be acknowledged again", SETTLE, || {
        commit_one(&lab, "pg1")
    });
}

/// Not strict: the synchronous standby's host dies; once its agent counts as down the
/// primary stops waiting (status says DEGRADED, the log says so) and the committed set is
/// emptied; the standby comes back and is synchronous again.
#[test]
fn non_strict_mode_degrades_then_recovers() {
    let lab = Lab::up_with(2, &["replication.synchronous=\"on\""]);
    wait_sync(&lab, &["pg2"], &["pg2"]);

    run(&lab, &["lab", "kill", "pg2"]);
    let status = wait_sync(&lab, &[], &[]);
    assert!(sync_of(&status).2, "degraded: {status}");
    commit_one(&lab, "pg1").expect("commits go through asynchronously");
    assert!(lab.log("pg1").contains("synchronous replication off"));

    run(&lab, &["lab", "start", "pg2"]);
    wait_sync(&lab, &["pg2"], &["pg2"]);
    commit_one(&lab, "pg1").unwrap();
}

/// Three data nodes, one synchronous standby: at the primary's host death only that
/// standby may be promoted, and no acknowledged write is lost.
#[test]
fn failover_promotes_the_synchronous_standby_and_loses_nothing() {
    let lab = Lab::up_with(3, &["replication.synchronous=\"on\""]);
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
    lab.psql(
        "pg1",
        "CREATE TABLE bench (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
    )
    .unwrap();
    let watch = WriteWatch::start(&lab, &["pg1", "pg2", "pg3"]);
    let writer = Writer::start(lab.writer_config(&["pg1", "pg2", "pg3"]));
    writer.wait_more(51, "the writer to write");
    run(&lab, &["lab", "kill", "pg1"]);
    lab.wait_for_primary_change(&sync, 2);
    writer.wait_more(21, "writes on the new primary");
    let ids = writer.finish();
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
    let Some(lab) = NetnsLab::up(&["replication.synchronous=\"on\""]) else {
        return;
    };
    wait_sync(&lab, &["pg2"], &["pg2"]);
    lab.psql(
        "pg1",
        "CREATE TABLE bench (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
    )
    .unwrap();
    let watch = WriteWatch::start(&lab, &["pg1", "pg2"]);
    let vips = VipWatch::start(&lab, &["pg1", "pg2"]);
    let writer = Writer::start(lab.vip_writer_config());
    writer.wait_more(51, "the writer to write");
    run(&lab, &["lab", "partition", "pg1"]);
    lab.wait_for_primary_change("pg2", 2);
    writer.wait_more(21, "writes through the VIP on pg2");
    let ids = writer.finish();
    let found = lab.psql("pg2", &count_of(&ids)).unwrap();
    assert_eq!(found, ids.len().to_string(), "acknowledged writes lost");
    assert!(watch.finish() > 0);
    vips.finish();
    run(&lab, &["lab", "heal"]);
    lab.wait_primary("witness", "pg2", 2, SETTLE);
}
