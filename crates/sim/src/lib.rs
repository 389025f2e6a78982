//! Deterministic simulation of whole pgfm clusters: the real agents (engine, lease code,
//! state machine, openraft) over a simulated network, simulated clocks and a simulated
//! PostgreSQL, driven from a seed.

pub mod hosts;
pub mod postgres;
pub mod rng;
