//! Partitions and the virtual IP on a `--netns` lab: every node its own host, the client in
//! a namespace of its own, writes through the VIP only. These need root (network
//! namespaces); without it each test prints why it is skipped and does nothing else.

use std::time::{Duration, Instant};

use pgfm_lab::harness::{node, text, wait_for, NetnsLab, SplitBrainWatch, VipWatch, WaitForWrites};
use pgfm_lab::writers::{longest_gap, Writer, BENCH_TABLE};

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

fn make_bench_table(lab: &NetnsLab) {
    lab.psql("pg1", BENCH_TABLE).unwrap();
}

/// Start the neutral writer through the VIP and wait until it writes.
fn start_writer(lab: &NetnsLab) -> Writer {
    let writer = Writer::start(lab.vip_writer_config(), 1);
    writer.wait_more(21, "the writer to write through the VIP");
    writer
}

fn wait_vip_on(lab: &NetnsLab, expected: &[&str]) {
    wait_for(&format!("the VIP on exactly {expected:?}"), SETTLE, || {
        let holders = lab.vip_holders(&["pg1", "pg2"]);
        if holders == expected {
            Ok(())
        } else {
            Err(format!("{holders:?}"))
        }
    });
}

/// The old primary's rejoin on the new timeline, seen by the witness.
fn wait_rejoined(lab: &NetnsLab, old: &str, new: &str, generation: u64) {
    let status = lab.wait_primary("witness", new, generation, SETTLE);
    let old = node(&status, old);
    assert_eq!(old["kind"], "standby", "{status}");
    assert_eq!(old["timeline"], generation, "{status}");
    assert_eq!(old["in_sync"], true, "{status}");
}

/// Cut pg1 off (`partition` adds to `lab partition pg1`) under the writer: pg2 is
/// promoted, the VIP moves, writes go on through it; healed, pg1 rejoins on timeline 2.
/// Checks that no two nodes were writable at once; returns the VIP holders seen.
fn cut_the_primary_off(lab: &NetnsLab, partition: &[&str]) -> Vec<Vec<String>> {
    lab.wait_healthy("witness", SETTLE);
    make_bench_table(lab);
    let watch = SplitBrainWatch::start(lab, &["pg1", "pg2"]);
    let vips = VipWatch::start(lab, &["pg1", "pg2"]);
    let writer = start_writer(lab);

    let args: Vec<&str> = ["lab", "partition", "pg1"]
        .iter()
        .chain(partition)
        .copied()
        .collect();
    lab.run_ok(&args);
    lab.wait_for_primary_change("pg2", 2);
    wait_vip_on(lab, &["pg2"]);
    writer.wait_more(50, "writes through the VIP to go on");

    lab.run_ok(&["lab", "heal"]);
    wait_rejoined(lab, "pg1", "pg2", 2);
    writer.finish();
    assert!(watch.finish() > 0, "the watch saw no writable primary");
    vips.finish()
}

/// The primary is cut off from every other node (the client still reaches it): it fences
/// itself before its lease can run out, the majority promotes pg2, the VIP moves, and at no
/// moment do two nodes accept writes. Healed, the old primary rejoins on the new timeline.
#[test]
fn primary_cut_off_fences_itself_and_the_majority_promotes() {
    let Some(lab) = NetnsLab::up(PGFM, &[]) else {
        return;
    };
    let seen = cut_the_primary_off(&lab, &[]);
    assert_eq!(
        seen,
        vec![vec!["pg1".to_string()], vec![], vec!["pg2".to_string()]],
        "the VIP left pg1 before it came to pg2"
    );
    // The VIP goes before PostgreSQL is stopped: removed by the fence itself, or a moment
    // earlier by the decide loop that found the lease gone (the two are serialised).
    let log = lab.log("pg1");
    let removed = log.find("virtual IP removed");
    let fenced = log.find("PostgreSQL fenced");
    assert!(
        removed.is_some() && fenced.is_some() && removed < fenced,
        "{log}"
    );
}

/// One-way loss: what the others send to the primary is lost, what it sends arrives. It
/// cannot renew its lease, so it fences itself and pg2 is promoted, as for a full cut.
#[test]
fn one_way_loss_to_the_primary_fails_over() {
    let Some(lab) = NetnsLab::up(PGFM, &[]) else {
        return;
    };
    cut_the_primary_off(&lab, &["--one-way"]);
}

/// The witness, then the standby, cut off from the other nodes: the primary keeps its
/// lease (a new coordinator is elected if the lost node was it), no failover happens and
/// writes through the VIP never stop.
#[test]
fn witness_or_standby_cut_off_changes_nothing() {
    let Some(lab) = NetnsLab::up(PGFM, &[]) else {
        return;
    };
    lab.wait_healthy("witness", SETTLE);
    make_bench_table(&lab);
    let vips = VipWatch::start(&lab, &["pg1", "pg2"]);
    let writer = start_writer(&lab);

    // Longer than the lease and its drift margin (2.4 s + 0.4 s): a failover would show.
    let window = Duration::from_secs(6);
    // The coordinator first when it is not the primary: an isolated coordinator keeps
    // believing it leads, and what it decides alone must never count.
    let (status, _) = lab.cluster_status("pg1").expect("status from pg1");
    let order = match status["coordinator"].as_str() {
        Some("pg2") => ["pg2", "witness"],
        _ => ["witness", "pg2"],
    };
    for cut in order {
        lab.run_ok(&["lab", "partition", cut]);
        let until = Instant::now() + window;
        while Instant::now() < until {
            let (status, _) = lab.cluster_status("pg1").expect("status from pg1");
            assert_eq!(status["primary"], "pg1", "{cut} cut off: {status}");
            assert_eq!(status["generation"], 1, "{cut} cut off: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
        lab.run_ok(&["lab", "heal"]);
        lab.wait_primary("witness", "pg1", 1, SETTLE);
    }
    let acks = writer.finish();
    let gap = longest_gap(&acks, acks[0].1);
    assert!(
        gap < Duration::from_secs(1),
        "writes through the VIP stopped for {gap:?}"
    );
    assert_eq!(vips.finish(), vec![vec!["pg1".to_string()]]);
    assert!(!lab.log("pg1").contains("fencing"), "{}", lab.log("pg1"));
}

/// A coordinator that cannot receive (one-way loss to the standby or witness that leads):
/// the two that hear each other elect another coordinator during the fault, nothing is
/// promoted, writes through the VIP stop for a few seconds at most, and the deaf one steps
/// aside (no majority answers it). Over TCP its heartbeats die with their connections
/// anyway (no answer, the request times out, a new connection is never made), so the
/// outcome would hold without the step aside; the simulation, whose messages need no
/// connection, is where a deaf leader kept the others from electing.
#[test]
fn a_coordinator_that_cannot_receive_steps_aside() {
    // Without a watchdog: the primary's agent may be restarted below to move the coordinator.
    let Some(lab) = NetnsLab::up_with(PGFM, 2, &["watchdog.mode=\"off\""]) else {
        return;
    };
    lab.wait_healthy("witness", SETTLE);
    make_bench_table(&lab);
    let coordinator = lab.move_coordinator_to_one_of(&["pg2", "witness"]);
    let writer = start_writer(&lab);

    lab.run_ok(&["lab", "partition", &coordinator, "--one-way"]);
    let observer = if coordinator == "pg2" {
        "witness"
    } else {
        "pg2"
    };
    wait_for("another coordinator during the fault", SETTLE, || {
        let (status, _) = lab.cluster_status(observer)?;
        match status["coordinator"].as_str() {
            Some(c) if c != coordinator => Ok(()),
            other => Err(format!("{other:?}: {status}")),
        }
    });
    writer.wait_more(100, "writes through the VIP to go on during the fault");
    lab.run_ok(&["lab", "heal"]);
    let status = lab.wait_primary("witness", "pg1", 1, SETTLE);
    assert_eq!(status["generation"], 1, "{status}");
    let acks = writer.finish();
    let gap = longest_gap(&acks, acks[0].1);
    assert!(
        gap < Duration::from_secs(8),
        "writes through the VIP stopped for {gap:?}"
    );
    let log = lab.log(&coordinator);
    assert!(log.contains("stepping aside"), "{log}");
}

/// Host death, rejoin, switchover back, then a clean stop of the primary's agent: the VIP
/// is added once and only on the primary each time, and leaves with the stopped agent.
/// `lab down` then leaves no namespace behind.
#[test]
fn the_vip_follows_failover_and_switchover_and_leaves_with_a_stopped_agent() {
    let Some(lab) = NetnsLab::up(PGFM, &[]) else {
        return;
    };
    lab.wait_healthy("witness", SETTLE);
    let vips = VipWatch::start(&lab, &["pg1", "pg2"]);

    lab.run_ok(&["lab", "kill", "pg1"]);
    lab.wait_for_primary_change("pg2", 2);
    wait_vip_on(&lab, &["pg2"]);
    lab.run_ok(&["lab", "start", "pg1"]);
    wait_rejoined(&lab, "pg1", "pg2", 2);

    let output = crate::pgfm()
        .args(["switchover", "--to", "pg1", "-c"])
        .arg(lab.config("witness"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    wait_vip_on(&lab, &["pg1"]);
    let status = lab.wait_primary("witness", "pg1", 3, SETTLE);
    assert_eq!(status["vip"]["on"], serde_json::json!(["pg1"]), "{status}");
    assert_eq!(node(&status, "pg1")["vip"], true, "{status}");
    assert_eq!(node(&status, "pg2")["vip"], false, "{status}");

    // The cluster's vip.address changed (edit-config, no restart): the primary drops the
    // old address and carries the new one; the standby carries neither.
    let old = lab.vip().to_string();
    let (host, prefix) = old.rsplit_once('/').unwrap();
    let (net, last) = host.rsplit_once('.').unwrap();
    let moved = format!("{net}.{}/{prefix}", last.parse::<u8>().unwrap() + 1);
    let output = crate::pgfm()
        .args([
            "edit-config",
            "--set",
            &format!("vip.address={moved}"),
            "-c",
        ])
        .arg(lab.config("witness"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    wait_for(&format!("pg1 to carry {moved} alone"), SETTLE, || {
        let carried = (
            lab.carries("pg1", &moved),
            lab.carries("pg1", &old),
            lab.carries("pg2", &moved),
        );
        if carried == (true, false, false) {
            Ok(())
        } else {
            Err(format!("pg1 new, pg1 old, pg2 new: {carried:?}"))
        }
    });
    wait_for("the status to show the new address", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        (status["vip"]["address"] == moved.as_str())
            .then_some(())
            .ok_or(format!("{}", status["vip"]))
    });

    // A clean stop of the primary's agent takes the VIP away with it.
    let pid = lab.lab_node("pg1").agent_pid.unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(&format!("pg1 to drop {moved}"), SETTLE, || {
        (!lab.carries("pg1", &moved))
            .then_some(())
            .ok_or("still there".to_string())
    });
    wait_vip_on(&lab, &[]);

    let seen = vips.finish();
    let holders: Vec<String> = seen
        .into_iter()
        .filter_map(|h| h.first().cloned())
        .collect();
    assert_eq!(holders, ["pg1", "pg2", "pg1"], "VIP holders in order");
    let added = |n: &str| lab.log(n).matches("virtual IP added").count();
    assert_eq!(
        (added("pg1"), added("pg2")),
        (3, 1),
        "each promotion adds it once, and the moved address once"
    );
    assert!(lab
        .log("pg1")
        .contains("virtual IP removed: the agent is stopping"));

    let prefix = lab.ns.prefix.clone();
    lab.run_ok(&["lab", "down"]);
    assert_eq!(pgfm_lab::netns::existing(&prefix), Vec::<String>::new());
}

/// `lab up --netns` as an ordinary user is refused, saying why, and leaves nothing.
#[test]
fn netns_lab_is_refused_without_root() {
    let dir = pgfm_lab::harness::scratch_dir("netns-user");
    let mut command = if pgfm_lab::harness::is_root() {
        // Drop to an ordinary user for this one command.
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ]);
        c.arg(env!("CARGO_BIN_EXE_pgfm"));
        c
    } else {
        crate::pgfm()
    };
    let output = command
        .args(["lab", "up", "--netns", "--dir"])
        .arg(&dir)
        .output()
        .expect("running pgfm lab up --netns");
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--netns needs root"),
        "{}",
        text(&output)
    );
    assert!(!dir.exists(), "a refused lab left {}", dir.display());
}

/// `lab up --netns` killed half-way (namespaces made, agents starting): `lab down` removes
/// every namespace and process it left.
#[test]
fn lab_down_cleans_up_after_a_crashed_lab_up() {
    if !pgfm_lab::harness::is_root() {
        println!("SKIPPED: network namespaces need root; this scenario runs as root only");
        return;
    }
    let dir = pgfm_lab::harness::scratch_dir("netns-crash");
    let mut up = crate::pgfm()
        .args(["lab", "up", "--netns", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting pgfm lab up --netns");
    let prefix = wait_for("the lab's namespaces", SETTLE, || {
        let file = std::fs::read_to_string(dir.join("lab.json")).map_err(|e| e.to_string())?;
        let lab: serde_json::Value = serde_json::from_str(&file).map_err(|e| e.to_string())?;
        let prefix = lab["netns"]["prefix"]
            .as_str()
            .ok_or("no prefix yet")?
            .to_string();
        let agent = lab["nodes"][0]["agent_pid"]
            .as_u64()
            .ok_or("no agent yet")?;
        match pgfm_lab::netns::existing(&prefix).len() {
            0 => Err("no namespace yet".to_string()),
            _ => Ok((prefix, agent as i32)),
        }
    });
    let (prefix, agent) = prefix;
    up.kill().unwrap();
    up.wait().unwrap();
    let output = crate::pgfm()
        .args(["lab", "down", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(pgfm_lab::netns::existing(&prefix), Vec::<String>::new());
    assert!(!dir.exists());
    // Gone, or a zombie waiting for its new parent (init) to reap it.
    let state = std::fs::read_to_string(format!("/proc/{agent}/stat")).unwrap_or_default();
    let running = state
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z'));
    assert!(!running, "the agent {agent} outlived lab down: {state}");
}

/// Pre-vote: a node cut off for many election timeouts comes back without deposing the
/// working coordinator (openraft alone would let its risen term end the coordinator's
/// term: over a second without one). No agent becomes coordinator after the heal.
#[test]
fn a_healed_node_does_not_depose_the_coordinator() {
    let Some(lab) = NetnsLab::up(PGFM, &[]) else {
        return;
    };
    let status = lab.wait_healthy("witness", SETTLE);
    let coordinator = status["coordinator"].as_str().unwrap().to_string();
    let victim = ["pg2", "witness"]
        .into_iter()
        .find(|n| *n != coordinator)
        .unwrap();
    let elected = |lab: &NetnsLab| -> usize {
        ["pg1", "pg2", "witness"]
            .iter()
            .map(|n| {
                lab.log(n)
                    .matches("this agent is now the coordinator")
                    .count()
            })
            .sum()
    };
    let before = elected(&lab);
    lab.run_ok(&["lab", "partition", victim]);
    // Many election timeouts (0.6-0.8 s each) cut off: the fault's length.
    std::thread::sleep(Duration::from_secs(6)); // the fault's length, not a wait for a state
    lab.run_ok(&["lab", "heal"]);
    let healed = Instant::now();
    let status = lab.wait_healthy("witness", SETTLE);
    // Long enough for the healed node's answer to the first heartbeats.
    while healed.elapsed() < Duration::from_secs(3) {
        let (status, _) = lab.cluster_status("witness").unwrap();
        assert_eq!(
            status["coordinator"].as_str(),
            Some(coordinator.as_str()),
            "the coordinator changed after the heal: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        elected(&lab),
        before,
        "an agent was elected coordinator after {victim} was cut off and healed"
    );
    assert_eq!(status["generation"], 1, "{status}");
}
