//! Operator commands that change the cluster (switchover, ...): checked by the coordinator
//! against what it sees, refused with the reason and nothing changed, else committed in
//! the Raft log for the decision engine to carry out. A non-coordinator agent forwards
//! them to the coordinator.

use pgfm_api::{ApiError, NodeKindStatus, Refusal, SwitchoverRequest, SwitchoverStarted};
use pgfm_coord::Coordinator;
use pgfm_core::Command;

use super::Agent;

fn forwarded(e: ApiError) -> Refusal {
    match e {
        ApiError::Failed {
            status: 409,
            message,
            ..
        } => Refusal::Refused(message),
        other => Refusal::Unavailable(other.to_string()),
    }
}

impl Agent {
    pub(super) async fn start_switchover(
        &self,
        request: SwitchoverRequest,
    ) -> Result<SwitchoverStarted, Refusal> {
        if !self.raft.is_coordinator() {
            let coordinator = self.raft.coordinator().ok_or_else(|| {
                Refusal::Unavailable("no coordinator is elected: try again shortly".into())
            })?;
            let address = self
                .address_of(&coordinator)
                .ok_or_else(|| Refusal::Unavailable(format!("no address for {coordinator}")))?;
            return self
                .client(&address)
                .switchover(request.to)
                .await
                .map_err(forwarded);
        }
        let state = self.raft.state();
        let status = self.local_status(Vec::new());
        let refuse = |why: String| Err(Refusal::Refused(why));
        let Some(from) = status.primary.clone() else {
            return refuse("there is no running primary to switch over from".into());
        };
        if let Some(sw) = &state.switchover {
            return refuse(format!(
                "a switchover from {} to {} is already under way",
                sw.from, sw.to
            ));
        }
        let in_sync: Vec<&pgfm_api::NodeStatus> = status
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKindStatus::Standby && n.in_sync == Some(true))
            .filter(|n| n.promotable == Some(true) && n.priority.is_some_and(|p| p > 0))
            .collect();
        let to = match &request.to {
            Some(to) => {
                let Some(node) = status.nodes.iter().find(|n| n.name == *to) else {
                    return refuse(format!(
                        "unknown node {to:?} (the members are {})",
                        status.allowed.join(", ")
                    ));
                };
                if *to == from {
                    return refuse(format!("{to} is already the primary"));
                }
                if !in_sync.iter().any(|n| n.name == *to) {
                    let why = match (node.kind, node.in_sync, node.lag_bytes) {
                        (NodeKindStatus::Standby, Some(false), Some(lag)) => {
                            format!("it is {lag} bytes behind or not streaming")
                        }
                        (NodeKindStatus::Standby, _, _) => "it is not promotable".to_string(),
                        (kind, _, _) => format!("it is not a running standby ({kind:?})"),
                    };
                    return refuse(format!("{to} is not a standby in sync with {from}: {why}"));
                }
                to.clone()
            }
            None => match in_sync.iter().max_by_key(|n| (n.lsn, n.priority)) {
                Some(n) => n.name.clone(),
                None => {
                    return refuse(format!(
                        "no standby is in sync with {from}: a switchover now could lose data ({})",
                        status.promote_status.message
                    ))
                }
            },
        };
        let command = Command::RequestSwitchover {
            from: from.clone(),
            to: to.clone(),
            generation: state.generation,
        };
        match self.raft.propose(command).await {
            Ok(Ok(())) => {
                tracing::warn!(generation = %state.generation, %from, %to, "switchover requested");
                Ok(SwitchoverStarted {
                    from,
                    to,
                    generation: state.generation.0,
                })
            }
            Ok(Err(refused)) => refuse(refused.to_string()),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }
}
