//! `pgfm init`'s output, checked the way the nodes will use it: every config accepted by
//! the agent's own parser, every certificate verified by openssl against the cluster CA,
//! every file private.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use pgfm_agent::config::Config;
use pgfm_core::NodeKind::{Data, Witness};
use pgfm_init::{add, create, files, ClusterSpec, Layout, NodeSpec, VipSpec};

fn spec(synchronous: bool) -> ClusterSpec {
    ClusterSpec {
        cluster: "main".into(),
        nodes: vec![
            NodeSpec::parse(Data, "pg1=10.0.0.11").unwrap(),
            NodeSpec::parse(Data, "pg2=10.0.0.12").unwrap(),
            NodeSpec::parse(Witness, "w1=10.0.0.13").unwrap(),
        ],
        vip: VipSpec::parse(Some("10.0.0.100/24"), Some("eth0")).unwrap(),
        synchronous,
        layout: Layout::default(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

/// Every file of `dir` (recursively) is mode 600 and every directory 700.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_private(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[test]
fn a_cluster_s_files_are_private_valid_and_signed_by_its_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("main");
    let written = create(spec(true), &out, false).unwrap();
    assert_private(&out);
    assert_eq!(written.nodes.len(), 3);

    let token = std::fs::read_to_string(out.join("pg1/token")).unwrap();
    assert!(token.len() >= 32);
    for (node, dir) in &written.nodes {
        // The agent's own parser accepts the file, and it says what init was told.
        let config = Config::parse(
            &dir.join(files::CONFIG),
            &std::fs::read_to_string(dir.join(files::CONFIG)).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", node.name));
        assert_eq!(config.cluster, "main");
        assert_eq!(config.name, node.name);
        assert_eq!(config.listen.to_string(), format!("{}:7400", node.address));
        assert_eq!(config.peers.len(), 3);
        assert_eq!(config.token_file, Path::new("/etc/pgfm/token"));
        assert_eq!(
            std::fs::read_to_string(dir.join(files::TOKEN)).unwrap(),
            token
        );
        let has_passfile = dir.join(files::PASSFILE).exists();
        assert_eq!(has_passfile, node.kind == Data, "{}", node.name);
        assert!(!dir.join("ca.key").exists());

        // The certificate chains to the cluster CA, names the node, its address and (on
        // data nodes) the VIP, and serves both ends of a connection.
        let cert = dir.join(files::NODE_CERT);
        let verified = openssl(&[
            "verify",
            "-CAfile",
            dir.join(files::CA_CERT).to_str().unwrap(),
            "-purpose",
            "sslserver",
            cert.to_str().unwrap(),
        ]);
        assert!(verified.contains(": OK"), "{verified}");
        openssl(&[
            "verify",
            "-CAfile",
            out.join("ca/ca.crt").to_str().unwrap(),
            "-purpose",
            "sslclient",
            cert.to_str().unwrap(),
        ]);
        let text = openssl(&["x509", "-noout", "-text", "-in", cert.to_str().unwrap()]);
        assert!(text.contains(&format!("DNS:{}", node.name)), "{text}");
        assert!(
            text.contains(&format!("IP Address:{}", node.address)),
            "{text}"
        );
        assert_eq!(
            text.contains("IP Address:10.0.0.100"),
            node.kind == Data,
            "{text}"
        );
        // The key is the certificate's.
        let key_pub = openssl(&[
            "pkey",
            "-pubout",
            "-in",
            dir.join(files::NODE_KEY).to_str().unwrap(),
        ]);
        let cert_pub = openssl(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]);
        assert_eq!(key_pub, cert_pub);
    }
    let pg1 = std::fs::read_to_string(out.join("pg1/pgfm.toml")).unwrap();
    assert!(pg1.contains("synchronous = \"on\""), "{pg1}");
    assert!(pg1.contains("[watchdog]\nmode = \"automatic\""), "{pg1}");
    assert!(pg1.contains("address = \"10.0.0.100/24\""), "{pg1}");
    let w1 = std::fs::read_to_string(out.join("w1/pgfm.toml")).unwrap();
    // The cluster-wide keys are in every file (the witness may form the cluster and commit
    // its own), the keys of a node that runs PostgreSQL and carries the VIP are not.
    assert!(
        !w1.contains("[postgres]") && !w1.contains("interface"),
        "{w1}"
    );
    assert!(w1.contains("[vip]\naddress = \"10.0.0.100/24\""), "{w1}");
    assert!(w1.contains("synchronous = \"on\""), "{w1}");
    assert!(written.instructions().contains("pg1 (10.0.0.11): copy "));

    // A second init into the same directory is refused, and changes nothing.
    let before = std::fs::read_to_string(out.join("ca/ca.crt")).unwrap();
    let refused = create(spec(false), &out, false).unwrap_err();
    assert_eq!(
        refused.0,
        format!(
            "--out {} is not empty (ca, cluster, pg1, pg2, w1): it holds a cluster pgfm init \
             wrote: add nodes to it with --add, or pass --force to replace it with a new \
             cluster (new CA, token and passwords; the old CA is kept as ca.replaced-TIME)",
            out.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(out.join("ca/ca.crt")).unwrap(),
        before
    );
    // With --force it is a new cluster; the earlier CA is kept aside, not destroyed.
    create(spec(false), &out, true).unwrap();
    assert_ne!(
        std::fs::read_to_string(out.join("ca/ca.crt")).unwrap(),
        before
    );
    let aside: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ca.replaced-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(aside[0].join("ca.crt")).unwrap(),
        before
    );
    assert_private(&out);

    // A shared directory given with --force keeps its mode.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(shared.join("notes.txt"), "x").unwrap();
    create(spec(false), &shared, true).unwrap();
    assert_eq!(mode(&shared), 0o755);
}

#[test]
fn a_node_added_later_joins_the_same_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("main");
    create(spec(false), &out, false).unwrap();
    let pg3 = NodeSpec::parse(Data, "pg3=10.0.0.14").unwrap();
    let written = add(&out, vec![pg3.clone()], false).unwrap();
    assert_eq!(written.nodes.len(), 1);
    let dir = out.join("pg3");
    assert_private(&out);
    let config = Config::parse(
        &dir.join("pgfm.toml"),
        &std::fs::read_to_string(dir.join("pgfm.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(config.peers.len(), 4);
    // Same secrets, same CA.
    for file in [files::TOKEN, files::PASSFILE, files::CA_CERT] {
        assert_eq!(
            std::fs::read_to_string(dir.join(file)).unwrap(),
            std::fs::read_to_string(out.join("pg1").join(file)).unwrap(),
            "{file}"
        );
    }
    openssl(&[
        "verify",
        "-CAfile",
        out.join("pg1/ca.crt").to_str().unwrap(),
        dir.join("node.crt").to_str().unwrap(),
    ]);

    // Adding it again is refused; with --force its certificate is renewed.
    let again = add(&out, vec![pg3.clone()], false).unwrap_err();
    assert_eq!(again.0, "pg3 is already a node of cluster main (at 10.0.0.14): choose another name, or pass --force to write its files again with a new certificate");
    let old_cert = std::fs::read_to_string(dir.join("node.crt")).unwrap();
    add(&out, vec![pg3], true).unwrap();
    assert_ne!(
        std::fs::read_to_string(dir.join("node.crt")).unwrap(),
        old_cert
    );
    let moved = add(
        &out,
        vec![NodeSpec::parse(Data, "pg3=10.0.0.15").unwrap()],
        true,
    )
    .unwrap_err();
    assert!(
        moved.0.starts_with("pg3 is a data node at 10.0.0.14 in "),
        "{}",
        moved.0
    );
    // A bad addition changes nothing: the VIP's subnet still holds.
    let outside = add(
        &out,
        vec![NodeSpec::parse(Data, "pg5=10.9.0.1").unwrap()],
        false,
    )
    .unwrap_err();
    assert!(
        outside
            .0
            .starts_with("--vip 10.0.0.100/24 is outside pg5's subnet"),
        "{}",
        outside.0
    );
    assert!(!out.join("pg5").exists());

    // A client: signed by the same CA, for calling agents only.
    let clients = pgfm_init::add_clients(&out, &["haproxy".to_string()], false).unwrap();
    let client = &clients[0];
    assert_private(&out);
    let cert = client.join("client.crt");
    openssl(&[
        "verify",
        "-CAfile",
        out.join("pg1/ca.crt").to_str().unwrap(),
        "-purpose",
        "sslclient",
        cert.to_str().unwrap(),
    ]);
    let as_server = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            out.join("pg1/ca.crt").to_str().unwrap(),
            "-purpose",
            "sslserver",
            cert.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        !as_server.status.success(),
        "a client certificate serves as a server's"
    );
    let pem = std::fs::read_to_string(client.join("client.pem")).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));
    let named_like_a_node = pgfm_init::add_clients(&out, &["pg1".to_string()], false).unwrap_err();
    assert_eq!(
        named_like_a_node.0,
        "--client pg1: pg1 is a node of cluster main; a client needs a name of its own"
    );
    let again = pgfm_init::add_clients(&out, &["haproxy".to_string()], false).unwrap_err();
    assert!(
        again
            .0
            .ends_with("pass --force to write them again with a new certificate"),
        "{}",
        again.0
    );

    let nowhere = add(
        &tmp.path().join("none"),
        vec![NodeSpec::parse(Data, "pg9=10.0.0.19").unwrap()],
        false,
    )
    .unwrap_err();
    assert!(
        nowhere
            .0
            .contains("--add extends a cluster pgfm init wrote into --out"),
        "{}",
        nowhere.0
    );
}

#[test]
fn bad_input_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("main");
    let mut twice = spec(false);
    twice.nodes[1].name = "pg1".into();
    assert_eq!(
        create(twice, &out, false).unwrap_err().0,
        "pg1 is named twice: give every node its own name"
    );
    assert!(!out.exists());
    std::fs::write(tmp.path().join("file"), "x").unwrap();
    let file = create(spec(false), &tmp.path().join("file"), false).unwrap_err();
    assert!(
        file.0
            .ends_with("is a file: give a directory (it is created)"),
        "{}",
        file.0
    );
    std::fs::create_dir(tmp.path().join("used")).unwrap();
    std::fs::write(tmp.path().join("used/notes.txt"), "x").unwrap();
    let used = create(spec(false), &tmp.path().join("used"), false).unwrap_err();
    assert!(used.0.ends_with("is not empty (notes.txt): choose a new or empty directory, or pass --force to write into it anyway"), "{}", used.0);
}

/// Nodes that share a host, each with a layout of its own (as the lab's on 127.0.0.1):
/// every config names its own directories and ports and its peers' ports, and the agent's
/// parser accepts it; with a VIP, PostgreSQL listens on every address, the VIP's included.
#[test]
fn nodes_with_layouts_of_their_own_get_their_own_paths_and_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("init");
    let hosts = tmp.path().join("hosts");
    let mut one_host = spec(false);
    let ports = [(7401, 5401), (7402, 5402), (7403, 5432)];
    for (node, (agent_port, pg_port)) in one_host.nodes.iter_mut().zip(ports) {
        node.address = "127.0.0.1".parse().unwrap();
        let etc_dir = hosts.join(&node.name);
        node.layout = Some(Layout {
            state_dir: etc_dir.join("state"),
            data_dir: etc_dir.join("data"),
            etc_dir,
            agent_port,
            pg_port,
        });
    }
    one_host.vip = None;
    let written = create(one_host, &out, false).unwrap();
    for (node, dir) in &written.nodes {
        let etc = hosts.join(&node.name);
        let config = Config::load_static(&dir.join(files::CONFIG))
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
        let layout = node.layout.as_ref().unwrap();
        assert_eq!(
            config.listen.to_string(),
            format!("127.0.0.1:{}", layout.agent_port)
        );
        assert_eq!(config.token_file, etc.join(files::TOKEN));
        assert_eq!(config.state_dir, etc.join("state"));
        let peers: Vec<String> = config.peers.iter().map(|p| p.address.clone()).collect();
        assert_eq!(
            peers,
            ["127.0.0.1:7401", "127.0.0.1:7402", "127.0.0.1:7403"],
            "{}",
            node.name
        );
        let tls = config.tls.expect("TLS is on");
        assert_eq!(tls.cert, etc.join(files::NODE_CERT));
        match config.postgres {
            Some(pg) => {
                assert_eq!(pg.data_dir, etc.join("data"));
                assert_eq!(pg.port, layout.pg_port);
                assert_eq!(pg.passfile, Some(etc.join(files::PASSFILE)));
                assert_eq!(pg.listen_addresses, "127.0.0.1");
            }
            None => assert_eq!(node.kind, Witness),
        }
        assert!(
            written.instructions().contains(&format!(
                "copy {}/* into {}/",
                dir.display(),
                etc.display()
            )),
            "{}",
            written.instructions()
        );
    }
    let kept = std::fs::read_to_string(out.join("cluster/cluster.json")).unwrap();
    assert!(kept.contains("\"agent_port\": 7402"), "{kept}");

    // With a VIP, PostgreSQL must answer on it once its node is primary.
    let with_vip = tmp.path().join("vip");
    create(spec(false), &with_vip, false).unwrap();
    let pg1 = Config::load_static(&with_vip.join("pg1").join(files::CONFIG)).unwrap();
    assert_eq!(pg1.postgres.unwrap().listen_addresses, "*");
}
