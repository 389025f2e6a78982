//! Network namespaces by name (`ip netns`): move the calling thread into one. Threads and
//! processes started afterwards from this thread inherit it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// Where `ip netns add NAME` keeps its handle on the namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// An open handle on a namespace. Opened before a fork, so that the child only has to call
/// setns(2) (nothing else is safe between fork and exec).
pub struct Handle(OwnedFd);

impl Handle {
    pub fn open(name: &str) -> io::Result<Handle> {
        let file = std::fs::File::open(path(name)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("network namespace {name} ({}): {e}", path(name).display()),
            )
        })?;
        Ok(Handle(file.into()))
    }

    /// Move the calling thread (in `pre_exec`: the forked process) into the namespace.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: setns(2) on an open namespace descriptor; async-signal-safe.
        if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Move the calling thread into the network namespace `name` (needs CAP_SYS_ADMIN).
pub fn enter(name: &str) -> io::Result<()> {
    Handle::open(name)?
        .enter()
        .map_err(|e| io::Error::new(e.kind(), format!("entering network namespace {name}: {e}")))
}
