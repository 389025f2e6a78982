//! The invariants, checked after every simulated millisecond (DESIGN's safety invariants
//! as the simulation can see them from outside the agents):
//!
//! - never two PostgreSQL servers accepting writes at the same moment (a frozen host's does
//!   not while frozen, and does again the instant it resumes);
//! - no synchronously acknowledged commit missing from a server when it is promoted (the
//!   PostgreSQL model checks it at the promotion and reports it here);
//! - at most one primary per generation, whichever agent applied it, and each agent's
//!   generation only grows while it runs;
//! - the virtual IP on at most one running host (a frozen one included: its kernel still
//!   answers ARP);
//! - a node under maintenance (`pgfm maintenance NODE on`, not kept running), once its
//!   PostgreSQL was seen stopped, never runs it again while its agent has it under
//!   maintenance — across agent restarts and host reboots.
//!
//! Liveness (a working primary after a quiet period) is checked at the end of the run by
//! `world.rs`.

use std::collections::BTreeMap;

use crate::node::Node;
use crate::postgres::Shared;
use crate::trace::Trace;
use crate::vip::VipTable;

#[derive(Debug, Default)]
pub struct Checker {
    pub violations: Vec<String>,
    /// The primary each generation was committed with, as first seen applied.
    primaries: BTreeMap<u64, String>,
    /// Per node: (agent incarnation, last generation seen applied).
    seen: BTreeMap<String, (u64, u64)>,
    /// Nodes under maintenance seen with their PostgreSQL stopped.
    stopped_for_maintenance: std::collections::BTreeSet<String>,
}

impl Checker {
    pub fn violation(&mut self, now_ms: u64, text: String) {
        self.violations.push(format!(
            "at {}.{:03} s: {text}",
            now_ms / 1000,
            now_ms % 1000
        ));
    }

    pub fn check(
        &mut self,
        now_ms: u64,
        nodes: &[Node],
        pg: &Shared,
        vip: &VipTable,
        trace: &Trace,
    ) {
        let (writable, running, found) = {
            let mut pg = pg.lock().unwrap_or_else(|p| p.into_inner());
            (pg.writable_now(), pg.running_now(), pg.take_violations())
        };
        self.check_maintenance(now_ms, nodes, &running);
        if writable.len() > 1 {
            self.violation(
                now_ms,
                format!(
                    "two writers: {} accept writes at once",
                    writable.join(" and ")
                ),
            );
        }
        for text in found {
            self.violation(now_ms, text);
        }
        let holders = vip.live_holders();
        if holders.len() > 1 {
            self.violation(
                now_ms,
                format!("the virtual IP is on {} at once", holders.join(" and ")),
            );
        }
        for node in nodes {
            let Some((primary, generation)) = node.primary() else {
                continue;
            };
            let generation = generation.0;
            let name = node.name().to_string();
            match self.seen.get(&name) {
                Some(&(incarnation, last))
                    if incarnation == node.incarnation && generation < last =>
                {
                    self.violation(
                        now_ms,
                        format!("{name} went back from generation {last} to {generation}"),
                    );
                }
                _ => {}
            }
            self.seen
                .insert(name.clone(), (node.incarnation, generation));
            let Some(primary) = primary else { continue };
            match self.primaries.get(&generation) {
                None => {
                    trace.say(format!(
                        "generation {generation}: {primary} (applied by {name})"
                    ));
                    self.primaries.insert(generation, primary);
                }
                Some(first) if *first != primary => {
                    let first = first.clone();
                    self.violation(
                        now_ms,
                        format!(
                            "two promotions in generation {generation}: {first}, and {primary} \
                             as applied by {name}"
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(last) = self.violations.last() {
            trace.say(format!("VIOLATION {last}"));
        }
    }

    /// A node stopped for maintenance stays stopped while its own agent has it under
    /// maintenance (its agent down: still under it, as its files say).
    fn check_maintenance(&mut self, now_ms: u64, nodes: &[Node], running: &[String]) {
        for node in nodes {
            let name = node.name();
            if !node.agent_running() {
                continue;
            }
            let held = node.own_maintenance().is_some_and(|m| m.keeps_stopped());
            let runs = running.iter().any(|r| r == name);
            match (held, runs) {
                (false, _) => {
                    self.stopped_for_maintenance.remove(name);
                }
                (true, false) => {
                    self.stopped_for_maintenance.insert(name.to_string());
                }
                (true, true) if self.stopped_for_maintenance.contains(name) => {
                    self.stopped_for_maintenance.remove(name);
                    self.violation(
                        now_ms,
                        format!(
                            "{name} is under maintenance and was stopped, but its PostgreSQL \
                             runs again"
                        ),
                    );
                }
                (true, true) => {}
            }
        }
    }
}
