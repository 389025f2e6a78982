//! Crash-safe files (invariant 8): written to a temp file, fsynced, renamed over the old
//! one, and the directory fsynced. Each file carries a format version and a CRC-32 of its
//! payload, so a torn or corrupted write is detected and never trusted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

const MAGIC: &str = "pgfm-durable-v1";

/// Run blocking file work (an fsync can take seconds on a stalled disk) so that it never
/// holds up the async workers: on a multi-threaded runtime the worker hands its other
/// tasks to another thread first (invariant 8: durable writes never run on the threads that
/// time the lease).
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// The lab's "stalled disk" fault: when the agent runs with `PGFM_LAB_DISK_STALL` naming a
/// file, every fsync first waits the milliseconds written in it (nothing when it is absent
/// or empty). Production agents never set it.
fn lab_disk_stall() {
    static FILE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(file) = FILE.get_or_init(|| std::env::var_os("PGFM_LAB_DISK_STALL").map(Into::into))
    else {
        return;
    };
    let ms = fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Write `payload` to `path` atomically and durably, including the directory entry.
pub fn write(path: &Path, payload: &[u8]) -> io::Result<()> {
    blocking(|| {
        write_file_now(path, payload)?;
        sync_parent(path)
    })
}

/// Write and rename without syncing the directory; call `sync_dir` once after a batch.
pub fn write_file(path: &Path, payload: &[u8]) -> io::Result<()> {
    blocking(|| write_file_now(path, payload))
}

fn write_file_now(path: &Path, payload: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    let header = format!(
        "{MAGIC} {:08x} {}\n",
        crc32fast::hash(payload),
        payload.len()
    );
    file.write_all(header.as_bytes())?;
    file.write_all(payload)?;
    lab_disk_stall();
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    blocking(|| File::open(dir)?.sync_all())
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Read a file written by `write`. `Ok(None)` when it does not exist; an error naming the
/// file when its header, length or checksum is wrong.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let corrupt = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {why}; the file is torn or corrupt and is not trusted",
                path.display()
            ),
        )
    };
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no header"))?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| corrupt("bad header"))?;
    let mut parts = header.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(corrupt("unknown format"));
    }
    let crc = parts
        .next()
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or_else(|| corrupt("bad checksum field"))?;
    let len: usize = parts
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| corrupt("bad length field"))?;
    let payload = &bytes[newline + 1..];
    if payload.len() != len {
        return Err(corrupt("length does not match"));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum does not match"));
    }
    Ok(Some(payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, b"{\"term\":3}").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"{\"term\":3}"[..]));
        write(&path, b"{\"term\":4}").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"{\"term\":4}"[..]));
    }

    #[test]
    fn torn_and_corrupt_files_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry");
        write(&path, b"0123456789").unwrap();
        let good = fs::read(&path).unwrap();

        fs::write(&path, &good[..good.len() - 3]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("length does not match"), "{err}");

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        fs::write(&path, &flipped).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("checksum does not match"), "{err}");

        fs::write(&path, b"").unwrap();
        assert!(read(&path).is_err());
    }
}
