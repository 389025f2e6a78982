//! The virtual IP on this node: where the agent adds, removes, announces and checks it.
//! The decision engine says when (`TakeVip`, `ReleaseVip`); the fence, hand-over and stop
//! paths remove it first of all, before PostgreSQL stops serving.

use std::time::Duration;
use tokio::time::Instant;

use pgfm_core::{Generation, VipReport};

use std::sync::Arc;

use pgfm_net::VirtualIp;

use pgfm_core::decide::ClusterView;

use super::{lock, Agent};

impl Agent {
    /// The virtual IP this node carries now, if any.
    fn vip(&self) -> Option<Arc<dyn VirtualIp>> {
        lock(&self.vip).clone()
    }

    /// Carry the cluster's `vip.address` (committed; the file's before the first commit):
    /// when it changed, the old address is removed from this host first, and the new one is
    /// taken as any is (`TakeVip` on the primary). A node whose file has no `[vip]`
    /// interface cannot carry it: said once in the log.
    pub(super) async fn follow_vip_address(&self, view: &ClusterView) {
        let state = &view.state;
        let mut address = view.settings.vip_address.clone();
        // A cluster whose settings were committed before vip.address was (an upgrade):
        // none committed and none ever changed — this node's file's address, until an
        // operator commits one (`file_differs` warns meanwhile).
        let never_committed = state.settings.as_ref().is_some_and(|c| {
            c.values.vip_address.is_none()
                && !c
                    .history
                    .iter()
                    .any(|h| h.changes.iter().any(|ch| ch.key == "vip.address"))
        });
        if never_committed {
            address = self.config.vip_address.clone();
        }
        let wanted = address
            .as_deref()
            .and_then(|a| pgfm_core::settings::vip_address(a).ok());
        let Some(base) = &self.vip_base else {
            if let (Some(address), Some(_)) = (&address, &self.postgres) {
                let mut warned = lock(&self.vip_unplaced);
                if warned.as_deref() != Some(address.as_str()) {
                    tracing::warn!(vip = %address, file = %self.config.file.display(), "the cluster has a virtual IP, but this node's file has no [vip] interface: this node never carries it (add [vip] interface = \"...\")");
                    *warned = Some(address.clone());
                }
            }
            return;
        };
        let generation = state.generation;
        // At start: an address of the file's left on this host by an agent before this one
        // (killed without its stop path), while the cluster's is another now.
        if !self
            .vip_stale_checked
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let spec = base.spec();
            let file = (spec.address, spec.prefix);
            if !spec.address.is_unspecified() && Some(file) != wanted {
                if let Ok(true) = base.release().await {
                    tracing::warn!(%generation, vip = %spec, "an old virtual IP, no longer the cluster's, removed from this host");
                }
            }
        }
        let current = self.vip();
        let now = current
            .as_ref()
            .map(|v| (v.spec().address, v.spec().prefix));
        if now == wanted {
            return;
        }
        if let Some(old) = current {
            match old.release().await {
                Ok(true) => {
                    tracing::warn!(%generation, vip = %old.spec(), "virtual IP removed: the cluster's vip.address changed")
                }
                Ok(false) => {}
                Err(e) => {
                    // Kept, to be removed at the next try: never two addresses held.
                    tracing::error!(%generation, vip = %old.spec(), error = %e, "removing the old virtual IP failed; trying again");
                    return;
                }
            }
        }
        let moved = wanted.map(|(address, prefix)| base.moved_to(address, prefix));
        match &moved {
            Some(vip) => {
                tracing::info!(%generation, vip = %vip.spec(), "the virtual IP this node carries when primary")
            }
            None => tracing::info!(%generation, "the cluster has no virtual IP"),
        }
        *lock(&self.vip) = moved;
    }

    /// What the report says about the VIP (None: no VIP configured here).
    pub(super) async fn vip_report(&self) -> Option<VipReport> {
        let vip = self.vip()?;
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
        let Some(vip) = self.vip() else {
            return Ok(());
        };
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
        let Some(vip) = self.vip() else { return };
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
        let (Some(vip), Some(config)) = (self.vip(), &self.config.vip) else {
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
