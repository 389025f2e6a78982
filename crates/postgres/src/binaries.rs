//! Finding PostgreSQL's server binaries: the configured `bin_dir`, else `pg_config
//! --bindir`, else the newest `/usr/lib/postgresql/*/bin` (Debian does not put `pg_rewind` or
//! `pg_ctl` on `PATH`).

use std::path::{Path, PathBuf};

/// The programs pgfm runs; a `bin_dir` must hold all of them.
pub const REQUIRED: &[&str] = &[
    "postgres",
    "pg_ctl",
    "initdb",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
];

/// The first program of `REQUIRED` missing from `dir`, if any.
pub fn missing_program(dir: &Path) -> Option<&'static str> {
    REQUIRED.iter().copied().find(|p| !dir.join(p).is_file())
}

/// Auto-detect a directory holding every required program.
pub fn find_bin_dir() -> Option<PathBuf> {
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    debian.sort();
    from_pg_config
        .into_iter()
        .chain(debian.into_iter().rev().map(|(_, p)| p))
        .find(|dir| missing_program(dir).is_none())
}
