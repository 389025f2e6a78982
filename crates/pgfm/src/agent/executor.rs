//! The executor: the only place where the engine's actions turn into I/O. Every action is
//! logged with the generation it serves, can be retried (the next decision round does so),
//! and its failure becomes part of this node's report.

use pgfm_core::decide::{Action, ClusterView};
use pgfm_core::{ClusterState, Command};
use pgfm_postgres::Upstream;

use super::{lock, Agent};

impl Agent {
    pub(super) async fn execute_all(
        &self,
        view: &ClusterView,
        is_coordinator: bool,
        actions: Vec<Action>,
    ) {
        let mut notes = Vec::new();
        let mut coordinator_notes = Vec::new();
        for action in actions {
            match action {
                Action::Hold { reason } => notes.push(reason),
                Action::ClusterHold { reason } => coordinator_notes.push(reason),
                Action::Propose(command) => self.propose(command).await,
                other => {
                    if let Err(e) = self.act(&view.state, &other).await {
                        let text = format!("{e:#}");
                        tracing::error!(generation = %view.state.generation, action = ?other, error = %text, "action failed");
                        notes.push(text);
                    }
                }
            }
        }
        let changed =
            *lock(&self.notes) != notes || *lock(&self.coordinator_notes) != coordinator_notes;
        if changed {
            for note in notes.iter().chain(&coordinator_notes) {
                tracing::info!(generation = %view.state.generation, "holding: {note}");
            }
        }
        *lock(&self.notes) = notes;
        if is_coordinator {
            *lock(&self.coordinator_notes) = coordinator_notes;
        } else {
            lock(&self.coordinator_notes).clear();
        }
    }

    async fn propose(&self, command: Command) {
        match pgfm_coord::Coordinator::propose(&self.raft, command.clone()).await {
            Ok(Ok(())) => {
                let generation = self.raft_state().generation;
                tracing::info!(%generation, ?command, "committed");
            }
            Ok(Err(refused)) => tracing::warn!(?command, %refused, "proposal refused"),
            Err(e) => tracing::warn!(?command, error = %e, "proposal not committed"),
        }
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

    async fn act(&self, state: &ClusterState, action: &Action) -> anyhow::Result<()> {
        let Some(pg) = &self.postgres else {
            anyhow::bail!("{action:?} on a node without PostgreSQL");
        };
        let set_activity = |text: Option<String>| *lock(&self.activity) = text;
        match action {
            Action::StartPrimary { generation } => {
                tracing::info!(%generation, "starting PostgreSQL as the primary");
                set_activity(Some(format!(
                    "starting as primary of generation {generation}"
                )));
                let result = pg.start(None).await;
                set_activity(None);
                let pid = result?;
                tracing::info!(%generation, pid, "PostgreSQL is up as the primary");
            }
            Action::StartStandby {
                upstream,
                generation,
            } => {
                let up = self.upstream(state, upstream)?;
                tracing::info!(%generation, %upstream, "starting PostgreSQL as a standby");
                set_activity(Some(format!("starting as standby of {upstream}")));
                let result = pg.start(Some(&up)).await;
                set_activity(None);
                let pid = result?;
                tracing::info!(%generation, %upstream, pid, "PostgreSQL is up as a standby");
            }
            Action::Clone {
                upstream,
                generation,
            } => {
                let up = self.upstream(state, upstream)?;
                tracing::info!(%generation, %upstream, "cloning the empty data directory");
                set_activity(Some(format!("cloning from {upstream} (pg_basebackup)")));
                let cloned = pg.clone_from(&up).await;
                if cloned.is_ok() {
                    set_activity(Some(format!("starting as standby of {upstream}")));
                }
                let result = match cloned {
                    Ok(()) => pg.start(Some(&up)).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                set_activity(None);
                result?;
                tracing::info!(%generation, %upstream, "cloned and streaming");
            }
            Action::Propose(_) | Action::Hold { .. } | Action::ClusterHold { .. } => {}
        }
        Ok(())
    }
}
