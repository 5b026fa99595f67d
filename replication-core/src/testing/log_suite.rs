//! The executable contract of [`TxLog`]: every store runs [`txlog_conformance`].

use async_trait::async_trait;
use bytes::Bytes;

use crate::log::{LogError, TxLog};
use crate::types::{Epoch, EpochClaim, LogBase, LogPosition, ReplicaId, Tx, TxHash, TxId};

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
///
/// The optional operations are checked as far as the log implements them, decided at run
/// time and silently (nothing is printed):
/// - [`TxLog::rewind_after`]: a log that refuses (the default) must keep everything.
/// - [`TxLog::compact`] and [`TxLog::base`]: always run. A log may remove fewer transactions
///   than asked (whole segments or chunks), so the checks that need something removed (reads
///   at or below the base fail with [`LogError::Removed`], the base survives a crash) apply
///   only once `compact` returned a base other than [`LogBase::START`]; the defaults, which
///   remove nothing and return `START`, pass the rest (the base never passes the commit
///   point, everything after it stays readable).
/// - [`TxLog::reset_to`]: skipped, with compaction after a reset, for a log whose `reset_to`
///   returns [`LogError::Unsupported`] (the default), after checking that the refusal kept
///   the log as it was. A log that implements it must also refuse, with
///   [`LogError::NotContiguous`], a first append after the reset that is not `base.first()`
///   or does not chain from the base's hash.
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
    compaction(factory).await;
    reset(factory).await;
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

/// Checks a base `compact` returned or a log reported: `floor` (the base it had before), or the
/// position and epoch of one of `txs` no later than `at_most`.
fn check_base(base: LogBase, floor: LogBase, txs: &[Tx], at_most: TxId, context: &str) {
    assert!(
        base.position.tx_id >= floor.position.tx_id,
        "{context}: the base moved backwards, from {} to {}",
        floor.position,
        base.position
    );
    if base == floor {
        return;
    }
    assert!(
        base.position.tx_id <= at_most,
        "{context}: the base {} passes {at_most}, the most that may be removed",
        base.position
    );
    let tx = txs
        .iter()
        .find(|tx| tx.id == base.position.tx_id)
        .unwrap_or_else(|| {
            panic!(
                "{context}: the base {} is no transaction of the log",
                base.position
            )
        });
    assert_eq!(
        base.position,
        tx.position(),
        "{context}: the base names the last transaction removed, with its hash"
    );
    assert_eq!(
        base.epoch, tx.epoch,
        "{context}: the base has its transaction's epoch"
    );
}

/// Checks that every transaction up to `base` reads as removed, naming `base.first()`.
async fn assert_removed_below<L: TxLog>(log: &L, base: LogBase, context: &str) {
    if base.position.tx_id == TxId::ZERO {
        return;
    }
    for id in [TxId(1), base.position.tx_id] {
        match log.read(id, 10, usize::MAX).await {
            Err(LogError::Removed { first_retained, .. }) => assert_eq!(
                first_retained,
                base.first(),
                "{context}: a read of {id} names the first transaction after the base"
            ),
            other => panic!(
                "{context}: a read of {id}, at or below the base {}, must fail with Removed: {other:?}",
                base.position
            ),
        }
    }
}

/// Checks that the log holds exactly the transactions of `txs` from `from` on.
async fn assert_holds_from<L: TxLog>(log: &L, txs: &[Tx], from: TxId, context: &str) {
    let expected: Vec<Tx> = txs.iter().filter(|tx| tx.id >= from).cloned().collect();
    let read = log
        .read(from, expected.len() + 10, usize::MAX)
        .await
        .unwrap_or_else(|error| panic!("{context}: read from {from}: {error}"));
    assert_eq!(read, expected, "{context}: the transactions from {from}");
}

async fn compaction<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    assert_eq!(
        log.base().await.expect("base"),
        LogBase::START,
        "a new log begins at the start"
    );
    let txs = chain(LogPosition::START, Epoch(1), 40, 64);
    for batch in txs.chunks(4) {
        append_durably(factory, &log, batch.to_vec()).await;
    }
    log.commit(TxId(20)).await.expect("commit");
    let base = log.compact(TxId(30)).await.expect("compact");
    check_base(
        base,
        LogBase::START,
        &txs,
        TxId(20),
        "compact(30) with 20 committed",
    );
    assert_eq!(
        log.base().await.expect("base"),
        base,
        "base() reports what compact returned"
    );
    let state = log.state().await.expect("state");
    assert_eq!(state.last, txs[39].position(), "compaction keeps the last");
    assert_eq!(
        state.durable,
        txs[39].position(),
        "compaction keeps durable"
    );
    assert_eq!(
        state.committed,
        txs[19].position(),
        "compaction keeps the commit point"
    );
    assert_removed_below(&log, base, "after compaction").await;
    assert_holds_from(&log, &txs, base.first(), "after compaction").await;

    if base != LogBase::START {
        let again = log
            .compact(base.position.tx_id.prev())
            .await
            .expect("compact");
        assert_eq!(again, base, "compacting below the base changes nothing");
    }
    log.commit(TxId(40)).await.expect("commit");
    let later = log.compact(TxId(35)).await.expect("compact");
    check_base(later, base, &txs, TxId(35), "compact(35) with 40 committed");

    let log = factory.crash_and_reopen(log).await;
    let after = log.base().await.expect("base");
    check_base(after, later, &txs, TxId(40), "the base after a crash");
    let state = log.state().await.expect("state");
    assert_eq!(
        state.last,
        txs[39].position(),
        "compaction and a crash keep the last"
    );
    assert_removed_below(&log, after, "after compaction and a crash").await;
    assert_holds_from(&log, &txs, after.first(), "after compaction and a crash").await;
    // Appends go on after compaction, and compaction may remove everything committed.
    let more = chain(txs[39].position(), Epoch(2), 3, 16);
    append_durably(factory, &log, more.clone()).await;
    let all = [txs, more].concat();
    let last = log.compact(TxId(43)).await.expect("compact");
    check_base(last, after, &all, TxId(40), "compact(43) with 40 committed");
    assert_holds_from(&log, &all, last.first(), "after appends and compaction").await;
}

/// Checks the log right after `reset_to(base)`: nothing after the base, everything up to it
/// removed, the claim and the membership as given.
async fn check_reset<L: TxLog>(
    log: &L,
    base: LogBase,
    claim: &EpochClaim,
    members: &[ReplicaId],
    context: &str,
) {
    let state = log.state().await.expect("state");
    assert_eq!(
        state.last, base.position,
        "{context}: the base is the last transaction"
    );
    assert_eq!(
        state.durable, base.position,
        "{context}: the base is durable"
    );
    assert_eq!(
        state.committed, base.position,
        "{context}: the base is committed"
    );
    assert!(
        state.epoch >= base.epoch,
        "{context}: the epoch {} is below the base's {}",
        state.epoch,
        base.epoch
    );
    assert_eq!(log.base().await.expect("base"), base, "{context}: base()");
    assert_eq!(
        &log.epoch_claim().await.expect("claim"),
        claim,
        "{context}: the epoch claim"
    );
    assert_eq!(
        log.members().await.expect("members"),
        members,
        "{context}: a reset keeps the membership"
    );
    assert_removed_below(log, base, context).await;
    assert!(
        log.read(base.first(), 10, usize::MAX)
            .await
            .expect("read")
            .is_empty(),
        "{context}: nothing follows the base"
    );
}

async fn reset<F: LogFactory>(factory: &F) {
    let log = factory.create().await;
    let txs = chain(LogPosition::START, Epoch(1), 12, 32);
    append_durably(factory, &log, txs[..10].to_vec()).await;
    log.commit(TxId(6)).await.expect("commit");
    // Readable, perhaps not durable yet: discarded all the same.
    let _pending = log.append(txs[10..].to_vec()).await.expect("append");
    let claim = EpochClaim::new(Epoch(2), Some(ReplicaId::new("p", "db")));
    log.save_epoch(&claim).await.expect("save epoch");
    let members = vec![ReplicaId::new("a", "db"), ReplicaId::new("b", "db")];
    log.save_members(members.clone())
        .await
        .expect("save members");
    // The snapshot of another history, ending inside what the log holds, of an older epoch.
    let snapshot = chain(LogPosition::START, Epoch(1), 8, 5);
    let base = LogBase {
        position: snapshot[7].position(),
        epoch: snapshot[7].epoch,
    };
    match log.reset_to(base).await {
        Err(LogError::Unsupported(_)) => {
            assert_holds(&log, &txs, "after a refused reset_to").await;
            assert_eq!(
                log.state().await.expect("state").committed.tx_id,
                TxId(6),
                "a refused reset_to keeps the commit point"
            );
            return;
        }
        result => result.expect("reset_to"),
    }
    check_reset(&log, base, &claim, &members, "after reset_to").await;
    let log = factory.crash_and_reopen(log).await;
    check_reset(&log, base, &claim, &members, "after reset_to and a crash").await;

    // Only base.first(), chained from the base's hash, may follow.
    let new = chain(base.position, Epoch(2), 12, 24);
    let skip = log.append(new[1..2].to_vec()).await;
    assert!(
        matches!(skip, Err(LogError::NotContiguous { .. })),
        "after a reset, an append that is not base.first() is refused"
    );
    let from_start = log.append(txs[..1].to_vec()).await;
    assert!(
        matches!(from_start, Err(LogError::NotContiguous { .. })),
        "after a reset, an append from the old start is refused"
    );
    let wrong_chain = chain(txs[7].position(), Epoch(2), 1, 24);
    assert_eq!(wrong_chain[0].id, base.first());
    let wrong_chain = log.append(wrong_chain).await;
    assert!(
        matches!(wrong_chain, Err(LogError::NotContiguous { .. })),
        "after a reset, an append that does not chain from the base's hash is refused"
    );
    check_reset(&log, base, &claim, &members, "after refused appends").await;

    for batch in new.chunks(3) {
        append_durably(factory, &log, batch.to_vec()).await;
    }
    let state = log.state().await.expect("state");
    assert_eq!(state.last, new[11].position(), "appends follow the base");
    assert_eq!(
        state.committed, base.position,
        "appends after a reset are not committed"
    );
    assert_holds_from(&log, &new, base.first(), "appends after a reset").await;
    log.commit(new[7].id).await.expect("commit");
    let log = factory.crash_and_reopen(log).await;
    assert_eq!(
        log.base().await.expect("base"),
        base,
        "the base after appends and a crash"
    );
    assert_eq!(log.state().await.expect("state").last, new[11].position());
    assert_holds_from(
        &log,
        &new,
        base.first(),
        "appends after a reset and a crash",
    )
    .await;
    assert_removed_below(&log, base, "appends after a reset and a crash").await;
    assert_eq!(log.epoch_claim().await.expect("claim"), claim);
    assert_eq!(log.members().await.expect("members"), members);

    // Compaction after a reset: never below the reset's base, never past the commit point.
    let committed = log.state().await.expect("state").committed.tx_id;
    let compacted = log.compact(new[11].id).await.expect("compact after reset");
    check_base(compacted, base, &new, committed, "compaction after a reset");
    assert_removed_below(&log, compacted, "compaction after a reset").await;
    assert_holds_from(&log, &new, compacted.first(), "compaction after a reset").await;

    // A second reset, beyond the log, to a base of a higher epoch: the epoch rises, and the
    // claim of that epoch names no primary, as `save_epoch` of it would leave it.
    let far = LogBase {
        position: LogPosition {
            tx_id: TxId(1000),
            hash: TxHash([0xa5; 32]),
        },
        epoch: Epoch(7),
    };
    log.reset_to(far).await.expect("second reset_to");
    let raised = EpochClaim::new(Epoch(7), None);
    check_reset(&log, far, &raised, &members, "after a second reset_to").await;
    assert_eq!(log.state().await.expect("state").epoch, Epoch(7));
    let log = factory.crash_and_reopen(log).await;
    check_reset(
        &log,
        far,
        &raised,
        &members,
        "after a second reset_to and a crash",
    )
    .await;
    let next = chain(far.position, Epoch(7), 2, 8);
    append_durably(factory, &log, next.clone()).await;
    let log = factory.crash_and_reopen(log).await;
    assert_holds_from(
        &log,
        &next,
        far.first(),
        "appends after a second reset and a crash",
    )
    .await;
}
