//! The virtual IP as the simulation sees it: which hosts have the address on an interface.
//! A host that dies or is reset loses it (the kernel's addresses go with it); a frozen
//! host keeps it and its kernel still answers ARP for it. The checker reads the table.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfm_net::{Mac, Pending, VipError, VipSpec, VirtualIp};

use crate::hosts::Hosts;

/// Which hosts hold the address.
pub struct VipTable {
    holders: Mutex<BTreeSet<String>>,
    hosts: Arc<dyn Hosts>,
    spec: VipSpec,
}

impl VipTable {
    pub fn new(spec: VipSpec, hosts: Arc<dyn Hosts>) -> Arc<VipTable> {
        Arc::new(VipTable {
            holders: Mutex::default(),
            hosts,
            spec,
        })
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hosts that hold the address and run (frozen or not).
    pub fn live_holders(&self) -> Vec<String> {
        self.holders()
            .iter()
            .filter(|h| self.hosts.up(h))
            .cloned()
            .collect()
    }

    /// The host went down: its addresses with it.
    pub fn host_down(&self, host: &str) {
        self.holders().remove(host);
    }

    /// The VIP as `host`'s agent manages it.
    pub fn for_host(self: &Arc<Self>, host: &str) -> Arc<dyn VirtualIp> {
        Arc::new(SimVip {
            table: self.clone(),
            host: host.to_string(),
            spec: self.spec.clone(),
        })
    }
}

/// One host's handle. The table models one address: a handle moved to another address
/// (`moved_to`) is still counted in it, which the simulation, never changing the address,
/// does not need to tell apart.
struct SimVip {
    table: Arc<VipTable>,
    host: String,
    spec: VipSpec,
}

impl VirtualIp for SimVip {
    fn spec(&self) -> &VipSpec {
        &self.spec
    }
    fn held(&self) -> Pending<'_, Result<bool, VipError>> {
        Box::pin(async move { Ok(self.table.holders().contains(&self.host)) })
    }
    fn acquire(&self) -> Pending<'_, Result<bool, VipError>> {
        Box::pin(async move { Ok(self.table.holders().insert(self.host.clone())) })
    }
    fn announce(&self) -> Pending<'_, Result<(), VipError>> {
        Box::pin(async move { Ok(()) })
    }
    fn release(&self) -> Pending<'_, Result<bool, VipError>> {
        Box::pin(async move { Ok(self.table.holders().remove(&self.host)) })
    }
    fn who_answers(
        &self,
        probes: u32,
        wait: Duration,
    ) -> Pending<'_, Result<Option<Mac>, VipError>> {
        Box::pin(async move {
            tokio::time::sleep(wait * probes).await;
            let other = self
                .table
                .live_holders()
                .into_iter()
                .find(|h| *h != self.host && self.table.hosts.reachable(h, &self.host));
            // A made-up hardware address per host, enough to tell them apart in the log.
            Ok(other.map(|h| {
                let n = h.bytes().fold(0u8, |a, b| a.wrapping_add(b));
                Mac([0x02, 0, 0, 0, 0, n])
            }))
        })
    }
    fn moved_to(&self, address: std::net::Ipv4Addr, prefix: u8) -> Arc<dyn VirtualIp> {
        let mut spec = self.spec.clone();
        spec.address = address;
        spec.prefix = prefix;
        Arc::new(SimVip {
            table: self.table.clone(),
            host: self.host.clone(),
            spec,
        })
    }
}
