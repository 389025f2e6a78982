//! Operator commands that change the cluster (switchover, ...): checked by the coordinator
//! against what it sees, refused with the reason and nothing changed, else committed in
//! the Raft log for the decision engine to carry out. A non-coordinator agent forwards
//! them to the coordinator.

use pgfm_api::{ApiError, NodeKindStatus, Refusal, SwitchoverRequest, SwitchoverStarted};
use pgfm_coord::Coordinator;
use pgfm_core::{Command, SyncMode, SyncSettings};

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
        if let Some(client) = self.coordinator_client().await? {
            return client.switchover(request.to).await.map_err(forwarded);
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
            force: false,
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

impl Agent {
    /// `pgfm switchover --cancel`: works in every state of a switchover. Before the
    /// hand-over the primary simply keeps (or takes back) its lease; after it, the old
    /// primary starts again as the primary — its generation never changed, it holds every
    /// commit — and the log refuses the target's promotion from then on
    /// (`Command::Promote::handover`). Once the target is promoted there is nothing to
    /// cancel: switch over back instead.
    pub(super) async fn cancel_switchover(&self) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .cancel_switchover()
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        let state = self.raft.state();
        let Some(sw) = state.switchover.clone() else {
            return Err(Refusal::Refused(match state.history.last() {
                Some(p) if p.generation == state.generation => format!(
                    "no switchover is under way: {} is the primary of generation {} ({}); to go \
                     back, run pgfm switchover --to {}",
                    p.to,
                    state.generation,
                    p.reason,
                    p.from.as_deref().unwrap_or("the old primary")
                ),
                _ => "no switchover is under way".to_string(),
            }));
        };
        self.commit(Command::CancelSwitchover {
            generation: sw.generation,
            at_unix_ms: Agent::wall_clock_ms(),
            reason: format!(
                "pgfm switchover --cancel: switchover from {} to {} cancelled",
                sw.from, sw.to
            ),
        })
        .await?;
        tracing::warn!(generation = %sw.generation, from = %sw.from, to = %sw.to, "switchover cancelled by the operator");
        Ok(format!(
            "switchover from {} to {} cancelled: {} stays the primary of generation {}{}",
            sw.from,
            sw.to,
            sw.from,
            sw.generation,
            if sw.final_lsn.is_some() {
                " (it had stopped; it starts again)"
            } else {
                ""
            }
        ))
    }

    async fn commit(&self, command: Command) -> Result<(), Refusal> {
        match self.raft.propose(command).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(Refusal::Refused(refused.to_string())),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    /// `pgfm promote [--to NODE] [--force]`: operator failover. With a live primary it goes
    /// through a hand-over (the old primary is stopped and fenced first); without one, the
    /// target is promoted once the old primary's lease has expired. Works with automatic
    /// failover off and in maintenance mode. A lagging target needs `force`.
    pub(super) async fn start_promotion(
        &self,
        request: pgfm_api::PromoteRequest,
    ) -> Result<pgfm_api::PromoteStarted, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .promote(request.to, request.force)
                .await
                .map_err(forwarded);
        }
        let state = self.raft.state();
        let status = self.local_status(Vec::new());
        let refuse = |why: String| Err(Refusal::Refused(why));
        if let Some(sw) = &state.switchover {
            // --force finishes the switchover under way whatever step it is at: the primary
            // hands over without waiting for the target to stream, and the target is
            // promoted without waiting for the final record.
            if !request.force || request.to.as_ref().is_some_and(|to| *to != sw.to) {
                return refuse(format!(
                    "a switchover from {} to {} is under way: wait for it, cancel it (pgfm \
                     switchover --cancel), or finish it at once (pgfm promote --to {} --force)",
                    sw.from, sw.to, sw.to
                ));
            }
            self.commit(Command::ForceSwitchover {
                generation: sw.generation,
            })
            .await?;
            tracing::warn!(generation = %sw.generation, from = %sw.from, to = %sw.to, "operator forced the switchover under way");
            return Ok(pgfm_api::PromoteStarted {
                from: Some(sw.from.clone()),
                to: Some(sw.to.clone()),
                generation: sw.generation.0,
                how: format!(
                    "the switchover from {} to {} is forced: {} is promoted without waiting \
                     for the old primary's final WAL",
                    sw.from, sw.to, sw.to
                ),
            });
        }
        let Some(from) = state.primary.clone() else {
            return refuse("the cluster has no primary yet".into());
        };
        let alive = status.primary.is_some();
        let max_lag = self.config.failover.max_lag;
        let best = self
            .view()
            .reports
            .values()
            .filter_map(|o| o.report.wal_position())
            .max();
        let standbys: Vec<&pgfm_api::NodeStatus> = status
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKindStatus::Standby)
            .filter(|n| n.promotable == Some(true) && n.priority.is_some_and(|p| p > 0))
            .collect();
        let behind = |n: &pgfm_api::NodeStatus| -> u64 {
            if alive {
                n.lag_bytes.unwrap_or(u64::MAX)
            } else {
                best.zip(n.lsn).map(|(b, l)| b.bytes_after(l)).unwrap_or(0)
            }
        };
        let target = match &request.to {
            Some(to) => {
                if !status.nodes.iter().any(|n| n.name == *to) {
                    return refuse(format!(
                        "unknown node {to:?} (the members are {})",
                        status.allowed.join(", ")
                    ));
                }
                if *to == from {
                    return refuse(format!("{to} is already the primary"));
                }
                match standbys.iter().find(|n| n.name == *to) {
                    Some(n) => Some(*n),
                    None => return refuse(format!("{to} is not a running, promotable standby")),
                }
            }
            None => standbys
                .iter()
                .copied()
                .min_by_key(|n| (behind(n), std::cmp::Reverse(n.priority))),
        };
        if let Some(n) = target {
            let lag = behind(n);
            let lagging = if alive {
                n.in_sync != Some(true)
            } else {
                lag > max_lag
            };
            if lagging && !request.force {
                return refuse(format!(
                    "{} is {} behind {}: promoting it could lose that much; add --force to accept",
                    n.name,
                    if lag == u64::MAX {
                        "an unknown number of bytes".to_string()
                    } else {
                        format!("{lag} bytes")
                    },
                    if alive {
                        "the primary"
                    } else {
                        "the best known position"
                    },
                ));
            }
        }
        let generation = state.generation;
        if alive {
            let Some(to) = target.map(|n| n.name.clone()) else {
                return refuse("no running, promotable standby to promote".into());
            };
            self.commit(Command::RequestSwitchover {
                from: from.clone(),
                to: to.clone(),
                generation,
                force: request.force,
            })
            .await?;
            tracing::warn!(%generation, %from, %to, force = request.force, "operator promotion: hand-over requested");
            Ok(pgfm_api::PromoteStarted {
                from: Some(from.clone()),
                to: Some(to.clone()),
                generation: generation.0,
                how: format!("{from} stops and hands over (fenced first), then {to} is promoted"),
            })
        } else {
            let to = target.map(|n| n.name.clone());
            self.commit(Command::RequestPromotion {
                to: to.clone(),
                force: request.force,
                generation,
            })
            .await?;
            tracing::warn!(%generation, %from, ?to, force = request.force, "operator promotion requested: primary is gone");
            Ok(pgfm_api::PromoteStarted {
                from: Some(from.clone()),
                to: to.clone(),
                generation: generation.0,
                how: format!(
                    "{from} is not running: {} is promoted once its lease has expired",
                    to.as_deref().unwrap_or("the best standby")
                ),
            })
        }
    }

    pub(super) async fn change_priority(
        &self,
        request: pgfm_api::PriorityRequest,
    ) -> Result<String, Refusal> {
        self.commit(Command::SetPriority {
            node: request.node.clone(),
            priority: request.priority,
        })
        .await?;
        tracing::info!(node = %request.node, priority = request.priority, "priority changed");
        Ok(match request.priority {
            0 => format!("{} will never be promoted (priority 0)", request.node),
            p => format!("{} has priority {p}", request.node),
        })
    }

    /// `pgfm set-synchronous`: synchronous replication for the whole cluster, committed so
    /// that every agent (and the next coordinator) uses it; numbers left out keep their value.
    pub(super) async fn change_synchronous(
        &self,
        request: pgfm_api::SynchronousRequest,
    ) -> Result<String, Refusal> {
        let state = self.raft.state();
        let current = state.replication.unwrap_or(self.config.sync);
        let mode = match request.mode.as_str() {
            "off" => SyncMode::Off,
            "on" => SyncMode::On,
            "quorum" => SyncMode::Quorum,
            other => {
                return Err(Refusal::Refused(format!(
                    "unknown mode {other:?} (use off, on or quorum)"
                )))
            }
        };
        let standbys = request.standbys.unwrap_or(current.standbys);
        let minimum = match (request.strict, request.minimum) {
            (true, Some(m)) if m != standbys => {
                return Err(Refusal::Refused(format!(
                    "--strict means --minimum {standbys} (the standbys asked); give one of them"
                )))
            }
            (true, _) => standbys,
            (false, Some(m)) => m,
            // Strict stays strict when only the count changes.
            (false, None) if current.strict() => standbys,
            (false, None) => current.minimum.min(standbys),
        };
        let settings = SyncSettings {
            mode,
            standbys,
            minimum,
        };
        if let Some(problem) = settings.problem("--standbys", "--minimum") {
            return Err(Refusal::Refused(problem));
        }
        let eligible = state
            .data_members()
            .filter(|m| m.promotable && m.priority > 0 && state.primary.as_ref() != Some(&m.name))
            .count();
        if mode != SyncMode::Off && minimum > eligible {
            return Err(Refusal::Refused(format!(
                "--minimum {minimum} needs that many promotable standbys and the cluster has \
                 {eligible}: every commit would wait forever (lower --minimum, or add standbys)"
            )));
        }
        self.commit(Command::SetReplication { settings }).await?;
        tracing::warn!(generation = %state.generation, %mode, standbys, minimum, "synchronous replication set for the cluster");
        let what = match mode {
            SyncMode::Off => "off: commits will not wait for standbys".to_string(),
            SyncMode::On => format!(
                "on: every commit will wait for each of {standbys} standby(s){}",
                floor(minimum, standbys)
            ),
            SyncMode::Quorum => format!(
                "quorum: every commit will wait for any {standbys} of the streaming standbys{}",
                floor(minimum, standbys)
            ),
        };
        Ok(format!(
            "synchronous replication {what}; the primary applies it now (pgfm cluster-status \
             shows when it waits)"
        ))
    }

    pub(super) async fn set_paused(&self, paused: bool) -> Result<String, Refusal> {
        self.commit(Command::SetPaused { paused }).await?;
        tracing::warn!(paused, "maintenance mode changed");
        Ok(if paused {
            "cluster paused: no automatic failover until pgfm resume (fencing still protects the primary)".into()
        } else {
            "cluster resumed: automatic failover is back".into()
        })
    }
}

impl Agent {
    /// The coordinator's API, or None when this agent is the coordinator.
    async fn coordinator_client(&self) -> Result<Option<pgfm_api::ApiClient>, Refusal> {
        if self.raft.is_coordinator() {
            return Ok(None);
        }
        let coordinator = self.raft.coordinator().ok_or_else(|| {
            Refusal::Unavailable("no coordinator is elected: try again shortly".into())
        })?;
        let address = self
            .address_of(&coordinator)
            .ok_or_else(|| Refusal::Unavailable(format!("no address for {coordinator}")))?;
        Ok(Some(self.client(&address)))
    }

    /// `pgfm allow-node NAME ADDRESS`: a new (or returning) agent joins the voters.
    pub(super) async fn allow(&self, request: pgfm_api::AllowRequest) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .allow_node(&request.name, &request.address)
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        let refuse = |why: String| Err(Refusal::Refused(why));
        let name = &request.name;
        if request.address.parse::<std::net::SocketAddr>().is_err() {
            return refuse(format!("{:?} is not an ip:port address", request.address));
        }
        let voters = self.raft.voters();
        if voters.iter().any(|(n, _)| n == name) {
            return refuse(format!("{name} is already a member"));
        }
        if let Some((other, _)) = voters.iter().find(|(_, a)| *a == request.address) {
            return refuse(format!(
                "{} is already the address of {other}",
                request.address
            ));
        }
        self.commit(Command::Welcome { name: name.clone() }).await?;
        if let Err(e) = self.raft.add_voter(name, &request.address).await {
            return self
                .retry_elsewhere(e, || async {
                    self.coordinator_client()
                        .await?
                        .ok_or_else(|| {
                            Refusal::Unavailable("the coordinator changed twice".into())
                        })?
                        .allow_node(&request.name, &request.address)
                        .await
                        .map(|m| m.message)
                        .map_err(forwarded)
                })
                .await;
        }
        tracing::warn!(node = %name, address = %request.address, "member allowed");
        Ok(format!(
            "{name} ({}) is a member; start its agent with a config that lists every peer",
            request.address
        ))
    }

    /// `pgfm disallow-node NAME [--force]`: the node leaves the voters and the cluster
    /// forgets it; refused for the primary, or when the others would not keep a majority
    /// up, unless forced.
    pub(super) async fn disallow(
        &self,
        request: pgfm_api::DisallowRequest,
    ) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .disallow_node(&request.name, request.force)
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        let refuse = |why: String| Err(Refusal::Refused(why));
        let name = &request.name;
        let voters = self.raft.voters();
        if !voters.iter().any(|(n, _)| n == name) {
            return refuse(format!(
                "{name} is not a member (the members are {})",
                voters
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let state = self.raft.state();
        if state.primary.as_deref() == Some(name.as_str()) && !request.force {
            return refuse(format!(
                "{name} is the primary: switch over first (pgfm switchover), or add --force"
            ));
        }
        let status = self.local_status(Vec::new());
        let remaining: Vec<&str> = voters
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n != name)
            .collect();
        let up = status
            .nodes
            .iter()
            .filter(|n| remaining.contains(&n.name.as_str()) && n.agent == pgfm_api::Up::Up)
            .count();
        if up * 2 <= remaining.len() && !request.force {
            return refuse(format!(
                "without {name}, only {up} of the {} remaining members are up: the cluster would \
                 have no majority; bring members back first, or add --force",
                remaining.len()
            ));
        }
        if *name == self.config.name && !request.force {
            return refuse(format!(
                "{name} is the coordinator answering this request: run it on another member, or add --force"
            ));
        }
        if remaining.len() < 3 {
            tracing::warn!(node = %name, "fewer than three voting members remain: the cluster cannot fail over safely");
        }
        // Forget it first, while it still receives the log: its agent then learns that it
        // was disallowed instead of carrying on as if nothing happened.
        self.commit(Command::RemoveMember { name: name.clone() })
            .await?;
        if let Err(e) = self.raft.remove_voter(name).await {
            return self
                .retry_elsewhere(e, || async {
                    self.coordinator_client()
                        .await?
                        .ok_or_else(|| {
                            Refusal::Unavailable("the coordinator changed twice".into())
                        })?
                        .disallow_node(&request.name, request.force)
                        .await
                        .map(|m| m.message)
                        .map_err(forwarded)
                })
                .await;
        }
        tracing::warn!(node = %name, "member disallowed");
        Ok(format!(
            "{name} is no longer a member; its agent is refused from now on"
        ))
    }
}

impl Agent {
    /// `pgfm stop-cluster`: pause (so that no one fails over while the agents go), stop
    /// every other agent, then this one. PostgreSQL keeps running everywhere.
    pub(super) async fn stop_all(&self) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .stop_cluster()
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        self.commit(Command::SetPaused { paused: true }).await?;
        let mut stopped = Vec::new();
        let mut unreachable = Vec::new();
        for (name, address) in self.raft.voters() {
            if name == self.config.name {
                continue;
            }
            match self.client(&address).stop_agent().await {
                Ok(_) => stopped.push(name),
                Err(e) => unreachable.push(format!("{name} ({e})")),
            }
        }
        stopped.push(self.config.name.clone());
        self.stop_soon();
        tracing::warn!(stopped = %stopped.join(","), "stop-cluster");
        let mut message = format!(
            "stopped the agents of {}; PostgreSQL keeps running; the cluster is paused: run pgfm \
             resume once the agents are back",
            stopped.join(", ")
        );
        if !unreachable.is_empty() {
            message.push_str(&format!("; not reached: {}", unreachable.join(", ")));
        }
        Ok(message)
    }

    /// Stop this agent shortly (after the HTTP answer is on its way).
    pub(super) fn stop_soon(&self) {
        tracing::warn!("stopping this agent on request (PostgreSQL keeps running)");
        self.shutdown.notify_one();
    }
}

impl Agent {
    /// A membership change interrupted by a change of coordinator is handed to the new
    /// coordinator (it checks the request again; every step is idempotent).
    async fn retry_elsewhere<F, Fut>(
        &self,
        error: pgfm_coord::MembershipError,
        forward: F,
    ) -> Result<String, Refusal>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<String, Refusal>>,
    {
        let pgfm_coord::MembershipError::NotCoordinator = error else {
            return Err(Refusal::Unavailable(error.to_string()));
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let elected = self
                .raft
                .coordinator()
                .is_some_and(|c| c != self.config.name);
            if elected {
                return forward().await;
            }
            if std::time::Instant::now() > deadline {
                return Err(Refusal::Unavailable(
                    "the coordinator changed during the membership change and no new one was \
                     elected within 5 s: run the command again"
                        .into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// How a lost standby is handled, for messages.
fn floor(minimum: usize, standbys: usize) -> String {
    if minimum >= standbys {
        " (strict: never fewer)".to_string()
    } else if minimum == 0 {
        " (fewer when standbys are lost, down to none)".to_string()
    } else {
        format!(" (fewer when standbys are lost, down to {minimum})")
    }
}
