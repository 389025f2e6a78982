//! The Raft log and vote on disk: one durable file per entry (`log/<index>.entry`), the vote
//! in `vote`, the last purged log id in `purged`. Entries are cached in memory; the
//! snapshot policy keeps the log short.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};

use crate::durable;
use crate::types::{StorageError, TypeConfig};

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<u64>>,
    vote: Option<Vote<u64>>,
}

/// The log store; clones share the same files and cache (one is handed out as the reader).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match durable::read(path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    }
}

fn entry_path(dir: &Path, index: u64) -> PathBuf {
    dir.join("log").join(format!("{index:020}.entry"))
}

impl LogStore {
    /// Open (or create) the log under `dir`, reading every entry and checking each one.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        let log_dir = dir.join("log");
        fs::create_dir_all(&log_dir)?;
        let mut entries = BTreeMap::new();
        for item in fs::read_dir(&log_dir)? {
            let path = item?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("entry") {
                // A leftover temp file from a crash mid-write: the rename never happened.
                continue;
            }
            let entry: Entry<TypeConfig> = read_json(&path)?.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, path.display().to_string())
            })?;
            entries.insert(entry.log_id.index, entry);
        }
        let inner = Inner {
            dir: dir.to_path_buf(),
            entries,
            last_purged: read_json(&dir.join("purged"))?,
            vote: read_json(&dir.join("vote"))?,
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the cache consistent with disk at the last
        // completed write, so the poison flag carries no information here.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        durable::write(&inner.dir.join("vote"), &bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
            durable::write_file(&entry_path(&inner.dir, entry.log_id.index), &bytes)
                .map_err(write_err)?;
            inner.entries.insert(entry.log_id.index, entry);
        }
        let synced = durable::sync_dir(&inner.dir.join("log"));
        // openraft fact: the callback means "durable"; call it only after the fsync.
        callback.log_io_completed(synced);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let doomed: Vec<u64> = inner
            .entries
            .range(log_id.index..)
            .map(|(i, _)| *i)
            .collect();
        // Newest first, so that a crash part way leaves no hole in the log.
        for index in doomed.into_iter().rev() {
            fs::remove_file(entry_path(&inner.dir, index)).map_err(write_err)?;
            inner.entries.remove(&index);
        }
        durable::sync_dir(&inner.dir.join("log")).map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        // Record the purge point first: entries at or below it are never read again.
        let bytes = serde_json::to_vec(&log_id).map_err(write_err)?;
        durable::write(&inner.dir.join("purged"), &bytes).map_err(write_err)?;
        inner.last_purged = Some(log_id);
        let doomed: Vec<u64> = inner
            .entries
            .range(..=log_id.index)
            .map(|(i, _)| *i)
            .collect();
        for index in doomed {
            fs::remove_file(entry_path(&inner.dir, index)).map_err(write_err)?;
            inner.entries.remove(&index);
        }
        durable::sync_dir(&inner.dir.join("log")).map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

    use super::*;
    use crate::state_machine::StateMachine;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let log = LogStore::open(dir.path()).map_err(|e| StorageIOError::read_logs(&e))?;
            let (sm, _) = StateMachine::open(dir.path())
                .map_err(|e| StorageIOError::read_state_machine(&e))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite.
    #[test]
    fn passes_the_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// What was appended, truncated, purged and voted survives a restart; a torn entry file
    /// stops the open instead of being trusted.
    #[tokio::test]
    async fn state_survives_reopen_and_torn_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            for i in 1..=5 {
                let entry = blank(1, i);
                let bytes = serde_json::to_vec(&entry).unwrap();
                durable::write_file(&entry_path(dir.path(), i), &bytes).unwrap();
                log.lock().entries.insert(i, entry);
            }
            log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 5))
                .await
                .unwrap();
            log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
                .await
                .unwrap();
            log.save_vote(&Vote::new(3, 7)).await.unwrap();
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        let indexes: Vec<u64> = log
            .try_get_log_entries(0..10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, vec![3, 4]);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));

        let path = entry_path(dir.path(), 4);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let err = LogStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("torn or corrupt"), "{err}");
    }
}
