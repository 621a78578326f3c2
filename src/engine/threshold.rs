//! Automatic thresholds: what each metric looks like when nothing drifted,
//! at the window's sample size.
//!
//! A fixed divergence threshold means different things at different sample
//! sizes: PSI between two samples of the *same* distribution is about
//! `(bins − 1) · (1/n + 1/m)`, so 0.1 is noise at 200 events and a real
//! shift at 2 million. This module owns the alternative: for each
//! distribution of a model it estimates the no-drift ("null") distribution
//! of every divergence by drawing windows of the current size from the
//! baseline itself, and turns it into a threshold at the corrected alpha.
//!
//! - **Resampling, two-sample.** A replicate draws a window of `n` events
//!   *and* a baseline of `m` events from the baseline's proportions
//!   (multinomial, as a chain of binomials) and scores them with the same
//!   [`compare::compare`] the engine uses, so smoothing, unseen bins and
//!   small counts are exactly as in production. Drawing the baseline too
//!   accounts for its own sampling noise, which dominates once `n ≫ m`.
//! - **Tail.** The family-wise alpha makes per-test levels around 1e-5, far
//!   beyond what a few hundred replicates show directly. The replicates'
//!   mean and variance fit a scaled chi-square (Satterthwaite: `a·χ²_ν` with
//!   `a = var / 2·mean`, `ν = 2·mean² / var`), the first-order law of every
//!   divergence here, and the threshold is its `1 − α'` quantile. Metrics
//!   that behave like square roots of such statistics (JS distance,
//!   Hellinger, KS, Wasserstein) are fitted on their squares. The fit uses
//!   the simulated moments, not the asymptotic ones, which is what keeps
//!   small windows honest (the first-order law alone let PSI false-alarm at
//!   7.7% for a nominal 1% at n = 200 on ten bins).
//! - **Cache.** Results are cached per (distribution, sample-size bucket);
//!   buckets are powers of 1.25, and a window is judged at its bucket's
//!   lower edge, which can only make the threshold stricter (the null
//!   quantile falls with `n`). Draws are seeded from the model, the
//!   distribution and the bucket, so replays are reproducible.
//! - **Budget.** The engine computes at most a fixed number of new entries
//!   per evaluation; until a distribution's entry exists it is judged at the
//!   first-order asymptotic quantile (see [`asymptotic`]).
//!
//! The correction for the number of tests is Bonferroni: `α' = α / tests`,
//! with `tests` the (distribution, rule) pairs of the model's window. It
//! holds whatever the dependence between features and between metrics
//! (PSI and KL of one feature are nearly the same test), where Šidák would
//! need independence.

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution};
use rustc_hash::FxHashMap;
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::engine::compare::{self, BinLayout, CompareOptions, Metric, Scores};

/// Replicates per (distribution, bucket): enough for the three moments the
/// fit needs, cheap enough to fill a model's cache in a few evaluations.
pub const REPLICATES: usize = 1000;

/// Ratio between consecutive sample-size buckets.
const BUCKET_RATIO: f64 = 1.25;

/// Metrics with a null distribution here: the divergences. The p-value
/// metrics are judged on the corrected alpha directly.
const FITTED: [Metric; 8] = [
    Metric::Kl,
    Metric::Psi,
    Metric::JsDivergence,
    Metric::JsDistance,
    Metric::Hellinger,
    Metric::Wasserstein,
    Metric::Ks,
    Metric::UnseenShare,
];

fn fitted_index(m: Metric) -> Option<usize> {
    FITTED.iter().position(|x| *x == m)
}

/// Whether a metric is a square root of a chi-square-like statistic, so
/// its square is what gets fitted.
fn fitted_on_square(m: Metric) -> bool {
    matches!(
        m,
        Metric::JsDistance | Metric::Hellinger | Metric::Ks | Metric::Wasserstein
    )
}

/// The bucket of a sample size and the size it is judged at (its lower
/// edge, never above `n`).
pub fn bucket(n: u64) -> (u16, u64) {
    let n = n.max(1);
    let b = ((n as f64).ln() / BUCKET_RATIO.ln()).floor();
    let mut edge = BUCKET_RATIO.powf(b).ceil() as u64;
    // Guard against rounding putting the edge above n.
    if edge > n {
        edge = n;
    }
    (b as u16, edge.max(1))
}

/// Null quantiles of one distribution at one sample size, per fitted
/// metric (`NaN` where the metric does not exist for the distribution).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles([f64; FITTED.len()]);

impl Quantiles {
    /// The threshold for `m`, if it is a fitted metric with a value.
    pub fn get(&self, m: Metric) -> Option<f64> {
        fitted_index(m).map(|i| self.0[i]).filter(|v| v.is_finite())
    }
}

/// Draws a multinomial sample of `n` over proportions `p` (summing to 1)
/// into `out`, as a chain of binomials: O(bins), whatever `n`.
fn multinomial(rng: &mut SmallRng, n: u64, p: &[f64], out: &mut [u64]) {
    let mut left = n;
    let mut mass = 1.0;
    for (o, &pi) in out.iter_mut().zip(p) {
        if left == 0 || pi <= 0.0 {
            *o = 0;
            continue;
        }
        let share = (pi / mass).clamp(0.0, 1.0);
        let x = if share >= 1.0 {
            left
        } else {
            // `share` is in [0, 1), which Binomial accepts.
            Binomial::new(left, share).map_or(0, |b| b.sample(rng))
        };
        *o = x;
        left -= x;
        mass -= pi;
        if mass <= 0.0 {
            mass = f64::MIN_POSITIVE;
        }
    }
    // Rounding of `mass` can leave a few events unassigned; they belong
    // to the last bin with mass.
    if left > 0 {
        if let Some(i) = p.iter().rposition(|&x| x > 0.0) {
            out[i] += left;
        }
    }
}

fn fitted_values(s: &Scores) -> [Option<f64>; FITTED.len()] {
    let mut v = [None; FITTED.len()];
    for (i, m) in FITTED.iter().enumerate() {
        v[i] =
            s.get(*m).filter(|x| x.is_finite()).map(
                |x| {
                    if fitted_on_square(*m) {
                        x * x
                    } else {
                        x
                    }
                },
            );
    }
    v
}

/// The `1 − alpha` quantile of the scaled chi-square with the given mean
/// and variance (the variance may be 0: a degenerate law at its mean).
fn scaled_chi2_quantile(mean: f64, var: f64, alpha: f64) -> f64 {
    // NaN fails both comparisons: a degenerate law at 0 then.
    if mean.is_nan() || var.is_nan() || mean <= 0.0 || var <= 0.0 {
        return mean.max(0.0);
    }
    let a = var / (2.0 * mean);
    let nu = 2.0 * mean * mean / var;
    match ChiSquared::new(nu) {
        Ok(c) => a * c.inverse_cdf(1.0 - alpha),
        Err(_) => mean,
    }
}

/// The `1 − alpha` quantile of the shifted gamma (Pearson type III) with
/// the given mean, variance and skewness; the scaled chi-square's when the
/// skewness is not positive.
fn pearson3_quantile(mean: f64, var: f64, skew: f64, alpha: f64) -> f64 {
    if var.is_nan() || skew.is_nan() || var <= 0.0 || skew <= 0.0 {
        return scaled_chi2_quantile(mean, var, alpha);
    }
    let sd = var.sqrt();
    let shape = 4.0 / (skew * skew);
    let scale = sd * skew / 2.0;
    // gamma(shape, scale) is (scale / 2)·χ²(2·shape).
    match ChiSquared::new(2.0 * shape) {
        Ok(c) => mean - shape * scale + scale / 2.0 * c.inverse_cdf(1.0 - alpha),
        Err(_) => scaled_chi2_quantile(mean, var, alpha),
    }
}

/// The threshold from a metric's simulated moments: the larger of the
/// two-moment scaled chi-square and the three-moment Pearson III. Checked
/// against 300k windows drawn from even, skewed and long-tailed categorical
/// baselines at n = 200 to 10,000 (`fit_choice` below): KL and PSI have a
/// heavier tail than the chi-square at small counts (up to 3.6x alpha with
/// it alone), and the skewness estimate of a few hundred replicates is
/// noisy in the other direction (up to 2.5x with Pearson alone); the larger
/// of the two stayed under 2x (worst: Wasserstein on skewed bins, 1.9x).
fn tail_quantile(mean: f64, var: f64, skew: f64, alpha: f64) -> f64 {
    let a = scaled_chi2_quantile(mean, var, alpha);
    let b = pearson3_quantile(mean, var, skew, alpha);
    if b.is_finite() {
        a.max(b)
    } else {
        a
    }
}

/// Simulates the null distribution of one distribution's divergences at
/// sample size `n` and returns their `1 − alpha` quantiles.
///
/// `baseline` are the baseline's counts, `layout` the bins' layout as the
/// comparator sees them. Deterministic for a given `seed`.
pub fn simulate(
    baseline: &[u64],
    layout: BinLayout<'_>,
    opts: &CompareOptions,
    n: u64,
    alpha: f64,
    replicates: usize,
    seed: u64,
) -> Quantiles {
    let m = total(baseline);
    let mut q = Quantiles([f64::NAN; FITTED.len()]);
    if m == 0 || n == 0 || replicates < 2 {
        return q;
    }
    let p: Vec<f64> = baseline.iter().map(|&c| c as f64 / m as f64).collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut w = vec![0u64; baseline.len()];
    let mut b = vec![0u64; baseline.len()];
    let mut values: Vec<[Option<f64>; FITTED.len()]> = Vec::with_capacity(replicates);
    for _ in 0..replicates {
        multinomial(&mut rng, n, &p, &mut w);
        multinomial(&mut rng, m, &p, &mut b);
        if let Some(s) = compare::compare(&w, &b, layout, opts) {
            values.push(fitted_values(&s));
        }
    }
    for (i, metric) in FITTED.iter().enumerate() {
        let xs: Vec<f64> = values.iter().filter_map(|v| v[i]).collect();
        if xs.len() < 3 {
            continue;
        }
        let k = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / k;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0);
        let skew = if var > 0.0 {
            xs.iter().map(|x| (x - mean).powi(3)).sum::<f64>() / k / var.powf(1.5)
        } else {
            0.0
        };
        let t = tail_quantile(mean, var, skew, alpha);
        q.0[i] = if fitted_on_square(*metric) {
            t.sqrt()
        } else {
            t
        };
    }
    q
}

/// The first-order asymptotic null quantiles, used until a simulated entry
/// exists: with `k` bins holding baseline mass, `n·m/(n+m)·PSI`, `2·KL`,
/// `8·JS` and `8·Hellinger²` all tend to `χ²_{k−1}`, and the square-root
/// metrics follow from those. `unseen_share` is a proportion whose no-drift
/// mean is the baseline's own share `p0` in the unseen bins (underflow and
/// overflow, or `__other__`): `p0 + z·sqrt(p0(1 − p0)(1/n + 1/m))`, with
/// one event's worth (`1/n`) added for the normal law's poor tail at small
/// counts. KS gets the Kolmogorov law of the continuous two-sample test,
/// conservative on bins (binning can only shrink the distance).
/// Wasserstein has no law on arbitrary bins and gets none: its rule waits
/// for the simulation.
pub fn asymptotic(baseline: &[u64], layout: BinLayout<'_>, n: u64, alpha: f64) -> Quantiles {
    Laws::default().asymptotic(baseline, layout, n, alpha)
}

/// The quantiles of the asymptotic laws at one alpha: each an inverse CDF
/// (a chi-square per degrees of freedom, the normal, the Kolmogorov law by
/// bisection), the same for every distribution of a model and every
/// evaluation. Kept with the model's [`NullCache`], so a model waiting for
/// its simulations does not compute them again for every distribution at
/// every evaluation (they were most of an evaluation's time at 100 models).
#[derive(Debug, Default)]
pub struct Laws {
    alpha: f64,
    z: f64,
    ks: f64,
    /// `1 − alpha` quantile of χ² by degrees of freedom.
    chi2: FxHashMap<u32, f64>,
}

impl Laws {
    const MAX_DOF: usize = 64;
    /// The most one model's laws hold on the heap (the map at its cap).
    pub const BYTES: usize = 2 * Laws::MAX_DOF * 16 + 64;

    fn at(&mut self, alpha: f64) -> &mut Laws {
        if self.alpha.to_bits() != alpha.to_bits() || self.z == 0.0 {
            *self = Laws {
                alpha,
                z: statrs::distribution::Normal::standard().inverse_cdf(1.0 - alpha),
                ks: kolmogorov_quantile(alpha),
                chi2: FxHashMap::default(),
            };
        }
        self
    }

    fn chi2(&mut self, dof: usize) -> Option<f64> {
        let alpha = self.alpha;
        if let Some(q) = self.chi2.get(&(dof as u32)) {
            return Some(*q);
        }
        let q = ChiSquared::new(dof as f64).ok()?.inverse_cdf(1.0 - alpha);
        // Degrees of freedom are bins − 1: a few distinct values a model;
        // beyond the cap they are computed each time.
        if self.chi2.len() < Laws::MAX_DOF {
            self.chi2.insert(dof as u32, q);
        }
        Some(q)
    }

    /// [`asymptotic`], with the laws' quantiles remembered.
    pub fn asymptotic(
        &mut self,
        baseline: &[u64],
        layout: BinLayout<'_>,
        n: u64,
        alpha: f64,
    ) -> Quantiles {
        let laws = self.at(alpha);
        let mut q = Quantiles([f64::NAN; FITTED.len()]);
        let m = total(baseline);
        let k = baseline.iter().filter(|&&c| c > 0).count();
        if m == 0 || n == 0 || k < 2 {
            return q;
        }
        let Some(chi2) = laws.chi2(k - 1) else {
            return q;
        };
        let (z, ks) = (laws.z, laws.ks);
        asymptotic_from(baseline, layout, (n, m), chi2, z, ks, &mut q);
        q
    }
}

/// [`asymptotic`]'s arithmetic, given the laws' quantiles.
fn asymptotic_from(
    baseline: &[u64],
    layout: BinLayout<'_>,
    (n, m): (u64, u64),
    chi2: f64,
    z: f64,
    ks: f64,
    q: &mut Quantiles,
) {
    let (nf, mf) = (n as f64, m as f64);
    let x = chi2 * (1.0 / nf + 1.0 / mf);
    let unseen = match layout {
        BinLayout::Numeric { .. } if baseline.len() >= 3 => {
            baseline[0].saturating_add(baseline[baseline.len() - 2])
        }
        BinLayout::Categorical if baseline.len() >= 2 => baseline[baseline.len() - 2],
        _ => 0,
    };
    let p0 = unseen as f64 / mf;
    let unseen_q = p0 + z * (p0 * (1.0 - p0) * (1.0 / nf + 1.0 / mf)).sqrt() + 1.0 / nf;
    let ks_q = ks * ((nf + mf) / (nf * mf)).sqrt();
    let numeric = matches!(layout, BinLayout::Numeric { .. });
    for (i, metric) in FITTED.iter().enumerate() {
        q.0[i] = match metric {
            Metric::Psi => x,
            Metric::Kl => x / 2.0,
            // JS is in bits.
            Metric::JsDivergence => x / (8.0 * std::f64::consts::LN_2),
            Metric::JsDistance => (x / (8.0 * std::f64::consts::LN_2)).sqrt(),
            Metric::Hellinger => (x / 8.0).sqrt(),
            Metric::UnseenShare if !matches!(layout, BinLayout::Hashed) => unseen_q,
            Metric::Ks if numeric => ks_q,
            _ => f64::NAN,
        };
    }
}

/// The `λ` with `P(K > λ) = alpha` for the Kolmogorov distribution, by
/// bisection on its survival function.
fn kolmogorov_quantile(alpha: f64) -> f64 {
    let (mut lo, mut hi) = (0.2, 10.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if compare::kolmogorov_sf(mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// A count total that saturates (a hand-edited baseline can hold counts
/// whose sum overflows).
fn total(counts: &[u64]) -> u64 {
    counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
}

/// The cache of simulated quantiles of one window's distributions: per
/// distribution, the few sample-size buckets seen last. A window's size
/// moves slowly, so a handful covers it, and a bounded cache keeps a
/// window's memory known before start (a replay that grows a window from 100
/// to a million samples visits 40 buckets); an evicted bucket seen again is
/// simulated again, with the same seeded draws, so the same quantiles.
#[derive(Debug, Default)]
pub struct NullCache {
    entries: FxHashMap<u32, Vec<(u16, Quantiles)>>,
    /// The asymptotic laws' quantiles, for distributions still waiting.
    pub laws: Laws,
}

/// Buckets cached per distribution.
pub const NULL_BUCKETS_PER_SLOT: usize = 4;

impl NullCache {
    pub fn get(&self, slot: usize, bucket: u16) -> Option<&Quantiles> {
        self.entries
            .get(&(slot as u32))?
            .iter()
            .find(|(b, _)| *b == bucket)
            .map(|(_, q)| q)
    }

    /// Caches `q`; when the distribution has [`NULL_BUCKETS_PER_SLOT`]
    /// already, the one farthest from `bucket` goes.
    pub fn insert(&mut self, slot: usize, bucket: u16, q: Quantiles) {
        let v = self.entries.entry(slot as u32).or_default();
        if let Some(e) = v.iter_mut().find(|(b, _)| *b == bucket) {
            e.1 = q;
            return;
        }
        if v.len() >= NULL_BUCKETS_PER_SLOT {
            if let Some(far) = (0..v.len()).max_by_key(|&i| v[i].0.abs_diff(bucket)) {
                v.swap_remove(far);
            }
        }
        v.push((bucket, q));
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most one distribution's entries take on the heap.
    pub const BYTES_PER_SLOT: usize =
        NULL_BUCKETS_PER_SLOT * std::mem::size_of::<(u16, Quantiles)>() + 48;

    /// Drops everything: the baseline changed.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The seed of one (model, distribution, bucket) simulation.
pub fn seed(model: &str, slot: usize, bucket: u16) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64(model.as_bytes());
    h ^ ((slot as u64) << 20) ^ u64::from(bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn even(bins: usize, per_bin: u64) -> Vec<u64> {
        // [underflow, bins…, overflow, missing] with nothing outside.
        let mut v = vec![0; bins + 3];
        for x in &mut v[1..=bins] {
            *x = per_bin;
        }
        v
    }

    fn edges(bins: usize) -> Vec<f64> {
        (0..=bins).map(|i| i as f64).collect()
    }

    #[test]
    fn buckets_never_judge_above_the_sample_size() {
        let mut last = 0;
        for n in 1..20_000u64 {
            let (b, edge) = bucket(n);
            assert!(edge <= n && edge >= 1, "n {n} edge {edge}");
            assert!(
                edge as f64 >= n as f64 / BUCKET_RATIO - 1.0,
                "n {n} edge {edge}"
            );
            assert!(b >= last);
            last = b;
        }
    }

    #[test]
    fn multinomial_keeps_the_total_and_the_proportions() {
        let p = [0.5, 0.0, 0.3, 0.2];
        let mut rng = SmallRng::seed_from_u64(7);
        let mut out = [0u64; 4];
        let mut sums = [0u64; 4];
        for _ in 0..2000 {
            multinomial(&mut rng, 1000, &p, &mut out);
            assert_eq!(out.iter().sum::<u64>(), 1000);
            assert_eq!(out[1], 0);
            for (s, o) in sums.iter_mut().zip(out) {
                *s += o;
            }
        }
        for (s, want) in sums.iter().zip(p) {
            let got = *s as f64 / 2_000_000.0;
            assert!((got - want).abs() < 0.002, "{got} vs {want}");
        }
    }

    /// At large counts the simulated quantile agrees with the first-order
    /// law (within the sampling error of 400 replicates' moments).
    #[test]
    fn large_windows_match_the_asymptotic_law() {
        let base = even(10, 10_000);
        let e = edges(10);
        let layout = BinLayout::Numeric {
            edges: &e,
            spread: 1.0,
        };
        let opts = CompareOptions::default();
        let sim = simulate(&base, layout, &opts, 50_000, 0.01, 2000, 1);
        let asy = asymptotic(&base, layout, 50_000, 0.01);
        for m in [
            Metric::Psi,
            Metric::Kl,
            Metric::JsDivergence,
            Metric::Hellinger,
        ] {
            let (s, a) = (sim.get(m).unwrap(), asy.get(m).unwrap());
            assert!(
                (s / a - 1.0).abs() < 0.15,
                "{m}: simulated {s} vs asymptotic {a}"
            );
        }
    }

    /// Measured false-alarm rate of the thresholds against windows really
    /// drawn from the baseline, per fitted metric.
    fn false_alarm_rates(
        base: &[u64],
        layout: BinLayout<'_>,
        n: u64,
        alpha: f64,
    ) -> Vec<(Metric, f64)> {
        let opts = CompareOptions::default();
        let q = simulate(base, layout, &opts, n, alpha, REPLICATES, 3);
        let m: u64 = base.iter().sum();
        let p: Vec<f64> = base.iter().map(|&c| c as f64 / m as f64).collect();
        let mut rng = SmallRng::seed_from_u64(99);
        let (mut w, mut b) = (vec![0; base.len()], vec![0; base.len()]);
        let trials = 100_000;
        let mut over = [0u32; FITTED.len()];
        for _ in 0..trials {
            multinomial(&mut rng, n, &p, &mut w);
            multinomial(&mut rng, m, &p, &mut b);
            let s = compare::compare(&w, &b, layout, &opts).unwrap();
            for (i, metric) in FITTED.iter().enumerate() {
                if let (Some(x), Some(t)) = (s.get(*metric), q.get(*metric)) {
                    if x > t {
                        over[i] += 1;
                    }
                }
            }
        }
        FITTED
            .iter()
            .zip(over)
            .filter(|(m, _)| q.get(**m).is_some() && **m != Metric::UnseenShare)
            .map(|(m, o)| (*m, o as f64 / trials as f64))
            .collect()
    }

    /// The point of simulating: at small windows, where the first-order law
    /// lets PSI false-alarm several times too often, the fitted thresholds
    /// stay near alpha on even, skewed and long-tailed categorical bins.
    #[test]
    fn fit_choice() {
        let alpha = 0.002;
        let e = edges(10);
        let numeric = BinLayout::Numeric {
            edges: &e,
            spread: 1.0,
        };
        let mut skewed = vec![0u64; 13];
        for (i, x) in skewed[1..=10].iter_mut().enumerate() {
            *x = 1000 * (1 + (i * i) as u64);
        }
        let cat = vec![5000u64, 3000, 1000, 500, 200, 100, 50, 20, 10, 5, 0, 0];
        for (name, base, layout) in [
            ("even", even(10, 1000), numeric),
            ("skewed", skewed, numeric),
            ("categorical", cat, BinLayout::Categorical),
        ] {
            for n in [200, 2000] {
                for (m, rate) in false_alarm_rates(&base, layout, n, alpha) {
                    eprintln!("{name} n={n} {m}: false-alarm rate {rate:.5} at alpha {alpha}");
                    assert!(
                        rate < 2.5 * alpha,
                        "{name} n={n} {m}: rate {rate} vs alpha {alpha}"
                    );
                }
            }
        }
    }

    /// The stand-ins used while a simulation waits: the unseen share's
    /// normal law agrees with the simulation, and the continuous KS law is
    /// conservative on bins (never under the simulated quantile).
    #[test]
    fn fallback_laws_for_unseen_share_and_ks() {
        let opts = CompareOptions::default();
        // Categorical, 3% of the baseline in __other__.
        let cat = vec![40_000u64, 30_000, 20_000, 7_000, 3_000, 0];
        for n in [2_000, 50_000] {
            let sim = simulate(&cat, BinLayout::Categorical, &opts, n, 1e-4, 2000, 2);
            let asy = asymptotic(&cat, BinLayout::Categorical, n, 1e-4);
            let (s, a) = (
                sim.get(Metric::UnseenShare).unwrap(),
                asy.get(Metric::UnseenShare).unwrap(),
            );
            assert!(
                a > 0.03 && (a / s - 1.0).abs() < 0.25,
                "n {n}: unseen simulated {s}, law {a}"
            );
        }
        let base = even(10, 10_000);
        let e = edges(10);
        let layout = BinLayout::Numeric {
            edges: &e,
            spread: 1.0,
        };
        for n in [500, 20_000] {
            let sim = simulate(&base, layout, &opts, n, 1e-4, 2000, 4);
            let asy = asymptotic(&base, layout, n, 1e-4);
            let (s, a) = (sim.get(Metric::Ks).unwrap(), asy.get(Metric::Ks).unwrap());
            assert!(
                a >= s * 0.95 && a < s * 2.0,
                "n {n}: ks simulated {s}, law {a}"
            );
        }
    }

    /// Against the same windows, the first-order law alone is too low at
    /// n = 200 (the reason the simulation exists).
    #[test]
    fn the_first_order_law_is_too_low_for_small_windows() {
        let base = even(10, 1000);
        let alpha = 0.002;
        let opts = CompareOptions::default();
        let e = edges(10);
        let layout = BinLayout::Numeric {
            edges: &e,
            spread: 1.0,
        };
        let q = asymptotic(&base, layout, 200, alpha);
        let p: Vec<f64> = base.iter().map(|&c| c as f64 / 10_000.0).collect();
        let mut rng = SmallRng::seed_from_u64(5);
        let (mut w, mut b) = (vec![0; base.len()], vec![0; base.len()]);
        let trials = 50_000;
        let mut over = 0;
        for _ in 0..trials {
            multinomial(&mut rng, 200, &p, &mut w);
            multinomial(&mut rng, 10_000, &p, &mut b);
            let s = compare::compare(&w, &b, layout, &opts).unwrap();
            if s.psi > q.get(Metric::Psi).unwrap() {
                over += 1;
            }
        }
        let rate = over as f64 / trials as f64;
        assert!(rate > 2.0 * alpha, "first-order PSI rate {rate}");
    }
}
