//! End-to-end: `pgfm reinit NODE` (issue 15, item 3) re-clones a standby, its old data
//! directory kept aside; refused for the primary and a witness, changing nothing.

use std::time::Duration;

use pgfm_lab::harness::{node, text, wait_for, Lab};

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(60);

#[test]
fn a_standby_is_re_cloned_and_its_old_directory_kept_aside() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("witness", SETTLE);
    lab.committed_rows("pg1", "pg2", 100);
    // A mark left in the old directory, to find it aside afterwards.
    let data = lab.dir.join("pg2").join("data");
    std::fs::write(data.join("pgfm-test-mark"), "old").unwrap();

    for (who, says) in [
        ("pg1", "pg1 is the primary: switch over first"),
        ("witness", "node witness is not a registered data node"),
    ] {
        let output = lab.cli("witness", &["reinit", who]);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(
            text(&output).contains("reinit refused, nothing was changed")
                && text(&output).contains(says),
            "{}",
            text(&output)
        );
    }
    let (status, _) = lab.cluster_status("witness").unwrap();
    assert_eq!(status["generation"], 1, "{status}");

    let output = lab.cli("pg2", &["reinit", "pg2"]);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("pg2 is re-cloned and streams in sync"),
        "{said}"
    );
    let status = lab.wait_healthy("witness", SETTLE);
    assert_eq!(node(&status, "pg2")["kind"], "standby", "{status}");
    assert_eq!(status["primary"], "pg1", "{status}");
    let aside = lab.dir.join("pg2").join("data.pgfm-old");
    assert!(aside.join("pgfm-test-mark").exists(), "{said}");
    assert!(!data.join("pgfm-test-mark").exists(), "{said}");
    lab.psql("pg1", "INSERT INTO kept VALUES (101)").unwrap();
    wait_for("pg2 to hold every row", SETTLE, || {
        match lab.psql("pg2", "SELECT count(*) FROM kept")?.as_str() {
            "101" => Ok(()),
            n => Err(format!("{n} rows")),
        }
    });
}
