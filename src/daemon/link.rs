//! The state of the broker connection, shared by the event loop (which keeps it), the watchdog, the stats and
//! the metrics (which read it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

#[derive(Default)]
pub(super) struct Link {
    connected: AtomicBool,
    subscribed: AtomicBool,
    /// Milliseconds since start: last turn of the event loop, last change of `connected`.
    loop_beat: AtomicU64,
    since: AtomicU64,
    started: OnceLock<Instant>,
}

impl Link {
    fn now_ms(&self) -> u64 {
        self.started.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
    pub(super) fn beat(&self) {
        self.loop_beat.store(self.now_ms(), Ordering::Relaxed);
    }
    pub(super) fn set_connected(&self, c: bool) {
        if self.connected.swap(c, Ordering::Relaxed) != c {
            self.since.store(self.now_ms(), Ordering::Relaxed);
        }
        if !c {
            self.subscribed.store(false, Ordering::Relaxed);
        }
    }
    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Note the broker's grant of the subscriptions; true when it was already noted on this connection.
    pub(super) fn set_subscribed(&self) -> bool {
        self.subscribed.swap(true, Ordering::Relaxed)
    }
    pub(super) fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }
    /// Seconds in the current connection state.
    pub(super) fn state_age_s(&self) -> f64 {
        self.now_ms().saturating_sub(self.since.load(Ordering::Relaxed)) as f64 / 1e3
    }
    pub(super) fn loop_age_s(&self) -> f64 {
        self.now_ms().saturating_sub(self.loop_beat.load(Ordering::Relaxed)) as f64 / 1e3
    }
}
