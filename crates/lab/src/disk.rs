//! A data node's disk as a fault: its data directory on a small file system of its own
//! (`lab up --data-disk MB`: a tmpfs mounted at `DIR/<node>/disk`), which `lab fill-disk`
//! fills to the last byte and `lab free-disk` empties again; and a former primary's pg_wal
//! damaged while it is down (`lab damage-wal`).
//!
//! A tmpfs is bounded by its size and lives in memory: filling it can never fill the
//! machine's disk, and `lab down` unmounts it (every mount under the lab's directory), so a
//! lab leaves nothing mounted behind. The agent's own files (Raft state, logs) stay on the
//! machine's disk: the fault is PostgreSQL's disk, not the whole host's.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

use pgfm_postgres::OsUser;

use crate::commands::{find_node, postmaster_pid, read_lab, LabFile, LabNode};

/// The file that fills a node's disk.
const FILLER: &str = "pgfm-lab-filler";

/// Where a data node's disk is mounted.
pub fn mount_point(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join(node).join("disk")
}

/// Refuse, saying why, a data disk that cannot be made here.
pub fn check_can_mount(mb: u64) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "--data-disk needs root (it mounts a tmpfs for each data node); run it as root, or \
             leave --data-disk out"
        );
    }
    if mb < 64 {
        bail!("--data-disk {mb}: a data directory needs at least 64 MB");
    }
    Ok(())
}

/// Mount each data node's disk (a lab built with --data-disk), owned by the user
/// PostgreSQL runs as.
pub fn mount_data_disks(lab: &LabFile, os_user: &OsUser) -> anyhow::Result<()> {
    let Some(mb) = lab.data_disk_mb else {
        return Ok(());
    };
    for node in lab.nodes.iter().filter(|n| n.data_dir.is_some()) {
        let point = mount_point(&lab.dir, &node.name);
        std::fs::create_dir_all(&point).with_context(|| format!("creating {}", point.display()))?;
        let options = format!(
            "size={mb}m,mode=0755,uid={},gid={}",
            os_user.uid, os_user.gid
        );
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "pgfm-lab-disk"])
            .arg(&point))?;
    }
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Every mount point under `dir` (deepest first), from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape(escaped)))
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo writes a space, tab, newline and backslash in a path as `\ooo` (octal).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount every file system mounted under `dir` (a lab's data disks), lazily when one is
/// still held; what was unmounted.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    for point in mounts_under(dir) {
        let unmounted = run(Command::new("umount").arg(&point))
            .or_else(|_| run(Command::new("umount").arg("--lazy").arg(&point)));
        match unmounted {
            Ok(()) => done.push(point.display().to_string()),
            Err(e) => eprintln!("pgfm: could not unmount {}: {e:#}", point.display()),
        }
    }
    done
}

/// The data node `name` of a lab built with --data-disk, and its disk's mount point.
fn data_disk(dir: &Path, name: &str, command: &str) -> anyhow::Result<(LabNode, PathBuf)> {
    let mut lab = read_lab(dir)?;
    let with_disks = lab.data_disk_mb.is_some();
    let node = find_node(&mut lab, name)?.clone();
    if node.data_dir.is_none() {
        bail!("{name} is a witness: it has no data directory");
    }
    if !with_disks {
        bail!(
            "pgfm lab {command} needs a lab built with --data-disk (the lab in {} keeps its \
             data on the machine's disk, which the lab never fills)",
            dir.display()
        );
    }
    let point = mount_point(dir, name);
    Ok((node, point))
}

/// The bytes free on the file system holding `path`.
fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path)
        .with_context(|| format!("reading the free space of {}", path.display()))?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// `lab fill-disk`: one file takes every free byte of the node's disk (allocated, not
/// sparse: a write that needs a new block fails with "No space left on device").
pub fn fill(dir: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let (_, point) = data_disk(dir, name, "fill-disk")?;
    let path = point.join(FILLER);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut length = file.metadata()?.len() as i64;
    // The free space moves while PostgreSQL writes: allocate what is free, halving the
    // request whenever the file system refuses it, down to one page.
    let mut chunk = free_bytes(&point)? as i64;
    while chunk >= 4096 {
        match nix::fcntl::fallocate(
            file.as_raw_fd(),
            nix::fcntl::FallocateFlags::empty(),
            length,
            chunk,
        ) {
            Ok(()) => {
                length += chunk;
                chunk = free_bytes(&point)? as i64;
            }
            Err(nix::errno::Errno::ENOSPC) => chunk /= 2,
            Err(e) => return Err(e).with_context(|| format!("allocating {}", path.display())),
        }
    }
    println!(
        "{name}: its disk is full ({} MB in {}; {} bytes free)",
        length / 1_000_000,
        path.display(),
        free_bytes(&point)?
    );
    Ok(ExitCode::SUCCESS)
}

/// `lab free-disk`: remove what `lab fill-disk` wrote.
pub fn free(dir: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let (_, point) = data_disk(dir, name, "free-disk")?;
    let path = point.join(FILLER);
    match std::fs::remove_file(&path) {
        Ok(()) => println!(
            "{name}: its disk has room again ({} MB free)",
            free_bytes(&point)? / 1_000_000
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{name}: its disk was not filled")
        }
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `name` is a WAL segment's file name (24 hexadecimal digits).
fn is_wal_segment(name: &str) -> bool {
    name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit())
}

/// `lab damage-wal`: remove every WAL segment of a stopped data node.
pub fn damage_wal(dir: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let mut lab = read_lab(dir)?;
    let node = find_node(&mut lab, name)?.clone();
    let Some(data_dir) = node.data_dir else {
        bail!("{name} is a witness: it has no pg_wal");
    };
    if let Some(pid) = postmaster_pid(&data_dir) {
        bail!(
            "the postmaster of {name} (pid {pid}) is running: damage its pg_wal only while it \
             is down (pgfm lab kill {name})"
        );
    }
    let wal = data_dir.join("pg_wal");
    let mut removed = 0;
    for entry in std::fs::read_dir(&wal).with_context(|| format!("reading {}", wal.display()))? {
        let entry = entry?;
        if is_wal_segment(&entry.file_name().to_string_lossy()) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
    }
    if removed == 0 {
        bail!("{} held no WAL segment to remove", wal.display());
    }
    println!(
        "{name}: removed {removed} WAL segment(s) from {}",
        wal.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape("/tmp/plain"), "/tmp/plain");
        assert_eq!(unescape("/tmp/x\\134y"), "/tmp/x\\y");
        assert_eq!(unescape("/tmp/end\\"), "/tmp/end\\");
    }

    #[test]
    fn only_wal_segments_are_damaged() {
        assert!(is_wal_segment("000000010000000000000003"));
        assert!(!is_wal_segment("00000002.history"));
        assert!(!is_wal_segment("archive_status"));
        assert!(!is_wal_segment("000000010000000000000003.partial"));
    }
}
