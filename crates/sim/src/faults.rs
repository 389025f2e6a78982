//! The faults of a run, drawn from its seed: which kinds may happen (`FaultSet`, from the
//! command line's `--faults`), and when, to whom and for how long each happens (`plan`).
//! A fault's target is a role ("the primary", "the coordinator") resolved when it strikes,
//! so that a fault drawn for the primary hits whichever node is the primary by then.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The host dies (power, kernel panic): every process, no goodbye; it comes back
    /// after the fault's duration and its agent starts again.
    HostCrash,
    /// Only the agent dies (kill -9); PostgreSQL runs on. Restarted after the duration.
    AgentCrash,
    /// Only the postmaster dies; the agent lives.
    PostmasterCrash,
    /// Every process of the host stops (SIGSTOP) for the duration, then resumes.
    Freeze,
    /// Only the agent stops for the duration (a stalled process), PostgreSQL runs on.
    AgentFreeze,
    /// The host is cut off from every other, both ways.
    Partition,
    /// Only packets from the host are lost (it hears, nobody hears it).
    PartitionOut,
    /// Only packets to the host are lost (it speaks, hears nobody).
    PartitionIn,
    /// Messages are lost, delayed and duplicated more than usual, everywhere.
    Lossy,
    /// A loaded machine: every agent stalls again and again (50 ms to 1.5 s at a time,
    /// PostgreSQL runs on), for the duration.
    Stalls,
    /// The host's WAL stream arrives slowly (a congested link, a slow disk): a standby
    /// falls behind while it still counts as streaming.
    SlowLink,
    /// An operator changes the cluster's lease through the host's agent (`pgfm
    /// edit-config --set timing.lease=...`), longer or shorter, while the cluster runs; it
    /// is set back after the duration.
    LeaseChange,
    /// An operator puts the host's data node under maintenance (`pgfm maintenance NODE on`,
    /// `--keep-running` and `--force` drawn): a primary is switched away from first. It is
    /// ended (`off`) after the duration.
    Maintenance,
    /// An operator tags the host's data node (`pgfm set-tag NODE ...`): `replicate_from`
    /// another data node, `nosync`, `nofailover` or `clonefrom`, `--force` drawn. Its tags
    /// are cleared after the duration.
    Tags,
    /// An operator schedules a rolling restart through the host's agent (`pgfm restart
    /// [NODE] --at +1..4s`, the host's node alone or every one, `--pending` and
    /// `--in-place` drawn); it is cancelled after the duration if it has not ended.
    Restart,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::HostCrash,
        Kind::AgentCrash,
        Kind::PostmasterCrash,
        Kind::Freeze,
        Kind::AgentFreeze,
        Kind::Partition,
        Kind::PartitionOut,
        Kind::PartitionIn,
        Kind::Lossy,
        Kind::Stalls,
        Kind::SlowLink,
        Kind::LeaseChange,
        Kind::Maintenance,
        Kind::Tags,
        Kind::Restart,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::HostCrash => "host-crash",
            Kind::AgentCrash => "agent-crash",
            Kind::PostmasterCrash => "postmaster-crash",
            Kind::Freeze => "freeze",
            Kind::AgentFreeze => "agent-freeze",
            Kind::Partition => "partition",
            Kind::PartitionOut => "partition-out",
            Kind::PartitionIn => "partition-in",
            Kind::Lossy => "lossy",
            Kind::Stalls => "stalls",
            Kind::SlowLink => "slow-link",
            Kind::LeaseChange => "lease-change",
            Kind::Maintenance => "maintenance",
            Kind::Tags => "tags",
            Kind::Restart => "restart",
        }
    }

    /// How long it lasts, drawn (ms).
    fn duration(self, rng: &mut Rng) -> u64 {
        match self {
            Kind::PostmasterCrash => 0,
            Kind::Freeze | Kind::AgentFreeze => rng.range(1_000, 10_001),
            Kind::Lossy | Kind::Stalls => rng.range(2_000, 15_001),
            Kind::LeaseChange => rng.range(2_000, 20_001),
            Kind::Restart => rng.range(5_000, 30_001),
            _ => rng.range(1_000, 12_001),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds a run may draw from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSet(pub BTreeSet<Kind>);

impl Default for FaultSet {
    fn default() -> FaultSet {
        FaultSet(Kind::ALL.into_iter().collect())
    }
}

impl FromStr for FaultSet {
    type Err = String;
    /// `all`, or a comma-separated list of kinds (`freeze,partition`).
    fn from_str(text: &str) -> Result<FaultSet, String> {
        if text == "all" {
            return Ok(FaultSet::default());
        }
        let mut kinds = BTreeSet::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.name() == word)
                .ok_or_else(|| {
                    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                    format!(
                        "unknown fault {word:?}: use all or some of {}",
                        names.join(", ")
                    )
                })?;
            kinds.insert(kind);
        }
        if kinds.is_empty() {
            return Err("no fault named: use all or a comma-separated list".into());
        }
        Ok(FaultSet(kinds))
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == FaultSet::default() {
            return f.write_str("all");
        }
        let names: Vec<&str> = self.0.iter().map(|k| k.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// Whom a fault strikes, resolved when it strikes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Primary,
    Coordinator,
    /// A node by its index among the run's nodes.
    Node(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub at_ms: u64,
    pub kind: Kind,
    pub target: Target,
    pub duration_ms: u64,
}

impl Fault {
    /// A scripted fault: `kind` on `target` at `at_ms`, for `duration_ms`.
    pub fn new(at_ms: u64, kind: Kind, target: Target, duration_ms: u64) -> Fault {
        Fault {
            at_ms,
            kind,
            target,
            duration_ms,
        }
    }
}

/// Draw a run's faults: `count` of them between `from_ms` and `until_ms`, sometimes two at
/// the same moment (a second fault while the first is under way).
pub fn plan(
    rng: &mut Rng,
    set: &FaultSet,
    nodes: usize,
    count: usize,
    from_ms: u64,
    until_ms: u64,
) -> Vec<Fault> {
    let kinds: Vec<Kind> = set.0.iter().copied().collect();
    let mut faults = Vec::new();
    for _ in 0..count {
        let Some(&kind) = rng.pick(&kinds) else {
            break;
        };
        let at_ms = match faults.last() {
            // A second fault during the first, now and then.
            Some(Fault { at_ms, .. }) if rng.chance(0.25) => at_ms + rng.range(0, 3_000),
            _ => rng.range(from_ms, until_ms),
        };
        let target = match rng.range(0, 10) {
            0..=4 => Target::Primary,
            5..=6 => Target::Coordinator,
            _ => Target::Node(rng.range(0, nodes as u64) as usize),
        };
        faults.push(Fault {
            at_ms,
            kind,
            target,
            duration_ms: kind.duration(rng),
        });
    }
    faults.sort_by_key(|f| f.at_ms);
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_sets_parse_and_print() {
        assert_eq!("all".parse::<FaultSet>().unwrap(), FaultSet::default());
        let set: FaultSet = "freeze, partition".parse().unwrap();
        assert_eq!(set.to_string(), "freeze,partition");
        let err = "fire".parse::<FaultSet>().unwrap_err();
        assert!(
            err.contains("unknown fault \"fire\"") && err.contains("host-crash"),
            "{err}"
        );
    }

    #[test]
    fn a_plan_is_the_seeds() {
        let set = FaultSet::default();
        let a = plan(&mut Rng::new(5), &set, 4, 3, 10_000, 40_000);
        let b = plan(&mut Rng::new(5), &set, 4, 3, 10_000, 40_000);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(a.iter().all(|f| f.at_ms >= 10_000));
    }
}
