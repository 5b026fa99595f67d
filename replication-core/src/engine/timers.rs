//! Time as the engine sees it, and the one table of timers that [`Engine::poll_timeout`](super::Engine::poll_timeout) reads.

use std::time::Duration;

/// A point in time, in microseconds since an origin the driver chooses. The engine only
/// compares and adds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// `self + duration`.
    pub fn plus(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration.as_micros() as u64))
    }

    /// The time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// The engine's timers. Each has at most one deadline; [`TimerTable::earliest`] is what
/// [`Engine::poll_timeout`](super::Engine::poll_timeout) returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// The periodic tick: heartbeats, peer timeouts. Always set.
    Heartbeat,
    /// Tell replicas not reached by a `Txs` message the commit point.
    CommitNotify,
    /// Stream transactions held back under an asynchronous policy.
    StreamBatch,
    /// The earliest deadline of a waiting write.
    WriteDeadline,
    /// Reconnect to the source (replica only).
    Reconnect,
    /// A leased primary's lease ends while writes wait: they are answered then.
    LeaseEnd,
}

const TIMERS: usize = 6;

impl Timer {
    fn index(self) -> usize {
        match self {
            Timer::Heartbeat => 0,
            Timer::CommitNotify => 1,
            Timer::StreamBatch => 2,
            Timer::WriteDeadline => 3,
            Timer::Reconnect => 4,
            Timer::LeaseEnd => 5,
        }
    }
}

/// One deadline per [`Timer`], as quinn-proto keeps its connection timers.
#[derive(Clone, Debug, Default)]
pub(super) struct TimerTable {
    deadlines: [Option<Timestamp>; TIMERS],
}

impl TimerTable {
    /// Sets `timer` to fire at `at`, replacing any deadline it had.
    pub(super) fn set(&mut self, timer: Timer, at: Timestamp) {
        self.deadlines[timer.index()] = Some(at);
    }

    /// Sets `timer` to `at`, or stops it when `at` is `None`.
    pub(super) fn set_or_stop(&mut self, timer: Timer, at: Option<Timestamp>) {
        self.deadlines[timer.index()] = at;
    }

    /// Sets `timer` to `at` unless it is already running.
    pub(super) fn start_unless_running(&mut self, timer: Timer, at: Timestamp) {
        self.deadlines[timer.index()].get_or_insert(at);
    }

    /// Stops `timer`; returns whether it was running.
    pub(super) fn stop(&mut self, timer: Timer) -> bool {
        self.deadlines[timer.index()].take().is_some()
    }

    /// Stops `timer` and returns true if its deadline has come by `now`.
    pub(super) fn expire(&mut self, timer: Timer, now: Timestamp) -> bool {
        let slot = &mut self.deadlines[timer.index()];
        if slot.is_some_and(|at| at <= now) {
            *slot = None;
            return true;
        }
        false
    }

    /// The earliest deadline of all timers.
    pub(super) fn earliest(&self) -> Option<Timestamp> {
        self.deadlines.iter().flatten().min().copied()
    }
}
