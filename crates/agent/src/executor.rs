//! The executor: the only place where the engine's actions turn into I/O. Every action is
//! logged with the generation it serves, can be retried (the next decision round does so),
//! and its failure becomes part of this node's report. What an action did that later
//! decisions must know comes back as values (`memory::Outcome`), which the loop that decided
//! it folds into its memory: the executor writes nothing the decisions read, only
//! `activity`, the live text of a long action for this node's info.

use std::time::Duration;
use tokio::time::Instant;

use pgfm_coord::ProposeError;
use pgfm_core::decide::{Action, ClusterView, Forward, Measured};
use pgfm_core::model::SyncRule;
use pgfm_core::{ClusterState, Command, Generation, Lsn};
use pgfm_postgres::{Database, HbaPeer, InitdbPlan, StartAs, Upstream};

use super::memory::{Memory, Outcome};
use super::{lock, Agent};

/// What carrying out one action came to.
#[derive(Debug, Default)]
pub(super) struct Done {
    /// What it did that later decisions must know, for the loop that decided it to fold
    /// into its `Memory`.
    pub outcomes: Vec<Outcome>,
    /// Why it did not happen, or the engine's reason to hold: this node's info (or the
    /// coordinator's problems) until the next round.
    pub note: Option<String>,
    /// It acted on the local PostgreSQL (whether it succeeded or not): the next decision
    /// waits for a probe made after it.
    pub acted: bool,
}

impl Agent {
    /// Carry out one of the engine's actions. `memory` is the deciding loop's, read only for
    /// the fence hook's back-off: what the action did comes back as `Done::outcomes`.
    pub(super) async fn execute(
        &self,
        view: &ClusterView,
        action: Action,
        memory: &Memory,
    ) -> Done {
        let mut done = Done::default();
        match action {
            Action::Hold { reason } | Action::ClusterHold { reason } => done.note = Some(reason),
            Action::Propose { command, forward } => {
                let proposed = self.propose(command, forward, memory, &mut done.outcomes);
                done.note = proposed.await.err();
            }
            Action::MeasureWal {
                members,
                generation,
            } => done.outcomes = self.measure_wal(&view.state, &members, generation).await,
            other => {
                let result = self.act(&view.state, &other, &mut done.outcomes).await;
                done.acted = true;
                if let Err(e) = result {
                    let text = format!("{e:#}");
                    tracing::error!(generation = %view.state.generation, action = %other, error = %text, "action failed");
                    done.note = Some(text);
                }
            }
        }
        done
    }

    /// Commit `command`, forwarded to the coordinator only when the engine allows it; a
    /// promotion first passes the fence hook, and a committed one is announced to the
    /// notification hook. `Err` says why a promotion was held back.
    async fn propose(
        &self,
        command: Command,
        forward: Forward,
        memory: &Memory,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), String> {
        if let Command::Promote {
            node,
            generation,
            from,
            ..
        } = &command
        {
            if let Some(hook) = self.config.hooks.fence.clone() {
                let now = self.now_ms();
                // The hook's own words stay in status while promotions wait for its next run.
                if let Some((why, in_ms)) = memory.fence_hook_refused_recently(now) {
                    return Err(format!(
                        "{why}: promotion of {node} aborted; the hook runs again in {} s",
                        in_ms.div_ceil(1000)
                    ));
                }
                let event = super::hooks::Event {
                    name: "fence",
                    old_primary: from.as_deref(),
                    new_primary: Some(node),
                    generation: *generation,
                };
                if let Err(e) = self.run_hook("fence", &hook, &event).await {
                    outcomes.push(Outcome::FenceHookRefused {
                        at_ms: now,
                        why: e.to_string(),
                    });
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
                with_slot: pgfm_core::decide::slot_of(state, &self.config.name, name).is_some(),
            }),
            _ => anyhow::bail!("upstream {name} has no PostgreSQL address"),
        }
    }

    /// Carry out one action on the local PostgreSQL (or its VIP): each kind is a step below.
    /// What it did that later decisions must know is pushed to `outcomes`, whether it
    /// succeeded or not.
    async fn act(
        &self,
        state: &ClusterState,
        action: &Action,
        outcomes: &mut Vec<Outcome>,
    ) -> anyhow::Result<()> {
        let Some(pg) = self.postgres.as_deref() else {
            anyhow::bail!("{action}: this node has no PostgreSQL");
        };
        match action {
            Action::StartPrimary { generation } => {
                let result = self.start_primary(pg, state, *generation, outcomes).await;
                outcomes.extend(failed_start(pg, &result));
                result
            }
            Action::StartToPromote { generation } => {
                let result = self.start_to_promote(pg, *generation, outcomes).await;
                outcomes.extend(failed_start(pg, &result));
                result
            }
            Action::StartStandby {
                upstream,
                generation,
            } => {
                let starting = self.start_standby(pg, state, upstream, *generation, outcomes);
                let result = starting.await;
                outcomes.extend(failed_start(pg, &result));
                result
            }
            Action::Initdb { generation } => self.initialise(pg, state, *generation).await,
            Action::Clone {
                upstream,
                generation,
            } => {
                self.clone_and_start(pg, state, upstream, *generation, true, outcomes)
                    .await
            }
            Action::Reclone {
                upstream,
                generation,
            } => {
                let cloning =
                    self.clone_and_start(pg, state, upstream, *generation, false, outcomes);
                let result = cloning.await;
                outcomes.push(Outcome::Recloned);
                result
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
            Action::MoveAside { generation, reason } => {
                pg.move_aside()?;
                tracing::warn!(%generation, %reason, "data directory moved aside (data_dir.pgfm-old): the empty one is cloned next");
                Ok(())
            }
            Action::StopCleanly { generation, reason } => {
                self.stop_for_maintenance(pg, *generation, reason).await
            }
            Action::Rewind {
                upstream,
                generation,
            } => {
                self.rewind(pg, state, upstream, *generation, outcomes)
                    .await
            }
            Action::HandOver {
                to,
                generation,
                seq,
                force,
            } => self.hand_over(pg, to, *generation, *seq, *force).await,
            Action::DropSlots { .. } | Action::EnsureSlots { .. } => self.slots(pg, action).await,
            Action::WriteParameters {
                parameters,
                upstream,
                generation,
            } => {
                pg.set_parameters(parameters.clone());
                self.rewrite_conf(pg, state, upstream.as_deref()).await?;
                let names: Vec<String> =
                    parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                tracing::warn!(%generation, parameters = %names.join(", "), "PostgreSQL parameters written into pgfm.conf and reloaded");
                Ok(())
            }
            Action::RestartInPlace { count, generation } => {
                tracing::warn!(%generation, count, "stopping PostgreSQL to restart it in place (pgfm restart --in-place); it starts again next");
                self.set_activity(Some("stopping PostgreSQL to restart it".to_string()));
                self.expect_db_down();
                let stopped = pg.stop().await;
                self.set_activity(None);
                outcomes.push(Outcome::Restarted { count: *count });
                stopped
            }
            Action::Reload {
                count,
                upstream,
                generation,
            } => {
                self.rewrite_conf(pg, state, upstream.as_deref()).await?;
                outcomes.push(Outcome::Reloaded { count: *count });
                tracing::warn!(%generation, count, "PostgreSQL's configuration reloaded (pgfm reload)");
                Ok(())
            }
            Action::SetSyncStandbys { rule, generation } => {
                let lsn = self.set_sync_standbys(pg, rule, *generation).await?;
                outcomes.push(Outcome::SyncSwitched {
                    generation: *generation,
                    lsn,
                });
                Ok(())
            }
            Action::TakeVip { generation } => self.take_vip(*generation).await,
            Action::ReleaseVip { generation, reason } => {
                self.release_vip(*generation, reason).await;
                Ok(())
            }
            // Carried out by `execute`: no I/O on the local PostgreSQL.
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
        pg: &dyn Database,
        state: &ClusterState,
        generation: Generation,
        outcomes: &mut Vec<Outcome>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        tracing::info!(%generation, "starting PostgreSQL as the primary");
        self.set_activity(Some(format!(
            "starting as primary of generation {generation}"
        )));
        // A primary (re)starts waiting for the committed synchronous standbys: an
        // asynchronous start would acknowledge commits a failover to them loses.
        pg.write_sync_conf(&state.committed_sync().for_primary(&self.config.name))?;
        let result = pg.start(StartAs::Primary).await;
        self.set_activity(None);
        let pid = result?;
        outcomes.push(Outcome::Started);
        tracing::info!(%generation, pid, ms = started.elapsed().as_millis() as u64, "PostgreSQL is up as the primary");
        Ok(())
    }

    /// Start PostgreSQL, the primary of `generation`, as a standby with no upstream: its
    /// promotion was cut off before it ended, and the promotion (the next decision) ends
    /// its recovery on a new timeline.
    async fn start_to_promote(
        &self,
        pg: &dyn Database,
        generation: Generation,
        outcomes: &mut Vec<Outcome>,
    ) -> anyhow::Result<()> {
        tracing::warn!(%generation, "the data directory's recovery had not ended (a promotion cut off): starting it as a standby, to be promoted");
        self.set_activity(Some(format!(
            "starting as a standby to be promoted to primary of generation {generation}"
        )));
        let result = pg.start(StartAs::ToPromote).await;
        self.set_activity(None);
        let pid = result?;
        outcomes.push(Outcome::Started);
        tracing::info!(%generation, pid, "PostgreSQL is up as a standby, to be promoted");
        Ok(())
    }

    /// Start PostgreSQL as a standby streaming from `upstream`.
    async fn start_standby(
        &self,
        pg: &dyn Database,
        state: &ClusterState,
        upstream: &str,
        generation: Generation,
        outcomes: &mut Vec<Outcome>,
    ) -> anyhow::Result<()> {
        let up = self.upstream(state, upstream)?;
        tracing::info!(%generation, %upstream, "starting PostgreSQL as a standby");
        self.set_activity(Some(format!("starting as standby of {upstream}")));
        let result = self.start_unless_held(pg, &up).await;
        self.set_activity(None);
        if result? {
            outcomes.push(Outcome::Started);
            tracing::info!(%generation, %upstream, "PostgreSQL is up as a standby");
        }
        Ok(())
    }

    /// Start PostgreSQL as a standby of `up`, unless this node went under maintenance
    /// since the start was decided (a rewind or a clone before it takes a while): it is
    /// then left stopped, as every decision from now on keeps it (`decide::maintenance`).
    /// Whether it started.
    async fn start_unless_held(&self, pg: &dyn Database, up: &Upstream) -> anyhow::Result<bool> {
        let held = self
            .raft
            .maintenance_of(&self.config.name)
            .filter(|m| m.keeps_stopped());
        if let Some(m) = held {
            tracing::warn!(by = %m.by, "under maintenance since this start was decided: PostgreSQL is left stopped");
            return Ok(false);
        }
        pg.start(StartAs::Standby(up)).await.map(|_| true)
    }

    /// This node was chosen to initialise the empty cluster: initdb, the roles and
    /// pg_hba.conf for every member (`Postgres::initialise`). The coordinator then makes it
    /// the first primary, and it starts once it holds the lease.
    async fn initialise(
        &self,
        pg: &dyn Database,
        state: &ClusterState,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let plan = initdb_plan(&self.config, state);
        tracing::info!(%generation, peers = plan.peers.len(), "every data directory is empty and this node was chosen: initialising the cluster (initdb)");
        self.set_activity(Some(format!(
            "initialising the cluster for generation {generation} (initdb)"
        )));
        let result = pg.initialise(&plan).await;
        self.set_activity(None);
        result?;
        tracing::info!(%generation, ms = started.elapsed().as_millis() as u64, "cluster initialised: waiting to be made its first primary");
        Ok(())
    }

    /// Fill the data directory with a base backup of `upstream` — the empty one (`fresh`),
    /// or a fresh one with the old moved aside — then start as its standby.
    async fn clone_and_start(
        &self,
        pg: &dyn Database,
        state: &ClusterState,
        upstream: &str,
        generation: Generation,
        fresh: bool,
        outcomes: &mut Vec<Outcome>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let up = self.upstream(state, upstream)?;
        let what = if fresh {
            "cloning the empty data directory"
        } else {
            "rewind failed: moving the data directory aside and cloning afresh"
        };
        tracing::info!(%generation, "{what}: cloning from {upstream}");
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
            Ok(()) => self.start_unless_held(pg, &up).await.map(|_| ()),
            Err(e) => Err(e),
        };
        self.set_activity(None);
        result?;
        outcomes.push(Outcome::Rejoined);
        tracing::info!(%generation, %upstream, ms = started.elapsed().as_millis() as u64, "cloned and streaming");
        Ok(())
    }

    /// Promote the local standby (its promotion is committed), once no other host answers
    /// for the VIP; then take the VIP at once and run the promotion hooks.
    async fn promote_standby(
        &self,
        pg: &dyn Database,
        state: &ClusterState,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        tracing::warn!(%generation, "promoting this standby (committed in the Raft log first)");
        self.set_activity(Some(format!(
            "promoting to primary of generation {generation}"
        )));
        let result = match self.wait_vip_free(generation).await {
            Ok(()) => pg.promote(state.highest_timeline).await,
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
        pg: &dyn Database,
        state: &ClusterState,
        upstream: &str,
        generation: Generation,
    ) -> anyhow::Result<()> {
        let up = self.upstream(state, upstream)?;
        pg.follow(&up).await?;
        tracing::info!(%generation, "now streaming from {upstream} (reloaded, no restart)");
        Ok(())
    }

    /// Stop PostgreSQL at once (it may take writes it must not), then tell the notification
    /// hook.
    async fn fence(
        &self,
        pg: &dyn Database,
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
        pg: &dyn Database,
        generation: Generation,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::error!(%generation, %reason, "stopping this standby to rewind it");
        self.set_activity(Some(format!("stopping to rewind: {reason}")));
        self.expect_db_down();
        let stopped = pg.stop_to_rewind().await;
        self.set_activity(None);
        stopped?;
        tracing::warn!(%generation, "stopped and marked for a rewind");
        Ok(())
    }

    /// Write `pgfm.conf` again with the parameters in force (a standby's pointing at
    /// `upstream`, where it streams from) and reload; those that need a restart then show
    /// as pending.
    async fn rewrite_conf(
        &self,
        pg: &dyn Database,
        state: &ClusterState,
        upstream: Option<&str>,
    ) -> anyhow::Result<()> {
        let upstream = match upstream {
            Some(name) => Some(self.upstream(state, name)?),
            None => None,
        };
        pg.write_parameters(upstream.as_ref()).await
    }

    /// Stop the standby cleanly for maintenance; the engine keeps it stopped.
    async fn stop_for_maintenance(
        &self,
        pg: &dyn Database,
        generation: Generation,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(%generation, %reason, "stopping PostgreSQL for maintenance");
        self.set_activity(Some("stopping PostgreSQL for maintenance".to_string()));
        self.expect_db_down();
        let stopped = pg.stop().await;
        self.set_activity(None);
        stopped?;
        tracing::warn!(%generation, "PostgreSQL stopped for maintenance: it stays stopped until pgfm maintenance off");
        Ok(())
    }

    /// Rejoin a former primary: `pg_rewind` against the new primary `upstream`, then start
    /// as its standby. A failed rewind is remembered for the generation (the engine then
    /// re-clones or holds, per `rejoin`).
    async fn rewind(
        &self,
        pg: &dyn Database,
        state: &ClusterState,
        upstream: &str,
        generation: Generation,
        outcomes: &mut Vec<Outcome>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let up = self.upstream(state, upstream)?;
        tracing::info!(%generation, %upstream, "rejoining: pg_rewind against the new primary");
        self.set_activity(Some(format!("rewinding against {upstream}")));
        let rewound = pg.rewind(&up).await;
        if let Err(e) = &rewound {
            outcomes.push(Outcome::RewindFailed {
                generation,
                error: format!("{e:#}"),
            });
        }
        let result = match rewound {
            Ok(()) => {
                self.set_activity(Some(format!("starting as standby of {upstream}")));
                self.start_unless_held(pg, &up).await
            }
            Err(e) => Err(e),
        };
        self.set_activity(None);
        if result? {
            outcomes.push(Outcome::Started);
        }
        outcomes.push(Outcome::Rejoined);
        tracing::info!(%generation, %upstream, ms = started.elapsed().as_millis() as u64, "rewound and streaming");
        Ok(())
    }

    /// Switchover: release the VIP, stop PostgreSQL cleanly (bounded; immediate when
    /// `force`), and commit the hand-over with the final WAL position, which releases the
    /// lease.
    async fn hand_over(
        &self,
        pg: &dyn Database,
        to: &str,
        generation: Generation,
        seq: u64,
        force: bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        tracing::warn!(%generation, %to, "switchover: stopping PostgreSQL cleanly to hand over");
        self.set_activity(Some(format!("switchover: handing over to {to}")));
        self.release_vip(generation, "switchover").await;
        self.expect_db_down();
        let stopped = pg
            .stop_for_handover(
                Duration::from_millis(self.settings().switchover_timeout_ms),
                force,
            )
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
    async fn slots(&self, pg: &dyn Database, action: &Action) -> anyhow::Result<()> {
        match action {
            Action::DropSlots { slots, generation } => {
                pg.drop_slots(slots).await?;
                tracing::info!(%generation, slots = %slots.join(","), "replication slots no node streams with dropped (departed or cascading nodes)");
            }
            Action::EnsureSlots { slots, generation } => {
                pg.ensure_slots(slots).await?;
                tracing::info!(%generation, slots = %slots.join(","), "replication slots created");
            }
            _ => {}
        }
        Ok(())
    }

    /// Make the local primary's commits wait for `rule` (reload, wait until in force): the
    /// WAL position where the switch took effect.
    async fn set_sync_standbys(
        &self,
        pg: &dyn Database,
        rule: &SyncRule,
        generation: Generation,
    ) -> anyhow::Result<Lsn> {
        let lsn = pg.set_sync_standbys(rule).await?;
        if rule.is_async() {
            tracing::warn!(%generation, %lsn, "synchronous replication off: commits no longer wait for a standby");
        } else {
            tracing::warn!(%generation, %lsn, %rule, "synchronous standbys set: commits wait for them");
        }
        Ok(lsn)
    }

    /// Ask the agents of `members` for their WAL position, read from their PostgreSQL now
    /// (all at once, each within 500 ms: a local query; a host that is gone must not hold
    /// the failover up for long), kept for the next decisions with the time the question was
    /// sent. A node whose agent or database does not answer is not reached this round.
    async fn measure_wal(
        &self,
        state: &ClusterState,
        members: &[String],
        generation: Generation,
    ) -> Vec<Outcome> {
        let started = self.now_ms();
        let mut readings = tokio::task::JoinSet::new();
        for name in members {
            let Some(member) = state.members.get(name) else {
                continue;
            };
            let client = pgfm_api::ApiClient::over(
                self.transport.clone(),
                &member.address,
                &self.token,
                Duration::from_millis(500),
            );
            let name = name.clone();
            readings.spawn(async move { (name, client.wal_position().await) });
        }
        let readings = readings.join_all().await;
        let mut measured = Vec::new();
        for (name, read) in readings {
            match read {
                Ok(answer) => {
                    let position = answer.position.filter(|_| answer.in_recovery);
                    tracing::info!(%generation, node = %name, position = ?position, "WAL position measured");
                    measured.push(Outcome::WalMeasured {
                        node: name,
                        measured: Measured {
                            at_ms: started,
                            position,
                        },
                    });
                }
                Err(e) => {
                    tracing::debug!(%generation, node = %name, error = %e, "WAL position not measured");
                }
            }
        }
        measured
    }
}

/// A start that failed with no postmaster left: PostgreSQL exited during start-up. One
/// still recovering past `start_timeout` is no failure.
fn failed_start(pg: &dyn Database, result: &anyhow::Result<()>) -> Option<Outcome> {
    match result {
        Err(e) if pg.running_pid().is_none() => Some(Outcome::StartFailed {
            error: format!("{e:#}"),
        }),
        _ => None,
    }
}

/// What initdb makes (`[bootstrap]`) and whom the new pg_hba.conf lets in: every member's
/// hosts (its agent's and its PostgreSQL's address), data nodes for replication too.
fn initdb_plan(config: &crate::config::Config, state: &ClusterState) -> InitdbPlan {
    let mut peers = Vec::new();
    for member in state.members.values() {
        let replication = member.kind == pgfm_core::NodeKind::Data;
        let agent_host = host_of(&member.address);
        for host in std::iter::once(agent_host).chain(member.pg_host.as_deref()) {
            let peer = HbaPeer {
                name: member.name.clone(),
                host: host.to_string(),
                replication,
            };
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
    }
    let b = &config.bootstrap;
    InitdbPlan {
        cluster: config.cluster.clone(),
        encoding: b.encoding.clone(),
        locale: b.locale.clone(),
        data_checksums: b.data_checksums,
        peers,
        extra_hba: b.pg_hba.clone(),
    }
}

/// The host of `host:port` (`[v6]:port` too).
fn host_of(address: &str) -> &str {
    match address.strip_prefix('[').and_then(|a| a.split_once(']')) {
        Some((host, _)) => host,
        None => address.rsplit_once(':').map_or(address, |(host, _)| host),
    }
}

#[cfg(test)]
mod initdb_tests {
    use super::host_of;

    #[test]
    fn hosts_of_agent_addresses() {
        assert_eq!(host_of("10.0.0.11:7400"), "10.0.0.11");
        assert_eq!(host_of("[fd00::1]:7400"), "fd00::1");
        assert_eq!(host_of("db1.example.com:7400"), "db1.example.com");
    }
}
