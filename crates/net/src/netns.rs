//! Network namespaces by name (`ip netns`): move the calling thread into one. Threads and
//! processes started afterwards from this thread inherit it.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Where `ip netns add NAME` keeps its handle on the namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Move the calling thread into the network namespace `name` (needs CAP_SYS_ADMIN).
pub fn enter(name: &str) -> io::Result<()> {
    let file = std::fs::File::open(path(name)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {name} ({}): {e}", path(name).display()),
        )
    })?;
    // SAFETY: setns(2) on a valid descriptor of a namespace file.
    let done = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if done < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("entering network namespace {name}: {e}"),
        ));
    }
    Ok(())
}
