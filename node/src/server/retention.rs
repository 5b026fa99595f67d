//! Snapshots and log compaction per database: what `--retain-txs`, `--retain-bytes` and
//! `--max-replica-lag-bytes` keep, `db compact`, and the task that applies the retention
//! settings every second.
//!
//! The log is cut only below a snapshot (taken here when the cut needs a newer one), and the
//! engine never cuts what a connected replica or a snapshot transfer still needs, except for a
//! replica lagging by more than `--max-replica-lag-bytes` of log: it is sent the snapshot when
//! it returns.

use std::sync::Weak;
use std::time::Duration;

use replication_core::TxId;

use super::{Server, ServerError};
use crate::wire::{DbSettings, Response, SnapshotReport};

/// How often the retention settings are applied.
const EVERY: Duration = Duration::from_secs(1);

/// What a log's files hold: each segment's first transaction and size, oldest first (empty
/// for a log without files).
pub(crate) type Segments = Vec<(TxId, u64)>;

/// The last transaction the retention settings let compaction remove, `None` when they keep
/// everything: the latest `retain_txs` committed transactions stay, and the segments holding
/// the latest `retain_bytes`; with both, whichever keeps more.
pub(crate) fn cut_point(
    settings: &DbSettings,
    committed: TxId,
    segments: &Segments,
) -> Option<TxId> {
    let by_txs = settings
        .retain_txs
        .map(|keep| TxId(committed.0.saturating_sub(keep)));
    let by_bytes = settings
        .retain_bytes
        .and_then(|keep| first_within(segments, keep))
        .map(TxId::prev);
    match (by_txs, by_bytes) {
        (None, None) => None,
        (Some(cut), None) | (None, Some(cut)) => Some(cut),
        (Some(a), Some(b)) => Some(a.min(b)),
    }
}

/// The first transaction of the oldest segment among the latest ones that hold at least
/// `bytes` (the active segment always counts); `None` without segments.
fn first_within(segments: &Segments, bytes: u64) -> Option<TxId> {
    let mut held = 0u64;
    for (first, size) in segments.iter().rev() {
        held = held.saturating_add(*size);
        if held >= bytes {
            return Some(*first);
        }
    }
    segments.first().map(|(first, _)| *first)
}

/// Replicas that need a transaction before this one lag by more than
/// `max_replica_lag_bytes` of log, and do not hold compaction back.
pub(crate) fn unpin_below(settings: &DbSettings, segments: &Segments) -> TxId {
    let Some(budget) = settings.max_replica_lag_bytes else {
        return TxId::ZERO;
    };
    // The latest segments within the budget: a replica needing anything older lags more.
    let mut held = 0u64;
    let mut oldest_within = None;
    for (first, size) in segments.iter().rev() {
        held = held.saturating_add(*size);
        if held > budget {
            break;
        }
        oldest_within = Some(*first);
    }
    // Not even the active segment fits: a replica not in it lags too far.
    oldest_within
        .or_else(|| segments.last().map(|(first, _)| *first))
        .unwrap_or(TxId::ZERO)
}

impl Server {
    /// Compacts database `db` within its retention settings. With `now` (`db compact`) a
    /// snapshot is taken whatever the settings, and without retention settings everything it
    /// covers may go; otherwise nothing happens unless the settings want a cut beyond the
    /// log's base, and a snapshot is taken only when the latest does not reach the cut.
    ///
    /// # Errors
    /// An unknown database, a snapshot that fails, its engine stopped.
    pub async fn compact(&self, db: &str, now: bool) -> Result<Option<Response>, ServerError> {
        let (node, settings, footprint) = self
            .with_database(db, |d| {
                (d.node.clone(), d.settings.clone(), d.footprint.clone())
            })
            .await?;
        let status = node.status().await.map_err(ServerError::Status)?;
        let segments = footprint.as_ref().map(|f| f()).unwrap_or_default();
        let base_before = status.base.position.tx_id;
        let cut = match cut_point(&settings, status.committed, &segments) {
            Some(cut) => cut,
            None if now => status.committed,
            None => return Ok(None),
        };
        if !now && cut <= base_before {
            return Ok(None);
        }
        let snapshot = match status.snapshot {
            Some((last, bytes)) if !now && last >= cut => SnapshotReport {
                last_tx_id: last.0,
                bytes,
            },
            _ => {
                let meta = node
                    .take_snapshot()
                    .await
                    .map_err(|error| ServerError::Snapshot {
                        db: db.to_string(),
                        error,
                    })?;
                SnapshotReport {
                    last_tx_id: meta.last.tx_id.0,
                    bytes: meta.bytes,
                }
            }
        };
        let base = node
            .compact(cut, unpin_below(&settings, &segments))
            .await
            .map_err(ServerError::Status)?;
        Ok(Some(Response::Compacted {
            snapshot,
            base_before: base_before.0,
            base_after: base.position.tx_id.0,
        }))
    }

    /// Applies every loaded database's retention settings, every second, until the server
    /// is gone.
    pub(super) async fn apply_retention(server: Weak<Server>) {
        // The last failure per database: logged when it changes, not every second.
        let mut failing: std::collections::HashMap<String, String> = Default::default();
        loop {
            tokio::time::sleep(EVERY).await;
            let Some(server) = server.upgrade() else {
                return;
            };
            for (name, _) in server.catalog.slots() {
                let wants = server
                    .with_database(&name, |d| {
                        d.settings.retain_txs.is_some() || d.settings.retain_bytes.is_some()
                    })
                    .await
                    .unwrap_or(false);
                if !wants {
                    continue;
                }
                match server.compact(&name, false).await {
                    Ok(outcome) => {
                        if let Some(Response::Compacted { base_after, .. }) = outcome {
                            tracing::debug!(db = %name, base = base_after, "retention applied");
                        }
                        if failing.remove(&name).is_some() {
                            tracing::info!(db = %name, "retention applies again");
                        }
                    }
                    Err(error) => {
                        let text = error.to_string();
                        if failing.get(&name) != Some(&text) {
                            tracing::warn!(db = %name, error = %text, "applying the retention settings failed");
                            failing.insert(name.clone(), text);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(txs: Option<u64>, bytes: Option<u64>, lag: Option<u64>) -> DbSettings {
        DbSettings {
            retain_txs: txs,
            retain_bytes: bytes,
            max_replica_lag_bytes: lag,
            ..DbSettings::default()
        }
    }

    /// Segments starting at 1, 101, 201, 301, of 1,000 bytes each.
    fn segments() -> Segments {
        (0..4).map(|i| (TxId(1 + 100 * i), 1000)).collect()
    }

    #[test]
    fn retention_keeps_the_latest_transactions_and_bytes_whichever_keeps_more() {
        let committed = TxId(350);
        assert_eq!(
            cut_point(&settings(None, None, None), committed, &segments()),
            None
        );
        assert_eq!(
            cut_point(&settings(Some(100), None, None), committed, &segments()),
            Some(TxId(250))
        );
        // 1,500 bytes: the last two segments (from 201).
        assert_eq!(
            cut_point(&settings(None, Some(1500), None), committed, &segments()),
            Some(TxId(200))
        );
        assert_eq!(
            cut_point(
                &settings(Some(100), Some(1500), None),
                committed,
                &segments()
            ),
            Some(TxId(200))
        );
        assert_eq!(
            cut_point(&settings(Some(500), None, None), committed, &segments()),
            Some(TxId(0))
        );
        // More bytes than the log holds: nothing goes.
        assert_eq!(
            cut_point(&settings(None, Some(1 << 30), None), committed, &segments()),
            Some(TxId(0))
        );
    }

    #[test]
    fn a_replica_lagging_beyond_the_byte_budget_does_not_hold_compaction_back() {
        assert_eq!(
            unpin_below(&settings(None, None, None), &segments()),
            TxId(0)
        );
        // 2,000 bytes: the last two segments; a replica needing anything before 201 lags more.
        assert_eq!(
            unpin_below(&settings(None, None, Some(2000)), &segments()),
            TxId(201)
        );
        assert_eq!(
            unpin_below(&settings(None, None, Some(2500)), &segments()),
            TxId(201)
        );
        // Less than the active segment: every replica not in it lags too far.
        assert_eq!(
            unpin_below(&settings(None, None, Some(10)), &segments()),
            TxId(301)
        );
    }
}
