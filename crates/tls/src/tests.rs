//! The TLS set checked as the operator meets it (each mistake named with its file), and
//! served for real: a client of the cluster CA gets through, a plain-HTTP one and one of
//! another CA are refused in the handshake, and rotated files are used without a restart.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pgfm_init::pki::{Authority, Pem};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const LOCAL: &str = "127.0.0.1";

fn local() -> IpAddr {
    LOCAL.parse().unwrap()
}

/// Write `pem` (and the CA's certificate) as a node's three files in `dir`.
fn write(dir: &Path, ca: &Authority, pem: &Pem) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
    };
    std::fs::write(&files.ca, &ca.pem.cert).unwrap();
    std::fs::write(&files.cert, &pem.cert).unwrap();
    std::fs::write(&files.key, &pem.key).unwrap();
    private(&files.key);
    files
}

fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn node(dir: &Path, ca: &Authority, name: &str) -> TlsFiles {
    write(dir, ca, &ca.issue("main", name, &[local()]).unwrap())
}

#[test]
fn a_set_ends_with_the_earlier_of_its_certificate_and_its_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Authority::create("main").unwrap();
    let at = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let files = write(
        tmp.path(),
        &ca,
        &ca.issue_until("main", "pg1", &[local()], at).unwrap(),
    );
    let until = expiry(&files).unwrap();
    let expected = std::time::UNIX_EPOCH + Duration::from_secs(at.unix_timestamp() as u64);
    let off = until
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(2),
        "{until:?} against {expected:?}"
    );
}

#[test]
fn a_set_that_cannot_work_is_refused_naming_the_file_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Authority::create("main").unwrap();
    let other = Authority::create("other").unwrap();
    let good = node(&tmp.path().join("good"), &ca, "pg1");
    assert!(Tls::load(good.clone(), LOCAL).is_ok());

    let err = |files: TlsFiles, name: &str| Tls::load(files, name).err().unwrap().0;
    let d = |f: &Path| f.display().to_string();

    // The node's certificate from another cluster's CA.
    let foreign = write(
        &tmp.path().join("foreign"),
        &ca,
        &other.issue("other", "pg1", &[local()]).unwrap(),
    );
    assert_eq!(
        err(foreign.clone(), LOCAL),
        format!(
            "{} is not signed by the cluster CA in {}: the two come from different pgfm init \
             runs (copy both from the same one, or renew it with pgfm init --add --force and \
             the same node on the machine that holds the cluster's ca/ directory)",
            d(&foreign.cert),
            d(&foreign.ca)
        )
    );
    // Expired.
    let old = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    let expired = write(
        &tmp.path().join("expired"),
        &ca,
        &ca.issue_until("main", "pg1", &[local()], old).unwrap(),
    );
    assert!(
        err(expired.clone(), LOCAL)
            .starts_with(&format!("{} has expired: renew it", d(&expired.cert))),
        "{}",
        err(expired, LOCAL)
    );
    // Made out for another address.
    assert_eq!(
        err(good.clone(), "10.0.0.12"),
        format!(
            "{} is not made out for 10.0.0.12, this node's address (node.listen): it belongs \
             to another node, or the address changed (renew it with pgfm init --add --force \
             and the same node on the machine that holds the cluster's ca/ directory, giving \
             the new address)",
            d(&good.cert)
        )
    );
    // A key that is not the certificate's.
    let mismatched = node(&tmp.path().join("mismatched"), &ca, "pg1");
    std::fs::copy(&good.key, &mismatched.key).unwrap();
    assert!(
        err(mismatched.clone(), LOCAL).starts_with(&format!(
            "{} does not go with {}",
            d(&mismatched.key),
            d(&mismatched.cert)
        )),
        "{}",
        err(mismatched, LOCAL)
    );
    // Missing and garbage files.
    let missing = TlsFiles {
        ca: tmp.path().join("none/ca.crt"),
        ..good.clone()
    };
    assert!(
        err(missing.clone(), LOCAL).starts_with(&format!(
            "{} cannot be used as the cluster CA's certificate (",
            d(&missing.ca)
        )),
        "{}",
        err(missing, LOCAL)
    );
    let garbage = node(&tmp.path().join("garbage"), &ca, "pg1");
    std::fs::write(&garbage.cert, "not a certificate").unwrap();
    assert_eq!(
        err(garbage.clone(), LOCAL),
        format!(
            "{} cannot be used as this node's certificate (no PEM certificate in it): copy it \
             from this node's pgfm init directory",
            d(&garbage.cert)
        )
    );
}

/// Serve `tls` on a free port with one route; the address.
async fn serve(tls: Arc<Tls>) -> std::net::SocketAddr {
    let tcp = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
    let address = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, tls).unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// One request over TLS with `client`'s set: the answer, and the serial number of the
/// certificate the server presented.
async fn get(client: &Tls, address: std::net::SocketAddr) -> Result<(String, Vec<u8>), String> {
    let connector = tokio_rustls::TlsConnector::from(client.client_config().1);
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::IpAddress(address.ip().into());
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok((answer, presented))
}

#[tokio::test]
async fn only_clients_of_the_cluster_ca_get_through_and_rotation_needs_no_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Authority::create("main").unwrap();
    let server_files = node(&tmp.path().join("pg1"), &ca, "pg1");
    let server = Tls::load(server_files.clone(), LOCAL).unwrap();
    let address = serve(server.clone()).await;

    let client = Tls::load(node(&tmp.path().join("pg2"), &ca, "pg2"), LOCAL).unwrap();
    let (answer, first) = get(&client, address).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
        "{answer}"
    );

    // A client-only certificate (pgfm init --add --client) gets through too.
    let haproxy = write(
        &tmp.path().join("haproxy"),
        &ca,
        &ca.issue_client("main", "haproxy").unwrap(),
    );
    let haproxy = Tls::load_client(haproxy).unwrap();
    assert!(get(&haproxy, address).await.is_ok());

    // Plain HTTP: refused in the handshake, no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("hello"));

    // A client with a certificate of another CA (that trusts this server): refused.
    let other = Authority::create("other").unwrap();
    let stranger_dir = tmp.path().join("stranger");
    let stranger_files = write(
        &stranger_dir,
        &other,
        &other.issue("other", "x", &[local()]).unwrap(),
    );
    std::fs::write(
        &stranger_files.ca,
        format!("{}{}", other.pem.cert, ca.pem.cert),
    )
    .unwrap();
    let stranger = Tls::load(stranger_files, LOCAL).unwrap();
    let refused = get(&stranger, address).await;
    assert!(refused.is_err(), "{refused:?}");

    // Rotation: a new certificate on disk is presented to new connections.
    let renewed = ca.issue("main", "pg1", &[local()]).unwrap();
    std::fs::write(&server_files.key, &renewed.key).unwrap();
    std::fs::write(&server_files.cert, &renewed.cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, presented) = get(&client, address).await.unwrap();
        if presented != first {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never used"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file keeps the last good set in use.
    std::fs::write(&server_files.cert, "broken").unwrap();
    let broken = stamp(&server_files);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.current.lock().unwrap().stamp != broken {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken file was never looked at"
        );
        let _ = get(&client, address).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(get(&client, address).await.is_ok());
}

/// A flood of connections that never begin their handshake, from one address, takes at
/// most its share of the listener's handshakes: a peer on another address is still served
/// at once. (Loopback: the flood comes from 127.0.0.2, the peer from 127.0.0.1.)
#[tokio::test]
async fn a_flood_from_one_address_leaves_room_for_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Authority::create("main").unwrap();
    let server = Tls::load(node(&tmp.path().join("pg1"), &ca, "pg1"), LOCAL).unwrap();
    let address = serve(server).await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        flood.push(socket.connect(address).await.unwrap());
    }
    let client = Tls::load(node(&tmp.path().join("pg2"), &ca, "pg2"), LOCAL).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(3), get(&client, address)).await;
    assert!(
        matches!(&answer, Ok(Ok((a, _))) if a.ends_with("hello")),
        "a peer was shut out by another address's flood: {answer:?}"
    );
    drop(flood);
}
