//! A cluster from nothing, the way it is deployed: `pgfm lab up --netns` writes every node's
//! files with `pgfm init`, leaves every data directory empty, and the agents form the
//! cluster themselves (one node chosen and committed, initdb there, the others cloning),
//! with TLS on. Root only (network namespaces); without it the test says why and stops.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use pgfm_lab::harness::{is_root, node, scratch_dir, text, wait_for, NetnsLab, SplitBrainWatch};

use crate::PGFM;

const SETTLE: Duration = Duration::from_secs(90);

/// Processes whose command line mentions `needle` (initdb, postgres --single).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains("pgfm-test") {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// Three empty data nodes and a witness form a cluster with TLS on, although the agent of
/// the node chosen to initialise it is killed in the middle of initdb: the half-made
/// directory is moved aside, initdb runs again, exactly one cluster exists (every node has
/// its system identifier), and the cluster streams, fails over and rejoins.
#[test]
fn three_empty_nodes_form_a_cluster_even_when_the_chosen_agent_dies_in_initdb() {
    if !is_root() {
        println!("SKIPPED: network namespaces need root; this scenario runs as root only");
        return;
    }
    let dir = scratch_dir("from-empty");
    let log = std::fs::File::create(format!("{}.up.log", dir.display())).unwrap();
    let started = Instant::now();
    let mut up = std::process::Command::new(PGFM)
        .args(["lab", "up", "--netns", "--data-nodes", "3", "--dir"])
        .arg(&dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting pgfm lab up");
    wait_for(
        "lab.json with the lab's network",
        SETTLE,
        || match pgfm_lab::read_lab(&dir) {
            Ok(lab) if lab.netns.is_some() => Ok(()),
            other => Err(format!("{:?}", other.map(|l| l.nodes.len()))),
        },
    );
    // Taken down at the end, and on a panic with the agents' logs.
    let lab = NetnsLab::adopt(PGFM, &dir);

    // The nodes have equal priority: pg1, first by name, is chosen. Catch initdb at work.
    let data_dir = dir.join("pg1").join("data");
    let work = PathBuf::from(format!("{}.pgfm-initdb", data_dir.display()));
    let deadline = Instant::now() + SETTLE;
    while !work.exists() {
        assert!(
            Instant::now() < deadline && !data_dir.join("PG_VERSION").exists(),
            "never saw pg1's initdb at work in {}",
            work.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let agent = pgfm_lab::read_lab(&dir)
        .unwrap()
        .node("pg1")
        .unwrap()
        .agent_pid;
    let agent = agent.expect("pg1's agent pid");
    kill(Pid::from_raw(agent as i32), Signal::SIGKILL).unwrap();
    // What the agent ran dies with it: nothing goes on writing into the work directory.
    wait_for(
        "initdb to die with its agent",
        Duration::from_secs(10),
        || match processes_with(".pgfm-initdb") {
            left if left.is_empty() => Ok(()),
            left => Err(format!("{left:?}")),
        },
    );
    assert!(
        !data_dir.join("PG_VERSION").exists(),
        "initdb had finished before its agent was killed: the test missed its moment"
    );
    lab.run_ok(&["lab", "start", "pg1"]);

    // lab up gives up if it sees pg1's agent dead before it is back (it leaves the lab
    // running); the cluster must form either way.
    wait_for("pgfm lab up to finish", SETTLE, || match up.try_wait() {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err("running".to_string()),
        Err(e) => Err(e.to_string()),
    });
    let status = lab.wait_primary("witness", "pg1", 1, SETTLE);
    println!(
        "from empty data directories to a streaming cluster, an agent killed and restarted on \
         the way: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for standby in ["pg2", "pg3"] {
        assert_eq!(node(&status, standby)["kind"], "standby", "{status}");
    }
    assert_eq!(status["tls"], true, "{status}");
    let pg1_log = lab.log("pg1");
    assert!(
        pg1_log.contains("an earlier initdb did not finish"),
        "pg1 did not move the half-made directory aside:\n{pg1_log}"
    );
    let failed = PathBuf::from(format!("{}.pgfm-initdb-failed", data_dir.display()));
    assert!(failed.is_dir(), "{} is missing", failed.display());
    // One cluster: every node holds pg1's.
    let id = |n: &str| {
        lab.psql(n, "SELECT system_identifier FROM pg_control_system()")
            .unwrap()
    };
    let pg1_id = id("pg1");
    wait_for("pg2 and pg3 to hold pg1's cluster", SETTLE, || {
        let ids = (id("pg2"), id("pg3"));
        if ids == (pg1_id.clone(), pg1_id.clone()) {
            Ok(())
        } else {
            Err(format!("pg1 {pg1_id}, pg2 and pg3 {ids:?}"))
        }
    });
    // pg_hba.conf lets in the members over TLS with scram, nothing wider.
    let hba = std::fs::read_to_string(data_dir.join("pg_hba.conf")).unwrap();
    for line in hba.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(
            fields == ["local", "all", "all", "peer"]
                || (fields[0] == "hostssl"
                    && fields[3].ends_with("/32")
                    && fields[4] == "scram-sha-256"),
            "a rule wider than pgfm needs: {line}"
        );
    }
    assert!(
        hba.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == [
                "hostssl",
                "replication",
                "\"replicator\"",
                "10.254.0.12/32",
                "scram-sha-256"
            ]),
        "pg2 may not stream:\n{hba}"
    );

    // It fails over and rejoins, one writer at a time.
    let watch = SplitBrainWatch::start(&lab, &["pg1", "pg2", "pg3"]);
    lab.run_ok(&["lab", "kill", "pg1"]);
    let status = wait_for("a new primary of generation 2", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        match status["primary"].as_str() {
            Some(p) if p != "pg1" && status["generation"] == 2 => Ok(status),
            _ => Err(status.to_string()),
        }
    });
    let new = status["primary"].as_str().unwrap().to_string();
    lab.run_ok(&["lab", "start", "pg1"]);
    let status = lab.wait_primary("witness", &new, 2, SETTLE);
    wait_for("pg1 to rejoin as a standby", SETTLE, || {
        let (status, _) = lab.cluster_status("witness")?;
        let pg1 = node(&status, "pg1");
        if pg1["kind"] == "standby" && pg1["in_sync"] == true {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    assert!(
        watch.finish() > 0,
        "the watch saw no writable primary: {status}"
    );
    let _ = std::fs::remove_file(format!("{}.up.log", dir.display()));
}

/// In a running netns cluster with TLS on: a plain-HTTP request and one with a certificate
/// of another CA are refused before any handler and logged by the agent; a certificate
/// rotated on disk is used without a restart, by the agent and by its PostgreSQL.
#[test]
fn a_running_cluster_refuses_strangers_and_takes_a_rotated_certificate() {
    let Some(lab) = NetnsLab::up(PGFM, &[]) else {
        return;
    };
    lab.wait_healthy("witness", SETTLE);
    let file = lab.lab().expect("the lab's file");
    let pg2 = file.node("pg2").unwrap().clone();
    let address = format!("{}:{}", pg2.host, pg2.agent_port);
    let token = std::fs::read_to_string(&file.token_file).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Plain HTTP: no HTTP answer at all.
    let plain = rt.block_on(crate::refusals::plain_http_post(
        &address,
        "/raft/vote",
        &token,
    ));
    assert_eq!(plain, 0, "a plain HTTP request was answered");
    // A certificate of another CA, made out for the client's address.
    let other = pgfm_init::pki::Authority::create("other").unwrap();
    let stranger_dir = scratch_dir("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let pem = other
        .issue(
            "other",
            "client",
            &[pgfm_lab::netns::CLIENT_ADDRESS.parse().unwrap()],
        )
        .unwrap();
    // It trusts the cluster's CA too, so that the refusal is the server's.
    let cluster_ca = std::fs::read_to_string(file.dir.join("ca.crt")).unwrap();
    let trusted = format!("{cluster_ca}{}", other.pem.cert);
    let files = write_tls_files(&stranger_dir, &trusted, &pem.cert, &pem.key);
    let stranger = pgfm_tls::Tls::load_client(files).unwrap();
    let client = pgfm_api::ApiClient::new(&address, &token, Duration::from_secs(3), Some(stranger));
    let answer = rt.block_on(client.status());
    assert!(answer.is_err(), "a certificate of another CA was let in");
    wait_for("pg2's agent to log both refusals", SETTLE, || {
        let log = lab.log("pg2");
        if log.contains(": it does not speak TLS (a plain http:// request?")
            && log.contains(": its certificate is not signed by this cluster's CA")
        {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    });
    let _ = std::fs::remove_dir_all(&stranger_dir);

    // Rotate pg2's certificate: a new key and certificate from the cluster CA, written over
    // the old files as an operator's renewal does.
    let ca = pgfm_init::pki::Authority::load(pgfm_init::pki::Pem {
        cert: std::fs::read_to_string(file.dir.join("ca.crt")).unwrap(),
        key: std::fs::read_to_string(file.dir.join("ca.key")).unwrap(),
    })
    .unwrap();
    let mut addresses = vec![pg2.host.parse().unwrap()];
    if let Some(ns) = &file.netns {
        addresses.push(ns.vip.split('/').next().unwrap().parse().unwrap());
    }
    let renewed = ca.issue(&file.cluster, "pg2", &addresses).unwrap();
    let tls = file.tls_files(&pg2);
    replace(&tls.key, &renewed.key);
    replace(&tls.cert, &renewed.cert);
    wait_for(
        "pg2's agent and PostgreSQL to take the new certificate",
        Duration::from_secs(60),
        || {
            let log = lab.log("pg2");
            let agent =
                log.contains("TLS: the certificate files changed; new connections use them");
            let postgres = log.contains("PostgreSQL reloaded with them");
            if agent && postgres {
                Ok(())
            } else {
                Err(format!("agent {agent}, PostgreSQL {postgres}"))
            }
        },
    );
    let data_dir = pg2.data_dir.clone().unwrap();
    let installed = pgfm_postgres::ssl::installed(&data_dir);
    assert_eq!(
        std::fs::read_to_string(&installed.cert).unwrap(),
        renewed.cert,
        "PostgreSQL's copy is not the new certificate"
    );
    // Still one cluster, served with the new files: the CLI through pg2, and pg2's stream.
    let output = lab.cli("pg2", &["cluster-status"]);
    assert!(output.status.success(), "{}", text(&output));
    lab.wait_healthy("pg2", SETTLE);
}

/// Write a CA, certificate and key as `pgfm init` lays them out in `dir`.
fn write_tls_files(dir: &Path, ca: &str, cert: &str, key: &str) -> pgfm_tls::TlsFiles {
    let files = pgfm_tls::TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
    };
    std::fs::write(&files.ca, ca).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    replace(&files.key, key);
    files
}

/// Replace `path` at once (a new file renamed over it), mode 600.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
