//! The JSON bodies pgfm adds to openraft's transport: the answer to a forwarded proposal
//! (`/raft/propose`) and to the pre-vote check (`/raft/ping`). Both sides of the transport
//! use them — the routes (`http`) and the client (`embedded`) — so they live apart from
//! either.

use serde::{Deserialize, Serialize};

use pgfm_core::CommandError;

use crate::ProposeError;

/// The answer to a forwarded proposal, as it crosses the wire. Agents of different builds
/// talk to each other: its JSON shape does not change.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProposeReply {
    Applied(Result<(), CommandError>),
    /// This agent is not (or no longer) the coordinator.
    NotCoordinator,
    Failed(String),
}

impl From<Result<(), ProposeError>> for ProposeReply {
    fn from(result: Result<(), ProposeError>) -> ProposeReply {
        match result {
            Ok(()) => ProposeReply::Applied(Ok(())),
            Err(ProposeError::Refused(refused)) => ProposeReply::Applied(Err(refused)),
            Err(ProposeError::NotCoordinator) => ProposeReply::NotCoordinator,
            Err(ProposeError::Raft(cause)) => ProposeReply::Failed(cause),
            // A local proposal never fails so; said in full should it ever.
            Err(other) => ProposeReply::Failed(other.to_string()),
        }
    }
}

impl ProposeReply {
    /// The forwarded proposal's result, as if it had been proposed here.
    pub fn into_result(self) -> Result<(), ProposeError> {
        match self {
            ProposeReply::Applied(outcome) => outcome.map_err(ProposeError::Refused),
            ProposeReply::NotCoordinator => Err(ProposeError::NotCoordinator),
            ProposeReply::Failed(cause) => Err(ProposeError::Raft(cause)),
        }
    }
}

/// The answer to `/raft/ping`: the pre-vote check (see `embedded::election_gate`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ping {
    /// This agent leads, or heard from a leader within the election timeout.
    pub leader_recent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result crosses the wire and comes back as it was, so a forwarded proposal reads
    /// like a local one.
    #[test]
    fn a_proposal_result_survives_the_wire() {
        let check = |result: Result<(), ProposeError>, expected: &str| {
            let reply = ProposeReply::from(result);
            let json = serde_json::to_string(&reply).unwrap();
            let back: ProposeReply = serde_json::from_str(&json).unwrap();
            assert_eq!(format!("{:?}", back.into_result()), expected, "{json}");
        };
        check(Ok(()), "Ok(())");
        check(
            Err(ProposeError::Refused(CommandError::NotPromotable(
                "pg2".into(),
            ))),
            "Err(Refused(NotPromotable(\"pg2\")))",
        );
        check(Err(ProposeError::NotCoordinator), "Err(NotCoordinator)");
        check(
            Err(ProposeError::Raft("storage full".into())),
            "Err(Raft(\"storage full\"))",
        );
        check(
            Err(ProposeError::NoCoordinator),
            "Err(Raft(\"no coordinator is elected (no majority of agents reachable)\"))",
        );
    }
}
