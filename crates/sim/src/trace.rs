//! The readable trace of a run: every log line the agents write (through `tracing`), each
//! stamped with the simulated time and the node it came from, and the simulator's own
//! lines (faults, the PostgreSQL model's changes, violations). Kept only when asked for: a
//! search over many seeds runs without it and replays a failing seed with it.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use crate::node::SimTime;

thread_local! {
    /// The node whose code runs now on this thread ("" between nodes: the simulator).
    static CURRENT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Say whose code runs from now on (`""`: the simulator's).
pub fn set_current(node: &str) {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        c.clear();
        c.push_str(node);
    });
}

#[derive(Clone, Default)]
pub struct Trace {
    lines: Arc<Mutex<Vec<String>>>,
    time: SimTime,
    on: bool,
}

impl Trace {
    pub fn new(time: SimTime, on: bool) -> Trace {
        Trace {
            lines: Arc::default(),
            time,
            on,
        }
    }

    pub fn on(&self) -> bool {
        self.on
    }

    /// A line of the simulator's own.
    pub fn say(&self, text: impl AsRef<str>) {
        if self.on {
            self.push("sim", text.as_ref());
        }
    }

    fn push(&self, who: &str, text: &str) {
        let ms = self.time.now_ms();
        let line = format!(
            "{:>4}.{:03} {who:<4} {}",
            ms / 1000,
            ms % 1000,
            text.trim_end()
        );
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Capture the agents' log lines on this thread until the guard is dropped. One
    /// subscriber serves the whole process (a per-thread one would share tracing's
    /// per-call-site cache with the threads that run untraced seeds, and lose lines); it
    /// formats only the events of threads that capture.
    pub fn capture(&self) -> Option<Capture> {
        if !self.on {
            return None;
        }
        install();
        ACTIVE.with(|a| *a.borrow_mut() = Some(self.clone()));
        Some(Capture)
    }
}

thread_local! {
    /// The trace this thread's log lines go to (None: not captured).
    static ACTIVE: RefCell<Option<Trace>> = const { RefCell::new(None) };
}

/// Until dropped, this thread's log lines go to its trace.
pub struct Capture;

impl Drop for Capture {
    fn drop(&mut self) {
        ACTIVE.with(|a| *a.borrow_mut() = None);
    }
}

fn install() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::Layer as _;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            std::env::var("PGFM_SIM_LOG")
                .unwrap_or_else(|_| "info,openraft=error,pgfm_coord=warn".into()),
        );
        // Asked at every event, never cached per call site: whether a call site is wanted
        // depends on the thread that reaches it.
        let capturing = tracing_subscriber::filter::DynFilterFn::new(|_, _| {
            ACTIVE.with(|a| a.borrow().is_some())
        })
        .with_callsite_filter(|_| tracing::subscriber::Interest::sometimes());
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(ThreadWriter)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_filter(filter)
            .with_filter(capturing);
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
    });
}

/// Writes each formatted event to the capturing thread's trace.
struct ThreadWriter;

impl<'a> MakeWriter<'a> for ThreadWriter {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line {
            trace: ACTIVE.with(|a| a.borrow().clone()),
            buffer: Vec::new(),
        }
    }
}

/// One formatted event: the fmt layer writes it whole, then drops the writer.
pub struct Line {
    trace: Option<Trace>,
    buffer: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let Some(trace) = &self.trace else { return };
        if self.buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer).to_string();
        let who = CURRENT.with(|c| c.borrow().clone());
        trace.push(if who.is_empty() { "sim" } else { &who }, &text);
    }
}
