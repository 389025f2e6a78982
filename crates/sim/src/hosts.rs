//! What the simulated PostgreSQL needs to know of the simulated hosts and network: whether
//! a host runs, is frozen, and whether packets get from one host to another right now. The
//! world (`world.rs`) answers; the PostgreSQL model (`postgres.rs`) asks.

pub trait Hosts: Send + Sync {
    /// The host runs (not crashed or reset; it may be frozen).
    fn up(&self, host: &str) -> bool;
    /// Every process of the host is stopped (SIGSTOP), the kernel still answers TCP.
    fn frozen(&self, host: &str) -> bool;
    /// Packets from `from` reach `to` now (no partition that way). Says nothing of
    /// whether `to` is up.
    fn reachable(&self, from: &str, to: &str) -> bool;
}
