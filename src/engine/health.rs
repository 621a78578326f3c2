//! Service health from the same stream: error rates, deployments, latency
//! quantiles and batch statistics, per model.
//!
//! This module owns what the seed's error, latency and batch-statistics
//! analyses need beside drift. Per model: the request and error counts of
//! each pane of its history (the window and the `reference_windows` windows
//! before it), per latency stage a log-bucketed histogram of each pane of
//! the window, error counts by `error_type` (top K, the rest as `other`) and
//! the latest batch statistics. Per lineage (a service and a model name
//! without its version suffix), the versions in the order they were first
//! seen. Like the engine it is pure: time comes in as a parameter,
//! transitions go out.
//!
//! Cost is bounded by design (issue 14). Only panes holding something are
//! stored. Running sums of the window and of the reference, and per stage a
//! running total per bucket, are kept as panes are filled and subtracted as
//! they leave, so an evaluation reads O(stages x buckets) whatever the
//! number of panes, and a line costs O(1) plus a binary search in its
//! pane's buckets. [`HealthConfig::model_bytes`] states the most one model
//! can hold; [`ModelHealth::heap_bytes`] what it holds.
//!
//! The histograms map values as DDSketch does (bucket k = ceil(log_g x),
//! g = (1 + a) / (1 - a), reported as 2 g^k / (g + 1): within the relative
//! error a of every value in the bucket), but they are not a sketch crate's:
//! a sliding window has to *subtract* a pane when it leaves, and the crates'
//! sketches can only merge, so every evaluation re-merged every pane of
//! every stage (2,880 panes of 1,000 models took 117 s and 1.1 GB).
//!
//! Three conditions, each debounced like a drift verdict ([`Condition`]):
//!
//! - `ErrorRateHigh`: the window's error rate is significantly above the
//!   model's own recent past (the `reference_windows` windows before it): a
//!   one-sided two-proportion z-test at `alpha`, *and* at least `min_ratio`
//!   times the reference rate with at least `min_errors` errors, so a
//!   0.10% -> 0.11% change at a million requests does not page anyone. Or,
//!   when `max_rate` is set, simply above it.
//! - `ErrorSpikeAfterDeploy`: when a new version starts receiving traffic,
//!   the previous version's error rate and stage p90s are frozen as its
//!   reference. The new version's error rate is tested against that rate
//!   (`signal="error_rate"`); per stage, the share of its requests slower
//!   than the previous p90 is tested against the previous 10%
//!   (`signal="latency"`): a quantile test, exact on the new version's side
//!   because each value is compared when it arrives.
//! - `LatencyP99High`: a stage's window p99 above its configured limit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use serde::Serialize;

use crate::engine::compare::{two_proportion_test, Tail};
use crate::engine::decode::MAX_NAME_LEN;
use crate::engine::detect::{
    limit_level, p_level, Condition, ConditionLevel, DetectConfig, Severity, State, Transition,
};

/// The error-rate tests' settings (`ErrorRateHigh` and the deploy check).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRule {
    /// One-sided significance level of the two-proportion test.
    pub alpha: f64,
    /// The window's rate must also be at least this many times the reference.
    pub min_ratio: f64,
    /// Errors the window must hold before the test can fire.
    pub min_errors: u64,
    /// Requests both sides must hold before anything is judged.
    pub min_requests: u64,
    /// Fire whenever the window's rate is above this (off when `None`).
    pub max_rate: Option<f64>,
}

/// Settings (validated config, `[health]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub enabled: bool,
    pub pane_ms: i64,
    /// Panes per window (the drift window's length).
    pub panes: usize,
    /// Windows of history before the current one, the reference of
    /// `ErrorRateHigh`.
    pub reference_windows: usize,
    pub max_models: usize,
    pub max_error_types: usize,
    pub max_stages: usize,
    /// Lineages (service and model name) remembered for deploy detection.
    pub max_lineages: usize,
    /// Versions remembered per lineage.
    pub max_versions: usize,
    /// Relative accuracy of the latency quantiles: it sets the buckets of
    /// the latency histograms (see [`HealthConfig::model_bytes`]).
    pub sketch_error: f64,
    /// Latency histograms are kept in at most this many panes per window
    /// (a day in 12 panes of 2 h): a pane of latency holds up to a bucket
    /// per stage, so this, not the window's panes, sets a model's cost.
    /// Quantiles then cover the window and up to one latency pane more.
    pub latency_panes: usize,
    pub errors: ErrorRule,
    /// The deploy check's error test (`min_ratio` against the previous version).
    pub deploy: ErrorRule,
    /// The quantile of the previous version a new version's requests are
    /// compared with, and how many times more of them may exceed it.
    pub deploy_latency_quantile: f64,
    pub deploy_latency_min_ratio: f64,
    /// How long after its first sight a version is compared with the one
    /// before it; after that, its own past is its reference.
    pub deploy_horizon_ms: i64,
    /// p99 limits per stage, in milliseconds (`LatencyP99High`).
    pub p99_limit_ms: BTreeMap<String, f64>,
    /// Batch statistics kept per model.
    pub max_batch_stats: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            pane_ms: 30_000,
            panes: 20,
            reference_windows: 6,
            max_models: 1000,
            max_error_types: 8,
            max_stages: 8,
            max_lineages: 1000,
            max_versions: 8,
            sketch_error: 0.02,
            latency_panes: 12,
            errors: ErrorRule {
                alpha: 0.001,
                min_ratio: 2.0,
                min_errors: 10,
                min_requests: 200,
                max_rate: None,
            },
            deploy: ErrorRule {
                alpha: 0.001,
                min_ratio: 1.5,
                min_errors: 5,
                min_requests: 200,
                max_rate: None,
            },
            deploy_latency_quantile: 0.9,
            deploy_latency_min_ratio: 2.0,
            deploy_horizon_ms: 24 * 3_600_000,
            p99_limit_ms: BTreeMap::new(),
            max_batch_stats: 64,
        }
    }
}

/// Counters of what the caps refused; exported per evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthStats {
    /// Lines of new models refused because `max_models` was reached.
    pub models_refused: u64,
    /// Stage values of stages beyond `max_stages`.
    pub stages_refused: u64,
    /// Batch statistics beyond `max_batch_stats`.
    pub batch_stats_refused: u64,
    /// Lines older than the model's history: the window and the reference
    /// windows before it, up to its newest line or the last evaluation.
    pub late: u64,
    /// New lineages refused because `max_lineages` was reached.
    pub lineages_refused: u64,
}

/// Latency values at or below this (ms: 10 us), zero and negative ones
/// included, share the lowest bucket and are reported as 0: below that a
/// model's latency is noise, and every bucket kept costs each pane.
const LATENCY_FLOOR_MS: f64 = 1e-2;
/// Values above this (ms: 1 h) share the highest bucket, reported as about
/// an hour. With the floor it bounds a stage's buckets to
/// log_g(ceiling / floor) + 2: 496 at the default 2%, 989 at 1% (9,900
/// at 0.1%, 110,000 at the least error allowed, 0.01%).
const LATENCY_CEILING_MS: f64 = 3_600_000.0;

/// The mapping of latency values to buckets: DDSketch's logarithmic one,
/// bounded by [`LATENCY_FLOOR_MS`] and [`LATENCY_CEILING_MS`]. Bucket 0
/// holds what is at or below the floor; bucket i >= 1 holds the values x
/// with ceil(log_g x) = first_key + i - 1.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Buckets {
    gamma_ln: f64,
    /// The key of bucket 1, the first above the floor.
    first_key: i32,
    /// Buckets, bucket 0 included.
    len: u32,
    /// A bucket of key k is reported as g^k * 2 / (g + 1): within the
    /// relative error of both its ends, g^(k-1) and g^k.
    scale: f64,
}

impl Buckets {
    fn new(relative_error: f64) -> Buckets {
        // The config allows 0.0001 to 0.1; anything else is kept sane.
        let a = relative_error.clamp(1e-4, 0.5);
        let gamma = (1.0 + a) / (1.0 - a);
        let gamma_ln = gamma.ln();
        let key = |x: f64| (x.ln() / gamma_ln).ceil() as i32;
        let first_key = key(LATENCY_FLOOR_MS);
        Buckets {
            gamma_ln,
            first_key,
            len: (key(LATENCY_CEILING_MS) - first_key + 2) as u32,
            scale: 2.0 / (gamma + 1.0),
        }
    }

    fn index(&self, ms: f64) -> u32 {
        // NaN goes to the floor bucket too.
        if ms.is_nan() || ms <= LATENCY_FLOOR_MS {
            return 0;
        }
        let i = (ms.ln() / self.gamma_ln).ceil() - f64::from(self.first_key) + 1.0;
        i.clamp(1.0, f64::from(self.len - 1)) as u32
    }

    fn value(&self, i: u32) -> f64 {
        if i == 0 {
            return 0.0;
        }
        let key = self.first_key + i as i32 - 1;
        (f64::from(key) * self.gamma_ln).exp() * self.scale
    }
}

/// Room for one more element in a full vector or deque: doubling, so
/// growth stays amortized O(1), but never past `max`, so a capacity is
/// bounded by the config as [`HealthConfig::model_bytes`] says.
fn room(capacity: usize, max: usize) -> usize {
    capacity.max(4).min(max.saturating_sub(capacity)).max(1)
}

fn push_bounded<T>(v: &mut Vec<T>, x: T, max: usize) {
    if v.len() == v.capacity() {
        v.reserve_exact(room(v.capacity(), max));
    }
    v.push(x);
}

/// One pane's histogram of one stage: its non-empty buckets, (bucket,
/// values), sorted by bucket. A bucket whose count would pass `u32::MAX`
/// gets a second entry; only then can a pane hold more than `len` entries.
type PaneHistogram = Vec<(u32, u32)>;

fn histogram_add(h: &mut PaneHistogram, bucket: u32, buckets: &Buckets) {
    let at = h.partition_point(|e| e.0 <= bucket);
    match at.checked_sub(1).map(|i| &mut h[i]) {
        Some(e) if e.0 == bucket && e.1 < u32::MAX => e.1 += 1,
        _ => {
            if h.len() == h.capacity() {
                h.reserve_exact(room(h.capacity(), buckets.len as usize));
            }
            h.insert(at, (bucket, 1));
        }
    }
}

/// A stage's running total per bucket over the panes of the window: dense
/// over the buckets from the lowest to the highest it ever held since it
/// was last empty (latencies cluster, so that is few), freed when empty.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    /// The bucket of `counts[0]`.
    lo: u32,
    counts: Vec<u64>,
    /// Values in the window.
    n: u64,
}

impl Totals {
    fn add(&mut self, bucket: u32, count: u64, buckets: &Buckets) {
        self.cover(bucket, buckets.len);
        self.counts[(bucket - self.lo) as usize] += count;
        self.n += count;
    }

    fn sub(&mut self, bucket: u32, count: u64) {
        self.counts[(bucket - self.lo) as usize] -= count;
        self.n -= count;
        if self.n == 0 {
            *self = Totals::default();
        }
    }

    /// Widens `counts` to hold `bucket`: at least doubling the span (growth
    /// amortized O(1)), never past the `len` buckets there are.
    fn cover(&mut self, bucket: u32, len: u32) {
        let span = self.counts.len() as u32;
        if span == 0 {
            self.lo = bucket;
            self.counts = vec![0; 1];
            return;
        }
        let hi = self.lo + span;
        let (lo, hi) = if bucket < self.lo {
            (bucket.min(self.lo.saturating_sub(span)), hi)
        } else if bucket >= hi {
            (self.lo, (bucket + 1).max(hi + span).min(len))
        } else {
            return;
        };
        let mut counts = Vec::with_capacity((hi - lo) as usize);
        counts.resize((self.lo - lo) as usize, 0);
        counts.extend_from_slice(&self.counts);
        counts.resize((hi - lo) as usize, 0);
        self.counts = counts;
        self.lo = lo;
    }

    /// The values at quantiles `qs` (ascending), in one walk; DDSketch's
    /// rank, floor(q (n - 1)), so the reported values are those it gave.
    fn quantiles<const N: usize>(&self, qs: [f64; N], buckets: &Buckets) -> [Option<f64>; N] {
        debug_assert!(qs.windows(2).all(|w| w[0] <= w[1]), "{qs:?}");
        if self.n == 0 {
            return [None; N];
        }
        let ranks = qs.map(|q| (q * (self.n - 1) as f64) as u64);
        let mut found = [self.lo + self.counts.len() as u32 - 1; N];
        let (mut seen, mut next) = (0u64, 0);
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            while next < N && seen > ranks[next] {
                found[next] = self.lo + i as u32;
                next += 1;
            }
            if next == N {
                break;
            }
        }
        // Valued after the walk: `exp` in it would be hoisted out of the
        // branch and computed for every bucket.
        found.map(|b| Some(buckets.value(b)))
    }
}

/// Requests and errors of one pane of a model's history.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PaneCounts {
    id: i64,
    requests: u64,
    errors: u64,
}

/// One pane of the window's latency: per stage, its histogram and (after a
/// deploy) its values compared with the previous version's quantile and
/// how many were slower.
#[derive(Debug, Clone, Default)]
struct PaneLatency {
    id: i64,
    histograms: Vec<PaneHistogram>,
    slow: Vec<(u64, u64)>,
}

/// The pane `id` of a deque sorted by id, inserted by `new` if missing. At
/// most `max` panes are held (the caller has expired the others), so the
/// capacity stays within it.
fn pane_mut<T>(
    q: &mut VecDeque<T>,
    id: i64,
    id_of: fn(&T) -> i64,
    new: impl FnOnce() -> T,
    max: usize,
) -> &mut T {
    // Lines mostly come in time order: the newest pane first.
    let at = match q.back().map(id_of) {
        Some(b) if b == id => q.len() - 1,
        Some(b) if b < id => q.len(),
        None => 0,
        Some(_) => q.partition_point(|p| id_of(p) < id),
    };
    if q.get(at).is_none_or(|p| id_of(p) != id) {
        if q.len() == q.capacity() {
            q.reserve_exact(room(q.capacity(), max));
        }
        q.insert(at, new());
    }
    &mut q[at]
}

/// A model's panes and the running sums an evaluation reads.
///
/// `counts` holds the panes of the history (the `history` panes up to
/// `head`) that received a request or an error, `latency` those of the
/// window (the last `panes`) that received a stage value, both oldest
/// first; empty panes are not stored. The sums always equal what these
/// panes hold (the property tests recount them): a pane's requests move
/// from the window's sums to the reference's when it leaves the window, and
/// out when it leaves the history; its latency leaves with it.
#[derive(Debug, Clone)]
struct Panes {
    /// The newest pane: the latest of the lines' and the evaluations'.
    head: i64,
    /// The newest pane a line was counted in.
    newest: i64,
    /// Once evaluations moved past `newest`: what a new version would be
    /// compared with, kept as of `newest` (see [`Panes::as_previous`]).
    quiet: Option<AsPrevious>,
    counts: VecDeque<PaneCounts>,
    latency: VecDeque<PaneLatency>,
    /// Requests and errors of the window (`n`, `x`) and of the reference
    /// windows before it (`n0`, `x0`).
    n: u64,
    x: u64,
    n0: u64,
    x0: u64,
    /// Per stage, over the window: the histogram's totals, and the deploy
    /// check's (values compared, slower ones).
    totals: Vec<Totals>,
    slow: Vec<(u64, u64)>,
}

impl Panes {
    fn new(head: i64) -> Panes {
        Panes {
            head,
            newest: head,
            quiet: None,
            counts: VecDeque::new(),
            latency: VecDeque::new(),
            n: 0,
            x: 0,
            n0: 0,
            x0: 0,
            totals: Vec::new(),
            slow: Vec::new(),
        }
    }

    /// The oldest pane of the window.
    fn window_lo(&self, l: &Limits) -> i64 {
        self.head.saturating_sub(l.panes as i64 - 1)
    }

    /// The oldest pane of the history.
    fn history_lo(&self, l: &Limits) -> i64 {
        self.head.saturating_sub(l.history as i64 - 1)
    }

    /// Moves the head to pane `to` (if later): what leaves the window moves
    /// to the reference sums, what leaves the history goes. Each pane is
    /// moved once and dropped once, so this is amortized O(1) per pane.
    fn advance(&mut self, to: i64, l: &Limits) {
        if to <= self.head {
            return;
        }
        let was_window = self.window_lo(l);
        self.head = to;
        let (window_lo, history_lo) = (self.window_lo(l), self.history_lo(l));
        while let Some(p) = self.counts.front().copied().filter(|p| p.id < history_lo) {
            self.counts.pop_front();
            if p.id >= was_window {
                self.n -= p.requests;
                self.x -= p.errors;
            } else {
                self.n0 -= p.requests;
                self.x0 -= p.errors;
            }
        }
        let from = self.counts.partition_point(|p| p.id < was_window);
        let until = self.counts.partition_point(|p| p.id < window_lo);
        for p in self.counts.range(from..until) {
            self.n -= p.requests;
            self.x -= p.errors;
            self.n0 += p.requests;
            self.x0 += p.errors;
        }
        // A pane of latency leaves when the last pane of the window it
        // covers has left.
        let group = l.latency_group;
        while self
            .latency
            .front()
            .is_some_and(|p| (p.id + 1) * group <= window_lo)
        {
            let p = self.latency.pop_front().expect("a front pane");
            for (s, h) in p.histograms.iter().enumerate() {
                for &(bucket, c) in h {
                    self.totals[s].sub(bucket, u64::from(c));
                }
            }
            for (s, (v, slower)) in p.slow.iter().enumerate() {
                self.slow[s].0 -= v;
                self.slow[s].1 -= slower;
            }
        }
        // A model quiet for a whole history holds nothing.
        if self.counts.is_empty() {
            self.counts = VecDeque::new();
        }
        if self.latency.is_empty() {
            self.latency = VecDeque::new();
        }
    }

    /// Moves the head to pane `to` for an evaluation. When that leaves the
    /// pane of the newest line behind, first keeps what a new version would
    /// be compared with as of that line: the window is about to lose panes
    /// that the comparison, like the last window of traffic, includes.
    fn advance_to_evaluate(&mut self, to: i64, l: &Limits) {
        if to > self.head && self.newest == self.head {
            let mut latency = Vec::with_capacity(self.totals.len());
            latency.extend((0..self.totals.len()).map(|s| self.latency_as_previous(s, l)));
            let (requests, errors) = self.counts_as_previous();
            self.quiet = Some(AsPrevious {
                requests,
                errors,
                latency,
            });
        }
        self.advance(to, l);
    }

    /// Notes a line counted in pane `id`: a line newer than all others
    /// makes the model live again.
    fn note_line(&mut self, id: i64) {
        if id > self.newest {
            self.newest = id;
            self.quiet = None;
        }
    }

    /// Requests and errors over the history, as of the newest line: what a
    /// new version of the model is compared with.
    fn counts_as_previous(&self) -> (u64, u64) {
        match &self.quiet {
            Some(q) => (q.requests, q.errors),
            None => (self.n + self.n0, self.x + self.x0),
        }
    }

    /// Stage `s`'s `deploy_latency_quantile` over the window and its
    /// values, as of the newest line (`None` without values).
    fn latency_as_previous(&self, s: usize, l: &Limits) -> Option<(f64, u64)> {
        match &self.quiet {
            Some(q) => q.latency.get(s).copied().flatten(),
            None => {
                let t = &self.totals[s];
                let [v] = t.quantiles([l.deploy_quantile], &l.buckets);
                Some((v?, t.n))
            }
        }
    }

    /// Counts a request and/or an error in pane `id` (within the history).
    fn count(&mut self, id: i64, request: bool, error: bool, l: &Limits) {
        let (r, e) = (u64::from(request), u64::from(error));
        let new = || PaneCounts {
            id,
            requests: 0,
            errors: 0,
        };
        let p = pane_mut(&mut self.counts, id, |p| p.id, new, l.history);
        p.requests += r;
        p.errors += e;
        if id >= self.window_lo(l) {
            self.n += r;
            self.x += e;
        } else {
            self.n0 += r;
            self.x0 += e;
        }
    }

    /// Adds a value of stage `s` (of `stages`) to pane `id` of the window;
    /// `slower`: whether it is slower than the previous version's quantile,
    /// during a deploy comparison.
    fn add_latency(
        &mut self,
        id: i64,
        (s, stages): (usize, usize),
        bucket: u32,
        slower: Option<bool>,
        l: &Limits,
    ) {
        let id = id.div_euclid(l.latency_group);
        let new = || PaneLatency {
            id,
            ..PaneLatency::default()
        };
        let p = pane_mut(&mut self.latency, id, |p| p.id, new, l.latency_panes);
        if p.histograms.len() <= s {
            p.histograms.reserve_exact(stages - p.histograms.len());
            p.histograms.resize_with(s + 1, Vec::new);
        }
        histogram_add(&mut p.histograms[s], bucket, &l.buckets);
        self.totals[s].add(bucket, 1, &l.buckets);
        if let Some(slower) = slower {
            if p.slow.len() <= s {
                p.slow.reserve_exact(stages - p.slow.len());
                p.slow.resize(s + 1, (0, 0));
            }
            p.slow[s].0 += 1;
            p.slow[s].1 += u64::from(slower);
            self.slow[s].0 += 1;
            self.slow[s].1 += u64::from(slower);
        }
    }

    fn heap_bytes(&self) -> usize {
        let quiet = self.quiet.as_ref().map_or(0, |q| vec_bytes(&q.latency));
        let latency: usize = self
            .latency
            .iter()
            .map(|p| {
                vec_bytes(&p.histograms)
                    + vec_bytes(&p.slow)
                    + p.histograms.iter().map(vec_bytes).sum::<usize>()
            })
            .sum();
        self.counts.capacity() * size_of::<PaneCounts>()
            + self.latency.capacity() * size_of::<PaneLatency>()
            + latency
            + vec_bytes(&self.totals)
            + self
                .totals
                .iter()
                .map(|t| vec_bytes(&t.counts))
                .sum::<usize>()
            + vec_bytes(&self.slow)
            + quiet
    }
}

/// A model as the previous version of a new one: its requests and errors
/// over its history, and per stage its `deploy_latency_quantile` and values
/// over its window, as of its newest line. (A line that comes late after
/// the model went quiet is not in it.)
#[derive(Debug, Clone, PartialEq)]
struct AsPrevious {
    requests: u64,
    errors: u64,
    latency: Vec<Option<(f64, u64)>>,
}

/// Heap bytes of a vector's buffer (not of what its elements own).
fn vec_bytes<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// Heap bytes of an `Arc<str>` of `len` bytes: two counters and the bytes,
/// rounded up to the counters' alignment.
fn arc_str_bytes(len: usize) -> usize {
    (2 * size_of::<usize>() + len).next_multiple_of(align_of::<usize>())
}

/// What a new version is compared with: its predecessor, frozen when the new
/// version was first seen.
#[derive(Debug, Clone)]
pub struct DeployRef {
    pub previous: Arc<str>,
    pub at_ms: i64,
    pub previous_requests: u64,
    pub previous_errors: u64,
    /// Per stage of the previous version: (stage, its quantile in ms, values).
    pub previous_latency: Vec<(Arc<str>, f64, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct BatchState {
    pub batches: u64,
    pub last_at_ms: i64,
    pub avg_confidence: Option<f64>,
    pub stats: Vec<(Arc<str>, f64)>,
}

/// One model's health state.
#[derive(Debug)]
pub struct ModelHealth {
    pub name: Arc<str>,
    pub service: Option<Arc<str>>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    panes: Panes,
    pub requests_total: u64,
    pub errors_total: u64,
    /// Error types with their own label, and their counts; `other_errors`
    /// holds the rest.
    pub error_types: Vec<(Arc<str>, u64)>,
    pub other_errors: u64,
    pub stages: Vec<Arc<str>>,
    pub deploy: Option<DeployRef>,
    pub batch: BatchState,
    error_high: Condition,
    deploy_errors: Condition,
    /// Per stage.
    deploy_latency: Vec<Condition>,
    p99_high: Vec<Condition>,
}

impl ModelHealth {
    /// Every condition with its alert name, feature and metric.
    fn conditions_mut(&mut self) -> Vec<(&mut Condition, &'static str, String, &'static str)> {
        let mut v: Vec<(&mut Condition, &'static str, String, &'static str)> = vec![
            (
                &mut self.error_high,
                "ErrorRateHigh",
                String::new(),
                "error_rate",
            ),
            (
                &mut self.deploy_errors,
                "ErrorSpikeAfterDeploy",
                String::new(),
                "error_rate",
            ),
        ];
        for (c, st) in self.deploy_latency.iter_mut().zip(&self.stages) {
            v.push((c, "ErrorSpikeAfterDeploy", st.to_string(), "slow_share"));
        }
        for (c, st) in self.p99_high.iter_mut().zip(&self.stages) {
            v.push((c, "LatencyP99High", st.to_string(), "p99_ms"));
        }
        v
    }

    /// The heap this model holds: its state and every buffer it owns, by
    /// capacity. At most [`HealthConfig::model_bytes`].
    pub fn heap_bytes(&self) -> usize {
        let arc = |s: &Arc<str>| arc_str_bytes(s.len());
        let deploy = self.deploy.as_ref().map_or(0, |d| {
            arc(&d.previous)
                + vec_bytes(&d.previous_latency)
                + d.previous_latency
                    .iter()
                    .map(|(s, ..)| arc(s))
                    .sum::<usize>()
        });
        size_of::<ModelHealth>()
            + arc(&self.name)
            + self.service.as_ref().map_or(0, arc)
            + self.panes.heap_bytes()
            + vec_bytes(&self.error_types)
            + self.error_types.iter().map(|(t, _)| arc(t)).sum::<usize>()
            + vec_bytes(&self.stages)
            + self.stages.iter().map(arc).sum::<usize>()
            + deploy
            + vec_bytes(&self.batch.stats)
            + self.batch.stats.iter().map(|(s, _)| arc(s)).sum::<usize>()
            + vec_bytes(&self.deploy_latency)
            + vec_bytes(&self.p99_high)
    }
}

/// A lineage's versions, oldest first, with when each was first seen.
#[derive(Debug, Default)]
struct Lineage {
    versions: Vec<(Arc<str>, i64)>,
}

/// Health of every model.
#[derive(Debug)]
pub struct Health {
    cfg: HealthConfig,
    limits: Limits,
    models: FxHashMap<Box<str>, ModelHealth>,
    /// By model name without its version (see [`version_base`]).
    lineages: FxHashMap<Box<str>, Lineage>,
    pub stats: HealthStats,
}

/// The model name without a trailing version: `fraud-v2` -> `fraud`,
/// `recsys@3.1` -> `recsys`, `v1.2.3` -> `` (the seed's services log only a
/// version: all of them are one lineage). A version is `v` and a number, or
/// a dotted number: `resnet-50` and `resnet-101` are different models, not
/// versions of `resnet`. Names without a version suffix are their own
/// lineage.
pub fn version_base(model: &str) -> &str {
    fn is_version(s: &str) -> bool {
        let (v, rest) = match s.strip_prefix(['v', 'V']) {
            Some(r) => (true, r),
            None => (false, s),
        };
        rest.starts_with(|c: char| c.is_ascii_digit())
            && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
            && (v || rest.contains('.'))
    }
    if is_version(model) {
        return "";
    }
    match model.rfind(['-', '_', '@', ':', '/']) {
        Some(i) if is_version(&model[i + 1..]) => &model[..i],
        _ => model,
    }
}

/// What a line contributes to a model's health.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observation<'l, 'a> {
    /// An inference record or an error record: one request.
    pub request: bool,
    pub error: bool,
    pub error_type: Option<&'l str>,
    pub stages: &'l [(std::borrow::Cow<'a, str>, f64)],
}

impl Health {
    pub fn new(cfg: HealthConfig) -> Health {
        Health {
            limits: cfg.limits(),
            cfg,
            models: FxHashMap::default(),
            lineages: FxHashMap::default(),
            stats: HealthStats::default(),
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    pub fn model(&self, name: &str) -> Option<&ModelHealth> {
        self.models.get(name)
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelHealth> {
        self.models.values()
    }

    /// The heap held by every model's health and the lineages: each
    /// model's [`ModelHealth::heap_bytes`] and key, and the tables' slots
    /// (an estimate of hashbrown's: one control byte per slot).
    pub fn heap_bytes(&self) -> usize {
        let models: usize = self
            .models
            .iter()
            .map(|(k, m)| k.len() + m.heap_bytes() - size_of::<ModelHealth>())
            .sum();
        let lineages: usize = self
            .lineages
            .iter()
            .map(|(k, l)| {
                k.len()
                    + vec_bytes(&l.versions)
                    + l.versions
                        .iter()
                        .map(|(v, _)| arc_str_bytes(v.len()))
                        .sum::<usize>()
            })
            .sum();
        self.models.capacity() * (size_of::<(Box<str>, ModelHealth)>() + 1)
            + models
            + self.lineages.capacity() * (size_of::<(Box<str>, Lineage)>() + 1)
            + lineages
    }

    /// The model's state, created (and its deploy detected) on first sight.
    fn entry(&mut self, model: &str, service: Option<&str>, t_ms: i64) -> Option<&mut ModelHealth> {
        if !self.models.contains_key(model) {
            if self.models.len() >= self.cfg.max_models {
                self.stats.models_refused += 1;
                return None;
            }
            let deploy = self.note_version(model, t_ms);
            self.models.insert(
                model.into(),
                ModelHealth {
                    name: model.into(),
                    service: service.map(Into::into),
                    first_seen_ms: t_ms,
                    last_seen_ms: t_ms,
                    panes: Panes::new(t_ms.div_euclid(self.cfg.pane_ms)),
                    requests_total: 0,
                    errors_total: 0,
                    error_types: Vec::new(),
                    other_errors: 0,
                    stages: Vec::new(),
                    deploy,
                    batch: BatchState::default(),
                    error_high: Condition::default(),
                    deploy_errors: Condition::default(),
                    deploy_latency: Vec::new(),
                    p99_high: Vec::new(),
                },
            );
        }
        let m = self.models.get_mut(model).expect("inserted above");
        m.last_seen_ms = m.last_seen_ms.max(t_ms);
        if m.service.is_none() {
            // Batch and feedback lines may lack the envelope's service.
            m.service = service.map(Into::into);
        }
        Some(m)
    }

    /// Records a model's version in its lineage; if an earlier version is
    /// live, freezes it as the new version's reference: the most recent one
    /// with enough requests to compare with, else the most recent live one.
    fn note_version(&mut self, model: &str, t_ms: i64) -> Option<DeployRef> {
        let key: Box<str> = version_base(model).into();
        if !self.lineages.contains_key(&key) && self.lineages.len() >= self.cfg.max_lineages {
            self.stats.lineages_refused += 1;
            return None;
        }
        let max_versions = self.cfg.max_versions;
        let lineage = self.lineages.entry(key).or_default();
        if lineage.versions.iter().any(|(v, _)| **v == *model) {
            // Seen before (and expired since): not a new deploy.
            return None;
        }
        // As of its newest line: a version that stopped a while ago is
        // still what the new one replaces.
        let live: Vec<(&ModelHealth, u64, u64)> = lineage
            .versions
            .iter()
            .rev()
            .filter_map(|(v, _)| self.models.get(v.as_ref()))
            .map(|p| {
                let (r, e) = p.panes.counts_as_previous();
                (p, r, e)
            })
            .collect();
        let previous = live
            .iter()
            .find(|(_, r, _)| *r >= self.cfg.deploy.min_requests)
            .or(live.first())
            .map(|(p, r, e)| {
                // Allocated to its size: it counts in `model_bytes`.
                let mut latency = Vec::with_capacity(p.stages.len());
                latency.extend((0..p.stages.len()).filter_map(|s| {
                    let (v, n) = p.panes.latency_as_previous(s, &self.limits)?;
                    Some((p.stages[s].clone(), v, n))
                }));
                (p.name.clone(), *r, *e, latency)
            });
        push_bounded(
            &mut lineage.versions,
            (model.into(), t_ms),
            max_versions + 1,
        );
        if lineage.versions.len() > max_versions {
            lineage.versions.remove(0);
        }
        let (previous, requests, errors, latency) = previous?;
        Some(DeployRef {
            previous,
            at_ms: t_ms,
            previous_requests: requests,
            previous_errors: errors,
            previous_latency: latency,
        })
    }

    /// Counts one line of `model` at event time `t_ms`.
    pub fn observe(
        &mut self,
        model: &str,
        service: Option<&str>,
        t_ms: i64,
        o: Observation<'_, '_>,
    ) {
        if !self.cfg.enabled {
            return;
        }
        let limits = self.limits;
        let Some(m) = self.entry(model, service, t_ms) else {
            return;
        };
        let (late, refused) = observe_model(m, &limits, t_ms, o);
        self.stats.late += u64::from(late);
        self.stats.stages_refused += refused;
    }

    /// Records a batch-statistics line.
    pub fn observe_batch(
        &mut self,
        model: &str,
        service: Option<&str>,
        t_ms: i64,
        stats: &[(std::borrow::Cow<'_, str>, f64)],
        avg_confidence: Option<f64>,
    ) {
        if !self.cfg.enabled {
            return;
        }
        let max = self.cfg.max_batch_stats;
        let mut refused = 0;
        let Some(m) = self.entry(model, service, t_ms) else {
            return;
        };
        let b = &mut m.batch;
        if t_ms < b.last_at_ms {
            // Gauges show the latest batch; an older one arriving late is
            // counted but does not overwrite it.
            b.batches += 1;
            return;
        }
        b.batches += 1;
        b.last_at_ms = t_ms;
        if avg_confidence.is_some() {
            b.avg_confidence = avg_confidence;
        }
        for (name, v) in stats {
            match b.stats.iter().position(|(n, _)| **n == **name) {
                Some(i) => b.stats[i].1 = *v,
                None if b.stats.len() < max => {
                    push_bounded(&mut b.stats, (name.as_ref().into(), *v), max);
                }
                None => refused += 1,
            }
        }
        self.stats.batch_stats_refused += refused;
    }

    /// Forgets models that sent nothing for `idle_ms`, and lineages with no
    /// live version. A firing condition of a forgotten model resolves (the
    /// returned transitions): nothing would ever resolve it otherwise.
    pub fn expire_idle(&mut self, now_ms: i64, idle_ms: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        let gone: Vec<Box<str>> = self
            .models
            .iter()
            .filter(|(_, m)| now_ms - m.last_seen_ms > idle_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(mut m) = self.models.remove(&k) {
                let span = (now_ms, now_ms);
                let fired: Vec<(&'static str, String, &'static str)> = m
                    .conditions_mut()
                    .into_iter()
                    .filter(|(c, ..)| c.state == State::Firing)
                    .map(|(c, name, feature, metric)| {
                        c.state = State::Resolved;
                        (name, feature, metric)
                    })
                    .collect();
                for (name, feature, metric) in fired {
                    {
                        let mut t = transition(
                            name,
                            &m,
                            &feature,
                            metric,
                            (State::Firing, State::Resolved),
                            Severity::Warning,
                            0.0,
                            0.0,
                            0,
                            now_ms,
                            span,
                        );
                        t.details.insert(
                            "summary",
                            format!("{} went quiet and was forgotten", m.name),
                        );
                        out.push(t);
                    }
                }
            }
        }
        let models = &self.models;
        self.lineages.retain(|_, l| {
            l.versions
                .iter()
                .any(|(v, _)| models.contains_key(v.as_ref()))
        });
        out
    }

    /// Evaluates every model at `now_ms`: reports, and transitions of the
    /// conditions, in a stable order.
    pub fn evaluate(
        &mut self,
        now_ms: i64,
        detect: &DetectConfig,
    ) -> (Vec<HealthReport>, Vec<Transition>) {
        let mut reports = Vec::new();
        let mut out = Vec::new();
        if !self.cfg.enabled {
            return (reports, out);
        }
        let mut names: Vec<Box<str>> = self.models.keys().cloned().collect();
        names.sort();
        for name in names {
            let m = self.models.get_mut(&name).expect("listed");
            reports.push(evaluate_model(
                (&self.cfg, &self.limits),
                m,
                now_ms,
                detect,
                &mut out,
            ));
        }
        (reports, out)
    }

    /// Every live version: (service, model, first seen ms).
    pub fn versions(&self) -> Vec<(String, String, i64)> {
        let mut v: Vec<(String, String, i64)> = self
            .lineages
            .values()
            .flat_map(|l| {
                l.versions.iter().filter_map(|(m, t)| {
                    let h = self.models.get(m.as_ref())?;
                    let svc = h.service.as_deref().unwrap_or("");
                    Some((svc.to_string(), m.to_string(), *t))
                })
            })
            .collect();
        v.sort();
        v
    }
}

/// What [`observe_model`] and an evaluation need of the config, copied out
/// of it so the model's state can be borrowed at the same time.
#[derive(Debug, Clone, Copy)]
struct Limits {
    pane_ms: i64,
    /// Panes of the window, and of the whole history (the window and the
    /// reference windows before it).
    panes: usize,
    history: usize,
    /// Panes of the window per pane of latency, and the panes of latency
    /// held: enough to cover the window, and the one it straddles.
    latency_group: i64,
    latency_panes: usize,
    max_types: usize,
    max_stages: usize,
    buckets: Buckets,
    deploy_quantile: f64,
}

impl HealthConfig {
    fn limits(&self) -> Limits {
        let panes = self.panes.max(1);
        let group = panes.div_ceil(self.latency_panes.max(1));
        Limits {
            latency_group: group as i64,
            latency_panes: panes.div_ceil(group) + usize::from(group > 1),
            pane_ms: self.pane_ms,
            panes,
            history: panes * (1 + self.reference_windows),
            max_types: self.max_error_types,
            max_stages: self.max_stages,
            buckets: Buckets::new(self.sketch_error),
            deploy_quantile: self.deploy_latency_quantile,
        }
    }

    /// The most heap one model's health state can hold, in bytes: what
    /// [`ModelHealth::heap_bytes`] can reach under any input, given names
    /// of at most [`MAX_NAME_LEN`] bytes (the decoder drops longer ones).
    /// With P panes per window, L panes of latency (`latency_panes`, and
    /// one more when they group several panes), H = P (1 +
    /// `reference_windows`) panes of history, S = `max_stages`, K buckets per stage (set by
    /// `sketch_relative_error`, see [`LATENCY_CEILING_MS`]) and N the heap
    /// of a name, the terms are:
    ///
    /// - the state itself, its name and its service: 2 N;
    /// - requests and errors: one pane record per pane of the history, H;
    /// - latency per pane of latency: a record, and per stage a
    ///   histogram header, a deploy count and at most K (bucket, count)
    ///   entries: L (1 + S (2 + K)) (a bucket's count passing 2^32 values
    ///   in one pane would take a second entry: not reachable);
    /// - per stage: its name, the window's running total per bucket (at
    ///   most K), its deploy counts, its quantile as a previous version and
    ///   its two conditions: S (N + K);
    /// - the previous version's name and per stage its quantile (deploy
    ///   reference): N + S N;
    /// - error types and batch statistics, each a name and a count:
    ///   (`max_error_types` + `max_batch_stats`) N.
    ///
    /// Every buffer grows by doubling but never past its cap, so capacities
    /// stay within the counts above. Hash-table slots of the model maps are
    /// counted by [`Health::heap_bytes`], not here.
    pub fn model_bytes(&self) -> usize {
        let l = self.limits();
        let (p, h, s) = (l.latency_panes, l.history, self.max_stages);
        let k = l.buckets.len as usize;
        let name = arc_str_bytes(MAX_NAME_LEN);
        let named = |entry: usize| entry + name;
        let per_pane = size_of::<PaneLatency>()
            + s * (size_of::<PaneHistogram>()
                + size_of::<(u64, u64)>()
                + k * size_of::<(u32, u32)>());
        let per_stage = named(size_of::<Arc<str>>())
            + size_of::<Totals>()
            + k * size_of::<u64>()
            + size_of::<(u64, u64)>()
            + size_of::<Option<(f64, u64)>>()
            + 2 * size_of::<Condition>();
        size_of::<ModelHealth>()
            + 2 * name
            + h * size_of::<PaneCounts>()
            + p * per_pane
            + s * per_stage
            + name
            + s * named(size_of::<(Arc<str>, f64, u64)>())
            + self.max_error_types * named(size_of::<(Arc<str>, u64)>())
            + self.max_batch_stats * named(size_of::<(Arc<str>, f64)>())
    }
}

/// Counts one line into a model's state; returns (late, stages refused).
/// A line older than the history is late; a stage value outside the
/// window is not kept (no evaluation will read it again).
fn observe_model(
    m: &mut ModelHealth,
    l: &Limits,
    t_ms: i64,
    o: Observation<'_, '_>,
) -> (bool, u64) {
    let id = t_ms.div_euclid(l.pane_ms);
    m.panes.advance(id, l);
    if id < m.panes.history_lo(l) {
        return (true, 0);
    }
    m.panes.note_line(id);
    if o.request || o.error {
        m.panes.count(id, o.request, o.error, l);
    }
    if o.request {
        m.requests_total += 1;
    }
    if o.error {
        m.errors_total += 1;
        let ty = o.error_type.unwrap_or("unknown");
        match m.error_types.iter().position(|(t, _)| **t == *ty) {
            Some(i) => m.error_types[i].1 += 1,
            None if m.error_types.len() < l.max_types => {
                push_bounded(&mut m.error_types, (ty.into(), 1), l.max_types);
            }
            None => m.other_errors += 1,
        }
    }
    let current = id >= m.panes.window_lo(l);
    let mut stages_refused = 0;
    for (name, ms) in o.stages {
        let Some(s) = stage_index(m, name, l) else {
            stages_refused += 1;
            continue;
        };
        if !current {
            continue;
        }
        let slower = m.deploy.as_ref().and_then(|d| {
            let (_, q, _) = d.previous_latency.iter().find(|(st, ..)| **st == **name)?;
            Some(*ms > *q)
        });
        let stages = (s, m.stages.len());
        m.panes
            .add_latency(id, stages, l.buckets.index(*ms), slower, l);
    }
    (false, stages_refused)
}

/// The index of stage `name`, added if there is room for it.
fn stage_index(m: &mut ModelHealth, name: &str, l: &Limits) -> Option<usize> {
    if let Some(s) = m.stages.iter().position(|x| **x == *name) {
        return Some(s);
    }
    if m.stages.len() >= l.max_stages {
        return None;
    }
    let max = l.max_stages;
    push_bounded(&mut m.stages, name.into(), max);
    push_bounded(&mut m.panes.totals, Totals::default(), max);
    push_bounded(&mut m.panes.slow, (0, 0), max);
    push_bounded(&mut m.deploy_latency, Condition::default(), max);
    push_bounded(&mut m.p99_high, Condition::default(), max);
    Some(m.stages.len() - 1)
}

/// One stage's window quantiles.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_limit_ms: Option<f64>,
    /// After a deploy: the previous version's quantile and the share of this
    /// version's values above it, with the test's p-value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_quantile_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_p_value: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub previous: String,
    pub at_ms: i64,
    pub previous_requests: u64,
    pub previous_errors: u64,
    pub previous_error_rate: Option<f64>,
    pub p_value: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    pub batches: u64,
    pub last_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg_confidence: Option<f64>,
    pub stats: Vec<(String, f64)>,
    /// `<feature>_mean` statistics against the baseline's mean, in its
    /// standard deviations (filled in by the engine, which has baselines).
    pub shifts: Vec<(String, f64)>,
}

/// One model's health as of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub first_seen_ms: i64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub reference_requests: u64,
    pub reference_errors: u64,
    pub reference_error_rate: Option<f64>,
    /// One-sided p-value of the window's rate against the reference.
    pub error_rate_p_value: Option<f64>,
    pub requests_total: u64,
    pub errors_total: u64,
    /// Cumulative errors by type (`other` last when any).
    pub errors_by_type: Vec<(String, u64)>,
    pub latency: Vec<StageReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchReport>,
    /// (alertname, feature, state) of every condition.
    pub conditions: Vec<(&'static str, String, State)>,
}

fn rate(x: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| x as f64 / n as f64)
}

/// Where `x` of `n` stands against `x0` of `n0` under `rule`; `None` when
/// there is too little data to say. Returns the p-value too.
fn error_level(
    rule: &ErrorRule,
    hysteresis: f64,
    x0: u64,
    n0: u64,
    x: u64,
    n: u64,
) -> (Option<ConditionLevel>, Option<f64>) {
    if n < rule.min_requests {
        return (None, None);
    }
    let r = x as f64 / n as f64;
    let max = rule.max_rate.map(|m| limit_level(r, m, hysteresis));
    if n0 < rule.min_requests {
        return (max, None);
    }
    let p = two_proportion_test(x0, n0, x, n, Tail::Greater).map(|(_, p)| p);
    let r0 = x0 as f64 / n0 as f64;
    // The effect is the rate over the reference's; a reference of zero
    // errors makes any errors an infinite ratio, and `min_errors` is then
    // what keeps one error from paging.
    let ratio = if r0 > 0.0 {
        r / r0
    } else if x > 0 {
        f64::INFINITY
    } else {
        0.0
    };
    let mut level = p_level(p, rule.alpha, ratio, rule.min_ratio, hysteresis);
    if level == ConditionLevel::Breach && x < rule.min_errors {
        level = ConditionLevel::Hold;
    }
    // Either rule breaching breaches; both must clear to clear.
    let level = match (level, max) {
        (ConditionLevel::Breach, _) | (_, Some(ConditionLevel::Breach)) => ConditionLevel::Breach,
        (ConditionLevel::Clear, None | Some(ConditionLevel::Clear)) => ConditionLevel::Clear,
        _ => ConditionLevel::Hold,
    };
    (Some(level), p)
}

#[allow(clippy::too_many_arguments)]
fn transition(
    alertname: &'static str,
    m: &ModelHealth,
    feature: &str,
    metric: &'static str,
    (from, to): (State, State),
    severity: Severity,
    value: f64,
    threshold: f64,
    samples: u64,
    now_ms: i64,
    span: (i64, i64),
) -> Transition {
    let mut labels = BTreeMap::new();
    if let Some(s) = &m.service {
        labels.insert("service", s.to_string());
    }
    Transition {
        alertname,
        model: m.name.to_string(),
        arm: None,
        feature: feature.to_owned(),
        distribution: None,
        metric,
        higher_is_worse: true,
        from,
        to,
        severity: (to == State::Firing).then_some(severity),
        value,
        threshold,
        samples,
        at_ms: now_ms,
        baseline_version: String::new(),
        window_start_ms: Some(span.0),
        window_end_ms: Some(span.1),
        labels,
        details: BTreeMap::new(),
    }
}

/// Drops a model's deploy reference; returns the deploy conditions that
/// were firing (now resolved).
fn end_deploy(m: &mut ModelHealth) -> Vec<(&'static str, String, &'static str)> {
    let mut fired = Vec::new();
    if m.deploy_errors.state == State::Firing {
        fired.push(("ErrorSpikeAfterDeploy", String::new(), "error_rate"));
    }
    for (c, st) in m.deploy_latency.iter().zip(&m.stages) {
        if c.state == State::Firing {
            fired.push(("ErrorSpikeAfterDeploy", st.to_string(), "slow_share"));
        }
    }
    m.deploy = None;
    m.deploy_errors = Condition::default();
    for c in &mut m.deploy_latency {
        *c = Condition::default();
    }
    fired
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// The current window and the reference before it, as one evaluation sees
/// them.
struct WindowCounts {
    /// The current window's bounds in ms, for the transitions.
    span: (i64, i64),
    /// Requests and errors in the current window.
    n: u64,
    x: u64,
    /// Requests and errors in the reference windows before it.
    n0: u64,
    x0: u64,
    /// Per stage, in the current window: values compared with the previous
    /// version's quantile since a deploy, and how many were slower.
    slow: Vec<(u64, u64)>,
}

impl WindowCounts {
    /// The model's window at `now_ms`: its running sums, once its panes
    /// are moved up to now. A clock that stepped back sees the window
    /// ending at the model's newest pane.
    fn at(l: &Limits, m: &mut ModelHealth, now_ms: i64) -> WindowCounts {
        m.panes.advance_to_evaluate(now_ms.div_euclid(l.pane_ms), l);
        let p = &m.panes;
        WindowCounts {
            span: (p.window_lo(l) * l.pane_ms, (p.head + 1) * l.pane_ms),
            n: p.n,
            x: p.x,
            n0: p.n0,
            x0: p.x0,
            slow: p.slow.clone(),
        }
    }
}

/// One model's evaluation at `now_ms`: what its conditions are judged by,
/// and where their transitions go.
struct Judge<'a> {
    cfg: &'a HealthConfig,
    detect: &'a DetectConfig,
    now_ms: i64,
    out: &'a mut Vec<Transition>,
}

fn evaluate_model(
    (cfg, l): (&HealthConfig, &Limits),
    m: &mut ModelHealth,
    now_ms: i64,
    detect: &DetectConfig,
    out: &mut Vec<Transition>,
) -> HealthReport {
    let w = WindowCounts::at(l, m, now_ms);
    let mut judge = Judge {
        cfg,
        detect,
        now_ms,
        out,
    };
    let p_value = judge.error_rate_high(m, &w);
    judge.end_expired_deploy(m, &w);
    let deploy = judge.deploy_error_spike(m, &w);
    let mut latency = Vec::with_capacity(m.stages.len());
    for s in 0..m.stages.len() {
        latency.push(judge.stage_latency(m, s, &l.buckets, &w));
    }
    health_report(cfg, m, &w, p_value, latency, deploy)
}

impl Judge<'_> {
    /// `ErrorRateHigh`: the window's error rate against the model's own
    /// recent past. Returns the test's p-value.
    fn error_rate_high(&mut self, m: &mut ModelHealth, w: &WindowCounts) -> Option<f64> {
        let (cfg, n, x, n0, x0) = (self.cfg, w.n, w.x, w.n0, w.x0);
        let (mut breach, p_value) = error_level(&cfg.errors, self.detect.hysteresis, x0, n0, x, n);
        if n == 0 {
            // No traffic: nothing is failing. Without this a firing condition
            // of a model that stopped (a rollback) would never resolve.
            breach = Some(ConditionLevel::Clear);
        }
        let Some(step) = m.error_high.step(breach, self.detect) else {
            return p_value;
        };
        let threshold = cfg
            .errors
            .max_rate
            .unwrap_or(cfg.errors.min_ratio * rate(x0, n0).unwrap_or(0.0));
        let mut t = transition(
            "ErrorRateHigh",
            m,
            "",
            "error_rate",
            step,
            Severity::Warning,
            rate(x, n).unwrap_or(0.0),
            threshold,
            n,
            self.now_ms,
            w.span,
        );
        t.details.insert(
            "summary",
            format!(
                "{}: error rate {} over the window ({x} of {n} requests) against {} before it ({x0} of {n0})",
                m.name,
                pct(rate(x, n).unwrap_or(0.0)),
                rate(x0, n0).map_or("no data".into(), pct)
            ),
        );
        if let Some(p) = p_value {
            t.details.insert("p_value", format!("{p:.3e}"));
        }
        self.out.push(t);
        p_value
    }

    /// Ends a version's comparison with the one before it once
    /// `deploy_horizon` has passed, resolving what it had fired.
    fn end_expired_deploy(&mut self, m: &mut ModelHealth, w: &WindowCounts) {
        let expired = m
            .deploy
            .as_ref()
            .is_some_and(|d| self.now_ms - d.at_ms > self.cfg.deploy_horizon_ms);
        if !expired {
            return;
        }
        for (name, feature, metric) in end_deploy(m) {
            let mut t = transition(
                name,
                m,
                &feature,
                metric,
                (State::Firing, State::Resolved),
                Severity::Critical,
                0.0,
                0.0,
                w.n,
                self.now_ms,
                w.span,
            );
            t.details.insert(
                "summary",
                format!(
                    "{}: the deploy comparison ended (health.deploy_horizon)",
                    m.name
                ),
            );
            self.out.push(t);
        }
    }

    /// `ErrorSpikeAfterDeploy`, `signal="error_rate"`: a new version's error
    /// rate against the previous version's, frozen at the deploy.
    fn deploy_error_spike(
        &mut self,
        m: &mut ModelHealth,
        w: &WindowCounts,
    ) -> Option<DeployReport> {
        let d = m.deploy.clone()?;
        let (cfg, n, x) = (self.cfg, w.n, w.x);
        let (mut breach, p) = error_level(
            &cfg.deploy,
            self.detect.hysteresis,
            d.previous_errors,
            d.previous_requests,
            x,
            n,
        );
        if n == 0 {
            breach = Some(ConditionLevel::Clear);
        }
        if let Some(step) = m.deploy_errors.step(breach, self.detect) {
            let r0 = rate(d.previous_errors, d.previous_requests).unwrap_or(0.0);
            let mut t = transition(
                "ErrorSpikeAfterDeploy",
                m,
                "",
                "error_rate",
                step,
                Severity::Critical,
                rate(x, n).unwrap_or(0.0),
                cfg.deploy.min_ratio * r0,
                n,
                self.now_ms,
                w.span,
            );
            t.labels.insert("previous_model", d.previous.to_string());
            t.labels.insert("signal", "error_rate".into());
            t.details.insert(
                "summary",
                format!(
                    "{} (first seen {}) fails {} of requests ({x} of {n}); the previous version {} failed {} ({} of {})",
                    m.name,
                    crate::engine::time::rfc3339(d.at_ms),
                    pct(rate(x, n).unwrap_or(0.0)),
                    d.previous,
                    pct(r0),
                    d.previous_errors,
                    d.previous_requests
                ),
            );
            if let Some(p) = p {
                t.details.insert("p_value", format!("{p:.3e}"));
            }
            self.out.push(t);
        }
        Some(DeployReport {
            previous: d.previous.to_string(),
            at_ms: d.at_ms,
            previous_requests: d.previous_requests,
            previous_errors: d.previous_errors,
            previous_error_rate: rate(d.previous_errors, d.previous_requests),
            p_value: p,
        })
    }

    /// A stage's window quantiles, judged against its p99 limit and, after a
    /// deploy, against the previous version.
    fn stage_latency(
        &mut self,
        m: &mut ModelHealth,
        s: usize,
        buckets: &Buckets,
        w: &WindowCounts,
    ) -> StageReport {
        let totals = &m.panes.totals[s];
        let [p50, p90, p99] = totals.quantiles([0.5, 0.9, 0.99], buckets);
        let mut report = StageReport {
            stage: m.stages[s].to_string(),
            samples: totals.n,
            p50_ms: p50,
            p90_ms: p90,
            p99_ms: p99,
            p99_limit_ms: self.cfg.p99_limit_ms.get(m.stages[s].as_ref()).copied(),
            previous_quantile_ms: None,
            slow_share: None,
            slow_p_value: None,
        };
        if let Some(limit) = report.p99_limit_ms {
            self.latency_p99_high(m, s, &report, limit, w);
        }
        self.deploy_latency(m, s, w, &mut report);
        report
    }

    /// `LatencyP99High`: the stage's window p99 against its limit.
    fn latency_p99_high(
        &mut self,
        m: &mut ModelHealth,
        s: usize,
        r: &StageReport,
        limit: f64,
        w: &WindowCounts,
    ) {
        let (cfg, detect) = (self.cfg, self.detect);
        let p99 = r.p99_ms.unwrap_or(0.0);
        let breach = if r.samples == 0 {
            Some(ConditionLevel::Clear)
        } else {
            (r.samples >= detect.min_samples.min(cfg.errors.min_requests))
                .then(|| limit_level(p99, limit, detect.hysteresis))
        };
        let Some(step) = m.p99_high[s].step(breach, detect) else {
            return;
        };
        let stage = &r.stage;
        let mut t = transition(
            "LatencyP99High",
            m,
            stage,
            "p99_ms",
            step,
            Severity::Warning,
            p99,
            limit,
            r.samples,
            self.now_ms,
            w.span,
        );
        t.details.insert(
            "summary",
            format!(
                "{}: {stage} p99 is {p99:.1} ms over the window, above the {limit:.1} ms limit",
                m.name,
            ),
        );
        self.out.push(t);
    }

    /// `ErrorSpikeAfterDeploy`, `signal="latency"`: the share of a new
    /// version's values slower than the previous version's quantile, against
    /// the share above it the previous version had. Fills in the report's
    /// deploy fields.
    fn deploy_latency(
        &mut self,
        m: &mut ModelHealth,
        s: usize,
        w: &WindowCounts,
        report: &mut StageReport,
    ) {
        let (cfg, detect) = (self.cfg, self.detect);
        let q = cfg.deploy_latency_quantile;
        let stage = m.stages[s].clone();
        let Some(d) = &m.deploy else { return };
        let Some((_, pq, pn)) = d.previous_latency.iter().find(|(st, _, _)| **st == *stage) else {
            return;
        };
        report.previous_quantile_ms = Some(*pq);
        let (vn, vslow) = w.slow.get(s).copied().unwrap_or((0, 0));
        let slow_share = rate(vslow, vn);
        report.slow_share = slow_share;
        // The previous version had (1 - q) of its values above its own
        // q-quantile, by definition.
        let x_prev = ((1.0 - q) * *pn as f64).round() as u64;
        let breach = if vn == 0 {
            Some(ConditionLevel::Clear)
        } else if vn < cfg.deploy.min_requests || *pn < cfg.deploy.min_requests {
            None
        } else {
            let p = two_proportion_test(x_prev, *pn, vslow, vn, Tail::Greater).map(|(_, p)| p);
            report.slow_p_value = p;
            Some(p_level(
                p,
                cfg.deploy.alpha,
                slow_share.unwrap_or(0.0) / (1.0 - q),
                cfg.deploy_latency_min_ratio,
                detect.hysteresis,
            ))
        };
        let Some(step) = m.deploy_latency[s].step(breach, detect) else {
            return;
        };
        let mut t = transition(
            "ErrorSpikeAfterDeploy",
            m,
            &stage,
            "slow_share",
            step,
            Severity::Critical,
            slow_share.unwrap_or(0.0),
            cfg.deploy_latency_min_ratio * (1.0 - q),
            vn,
            self.now_ms,
            w.span,
        );
        t.labels.insert("previous_model", d.previous.to_string());
        t.labels.insert("signal", "latency".into());
        t.details.insert(
            "summary",
            format!(
                "{}: {} of its {stage} values are slower than {:.1} ms, the p{} of the previous version {} (which had {})",
                m.name,
                pct(slow_share.unwrap_or(0.0)),
                pq,
                (q * 100.0).round(),
                d.previous,
                pct(1.0 - q)
            ),
        );
        if let Some(p) = report.slow_p_value {
            t.details.insert("p_value", format!("{p:.3e}"));
        }
        self.out.push(t);
    }
}

/// The model's report: the window's counts, every condition's state, the
/// errors by type and the latest batch statistics.
fn health_report(
    cfg: &HealthConfig,
    m: &ModelHealth,
    w: &WindowCounts,
    error_rate_p_value: Option<f64>,
    latency: Vec<StageReport>,
    deploy: Option<DeployReport>,
) -> HealthReport {
    let mut errors_by_type: Vec<(String, u64)> = m
        .error_types
        .iter()
        .map(|(t, c)| (t.to_string(), *c))
        .collect();
    if m.other_errors > 0 {
        errors_by_type.push(("other".into(), m.other_errors));
    }
    HealthReport {
        model: m.name.to_string(),
        service: m.service.as_ref().map(|s| s.to_string()),
        first_seen_ms: m.first_seen_ms,
        requests: w.n,
        errors: w.x,
        error_rate: rate(w.x, w.n),
        reference_requests: w.n0,
        reference_errors: w.x0,
        reference_error_rate: rate(w.x0, w.n0),
        error_rate_p_value,
        requests_total: m.requests_total,
        errors_total: m.errors_total,
        errors_by_type,
        latency,
        deploy,
        batch: (m.batch.batches > 0).then(|| BatchReport {
            batches: m.batch.batches,
            last_at_ms: m.batch.last_at_ms,
            avg_confidence: m.batch.avg_confidence,
            stats: m
                .batch
                .stats
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            shifts: Vec::new(),
        }),
        conditions: condition_states(cfg, m),
    }
}

/// (alertname, feature, state) of every condition that applies to the
/// model now: the deploy ones only during a deploy comparison, the p99 one
/// only for stages with a limit.
fn condition_states(cfg: &HealthConfig, m: &ModelHealth) -> Vec<(&'static str, String, State)> {
    let mut conditions = Vec::new();
    let mut note = |name: &'static str, feature: &str, c: &Condition| {
        conditions.push((name, feature.to_owned(), c.state));
    };
    note("ErrorRateHigh", "", &m.error_high);
    if m.deploy.is_some() {
        note("ErrorSpikeAfterDeploy", "", &m.deploy_errors);
    }
    for (s, stage) in m.stages.iter().enumerate() {
        if m.deploy
            .as_ref()
            .is_some_and(|d| d.previous_latency.iter().any(|(x, _, _)| x == stage))
        {
            note("ErrorSpikeAfterDeploy", stage, &m.deploy_latency[s]);
        }
        if cfg.p99_limit_ms.contains_key(stage.as_ref()) {
            note("LatencyP99High", stage, &m.p99_high[s]);
        }
    }
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    const T0: i64 = 1_800_000_000_000;

    fn detect() -> DetectConfig {
        DetectConfig {
            for_evaluations: 1,
            resolve_after: 1,
            ..DetectConfig::default()
        }
    }

    fn request(h: &mut Health, model: &str, t: i64, error: bool) {
        h.observe(
            model,
            Some("svc"),
            t,
            Observation {
                request: true,
                error,
                error_type: error.then_some("InputValidationError"),
                stages: &[],
            },
        );
    }

    fn fired<'a>(ts: &'a [Transition], name: &str) -> Vec<&'a Transition> {
        ts.iter()
            .filter(|t| t.alertname == name && t.to == State::Firing)
            .collect()
    }

    #[test]
    fn version_suffixes_are_stripped_to_the_lineage() {
        assert_eq!(version_base("fraud-v2"), "fraud");
        assert_eq!(version_base("recsys@3.1"), "recsys");
        assert_eq!(version_base("churn_model_v12"), "churn_model");
        assert_eq!(version_base("v1.2.3"), "");
        assert_eq!(version_base("1.4"), "");
        assert_eq!(version_base("model_A"), "model_A");
        assert_eq!(version_base("vision"), "vision");
        // Sizes are not versions.
        assert_eq!(version_base("resnet-50"), "resnet-50");
        assert_eq!(version_base("resnet-101"), "resnet-101");
        assert_eq!(version_base("gpt-4"), "gpt-4");
    }

    /// A rolled-back version's firing alert resolves once its traffic stops,
    /// and a forgotten model resolves what still fired.
    #[test]
    fn conditions_resolve_when_traffic_stops_or_the_model_is_forgotten() {
        let mut h = Health::new(HealthConfig::default());
        for i in 0..5000 {
            request(&mut h, "fraud-v1", T0 + i * 100, i % 100 == 0);
        }
        let t1 = T0 + 500_000;
        for i in 0..3000 {
            request(&mut h, "fraud-v2", t1 + i * 100, i % 10 == 0);
        }
        let d = detect();
        let (_, ts) = h.evaluate(t1 + 300_000, &d);
        assert_eq!(fired(&ts, "ErrorSpikeAfterDeploy").len(), 1);
        // Rolled back: fraud-v2 gets nothing for longer than a window.
        let (_, ts) = h.evaluate(t1 + 300_000 + 700_000, &d);
        assert!(
            ts.iter()
                .any(|t| t.model == "fraud-v2" && t.to == State::Resolved),
            "{ts:?}"
        );
        // Fire again, then forget the model while firing.
        for i in 0..3000 {
            request(&mut h, "fraud-v2", t1 + 1_000_000 + i * 100, i % 10 == 0);
        }
        let (_, ts) = h.evaluate(t1 + 1_300_000, &d);
        assert_eq!(fired(&ts, "ErrorSpikeAfterDeploy").len(), 1);
        let gone = h.expire_idle(t1 + 10_000_000, 3_600_000);
        assert!(gone.iter().any(|t| t.model == "fraud-v2"
            && t.alertname == "ErrorSpikeAfterDeploy"
            && t.to == State::Resolved));
        assert!(h.model("fraud-v2").is_none());
        assert!(h.versions().is_empty());
    }

    /// A version that fails 10% of requests after one that failed 1% raises
    /// ErrorSpikeAfterDeploy naming both; the same version at 1% does not.
    #[test]
    fn a_bad_deploy_raises_error_spike_after_deploy() {
        for (bad_every, expect) in [(10, true), (100, false)] {
            let mut h = Health::new(HealthConfig::default());
            for i in 0..5000 {
                request(&mut h, "fraud-v1", T0 + i * 100, i % 100 == 0);
            }
            let t1 = T0 + 500_000;
            for i in 0..3000 {
                request(&mut h, "fraud-v2", t1 + i * 100, i % bad_every == 0);
            }
            let (reports, ts) = h.evaluate(t1 + 300_000, &detect());
            let spikes = fired(&ts, "ErrorSpikeAfterDeploy");
            assert_eq!(!spikes.is_empty(), expect, "{ts:?}");
            let r = reports.iter().find(|r| r.model == "fraud-v2").unwrap();
            let d = r.deploy.as_ref().unwrap();
            assert_eq!(d.previous, "fraud-v1");
            assert_eq!(d.previous_requests, 5000);
            assert_eq!(d.previous_errors, 50);
            if expect {
                let t = spikes[0];
                assert_eq!(t.model, "fraud-v2");
                assert_eq!(t.labels["previous_model"], "fraud-v1");
                assert_eq!(t.labels["signal"], "error_rate");
                assert_eq!(t.severity, Some(Severity::Critical));
                assert!(t.details["summary"].contains("fraud-v1"));
            }
            // The first version of a lineage is no deploy.
            assert!(reports
                .iter()
                .find(|r| r.model == "fraud-v1")
                .unwrap()
                .deploy
                .is_none());
        }
    }

    /// Error rate up 5x against the model's own previous hour fires
    /// ErrorRateHigh, and it resolves once the window is clean again.
    #[test]
    fn error_rate_high_fires_against_its_own_past_and_resolves() {
        let mut h = Health::new(HealthConfig::default());
        let d = detect();
        // An hour at 1%.
        for i in 0..36_000 {
            request(&mut h, "m", T0 + i * 100, i % 100 == 0);
        }
        let (_, ts) = h.evaluate(T0 + 3_600_000 - 1, &d);
        assert!(fired(&ts, "ErrorRateHigh").is_empty(), "{ts:?}");
        // Ten minutes at 5%.
        let t1 = T0 + 3_600_000;
        for i in 0..6000 {
            request(&mut h, "m", t1 + i * 100, i % 20 == 0);
        }
        let (r, ts) = h.evaluate(t1 + 600_000 - 1, &d);
        assert_eq!(fired(&ts, "ErrorRateHigh").len(), 1, "{ts:?}");
        let m = &r[0];
        assert_eq!(m.requests, 6000);
        assert_eq!(m.errors, 300);
        assert!(m.error_rate_p_value.unwrap() < 1e-10);
        assert_eq!(
            m.errors_by_type,
            vec![("InputValidationError".into(), 360 + 300)]
        );
        // Ten clean minutes later: resolved.
        let t2 = t1 + 600_000;
        for i in 0..6000 {
            request(&mut h, "m", t2 + i * 100, i % 100 == 0);
        }
        let (_, ts) = h.evaluate(t2 + 600_000 - 1, &d);
        assert!(
            ts.iter()
                .any(|t| t.alertname == "ErrorRateHigh" && t.to == State::Resolved),
            "{ts:?}"
        );
    }

    fn timing(h: &mut Health, model: &str, t: i64, ms: f64) {
        let stages = [(Cow::Borrowed("inference_ms"), ms)];
        h.observe(
            model,
            Some("svc"),
            t,
            Observation {
                stages: &stages,
                ..Observation::default()
            },
        );
    }

    /// Latency panes that group panes of the window cover the window and at
    /// most one latency pane more, never less, as the window slides.
    #[test]
    fn grouped_latency_panes_cover_the_window_and_at_most_one_more() {
        let cfg = HealthConfig {
            latency_panes: 5,
            ..HealthConfig::default()
        };
        let (pane_ms, panes) = (cfg.pane_ms, cfg.panes as i64);
        let group = panes / 5;
        let mut h = Health::new(cfg);
        for pane in 0..3 * panes {
            for i in 0..10 {
                timing(&mut h, "m", T0 + pane * pane_ms + i, 5.0);
            }
            let (r, _) = h.evaluate(T0 + (pane + 1) * pane_ms - 1, &detect());
            let seen = r[0].latency[0].samples as i64;
            let in_window = 10 * (pane + 1).min(panes);
            assert!(seen >= in_window, "pane {pane}: {seen} < {in_window}");
            assert!(seen <= in_window + 10 * group, "pane {pane}: {seen}");
        }
    }

    /// Quantiles of a known distribution (1..=1000 ms, uniform) are within
    /// the histogram's relative error, a p99 over its limit fires, and a new
    /// version three times slower raises the deploy alert on latency.
    #[test]
    fn latency_quantiles_p99_limit_and_slower_deploy() {
        let mut cfg = HealthConfig::default();
        cfg.p99_limit_ms.insert("inference_ms".into(), 500.0);
        let mut h = Health::new(cfg);
        for i in 0..10_000 {
            timing(&mut h, "ranker-v1", T0 + i * 30, (i % 1000 + 1) as f64);
        }
        let (r, ts) = h.evaluate(T0 + 300_000, &detect());
        let st = &r[0].latency[0];
        assert_eq!(st.samples, 10_000);
        for (got, want) in [(st.p50_ms, 500.0), (st.p90_ms, 900.0), (st.p99_ms, 990.0)] {
            let got = got.unwrap();
            assert!((got - want).abs() <= want * 0.02 + 1.0, "{got} vs {want}");
        }
        assert_eq!(fired(&ts, "LatencyP99High").len(), 1);
        // The new version: every value three times slower.
        let t1 = T0 + 300_000;
        for i in 0..2000 {
            timing(
                &mut h,
                "ranker-v2",
                t1 + i * 100,
                3.0 * (i % 1000 + 1) as f64,
            );
        }
        let (r, ts) = h.evaluate(t1 + 200_000, &detect());
        let spikes = fired(&ts, "ErrorSpikeAfterDeploy");
        assert_eq!(spikes.len(), 1, "{ts:?}");
        assert_eq!(spikes[0].feature, "inference_ms");
        assert_eq!(spikes[0].labels["signal"], "latency");
        let v2 = r.iter().find(|r| r.model == "ranker-v2").unwrap();
        // Values above ~900 ms: 3x(1..=1000) exceeds 900 from 301 on: 70%.
        let share = v2.latency[0].slow_share.unwrap();
        assert!((share - 0.70).abs() < 0.02, "{share}");
    }

    #[test]
    fn caps_bound_models_error_types_and_stages() {
        let cfg = HealthConfig {
            max_models: 3,
            max_error_types: 2,
            max_stages: 1,
            ..HealthConfig::default()
        };
        let mut h = Health::new(cfg);
        for i in 0..100 {
            request(&mut h, &format!("m{i}"), T0, false);
        }
        assert_eq!(h.models().count(), 3);
        assert_eq!(h.stats.models_refused, 97);
        for ty in ["a", "b", "c", "d"] {
            h.observe(
                "m0",
                None,
                T0,
                Observation {
                    request: true,
                    error: true,
                    error_type: Some(ty),
                    stages: &[],
                },
            );
        }
        let m = h.model("m0").unwrap();
        assert_eq!(m.error_types.len(), 2);
        assert_eq!(m.other_errors, 2);
        let stages = [(Cow::Borrowed("a_ms"), 1.0), (Cow::Borrowed("b_ms"), 1.0)];
        h.observe(
            "m0",
            None,
            T0,
            Observation {
                stages: &stages,
                ..Observation::default()
            },
        );
        assert_eq!(h.model("m0").unwrap().stages.len(), 1);
        assert_eq!(h.stats.stages_refused, 1);
    }

    #[test]
    fn batch_statistics_keep_the_latest_values() {
        let mut h = Health::new(HealthConfig::default());
        let s1 = [(Cow::Borrowed("amount_mean"), 10.0)];
        let s2 = [(Cow::Borrowed("amount_mean"), 12.0)];
        h.observe_batch("m", None, T0 + 10, &s1, Some(0.9));
        h.observe_batch("m", None, T0 + 20, &s2, None);
        h.observe_batch("m", None, T0 + 5, &s1, Some(0.1));
        let b = &h.model("m").unwrap().batch;
        assert_eq!(b.batches, 3);
        assert_eq!(b.stats, vec![("amount_mean".into(), 12.0)]);
        assert_eq!(b.avg_confidence, Some(0.9));
    }

    /// A new version is compared with the previous one as of its last line,
    /// whether it follows at once, a window later, or after evaluations
    /// moved the previous one's window past some of its panes: its
    /// requests over its history, its p90 over its last window of traffic.
    #[test]
    fn a_new_version_is_compared_with_the_previous_as_of_its_last_line() {
        let pane_ms = HealthConfig::default().pane_ms;
        // 10 ms in the first pane, then 1..=100 ms: the p90 of the last
        // window (20 panes) is 90 ms; the first pane would make it 89.
        // A pane of latency per pane of the window, so the window is exact.
        let cfg = HealthConfig {
            latency_panes: HealthConfig::default().panes,
            ..HealthConfig::default()
        };
        for gap_panes in [0, 1, 5, 25] {
            let mut h = Health::new(cfg.clone());
            for pane in 0..21 {
                for i in 0..100 {
                    let ms = if pane == 0 { 10.0 } else { f64::from(i + 1) };
                    timing(&mut h, "api-v1", T0 + pane * pane_ms + i64::from(i), ms);
                    request(&mut h, "api-v1", T0 + pane * pane_ms + i64::from(i), false);
                }
                h.evaluate(T0 + (pane + 1) * pane_ms, &detect());
            }
            let t1 = T0 + (21 + gap_panes) * pane_ms;
            h.evaluate(t1, &detect());
            timing(&mut h, "api-v2", t1 + 10, 500.0);
            let d = h.model("api-v2").unwrap().deploy.clone().unwrap();
            assert_eq!(d.previous_requests, 2_100, "gap {gap_panes}");
            let (_, p90, n) = &d.previous_latency[0];
            assert_eq!(*n, 2_000);
            assert!(
                (p90 - 90.0).abs() <= 90.0 * cfg.sketch_error,
                "gap {gap_panes}: {p90}"
            );
        }
    }

    /// The end buckets: nothing is lost, and a stage's buckets are bounded.
    #[test]
    fn values_beyond_the_floor_and_ceiling_share_the_end_buckets() {
        let b = Buckets::new(0.01);
        let g: f64 = 1.01 / 0.99;
        let span = (LATENCY_CEILING_MS / LATENCY_FLOOR_MS).ln() / g.ln();
        assert!(
            (span..=span + 2.0).contains(&f64::from(b.len)),
            "{} buckets",
            b.len
        );
        for x in [
            0.0,
            -5.0,
            f64::NAN,
            f64::NEG_INFINITY,
            1e-9,
            LATENCY_FLOOR_MS,
        ] {
            assert_eq!(b.index(x), 0, "{x}");
        }
        assert_eq!(b.value(0), 0.0);
        for x in [LATENCY_CEILING_MS, 1e12, f64::INFINITY] {
            assert_eq!(b.index(x), b.len - 1, "{x}");
        }
        let top = b.value(b.len - 1);
        assert!((top - LATENCY_CEILING_MS).abs() <= 0.01 * LATENCY_CEILING_MS);
        assert_eq!(b.index(LATENCY_FLOOR_MS * 1.000_001), 1);
        // Every bucket's value maps back to it; but bucket 1 holds only
        // what is above the floor, and its value may be below it.
        assert!((2..b.len).all(|i| b.index(b.value(i)) == i));
    }

    fn limits_of(h: &Health) -> Limits {
        h.limits
    }

    /// What a model's panes hold, recounted from them: (n, x, n0, x0), per
    /// stage the window's buckets, and the deploy counts. Also checks the
    /// panes are sorted and within the window and history.
    type Recount = (
        (u64, u64, u64, u64),
        Vec<BTreeMap<u32, u64>>,
        Vec<(u64, u64)>,
    );

    fn recount(p: &Panes, l: &Limits, stages: usize) -> Recount {
        let (window_lo, history_lo) = (p.window_lo(l), p.history_lo(l));
        let ids: Vec<i64> = p.counts.iter().map(|c| c.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(ids.iter().all(|id| (history_lo..=p.head).contains(id)));
        let mut sums = (0, 0, 0, 0);
        for c in &p.counts {
            if c.id >= window_lo {
                sums.0 += c.requests;
                sums.1 += c.errors;
            } else {
                sums.2 += c.requests;
                sums.3 += c.errors;
            }
        }
        let ids: Vec<i64> = p.latency.iter().map(|c| c.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(ids.iter().all(|id| (window_lo..=p.head).contains(id)));
        let mut buckets = vec![BTreeMap::new(); stages];
        let mut slow = vec![(0, 0); stages];
        for pane in &p.latency {
            for (s, h) in pane.histograms.iter().enumerate() {
                assert!(h.windows(2).all(|w| w[0].0 <= w[1].0), "sorted: {h:?}");
                for &(b, c) in h {
                    *buckets[s].entry(b).or_insert(0) += u64::from(c);
                }
            }
            for (s, (v, x)) in pane.slow.iter().enumerate() {
                slow[s].0 += v;
                slow[s].1 += x;
            }
        }
        (sums, buckets, slow)
    }

    /// The running sums as the evaluation reads them, in [`Recount`]'s form.
    fn running(p: &Panes) -> Recount {
        let buckets = p
            .totals
            .iter()
            .map(|t| {
                assert_eq!(t.n, t.counts.iter().sum::<u64>());
                (t.lo..)
                    .zip(&t.counts)
                    .filter(|(_, c)| **c > 0)
                    .map(|(b, c)| (b, *c))
                    .collect()
            })
            .collect();
        ((p.n, p.x, p.n0, p.x0), buckets, p.slow.clone())
    }

    use proptest::collection::vec as pvec;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The window's p50, p90 and p99 are within the relative error of
        /// the exact quantiles of the values in the window (floor(q (n - 1))
        /// of the sorted values), whatever the values, the panes they land
        /// in (late ones too) and how far time jumps between evaluations.
        /// Values at or below the floor read as 0; above the ceiling, as
        /// the ceiling.
        #[test]
        fn window_quantiles_are_within_the_relative_error(
            alpha in prop::sample::select(vec![0.01, 0.001, 0.05]),
            panes in 1usize..6,
            steps in pvec((-4i64..8, pvec(-9.0f64..17.0, 1..30)), 1..40),
        ) {
            let cfg = HealthConfig {
                panes,
                pane_ms: 1_000,
                reference_windows: 1,
                sketch_error: alpha,
                ..HealthConfig::default()
            };
            let mut h = Health::new(cfg);
            let (mut head, mut seen) = (0i64, Vec::new());
            for (step, logs) in steps {
                // Ahead: time moves on; behind: the lines are late.
                let id = if step > 0 { head += step; head } else { head + step };
                for ln in logs {
                    timing(&mut h, "m", T0 + id * 1_000 + 1, ln.exp());
                    seen.push((id, ln.exp()));
                }
                let (r, _) = h.evaluate(T0 + head * 1_000 + 999, &detect());
                let lo = head - panes as i64 + 1;
                let mut window: Vec<f64> = seen
                    .iter()
                    .filter(|(id, _)| (lo..=head).contains(id))
                    .map(|(_, v)| *v)
                    .collect();
                window.sort_by(f64::total_cmp);
                let st = &r[0].latency[0];
                prop_assert_eq!(st.samples, window.len() as u64);
                for (q, got) in [(0.5, st.p50_ms), (0.9, st.p90_ms), (0.99, st.p99_ms)] {
                    if window.is_empty() {
                        prop_assert!(got.is_none());
                        continue;
                    }
                    let exact = window[(q * (window.len() - 1) as f64) as usize];
                    let got = got.unwrap();
                    if exact <= LATENCY_FLOOR_MS {
                        prop_assert_eq!(got, 0.0);
                    } else {
                        let x = exact.min(LATENCY_CEILING_MS);
                        prop_assert!(
                            (got - x).abs() <= (alpha + 1e-9) * x,
                            "q {} got {} exact {}", q, got, exact
                        );
                    }
                }
            }
        }

        /// After any sequence of lines (on time, late, or too late),
        /// evaluations and time jumps, the running sums equal a recount of
        /// the panes kept, and a brute-force count of every line accepted:
        /// requests and errors of the window and of the reference, each
        /// stage's buckets, and the deploy check's slow counts.
        #[test]
        fn running_sums_equal_a_recount_of_the_panes(
            panes in 1usize..5,
            reference_windows in 1usize..3,
            ops in pvec((0u8..5, -6i64..7, 0usize..2, -2.0f64..4.0), 1..150),
        ) {
            let cfg = HealthConfig {
                panes,
                pane_ms: 1_000,
                reference_windows,
                ..HealthConfig::default()
            };
            let history = (panes * (1 + reference_windows)) as i64;
            let mut h = Health::new(cfg);
            let stage_names = [Cow::Borrowed("a_ms"), Cow::Borrowed("b_ms")];
            // The previous version, so that the one tested compares its
            // values with its p90s.
            for (i, v) in [1.0, 10.0, 100.0].iter().enumerate() {
                let stages = [(stage_names[0].clone(), *v), (stage_names[1].clone(), *v * 2.0)];
                h.observe("x-v1", None, T0 + i as i64, Observation {
                    request: true, stages: &stages, ..Observation::default()
                });
            }
            let l = limits_of(&h);
            // The model's newest pane, once it exists.
            let (mut head, mut late) = (None::<i64>, 0u64);
            // Accepted lines: (pane, request, error, stage values as
            // (stage, bucket, slower than the previous version)).
            type Line = (i64, bool, bool, Vec<(usize, u32, Option<bool>)>);
            let mut log: Vec<Line> = Vec::new();
            for (kind, delta, stage, lv) in ops {
                let id = head.unwrap_or(0) + delta;
                if kind == 4 {
                    head = head.map(|h| h.max(id));
                    h.evaluate(T0 + id * 1_000, &detect());
                } else {
                    let ms = 10f64.powf(lv);
                    let stages = [(stage_names[stage].clone(), ms)];
                    let o = Observation {
                        request: kind != 3,
                        error: kind == 1,
                        error_type: Some("E"),
                        stages: if kind == 0 { &[] } else { &stages },
                    };
                    h.observe("x-v2", None, T0 + id * 1_000 + 5, o);
                    let newest = head.map_or(id, |h| h.max(id));
                    head = Some(newest);
                    if id < newest - history + 1 {
                        late += 1;
                        continue;
                    }
                    let m = h.model("x-v2").unwrap();
                    let s = m.stages.iter().position(|x| **x == *stage_names[stage]);
                    let values = match (kind, s) {
                        (0, _) | (_, None) => vec![],
                        (_, Some(s)) => {
                            let q = m.deploy.as_ref().and_then(|d| {
                                let name = &*stage_names[stage];
                                d.previous_latency.iter().find(|(st, ..)| **st == *name)
                            });
                            vec![(s, l.buckets.index(ms), q.map(|(_, q, _)| ms > *q))]
                        }
                    };
                    log.push((id, kind != 3, kind == 1, values));
                }
                let (Some(head), Some(m)) = (head, h.model("x-v2")) else {
                    continue;
                };
                prop_assert!(m.deploy.is_some());
                prop_assert_eq!(m.panes.head - T0 / 1_000, head);
                prop_assert_eq!(h.stats.late, late);
                let stages = m.stages.len();
                let kept = recount(&m.panes, &l, stages);
                prop_assert_eq!(&running(&m.panes), &kept);
                // Brute force, from every line accepted.
                let (window_lo, history_lo) = (head - panes as i64 + 1, head - history + 1);
                let mut want: Recount =
                    ((0, 0, 0, 0), vec![BTreeMap::new(); stages], vec![(0, 0); stages]);
                for (id, r, e, values) in &log {
                    if *id >= window_lo {
                        want.0.0 += u64::from(*r);
                        want.0.1 += u64::from(*e);
                        for (s, b, slower) in values {
                            *want.1[*s].entry(*b).or_insert(0) += 1;
                            if let Some(slower) = slower {
                                want.2[*s].0 += 1;
                                want.2[*s].1 += u64::from(*slower);
                            }
                        }
                    } else if *id >= history_lo {
                        want.0.2 += u64::from(*r);
                        want.0.3 += u64::from(*e);
                    }
                }
                prop_assert_eq!(&kept, &want);
            }
        }
    }

    /// A model fed the worst: every stage up to `max_stages` (and more),
    /// every bucket in every pane of the window, values beyond both ends,
    /// lines out of order, error types and batch statistics past their
    /// caps, names of the longest length, a deploy reference, and time
    /// running through many histories. Its heap never passes
    /// `model_bytes`, and comes close to it: the bound is not loose.
    fn heap_stays_within_model_bytes(cfg: HealthConfig, histories: usize) {
        let bound = cfg.model_bytes();
        let l = cfg.limits();
        let mut h = Health::new(cfg.clone());
        let name = |i: usize| format!("{i:0>width$}", width = MAX_NAME_LEN);
        let base = "x".repeat(MAX_NAME_LEN - 3);
        let (v1, v2) = (format!("{base}-v1"), format!("{base}-v2"));
        let mut values: Vec<f64> = (0..l.buckets.len).map(|i| l.buckets.value(i)).collect();
        values.extend([0.0, -1.0, f64::NAN, 1e-9, 1e12, f64::INFINITY]);
        values.push(LATENCY_FLOOR_MS * 1.000_001);
        let stage_names: Vec<Cow<str>> = (0..cfg.max_stages + 2).map(|i| name(i).into()).collect();
        let types: Vec<String> = (0..cfg.max_error_types + 3)
            .map(|i| name(100 + i))
            .collect();
        let stats: Vec<(Cow<str>, f64)> = (0..cfg.max_batch_stats + 3)
            .map(|i| (name(200 + i).into(), 1.0))
            .collect();
        let pane_ms = cfg.pane_ms;
        let mut peak = 0;
        let check = |h: &Health, peak: &mut usize| {
            let m = h.model(&v2).unwrap();
            let used = m.heap_bytes();
            assert!(used <= bound, "{used} > {bound}");
            assert!(h.heap_bytes() >= used);
            *peak = (*peak).max(used);
        };
        let line = |h: &mut Health, model: &str, t: i64, v: f64, i: usize| {
            let stages: Vec<(Cow<str>, f64)> = stage_names.iter().map(|s| (s.clone(), v)).collect();
            h.observe(
                model,
                Some(&name(300)),
                t,
                Observation {
                    request: true,
                    error: i % 2 == 0,
                    error_type: Some(&types[i % types.len()]),
                    stages: &stages,
                },
            );
            h.observe_batch(model, Some(&name(300)), t, &stats, Some(0.5));
        };
        for (i, v) in values.iter().enumerate() {
            line(&mut h, &v1, T0, *v, i);
        }
        let panes = (l.history * histories) as i64;
        for pane in 1..=panes {
            for (i, v) in values.iter().enumerate() {
                // One line in 7 lands in an older pane of the window.
                let back = if i % 7 == 0 {
                    (i as i64 / 7) % l.panes as i64
                } else {
                    0
                };
                line(&mut h, &v2, T0 + (pane - back) * pane_ms, *v, i);
                check(&h, &mut peak);
            }
            // In the next pane: the model goes quiet, and keeps its
            // comparison as a previous version.
            h.evaluate(T0 + (pane + 1) * pane_ms, &detect());
            assert!(h.model(&v2).unwrap().panes.quiet.is_some());
            check(&h, &mut peak);
        }
        let m = h.model(&v2).unwrap();
        assert!(m.deploy.as_ref().unwrap().previous_latency.len() == cfg.max_stages);
        assert!(peak * 10 >= bound * 9, "peak {peak} of {bound}");
    }

    #[test]
    fn heap_stays_within_model_bytes_through_many_windows() {
        let cfg = HealthConfig {
            panes: 3,
            reference_windows: 2,
            max_stages: 3,
            max_error_types: 2,
            max_batch_stats: 2,
            sketch_error: 0.05,
            ..HealthConfig::default()
        };
        heap_stays_within_model_bytes(cfg, 4);
    }

    #[test]
    fn heap_stays_within_model_bytes_under_the_defaults() {
        let cfg = HealthConfig::default();
        // 140 panes, a history and a bit: every pane of the window full.
        heap_stays_within_model_bytes(cfg, 1);
    }
}
