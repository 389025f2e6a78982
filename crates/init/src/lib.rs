//! `pgfm init`: every file a cluster needs, for every node, from the nodes' names and
//! addresses: the config, the cluster token, the passfile with generated passwords, the
//! cluster CA's certificate and the node's own certificate and key. Nothing here runs on
//! the nodes or talks to them; the operator copies each node's directory to its host.
//!
//! The output directory:
//!
//! ```text
//! OUT/ca/ca.crt, ca.key          the cluster CA (its key never leaves OUT/ca/)
//! OUT/cluster/cluster.json       what init was told, for init --add
//! OUT/cluster/token, pgpass      the cluster's secrets, for init --add
//! OUT/<node>/pgfm.toml, token, ca.crt, node.crt, node.key [, pgpass]
//! OUT/clients/<name>/ca.crt, client.crt, client.key, client.pem   (init --add --client)
//! ```
//!
//! Every file is mode 600 and every directory 700.

pub mod pki;
pub mod render;
pub mod spec;

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use pki::NODE_DAYS;
pub use spec::{ClusterSpec, InitError, Layout, NodeSpec, VipSpec};

use files::CA_KEY;
use pgfm_core::NodeKind;
use spec::refuse;

/// The names of the files in a node's directory (and in `Layout::etc_dir` once installed).
pub mod files {
    pub const CONFIG: &str = "pgfm.toml";
    pub const TOKEN: &str = "token";
    pub const PASSFILE: &str = "pgpass";
    pub const CA_CERT: &str = "ca.crt";
    pub const NODE_CERT: &str = "node.crt";
    pub const NODE_KEY: &str = "node.key";
    /// A client's certificate and key (`init --add --client`).
    pub const CLIENT_CERT: &str = "client.crt";
    pub const CLIENT_KEY: &str = "client.key";
    /// The CA's key, beside its certificate in `Written::ca_dir` (never on a node).
    pub const CA_KEY: &str = "ca.key";
}

const CA_DIR: &str = "ca";
const CLUSTER_DIR: &str = "cluster";
const CLIENTS_DIR: &str = "clients";
const SPEC: &str = "cluster.json";

/// The superuser and replication user every passfile names (the agent's defaults).
pub const SUPERUSER: &str = "postgres";
pub const REPLICATION_USER: &str = "replicator";

/// What `init` wrote: each node's directory, in the order of the cluster's nodes.
#[derive(Debug)]
pub struct Written {
    pub spec: ClusterSpec,
    pub nodes: Vec<(NodeSpec, PathBuf)>,
    pub ca_dir: PathBuf,
}

impl Written {
    /// What to copy where, for the operator.
    pub fn instructions(&self) -> String {
        let mut text = String::new();
        for (node, dir) in &self.nodes {
            let etc = self.spec.layout_of(node).etc_dir.display();
            text.push_str(&format!(
                "  {name} ({address}): copy {dir}/* into {etc}/ (the directory mode 711, owned by root){owner}\n",
                name = node.name,
                address = node.address,
                dir = dir.display(),
                owner = if node.kind == NodeKind::Data {
                    format!("; chown postgres {etc}/{}", files::PASSFILE)
                } else {
                    String::new()
                },
            ));
        }
        text.push_str(&format!(
            "  {ca}/ca.key signs certificates for nodes added later (pgfm init --add): keep it \
             off the nodes.\n",
            ca = self.ca_dir.display()
        ));
        text
    }
}

/// Write every node's files for `spec` into `out`. Refused, before anything is written,
/// when the input is bad or `out` holds files and `force` is not given.
pub fn create(spec: ClusterSpec, out: &Path, force: bool) -> Result<Written, InitError> {
    spec.check()?;
    check_out(out, force)?;
    make_dir(out)?;
    if force {
        // A node of an earlier init that this one does not name must not linger as if
        // it belonged to the new cluster.
        if let Ok(old) = read_spec(out) {
            for node in old
                .nodes
                .iter()
                .filter(|n| spec.node(&n.name).is_none() && pgfm_core::types::valid_name(&n.name))
            {
                remove_dir(&out.join(&node.name))?;
            }
        }
        // The earlier CA's key is moved aside, never destroyed: nodes may still use it.
        if out.join(CA_DIR).join(CA_KEY).exists() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let aside = out.join(format!("{CA_DIR}.replaced-{stamp}"));
            std::fs::rename(out.join(CA_DIR), &aside).map_err(|e| {
                InitError(format!("moving the earlier CA to {}: {e}", aside.display()))
            })?;
        }
    }
    let authority = pki::Authority::create(&spec.cluster)?;
    let secrets = Secrets::generate()?;
    let ca_dir = out.join(CA_DIR);
    make_dir(&ca_dir)?;
    write_file(&ca_dir.join(files::CA_CERT), &authority.pem.cert)?;
    write_file(&ca_dir.join(CA_KEY), &authority.pem.key)?;
    secrets.save(&out.join(CLUSTER_DIR))?;
    write_spec(out, &spec)?;
    let names: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
    write_nodes(spec, out, &authority, &secrets, &names, ca_dir)
}

/// Add `nodes` to the cluster `init` wrote into `out`: their directories, with
/// certificates from the same CA and the same secrets. With `force`, a node already there
/// gets new files (a new certificate: how a node's certificate is renewed).
pub fn add(out: &Path, nodes: Vec<NodeSpec>, force: bool) -> Result<Written, InitError> {
    let mut spec = read_spec(out)?;
    if nodes.is_empty() {
        return refuse(
            "--add needs the nodes to add: --data NAME=ADDRESS or --witness NAME=ADDRESS",
        );
    }
    for node in &nodes {
        match spec.node(&node.name) {
            Some(old) if !force => {
                return refuse(format!(
                    "{} is already a node of cluster {} (at {}): choose another name, or pass \
                     --force to write its files again with a new certificate",
                    node.name, spec.cluster, old.address
                ))
            }
            Some(old) if old.kind != node.kind || old.address != node.address => {
                return refuse(format!(
                    "{} is a {} node at {} in {}: give the same kind and address to renew \
                     its files, or another name for a new node",
                    node.name,
                    old.kind.as_str(),
                    old.address,
                    out.join(CLUSTER_DIR).join(SPEC).display()
                ))
            }
            Some(_) => {}
            None => spec.nodes.push(node.clone()),
        }
    }
    spec.nodes.sort_by_key(|n| n.kind == NodeKind::Witness);
    spec.check()?;
    let ca_dir = out.join(CA_DIR);
    let authority = pki::Authority::load(pki::Pem {
        cert: read_file(&ca_dir.join(files::CA_CERT))?,
        key: read_file(&ca_dir.join(CA_KEY))?,
    })?;
    let secrets = Secrets::load(&out.join(CLUSTER_DIR))?;
    write_spec(out, &spec)?;
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    write_nodes(spec, out, &authority, &secrets, &names, ca_dir)
}

/// Certificates for clients that are not nodes (HAProxy's health checks, Prometheus, the
/// CLI on an operator's machine), signed by the CA `init` wrote into `out`: one directory
/// each, `OUT/clients/<name>/`, with the CA's certificate, the client's certificate and
/// key, and both in one file (`client.pem`, as HAProxy's `crt` wants). With `force`, an
/// existing client's files are written again (a renewal).
pub fn add_clients(out: &Path, names: &[String], force: bool) -> Result<Vec<PathBuf>, InitError> {
    let spec = read_spec(out)?;
    for name in names {
        if !pgfm_core::types::valid_name(name) {
            return refuse(format!(
                "--client {name:?} is not a valid name (use 1-63 of a-z, 0-9, '-' and '_', \
                 such as haproxy)"
            ));
        }
        if spec.node(name).is_some() {
            return refuse(format!(
                "--client {name}: {name} is a node of cluster {}; a client needs a name of \
                 its own",
                spec.cluster
            ));
        }
        if !force && out.join(CLIENTS_DIR).join(name).exists() {
            return refuse(format!(
                "--client {name} has its files already in {}: pass --force to write them \
                 again with a new certificate",
                out.join(CLIENTS_DIR).join(name).display()
            ));
        }
    }
    let ca_dir = out.join(CA_DIR);
    let authority = pki::Authority::load(pki::Pem {
        cert: read_file(&ca_dir.join(files::CA_CERT))?,
        key: read_file(&ca_dir.join(CA_KEY))?,
    })?;
    let mut written = Vec::new();
    for name in names {
        let dir = out.join(CLIENTS_DIR).join(name);
        make_dir(&out.join(CLIENTS_DIR))?;
        make_dir(&dir)?;
        let pem = authority.issue_client(&spec.cluster, name)?;
        write_file(&dir.join(files::CA_CERT), &authority.pem.cert)?;
        write_file(&dir.join(files::CLIENT_CERT), &pem.cert)?;
        write_file(&dir.join(files::CLIENT_KEY), &pem.key)?;
        write_file(&dir.join("client.pem"), &format!("{}{}", pem.cert, pem.key))?;
        written.push(dir);
    }
    Ok(written)
}

/// Write the directories of the nodes named `names`.
fn write_nodes(
    spec: ClusterSpec,
    out: &Path,
    authority: &pki::Authority,
    secrets: &Secrets,
    names: &[String],
    ca_dir: PathBuf,
) -> Result<Written, InitError> {
    let mut nodes = Vec::new();
    for node in spec.nodes.iter().filter(|n| names.contains(&n.name)) {
        let dir = out.join(&node.name);
        make_dir(&dir)?;
        let mut addresses = vec![node.address];
        if let (NodeKind::Data, Some(vip)) = (node.kind, &spec.vip) {
            addresses.push(vip.address.into());
        }
        let pem = authority.issue(&spec.cluster, &node.name, &addresses)?;
        write_file(&dir.join(files::CONFIG), &render::node_config(&spec, node))?;
        write_file(&dir.join(files::TOKEN), &secrets.token)?;
        write_file(&dir.join(files::CA_CERT), &authority.pem.cert)?;
        write_file(&dir.join(files::NODE_CERT), &pem.cert)?;
        write_file(&dir.join(files::NODE_KEY), &pem.key)?;
        if node.kind == NodeKind::Data {
            write_file(&dir.join(files::PASSFILE), &secrets.passfile())?;
        }
        nodes.push((node.clone(), dir));
    }
    Ok(Written {
        spec,
        nodes,
        ca_dir,
    })
}

/// The cluster token and the two database passwords.
struct Secrets {
    token: String,
    superuser: String,
    replication: String,
}

impl Secrets {
    fn generate() -> Result<Secrets, InitError> {
        Ok(Secrets {
            token: random_secret()?,
            superuser: random_secret()?,
            replication: random_secret()?,
        })
    }

    fn passfile(&self) -> String {
        format!(
            "*:*:*:{SUPERUSER}:{}\n*:*:*:{REPLICATION_USER}:{}\n",
            self.superuser, self.replication
        )
    }

    fn save(&self, dir: &Path) -> Result<(), InitError> {
        make_dir(dir)?;
        write_file(&dir.join(files::TOKEN), &self.token)?;
        write_file(&dir.join(files::PASSFILE), &self.passfile())
    }

    fn load(dir: &Path) -> Result<Secrets, InitError> {
        let token = read_file(&dir.join(files::TOKEN))?.trim().to_string();
        let passfile_path = dir.join(files::PASSFILE);
        let passfile = read_file(&passfile_path)?;
        let password = |user: &str| {
            passfile
                .lines()
                .find_map(|line| line.strip_prefix(&format!("*:*:*:{user}:")))
                .map(str::to_string)
                .ok_or_else(|| {
                    InitError(format!(
                        "{} has no password for {user}: it is not the file pgfm init wrote",
                        passfile_path.display()
                    ))
                })
        };
        Ok(Secrets {
            superuser: password(SUPERUSER)?,
            replication: password(REPLICATION_USER)?,
            token,
        })
    }
}

/// 24 random bytes as hex: a token or password with no character libpq or TOML quotes.
pub fn random_secret() -> Result<String, InitError> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| InitError(format!("reading /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `out` may be written: new, empty, or `force`.
fn check_out(out: &Path, force: bool) -> Result<(), InitError> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return refuse(format!(
                "--out {} is a file: give a directory (it is created)",
                out.display()
            ))
        }
        Err(e) => return refuse(format!("--out {}: {e}", out.display())),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() || force {
        return Ok(());
    }
    names.sort();
    let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let hint = if out.join(CA_DIR).join(CA_KEY).exists() {
        " it holds a cluster pgfm init wrote: add nodes to it with --add, or pass --force to \
         replace it with a new cluster (new CA, token and passwords; the old CA is kept as \
         ca.replaced-TIME)"
    } else {
        " choose a new or empty directory, or pass --force to write into it anyway"
    };
    refuse(format!(
        "--out {} is not empty ({shown}{more}):{hint}",
        out.display(),
        more = if names.len() > 5 { ", ..." } else { "" },
    ))
}

fn read_spec(out: &Path) -> Result<ClusterSpec, InitError> {
    let path = out.join(CLUSTER_DIR).join(SPEC);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        InitError(format!(
            "{} cannot be read ({e}): --add extends a cluster pgfm init wrote into --out; \
             give that directory",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        InitError(format!(
            "{} is not what pgfm init writes ({e}): give the directory pgfm init wrote",
            path.display()
        ))
    })
}

fn write_spec(out: &Path, spec: &ClusterSpec) -> Result<(), InitError> {
    let dir = out.join(CLUSTER_DIR);
    make_dir(&dir)?;
    let text = serde_json::to_string_pretty(spec).expect("a spec serialises");
    write_file(&dir.join(SPEC), &(text + "\n"))
}

fn read_file(path: &Path) -> Result<String, InitError> {
    std::fs::read_to_string(path)
        .map_err(|e| InitError(format!("{} cannot be read: {e}", path.display())))
}

/// Write `contents` to `path`, readable by its owner only, from the first byte on.
fn write_file(path: &Path, contents: &str) -> Result<(), InitError> {
    use std::io::Write;
    let error = |e: std::io::Error| InitError(format!("writing {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    // A file that existed keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)
}

/// Create `path` (and its parents) mode 700; a directory that exists keeps its mode (an
/// `--out` given with `--force` may be shared).
fn make_dir(path: &Path) -> Result<(), InitError> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| InitError(format!("creating {}: {e}", path.display())))
}

fn remove_dir(path: &Path) -> Result<(), InitError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(InitError(format!("removing {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}
