//! Reading a data directory without starting PostgreSQL: is it empty, would it start as a
//! primary or as a standby, is a postmaster running on it.

use std::path::Path;

use pgfm_core::{DataDirState, Timeline};

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

/// Whether recovery had not ended when the cluster in `data_dir` last ran
/// (`NodeReport::recovery_unfinished`): pg_control's state is "shut down in recovery" or
/// "in archive recovery" (a standby's, or a promotion cut off before it ended), or a
/// `backup_label` waits (a base backup or a rewind never started).
pub fn recovery_unfinished(data_dir: &Path) -> Result<bool, String> {
    if data_dir.join("backup_label").exists() {
        return Ok(true);
    }
    let path = data_dir.join("global").join("pg_control");
    let mut head = [0u8; 20];
    std::fs::File::open(&path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    // ControlFileData: system_identifier (8 bytes), pg_control_version (4),
    // catalog_version_no (4), then state (DBState), in the machine's byte order.
    let state = i32::from_ne_bytes([head[16], head[17], head[18], head[19]]);
    Ok(matches!(
        state,
        DB_SHUTDOWNED_IN_RECOVERY | DB_IN_ARCHIVE_RECOVERY
    ))
}

/// `DBState` values (`catalog/pg_control.h`, unchanged since PostgreSQL 9.0).
const DB_SHUTDOWNED_IN_RECOVERY: i32 = 2;
const DB_IN_ARCHIVE_RECOVERY: i32 = 5;

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

/// What `postmaster.pid` says: the postmaster's pid, when it started (seconds since the
/// epoch, as PostgreSQL wrote it) and its status (`ready`, `standby`, `starting`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    pub pid: u32,
    pub started: String,
    pub status: Option<String>,
}

/// `data_dir`'s `postmaster.pid`, if there is a readable one.
pub fn pid_file(data_dir: &Path) -> Option<PidFile> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(PidFile {
        pid: lines.first()?.trim().parse().ok()?,
        started: lines
            .get(2)
            .map(|l| l.trim().to_string())
            .unwrap_or_default(),
        status: lines.get(7).map(|l| l.trim().to_string()),
    })
}

/// The status of postmaster `pid` from its own `postmaster.pid`: not from `stale`, the file
/// found before it was started. A server that died with its host left a file saying `ready`
/// too; read alone, it made a postmaster that had not yet written its own look up, and the
/// agent started others beside it. After a reboot the new postmaster may even have the dead
/// one's pid (PostgreSQL itself checks for that): the start time tells them apart.
pub fn postmaster_status(data_dir: &Path, pid: u32, stale: Option<&PidFile>) -> Option<String> {
    let file = pid_file(data_dir)?;
    let own = file.pid == pid && stale.is_none_or(|old| old.started != file.started);
    own.then_some(file.status).flatten()
}

/// The history files a standby needs before it is promoted so that PostgreSQL starts
/// timeline `at_least` or a later one: one for each timeline from just above the newest it
/// holds WAL of up to `at_least - 1` that `pg_wal` lacks (the newest the state machine
/// reserved for the promotions before this one; see `ClusterState::highest_timeline`).
///
/// At the end of recovery PostgreSQL takes `findNewestTimeLine(target) + 1`, and that walks
/// up from its recovery target timeline while `<tli>.history` exists, reading nothing but
/// the name: so the files stand for timelines another node may have started, and hold only
/// a comment. With no line naming the current timeline as a parent, a standby never
/// switches its recovery target to one of them (`rescanLatestTimeLine`: "new timeline is
/// not a child"), and the new timeline's own history is copied from the real parent's.
pub fn missing_histories(pg_wal: &Path, at_least: Timeline) -> std::io::Result<Vec<Timeline>> {
    let mut newest = 1;
    for entry in std::fs::read_dir(pg_wal)? {
        if let Some(tli) = segment_timeline(&entry?.file_name().to_string_lossy()) {
            newest = newest.max(tli);
        }
    }
    Ok((newest + 1..at_least.0)
        .filter(|tli| !pg_wal.join(history_file(Timeline(*tli))).exists())
        .map(Timeline)
        .collect())
}

/// The timeline of a WAL segment's file name: 24 hex digits, the first 8 its timeline.
fn segment_timeline(name: &str) -> Option<u32> {
    if name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(&name[..8], 16).ok()
    } else {
        None
    }
}

/// `pg_wal`'s name for the history file of `timeline`.
pub fn history_file(timeline: Timeline) -> String {
    format!("{:08X}.history", timeline.0)
}

/// What a reserved timeline's history file says.
pub fn reserved_history(timeline: Timeline) -> String {
    format!(
        "{RESERVED} {timeline} may have been started by another node, so this one must start \
         a later one.\n"
    )
}

/// How a reserved timeline's history file begins.
const RESERVED: &str = "# Written by pgfm before this node was promoted: timeline";

/// The history files in `pg_wal` that pgfm reserved (`reserved_history`) above every
/// timeline the directory really has (its WAL segments', its other history files'). Those
/// matter only while a promotion runs: a standby started with one above its timeline
/// takes it for its recovery target and never becomes ready, and its WAL receiver would
/// never fetch the real file of that timeline over it. Those below a real one are kept:
/// they fill the gaps PostgreSQL's `findNewestTimeLine` walks through, and a standby of a
/// later timeline may ask for them.
pub fn reserved_histories(pg_wal: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut real_top = 1;
    let mut reserved = Vec::new();
    for entry in std::fs::read_dir(pg_wal)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        let Some(name) = name else { continue };
        if let Some(tli) = segment_timeline(&name) {
            real_top = real_top.max(tli);
            continue;
        }
        let Some(tli) = name.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()) else {
            continue;
        };
        if name.ends_with(".history") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.starts_with(RESERVED) {
                reserved.push((tli, path));
            } else {
                real_top = real_top.max(tli);
            }
        }
    }
    let mut above: Vec<std::path::PathBuf> = reserved
        .into_iter()
        .filter(|(tli, _)| *tli > real_top)
        .map(|(_, path)| path)
        .collect();
    above.sort();
    Ok(above)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_reserves_the_timelines_between_its_own_and_the_floor() {
        let dir = std::env::temp_dir().join(format!("pgfm-pgwal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let touch = |name: &str| std::fs::write(dir.join(name), "").unwrap();
        touch("00000001000000000000000A");
        touch("0000000D000000000000000B");
        touch("0000000D.history");
        touch("0000000C.history");
        touch("0000000F.history");
        touch("archive_status");
        // On timeline 13, told to start 17 or later: 14 and 16 are missing (15 is there).
        let missing = missing_histories(&dir, Timeline(17)).unwrap();
        assert_eq!(missing, vec![Timeline(14), Timeline(16)]);
        // Nothing reserved above its own: nothing to write.
        assert!(missing_histories(&dir, Timeline(14)).unwrap().is_empty());
        assert!(missing_histories(&dir, Timeline::default())
            .unwrap()
            .is_empty());
        assert_eq!(history_file(Timeline(14)), "0000000E.history");
        // PostgreSQL skips comment lines: the file names no parent.
        assert!(crate::probe::timeline_history(&reserved_history(Timeline(14))).is_empty());
        // Found again among real ones: under the real 15, the reserved 14 fills a gap and
        // stays; above every real timeline (13 once 15 is gone), it is removed before a
        // standby starts.
        std::fs::write(dir.join("0000000E.history"), reserved_history(Timeline(14))).unwrap();
        std::fs::write(dir.join("0000000C.history"), reserved_history(Timeline(12))).unwrap();
        assert!(reserved_histories(&dir).unwrap().is_empty());
        std::fs::remove_file(dir.join("0000000F.history")).unwrap();
        assert_eq!(
            reserved_histories(&dir).unwrap(),
            vec![dir.join("0000000E.history")]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_status_is_read_only_from_the_postmasters_own_file() {
        let dir = std::env::temp_dir().join(format!("pgfm-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |pid: u32, started: u64, status: &str| {
            let text =
                format!("{pid}\n/data\n{started}\n5432\n/tmp\n*\n  1037   4980959\n{status}\n");
            std::fs::write(dir.join("postmaster.pid"), text).unwrap();
        };
        file(4242, 1_700_000_000, "ready   ");
        let stale = pid_file(&dir);
        assert_eq!(stale.as_ref().map(|f| f.pid), Some(4242));
        // Left by a server that died with its host: not the new postmaster's...
        assert_eq!(postmaster_status(&dir, 5481, stale.as_ref()), None);
        // ... even when the new one got the same pid after a reboot.
        assert_eq!(postmaster_status(&dir, 4242, stale.as_ref()), None);
        file(4242, 1_700_000_100, "starting");
        assert_eq!(
            postmaster_status(&dir, 4242, stale.as_ref()).as_deref(),
            Some("starting")
        );
        file(5481, 1_700_000_100, "ready   ");
        assert_eq!(
            postmaster_status(&dir, 5481, stale.as_ref()).as_deref(),
            Some("ready")
        );
        assert_eq!(
            postmaster_status(&dir, 5481, None).as_deref(),
            Some("ready")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(postmaster_status(&dir, 5481, None), None);
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
        let err = recovery_unfinished(&base).unwrap_err();
        assert!(err.contains("global/pg_control"), "{err}");
        let control = |state: i32| {
            let mut bytes = vec![0u8; 8192];
            bytes[16..20].copy_from_slice(&state.to_ne_bytes());
            std::fs::create_dir_all(base.join("global")).unwrap();
            std::fs::write(base.join("global/pg_control"), bytes).unwrap();
        };
        // Shut down, or stopped while in production (a crash): the primary's.
        for state in [1, 6] {
            control(state);
            assert_eq!(inspect_data_dir(&base), Ok(DataDirState::Primary));
            assert_eq!(recovery_unfinished(&base), Ok(false));
        }
        // Shut down in recovery, in archive recovery: recovery had not ended. Without the
        // signal it is still taken for a former primary's (a rewind cut off may have left
        // it so): only the committed primary reads the state, and promotes it.
        for state in [2, 5] {
            control(state);
            assert_eq!(inspect_data_dir(&base), Ok(DataDirState::Primary));
            assert_eq!(recovery_unfinished(&base), Ok(true));
        }
        control(6);
        std::fs::write(base.join("backup_label"), "").unwrap();
        assert_eq!(recovery_unfinished(&base), Ok(true));
        std::fs::remove_file(base.join("backup_label")).unwrap();
        std::fs::write(base.join("standby.signal"), "").unwrap();
        assert_eq!(inspect_data_dir(&base), Ok(DataDirState::Standby));
        std::fs::write(base.join(REWIND_MARKER), "").unwrap();
        assert_eq!(inspect_data_dir(&base), Ok(DataDirState::FencedPrimary));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
