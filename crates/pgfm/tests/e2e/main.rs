//! pgfm's end-to-end tests, one binary: real PostgreSQL and real agent processes, a lab
//! per test driven through the `pgfm` binary under test (`pgfm_lab::harness`).

mod bootstrap;
mod cluster;
mod deploy;
mod failover;
mod maintenance;
mod operator;
mod parameters;
mod partitions;
mod refusals;
mod reinit;
mod safety;
mod settings;
mod synchronous;
mod tags;

/// The `pgfm` binary under test.
pub const PGFM: &str = env!("CARGO_BIN_EXE_pgfm");

/// A `pgfm` command, no arguments yet.
pub fn pgfm() -> std::process::Command {
    std::process::Command::new(PGFM)
}
