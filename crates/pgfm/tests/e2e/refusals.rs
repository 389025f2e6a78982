//! End-to-end refusals that need no database: a bad config stops the agent before it
//! starts, and a request without the cluster token is refused and logged.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::pgfm;
use pgfm_lab::harness::{free_port, scratch_dir, text, wait_for};

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
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("valid (witness node witness of cluster t, 3 peers)"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Requests with a wrong or missing token are refused with 401 and logged; the right token
/// is served.
#[test]
fn a_request_with_a_wrong_token_is_refused() {
    let dir = scratch_dir("token");
    std::fs::create_dir_all(&dir).unwrap();
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
        let client = pgfm_api::ApiClient::new(&address, t, Duration::from_secs(2));
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
    let raft = rt.block_on(async { reqwest_like_post(&address, "/raft/vote", "wrong").await });
    assert_eq!(raft, 401, "the Raft transport accepted a wrong token");
    wait_for(
        "the refusals in the agent log",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
            let wrong = log
                .matches("refused a request: wrong cluster token")
                .count();
            let missing = log
                .matches("refused a request: missing cluster token")
                .count();
            if wrong >= 2 && missing >= 1 {
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
async fn reqwest_like_post(address: &str, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
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
