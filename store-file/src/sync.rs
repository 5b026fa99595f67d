//! The sync thread: one `fdatasync` per round covers every append written before it (group
//! commit), and its result is published to the waiting [`Durability`] futures.
//!
//! [`Durability`]: replication_core::Durability

use std::sync::Arc;
use std::time::Duration;

use replication_core::log::LogOperation;

use crate::options::SyncMode;
use crate::state::Shared;

impl Shared {
    /// The sync thread: each round syncs everything written so far, then publishes it.
    pub(crate) fn sync_loop(self: Arc<Shared>) {
        let mut closing;
        let mut previous_batch = 0u64;
        let mut previous_sync = Duration::ZERO;
        loop {
            {
                let mut request = self.lock_wake();
                let interval = match self.options.sync {
                    SyncMode::Interval(every) => Some(every),
                    _ => None,
                };
                while !request.pending && !request.closing {
                    request.waiting = true;
                    match interval {
                        Some(every) => {
                            let (guard, timeout) = self
                                .wake_signal
                                .wait_timeout(request, every)
                                .unwrap_or_else(|poisoned| poisoned.into_inner());
                            request = guard;
                            if timeout.timed_out() {
                                break;
                            }
                        }
                        None => {
                            request = self
                                .wake_signal
                                .wait(request)
                                .unwrap_or_else(|p| p.into_inner());
                        }
                    }
                }
                request.waiting = false;
                if request.closing && !request.pending {
                    return;
                }
                request.pending = false;
                closing = request.closing;
            }
            // Concurrent appenders: let the writers woken by the previous sync append before
            // this one starts, so that one sync covers them all (bounded by a fraction of
            // the previous sync's duration, so a lone writer never waits).
            if previous_batch > 1 && !closing {
                let deadline = std::time::Instant::now() + previous_sync / 4;
                let mut seen = self.lock().last.tx_id;
                while std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(20));
                    let now = self.lock().last.tx_id;
                    if now == seen {
                        break;
                    }
                    seen = now;
                }
            }
            let (file, target, generation) = {
                let state = self.lock();
                // On close, sync even in the modes that report durability early.
                if state.failed.is_some() || (state.durable == state.last && !closing) {
                    continue;
                }
                (state.active().file.clone(), state.last, state.generation)
            };
            let started = std::time::Instant::now();
            let synced = file.sync_data();
            previous_sync = started.elapsed().min(Duration::from_millis(2));
            let mut state = self.lock();
            previous_batch = target.tx_id.0.saturating_sub(state.durable.tx_id.0);
            match synced {
                Err(error) => {
                    self.fail(
                        &mut state,
                        LogOperation::Sync,
                        format!("fdatasync failed: {error}"),
                    );
                }
                Ok(()) if state.generation == generation && target.tx_id > state.durable.tx_id => {
                    state.durable = target;
                    self.durable.send_replace((target.tx_id, None));
                }
                Ok(()) => {}
            }
        }
    }

    /// Asks the sync thread for a round, notifying it only if it sleeps.
    pub(crate) fn request_sync(&self) {
        let mut request = self.lock_wake();
        request.pending = true;
        let waiting = request.waiting;
        drop(request);
        if waiting {
            self.wake_signal.notify_one();
        }
    }
}
