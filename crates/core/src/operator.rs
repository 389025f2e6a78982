//! The operator commands' checks (`pgfm switchover`, `promote`, `disallow-node`, ...): what
//! the coordinator commits for a request, or why it refuses, judged on the model — the
//! committed state and the fresh reports, through the same rules `cluster-status` shows
//! (`standing`). Pure: the agent passes the time and anything it measured, commits the
//! command, and prints a refusal as it is (its `Display` is the message the CLI shows).
//!
//! Every check ends by applying its command to a copy of the state, so that a request the
//! log would refuse is refused here, with the log's own words, before anything is proposed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::decide::ClusterView;
use crate::model::{ClusterState, Command, CommandError, Switchover, SyncMode, SyncSettings};
use crate::standing::{self, Role};
use crate::types::{Generation, Lsn};

/// Why an operator command was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("there is no running primary to switch over from")]
    NoRunningPrimary,
    #[error("the cluster has no primary yet")]
    NoPrimaryYet,
    #[error("a switchover from {from} to {to} is already under way")]
    SwitchoverUnderWay { from: String, to: String },
    /// `pgfm promote` during a switchover, other than `--force` to its own target.
    #[error(
        "a switchover from {from} to {to} is under way: wait for it, cancel it (pgfm \
         switchover --cancel), or finish it at once (pgfm promote --to {to} --force)"
    )]
    SwitchoverToFinish { from: String, to: String },
    #[error("unknown node {name:?} (the members are {})", .members.join(", "))]
    UnknownNode { name: String, members: Vec<String> },
    #[error("{0} is already the primary")]
    AlreadyPrimary(String),
    #[error("{to} is not a standby in sync with {from}: {why}")]
    NotInSync {
        to: String,
        from: String,
        why: NotInSync,
    },
    /// `promote_status` is `cluster-status`'s "Promote Status", which says why each
    /// standby does not qualify.
    #[error(
        "no standby is in sync with {from}: a switchover now could lose data ({promote_status})"
    )]
    NoneInSync {
        from: String,
        promote_status: String,
    },
    #[error("no switchover is under way")]
    NoSwitchover,
    /// `pgfm switchover --cancel` once the switchover ended in a promotion.
    #[error(
        "no switchover is under way: {to} is the primary of generation {generation} \
         ({reason}); to go back, run pgfm switchover --to {}",
        .from.as_deref().unwrap_or("the old primary")
    )]
    AlreadyPromoted {
        to: String,
        generation: Generation,
        reason: String,
        from: Option<String>,
    },
    #[error("{0} is not a running, promotable standby")]
    NotAPromotableStandby(String),
    #[error("no running, promotable standby to promote")]
    NoStandbyToPromote,
    /// `lag`: None when the primary does not know how far behind it is.
    #[error(
        "{node} is {} behind {against}: promoting it could lose that much; add --force to accept",
        match .lag {
            Some(lag) => format!("{lag} bytes"),
            None => "an unknown number of bytes".to_string(),
        }
    )]
    Lagging {
        node: String,
        lag: Option<u64>,
        against: LagAgainst,
    },
    /// The primary is gone and the committed synchronous set does not name `node`.
    #[error(
        "{node} is not known to hold every acknowledged commit (only {} may): promoting it \
         could lose them; add --force to accept",
        .holders.join(", ")
    )]
    NotSynchronous { node: String, holders: Vec<String> },
    #[error("{name} is not a member (the members are {})", .members.join(", "))]
    NotAMember { name: String, members: Vec<String> },
    #[error("{0} is the primary: switch over first (pgfm switchover), or add --force")]
    IsPrimary(String),
    #[error(
        "without {name}, only {up} of the {remaining} remaining members are up: the cluster \
         would have no majority; bring members back first, or add --force"
    )]
    NoMajority {
        name: String,
        up: usize,
        remaining: usize,
    },
    #[error(
        "{0} is the coordinator answering this request: run it on another member, or add --force"
    )]
    IsCoordinator(String),
    #[error("{0:?} is not an ip:port address")]
    BadAddress(String),
    #[error("{0} is already a member")]
    AlreadyMember(String),
    #[error("{address} is already the address of {other}")]
    AddressTaken { address: String, other: String },
    #[error("unknown mode {0:?} (use off, on or quorum)")]
    UnknownMode(String),
    #[error("--strict means --minimum {0} (the standbys asked); give one of them")]
    StrictMinimum(usize),
    /// The settings' own problem (`SyncSettings::problem`), in the command's flags.
    #[error("{0}")]
    BadSettings(String),
    #[error(
        "--minimum {minimum} needs that many promotable standbys and the cluster has \
         {eligible}: every commit would wait forever (lower --minimum, or add standbys)"
    )]
    MinimumTooHigh { minimum: usize, eligible: usize },
    #[error(
        "the cluster's settings are not committed yet: its first coordinator commits its \
         own file's before anything else (pgfm cluster-status shows whether one is elected)"
    )]
    SettingsNotCommitted,
    #[error("nothing to change: the settings are those of revision {0}")]
    NothingChanged(u64),
    #[error(
        "[timing] leaves the host watchdog of {node} (mode {mode}) no whole second: lease \
         {lease} - 250 ms - renew_interval {renew} is under 1 s (lengthen the lease, shorten \
         renew_interval, or set that node's [watchdog] mode = \"off\")"
    )]
    NoWatchdogTimeout {
        node: String,
        mode: crate::model::WatchdogMode,
        lease: String,
        renew: String,
    },
    #[error(
        "replication.minimum_standbys = {minimum} needs that many promotable standbys and the \
         cluster has {eligible}: every commit would wait forever (lower it, or add standbys)"
    )]
    MinimumUnmet { minimum: usize, eligible: usize },
    #[error(
        "with {node} under maintenance, {primary} would have no promotable standby in sync \
         with it: should {primary} fail, no standby could take over without losing data \
         (add --force to accept)"
    )]
    MaintenanceLeavesNoStandby { node: String, primary: String },
    #[error(
        "replication.minimum_standbys = {minimum}, and with {node} under maintenance only \
         {eligible} promotable standby(s) remain: every commit would wait for {node} until \
         pgfm maintenance {node} off (lower the minimum with pgfm edit-config, or add --force \
         to accept)"
    )]
    MaintenanceBelowMinimum {
        node: String,
        minimum: usize,
        eligible: usize,
    },
    #[error(
        "a switchover to {0} is under way: wait for it, or cancel it (pgfm switchover --cancel)"
    )]
    SwitchoverToNode(String),
    #[error(
        "with {change} on {node}, {primary} would have no promotable standby in sync with \
         it: should {primary} fail, no standby could take over without losing data (add \
         --force to accept)"
    )]
    TagLeavesNoStandby {
        node: String,
        change: String,
        primary: String,
    },
    #[error(
        "replication.minimum_standbys = {minimum}, and with {change} on {node} only \
         {eligible} standby(s) could be synchronous: below the minimum, the primary would \
         acknowledge commits that fewer standbys hold (none: it alone, and a failover would \
         promote no standby until one may be synchronous again); lower the minimum with pgfm \
         edit-config, or add --force to accept"
    )]
    TagBelowMinimum {
        node: String,
        change: String,
        minimum: usize,
        eligible: usize,
    },
    #[error(
        "{} is in the past (now {}): give a later time, or run pgfm switchover now",
        crate::types::utc(*at_unix_ms),
        crate::types::utc(*now_unix_ms)
    )]
    ScheduleInThePast { at_unix_ms: u64, now_unix_ms: u64 },
    #[error("nothing to change: {node} already has {change}")]
    TagUnchanged { node: String, change: String },
    /// The state machine refuses the command (`ClusterState::apply`).
    #[error(transparent)]
    Log(#[from] CommandError),
}

/// Why a named standby is not a switchover target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotInSync {
    #[error("it is {0} bytes behind or not streaming")]
    Behind(u64),
    #[error("it is not promotable")]
    NotPromotable,
    #[error("it is not a running standby ({0:?})")]
    NotRunningStandby(Role),
}

/// What a lagging candidate is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LagAgainst {
    /// The running primary's current position.
    #[error("the primary")]
    Primary,
    /// The primary is gone: the most advanced position any node reported.
    #[error("the best known position")]
    BestKnown,
}

/// A hand-over the log accepts: the running primary `from` stops cleanly and `to` is
/// promoted once it has replayed everything (or at once when `force`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub from: String,
    pub to: String,
    pub generation: Generation,
    pub force: bool,
    /// Asked by `pgfm promote`: should `from` stop renewing its lease without handing
    /// over, the promotion goes on as a failover (`Switchover::promotion`).
    pub promotion: bool,
    /// `pgfm promote --to`: that failover promotes `to`, else the best candidate.
    pub named: bool,
}

impl Handover {
    pub fn command(&self) -> Command {
        Command::RequestSwitchover {
            from: self.from.clone(),
            to: self.to.clone(),
            generation: self.generation,
            force: self.force,
            promotion: self.promotion,
            named: self.named,
        }
    }
}

/// `pgfm switchover [--to NODE]`: the running primary hands over to `to`, or to the most
/// advanced promotable standby in sync with it (the higher priority on a tie).
pub fn check_switchover(
    view: &ClusterView,
    now_ms: u64,
    to: Option<&str>,
) -> Result<Handover, Refusal> {
    let state = &view.state;
    let from = match (&state.primary, standing::serving_primary(view, now_ms)) {
        (Some(primary), Some(_)) => primary.clone(),
        _ => return Err(Refusal::NoRunningPrimary),
    };
    if let Some(sw) = &state.switchover {
        return Err(Refusal::SwitchoverUnderWay {
            from: sw.from.clone(),
            to: sw.to.clone(),
        });
    }
    let to = match to {
        Some(to) => {
            known(view, to)?;
            not_in_maintenance(state, to)?;
            if to == from {
                return Err(Refusal::AlreadyPrimary(to.to_string()));
            }
            let s = standing::of(view, to, now_ms);
            if !s.promotable_in_sync() {
                let why = match (s.role, s.in_sync, s.lag_bytes) {
                    (Role::Standby, Some(false), Some(lag)) => NotInSync::Behind(lag),
                    // Also a promotable standby whose lag the primary does not know: the
                    // message is older than this check, and the end-to-end tests read it.
                    (Role::Standby, _, _) => NotInSync::NotPromotable,
                    (role, _, _) => NotInSync::NotRunningStandby(role),
                };
                return Err(Refusal::NotInSync {
                    to: to.to_string(),
                    from,
                    why,
                });
            }
            to.to_string()
        }
        None => {
            let best = view
                .voters
                .iter()
                .map(|name| (name, standing::of(view, name, now_ms)))
                .filter(|(_, s)| s.promotable_in_sync())
                .max_by_key(|(_, s)| (s.lsn(), s.member.map(|m| m.priority)));
            match best {
                Some((name, _)) => name.clone(),
                None => {
                    return Err(Refusal::NoneInSync {
                        from,
                        promote_status: standing::promote_status(view, now_ms).message,
                    })
                }
            }
        }
    };
    let handover = Handover {
        from,
        to,
        generation: state.generation,
        force: false,
        promotion: false,
        named: false,
    };
    accepted(state, handover.command())?;
    Ok(handover)
}

/// `pgfm switchover --cancel`: the switchover under way, to cancel.
pub fn check_cancel_switchover(state: &ClusterState) -> Result<&Switchover, Refusal> {
    match (&state.switchover, state.history.last()) {
        (Some(sw), _) => Ok(sw),
        (None, Some(p)) if p.generation == state.generation => Err(Refusal::AlreadyPromoted {
            to: p.to.clone(),
            generation: state.generation,
            reason: p.reason.clone(),
            from: p.from.clone(),
        }),
        (None, _) => Err(Refusal::NoSwitchover),
    }
}

/// `pgfm switchover [--to NODE] --at TIME`: refused for a time already past, a standby
/// that may not be promoted, and while another is scheduled. Whether the cluster allows it
/// is judged when the time comes (`decide::switchover::scheduled`).
pub fn check_schedule_switchover(
    view: &ClusterView,
    at_unix_ms: u64,
    to: Option<&str>,
    by: &str,
) -> Result<Command, Refusal> {
    let scheduled = crate::model::ScheduledSwitchover {
        at_unix_ms,
        to: to.map(str::to_string),
        by: by.to_string(),
        generation: view.state.generation,
    };
    if scheduled.at_unix_ms < view.wall_clock_ms {
        return Err(Refusal::ScheduleInThePast {
            at_unix_ms: scheduled.at_unix_ms,
            now_unix_ms: view.wall_clock_ms,
        });
    }
    if let Some(to) = &scheduled.to {
        known(view, to)?;
    }
    accepted(&view.state, Command::ScheduleSwitchover { scheduled })
}

/// `pgfm restart [NODE ...] [--pending] [--in-place] --at TIME`: refused for a time already
/// past, a node that is not a data node, and while another restart is scheduled. Each
/// node's turn is judged when it comes (`decide::restart`).
pub fn check_schedule_restart(
    view: &ClusterView,
    scheduled: crate::model::ScheduledRestart,
) -> Result<Command, Refusal> {
    if scheduled.at_unix_ms < view.wall_clock_ms {
        return Err(Refusal::ScheduleInThePast {
            at_unix_ms: scheduled.at_unix_ms,
            now_unix_ms: view.wall_clock_ms,
        });
    }
    for node in &scheduled.nodes {
        known(view, node)?;
    }
    accepted(&view.state, Command::ScheduleRestart { scheduled })
}

/// `pgfm restart --cancel`: the scheduled restart ends; the node it was at, if under
/// maintenance for it, comes out of it.
pub fn cancel_scheduled_restart(
    state: &ClusterState,
    by: &str,
    at_unix_ms: u64,
) -> Option<Command> {
    let s = state.scheduled_restart.as_ref()?;
    let with = s
        .step
        .as_ref()
        .filter(|step| s.owns_maintenance(state, &step.node))
        .map(|step| {
            Box::new(Command::LeaveMaintenance {
                node: step.node.clone(),
            })
        });
    Some(Command::AdvanceScheduledRestart {
        scheduled_at_unix_ms: s.at_unix_ms,
        advance: crate::model::RestartAdvance::End {
            reason: Some(format!("cancelled by {by}")),
        },
        with,
        at_unix_ms,
    })
}

/// `pgfm switchover --cancel` with no switchover under way but one scheduled: the command
/// dropping it, stamped for the history.
pub fn cancel_scheduled_command(
    state: &ClusterState,
    by: &str,
    at_unix_ms: u64,
) -> Option<Command> {
    let s = state
        .scheduled_switchover
        .as_ref()
        .filter(|_| state.switchover.is_none())?;
    Some(Command::DropScheduledSwitchover {
        reason: format!(
            "pgfm switchover --cancel by {by}: the switchover scheduled at {} by {} cancelled",
            crate::types::utc(s.at_unix_ms),
            s.by
        ),
        at_unix_ms,
        scheduled_at_unix_ms: s.at_unix_ms,
    })
}

/// The command cancelling `sw`, stamped for the history.
pub fn cancel_command(sw: &Switchover, at_unix_ms: u64) -> Command {
    Command::CancelSwitchover {
        generation: sw.generation,
        at_unix_ms,
        reason: format!(
            "pgfm switchover --cancel: switchover from {} to {} cancelled",
            sw.from, sw.to
        ),
        lease_renewals: None,
    }
}

/// What `pgfm promote` commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotePlan {
    /// `--force` during a switchover: finish it at once, whatever step it is at.
    FinishSwitchover(Switchover),
    /// The primary runs: it hands over (fenced first).
    HandOver(Handover),
    /// The primary is gone: promote `to` (None: the best standby) once its lease expired.
    AfterLease {
        from: String,
        to: Option<String>,
        generation: Generation,
        force: bool,
    },
}

impl PromotePlan {
    pub fn command(&self) -> Command {
        match self {
            PromotePlan::FinishSwitchover(sw) => Command::ForceSwitchover {
                generation: sw.generation,
            },
            PromotePlan::HandOver(handover) => handover.command(),
            PromotePlan::AfterLease {
                to,
                generation,
                force,
                ..
            } => Command::RequestPromotion {
                to: to.clone(),
                force: *force,
                generation: *generation,
            },
        }
    }
}

/// `pgfm promote [--to NODE] [--force]`: operator failover, also with automatic failover
/// off or paused. A running promotable standby (`to`, else the least behind, the higher
/// priority on a tie); one that could lose data needs `force`: with a running primary,
/// one not in sync with it; without, one more than `max_lag` behind the best position any
/// node reported.
pub fn check_promote(
    view: &ClusterView,
    now_ms: u64,
    to: Option<&str>,
    force: bool,
) -> Result<PromotePlan, Refusal> {
    let state = &view.state;
    if let Some(sw) = &state.switchover {
        return finish_switchover(state, sw, to, force);
    }
    let Some(from) = state.primary.clone() else {
        return Err(Refusal::NoPrimaryYet);
    };
    let named = to.is_some();
    if let Some(to) = to {
        not_in_maintenance(state, to)?;
    }
    let candidates = Candidates::of(view, now_ms);
    let target = candidates.target(view, to, &from)?;
    if let Some((name, s)) = target {
        candidates.refuse_lagging(view, name, s, force)?;
    }
    let to = target.map(|(name, _)| name.to_string());
    let plan = if candidates.alive {
        let Some(to) = to else {
            return Err(Refusal::NoStandbyToPromote);
        };
        PromotePlan::HandOver(Handover {
            from,
            to,
            generation: state.generation,
            force,
            promotion: true,
            named,
        })
    } else {
        PromotePlan::AfterLease {
            from,
            to,
            generation: state.generation,
            force,
        }
    };
    accepted(state, plan.command())?;
    Ok(plan)
}

/// `pgfm promote` during a switchover: only `--force`, to the switchover's own target.
fn finish_switchover(
    state: &ClusterState,
    sw: &Switchover,
    to: Option<&str>,
    force: bool,
) -> Result<PromotePlan, Refusal> {
    // --force finishes the switchover under way whatever step it is at: the primary
    // hands over without waiting for the target to stream, and the target is
    // promoted without waiting for the final record.
    if !force || to.is_some_and(|to| to != sw.to) {
        return Err(Refusal::SwitchoverToFinish {
            from: sw.from.clone(),
            to: sw.to.clone(),
        });
    }
    let plan = PromotePlan::FinishSwitchover(sw.clone());
    accepted(state, plan.command())?;
    Ok(plan)
}

/// The standbys `pgfm promote` may choose from, and what their lag is measured against.
struct Candidates<'a> {
    /// The primary runs (and serves).
    alive: bool,
    /// The most advanced position any node reported. Not only fresh reports: the old
    /// primary's last word counts as the best position.
    best: Option<Lsn>,
    /// The running, promotable standbys.
    standbys: Vec<(&'a str, standing::Standing<'a>)>,
}

impl<'a> Candidates<'a> {
    fn of(view: &'a ClusterView, now_ms: u64) -> Candidates<'a> {
        let alive = standing::serving_primary(view, now_ms).is_some();
        let best = view
            .reports
            .values()
            .filter_map(|o| o.report.wal_position())
            .max();
        let standbys = view
            .voters
            .iter()
            .map(|name| (name.as_str(), standing::of(view, name, now_ms)))
            .filter(|(_, s)| s.promotable_standby())
            .collect();
        Candidates {
            alive,
            best,
            standbys,
        }
    }

    /// How far behind: None when unknown (only with a running primary that has no
    /// position for it, which never counts as in sync).
    fn behind(&self, s: &standing::Standing) -> Option<u64> {
        if self.alive {
            s.lag_bytes
        } else {
            Some(
                self.best
                    .zip(s.lsn())
                    .map(|(b, l)| b.bytes_after(l))
                    .unwrap_or(0),
            )
        }
    }

    /// The standby named `to`, or the least behind (the higher priority on a tie); None
    /// when there is none.
    fn target(
        &self,
        view: &ClusterView,
        to: Option<&str>,
        from: &str,
    ) -> Result<Option<&(&'a str, standing::Standing<'a>)>, Refusal> {
        match to {
            Some(to) => {
                known(view, to)?;
                if to == from {
                    return Err(Refusal::AlreadyPrimary(to.to_string()));
                }
                match self.standbys.iter().find(|(name, _)| *name == to) {
                    Some(target) => Ok(Some(target)),
                    None => Err(Refusal::NotAPromotableStandby(to.to_string())),
                }
            }
            None => Ok(self.standbys.iter().min_by_key(|(name, s)| {
                (
                    // Without a primary, a member of the committed synchronous set first.
                    !self.alive && !view.state.sync_set.contains(*name),
                    self.behind(s).unwrap_or(u64::MAX),
                    std::cmp::Reverse(s.member.map(|m| m.priority)),
                )
            })),
        }
    }

    /// Refuse a target that could lose data, unless `force`: with a running primary, one
    /// not in sync with it; without, one more than `max_lag` behind the best position.
    fn refuse_lagging(
        &self,
        view: &ClusterView,
        name: &str,
        s: &standing::Standing,
        force: bool,
    ) -> Result<(), Refusal> {
        let lag = self.behind(s);
        let lagging = if self.alive {
            // Not streaming but with all the primary last reported (its primary just died,
            // say): the hand-over waits for it to replay the final record, or rolls back.
            s.in_sync != Some(true) && lag != Some(0)
        } else {
            lag.is_some_and(|lag| lag > view.settings.max_lag)
        };
        // Without a primary, as the failover itself: with synchronous replication only a
        // member of the committed set is known to hold every acknowledged commit.
        let sync_set = &view.state.sync_set;
        if !self.alive && !force && !sync_set.is_empty() && !sync_set.contains(name) {
            return Err(Refusal::NotSynchronous {
                node: name.to_string(),
                holders: sync_set.iter().cloned().collect(),
            });
        }
        if lagging && !force {
            return Err(Refusal::Lagging {
                node: name.to_string(),
                lag,
                against: if self.alive {
                    LagAgainst::Primary
                } else {
                    LagAgainst::BestKnown
                },
            });
        }
        Ok(())
    }
}

/// `pgfm set-priority NODE PRIORITY`: a data member's failover preference (0: never).
pub fn check_set_priority(
    state: &ClusterState,
    node: &str,
    priority: u32,
) -> Result<Command, Refusal> {
    accepted(
        state,
        Command::SetPriority {
            node: node.to_string(),
            priority,
        },
    )
}

/// `pgfm set-synchronous MODE [--standbys N] [--minimum M | --strict]`: the settings to
/// commit for the whole cluster. Numbers left out keep their value in force; strict stays
/// strict when only the count changes. Refused when `minimum` could never be met by the
/// members that may be promoted: every commit would wait forever. Once the cluster's
/// settings are committed, a new revision of them (`SetSettings`, in their history).
pub fn check_set_synchronous(
    view: &ClusterView,
    mode: &str,
    standbys: Option<usize>,
    minimum: Option<usize>,
    strict: bool,
) -> Result<(SyncSettings, Command), Refusal> {
    let current = view.sync_settings();
    let mode = match mode {
        "off" => SyncMode::Off,
        "on" => SyncMode::On,
        "quorum" => SyncMode::Quorum,
        other => return Err(Refusal::UnknownMode(other.to_string())),
    };
    let standbys = standbys.unwrap_or(current.standbys);
    let minimum = match (strict, minimum) {
        (true, Some(m)) if m != standbys => return Err(Refusal::StrictMinimum(standbys)),
        (true, _) => standbys,
        (false, Some(m)) => m,
        (false, None) if current.strict() => standbys,
        (false, None) => current.minimum.min(standbys),
    };
    let settings = SyncSettings {
        mode,
        standbys,
        minimum,
    };
    if let Some(problem) = settings.problem("--standbys", "--minimum") {
        return Err(Refusal::BadSettings(problem));
    }
    let eligible = standing::synchronous_candidates(&view.state);
    if mode != SyncMode::Off && minimum > eligible {
        return Err(Refusal::MinimumTooHigh { minimum, eligible });
    }
    let command = match &view.state.settings {
        Some(committed) => Command::SetSettings {
            base_revision: committed.revision,
            settings: crate::settings::Settings {
                sync: settings,
                ..committed.values.clone()
            },
            by: "pgfm set-synchronous".to_string(),
            at_unix_ms: view.wall_clock_ms,
        },
        None => Command::SetReplication { settings },
    };
    Ok((settings, accepted(&view.state, command)?))
}

/// `pgfm edit-config`: the cluster-wide settings `settings`, edited from revision
/// `base_revision`, by `by`. Refused, with the key and the fix, when a value cannot be used
/// (the checks of `check-config`), when another edit committed since, when nothing
/// changes, when the lease leaves a node's host watchdog no whole second, and when
/// synchronous replication would ask for more standbys than may ever be promoted.
pub fn check_edit_settings(
    view: &ClusterView,
    base_revision: u64,
    settings: &crate::settings::Settings,
    by: &str,
) -> Result<Command, Refusal> {
    let Some(committed) = &view.state.settings else {
        return Err(Refusal::SettingsNotCommitted);
    };
    if base_revision == committed.revision && *settings == committed.values {
        return Err(Refusal::NothingChanged(committed.revision));
    }
    if settings.lease.watchdog_timeout_s().is_none() && settings.problem().is_none() {
        let watched = view.reports.values().find_map(|o| {
            o.report
                .watchdog
                .as_ref()
                .filter(|w| w.mode != crate::model::WatchdogMode::Off)
                .map(|w| (o.report.name.clone(), w.mode))
        });
        if let Some((node, mode)) = watched {
            return Err(Refusal::NoWatchdogTimeout {
                node,
                mode,
                lease: crate::settings::duration(settings.lease.lease_ms),
                renew: crate::settings::duration(settings.lease.renew_interval_ms),
            });
        }
    }
    let sync = settings.sync;
    let eligible = standing::synchronous_candidates(&view.state);
    if sync.mode != SyncMode::Off && sync.minimum > eligible && settings.problem().is_none() {
        return Err(Refusal::MinimumUnmet {
            minimum: sync.minimum,
            eligible,
        });
    }
    accepted(
        &view.state,
        Command::SetSettings {
            base_revision,
            settings: settings.clone(),
            by: by.to_string(),
            at_unix_ms: view.wall_clock_ms,
        },
    )
}

/// `pgfm allow-node NAME ADDRESS`: `NAME` joins the voters (`voters`: name and agent
/// address of each). Commits `Welcome`; the agent then adds the voter.
pub fn check_allow(
    voters: &[(String, String)],
    name: &str,
    address: &str,
) -> Result<Command, Refusal> {
    if address.parse::<SocketAddr>().is_err() {
        return Err(Refusal::BadAddress(address.to_string()));
    }
    if voters.iter().any(|(n, _)| n == name) {
        return Err(Refusal::AlreadyMember(name.to_string()));
    }
    if let Some((other, _)) = voters.iter().find(|(_, a)| a == address) {
        return Err(Refusal::AddressTaken {
            address: address.to_string(),
            other: other.clone(),
        });
    }
    Ok(Command::Welcome {
        name: name.to_string(),
    })
}

/// `pgfm disallow-node NAME [--force]`: `NAME` leaves the voters and the cluster forgets it.
/// Unless forced, refused for the primary, when fewer than a majority of the remaining
/// voters have a fresh report, and for the coordinator `answering` the request (it would
/// remove itself while carrying the change out). Commits `RemoveMember`; the agent then
/// removes the voter.
pub fn check_disallow(
    view: &ClusterView,
    now_ms: u64,
    name: &str,
    force: bool,
    answering: &str,
) -> Result<Command, Refusal> {
    if !view.voters.iter().any(|n| n == name) {
        return Err(Refusal::NotAMember {
            name: name.to_string(),
            members: view.voters.clone(),
        });
    }
    if view.state.primary.as_deref() == Some(name) && !force {
        return Err(Refusal::IsPrimary(name.to_string()));
    }
    let remaining: Vec<&String> = view.voters.iter().filter(|n| *n != name).collect();
    let up = remaining
        .iter()
        .filter(|n| view.fresh_report(n, now_ms).is_some())
        .count();
    if up * 2 <= remaining.len() && !force {
        return Err(Refusal::NoMajority {
            name: name.to_string(),
            up,
            remaining: remaining.len(),
        });
    }
    if name == answering && !force {
        return Err(Refusal::IsCoordinator(name.to_string()));
    }
    accepted(
        &view.state,
        Command::RemoveMember {
            name: name.to_string(),
        },
    )
}

/// `name` is a voter, else the refusal that lists them.
/// `pgfm maintenance NODE on|off`, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceAsk<'a> {
    pub node: &'a str,
    pub on: bool,
    pub keep_running: bool,
    pub force: bool,
    /// The operator's `user@host`.
    pub by: &'a str,
    pub at_unix_ms: u64,
}

/// What `pgfm maintenance` commits: the command, and for the primary the switchover away
/// from it that the command begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenancePlan {
    pub command: Command,
    pub handover: Option<Handover>,
}

/// `pgfm maintenance NODE on`: a data node out of failover and synchronous replication, its
/// PostgreSQL stopped (unless `keep_running`); the primary first hands over to the standby
/// `pgfm switchover` would choose. Refused when the primary (the new one, for the primary's
/// maintenance) would be left with no promotable standby in sync, or the synchronous
/// minimum could not be met without the node — unless `force`. `off`: it takes its place
/// again.
pub fn check_maintenance(
    view: &ClusterView,
    now_ms: u64,
    ask: &MaintenanceAsk,
) -> Result<MaintenancePlan, Refusal> {
    let state = &view.state;
    let node = ask.node;
    known(view, node)?;
    if !ask.on {
        let command = accepted(
            state,
            Command::LeaveMaintenance {
                node: node.to_string(),
            },
        )?;
        return Ok(MaintenancePlan {
            command,
            handover: None,
        });
    }
    not_in_maintenance(state, node)?;
    if let Some(sw) = state.switchover.as_ref() {
        if sw.to == node {
            return Err(Refusal::SwitchoverToNode(node.to_string()));
        }
    }
    let is_primary = state.primary.as_deref() == Some(node);
    let handover = match is_primary {
        true => Some(check_switchover(view, now_ms, None)?),
        false => None,
    };
    // Who is the primary during the maintenance, and which standbys it keeps.
    let primary = handover
        .as_ref()
        .map(|h| h.to.clone())
        .or_else(|| state.primary.clone());
    if let (Some(primary), false) = (&primary, ask.force) {
        let others = |name: &&String| *name != node && *name != primary;
        let in_sync = view
            .voters
            .iter()
            .filter(others)
            .any(|name| standing::of(view, name, now_ms).promotable_in_sync());
        if !in_sync {
            return Err(Refusal::MaintenanceLeavesNoStandby {
                node: node.to_string(),
                primary: primary.clone(),
            });
        }
    }
    let sync = view.sync_settings();
    let eligible = state
        .data_members()
        .filter(|m| m.name != node && Some(&m.name) != primary.as_ref())
        .filter(|m| state.may_promote(&m.name) && state.may_be_synchronous(&m.name))
        .count();
    let below_minimum = sync.mode != SyncMode::Off && eligible < sync.minimum;
    if below_minimum && !ask.force {
        return Err(Refusal::MaintenanceBelowMinimum {
            node: node.to_string(),
            minimum: sync.minimum,
            eligible,
        });
    }
    let command = accepted(
        state,
        Command::EnterMaintenance {
            node: node.to_string(),
            maintenance: crate::model::Maintenance {
                since_unix_ms: ask.at_unix_ms,
                by: ask.by.to_string(),
                keep_running: ask.keep_running,
                forced: below_minimum,
            },
            handover: handover
                .as_ref()
                .map(|h| crate::model::MaintenanceHandover {
                    to: h.to.clone(),
                    generation: h.generation,
                }),
        },
    )?;
    Ok(MaintenancePlan { command, handover })
}

/// `pgfm set-tag NODE KEY=VALUE ...`: the tags changed together. Refused, unless `force`,
/// when the primary would keep no promotable standby in sync, or fewer standbys could be
/// synchronous than `minimum_standbys`; refused when nothing changes.
pub fn check_tags(
    view: &ClusterView,
    now_ms: u64,
    node: &str,
    tags: &[crate::tags::Tag],
    force: bool,
) -> Result<Command, Refusal> {
    let state = &view.state;
    known(view, node)?;
    let command = Command::SetTags {
        node: node.to_string(),
        tags: tags.to_vec(),
    };
    let mut after = state.clone();
    after.apply(&command)?;
    let change = tags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    if after.tags_of(node) == state.tags_of(node) {
        return Err(Refusal::TagUnchanged {
            node: node.to_string(),
            change,
        });
    }
    if force {
        return Ok(command);
    }
    if let Some(primary) = state.primary.as_deref() {
        let in_sync = |s: &ClusterState| {
            view.voters.iter().filter(|n| *n != primary).any(|name| {
                s.may_promote(name) && standing::of(view, name, now_ms).promotable_in_sync()
            })
        };
        if in_sync(state) && !in_sync(&after) {
            return Err(Refusal::TagLeavesNoStandby {
                node: node.to_string(),
                change,
                primary: primary.to_string(),
            });
        }
    }
    let sync = view.sync_settings();
    let eligible = standing::synchronous_candidates(&after);
    let before = standing::synchronous_candidates(state);
    if sync.mode != SyncMode::Off && eligible < sync.minimum && eligible < before {
        return Err(Refusal::TagBelowMinimum {
            node: node.to_string(),
            change,
            minimum: sync.minimum,
            eligible,
        });
    }
    Ok(command)
}

/// `pgfm reload [NODE ...]`: the data nodes named (none: every one) reload PostgreSQL's
/// configuration; the command, and the count each node's reload will reach.
pub fn check_reload(
    view: &ClusterView,
    nodes: &[String],
) -> Result<(Command, BTreeMap<String, u64>), Refusal> {
    let state = &view.state;
    for node in nodes {
        known(view, node)?;
    }
    let nodes: Vec<String> = if nodes.is_empty() {
        state.data_members().map(|m| m.name.clone()).collect()
    } else {
        nodes.to_vec()
    };
    let command = accepted(
        state,
        Command::RequestReload {
            nodes: nodes.clone(),
        },
    )?;
    let counts = nodes
        .into_iter()
        .map(|n| {
            let count = state.reloads.get(&n).copied().unwrap_or(0) + 1;
            (n, count)
        })
        .collect();
    Ok((command, counts))
}

/// `pgfm restart --in-place` of `node`: its PostgreSQL stopped cleanly and started again
/// where it runs; the command, and the count its restarts will reach.
pub fn check_restart(view: &ClusterView, node: &str) -> Result<(Command, u64), Refusal> {
    known(view, node)?;
    let command = accepted(
        &view.state,
        Command::RequestRestart {
            node: node.to_string(),
        },
    )?;
    Ok((
        command,
        view.state.restarts.get(node).copied().unwrap_or(0) + 1,
    ))
}

/// `pgfm reinit NODE`: a standby re-cloned from the primary, its data directory kept
/// aside; refused for the primary, a witness, a node under maintenance or being re-cloned.
pub fn check_reinit(
    view: &ClusterView,
    node: &str,
    by: &str,
    at_unix_ms: u64,
) -> Result<Command, Refusal> {
    known(view, node)?;
    accepted(
        &view.state,
        Command::RequestReinit {
            node: node.to_string(),
            by: by.to_string(),
            at_unix_ms,
        },
    )
}

fn known(view: &ClusterView, name: &str) -> Result<(), Refusal> {
    if view.voters.iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(Refusal::UnknownNode {
            name: name.to_string(),
            members: view.voters.clone(),
        })
    }
}

/// Refused, in the log's words, when `name` is under maintenance: it may not be promoted.
fn not_in_maintenance(state: &ClusterState, name: &str) -> Result<(), Refusal> {
    match state.maintenance.get(name) {
        Some(m) => Err(Refusal::Log(CommandError::InMaintenance {
            node: name.to_string(),
            by: m.by.clone(),
        })),
        None => Ok(()),
    }
}

/// `command`, if the log would apply it to `state` now.
fn accepted(state: &ClusterState, command: Command) -> Result<Command, Refusal> {
    state.clone().apply(&command)?;
    Ok(command)
}

#[cfg(test)]
mod tests {
    //! One table per command: a fault done to a healthy lab, the request, and what is
    //! committed or the exact message the operator reads. Every refusal the end-to-end
    //! tests (`crates/pgfm/tests`) check is here.

    use super::*;
    use crate::decide::ClusterView;
    use crate::model::Promotion;
    use crate::testing::{behind, lab, not_streaming, priority, silent, NOW};

    type Fault = fn(&mut ClusterView);

    const HEALTHY: Fault = |_| {};

    fn outcome<T>(result: Result<T, Refusal>, show: impl Fn(T) -> String) -> String {
        match result {
            Ok(accepted) => show(accepted),
            Err(refusal) => format!("refused: {refusal}"),
        }
    }

    fn under_way(v: &mut ClusterView) {
        v.state.switchover = Some(crate::testing::switchover_pg1_to_pg2());
    }

    /// How long after the last renewal the coordinator counts a lease as run out.
    fn lease_and_drift(v: &ClusterView) -> u64 {
        v.settings.lease.lease_ms + v.settings.lease.drift_margin_ms
    }

    fn show_handover(h: Handover) -> String {
        let force = if h.force { " (forced)" } else { "" };
        format!(
            "{} hands over to {} in generation {}{force}",
            h.from, h.to, h.generation
        )
    }

    // Long: one table, a row per fault and request; it reads best in one piece.
    #[test]
    fn switchover() {
        let check = |data_nodes: usize, fault: Fault, to: Option<&str>, expected: &str| {
            let mut v = lab(data_nodes);
            fault(&mut v);
            let got = outcome(check_switchover(&v, NOW, to), show_handover);
            assert_eq!(got, expected, "switchover to {to:?}");
        };
        check(2, HEALTHY, None, "pg1 hands over to pg2 in generation 1");
        check(
            2,
            HEALTHY,
            Some("pg2"),
            "pg1 hands over to pg2 in generation 1",
        );
        // The most advanced standby in sync, then the higher priority.
        check(
            3,
            |v| behind(v, "pg2", 1_000),
            None,
            "pg1 hands over to pg3 in generation 1",
        );
        check(
            3,
            |v| priority(v, "pg3", 50),
            None,
            "pg1 hands over to pg2 in generation 1",
        );
        check(
            2,
            HEALTHY,
            Some("pg7"),
            "refused: unknown node \"pg7\" (the members are pg1, pg2, witness)",
        );
        check(
            2,
            HEALTHY,
            Some("pg1"),
            "refused: pg1 is already the primary",
        );
        check(
            2,
            HEALTHY,
            Some("witness"),
            "refused: witness is not a standby in sync with pg1: it is not a running standby \
             (Witness)",
        );
        // pg2's agent killed.
        check(
            2,
            |v| silent(v, "pg2"),
            Some("pg2"),
            "refused: pg2 is not a standby in sync with pg1: it is not a running standby (Idle)",
        );
        check(
            2,
            |v| silent(v, "pg2"),
            None,
            "refused: no standby is in sync with pg1: a switchover now could lose data (No \
             standby databases were found.)",
        );
        check(
            2,
            |v| behind(v, "pg2", 2_000_000),
            Some("pg2"),
            "refused: pg2 is not a standby in sync with pg1: it is 2000000 bytes behind or not \
             streaming",
        );
        check(
            2,
            |v| behind(v, "pg2", 2_000_000),
            None,
            "refused: no standby is in sync with pg1: a switchover now could lose data (No \
             standby database is in sync with the primary: pg2 is 2000000 bytes behind \
             (max_lag 1048576). Promoting now could lose data.)",
        );
        check(
            2,
            |v| not_streaming(v, "pg2"),
            Some("pg2"),
            "refused: pg2 is not a standby in sync with pg1: it is 0 bytes behind or not \
             streaming",
        );
        check(
            2,
            |v| priority(v, "pg2", 0),
            Some("pg2"),
            "refused: pg2 is not a standby in sync with pg1: it is not promotable",
        );
        check(
            2,
            |v| v.reports.get_mut("pg1").unwrap().report.current_lsn = None,
            Some("pg2"),
            "refused: pg2 is not a standby in sync with pg1: it is not promotable",
        );
        check(
            2,
            |v| v.reports.get_mut("pg1").unwrap().report.db_up = false,
            Some("pg2"),
            "refused: there is no running primary to switch over from",
        );
        check(
            2,
            under_way,
            Some("pg2"),
            "refused: a switchover from pg1 to pg2 is already under way",
        );
        // A primary whose lease is gone (given up, or run out: its host died a moment
        // ago and its last report is still fresh) no longer serves.
        check(
            2,
            |v| v.state.lease_released = true,
            Some("pg2"),
            "refused: there is no running primary to switch over from",
        );
        check(
            2,
            |v| v.last_renewal_seen_ms = Some(NOW - lease_and_drift(v)),
            Some("pg2"),
            "refused: there is no running primary to switch over from",
        );
        check(
            2,
            |v| v.last_renewal_seen_ms = Some(NOW - lease_and_drift(v) + 1),
            Some("pg2"),
            "pg1 hands over to pg2 in generation 1",
        );
    }

    /// The switchover ended: pg2 was promoted in generation 2 (from `from`).
    fn promoted(v: &mut ClusterView, from: Option<&str>) {
        v.state.generation = Generation(2);
        v.state.primary = Some("pg2".into());
        v.state.history.push(Promotion {
            generation: Generation(2),
            at_unix_ms: 0,
            from: from.map(str::to_string),
            to: "pg2".into(),
            reason: "switchover from pg1 to pg2".into(),
            lsn: None,
            lost_bytes: Some(0),
            lost_at_least: false,
        });
    }

    #[test]
    fn cancel_switchover() {
        let check = |fault: Fault, expected: &str| {
            let mut v = lab(2);
            fault(&mut v);
            let got = outcome(
                check_cancel_switchover(&v.state),
                |sw| match cancel_command(sw, 42) {
                    Command::CancelSwitchover { reason, .. } => reason,
                    other => format!("{other:?}"),
                },
            );
            assert_eq!(got, expected);
        };
        check(
            under_way,
            "pgfm switchover --cancel: switchover from pg1 to pg2 cancelled",
        );
        check(HEALTHY, "refused: no switchover is under way");
        check(
            |v| promoted(v, Some("pg1")),
            "refused: no switchover is under way: pg2 is the primary of generation 2 \
             (switchover from pg1 to pg2); to go back, run pgfm switchover --to pg1",
        );
        check(
            |v| promoted(v, None),
            "refused: no switchover is under way: pg2 is the primary of generation 2 \
             (switchover from pg1 to pg2); to go back, run pgfm switchover --to the old primary",
        );
        // A switchover rolled back: the last promotion is of an earlier generation.
        check(
            |v| {
                promoted(v, Some("pg1"));
                v.state.generation = Generation(3);
            },
            "refused: no switchover is under way",
        );
    }

    // Long: one table, a row per fault and request; it reads best in one piece.
    #[test]
    fn promote() {
        let check =
            |data_nodes: usize, fault: Fault, to: Option<&str>, force: bool, expected: &str| {
                let mut v = lab(data_nodes);
                fault(&mut v);
                let got = outcome(check_promote(&v, NOW, to, force), |plan| match plan {
                    PromotePlan::FinishSwitchover(sw) => {
                        format!("finish the switchover from {} to {}", sw.from, sw.to)
                    }
                    PromotePlan::HandOver(h) => show_handover(h),
                    PromotePlan::AfterLease {
                        from,
                        to,
                        generation,
                        force,
                    } => format!(
                        "{} replaces {from} after its lease in generation {generation}{}",
                        to.as_deref().unwrap_or("the best standby"),
                        if force { " (forced)" } else { "" }
                    ),
                });
                assert_eq!(got, expected, "promote to {to:?}, force {force}");
            };
        let dead: Fault = |v| silent(v, "pg1");
        check(
            2,
            HEALTHY,
            Some("pg2"),
            false,
            "pg1 hands over to pg2 in generation 1",
        );
        check(
            2,
            HEALTHY,
            None,
            false,
            "pg1 hands over to pg2 in generation 1",
        );
        check(
            2,
            |v| priority(v, "pg2", 0),
            Some("pg2"),
            false,
            "refused: pg2 is not a running, promotable standby",
        );
        check(
            2,
            HEALTHY,
            Some("pg7"),
            false,
            "refused: unknown node \"pg7\" (the members are pg1, pg2, witness)",
        );
        check(
            2,
            HEALTHY,
            Some("pg1"),
            false,
            "refused: pg1 is already the primary",
        );
        check(
            2,
            |v| v.state.primary = None,
            None,
            false,
            "refused: the cluster has no primary yet",
        );
        // A switchover under way is finished only by --force to its own target.
        let finish = "refused: a switchover from pg1 to pg2 is under way: wait for it, cancel \
                      it (pgfm switchover --cancel), or finish it at once (pgfm promote --to \
                      pg2 --force)";
        check(3, under_way, Some("pg2"), false, finish);
        check(3, under_way, Some("pg3"), true, finish);
        check(
            3,
            under_way,
            None,
            true,
            "finish the switchover from pg1 to pg2",
        );
        check(
            3,
            under_way,
            Some("pg2"),
            true,
            "finish the switchover from pg1 to pg2",
        );
        // With a running primary: a target not in sync with it needs --force.
        check(
            2,
            |v| behind(v, "pg2", 2_000_000),
            Some("pg2"),
            false,
            "refused: pg2 is 2000000 bytes behind the primary: promoting it could lose that \
             much; add --force to accept",
        );
        check(
            2,
            |v| behind(v, "pg2", 2_000_000),
            Some("pg2"),
            true,
            "pg1 hands over to pg2 in generation 1 (forced)",
        );
        // Not streaming, but with everything the primary last reported (CI: the primary's
        // host had just died): nothing to lose, the hand-over waits for its replay.
        check(
            2,
            |v| not_streaming(v, "pg2"),
            Some("pg2"),
            false,
            "pg1 hands over to pg2 in generation 1",
        );
        check(
            2,
            |v| v.reports.get_mut("pg1").unwrap().report.current_lsn = None,
            None,
            false,
            "refused: pg2 is an unknown number of bytes behind the primary: promoting it could \
             lose that much; add --force to accept",
        );
        check(
            2,
            |v| silent(v, "pg2"),
            None,
            false,
            "refused: no running, promotable standby to promote",
        );
        // The least behind, then the higher priority.
        check(
            3,
            |v| behind(v, "pg2", 1_000),
            None,
            false,
            "pg1 hands over to pg3 in generation 1",
        );
        check(
            3,
            |v| priority(v, "pg2", 50),
            None,
            false,
            "pg1 hands over to pg3 in generation 1",
        );
        // The primary is gone: measured against the best position any node reported (the
        // old primary's last report included), within max_lag.
        check(
            2,
            dead,
            None,
            false,
            "pg2 replaces pg1 after its lease in generation 1",
        );
        // Its host died a moment ago: its last report is still fresh, but its lease ran out.
        check(
            2,
            |v| v.last_renewal_seen_ms = Some(NOW - lease_and_drift(v)),
            None,
            false,
            "pg2 replaces pg1 after its lease in generation 1",
        );
        check(
            2,
            |v| {
                silent(v, "pg1");
                behind(v, "pg2", 2_000_000);
            },
            Some("pg2"),
            false,
            "refused: pg2 is 2000000 bytes behind the best known position: promoting it could \
             lose that much; add --force to accept",
        );
        check(
            2,
            |v| {
                silent(v, "pg1");
                behind(v, "pg2", 2_000_000);
            },
            None,
            true,
            "pg2 replaces pg1 after its lease in generation 1 (forced)",
        );
        check(
            3,
            |v| {
                silent(v, "pg1");
                behind(v, "pg2", 2_000_000);
            },
            None,
            false,
            "pg3 replaces pg1 after its lease in generation 1",
        );
        check(
            2,
            |v| {
                silent(v, "pg1");
                silent(v, "pg2");
            },
            None,
            false,
            "the best standby replaces pg1 after its lease in generation 1",
        );
        // Synchronous replication, the primary gone: only a member of the committed set,
        // as the failover itself; degraded (the primary alone), nobody without --force.
        fn sync_set(v: &mut ClusterView, members: &[&str]) {
            silent(v, "pg1");
            v.state.sync_set = members.iter().map(|m| m.to_string()).collect();
            v.state.sync_quorum = 1;
        }
        check(
            3,
            |v| sync_set(v, &["pg3"]),
            None,
            false,
            "pg3 replaces pg1 after its lease in generation 1",
        );
        check(
            3,
            |v| sync_set(v, &["pg3"]),
            Some("pg2"),
            false,
            "refused: pg2 is not known to hold every acknowledged commit (only pg3 may): \
             promoting it could lose them; add --force to accept",
        );
        check(
            3,
            |v| sync_set(v, &["pg1"]),
            None,
            false,
            "refused: pg2 is not known to hold every acknowledged commit (only pg1 may): \
             promoting it could lose them; add --force to accept",
        );
        check(
            3,
            |v| sync_set(v, &["pg1"]),
            Some("pg3"),
            true,
            "pg3 replaces pg1 after its lease in generation 1 (forced)",
        );
    }

    #[test]
    fn set_priority() {
        let check = |node: &str, expected: &str| {
            let v = lab(2);
            let got = outcome(check_set_priority(&v.state, node, 0), |c| format!("{c:?}"));
            assert_eq!(got, expected);
        };
        check("pg2", "SetPriority { node: \"pg2\", priority: 0 }");
        check("pg9", "refused: node pg9 is not a member");
        check(
            "witness",
            "refused: node witness is not a registered data node",
        );
    }

    #[test]
    fn set_synchronous() {
        type Request<'a> = (&'a str, Option<usize>, Option<usize>, bool);
        let check = |fault: Fault, (mode, standbys, minimum, strict): Request, expected: &str| {
            let mut v = lab(3);
            fault(&mut v);
            let got = outcome(
                check_set_synchronous(&v, mode, standbys, minimum, strict),
                |(s, _)| format!("{} {} {}", s.mode, s.standbys, s.minimum),
            );
            assert_eq!(
                got, expected,
                "{mode} {standbys:?} {minimum:?} strict {strict}"
            );
        };
        check(HEALTHY, ("on", None, None, false), "on 1 0");
        check(HEALTHY, ("quorum", Some(2), None, true), "quorum 2 2");
        check(HEALTHY, ("off", Some(3), None, true), "off 3 3");
        // Two standbys may be promoted: three copies would block every commit.
        check(
            HEALTHY,
            ("on", Some(3), None, true),
            "refused: --minimum 3 needs that many promotable standbys and the cluster has 2: \
             every commit would wait forever (lower --minimum, or add standbys)",
        );
        check(
            |v| priority(v, "pg3", 0),
            ("on", Some(2), Some(2), false),
            "refused: --minimum 2 needs that many promotable standbys and the cluster has 1: \
             every commit would wait forever (lower --minimum, or add standbys)",
        );
        check(
            HEALTHY,
            ("fast", None, None, false),
            "refused: unknown mode \"fast\" (use off, on or quorum)",
        );
        check(
            HEALTHY,
            ("on", Some(2), Some(1), true),
            "refused: --strict means --minimum 2 (the standbys asked); give one of them",
        );
        check(
            HEALTHY,
            ("on", Some(0), None, false),
            "refused: --standbys must be at least 1",
        );
        check(
            HEALTHY,
            ("on", Some(1), Some(2), false),
            "refused: --minimum (2) is more than --standbys (1)",
        );
        // Numbers left out keep their value; strict stays strict.
        let strict: Fault = |v| {
            v.state.replication = Some(SyncSettings {
                mode: SyncMode::On,
                standbys: 2,
                minimum: 2,
            })
        };
        check(strict, ("quorum", None, None, false), "quorum 2 2");
        check(strict, ("on", Some(1), None, false), "on 1 1");
        let lenient: Fault = |v| {
            v.state.replication = Some(SyncSettings {
                mode: SyncMode::On,
                standbys: 2,
                minimum: 1,
            })
        };
        check(lenient, ("on", Some(2), None, false), "on 2 1");
        check(lenient, ("quorum", Some(1), None, false), "quorum 1 1");
    }

    /// `pgfm edit-config`: an edit of the revision in force is committed as it is; every
    /// refusal names what to do, and `set-synchronous` becomes a revision too.
    #[test]
    fn edit_settings() {
        use crate::settings::Settings;
        type Edit = fn(&mut Settings);
        let check = |fault: Fault, base: u64, edit: Edit, expected: &str| {
            let mut v = lab(3);
            fault(&mut v);
            let mut settings = Settings::default();
            edit(&mut settings);
            let got = outcome(check_edit_settings(&v, base, &settings, "dba@db1"), |c| {
                let mut state = v.state.clone();
                state.apply(&c).unwrap();
                let committed = state.settings.unwrap();
                let last = committed.history.last().unwrap();
                let changes: Vec<String> = last.changes.iter().map(|c| c.to_string()).collect();
                format!(
                    "r{} by {}: {}",
                    committed.revision,
                    last.by,
                    changes.join(", ")
                )
            });
            assert_eq!(got, expected);
        };
        check(
            HEALTHY,
            1,
            |s| s.auto_failover = false,
            "r2 by dba@db1: failover.auto_failover: true -> false",
        );
        check(
            HEALTHY,
            1,
            |s| {
                s.sync.mode = SyncMode::Quorum;
                s.sync.standbys = 2;
            },
            "r2 by dba@db1: replication.synchronous: off -> quorum, replication.sync_standbys: 1 -> 2",
        );
        check(
            HEALTHY,
            1,
            |_| {},
            "refused: nothing to change: the settings are those of revision 1",
        );
        check(HEALTHY, 0, |s| s.max_lag = 1, "refused: the settings were edited at revision 0, but revision 1 has been committed since (pgfm show-config shows it; edit again)");
        check(HEALTHY, 1, |s| s.report_ttl_ms = 500, "refused: timing.report_ttl is 500ms, not longer than timing.probe_interval (1s); every agent would flap between up and down (make it at least twice the probe interval)");
        check(
            HEALTHY,
            1,
            |s| s.lease.lease_ms = 4_000,
            "r2 by dba@db1: timing.lease: 2400ms -> 4s",
        );
        let watched: Fault = |v| {
            v.reports.get_mut("pg1").unwrap().report.watchdog = Some(crate::model::WatchdogReport {
                mode: crate::model::WatchdogMode::Required,
                armed: true,
                problem: None,
                timeout_s: None,
            })
        };
        let short: Edit = |s| {
            s.lease.lease_ms = 2_000;
            s.lease.safety_margin_ms = 400;
            s.lease.renew_interval_ms = 800;
        };
        check(watched, 1, short, "refused: [timing] leaves the host watchdog of pg1 (mode required) no whole second: lease 2s - 250 ms - renew_interval 800ms is under 1 s (lengthen the lease, shorten renew_interval, or set that node's [watchdog] mode = \"off\")");
        check(HEALTHY, 1, short, "r2 by dba@db1: timing.lease: 2400ms -> 2s, timing.renew_interval: 300ms -> 800ms, timing.safety_margin: 800ms -> 400ms");
        check(
            |v| priority(v, "pg3", 0),
            1,
            |s| {
                s.sync.mode = SyncMode::On;
                s.sync.standbys = 2;
                s.sync.minimum = 2;
            },
            "refused: replication.minimum_standbys = 2 needs that many promotable standbys and the cluster has 1: every commit would wait forever (lower it, or add standbys)",
        );
        check(|v| v.state.settings = None, 0, |s| s.max_lag = 1, "refused: the cluster's settings are not committed yet: its first coordinator commits its own file's before anything else (pgfm cluster-status shows whether one is elected)");

        let v = lab(3);
        let (_, command) = check_set_synchronous(&v, "on", None, None, false).unwrap();
        let mut state = v.state.clone();
        state.apply(&command).unwrap();
        let committed = state.settings.unwrap();
        assert_eq!(
            (committed.revision, committed.values.sync.mode),
            (2, SyncMode::On)
        );
        assert_eq!(committed.history[1].by, "pgfm set-synchronous");
    }

    #[test]
    fn allow_node() {
        let voters: Vec<(String, String)> = [("pg1", 7001), ("pg2", 7002), ("witness", 7003)]
            .iter()
            .map(|(n, p)| (n.to_string(), format!("127.0.0.1:{p}")))
            .collect();
        let check = |name: &str, address: &str, expected: &str| {
            let got = outcome(check_allow(&voters, name, address), |c| format!("{c:?}"));
            assert_eq!(got, expected, "{name} {address}");
        };
        check("pg3", "127.0.0.1:7004", "Welcome { name: \"pg3\" }");
        check(
            "pg3",
            "localhost:7004",
            "refused: \"localhost:7004\" is not an ip:port address",
        );
        check("pg2", "127.0.0.1:1", "refused: pg2 is already a member");
        check(
            "pg3",
            "127.0.0.1:7002",
            "refused: 127.0.0.1:7002 is already the address of pg2",
        );
    }

    #[test]
    fn disallow_node() {
        let check = |data_nodes: usize, fault: Fault, name: &str, force: bool, expected: &str| {
            let mut v = lab(data_nodes);
            fault(&mut v);
            let got = outcome(check_disallow(&v, NOW, name, force, "pg2"), |c| {
                format!("{c:?}")
            });
            assert_eq!(got, expected, "disallow {name}, force {force}");
        };
        check(3, HEALTHY, "pg3", false, "RemoveMember { name: \"pg3\" }");
        check(
            3,
            HEALTHY,
            "pg1",
            false,
            "refused: pg1 is the primary: switch over first (pgfm switchover), or add --force",
        );
        check(3, HEALTHY, "pg1", true, "RemoveMember { name: \"pg1\" }");
        check(
            3,
            HEALTHY,
            "pg9",
            false,
            "refused: pg9 is not a member (the members are pg1, pg2, pg3, witness)",
        );
        // Three members left, the witness's agent dead: without pg3, one of two is up.
        let witness_dead: Fault = |v| silent(v, "witness");
        check(
            2,
            witness_dead,
            "pg1",
            true,
            "RemoveMember { name: \"pg1\" }",
        );
        check(
            2,
            witness_dead,
            "pg2",
            false,
            "refused: without pg2, only 1 of the 2 remaining members are up: the cluster \
             would have no majority; bring members back first, or add --force",
        );
        check(
            3,
            witness_dead,
            "pg3",
            false,
            "RemoveMember { name: \"pg3\" }",
        );
        // pg2 answers: it would remove itself while carrying the change out.
        check(
            3,
            HEALTHY,
            "pg2",
            false,
            "refused: pg2 is the coordinator answering this request: run it on another member, \
             or add --force",
        );
        check(3, HEALTHY, "pg2", true, "RemoveMember { name: \"pg2\" }");
    }

    fn show_maintenance(plan: MaintenancePlan) -> String {
        let handover = plan
            .handover
            .map(|h| format!(", {} hands over to {}", h.from, h.to))
            .unwrap_or_default();
        match plan.command {
            Command::EnterMaintenance {
                node, maintenance, ..
            } => format!(
                "{node} enters maintenance{}{handover}",
                if maintenance.forced { " (forced)" } else { "" }
            ),
            Command::LeaveMaintenance { node } => format!("{node} leaves maintenance{handover}"),
            other => format!("{other:?}"),
        }
    }

    fn under_maintenance(v: &mut ClusterView, name: &str) {
        v.state.maintenance.insert(
            name.to_string(),
            crate::model::Maintenance {
                since_unix_ms: 1,
                by: "dba@db1".into(),
                keep_running: false,
                forced: false,
            },
        );
    }

    // Long: one table, a row per fault and request; it reads best in one piece.
    #[test]
    fn maintenance() {
        let check =
            |data_nodes: usize, fault: Fault, node: &str, on: bool, force: bool, expected: &str| {
                let mut v = lab(data_nodes);
                fault(&mut v);
                let ask = MaintenanceAsk {
                    node,
                    on,
                    keep_running: false,
                    force,
                    by: "dba@db1",
                    at_unix_ms: 7,
                };
                let got = outcome(check_maintenance(&v, NOW, &ask), show_maintenance);
                assert_eq!(got, expected, "maintenance {node} {on} (force {force})");
            };
        check(3, HEALTHY, "pg3", true, false, "pg3 enters maintenance");
        // The primary hands over first, to the standby a switchover would choose.
        check(
            3,
            |v| behind(v, "pg2", 1_000),
            "pg1",
            true,
            false,
            "pg1 enters maintenance, pg1 hands over to pg3",
        );
        // With two data nodes, either one leaves the primary without a standby.
        check(
            2,
            HEALTHY,
            "pg1",
            true,
            false,
            "refused: with pg1 under maintenance, pg2 would have no promotable standby in sync \
             with it: should pg2 fail, no standby could take over without losing data (add \
             --force to accept)",
        );
        check(
            2,
            HEALTHY,
            "pg1",
            true,
            true,
            "pg1 enters maintenance, pg1 hands over to pg2",
        );
        check(
            2,
            HEALTHY,
            "pg2",
            true,
            false,
            "refused: with pg2 under maintenance, pg1 would have no promotable standby in sync \
             with it: should pg1 fail, no standby could take over without losing data (add \
             --force to accept)",
        );
        // The other standby lags: it could not take over without loss either.
        check(
            3,
            |v| behind(v, "pg2", 2_000_000),
            "pg3",
            true,
            false,
            "refused: with pg3 under maintenance, pg1 would have no promotable standby in sync \
             with it: should pg1 fail, no standby could take over without losing data (add \
             --force to accept)",
        );
        // The primary with no standby in sync to hand over to: --force does not help.
        check(
            2,
            |v| behind(v, "pg2", 2_000_000),
            "pg1",
            true,
            true,
            "refused: no standby is in sync with pg1: a switchover now could lose data (No \
             standby database is in sync with the primary: pg2 is 2000000 bytes behind \
             (max_lag 1048576). Promoting now could lose data.)",
        );
        // The synchronous minimum needs the node.
        let strict: Fault = |v| {
            v.settings.sync.mode = SyncMode::On;
            v.settings.sync.minimum = 2;
            v.settings.sync.standbys = 2;
        };
        check(
            3,
            strict,
            "pg3",
            true,
            false,
            "refused: replication.minimum_standbys = 2, and with pg3 under maintenance only 1 \
             promotable standby(s) remain: every commit would wait for pg3 until pgfm \
             maintenance pg3 off (lower the minimum with pgfm edit-config, or add --force to \
             accept)",
        );
        check(
            3,
            strict,
            "pg3",
            true,
            true,
            "pg3 enters maintenance (forced)",
        );
        // Not for a witness, an unknown node, twice, or a switchover's target.
        check(
            3,
            HEALTHY,
            "witness",
            true,
            false,
            "refused: node witness is not a registered data node",
        );
        check(
            3,
            HEALTHY,
            "pg7",
            true,
            false,
            "refused: unknown node \"pg7\" (the members are pg1, pg2, pg3, witness)",
        );
        check(
            2,
            |v| under_maintenance(v, "pg2"),
            "pg2",
            true,
            false,
            "refused: pg2 is under maintenance (put there by dba@db1; pgfm maintenance pg2 off \
             ends it)",
        );
        check(
            3,
            |v| under_maintenance(v, "pg3"),
            "pg3",
            true,
            false,
            "refused: pg3 is under maintenance (put there by dba@db1; pgfm maintenance pg3 off \
             ends it)",
        );
        check(
            3,
            under_way,
            "pg2",
            true,
            false,
            "refused: a switchover to pg2 is under way: wait for it, or cancel it (pgfm \
             switchover --cancel)",
        );
        check(
            3,
            under_way,
            "pg1",
            true,
            false,
            "refused: a switchover from pg1 to pg2 is already under way",
        );
        // Off: only for a node under maintenance.
        check(
            3,
            |v| under_maintenance(v, "pg3"),
            "pg3",
            false,
            false,
            "pg3 leaves maintenance",
        );
        check(
            3,
            HEALTHY,
            "pg3",
            false,
            false,
            "refused: pg3 is not under maintenance",
        );
        // A node under maintenance is no switchover's or promotion's target.
        let mut v = lab(3);
        under_maintenance(&mut v, "pg3");
        let refusal = "refused: pg3 is under maintenance (put there by dba@db1; pgfm maintenance \
                       pg3 off ends it)";
        assert_eq!(
            outcome(check_switchover(&v, NOW, Some("pg3")), show_handover),
            refusal
        );
        assert_eq!(
            outcome(check_promote(&v, NOW, Some("pg3"), true), |p| format!(
                "{p:?}"
            )),
            refusal
        );
        assert_eq!(
            outcome(check_switchover(&v, NOW, None), show_handover),
            "pg1 hands over to pg2 in generation 1"
        );
    }

    #[test]
    fn reinit() {
        let check = |fault: Fault, node: &str, expected: &str| {
            let mut v = lab(2);
            fault(&mut v);
            let got = outcome(check_reinit(&v, node, "dba@db1", 7), |c| format!("{c:?}"));
            assert_eq!(got, expected, "reinit {node}");
        };
        check(
            HEALTHY,
            "pg2",
            "RequestReinit { node: \"pg2\", by: \"dba@db1\", at_unix_ms: 7 }",
        );
        check(
            HEALTHY,
            "pg1",
            "refused: pg1 is the primary: switch over first (pgfm switchover), then re-clone it \
             as a standby",
        );
        check(
            HEALTHY,
            "witness",
            "refused: node witness is not a registered data node",
        );
        check(
            HEALTHY,
            "pg9",
            "refused: unknown node \"pg9\" (the members are pg1, pg2, witness)",
        );
        check(
            |v| under_maintenance(v, "pg2"),
            "pg2",
            "refused: pg2 is under maintenance (put there by dba@db1; pgfm maintenance pg2 off \
             ends it)",
        );
        check(
            |v| {
                v.state.reinit.insert(
                    "pg2".into(),
                    crate::model::Reinit {
                        since_unix_ms: 1,
                        by: "ops@db2".into(),
                    },
                );
            },
            "pg2",
            "refused: a re-clone of pg2 is under way (asked by ops@db2)",
        );
    }

    #[test]
    fn set_tags() {
        use crate::tags::Tag;
        let check = |fault: Fault, node: &str, tags: &[&str], force: bool, expected: &str| {
            let mut v = lab(3);
            fault(&mut v);
            let tags: Vec<Tag> = tags.iter().map(|t| Tag::parse(t).unwrap()).collect();
            let before = v.state.clone();
            let got = outcome(check_tags(&v, NOW, node, &tags, force), |c| {
                let mut after = v.state.clone();
                after.apply(&c).unwrap();
                format!("{:?}", after.tags_of(node).list())
            });
            assert_eq!(got, expected, "set-tag {node} {tags:?}");
            assert_eq!(v.state, before, "a check changes nothing");
        };
        fn sync_on(v: &mut ClusterView) {
            v.settings.sync = crate::model::SyncSettings {
                mode: SyncMode::On,
                standbys: 1,
                minimum: 1,
            }
        }
        let pg2_tagged: Fault = |v| crate::testing::tag(v, "pg2", "replicate_from=pg3");
        check(
            HEALTHY,
            "pg3",
            &["replicate_from=pg2", "nosync=true"],
            false,
            "[\"nosync\", \"replicate_from=pg2\"]",
        );
        check(
            HEALTHY,
            "pg1",
            &["nofailover=true"],
            false,
            "[\"nofailover\"]",
        );
        check(HEALTHY, "pg2", &["clonefrom=on"], false, "[\"clonefrom\"]");
        check(
            HEALTHY,
            "pg2",
            &["nofailover=false"],
            false,
            "refused: nothing to change: pg2 already has nofailover=false",
        );
        check(
            HEALTHY,
            "witness",
            &["nosync=true"],
            false,
            "refused: node witness is not a registered data node",
        );
        check(
            HEALTHY,
            "pg9",
            &["nosync=true"],
            false,
            "refused: unknown node \"pg9\" (the members are pg1, pg2, pg3, witness)",
        );
        check(
            HEALTHY,
            "pg3",
            &["replicate_from=pg3"],
            false,
            "refused: replicate_from would make a loop: pg3 -> pg3",
        );
        check(
            HEALTHY,
            "pg3",
            &["replicate_from=witness"],
            false,
            "refused: node witness is not a registered data node",
        );
        check(
            pg2_tagged,
            "pg3",
            &["replicate_from=pg2"],
            false,
            "refused: replicate_from would make a loop: pg3 -> pg2 -> pg3",
        );
        // pg2 may not be promoted: pg3 is the one standby that may take over.
        let pg2_kept: Fault = |v| crate::testing::tag(v, "pg2", "nofailover=true");
        check(
            pg2_kept,
            "pg3",
            &["nofailover=true"],
            false,
            "refused: with nofailover=true on pg3, pg1 would have no promotable standby in \
             sync with it: should pg1 fail, no standby could take over without losing data \
             (add --force to accept)",
        );
        check(
            pg2_kept,
            "pg3",
            &["nofailover=true"],
            true,
            "[\"nofailover\"]",
        );
        check(
            |v| {
                sync_on(v);
                crate::testing::tag(v, "pg2", "nosync=true");
            },
            "pg3",
            &["nosync=true"],
            false,
            "refused: replication.minimum_standbys = 1, and with nosync=true on pg3 only 0 \
             standby(s) could be synchronous: below the minimum, the primary would acknowledge \
             commits that fewer standbys hold (none: it alone, and a failover would promote no \
             standby until one may be synchronous again); lower the minimum with pgfm \
             edit-config, or add --force to accept",
        );
        check(sync_on, "pg3", &["nosync=true"], false, "[\"nosync\"]");
        check(
            |v| {
                v.state.switchover = Some(crate::testing::switchover_pg1_to_pg2());
            },
            "pg2",
            &["nofailover=true"],
            false,
            "refused: a switchover to pg2 is already under way",
        );
    }
}
