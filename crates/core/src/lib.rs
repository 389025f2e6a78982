//! pgfm's domain: newtypes, the committed cluster state, observations, and the pure
//! decision engine. Nothing in this crate does I/O, reads a clock or draws randomness.

pub mod decide;
pub mod engine;
pub mod lease;
pub mod model;
pub mod operator;
pub mod parameters;
pub mod settings;
pub mod standing;
pub mod tags;
#[cfg(test)]
pub(crate) mod testing;
pub mod transport;
pub mod types;

pub use decide::{decide, Action, Decision};
pub use model::{
    ClusterState, Command, CommandError, DataDirState, DbRole, Member, NodeKind, NodeReport,
    ReplicaInfo, SyncMode, SyncRule, SyncSettings, TimelineFork, VipReport, WatchdogMode,
    WatchdogReport,
};
pub use types::{Generation, Lsn, LsnParseError, NodeId, Timeline};
