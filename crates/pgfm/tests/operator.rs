//! End-to-end operator commands: switchover under load, and its refusals.

mod common;

use std::time::Duration;

use common::{node, pgfm, text, wait_for, Lab, WriteWatch, Writer};

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
    let lab = Lab::up(2);
    lab.wait_healthy("witness", SETTLE);
    lab.psql(
        "pg1",
        "CREATE TABLE bench (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
    )
    .unwrap();
    let watch = WriteWatch::start(&lab, &["pg1", "pg2"]);
    let writer = Writer::start(lab.writer_config(&["pg1", "pg2"]));
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
    let acked = writer.finish();
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
    let lab = Lab::up(2);
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

    let output = lab.run(&["lab", "kill", "pg2"]);
    assert!(output.status.success(), "{}", text(&output));
    wait_for("pg2 to show down", SETTLE, || {
        let (status, _) = lab.cluster_status("pg1")?;
        if node(&status, "pg2")["agent"] == "down" {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    refused(Some("pg2"), "pg2 is not a standby in sync with pg1");
    refused(None, "no standby is in sync with pg1");

    let lab_status = lab.lab_status();
    let port = lab_status["nodes"][0]["agent_port"].as_u64().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = pgfm_api::ApiClient::new(
        &format!("127.0.0.1:{port}"),
        "not-the-token-0123456789",
        Duration::from_secs(2),
    );
    match rt.block_on(client.switchover(Some("pg2".into()))) {
        Err(pgfm_api::ApiError::Unauthorized { .. }) => {}
        other => panic!("a switchover without the token was not refused: {other:?}"),
    }
}
