//! The comparator: divergence scores between a window's binned counts and a
//! baseline's counts on the same bins.
//!
//! This module owns the arithmetic of drift detection and nothing else.
//! Given the window counts `P` and the baseline counts `Q` of one feature,
//! [`compare`] computes every metric driftd can alert on ([`Metric`]) and
//! returns them as [`Scores`]. Binning, baselines, windows, thresholds and
//! alerting live in other modules. Everything here is pure, synchronous and
//! allocation-free: each metric is a single pass over the count slices, and
//! the cost is dominated by about three logarithms per bin plus one
//! incomplete-gamma evaluation per feature. A release build scores a
//! 12-bin numeric feature with every metric in roughly 0.6 µs.
//!
//! # Bin layouts
//!
//! Counts vectors follow one convention across driftd (see [`BinLayout`]):
//!
//! * **Numeric**, edges `e_0 < e_1 < … < e_k` (`k + 1` edges, `k` interior
//!   bins): `[underflow, bin_0, …, bin_{k-1}, overflow, missing]`, length
//!   `k + 3`. Underflow is `x < e_0`; bin `i` is `[e_i, e_{i+1})` except the
//!   last, which is closed, `[e_{k-1}, e_k]`; overflow is `x > e_k`. The
//!   first `k + 2` entries (underflow … overflow) are the *ordered bins*.
//! * **Categorical**, top-K vocabulary: `[cat_0, …, cat_{K-1}, other,
//!   missing]`, length `K + 2`.
//! * **Hashed**, `B` buckets: `[bucket_0, …, bucket_{B-1}, missing]`, length
//!   `B + 1`.
//!
//! # Notation
//!
//! `P_i`, `Q_i` are raw counts over the `L` entries being compared,
//! `N_P = Σ P_i`, `N_Q = Σ Q_i`, and `p_i = P_i / N_P`, `q_i = Q_i / N_Q` are
//! the raw proportions. `ln` is the natural logarithm, `log2` base 2.
//!
//! # Which bins each metric sees
//!
//! For numeric features `kl`, `psi`, `js_*`, `hellinger` and `chi2*` use the
//! full vector, underflow, overflow and missing included: a shift of mass
//! into "missing" or out of range is drift too. `ks`, `ks_p` and
//! `wasserstein` need an order, so they use only the ordered bins
//! (everything but the trailing missing bin) and the non-missing totals.
//!
//! # Metrics
//!
//! * **`kl`**: Kullback–Leibler divergence `KL(P‖Q) = Σ p̃_i ln(p̃_i / q̃_i)`,
//!   in nats, on smoothed proportions `p̃_i = (P_i + s) / (N_P + s·L)`,
//!   `q̃_i = (Q_i + s) / (N_Q + s·L)`: `s` pseudo-counts
//!   ([`CompareOptions::smoothing`], default [`DEFAULT_SMOOTHING`] = 0.5) are
//!   added to *every* bin of *both* sides. Without smoothing a single window
//!   value in a bin the baseline never saw makes KL infinite; with `s = 0`
//!   any bin with `q_i = 0 < p_i` gives `+∞` (bins with `p_i = 0` contribute
//!   0). Asymmetric: "how surprising is the window under the baseline".
//! * **`psi`**: Population Stability Index `Σ (p̃_i − q̃_i) ln(p̃_i / q̃_i)`
//!   on the same smoothed proportions, in nats; equal to
//!   `KL(P‖Q) + KL(Q‖P)`. With `s = 0` it is `+∞` as soon as a bin is empty
//!   on exactly one side. A common rule of thumb reads < 0.1 as stable,
//!   0.1–0.25 as moderate and > 0.25 as major shift.
//! * **`js_divergence`**: Jensen–Shannon divergence
//!   `½ Σ p_i log2(p_i / m_i) + ½ Σ q_i log2(q_i / m_i)`, `m = (p + q) / 2`,
//!   on *raw* proportions (no smoothing needed: it is always finite) with
//!   `0 log 0 = 0`. Base 2, so it lies in `[0, 1]`, reaching 1 only for
//!   disjoint supports. Symmetric.
//! * **`js_distance`**: `sqrt(js_divergence)`, a true metric in `[0, 1]`
//!   (what `scipy.spatial.distance.jensenshannon(p, q, base=2)` returns).
//! * **`hellinger`**: Hellinger distance `sqrt(1 − Σ sqrt(p_i q_i))` on raw
//!   proportions, in `[0, 1]`. It is evaluated as the equal
//!   `sqrt(½ Σ (sqrt p_i − sqrt q_i)²)`, which cannot go negative through
//!   rounding and gives exactly 0 for identical inputs.
//! * **`chi2`, `chi2_dof`, `chi2_p`**: Pearson chi-square test of
//!   homogeneity on the 2 × L' contingency table `[P; Q]` after dropping the
//!   columns that are empty in both rows; no continuity correction.
//!   `chi2 = Σ_rows Σ_j (O − E)² / E` with `E = row total · column total /
//!   grand total`, `chi2_dof = L' − 1`, `chi2_p = Pr(χ²(dof) ≥ chi2)`. With
//!   `dof = 0` (or an empty row) the result is `(0, 0, 1)`. The p-value
//!   measures evidence, not effect size: with large windows a practically
//!   irrelevant shift is already "significant", and expected counts below
//!   about 5 make the χ² approximation loose.
//! * **`wasserstein`**: 1-Wasserstein (earth mover's) distance from the
//!   binned CDFs of the ordered bins:
//!   `W = Σ_{j=0}^{k-1} |F_P(j) − F_Q(j)| · (e_{j+1} − e_j)`, where
//!   `F_P(j) = (P_underflow + Σ_{i≤j} P_bin_i) / N'_P` and `N'_P` is the
//!   total over the ordered bins (likewise for `Q`). This is exactly the
//!   distance between point masses placing each interior bin's mass at its
//!   left edge `e_j`, underflow at `e_0` and overflow at `e_k`: moves within
//!   a bin, and how far beyond the outer edges values went, are invisible.
//!   [`wasserstein_binned`] returns `W` in the feature's units; [`compare`]
//!   reports `W / spread`, `spread` being the baseline standard deviation
//!   (treated as 1 when not finite and positive), so the score is unitless:
//!   "how many baseline standard deviations of mass moved". Interior bins
//!   whose width is not finite and positive contribute nothing.
//! * **`ks`**: two-sample Kolmogorov–Smirnov statistic on binned data,
//!   `D = max_j |F_P(j) − F_Q(j)|` over the ordered bins (cumulative shares
//!   as above, underflow through overflow). The empirical CDFs are only
//!   compared at bin boundaries, so `D` never exceeds the KS statistic of
//!   the raw values.
//! * **`ks_p`**: asymptotic two-sample Kolmogorov p-value, with `n`, `m` the
//!   non-missing totals: `en = sqrt(n·m / (n + m))`,
//!   `λ = (en + 0.12 + 0.11 / en) · D`, `ks_p = Q_KS(λ) =
//!   2 Σ_{j≥1} (−1)^{j−1} exp(−2 j² λ²)`, clamped to `[0, 1]`. For
//!   `λ < 1.18` the alternating series converges slowly, so the equivalent
//!   `1 − (sqrt(2π) / λ) Σ_{j≥1} exp(−(2j − 1)² π² / (8 λ²))` is used, and
//!   `Q_KS = 1` for `λ < 0.05` (the difference is below f64 resolution).
//!   Because the binned `D` is at most the raw one, this p-value errs high
//!   (conservative).
//! * **`unseen_share`**: share of the window (of its whole total, missing
//!   included) that falls outside what the baseline describes bin by bin:
//!   underflow + overflow for numeric features, `other` for categorical
//!   ones, and 0 for hashed ones (every value has a bucket).
//!
//! Higher is worse for every metric except `chi2_p` and `ks_p`, which are
//! p-values: low means evidence of drift ([`Metric::higher_is_worse`]).
//!
//! # Degenerate input
//!
//! [`compare`] returns `None` when the two vectors differ in length, when
//! the length does not fit the layout, or when either side has a zero total.
//! For numeric features `ks`, `ks_p` and `wasserstein` are `None` when either
//! side has no non-missing count. The building blocks never panic: slices
//! of different lengths are compared over their common prefix, and a side
//! with zero total yields 0 (p-values 1). Counts are summed in `u128`, so
//! counts near `u64::MAX` cannot overflow. No input produces NaN; `+∞` comes
//! only from `kl`/`psi` with zero smoothing (and from `wasserstein` over a
//! vanishingly small spread).

use std::fmt;
use std::str::FromStr;

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Pseudo-count added to every bin of both sides before `kl` and `psi`.
pub const DEFAULT_SMOOTHING: f64 = 0.5;

/// Below this λ, `Q_KS(λ)` equals 1 to f64 precision; evaluating the small-λ
/// series there would multiply an infinite prefactor by an underflowed sum.
const KS_LAMBDA_TINY: f64 = 0.05;
/// Switch point between the two series for `Q_KS` (Numerical Recipes):
/// each converges in a handful of terms on its own side.
const KS_LAMBDA_SWITCH: f64 = 1.18;

/// Every metric an alert rule can reference, named as in config and metrics
/// labels.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Kl,
    Psi,
    JsDivergence,
    JsDistance,
    Hellinger,
    Chi2P,
    Wasserstein,
    Ks,
    KsP,
    UnseenShare,
}

/// Kept next to [`Metric::name`]; a unit test checks they agree.
const VALID_METRIC_NAMES: &str =
    "kl, psi, js_divergence, js_distance, hellinger, chi2_p, wasserstein, ks, ks_p, unseen_share";

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::Kl,
        Metric::Psi,
        Metric::JsDivergence,
        Metric::JsDistance,
        Metric::Hellinger,
        Metric::Chi2P,
        Metric::Wasserstein,
        Metric::Ks,
        Metric::KsP,
        Metric::UnseenShare,
    ];

    /// The stable snake_case name, identical to the serde representation.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Kl => "kl",
            Metric::Psi => "psi",
            Metric::JsDivergence => "js_divergence",
            Metric::JsDistance => "js_distance",
            Metric::Hellinger => "hellinger",
            Metric::Chi2P => "chi2_p",
            Metric::Wasserstein => "wasserstein",
            Metric::Ks => "ks",
            Metric::KsP => "ks_p",
            Metric::UnseenShare => "unseen_share",
        }
    }

    /// False for the p-values (`chi2_p`, `ks_p`), where a low value signals
    /// drift, so thresholds compare the other way round.
    pub fn higher_is_worse(self) -> bool {
        !matches!(self, Metric::Chi2P | Metric::KsP)
    }

    /// Metrics that need ordered bins and therefore exist only for numeric
    /// features.
    pub fn numeric_only(self) -> bool {
        matches!(self, Metric::Wasserstein | Metric::Ks | Metric::KsP)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metric name that is not one of [`Metric::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {name:?}; valid metrics are: {}", VALID_METRIC_NAMES)]
pub struct UnknownMetric {
    pub name: String,
}

impl FromStr for Metric {
    type Err = UnknownMetric;

    /// Accepts the names of [`Metric::name`], ignoring ASCII case and
    /// surrounding whitespace, since they come from hand-written config.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Metric::ALL
            .iter()
            .copied()
            .find(|m| m.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownMetric { name: s.to_owned() })
    }
}

/// All scores of one feature's comparison. See the module docs for the
/// definitions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scores {
    pub kl: f64,
    pub psi: f64,
    pub js_divergence: f64,
    pub js_distance: f64,
    pub hellinger: f64,
    pub chi2: f64,
    pub chi2_dof: u32,
    pub chi2_p: f64,
    /// Numeric features only, and only when both sides have non-missing
    /// values.
    pub wasserstein: Option<f64>,
    /// Numeric features only, as `wasserstein`.
    pub ks: Option<f64>,
    /// Numeric features only, as `wasserstein`.
    pub ks_p: Option<f64>,
    pub unseen_share: f64,
}

impl Scores {
    /// The score for `m`, `None` when it was not computed (numeric-only
    /// metric on a non-numeric feature, or no non-missing values).
    pub fn get(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::Kl => Some(self.kl),
            Metric::Psi => Some(self.psi),
            Metric::JsDivergence => Some(self.js_divergence),
            Metric::JsDistance => Some(self.js_distance),
            Metric::Hellinger => Some(self.hellinger),
            Metric::Chi2P => Some(self.chi2_p),
            Metric::Wasserstein => self.wasserstein,
            Metric::Ks => self.ks,
            Metric::KsP => self.ks_p,
            Metric::UnseenShare => Some(self.unseen_share),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompareOptions {
    /// Pseudo-count added to every bin of both sides for `kl` and `psi`.
    /// Negative or non-finite values are treated as 0.
    pub smoothing: f64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            smoothing: DEFAULT_SMOOTHING,
        }
    }
}

/// Layout of one feature's bins, enough to know which bins are "unseen" and
/// which are ordered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BinLayout<'a> {
    /// `[underflow, bins…, overflow, missing]`; `edges.len()` must be at
    /// least 1 and the counts `edges.len() + 2` long. `spread` is the
    /// baseline standard deviation (treated as 1 unless finite and > 0).
    Numeric { edges: &'a [f64], spread: f64 },
    /// `[cats…, other, missing]`: the last two bins are other, missing.
    Categorical,
    /// `[buckets…, missing]`: the last bin is missing.
    Hashed,
}

impl BinLayout<'_> {
    fn fits(&self, len: usize) -> bool {
        match self {
            BinLayout::Numeric { edges, .. } => !edges.is_empty() && len == edges.len() + 2,
            BinLayout::Categorical => len >= 2,
            BinLayout::Hashed => len >= 1,
        }
    }
}

/// Compares one feature's window counts against its baseline counts.
///
/// Returns `None` when either side has zero total count (nothing to
/// compare), when the two slices differ in length, or when their length does
/// not fit `layout`.
pub fn compare(
    window: &[u64],
    baseline: &[u64],
    layout: BinLayout<'_>,
    opts: &CompareOptions,
) -> Option<Scores> {
    scores(window, baseline, layout, opts, true)
}

/// [`compare`] without the p-values (`chi2_p`, `ks_p` are NaN): what the
/// automatic thresholds' simulations need, a thousand times per
/// distribution, and the p-values' gamma and Kolmogorov series were a
/// fifth of a replicate's time.
pub fn divergences(
    window: &[u64],
    baseline: &[u64],
    layout: BinLayout<'_>,
    opts: &CompareOptions,
) -> Option<Scores> {
    scores(window, baseline, layout, opts, false)
}

fn scores(
    window: &[u64],
    baseline: &[u64],
    layout: BinLayout<'_>,
    opts: &CompareOptions,
    p_values: bool,
) -> Option<Scores> {
    if window.len() != baseline.len() || !layout.fits(window.len()) {
        return None;
    }
    let t = Totals::of(window, baseline)?;
    let n_window = t.np;

    let (kl, psi) = kl_psi_with(
        window,
        baseline,
        &Smoothed::with(window, baseline, opts.smoothing, t),
    );
    let js = js_with(window, baseline, t);
    let (chi2, chi2_dof, chi2_p) = if p_values {
        chi2_homogeneity(window, baseline)
    } else {
        (f64::NAN, 0, f64::NAN)
    };

    let mut scores = Scores {
        kl,
        psi,
        js_divergence: js,
        js_distance: js.sqrt(),
        hellinger: hellinger_with(window, baseline, t),
        chi2,
        chi2_dof,
        chi2_p,
        wasserstein: None,
        ks: None,
        ks_p: None,
        unseen_share: 0.0,
    };

    match layout {
        BinLayout::Numeric { edges, spread } => {
            let [underflow, .., overflow, _missing] = window else {
                return None;
            };
            scores.unseen_share = share(u128::from(*underflow) + u128::from(*overflow), n_window);

            let ordered_w = &window[..window.len() - 1];
            let ordered_b = &baseline[..baseline.len() - 1];
            // The totals without the missing bin, the last.
            let ordered = Totals::from((
                t.np - u128::from(window[window.len() - 1]),
                t.nq - u128::from(baseline[baseline.len() - 1]),
            ));
            if let Some(ot) = ordered {
                let (n_ordered_w, n_ordered_b) = (ot.np, ot.nq);
                let d = ks_with(ordered_w, ordered_b, ot);
                let spread = if spread.is_finite() && spread > 0.0 {
                    spread
                } else {
                    1.0
                };
                scores.ks = Some(d);
                scores.ks_p = p_values.then(|| {
                    ks_p_value(d, saturating_u64(n_ordered_w), saturating_u64(n_ordered_b))
                });
                scores.wasserstein =
                    Some(wasserstein_with(ordered_w, ordered_b, edges, ot) / spread);
            }
        }
        BinLayout::Categorical => {
            let [.., other, _missing] = window else {
                return None;
            };
            scores.unseen_share = share(u128::from(*other), n_window);
        }
        BinLayout::Hashed => {}
    }
    Some(scores)
}

/// `KL(P‖Q)` in nats on proportions smoothed with `smoothing` pseudo-counts
/// per bin on both sides. `+∞` possible only with `smoothing == 0`; 0 when
/// either side has zero total.
pub fn kl_smoothed(p: &[u64], q: &[u64], smoothing: f64) -> f64 {
    kl_psi(p, q, smoothing).0
}

/// PSI `Σ (p̃ − q̃) ln(p̃ / q̃)` on proportions smoothed as in
/// [`kl_smoothed`]. `+∞` possible only with `smoothing == 0`; 0 when either
/// side has zero total.
pub fn psi_smoothed(p: &[u64], q: &[u64], smoothing: f64) -> f64 {
    kl_psi(p, q, smoothing).1
}

/// Jensen–Shannon divergence, base 2, on raw proportions; in `[0, 1]`. 0 when
/// either side has zero total.
pub fn js_divergence(p: &[u64], q: &[u64]) -> f64 {
    Totals::of(p, q).map_or(0.0, |t| js_with(p, q, t))
}

fn js_with(p: &[u64], q: &[u64], Totals { inv_np, inv_nq, .. }: Totals) -> f64 {
    let mut sum = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let pi = a as f64 * inv_np;
        let qi = b as f64 * inv_nq;
        // Equal shares contribute exactly 0; skipping them also spares the
        // logarithms and keeps identical inputs at exactly 0 despite the
        // reciprocal below.
        if pi == qi {
            continue;
        }
        let inv_m = 2.0 / (pi + qi);
        let tp = if pi > 0.0 {
            pi * (pi * inv_m).log2()
        } else {
            0.0
        };
        let tq = if qi > 0.0 {
            qi * (qi * inv_m).log2()
        } else {
            0.0
        };
        // Adding the two halves before accumulating keeps the result
        // bit-for-bit symmetric in (p, q).
        sum += tp + tq;
    }
    (0.5 * sum).clamp(0.0, 1.0)
}

/// Hellinger distance on raw proportions; in `[0, 1]`. 0 when either side
/// has zero total.
pub fn hellinger(p: &[u64], q: &[u64]) -> f64 {
    Totals::of(p, q).map_or(0.0, |t| hellinger_with(p, q, t))
}

fn hellinger_with(p: &[u64], q: &[u64], Totals { inv_np, inv_nq, .. }: Totals) -> f64 {
    let mut sum = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let d = (a as f64 * inv_np).sqrt() - (b as f64 * inv_nq).sqrt();
        sum += d * d;
    }
    (0.5 * sum).sqrt().clamp(0.0, 1.0)
}

/// Pearson chi-square test of homogeneity of the 2 × k table `[P; Q]`,
/// columns empty in both rows dropped: `(statistic, dof, p-value)`.
/// `(0, 0, 1)` when `dof == 0` or either row is empty.
pub fn chi2_homogeneity(p: &[u64], q: &[u64]) -> (f64, u32, f64) {
    let (np, nq) = totals(p, q);
    if np == 0 || nq == 0 {
        return (0.0, 0, 1.0);
    }
    let (np, nq) = (np as f64, nq as f64);
    let n = np + nq;
    let (wp, wq) = (np / n, nq / n);
    let (inv_np, inv_nq) = (1.0 / np, 1.0 / nq);
    // With E = row·col/N the two cells of column j sum to
    // N·wp·wq·(p_j − q_j)² / (wp·p_j + wq·q_j). Working on proportions
    // avoids the cancellation of P_j·N_Q − Q_j·N_P with counts near 2^64.
    let mut sum = 0.0;
    let mut columns: usize = 0;
    for (&a, &b) in p.iter().zip(q) {
        if a == 0 && b == 0 {
            continue;
        }
        columns += 1;
        let pi = a as f64 * inv_np;
        let qi = b as f64 * inv_nq;
        let d = pi - qi;
        sum += d * d / (wp * pi + wq * qi);
    }
    let dof = u32::try_from(columns.saturating_sub(1)).unwrap_or(u32::MAX);
    if dof == 0 {
        return (0.0, 0, 1.0);
    }
    let stat = n * wp * wq * sum;
    // dof >= 1 always makes a valid distribution; the fallback is unreachable.
    let p_value = ChiSquared::new(f64::from(dof)).map_or(1.0, |dist| dist.sf(stat));
    (stat, dof, p_value.clamp(0.0, 1.0))
}

/// Largest gap between the two empirical CDFs over the ordered bins (pass
/// the ordered part only, not the missing bin). 0 when either side has zero
/// total.
pub fn ks_binned(p: &[u64], q: &[u64]) -> f64 {
    Totals::of(p, q).map_or(0.0, |t| ks_with(p, q, t))
}

fn ks_with(p: &[u64], q: &[u64], Totals { inv_np, inv_nq, .. }: Totals) -> f64 {
    // f64 running sums (u128 -> f64 conversions are slow); equal inputs
    // still give bit-identical CDFs.
    let (mut cp, mut cq) = (0.0, 0.0);
    let mut d: f64 = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        cp += a as f64;
        cq += b as f64;
        d = d.max((cp * inv_np - cq * inv_nq).abs());
    }
    d.clamp(0.0, 1.0)
}

/// Asymptotic two-sample Kolmogorov p-value for statistic `d` with sample
/// sizes `n` and `m` (module docs give the formula). 1 when either sample is
/// empty or `d` is not positive.
pub fn ks_p_value(d: f64, n: u64, m: u64) -> f64 {
    if n == 0 || m == 0 || d.is_nan() || d <= 0.0 {
        return 1.0;
    }
    let (n, m) = (n as f64, m as f64);
    let en = (n * m / (n + m)).sqrt();
    kolmogorov_sf((en + 0.12 + 0.11 / en) * d)
}

/// Survival function of the Kolmogorov distribution,
/// `Q_KS(λ) = 2 Σ_{j≥1} (−1)^{j−1} exp(−2 j² λ²)`, in `[0, 1]`; 1 for
/// `λ < 0.05` and for NaN.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda.is_nan() || lambda < KS_LAMBDA_TINY {
        return 1.0;
    }
    let q = if lambda < KS_LAMBDA_SWITCH {
        // CDF = sqrt(2π)/λ Σ y^{(2j−1)²}, y = exp(−π²/(8λ²)); terms beyond
        // y^49 are below 1e-30 for λ < 1.18.
        let y = (-std::f64::consts::PI * std::f64::consts::PI / (8.0 * lambda * lambda)).exp();
        let y2 = y * y;
        let y8 = y2 * y2 * y2 * y2;
        let y9 = y8 * y;
        let y25 = y9 * y8 * y8;
        let y49 = y25 * y8 * y8 * y8;
        let cdf = (2.0 * std::f64::consts::PI).sqrt() / lambda * (y + y9 + y25 + y49);
        1.0 - cdf
    } else {
        // x <= exp(−2·1.18²) ≈ 0.062, so x^16 < 1e-19 and three terms suffice.
        let x = (-2.0 * lambda * lambda).exp();
        let x4 = x * x * x * x;
        let x9 = x4 * x4 * x;
        2.0 * (x - x4 + x9)
    };
    q.clamp(0.0, 1.0)
}

/// Unnormalised binned 1-Wasserstein distance in the feature's units.
///
/// `p` and `q` are the ordered bins `[underflow, bin_0 … bin_{k-1},
/// overflow]` (no missing bin) and `edges` the `k + 1` edges:
/// `W = Σ_j |F_P(j) − F_Q(j)| · (e_{j+1} − e_j)` with `F(j)` the cumulative
/// share through bin `j`, underflow included. 0 when either side has zero
/// total.
pub fn wasserstein_binned(p: &[u64], q: &[u64], edges: &[f64]) -> f64 {
    Totals::of(p, q).map_or(0.0, |t| wasserstein_with(p, q, edges, t))
}

fn wasserstein_with(
    p: &[u64],
    q: &[u64],
    edges: &[f64],
    Totals { inv_np, inv_nq, .. }: Totals,
) -> f64 {
    let (Some((&p_under, p_rest)), Some((&q_under, q_rest))) = (p.split_first(), q.split_first())
    else {
        return 0.0;
    };
    let (mut cp, mut cq) = (p_under as f64, q_under as f64);
    let mut w = 0.0;
    // zip stops after the k interior bins: the overflow entry has no width.
    for ((&a, &b), edge) in p_rest.iter().zip(q_rest).zip(edges.windows(2)) {
        cp += a as f64;
        cq += b as f64;
        let width = edge[1] - edge[0];
        if width.is_finite() && width > 0.0 {
            w += (cp * inv_np - cq * inv_nq).abs() * width;
        }
    }
    w
}

/// Both smoothed divergences share `ln(p̃/q̃)`, so one pass computes both.
/// Which way a [`two_proportion_test`] looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// H1: the second proportion is larger (an error rate went up).
    Greater,
    /// H1: the proportions differ (two arms' click-through).
    TwoSided,
}

/// The two-proportion z-test with the pooled variance: `x1` of `n1` against
/// `x2` of `n2`. Returns `(z, p)`; `None` when either sample is empty.
///
/// The normal approximation is what every A/B tool reports; it is good when
/// each group has a handful of successes and failures, which is why the
/// callers also require minimum counts before they act on `p`.
pub fn two_proportion_test(x1: u64, n1: u64, x2: u64, n2: u64, tail: Tail) -> Option<(f64, f64)> {
    if n1 == 0 || n2 == 0 || x1 > n1 || x2 > n2 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (x1 as f64 / n1f, x2 as f64 / n2f);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        // Both all-successes or all-failures: no evidence of a difference.
        return Some((0.0, 1.0));
    }
    let z = (p2 - p1) / se;
    let normal = statrs::distribution::Normal::standard();
    let p = match tail {
        Tail::Greater => normal.sf(z),
        Tail::TwoSided => 2.0 * normal.sf(z.abs()),
    };
    Some((z, p.clamp(0.0, 1.0)))
}

/// The smoothed proportions of `p` and `q` bin by bin: `s` pseudo-counts
/// added to every bin of both (a negative or non-finite smoothing is 0).
/// `None` when either side is empty.
struct Smoothed {
    s: f64,
    inv_dp: f64,
    inv_dq: f64,
    totals: (u128, u128),
}

impl Smoothed {
    fn of(p: &[u64], q: &[u64], smoothing: f64) -> Option<Smoothed> {
        Totals::of(p, q).map(|t| Smoothed::with(p, q, smoothing, t))
    }

    fn with(p: &[u64], q: &[u64], smoothing: f64, t: Totals) -> Smoothed {
        let (np, nq) = (t.np, t.nq);
        let s = if smoothing.is_finite() && smoothing > 0.0 {
            smoothing
        } else {
            0.0
        };
        let bins = p.len().min(q.len()) as f64;
        Smoothed {
            s,
            inv_dp: 1.0 / (np as f64 + s * bins),
            inv_dq: 1.0 / (nq as f64 + s * bins),
            totals: (np, nq),
        }
    }

    /// (p_i, q_i) from the counts of one bin.
    fn pair(&self, a: u64, b: u64) -> (f64, f64) {
        (
            (a as f64 + self.s) * self.inv_dp,
            (b as f64 + self.s) * self.inv_dq,
        )
    }
}

fn kl_psi(p: &[u64], q: &[u64], smoothing: f64) -> (f64, f64) {
    Smoothed::of(p, q, smoothing).map_or((0.0, 0.0), |sm| kl_psi_with(p, q, &sm))
}

fn kl_psi_with(p: &[u64], q: &[u64], sm: &Smoothed) -> (f64, f64) {
    let (mut kl, mut psi) = (0.0, 0.0);
    for (&a, &b) in p.iter().zip(q) {
        let (pi, qi) = sm.pair(a, b);
        // Also covers pi == qi == 0 (s = 0), where the ratio would be 0/0.
        if pi == qi {
            continue;
        }
        let log_ratio = (pi / qi).ln();
        if pi > 0.0 {
            kl += pi * log_ratio;
        }
        psi += (pi - qi) * log_ratio;
    }
    // KL is non-negative; only rounding can take the sum below zero.
    (kl.max(0.0), psi.max(0.0))
}

/// One bin's part in a distribution's drift: its raw shares of the
/// baseline and of the window, and its term of PSI on the smoothed
/// proportions (the terms sum to [`psi_smoothed`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinShift {
    pub bin: usize,
    pub baseline_share: f64,
    pub window_share: f64,
    pub psi_term: f64,
}

/// The `k` bins that contribute most to PSI(window `p` ‖ baseline `q`),
/// largest term first: what to look at when a distribution drifts. Ties go
/// to the larger change of raw share, then to the lower bin. A bin whose
/// share did not move (a term of 0, empty on both sides included) is never
/// listed; nor is anything when either side is empty.
pub fn top_shifts(p: &[u64], q: &[u64], smoothing: f64, k: usize) -> Vec<BinShift> {
    let Some(sm) = Smoothed::of(p, q, smoothing).filter(|_| k > 0) else {
        return Vec::new();
    };
    let (np, nq) = sm.totals;
    let mut all: Vec<BinShift> = p
        .iter()
        .zip(q)
        .enumerate()
        .filter(|(_, (&a, &b))| a > 0 || b > 0)
        .map(|(bin, (&a, &b))| {
            let (pi, qi) = sm.pair(a, b);
            let psi_term = if pi == qi || pi == 0.0 || qi == 0.0 {
                // Equal, or infinite without smoothing: ranked by share.
                if pi == qi {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                (pi - qi) * (pi / qi).ln()
            };
            BinShift {
                bin,
                baseline_share: share(u128::from(b), nq),
                window_share: share(u128::from(a), np),
                psi_term,
            }
        })
        .collect();
    let change = |b: &BinShift| (b.window_share - b.baseline_share).abs();
    // Terms equal but for rounding (mirrored bins) are a tie.
    let key = |t: f64| if t.is_finite() { (t * 1e12).round() } else { t };
    all.sort_by(|x, y| {
        key(y.psi_term)
            .total_cmp(&key(x.psi_term))
            .then(change(y).total_cmp(&change(x)))
            .then(x.bin.cmp(&y.bin))
    });
    // Unmoved: an equal raw share (the smoothing of two sample sizes alone
    // leaves a tiny term), or a term of 0.
    all.retain(|b| b.psi_term > 0.0 && b.window_share != b.baseline_share);
    all.truncate(k);
    all
}

/// Both sides' totals, and their reciprocals, for a pair with events on
/// both sides: worked out once per comparison, not once per metric (a
/// null fit scores a thousand pairs per anchor).
#[derive(Debug, Clone, Copy)]
struct Totals {
    np: u128,
    nq: u128,
    inv_np: f64,
    inv_nq: f64,
}

impl Totals {
    fn of(p: &[u64], q: &[u64]) -> Option<Totals> {
        let (np, nq) = totals(p, q);
        Totals::from((np, nq))
    }

    fn from((np, nq): (u128, u128)) -> Option<Totals> {
        (np > 0 && nq > 0).then(|| Totals {
            np,
            nq,
            inv_np: 1.0 / np as f64,
            inv_nq: 1.0 / nq as f64,
        })
    }
}

/// Totals over the common prefix, in u128 so that no count vector can
/// overflow.
fn totals(p: &[u64], q: &[u64]) -> (u128, u128) {
    p.iter().zip(q).fold((0, 0), |(tp, tq), (&a, &b)| {
        (tp + u128::from(a), tq + u128::from(b))
    })
}

fn share(part: u128, total: u128) -> f64 {
    if total == 0 {
        0.0
    } else {
        (part as f64 / total as f64).clamp(0.0, 1.0)
    }
}

fn saturating_u64(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {

    /// Reference values from statsmodels 0.14:
    /// `proportions_ztest([x2, x1], [n2, n1], alternative=...)`, which uses
    /// the pooled variance like this function.
    #[test]
    fn two_proportion_test_matches_statsmodels() {
        // proportions_ztest([60, 40], [1000, 1000], alternative="larger")
        // -> (2.051956704170308, 0.020086935144256055)
        let (z, p) = two_proportion_test(40, 1000, 60, 1000, Tail::Greater).unwrap();
        assert!((z - 2.051956704170308).abs() < 1e-9, "{z}");
        assert!((p - 0.020086935144256055).abs() < 1e-9, "{p}");
        // proportions_ztest([120, 150], [1000, 1000]) (two-sided)
        // -> (-1.963049807622355, 0.04964038686536878)
        let (z, p) = two_proportion_test(150, 1000, 120, 1000, Tail::TwoSided).unwrap();
        assert!((z + 1.963049807622355).abs() < 1e-9, "{z}");
        assert!((p - 0.04964038686536878).abs() < 1e-9, "{p}");
        assert_eq!(two_proportion_test(0, 0, 1, 10, Tail::Greater), None);
        assert_eq!(two_proportion_test(11, 10, 1, 10, Tail::Greater), None);
        assert_eq!(
            two_proportion_test(0, 10, 0, 10, Tail::TwoSided),
            Some((0.0, 1.0))
        );
    }

    proptest! {
        /// Under the null (same proportion), p-values are not systematically
        /// small, and swapping the groups flips the sign of z.
        #[test]
        fn two_proportion_test_is_antisymmetric(x1 in 0u64..500, x2 in 0u64..500, e1 in 0u64..500, e2 in 0u64..500) {
            let (n1, n2) = (x1 + e1 + 1, x2 + e2 + 1);
            let (z, p) = two_proportion_test(x1, n1, x2, n2, Tail::TwoSided).unwrap();
            let (z2, p2) = two_proportion_test(x2, n2, x1, n1, Tail::TwoSided).unwrap();
            prop_assert!((z + z2).abs() < 1e-9);
            prop_assert!((p - p2).abs() < 1e-9);
            prop_assert!((0.0..=1.0).contains(&p));
            let (_, pg) = two_proportion_test(x1, n1, x2, n2, Tail::Greater).unwrap();
            // One-sided is half the two-sided p in the direction of the effect.
            if z > 0.0 { prop_assert!((pg - p / 2.0).abs() < 1e-9); }
        }
    }

    use super::*;
    use proptest::prelude::*;

    const TOL: f64 = 1e-9;

    fn assert_close(actual: f64, expected: f64, tol: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= tol,
            "{what}: got {actual:e}, expected {expected:e} (tol {tol:e})"
        );
    }

    const P1: [u64; 5] = [80, 150, 320, 280, 170];
    const Q1: [u64; 5] = [100, 200, 300, 250, 150];
    const P2: [u64; 4] = [400, 300, 250, 50];
    const Q2: [u64; 4] = [500, 300, 200, 0];

    #[test]
    fn reference_case_1_matches_scipy() {
        assert_close(kl_smoothed(&P1, &Q1, 0.5), 0.0125880654604, TOL, "kl");
        assert_close(psi_smoothed(&P1, &Q1, 0.5), 0.0258934142852, TOL, "psi");
        assert_close(js_divergence(&P1, &Q1), 0.00468489245749, TOL, "js");
        assert_close(js_divergence(&P1, &Q1).sqrt(), 0.0684462742411, TOL, "jsd");
        assert_close(hellinger(&P1, &Q1), 0.0570193573566, TOL, "hellinger");
        let (stat, dof, p) = chi2_homogeneity(&P1, &Q1);
        assert_close(stat, 12.9583538629, TOL, "chi2");
        assert_eq!(dof, 4);
        assert_close(p, 0.0114810872838, TOL, "chi2_p");
    }

    #[test]
    fn reference_case_2_matches_scipy() {
        assert_close(kl_smoothed(&P2, &Q2, 0.5), 0.199168759548, TOL, "kl");
        assert_close(psi_smoothed(&P2, &Q2, 0.5), 0.263650342072, TOL, "psi");
        assert_close(js_divergence(&P2, &Q2), 0.0310236596092, TOL, "js");
        assert_close(
            js_divergence(&P2, &Q2).sqrt(),
            0.176135344576834,
            TOL,
            "jsd",
        );
        assert_close(hellinger(&P2, &Q2), 0.17082039325, TOL, "hellinger");
        let (stat, dof, p) = chi2_homogeneity(&P2, &Q2);
        assert_close(stat, 66.6666666667, TOL, "chi2");
        assert_eq!(dof, 3);
        assert_close(p, 2.2069144568e-14, TOL, "chi2_p");
        // The absolute tolerance is meaningless at 1e-14; check relative too.
        assert!(((p - 2.206914456800012e-14) / 2.206914456800012e-14).abs() < 1e-6);
    }

    #[test]
    fn compare_agrees_with_building_blocks() {
        let s = compare(&P1, &Q1, BinLayout::Hashed, &CompareOptions::default()).unwrap();
        assert_close(s.kl, 0.0125880654604, TOL, "kl");
        assert_close(s.psi, 0.0258934142852, TOL, "psi");
        assert_close(s.js_divergence, 0.00468489245749, TOL, "js");
        assert_close(s.js_distance, 0.0684462742411, TOL, "jsd");
        assert_close(s.hellinger, 0.0570193573566, TOL, "hellinger");
        assert_close(s.chi2, 12.9583538629, TOL, "chi2");
        assert_eq!(s.chi2_dof, 4);
        assert_close(s.chi2_p, 0.0114810872838, TOL, "chi2_p");
        assert_eq!(s.unseen_share, 0.0);
        assert_eq!((s.wasserstein, s.ks, s.ks_p), (None, None, None));
    }

    #[test]
    fn smoothing_option_is_used() {
        let opts = CompareOptions { smoothing: 0.0 };
        let s = compare(&P2, &Q2, BinLayout::Hashed, &opts).unwrap();
        assert_eq!(s.kl, f64::INFINITY);
        assert_eq!(s.psi, f64::INFINITY);
        let opts = CompareOptions { smoothing: 0.5 };
        let s = compare(&P2, &Q2, BinLayout::Hashed, &opts).unwrap();
        assert_close(s.kl, 0.199168759548, TOL, "kl");
    }

    #[test]
    fn zero_smoothing_edge_cases() {
        // q = 0 < p: infinite.
        assert_eq!(kl_smoothed(&[1, 1], &[2, 0], 0.0), f64::INFINITY);
        // p = 0 < q: KL finite (0 ln 0 = 0), PSI infinite.
        let kl = kl_smoothed(&[2, 0], &[1, 1], 0.0);
        assert_close(kl, std::f64::consts::LN_2, 1e-15, "kl");
        assert_eq!(psi_smoothed(&[2, 0], &[1, 1], 0.0), f64::INFINITY);
        // Bins empty on both sides contribute nothing.
        let with_empty = kl_smoothed(&[3, 0, 1], &[1, 0, 3], 0.0);
        let without = kl_smoothed(&[3, 1], &[1, 3], 0.0);
        assert_close(with_empty, without, 1e-15, "kl");
        // Negative and NaN smoothing behave like 0.
        assert_eq!(kl_smoothed(&[1, 1], &[2, 0], -1.0), f64::INFINITY);
        assert_eq!(kl_smoothed(&[1, 1], &[2, 0], f64::NAN), f64::INFINITY);
    }

    #[test]
    fn js_and_hellinger_extremes() {
        assert_close(js_divergence(&[5, 0], &[0, 7]), 1.0, 1e-15, "js disjoint");
        assert_close(
            hellinger(&[5, 0], &[0, 7]),
            1.0,
            1e-15,
            "hellinger disjoint",
        );
        assert_eq!(js_divergence(&[0, 0], &[1, 2]), 0.0);
        assert_eq!(hellinger(&[1, 2], &[0, 0]), 0.0);
    }

    #[test]
    fn chi2_matches_textbook_formula_and_handles_degenerate_tables() {
        // Columns empty in both rows must not count towards dof.
        let (stat, dof, p) = chi2_homogeneity(
            &[80, 0, 150, 320, 280, 0, 170],
            &[100, 0, 200, 300, 250, 0, 150],
        );
        assert_close(stat, 12.9583538629, TOL, "chi2");
        assert_eq!(dof, 4);
        assert_close(p, 0.0114810872838, TOL, "chi2_p");
        assert_eq!(chi2_homogeneity(&[5], &[7]), (0.0, 0, 1.0));
        assert_eq!(chi2_homogeneity(&[5, 0], &[7, 0]), (0.0, 0, 1.0));
        assert_eq!(chi2_homogeneity(&[0, 0], &[7, 1]), (0.0, 0, 1.0));
        // 2x2 with one disjoint column each: statistic equals N.
        let (stat, dof, _) = chi2_homogeneity(&[10, 0], &[0, 30]);
        assert_close(stat, 40.0, 1e-12, "chi2 disjoint");
        assert_eq!(dof, 1);
    }

    #[test]
    fn kolmogorov_sf_matches_scipy_kstwobign() {
        // scipy.stats.kstwobign.sf
        assert_close(kolmogorov_sf(1.0), 0.26999967167735456, 1e-12, "Q(1.0)");
        assert_close(kolmogorov_sf(1.36), 0.049485876755377876, 1e-12, "Q(1.36)");
        assert_close(kolmogorov_sf(0.5), 0.9639452436648751, 1e-12, "Q(0.5)");
        assert_close(kolmogorov_sf(2.0), 0.0006709252557796953, 1e-12, "Q(2.0)");
        assert_close(kolmogorov_sf(1.18), 0.1234538094297657, 1e-12, "Q(1.18)");
        // Both series agree across the switch point.
        let below = kolmogorov_sf(KS_LAMBDA_SWITCH - 1e-12);
        let above = kolmogorov_sf(KS_LAMBDA_SWITCH);
        assert_close(below, above, 1e-12, "switch continuity");
        assert_eq!(kolmogorov_sf(0.0), 1.0);
        assert_eq!(kolmogorov_sf(0.01), 1.0);
        assert_eq!(kolmogorov_sf(f64::NAN), 1.0);
        assert_eq!(kolmogorov_sf(f64::INFINITY), 0.0);
    }

    #[test]
    fn ks_p_value_matches_scipy() {
        // lambda = (en + 0.12 + 0.11/en) d, then scipy.stats.kstwobign.sf(lambda).
        assert_close(
            ks_p_value(0.1, 100, 200),
            0.4964357988586219,
            1e-12,
            "p(0.1,100,200)",
        );
        assert_close(
            ks_p_value(0.05, 1000, 1000),
            0.15955408974378785,
            1e-12,
            "p(0.05,1000,1000)",
        );
        assert_close(
            ks_p_value(0.3, 10, 12),
            0.6258560942797337,
            1e-12,
            "p(0.3,10,12)",
        );
        assert_eq!(ks_p_value(0.0, 100, 100), 1.0);
        assert_eq!(ks_p_value(0.5, 0, 100), 1.0);
        assert_eq!(ks_p_value(f64::NAN, 10, 10), 1.0);
        assert!(ks_p_value(1.0, 100_000, 100_000) < 1e-300);
        assert!(ks_p_value(0.5, u64::MAX, u64::MAX) < 1e-300);
    }

    #[test]
    fn ks_binned_hand_cases() {
        assert_eq!(ks_binned(&[1, 1, 0, 0], &[0, 0, 1, 1]), 1.0);
        assert_close(ks_binned(&[5, 5], &[10, 0]), 0.5, 1e-15, "ks");
        assert_close(ks_binned(&[1, 2, 1], &[1, 1, 2]), 0.25, 1e-15, "ks");
        assert_eq!(ks_binned(&[0, 0], &[1, 1]), 0.0);
    }

    #[test]
    fn wasserstein_hand_cases() {
        // All mass moved one bin of width 2.
        let edges = [0.0, 2.0, 4.0];
        assert_close(
            wasserstein_binned(&[0, 10, 0, 0], &[0, 0, 10, 0], &edges),
            2.0,
            1e-15,
            "w",
        );
        // Two bins away: 2 + 3.
        let edges = [0.0, 2.0, 5.0, 6.0];
        assert_close(
            wasserstein_binned(&[0, 4, 0, 0, 0], &[0, 0, 0, 7, 0], &edges),
            5.0,
            1e-15,
            "w",
        );
        // Underflow sits at e_0, overflow at e_k.
        assert_close(
            wasserstein_binned(&[3, 0, 0, 0], &[0, 0, 0, 3], &[0.0, 1.0, 4.0]),
            4.0,
            1e-15,
            "w",
        );
        // Mass moved within the same bin is invisible.
        assert_eq!(wasserstein_binned(&[0, 3, 0], &[0, 5, 0], &[0.0, 1.0]), 0.0);
    }

    #[test]
    fn wasserstein_matches_scipy_point_masses() {
        // scipy.stats.wasserstein_distance([0,0,1,3,6], [0,0,1,3,6], P, Q): masses at e_0
        // (underflow), left edges of the bins, and e_k (overflow).
        let w = wasserstein_binned(
            &[5, 10, 20, 30, 5],
            &[0, 30, 20, 10, 10],
            &[0.0, 1.0, 3.0, 6.0],
        );
        assert_close(w, 0.8571428571428574, 1e-12, "w");
    }

    #[test]
    fn numeric_layout_splits_full_and_ordered_bins() {
        let edges = [0.0, 2.0, 4.0];
        let layout = BinLayout::Numeric {
            edges: &edges,
            spread: 4.0,
        };
        // [under, b0, b1, over, missing]
        let window = [1, 0, 8, 1, 10];
        let baseline = [0, 10, 0, 0, 0];
        let s = compare(&window, &baseline, layout, &CompareOptions::default()).unwrap();
        assert_close(s.unseen_share, 0.1, 1e-15, "unseen");
        // Ordered shares: window [0.1, 0, 0.8, 0.1], baseline [0, 1, 0, 0].
        assert_close(s.ks.unwrap(), 0.9, 1e-15, "ks");
        assert_close(s.ks_p.unwrap(), ks_p_value(0.9, 10, 10), 1e-15, "ks_p");
        // F diffs at b0: |0.1 - 1| * 2, at b1: |0.9 - 1| * 2 => 2.0, / spread 4.
        assert_close(s.wasserstein.unwrap(), 0.5, 1e-15, "wasserstein");
        // The missing bin counts in the full-vector metrics.
        assert_close(s.hellinger, hellinger(&window, &baseline), 0.0, "hellinger");
        assert_close(
            s.js_divergence,
            js_divergence(&window, &baseline),
            0.0,
            "js",
        );
        assert_eq!(s.chi2_dof, 4);
    }

    #[test]
    fn shift_into_missing_is_seen_by_full_vector_metrics_only() {
        let edges = [0.0, 1.0, 2.0];
        let layout = BinLayout::Numeric {
            edges: &edges,
            spread: 1.0,
        };
        let baseline = [0, 50, 50, 0, 0];
        let window = [0, 50, 50, 0, 100];
        let s = compare(&window, &baseline, layout, &CompareOptions::default()).unwrap();
        assert!(s.kl > 0.1 && s.psi > 0.1 && s.js_divergence > 0.1 && s.hellinger > 0.1);
        assert!(s.chi2_p < 1e-10);
        assert_eq!(s.ks, Some(0.0));
        assert_eq!(s.ks_p, Some(1.0));
        assert_eq!(s.wasserstein, Some(0.0));
        assert_eq!(s.unseen_share, 0.0);
    }

    #[test]
    fn all_missing_window_has_no_ordered_metrics() {
        let edges = [0.0, 1.0];
        let layout = BinLayout::Numeric {
            edges: &edges,
            spread: 1.0,
        };
        let s = compare(
            &[0, 0, 0, 9],
            &[1, 2, 3, 0],
            layout,
            &CompareOptions::default(),
        )
        .unwrap();
        assert_eq!((s.wasserstein, s.ks, s.ks_p), (None, None, None));
        assert_close(s.js_divergence, 1.0, 1e-15, "js");
    }

    #[test]
    fn spread_normalisation() {
        let edges = [0.0, 2.0, 4.0];
        let w = [0, 10, 0, 0, 0];
        let b = [0, 0, 10, 0, 0];
        let opts = CompareOptions::default();
        for (spread, expected) in [
            (2.0, 1.0),
            (0.5, 4.0),
            (0.0, 2.0),
            (-3.0, 2.0),
            (f64::NAN, 2.0),
        ] {
            let layout = BinLayout::Numeric {
                edges: &edges,
                spread,
            };
            let s = compare(&w, &b, layout, &opts).unwrap();
            assert_close(
                s.wasserstein.unwrap(),
                expected,
                1e-15,
                "wasserstein / spread",
            );
        }
    }

    #[test]
    fn categorical_unseen_share_is_other_bin() {
        // [cat0, cat1, other, missing]
        let s = compare(
            &[10, 20, 30, 40],
            &[50, 50, 0, 0],
            BinLayout::Categorical,
            &CompareOptions::default(),
        )
        .unwrap();
        assert_close(s.unseen_share, 0.3, 1e-15, "unseen");
        assert_eq!((s.wasserstein, s.ks, s.ks_p), (None, None, None));
    }

    #[test]
    fn compare_rejects_empty_and_malformed_input() {
        let opts = CompareOptions::default();
        let edges = [0.0, 1.0];
        let numeric = BinLayout::Numeric {
            edges: &edges,
            spread: 1.0,
        };
        assert!(compare(&[0, 0, 0, 0], &[1, 2, 3, 4], numeric, &opts).is_none());
        assert!(compare(&[1, 2, 3, 4], &[0, 0, 0, 0], numeric, &opts).is_none());
        assert!(compare(&[1, 2, 3], &[1, 2, 3], numeric, &opts).is_none());
        assert!(compare(&[1, 2, 3, 4], &[1, 2, 3], BinLayout::Hashed, &opts).is_none());
        assert!(compare(&[], &[], BinLayout::Hashed, &opts).is_none());
        assert!(compare(&[1], &[1], BinLayout::Categorical, &opts).is_none());
        let no_edges = BinLayout::Numeric {
            edges: &[],
            spread: 1.0,
        };
        assert!(compare(&[1, 2], &[1, 2], no_edges, &opts).is_none());
        assert!(compare(&[1], &[1], BinLayout::Hashed, &opts).is_some());
    }

    #[test]
    fn metric_names_round_trip() {
        let joined: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(joined.join(", "), VALID_METRIC_NAMES);
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.name()));
            assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), m);
        }
        assert_eq!(" KS_P ".parse::<Metric>(), Ok(Metric::KsP));
        let err = "kld".parse::<Metric>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"kld\""), "{msg}");
        for m in Metric::ALL {
            assert!(msg.contains(m.name()), "{msg} lacks {m}");
        }
    }

    #[test]
    fn metric_properties() {
        let lower_is_worse: Vec<Metric> = Metric::ALL
            .into_iter()
            .filter(|m| !m.higher_is_worse())
            .collect();
        assert_eq!(lower_is_worse, [Metric::Chi2P, Metric::KsP]);
        let numeric: Vec<Metric> = Metric::ALL
            .into_iter()
            .filter(|m| m.numeric_only())
            .collect();
        assert_eq!(numeric, [Metric::Wasserstein, Metric::Ks, Metric::KsP]);
    }

    #[test]
    fn scores_get_maps_every_metric() {
        let edges = [0.0, 1.0, 2.0];
        let layout = BinLayout::Numeric {
            edges: &edges,
            spread: 1.0,
        };
        let s = compare(
            &[1, 2, 3, 4, 5],
            &[5, 4, 3, 2, 1],
            layout,
            &CompareOptions::default(),
        )
        .unwrap();
        let expected = [
            s.kl,
            s.psi,
            s.js_divergence,
            s.js_distance,
            s.hellinger,
            s.chi2_p,
            s.wasserstein.unwrap(),
            s.ks.unwrap(),
            s.ks_p.unwrap(),
            s.unseen_share,
        ];
        // All distinct, so a swapped arm in `get` cannot go unnoticed.
        for (i, a) in expected.iter().enumerate() {
            for b in &expected[i + 1..] {
                assert_ne!(a, b);
            }
        }
        for (m, e) in Metric::ALL.into_iter().zip(expected) {
            assert_eq!(s.get(m), Some(e), "{m}");
        }
        let c = compare(
            &[1, 2, 3, 4],
            &[4, 3, 2, 1],
            BinLayout::Categorical,
            &CompareOptions::default(),
        )
        .unwrap();
        for m in Metric::ALL {
            assert_eq!(c.get(m).is_none(), m.numeric_only(), "{m}");
        }
    }

    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => 0u64..1_000,
            1 => Just(0u64),
            1 => (u64::MAX / 4 - 1_000)..=u64::MAX / 4,
        ]
    }

    fn counts(max_len: usize) -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(count(), 1..=max_len)
    }

    /// Two count vectors of equal length.
    fn pair(max_len: usize) -> impl Strategy<Value = (Vec<u64>, Vec<u64>)> {
        prop::collection::vec((count(), count()), 1..=max_len).prop_map(|v| v.into_iter().unzip())
    }

    fn nonzero(v: &[u64]) -> bool {
        v.iter().any(|&c| c > 0)
    }

    fn rel_close(a: f64, b: f64) -> bool {
        a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-12
    }

    proptest! {
        #[test]
        fn identical_inputs_score_zero(p in counts(16), s in 0.0f64..2.0) {
            prop_assume!(nonzero(&p));
            prop_assert_eq!(kl_smoothed(&p, &p, s), 0.0);
            prop_assert_eq!(psi_smoothed(&p, &p, s), 0.0);
            prop_assert_eq!(js_divergence(&p, &p), 0.0);
            prop_assert_eq!(hellinger(&p, &p), 0.0);
            prop_assert_eq!(ks_binned(&p, &p), 0.0);
            prop_assert!(chi2_homogeneity(&p, &p).2 >= 1.0 - 1e-12);
            prop_assert_eq!(chi2_homogeneity(&p, &p).0, 0.0);
            let edges: Vec<f64> = (0..p.len().saturating_sub(1)).map(|i| i as f64 * 1.5).collect();
            prop_assert_eq!(wasserstein_binned(&p, &p, &edges), 0.0);
        }

        #[test]
        fn identical_inputs_through_compare(p in counts(14)) {
            prop_assume!(nonzero(&p));
            let mut full = p.clone();
            full.push(3); // missing
            let edges: Vec<f64> = (0..p.len() - 1).map(|i| (i as f64).powi(2)).collect();
            prop_assume!(!edges.is_empty());
            let layout = BinLayout::Numeric { edges: &edges, spread: 2.0 };
            let s = compare(&full, &full, layout, &CompareOptions::default()).unwrap();
            prop_assert_eq!(s.kl, 0.0);
            prop_assert_eq!(s.psi, 0.0);
            prop_assert_eq!(s.js_distance, 0.0);
            prop_assert_eq!(s.hellinger, 0.0);
            prop_assert!(s.chi2_p >= 1.0 - 1e-12);
            prop_assert_eq!(s.ks, Some(0.0));
            prop_assert_eq!(s.ks_p, Some(1.0));
            prop_assert_eq!(s.wasserstein, Some(0.0));
        }

        #[test]
        fn divergences_are_non_negative_and_bounded((p, q) in pair(16), s in 0.0f64..2.0) {
            prop_assert!(kl_smoothed(&p, &q, s) >= 0.0);
            prop_assert!(psi_smoothed(&p, &q, s) >= 0.0);
            // PSI is KL(P||Q) + KL(Q||P) for s > 0, where both are finite.
            if s > 0.0 {
                let sym = kl_smoothed(&p, &q, s) + kl_smoothed(&q, &p, s);
                prop_assert!(rel_close(psi_smoothed(&p, &q, s), sym));
            }
            let js = js_divergence(&p, &q);
            prop_assert!((0.0..=1.0).contains(&js));
            prop_assert!((0.0..=1.0).contains(&hellinger(&p, &q)));
            prop_assert!((0.0..=1.0).contains(&ks_binned(&p, &q)));
            let (stat, _, pv) = chi2_homogeneity(&p, &q);
            prop_assert!(stat >= 0.0);
            prop_assert!((0.0..=1.0).contains(&pv));
        }

        #[test]
        fn js_is_symmetric((p, q) in pair(16)) {
            prop_assert_eq!(js_divergence(&p, &q), js_divergence(&q, &p));
            prop_assert!(rel_close(hellinger(&p, &q), hellinger(&q, &p)));
        }

        #[test]
        fn order_of_bins_does_not_matter(
            (p, q, perm) in pair(12).prop_flat_map(|(p, q)| {
                let idx: Vec<usize> = (0..p.len()).collect();
                (Just(p), Just(q), Just(idx).prop_shuffle())
            }),
            s in 0.01f64..2.0,
        ) {
            let pp: Vec<u64> = perm.iter().map(|&i| p[i]).collect();
            let qp: Vec<u64> = perm.iter().map(|&i| q[i]).collect();
            prop_assert!(rel_close(kl_smoothed(&p, &q, s), kl_smoothed(&pp, &qp, s)));
            prop_assert!(rel_close(psi_smoothed(&p, &q, s), psi_smoothed(&pp, &qp, s)));
            prop_assert!(rel_close(js_divergence(&p, &q), js_divergence(&pp, &qp)));
            prop_assert!(rel_close(hellinger(&p, &q), hellinger(&pp, &qp)));
            let (a, da, pa) = chi2_homogeneity(&p, &q);
            let (b, db, pb) = chi2_homogeneity(&pp, &qp);
            prop_assert!(rel_close(a, b));
            prop_assert_eq!(da, db);
            prop_assert!(rel_close(pa, pb));
        }

        #[test]
        fn chi2_matches_textbook_sum(
            v in prop::collection::vec((0u64..500, 0u64..500), 1..10),
        ) {
            let (p, q): (Vec<u64>, Vec<u64>) = v.into_iter().unzip();
            prop_assume!(nonzero(&p) && nonzero(&q));
            let np: u64 = p.iter().sum();
            let nq: u64 = q.iter().sum();
            let n = (np + nq) as f64;
            let mut expected = 0.0;
            let mut cols = 0;
            for (&a, &b) in p.iter().zip(&q) {
                let c = (a + b) as f64;
                if c == 0.0 { continue; }
                cols += 1;
                let ea = np as f64 * c / n;
                let eb = nq as f64 * c / n;
                expected += (a as f64 - ea).powi(2) / ea + (b as f64 - eb).powi(2) / eb;
            }
            let (stat, dof, _) = chi2_homogeneity(&p, &q);
            if cols >= 2 {
                prop_assert!(rel_close(stat, expected), "{} vs {}", stat, expected);
                prop_assert_eq!(dof as usize, cols - 1);
            } else {
                prop_assert_eq!(dof, 0);
            }
        }

        #[test]
        fn compare_wires_building_blocks((w, b) in pair(14), s in 0.0f64..2.0) {
            prop_assume!(w.len() >= 3 && nonzero(&w) && nonzero(&b));
            let edges: Vec<f64> = (0..w.len() - 2).map(|i| i as f64 * 0.5).collect();
            let layout = BinLayout::Numeric { edges: &edges, spread: 0.25 };
            let sc = compare(&w, &b, layout, &CompareOptions { smoothing: s }).unwrap();
            let js = js_divergence(&w, &b);
            let (chi2, dof, chi2_p) = chi2_homogeneity(&w, &b);
            prop_assert_eq!(sc.kl, kl_smoothed(&w, &b, s));
            prop_assert_eq!(sc.psi, psi_smoothed(&w, &b, s));
            prop_assert_eq!(sc.js_divergence, js);
            prop_assert_eq!(sc.js_distance, js.sqrt());
            prop_assert_eq!(sc.hellinger, hellinger(&w, &b));
            prop_assert_eq!((sc.chi2, sc.chi2_dof, sc.chi2_p), (chi2, dof, chi2_p));
            let n = w.len() - 1;
            let (ow, ob) = (&w[..n], &b[..n]);
            if nonzero(ow) && nonzero(ob) {
                let d = ks_binned(ow, ob);
                prop_assert_eq!(sc.ks, Some(d));
                let nw = ow.iter().map(|&c| u128::from(c)).sum::<u128>();
                let nb = ob.iter().map(|&c| u128::from(c)).sum::<u128>();
                let (nw, nb) = (u64::try_from(nw).unwrap_or(u64::MAX), u64::try_from(nb).unwrap_or(u64::MAX));
                prop_assert_eq!(sc.ks_p, Some(ks_p_value(d, nw, nb)));
                prop_assert_eq!(sc.wasserstein, Some(wasserstein_binned(ow, ob, &edges) / 0.25));
            } else {
                prop_assert_eq!((sc.wasserstein, sc.ks, sc.ks_p), (None, None, None));
            }
            let unseen = (u128::from(w[0]) + u128::from(w[n - 1])) as f64
                / w.iter().map(|&c| u128::from(c)).sum::<u128>() as f64;
            prop_assert!(rel_close(sc.unseen_share, unseen));
        }

        #[test]
        fn compare_is_none_for_zero_totals(q in counts(12), zeros in 1usize..12) {
            let z = vec![0u64; q.len()];
            prop_assert!(compare(&z, &q, BinLayout::Hashed, &CompareOptions::default()).is_none());
            prop_assert!(compare(&q, &z, BinLayout::Hashed, &CompareOptions::default()).is_none());
            let z2 = vec![0u64; zeros + 2];
            let q2: Vec<u64> = (0..zeros as u64 + 2).collect();
            prop_assert!(compare(&z2, &q2, BinLayout::Categorical, &CompareOptions::default()).is_none());
        }

        #[test]
        fn never_nan(
            (w, b) in pair(16),
            kind in 0u8..3,
            spread in prop_oneof![Just(0.0), Just(1e-300), 0.01f64..100.0],
            s in prop_oneof![Just(0.0), 0.0f64..2.0],
        ) {
            let edges: Vec<f64> = (0..w.len().saturating_sub(2)).map(|i| i as f64 - 3.0).collect();
            let layout = match kind {
                0 if !edges.is_empty() => BinLayout::Numeric { edges: &edges, spread },
                1 if w.len() >= 2 => BinLayout::Categorical,
                _ => BinLayout::Hashed,
            };
            let opts = CompareOptions { smoothing: s };
            let got = compare(&w, &b, layout, &opts);
            prop_assert_eq!(got.is_some(), nonzero(&w) && nonzero(&b));
            if let Some(sc) = got {
                for m in Metric::ALL {
                    if let Some(v) = sc.get(m) {
                        prop_assert!(!v.is_nan(), "{} is NaN: {:?}", m, sc);
                        prop_assert!(v >= 0.0, "{} negative: {:?}", m, sc);
                    }
                }
                prop_assert!(!sc.chi2.is_nan());
                for v in [sc.js_divergence, sc.js_distance, sc.hellinger, sc.chi2_p, sc.unseen_share] {
                    prop_assert!(v <= 1.0);
                }
                if let (Some(d), Some(pv)) = (sc.ks, sc.ks_p) {
                    prop_assert!(d <= 1.0 && pv <= 1.0);
                }
                if s > 0.0 {
                    prop_assert!(sc.kl.is_finite() && sc.psi.is_finite());
                }
            }
            // Building blocks on arbitrary, possibly all-zero, input.
            for v in [
                kl_smoothed(&w, &b, s),
                psi_smoothed(&w, &b, s),
                js_divergence(&w, &b),
                hellinger(&w, &b),
                chi2_homogeneity(&w, &b).0,
                chi2_homogeneity(&w, &b).2,
                ks_binned(&w, &b),
                wasserstein_binned(&w, &b, &edges),
            ] {
                prop_assert!(!v.is_nan());
            }
        }

        #[test]
        fn wasserstein_is_symmetric_and_bounded_by_range((p, q) in pair(12)) {
            let edges: Vec<f64> = (0..p.len().saturating_sub(1)).map(|i| (i as f64) * 0.75 + (i as f64).sqrt()).collect();
            let w = wasserstein_binned(&p, &q, &edges);
            prop_assert!(rel_close(w, wasserstein_binned(&q, &p, &edges)));
            let range = edges.last().copied().unwrap_or(0.0) - edges.first().copied().unwrap_or(0.0);
            prop_assert!((0.0..=range + 1e-12).contains(&w));
        }
    }

    /// PSI terms by hand: p = (10, 30, 60), q = (30, 30, 40) with no
    /// smoothing: (0.1-0.3) ln(1/3) = 0.219722, 0, (0.6-0.4) ln(1.5) =
    /// 0.081093.
    #[test]
    fn top_shifts_rank_bins_by_their_psi_terms() {
        let v = top_shifts(&[10, 30, 60], &[30, 30, 40], 0.0, 3);
        let got: Vec<(usize, f64)> = v.iter().map(|b| (b.bin, b.psi_term)).collect();
        // Bin 1 did not move: not listed.
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[1].0), (0, 2));
        assert!((got[0].1 - 0.2 * 3f64.ln()).abs() < 1e-12, "{got:?}");
        assert!((got[1].1 - 0.2 * 1.5f64.ln()).abs() < 1e-12, "{got:?}");
        assert!((v[0].window_share - 0.1).abs() < 1e-12);
        assert!((v[0].baseline_share - 0.3).abs() < 1e-12);
        // The terms are PSI's.
        let sum: f64 = v.iter().map(|b| b.psi_term).sum();
        assert!((sum - psi_smoothed(&[10, 30, 60], &[30, 30, 40], 0.0)).abs() < 1e-12);
        // Only k of them.
        assert_eq!(top_shifts(&[10, 30, 60], &[30, 30, 40], 0.0, 1).len(), 1);
    }

    /// Smoothed terms sum to the smoothed PSI; a bin empty on both sides or
    /// unmoved is never listed, a bin empty on one side is, and equal terms
    /// go to the larger change of share, then to the lower bin.
    #[test]
    fn top_shifts_with_ties_and_empty_bins() {
        let (p, q) = ([0u64, 50, 0, 50], [0u64, 50, 50, 0]);
        let v = top_shifts(&p, &q, 0.5, 10);
        let bins: Vec<usize> = v.iter().map(|b| b.bin).collect();
        assert!(!bins.contains(&0), "{bins:?}");
        // Bins 2 and 3 mirror each other: the same term, the lower first;
        // bin 1 did not move.
        assert_eq!(bins, vec![2, 3]);
        assert!((v[0].psi_term - v[1].psi_term).abs() < 1e-12);
        let sum: f64 = v.iter().map(|b| b.psi_term).sum();
        assert!((sum - psi_smoothed(&p, &q, 0.5)).abs() < 1e-12);
        // Without smoothing a bin empty on one side is infinite, and first.
        let v = top_shifts(&[0, 10, 10], &[10, 10, 0], 0.0, 3);
        assert_eq!(v[0].psi_term, f64::INFINITY);
        assert_eq!((v[0].bin, v[1].bin), (0, 2));
        // Nothing to say about an empty side.
        assert!(top_shifts(&[0, 0], &[1, 2], 0.5, 3).is_empty());
        assert!(top_shifts(&[1, 2], &[0, 0], 0.5, 3).is_empty());
    }
}
