//! The key-value store's persistent map against a plain `BTreeMap`: what applying costs with
//! structural sharing (the price of snapshots that never stop writes), what applying costs
//! while an export holds an old version, and how fast an export reads.
//!
//! `cargo bench -p benches --bench kv_snapshot`. Compare within one run: the ratio of
//! `apply/kv_store` to `apply/btreemap_floor` is the figure.
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::collections::BTreeMap;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use node::kv::{KvOp, KvStore, KvTx};
use replication_core::StateMachine;
use replication_core::types::{Epoch, Tx, TxHash, TxId};

const KEYS: u64 = 20_000;

fn txs() -> Vec<Tx> {
    (1..=KEYS)
        .map(|i| {
            // Keys spread over the key space, as hashed ids would be.
            let key = format!("key{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let ops = vec![KvOp::Set {
                key,
                value: "v".repeat(100),
            }];
            Tx {
                id: TxId(i),
                epoch: Epoch(1),
                payload: KvTx { ops }.encode(),
                hash: TxHash([0; 32]),
            }
        })
        .collect()
}

fn apply(c: &mut Criterion) {
    let txs = txs();
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("btreemap_floor", |b| {
        b.iter_batched(
            BTreeMap::<String, (String, TxId)>::new,
            |mut map| {
                for tx in &txs {
                    for op in KvTx::decode(&tx.payload).expect("a kv tx").ops {
                        if let KvOp::Set { key, value } = op {
                            map.insert(key, (value, tx.id));
                        }
                    }
                }
                map
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("kv_store", |b| {
        b.iter_batched(
            KvStore::default,
            |mut store| {
                for tx in &txs {
                    store.apply(tx);
                }
                store
            },
            BatchSize::LargeInput,
        );
    });
    // Every write copies the path it changes while an export holds the old version.
    group.bench_function("kv_store_during_export", |b| {
        b.iter_batched(
            || {
                let mut store = KvStore::default();
                for tx in &txs {
                    store.apply(tx);
                }
                let export = store.export().expect("export");
                (store, export)
            },
            |(mut store, export)| {
                for tx in &txs {
                    store.apply(tx);
                }
                (store, export)
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn export(c: &mut Criterion) {
    let mut store = KvStore::default();
    for tx in txs() {
        store.apply(&tx);
    }
    let mut group = c.benchmark_group("export");
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("chunks_of_1_mib", |b| {
        b.iter(|| {
            let (_, mut export) = store.export().expect("export");
            let mut bytes = 0usize;
            while let Some(chunk) = export.next_chunk(1 << 20).expect("a chunk") {
                bytes += chunk.len();
            }
            bytes
        });
    });
    group.finish();
}

criterion_group!(benches, apply, export);
criterion_main!(benches);
