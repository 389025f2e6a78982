//! The virtual IP that follows the primary: add and remove the address on an interface
//! (rtnetlink), announce it with gratuitous ARP, and check, before a promotion, that no
//! other host still answers for it (an ARP probe, RFC 5227).
//!
//! IPv4 only: a layer-2 VIP needs ARP. Everything here acts in the network namespace of
//! the calling process.

mod arp;
pub mod netns;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::Handle;

pub use arp::Mac;

/// The address the primary carries, on which interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub interface: String,
}

impl std::fmt::Display for VipSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.address, self.prefix, self.interface)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error(
        "vip.interface {interface:?} does not exist on this host (interfaces here: {present}); \
         set [vip] interface to the one that carries the cluster's network"
    )]
    NoInterface { interface: String, present: String },
    #[error(
        "vip.interface {0:?} has no hardware address, so the virtual IP cannot be announced or \
         checked with ARP; choose an Ethernet interface"
    )]
    NoHardwareAddress(String),
    #[error(
        "no permission to manage the virtual IP: the agent lacks {0} (run it as root, or grant \
         it with: setcap cap_net_admin,cap_net_raw+ep $(command -v pgfm))"
    )]
    NoPermission(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("ARP on {interface}: {error}")]
    Arp {
        interface: String,
        error: std::io::Error,
    },
}

fn netlink_error(e: rtnetlink::Error) -> VipError {
    if let rtnetlink::Error::NetlinkError(m) = &e {
        if m.raw_code() == -libc::EPERM {
            return VipError::NoPermission("CAP_NET_ADMIN".into());
        }
    }
    VipError::Netlink(e.to_string())
}

/// The capabilities a VIP needs, missing from this process (empty: all there).
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_NET_RAW: u32 = 13;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_NET_RAW, "CAP_NET_RAW"),
    ]
    .into_iter()
    .filter(|(bit, _)| effective & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

/// A future a trait object can return.
pub type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The virtual IP as the agent uses it: `Vip` on a real interface, a model of the address
/// in the simulation. Each method keeps the contract of `Vip`'s method of the same name.
pub trait VirtualIp: Send + Sync {
    fn spec(&self) -> &VipSpec;
    /// Whether the address is on this host's interface now.
    fn held(&self) -> Pending<'_, Result<bool, VipError>>;
    /// Add the address and announce it; whether it was added (false: it was here).
    fn acquire(&self) -> Pending<'_, Result<bool, VipError>>;
    /// Announce it again (gratuitous ARP).
    fn announce(&self) -> Pending<'_, Result<(), VipError>>;
    /// Remove the address; whether it was here.
    fn release(&self) -> Pending<'_, Result<bool, VipError>>;
    /// Which other host answers for the address (ARP probes), if any.
    fn who_answers(
        &self,
        probes: u32,
        wait: Duration,
    ) -> Pending<'_, Result<Option<Mac>, VipError>>;
    /// The same interface, for another address (the cluster's `vip.address` changed).
    fn moved_to(&self, address: Ipv4Addr, prefix: u8) -> std::sync::Arc<dyn VirtualIp>;
}

impl VirtualIp for Vip {
    fn spec(&self) -> &VipSpec {
        Vip::spec(self)
    }
    fn held(&self) -> Pending<'_, Result<bool, VipError>> {
        Box::pin(Vip::held(self))
    }
    fn acquire(&self) -> Pending<'_, Result<bool, VipError>> {
        Box::pin(Vip::acquire(self))
    }
    fn announce(&self) -> Pending<'_, Result<(), VipError>> {
        Box::pin(Vip::announce(self))
    }
    fn release(&self) -> Pending<'_, Result<bool, VipError>> {
        Box::pin(Vip::release(self))
    }
    fn who_answers(
        &self,
        probes: u32,
        wait: Duration,
    ) -> Pending<'_, Result<Option<Mac>, VipError>> {
        Box::pin(Vip::who_answers(self, probes, wait))
    }
    fn moved_to(&self, address: Ipv4Addr, prefix: u8) -> std::sync::Arc<dyn VirtualIp> {
        let mut moved = self.clone();
        moved.spec.address = address;
        moved.spec.prefix = prefix;
        std::sync::Arc::new(moved)
    }
}

/// A handle on the VIP of this node. Cheap to clone.
#[derive(Clone)]
pub struct Vip {
    spec: VipSpec,
    handle: Handle,
    /// One operation at a time: the kernel refuses a second dump on a netlink socket
    /// while one is in progress (EBUSY).
    busy: std::sync::Arc<tokio::sync::Mutex<()>>,
}

struct Link {
    index: u32,
    mac: Option<Mac>,
}

impl Vip {
    /// Open a netlink connection (on the current tokio runtime) and check that the VIP can
    /// be managed here: the interface exists and has a hardware address, and the process
    /// has the capabilities. The errors say what to fix.
    pub async fn open(spec: VipSpec) -> Result<Vip, VipError> {
        let missing = missing_capabilities();
        if !missing.is_empty() {
            return Err(VipError::NoPermission(missing.join(" and ")));
        }
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| VipError::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        let vip = Vip {
            spec,
            handle,
            busy: Default::default(),
        };
        let link = vip.link().await?;
        if link.mac.is_none() {
            return Err(VipError::NoHardwareAddress(vip.spec.interface.clone()));
        }
        Ok(vip)
    }

    pub fn spec(&self) -> &VipSpec {
        &self.spec
    }

    async fn link(&self) -> Result<Link, VipError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = links.try_next().await.map_err(netlink_error)? {
            let mut name = None;
            let mut mac = None;
            for attribute in &link.attributes {
                match attribute {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::Address(a) => {
                        mac = <[u8; 6]>::try_from(a.as_slice())
                            .ok()
                            .filter(|m| m.iter().any(|b| *b != 0))
                            .map(Mac)
                    }
                    _ => {}
                }
            }
            match name {
                Some(n) if n == self.spec.interface => {
                    return Ok(Link {
                        index: link.header.index,
                        mac,
                    })
                }
                Some(n) => names.push(n),
                None => {}
            }
        }
        Err(VipError::NoInterface {
            interface: self.spec.interface.clone(),
            present: names.join(", "),
        })
    }

    async fn address_message(
        &self,
        index: u32,
    ) -> Result<Option<rtnetlink::packet_route::address::AddressMessage>, VipError> {
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(self.spec.address))
            .execute();
        addresses.try_next().await.map_err(netlink_error)
    }

    /// Whether this host carries the VIP now.
    pub async fn held(&self) -> Result<bool, VipError> {
        let _one = self.busy.lock().await;
        let link = self.link().await?;
        Ok(self.address_message(link.index).await?.is_some())
    }

    /// Add the VIP (if missing) and announce it with gratuitous ARP. Returns whether it
    /// was added now.
    pub async fn acquire(&self) -> Result<bool, VipError> {
        let _one = self.busy.lock().await;
        let link = self.link().await?;
        let added = if self.address_message(link.index).await?.is_none() {
            match self
                .handle
                .address()
                .add(link.index, IpAddr::V4(self.spec.address), self.spec.prefix)
                .execute()
                .await
            {
                Ok(()) => true,
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => false,
                Err(e) => return Err(netlink_error(e)),
            }
        } else {
            false
        };
        if let Some(mac) = link.mac {
            self.arp(link.index, move |socket| socket.announce(mac))
                .await?;
        }
        Ok(added)
    }

    /// Announce the VIP again (gratuitous ARP), if this host carries it: a frame lost on
    /// the way, or a switch slow to learn, is covered by a repeat.
    pub async fn announce(&self) -> Result<(), VipError> {
        let _one = self.busy.lock().await;
        let link = self.link().await?;
        if self.address_message(link.index).await?.is_none() {
            return Ok(());
        }
        if let Some(mac) = link.mac {
            self.arp(link.index, move |socket| socket.announce(mac))
                .await?;
        }
        Ok(())
    }

    /// Remove the VIP if this host carries it. Returns whether it was removed now.
    pub async fn release(&self) -> Result<bool, VipError> {
        let _one = self.busy.lock().await;
        let link = self.link().await?;
        let Some(message) = self.address_message(link.index).await? else {
            return Ok(false);
        };
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EADDRNOTAVAIL => {
                Ok(false)
            }
            Err(e) => Err(netlink_error(e)),
        }
    }

    /// Ask the network whether another host answers for the VIP: an ARP probe, repeated
    /// `probes` times, each waiting `wait` for a reply. Returns the hardware address of the
    /// host that answered, if any.
    pub async fn who_answers(&self, probes: u32, wait: Duration) -> Result<Option<Mac>, VipError> {
        let _one = self.busy.lock().await;
        let link = self.link().await?;
        let Some(mac) = link.mac else {
            return Err(VipError::NoHardwareAddress(self.spec.interface.clone()));
        };
        self.arp(link.index, move |socket| {
            for _ in 0..probes {
                if let Some(answer) = socket.probe(mac, wait)? {
                    return Ok(Some(answer));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Run `work` on an ARP socket bound to the interface with index `index`.
    async fn arp<T: Send + 'static>(
        &self,
        index: u32,
        work: impl FnOnce(&arp::ArpSocket) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, VipError> {
        let interface = self.spec.interface.clone();
        let address = self.spec.address;
        let outcome = tokio::task::spawn_blocking(move || {
            let socket = arp::ArpSocket::open(index, address)?;
            work(&socket)
        })
        .await
        .map_err(|e| VipError::Arp {
            interface: interface.clone(),
            error: std::io::Error::other(e.to_string()),
        })?;
        outcome.map_err(|error| match error.raw_os_error() {
            Some(libc::EPERM) => VipError::NoPermission("CAP_NET_RAW".into()),
            _ => VipError::Arp { interface, error },
        })
    }
}
