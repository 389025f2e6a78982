//! End-to-end refusals that need no database: a bad config stops the agent before it
//! starts; a connection without a certificate of the cluster CA (plain HTTP, another CA)
//! and a request without the cluster token are refused and logged.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::pgfm;
use pgfm_lab::harness::{free_port, scratch_dir, text, wait_for};

/// The cluster CA's certificate and a certificate for a node at 127.0.0.1, where the
/// config expects them by default (beside the token): the CA.
fn write_tls(dir: &std::path::Path, node: &str) -> pgfm_init::pki::Authority {
    let ca = pgfm_init::pki::Authority::create("t").unwrap();
    write_node_tls(dir, &ca, &ca, node);
    ca
}

/// A node's three files in `dir`: its certificate from `issuer`, trusting `trusted`.
fn write_node_tls(
    dir: &std::path::Path,
    trusted: &pgfm_init::pki::Authority,
    issuer: &pgfm_init::pki::Authority,
    node: &str,
) -> pgfm_tls::TlsFiles {
    let pem = issuer
        .issue("t", node, &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let files = pgfm_tls::TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
    };
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = trusted.pem.cert.clone();
    if !std::ptr::eq(trusted, issuer) {
        // Trust the server too, so that the refusal is the server's.
        ca.push_str(&issuer.pem.cert);
    }
    std::fs::write(&files.ca, ca).unwrap();
    std::fs::write(&files.cert, pem.cert).unwrap();
    std::fs::write(&files.key, pem.key).unwrap();
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    files
}

fn witness_config(dir: &std::path::Path, port: u16) -> String {
    format!(
        "cluster = \"t\"\ntoken_file = \"{dir}/token\"\n\n[node]\nname = \"witness\"\nkind = \"witness\"\n\
         listen = \"127.0.0.1:{port}\"\nstate_dir = \"{dir}/state\"\n\n\
         [[peers]]\nname = \"witness\"\naddress = \"127.0.0.1:{port}\"\n\
         [[peers]]\nname = \"pg1\"\naddress = \"127.0.0.1:1\"\n\
         [[peers]]\nname = \"pg2\"\naddress = \"127.0.0.1:2\"\n",
        dir = dir.display()
    )
}

/// An agent given a config with a mistake refuses to start, naming the file, the key, the
/// problem and the fix; `check-config` says the same without starting anything.
#[test]
fn a_bad_config_refuses_to_start_with_the_promised_message() {
    let dir = scratch_dir("badconfig");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgfm.toml");
    let good = witness_config(&dir, free_port());
    std::fs::write(
        &file,
        good.replace("kind = \"witness\"", "kind = \"witnes\""),
    )
    .unwrap();
    for command in ["agent", "check-config"] {
        let output = pgfm().arg(command).arg("-c").arg(&file).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = format!(
            "pgfm: config {}: node.kind is \"witnes\" (set it to \"data\" or \"witness\")",
            file.display()
        );
        assert_eq!(stderr.trim(), expected);
    }

    std::fs::write(&file, &good).unwrap();
    let output = check_config(&file);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("token_file")
            && text(&output).contains("create it with a random secret"),
        "{}",
        text(&output)
    );

    std::fs::write(dir.join("token"), "0123456789abcdef0123456789").unwrap();
    std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = check_config(&file);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let expected = format!(
        "pgfm: config {file}: [tls] {ca} cannot be used as the cluster CA's certificate (",
        file = file.display(),
        ca = dir.join("ca.crt").display()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with(&expected), "{}", text(&output));
    assert!(
        text(&output).contains("set mode = \"off\" in [tls] on every node"),
        "{}",
        text(&output)
    );

    write_tls(&dir, "witness");
    let output = check_config(&file);
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("valid (witness node witness of cluster t, 3 peers)"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Connections without a certificate of the cluster CA (plain HTTP; a certificate of
/// another CA) are refused in the TLS handshake and logged; requests with a wrong or missing
/// token are refused with 401 and logged; the right certificate and token are served.
#[test]
fn a_request_without_the_cluster_s_certificate_or_token_is_refused() {
    let dir = scratch_dir("token");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = write_tls(&dir, "witness");
    let tls = pgfm_tls::Tls::load(
        pgfm_tls::TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("node.crt"),
            key: dir.join("node.key"),
        },
        "127.0.0.1",
    )
    .unwrap();
    let other = pgfm_init::pki::Authority::create("other").unwrap();
    let stranger = pgfm_tls::Tls::load(
        write_node_tls(&dir.join("stranger"), &ca, &other, "x"),
        "127.0.0.1",
    )
    .unwrap();
    let port = free_port();
    let file = dir.join("pgfm.toml");
    std::fs::write(&file, witness_config(&dir, port)).unwrap();
    let token = "the-right-token-0123456789";
    std::fs::write(dir.join("token"), token).unwrap();
    std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut agent = pgfm()
        .arg("agent")
        .arg("-c")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let address = format!("127.0.0.1:{port}");
    let ask = |t: &str| {
        let client =
            pgfm_api::ApiClient::new(&address, t, Duration::from_secs(2), Some(tls.clone()));
        rt.block_on(client.status())
    };
    wait_for("the agent to serve", Duration::from_secs(30), || {
        ask(token).map(|_| ()).map_err(|e| e.to_string())
    });
    for wrong in ["wrong-token-0123456789", ""] {
        match ask(wrong) {
            Err(pgfm_api::ApiError::Unauthorized { .. }) => {}
            other => panic!("token {wrong:?} was not refused: {other:?}"),
        }
    }
    let post = |tls: Option<std::sync::Arc<pgfm_tls::Tls>>, token: &str| {
        use pgfm_core::transport::Transport;
        let transport = pgfm_api::HttpTransport::new(Duration::from_secs(2), tls);
        rt.block_on(transport.send(pgfm_core::transport::Request {
            method: pgfm_core::transport::Method::Post,
            address: address.clone(),
            path: "/raft/vote".into(),
            token: token.into(),
            body: Some(b"{}".to_vec()),
            timeout: Duration::from_secs(2),
        }))
    };
    let raft = post(Some(tls.clone()), "wrong").map(|r| r.status);
    assert_eq!(
        raft.ok(),
        Some(401),
        "the Raft transport accepted a wrong token"
    );
    // Plain HTTP gets no HTTP answer at all, nor does a certificate of another CA.
    let plain = rt.block_on(async { plain_http_post(&address, "/raft/vote", token).await });
    assert_eq!(plain, 0, "a plain HTTP request was answered");
    let foreign = post(Some(stranger), token);
    assert!(
        foreign.is_err(),
        "a certificate of another CA was let in: {foreign:?}"
    );
    wait_for(
        "the refusals in the agent log",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
            let count = |text: &str| log.matches(text).count();
            if count("refused a request: wrong cluster token") >= 2
                && count("refused a request: missing cluster token") >= 1
                && count(": it does not speak TLS (a plain http:// request?") >= 1
                && count(": its certificate is not signed by this cluster's CA") >= 1
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let _ = agent.kill();
    let _ = agent.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A raw HTTP POST with a bearer token; the status code.
/// A POST in plain HTTP, as a client without TLS sends it: the status of the answer, or 0
/// when none came.
pub(crate) async fn plain_http_post(address: &str, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// An agent whose `[vip]` cannot work refuses to start and says why: as root, the interface
/// that does not exist (and those that do); as an ordinary user, the missing capabilities.
#[test]
fn an_unusable_vip_stops_the_agent_at_start_up() {
    let dir = scratch_dir("badvip");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    write_tls(&dir, "pg1");
    let port = free_port();
    let file = dir.join("pgfm.toml");
    let config = format!(
        "cluster = \"t\"\ntoken_file = \"{dir}/token\"\n\n[node]\nname = \"pg1\"\nkind = \"data\"\n\
         listen = \"127.0.0.1:{port}\"\nstate_dir = \"{dir}/state\"\n\n\
         [[peers]]\nname = \"pg1\"\naddress = \"127.0.0.1:{port}\"\n\
         [[peers]]\nname = \"pg2\"\naddress = \"127.0.0.1:1\"\n\
         [[peers]]\nname = \"witness\"\naddress = \"127.0.0.1:2\"\n\n\
         [postgres]\ndata_dir = \"{dir}/data\"\nport = {pg}\n\n\
         [vip]\naddress = \"10.254.9.100/24\"\ninterface = \"pgfm-none0\"\n",
        dir = dir.display(),
        pg = free_port(),
    );
    std::fs::write(&file, config).unwrap();
    let output = pgfm()
        .args(["agent", "-c"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = if pgfm_lab::harness::is_root() {
        "vip.interface \"pgfm-none0\" does not exist on this host (interfaces here: lo"
    } else {
        "no permission to manage the virtual IP: the agent lacks CAP_NET_ADMIN"
    };
    assert!(stderr.contains(expected), "{}", text(&output));
    assert!(
        stderr.contains("[vip] 10.254.9.100/24 on pgfm-none0"),
        "{}",
        text(&output)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pgfm check-config -c FILE`.
fn check_config(file: &std::path::Path) -> std::process::Output {
    pgfm()
        .arg("check-config")
        .arg("-c")
        .arg(file)
        .output()
        .unwrap()
}
