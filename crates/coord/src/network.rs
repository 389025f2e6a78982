//! The agent-to-agent Raft transport: JSON requests through the agent's `Transport` (HTTP
//! in production, the simulated network in the simulation), every one carrying the
//! cluster token. The server side is in `http`.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use pgfm_core::transport::{Failure, Method, Request, Transport, TransportError};

use crate::types::{RaftNode, TypeConfig};

/// Why a request to a peer brought no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No answer: refused, not connected in time, no answer in time.
    #[error("{0}")]
    NoAnswer(TransportError),
    /// An answer, but not one to use: a refused token, another status, bad JSON.
    #[error("{0}")]
    Answer(String),
}

/// The agents this one talks to, through one transport and with the cluster token.
#[derive(Clone)]
pub struct Peers {
    transport: Arc<dyn Transport>,
    token: Arc<str>,
    /// How long the leader waits before it tries again a follower whose request failed other
    /// than by a timeout.
    retry_after: Duration,
}

impl Peers {
    /// `retry_after`: the pause after a failed request to a follower (one heartbeat:
    /// openraft's own 500 ms would spend a quarter of the primary's renewal budget after a
    /// single failed connection to a follower that has just come back).
    pub fn new(transport: Arc<dyn Transport>, token: Arc<str>, retry_after: Duration) -> Peers {
        Peers {
            transport,
            token,
            retry_after,
        }
    }

    /// POST `body` as JSON to `path` on the agent at `address` and read its JSON answer.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: &RaftNode,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| PeerError::Answer(format!("cannot encode the request: {e}")))?;
        let request = Request {
            method: Method::Post,
            address: node.address.clone(),
            path: path.to_string(),
            token: self.token.to_string(),
            body: Some(body),
            timeout,
        };
        let response = self
            .transport
            .send(request)
            .await
            .map_err(PeerError::NoAnswer)?;
        match response.status {
            200 => serde_json::from_slice(&response.body)
                .map_err(|e| PeerError::Answer(format!("{node}: unreadable answer: {e}"))),
            401 => Err(PeerError::Answer(format!(
                "{node} refused our cluster token (401): check token_file on both nodes"
            ))),
            status => Err(PeerError::Answer(format!("{node} answered HTTP {status}"))),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &RaftNode) -> Connection {
        Connection {
            peers: self.clone(),
            target,
            node: node.clone(),
        }
    }
}

pub struct Connection {
    peers: Peers,
    target: u64,
    node: RaftNode,
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, RaftNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let path = format!("/raft/{path}");
        let answer: Result<Resp, E> = self
            .peers
            .post(&self.node, &path, request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                // A peer that was only slow to answer is retried at once: a follower busy
                // writing a batch of entries is not a lost one (and each try already took a
                // whole timeout). Any other failure makes openraft pause a heartbeat before
                // the next try (`backoff`), so that a peer that fails fast is not hammered.
                PeerError::NoAnswer(e) if e.failure == Failure::Timeout => {
                    RPCError::Network(NetworkError::new(&e))
                }
                e => RPCError::Unreachable(Unreachable::new(&e)),
            })?;
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.peers.retry_after))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, RaftNode, RaftError<u64>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, RaftNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, RaftNode, RaftError<u64>>> {
        self.call("vote", &rpc, &option).await
    }
}
