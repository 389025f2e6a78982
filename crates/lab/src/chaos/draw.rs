//! What one chaos run breaks, drawn from the soak's seed and the run's number alone (so a
//! run can be replayed by itself): a fault kind, the role it hits (resolved to a node only
//! when it is injected), and how long until it is repaired.

use std::fmt;

use clap::ValueEnum;
use serde::Serialize;

use crate::seeded::Rng;

/// The faults a soak draws from (`--fault` narrows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A host dies: its agent, PostgreSQL and link (primary, a standby or the witness).
    HostDeath,
    /// Only the postmaster is SIGKILLed (primary or a standby); its agent restarts it.
    PostmasterCrash,
    /// Only the agent is SIGKILLed, PostgreSQL lives on (primary, a standby or the witness).
    AgentCrash,
    /// Every process of a host SIGSTOPped for 1-10 s, then resumed.
    Freeze,
    /// A node cut off from every other one, both ways or one way (it can send, not
    /// receive): primary, a standby, the witness or the coordinator.
    Partition,
    /// The witness's host and the primary's host die at once.
    WitnessAndPrimary,
    /// The primary's host dies, and the coordinator's once the promotion is committed.
    CoordinatorInPromotion,
    /// The primary's host dies; it returns after the failover with its WAL segments gone.
    DamagedWal,
    /// The primary's data disk fills up (a lab with --data-disk).
    DiskFull,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::HostDeath,
        FaultKind::PostmasterCrash,
        FaultKind::AgentCrash,
        FaultKind::Freeze,
        FaultKind::Partition,
        FaultKind::WitnessAndPrimary,
        FaultKind::CoordinatorInPromotion,
        FaultKind::DamagedWal,
        FaultKind::DiskFull,
    ];

    /// The name `--fault` takes and the summary shows.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::HostDeath => "host-death",
            FaultKind::PostmasterCrash => "postmaster-crash",
            FaultKind::AgentCrash => "agent-crash",
            FaultKind::Freeze => "freeze",
            FaultKind::Partition => "partition",
            FaultKind::WitnessAndPrimary => "witness-and-primary",
            FaultKind::CoordinatorInPromotion => "coordinator-in-promotion",
            FaultKind::DamagedWal => "damaged-wal",
            FaultKind::DiskFull => "disk-full",
        }
    }
}

/// Whom a fault hits, resolved against the cluster's status when it is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Primary,
    /// The `n`-th standby by name (modulo how many there are).
    Standby(u32),
    Witness,
    Coordinator,
}

/// What is done to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    HostDeath,
    PostmasterCrash,
    AgentCrash,
    Freeze,
    /// `one_way`: what the others send to it is lost; what it sends arrives.
    Partition {
        one_way: bool,
    },
    DiskFull,
}

/// When a hit comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    /// At the run's fault.
    Start,
    /// Once a promotion after the run's fault is committed.
    Promotion,
}

/// When what a hit broke is repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Back {
    /// This long after the hit (restarted, thawed, healed, freed).
    After { ms: u64 },
    /// Nothing to do: its agent restarts PostgreSQL.
    ByItself,
    /// Restarted once another node is primary, its WAL segments removed first.
    AfterFailoverWalDamaged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Hit {
    pub role: Role,
    pub how: How,
    pub when: When,
    pub back: Back,
}

/// One run's faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub kind: FaultKind,
    pub hits: Vec<Hit>,
}

/// How long a broken node stays broken (ms), for faults other than a freeze.
const HOLD_MS: (u64, u64) = (1_000, 15_000);
/// How long a host stays frozen (ms).
const FREEZE_MS: (u64, u64) = (1_000, 10_000);

/// Run `run`'s plan for `seed`, from `kinds` (every kind when empty).
pub fn draw(seed: u64, run: u64, kinds: &[FaultKind]) -> Plan {
    let kinds = if kinds.is_empty() {
        &FaultKind::ALL[..]
    } else {
        kinds
    };
    let mut rng = Rng::new(seed).fork(run);
    let kind = rng.pick(kinds).unwrap_or(FaultKind::HostDeath);
    let hits = match kind {
        FaultKind::DamagedWal => vec![start(
            Role::Primary,
            How::HostDeath,
            Back::AfterFailoverWalDamaged,
        )],
        FaultKind::DiskFull => vec![start(Role::Primary, How::DiskFull, held(&mut rng, HOLD_MS))],
        FaultKind::WitnessAndPrimary => vec![
            start(Role::Witness, How::HostDeath, held(&mut rng, HOLD_MS)),
            start(Role::Primary, How::HostDeath, held(&mut rng, HOLD_MS)),
        ],
        FaultKind::CoordinatorInPromotion => vec![
            start(Role::Primary, How::HostDeath, held(&mut rng, HOLD_MS)),
            Hit {
                role: Role::Coordinator,
                how: How::HostDeath,
                when: When::Promotion,
                back: held(&mut rng, HOLD_MS),
            },
        ],
        FaultKind::HostDeath
        | FaultKind::AgentCrash
        | FaultKind::PostmasterCrash
        | FaultKind::Freeze
        | FaultKind::Partition => vec![single(&mut rng, kind)],
    };
    Plan { kind, hits }
}

/// Repaired after a time drawn in `low..=high` ms, to a tenth of a second (as fine as the
/// lab's timing can tell apart).
fn held(rng: &mut Rng, (low, high): (u64, u64)) -> Back {
    Back::After {
        ms: rng.between(low / 100, high / 100) * 100,
    }
}

/// A fault of one node: the role it hits among those `kind` allows, and for how long.
fn single(rng: &mut Rng, kind: FaultKind) -> Hit {
    let roles: &[u8] = match kind {
        FaultKind::PostmasterCrash => &[0, 1],
        FaultKind::Partition => &[0, 1, 2, 3],
        _ => &[0, 1, 2],
    };
    let role = match rng.pick(roles).unwrap_or(0) {
        0 => Role::Primary,
        1 => Role::Standby(rng.between(0, 7) as u32),
        2 => Role::Witness,
        _ => Role::Coordinator,
    };
    let (how, back) = match kind {
        FaultKind::PostmasterCrash => (How::PostmasterCrash, Back::ByItself),
        FaultKind::Freeze => (How::Freeze, held(rng, FREEZE_MS)),
        FaultKind::AgentCrash => (How::AgentCrash, held(rng, HOLD_MS)),
        FaultKind::Partition => {
            let one_way = rng.between(0, 1) == 1;
            (How::Partition { one_way }, held(rng, HOLD_MS))
        }
        _ => (How::HostDeath, held(rng, HOLD_MS)),
    };
    start(role, how, back)
}

fn start(role: Role, how: How, back: Back) -> Hit {
    Hit {
        role,
        how,
        when: When::Start,
        back,
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Primary => write!(f, "the primary"),
            Role::Standby(n) => write!(f, "standby #{n}"),
            Role::Witness => write!(f, "the witness"),
            Role::Coordinator => write!(f, "the coordinator"),
        }
    }
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.how {
            How::HostDeath => "host death of",
            How::PostmasterCrash => "postmaster crash of",
            How::AgentCrash => "agent crash (PostgreSQL alive) of",
            How::Freeze => "freeze of",
            How::Partition { one_way: false } => "partition (both ways) of",
            How::Partition { one_way: true } => "partition (one way: it cannot receive) of",
            How::DiskFull => "disk full on",
        };
        write!(f, "{what} {}", self.role)?;
        if self.when == When::Promotion {
            write!(f, " once the promotion is committed")?;
        }
        let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
        match (self.back, self.how) {
            (Back::ByItself, _) => write!(f, ", restarted by its agent"),
            (Back::AfterFailoverWalDamaged, _) => write!(
                f,
                ", restarted after the failover with its WAL segments removed"
            ),
            (Back::After { ms }, How::Freeze) => write!(f, ", thawed after {}", secs(ms)),
            (Back::After { ms }, How::Partition { .. }) => write!(f, ", healed after {}", secs(ms)),
            (Back::After { ms }, How::DiskFull) => write!(f, ", freed after {}", secs(ms)),
            (Back::After { ms }, _) => write!(f, ", restarted after {}", secs(ms)),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hits: Vec<String> = self.hits.iter().map(Hit::to_string).collect();
        write!(f, "{}: {}", self.kind.name(), hits.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_draws_the_same_plan_alone_or_in_a_soak() {
        let soak: Vec<Plan> = (1..=20).map(|run| draw(7, run, &[])).collect();
        assert_eq!(draw(7, 13, &[]), soak[12]);
        assert_ne!(
            soak,
            (1..=20).map(|run| draw(8, run, &[])).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_kind_is_drawn_and_only_the_kinds_asked_for() {
        let drawn: std::collections::BTreeSet<FaultKind> =
            (1..=300).map(|run| draw(1, run, &[]).kind).collect();
        assert_eq!(drawn.len(), FaultKind::ALL.len(), "{drawn:?}");
        let only = [FaultKind::Freeze, FaultKind::DiskFull];
        assert!((1..=100).all(|run| only.contains(&draw(1, run, &only).kind)));
    }

    /// Each kind hits what the issue names, for as long as it says.
    #[test]
    fn plans_keep_to_their_kind() {
        for run in 1..=500 {
            let plan = draw(3, run, &[]);
            let first = plan.hits[0];
            let held = |hit: &Hit| match hit.back {
                Back::After { ms } => ms,
                _ => 0,
            };
            match plan.kind {
                FaultKind::Freeze => {
                    assert!((1_000..=10_000).contains(&held(&first)), "{plan}");
                    assert_ne!(first.role, Role::Coordinator, "{plan}");
                }
                FaultKind::PostmasterCrash => {
                    assert_eq!(first.back, Back::ByItself, "{plan}");
                    assert!(
                        matches!(first.role, Role::Primary | Role::Standby(_)),
                        "{plan}"
                    );
                }
                FaultKind::WitnessAndPrimary => {
                    let roles: Vec<Role> = plan.hits.iter().map(|h| h.role).collect();
                    assert_eq!(roles, [Role::Witness, Role::Primary], "{plan}");
                    assert!(plan.hits.iter().all(|h| h.when == When::Start));
                }
                FaultKind::CoordinatorInPromotion => {
                    assert_eq!(plan.hits[1].role, Role::Coordinator, "{plan}");
                    assert_eq!(plan.hits[1].when, When::Promotion, "{plan}");
                }
                FaultKind::DamagedWal => {
                    assert_eq!(first.back, Back::AfterFailoverWalDamaged, "{plan}")
                }
                FaultKind::DiskFull => assert_eq!(first.role, Role::Primary, "{plan}"),
                FaultKind::HostDeath | FaultKind::AgentCrash | FaultKind::Partition => {
                    assert!((1_000..=15_000).contains(&held(&first)), "{plan}")
                }
            }
        }
    }

    #[test]
    fn a_plan_reads_as_what_happens() {
        let plan = Plan {
            kind: FaultKind::Partition,
            hits: vec![start(
                Role::Coordinator,
                How::Partition { one_way: true },
                Back::After { ms: 6_200 },
            )],
        };
        assert_eq!(
            plan.to_string(),
            "partition: partition (one way: it cannot receive) of the coordinator, healed after 6.2 s"
        );
        let plan = draw(5, 1, &[FaultKind::CoordinatorInPromotion]);
        assert!(
            plan.to_string().contains(
                "host death of the coordinator once the promotion is committed, restarted after"
            ),
            "{plan}"
        );
    }
}
