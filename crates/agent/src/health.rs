//! Health endpoints for load balancers, Prometheus metrics and the promotion history, all
//! answered from what this agent knows locally (no call to another agent).

use std::sync::atomic::Ordering;

use pgfm_api::{Health, HealthCheck, HistoryEntry, Metrics, NodeKindStatus};
use pgfm_coord::Coordinator;
use pgfm_core::DbRole;

use super::{lock, Agent};

impl Agent {
    fn my_kind(&self) -> NodeKindStatus {
        self.local_status(Vec::new())
            .nodes
            .iter()
            .find(|n| n.name == self.config.name)
            .map(|n| n.kind)
            .unwrap_or(NodeKindStatus::Idle)
    }

    pub(super) fn check_health(&self, check: HealthCheck) -> Health {
        let state = self.raft.state();
        let now = self.now_ms();
        let me = lock(&self.reports)
            .get(&self.config.name)
            .map(|o| o.report.clone());
        let db_up = me.as_ref().is_some_and(|r| r.db_up);
        let role = me.as_ref().and_then(|r| r.role);
        let streaming_standby = db_up
            && role == Some(DbRole::Standby)
            && me.as_ref().and_then(|r| r.receiver.as_deref()) == Some("streaming");
        let answer = |ok: bool, detail: String| Health {
            ok,
            node: self.config.name.clone(),
            role: format!("{:?}", self.my_kind()).to_lowercase(),
            generation: state.generation.0,
            detail,
        };
        match check {
            HealthCheck::Primary => {
                let named = state.primary.as_deref() == Some(self.config.name.as_str());
                let lease = lock(&self.lease);
                let holds = named
                    && lease.generation == Some(state.generation)
                    && lease.valid(now, &self.settings().lease);
                let writable = self.postgres.as_ref().is_some_and(|pg| pg.writable());
                match (holds, writable && db_up && role == Some(DbRole::Primary)) {
                    (true, true) => answer(
                        true,
                        format!("primary of generation {}, lease held", state.generation),
                    ),
                    (false, _) => answer(false, "this node does not hold the primary lease".into()),
                    (true, false) => answer(
                        false,
                        "holds the lease but PostgreSQL is not up as a primary".into(),
                    ),
                }
            }
            HealthCheck::Replica { .. } if state.tags_of(&self.config.name).noloadbalance => {
                answer(
                    false,
                    format!(
                        "tagged noloadbalance: no reads sent here (pgfm set-tag {} \
                         noloadbalance=false)",
                        self.config.name
                    ),
                )
            }
            HealthCheck::Replica { .. } | HealthCheck::Synchronous { .. } if !streaming_standby => {
                answer(false, "not a streaming standby".into())
            }
            HealthCheck::Replica { max_lag } => {
                let primary_lsn = state.primary.as_deref().and_then(|p| {
                    lock(&self.reports)
                        .get(p)
                        .and_then(|o| o.report.current_lsn)
                });
                let lag = primary_lsn
                    .zip(me.as_ref().and_then(|r| r.replayed_lsn))
                    .map(|(p, r)| p.bytes_after(r));
                match (max_lag, lag) {
                    (None, _) => answer(
                        true,
                        format!(
                            "streaming, lag {}",
                            lag.map(|l| format!("{l} bytes"))
                                .unwrap_or_else(|| "unknown".into())
                        ),
                    ),
                    (Some(max), Some(lag)) if lag <= max => {
                        answer(true, format!("streaming, lag {lag} bytes (max {max})"))
                    }
                    (Some(max), Some(lag)) => {
                        answer(false, format!("lag {lag} bytes exceeds {max}"))
                    }
                    (Some(_), None) => answer(false, "streaming, but the lag is unknown".into()),
                }
            }
            HealthCheck::Synchronous { member } => {
                let synchronous = state.sync_set.contains(&self.config.name)
                    && state.primary.as_deref() != Some(self.config.name.as_str());
                let what = if synchronous {
                    format!(
                        "a synchronous standby (committed: {})",
                        state.committed_sync()
                    )
                } else {
                    "an asynchronous standby".to_string()
                };
                answer(synchronous == member, format!("streaming, {what}"))
            }
            HealthCheck::Node => match self.postgres {
                None => answer(true, "witness agent up".into()),
                Some(_) if db_up => answer(true, "agent and PostgreSQL up".into()),
                Some(_) => answer(false, "PostgreSQL does not answer".into()),
            },
        }
    }

    pub(super) fn collect_metrics(&self) -> Metrics {
        let status = self.local_status(Vec::new());
        let state = self.raft.state();
        let now = self.now_ms();
        let lease = *lock(&self.lease);
        let holds = state.primary.as_deref() == Some(self.config.name.as_str())
            && lease.generation == Some(state.generation)
            && lease.valid(now, &self.settings().lease);
        let switchovers = state
            .history
            .iter()
            .filter(|p| p.reason.starts_with("switchover"))
            .count() as u64;
        let latency = self.probe_latency_ms.load(Ordering::SeqCst);
        Metrics {
            node: self.config.name.clone(),
            role: format!("{:?}", self.my_kind()).to_lowercase(),
            generation: state.generation.0,
            is_coordinator: self.raft.is_coordinator(),
            lease_remaining_ms: holds
                .then(|| lease.valid_until_ms.map(|u| u.saturating_sub(now)))
                .flatten(),
            failovers_total: state.history.len() as u64 - switchovers,
            switchovers_total: switchovers,
            probe_latency_ms: (self.postgres.is_some() && latency > 0).then_some(latency - 1),
            lag_bytes: status
                .nodes
                .iter()
                .filter_map(|n| Some((n.name.clone(), n.lag_bytes?)))
                .collect(),
            agents_up: status
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.agent == pgfm_api::Up::Up))
                .collect(),
            sync_waiting: status
                .synchronous
                .as_ref()
                .map(|s| (s.waiting_count, s.degraded)),
            tls_valid_for_s: self.tls_valid_for_s(),
        }
    }

    /// Promotions and switchovers that did not happen, oldest first.
    pub(super) fn history_entries(&self) -> Vec<HistoryEntry> {
        let state = self.raft.state();
        let promotions = state.history.into_iter().map(|p| HistoryEntry {
            generation: p.generation.0,
            at_unix_ms: p.at_unix_ms,
            from: p.from,
            to: p.to,
            reason: p.reason,
            lsn: p.lsn,
            lost_bytes: p.lost_bytes,
            lost_at_least: p.lost_at_least,
            cancelled: false,
            failover_instead: false,
        });
        let cancelled = state
            .cancelled_switchovers
            .into_iter()
            .map(|c| HistoryEntry {
                generation: c.generation.0,
                at_unix_ms: c.at_unix_ms,
                from: Some(c.from),
                to: c.to,
                reason: c.reason,
                lsn: None,
                lost_bytes: Some(0),
                lost_at_least: false,
                cancelled: true,
                failover_instead: c.failover_instead,
            });
        let mut entries: Vec<HistoryEntry> = promotions.chain(cancelled).collect();
        entries.sort_by_key(HistoryEntry::order);
        entries
    }
}
