//! Benchmark `health`: evaluating the service health of many models, and
//! what their state weighs.
//!
//! Setup: 1,000 models (`m0000` ...), each with 4 latency stages, under the
//! default `[health]` settings except the window: 20 or 60 panes of 30 s,
//! with the default 6 reference windows before it (140 or 420 panes of
//! history). Every pane of the history holds 16 lines per model, each a
//! request (one in 50 an error) with a value for each of the 4 stages,
//! log-uniform between 0.5 ms and 2 s (a fixed seed), so every pane's
//! latency histogram is spread over hundreds of buckets.
//!
//! What it measures:
//!
//! * `health_evaluate/panes/N`: one [`Health::evaluate`] of all 1,000 models
//!   at the end of the filled history (reports and condition steps
//!   included), repeated at the same instant, so it is the steady cost of an
//!   evaluation with N panes in the window.
//!
//! Before it runs, the bench prints the heap the models hold per model, as
//! a counting allocator sees it (live bytes after the fill minus before,
//! divided by the models), beside what `Health::heap_bytes` counts and the
//! worst case `HealthConfig::model_bytes` states for one model.
//!
//! Why: the engine evaluates health at every pane boundary for every model;
//! its cost must not grow with the number of panes (issue 14), and its
//! memory is part of the worst case the engine budgets.
//!
//! Run: `cargo bench --bench health` (add `-- --quick` while developing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use driftd::engine::detect::DetectConfig;
use driftd::engine::health::{Health, HealthConfig, Observation};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The system allocator, counting the bytes it holds live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is
// updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MODELS: usize = 1_000;
const LINES_PER_PANE: i64 = 16;
const PANE_MS: i64 = 30_000;
/// 2025-12-14T10:00:00Z, on a pane boundary.
const T0_MS: i64 = 1_765_706_400_000;
const STAGES: [&str; 4] = [
    "preprocess_ms",
    "inference_ms",
    "postprocess_ms",
    "total_ms",
];

/// 1,000 models whose whole history (window and reference windows) holds
/// data; returns the state and the instant to evaluate at.
fn filled(panes: usize) -> (Health, i64) {
    let cfg = HealthConfig {
        panes,
        pane_ms: PANE_MS,
        ..HealthConfig::default()
    };
    let history = (panes * (1 + cfg.reference_windows)) as i64;
    let mut h = Health::new(cfg);
    let mut rng = SmallRng::seed_from_u64(42);
    let names: Vec<String> = (0..MODELS).map(|i| format!("m{i:04}")).collect();
    let (lo, hi) = (0.5f64.ln(), 2000f64.ln());
    for pane in 0..history {
        for k in 0..LINES_PER_PANE {
            let t = T0_MS + pane * PANE_MS + k * (PANE_MS / LINES_PER_PANE);
            for (i, name) in names.iter().enumerate() {
                let stages: Vec<(Cow<'static, str>, f64)> = STAGES
                    .iter()
                    .map(|s| (Cow::Borrowed(*s), rng.random_range(lo..hi).exp()))
                    .collect();
                let error = (k as usize + i) % 50 == 0;
                h.observe(
                    name,
                    Some("svc"),
                    t,
                    Observation {
                        request: true,
                        error,
                        error_type: error.then_some("Timeout"),
                        stages: &stages,
                    },
                );
            }
        }
    }
    (h, T0_MS + history * PANE_MS - 1)
}

fn bench_evaluate(c: &mut Criterion) {
    let detect = DetectConfig::default();
    let mut group = c.benchmark_group("health_evaluate");
    group.sample_size(20);
    for panes in [20usize, 60] {
        let before = LIVE.load(Ordering::Relaxed);
        let (mut h, now) = filled(panes);
        let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        eprintln!(
            "health, {panes} panes: {} bytes of heap per model ({MODELS} models, {} stages); \
             Health::heap_bytes says {} per model, HealthConfig::model_bytes bounds one at {}",
            bytes / MODELS,
            STAGES.len(),
            h.heap_bytes() / MODELS,
            h.config().model_bytes(),
        );
        let (reports, _) = h.evaluate(now, &detect);
        assert_eq!(reports.len(), MODELS);
        assert!(reports[0].latency.iter().all(|s| s.samples > 0));
        group.bench_with_input(BenchmarkId::new("panes", panes), &now, |b, &now| {
            b.iter(|| black_box(h.evaluate(black_box(now), &detect)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_evaluate);
criterion_main!(benches);
