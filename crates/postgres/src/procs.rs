//! Process trees read from /proc: every process a postmaster started, so that a fence
//! leaves none of them alive (invariant 10), and the lab can freeze or kill a whole host.
//!
//! PostgreSQL's backends call setsid(), so the postmaster's process group does not hold
//! them, and a backend whose postmaster died can still commit. Its processes are found by
//! parent pid instead, before the postmaster is gone (then they are orphans that nothing
//! leads to), and each is named by its pid *and* its start time, so that a pid the kernel
//! gave to another process in the meantime is never signalled.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What `/proc/PID/stat` says of a process (the fields pgfm uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// The program name, which may hold spaces and parentheses.
    pub comm: String,
    /// `R`, `S`, `D`, `T` (stopped), `t`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start: u64,
}

impl Stat {
    /// A zombie or a dead process: it runs no more code and holds nothing but its pid.
    fn gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parse one `/proc/PID/stat` line. The name is between the first `(` and the *last* `)`:
/// a program may call itself `a) R 1 (b`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (pid, rest) = text.split_once(" (")?;
    let (comm, fields) = rest.rsplit_once(") ")?;
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    Some(Stat {
        pid: pid.trim().parse().ok()?,
        comm: comm.to_string(),
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// `/proc/PID/stat` of a process, None when there is no such process.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A process that cannot be confused with a later one reusing its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Proc {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.pid)
    }
}

/// The live process `pid` now (None: no such process, or a zombie).
pub fn identify(pid: i32) -> Option<Proc> {
    let s = stat(pid).filter(|s| !s.gone())?;
    Some(Proc {
        pid: s.pid,
        start: s.start,
    })
}

impl Proc {
    fn now(&self) -> Option<Stat> {
        stat(self.pid).filter(|s| s.start == self.start && !s.gone())
    }

    /// Still this process, and not a zombie.
    pub fn alive(&self) -> bool {
        self.now().is_some()
    }

    /// Stopped by a signal (SIGSTOP, SIGTSTP) or a tracer.
    pub fn stopped(&self) -> bool {
        self.now().is_some_and(|s| matches!(s.state, 'T' | 't'))
    }

    /// Send `signal` if this is still the same process; whether it was sent.
    pub fn signal(&self, signal: Signal) -> bool {
        // The check and the kill are not atomic, but a pid is reused only after its
        // process was reaped and the kernel went through the whole pid range.
        self.alive() && kill(Pid::from_raw(self.pid), signal).is_ok()
    }
}

/// Every live process, from one pass over /proc.
fn all() -> Vec<Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|s| !s.gone())
        .collect()
}

/// The direct children of `parent` (processes whose parent pid is its pid).
pub fn children(parent: Proc) -> Vec<Proc> {
    let found: Vec<Proc> = all()
        .into_iter()
        .filter(|s| s.ppid == parent.pid && s.pid != parent.pid)
        .map(|s| Proc {
            pid: s.pid,
            start: s.start,
        })
        .collect();
    // Had the parent's pid been reused, these would be another process's children.
    if parent.alive() {
        found
    } else {
        Vec::new()
    }
}

/// Every process below `root` (children, their children, ...), parents before children;
/// `root` itself is not included.
pub fn descendants(root: Proc) -> Vec<Proc> {
    if !root.alive() {
        return Vec::new();
    }
    let everyone = all();
    let mut found = Vec::new();
    let mut parents = vec![root.pid];
    while let Some(parent) = parents.pop() {
        for s in everyone
            .iter()
            .filter(|s| s.ppid == parent && s.pid != parent)
        {
            // Each pid is followed once, whatever a reused pid makes of the links.
            if found.iter().any(|p: &Proc| p.pid == s.pid) {
                continue;
            }
            found.push(Proc {
                pid: s.pid,
                start: s.start,
            });
            parents.push(s.pid);
        }
    }
    found
}

/// Stop `root` and every process below it with SIGSTOP, the root first so that it starts
/// no more. Processes are signalled as they are found, and the tree is read again until a
/// pass finds nothing new once everyone signalled has stopped. Returns `root` (first) and
/// every process stopped.
pub fn freeze_tree(root: Proc) -> Vec<Proc> {
    if !root.signal(Signal::SIGSTOP) {
        return Vec::new();
    }
    let mut frozen = vec![root];
    let mut seen: BTreeSet<Proc> = BTreeSet::from([root]);
    let mut pending = vec![root];
    for _ in 0..50 {
        // A signalled process may still be inside fork(): wait until it has stopped,
        // then its children are visible.
        let deadline = Instant::now() + Duration::from_millis(200);
        while pending.iter().any(|p| p.alive() && !p.stopped()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // One pass over /proc per wave, however many backends there are.
        let parents: BTreeSet<i32> = frozen.iter().map(|p| p.pid).collect();
        let new: Vec<Proc> = all()
            .into_iter()
            .filter(|s| parents.contains(&s.ppid) && !parents.contains(&s.pid))
            .map(|s| Proc {
                pid: s.pid,
                start: s.start,
            })
            .filter(|p| !seen.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        pending.clear();
        for p in new {
            if seen.insert(p) && p.signal(Signal::SIGSTOP) {
                frozen.push(p);
                pending.push(p);
            }
        }
    }
    frozen
}

/// Send `signal` to `root` and every process below it, children first (for SIGCONT: the
/// root resumes last, to a tree that runs again). Returns the processes signalled.
pub fn signal_tree(root: Proc, signal: Signal) -> Vec<Proc> {
    let mut tree = descendants(root);
    tree.reverse();
    tree.push(root);
    tree.into_iter().filter(|p| p.signal(signal)).collect()
}

/// The processes of `procs` still alive.
pub fn survivors(procs: &[Proc]) -> Vec<Proc> {
    procs.iter().copied().filter(Proc::alive).collect()
}

/// Wait until every process of `procs` is gone, at most `timeout`; returns those left.
pub fn wait_gone(procs: &[Proc], timeout: Duration) -> Vec<Proc> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = survivors(procs);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What `kill_tree` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Killed {
    /// The root, first, then every process below it that was killed.
    pub procs: Vec<Proc>,
    /// Those still alive after the wait (empty when all went).
    pub left: Vec<Proc>,
}

impl Killed {
    /// `postmaster (pid 12) and 7 children (pids 13, 14, ...)`.
    pub fn describe(&self, what: &str) -> String {
        let Some((root, rest)) = self.procs.split_first() else {
            return format!("no {what}");
        };
        let mut text = format!("{what} (pid {root})");
        if !rest.is_empty() {
            let pids: Vec<String> = rest.iter().map(Proc::to_string).collect();
            text.push_str(&format!(
                " and {} process(es) below it (pids {})",
                rest.len(),
                pids.join(", ")
            ));
        }
        if !self.left.is_empty() {
            let pids: Vec<String> = self.left.iter().map(Proc::to_string).collect();
            text.push_str(&format!(" (still alive: {})", pids.join(", ")));
        }
        text
    }
}

/// Kill `pid` and every process below it with SIGKILL: first SIGSTOP the root and the
/// whole tree (so that nothing forks and the postmaster restarts nothing), then SIGKILL
/// every one of them, children first, and wait at most `grace` until all are gone.
/// Nothing when `pid` is not a live process.
pub fn kill_tree(pid: i32, grace: Duration) -> Killed {
    let Some(root) = identify(pid) else {
        return Killed {
            procs: Vec::new(),
            left: Vec::new(),
        };
    };
    let procs = freeze_tree(root);
    for p in procs.iter().rev() {
        p.signal(Signal::SIGKILL);
    }
    let left = wait_gone(&procs, grace);
    Killed { procs, left }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn check(line: &str, expected: Option<(i32, &str, char, i32, u64)>) {
        let got = parse_stat(line).map(|s| (s.pid, s.comm, s.state, s.ppid, s.start));
        let expected = expected.map(|(p, c, st, pp, t)| (p, c.to_string(), st, pp, t));
        assert_eq!(got, expected, "{line:?}");
    }

    /// A stat line of `pid (comm)` with state, ppid and start time, the rest as Linux has it.
    fn line(pid: i32, comm: &str, state: char, ppid: i32, start: u64) -> String {
        format!(
            "{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 \
             {start} 3133440 380 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
        )
    }

    #[test]
    fn stat_lines_are_parsed_whatever_the_program_calls_itself() {
        check(
            &line(17, "cat", 'R', 1, 79304),
            Some((17, "cat", 'R', 1, 79304)),
        );
        check(
            &line(42, "postgres: pg1: walwriter ", 'S', 17, 5),
            Some((42, "postgres: pg1: walwriter ", 'S', 17, 5)),
        );
        check(
            &line(43, "a) R 1 (b", 'T', 17, 6),
            Some((43, "a) R 1 (b", 'T', 17, 6)),
        );
        check(
            &line(44, "((x))", 'Z', 1, 7),
            Some((44, "((x))", 'Z', 1, 7)),
        );
        check("44 (cut short) S 1 2 3", None);
        check("", None);
        check("not a stat line", None);
    }

    /// Wait, at most 5 s, until `root` has `n` processes below it.
    fn wait_for_tree(root: Proc, n: usize) -> Vec<Proc> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let tree = descendants(root);
            if tree.len() >= n {
                return tree;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {n} processes below {root}, found {tree:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn(script: &str) -> (Child, Proc) {
        let child = Command::new("sh").args(["-c", script]).spawn().unwrap();
        let root = identify(child.id() as i32).expect("the shell runs");
        (child, root)
    }

    /// A shell with two children, one of them in a session of its own (as PostgreSQL's
    /// backends are): killing the tree leaves none of them, and a pid with another start
    /// time is never signalled.
    #[test]
    fn a_whole_tree_is_killed_whatever_its_sessions() {
        let (mut child, root) = spawn("sleep 30 & setsid sleep 31 & wait");
        let tree = wait_for_tree(root, 2);
        assert_eq!(children(root).len(), tree.len(), "{tree:?}");
        let impostor = Proc {
            pid: tree[0].pid,
            start: tree[0].start + 1,
        };
        assert!(!impostor.alive() && !impostor.signal(Signal::SIGKILL));
        assert!(tree[0].alive());

        let killed = kill_tree(root.pid, Duration::from_secs(5));
        assert_eq!(killed.procs[0], root);
        assert_eq!(killed.procs.len(), 3, "{killed:?}");
        assert!(killed.left.is_empty(), "{killed:?}");
        assert!(tree.iter().all(|p| !p.alive()), "{tree:?}");
        assert!(killed.describe("shell").starts_with(&format!(
            "shell (pid {}) and 2 process(es) below it",
            root.pid
        )));
        child.wait().unwrap();
        let nothing = kill_tree(root.pid, Duration::from_secs(1));
        assert!(nothing.procs.is_empty());
    }

    /// A frozen tree is stopped to the last process and runs again when thawed.
    #[test]
    fn a_tree_is_frozen_and_thawed() {
        let (mut child, root) = spawn("sleep 30 & sleep 31 & wait");
        let tree = wait_for_tree(root, 2);
        let frozen = freeze_tree(root);
        assert_eq!(frozen.len(), 3, "{frozen:?}");
        assert!(frozen.iter().all(Proc::stopped), "{frozen:?}");
        let thawed = signal_tree(root, Signal::SIGCONT);
        assert_eq!(thawed.len(), 3);
        assert_eq!(thawed.last(), Some(&root), "the root resumes last");
        let deadline = Instant::now() + Duration::from_secs(5);
        while tree.iter().chain([&root]).any(Proc::stopped) {
            assert!(Instant::now() < deadline, "still stopped: {tree:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = kill_tree(root.pid, Duration::from_secs(5));
        assert!(killed.left.is_empty(), "{killed:?}");
        child.wait().unwrap();
    }
}
