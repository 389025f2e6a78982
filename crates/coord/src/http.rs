//! The server side of the Raft transport and of proposal forwarding: `/raft/*` routes.
//! Authentication is applied by the binary to the whole router, not here.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use pgfm_core::{Command, CommandError};

use crate::embedded::EmbeddedRaft;
use crate::types::TypeConfig;

/// The answer to a forwarded proposal.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProposeReply {
    Applied(Result<(), CommandError>),
    /// This agent is not (or no longer) the coordinator.
    NotCoordinator,
    Failed(String),
}

pub fn router(raft: EmbeddedRaft) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/propose", post(propose))
        .with_state(raft)
}

async fn append(
    State(raft): State<EmbeddedRaft>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<u64>, RaftError<u64>>> {
    Json(raft.raft().append_entries(req).await)
}

async fn vote(
    State(raft): State<EmbeddedRaft>,
    Json(req): Json<VoteRequest<u64>>,
) -> Json<Result<VoteResponse<u64>, RaftError<u64>>> {
    Json(raft.raft().vote(req).await)
}

async fn snapshot(
    State(raft): State<EmbeddedRaft>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>> {
    Json(raft.raft().install_snapshot(req).await)
}

async fn propose(
    State(raft): State<EmbeddedRaft>,
    Json(command): Json<Command>,
) -> Json<ProposeReply> {
    Json(raft.propose_local(command).await)
}
