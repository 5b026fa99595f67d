//! The one place in this crate that reads a clock.

use std::time::Duration;

use crate::engine::Timestamp;

/// Converts between the wall clock and the engine's [`Timestamp`]s.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    /// A clock whose origin is now.
    #[allow(clippy::disallowed_methods)] // The driver is where time enters the system.
    pub fn start() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        Timestamp(self.origin.elapsed().as_micros() as u64)
    }

    /// The timestamp of an instant (the origin for an earlier one).
    pub fn timestamp_of(&self, at: tokio::time::Instant) -> Timestamp {
        Timestamp(at.saturating_duration_since(self.origin).as_micros() as u64)
    }

    /// The instant a timestamp stands for.
    pub fn instant_of(&self, at: Timestamp) -> tokio::time::Instant {
        self.origin + Duration::from_micros(at.0)
    }
}
