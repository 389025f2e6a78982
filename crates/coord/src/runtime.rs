//! openraft's async runtime: Tokio's, except where openraft draws random numbers (its
//! election timeouts). Those come from a per-thread generator seeded from the operating
//! system, unless the simulation seeds it (`seed_elections`) so that a run replays from its
//! seed; nothing else differs from `openraft::TokioRuntime`.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::{RngCore, SeedableRng};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Runtime;

thread_local! {
    static ELECTION_RNG: RefCell<Option<rand::rngs::StdRng>> = const { RefCell::new(None) };
}

/// Draw this thread's election timeouts from `seed` from now on (the simulation, once per
/// run: every simulated agent runs on the thread that runs the simulation).
pub fn seed_elections(seed: u64) {
    ELECTION_RNG.with(|rng| *rng.borrow_mut() = Some(rand::rngs::StdRng::seed_from_u64(seed)));
}

/// This thread's generator: seeded by `seed_elections`, or from the OS at first use.
pub struct ElectionRng;

impl ElectionRng {
    fn with<T>(f: impl FnOnce(&mut rand::rngs::StdRng) -> T) -> T {
        ELECTION_RNG.with(|rng| {
            let mut rng = rng.borrow_mut();
            f(rng.get_or_insert_with(rand::rngs::StdRng::from_entropy))
        })
    }
}

impl RngCore for ElectionRng {
    fn next_u32(&mut self) -> u32 {
        ElectionRng::with(|r| r.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        ElectionRng::with(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        ElectionRng::with(|r| r.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        ElectionRng::with(|r| r.try_fill_bytes(dest))
    }
}

type Tokio = TokioRuntime;

impl AsyncRuntime for Runtime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ElectionRng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ElectionRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        Tokio::oneshot()
    }
}
