//! The load a lab runs under, for the bench, the demo and the end-to-end tests alike: the
//! neutral writer (one INSERT of a sequential id per transaction every 10 ms, reconnecting
//! at once) with what it measures (acknowledged ids, the longest gap between two), and the
//! split-brain watch (every server's `pg_is_in_recovery()` sampled in turn; two servers
//! writable at overlapping moments is split brain). Each runs on a thread of its own with
//! its own runtime, so neither is slowed down by what the caller does meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pgfm_postgres::probe::{connect, Target};

/// The table the neutral writer writes into.
pub const BENCH_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS bench (id bigint PRIMARY KEY, at timestamptz DEFAULT now())";

/// Run `task` to completion on a new thread with a runtime of its own.
fn on_own_thread<T: Send + 'static>(
    task: impl std::future::Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the load")
            .block_on(task)
    })
}

/// A read-write session of the lab's clients: where and as whom (`config`), and the CA
/// to verify the server with when the lab lets its clients in over TLS only (`ssl_root`,
/// `LabFile::client_ssl_root`); without one the session is plain.
#[derive(Debug, Clone)]
pub struct Session {
    pub config: tokio_postgres::Config,
    pub ssl_root: Option<std::path::PathBuf>,
}

impl From<tokio_postgres::Config> for Session {
    fn from(config: tokio_postgres::Config) -> Session {
        Session {
            config,
            ssl_root: None,
        }
    }
}

impl Session {
    /// Connect (verify-full against `ssl_root` when set) and run the connection on its own
    /// task; the error in words.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let Some(ca) = &self.ssl_root else {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            return Ok(client);
        };
        let tls = pgfm_postgres::ssl::connector(ca)?;
        let mut config = self.config.clone();
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let (client, connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// The neutral writer on its own thread (see `write_sequence`), until `finish`.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub acks: Acks,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    /// Start writing ids from `first_id` through `session` (a read-write session).
    pub fn start(session: impl Into<Session>, first_id: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Acks = Default::default();
        let task = write_sequence(session.into(), first_id, acks.clone(), stop.clone());
        Writer {
            stop,
            acks,
            handle: Some(on_own_thread(task)),
        }
    }

    /// How many writes were acknowledged so far.
    pub fn count(&self) -> usize {
        self.acks.lock().map(|a| a.len()).unwrap_or_default()
    }

    /// The writes acknowledged so far, with when.
    pub fn acknowledged(&self) -> Vec<(i64, Instant)> {
        self.acks.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Stop writing (the write in flight ends first); the acknowledged writes.
    pub fn finish(mut self) -> Vec<(i64, Instant)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        self.acknowledged()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The ids of acknowledged writes.
pub fn ids(acks: &[(i64, Instant)]) -> Vec<i64> {
    acks.iter().map(|(id, _)| *id).collect()
}

/// The longest gap between consecutive acknowledged writes, from the last one at or before
/// `from` on (`from` itself when none was).
pub fn longest_gap(acks: &[(i64, Instant)], from: Instant) -> Duration {
    let start = acks
        .iter()
        .rev()
        .find(|(_, at)| *at <= from)
        .map(|(_, at)| *at)
        .unwrap_or(from);
    acks.iter()
        .filter(|(_, at)| *at > start)
        .scan(start, |prev, (_, at)| {
            let gap = at.duration_since(*prev);
            *prev = *at;
            Some(gap)
        })
        .max()
        .unwrap_or_default()
}

/// The split-brain watch on its own thread (see `sample_writable`), until `finish`.
pub struct WriteWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Writable>>>,
    handle: Option<JoinHandle<()>>,
}

impl WriteWatch {
    /// Sample `targets` (name, server) every `every`.
    pub fn start(targets: Vec<(String, Target)>, every: Duration) -> WriteWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Writable>>> = Default::default();
        let task = sample_into(targets, stop.clone(), every, seen.clone());
        WriteWatch {
            stop,
            seen,
            handle: Some(on_own_thread(task)),
        }
    }

    /// The writable samples seen so far (a long bench reports them as it goes).
    pub fn so_far(&self) -> Vec<Writable> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stop; every writable sample seen.
    pub fn finish(mut self) -> Vec<Writable> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        self.so_far()
    }
}

impl Drop for WriteWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One server found writable between `from` and `to` (the query's start and end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writable {
    pub node: String,
    pub from: Instant,
    pub to: Instant,
}

/// Sample `targets` until `stop` is set, pausing `every` between rounds.
pub async fn sample_writable(
    targets: Vec<(String, Target)>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> Vec<Writable> {
    let seen: Arc<Mutex<Vec<Writable>>> = Default::default();
    sample_into(targets, stop, every, seen.clone()).await;
    let found = seen.lock().map(|s| s.clone()).unwrap_or_default();
    found
}

/// `sample_writable`, adding each writable sample to `seen` as it is taken: one watcher
/// per server, so that a dead host's timeouts never leave the others unwatched.
async fn sample_into(
    targets: Vec<(String, Target)>,
    stop: Arc<AtomicBool>,
    every: Duration,
    seen: Arc<Mutex<Vec<Writable>>>,
) {
    let mut watchers = tokio::task::JoinSet::new();
    for (node, target) in targets {
        watchers.spawn(watch_one(node, target, stop.clone(), every, seen.clone()));
    }
    while watchers.join_next().await.is_some() {}
}

/// Ask `target` whether it takes writes every `every` until `stop`.
async fn watch_one(
    node: String,
    target: Target,
    stop: Arc<AtomicBool>,
    every: Duration,
    seen: Arc<Mutex<Vec<Writable>>>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(&target).await.ok();
        }
        if let Some(c) = client.as_ref() {
            let from = Instant::now();
            let asked = tokio::time::timeout(
                target.timeout,
                c.query_one("SELECT NOT pg_is_in_recovery()", &[]),
            )
            .await;
            match asked {
                Ok(Ok(row)) if row.get::<_, bool>(0) => {
                    let sample = Writable {
                        node: node.clone(),
                        from,
                        to: Instant::now(),
                    };
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(sample);
                    }
                }
                Ok(Ok(_)) => {}
                _ => client = None,
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The acknowledged ids of a writer and when each was acknowledged.
pub type Acks = Arc<Mutex<Vec<(i64, Instant)>>>;

/// The neutral writer: one INSERT of a sequential id (from `first`) per transaction every
/// 10 ms into `bench (id)`, reconnecting at once on any error, until `stop`.
pub async fn write_sequence(session: Session, first: i64, acks: Acks, stop: Arc<AtomicBool>) {
    let mut next = first;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            // Reconnect at once: no pause between attempts beyond the connect itself.
            client = match tokio::time::timeout(Duration::from_secs(2), session.connect()).await {
                Ok(Ok(c)) => Some(c),
                _ => None,
            };
            continue;
        }
        ticker.tick().await;
        let Some(c) = client.as_ref() else { continue };
        let id = next;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let insert = c.execute("INSERT INTO bench (id) VALUES ($1)", &params);
        match tokio::time::timeout(Duration::from_secs(2), insert).await {
            Ok(Ok(_)) => {
                if let Ok(mut acks) = acks.lock() {
                    acks.push((next, Instant::now()));
                }
                next += 1;
            }
            _ => {
                // Unacknowledged is not undone: the row may have committed (a commit that
                // timed out waiting for a synchronous standby is kept locally). The id is
                // in doubt; the next write uses a new one.
                next += 1;
                client = None;
            }
        }
    }
}

/// Pairs of samples where two different servers were writable at overlapping moments.
pub fn overlaps(samples: &[Writable]) -> Vec<(&Writable, &Writable)> {
    let mut found = Vec::new();
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            if a.node != b.node && a.from <= b.to && b.from <= a.to {
                found.push((a, b));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_from_the_last_write_before() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let acks = vec![(1, ms(0)), (2, ms(10)), (3, ms(100)), (4, ms(130))];
        assert_eq!(longest_gap(&acks, ms(5)), Duration::from_millis(90));
        assert_eq!(longest_gap(&acks, ms(100)), Duration::from_millis(30));
        assert_eq!(longest_gap(&acks, ms(200)), Duration::ZERO);
        assert_eq!(longest_gap(&[], ms(0)), Duration::ZERO);
    }

    #[test]
    fn finds_overlapping_writers_only() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let w = |node: &str, a, b| Writable {
            node: node.into(),
            from: ms(a),
            to: ms(b),
        };
        let samples = vec![
            w("pg1", 0, 10),
            w("pg1", 20, 30),
            w("pg2", 40, 50),
            w("pg2", 5, 6),
        ];
        let found = overlaps(&samples);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].0.node.as_str(), found[0].1.node.as_str()),
            ("pg1", "pg2")
        );
        assert!(overlaps(&samples[1..3]).is_empty());
    }
}
