//! Per-entry CPU costs on the WAL's hot path: framing + checksum, verification, and the rkyv
//! entry codec. `cargo bench -p baton-perf --bench wal_codec`

use std::hint::black_box;

use baton_engine::log::{Transaction, Txn};
use baton_engine::wal::record;
use baton_engine::Zxid;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn entry(data_len: usize) -> Transaction {
    Transaction {
        zxid: Zxid::new(1, 42),
        session_id: baton_engine::SessionId(0x1_0000_0001),
        cxid: 42,
        time_ms: 1_700_000_000_000,
        txn: Txn::SetData { path: "/bench/key-0000001".into(), data: vec![7; data_len], version: 3 },
    }
}

fn codec(c: &mut Criterion) {
    let e = entry(180);
    let payload = e.encode();
    let mut group = c.benchmark_group("wal_record");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    let mut buf = vec![0u8; record::encoded_len(payload.len())];
    group.bench_function("encode_256B", |b| {
        b.iter(|| record::encode(black_box(&mut buf), 0x5a17, Zxid(7), 4096, black_box(&payload)))
    });
    record::encode(&mut buf, 0x5a17, Zxid(7), 4096, &payload);
    group.bench_function("verify_256B", |b| {
        b.iter(|| matches!(record::decode(black_box(&buf), 0x5a17, 0), record::Decoded::Record(_)))
    });
    group.finish();

    let mut group = c.benchmark_group("entry_rkyv");
    let mut out = rkyv::util::AlignedVec::new();
    group.bench_function("encode_into", |b| b.iter(|| black_box(&e).encode_into(&mut out)));
    group.bench_function("access_validated", |b| b.iter(|| Transaction::access(black_box(&payload)).map(|a| a.cxid)));
    group.bench_function("decode_owned", |b| b.iter(|| Transaction::decode(black_box(&payload))));
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
