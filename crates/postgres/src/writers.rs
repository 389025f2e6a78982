//! Watching which servers accept writes: samples every server's `pg_is_in_recovery()` in
//! turn and keeps the moments each one answered "not in recovery". Two servers writable at
//! overlapping moments is split brain; the tests and the bench look for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::probe::{connect, Target};

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
    let mut seen = Vec::new();
    let mut clients: Vec<Option<tokio_postgres::Client>> = targets.iter().map(|_| None).collect();
    while !stop.load(Ordering::SeqCst) {
        for (i, (node, target)) in targets.iter().enumerate() {
            if clients[i].as_ref().is_none_or(|c| c.is_closed()) {
                clients[i] = connect(target).await.ok();
            }
            let Some(client) = clients[i].as_ref() else {
                continue;
            };
            let from = Instant::now();
            let asked = tokio::time::timeout(
                target.timeout,
                client.query_one("SELECT NOT pg_is_in_recovery()", &[]),
            )
            .await;
            match asked {
                Ok(Ok(row)) if row.get::<_, bool>(0) => seen.push(Writable {
                    node: node.clone(),
                    from,
                    to: Instant::now(),
                }),
                Ok(Ok(_)) => {}
                _ => clients[i] = None,
            }
        }
        tokio::time::sleep(every).await;
    }
    seen
}

/// The acknowledged ids of a writer and when each was acknowledged.
pub type Acks = Arc<Mutex<Vec<(i64, Instant)>>>;

/// The neutral writer: one INSERT of a sequential id (from `first`) per transaction every
/// 10 ms into `bench (id)`, reconnecting at once on any error, until `stop`.
pub async fn write_sequence(
    config: tokio_postgres::Config,
    first: i64,
    acks: Acks,
    stop: Arc<AtomicBool>,
) {
    let mut next = first;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            // Reconnect at once: no pause between attempts beyond the connect itself.
            client = match tokio::time::timeout(
                Duration::from_secs(2),
                config.connect(tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, connection))) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Some(c)
                }
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
