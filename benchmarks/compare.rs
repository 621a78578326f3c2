//! Benchmark `compare`: scoring window counts against baseline counts.
//!
//! Setup: 50 numeric features, each with 10 interior bins (11 edges), so the
//! counts are 13 long: `[underflow, bin_0 .. bin_9, overflow, missing]`.
//! Baseline counts are what a quantile-binned reference of 100,000 values
//! looks like (about 9.8% per interior bin, 0.5% underflow and overflow, 1%
//! missing); window counts are a fifth of that with every bin perturbed by
//! up to ±10% (seeded), i.e. slight drift, so no metric takes a shortcut for
//! identical inputs.
//!
//! What it measures:
//!
//! * `compare/all_metrics_50_features`: one comparison pass, i.e.
//!   [`driftd::engine::compare::compare`] with a `BinLayout::Numeric` on each of the
//!   50 features, every metric (KL, PSI, JS divergence and distance,
//!   Hellinger, chi² with its p-value, KS with its p-value, Wasserstein,
//!   unseen share). Throughput is in features. Target: under 50 µs for the
//!   50 features (1 µs a feature), so evaluating every model every 30 s is
//!   negligible next to ingest.
//! * `compare/one_feature`: the same for a single feature.
//! * `compare_metric/*`: the building blocks on one feature:
//!   `kl_smoothed` (smoothing 0.5), `js_divergence`, `chi2_homogeneity`
//!   (statistic, dof and the incomplete-gamma p-value), `ks_binned` (on the
//!   12 ordered bins), to see where a pass spends its time.
//!
//! * `threshold/simulate_*`: one no-drift simulation of automatic
//!   thresholds ([`driftd::engine::threshold::simulate`], 1,000 replicates of a
//!   window and a baseline drawn from the baseline, each scored by
//!   `compare::divergences`), on one numeric feature of 13 bins and one
//!   categorical of 52 (top-50 + other + missing): what a distribution's
//!   null fit pays per anchor (a few anchors, once: at `baseline build`,
//!   or at an evaluation for a baseline without its fit, at most 32
//!   anchors an evaluation plus the rest of a fit begun).
//!
//! Why: evaluation compares every distribution of every window (model and
//! arms) on each tick; this bounds how many models and features one core
//! can keep scored.
//!
//! Run: `cargo bench --bench compare` (add `-- --quick` while developing).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use driftd::engine::compare::{
    chi2_homogeneity, compare, js_divergence, kl_smoothed, ks_binned, BinLayout, CompareOptions,
    DEFAULT_SMOOTHING,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const FEATURES: usize = 50;
const INTERIOR_BINS: usize = 10;
/// `[underflow, interior.., overflow, missing]`.
const COUNTS_LEN: usize = INTERIOR_BINS + 3;
const BASELINE_TOTAL: f64 = 100_000.0;
const WINDOW_SHARE: f64 = 0.2;

struct Feature {
    edges: Vec<f64>,
    spread: f64,
    baseline: Vec<u64>,
    window: Vec<u64>,
}

impl Feature {
    fn layout(&self) -> BinLayout<'_> {
        BinLayout::Numeric {
            edges: &self.edges,
            spread: self.spread,
        }
    }
}

fn features() -> Vec<Feature> {
    let mut rng = SmallRng::seed_from_u64(42);
    (0..FEATURES)
        .map(|f| {
            let center = f as f64 * 10.0;
            let spread = 1.0 + f as f64 * 0.1;
            let edges: Vec<f64> = (0..=INTERIOR_BINS)
                .map(|i| center + spread * (i as f64 * 0.5 - 2.5))
                .collect();
            let (tail, missing) = (0.005, 0.01);
            let interior = (1.0 - 2.0 * tail - missing) / INTERIOR_BINS as f64;
            let mut shares = [interior; COUNTS_LEN];
            shares[0] = tail;
            shares[INTERIOR_BINS + 1] = tail;
            shares[INTERIOR_BINS + 2] = missing;
            let baseline: Vec<u64> = shares
                .iter()
                .map(|s| (s * BASELINE_TOTAL).round() as u64)
                .collect();
            let window: Vec<u64> = baseline
                .iter()
                .map(|&b| {
                    let jitter: f64 = rng.random_range(-0.1..0.1);
                    (b as f64 * WINDOW_SHARE * (1.0 + jitter)).round() as u64
                })
                .collect();
            Feature {
                edges,
                spread,
                baseline,
                window,
            }
        })
        .collect()
}

fn bench_compare(c: &mut Criterion) {
    let feats = features();
    let opts = CompareOptions::default();
    // Every feature must produce full numeric scores, or the pass would be
    // measuring an early return.
    for f in &feats {
        assert_eq!(f.window.len(), COUNTS_LEN);
        let s = compare(&f.window, &f.baseline, f.layout(), &opts).expect("scores");
        assert!(s.ks.is_some() && s.wasserstein.is_some());
        assert!(s.kl > 0.0 && s.chi2 > 0.0);
    }

    let mut group = c.benchmark_group("compare");
    group.throughput(Throughput::Elements(FEATURES as u64));
    group.bench_function("all_metrics_50_features", |b| {
        b.iter(|| {
            for f in black_box(&feats) {
                black_box(compare(&f.window, &f.baseline, f.layout(), &opts));
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    let f = &feats[0];
    group.bench_function("one_feature", |b| {
        b.iter(|| {
            black_box(compare(
                black_box(&f.window),
                black_box(&f.baseline),
                f.layout(),
                &opts,
            ))
        })
    });
    group.finish();

    let (w, q) = (&f.window[..], &f.baseline[..]);
    // The ordered bins: everything but the trailing missing bin.
    let (w_ord, q_ord) = (&w[..COUNTS_LEN - 1], &q[..COUNTS_LEN - 1]);
    let mut group = c.benchmark_group("compare_metric");
    group.bench_function("kl_smoothed", |b| {
        b.iter(|| kl_smoothed(black_box(w), black_box(q), DEFAULT_SMOOTHING))
    });
    group.bench_function("js_divergence", |b| {
        b.iter(|| js_divergence(black_box(w), black_box(q)))
    });
    group.bench_function("chi2_homogeneity", |b| {
        b.iter(|| chi2_homogeneity(black_box(w), black_box(q)))
    });
    group.bench_function("ks_binned", |b| {
        b.iter(|| ks_binned(black_box(w_ord), black_box(q_ord)))
    });
    group.finish();
}

fn bench_threshold(c: &mut Criterion) {
    let opts = CompareOptions::default();
    let mut g = c.benchmark_group("threshold");
    g.sample_size(20);
    let numeric: Vec<u64> = std::iter::once(500)
        .chain(std::iter::repeat_n(9_800, 10))
        .chain([500, 1_000])
        .collect();
    let edges: Vec<f64> = (0..11).map(f64::from).collect();
    let layout = BinLayout::Numeric {
        edges: &edges,
        spread: 1.0,
    };
    g.bench_function("simulate_numeric_13_bins", |b| {
        b.iter(|| {
            driftd::engine::threshold::simulate(
                black_box(&numeric),
                layout,
                &opts,
                5_000,
                1e-5,
                driftd::engine::threshold::REPLICATES,
                7,
            )
        })
    });
    // Zipf-like top 50, then other and missing.
    let categorical: Vec<u64> = (1..=50u64)
        .map(|r| 100_000 / r)
        .chain([2_000, 500])
        .collect();
    g.bench_function("simulate_categorical_52_bins", |b| {
        b.iter(|| {
            driftd::engine::threshold::simulate(
                black_box(&categorical),
                BinLayout::Categorical,
                &opts,
                5_000,
                1e-5,
                driftd::engine::threshold::REPLICATES,
                7,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench_compare, bench_threshold);
criterion_main!(benches);
