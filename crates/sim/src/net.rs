//! The simulated network between the agents: every request an agent sends (a Raft RPC, a
//! report, a forwarded proposal, a pre-vote ping) becomes a message with a delivery time
//! drawn from the run's `Rng`; the simulator delivers due messages to the target agent's
//! router in its own runtime, and the answer travels back the same way. Partitions (both
//! ways or one way), delays, losses and duplicates are decided here; which hosts are up,
//! frozen or running an agent is the simulator's (`world.rs`), asked at delivery.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex, MutexGuard};

use pgfm_core::transport::{Failure, Pending, Request, Response, Transport, TransportError};
use tokio::sync::oneshot;

use crate::rng::Rng;

/// How the network behaves in a run.
#[derive(Debug, Clone)]
pub struct NetSettings {
    /// One-way delay of a message, drawn uniformly in this range (ms).
    pub delay_ms: (u64, u64),
    /// The chance that a message is slow (delayed up to `slow_ms` more): reordering.
    pub slow_chance: f64,
    pub slow_ms: u64,
    /// The chance that a message is lost (its sender times out).
    pub drop_chance: f64,
    /// The chance that a request is delivered twice (the second answer is discarded).
    pub duplicate_chance: f64,
    /// How long a connection attempt to a host that does not answer takes to fail.
    pub connect_timeout_ms: u64,
}

impl Default for NetSettings {
    fn default() -> NetSettings {
        NetSettings {
            delay_ms: (0, 3),
            slow_chance: 0.02,
            slow_ms: 60,
            drop_chance: 0.0,
            duplicate_chance: 0.0,
            connect_timeout_ms: 500,
        }
    }
}

pub type Answer = Result<Response, TransportError>;

/// Something the network will do at a given time.
pub enum Event {
    /// A request reaches `to` (the simulator hands it to the agent there). `reply` is None
    /// for a duplicate, whose answer nobody waits for.
    Deliver {
        from: String,
        to: String,
        request: Request,
        reply: Option<oneshot::Sender<Answer>>,
    },
    /// An answer (or a failure) reaches the sender.
    Answer {
        reply: oneshot::Sender<Answer>,
        answer: Answer,
    },
}

struct Queued {
    at_ms: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Queued) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Queued) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Queued) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

pub struct Net {
    pub settings: NetSettings,
    rng: Rng,
    now_ms: u64,
    seq: u64,
    /// Agent address (`host:port`) to node name.
    addresses: BTreeMap<String, String>,
    /// Directions packets do not cross: (from, to).
    cut: BTreeSet<(String, String)>,
    queue: BinaryHeap<Reverse<Queued>>,
    /// The answer channels of lost messages, kept (not dropped) so that their senders wait
    /// for their own timeout, as over a real network.
    black_hole: Vec<oneshot::Sender<Answer>>,
    /// Messages sent and lost, for the summary.
    pub sent: u64,
    pub lost: u64,
}

/// The network, shared by every agent's transport and the simulator.
#[derive(Clone)]
pub struct SharedNet(Arc<Mutex<Net>>);

impl SharedNet {
    pub fn new(settings: NetSettings, rng: Rng, addresses: BTreeMap<String, String>) -> SharedNet {
        SharedNet(Arc::new(Mutex::new(Net {
            settings,
            rng,
            now_ms: 0,
            seq: 0,
            addresses,
            cut: BTreeSet::new(),
            queue: BinaryHeap::new(),
            black_hole: Vec::new(),
            sent: 0,
            lost: 0,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Net> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport of the agent on `node`.
    pub fn transport(&self, node: &str) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            net: self.clone(),
            from: node.to_string(),
        })
    }
}

impl Net {
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    pub fn cut(&mut self, from: &str, to: &str) {
        self.cut.insert((from.to_string(), to.to_string()));
    }

    pub fn heal(&mut self, from: &str, to: &str) {
        self.cut.remove(&(from.to_string(), to.to_string()));
    }

    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    pub fn reachable(&self, from: &str, to: &str) -> bool {
        from == to || !self.cut.contains(&(from.to_string(), to.to_string()))
    }

    pub fn cuts(&self) -> Vec<(String, String)> {
        self.cut.iter().cloned().collect()
    }

    fn push(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at_ms,
            seq: self.seq,
            event,
        }));
    }

    /// A one-way delay, drawn now.
    fn delay(&mut self) -> u64 {
        let (low, high) = self.settings.delay_ms;
        let mut d = self.rng.range(low, high + 1);
        if self.rng.chance(self.settings.slow_chance) {
            d += self.rng.range(0, self.settings.slow_ms + 1);
        }
        d
    }

    /// `from` sends `request`: queue its delivery (and maybe a duplicate), or lose it.
    fn submit(&mut self, from: &str, request: Request, reply: oneshot::Sender<Answer>) {
        self.sent += 1;
        let Some(to) = self.addresses.get(address_of(&request.address)).cloned() else {
            let answer = Err(TransportError::new(
                Failure::Connect,
                format!(
                    "error sending request for url ({}): no such host",
                    request.url()
                ),
            ));
            let at = self.now_ms + self.delay();
            self.push(at, Event::Answer { reply, answer });
            return;
        };
        if self.rng.chance(self.settings.drop_chance) {
            // Lost: the sender's own timeout ends the wait.
            self.lose(reply);
            return;
        }
        if self.rng.chance(self.settings.duplicate_chance) {
            let at = self.now_ms + self.delay();
            let copy = Event::Deliver {
                from: from.to_string(),
                to: to.clone(),
                request: request.clone(),
                reply: None,
            };
            self.push(at, copy);
        }
        let at = self.now_ms + self.delay();
        let event = Event::Deliver {
            from: from.to_string(),
            to,
            request,
            reply: Some(reply),
        };
        self.push(at, event);
    }

    /// The next event due at or before `now_ms`, in (time, order sent).
    pub fn next_due(&mut self, now_ms: u64) -> Option<Event> {
        if self.queue.peek().is_some_and(|q| q.0.at_ms <= now_ms) {
            self.queue.pop().map(|q| q.0.event)
        } else {
            None
        }
    }

    /// The request from `from` reached nobody that answers: the sender learns it after
    /// `after_ms` (a refused connection at once, a silent host at the connect timeout).
    pub fn fail(
        &mut self,
        reply: oneshot::Sender<Answer>,
        after_ms: u64,
        failure: Failure,
        why: String,
    ) {
        let at = self.now_ms + after_ms;
        self.push(
            at,
            Event::Answer {
                reply,
                answer: Err(TransportError::new(failure, why)),
            },
        );
    }

    /// `to` answered `from`: the answer travels back, unless that direction is cut (then
    /// the sender's timeout ends its wait).
    pub fn answer(&mut self, from: &str, to: &str, reply: oneshot::Sender<Answer>, answer: Answer) {
        if !self.reachable(to, from) || self.rng.chance(self.settings.drop_chance) {
            self.lose(reply);
            return;
        }
        let at = self.now_ms + self.delay();
        self.push(at, Event::Answer { reply, answer });
    }

    /// A message lost on the way: its sender waits for its own timeout.
    pub fn lose(&mut self, reply: oneshot::Sender<Answer>) {
        self.lost += 1;
        self.black_hole.push(reply);
    }
}

/// `host:port` from an address that may be a URL.
fn address_of(address: &str) -> &str {
    address
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
}

/// One agent's transport: its requests go into the simulated network.
struct SimTransport {
    net: SharedNet,
    from: String,
}

impl Transport for SimTransport {
    fn send(&self, request: Request) -> Pending<'_, Result<Response, TransportError>> {
        let (tx, rx) = oneshot::channel();
        let timeout = request.timeout;
        let url = request.url();
        self.net.lock().submit(&self.from, request, tx);
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(TransportError::new(
                    Failure::Other,
                    format!("error sending request for url ({url}): connection reset by peer"),
                )),
                Err(_) => Err(TransportError::new(
                    Failure::Timeout,
                    format!(
                        "error sending request for url ({url}): operation timed out after {timeout:?}"
                    ),
                )),
            }
        })
    }
}
