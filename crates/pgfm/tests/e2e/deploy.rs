//! Deploying pgfm as an operator does: `pgfm init`'s output installed and checked by
//! `pgfm check-config`, its refusals, and agents started by systemd telling it how they are.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{pgfm, PGFM};
use pgfm_lab::harness::{scratch_dir, text, Lab};

/// `pgfm init ARGS`: its output.
fn init(args: &[&str]) -> std::process::Output {
    pgfm().arg("init").args(args).output().unwrap()
}

#[test]
fn init_writes_a_cluster_that_check_config_accepts_and_refuses_bad_input() {
    let dir = scratch_dir("init");
    let out = dir.join("main");
    let installed = dir.join("etc");
    let out_s = out.to_str().unwrap();
    let etc = installed.to_str().unwrap();
    const NODES: &str = "--data pg1=10.0.0.11 --data pg2=10.0.0.12 --witness w1=10.0.0.13";
    let line = format!("--cluster main {NODES} --synchronous on");
    let mut good: Vec<&str> = line.split_whitespace().collect();
    good.extend(["--vip", "10.0.0.100/24", "--interface", "eth0"]);
    good.extend(["--etc-dir", etc, "--out", out_s]);

    // Bad input: exit 1, the fix, nothing written.
    let cases = [
        (
            "--data pg1=10.0.0.11 --data pg1=10.0.0.12 --witness w1=10.0.0.13".to_string(),
            "pgfm init: pg1 is named twice: give every node its own name; nothing was written",
        ),
        (
            "--data pg1=10.0.0.311 --data pg2=10.0.0.12 --witness w1=10.0.0.13".to_string(),
            "pgfm init: --data \"pg1=10.0.0.311\": \"10.0.0.311\" is not an IP address",
        ),
        (
            format!("{NODES} --vip 10.0.1.100/24 --interface eth0"),
            "pgfm init: --vip 10.0.1.100/24 is outside pg1's subnet (10.0.0.11)",
        ),
        (
            "--data pg1=10.0.0.11 --witness w1=10.0.0.13 --witness w2=10.0.0.14".to_string(),
            "pgfm init: 1 data node(s): a cluster needs at least two",
        ),
    ];
    for (nodes, message) in &cases {
        let mut args = vec!["--cluster", "main", "--out", out_s];
        args.extend(nodes.split_whitespace());
        let output = init(&args);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with(message),
            "{}",
            text(&output)
        );
        assert!(!out.exists(), "bad input wrote {}", out.display());
    }

    let output = init(&good);
    assert!(output.status.success(), "{}", text(&output));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!("pg1 (10.0.0.11): copy {out_s}/pg1/* into {etc}/")),
        "{said}"
    );
    // An existing directory is refused with the way out.
    let again = init(&good);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("add nodes to it with --add, or pass --force"),
        "{}",
        text(&again)
    );

    // Installed as the output says, pg1's files pass every check of check-config (the
    // TLS set included: its certificate names 10.0.0.11, node.listen).
    std::fs::create_dir_all(&installed).unwrap();
    for entry in std::fs::read_dir(out.join("pg1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), installed.join(entry.file_name())).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    for dir in [&dir, &installed] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let check = || {
        pgfm()
            .args(["check-config", "-c"])
            .arg(installed.join("pgfm.toml"))
            .output()
            .unwrap()
    };
    if pgfm_lab::harness::is_root() {
        // The step the output names: PostgreSQL, run as postgres, must read the passfile.
        let forgotten = check();
        assert_eq!(forgotten.status.code(), Some(2), "{}", text(&forgotten));
        assert!(
            text(&forgotten).contains("pgpass is not readable by postgres (chown postgres"),
            "{}",
            text(&forgotten)
        );
        let postgres = pgfm_postgres::OsUser::lookup("postgres").unwrap();
        std::os::unix::fs::chown(installed.join("pgpass"), Some(postgres.uid), None).unwrap();
    }
    let checked = check();
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        text(&checked).contains("and the cluster CA are valid until"),
        "{}",
        text(&checked)
    );
    assert!(
        String::from_utf8_lossy(&checked.stdout)
            .contains("valid (data node pg1 of cluster main, 3 peers)"),
        "{}",
        text(&checked)
    );

    // A node added later: same cluster, told how to let it in.
    let added = init(&["--add", "--data", "pg3=10.0.0.14", "--out", out_s]);
    assert!(added.status.success(), "{}", text(&added));
    assert!(
        text(&added).contains("pgfm allow-node pg3 10.0.0.14:7400"),
        "{}",
        text(&added)
    );
    assert_eq!(
        std::fs::read(out.join("pg3/ca.crt")).unwrap(),
        std::fs::read(out.join("pg1/ca.crt")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The messages systemd would receive, read until `done` says enough (or 60 s).
fn listen(socket: &UnixDatagram, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while !done(&messages) {
        assert!(
            Instant::now() < deadline,
            "systemd heard only: {messages:#?}"
        );
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    messages
}

/// Agents started as systemd starts them (`NOTIFY_SOCKET`, `WATCHDOG_USEC`) say READY=1
/// once members, their role in STATUS=, and feed the watchdog; PostgreSQL, which inherits
/// their environment, does not speak for them.
#[test]
fn agents_started_by_systemd_say_ready_their_role_and_feed_its_watchdog() {
    let dir = scratch_dir("notify");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Each test runs in its own process (nextest): the lab's agents inherit these.
    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "2000000");
    let lab = Lab::up(PGFM, 2);
    let count = |messages: &[String], what: &str| {
        messages
            .iter()
            .flat_map(|m| m.lines())
            .filter(|l| l.starts_with(what))
            .count()
    };
    let messages = listen(&socket, |m| {
        count(m, "READY=1") >= 3
            && count(m, "STATUS=primary of generation 1") >= 1
            && count(m, "STATUS=standby of pg1 (generation 1)") >= 1
            && count(m, "STATUS=witness") >= 1
            && count(m, "WATCHDOG=1") >= 6
    });
    // PostgreSQL (built with systemd support on Debian) did not inherit the socket, so it
    // cannot speak for its agent.
    let file = lab.lab().expect("the lab's file");
    for node in file.nodes.iter().filter(|n| n.data_dir.is_some()) {
        let pid_file = node.data_dir.as_ref().unwrap().join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.lines().next().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            !environ.contains("NOTIFY_SOCKET"),
            "{}'s postmaster: {environ}",
            node.name
        );
    }
    assert!(count(&messages, "READY=1") >= 3, "{messages:#?}");
    drop(lab);
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// Runs `command`, panicking with its output unless it succeeds; its stdout.
fn run_ok(command: &mut std::process::Command) -> String {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Purges the package this test installed, whatever happens to the test.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("dpkg")
            .args(["--purge", "pgfm"])
            .output();
    }
}

/// The Debian package, built from the binary under test: it holds the binary, the unit,
/// the man pages and the completions; as root, `dpkg -i` gives a working `pgfm`, `man
/// pgfm` and a unit `systemd-analyze verify` accepts, and removing it leaves /etc/pgfm and
/// /var/lib/pgfm alone.
#[test]
fn the_debian_package_installs_works_and_uninstalls() {
    let dir = scratch_dir("deb");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let deb = run_ok(
        std::process::Command::new("bash")
            .arg(repo.join("scripts/package.sh"))
            .args(["--binary", PGFM, "--out"])
            .arg(&dir),
    );
    let deb = deb.trim();
    let listing = run_ok(std::process::Command::new("dpkg-deb").args(["-c", deb]));
    for file in [
        "./usr/bin/pgfm",
        "./lib/systemd/system/pgfm.service",
        "./usr/share/man/man1/pgfm.1.gz",
        "./usr/share/man/man1/pgfm-init.1.gz",
        "./usr/share/man/man1/pgfm-agent.1.gz",
        "./usr/share/bash-completion/completions/pgfm",
        "./usr/share/zsh/vendor-completions/_pgfm",
        "./usr/share/fish/vendor_completions.d/pgfm.fish",
        "./usr/share/doc/pgfm/examples/pgfm.toml",
        "./etc/pgfm/",
    ] {
        assert!(
            listing.contains(file),
            "{file} is missing from the package:\n{listing}"
        );
    }
    assert!(listing.contains("drwx--x--x root/root"), "{listing}");

    if !pgfm_lab::harness::is_root() {
        println!("SKIPPED: installing the package needs root");
        return;
    }
    let status = std::process::Command::new("dpkg")
        .args(["-s", "pgfm"])
        .output()
        .unwrap();
    if status.status.success() {
        println!("SKIPPED: a pgfm package is already installed here; this test leaves it alone");
        return;
    }
    let keep = [Path::new("/etc/pgfm"), Path::new("/var/lib/pgfm")];
    let existed: Vec<bool> = keep.iter().map(|d| d.exists()).collect();
    let _installed = Installed;
    run_ok(std::process::Command::new("dpkg").args(["-i", deb]));
    let version = run_ok(std::process::Command::new("/usr/bin/pgfm").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("pgfm {}", env!("CARGO_PKG_VERSION"))
    );
    let page = run_ok(
        std::process::Command::new("man")
            .args(["-P", "cat", "pgfm-init"])
            .env("MANWIDTH", "100"),
    );
    assert!(page.contains("--witness"), "{page}");
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/pgfm.service"])
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        text(&verify)
    );
    let completion =
        std::fs::read_to_string("/usr/share/bash-completion/completions/pgfm").unwrap();
    assert!(completion.contains("cluster-status"), "{completion}");

    // What the cluster keeps stays when the package goes, even on purge.
    let markers: Vec<_> = keep
        .iter()
        .map(|d| d.join(format!("kept-by-the-deb-test-{}", std::process::id())))
        .collect();
    for marker in &markers {
        std::fs::write(marker, "cluster files").unwrap();
    }
    run_ok(std::process::Command::new("dpkg").args(["--purge", "pgfm"]));
    assert!(!Path::new("/usr/bin/pgfm").exists());
    for marker in &markers {
        assert!(
            marker.exists(),
            "{} was removed with the package",
            marker.display()
        );
        std::fs::remove_file(marker).unwrap();
    }
    // Leave the machine as it was: the directories the package made go (if empty).
    for (d, existed) in keep.iter().zip(existed) {
        if !existed {
            let _ = std::fs::remove_dir(d);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With TLS on (the lab's default), every connection pgfm makes to a PostgreSQL is
/// encrypted: the standby's stream, the agents' probes; the server's key sits beside its
/// data directory (a base backup does not copy it), owned by the server alone.
#[test]
fn replication_and_probes_run_over_tls() {
    let lab = Lab::up(PGFM, 2);
    lab.wait_healthy("pg1", Duration::from_secs(60));
    let stream = lab
        .psql(
            "pg1",
            "SELECT r.application_name || ':' || s.ssl FROM pg_stat_replication r \
             JOIN pg_stat_ssl s USING (pid)",
        )
        .unwrap();
    assert_eq!(stream, "pg2:true", "the standby's stream is not over TLS");
    pgfm_lab::harness::wait_for(
        "pg1's agent probing over TLS",
        Duration::from_secs(30),
        || {
            let probes = lab.psql(
                "pg1",
                "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'pgfm%'",
            )?;
            match probes.split_once('/') {
                Some((tls, all)) if tls == all && all != "0" => Ok(()),
                _ => Err(format!("pgfm's sessions over TLS/all: {probes}")),
            }
        },
    );
    let file = lab.lab().expect("the lab's file");
    let data_dir = file.node("pg2").unwrap().data_dir.clone().unwrap();
    let key = pgfm_postgres::ssl::installed(&data_dir).key;
    let meta = std::fs::metadata(&key).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{}",
        key.display()
    );
    let owner = std::fs::metadata(&data_dir).unwrap().uid();
    assert_eq!(meta.uid(), owner, "{} is not the server's", key.display());
    assert!(!data_dir.join("server.key").exists());
}
