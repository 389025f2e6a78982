//! Reading a data directory without starting PostgreSQL: is it empty, would it start as a
//! primary or as a standby, is a postmaster running on it.

use std::path::Path;

use pgfm_core::DataDirState;

/// Written by pgfm into the data directory of a primary it fences: the node may hold WAL
/// the next primary lacks and must be rewound before it runs again (pg_rewind replaces the
/// directory's files, which removes the marker).
pub const REWIND_MARKER: &str = "pgfm.rewind";

/// What is in `data_dir`. An error when it holds files but no PostgreSQL cluster, because
/// cloning into it would fail and deleting them is not ours to do.
pub fn inspect_data_dir(data_dir: &Path) -> Result<DataDirState, String> {
    let mut entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataDirState::Empty),
        Err(e) => return Err(format!("reading data_dir {}: {e}", data_dir.display())),
    };
    if entries.next().is_none() {
        return Ok(DataDirState::Empty);
    }
    if !data_dir.join("PG_VERSION").is_file() {
        return Err(format!(
            "data_dir {} is not empty but holds no PostgreSQL cluster (no PG_VERSION): empty it \
             so that the node can be cloned, or fix data_dir",
            data_dir.display()
        ));
    }
    if data_dir.join(REWIND_MARKER).exists() {
        Ok(DataDirState::FencedPrimary)
    } else if data_dir.join("standby.signal").exists() {
        Ok(DataDirState::Standby)
    } else {
        Ok(DataDirState::Primary)
    }
}

/// Bytes the files under `path` take (0 when it cannot be read).
pub fn size_on_disk(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => size_on_disk(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The postmaster's pid from `postmaster.pid`, if that process is alive.
pub fn running_postmaster(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    alive.then_some(pid)
}

/// The status line in `postmaster.pid` (`ready`, `standby`, `starting`, ...) when the file
/// is postmaster `pid`'s. A file left by a server that died with its host says `ready` too:
/// read alone, it would make a postmaster that has not even written its own file look up
/// (the agent then started another one beside it).
pub fn postmaster_status(data_dir: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let owner: u32 = lines.next()?.trim().parse().ok()?;
    if owner != pid {
        return None;
    }
    lines.nth(6).map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_read_only_from_the_postmasters_own_file() {
        let dir = std::env::temp_dir().join(format!("pgfm-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |pid: u32, status: &str| {
            let text =
                format!("{pid}\n/data\n1700000000\n5432\n/tmp\n*\n  1037   4980959\n{status}\n");
            std::fs::write(dir.join("postmaster.pid"), text).unwrap();
        };
        file(4242, "ready   ");
        assert_eq!(postmaster_status(&dir, 4242).as_deref(), Some("ready"));
        // Left by a server that died with its host: not the new postmaster's.
        assert_eq!(postmaster_status(&dir, 5481), None);
        file(5481, "starting");
        assert_eq!(postmaster_status(&dir, 5481).as_deref(), Some("starting"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(postmaster_status(&dir, 5481), None);
    }

    #[test]
    fn states_of_a_data_dir() {
        let base = std::env::temp_dir().join(format!("pgfm-datadir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        assert_eq!(inspect_data_dir(&base), Ok(DataDirState::Empty));
        std::fs::create_dir_all(&base).unwrap();
        assert_eq!(inspect_data_dir(&base), Ok(DataDirState::Empty));
        std::fs::write(base.join("stray"), "x").unwrap();
        let err = inspect_data_dir(&base).unwrap_err();
        assert!(err.contains("holds no PostgreSQL cluster"), "{err}");
        std::fs::write(base.join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(inspect_data_dir(&base), Ok(DataDirState::Primary));
        std::fs::write(base.join("standby.signal"), "").unwrap();
        assert_eq!(inspect_data_dir(&base), Ok(DataDirState::Standby));
        std::fs::write(base.join(REWIND_MARKER), "").unwrap();
        assert_eq!(inspect_data_dir(&base), Ok(DataDirState::FencedPrimary));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
