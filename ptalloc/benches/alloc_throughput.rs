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

const MIX_LIVE: usize = 50_000;
const MIX_STEPS: usize = 500_000;
const MIX_SEED: u64 = 0x5eed_0001;
const N_THEN_N: usize = 100_000;
const PAIRS: usize = 100_000;
const BATCH: usize = 256;
const BATCH_ROUNDS: usize = 200;

fn order0(c: &mut Criterion) {
    let meta = new_meta(FRAMES);
    let alloc = ours(&meta);
    let mut ours = OursFrames {
        alloc: &alloc,
        freetype: MAPPED,
    };
    let mut peer = PeerFrames(peer(FRAMES));
    let mut locked = LockedPeerFrames::new(FRAMES);
    let mut held = Vec::with_capacity(MIX_LIVE * 2);

    let ops = random_mix(
        &mut CountFrames::new(),
        MIX_LIVE,
        MIX_STEPS,
        MIX_SEED,
        &mut held,
    );
    let mut group = c.benchmark_group("order0_random_mix");
    group.throughput(Throughput::Elements(ops));
    group.bench_function("ours", |b| {
        b.iter(|| random_mix(&mut ours, MIX_LIVE, MIX_STEPS, MIX_SEED, &mut held))
    });
    group.bench_function("peer", |b| {
        b.iter(|| random_mix(&mut peer, MIX_LIVE, MIX_STEPS, MIX_SEED, &mut held))
    });
    group.bench_function("peer_locked", |b| {
        b.iter(|| random_mix(&mut locked, MIX_LIVE, MIX_STEPS, MIX_SEED, &mut held))
    });
    group.finish();

    let mut group = c.benchmark_group("order0_alloc_n_free_n");
    group.throughput(Throughput::Elements(2 * N_THEN_N as u64));
    group.bench_function("ours", |b| {
        b.iter(|| alloc_n_free_n(&mut ours, N_THEN_N, &mut held))
    });
    group.bench_function("peer", |b| {
        b.iter(|| alloc_n_free_n(&mut peer, N_THEN_N, &mut held))
    });
    group.bench_function("peer_locked", |b| {
        b.iter(|| alloc_n_free_n(&mut locked, N_THEN_N, &mut held))
    });
    group.finish();
}

fn fast_path(c: &mut Criterion) {
    let meta = new_meta(FRAMES);
    let alloc = ours(&meta);
    let mut pt = OursFrames {
        alloc: &alloc,
        freetype: PT,
    };
    let mut mapped = OursFrames {
        alloc: &alloc,
        freetype: MAPPED,
    };
    let mut held = Vec::with_capacity(BATCH);
    // Warm: the first page-table allocation converts a pageblock.
    batches(&mut pt, BATCH, 1, &mut held);

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
        b.iter(|| batches(&mut mapped, BATCH, BATCH_ROUNDS, &mut held))
    });
    group.bench_function("pkey1", |b| {
        b.iter(|| batches(&mut pt, BATCH, BATCH_ROUNDS, &mut held))
    });
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
