//! pgfm's hands on PostgreSQL: find the binaries, run them as the configured OS user, read
//! the data directory, probe a running server, and control it (start, stop, clone, render
//! the settings pgfm owns).

pub mod binaries;
pub mod control;
pub mod database;
pub mod datadir;
pub mod initdb;
pub mod passfile;
pub mod probe;
pub mod procs;
pub mod run_as;
pub mod ssl;

pub use binaries::find_bin_dir;
pub use control::{HandOverStop, Postgres, PostgresSettings, StartAs, Upstream};
pub use database::{Database, Probe, RemoteProbe};
pub use datadir::inspect_data_dir;
pub use initdb::{HbaPeer, InitdbPlan};
pub use probe::Prober;
pub use run_as::OsUser;
pub use ssl::SslFiles;
