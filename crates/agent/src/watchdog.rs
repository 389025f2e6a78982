//! The host watchdog (DESIGN "Trust", invariant 10): a primary whose agent hangs or dies
//! must not outlive its lease as a writer, and nothing inside a frozen process runs to stop
//! it. So the primary's agent arms a timer outside itself before it takes the lease, feeds
//! it on every lease-loop tick until `HeldLease::feed_until_ms` and never after, and the
//! timer resets the host when the feeding stops. The last feed is early enough that the
//! reset, `timeout` later, comes before the moment any coordinator may promote another
//! node, and never after the fence deadline; the timeout
//! (`LeaseSettings::watchdog_timeout_s`) is as long as that allows, so that an agent
//! stalled for a while on a loaded machine does not reset a healthy host.
//!
//! Two drivers, chosen by the file type of `[watchdog] device`: a character device is the
//! kernel's watchdog API (`/dev/watchdog`: opening it starts the timer, magic close 'V'
//! stops it — unless the kernel was built or loaded with `nowayout`, which pgfm cannot see:
//! do not use it); a FIFO is the lab's stand-in (`pgfm lab watchdog-driver`), which reads
//! the lines `arm SECONDS`, `feed` and `disarm` and kills the node's processes when its
//! deadline passes.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use pgfm_core::{Generation, WatchdogMode, WatchdogReport};

/// A timer that resets the host unless fed. Each call is one quick syscall or two, made
/// inline by the lease loop.
pub trait Watchdog: Send {
    /// Start the timer (or restart it) with `timeout_s`; an error, disarmed, when the
    /// device cannot run it with that timeout or less.
    fn arm(&mut self, timeout_s: u64) -> anyhow::Result<()>;
    /// Push the deadline `timeout_s` into the future.
    fn feed(&mut self) -> anyhow::Result<()>;
    /// Stop the timer cleanly (nothing when not armed).
    fn disarm(&mut self) -> anyhow::Result<()>;
}

/// Where the agent gets a driver from: the configured device file in production
/// (`DeviceFile`), a fake in the unit tests, the simulated host's timer in the simulation.
pub trait WatchdogDevice: Send {
    /// Open a driver; nothing is armed yet.
    fn open(&self) -> anyhow::Result<Box<dyn Watchdog>>;
    /// Whether it looks usable, without arming it (for the node's report).
    fn check(&self) -> Result<(), String>;
    /// What to call it in the log: the device's path.
    fn describe(&self) -> String;
}

/// `[watchdog] device`: a kernel watchdog or the lab's FIFO, told apart by file type.
pub struct DeviceFile(pub PathBuf);

impl WatchdogDevice for DeviceFile {
    fn open(&self) -> anyhow::Result<Box<dyn Watchdog>> {
        driver_for(&self.0)
    }
    fn check(&self) -> Result<(), String> {
        check(&self.0)
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// The driver `device` needs, by its file type; nothing is opened yet.
pub(super) fn driver_for(device: &Path) -> anyhow::Result<Box<dyn Watchdog>> {
    let meta = std::fs::metadata(device).with_context(|| {
        format!(
            "watchdog device {} (load a watchdog driver such as softdog, or set [watchdog] \
             device, or mode = \"off\")",
            device.display()
        )
    })?;
    let file_type = meta.file_type();
    if file_type.is_char_device() {
        Ok(Box::new(Kernel {
            path: device.to_path_buf(),
            file: None,
        }))
    } else if file_type.is_fifo() {
        Ok(Box::new(Fifo {
            path: device.to_path_buf(),
            file: None,
        }))
    } else {
        bail!(
            "watchdog device {} is neither a character device (the kernel's watchdog, such as \
             /dev/watchdog) nor a FIFO (the lab's watchdog driver): set [watchdog] device",
            device.display()
        )
    }
}

/// Whether `device` looks usable, without arming it: opening a kernel watchdog starts its
/// timer, so a character device is only looked at; a FIFO must have a reader.
fn check(device: &Path) -> Result<(), String> {
    let driver = driver_for(device).map_err(|e| format!("{e:#}"))?;
    drop(driver);
    let is_fifo = std::fs::metadata(device).is_ok_and(|m| m.file_type().is_fifo());
    if is_fifo {
        open_fifo(device).map_err(|e| format!("{e:#}"))?;
    }
    Ok(())
}

/// `<linux/watchdog.h>`; nix's macros encode the request numbers for this architecture
/// (`_IOR('W', 5, int)` is 0x80045705 on x86-64).
mod wdioc {
    #[repr(C)]
    #[derive(Default)]
    pub struct Info {
        pub options: u32,
        pub firmware_version: u32,
        pub identity: [u8; 32],
    }
    /// `Info::options`: the device takes WDIOC_SETTIMEOUT.
    pub const SETTIMEOUT: u32 = 0x0080;
    nix::ioctl_read!(get_support, b'W', 0, Info);
    nix::ioctl_read!(keepalive, b'W', 5, nix::libc::c_int);
    nix::ioctl_readwrite!(set_timeout, b'W', 6, nix::libc::c_int);
    nix::ioctl_read!(get_timeout, b'W', 7, nix::libc::c_int);
}

/// The kernel's watchdog API on a character device.
struct Kernel {
    path: PathBuf,
    /// Open while armed.
    file: Option<File>,
}

impl Kernel {
    fn set_timeout(&self, file: &File, timeout_s: u64) -> anyhow::Result<()> {
        let fd = file.as_raw_fd();
        let path = self.path.display();
        let mut info = wdioc::Info::default();
        // SAFETY: `fd` is open for the call and `info` is the struct the request names.
        unsafe { wdioc::get_support(fd, &mut info) }
            .map_err(|e| anyhow::anyhow!("{path} is not a watchdog ({e})"))?;
        let identity = String::from_utf8_lossy(&info.identity)
            .trim_end_matches('\0')
            .to_string();
        if info.options & wdioc::SETTIMEOUT == 0 {
            bail!("{path} ({identity}) takes no timeout; pgfm needs {timeout_s} s");
        }
        let mut asked = nix::libc::c_int::try_from(timeout_s)?;
        // SAFETY: as above, with an int.
        unsafe { wdioc::set_timeout(fd, &mut asked) }.map_err(|e| {
            anyhow::anyhow!("{path} ({identity}) refused a {timeout_s} s timeout ({e})")
        })?;
        let mut set: nix::libc::c_int = 0;
        // SAFETY: as above, with an int.
        unsafe { wdioc::get_timeout(fd, &mut set) }
            .map_err(|e| anyhow::anyhow!("{path} ({identity}): reading its timeout: {e}"))?;
        // A driver rounds to what its hardware can do: longer would reset the host after
        // another node may have been promoted.
        if i64::from(set) > timeout_s as i64 {
            bail!(
                "{path} ({identity}) set a timeout of {set} s, longer than the {timeout_s} s \
                 asked: the host would reset after another node may be promoted"
            );
        }
        Ok(())
    }
}

impl Watchdog for Kernel {
    fn arm(&mut self, timeout_s: u64) -> anyhow::Result<()> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_CLOEXEC)
                .open(&self.path)
                .with_context(|| format!("opening {}", self.path.display()))?;
            self.file = Some(file);
        }
        // From here the timer runs: every failure disarms before it returns.
        let result = match &self.file {
            Some(file) => self.set_timeout(file, timeout_s),
            None => Ok(()),
        };
        if let Err(e) = result.and_then(|()| self.feed()) {
            let _ = self.disarm();
            return Err(e);
        }
        Ok(())
    }

    fn feed(&mut self) -> anyhow::Result<()> {
        let Some(file) = &self.file else {
            bail!("{} is not armed", self.path.display());
        };
        let mut unused: nix::libc::c_int = 0;
        // SAFETY: `file` is open for the call; the kernel ignores the argument.
        unsafe { wdioc::keepalive(file.as_raw_fd(), &mut unused) }
            .with_context(|| format!("feeding {}", self.path.display()))?;
        Ok(())
    }

    fn disarm(&mut self) -> anyhow::Result<()> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        // The magic close: 'V' then close stops the timer.
        file.write_all(b"V")
            .with_context(|| format!("writing the magic close to {}", self.path.display()))
    }
}

/// Open the lab driver's FIFO for writing without blocking: with no reader that fails
/// (ENXIO), and a driver that stops reading makes a write fail rather than hang the lease
/// loop.
fn open_fifo(path: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ENXIO) {
                anyhow::anyhow!(
                    "the watchdog driver is not running (nothing reads {})",
                    path.display()
                )
            } else {
                anyhow::anyhow!("opening {}: {e}", path.display())
            }
        })
}

/// The lab's watchdog driver behind a FIFO: the same semantics as the kernel's, in lines.
struct Fifo {
    path: PathBuf,
    file: Option<File>,
}

impl Fifo {
    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let Some(file) = &mut self.file else {
            bail!("{} is not armed", self.path.display());
        };
        // A line is shorter than PIPE_BUF: written whole or not at all.
        if let Err(e) = file.write_all(line.as_bytes()) {
            self.file = None;
            bail!(
                "writing {:?} to {}: {e} (is the watchdog driver running?)",
                line.trim_end(),
                self.path.display()
            );
        }
        Ok(())
    }
}

impl Watchdog for Fifo {
    fn arm(&mut self, timeout_s: u64) -> anyhow::Result<()> {
        if self.file.is_none() {
            self.file = Some(open_fifo(&self.path)?);
        }
        self.send(&format!("arm {timeout_s}\n"))
    }

    fn feed(&mut self) -> anyhow::Result<()> {
        self.send("feed\n")
    }

    fn disarm(&mut self) -> anyhow::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let sent = self.send("disarm\n");
        self.file = None;
        sent
    }
}

/// What the lease loop sees on one tick, for `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tick {
    /// The committed state names this node primary.
    pub is_primary: bool,
    /// PostgreSQL runs here and would take writes.
    pub writable: bool,
    /// Before `HeldLease::feed_until_ms`: the lease is held, and a reset a timeout from now
    /// would be over before it ends.
    pub valid: bool,
    /// The lease loop sends a renewal on this tick.
    pub renew_due: bool,
    pub armed: bool,
    /// Neither held the lease nor fenced yet in this generation: the next renewal is the
    /// first, which must not be sent unguarded.
    pub first: bool,
}

/// What to do with the watchdog on one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Keep,
    Arm,
    Feed,
    Disarm(&'static str),
}

/// The watchdog's rule, pure: armed from before the first renewal of a generation while the
/// node may write under its lease; fed only while `valid` (the lease loop's
/// `HeldLease::feed_until_ms` has not passed); disarmed once
/// PostgreSQL cannot write (never before: a writable PostgreSQL is fenced first).
pub(super) fn step(t: Tick) -> Step {
    if !t.is_primary {
        return if t.armed && !t.writable {
            Step::Disarm("this node is not the primary")
        } else {
            Step::Keep
        };
    }
    if t.valid {
        return if t.armed { Step::Feed } else { Step::Arm };
    }
    if t.armed && t.first && !t.writable {
        // Armed for the generation's first renewal, which may take a while (a new
        // coordinator being elected): nothing writes before the lease is held (a promotion
        // and a start as primary wait for it), so there is nothing to reset the host for.
        return Step::Feed;
    }
    if !t.armed {
        // The lease is never taken unguarded; after a fence (not first) renewals go out
        // unarmed and the watchdog is armed once one of them makes the lease valid again.
        return if t.renew_due && t.first {
            Step::Arm
        } else {
            Step::Keep
        };
    }
    if !t.first && !t.writable {
        return Step::Disarm("the lease is gone and PostgreSQL is stopped");
    }
    // Writable without a valid lease: the lease loop fences it, or the timer resets the host.
    Step::Keep
}

/// The host watchdog as the agent holds it (behind a mutex; every call is quick).
pub(super) struct HostWatchdog {
    mode: WatchdogMode,
    device: Box<dyn WatchdogDevice>,
    timeout_s: u64,
    /// Some while armed.
    driver: Option<Box<dyn Watchdog>>,
    /// The generation `past_first` is about.
    generation: Option<Generation>,
    /// In `generation` the lease was valid or PostgreSQL was fenced.
    past_first: bool,
    /// Why it cannot be used (the last failure to arm or feed), until it is armed again.
    problem: Option<String>,
    /// When arming last failed (monotonic ms): the next attempt waits a second.
    failed_at_ms: Option<u64>,
}

impl HostWatchdog {
    /// `timeout_s`: `LeaseSettings::watchdog_timeout_s` (config validation refuses a mode
    /// other than off without one).
    pub(super) fn new(
        mode: WatchdogMode,
        device: Box<dyn WatchdogDevice>,
        timeout_s: Option<u64>,
    ) -> Self {
        let mode = if timeout_s.is_none() {
            WatchdogMode::Off
        } else {
            mode
        };
        HostWatchdog {
            mode,
            device,
            timeout_s: timeout_s.unwrap_or(0),
            driver: None,
            generation: None,
            past_first: false,
            problem: None,
            failed_at_ms: None,
        }
    }

    /// The timeout it is armed with (0 when off).
    pub(super) fn timeout_s(&self) -> u64 {
        self.timeout_s
    }

    /// For the node's report, every probe.
    pub(super) fn report(&self) -> WatchdogReport {
        let armed = self.driver.is_some();
        // Armed, only a problem of its own shows: a timeout the device refused.
        let problem = if self.mode == WatchdogMode::Off {
            None
        } else if armed {
            self.problem.clone()
        } else {
            self.problem.clone().or_else(|| self.device.check().err())
        };
        WatchdogReport {
            mode: self.mode,
            armed,
            problem,
            timeout_s: (self.mode != WatchdogMode::Off).then_some(self.timeout_s),
        }
    }

    /// One lease-loop tick, before its renewal or fence; returns whether a renewal may be
    /// sent (`required`: only armed, or unarmed after a fence until arming fails).
    pub(super) fn tick(
        &mut self,
        generation: Generation,
        is_primary: bool,
        writable: bool,
        valid: bool,
        renew_due: bool,
        now_ms: u64,
    ) -> bool {
        if self.mode == WatchdogMode::Off {
            return true;
        }
        self.enter(generation);
        self.past_first |= valid;
        let tick = Tick {
            is_primary,
            writable,
            valid,
            renew_due,
            armed: self.driver.is_some(),
            first: !self.past_first,
        };
        match step(tick) {
            Step::Keep => {}
            Step::Arm => self.arm(generation, now_ms),
            Step::Feed => {
                let fed = self.driver.as_mut().map(|d| d.feed());
                if let Some(Err(e)) = fed {
                    if let Some(mut driver) = self.driver.take() {
                        let _ = driver.disarm();
                    }
                    self.fail(generation, format!("feeding failed: {e:#}"), now_ms);
                }
            }
            Step::Disarm(why) => self.disarm(generation, why),
        }
        self.mode != WatchdogMode::Required
            || self.driver.is_some()
            || (self.past_first && self.problem.is_none())
    }

    /// The lease's timing changed (a committed edit of the cluster's settings): the timeout
    /// it needs is `timeout_s` now. Unarmed, the next arming takes it. Armed, setting it
    /// restarts the timer, which is a feed: only done while a feed is allowed under the new
    /// timeout (`may_feed`: a reset after it still comes before the end of the lease). Until
    /// then the old timeout stays, fed under its own rule (invariant 10).
    pub(super) fn retime(
        &mut self,
        generation: Generation,
        timeout_s: u64,
        may_feed: bool,
        now_ms: u64,
    ) {
        if self.mode == WatchdogMode::Off || timeout_s == self.timeout_s {
            return;
        }
        let Some(driver) = self.driver.as_mut() else {
            tracing::info!(%generation, from = self.timeout_s, to = timeout_s, "watchdog timeout changed (the lease's timing changed)");
            self.timeout_s = timeout_s;
            return;
        };
        if !may_feed || self.failed_at_ms.is_some_and(|at| now_ms < at + 1000) {
            return;
        }
        match driver.arm(timeout_s) {
            Ok(()) => {
                tracing::info!(%generation, from = self.timeout_s, to = timeout_s, "armed watchdog's timeout changed (the lease's timing changed)");
                self.timeout_s = timeout_s;
                self.problem = None;
                self.failed_at_ms = None;
            }
            // The device refuses the new timeout (beyond its range): armed again with the
            // one it took, which the feeds go on following (a lease too short for it
            // resets the host, the safe end); said, and tried again no sooner than a second.
            Err(e) => match driver.arm(self.timeout_s) {
                Ok(()) => {
                    let problem = format!(
                        "the device refused a {timeout_s} s timeout for the cluster's lease \
                         ({e:#}); it keeps {} s (choose a lease whose timeout it takes)",
                        self.timeout_s
                    );
                    if self.problem.as_ref() != Some(&problem) {
                        tracing::error!(%generation, %problem, "watchdog timeout unchanged");
                    }
                    self.problem = Some(problem);
                    self.failed_at_ms = Some(now_ms);
                }
                Err(again) => {
                    if let Some(mut driver) = self.driver.take() {
                        let _ = driver.disarm();
                    }
                    self.fail(
                        generation,
                        format!(
                            "changing the timeout to {timeout_s} s failed ({e:#}), and so did \
                             arming it again ({again:#})"
                        ),
                        now_ms,
                    );
                }
            },
        }
    }

    /// PostgreSQL was fenced in `generation`: it cannot write, the timer has nothing left to
    /// guard.
    pub(super) fn fenced(&mut self, generation: Generation) {
        self.enter(generation);
        self.past_first = true;
        self.disarm(generation, "PostgreSQL is fenced");
    }

    /// The agent stops gracefully: PostgreSQL keeps running, and the host must not reset.
    pub(super) fn stop(&mut self, generation: Generation) {
        self.disarm(
            generation,
            "the agent is stopping (PostgreSQL keeps running)",
        );
    }

    fn enter(&mut self, generation: Generation) {
        if self.generation != Some(generation) {
            self.generation = Some(generation);
            self.past_first = false;
        }
    }

    fn arm(&mut self, generation: Generation, now_ms: u64) {
        if self.failed_at_ms.is_some_and(|at| now_ms < at + 1000) {
            return;
        }
        let armed = self.device.open().and_then(|mut driver| {
            driver.arm(self.timeout_s)?;
            Ok(driver)
        });
        match armed {
            Ok(driver) => {
                self.driver = Some(driver);
                self.problem = None;
                self.failed_at_ms = None;
                tracing::info!(
                    %generation,
                    device = %self.device.describe(),
                    timeout_s = self.timeout_s,
                    mode = %self.mode,
                    "watchdog armed"
                );
            }
            Err(e) => self.fail(generation, format!("arming failed: {e:#}"), now_ms),
        }
    }

    fn fail(&mut self, generation: Generation, problem: String, now_ms: u64) {
        self.failed_at_ms = Some(now_ms);
        if self.problem.as_ref() == Some(&problem) {
            return;
        }
        match self.mode {
            WatchdogMode::Required => tracing::error!(
                %generation,
                %problem,
                "watchdog required but unusable: this node does not renew the primary lease"
            ),
            _ => tracing::warn!(
                %generation,
                %problem,
                "watchdog unusable: going on without it (mode automatic)"
            ),
        }
        self.problem = Some(problem);
    }

    fn disarm(&mut self, generation: Generation, why: &str) {
        let Some(mut driver) = self.driver.take() else {
            return;
        };
        match driver.disarm() {
            Ok(()) => tracing::info!(%generation, %why, "watchdog disarmed"),
            Err(e) => {
                let problem = format!("disarming failed: {e:#}");
                tracing::error!(%generation, %why, %problem, "the watchdog may reset the host");
                self.problem = Some(problem);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::sync::{Arc, Mutex};

    fn check_step(tick: (bool, bool, bool, bool, bool, bool), expected: Step) {
        let (is_primary, writable, valid, renew_due, armed, first) = tick;
        let t = Tick {
            is_primary,
            writable,
            valid,
            renew_due,
            armed,
            first,
        };
        assert_eq!(step(t), expected, "{t:?}");
    }

    /// (primary, writable, valid, renew due, armed, first) -> step.
    #[test]
    fn armed_before_the_first_renewal_fed_only_while_valid() {
        use Step::*;
        // The first renewal of a generation waits for the watchdog.
        check_step((true, false, false, true, false, true), Arm);
        check_step((true, true, false, true, false, true), Arm);
        check_step((true, false, false, false, false, true), Keep);
        // Armed, the first renewal on its way (it may wait for a new coordinator): fed,
        // since nothing writes before the lease; not fed once PostgreSQL is writable.
        check_step((true, false, false, false, true, true), Feed);
        check_step((true, true, false, false, true, true), Keep);
        // The lease is valid: fed; armed at once if it was not (after a fence).
        check_step((true, true, true, false, true, false), Feed);
        check_step((true, false, true, true, true, false), Feed);
        check_step((true, true, true, false, false, false), Arm);
        // The lease ran out while writable: neither fed nor disarmed (the fence comes).
        check_step((true, true, false, true, true, false), Keep);
        // The lease is gone and PostgreSQL stopped (fenced, handed over, crashed).
        check_step(
            (true, false, false, true, true, false),
            Disarm("the lease is gone and PostgreSQL is stopped"),
        );
        // After a fence, renewals go out unarmed.
        check_step((true, false, false, true, false, false), Keep);
        // Not the primary: disarmed once PostgreSQL cannot write.
        check_step(
            (false, false, false, false, true, false),
            Disarm("this node is not the primary"),
        );
        check_step((false, true, true, false, true, false), Keep);
        check_step((false, false, false, false, false, true), Keep);
    }

    /// A driver that records what it was asked.
    struct Fake {
        said: Arc<Mutex<Vec<String>>>,
        fail: Arc<Mutex<bool>>,
    }

    thread_local! {
        /// The longest timeout the fake device takes (this test's thread).
        static MAX_TIMEOUT_S: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
    }

    impl Watchdog for Fake {
        fn arm(&mut self, timeout_s: u64) -> anyhow::Result<()> {
            if *self.fail.lock().unwrap() {
                bail!("no such device");
            }
            if timeout_s > MAX_TIMEOUT_S.get() {
                bail!("invalid argument");
            }
            self.said.lock().unwrap().push(format!("arm {timeout_s}"));
            Ok(())
        }
        fn feed(&mut self) -> anyhow::Result<()> {
            self.said.lock().unwrap().push("feed".into());
            Ok(())
        }
        fn disarm(&mut self) -> anyhow::Result<()> {
            self.said.lock().unwrap().push("disarm".into());
            Ok(())
        }
    }

    /// What the fake driver was asked, and whether it fails to arm.
    type Said = Arc<Mutex<Vec<String>>>;
    type Fails = Arc<Mutex<bool>>;

    /// Opens a `Fake` sharing its record.
    struct FakeDevice {
        said: Said,
        fail: Fails,
    }

    impl WatchdogDevice for FakeDevice {
        fn open(&self) -> anyhow::Result<Box<dyn Watchdog>> {
            Ok(Box::new(Fake {
                said: self.said.clone(),
                fail: self.fail.clone(),
            }))
        }
        fn check(&self) -> Result<(), String> {
            Ok(())
        }
        fn describe(&self) -> String {
            "/dev/fake".into()
        }
    }

    fn fake(mode: WatchdogMode) -> (HostWatchdog, Said, Fails) {
        let said = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(false));
        let device = FakeDevice {
            said: said.clone(),
            fail: fail.clone(),
        };
        let w = HostWatchdog::new(mode, Box::new(device), Some(1));
        (w, said, fail)
    }

    fn take(said: &Said) -> String {
        std::mem::take(&mut *said.lock().unwrap()).join(", ")
    }

    /// A primary's life: armed before the first renewal, fed while valid, disarmed by the
    /// fence; a standby's watchdog is never armed; a graceful stop disarms.
    #[test]
    fn a_primary_arms_feeds_and_disarms() {
        let (mut w, said, _) = fake(WatchdogMode::Required);
        let g = Generation(1);
        w.tick(g, false, false, false, false, 0);
        assert_eq!(take(&said), "");
        assert!(w.tick(g, true, false, false, true, 50));
        assert_eq!(take(&said), "arm 1");
        assert!(w.tick(g, true, false, true, false, 100));
        assert!(w.tick(g, true, true, true, false, 150));
        assert_eq!(take(&said), "feed, feed");
        assert!(w.report().armed);
        // The lease runs out: no feed; the fence disarms.
        assert!(w.tick(g, true, true, false, true, 2600));
        assert_eq!(take(&said), "");
        w.fenced(g);
        assert_eq!(take(&said), "disarm");
        // Renewals go on unarmed; one succeeds: armed again at once.
        assert!(w.tick(g, true, false, false, true, 2700));
        assert_eq!(take(&said), "");
        assert!(w.tick(g, true, false, true, false, 2750));
        assert_eq!(take(&said), "arm 1");
        w.stop(g);
        assert_eq!(take(&said), "disarm");
        assert!(!w.report().armed);
    }

    /// A change of the lease's timing: unarmed, the next arming takes the new timeout;
    /// armed, it is set only when a feed is allowed under it.
    #[test]
    fn a_new_lease_changes_the_timeout_when_a_feed_may_come() {
        let (mut w, said, _) = fake(WatchdogMode::Required);
        let g = Generation(1);
        w.retime(g, 3, false, 0);
        assert_eq!((take(&said).as_str(), w.timeout_s()), ("", 3));
        assert!(w.tick(g, true, false, false, true, 50));
        assert_eq!(take(&said), "arm 3");
        w.retime(g, 1, false, 100);
        assert_eq!((take(&said).as_str(), w.timeout_s()), ("", 3));
        w.retime(g, 1, true, 150);
        assert_eq!((take(&said).as_str(), w.timeout_s()), ("arm 1", 1));
        // A timeout the device refuses: armed again with the one it took, and said.
        MAX_TIMEOUT_S.set(15);
        w.retime(g, 30, true, 200);
        assert_eq!((take(&said).as_str(), w.timeout_s()), ("arm 1", 1));
        assert!(w.report().armed);
        assert_eq!(w.report().problem.as_deref(), Some("the device refused a 30 s timeout for the cluster's lease (invalid argument); it keeps 1 s (choose a lease whose timeout it takes)"));
        MAX_TIMEOUT_S.set(u64::MAX);
        w.retime(g, 30, true, 700);
        assert_eq!(take(&said), "", "tried again too soon");
        w.retime(g, 30, true, 1_300);
        assert_eq!((take(&said).as_str(), w.timeout_s()), ("arm 30", 30));
        assert_eq!(w.report().problem, None);
        let (mut w, said, _) = fake(WatchdogMode::Off);
        w.retime(g, 3, true, 0);
        assert_eq!((take(&said).as_str(), w.timeout_s()), ("", 1));
    }

    /// `required` sends no renewal without an armed watchdog, and says why once; a second
    /// later it tries again. `automatic` goes on unarmed.
    #[test]
    fn a_watchdog_that_cannot_be_armed() {
        let (mut w, said, fail) = fake(WatchdogMode::Required);
        let g = Generation(2);
        *fail.lock().unwrap() = true;
        assert!(!w.tick(g, true, false, false, true, 0));
        let problem = w.report().problem.unwrap();
        assert_eq!(problem, "arming failed: no such device");
        assert!(
            !w.tick(g, true, false, false, true, 500),
            "retried too soon"
        );
        *fail.lock().unwrap() = false;
        assert!(!w.tick(g, true, false, false, true, 900));
        assert!(w.tick(g, true, false, false, true, 1000));
        assert_eq!(take(&said), "arm 1");
        assert_eq!(w.report().problem, None);

        let (mut w, said, fail) = fake(WatchdogMode::Automatic);
        *fail.lock().unwrap() = true;
        assert!(w.tick(g, true, false, false, true, 0));
        assert!(w.tick(g, true, true, true, false, 50));
        assert_eq!(take(&said), "");
        assert!(!w.report().armed);
        assert!(w.report().problem.is_some());
        // A new generation where this node is not the primary: nothing to do.
        assert!(w.tick(Generation(3), false, false, false, false, 100));
    }

    #[test]
    fn off_does_nothing() {
        let (mut w, said, _) = fake(WatchdogMode::Off);
        assert!(w.tick(Generation(1), true, true, true, true, 0));
        assert_eq!(take(&said), "");
        assert_eq!(
            w.report(),
            WatchdogReport {
                mode: WatchdogMode::Off,
                armed: false,
                problem: None,
                timeout_s: None,
            }
        );
        let device = DeviceFile(PathBuf::from("/dev/null"));
        let w = HostWatchdog::new(WatchdogMode::Required, Box::new(device), None);
        assert_eq!(w.report().mode, WatchdogMode::Off);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgfm-watchdog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The lab's protocol over a real FIFO: lines in order; no reader is an error that says
    /// the driver is not running.
    #[test]
    fn the_fifo_driver_writes_lines() {
        let dir = temp_dir("fifo");
        let path = dir.join("watchdog");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut driver = driver_for(&path).unwrap();
        let err = format!("{:#}", driver.arm(1).unwrap_err());
        assert!(err.contains("the watchdog driver is not running"), "{err}");
        assert!(check(&path).unwrap_err().contains("not running"));

        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        assert_eq!(check(&path), Ok(()));
        driver.arm(2).unwrap();
        driver.feed().unwrap();
        driver.disarm().unwrap();
        driver.disarm().unwrap();
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        assert_eq!(text, "arm 2\nfeed\ndisarm\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Neither a character device nor a FIFO: refused, naming the path. A character device
    /// that is no watchdog (/dev/null; never a real /dev/watchdog, whose opening starts a
    /// timer that resets this machine) fails to arm and is left closed.
    #[test]
    fn devices_are_told_apart_by_file_type() {
        let dir = temp_dir("types");
        let plain = dir.join("plain");
        std::fs::write(&plain, "").unwrap();
        let err = format!("{:#}", driver_for(&plain).err().unwrap());
        assert!(
            err.contains(&plain.display().to_string())
                && err.contains("neither a character device"),
            "{err}"
        );
        let err = format!("{:#}", driver_for(&dir.join("missing")).err().unwrap());
        assert!(err.contains("load a watchdog driver"), "{err}");
        let mut null = driver_for(Path::new("/dev/null")).unwrap();
        let err = format!("{:#}", null.arm(1).unwrap_err());
        assert!(err.contains("/dev/null is not a watchdog"), "{err}");
        assert!(null.feed().is_err(), "left armed after a failure");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
