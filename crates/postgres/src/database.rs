//! `Database`: everything the agent does to its own PostgreSQL, and `Probe` / `RemoteProbe`,
//! how it looks at its own server and at another node's. The agent holds these as trait
//! objects: in production they are `Postgres`, `Prober` and `RemoteCheck` (processes,
//! files, libpq connections); in the simulation, a model of PostgreSQL. Each method keeps
//! the contract written on the production one it forwards to.

use std::time::Duration;

use pgfm_core::transport::Pending;
use pgfm_core::{DataDirState, Lsn, NodeReport, SyncRule, Timeline};

use crate::control::{HandOverStop, Postgres, StartAs, Upstream};
use crate::initdb::InitdbPlan;
use crate::probe::{RemoteCheck, Target, Verdict};
use crate::Prober;

/// One node's PostgreSQL, as its agent controls it.
pub trait Database: Send + Sync {
    /// What the data directory holds (empty, a standby's, a former primary's, ...).
    fn data_dir_state(&self) -> Result<DataDirState, String>;
    /// Whether recovery had not ended when the stopped cluster last ran
    /// (`NodeReport::recovery_unfinished`).
    fn recovery_unfinished(&self) -> Result<bool, String>;
    /// The postmaster's pid, when one runs on the data directory.
    fn running_pid(&self) -> Option<i32>;
    /// Running, and would take writes (no `standby.signal`).
    fn writable(&self) -> bool;
    /// Completes when a postmaster this agent started exits.
    fn exited(&self) -> Pending<'_, ()>;
    /// A prober of this server, keeping its connection between probes.
    fn prober(&self) -> Box<dyn Probe>;
    /// The newest WAL position it holds as a standby; None when it runs as a primary.
    fn wal_position(&self) -> Pending<'_, Result<Option<Lsn>, String>>;
    /// Write `synchronous_standby_names` for the next start; the value written.
    fn write_sync_conf(&self, rule: &SyncRule) -> anyhow::Result<String>;
    /// Change `synchronous_standby_names` on the running primary and wait until it is in
    /// force: the WAL position from which it holds.
    fn set_sync_standbys<'a>(&'a self, rule: &'a SyncRule) -> Pending<'a, anyhow::Result<Lsn>>;
    /// How long a start (crash recovery included) and a probe of a server may take from
    /// now on: the cluster's `timing.start_timeout` and `timing.probe_timeout`, which an
    /// operator may change while the agent runs.
    fn set_timeouts(&self, start: Duration, probe: Duration);
    /// Start as the primary, as a standby of an upstream, or as a standby to be promoted;
    /// the postmaster's pid.
    fn start<'a>(&'a self, how: StartAs<'a>) -> Pending<'a, anyhow::Result<u32>>;
    /// Give the running server the node's TLS files if they changed (`Postgres::refresh_ssl`).
    fn refresh_ssl(&self) -> Pending<'_, anyhow::Result<bool>>;
    /// Initialise a new cluster in the empty data directory (`Postgres::initialise`).
    fn initialise<'a>(&'a self, plan: &'a InitdbPlan) -> Pending<'a, anyhow::Result<()>>;
    /// Fill the empty data directory with a base backup of `upstream`.
    fn clone_from<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>>;
    /// Move the stopped data directory aside (`Postgres::move_aside`).
    fn move_aside(&self) -> anyhow::Result<()>;
    /// Move the data directory aside and clone afresh from `upstream`.
    fn reclone<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>>;
    /// Promote the running standby once it replayed all it received, to timeline
    /// `at_least` or a later one.
    fn promote(&self, at_least: Timeline) -> Pending<'_, anyhow::Result<()>>;
    /// Stream from `upstream` from now on (a reload, no restart).
    fn follow<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>>;
    /// Stop at once, leaving no process alive, and mark the directory for a rewind.
    fn fence(&self) -> Pending<'_, anyhow::Result<()>>;
    /// Stop (a diverged standby) and mark the directory for a rewind.
    fn stop_to_rewind(&self) -> Pending<'_, anyhow::Result<()>>;
    /// Stop cleanly (`pg_ctl stop -m fast`): a node going under maintenance.
    fn stop(&self) -> Pending<'_, anyhow::Result<()>>;
    /// The cluster's PostgreSQL parameters for this node, written into `pgfm.conf` at every
    /// start from now on.
    fn set_parameters(&self, parameters: std::collections::BTreeMap<String, String>);
    /// Write `pgfm.conf` again with them (standby settings pointing at `upstream`) and
    /// have the running server reload.
    fn write_parameters<'a>(
        &'a self,
        upstream: Option<&'a Upstream>,
    ) -> Pending<'a, anyhow::Result<()>>;
    /// Rewind the stopped data directory onto `upstream`'s timeline.
    fn rewind<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>>;
    /// A switchover's stop: clean within `limit`, then immediate; the final WAL position.
    fn stop_for_handover(
        &self,
        limit: Duration,
        force: bool,
    ) -> Pending<'_, anyhow::Result<HandOverStop>>;
    fn ensure_slots<'a>(&'a self, slots: &'a [String]) -> Pending<'a, anyhow::Result<()>>;
    fn drop_slots<'a>(&'a self, slots: &'a [String]) -> Pending<'a, anyhow::Result<()>>;
}

/// Looks at the local server: fills a report's database fields.
pub trait Probe: Send {
    /// On failure the fields say the database is down and `Err` carries why.
    fn probe<'a>(&'a mut self, report: &'a mut NodeReport) -> Pending<'a, Result<(), String>>;
}

/// Looks at another node's server: whether it answers (invariant 10).
pub trait RemoteProbe: Send {
    fn check<'a>(&'a mut self, target: &'a Target) -> Pending<'a, Verdict>;
}

impl Database for Postgres {
    fn data_dir_state(&self) -> Result<DataDirState, String> {
        Postgres::data_dir_state(self)
    }
    fn recovery_unfinished(&self) -> Result<bool, String> {
        crate::datadir::recovery_unfinished(&self.settings.data_dir)
    }
    fn running_pid(&self) -> Option<i32> {
        Postgres::running_pid(self)
    }
    fn writable(&self) -> bool {
        Postgres::writable(self)
    }
    fn exited(&self) -> Pending<'_, ()> {
        Box::pin(Postgres::exited(self))
    }
    fn prober(&self) -> Box<dyn Probe> {
        Box::new(Prober::new(self.probe_target()))
    }
    fn set_timeouts(&self, start: Duration, probe: Duration) {
        Postgres::set_timeouts(self, start, probe)
    }
    fn wal_position(&self) -> Pending<'_, Result<Option<Lsn>, String>> {
        Box::pin(async move { crate::probe::standby_wal_position(&self.probe_target()).await })
    }
    fn write_sync_conf(&self, rule: &SyncRule) -> anyhow::Result<String> {
        Postgres::write_sync_conf(self, rule)
    }
    fn set_sync_standbys<'a>(&'a self, rule: &'a SyncRule) -> Pending<'a, anyhow::Result<Lsn>> {
        Box::pin(Postgres::set_sync_standbys(self, rule))
    }
    fn start<'a>(&'a self, how: StartAs<'a>) -> Pending<'a, anyhow::Result<u32>> {
        Box::pin(Postgres::start(self, how))
    }
    fn refresh_ssl(&self) -> Pending<'_, anyhow::Result<bool>> {
        Box::pin(Postgres::refresh_ssl(self))
    }
    fn initialise<'a>(&'a self, plan: &'a InitdbPlan) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(Postgres::initialise(self, plan))
    }
    fn clone_from<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(Postgres::clone_from(self, upstream))
    }
    fn reclone<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(Postgres::reclone(self, upstream))
    }
    fn move_aside(&self) -> anyhow::Result<()> {
        Postgres::move_aside(self)
    }
    fn promote(&self, at_least: Timeline) -> Pending<'_, anyhow::Result<()>> {
        Box::pin(Postgres::promote(self, at_least))
    }
    fn follow<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(Postgres::follow(self, upstream))
    }
    fn fence(&self) -> Pending<'_, anyhow::Result<()>> {
        Box::pin(Postgres::fence(self))
    }
    fn stop_to_rewind(&self) -> Pending<'_, anyhow::Result<()>> {
        Box::pin(Postgres::stop_to_rewind(self))
    }
    fn stop(&self) -> Pending<'_, anyhow::Result<()>> {
        Box::pin(Postgres::stop(self, "fast"))
    }
    fn set_parameters(&self, parameters: std::collections::BTreeMap<String, String>) {
        Postgres::set_parameters(self, parameters)
    }
    fn write_parameters<'a>(
        &'a self,
        upstream: Option<&'a Upstream>,
    ) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(Postgres::write_parameters(self, upstream))
    }
    fn rewind<'a>(&'a self, upstream: &'a Upstream) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(Postgres::rewind(self, upstream))
    }
    fn stop_for_handover(
        &self,
        limit: Duration,
        force: bool,
    ) -> Pending<'_, anyhow::Result<HandOverStop>> {
        Box::pin(Postgres::stop_for_handover(self, limit, force))
    }
    fn ensure_slots<'a>(&'a self, slots: &'a [String]) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(Postgres::ensure_slots(self, slots))
    }
    fn drop_slots<'a>(&'a self, slots: &'a [String]) -> Pending<'a, anyhow::Result<()>> {
        Box::pin(Postgres::drop_slots(self, slots))
    }
}

impl Probe for Prober {
    fn probe<'a>(&'a mut self, report: &'a mut NodeReport) -> Pending<'a, Result<(), String>> {
        Box::pin(Prober::probe(self, report))
    }
}

impl RemoteProbe for RemoteCheck {
    fn check<'a>(&'a mut self, target: &'a Target) -> Pending<'a, Verdict> {
        Box::pin(RemoteCheck::check(self, target))
    }
}
