//! pgfm's HTTP API: the wire types (the JSON schema documented in the README), the routes
//! the agent serves, authentication by cluster token, and the client used by the CLI and
//! by agents, and the text the CLI renders them as (`status_text`).
//!
//! **Architecture invariant:** only this crate (and the Raft transport in `coord`) knows
//! how pgfm talks over HTTP.

pub mod auth;
pub mod client;
pub mod metrics;
pub mod routes;
pub mod status_text;
pub mod transport;
pub mod types;

pub use client::{ApiClient, ApiError};
pub use routes::{router, AgentApi, HealthCheck, Refusal, ReportOutcome};
pub use transport::HttpTransport;
pub use types::*;
