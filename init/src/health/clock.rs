//! The time source of the check scheduler and [`run_once`](super::run_once):
//! tokio's clock in production, a virtual one in tests.

use std::future::Future;

use tokio::time::Instant;

/// Tells the time and waits for it.
pub(crate) trait Clock: Clone + Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Instant;
    /// Completes at `deadline` (at once when it has passed).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;
}

/// tokio's clock: [`Instant::now`] and [`tokio::time::sleep_until`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep_until(deadline)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use std::sync::{Arc, Mutex};

    use tokio::sync::watch;

    use super::*;

    /// How many times [`FakeClock::idle`] lets the other tasks run before it
    /// gives up: a test waiting for sleepers that never come fails instead
    /// of hanging.
    const MAX_YIELDS: usize = 100_000;

    /// Virtual time that moves only when the test moves it: a sleep
    /// completes once the time reaches its deadline. Deterministic on a
    /// current-thread runtime, however loaded the machine.
    #[derive(Debug, Clone)]
    pub(crate) struct FakeClock {
        now: Arc<watch::Sender<Instant>>,
        /// The deadlines of the sleeps being waited for.
        sleeping: Arc<Mutex<Vec<Instant>>>,
    }

    /// Forgets a sleep's deadline when the sleep ends or is dropped.
    struct Sleeping {
        sleeping: Arc<Mutex<Vec<Instant>>>,
        deadline: Instant,
    }

    impl Drop for Sleeping {
        fn drop(&mut self) {
            let mut sleeping = self.sleeping.lock().unwrap();
            if let Some(i) = sleeping.iter().position(|d| *d == self.deadline) {
                sleeping.swap_remove(i);
            }
        }
    }

    impl FakeClock {
        /// A clock standing at the current instant.
        pub(crate) fn new() -> Self {
            Self {
                now: Arc::new(watch::channel(Instant::now()).0),
                sleeping: Arc::default(),
            }
        }

        /// Sets the time to `t`, waking the sleeps due by then.
        pub(crate) fn set(&self, t: Instant) {
            self.now.send_replace(t);
        }

        /// The earliest deadline of the sleeps being waited for.
        pub(crate) fn next_deadline(&self) -> Option<Instant> {
            self.sleeping.lock().unwrap().iter().min().copied()
        }

        /// Lets the other tasks run until exactly `sleepers` sleeps wait, all
        /// for a time still to come (every task woken has gone back to
        /// sleep): what tokio's paused clock waits for before it moves on.
        pub(crate) async fn idle(&self, sleepers: usize) {
            for _ in 0..MAX_YIELDS {
                let now = self.now();
                {
                    let sleeping = self.sleeping.lock().unwrap();
                    if sleeping.len() == sleepers && sleeping.iter().all(|d| *d > now) {
                        return;
                    }
                }
                tokio::task::yield_now().await;
            }
            panic!(
                "never {sleepers} sleepers waiting; deadlines {:?}",
                self.sleeping.lock().unwrap()
            );
        }

        /// Moves the time on by `by` as tokio's paused clock does with
        /// `sleep(by)`: whenever `sleepers` sleeps wait, straight to the
        /// earliest of their deadlines, until `by` has passed.
        pub(crate) async fn run_for(&self, by: std::time::Duration, sleepers: usize) {
            let end = self.now() + by;
            loop {
                self.idle(sleepers).await;
                match self.next_deadline() {
                    Some(next) if next <= end => self.set(next),
                    _ => {
                        self.set(end);
                        return;
                    }
                }
            }
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.now.borrow()
        }

        fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
            let this = self.clone();
            async move {
                let mut now = this.now.subscribe();
                if *now.borrow_and_update() >= deadline {
                    return;
                }
                this.sleeping.lock().unwrap().push(deadline);
                let _sleeping = Sleeping {
                    sleeping: this.sleeping.clone(),
                    deadline,
                };
                // The sender lives in `this`, so the channel stays open.
                let _ = now.wait_for(|now| *now >= deadline).await;
            }
        }
    }
}
