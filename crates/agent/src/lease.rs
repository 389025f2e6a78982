//! The lease loop: on the primary, renew the lease through the Raft log every
//! `renew_interval`, timing it from the moment the renewal was sent; on any node, fence
//! PostgreSQL the moment it may take writes it must not (invariant 2). It runs apart from
//! the decide loop so that a long action (a clone, a start) never delays a fence.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use pgfm_coord::{Coordinator, ProposeError};
use pgfm_core::lease::LeaseStep;
use pgfm_core::Command;

use super::{lock, Agent};

impl Agent {
    pub(super) async fn lease_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(pg) = self.postgres.as_deref() else {
            return;
        };
        {
            let mut held = lock(&self.lease);
            held.started_ms = self.now_ms();
        }
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            self.loop_ticks
                .lease
                .store(self.now_ms().max(1), std::sync::atomic::Ordering::Relaxed);
            // A primary that gave its lease up renews no more: the log refuses it.
            let (holder, generation) = self.raft.lease_holder();
            let is_primary = holder.as_deref() == Some(self.config.name.as_str());
            let now = self.now_ms();
            let held = {
                let mut held = lock(&self.lease);
                if held.generation != Some(generation) {
                    // A new generation: whatever was held belonged to the previous one.
                    held.generation = Some(generation);
                    held.valid_until_ms = None;
                    held.last_attempt_ms = None;
                }
                if !is_primary {
                    // Given up, or never this node's: nothing may count on it any more.
                    held.valid_until_ms = None;
                }
                *held
            };
            // The lease's timing in force (committed). Before this agent's first renewal,
            // the lease it may hold from before a restart is assumed no longer than the one
            // its last renewal carried: the coordinator counts that one.
            let mut settings = self.settings().lease;
            if held.valid_until_ms.is_none() {
                if let Some(carried) = self.raft.last_lease_timing() {
                    settings.lease_ms = settings.lease_ms.min(carried);
                }
            }
            let writable = pg.writable();
            let steps = self
                .engine
                .lease_step(now, is_primary, writable, &held, &settings);
            // The host watchdog, inline (quick syscalls): armed before the renewal it guards,
            // fed while a reset would still come before any promotion and the fence deadline
            // has not passed — the lease's, or after a restart the one assumed from the
            // agent's start (invariant 10).
            let now = self.now_ms();
            let may_renew = {
                let mut watchdog = lock(&self.watchdog);
                // The lease's timing changed: the timeout follows, once a feed is allowed
                // under the new one.
                if let Some(wanted) = settings.watchdog_timeout_s() {
                    let may_feed = is_primary && now < held.feed_until_ms(&settings, wanted);
                    watchdog.retime(generation, wanted, may_feed, now);
                }
                let feed_until = held.feed_until_ms(&settings, watchdog.timeout_s());
                watchdog.tick(
                    generation,
                    is_primary,
                    writable,
                    now < feed_until,
                    steps.contains(&LeaseStep::Renew),
                    now,
                )
            };
            for step in steps {
                match step {
                    LeaseStep::Fence(reason) => {
                        match self.fence_now(pg, generation, &reason).await {
                            // PostgreSQL is stopped: nothing left for the watchdog to guard.
                            Ok(()) => lock(&self.watchdog).fenced(generation),
                            // Not disarmed: the host reset is the fence of last resort.
                            Err(e) => {
                                tracing::error!(generation = %generation, error = %format!("{e:#}"), "fencing failed")
                            }
                        }
                    }
                    // `required` and not armed: the lease is not taken (the watchdog logs why).
                    LeaseStep::Renew if !may_renew => {}
                    LeaseStep::Renew => {
                        {
                            let mut held = lock(&self.lease);
                            held.in_flight = true;
                            held.last_attempt_ms = Some(now);
                        }
                        let agent = self.clone();
                        tokio::spawn(async move { agent.renew(generation, now).await });
                    }
                }
            }
        }
    }

    /// Stop the local PostgreSQL at once (invariant 2), the VIP gone first: the lease
    /// loop's and the executor's fence alike.
    pub(super) async fn fence_now(
        &self,
        pg: &dyn pgfm_postgres::Database,
        generation: pgfm_core::Generation,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::error!(%generation, %reason, "fencing PostgreSQL");
        self.release_vip(generation, "fencing").await;
        self.expect_db_down();
        pg.fence().await?;
        tracing::warn!(%generation, "PostgreSQL fenced (immediate shutdown)");
        Ok(())
    }

    /// One renewal, sent at `sent_ms`; the lease it buys runs from then.
    async fn renew(self: Arc<Self>, generation: pgfm_core::Generation, sent_ms: u64) {
        let settings = self.settings().lease;
        // Timed with the lease in force now, and said so: the coordinator counts this
        // renewal out with the same value, whatever the settings when it applies it.
        let command = Command::RenewLease {
            node: self.config.name.clone(),
            generation,
            lease_ms: Some(settings.lease_ms),
        };
        // A renewal stuck on an unreachable coordinator (its host powered off: no reset,
        // only silence) must not block the next attempts: after a renew_interval the next
        // goes out, to whichever coordinator is known by then. The lease - safety_margin
        // budget must hold the election and this.
        let budget = Duration::from_millis(
            (settings.lease_ms - settings.safety_margin_ms).min(settings.renew_interval_ms),
        );
        let outcome = tokio::time::timeout(budget, self.raft.propose(command)).await;
        let mut held = lock(&self.lease);
        held.in_flight = false;
        if held.generation != Some(generation) {
            return;
        }
        held.last_failed = !matches!(outcome, Ok(Ok(())));
        match outcome {
            Ok(Ok(())) => {
                let until = sent_ms + settings.lease_ms;
                if held.valid_until_ms.is_none() {
                    tracing::info!(%generation, "holding the primary lease");
                    // A promotion (or a start) waits for the lease: decide now.
                    self.wake_decisions();
                }
                held.valid_until_ms = Some(held.valid_until_ms.map_or(until, |u| u.max(until)));
            }
            Ok(Err(ProposeError::Refused(refused))) => {
                if held.valid_until_ms.is_some() {
                    tracing::warn!(%generation, %refused, "lease renewal refused: fencing");
                }
                // The committed state says this node no longer holds the lease.
                held.valid_until_ms = None;
                held.started_ms = 0;
            }
            Ok(Err(e)) => tracing::debug!(%generation, error = %e, "lease renewal not committed"),
            Err(_) => tracing::debug!(%generation, "lease renewal timed out"),
        }
    }
}
