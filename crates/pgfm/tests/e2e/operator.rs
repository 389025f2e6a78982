//! End-to-end operator commands: switchover under load, and its refusals.

use std::time::Duration;

use crate::pgfm;
use pgfm_lab::harness::{node, text, wait_for, Lab, SplitBrainWatch};
use pgfm_lab::writers::{ids, Writer, BENCH_TABLE};

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

fn switchover(lab: &Lab, via: &str, to: Option<&str>) -> std::process::Output {
    let mut command = pgfm();
    command.args(["switchover", "-c"]).arg(lab.config(via));
    if let Some(to) = to {
        command.args(["--to", to]);
    }
    command.output().unwrap()
}

/// Five switchovers back and forth while a writer commits every 10 ms: each returns with
/// the old primary streaming from the new one, the generation goes up by one each time,
/// no two nodes are ever writable at once, and every acknowledged row is there at the end.
#[test]
fn five_switchovers_under_write_load_lose_nothing() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    lab.psql("pg1", BENCH_TABLE).unwrap();
    let watch = SplitBrainWatch::start(&lab, &["pg1", "pg2"]);
    let writer = Writer::start(lab.writer_config(&["pg1", "pg2"]), 1);
    wait_for("the writer to write", SETTLE, || {
        if writer.count() > 20 {
            Ok(())
        } else {
            Err(writer.count().to_string())
        }
    });

    for round in 0..5u64 {
        let (from, to) = if round % 2 == 0 {
            ("pg1", "pg2")
        } else {
            ("pg2", "pg1")
        };
        let output = switchover(&lab, "witness", None);
        assert!(output.status.success(), "round {round}: {}", text(&output));
        assert!(
            text(&output).contains(&format!("{to} is the primary of generation {}", round + 2)),
            "{}",
            text(&output)
        );
        let (status, code) = lab.cluster_status("witness").unwrap();
        assert_eq!(code, 0, "{status}");
        assert_eq!(status["primary"], to);
        assert_eq!(node(&status, from)["kind"], "standby", "{status}");
        let before = writer.count();
        wait_for("writes after the switchover", SETTLE, || {
            if writer.count() > before + 10 {
                Ok(())
            } else {
                Err(writer.count().to_string())
            }
        });
    }
    let acked = ids(&writer.finish());
    let primary = lab.primary("witness").unwrap();
    let found = lab
        .psql(
            &primary,
            &format!(
                "SELECT count(*) FROM bench WHERE id <= {}",
                acked.iter().max().unwrap()
            ),
        )
        .unwrap();
    let found: usize = found.parse().unwrap();
    assert!(
        found >= acked.len(),
        "{} acknowledged, {found} present on {primary}",
        acked.len()
    );
    for id in [acked[0], acked[acked.len() / 2], *acked.last().unwrap()] {
        assert_eq!(
            lab.psql(
                &primary,
                &format!("SELECT count(*) FROM bench WHERE id = {id}")
            )
            .unwrap(),
            "1",
            "row {id} lost"
        );
    }
    watch.finish();
}

/// Refusals change nothing and say why: an unknown node, the primary itself, a standby
/// that is down, and a request without the right token.
#[test]
fn switchover_refusals_change_nothing() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    let refused = |to: Option<&str>, expected: &str| {
        let output = switchover(&lab, "pg1", to);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(text(&output).contains(expected), "{}", text(&output));
        let (status, _) = lab.cluster_status("pg1").unwrap();
        assert_eq!(
            status["generation"], 1,
            "a refused switchover changed the cluster: {status}"
        );
    };
    refused(
        Some("pg7"),
        "unknown node \"pg7\" (the members are pg1, pg2, witness)",
    );
    refused(Some("pg1"), "pg1 is already the primary");
    refused(Some("witness"), "witness is not a standby in sync with pg1");
    // The same through --agent URL, --token-file and --tls-dir, from anywhere: with a
    // node's files, and with a client certificate of the cluster CA (as pgfm init --add
    // --client writes it).
    let ca = pgfm_init::pki::Authority::load(pgfm_init::pki::Pem {
        cert: std::fs::read_to_string(lab.dir.join("ca.crt")).unwrap(),
        key: std::fs::read_to_string(lab.dir.join("ca.key")).unwrap(),
    })
    .unwrap();
    let client = lab.dir.join("operator");
    std::fs::create_dir_all(&client).unwrap();
    let pem = ca.issue_client("lab", "operator").unwrap();
    std::fs::write(client.join("ca.crt"), &ca.pem.cert).unwrap();
    std::fs::write(client.join("client.crt"), &pem.cert).unwrap();
    std::fs::write(client.join("client.key"), &pem.key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        client.join("client.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let port = lab.lab_node("witness").agent_port;
    for tls_dir in [lab.dir.join("pg1"), client] {
        let output = pgfm()
            .args([
                "switchover",
                "--to",
                "pg7",
                "--agent",
                &format!("https://127.0.0.1:{port}"),
                "--token-file",
            ])
            .arg(lab.dir.join("token"))
            .arg("--tls-dir")
            .arg(&tls_dir)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(
            text(&output).contains("unknown node \"pg7\""),
            "{}",
            text(&output)
        );
    }

    lab.run_ok(&["lab", "kill", "pg2"]);
    lab.wait_agent_down("pg1", "pg2");
    refused(Some("pg2"), "pg2 is not a standby in sync with pg1");
    refused(None, "no standby is in sync with pg1");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = lab.client_with_token("pg1", "not-the-token-0123456789");
    match rt.block_on(client.switchover(Some("pg2".into()))) {
        Err(pgfm_api::ApiError::Unauthorized { .. }) => {}
        other => panic!("a switchover without the token was not refused: {other:?}"),
    }
}

/// The health endpoints load balancers use answer correctly before, during and after a
/// failover, and metrics and history tell the story.
#[test]
fn health_endpoints_follow_a_failover() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = |n: &str| lab.client(n);
    let expect = |n: &str, path: &str, want: u16| lab.expect_health(n, path, want);
    expect("pg1", "/primary", 200);
    expect("pg2", "/primary", 503);
    expect("witness", "/primary", 503);
    expect("pg2", "/replica", 200);
    expect("pg2", "/replica?max_lag=1048576", 200);
    expect("pg1", "/replica", 503);
    for n in ["pg1", "pg2", "witness"] {
        expect(n, "/health", 200);
    }
    let metrics = |n: &str| rt.block_on(client(n).metrics()).unwrap();
    let shown = metrics("pg1");
    assert!(
        shown.contains("pgfm_role{node=\"pg1\",role=\"primary\"} 1"),
        "{shown}"
    );
    assert!(
        shown.contains("pgfm_lease_remaining_seconds{node=\"pg1\"}"),
        "{shown}"
    );

    let output = lab.run(&["lab", "kill", "pg1"]);
    assert!(output.status.success(), "{}", text(&output));
    lab.wait_for_primary_change("pg2", 2);
    expect("pg2", "/primary", 200);
    expect("pg2", "/replica", 503);
    let output = lab.run(&["lab", "start", "pg1"]);
    assert!(output.status.success(), "{}", text(&output));
    expect("pg1", "/replica", 200);
    expect("pg1", "/primary", 503);

    let history = rt.block_on(client("witness").history()).unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!((history[0].generation, history[0].to.as_str()), (2, "pg2"));
    assert!(
        history[0].reason.contains("lease of primary pg1 expired"),
        "{history:?}"
    );
    let output = pgfm()
        .args(["history", "-c"])
        .arg(lab.config("pg1"))
        .output()
        .unwrap();
    assert!(
        text(&output).contains("the lease of primary pg1 expired"),
        "{}",
        text(&output)
    );
    let shown = metrics("pg2");
    assert!(
        shown.contains("pgfm_failovers_total{node=\"pg2\"} 1"),
        "{shown}"
    );
}

/// With automatic failover off, `pgfm promote` is the operator's failover: refused for a
/// node with priority 0 (nothing changes), then, after `set-priority`, the live old primary
/// is stopped and fenced first and the target promoted; the old primary streams from it.
#[test]
fn promote_fences_a_live_primary_first_and_works_with_auto_failover_off() {
    let lab = Lab::up_with(PGFM, 2, &["failover.auto_failover=false"]);
    lab.wait_healthy("witness", SETTLE);
    let watch = SplitBrainWatch::start(&lab, &["pg1", "pg2"]);
    let output = lab.cli("pg1", &["set-priority", "pg2", "0"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = lab.cli("pg1", &["promote", "--to", "pg2"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("pg2 is not a running, promotable standby"),
        "{}",
        text(&output)
    );
    assert_eq!(lab.cluster_status("pg1").unwrap().0["generation"], 1);

    let output = lab.cli("pg2", &["set-priority", "pg2", "100"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = lab.cli("witness", &["promote", "--to", "pg2"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("pg2 is the primary of generation 2"),
        "{}",
        text(&output)
    );
    assert!(
        text(&output).contains("data lost: none"),
        "{}",
        text(&output)
    );
    let status = lab.wait_primary("witness", "pg2", 2, SETTLE);
    assert_eq!(node(&status, "pg1")["kind"], "standby");
    assert_eq!(status["auto_failover"], false);
    watch.finish();
}

/// In maintenance mode a dead primary is not replaced automatically (status says so); the
/// operator's `pgfm promote` still works, and `pgfm resume` ends the mode.
#[test]
fn pause_stops_automatic_failover_until_the_operator_acts() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    let output = lab.cli("pg2", &["pause"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(lab.cluster_status("pg1").unwrap().0["paused"], true);
    let output = lab.run(&["lab", "kill", "pg1"]);
    assert!(output.status.success(), "{}", text(&output));
    // Status says the cluster is paused and a failover is needed.
    let (status, _) = lab.wait_problem("witness", "the cluster is paused");
    assert_eq!(status["generation"], 1);
    let output = lab.cli("witness", &["promote"]);
    assert!(output.status.success(), "{}", text(&output));
    lab.wait_for_primary_change("pg2", 2);
    let output = lab.cli("pg2", &["resume"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(lab.cluster_status("pg2").unwrap().0["paused"], false);
    let output = lab.cli("pg2", &["node-status"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("Node: pg2 (Primary)"),
        "{}",
        text(&output)
    );
}

/// `pgfm promote` just after the primary's host died, while its lease still runs and its
/// last report is fresh, takes the hand-over path: the primary looks alive. It never hands
/// over; once its lease has run out the promotion goes on as a failover to the same
/// target (paused or not), and the command says so and follows it to the end. (A long
/// lease and report_ttl, and a switchover_timeout past them, make sure the command lands
/// while pg1 still looks alive.)
#[test]
fn a_promotion_through_a_primary_that_died_goes_on_as_a_failover() {
    let lab = Lab::up_with(
        PGFM,
        2,
        &[
            "timing.lease=\"6s\"",
            "timing.report_ttl=\"10s\"",
            "failover.switchover_timeout=\"20s\"",
        ],
    );
    lab.wait_healthy("witness", SETTLE);
    let output = lab.cli("pg2", &["pause"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = lab.run(&["lab", "kill", "pg1"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = lab.cli("witness", &["promote"]);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("pg1 stops and hands over (fenced first), then pg2 is promoted"),
        "{said}"
    );
    assert!(
        said.contains("pgfm promote: pg1 stopped renewing its lease without handing over; pg2 is promoted by a failover instead"),
        "{said}"
    );
    assert!(
        said.contains("pg2 is the primary of generation 2"),
        "{said}"
    );
    // The history in the order it happened: the hand-over ended in generation 1, then the
    // promotion to generation 2.
    let output = lab.cli("pg2", &["history", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let entries = history.as_array().unwrap();
    let [.., ended, promoted] = entries.as_slice() else {
        panic!("{history}");
    };
    assert_eq!(
        (
            &ended["generation"],
            &ended["cancelled"],
            &ended["failover_instead"]
        ),
        (&1.into(), &true.into(), &true.into()),
        "{history}"
    );
    assert_eq!(
        (&promoted["generation"], &promoted["to"]),
        (&2.into(), &"pg2".into()),
        "{history}"
    );
}

/// A fence hook that fails aborts the promotion (status says why, nothing is promoted); once
/// it succeeds the promotion goes ahead, the hook sees the event in PGFM_* variables, and the
/// post-promotion hook runs on the new primary.
#[test]
fn hooks_gate_and_announce_a_failover() {
    let dir = pgfm_lab::harness::scratch_dir("hooks");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    std::fs::write(dir.join("fence.sh"), format!("env | grep ^PGFM_ > {d}/fence.env\necho fencing the old primary\nexit $(cat {d}/fence.exit)\n")).unwrap();
    std::fs::write(
        dir.join("post.sh"),
        format!("env | grep ^PGFM_ > {d}/post.env\n"),
    )
    .unwrap();
    std::fs::write(dir.join("fence.exit"), "1").unwrap();
    let fence = format!("hooks.fence=\"sh {d}/fence.sh\"");
    let post = format!("hooks.post_promotion=\"sh {d}/post.sh\"");
    let lab = Lab::up_with(PGFM, 2, &[&fence, &post, "hooks.timeout=\"10s\""]);
    lab.wait_healthy("witness", SETTLE);
    let output = lab.run(&["lab", "kill", "pg1"]);
    assert!(output.status.success(), "{}", text(&output));
    // The fence hook holds the promotion back.
    let (status, _) = lab.wait_problem("witness", "fence hook exited");
    assert_eq!(
        status["generation"], 1,
        "promoted despite the fence hook: {status}"
    );

    std::fs::write(dir.join("fence.exit"), "0").unwrap();
    lab.wait_for_primary_change("pg2", 2);
    let fence_env = std::fs::read_to_string(dir.join("fence.env")).unwrap();
    for want in [
        "PGFM_EVENT=fence",
        "PGFM_OLD_PRIMARY=pg1",
        "PGFM_NEW_PRIMARY=pg2",
        "PGFM_GENERATION=2",
        "PGFM_CLUSTER=lab",
    ] {
        assert!(
            fence_env.contains(want),
            "{want} missing from the fence hook's environment:\n{fence_env}"
        );
    }
    let post_env = wait_for("the post-promotion hook on pg2", SETTLE, || {
        std::fs::read_to_string(dir.join("post.env")).map_err(|e| e.to_string())
    });
    assert!(
        post_env.contains("PGFM_NODE=pg2") && post_env.contains("PGFM_EVENT=promoted"),
        "{post_env}"
    );
    let logs = format!("{}{}", lab.log("witness"), lab.log("pg2"));
    assert!(
        logs.contains("hook output: fencing the old primary"),
        "hook output not in the agent logs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `disallow-node` removes a standby through Raft: it leaves the allowed list, its agent is
/// refused, its slot is dropped on the primary; refused for the primary, for an unknown
/// node, and when the rest would have no majority up. `allow-node` brings it back.
// Long: one scenario, step by step (refusals, disallow, allow back); it reads best in one piece.
#[test]
fn membership_changes_through_raft_with_their_refusals() {
    let lab = Lab::up(PGFM, 3);
    lab.wait_healthy("witness", SETTLE);
    let refused = |args: &[&str], expected: &str| {
        let output = lab.cli("pg1", args);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(text(&output).contains(expected), "{}", text(&output));
    };
    refused(
        &["disallow-node", "pg1"],
        "pg1 is the primary: switch over first",
    );
    refused(&["disallow-node", "pg9"], "pg9 is not a member");
    refused(
        &["allow-node", "pg2", "127.0.0.1:1"],
        "pg2 is already a member",
    );

    // The coordinator may be pg3 itself (whoever won the last election): then it must be
    // told to remove itself, as an operator would after reading the refusal.
    // Returns whether it had to be forced.
    let disallow = |via: &str, name: &str| {
        let output = lab.cli(via, &["disallow-node", name]);
        let forced = text(&output).contains("is the coordinator answering this request");
        let output = if forced {
            lab.cli(via, &["disallow-node", name, "--force"])
        } else {
            output
        };
        assert!(output.status.success(), "{}", text(&output));
        forced
    };
    let pg3_was_coordinator = disallow("pg2", "pg3");
    let status = wait_for(
        "pg3 gone from the allowed list and its slot dropped",
        SETTLE,
        || {
            let (status, _) = lab.cluster_status("witness")?;
            let gone = !status["allowed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "pg3");
            let slots = lab.psql(
                "pg1",
                "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots",
            )?;
            if gone && slots == "pg2" {
                Ok(status)
            } else {
                Err(format!("{slots}: {status}"))
            }
        },
    );
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    // A former coordinator that removed itself hears of no new coordinator (it no longer
    // receives the log), so it has no one to report to and nobody has a report to refuse.
    wait_for("pg3's agent to be refused", SETTLE, || {
        let knows = lab.log("pg3").contains("was disallowed");
        let refused = pg3_was_coordinator
            || ["pg1", "pg2", "witness"].iter().any(|n| {
                lab.log(n)
                    .contains("refused a report from an agent that is not a member")
            });
        if knows && refused {
            Ok(())
        } else {
            Err(format!("pg3 knows: {knows}, refused: {refused}"))
        }
    });

    let port = lab.lab_node("pg3").agent_port;
    // A leadership change during the membership change makes the command fail (exit 2,
    // nothing half done that a retry cannot finish): retry as an operator would.
    wait_for("allow-node pg3 to succeed", SETTLE, || {
        let output = lab.cli(
            "witness",
            &["allow-node", "pg3", &format!("127.0.0.1:{port}")],
        );
        match output.status.code() {
            Some(0) => Ok(()),
            Some(1) if text(&output).contains("pg3 is already a member") => Ok(()),
            _ => Err(text(&output)),
        }
    });
    let status = wait_for("pg3 a streaming member again", SETTLE, || {
        let (status, code) = lab.cluster_status("witness")?;
        let back = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "pg3" && n["kind"] == "standby" && n["in_sync"] == true);
        if back && code == 0 {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    assert_eq!(status["allowed"].as_array().unwrap().len(), 4);

    // Back to three members, then the witness's agent dies: removing pg2 would leave pg1
    // alone up of two, no majority.
    disallow("pg1", "pg3");
    lab.run_ok(&["lab", "kill", "witness", "--agent-only"]);
    lab.wait_agent_down("pg1", "witness");
    refused(
        &["disallow-node", "pg2"],
        "the cluster would have no majority",
    );
    let (status, _) = lab.cluster_status("pg1").unwrap();
    assert!(
        status["allowed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "pg2"),
        "{status}"
    );
}

/// `stop-cluster` stops every agent and leaves PostgreSQL running and the cluster paused;
/// the agents come back to the same primary and generation, and `resume` ends the pause.
#[test]
fn stop_cluster_stops_every_agent_and_keeps_the_databases() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    let output = lab.cli("pg2", &["stop-cluster"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("PostgreSQL keeps running"),
        "{}",
        text(&output)
    );
    wait_for("every agent to stop", SETTLE, || {
        let status = lab.lab_status();
        let running: Vec<String> = status
            .nodes
            .iter()
            .filter(|n| n.agent_running)
            .map(|n| n.name.clone())
            .collect();
        if running.is_empty() {
            Ok(())
        } else {
            Err(running.join(","))
        }
    });
    assert_eq!(
        lab.psql("pg1", "SELECT NOT pg_is_in_recovery()").unwrap(),
        "t"
    );
    assert_eq!(lab.psql("pg2", "SELECT pg_is_in_recovery()").unwrap(), "t");
    for n in ["pg1", "pg2", "witness"] {
        let output = lab.run(&["lab", "start", n]);
        assert!(output.status.success(), "{}", text(&output));
    }
    let status = lab.wait_primary("witness", "pg1", 1, SETTLE);
    assert_eq!(status["paused"], true);
    let output = lab.cli("pg1", &["resume"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(lab.cluster_status("pg1").unwrap().0["paused"], false);
}

/// `pgfm switchover --at TIME` (issue 15, item 3): shown in status until it starts or is
/// cancelled; a time past, a time that cannot be read and a second schedule are refused,
/// changing nothing; `--cancel` drops it (kept in the history); one due in two seconds
/// starts as `pgfm switchover` would.
#[test]
fn a_scheduled_switchover_is_shown_cancelled_or_started_at_its_time() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    let said = lab.cli_ok("pg1", &["switchover", "--to", "pg2", "--at", "+1h"]);
    assert!(said.contains("switchover to pg2 scheduled at"), "{said}");
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(status["scheduled_switchover"]["to"], "pg2", "{status}");
    let text_status = text(&lab.cli("witness", &["cluster-status"]));
    assert!(
        text_status.contains("Scheduled switchover: at ")
            && text_status.contains("to pg2 (asked by"),
        "{text_status}"
    );
    for (at, says) in [
        ("+2h", "a switchover is already scheduled, at "),
        (
            "2000-01-01T00:00:00Z",
            "2000-01-01T00:00:00Z is in the past",
        ),
        ("tomorrow", "give a UTC time like 2026-12-24T03:00:00Z"),
    ] {
        let output = lab.cli("pg2", &["switchover", "--at", at]);
        assert_eq!(output.status.code(), Some(1), "{at}: {}", text(&output));
        assert!(text(&output).contains(says), "{at}: {}", text(&output));
    }
    let (after, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(
        after["scheduled_switchover"],
        status["scheduled_switchover"]
    );

    let said = lab.cli_ok("witness", &["switchover", "--cancel"]);
    assert!(
        said.contains("the scheduled switchover is cancelled"),
        "{said}"
    );
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert!(status["scheduled_switchover"].is_null(), "{status}");
    let history = text(&lab.cli("witness", &["history"]));
    assert!(history.contains("cancelled"), "{history}");

    lab.cli_ok("witness", &["switchover", "--at", "+2s"]);
    let status = lab.wait_primary("witness", "pg2", 2, SETTLE);
    assert!(status["scheduled_switchover"].is_null(), "{status}");
    assert_eq!(node(&status, "pg1")["kind"], "standby", "{status}");
}

/// `pgfm restart --at TIME`: committed and shown, refused for a past time, a node that is
/// not a data node or a second schedule (nothing changed), cancelled; at its time the
/// coordinator restarts the standby, then the primary by a switchover, and the schedule
/// ends.
#[test]
fn a_scheduled_restart_is_shown_cancelled_or_carried_out_at_its_time() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    let started = |n: &str| lab.psql(n, "SELECT pg_postmaster_start_time()").unwrap();
    let said = lab.cli_ok("pg1", &["restart", "--pending", "--at", "+1h"]);
    assert!(said.contains("restart scheduled at"), "{said}");
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(status["scheduled_restart"]["pending"], true, "{status}");
    let text_status = text(&lab.cli("witness", &["cluster-status"]));
    assert!(
        text_status.contains("Scheduled restart: at ")
            && text_status.contains("of every data node with a parameter pending restart"),
        "{text_status}"
    );
    for (args, says) in [
        (vec!["--at", "+2h"], "a restart is already scheduled, at "),
        (
            vec!["--at", "2000-01-01T00:00:00Z"],
            "2000-01-01T00:00:00Z is in the past",
        ),
        (vec!["pg9", "--at", "+2h"], "unknown node \"pg9\""),
        (
            vec!["witness", "--at", "+2h"],
            "node witness is not a registered data node",
        ),
    ] {
        let output = lab.cli("pg2", &[&["restart"], args.as_slice()].concat());
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", text(&output));
        assert!(text(&output).contains(says), "{args:?}: {}", text(&output));
    }
    let (after, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(after["scheduled_restart"], status["scheduled_restart"]);
    let said = lab.cli_ok("witness", &["restart", "--cancel"]);
    assert!(
        said.contains("the scheduled restart is cancelled"),
        "{said}"
    );
    let output = lab.cli("witness", &["restart", "--cancel"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("no restart is scheduled"),
        "{}",
        text(&output)
    );

    // Carried out: pg2, then pg1 by a switchover; the schedule ends.
    let before = (started("pg1"), started("pg2"));
    lab.cli_ok("witness", &["restart", "--at", "+2s"]);
    let status = lab.wait_primary("witness", "pg2", 2, SETTLE);
    assert_eq!(node(&status, "pg1")["kind"], "standby", "{status}");
    let status = wait_for("the scheduled restart to end", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        let streams = node(&status, "pg1")["info"]
            .as_str()
            .is_some_and(|i| i.starts_with("streaming"));
        (status["scheduled_restart"].is_null() && streams)
            .then_some(status.clone())
            .ok_or(format!("{status}"))
    });
    assert!(
        status["problems"].as_array().unwrap().is_empty(),
        "{status}"
    );
    assert_ne!(started("pg1"), before.0);
    assert_ne!(started("pg2"), before.1);
    assert_eq!(
        status["last_restart"]["restarted"],
        serde_json::json!(["pg2", "pg1"]),
        "{status}"
    );
    assert!(status["last_restart"]["stopped"].is_null(), "{status}");
    let shown = text(&lab.cli("witness", &["cluster-status"]));
    assert!(
        shown.contains("Last scheduled restart (at ")
            && shown.contains("finished at ")
            && shown.contains("restarted: pg2, pg1; passed over: none"),
        "{shown}"
    );
}
