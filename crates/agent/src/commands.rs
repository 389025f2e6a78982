//! Operator commands that change the cluster (switchover, ...): checked by the coordinator
//! against what it sees (the checks are core's, `pgfm_core::operator`), refused with the
//! reason and nothing changed, else committed in the Raft log for the decision engine to
//! carry out. A non-coordinator agent forwards them to the coordinator.

use pgfm_api::{ApiError, Refusal, SwitchoverRequest, SwitchoverStarted};
use pgfm_coord::{Coordinator, ProposeError};
use pgfm_core::operator::{self, PromotePlan};
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

/// A refusal of core's checks, as the API answers it (409, its message as it is).
fn refused(refusal: operator::Refusal) -> Refusal {
    Refusal::Refused(refusal.to_string())
}

impl Agent {
    pub(super) async fn start_switchover(
        &self,
        request: SwitchoverRequest,
    ) -> Result<SwitchoverStarted, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client.switchover(request.to).await.map_err(forwarded);
        }
        let view = self.view();
        let handover = operator::check_switchover(&view, self.now_ms(), request.to.as_deref())
            .map_err(refused)?;
        self.commit(handover.command()).await?;
        let operator::Handover {
            from,
            to,
            generation,
            ..
        } = handover;
        tracing::warn!(%generation, %from, %to, "switchover requested");
        Ok(SwitchoverStarted {
            from,
            to,
            generation: generation.0,
        })
    }
}

impl Agent {
    /// `pgfm maintenance NODE on|off`: checked by core (`operator::check_maintenance`) and
    /// committed; for the primary the same entry starts the switchover away from it.
    pub(super) async fn change_maintenance(
        &self,
        request: pgfm_api::MaintenanceRequest,
    ) -> Result<pgfm_api::MaintenanceStarted, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client.maintenance(&request).await.map_err(forwarded);
        }
        let view = self.view();
        let ask = operator::MaintenanceAsk {
            node: &request.node,
            on: request.on,
            keep_running: request.keep_running,
            force: request.force,
            by: &request.by,
            at_unix_ms: self.clock.wall_clock_ms(),
        };
        let plan = operator::check_maintenance(&view, self.now_ms(), &ask).map_err(refused)?;
        self.commit(plan.command).await?;
        let node = &request.node;
        let generation = view.state.generation;
        if !request.on {
            tracing::warn!(%generation, %node, by = %request.by, "maintenance ended");
            return Ok(pgfm_api::MaintenanceStarted {
                message: format!(
                    "{node} is out of maintenance: it starts as a standby (rewound if it has \
                     to be), streams, and takes its place in failover and synchronous \
                     replication again"
                ),
                switchover: None,
            });
        }
        tracing::warn!(%generation, %node, by = %request.by, keep_running = request.keep_running, "maintenance started");
        let stays = if request.keep_running {
            "its PostgreSQL keeps running, out of failover and synchronous replication"
        } else {
            "its PostgreSQL is stopped once no synchronous rule counts on it, and stays \
             stopped (agent restarts and reboots included)"
        };
        Ok(match plan.handover {
            Some(operator::Handover { from, to, .. }) => pgfm_api::MaintenanceStarted {
                message: format!(
                    "{node} is under maintenance: it hands over to {to} first, then {stays}"
                ),
                switchover: Some(pgfm_api::SwitchoverStarted {
                    from,
                    to,
                    generation: generation.0,
                }),
            },
            None => pgfm_api::MaintenanceStarted {
                message: format!("{node} is under maintenance: {stays}"),
                switchover: None,
            },
        })
    }

    /// `pgfm switchover --at TIME`: checked by core (`operator::check_schedule_switchover`)
    /// and committed; the coordinator starts it when the time comes.
    pub(super) async fn schedule(
        &self,
        request: pgfm_api::ScheduleRequest,
    ) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .schedule_switchover(&request)
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        let view = self.view();
        let command = operator::check_schedule_switchover(
            &view,
            request.at_unix_ms,
            request.to.as_deref(),
            &request.by,
        )
        .map_err(refused)?;
        self.commit(command).await?;
        let at = pgfm_core::types::utc(request.at_unix_ms);
        let to = request
            .to
            .as_deref()
            .unwrap_or("the standby pgfm switchover chooses then");
        tracing::warn!(generation = %view.state.generation, %at, %to, by = %request.by, "switchover scheduled");
        Ok(format!(
            "switchover to {to} scheduled at {at}: the coordinator starts it then, if the \
             cluster allows it (else it waits up to {} s, then drops it, saying why); pgfm \
             switchover --cancel cancels it",
            pgfm_core::decide::SCHEDULE_GRACE_MS / 1000
        ))
    }

    /// `pgfm reload [NODE ...]`: checked by core (`operator::check_reload`) and committed;
    /// each node's agent reloads its PostgreSQL.
    pub(super) async fn request_reload(
        &self,
        request: pgfm_api::ReloadRequest,
    ) -> Result<pgfm_api::NodesAsked, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client.reload(&request).await.map_err(forwarded);
        }
        let view = self.view();
        let (command, asked) = operator::check_reload(&view, &request.nodes).map_err(refused)?;
        self.commit(command).await?;
        let nodes: Vec<&str> = asked.keys().map(String::as_str).collect();
        tracing::warn!(generation = %view.state.generation, nodes = %nodes.join(","), by = %request.by, "reload asked");
        Ok(pgfm_api::NodesAsked {
            message: format!(
                "reload of {} committed: each agent reloads its PostgreSQL",
                nodes.join(", ")
            ),
            asked,
        })
    }

    /// `pgfm restart --in-place`, one node: checked by core (`operator::check_restart`) and
    /// committed; the node's agent stops PostgreSQL cleanly and starts it again.
    pub(super) async fn request_restart(
        &self,
        request: pgfm_api::RestartRequest,
    ) -> Result<pgfm_api::NodesAsked, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client.restart(&request).await.map_err(forwarded);
        }
        let view = self.view();
        let (command, count) = operator::check_restart(&view, &request.node).map_err(refused)?;
        self.commit(command).await?;
        let node = &request.node;
        tracing::warn!(generation = %view.state.generation, %node, by = %request.by, "restart in place asked");
        Ok(pgfm_api::NodesAsked {
            message: format!("restart of {node} in place committed: its agent restarts PostgreSQL"),
            asked: [(node.clone(), count)].into(),
        })
    }

    /// `pgfm restart ... --at TIME`: checked by core (`operator::check_schedule_restart`)
    /// and committed; the coordinator carries it out when the time comes.
    pub(super) async fn schedule_restart_at(
        &self,
        request: pgfm_api::ScheduleRestartRequest,
    ) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .schedule_restart(&request)
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        let view = self.view();
        let scheduled = pgfm_core::model::ScheduledRestart {
            at_unix_ms: request.at_unix_ms,
            nodes: request.nodes.clone(),
            pending: request.pending,
            in_place: request.in_place,
            by: request.by.clone(),
            done: Vec::new(),
            passed_over: Vec::new(),
            step: None,
            progress_unix_ms: request.at_unix_ms,
        };
        let command = operator::check_schedule_restart(&view, scheduled).map_err(refused)?;
        self.commit(command).await?;
        let at = pgfm_core::types::utc(request.at_unix_ms);
        tracing::warn!(generation = %view.state.generation, %at, nodes = ?request.nodes, pending = request.pending, in_place = request.in_place, by = %request.by, "restart scheduled");
        Ok(format!(
            "restart scheduled at {at}: the coordinator restarts each node then, one at a time \
             (pgfm cluster-status shows how far it got; a node not back within {} s stops it); \
             pgfm restart --cancel cancels it",
            pgfm_core::decide::restart_step_limit_ms(&view.settings) / 1000
        ))
    }

    /// `pgfm restart --cancel`: the scheduled restart ends (the node it was at out of
    /// maintenance).
    pub(super) async fn cancel_scheduled_restart(
        &self,
        request: pgfm_api::CancelRequest,
    ) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .cancel_restart(&request)
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        let state = self.raft.state();
        let at = self.clock.wall_clock_ms();
        let Some(command) = operator::cancel_scheduled_restart(&state, &request.by, at) else {
            return Err(refused(operator::Refusal::Log(
                pgfm_core::model::CommandError::NoScheduledRestart,
            )));
        };
        self.commit(command).await?;
        tracing::warn!(generation = %state.generation, by = %request.by, "scheduled restart cancelled");
        Ok("the scheduled restart is cancelled".to_string())
    }

    /// `pgfm set-tag NODE KEY=VALUE ...`: parsed and checked by core
    /// (`operator::check_tags`) and committed in one entry.
    pub(super) async fn change_tags(
        &self,
        request: pgfm_api::TagsRequest,
    ) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .set_tags(&request)
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        let tags = request
            .tags
            .iter()
            .map(|t| pgfm_core::tags::Tag::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Refusal::Refused)?;
        if tags.is_empty() {
            return Err(Refusal::Refused(
                "no tag given: pgfm set-tag NODE KEY=VALUE ...".to_string(),
            ));
        }
        let view = self.view();
        let command =
            operator::check_tags(&view, self.now_ms(), &request.node, &tags, request.force)
                .map_err(refused)?;
        self.commit(command).await?;
        let node = &request.node;
        let change = request.tags.join(" ");
        tracing::warn!(generation = %view.state.generation, %node, by = %request.by, tags = %change, "tags changed");
        Ok(format!("{node}: {change} committed"))
    }

    /// `pgfm reinit NODE`: checked by core (`operator::check_reinit`) and committed; the
    /// node's own agent stops it, moves its data directory aside and clones it afresh.
    pub(super) async fn start_reinit(
        &self,
        request: pgfm_api::ReinitRequest,
    ) -> Result<String, Refusal> {
        if let Some(client) = self.coordinator_client().await? {
            return client
                .reinit(&request)
                .await
                .map(|m| m.message)
                .map_err(forwarded);
        }
        let view = self.view();
        let command = operator::check_reinit(
            &view,
            &request.node,
            &request.by,
            self.clock.wall_clock_ms(),
        )
        .map_err(refused)?;
        self.commit(command).await?;
        let node = &request.node;
        tracing::warn!(generation = %view.state.generation, %node, by = %request.by, "re-clone requested");
        Ok(format!(
            "{node} is re-cloned: it leaves the synchronous standbys, stops, its data directory \
             is moved aside (data_dir.pgfm-old, replacing an older copy there), and it is \
             cloned afresh from the primary"
        ))
    }

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
        let at = self.clock.wall_clock_ms();
        if let Some(command) = operator::cancel_scheduled_command(&state, "the operator", at) {
            self.commit(command).await?;
            tracing::warn!(generation = %state.generation, "scheduled switchover cancelled by the operator");
            return Ok("the scheduled switchover is cancelled".to_string());
        }
        let sw = operator::check_cancel_switchover(&state)
            .map_err(refused)?
            .clone();
        self.commit(operator::cancel_command(&sw, self.clock.wall_clock_ms()))
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
            Ok(()) => Ok(()),
            Err(ProposeError::Refused(refused)) => Err(Refusal::Refused(refused.to_string())),
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
        let view = self.view();
        let plan =
            operator::check_promote(&view, self.now_ms(), request.to.as_deref(), request.force)
                .map_err(refused)?;
        self.commit(plan.command()).await?;
        Ok(match plan {
            PromotePlan::FinishSwitchover(sw) => {
                tracing::warn!(generation = %sw.generation, from = %sw.from, to = %sw.to, "operator forced the switchover under way");
                pgfm_api::PromoteStarted {
                    how: format!(
                        "the switchover from {} to {} is forced: {} is promoted without \
                         waiting for the old primary's final WAL",
                        sw.from, sw.to, sw.to
                    ),
                    from: Some(sw.from),
                    to: Some(sw.to),
                    generation: sw.generation.0,
                }
            }
            PromotePlan::HandOver(operator::Handover {
                from,
                to,
                generation,
                force,
                ..
            }) => {
                tracing::warn!(%generation, %from, %to, force, "operator promotion: hand-over requested");
                pgfm_api::PromoteStarted {
                    how: format!(
                        "{from} stops and hands over (fenced first), then {to} is promoted"
                    ),
                    from: Some(from),
                    to: Some(to),
                    generation: generation.0,
                }
            }
            PromotePlan::AfterLease {
                from,
                to,
                generation,
                force,
            } => {
                tracing::warn!(%generation, %from, ?to, force, "operator promotion requested: primary is gone");
                pgfm_api::PromoteStarted {
                    how: format!(
                        "{from} is not running: {} is promoted once its lease has expired",
                        to.as_deref().unwrap_or("the best standby")
                    ),
                    from: Some(from),
                    to,
                    generation: generation.0,
                }
            }
        })
    }

    pub(super) async fn change_priority(
        &self,
        request: pgfm_api::PriorityRequest,
    ) -> Result<String, Refusal> {
        let command =
            operator::check_set_priority(&self.raft.state(), &request.node, request.priority)
                .map_err(refused)?;
        self.commit(command).await?;
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
        let view = self.view();
        let (settings, command) = operator::check_set_synchronous(
            &view,
            &request.mode,
            request.standbys,
            request.minimum,
            request.strict,
        )
        .map_err(refused)?;
        self.commit(command).await?;
        let SyncSettings {
            mode,
            standbys,
            minimum,
        } = settings;
        tracing::warn!(generation = %view.state.generation, %mode, standbys, minimum, "synchronous replication set for the cluster");
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

    /// `pgfm show-config`: the settings in force, as this agent applied them.
    pub(super) fn show_settings(&self) -> pgfm_api::SettingsView {
        let state = self.raft.state();
        match &state.settings {
            Some(committed) => pgfm_api::SettingsView {
                revision: committed.revision,
                settings: committed.values.clone(),
                history: committed.history.clone(),
                file_differs: self.config.differences(&committed.values),
            },
            None => pgfm_api::SettingsView {
                revision: 0,
                settings: self.config.settings(),
                history: Vec::new(),
                file_differs: Vec::new(),
            },
        }
    }

    /// `pgfm edit-config`: new cluster-wide settings, checked (`operator::
    /// check_edit_settings`) and committed; every agent applies them from the next tick of
    /// the loop that reads each.
    pub(super) async fn change_settings(
        &self,
        request: pgfm_api::EditSettingsRequest,
    ) -> Result<String, Refusal> {
        let view = self.view();
        let command = operator::check_edit_settings(
            &view,
            request.base_revision,
            &request.settings,
            &request.by,
        )
        .map_err(refused)?;
        self.commit(command).await?;
        let before = view.settings;
        let changes: Vec<String> = request
            .settings
            .changes_from(&before)
            .iter()
            .map(|c| c.to_string())
            .collect();
        let revision = request.base_revision + 1;
        tracing::warn!(revision, by = %request.by, changes = %changes.join(", "), "cluster settings changed");
        Ok(format!(
            "settings revision {revision} committed ({}); every agent applies it now, no \
             restart needed",
            changes.join(", ")
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
        let name = &request.name;
        let command =
            operator::check_allow(&self.raft.voters(), name, &request.address).map_err(refused)?;
        self.commit(command).await?;
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
        let name = &request.name;
        let view = self.view();
        let command =
            operator::check_disallow(&view, self.now_ms(), name, request.force, &self.config.name)
                .map_err(refused)?;
        // The check found it among the voters: the others remain.
        if view.voters.len().saturating_sub(1) < 3 {
            tracing::warn!(node = %name, "fewer than three voting members remain: the cluster cannot fail over safely");
        }
        // Forget it first, while it still receives the log: its agent then learns that it
        // was disallowed instead of carrying on as if nothing happened.
        self.commit(command).await?;
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
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let elected = self
                .raft
                .coordinator()
                .is_some_and(|c| c != self.config.name);
            if elected {
                return forward().await;
            }
            if tokio::time::Instant::now() > deadline {
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
