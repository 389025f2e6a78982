//! What the operator asks `pgfm init` for, checked before anything is written: every
//! refusal names the flag, what is wrong and the fix.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use pgfm_core::types::valid_name;
use pgfm_core::NodeKind;

/// A refusal of `pgfm init`'s input or output directory, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InitError(pub String);

pub(crate) fn refuse<T>(message: impl Into<String>) -> Result<T, InitError> {
    Err(InitError(message.into()))
}

/// One node: its name, what it is, the address its agent and PostgreSQL listen on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub kind: NodeKind,
    pub address: IpAddr,
    /// This node's own directories and ports, when they are not the cluster's `Layout`:
    /// for nodes that share a host (or a file system), as the lab's do. `pgfm init`'s
    /// flags never set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

impl NodeSpec {
    /// `NAME=ADDRESS`, as given to `--data` or `--witness`.
    pub fn parse(kind: NodeKind, text: &str) -> Result<NodeSpec, InitError> {
        let flag = flag(kind);
        let Some((name, address)) = text.split_once('=') else {
            return refuse(format!(
                "{flag} {text:?}: write NAME=ADDRESS, for example {flag} pg1=10.0.0.11"
            ));
        };
        let (name, address) = (name.trim(), address.trim());
        if !valid_name(name) {
            return refuse(format!(
                "{flag} {text:?}: {name:?} is not a valid node name (use 1-63 of a-z, 0-9, '-' \
                 and '_')"
            ));
        }
        if RESERVED.contains(&name) {
            return refuse(format!(
                "{flag} {text:?}: {name:?} is the name of pgfm init's own directory in --out \
                 (it holds the CA's key or the cluster's secrets): choose another name"
            ));
        }
        let Ok(address) = address.parse::<IpAddr>() else {
            return refuse(format!(
                "{flag} {text:?}: {address:?} is not an IP address (write the address the \
                 other nodes reach {name} at, such as 10.0.0.11; host names are not accepted, \
                 so that a DNS failure cannot split the cluster)"
            ));
        };
        if address.is_unspecified()
            || address.is_multicast()
            || is_broadcast(address)
            || is_link_local(address)
        {
            return refuse(format!(
                "{flag} {text:?}: {address} cannot be a host's address (give the address \
                 {name}'s agent listens on and the others reach it at)"
            ));
        }
        Ok(NodeSpec {
            name: name.to_string(),
            kind,
            address,
            layout: None,
        })
    }
}

/// Names of the output directory's own subdirectories, which no node may have.
const RESERVED: [&str; 3] = ["ca", "cluster", "clients"];

fn flag(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Data => "--data",
        NodeKind::Witness => "--witness",
    }
}

/// 169.254/16 and fe80::/10: an agent cannot listen there without naming an interface.
fn is_link_local(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_broadcast(address: IpAddr) -> bool {
    matches!(address, IpAddr::V4(v4) if v4.is_broadcast())
}

/// The virtual IP that follows the primary: an IPv4 address with its prefix length, on
/// an interface every data node has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSpec {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub interface: String,
}

impl VipSpec {
    /// `--vip ADDRESS/PREFIX --interface NAME`; both or neither.
    pub fn parse(vip: Option<&str>, interface: Option<&str>) -> Result<Option<VipSpec>, InitError> {
        let (vip, interface) = match (vip, interface) {
            (None, None) => return Ok(None),
            (Some(vip), Some(interface)) => (vip, interface),
            (Some(vip), None) => {
                return refuse(format!(
                    "--vip {vip} needs --interface: the network interface the primary adds \
                     it to, the same name on every data node (such as eth0)"
                ))
            }
            (None, Some(interface)) => {
                return refuse(format!(
                    "--interface {interface} is only for the virtual IP: add --vip \
                     ADDRESS/PREFIX (such as 10.0.0.100/24), or leave --interface out"
                ))
            }
        };
        let fix = "write it as ADDRESS/PREFIX with an IPv4 address, such as 10.0.0.100/24";
        let Some((address, prefix)) = vip.split_once('/') else {
            return refuse(format!("--vip {vip} has no prefix length: {fix}"));
        };
        let (Ok(address), Ok(prefix)) = (address.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
            return refuse(format!(
                "--vip {vip} is not an IPv4 address with a prefix: {fix}"
            ));
        };
        if !(1..=32).contains(&prefix) {
            return refuse(format!(
                "--vip {vip}: the prefix length must be 1 to 32 (that of the nodes' subnet, \
                 such as 24)"
            ));
        }
        if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
            return refuse(format!("--vip {vip} cannot be a host's address: {fix}"));
        }
        let valid_interface =
            !interface.is_empty() && interface.len() <= 15 && !interface.contains(['/', ' ', ':']);
        if !valid_interface {
            return refuse(format!(
                "--interface {interface:?} is not a network interface name (1-15 characters, \
                 no '/', ':' or spaces, such as eth0)"
            ));
        }
        Ok(Some(VipSpec {
            address,
            prefix,
            interface: interface.to_string(),
        }))
    }

    /// Whether `address` lies in the VIP's subnet.
    pub fn contains(&self, address: IpAddr) -> bool {
        let IpAddr::V4(v4) = address else {
            return false;
        };
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(v4) & mask == u32::from(self.address) & mask
    }
}

impl std::fmt::Display for VipSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Where pgfm's files go on every host, and the ports: the same on each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The directory a node's files are copied into (`/etc/pgfm`).
    pub etc_dir: PathBuf,
    /// The agent's Raft log and state (`/var/lib/pgfm`).
    pub state_dir: PathBuf,
    /// PostgreSQL's data directory on data nodes.
    pub data_dir: PathBuf,
    pub agent_port: u16,
    pub pg_port: u16,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            etc_dir: PathBuf::from("/etc/pgfm"),
            state_dir: PathBuf::from("/var/lib/pgfm"),
            data_dir: PathBuf::from("/var/lib/postgresql/15/main"),
            agent_port: 7400,
            pg_port: 5432,
        }
    }
}

impl Layout {
    pub fn check(&self) -> Result<(), InitError> {
        for (flag, path) in [
            ("--etc-dir", &self.etc_dir),
            ("--state-dir", &self.state_dir),
            ("--data-dir", &self.data_dir),
        ] {
            if !path.is_absolute() {
                return refuse(format!(
                    "{flag} {}: write the path on the nodes from / (such as {})",
                    path.display(),
                    Layout::default_of(flag)
                ));
            }
        }
        for (flag, port) in [
            ("--agent-port", self.agent_port),
            ("--pg-port", self.pg_port),
        ] {
            if port == 0 {
                return refuse(format!("{flag} 0: give the port to listen on (1-65535)"));
            }
        }
        if self.agent_port == self.pg_port {
            return refuse(format!(
                "--agent-port and --pg-port are both {}: the agent and PostgreSQL of a node \
                 need a port each",
                self.pg_port
            ));
        }
        Ok(())
    }

    fn default_of(flag: &str) -> String {
        let d = Layout::default();
        match flag {
            "--etc-dir" => d.etc_dir,
            "--state-dir" => d.state_dir,
            _ => d.data_dir,
        }
        .display()
        .to_string()
    }
}

/// The whole cluster `pgfm init` writes for: kept in the output directory as
/// `cluster/cluster.json` so that `pgfm init --add` extends the same cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub cluster: String,
    /// Data nodes first, then witnesses, each in the order given.
    pub nodes: Vec<NodeSpec>,
    pub vip: Option<VipSpec>,
    pub synchronous: bool,
    pub layout: Layout,
}

impl ClusterSpec {
    /// Check the cluster as a whole: names and addresses unique, enough voters and data
    /// nodes, the VIP in the data nodes' subnet.
    pub fn check(&self) -> Result<(), InitError> {
        if !valid_name(&self.cluster) {
            return refuse(format!(
                "--cluster {:?} is not a valid name (use 1-63 of a-z, 0-9, '-' and '_', such \
                 as main)",
                self.cluster
            ));
        }
        self.layout.check()?;
        let mut names = BTreeMap::new();
        // Every port a node's agent or PostgreSQL listens on, at its address.
        let mut listeners = BTreeMap::new();
        for node in &self.nodes {
            if names.insert(node.name.as_str(), node).is_some() {
                return refuse(format!(
                    "{} is named twice: give every node its own name",
                    node.name
                ));
            }
            let layout = self.layout_of(node);
            if node.layout.is_some() {
                layout
                    .check()
                    .map_err(|e| InitError(format!("{}'s own layout: {e}", node.name)))?;
            }
            let mut ports = vec![layout.agent_port];
            if node.kind == NodeKind::Data {
                ports.push(layout.pg_port);
            }
            for port in ports {
                let Some(other) = listeners.insert((node.address, port), node) else {
                    continue;
                };
                if other.layout.is_none() && node.layout.is_none() {
                    return refuse(format!(
                        "{} and {} both have the address {}: give every node its own address \
                         (each runs an agent on port {})",
                        other.name, node.name, node.address, self.layout.agent_port
                    ));
                }
                return refuse(format!(
                    "{} and {} both listen on {}: give every node its own address, or its \
                     own ports",
                    other.name,
                    node.name,
                    std::net::SocketAddr::new(node.address, port)
                ));
            }
        }
        self.check_shared_hosts()?;
        let data = self.data_nodes().count();
        if data < 2 {
            return refuse(format!(
                "{data} data node(s): a cluster needs at least two (--data NAME=ADDRESS for \
                 each), so that a standby can take over"
            ));
        }
        if self.nodes.len() < 3 {
            return refuse(format!(
                "{} node(s) in all: a cluster needs at least three voters so that a majority \
                 survives one loss (add --witness NAME=ADDRESS, a small host without a \
                 database)",
                self.nodes.len()
            ));
        }
        if let Some(vip) = &self.vip {
            for node in self.data_nodes() {
                if !vip.contains(node.address) {
                    return refuse(format!(
                        "--vip {vip} is outside {}'s subnet ({}): the virtual IP must be in \
                         the subnet every data node is on, so that whichever is primary can \
                         answer for it (choose a free address there, or fix the prefix)",
                        node.name, node.address
                    ));
                }
            }
            if let Some(node) = self
                .nodes
                .iter()
                .find(|n| n.address == IpAddr::V4(vip.address))
            {
                return refuse(format!(
                    "--vip {vip} is {}'s own address: choose a free address in the subnet",
                    node.name
                ));
            }
        }
        Ok(())
    }

    /// Nodes at one address are on one host: each needs directories of its own.
    fn check_shared_hosts(&self) -> Result<(), InitError> {
        for (i, a) in self.nodes.iter().enumerate() {
            for b in self.nodes[i + 1..]
                .iter()
                .filter(|b| b.address == a.address)
            {
                let (la, lb) = (self.layout_of(a), self.layout_of(b));
                let both_data = a.kind == NodeKind::Data && b.kind == NodeKind::Data;
                let shared = [
                    ("etc_dir", &la.etc_dir, &lb.etc_dir, true),
                    ("state_dir", &la.state_dir, &lb.state_dir, true),
                    ("data_dir", &la.data_dir, &lb.data_dir, both_data),
                ]
                .into_iter()
                .find(|(_, x, y, counts)| *counts && x == y);
                if let Some((what, path, _, _)) = shared {
                    return refuse(format!(
                        "{} and {} are both at {} with the {what} {}: nodes on one host need \
                         directories of their own",
                        a.name,
                        b.name,
                        a.address,
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where `node`'s files go and its ports: its own layout, or the cluster's.
    pub fn layout_of<'a>(&'a self, node: &'a NodeSpec) -> &'a Layout {
        node.layout.as_ref().unwrap_or(&self.layout)
    }

    pub fn data_nodes(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.iter().filter(|n| n.kind == NodeKind::Data)
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: &[(&str, NodeKind, &str)], vip: Option<(&str, &str)>) -> ClusterSpec {
        ClusterSpec {
            cluster: "main".into(),
            nodes: nodes
                .iter()
                .map(|(name, kind, address)| NodeSpec {
                    name: name.to_string(),
                    kind: *kind,
                    address: address.parse().unwrap(),
                    layout: None,
                })
                .collect(),
            vip: vip.map(|(v, i)| VipSpec::parse(Some(v), Some(i)).unwrap().unwrap()),
            synchronous: false,
            layout: Layout::default(),
        }
    }

    use NodeKind::{Data, Witness};

    #[test]
    fn node_flags_are_parsed_or_refused_with_the_fix() {
        let ok = NodeSpec::parse(Data, "pg1=10.0.0.11").unwrap();
        assert_eq!(ok.address, "10.0.0.11".parse::<IpAddr>().unwrap());
        let cases = [
            ("pg1", "--data \"pg1\": write NAME=ADDRESS, for example --data pg1=10.0.0.11"),
            ("Pg1=10.0.0.1", "--data \"Pg1=10.0.0.1\": \"Pg1\" is not a valid node name (use 1-63 of a-z, 0-9, '-' and '_')"),
            ("pg1=db1.example", "--data \"pg1=db1.example\": \"db1.example\" is not an IP address (write the address the other nodes reach pg1 at, such as 10.0.0.11; host names are not accepted, so that a DNS failure cannot split the cluster)"),
            ("pg1=10.0.0.300", "--data \"pg1=10.0.0.300\": \"10.0.0.300\" is not an IP address (write the address the other nodes reach pg1 at, such as 10.0.0.11; host names are not accepted, so that a DNS failure cannot split the cluster)"),
            ("pg1=0.0.0.0", "--data \"pg1=0.0.0.0\": 0.0.0.0 cannot be a host's address (give the address pg1's agent listens on and the others reach it at)"),
        ];
        for (text, message) in cases {
            assert_eq!(
                NodeSpec::parse(Data, text).unwrap_err().0,
                message,
                "{text}"
            );
        }
    }

    #[test]
    fn vip_flags_are_parsed_or_refused_with_the_fix() {
        assert_eq!(VipSpec::parse(None, None).unwrap(), None);
        let vip = VipSpec::parse(Some("10.0.0.100/24"), Some("eth0"))
            .unwrap()
            .unwrap();
        assert!(vip.contains("10.0.0.7".parse().unwrap()));
        assert!(!vip.contains("10.0.1.7".parse().unwrap()));
        assert!(!vip.contains("::1".parse().unwrap()));
        let cases = [
            (Some("10.0.0.100/24"), None, "--vip 10.0.0.100/24 needs --interface: the network interface the primary adds it to, the same name on every data node (such as eth0)"),
            (None, Some("eth0"), "--interface eth0 is only for the virtual IP: add --vip ADDRESS/PREFIX (such as 10.0.0.100/24), or leave --interface out"),
            (Some("10.0.0.100"), Some("eth0"), "--vip 10.0.0.100 has no prefix length: write it as ADDRESS/PREFIX with an IPv4 address, such as 10.0.0.100/24"),
            (Some("fe80::1/64"), Some("eth0"), "--vip fe80::1/64 is not an IPv4 address with a prefix: write it as ADDRESS/PREFIX with an IPv4 address, such as 10.0.0.100/24"),
            (Some("10.0.0.100/33"), Some("eth0"), "--vip 10.0.0.100/33: the prefix length must be 1 to 32 (that of the nodes' subnet, such as 24)"),
            (Some("10.0.0.100/24"), Some("eth 0"), "--interface \"eth 0\" is not a network interface name (1-15 characters, no '/', ':' or spaces, such as eth0)"),
        ];
        for (vip, interface, message) in cases {
            assert_eq!(VipSpec::parse(vip, interface).unwrap_err().0, message);
        }
    }

    #[test]
    fn a_cluster_is_checked_as_a_whole() {
        let good = [
            ("pg1", Data, "10.0.0.11"),
            ("pg2", Data, "10.0.0.12"),
            ("w1", Witness, "10.0.0.13"),
        ];
        assert_eq!(
            cluster(&good, Some(("10.0.0.100/24", "eth0"))).check(),
            Ok(())
        );
        let cases = [
            (
                cluster(&[good[0], ("pg1", Data, "10.0.0.12"), good[2]], None),
                "pg1 is named twice: give every node its own name",
            ),
            (
                cluster(&[good[0], ("pg2", Data, "10.0.0.11"), good[2]], None),
                "pg1 and pg2 both have the address 10.0.0.11: give every node its own address (each runs an agent on port 7400)",
            ),
            (
                cluster(&[good[0], ("w2", Witness, "10.0.0.12"), good[2]], None),
                "1 data node(s): a cluster needs at least two (--data NAME=ADDRESS for each), so that a standby can take over",
            ),
            (
                cluster(&good[..2], None),
                "2 node(s) in all: a cluster needs at least three voters so that a majority survives one loss (add --witness NAME=ADDRESS, a small host without a database)",
            ),
            (
                cluster(&good, Some(("10.0.1.100/24", "eth0"))),
                "--vip 10.0.1.100/24 is outside pg1's subnet (10.0.0.11): the virtual IP must be in the subnet every data node is on, so that whichever is primary can answer for it (choose a free address there, or fix the prefix)",
            ),
            (
                cluster(&good, Some(("10.0.0.12/24", "eth0"))),
                "--vip 10.0.0.12/24 is pg2's own address: choose a free address in the subnet",
            ),
        ];
        for (spec, message) in cases {
            assert_eq!(spec.check().unwrap_err().0, message);
        }
        let mut bad_name = cluster(&good, None);
        bad_name.cluster = "Main DB".into();
        assert_eq!(
            bad_name.check().unwrap_err().0,
            "--cluster \"Main DB\" is not a valid name (use 1-63 of a-z, 0-9, '-' and '_', such as main)"
        );
        let mut relative = cluster(&good, None);
        relative.layout.data_dir = "data".into();
        assert_eq!(
            relative.check().unwrap_err().0,
            "--data-dir data: write the path on the nodes from / (such as /var/lib/postgresql/15/main)"
        );
    }

    /// Nodes on one host (the lab's, all on 127.0.0.1) are accepted with layouts of their
    /// own, and refused when those share a port or a directory.
    #[test]
    fn nodes_on_one_host_need_their_own_ports_and_directories() {
        let own = |name: &str, agent_port: u16, pg_port: u16| Layout {
            etc_dir: format!("/lab/{name}").into(),
            state_dir: format!("/lab/{name}/state").into(),
            data_dir: format!("/lab/{name}/data").into(),
            agent_port,
            pg_port,
        };
        let one_host = |layouts: [Layout; 3]| {
            let mut spec = cluster(
                &[
                    ("pg1", Data, "127.0.0.1"),
                    ("pg2", Data, "127.0.0.1"),
                    ("w1", Witness, "127.0.0.1"),
                ],
                None,
            );
            for (node, layout) in spec.nodes.iter_mut().zip(layouts) {
                node.layout = Some(layout);
            }
            spec
        };
        let good = one_host([
            own("pg1", 7401, 5401),
            own("pg2", 7402, 5402),
            own("w1", 7403, 5432),
        ]);
        assert_eq!(good.check(), Ok(()));
        assert_eq!(good.layout_of(&good.nodes[1]).agent_port, 7402);
        let cases = [
            (
                one_host([own("pg1", 7401, 5401), own("pg2", 7401, 5402), own("w1", 7403, 5432)]),
                "pg1 and pg2 both listen on 127.0.0.1:7401: give every node its own address, or its own ports",
            ),
            (
                one_host([own("pg1", 7401, 5401), own("pg2", 5401, 5402), own("w1", 7403, 5432)]),
                "pg1 and pg2 both listen on 127.0.0.1:5401: give every node its own address, or its own ports",
            ),
            (
                one_host([own("pg1", 7401, 5401), own("pg1", 7402, 5402), own("w1", 7403, 5432)]),
                "pg1 and pg2 are both at 127.0.0.1 with the etc_dir /lab/pg1: nodes on one host need directories of their own",
            ),
            (
                one_host([own("pg1", 7401, 5401), own("pg2", 7402, 0), own("w1", 7403, 5432)]),
                "pg2's own layout: --pg-port 0: give the port to listen on (1-65535)",
            ),
        ];
        for (spec, message) in cases {
            assert_eq!(spec.check().unwrap_err().0, message);
        }
        // The witness runs no PostgreSQL: its pg_port is no one's.
        let witness_port = one_host([
            own("pg1", 7401, 5401),
            own("pg2", 7402, 5402),
            own("w1", 7403, 5401),
        ]);
        assert_eq!(witness_port.check(), Ok(()));
    }
}
