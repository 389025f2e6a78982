//! The Raft state machine: applies committed `Command`s to the `ClusterState`, persists it
//! durably after every batch (so a restarted agent knows the state before it hears from the
//! coordinator), and builds and installs snapshots.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use pgfm_core::ClusterState;

use crate::durable;
use crate::types::{Outcome, RaftNode, StorageError, TypeConfig};

/// Everything the state machine holds, as written to disk and into snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, RaftNode>,
    pub state: ClusterState,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, RaftNode>,
    data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct StateMachine {
    dir: PathBuf,
    applied: Applied,
    published: watch::Sender<Applied>,
    /// Renewals applied since the state was last written.
    unwritten_renewals: u64,
}

/// Lease renewals only bump a counter: the state is written at most once per this many of
/// them (a restart re-applies the rest from the log, which is never purged that far).
const RENEWALS_PER_WRITE: u64 = 20;

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachine {
    /// Open the state machine under `dir`; `watch` receives every newly applied state.
    pub fn open(dir: &Path) -> std::io::Result<(StateMachine, watch::Receiver<Applied>)> {
        let applied: Applied = match durable::read(&dir.join("state"))? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            None => Applied::default(),
        };
        let (published, watch) = watch::channel(applied.clone());
        let sm = StateMachine {
            dir: dir.to_path_buf(),
            applied,
            published,
            unwritten_renewals: 0,
        };
        Ok((sm, watch))
    }

    fn persist(&mut self) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&self.applied).map_err(sm_err)?;
        durable::write(&self.dir.join("state"), &bytes).map_err(sm_err)?;
        self.unwritten_renewals = 0;
        self.published.send_replace(self.applied.clone());
        Ok(())
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot")
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = serde_json::to_vec(&self.applied).map_err(snap_err)?;
        let snapshot_id = match self.applied.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(snap_err)?;
        durable::write(&self.snapshot_path(), &bytes).map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, RaftNode>), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut only_renewals = true;
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            let renewal = matches!(
                &entry.payload,
                EntryPayload::Normal(pgfm_core::Command::RenewLease { .. })
            );
            only_renewals &= renewal;
            self.unwritten_renewals += u64::from(renewal);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(()),
                EntryPayload::Normal(command) => {
                    let outcome = self.applied.state.apply(&command);
                    match &outcome {
                        // Renewals come every few hundred ms: not worth a line each.
                        Ok(()) if matches!(command, pgfm_core::Command::RenewLease { .. }) => {}
                        Ok(()) => tracing::info!(
                            generation = %self.applied.state.generation,
                            index = entry.log_id.index,
                            ?command,
                            "committed"
                        ),
                        Err(refused) => tracing::warn!(
                            generation = %self.applied.state.generation,
                            index = entry.log_id.index,
                            ?command,
                            %refused,
                            "command refused by the state machine"
                        ),
                    }
                    outcome
                }
                EntryPayload::Membership(membership) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(())
                }
            };
            outcomes.push(outcome);
        }
        if only_renewals && self.unwritten_renewals < RENEWALS_PER_WRITE {
            self.published.send_replace(self.applied.clone());
        } else {
            self.persist()?;
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, RaftNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied: Applied = serde_json::from_slice(&data).map_err(snap_err)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes = serde_json::to_vec(&stored).map_err(snap_err)?;
        durable::write(&self.snapshot_path(), &bytes).map_err(snap_err)?;
        self.applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state: applied.state,
        };
        self.persist()
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let bytes = durable::read(&self.snapshot_path())
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(bytes) = bytes else { return Ok(None) };
        let stored: StoredSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
