//! The rules an agent applies, as one object its runtime hands in: `Rules`, the functions
//! of this crate as they are, in production and in the simulation. The simulation's
//! mutation tests (`crates/sim/tests/mutations.rs`) pass a deliberately broken variant of
//! one rule to show that the simulation finds the violation it causes; no broken variant
//! lives outside that test.

use crate::decide::{self, Action, ClusterView, LocalView};
use crate::lease::{self, HeldLease, LeaseSettings, LeaseStep};

pub trait Engine: Send + Sync {
    /// The coordinator's decisions (`decide::coordinate`).
    fn coordinate(&self, cluster: &ClusterView, now_ms: u64) -> Vec<Action> {
        decide::coordinate(cluster, now_ms)
    }

    /// A data node's own decisions (`decide::reconcile`).
    fn reconcile(&self, cluster: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
        decide::reconcile(cluster, local, now_ms)
    }

    /// The primary's lease: renew, fence (`lease::primary_step`).
    fn lease_step(
        &self,
        now_ms: u64,
        is_primary: bool,
        writable: bool,
        held: &HeldLease,
        settings: &LeaseSettings,
    ) -> Vec<LeaseStep> {
        lease::primary_step(now_ms, is_primary, writable, held, settings)
    }

    /// Whether a leader may decide yet (`lease::may_coordinate`).
    fn may_coordinate(&self, leading_term: Option<u64>, applied_term: u64) -> bool {
        lease::may_coordinate(leading_term, applied_term)
    }
}

/// pgfm's rules, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules;

impl Engine for Rules {}
