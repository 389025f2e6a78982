//! pgfm's coordination layer: the `Coordinator` trait the agent talks to, and the embedded
//! Raft backend (openraft) that implements it with crash-safe files and HTTP transport.

// openraft's StorageError is large and its traits return it by value; boxing ours would only
// add a conversion at every call.
#![allow(clippy::result_large_err)]

pub mod durable;
pub mod embedded;
pub mod http;
pub mod log_store;
pub mod network;
pub mod runtime;
pub mod state_machine;
pub mod types;
pub mod wire;

use std::future::Future;

use pgfm_core::{ClusterState, Command, CommandError};

pub use embedded::{EmbeddedRaft, MembershipError, RaftSettings};
pub use types::{RaftNode, TypeConfig};

/// Why a proposed command changed nothing: refused by the state machine, or never decided.
/// Callers branch on `Refused` (the committed state says no: do not retry as is) against the
/// rest (no decision was reached: the next round tries again).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// Committed, but `ClusterState::apply` refused it: the state it was judged on is gone.
    #[error(transparent)]
    Refused(CommandError),
    /// This agent does not lead, and the command was to be committed here or not at all
    /// (`EmbeddedRaft::propose_local`).
    #[error("this agent is not the coordinator")]
    NotCoordinator,
    #[error("no coordinator is elected (no majority of agents reachable)")]
    NoCoordinator,
    #[error("coordinator {leader} at {address} did not answer: {cause}")]
    Unreachable {
        leader: String,
        address: String,
        cause: String,
    },
    #[error("consensus error: {0}")]
    Raft(String),
}

/// What the agent needs from the cluster's consensus, whatever the backend.
pub trait Coordinator: Send + Sync + 'static {
    /// The committed state as applied on this agent.
    fn state(&self) -> ClusterState;
    /// The name of the current coordinator (Raft leader), if one is known.
    fn coordinator(&self) -> Option<String>;
    /// Whether this agent is the coordinator.
    fn is_coordinator(&self) -> bool;
    /// The Raft term this agent leads, when it is the coordinator. Once it has applied an
    /// entry of that term, it has applied everything committed before it led.
    fn leading_term(&self) -> Option<u64>;
    /// Every voting member: `(name, agent address)`.
    fn voters(&self) -> Vec<(String, String)>;
    /// Commit a command, forwarding it to the coordinator when this agent is not it.
    fn propose(&self, command: Command) -> impl Future<Output = Result<(), ProposeError>> + Send;
}
