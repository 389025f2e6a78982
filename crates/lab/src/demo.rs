//! `pgfm demo`: a guided tour on a throw-away lab. It shows the cluster, kills the
//! primary's host, watches the failover with timings, restarts the old node, watches it
//! rejoin as a standby, shows the cluster again and tears everything down.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use pgfm_api::NodeKindStatus;

use crate::drive::LabDriver;
use pgfm_api::status_text;

fn say(text: &str) {
    println!("\n==> {text}");
}

pub fn run(dir: &Path, keep: bool) -> anyhow::Result<ExitCode> {
    say(&format!(
        "Building a lab in {}: data nodes pg1 and pg2 and a witness, each with its own agent, \
         real PostgreSQL on 127.0.0.1",
        dir.display()
    ));
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding the pgfm binary")?;
    let (driver, printed) = LabDriver::up(&exe, dir, 2, &[], false)?;
    print!("{printed}");
    let outcome = tour(&driver, started);
    if keep {
        say(&format!(
            "The lab keeps running; remove it with: pgfm lab down --dir {}",
            driver.dir.display()
        ));
    } else {
        say("Tearing the lab down");
        driver.down()?;
        println!("Done. Run it yourself: pgfm lab up, pgfm lab kill pg1, pgfm lab start pg1, pgfm cluster-status -c DIR/pg1/pgfm.toml");
    }
    outcome.map(|()| ExitCode::SUCCESS)
}

fn tour(driver: &LabDriver, started: Instant) -> anyhow::Result<()> {
    let rt = crate::runtime()?;
    rt.block_on(async {
        let settle = Duration::from_secs(90);
        let status = driver.status().await?;
        let old = status.primary.clone().context("the lab has no primary")?;
        println!("(lab ready {:.1} s after start)", started.elapsed().as_secs_f64());

        say(&format!("Writing 1000 rows on the primary, {old}"));
        let client = pgfm_postgres::probe::connect(&driver.target(&old)?)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {old}: {e}"))?;
        client
            .simple_query("CREATE TABLE demo (id int PRIMARY KEY); INSERT INTO demo SELECT generate_series(1, 1000)")
            .await
            .context("writing the demo rows")?;
        drop(client);
        driver
            .wait("the standby to have replayed them", settle, |s| {
                s.nodes
                    .iter()
                    .any(|n| n.kind == NodeKindStatus::Standby && n.lag_bytes == Some(0))
                    .then_some(())
            })
            .await?;

        say(&format!(
            "Killing {old}'s host: its agent and its PostgreSQL get SIGKILL (pgfm lab kill {old})"
        ));
        let killed = Instant::now();
        driver.kill(&old, false)?;
        let after = driver
            .wait("a new primary", settle, |s| {
                s.primary.as_ref().filter(|p| **p != old).map(|_| s.clone())
            })
            .await?;
        let new = after.primary.clone().context("no primary")?;
        let lease = pgfm_core::lease::LeaseSettings::default();
        println!(
            "{new} is the primary of generation {} {:.1} s after the kill: the coordinator waited for \
             {old}'s lease to run out ({:.1} s + {:.1} s margin), committed the promotion in the Raft log, \
             then {new} replayed its WAL and was promoted.",
            after.generation,
            killed.elapsed().as_secs_f64(),
            lease.lease_ms as f64 / 1000.0,
            lease.drift_margin_ms as f64 / 1000.0
        );
        print!("{}", status_text::render(&after));

        say(&format!(
            "Starting {old}'s agent again, as after a reboot (pgfm lab start {old}). It must not \
             come back as a primary: it rewinds against {new} and streams from it"
        ));
        let restarted = Instant::now();
        driver.start(&old)?;
        let rejoined = driver
            .wait(&format!("{old} to stream from {new}"), settle, |s| {
                // Streaming as its own agent reports it, on the new primary's timeline: the
                // primary's walsender alone may say so a moment before the standby's report.
                let n = s.nodes.iter().find(|n| n.name == old)?;
                let timeline = s.nodes.iter().find(|n| n.name == new)?.timeline;
                let streams = n.kind == NodeKindStatus::Standby
                    && n.in_sync == Some(true)
                    && n.timeline.is_some()
                    && n.timeline == timeline
                    && n.info.starts_with("streaming");
                streams.then(|| s.clone())
            })
            .await?;
        println!(
            "{old} streams from {new} on timeline {} {:.1} s after its agent started.",
            rejoined
                .nodes
                .iter()
                .find(|n| n.name == old)
                .and_then(|n| n.timeline)
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            restarted.elapsed().as_secs_f64()
        );
        let client = pgfm_postgres::probe::connect(&driver.target(&new)?)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {new}: {e}"))?;
        let rows: i64 = client
            .query_one("SELECT count(*) FROM demo", &[])
            .await
            .context("counting the demo rows")?
            .get(0);
        println!("The new primary {new} holds all {rows} rows written before the failover.");

        say("The cluster now");
        print!("{}", status_text::render(&rejoined));
        anyhow::Ok(())
    })
}
