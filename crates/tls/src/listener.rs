//! Accepting TLS connections for `axum::serve`: each handshake runs on its own task under
//! a deadline, so one slow or hostile peer cannot hold up the others; only connections
//! whose peer presented a certificate of the cluster CA reach the router. Every refusal is
//! logged (once a minute per peer and reason, with how many were not).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::CertificateError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::Tls;

/// A handshake not done by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many handshakes at once: a flood of connections that never finish theirs
/// cannot take every file descriptor (the agent's own Raft and probe connections need
/// some); past it, new connections are closed at once.
const HANDSHAKES: usize = 256;
/// At most this many of them from one address: a flood from one host (a scanner, a
/// misconfigured load balancer) cannot take them all, and the cluster's own peers, each on
/// its own address, still get in.
const HANDSHAKES_PER_ADDRESS: usize = 16;
/// At most this many (address, reason) pairs are remembered for the log's rate limit.
const REMEMBERED: usize = 1024;
/// The same refusal from the same address is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// TLS connections whose handshake succeeded, with the peer's address.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accept on `tcp` with the server side of `tls` (reread as its files change).
    pub fn new(tcp: TcpListener, tls: Arc<Tls>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, incoming) = mpsc::channel(64);
        let accepting = tokio::spawn(accept(tcp, tls, tx));
        Ok(TlsListener {
            incoming,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accepting task ended (the runtime is stopping): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept(
    tcp: TcpListener,
    tls: Arc<Tls>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let refusals = Arc::new(Refusals::default());
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    let in_flight = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let Some(from_peer) = InFlight::enter(&in_flight, peer.ip()) else {
            refusals.log(
                peer,
                &Refusal::warn(format!(
                    "{HANDSHAKES_PER_ADDRESS} handshakes from this address are already under way"
                )),
            );
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            refusals.log(
                peer,
                &Refusal::warn(format!("{HANDSHAKES} handshakes are already under way")),
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.server_config());
        let (tx, refusals) = (tx.clone(), refusals.clone());
        tokio::spawn(async move {
            let _permits = (permit, from_peer);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(e)) => refusals.log(peer, &refusal(&e)),
                Err(_) => refusals.log(
                    peer,
                    &Refusal::warn(format!(
                        "no TLS handshake within {} s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    )),
                ),
            }
        });
    }
}

/// Handshakes under way per address; one is counted while its `InFlight` lives.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

struct InFlight {
    counts: PerAddress,
    address: IpAddr,
}

impl InFlight {
    /// Count a handshake from `address`, unless it has `HANDSHAKES_PER_ADDRESS` already.
    /// IPv6 addresses count by their /64 (one host may hold all of it).
    fn enter(counts: &PerAddress, address: IpAddr) -> Option<InFlight> {
        let address = match address {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            v4 => v4,
        };
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(address).or_insert(0);
        if *count >= HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(InFlight {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let address = self.address;
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&address);
            }
        }
    }
}

/// Why a handshake failed, and whether it is worth a warning (a peer closing early is not).
struct Refusal {
    reason: String,
    warn: bool,
}

impl Refusal {
    fn warn(reason: String) -> Refusal {
        Refusal { reason, warn: true }
    }
}

fn refusal(error: &io::Error) -> Refusal {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Refusal {
            reason: format!("the connection ended during the TLS handshake ({error})"),
            warn: false,
        };
    };
    Refusal::warn(match tls {
        rustls::Error::InvalidMessage(_) => "it does not speak TLS (a plain http:// request? \
             this agent serves https:// with client certificates only)"
            .to_string(),
        rustls::Error::NoCertificatesPresented => "it presented no client certificate (clients \
             of this cluster present a certificate of its CA, such as their node's node.crt)"
            .to_string(),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "its certificate is not signed by this cluster's CA".to_string(),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "its certificate has expired".to_string(),
        other => other.to_string(),
    })
}

/// When each (address, reason) was last logged, and how many were not since.
#[derive(Default)]
struct Refusals {
    seen: Mutex<HashMap<(IpAddr, String), Logged>>,
}

/// When a refusal was last logged, and how many like it were not since.
type Logged = (Option<Instant>, u64);

impl Refusals {
    fn log(&self, peer: SocketAddr, refusal: &Refusal) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBERED {
            seen.retain(|_, (at, _)| at.is_some_and(|at| at.elapsed() < LOG_EVERY));
            if seen.len() >= REMEMBERED {
                // A flood from many addresses: forget them rather than grow.
                seen.clear();
            }
        }
        let entry = seen
            .entry((peer.ip(), refusal.reason.clone()))
            .or_insert((None, 0));
        if entry.0.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            entry.1 += 1;
            return;
        }
        let more = std::mem::take(&mut entry.1);
        entry.0 = Some(Instant::now());
        let also = if more > 0 {
            format!(" ({more} more from there in the last minute)")
        } else {
            String::new()
        };
        if refusal.warn {
            tracing::warn!("refused a connection from {peer}: {}{also}", refusal.reason);
        } else {
            tracing::debug!("refused a connection from {peer}: {}{also}", refusal.reason);
        }
    }
}
