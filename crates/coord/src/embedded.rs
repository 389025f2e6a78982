//! The embedded Raft backend: starts openraft over the durable log store, state machine and
//! HTTP transport, initialises the cluster once from the configured peers, and implements
//! `Coordinator` (proposals are forwarded to the coordinator when needed).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use pgfm_core::transport::Transport;
use pgfm_core::{ClusterState, Command, NodeId};

use crate::log_store::LogStore;
use crate::network::{PeerError, Peers};
use crate::state_machine::{Applied, StateMachine};
use crate::types::{Raft, RaftNode};
use crate::wire::{Ping, ProposeReply};
use crate::{Coordinator, ProposeError};

/// Raft timing and log retention.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
}

impl RaftSettings {
    /// How long a follower counts a leader as recent after its last contact (pre-vote's
    /// `leader_recent`): two heartbeats, or the shortest election timeout if longer. One
    /// late heartbeat on a loaded machine must not make a follower willing to depose a
    /// working coordinator (with 200 ms, 50 ms of scheduling delay did, under CPU hogs:
    /// `pgfm bench calm`); a dead one is still noticed before the earliest election timer
    /// fires (`election_timeout_max` plus a random election timeout: at least 600 ms).
    pub fn contact_window(&self) -> Duration {
        (self.heartbeat * 2).max(self.election_timeout_min)
    }
}

impl Default for RaftSettings {
    fn default() -> RaftSettings {
        RaftSettings {
            // An election must fit well inside the primary's lease budget (lease -
            // safety_margin, 1.6 s by default), or losing the coordinator fences the primary.
            // openraft 0.9 followers wait election_timeout_max (its leader lease) plus a
            // random election timeout before they campaign: at most 0.8 s here. Heartbeats
            // and lease renewals are most of an idle agent's CPU: keep them no faster.
            heartbeat: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(200),
            election_timeout_max: Duration::from_millis(400),
            snapshot_every: 1000,
        }
    }
}

/// Why a membership change did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MembershipError {
    /// Leadership moved while changing: the new coordinator must do it.
    #[error("this agent is no longer the coordinator")]
    NotCoordinator,
    #[error("{0}")]
    Failed(String),
}

struct Inner {
    raft: Raft,
    id: u64,
    applied: watch::Receiver<Applied>,
    peers: Peers,
    settings: RaftSettings,
    /// When this agent last accepted entries (or a heartbeat) from a leader, in ms since
    /// `started` (0: never).
    leader_contact_ms: std::sync::atomic::AtomicU64,
    started: tokio::time::Instant,
    /// The pre-vote task (`election_gate`), stopped with the node.
    gate: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This agent leads but stepped aside (`step_aside`): no majority acknowledged it for
    /// a while, so it sends no heartbeats, decides nothing and commits nothing.
    stepped_aside: std::sync::atomic::AtomicBool,
}

impl Inner {
    /// This agent leads, as openraft's `metrics` say.
    fn leads(&self, metrics: &Metrics) -> bool {
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id)
    }

    /// A majority answered this leader within `election_timeout_max`.
    fn majority_answered(&self, metrics: &Metrics) -> bool {
        let limit = self.settings.election_timeout_max.as_millis() as u64;
        metrics.millis_since_quorum_ack.is_some_and(|ms| ms < limit)
    }
}

/// openraft's view of this node.
type Metrics = openraft::RaftMetrics<u64, RaftNode>;

#[derive(Clone)]
pub struct EmbeddedRaft {
    inner: Arc<Inner>,
}

impl EmbeddedRaft {
    /// Open the Raft state under `dir` and start the node. When the log is empty the cluster
    /// is initialised from `peers` (`(name, agent address)`); every agent of a new cluster
    /// does so with the same list, which openraft accepts, so no agent has to go first.
    /// Every request to another agent goes through `transport` with `token`.
    pub async fn start(
        name: &str,
        dir: &Path,
        peers: &[(String, String)],
        transport: Arc<dyn Transport>,
        token: Arc<str>,
        settings: &RaftSettings,
    ) -> anyhow::Result<EmbeddedRaft> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the Raft directory {}", dir.display()))?;
        let log = LogStore::open(dir)
            .with_context(|| format!("opening the Raft log in {}", dir.display()))?;
        let (sm, applied) = StateMachine::open(dir)
            .with_context(|| format!("opening the Raft state in {}", dir.display()))?;
        let config = Config {
            cluster_name: "pgfm".to_string(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout_min.as_millis() as u64,
            election_timeout_max: settings.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .context("validating the Raft settings")?;
        let id = NodeId::from_name(name).0;
        let network = Peers::new(transport, token, settings.heartbeat);
        let raft = Raft::new(id, Arc::new(config), network.clone(), log, sm)
            .await
            .context("starting Raft")?;
        if !raft.is_initialized().await.context("reading Raft state")? {
            let members: BTreeMap<u64, RaftNode> = peers
                .iter()
                .map(|(name, address)| {
                    let node = RaftNode {
                        name: name.clone(),
                        address: address.clone(),
                    };
                    (NodeId::from_name(name).0, node)
                })
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(peers = peers.len(), "initialised a new cluster"),
                // Another agent's initialisation reached us first: nothing to do.
                Err(e) => tracing::info!(%e, "cluster already initialised"),
            }
        }
        let inner = Inner {
            raft,
            id,
            applied,
            peers: network,
            settings: settings.clone(),
            leader_contact_ms: std::sync::atomic::AtomicU64::new(0),
            started: tokio::time::Instant::now(),
            gate: std::sync::Mutex::new(None),
            stepped_aside: std::sync::atomic::AtomicBool::new(false),
        };
        let raft = EmbeddedRaft {
            inner: Arc::new(inner),
        };
        let gate = tokio::spawn(election_gate(Arc::downgrade(&raft.inner)));
        if let Ok(mut slot) = raft.inner.gate.lock() {
            *slot = Some(gate);
        }
        Ok(raft)
    }

    /// Called by the transport when this agent accepted a leader's entries.
    pub fn heard_from_leader(&self) {
        let ms = self.inner.started.elapsed().as_millis() as u64;
        self.inner
            .leader_contact_ms
            .store(ms.max(1), std::sync::atomic::Ordering::SeqCst);
    }

    /// This agent leads with a quorum that answered recently, or heard from a leader within
    /// `RaftSettings::contact_window`: a vote now would depose a working coordinator.
    pub fn leader_recent(&self) -> bool {
        let recent = self.inner.settings.contact_window().as_millis() as u64;
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == ServerState::Leader {
            return self.inner.majority_answered(&metrics);
        }
        let contact = self
            .inner
            .leader_contact_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        let now = self.inner.started.elapsed().as_millis() as u64;
        contact > 0 && now.saturating_sub(contact) < recent
    }

    /// This agent leads but stepped aside (`step_aside`).
    fn stepped_aside(&self) -> bool {
        self.inner
            .stepped_aside
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Add `name` at `address` as a voter (this agent must be the coordinator): first as a
    /// learner, then into the voters, both through the Raft log.
    pub async fn add_voter(&self, name: &str, address: &str) -> Result<(), MembershipError> {
        let id = NodeId::from_name(name).0;
        let node = RaftNode {
            name: name.to_string(),
            address: address.to_string(),
        };
        let learner = openraft::ChangeMembers::AddNodes([(id, node)].into_iter().collect());
        self.change_members(&format!("adding {name} as a learner"), learner, true)
            .await?;
        let voter = openraft::ChangeMembers::AddVoterIds([id].into_iter().collect());
        self.change_members(&format!("making {name} a voter"), voter, false)
            .await
    }

    /// Remove `name` from the voters (this agent must be the coordinator).
    pub async fn remove_voter(&self, name: &str) -> Result<(), MembershipError> {
        let id = NodeId::from_name(name).0;
        let change = openraft::ChangeMembers::RemoveVoters([id].into_iter().collect());
        self.change_members(&format!("removing {name}"), change, false)
            .await
    }

    /// One membership change, waiting out a change still in progress (a previous step's
    /// joint configuration) for up to 5 s.
    async fn change_members(
        &self,
        what: &str,
        change: openraft::ChangeMembers<u64, RaftNode>,
        retain: bool,
    ) -> Result<(), MembershipError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self
                .inner
                .raft
                .change_membership(change.clone(), retain)
                .await
            {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(MembershipError::NotCoordinator)
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(MembershipError::Failed(format!("{what}: {e}"))),
            }
        }
    }

    /// The committed primary and generation, without copying the whole state.
    pub fn primary(&self) -> (Option<String>, pgfm_core::Generation) {
        let applied = self.inner.applied.borrow();
        (applied.state.primary.clone(), applied.state.generation)
    }

    /// The committed cluster-wide settings (None before the first commit), without
    /// copying the whole state: the agent's loops read them every tick.
    pub fn settings(&self) -> Option<pgfm_core::settings::Settings> {
        let applied = self.inner.applied.borrow();
        applied.state.settings.as_ref().map(|c| c.values.clone())
    }

    /// `node`'s maintenance, if it is under maintenance, without copying the whole state.
    pub fn maintenance_of(&self, node: &str) -> Option<pgfm_core::model::Maintenance> {
        let applied = self.inner.applied.borrow();
        applied.state.maintenance.get(node).cloned()
    }

    /// The lease the latest renewal of the current generation was timed with, if it said.
    pub fn last_lease_timing(&self) -> Option<u64> {
        let applied = self.inner.applied.borrow();
        applied.state.lease_timings.last().map(|t| t.lease_ms)
    }

    /// The node holding the current generation's lease (`ClusterState::lease_holder`) and
    /// the generation.
    pub fn lease_holder(&self) -> (Option<String>, pgfm_core::Generation) {
        let applied = self.inner.applied.borrow();
        let state = &applied.state;
        (state.lease_holder().map(str::to_string), state.generation)
    }

    /// A receiver that sees every newly applied state.
    pub fn watch(&self) -> watch::Receiver<Applied> {
        self.inner.applied.clone()
    }

    /// Commit `command` through this node, which must be the coordinator: never forwarded
    /// (`ProposeError::NotCoordinator` once it does not lead).
    pub async fn propose_local(&self, command: Command) -> Result<(), ProposeError> {
        if self.stepped_aside() {
            return Err(ProposeError::NotCoordinator);
        }
        match self.inner.raft.client_write(command).await {
            Ok(response) => response.data.map_err(ProposeError::Refused),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ProposeError::NotCoordinator)
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    fn node(&self, id: u64) -> Option<RaftNode> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    fn leader(&self) -> Option<(u64, RaftNode)> {
        let leader = self.inner.raft.metrics().borrow().current_leader?;
        Some((leader, self.node(leader)?))
    }

    /// Propose `command` through the coordinator `node`: its answer, or why it gave none.
    async fn forward(&self, node: &RaftNode, command: &Command) -> Result<(), ProposeError> {
        let reply: ProposeReply = self
            .inner
            .peers
            .post(node, "/raft/propose", command, Duration::from_secs(5))
            .await
            .map_err(|e| ProposeError::Unreachable {
                leader: node.name.clone(),
                address: node.address.clone(),
                cause: e.to_string(),
            })?;
        reply.into_result()
    }

    pub async fn shutdown(&self) {
        if let Some(gate) = self.inner.gate.lock().ok().and_then(|mut g| g.take()) {
            gate.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(%e, "Raft did not shut down cleanly");
        }
    }
}

/// Pre-vote, which openraft 0.9 lacks. A candidate raises its term before it asks for
/// votes, and a node cut off from the others keeps doing so; when the partition heals, its
/// higher term (in its answer to the leader's first heartbeat) deposes a working coordinator
/// — over a second without one, against the primary's 1.6 s fence deadline. So an agent may
/// campaign only while a majority of the voters, itself included, is reachable and has not
/// heard from a leader recently. Checked every heartbeat by pinging the other voters (each
/// answers from its HTTP server, `leader_recent`). The gate only closes openraft's own
/// election timer; it opens again within a heartbeat and a ping of a real leader's death
/// (its followers stop hearing from it after `RaftSettings::contact_window`): 300 + 150 +
/// up to 200 ms, about when that timer (`election_timeout_max` + a random election timeout,
/// 600-800 ms) fires at the earliest; a gate still closed then delays the election by one
/// of openraft's timer ticks.
async fn election_gate(inner: std::sync::Weak<Inner>) {
    let mut open = true;
    let mut quiet_since = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let raft = EmbeddedRaft { inner: strong };
        let heartbeat = raft.inner.settings.heartbeat;
        quiet_since = step_aside(&raft, quiet_since);
        // A peer that answers late on a loaded machine must still count: as long as the
        // shortest election timeout, the gate then opens within it of a coordinator's death.
        let patience = raft.inner.settings.election_timeout_min;
        // While it leads or hears from a coordinator, openraft's own timer keeps it from
        // campaigning anyway: no pings then (they would be most of an idle agent's CPU).
        // The gate decides again within a heartbeat of the coordinator going quiet, well
        // before that timer can fire.
        if raft.leader_recent() {
            drop(raft);
            tokio::time::sleep(heartbeat).await;
            continue;
        }
        let voters: Vec<(u64, RaftNode)> = {
            let metrics = raft.inner.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
                .collect()
        };
        let mut pings = tokio::task::JoinSet::new();
        for (id, node) in voters.iter().filter(|(id, _)| *id != raft.inner.id) {
            let peers = raft.inner.peers.clone();
            let (id, node) = (*id, node.clone());
            pings.spawn(async move {
                let answer: Result<Ping, PeerError> =
                    peers.post(&node, "/raft/ping", &(), patience).await;
                (id, answer.ok())
            });
        }
        let mut willing = usize::from(!raft.leader_recent());
        for (_, answer) in pings.join_all().await {
            if answer.is_some_and(|p| !p.leader_recent) {
                willing += 1;
            }
        }
        let allow = voters.is_empty() || willing > voters.len() / 2;
        if allow != open {
            open = allow;
            raft.inner.raft.runtime_config().elect(allow);
            if allow {
                tracing::info!(
                    willing,
                    voters = voters.len(),
                    "elections allowed: a majority hears no coordinator"
                );
            } else {
                tracing::debug!(
                    willing,
                    voters = voters.len(),
                    "elections held back: no majority without a coordinator"
                );
            }
        }
        drop(raft);
        tokio::time::sleep(heartbeat).await;
    }
}

/// Check-quorum, which openraft 0.9 lacks. A leader whose followers' answers no longer reach
/// it (it cannot receive, one way) may still reach them: its heartbeats then keep them from
/// electing another, and nothing commits — the primary, unable to renew its lease, fences
/// itself, and the cluster stays without one for as long as the fault lasts (the
/// simulation's messages showed it; over TCP the heartbeats die with their connections
/// within a timeout, but a path that carries them one way must not stall the cluster
/// either). So a leader that no majority has acknowledged for
/// `election_timeout_max`, still so a heartbeat later, steps aside: it stops its
/// heartbeats, so that the others elect a coordinator they can reach, and it decides and
/// commits nothing meanwhile (`leading_term`, `propose_local`). It steps back once it no
/// longer leads, or once a majority answers it again. Returns since when it has been quiet.
fn step_aside(
    raft: &EmbeddedRaft,
    quiet_since: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    let settings = &raft.inner.settings;
    let (leads, answered, quorum_ack_ms, voters) = {
        let metrics = raft.inner.raft.metrics();
        let metrics = metrics.borrow();
        (
            raft.inner.leads(&metrics),
            raft.inner.majority_answered(&metrics),
            metrics.millis_since_quorum_ack,
            metrics.membership_config.membership().voter_ids().count(),
        )
    };
    let quiet = leads && voters > 1 && !answered;
    let flag = &raft.inner.stepped_aside;
    let aside = flag.load(std::sync::atomic::Ordering::SeqCst);
    if !quiet {
        if aside {
            flag.store(false, std::sync::atomic::Ordering::SeqCst);
            raft.inner.raft.runtime_config().heartbeat(true);
            tracing::warn!(
                leads,
                "a majority answers again, or another agent leads: heartbeats resumed"
            );
        }
        return None;
    }
    let since = quiet_since.unwrap_or_else(tokio::time::Instant::now);
    if !aside && since.elapsed() >= settings.heartbeat {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        raft.inner.raft.runtime_config().heartbeat(false);
        tracing::warn!(
            last_majority_ms = ?quorum_ack_ms,
            "no majority of agents has answered this coordinator: stepping aside (no \
             heartbeats, no decisions) so that they elect one they can reach"
        );
    }
    Some(since)
}

impl Coordinator for EmbeddedRaft {
    fn state(&self) -> ClusterState {
        self.inner.applied.borrow().state.clone()
    }

    fn coordinator(&self) -> Option<String> {
        self.leader().map(|(_, node)| node.name)
    }

    fn is_coordinator(&self) -> bool {
        self.leading_term().is_some()
    }

    /// The term this agent leads in, unless it stepped aside (`step_aside`).
    fn leading_term(&self) -> Option<u64> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        (self.inner.leads(&metrics) && !self.stepped_aside()).then_some(metrics.current_term)
    }

    fn voters(&self) -> Vec<(String, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id))
            .map(|n| (n.name.clone(), n.address.clone()))
            .collect()
    }

    async fn propose(&self, command: Command) -> Result<(), ProposeError> {
        // A leadership change can race with the proposal: try a few times, then report.
        for _ in 0..3 {
            let Some((leader, node)) = self.leader() else {
                return Err(ProposeError::NoCoordinator);
            };
            let result = if leader == self.inner.id {
                self.propose_local(command.clone()).await
            } else {
                self.forward(&node, &command).await
            };
            match result {
                Err(ProposeError::NotCoordinator) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                decided => return decided,
            }
        }
        Err(ProposeError::NoCoordinator)
    }
}

#[cfg(test)]
mod tests {
    use super::RaftSettings;

    /// Pre-vote's contact window tolerates a late heartbeat, yet a dead coordinator's
    /// followers become willing, and the gate (asked every heartbeat) opens, before the
    /// earliest election timer fires; and a whole election fits in the primary's lease
    /// budget with a renewal to spare.
    #[test]
    fn the_default_timing_elects_before_the_primary_fences() {
        let s = RaftSettings::default();
        assert!(s.contact_window() >= s.heartbeat * 2);
        assert!(s.contact_window() + s.heartbeat < s.election_timeout_max + s.election_timeout_min);
        let lease = pgfm_core::lease::LeaseSettings::default();
        let election = (s.election_timeout_max * 2).as_millis() as u64;
        assert!(election + lease.renew_interval_ms <= lease.lease_ms - lease.safety_margin_ms);
    }
}
