//! The epoch ticker: deadlines and drains are enforced by wasmtime's epoch
//! interruption, so something must advance the engine's epoch. A thread
//! does, every `epoch_tick`, while calls run and for a second after the
//! last one ended, then parks: an idle server costs no wake-ups, and a busy
//! one does not pay a thread wake-up (a futex call) on every call, only
//! when the ticker was parked.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::Engine;

#[derive(Debug, Default)]
struct State {
    active: usize,
    /// The ticker waits on the condition variable (not ticking).
    parked: bool,
    /// When the last call ended (the ticker parks a while after).
    idle_since: Option<Instant>,
    stop: bool,
}

/// How long the ticker goes on after the last call ended.
const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Ticker {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Ticker {
    pub fn start(engine: Engine, tick: Duration) -> Self {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("baton-hot-epoch".to_owned())
            .spawn(move || {
                let (m, cv) = &*s;
                loop {
                    {
                        let mut st = lock(m);
                        while st.active == 0
                            && !st.stop
                            && st.idle_since.is_none_or(|t| t.elapsed() >= LINGER)
                        {
                            st.parked = true;
                            st.idle_since = None;
                            st = cv
                                .wait(st)
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                        st.parked = false;
                        if st.stop {
                            return;
                        }
                    }
                    // This is the clock itself, not a wait for an event.
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .ok();
        if thread.is_none() {
            // Without the thread, deadlines cannot fire; calls still run.
            tracing::error!("cannot start the epoch thread: call deadlines will not be enforced");
        }
        Self { shared, thread }
    }

    /// Keeps the epoch ticking until the returned guard drops.
    pub fn enter(&self) -> Ticking<'_> {
        let (m, cv) = &*self.shared;
        let mut st = lock(m);
        st.active += 1;
        if st.parked {
            cv.notify_one();
        }
        Ticking(self)
    }
}

pub(crate) struct Ticking<'a>(&'a Ticker);

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.shared.0);
        st.active -= 1;
        if st.active == 0 {
            st.idle_since = Some(Instant::now());
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        lock(&self.shared.0).stop = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
