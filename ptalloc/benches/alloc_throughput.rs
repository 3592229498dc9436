//! Criterion timings of the workloads the summary compares (see
//! `summary.rs` for the side-by-side ratios, the churn counts and the
//! JSON): order-0 throughput of ptalloc against `buddy_system_allocator`
//! (unlocked, and behind its own lock for information),
//! and the warm fast path of `Pkey(1)` against `Mapped`.
//!
//! Each iteration runs a whole workload on a long-lived allocator and
//! leaves it with everything freed, so iterations are alike.

mod common;

use common::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;

const PAIRS: usize = 100_000;

fn order0(c: &mut Criterion) {
    let meta = new_meta(FRAMES);
    let alloc = ours(&meta);
    let mut ours = OursFrames {
        alloc: &alloc,
        freetype: MAPPED,
    };
    let mut peer = PeerFrames(peer(FRAMES));
    let mut locked = LockedPeerFrames::new(FRAMES);
    let mut held = held_buffer();

    for workload in Order0::ALL {
        let mut group = c.benchmark_group(workload.group());
        group.throughput(Throughput::Elements(workload.ops()));
        group.bench_function("ours", |b| b.iter(|| workload.run(&mut ours, &mut held)));
        group.bench_function("peer", |b| b.iter(|| workload.run(&mut peer, &mut held)));
        group.bench_function("peer_locked", |b| {
            b.iter(|| workload.run(&mut locked, &mut held))
        });
        group.finish();
    }
}

fn fast_path(c: &mut Criterion) {
    let meta = new_meta(FRAMES);
    let alloc = ours(&meta);
    let (mut pt, mut mapped) = warm_fast_path(&alloc);
    let mut held = Vec::with_capacity(BATCH);

    let mut group = c.benchmark_group("fast_path_alloc_free_pair");
    group.throughput(Throughput::Elements(PAIRS as u64));
    group.bench_function("mapped", |b| {
        b.iter(|| alloc_free_pairs(&mut mapped, PAIRS))
    });
    group.bench_function("pkey1", |b| b.iter(|| alloc_free_pairs(&mut pt, PAIRS)));
    group.finish();

    let mut group = c.benchmark_group("fast_path_batch_256");
    group.throughput(Throughput::Elements((BATCH * BATCH_ROUNDS) as u64));
    group.bench_function("mapped", |b| {
        b.iter(|| fast_batches(&mut mapped, &mut held))
    });
    group.bench_function("pkey1", |b| b.iter(|| fast_batches(&mut pt, &mut held)));
    group.finish();
}

criterion_group! {
    name = benches;
    // Small samples: `make bench` must finish in minutes on 2 cores.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .without_plots();
    targets = order0, fast_path
}
criterion_main!(benches);
