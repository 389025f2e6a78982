//! The virtual IP on this node: where the agent adds, removes, announces and checks it.
//! The decision engine says when (`TakeVip`, `ReleaseVip`); the fence, hand-over and stop
//! paths remove it first of all, before PostgreSQL stops serving.

use std::time::Duration;
use tokio::time::Instant;

use pgfm_core::{Generation, VipReport};

use super::Agent;

impl Agent {
    /// What the report says about the VIP (None: no VIP configured here).
    pub(super) async fn vip_report(&self) -> Option<VipReport> {
        let vip = self.vip.as_ref()?;
        let spec = vip.spec();
        let held = match vip.held().await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether the virtual IP is here");
                false
            }
        };
        Some(VipReport {
            address: format!("{}/{}", spec.address, spec.prefix),
            held,
        })
    }

    /// Add the VIP and announce it (gratuitous ARP).
    pub(super) async fn take_vip(&self, generation: Generation) -> anyhow::Result<()> {
        let Some(vip) = &self.vip else { return Ok(()) };
        if vip.acquire().await? {
            tracing::warn!(%generation, vip = %vip.spec(), "virtual IP added and announced (gratuitous ARP)");
            // Repeat the announcement, as keepalived does, for caches that missed it.
            let vip = vip.clone();
            tokio::spawn(async move {
                for pause in [250, 1000] {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    if let Err(e) = vip.announce().await {
                        tracing::warn!(%generation, error = %e, "repeating the gratuitous ARP failed");
                    }
                }
            });
        }
        Ok(())
    }

    /// Remove the VIP if it is here; `why` goes to the log. Never fails: a failure is
    /// logged, and the caller goes on with what it must do (fence, hand over, stop).
    pub(super) async fn release_vip(&self, generation: Generation, why: &str) {
        let Some(vip) = &self.vip else { return };
        match vip.release().await {
            Ok(true) => {
                tracing::warn!(%generation, vip = %vip.spec(), "virtual IP removed: {why}")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(%generation, vip = %vip.spec(), error = %e, "removing the virtual IP failed ({why})")
            }
        }
    }

    /// Before a promotion (EFM's `check.vip.before.promotion`): wait until no other host
    /// answers for the VIP, at most `vip.check_timeout`.
    pub(super) async fn wait_vip_free(&self, generation: Generation) -> anyhow::Result<()> {
        let (Some(vip), Some(config)) = (&self.vip, &self.config.vip) else {
            return Ok(());
        };
        if !config.check_before_promotion {
            return Ok(());
        }
        let started = Instant::now();
        let mut said = false;
        loop {
            let Some(mac) = vip.who_answers(2, Duration::from_millis(50)).await? else {
                if said {
                    tracing::info!(%generation, ms = started.elapsed().as_millis() as u64, "the virtual IP no longer answers: promoting");
                }
                return Ok(());
            };
            if started.elapsed() >= config.check_timeout {
                anyhow::bail!(
                    "the virtual IP {} still answers from {mac} after {}: another host holds \
                     it, so this node is not promoted (vip.check_before_promotion); remove the \
                     address from that host",
                    vip.spec().address,
                    humantime::format_duration(config.check_timeout)
                );
            }
            if !said {
                tracing::warn!(%generation, %mac, "the virtual IP still answers from another host: waiting for it to go before promoting");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
