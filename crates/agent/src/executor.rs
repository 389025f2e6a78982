//! The executor: the only place where the engine's actions turn into I/O. Every action is
//! logged with the generation it serves, can be retried (the next decision round does so),
//! and its failure becomes part of this node's report.

use std::time::{Duration, Instant};

use pgfm_coord::ProposeError;
use pgfm_core::decide::{Action, ClusterView, Forward};
use pgfm_core::model::SyncRule;
use pgfm_core::{ClusterState, Command, Generation};
use pgfm_postgres::{Postgres, Upstream};

use super::{lock, Agent};

/// Which loop's decisions are being carried out: each keeps its own notes (this node's
/// info, the coordinator's problems).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Local,
    Coordinator,
}

impl Agent {
    pub(super) async fn execute_all(&self, view: &ClusterView, part: Part, actions: Vec<Action>) {
        let mut notes = Vec::new();
        for action in actions {
            match action {
                Action::Hold { reason } | Action::ClusterHold { reason } => notes.push(reason),
                Action::Propose { command, forward } => {
                    if let Err(e) = self.propose(command, forward).await {
                        notes.push(e);
                    }
                }
                Action::MeasureWal {
                    members,
                    generation,
                } => self.measure_wal(&view.state, &members, generation).await,
                other => {
                    let result = self.act(&view.state, &other).await;
                    self.count_start(&other, &result);
                    // The next decision waits for a probe made after this action.
                    self.last_action_ms
                        .store(self.now_ms(), std::sync::atomic::Ordering::SeqCst);
                    self.probe_now.notify_one();
                    if let Err(e) = result {
                        let text = format!("{e:#}");
                        tracing::error!(generation = %view.state.generation, action = ?other, error = %text, "action failed");
                        notes.push(text);
                    }
                }
            }
        }
        let kept = match part {
            Part::Local => &self.notes,
            Part::Coordinator => &self.coordinator_notes,
        };
        let mut kept = lock(kept);
        if *kept != notes {
            for note in &notes {
                tracing::info!(generation = %view.state.generation, "holding: {note}");
            }
        }
        *kept = notes;
    }

    /// Fold a start's outcome into the count of failed starts in a row (the engine
    /// re-clones, once, or gives up after `start_attempts`). A start counts as failed only
    /// when the postmaster is gone (it exited during start-up): one still recovering past
    /// `start_timeout` is no failure. The decide loop resets the count once PostgreSQL
    /// answers.
    fn count_start(&self, action: &Action, result: &anyhow::Result<()>) {
        let mut record = lock(&self.starts);
        if matches!(action, Action::Reclone { .. }) {
            record.recloned = true;
        }
        let start = matches!(
            action,
            Action::StartPrimary { .. } | Action::StartStandby { .. }
        );
        let exited = self
            .postgres
            .as_ref()
            .is_some_and(|pg| pg.running_pid().is_none());
        if let (true, true, Err(e)) = (start, exited, result) {
            record.failures += 1;
            record.last_error = Some(format!("{e:#}"));
        }
    }

    /// Commit `command`, forwarded to the coordinator only when the engine allows it; a
    /// promotion first passes the fence hook, and a committed one is announced to the
    /// notification hook. `Err` says why a promotion was held back.
    async fn propose(&self, command: Command, forward: Forward) -> Result<(), String> {
        if let Command::Promote {
            node,
            generation,
            from,
            ..
        } = &command
        {
            if let Some(hook) = self.config.hooks.fence.clone() {
                let now = self.now_ms();
                let recent = lock(&self.fence_hook_failed_ms).is_some_and(|at| now < at + 5_000);
                if recent {
                    return Err("the fence hook refused the promotion: retrying shortly".into());
                }
                let event = super::hooks::Event {
                    name: "fence",
                    old_primary: from.as_deref(),
                    new_primary: Some(node),
                    generation: *generation,
                };
                if let Err(e) = self.run_hook("fence", &hook, &event).await {
                    *lock(&self.fence_hook_failed_ms) = Some(now);
                    tracing::error!(%generation, "{e}: promotion of {node} aborted");
                    return Err(format!("{e}: promotion of {node} aborted"));
                }
            }
        }
        let outcome = match forward {
            Forward::ToCoordinator => {
                pgfm_coord::Coordinator::propose(&self.raft, command.clone()).await
            }
            Forward::Never => self.raft.propose_local(command.clone()).await,
        };
        match outcome {
            Ok(()) => {
                let generation = self.raft_state().generation;
                tracing::info!(%generation, ?command, "committed");
                if let Command::Promote { node, from, .. } = &command {
                    self.notify(super::hooks::Event {
                        name: "promotion",
                        old_primary: from.as_deref(),
                        new_primary: Some(node),
                        generation,
                    })
                    .await;
                }
            }
            Err(ProposeError::Refused(refused)) => {
                tracing::warn!(?command, %refused, "proposal refused")
            }
            Err(ProposeError::NotCoordinator) => tracing::warn!(
                ?command,
                error = %"consensus error: this agent is no longer the coordinator: decision dropped",
                "proposal not committed"
            ),
            Err(e) => tracing::warn!(?command, error = %e, "proposal not committed"),
        }
        Ok(())
    }

    fn raft_state(&self) -> ClusterState {
        pgfm_coord::Coordinator::state(&self.raft)
    }

    fn upstream(&self, state: &ClusterState, name: &str) -> anyhow::Result<Upstream> {
        let member = state
            .members
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("upstream {name} is not a registered member"))?;
        match (&member.pg_host, member.pg_port) {
            (Some(host), Some(port)) => Ok(Upstream {
                name: name.to_string(),
                host: host.clone(),
                port,
            }),
            _ => anyhow::bail!("upstream {name} has no PostgreSQL address"),
        }
    }

    /// Carry out one action on the local PostgreSQL (or its VIP): each kind is a step below.
    async fn act(&self, state: &ClusterState, action: &Action) -> anyhow::Result<()> {
        let Some(pg) = &self.postgres else {
            anyhow::bail!("{action:?} on a node without PostgreSQL");
        };
        match action {
            Action::StartPrimary { generation } => self.start_primary(pg, state, *generation).await,
            Action::StartStandby {
                upstream,
                generation,
            } => self.start_standby(pg, state, upstream, *generation).await,
            Action::Clone {
                upstream,
                generation,
            } => {
                self.clone_and_start(pg, state, upstream, *generation, true)
                    .await
            }
            Action::Reclone {
                upstream,
                generation,
            } => {
                self.clone_and_start(pg, state, upstream, *generation, false)
                    .await
            }
            Action::Promote { generation } => self.promote_standby(pg, state, *generation).await,
            Action::Follow {
                upstream,
                generation,
            } => self.follow(pg, state, upstream, *generation).await,
            Action::Fence { generation, reason } => {
                self.fence(pg, state, *generation, reason).await
            }
            Action::StopToRewind { generation, reason } => {
                self.stop_to_rewind(pg, *generation, reason).await
            }
            Action::Rewind {
                upstream,
                generation,
            } => self.rewind(pg, state, upstream, *generation).await,
            Action::HandOver {
                to,
                generation,
                seq,
                force,
            } => self.hand_over(pg, to, *generation, *seq, *force).await,
            Action::DropSlots { .. } | Action::EnsureSlots { .. } => self.slots(pg, action).await,
            Action::SetSyncStandbys { rule, generation } => {
                self.set_sync_standbys(pg, rule, *generation).await
            }
            Action::TakeVip { generation } => self.take_vip(*generation).await,
            Action::ReleaseVip { generation, reason } => {
                self.release_vip(*generation, reason).await;
                Ok(())
            }
            // Carried out by `execute_all`: no I/O on the local PostgreSQL.
            Action::Propose { .. }
            | Action::MeasureWal { .. }
            | Action::Hold { .. }
            | Action::ClusterHold { .. } => Ok(()),
        }
    }

    /// What a long action is doing now, shown in this node's info while it runs (`None`:
    /// done).
    fn set_activity(&self, text: Option<String>) {
        *lock(&self.activity) = text;
    }

    /// Start PostgreSQL as the primary of `generation`, waiting for the committed
    /// synchronous standbys.
    async fn start_primary(
        &self,
        pg: &Postgres,
        state: &ClusterState,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        tracing::info!(%generation, "starting PostgreSQL as the primary");
        self.set_activity(Some(format!(
            "starting as primary of generation {generation}"
        )));
        // A primary (re)starts waiting for the committed synchronous standbys: an
        // asynchronous start would acknowledge commits a failover to them loses.
        pg.write_sync_conf(&state.committed_sync())?;
        let result = pg.start(None).await;
        self.set_activity(None);
        let pid = result?;
        lock(&self.db).crashed_at_ms = None;
        tracing::info!(%generation, pid, ms = started.elapsed().as_millis() as u64, "PostgreSQL is up as the primary");
        Ok(())
    }

    /// Start PostgreSQL as a standby streaming from `upstream`.
    async fn start_standby(
        &self,
        pg: &Postgres,
        state: &ClusterState,
        upstream: &str,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let up = self.upstream(state, upstream)?;
        tracing::info!(%generation, %upstream, "starting PostgreSQL as a standby");
        self.set_activity(Some(format!("starting as standby of {upstream}")));
        let result = pg.start(Some(&up)).await;
        self.set_activity(None);
        let pid = result?;
        lock(&self.db).crashed_at_ms = None;
        tracing::info!(%generation, %upstream, pid, "PostgreSQL is up as a standby");
        Ok(())
    }

    /// Fill the data directory with a base backup of `upstream` — the empty one (`fresh`),
    /// or a fresh one with the old moved aside — then start as its standby.
    async fn clone_and_start(
        &self,
        pg: &Postgres,
        state: &ClusterState,
        upstream: &str,
        generation: Generation,
        fresh: bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let up = self.upstream(state, upstream)?;
        tracing::info!(%generation, %upstream, "{}", if fresh { "cloning the empty data directory" } else { "rewind failed: moving the data directory aside and cloning afresh" });
        self.set_activity(Some(format!("cloning from {upstream} (pg_basebackup)")));
        let cloned = if fresh {
            pg.clone_from(&up).await
        } else {
            pg.reclone(&up).await
        };
        if cloned.is_ok() {
            self.set_activity(Some(format!("starting as standby of {upstream}")));
        }
        let result = match cloned {
            Ok(()) => pg.start(Some(&up)).await.map(|_| ()),
            Err(e) => Err(e),
        };
        self.set_activity(None);
        result?;
        lock(&self.rewind_failed).take();
        self.resume_requested
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(%generation, %upstream, ms = started.elapsed().as_millis() as u64, "cloned and streaming");
        Ok(())
    }

    /// Promote the local standby (its promotion is committed), once no other host answers
    /// for the VIP; then take the VIP at once and run the promotion hooks.
    async fn promote_standby(
        &self,
        pg: &Postgres,
        state: &ClusterState,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        tracing::warn!(%generation, "promoting this standby (committed in the Raft log first)");
        self.set_activity(Some(format!(
            "promoting to primary of generation {generation}"
        )));
        let result = match self.wait_vip_free(generation).await {
            Ok(()) => pg.promote().await,
            Err(e) => Err(e),
        };
        self.set_activity(None);
        result?;
        tracing::warn!(%generation, ms = started.elapsed().as_millis() as u64, "promoted: this node is the primary");
        // Clients wait for the VIP: take it now rather than at the next decision.
        if let Err(e) = self.take_vip(generation).await {
            tracing::error!(%generation, error = %format!("{e:#}"), "adding the virtual IP failed (retried at the next decision)");
        }
        let old = state.history.last().and_then(|p| p.from.clone());
        let event = || super::hooks::Event {
            name: "promoted",
            old_primary: old.as_deref(),
            new_primary: Some(&self.config.name),
            generation,
        };
        if let Some(hook) = self.config.hooks.post_promotion.clone() {
            if let Err(e) = self.run_hook("post_promotion", &hook, &event()).await {
                tracing::warn!(%generation, "{e}");
            }
        }
        self.notify(event()).await;
        Ok(())
    }

    /// Point the running standby at the new primary `upstream` (reload, no restart).
    async fn follow(
        &self,
        pg: &Postgres,
        state: &ClusterState,
        upstream: &str,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let up = self.upstream(state, upstream)?;
        pg.follow(&up).await?;
        tracing::info!(%generation, %upstream, "now following the new primary (reloaded, no restart)");
        Ok(())
    }

    /// Stop PostgreSQL at once (it may take writes it must not), then tell the notification
    /// hook.
    async fn fence(
        &self,
        pg: &Postgres,
        state: &ClusterState,
        generation: Generation,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.fence_now(pg, generation, reason).await?;
        self.notify(super::hooks::Event {
            name: "fenced",
            old_primary: Some(&self.config.name),
            new_primary: state.primary.as_deref(),
            generation,
        })
        .await;
        Ok(())
    }

    /// Stop the diverged standby and mark its data directory for a rewind.
    async fn stop_to_rewind(
        &self,
        pg: &Postgres,
        generation: Generation,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::error!(%generation, %reason, "stopping this standby to rewind it");
        self.set_activity(Some(format!("stopping to rewind: {reason}")));
        lock(&self.db).expect_down = true;
        let stopped = pg.stop_to_rewind().await;
        self.set_activity(None);
        stopped?;
        tracing::warn!(%generation, "stopped and marked for a rewind");
        Ok(())
    }

    /// Rejoin a former primary: `pg_rewind` against the new primary `upstream`, then start
    /// as its standby. A failed rewind is remembered for the generation (the engine then
    /// re-clones or holds, per `rejoin`).
    async fn rewind(
        &self,
        pg: &Postgres,
        state: &ClusterState,
        upstream: &str,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let up = self.upstream(state, upstream)?;
        tracing::info!(%generation, %upstream, "rejoining: pg_rewind against the new primary");
        self.set_activity(Some(format!("rewinding against {upstream}")));
        let rewound = pg.rewind(&up).await;
        if let Err(e) = &rewound {
            *lock(&self.rewind_failed) = Some((generation, format!("{e:#}")));
        }
        let result = match rewound {
            Ok(()) => {
                self.set_activity(Some(format!("starting as standby of {upstream}")));
                pg.start(Some(&up)).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        self.set_activity(None);
        result?;
        lock(&self.db).crashed_at_ms = None;
        self.resume_requested
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(%generation, %upstream, ms = started.elapsed().as_millis() as u64, "rewound and streaming");
        Ok(())
    }

    /// Switchover: release the VIP, stop PostgreSQL cleanly (bounded; immediate when
    /// `force`), and commit the hand-over with the final WAL position, which releases the
    /// lease.
    async fn hand_over(
        &self,
        pg: &Postgres,
        to: &str,
        generation: Generation,
        seq: u64,
        force: bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        tracing::warn!(%generation, %to, "switchover: stopping PostgreSQL cleanly to hand over");
        self.set_activity(Some(format!("switchover: handing over to {to}")));
        self.release_vip(generation, "switchover").await;
        lock(&self.db).expect_down = true;
        let stopped = pg
            .stop_for_handover(self.config.failover.switchover_timeout, force)
            .await;
        self.set_activity(None);
        let stop = stopped?;
        let final_lsn = stop.final_lsn;
        let command = Command::HandOver {
            node: self.config.name.clone(),
            generation,
            final_lsn,
            seq,
            unclean: !stop.clean,
        };
        match pgfm_coord::Coordinator::propose(&self.raft, command).await {
            Ok(()) => {
                tracing::warn!(%generation, %to, %final_lsn, ms = started.elapsed().as_millis() as u64, "switchover: stopped cleanly and handed over")
            }
            Err(ProposeError::Refused(refused)) => {
                anyhow::bail!("hand-over refused: {refused}")
            }
            Err(e) => anyhow::bail!("hand-over not committed: {e}"),
        }
        Ok(())
    }

    /// Create (`EnsureSlots`) or drop (`DropSlots`) replication slots on the local primary.
    async fn slots(&self, pg: &Postgres, action: &Action) -> anyhow::Result<()> {
        match action {
            Action::DropSlots { slots, generation } => {
                pg.drop_slots(slots).await?;
                tracing::info!(%generation, slots = %slots.join(","), "replication slots of departed nodes dropped");
            }
            Action::EnsureSlots { slots, generation } => {
                pg.ensure_slots(slots).await?;
                tracing::info!(%generation, slots = %slots.join(","), "replication slots created");
            }
            _ => {}
        }
        Ok(())
    }

    /// Make the local primary's commits wait for `rule` (reload, wait until in force), and
    /// note the WAL position of the switch.
    async fn set_sync_standbys(
        &self,
        pg: &Postgres,
        rule: &SyncRule,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let lsn = pg.set_sync_standbys(rule).await?;
        *lock(&self.sync_switch) = Some((generation, lsn));
        if rule.is_async() {
            tracing::warn!(%generation, %lsn, "synchronous replication off: commits no longer wait for a standby");
        } else {
            tracing::warn!(%generation, %lsn, %rule, "synchronous standbys set: commits wait for them");
        }
        Ok(())
    }

    /// Ask the agents of `members` for their WAL position, read from their PostgreSQL now
    /// (all at once, each within 500 ms: a local query; a host that is gone must not hold
    /// the failover up for long), kept for the next decisions with the time the question was
    /// sent. A node whose agent or database does not answer is not reached this round.
    async fn measure_wal(&self, state: &ClusterState, members: &[String], generation: Generation) {
        let started = self.now_ms();
        let mut readings = tokio::task::JoinSet::new();
        for name in members {
            let Some(member) = state.members.get(name) else {
                continue;
            };
            let client =
                pgfm_api::ApiClient::new(&member.address, &self.token, Duration::from_millis(500));
            let name = name.clone();
            readings.spawn(async move { (name, client.wal_position().await) });
        }
        let readings = readings.join_all().await;
        let mut measured = lock(&self.measured);
        for (name, read) in readings {
            match read {
                Ok(answer) => {
                    let position = answer.position.filter(|_| answer.in_recovery);
                    tracing::info!(%generation, node = %name, position = ?position, "WAL position measured");
                    measured.insert(
                        name,
                        pgfm_core::decide::Measured {
                            at_ms: started,
                            position,
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(%generation, node = %name, error = %e, "WAL position not measured");
                }
            }
        }
    }
}
