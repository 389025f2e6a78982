//! A node's `pgfm.toml`: commented, setting only what `pgfm init` was told and what has no
//! default; every other key keeps the value `pgfm check-config` and the example config
//! document.

use std::fmt::Write;

use pgfm_core::NodeKind;

use crate::files;
use crate::spec::{ClusterSpec, NodeSpec};

/// The config file of `node`, whose peers are every node of `spec`: its own paths and
/// ports are its layout's (`ClusterSpec::layout_of`), each peer's agent port its own.
pub fn node_config(spec: &ClusterSpec, node: &NodeSpec) -> String {
    let layout = spec.layout_of(node);
    let etc = |file: &str| layout.etc_dir.join(file).display().to_string();
    let kind = node.kind.as_str();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# pgfm agent configuration of {name}, a {kind} node of cluster {cluster:?}, written by\n\
         # pgfm init. Only what has no default, or differs from it, is set here; every key is\n\
         # explained in the example config (pgfm check-config -c {config} checks this file).\n\
         # Install this directory's files into {etc_dir}/ on {name} ({address}).\n\
         \n\
         cluster = {cluster:?}\n\
         # The cluster's shared secret (mode 600): every request between agents and from the\n\
         # CLI carries it.\n\
         token_file = {token:?}\n\
         \n\
         [node]\n\
         name = {name:?}\n\
         kind = {kind:?}\n\
         listen = \"{listen}\"\n\
         state_dir = {state:?}",
        name = node.name,
        cluster = spec.cluster,
        config = etc(files::CONFIG),
        etc_dir = layout.etc_dir.display(),
        address = node.address,
        token = etc(files::TOKEN),
        listen = socket(node.address, layout.agent_port),
        state = layout.state_dir.display().to_string(),
    );
    let _ = writeln!(
        text,
        "\n# Every agent of the cluster, this one too. The cluster forms from this list the first\n\
         # time the agents start; later members are added with pgfm allow-node."
    );
    for peer in &spec.nodes {
        let _ = writeln!(
            text,
            "[[peers]]\nname = {:?}\naddress = \"{}\"\n",
            peer.name,
            socket(peer.address, spec.layout_of(peer).agent_port)
        );
    }
    if node.kind == NodeKind::Data {
        let _ = writeln!(
            text,
            "# The PostgreSQL this agent runs (as the OS user postgres): do not let the OS start it.\n\
             [postgres]\n\
             data_dir = {data:?}\n\
             port = {port}\n\
             # The superuser's and the replication user's passwords (mode 600, owned by postgres).\n\
             passfile = {passfile:?}",
            data = layout.data_dir.display().to_string(),
            port = layout.pg_port,
            passfile = etc(files::PASSFILE),
        );
        if spec.vip.is_some() {
            // PostgreSQL binds its addresses when it starts: one it was told to listen on
            // that the host lacks (the VIP, on a standby) fails, and one added later (the
            // VIP, at a promotion) is not listened on. Only a wildcard serves the VIP.
            let _ = writeln!(
                text,
                "# Every address, the virtual IP included once this node is primary \
                 (pg_hba.conf\n# says who may connect).\n\
                 listen_addresses = \"*\""
            );
        }
        let _ = writeln!(
            text,
            "\n# The host watchdog (/dev/watchdog): while this node is primary, a host frozen or\n\
             # cut off past its lease is reset before another node is promoted. \"automatic\" uses\n\
             # it where the kernel has one (modprobe softdog otherwise), \"required\" refuses to\n\
             # run without.\n\
             [watchdog]\n\
             mode = \"automatic\""
        );
        if let Some(vip) = &spec.vip {
            let _ = writeln!(
                text,
                "\n# The address clients use: it follows the primary. The agent needs \
                 CAP_NET_ADMIN and\n# CAP_NET_RAW.\n\
                 [vip]\n\
                 address = \"{vip}\"\n\
                 interface = {:?}",
                vip.interface
            );
        }
    } else if let Some(vip) = &spec.vip {
        // The address is the cluster's (committed by the agent that forms the cluster,
        // which may be this one); a witness never carries it, so it has no interface.
        let _ = writeln!(
            text,
            "\n# The address clients use (it follows the primary; a witness never carries it).\n\
             [vip]\n\
             address = \"{vip}\""
        );
    }
    // Cluster-wide, so in every node's file: the agent that forms the cluster (a witness
    // too) commits its own file's value.
    if spec.synchronous {
        let _ = writeln!(
            text,
            "\n# Every commit waits for one standby, which a failover then promotes: no \
             acknowledged\n# write is lost.\n\
             [replication]\n\
             synchronous = \"on\""
        );
    }
    text
}

fn socket(address: std::net::IpAddr, port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(address, port)
}
