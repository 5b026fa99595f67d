//! The executable contract of [`TxLog`]: every store runs [`txlog_conformance`].

use async_trait::async_trait;
use bytes::Bytes;

use crate::log::{LogError, TxLog};
use crate::types::{Epoch, EpochClaim, LogPosition, ReplicaId, Tx, TxId};

/// Makes logs for the conformance suite.
#[async_trait]
pub trait LogFactory: Send + Sync {
    /// The log under test.
    type Log: TxLog;

    /// A new, empty log.
    async fn create(&self) -> Self::Log;

    /// Lets pending durability complete (for a store that syncs in the background or on
    /// demand); a store that syncs on its own may do nothing.
    async fn make_durable(&self, log: &Self::Log);

    /// Simulates a crash of the process (everything not durable may be lost) and reopens the
    /// same log.
    async fn crash_and_reopen(&self, log: Self::Log) -> Self::Log;
}

fn chain(prev: LogPosition, epoch: Epoch, count: usize, size: usize) -> Vec<Tx> {
    let mut prev = prev;
    (0..count)
        .map(|i| {
            let payload = Bytes::from(vec![(prev.tx_id.0 as u8).wrapping_add(i as u8); size]);
            let tx = Tx::new(prev, epoch, payload);
            prev = tx.position();
            tx
        })
        .collect()
}

async fn append_durably<L: TxLog, F: LogFactory<Log = L>>(factory: &F, log: &L, txs: Vec<Tx>) {
    let last = txs.last().map(|tx| tx.id);
    let durability = log.append(txs).await.expect("append");
    factory.make_durable(log).await;
    let durable = durability.await.expect("durability");
    assert_eq!(
        Some(durable),
        last,
        "durability reports the batch's last transaction"
    );
}

async fn assert_holds<L: TxLog>(log: &L, expected: &[Tx], context: &str) {
    let read = log
        .read(TxId(1), expected.len() + 10, usize::MAX)
        .await
        .expect("read");
    assert!(
        read.len() >= expected.len(),
        "{context}: {} transactions survive, expected at least {}",
        read.len(),
        expected.len()
    );
    for (got, want) in read.iter().zip(expected) {
        assert_eq!(got, want, "{context}: transaction {} differs", want.id);
    }
}

/// Runs every check of the [`TxLog`] contract against logs from `factory`. Panics with a
/// message naming the broken rule.
pub async fn txlog_conformance<F: LogFactory>(factory: &F) {
    empty_log(factory).await;
    append_read_and_bounds(factory).await;
    durable_survives_crash(factory).await;
    crash_leaves_a_prefix(factory).await;
    commit_point(factory).await;
    truncation(factory).await;
    rewind(factory).await;
    epoch(factory).await;
    membership(factory).await;
}

async fn empty_log<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    let state = log.state().await.expect("state");
    assert_eq!(
        state.last,
        LogPosition::START,
        "an empty log's last position is START"
    );
    assert_eq!(state.durable, LogPosition::START);
    assert_eq!(state.committed, LogPosition::START);
    assert!(
        log.read(TxId(1), 10, usize::MAX)
            .await
            .expect("read")
            .is_empty()
    );
}

async fn append_read_and_bounds<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    let txs = chain(LogPosition::START, Epoch(1), 10, 100);
    let _durability = log.append(txs[..4].to_vec()).await.expect("append");
    // Readable when append returns, before durability.
    assert_eq!(
        log.state().await.expect("state").last,
        txs[3].position(),
        "readable on return"
    );
    assert_eq!(
        log.read(TxId(1), 100, usize::MAX).await.expect("read"),
        txs[..4].to_vec()
    );

    let gap = log.append(txs[5..6].to_vec()).await;
    assert!(
        matches!(gap, Err(LogError::NotContiguous { .. })),
        "a gap is refused"
    );
    let repeat = log.append(txs[3..4].to_vec()).await;
    assert!(
        matches!(repeat, Err(LogError::NotContiguous { .. })),
        "a repeat is refused"
    );

    append_durably(factory, &log, txs[4..].to_vec()).await;
    assert_eq!(
        log.read(TxId(3), 2, usize::MAX).await.expect("read"),
        txs[2..4].to_vec(),
        "count bound"
    );
    let by_bytes = log.read(TxId(1), 100, 250).await.expect("read");
    assert_eq!(
        by_bytes,
        txs[..2].to_vec(),
        "byte bound stops before exceeding it"
    );
    let at_least_one = log.read(TxId(5), 100, 1).await.expect("read");
    assert_eq!(
        at_least_one,
        txs[4..5].to_vec(),
        "one transaction even when it exceeds max_bytes"
    );
    assert!(
        log.read(TxId(11), 10, usize::MAX)
            .await
            .expect("read")
            .is_empty(),
        "past the end"
    );
}

async fn durable_survives_crash<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    let txs = chain(LogPosition::START, Epoch(1), 50, 64);
    for batch in txs.chunks(7) {
        append_durably(factory, &log, batch.to_vec()).await;
    }
    let state = log.state().await.expect("state");
    assert_eq!(
        state.durable,
        txs[49].position(),
        "durable position after durability reported"
    );
    let log = factory.crash_and_reopen(log).await;
    assert_holds(&log, &txs, "after a crash, everything reported durable").await;
    let state = log.state().await.expect("state");
    assert_eq!(state.last, txs[49].position());
    assert_eq!(state.durable, txs[49].position());
    // It can be appended to after reopening.
    let more = chain(txs[49].position(), Epoch(2), 3, 10);
    append_durably(factory, &log, more.clone()).await;
    let log = factory.crash_and_reopen(log).await;
    assert_holds(&log, &[txs, more].concat(), "appends after a reopen").await;
}

async fn crash_leaves_a_prefix<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    let txs = chain(LogPosition::START, Epoch(1), 20, 32);
    append_durably(factory, &log, txs[..10].to_vec()).await;
    let _pending = log.append(txs[10..].to_vec()).await.expect("append");
    let log = factory.crash_and_reopen(log).await;
    let state = log.state().await.expect("state");
    assert!(state.last.tx_id >= TxId(10), "durable transactions survive");
    let read = log.read(TxId(1), 100, usize::MAX).await.expect("read");
    assert_eq!(
        read.len() as u64,
        state.last.tx_id.0,
        "state agrees with what is readable"
    );
    assert_eq!(
        read,
        txs[..read.len()].to_vec(),
        "what survives is a prefix of what was appended"
    );
    assert_eq!(
        state.durable, state.last,
        "after a reopen everything present is durable"
    );
}

async fn commit_point<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    let txs = chain(LogPosition::START, Epoch(1), 10, 16);
    append_durably(factory, &log, txs[..6].to_vec()).await;
    let beyond = log.commit(TxId(7)).await;
    assert!(
        matches!(beyond, Err(LogError::InvalidCommit { .. })),
        "no commit beyond durable"
    );
    log.commit(TxId(4)).await.expect("commit");
    assert_eq!(
        log.state().await.expect("state").committed,
        txs[3].position()
    );
    log.commit(TxId(2))
        .await
        .expect("a commit that does not advance is a no-op");
    assert_eq!(
        log.state().await.expect("state").committed.tx_id,
        TxId(4),
        "never backwards"
    );
    let log = factory.crash_and_reopen(log).await;
    let committed = log.state().await.expect("state").committed.tx_id;
    assert!(
        committed <= TxId(4),
        "a reopened commit point is never higher than recorded"
    );
}

async fn truncation<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    let txs = chain(LogPosition::START, Epoch(1), 10, 16);
    append_durably(factory, &log, txs.clone()).await;
    log.commit(TxId(5)).await.expect("commit");
    let below = log.truncate_after(TxId(4)).await;
    assert!(
        matches!(below, Err(LogError::TruncateCommitted { .. })),
        "committed is never truncated"
    );
    log.truncate_after(TxId(7)).await.expect("truncate");
    let state = log.state().await.expect("state");
    assert_eq!(state.last, txs[6].position());
    assert!(state.durable.tx_id <= TxId(7));
    assert!(
        log.read(TxId(8), 10, usize::MAX)
            .await
            .expect("read")
            .is_empty()
    );
    // The truncated suffix is replaced by another history, and the truncation is durable.
    let other = chain(txs[6].position(), Epoch(2), 4, 16);
    append_durably(factory, &log, other.clone()).await;
    let log = factory.crash_and_reopen(log).await;
    assert_holds(
        &log,
        &[txs[..7].to_vec(), other].concat(),
        "after truncate, append and crash",
    )
    .await;
    assert_eq!(log.state().await.expect("state").last.tx_id, TxId(11));
}

async fn rewind<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    let txs = chain(LogPosition::START, Epoch(1), 10, 16);
    append_durably(factory, &log, txs.clone()).await;
    log.commit(TxId(8)).await.expect("commit");
    match log.rewind_after(TxId(5)).await {
        // The default: a log that cannot lower its commit point refuses and keeps everything.
        Err(LogError::TruncateCommitted { .. }) => {
            assert_holds(&log, &txs, "after a refused rewind").await;
            assert_eq!(
                log.state().await.expect("state").committed.tx_id,
                TxId(8),
                "a refused rewind keeps the commit point"
            );
            return;
        }
        result => result.expect("rewind"),
    }
    let state = log.state().await.expect("state");
    assert_eq!(
        state.last,
        txs[4].position(),
        "a rewind removes what follows"
    );
    assert_eq!(
        state.committed,
        txs[4].position(),
        "a rewind lowers the commit point to the last transaction kept"
    );
    // Another history follows and commits; the rewind and the new commit point hold across a
    // crash.
    let other = chain(txs[4].position(), Epoch(2), 3, 16);
    append_durably(factory, &log, other.clone()).await;
    log.commit(TxId(7)).await.expect("commit the new history");
    let log = factory.crash_and_reopen(log).await;
    let expected = [txs[..5].to_vec(), other].concat();
    assert_holds(&log, &expected, "after rewind, append and crash").await;
    let committed = log.state().await.expect("state").committed;
    assert!(
        committed.tx_id <= TxId(7),
        "a reopened commit point is never beyond what was recorded"
    );
    if committed.tx_id > TxId::ZERO {
        assert_eq!(
            committed,
            expected[committed.tx_id.0 as usize - 1].position(),
            "the commit point names the new history's hash"
        );
    }
    // Rewinding at or above the commit point is a plain truncation.
    log.rewind_after(TxId(7))
        .await
        .expect("rewind at or above the commit point");
    assert_eq!(log.state().await.expect("state").last.tx_id, TxId(7));
}

async fn epoch<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    assert_eq!(log.state().await.expect("state").epoch, Epoch(0));
    assert_eq!(
        log.epoch_claim().await.expect("claim"),
        EpochClaim::default(),
        "a new log has epoch 0 and no primary"
    );
    log.save_epoch(&EpochClaim::new(Epoch(3), None))
        .await
        .expect("save");
    log.save_epoch(&EpochClaim::new(Epoch(2), Some(ReplicaId::new("a", "db"))))
        .await
        .expect("save");
    assert_eq!(
        log.state().await.expect("state").epoch,
        Epoch(3),
        "the epoch never decreases"
    );
    assert_eq!(
        log.epoch_claim().await.expect("claim"),
        EpochClaim::new(Epoch(3), None),
        "a claim of a lower epoch is ignored"
    );
    let log = factory.crash_and_reopen(log).await;
    assert_eq!(
        log.state().await.expect("state").epoch,
        Epoch(3),
        "the epoch is durable"
    );
    // The primary of an epoch learned later is recorded, and then never replaced.
    let first = EpochClaim::new(Epoch(3), Some(ReplicaId::new("a", "db")));
    log.save_epoch(&first).await.expect("save");
    assert_eq!(
        log.epoch_claim().await.expect("claim"),
        first,
        "a claim naming the primary of the saved epoch replaces one that named none"
    );
    log.save_epoch(&EpochClaim::new(Epoch(3), Some(ReplicaId::new("b", "db"))))
        .await
        .expect("save");
    log.save_epoch(&EpochClaim::new(Epoch(3), None))
        .await
        .expect("save");
    assert_eq!(
        log.epoch_claim().await.expect("claim"),
        first,
        "the primary of an epoch is never replaced"
    );
    let log = factory.crash_and_reopen(log).await;
    assert_eq!(
        log.epoch_claim().await.expect("claim"),
        first,
        "the claim is durable"
    );
    let next = EpochClaim::new(Epoch(4), Some(ReplicaId::new("b", "db")));
    log.save_epoch(&next).await.expect("save");
    let log = factory.crash_and_reopen(log).await;
    assert_eq!(
        log.epoch_claim().await.expect("claim"),
        next,
        "a higher epoch replaces the claim"
    );
    assert_eq!(log.state().await.expect("state").epoch, Epoch(4));
}

async fn membership<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    assert_eq!(
        log.members().await.expect("members"),
        Vec::<ReplicaId>::new(),
        "a new log has no members"
    );
    let two = vec![ReplicaId::new("a", "db"), ReplicaId::new("b", "db")];
    log.save_members(two.clone()).await.expect("save");
    assert_eq!(
        log.members().await.expect("members"),
        two,
        "members returns what was saved"
    );
    // Another replica in, one out, in another order: the list replaces, it is not merged.
    let other = vec![ReplicaId::new("c", "other"), ReplicaId::new("a", "db")];
    log.save_members(other.clone()).await.expect("save");
    assert_eq!(
        log.members().await.expect("members"),
        other,
        "a save replaces the membership"
    );
    let log = factory.crash_and_reopen(log).await;
    assert_eq!(
        log.members().await.expect("members"),
        other,
        "the last membership saved is durable"
    );
    // An empty membership is a membership too: saved, it replaces the last one.
    log.save_members(Vec::new()).await.expect("save");
    let log = factory.crash_and_reopen(log).await;
    assert_eq!(
        log.members().await.expect("members"),
        Vec::<ReplicaId>::new(),
        "an empty membership saved is durable"
    );
}
