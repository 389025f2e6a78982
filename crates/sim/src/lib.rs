//! Deterministic simulation of whole pgfm clusters: the real agents (engine, lease code,
//! state machine, openraft, executor) over a simulated network, simulated clocks and a
//! simulated PostgreSQL, driven from a seed. See `world.rs` for a run, `check.rs` for what
//! is checked.

#[cfg(not(tokio_unstable))]
compile_error!(
    "pgfm-sim needs `--cfg tokio_unstable` (set in .cargo/config.toml) to seed Tokio's \
     scheduler: without it a seed does not replay"
);

pub mod check;
pub mod faults;
pub mod hosts;
pub mod net;
pub mod node;
pub mod postgres;
pub mod rng;
pub mod search;
pub mod trace;
pub mod vip;
pub mod world;

pub use faults::FaultSet;
pub use world::{run, Options, Report};
