//! The stress of `pgfm bench calm`, each part a guard that undoes itself when dropped, on
//! every path out of the bench (an error, Ctrl-C, a panic): the CPU hogs, killed by pid,
//! and the primary's agent stopped with SIGSTOP, resumed with SIGCONT.

use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;

use pgfm_postgres::procs::Proc;

/// Busy loops, one process each, at the priority of the bench (the same as the lab's
/// agents and PostgreSQL, which inherit it too).
pub struct Hogs {
    children: Vec<Child>,
}

impl Hogs {
    /// Start `n` hogs: `sh -c 'while :; do :; done'`, which never sleeps.
    pub fn start(n: usize) -> anyhow::Result<Hogs> {
        // Built up one by one: a hog that fails to start drops the ones before it.
        let mut hogs = Hogs {
            children: Vec::new(),
        };
        for _ in 0..n {
            let mut command = std::process::Command::new("/bin/sh");
            command
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // A hog must not outlive the bench, even one killed with SIGKILL, whose guards
            // never run: the kernel kills it when the thread that started it ends.
            // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            hogs.children
                .push(command.spawn().context("starting a CPU hog (/bin/sh)")?);
        }
        Ok(hogs)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// How many hogs still run (one killed by someone else no longer loads the CPU).
    pub fn running(&mut self) -> usize {
        self.children
            .iter_mut()
            .map(|c| c.try_wait())
            .filter(|waited| matches!(waited, Ok(None)))
            .count()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.children {
            // By the pid the bench started: SIGKILL, then reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The primary's agent, stopped until `resume` or drop.
pub struct Paused {
    agent: Proc,
    since: Instant,
    resumed: bool,
}

impl Paused {
    /// SIGSTOP `agent` (the process alone: its PostgreSQL, a child of it, runs on) and wait
    /// until the kernel shows it stopped, at most 200 ms; the pause is timed from then.
    /// None when it is no longer running.
    pub fn stop(agent: Proc) -> Option<Paused> {
        if !agent.signal(Signal::SIGSTOP) {
            return None;
        }
        // The guard exists from here on: whatever happens next, the agent is resumed.
        let mut paused = Paused {
            agent,
            since: Instant::now(),
            resumed: false,
        };
        let deadline = paused.since + Duration::from_millis(200);
        while !agent.stopped() && agent.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        paused.since = Instant::now();
        Some(paused)
    }

    /// SIGCONT; how long the agent was held stopped.
    pub fn resume(mut self) -> Duration {
        self.agent.signal(Signal::SIGCONT);
        self.resumed = true;
        self.since.elapsed()
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !self.resumed {
            self.agent.signal(Signal::SIGCONT);
        }
    }
}
