//! Carrying out a run's plan against the lab: each hit's role resolved to a node from the
//! cluster's status at that moment, the fault injected through `pgfm lab`, and repaired
//! when the plan says. Everything broken is recorded with when (`Broken`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use pgfm_api::{ClusterStatus, NodeKindStatus};

use super::draw::{Back, Hit, How, Plan, Role, When};
use super::measure::Broken;
use crate::drive::LabDriver;

/// How long to wait for a promotion a plan waits for.
const PROMOTION_DEADLINE: Duration = Duration::from_secs(60);

/// What carrying out a plan did.
#[derive(Debug)]
pub struct Injected {
    /// The node each hit was resolved to, in the plan's order.
    pub nodes: Vec<String>,
    pub broken: Vec<Broken>,
    /// When the first fault was injected, and when the last repair was done.
    pub fault_at: Instant,
    pub repaired_at: Instant,
    /// What did not go as planned (no promotion came, ...).
    pub notes: Vec<String>,
}

/// One hit injected, waiting for its repair.
struct Pending {
    hit: Hit,
    node: String,
    /// Its entry in `Injected::broken`.
    broken: usize,
    at: Instant,
}

/// Inject `plan`'s hits (the cluster was `before` just now), repair each when its plan
/// says, and return what was broken when. One loop does both, so that a repair falls due
/// on time while a later hit still waits for its promotion.
pub async fn carry_out(
    driver: &LabDriver,
    plan: &Plan,
    before: &ClusterStatus,
) -> anyhow::Result<Injected> {
    let fault_at = Instant::now();
    let mut done = Injected {
        nodes: Vec::new(),
        broken: Vec::new(),
        fault_at,
        repaired_at: fault_at,
        notes: Vec::new(),
    };
    let mut pending = Vec::new();
    for hit in plan.hits.iter().filter(|h| h.when == When::Start) {
        pending.push(inject(driver, *hit, before, &mut done)?);
    }
    let mut later: Vec<Hit> = plan
        .hits
        .iter()
        .filter(|h| h.when == When::Promotion)
        .copied()
        .collect();
    let deadline = fault_at + PROMOTION_DEADLINE;
    while !pending.is_empty() || !later.is_empty() {
        let waits_for_status = !later.is_empty()
            || pending
                .iter()
                .any(|p: &Pending| p.hit.back == Back::AfterFailoverWalDamaged);
        let mut status = None;
        if waits_for_status {
            status = driver.status_within(STATUS_TIMEOUT).await.ok();
        }
        let promoted = status.as_ref().filter(|s| s.generation > before.generation);
        if let Some(status) = promoted {
            for hit in later.drain(..) {
                pending.push(inject(driver, hit, status, &mut done)?);
            }
        }
        if !later.is_empty() && Instant::now() > deadline {
            let status = driver.status_within(STATUS_TIMEOUT).await?;
            for hit in later.drain(..) {
                done.notes.push(format!(
                    "no promotion within {PROMOTION_DEADLINE:?}: {} hit without one",
                    hit.role
                ));
                pending.push(inject(driver, hit, &status, &mut done)?);
            }
        }
        let mut kept = Vec::new();
        for p in pending {
            if due(&p, status.as_ref(), before.generation, deadline) {
                repair(driver, &p, &mut done)?;
                done.broken[p.broken].to = Some(Instant::now());
            } else {
                kept.push(p);
            }
        }
        pending = kept;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.repaired_at = Instant::now();
    Ok(done)
}

/// How long the loop waits for each agent's status: a dead host delays a repair by no more.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// Whether `p`'s repair is due: its drawn time is over, or (for a former primary returning
/// with damaged WAL) another node was promoted, or the deadline passed.
fn due(p: &Pending, status: Option<&ClusterStatus>, generation: u64, deadline: Instant) -> bool {
    match p.hit.back {
        Back::ByItself => true,
        // The fault's length, drawn.
        Back::After { ms } => Instant::now() >= p.at + Duration::from_millis(ms),
        Back::AfterFailoverWalDamaged => {
            Instant::now() > deadline
                || status.is_some_and(|s| {
                    s.generation > generation && s.primary.as_deref() != Some(p.node.as_str())
                })
        }
    }
}

/// The node `role` names in `status` (standbys by name, the n-th modulo their number).
pub fn resolve(role: Role, status: &ClusterStatus, witness: &str) -> anyhow::Result<String> {
    let name = match role {
        Role::Primary => status.primary.clone(),
        Role::Coordinator => status.coordinator.clone(),
        Role::Witness => Some(witness.to_string()),
        Role::Standby(n) => {
            let mut standbys: Vec<&str> = status
                .nodes
                .iter()
                .filter(|s| s.kind == NodeKindStatus::Standby)
                .map(|s| s.name.as_str())
                .collect();
            standbys.sort_unstable();
            standbys
                .get(n as usize % standbys.len().max(1))
                .map(|s| s.to_string())
        }
    };
    name.with_context(|| format!("the cluster has no {role} to hit now"))
}

/// Inject one hit; its repair is pending.
fn inject(
    driver: &LabDriver,
    hit: Hit,
    status: &ClusterStatus,
    done: &mut Injected,
) -> anyhow::Result<Pending> {
    let lab = driver.lab()?;
    let witness = lab
        .nodes
        .iter()
        .find(|n| n.pg_port.is_none())
        .map(|n| n.name.clone())
        .context("the lab has no witness")?;
    let node = resolve(hit.role, status, &witness)?;
    let is_data = node != witness;
    match hit.how {
        How::HostDeath => driver.kill(&node, false)?,
        How::PostmasterCrash => driver.kill(&node, true)?,
        How::AgentCrash => driver.kill_agent(&node)?,
        How::Freeze => driver.freeze(&node)?,
        How::Partition { one_way } => driver.partition_way(&node, one_way)?,
        How::DiskFull => driver.fill_disk(&node)?,
    }
    let at = Instant::now();
    // A crashed postmaster is restarted by its agent: nothing stays broken for the soak to
    // repair. A full disk leaves the agent voting.
    let (voter, candidate) = match hit.how {
        How::PostmasterCrash => (false, false),
        How::DiskFull => (false, true),
        _ => (true, is_data),
    };
    done.broken.push(Broken {
        node: node.clone(),
        voter,
        candidate,
        killed: matches!(hit.how, How::HostDeath | How::PostmasterCrash),
        from: at,
        to: (hit.how == How::PostmasterCrash).then_some(at),
    });
    done.nodes.push(node.clone());
    Ok(Pending {
        hit,
        node,
        broken: done.broken.len() - 1,
        at,
    })
}

/// Repair what `p` broke (it is due).
fn repair(driver: &LabDriver, p: &Pending, done: &mut Injected) -> anyhow::Result<()> {
    match p.hit.how {
        How::Partition { .. } => driver.heal()?,
        How::DiskFull => driver.free_disk(&p.node)?,
        How::Freeze => driver.thaw(&p.node)?,
        How::PostmasterCrash => return Ok(()),
        How::HostDeath | How::AgentCrash => {}
    }
    if p.hit.back == Back::AfterFailoverWalDamaged {
        driver.damage_wal(&p.node)?;
    }
    // A host frozen or left without its agent may have been reset by its watchdog
    // meanwhile: it boots again.
    if matches!(p.hit.how, How::HostDeath | How::AgentCrash | How::Freeze)
        && !driver.agent_running(&p.node)?
    {
        driver.start(&p.node)?;
        if p.hit.how == How::Freeze {
            done.notes.push(format!(
                "{}'s watchdog reset its frozen host; it was started again",
                p.node
            ));
        }
    }
    Ok(())
}

/// Bring every node back as far as the lab can without touching data: heal every
/// partition, thaw and free every node, start every agent that does not run. What was done.
pub fn repair_everything(driver: &LabDriver) -> anyhow::Result<Vec<String>> {
    let lab = driver.lab()?;
    let mut did = Vec::new();
    if lab.netns.is_some() {
        driver.heal()?;
    }
    for node in &lab.nodes {
        driver.thaw(&node.name)?;
        if node.pg_port.is_some() && lab.data_disk_mb.is_some() {
            driver.free_disk(&node.name)?;
        }
        if !driver.agent_running(&node.name)? {
            driver.start(&node.name)?;
            did.push(format!("started {}", node.name));
        }
    }
    Ok(did)
}

/// The last resort for a data node that does not rejoin: its host dies, its data directory
/// is removed, and it boots again (its agent clones it from the primary). Refused for the
/// primary.
pub fn rebuild(driver: &LabDriver, node: &str, primary: Option<&str>) -> anyhow::Result<()> {
    if primary == Some(node) {
        bail!("{node} is the primary: it is not rebuilt");
    }
    let lab = driver.lab()?;
    let data_dir = lab
        .node(node)?
        .data_dir
        .clone()
        .with_context(|| format!("{node} has no data directory"))?;
    driver.kill(node, false)?;
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("removing {}", data_dir.display()))?;
    }
    driver.start(node)
}
