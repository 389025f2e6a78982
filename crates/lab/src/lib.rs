//! pgfm's lab: a real cluster on this machine (`pgfm lab`), its faults, and what drives it —
//! the demo, the bench and the end-to-end tests' harness. Nothing here runs in production:
//! the agent never depends on this crate (it is not in `cargo tree -p pgfm-agent`).
//!
//! - `commands`: `pgfm lab up|down|status|kill|start|freeze|thaw|partition|heal` and the
//!   lab's file (`LabFile`, `DIR/lab.json`); `disk`: a data node's own small disk
//!   (`--data-disk`), `lab fill-disk|free-disk`, and `lab damage-wal`;
//! - `host`: a node as a host (every process of it frozen or killed together) and its
//!   watchdog driver; `netns`: the namespaced lab (`--netns`) and its network faults;
//! - `drive`: `LabDriver`, a lab driven through the `pgfm` binary (the demo, the bench, the
//!   tests); `writers`: the neutral writer, the longest gap, the split-brain watch;
//! - `demo`, `bench`: `pgfm demo`, `pgfm bench failover|switchover`; `chaos`: `pgfm bench
//!   chaos`, a seeded soak of drawn faults (its draw, injection and measures apart); `calm`:
//!   `pgfm bench calm`, no false failovers on a slow machine (CPU hogs, the primary's agent
//!   stopped and resumed); `seeded`: the benches' seeded generator;
//! - `harness`: polling with deadlines and the tests' view of a lab (panics on failure).

pub mod bench;
pub mod calm;
pub mod chaos;
mod commands;
pub mod demo;
mod disk;
pub mod drive;
pub mod harness;
mod host;
pub mod netns;
mod seeded;
pub mod writers;

pub use commands::{
    any_status, enter_client_network, lab_status, read_lab, run, runtime, LabCommand, LabFile,
    LabNode, LabNodeStatus, LabStatus,
};
pub use drive::LabDriver;
