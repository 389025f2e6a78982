//! `pgfm lab up --netns`: every node its own host. Each node, and a client, gets a network
//! namespace with one interface (`eth0`) on a bridge that lives in a namespace of its own
//! (the hub). Every address exists only inside the lab's namespaces, and no namespace has a
//! route out, so nothing the lab does can reach another network. Deleting the namespaces
//! removes every link and address with them.
//!
//! Faults: a host's death takes its link down (its kernel stops answering too, the VIP
//! with it); a partition points the peer's address at a hardware address nobody has
//! (`ip neigh ... nud permanent`), so frames are dropped silently, as on a cut cable, and
//! only between the nodes named (the client still reaches everyone). A one-way cut sets
//! this on the far side only.

use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The lab's subnet; the same in every lab (each lab's namespaces are closed off).
const SUBNET_PREFIX: &str = "10.254.0";
pub const SUBNET: &str = "10.254.0.0/24";
pub const VIP: &str = "10.254.0.100/24";
pub const CLIENT_ADDRESS: &str = "10.254.0.2";
/// A hardware address no interface in the lab has: frames sent to it go nowhere.
const NOWHERE: &str = "02:00:00:de:ad:01";
/// Each host's one network interface (the VIP's too).
pub const INTERFACE: &str = "eth0";
pub const AGENT_PORT: u16 = 7400;
pub const PG_PORT: u16 = 5432;

/// What `lab.json` records of a namespaced lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetnsLab {
    /// Every namespace of this lab is named `{prefix}-...`.
    pub prefix: String,
    pub hub: String,
    pub client: String,
    pub vip: String,
}

/// The namespace prefix for a lab directory: the same for the same directory, so that
/// `lab down` finds what a crashed `lab up` left.
pub fn prefix_for(dir: &std::path::Path) -> String {
    let mut hash: u32 = 0x811c9dc5;
    for byte in dir.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x01000193);
    }
    format!("pgfm-{:06x}", hash & 0xff_ffff)
}

pub fn namespace(prefix: &str, node: &str) -> String {
    format!("{prefix}-{node}")
}

/// The address of the `i`-th node (0-based).
pub fn node_address(i: usize) -> String {
    format!("{SUBNET_PREFIX}.{}", 11 + i)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Refuse, saying why, when namespaces cannot be made here.
pub fn check_can_build() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "--netns needs root (it creates network namespaces, a bridge and veth links); \
             run it as root, or use pgfm lab up without --netns"
        );
    }
    if Command::new("ip").arg("-V").output().is_err() {
        bail!("--netns needs the ip command (apt-get install iproute2)");
    }
    Ok(())
}

/// Build the topology: the hub with its bridge, and one namespace per name in `hosts`
/// (`(name, address)`), each with `eth0` on the bridge.
pub fn build(lab: &NetnsLab, hosts: &[(String, String)]) -> anyhow::Result<()> {
    ip(&["netns", "add", &lab.hub])?;
    ip(&["-n", &lab.hub, "link", "set", "lo", "up"])?;
    ip(&["-n", &lab.hub, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &lab.hub, "link", "set", "br0", "up"])?;
    for (name, address) in hosts {
        let ns = namespace(&lab.prefix, name);
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &lab.hub, "link", "add", name, "type", "veth", "peer", "name", INTERFACE,
            "netns", &ns,
        ])?;
        ip(&["-n", &lab.hub, "link", "set", name, "master", "br0"])?;
        ip(&["-n", &lab.hub, "link", "set", name, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            INTERFACE,
        ])?;
        ip(&["-n", &ns, "link", "set", INTERFACE, "up"])?;
    }
    Ok(())
}

/// Every namespace whose name starts with `prefix-`.
pub fn existing(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let start = format!("{prefix}-");
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&start))
        .collect();
    names.sort();
    names
}

/// Delete every namespace of the lab (and with them its links and addresses). Returns the
/// names deleted.
pub fn remove(prefix: &str) -> anyhow::Result<Vec<String>> {
    let names = existing(prefix);
    for name in &names {
        ip(&["netns", "del", name])?;
    }
    Ok(names)
}

/// Take a host's link down (its death) or up again (its restart).
pub fn set_link(lab: &NetnsLab, node: &str, up: bool) -> anyhow::Result<()> {
    ip(&[
        "-n",
        &lab.hub,
        "link",
        "set",
        node,
        if up { "up" } else { "down" },
    ])
}

/// Whether `node`'s `eth0` has the VIP configured (whatever the state of its link).
fn vip_configured(lab: &NetnsLab, node: &str) -> anyhow::Result<bool> {
    carries(lab, node, &lab.vip)
}

/// Whether `node`'s interface has `address` (`ADDRESS/PREFIX`), asked of its kernel.
pub fn carries(lab: &NetnsLab, node: &str, address: &str) -> anyhow::Result<bool> {
    let ns = namespace(&lab.prefix, node);
    let output = Command::new("ip")
        .args(["-n", &ns, "-o", "-4", "addr", "show", "dev", INTERFACE])
        .output()
        .context("running ip")?;
    if !output.status.success() {
        bail!(
            "ip -n {ns} addr show: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let needle = format!(" {address} ");
    Ok(String::from_utf8_lossy(&output.stdout).contains(&needle))
}

/// A restarted host has lost the addresses it did not configure at boot: the VIP.
pub fn drop_vip(lab: &NetnsLab, node: &str) -> anyhow::Result<()> {
    if !vip_configured(lab, node)? {
        return Ok(());
    }
    let ns = namespace(&lab.prefix, node);
    let output = Command::new("ip")
        .args(["-n", &ns, "addr", "del", &lab.vip, "dev", INTERFACE])
        .output()
        .context("running ip")?;
    let said = String::from_utf8_lossy(&output.stderr);
    // Gone meanwhile (the agent removed it): iproute2 says "Cannot assign requested
    // address" in older versions, "Address not found" in newer ones.
    let absent = said.contains("Cannot assign") || said.contains("Address not found");
    if !output.status.success() && !absent {
        bail!("removing {} from {node}: {}", lab.vip, said.trim());
    }
    Ok(())
}

/// Cut traffic from `node` to the address `to` (one direction, silently).
pub fn cut(lab: &NetnsLab, node: &str, to: &str) -> anyhow::Result<()> {
    let ns = namespace(&lab.prefix, node);
    ip(&[
        "-n",
        &ns,
        "neigh",
        "replace",
        to,
        "lladdr",
        NOWHERE,
        "dev",
        INTERFACE,
        "nud",
        "permanent",
    ])
}

/// Undo every cut made on `node`.
pub fn heal(lab: &NetnsLab, node: &str) -> anyhow::Result<()> {
    let ns = namespace(&lab.prefix, node);
    ip(&[
        "-n",
        &ns,
        "neigh",
        "flush",
        "dev",
        INTERFACE,
        "nud",
        "permanent",
    ])
}

/// Whether `node`'s link to the bridge is up (down: the host is dead).
pub fn link_up(lab: &NetnsLab, node: &str) -> anyhow::Result<bool> {
    let output = Command::new("ip")
        .args(["-n", &lab.hub, "-o", "link", "show", node])
        .output()
        .context("running ip")?;
    if !output.status.success() {
        bail!(
            "ip -n {} link show {node}: {}",
            lab.hub,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let flags = text
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags)
        .unwrap_or_default();
    Ok(flags.split(',').any(|f| f == "UP"))
}

/// Whether `node` carries the VIP where others can reach it: asked of its namespace's
/// kernel (not of its agent); a dead host (link down) carries nothing.
///
/// The link is read first. `lab start` drops a dead host's leftover VIP before it takes the
/// link up, so a link read as up means the address read after it is the live one; read the
/// other way round, a host restarted between the two reads showed its dead self's VIP next
/// to the new primary's (a two-holder sample that never happened).
pub fn has_vip(lab: &NetnsLab, node: &str) -> anyhow::Result<bool> {
    Ok(link_up(lab, node)? && vip_configured(lab, node)?)
}
