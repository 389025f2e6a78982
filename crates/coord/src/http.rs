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
use pgfm_core::Command;

use crate::embedded::EmbeddedRaft;
use crate::types::TypeConfig;
use crate::wire::{Ping, ProposeReply};

pub fn router(raft: EmbeddedRaft) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/propose", post(propose))
        .route("/raft/ping", post(ping))
        .with_state(raft)
}

async fn append(
    State(raft): State<EmbeddedRaft>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<u64>, RaftError<u64>>> {
    let response = raft.raft().append_entries(req).await;
    // Accepted (even in part, or with a log to repair): a leader at least as new as what
    // this agent has seen is alive and reaches it.
    if matches!(
        response,
        Ok(AppendEntriesResponse::Success
            | AppendEntriesResponse::PartialSuccess(_)
            | AppendEntriesResponse::Conflict)
    ) {
        raft.heard_from_leader();
    }
    Json(response)
}

/// Answered here, never by a call into the Raft core: a stuck core must not look like a
/// partition.
async fn ping(State(raft): State<EmbeddedRaft>) -> Json<Ping> {
    Json(Ping {
        leader_recent: raft.leader_recent(),
    })
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
    Json(raft.propose_local(command).await.into())
}
