//! Model quality: ground truth joined when it arrives, and an estimate
//! before it does.
//!
//! This module owns three things:
//!
//! - [`LabelJoin`], the bounded join of predictions and their labels by a
//!   hash of the request id, in either order. Labels come hours after their
//!   prediction, so the join has its own, longer TTL and a cap. When the
//!   predictions waiting would pass the cap, the join keeps a deterministic
//!   sample by request-id hash (one in 2^k requests) instead of evicting: a
//!   prediction and its label agree on the hash, so both are kept or both
//!   are not, and the sample stays unbiased. The sample rate is reported.
//!   Every outcome is counted ([`LabelStats`]).
//! - [`Quality`], the realized quality per model and arm: each label is
//!   attributed to its prediction's event time (the pane of the
//!   prediction, not of the label), over `window` of prediction time.
//!   Accuracy, precision and recall per class (the baseline's bounded class
//!   set), MAE and RMSE for regression, and the expected calibration error.
//!   `AccuracyDrop` judges the newest predictions whose labels add up to
//!   `min_labels`: a one-sided binomial test against the reference accuracy
//!   plus a minimum effect.
//! - The estimate without labels ([`estimate`]): the expected accuracy of a
//!   window is the mean of its calibrated confidences (CBPE). The
//!   calibration ([`QualityBaseline`]) is learned per bin of the baseline's
//!   confidence distribution by `driftd baseline build` from reference logs
//!   that carry labels, so the estimate is read off the drift window's
//!   confidence counts: it costs nothing per event. `EstimatedAccuracyDrop`
//!   fires when the estimate's interval falls below the reference by the
//!   minimum effect.
//!
//! A label's value never becomes a metric label except as a class name the
//! baseline already has; the request id is only ever a hash.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

use crate::engine::compare::{two_proportion_test, Tail};
use crate::engine::experiment::evict_oldest;

use crate::engine::baseline::{Binner, Bins};
use crate::engine::detect::{
    p_level, Condition, ConditionLevel, DetectConfig, Severity, State, Transition,
};

/// Settings (validated config, `[quality]`).
#[derive(Debug, Clone, PartialEq)]
pub struct QualityConfig {
    pub enabled: bool,
    /// Join from the start (`quality.join = "always"`), or only once the
    /// stream has carried a label line (`"auto"`): a stream without labels
    /// pays no join entry per prediction.
    pub join_from_start: bool,
    /// How long a prediction waits for its label (and a label for its
    /// prediction), in event time.
    pub ttl_ms: i64,
    /// Predictions waiting for a label. Past it the join samples.
    pub max_pending: usize,
    /// Labels waiting for their prediction; the oldest are evicted beyond it.
    pub max_early: usize,
    /// Realized quality covers this much prediction time, in panes.
    pub pane_ms: i64,
    pub panes: usize,
    /// Labelled predictions `AccuracyDrop` judges (the newest that add up to it).
    pub min_labels: u64,
    /// One-sided significance level of `AccuracyDrop`.
    pub alpha: f64,
    /// The smallest drop (accuracy, 0..1) either verdict fires on.
    pub min_effect: f64,
    /// Two-sided level of the estimate's interval.
    pub interval: f64,
    /// Predictions with a confidence a window needs before it is estimated.
    pub min_estimate_samples: u64,
    /// Classes with their own precision and recall (the baseline's first).
    pub max_classes: usize,
    pub max_models: usize,
    pub max_arms_per_model: usize,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            enabled: true,
            join_from_start: false,
            ttl_ms: 24 * 3_600_000,
            max_pending: 25_000,
            max_early: 5_000,
            pane_ms: 3_600_000,
            panes: 24,
            min_labels: 1000,
            alpha: 1e-4,
            min_effect: 0.02,
            interval: 0.99,
            min_estimate_samples: 500,
            max_classes: 16,
            max_models: 1000,
            max_arms_per_model: 8,
        }
    }
}

/// Bins of the expected calibration error: ten of equal width, as usual.
pub const ECE_BINS: usize = 10;
/// Sampling never goes below one request in 2^16.
const MAX_SAMPLE_SHIFT: u32 = 16;
/// Predictions kept per request (several models scoring one request).
const MAX_PREDICTIONS_PER_REQUEST: usize = 4;

impl QualityConfig {
    /// The most the join takes at its caps: every waiting prediction and
    /// label as a map entry (up to twice the map's length in capacity) and
    /// an eviction-order entry, plus the set that tells duplicates.
    pub fn join_bytes(&self) -> usize {
        // hashbrown doubles its buckets at 7/8 full: up to 16/7 of the
        // entries, each with a control byte.
        let map = |entry: usize| (entry + 1) * 16 / 7 + 1;
        // The order queue holds up to twice the cap (matched predictions
        // leave the map first, see `LabelJoin::compact`), in a ring that
        // may double once more.
        let order = 4 * std::mem::size_of::<(u64, u64)>();
        // A request several models predicted holds the others on the heap.
        let more = (MAX_PREDICTIONS_PER_REQUEST - 1) * std::mem::size_of::<Pred>() + 16;
        self.max_pending * (map(std::mem::size_of::<(u64, Waiting)>()) + order + more)
            + self.max_early * (map(std::mem::size_of::<(u64, EarlyLabel)>()) + order)
            + self.max_early * (map(8) + 2 * 8)
    }

    /// The most one (model, arm)'s realized counts take: its panes, and for
    /// the model as a whole (not its arms) the calibration bins and the
    /// per-class counts.
    pub fn slot_bytes(&self, whole_model: bool) -> usize {
        let detail = if whole_model {
            ECE_BINS * std::mem::size_of::<EceBin>() + self.max_classes * 12
        } else {
            0
        };
        // Its series once published (the daemon's exposition and the
        // snapshot hold them, twice while a new one is built): about 160
        // bytes a line, a dozen lines, two more per class.
        let lines = if whole_model {
            14 + 2 * self.max_classes
        } else {
            10
        };
        std::mem::size_of::<Slot>()
            + self.panes * (std::mem::size_of::<Pane>() + detail)
            + 2 * 160 * lines
            + 128
    }
}

pub use crate::engine::decode::Truth;

/// What the join keeps of a prediction: 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pred {
    /// Whose prediction: the caller's index (a (model, arm) slot).
    pub slot: u32,
    /// A second slot the same prediction counts in (the model's arm), or
    /// [`Pred::NO_ARM`]: one entry serves both.
    pub arm: u32,
    /// Confidence × 65535, or `u16::MAX` with `NO_CONFIDENCE` set.
    conf: u16,
    flags: u8,
    pub t_ms: i64,
    /// A class's hash, or a value's bits.
    value: u64,
}

const REGRESSION: u8 = 1;
const NO_CONFIDENCE: u8 = 2;

impl Pred {
    pub fn class(slot: u32, t_ms: i64, class_hash: u64, confidence: Option<f64>) -> Pred {
        let (conf, flags) = match confidence {
            Some(c) if c.is_finite() => ((c.clamp(0.0, 1.0) * 65535.0).round() as u16, 0),
            _ => (0, NO_CONFIDENCE),
        };
        Pred {
            slot,
            arm: Pred::NO_ARM,
            conf,
            flags,
            t_ms,
            value: class_hash,
        }
    }

    pub const NO_ARM: u32 = u32::MAX;

    /// The same prediction, counted in slot `arm` as well.
    pub fn with_arm(self, arm: u32) -> Pred {
        Pred { arm, ..self }
    }

    pub fn value(slot: u32, t_ms: i64, v: f64) -> Pred {
        Pred {
            slot,
            arm: Pred::NO_ARM,
            conf: 0,
            flags: REGRESSION | NO_CONFIDENCE,
            t_ms,
            value: v.to_bits(),
        }
    }

    pub fn confidence(&self) -> Option<f64> {
        (self.flags & NO_CONFIDENCE == 0).then(|| f64::from(self.conf) / 65535.0)
    }

    /// The predicted class's hash (classification).
    pub fn class_hash(&self) -> Option<u64> {
        (self.flags & REGRESSION == 0).then_some(self.value)
    }

    /// The predicted value (regression).
    pub fn predicted_value(&self) -> Option<f64> {
        (self.flags & REGRESSION != 0).then(|| f64::from_bits(self.value))
    }

    /// Whether the prediction was right (classification) or its absolute
    /// error (regression); `None` when truth and prediction are of
    /// different kinds.
    pub fn against(&self, truth: Truth) -> Option<Outcome> {
        match (self.class_hash(), self.predicted_value()) {
            (Some(p), _) => truth
                .class_hash()
                .map(|t| Outcome::Class { correct: t == p }),
            // A class label for a regression, say: nothing to compare.
            (_, Some(p)) => truth.value().map(|t| Outcome::Error(p - t)),
            _ => None,
        }
    }
}

/// One labelled prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Class {
        correct: bool,
    },
    /// Prediction minus truth.
    Error(f64),
}

/// Predictions of one request waiting for its label.
#[derive(Debug, Clone)]
struct Waiting {
    seq: u64,
    first: Pred,
    more: Option<Box<[Pred]>>,
}

impl Waiting {
    fn iter(&self) -> impl Iterator<Item = &Pred> {
        std::iter::once(&self.first).chain(self.more.iter().flat_map(|m| m.iter()))
    }
    fn len(&self) -> usize {
        1 + self.more.as_ref().map_or(0, |m| m.len())
    }
}

/// A label waiting for its prediction.
#[derive(Debug, Clone, Copy)]
struct EarlyLabel {
    t_ms: i64,
    seq: u64,
    truth: Truth,
    joined: bool,
    /// Slots whose prediction it was joined to (a redelivery is refused).
    matched: [u32; MAX_PREDICTIONS_PER_REQUEST],
    n: u8,
}

/// What the label join did, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LabelStats {
    /// Labels joined to a prediction that was waiting.
    pub matched: u64,
    /// Labels that came first, joined when their prediction did.
    pub matched_early: u64,
    /// Joined, but the prediction's time had left the window: not counted.
    pub late: u64,
    /// Labels whose prediction never came within the TTL (or came and
    /// left the join more than the TTL before its label).
    pub orphan: u64,
    /// A second label for a request already labelled (counted once).
    pub duplicate: u64,
    /// Predictions that waited the whole TTL for a label in vain.
    pub unlabelled: u64,
    /// Predictions evicted at the cap with sampling at its floor.
    pub evicted_predictions: u64,
    /// Labels evicted from a full early map.
    pub evicted_labels: u64,
    /// Predictions and labels outside the hash sample.
    pub sampled_out: u64,
    /// Predictions of models or arms beyond the caps.
    pub refused: u64,
    /// Predictions not joined before the stream's first label line
    /// (`quality.join = "auto"`).
    pub before_labels: u64,
    /// A label of the wrong kind (a value for a classifier).
    pub mismatched_kind: u64,
}

/// The bounded, sampled join of predictions and labels by request hash.
#[derive(Debug)]
pub struct LabelJoin {
    ttl_ms: i64,
    max_pending: usize,
    max_early: usize,
    pending: FxHashMap<u64, Waiting>,
    pending_order: VecDeque<(u64, u64)>,
    early: FxHashMap<u64, EarlyLabel>,
    early_order: VecDeque<(u64, u64)>,
    /// Requests labelled lately, to tell a duplicate label from an orphan.
    done: FxHashSet<u64>,
    done_order: VecDeque<u64>,
    seq: u64,
    /// One request in 2^shift is kept.
    shift: u32,
    /// When the sample was last made sparser (event time).
    shift_at: i64,
    watermark: i64,
    last_expire: i64,
    pub stats: LabelStats,
}

impl LabelJoin {
    pub fn new(ttl_ms: i64, max_pending: usize, max_early: usize) -> LabelJoin {
        LabelJoin {
            ttl_ms,
            max_pending: max_pending.max(1),
            max_early: max_early.max(1),
            pending: FxHashMap::default(),
            pending_order: VecDeque::new(),
            early: FxHashMap::default(),
            early_order: VecDeque::new(),
            done: FxHashSet::default(),
            done_order: VecDeque::new(),
            seq: 0,
            shift: 0,
            shift_at: i64::MIN,
            watermark: i64::MIN,
            last_expire: i64::MIN,
            stats: LabelStats::default(),
        }
    }

    /// The share of requests the join keeps (1, 1/2, 1/4 ...).
    pub fn sample_rate(&self) -> f64 {
        1.0 / f64::from(1u32 << self.shift)
    }

    /// Predictions and labels waiting.
    pub fn waiting(&self) -> (usize, usize) {
        (self.pending.len(), self.early.len())
    }

    /// Whether `request` is in the sample: the top `shift` bits of its hash
    /// are zero. The request hash is already uniform; prediction and label
    /// compute the same answer.
    pub fn keeps(&self, request: u64) -> bool {
        self.shift == 0 || request >> (64 - self.shift) == 0
    }

    /// A prediction for `request`. Calls `matched` at once when its label
    /// came first.
    pub fn prediction(&mut self, request: u64, p: Pred, matched: &mut dyn FnMut(&Pred, Truth)) {
        self.advance(p.t_ms);
        if !self.keeps(request) {
            self.stats.sampled_out += 1;
            return;
        }
        if self.done.contains(&request) {
            // Its label came and went: a redelivered prediction.
            self.stats.duplicate += 1;
            return;
        }
        if let Some(e) = self.early.get_mut(&request) {
            // Stays until its TTL: another model may predict the same request.
            let seen = &mut e.matched[..e.n as usize];
            if seen.contains(&p.slot) || seen.len() == MAX_PREDICTIONS_PER_REQUEST {
                // The same model's prediction again (a redelivery), or too many.
                self.stats.duplicate += 1;
                return;
            }
            e.matched[e.n as usize] = p.slot;
            e.n += 1;
            e.joined = true;
            let truth = e.truth;
            self.stats.matched_early += 1;
            matched(&p, truth);
            return;
        }
        if let Some(w) = self.pending.get_mut(&request) {
            if w.iter().any(|q| q.slot == p.slot) || w.len() >= MAX_PREDICTIONS_PER_REQUEST {
                // A redelivery, or too many models on one request.
                self.stats.refused += 1;
                return;
            }
            let mut v = w.more.take().map(Vec::from).unwrap_or_default();
            v.push(p);
            w.more = Some(v.into_boxed_slice());
            return;
        }
        if self.pending.len() >= self.max_pending {
            self.thin();
            if !self.keeps(request) {
                self.stats.sampled_out += 1;
                return;
            }
        }
        self.stats.evicted_predictions += evict_oldest(
            &mut self.pending,
            &mut self.pending_order,
            self.max_pending,
            |w| w.seq,
        );
        self.seq += 1;
        self.pending.insert(
            request,
            Waiting {
                seq: self.seq,
                first: p,
                more: None,
            },
        );
        self.pending_order.push_back((request, self.seq));
        if self.pending_order.len() > 2 * self.max_pending {
            self.compact();
        }
    }

    /// Drops the order entries of predictions that left the map (matched
    /// by their label) before their TTL: without it the queue would hold
    /// every prediction of the last TTL, rate × TTL entries, whatever the
    /// cap. Runs when the queue passes twice the cap, so at most once per
    /// `max_pending` insertions: O(1) amortised.
    fn compact(&mut self) {
        let pending = &self.pending;
        self.pending_order
            .retain(|(h, seq)| pending.get(h).is_some_and(|w| w.seq == *seq));
        self.pending_order.shrink_to(2 * self.max_pending);
    }

    /// A label for `request` at event time `t_ms`. Calls `matched` for each
    /// prediction of the request that was waiting.
    pub fn label(
        &mut self,
        request: u64,
        truth: Truth,
        t_ms: i64,
        matched: &mut dyn FnMut(&Pred, Truth),
    ) {
        self.advance(t_ms);
        if !self.keeps(request) {
            self.stats.sampled_out += 1;
            return;
        }
        if let Some(w) = self.pending.remove(&request) {
            self.stats.matched += 1;
            for p in w.iter() {
                matched(p, truth);
            }
            self.remember_done(request);
            return;
        }
        if self.done.contains(&request) || self.early.contains_key(&request) {
            self.stats.duplicate += 1;
            return;
        }
        self.stats.evicted_labels += evict_oldest(
            &mut self.early,
            &mut self.early_order,
            self.max_early,
            |e| e.seq,
        );
        self.seq += 1;
        self.early.insert(
            request,
            EarlyLabel {
                t_ms,
                seq: self.seq,
                truth,
                joined: false,
                matched: [0; MAX_PREDICTIONS_PER_REQUEST],
                n: 0,
            },
        );
        self.early_order.push_back((request, self.seq));
    }

    /// Drops waiting predictions of slots that were forgotten, so a slot
    /// number used again never receives an old prediction's label.
    pub fn forget_slots(&mut self, gone: &[u32]) {
        if gone.is_empty() {
            return;
        }
        let is_gone = |s: u32| gone.contains(&s);
        self.pending.retain(|_, w| {
            let mut preds: Vec<Pred> = w.iter().copied().filter(|p| !is_gone(p.slot)).collect();
            for p in &mut preds {
                if is_gone(p.arm) {
                    p.arm = Pred::NO_ARM;
                }
            }
            let Some((first, more)) = preds.split_first() else {
                return false;
            };
            w.first = *first;
            w.more = (!more.is_empty()).then(|| more.into());
            true
        });
    }

    fn remember_done(&mut self, request: u64) {
        if self.done_order.len() >= self.max_early {
            if let Some(old) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
        if self.done.insert(request) {
            self.done_order.push_back(request);
        }
    }

    /// Halves the sample and drops what falls out of it: the join is full
    /// of predictions still within their TTL.
    fn thin(&mut self) {
        if self.shift >= MAX_SAMPLE_SHIFT {
            return;
        }
        self.shift += 1;
        self.shift_at = self.watermark;
        let shift = self.shift;
        let keeps = |h: &u64| *h >> (64 - shift) == 0;
        let before = self.pending.len() + self.early.len();
        self.pending.retain(|h, _| keeps(h));
        self.early.retain(|h, _| keeps(h));
        self.pending_order.retain(|(h, _)| keeps(h));
        self.early_order.retain(|(h, _)| keeps(h));
        self.stats.sampled_out += (before - self.pending.len() - self.early.len()) as u64;
    }

    /// Moves event time on; expires what waited longer than the TTL, at
    /// most once per second of event time (it is on the per-event path),
    /// and makes the sample denser again once the join has stayed under a
    /// quarter of its cap for a whole TTL.
    fn advance(&mut self, t_ms: i64) {
        self.watermark = self.watermark.max(t_ms);
        if self.watermark < self.last_expire.saturating_add(1000) {
            return;
        }
        self.last_expire = self.watermark;
        let cutoff = self.watermark.saturating_sub(self.ttl_ms);
        while let Some(&(h, seq)) = self.pending_order.front() {
            match self.pending.get(&h) {
                Some(w) if w.seq == seq && w.first.t_ms >= cutoff => break,
                Some(w) if w.seq == seq => {
                    self.stats.unlabelled += w.len() as u64;
                    self.pending.remove(&h);
                }
                _ => {}
            }
            self.pending_order.pop_front();
        }
        while let Some(&(h, seq)) = self.early_order.front() {
            match self.early.get(&h) {
                Some(e) if e.seq == seq && e.t_ms >= cutoff => break,
                Some(e) if e.seq == seq => {
                    if !e.joined {
                        self.stats.orphan += 1;
                    } else {
                        self.remember_done(h);
                    }
                    self.early.remove(&h);
                }
                _ => {}
            }
            self.early_order.pop_front();
        }
        if self.shift > 0
            && self.pending.len() < self.max_pending / 4
            && self.watermark.saturating_sub(self.shift_at) >= self.ttl_ms
        {
            self.shift -= 1;
            self.shift_at = self.watermark;
        }
    }
}

/// Counts of one pane of prediction time.
#[derive(Debug, Clone, Copy, Default)]
struct Pane {
    id: i64,
    /// Predictions with a request id (the join's candidates).
    predictions: u32,
    labelled: u32,
    correct: u32,
    /// Labelled predictions with an error (regression): tells a regression
    /// slot from a classifier even when every error is zero.
    values: u32,
    abs_err: f64,
    sq_err: f64,
}

/// Labelled predictions of one confidence bin (for the ECE).
#[derive(Debug, Clone, Copy, Default)]
struct EceBin {
    n: u32,
    correct: u32,
    conf: f64,
}

/// One (model, arm)'s realized quality.
#[derive(Debug)]
struct Slot {
    model: Arc<str>,
    arm: Option<Arc<str>>,
    /// The baseline's classes (by hash), the first `max_classes`.
    classes: Arc<[(Box<str>, u64)]>,
    panes: Box<[Pane]>,
    /// Per pane, `ECE_BINS` bins (the model as a whole only).
    ece: Box<[EceBin]>,
    /// Per pane and class: (true positives, predicted, actual).
    per_class: Box<[[u32; 3]]>,
    last_ms: i64,
    accuracy_drop: Condition,
    estimated_drop: Condition,
}

/// Realized quality of one (model, arm), and its estimate.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct QualityReport {
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    /// Predictions (with a request id) in the window, and those labelled.
    pub predictions: u64,
    pub labelled: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassQuality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    /// Expected calibration error of the labelled predictions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    /// What `AccuracyDrop` judged: the newest labelled predictions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent: Option<Recent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    pub accuracy_drop: State,
    pub estimated_accuracy_drop: State,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassQuality {
    pub class: String,
    /// Labelled predictions whose truth is this class.
    pub support: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Recent {
    pub labelled: u64,
    pub accuracy: f64,
    /// One-sided p-value of "no worse than the reference".
    pub p_value: f64,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The expected accuracy of a window from its confidences.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Estimate {
    pub accuracy: f64,
    pub lower: f64,
    pub upper: f64,
    /// Predictions with a confidence behind it.
    pub samples: u64,
    /// Whether a labelled reference calibrated the confidences.
    pub calibrated: bool,
}

/// What the model's baseline says about its quality.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Reference {
    /// Realized accuracy of the labelled reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// The estimate applied to the reference's confidences (what the
    /// window's estimate is compared with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    pub labelled: u64,
    pub calibrated: bool,
}

/// What the engine tells the evaluation about one (model, arm): its
/// reference and its drift window's estimate.
#[derive(Debug, Clone, Copy)]
pub struct Judged {
    pub reference: Reference,
    pub estimate: Option<Estimate>,
}

/// Realized quality per (model, arm), and the verdicts.
#[derive(Debug)]
pub struct Quality {
    cfg: QualityConfig,
    pub join: LabelJoin,
    slots: Vec<Option<Slot>>,
    ids: FxHashMap<(Box<str>, Box<str>), u32>,
    free: Vec<u32>,
    arms_per_model: FxHashMap<Arc<str>, usize>,
    labels_seen: bool,
}

impl Quality {
    pub fn new(cfg: QualityConfig) -> Quality {
        Quality {
            join: LabelJoin::new(cfg.ttl_ms, cfg.max_pending, cfg.max_early),
            cfg,
            slots: Vec::new(),
            ids: FxHashMap::default(),
            free: Vec::new(),
            arms_per_model: FxHashMap::default(),
            labels_seen: false,
        }
    }

    pub fn config(&self) -> &QualityConfig {
        &self.cfg
    }

    /// (model, arm) pairs with counts.
    pub fn slot_count(&self) -> usize {
        self.ids.len()
    }

    /// Whether (model, arm) has counts.
    pub fn has(&self, model: &str, arm: Option<&str>) -> bool {
        self.ids
            .contains_key(&(Box::<str>::from(model), Box::<str>::from(arm.unwrap_or(""))))
    }

    /// Whether the stream has carried a label (or the join runs from the start).
    pub fn joining(&self) -> bool {
        self.cfg.enabled && (self.labels_seen || self.cfg.join_from_start)
    }

    fn slot_id(
        &mut self,
        model: &str,
        arm: Option<&str>,
        classes: &dyn Fn() -> Arc<[(Box<str>, u64)]>,
        t_ms: i64,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Option<u32> {
        let key = (Box::<str>::from(model), Box::<str>::from(arm.unwrap_or("")));
        if let Some(id) = self.ids.get(&key) {
            return Some(*id);
        }
        let n = self.arms_per_model.get(model).copied().unwrap_or(0);
        let whole = arm.is_none();
        if (n == 0 && self.arms_per_model.len() >= self.cfg.max_models)
            || n > self.cfg.max_arms_per_model
            || !admit(self.cfg.slot_bytes(whole))
        {
            return None;
        }
        let model: Arc<str> = model.into();
        *self.arms_per_model.entry(model.clone()).or_default() += 1;
        let classes = classes();
        let panes = self.cfg.panes.max(1);
        let detail = if whole { panes } else { 0 };
        let slot = Slot {
            model,
            arm: arm.map(Arc::from),
            panes: vec![
                Pane {
                    id: i64::MIN,
                    ..Pane::default()
                };
                panes
            ]
            .into(),
            ece: vec![EceBin::default(); detail * ECE_BINS].into(),
            per_class: vec![[0u32; 3]; detail * classes.len()].into(),
            classes,
            last_ms: t_ms,
            accuracy_drop: Condition::default(),
            estimated_drop: Condition::default(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.ids.insert(key, id);
        Some(id)
    }

    /// A prediction of `model` (and `arm`) with a request id, at event time
    /// `t_ms`. `classes` gives the model's class set when its counts are
    /// first made; `admit` reserves their bytes (the engine's budget).
    #[allow(clippy::too_many_arguments)]
    pub fn prediction(
        &mut self,
        model: &str,
        arm: Option<&str>,
        request: u64,
        t_ms: i64,
        predicted: PredictedAs,
        classes: &dyn Fn() -> Arc<[(Box<str>, u64)]>,
        admit: &mut dyn FnMut(usize) -> bool,
    ) {
        if !self.cfg.enabled {
            return;
        }
        if !self.joining() {
            self.join.stats.before_labels += 1;
            return;
        }
        let Some(id) = self.slot_id(model, None, classes, t_ms, admit) else {
            self.join.stats.refused += 1;
            return;
        };
        let arm_id = match arm {
            Some(a) => match self.slot_id(model, Some(a), classes, t_ms, admit) {
                Some(x) => x,
                None => {
                    // Counted for the model; its arm is over the caps.
                    self.join.stats.refused += 1;
                    Pred::NO_ARM
                }
            },
            None => Pred::NO_ARM,
        };
        let (cfg, slots) = (&self.cfg, &mut self.slots);
        // Coverage is within the sample: only kept requests count here.
        let kept = self.join.keeps(request);
        for sid in [id, arm_id].into_iter().filter(|x| *x != Pred::NO_ARM) {
            let s = slots[sid as usize].as_mut().expect("listed");
            s.last_ms = s.last_ms.max(t_ms);
            if let (true, Some(p)) = (kept, pane_for(cfg, s, t_ms, t_ms)) {
                p.predictions = p.predictions.saturating_add(1);
            }
        }
        let p = match predicted {
            PredictedAs::Class(h, c) => Pred::class(id, t_ms, h, c),
            PredictedAs::Value(v) => Pred::value(id, t_ms, v),
        }
        .with_arm(arm_id);
        let (mut late, mut mismatched) = (0u64, 0u64);
        {
            let mut tally = Some((&mut late, &mut mismatched));
            let mut credit = |p: &Pred, truth: Truth| credit(cfg, slots, &mut tally, p, truth);
            self.join.prediction(request, p, &mut credit);
        }
        self.join.stats.late += late;
        self.join.stats.mismatched_kind += mismatched;
    }

    /// A label line: `request`'s truth, at event time `t_ms`.
    pub fn label(&mut self, request: u64, truth: Truth, t_ms: i64) {
        if !self.cfg.enabled {
            return;
        }
        self.labels_seen = true;
        let (cfg, slots, join) = (&self.cfg, &mut self.slots, &mut self.join);
        let mut late = 0u64;
        let mut mismatched = 0u64;
        {
            let mut tally = Some((&mut late, &mut mismatched));
            let mut credit = |p: &Pred, truth: Truth| credit(cfg, slots, &mut tally, p, truth);
            join.label(request, truth, t_ms, &mut credit);
        }
        join.stats.late += late;
        join.stats.mismatched_kind += mismatched;
    }

    /// Forgets (model, arm)s without a prediction for `idle_ms` and the
    /// label TTL, whichever is longer (their labels may come a TTL after
    /// their last prediction); returns the bytes they held and the resolves
    /// of their firing verdicts.
    pub fn expire_idle(&mut self, now_ms: i64, idle_ms: i64) -> (usize, Vec<Transition>) {
        let idle_ms = idle_ms.max(self.cfg.ttl_ms);
        let mut freed = 0;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for id in 0..self.slots.len() {
            let idle = self.slots[id]
                .as_ref()
                .is_some_and(|s| now_ms - s.last_ms > idle_ms);
            if !idle {
                continue;
            }
            let s = self.slots[id].take().expect("checked");
            freed += self.cfg.slot_bytes(s.arm.is_none());
            for (cond, name) in [
                (s.accuracy_drop, ACCURACY_DROP),
                (s.estimated_drop, ESTIMATED_ACCURACY_DROP),
            ] {
                if cond.state == State::Firing {
                    let mut t = transition(name, &s, State::Firing, State::Resolved, now_ms);
                    t.details.insert(
                        "summary",
                        format!("{} went quiet and was forgotten", s.model),
                    );
                    out.push(t);
                }
            }
            self.ids.remove(&(
                Box::<str>::from(&*s.model),
                Box::<str>::from(s.arm.as_deref().unwrap_or("")),
            ));
            if let Some(n) = self.arms_per_model.get_mut(&s.model) {
                *n -= 1;
                if *n == 0 {
                    self.arms_per_model.remove(&s.model);
                }
            }
            self.free.push(id as u32);
            gone.push(id as u32);
        }
        self.join.forget_slots(&gone);
        (freed, out)
    }

    /// Realized quality of every (model, arm), the estimates `judged` gives,
    /// and the transitions of `AccuracyDrop` and `EstimatedAccuracyDrop`.
    pub fn evaluate(
        &mut self,
        now_ms: i64,
        detect: &DetectConfig,
        judged: &dyn Fn(&str, Option<&str>) -> Option<Judged>,
    ) -> (Vec<QualityReport>, Vec<Transition>) {
        let mut reports = Vec::new();
        let mut out = Vec::new();
        if !self.cfg.enabled {
            return (reports, out);
        }
        self.join.advance(now_ms);
        let cfg = &self.cfg;
        for s in self.slots.iter_mut().flatten() {
            let j = judged(&s.model, s.arm.as_deref());
            let mut r = realized(cfg, s, now_ms);
            r.reference = j.map(|j| j.reference);
            r.estimate = j.and_then(|j| j.estimate);
            // A reference judges only with enough labels of its own, and
            // its own sampling counts in the test.
            let refacc = r
                .reference
                .filter(|x| x.labelled >= MIN_CALIBRATION_LABELS)
                .and_then(|x| x.accuracy.map(|a| (a, x.labelled)));
            let recent = refacc.and_then(|a| recent(cfg, s, now_ms, a));
            let refacc = refacc.map(|(a, _)| a);
            r.recent = recent;
            let level = match (refacc, recent) {
                (Some(a), Some(x)) => Some(p_level(
                    Some(x.p_value),
                    cfg.alpha,
                    a - x.accuracy,
                    cfg.min_effect,
                    0.5,
                )),
                _ => None,
            };
            if let Some((from, to)) = s.accuracy_drop.step(level, detect) {
                let mut t = transition(ACCURACY_DROP, s, from, to, now_ms);
                if let (Some(a), Some(x)) = (refacc, recent) {
                    t.value = x.accuracy;
                    t.threshold = a - cfg.min_effect;
                    t.samples = x.labelled;
                    t.window_start_ms = Some(x.from_ms);
                    t.window_end_ms = Some(x.to_ms);
                    t.details.insert("p_value", format!("{:.2e}", x.p_value));
                    t.details.insert(
                        "summary",
                        format!(
                            "{}: accuracy {:.1}% over the newest {} labelled predictions, reference {:.1}%; p = {:.1e}",
                            label_of(s),
                            100.0 * x.accuracy,
                            x.labelled,
                            100.0 * a,
                            x.p_value
                        ),
                    );
                }
                out.push(t);
            }
            let refest = r.reference.and_then(|x| x.estimated);
            let level = match (refest, r.estimate) {
                (Some(a), Some(e)) if e.samples >= cfg.min_estimate_samples => {
                    Some(estimate_level(a, e, cfg.min_effect))
                }
                _ => None,
            };
            if let Some((from, to)) = s.estimated_drop.step(level, detect) {
                let mut t = transition(ESTIMATED_ACCURACY_DROP, s, from, to, now_ms);
                if let (Some(a), Some(e)) = (refest, r.estimate) {
                    t.value = e.accuracy;
                    t.threshold = a - cfg.min_effect;
                    t.samples = e.samples;
                    t.details
                        .insert("interval", format!("[{:.4}, {:.4}]", e.lower, e.upper));
                    t.details.insert(
                        "summary",
                        format!(
                            "{}: estimated accuracy {:.1}% ({:.1}% to {:.1}%) from {} confidences{}, reference {:.1}%",
                            label_of(s),
                            100.0 * e.accuracy,
                            100.0 * e.lower,
                            100.0 * e.upper,
                            e.samples,
                            if e.calibrated { "" } else { " (uncalibrated)" },
                            100.0 * a
                        ),
                    );
                }
                out.push(t);
            }
            r.accuracy_drop = s.accuracy_drop.state;
            r.estimated_accuracy_drop = s.estimated_drop.state;
            reports.push(r);
        }
        reports.sort_by(|a, b| (&a.model, &a.arm).cmp(&(&b.model, &b.arm)));
        (reports, out)
    }
}

/// How a prediction is compared with its label.
#[derive(Debug, Clone, Copy)]
pub enum PredictedAs {
    /// A class (its hash) and the confidence, if logged.
    Class(u64, Option<f64>),
    Value(f64),
}

pub const ACCURACY_DROP: &str = "AccuracyDrop";
pub const ESTIMATED_ACCURACY_DROP: &str = "EstimatedAccuracyDrop";

fn label_of(s: &Slot) -> String {
    match &s.arm {
        Some(a) => format!("{} (arm {a})", s.model),
        None => s.model.to_string(),
    }
}

fn transition(name: &'static str, s: &Slot, from: State, to: State, now_ms: i64) -> Transition {
    Transition {
        alertname: name,
        model: s.model.to_string(),
        arm: s.arm.as_ref().map(|a| a.to_string()),
        feature: String::new(),
        distribution: None,
        metric: if name == ACCURACY_DROP {
            "accuracy"
        } else {
            "estimated_accuracy"
        },
        higher_is_worse: false,
        from,
        to,
        severity: (to == State::Firing).then_some(Severity::Critical),
        value: f64::NAN,
        threshold: f64::NAN,
        samples: 0,
        at_ms: now_ms,
        baseline_version: String::new(),
        window_start_ms: None,
        window_end_ms: None,
        labels: BTreeMap::new(),
        details: BTreeMap::new(),
    }
}

/// The level of `EstimatedAccuracyDrop`: breach when the interval's upper
/// end is below the reference by the minimum effect, clear when the
/// estimate itself is within half of it.
pub fn estimate_level(reference: f64, e: Estimate, min_effect: f64) -> ConditionLevel {
    if e.upper < reference - min_effect {
        ConditionLevel::Breach
    } else if e.accuracy > reference - 0.5 * min_effect {
        ConditionLevel::Clear
    } else {
        ConditionLevel::Hold
    }
}

/// The pane of `s` for prediction time `t_ms`, with the window ending at
/// `head_ms`; `None` when it left the window (or is ahead of it).
fn pane_for<'a>(
    cfg: &QualityConfig,
    s: &'a mut Slot,
    t_ms: i64,
    head_ms: i64,
) -> Option<&'a mut Pane> {
    let id = t_ms.div_euclid(cfg.pane_ms);
    let n = s.panes.len() as i64;
    let head = head_ms.max(s.last_ms).div_euclid(cfg.pane_ms);
    if id <= head - n || id > head {
        return None;
    }
    let i = id.rem_euclid(n) as usize;
    let p = &mut s.panes[i];
    if p.id > id {
        return None;
    }
    if p.id != id {
        *p = Pane {
            id,
            ..Pane::default()
        };
        let e = s.ece.len() / s.panes.len();
        s.ece[i * e..(i + 1) * e].fill(EceBin::default());
        let c = s.per_class.len() / s.panes.len();
        s.per_class[i * c..(i + 1) * c].fill([0; 3]);
    }
    Some(&mut s.panes[i])
}

/// Counts one labelled prediction in its slots' panes of prediction time.
fn credit(
    cfg: &QualityConfig,
    slots: &mut [Option<Slot>],
    tally: &mut Option<(&mut u64, &mut u64)>,
    p: &Pred,
    truth: Truth,
) {
    credit_slot(cfg, slots, tally, p.slot, p, truth);
    if p.arm != Pred::NO_ARM {
        // Late and mismatched are counted once, for the model.
        credit_slot(cfg, slots, &mut None, p.arm, p, truth);
    }
}

fn credit_slot(
    cfg: &QualityConfig,
    slots: &mut [Option<Slot>],
    tally: &mut Option<(&mut u64, &mut u64)>,
    slot: u32,
    p: &Pred,
    truth: Truth,
) {
    let Some(s) = slots.get_mut(slot as usize).and_then(|s| s.as_mut()) else {
        return;
    };
    let Some(outcome) = p.against(truth) else {
        if let Some((_, m)) = tally {
            **m += 1;
        }
        return;
    };
    let head = s.last_ms;
    let id = p.t_ms.div_euclid(cfg.pane_ms);
    let Some(pane) = pane_for(cfg, s, p.t_ms, head) else {
        if let Some((l, _)) = tally {
            **l += 1;
        }
        return;
    };
    pane.labelled = pane.labelled.saturating_add(1);
    match outcome {
        Outcome::Class { correct } => {
            pane.correct = pane.correct.saturating_add(u32::from(correct));
        }
        Outcome::Error(e) => {
            pane.values = pane.values.saturating_add(1);
            pane.abs_err += e.abs();
            pane.sq_err += e * e;
        }
    }
    let i = id.rem_euclid(s.panes.len() as i64) as usize;
    if let (Outcome::Class { correct }, Some(c)) = (outcome, p.confidence()) {
        let e = s.ece.len() / s.panes.len();
        if e == ECE_BINS {
            let b = &mut s.ece[i * e + ece_bin(c)];
            b.n = b.n.saturating_add(1);
            b.correct = b.correct.saturating_add(u32::from(correct));
            b.conf += c;
        }
    }
    let k = s.classes.len();
    if k > 0 && s.per_class.len() == k * s.panes.len() {
        let (Some(t), Some(ph)) = (truth.class_hash(), p.class_hash()) else {
            return;
        };
        let row = &mut s.per_class[i * k..(i + 1) * k];
        for (j, (_, h)) in s.classes.iter().enumerate() {
            row[j][0] = row[j][0].saturating_add(u32::from(*h == t && *h == ph));
            row[j][1] = row[j][1].saturating_add(u32::from(*h == ph));
            row[j][2] = row[j][2].saturating_add(u32::from(*h == t));
        }
    }
}

fn ece_bin(c: f64) -> usize {
    ((c * ECE_BINS as f64) as usize).min(ECE_BINS - 1)
}

/// Expected calibration error over equal-width bins: Σ n_b/N · |acc_b − conf_b|.
pub fn ece(bins: &[(u64, u64, f64)]) -> Option<f64> {
    let n: u64 = bins.iter().map(|b| b.0).sum();
    if n == 0 {
        return None;
    }
    Some(
        bins.iter()
            .filter(|b| b.0 > 0)
            .map(|&(k, correct, conf)| {
                let k = k as f64;
                (k / n as f64) * (correct as f64 / k - conf / k).abs()
            })
            .sum(),
    )
}

/// The window's realized quality, without reference and estimate.
fn realized(cfg: &QualityConfig, s: &Slot, now_ms: i64) -> QualityReport {
    let head = now_ms.max(s.last_ms).div_euclid(cfg.pane_ms);
    let n = s.panes.len() as i64;
    let live = |p: &Pane| p.id > head - n && p.id <= head;
    let (mut preds, mut labelled, mut correct, mut abs, mut sq, mut values) =
        (0u64, 0u64, 0u64, 0.0, 0.0, 0u64);
    let e = s.ece.len() / s.panes.len();
    let k = s.classes.len();
    let has_classes = k > 0 && s.per_class.len() == k * s.panes.len();
    let mut ece_bins = vec![(0u64, 0u64, 0.0f64); ECE_BINS];
    let mut per_class = vec![[0u64; 3]; k];
    for (i, p) in s.panes.iter().enumerate().filter(|(_, p)| live(p)) {
        preds += u64::from(p.predictions);
        labelled += u64::from(p.labelled);
        correct += u64::from(p.correct);
        abs += p.abs_err;
        sq += p.sq_err;
        values += u64::from(p.values);
        if e == ECE_BINS {
            for (acc, b) in ece_bins.iter_mut().zip(&s.ece[i * e..(i + 1) * e]) {
                acc.0 += u64::from(b.n);
                acc.1 += u64::from(b.correct);
                acc.2 += b.conf;
            }
        }
        if has_classes {
            for (acc, c) in per_class.iter_mut().zip(&s.per_class[i * k..(i + 1) * k]) {
                for j in 0..3 {
                    acc[j] += u64::from(c[j]);
                }
            }
        }
    }
    // A slot's labels are all of one kind: a regression's count as values.
    let regression = values > 0;
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    QualityReport {
        model: s.model.to_string(),
        arm: s.arm.as_ref().map(|a| a.to_string()),
        predictions: preds,
        labelled,
        accuracy: if regression {
            None
        } else {
            ratio(correct, labelled)
        },
        classes: if has_classes && !regression {
            s.classes
                .iter()
                .zip(&per_class)
                .map(|((name, _), c)| ClassQuality {
                    class: name.to_string(),
                    support: c[2],
                    precision: ratio(c[0], c[1]),
                    recall: ratio(c[0], c[2]),
                })
                .collect()
        } else {
            Vec::new()
        },
        mae: (values > 0).then(|| abs / values as f64),
        rmse: (values > 0).then(|| (sq / values as f64).sqrt()),
        ece: if regression { None } else { ece(&ece_bins) },
        window_start_ms: (head - n + 1) * cfg.pane_ms,
        window_end_ms: (head + 1) * cfg.pane_ms,
        ..QualityReport::default()
    }
}

/// The newest labelled predictions adding up to `min_labels`, tested
/// against the labelled reference (`(accuracy, labelled)`): a one-sided
/// two-proportion test that their error rate is higher, so the
/// reference's own sampling counts too.
fn recent(cfg: &QualityConfig, s: &Slot, now_ms: i64, reference: (f64, u64)) -> Option<Recent> {
    let head = now_ms.max(s.last_ms).div_euclid(cfg.pane_ms);
    let n = s.panes.len() as i64;
    let mut panes: Vec<&Pane> = s
        .panes
        .iter()
        .filter(|p| p.id > head - n && p.id <= head && p.labelled > 0)
        .collect();
    panes.sort_by_key(|p| std::cmp::Reverse(p.id));
    let (mut labelled, mut correct) = (0u64, 0u64);
    let mut from = None;
    let to = panes.first().map(|p| (p.id + 1) * cfg.pane_ms)?;
    for p in panes {
        labelled += u64::from(p.labelled);
        correct += u64::from(p.correct);
        from = Some(p.id * cfg.pane_ms);
        if labelled >= cfg.min_labels {
            break;
        }
    }
    if labelled < cfg.min_labels {
        return None;
    }
    Some(Recent {
        labelled,
        accuracy: correct as f64 / labelled as f64,
        p_value: {
            let (acc, n) = reference;
            let ref_wrong = ((1.0 - acc) * n as f64).round() as u64;
            two_proportion_test(
                ref_wrong.min(n),
                n,
                labelled - correct,
                labelled,
                Tail::Greater,
            )
            .map_or(1.0, |(_, p)| p)
        },
        from_ms: from?,
        to_ms: to,
    })
}

/// The two-sided normal quantile of `level` (2.576 for 0.99).
pub fn z_of(level: f64) -> f64 {
    let n = Normal::new(0.0, 1.0).expect("standard normal");
    n.inverse_cdf(0.5 + level.clamp(0.5, 0.999_999) / 2.0)
}

/// The expected accuracy of predictions whose confidences fall in the
/// baseline's confidence bins with `counts` (the drift window's, or the
/// baseline's own): Σ n_b·a_b / n, where a_b is the bin's calibrated
/// accuracy (or its mean raw confidence without a labelled reference).
///
/// The interval holds the realized accuracy of those predictions with
/// probability `level`: each is right with probability a_b, so the spread
/// is Σ n_b·a_b(1−a_b)/n², plus the calibration's own uncertainty, Σ
/// (n_b/n)²·a_b(1−a_b)/(m_b + 10) for m_b labelled reference predictions in
/// bin b and the prior's 10 pseudo-labels.
pub fn estimate(counts: &[u64], calibration: &QualityBaseline, level: f64) -> Option<Estimate> {
    let a = calibration.bin_accuracy();
    // The missing bin (no confidence logged) and any bin without a value
    // are left out.
    let used = counts.len().min(a.len());
    let n: u64 = counts[..used].iter().sum();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let (mut mean, mut var) = (0.0f64, 0.0f64);
    for (b, (&c, &ab)) in counts[..used].iter().zip(&a).enumerate() {
        if c == 0 {
            continue;
        }
        let c = c as f64;
        let w = c / nf;
        mean += w * ab;
        var += c * ab * (1.0 - ab) / (nf * nf);
        // A bin's calibration is as sure as its labels plus the prior's
        // pseudo-labels: a bin the reference never labelled is the least sure.
        let m = calibration.bin_labelled.get(b).copied().unwrap_or(0) as f64;
        if calibration.calibrated() {
            var += w * w * ab * (1.0 - ab) / (m + PRIOR_LABELS);
        }
    }
    let half = z_of(level) * var.sqrt();
    Some(Estimate {
        accuracy: mean,
        lower: (mean - half).max(0.0),
        upper: (mean + half).min(1.0),
        samples: n,
        calibrated: calibration.calibrated(),
    })
}

use crate::engine::baseline::PRIOR_LABELS;
pub use crate::engine::baseline::{QualityBaseline, MIN_CALIBRATION_LABELS};

/// Fine bins of confidence while a baseline is built; mapped onto the
/// baseline's own confidence bins when it is finished.
const FINE: usize = 400;

/// Accumulates a reference's confidences and labelled predictions into a
/// [`QualityBaseline`]: bounded (a few KiB) whatever the file's size.
#[derive(Debug, Clone)]
pub struct CalibrationBuilder {
    /// Per fine bin: (predictions, Σ confidence, labelled, correct, Σ labelled confidence).
    fine: Vec<(u64, f64, u64, u64, f64)>,
    labelled: u64,
    correct: u64,
    values: u64,
    abs_err: f64,
    sq_err: f64,
}

impl Default for CalibrationBuilder {
    fn default() -> Self {
        CalibrationBuilder {
            fine: vec![(0, 0.0, 0, 0, 0.0); FINE],
            labelled: 0,
            correct: 0,
            values: 0,
            abs_err: 0.0,
            sq_err: 0.0,
        }
    }
}

impl CalibrationBuilder {
    fn fine_bin(c: f64) -> usize {
        ((c.clamp(0.0, 1.0) * FINE as f64) as usize).min(FINE - 1)
    }

    /// A prediction's confidence (labelled or not).
    pub fn confidence(&mut self, c: f64) {
        let f = &mut self.fine[Self::fine_bin(c)];
        f.0 += 1;
        f.1 += c;
    }

    /// A prediction joined to its label.
    pub fn labelled(&mut self, p: &Pred, truth: Truth) {
        match p.against(truth) {
            Some(Outcome::Class { correct }) => {
                self.labelled += 1;
                self.correct += u64::from(correct);
                if let Some(c) = p.confidence() {
                    let f = &mut self.fine[Self::fine_bin(c)];
                    f.2 += 1;
                    f.3 += u64::from(correct);
                    f.4 += c;
                }
            }
            Some(Outcome::Error(e)) => {
                self.values += 1;
                self.abs_err += e.abs();
                self.sq_err += e * e;
            }
            None => {}
        }
    }

    /// The quality baseline on the confidence distribution's `bins` (if the
    /// model logs a confidence); `None` when there is nothing to say.
    pub fn finish(&self, confidence: Option<&Bins>) -> Option<QualityBaseline> {
        let mut q = QualityBaseline {
            labelled: self.labelled + self.values,
            accuracy: (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64),
            ece: None,
            mae: (self.values > 0).then(|| self.abs_err / self.values as f64),
            rmse: (self.values > 0).then(|| (self.sq_err / self.values as f64).sqrt()),
            mean_confidence: Vec::new(),
            bin_labelled: Vec::new(),
            bin_correct: Vec::new(),
        };
        if let Some(bins @ Bins::Numeric { .. }) = confidence {
            let binner = Binner::new(bins);
            let k = bins.len() - 1;
            let mut sums = vec![(0u64, 0.0f64, 0u64, 0u64); k];
            for (i, f) in self.fine.iter().enumerate() {
                let mid = (i as f64 + 0.5) / FINE as f64;
                let b = match binner.bin_num(mid) {
                    crate::engine::baseline::BinOf::Bin(b) => (b as usize).min(k - 1),
                    crate::engine::baseline::BinOf::Invalid => continue,
                };
                sums[b].0 += f.0;
                sums[b].1 += f.1;
                sums[b].2 += f.2;
                sums[b].3 += f.3;
            }
            let fallback = QualityBaseline::uncalibrated(bins)?.mean_confidence;
            q.mean_confidence = sums
                .iter()
                .zip(&fallback)
                .map(|(s, mid)| if s.0 > 0 { s.1 / s.0 as f64 } else { *mid })
                .collect();
            if self.labelled > 0 {
                q.bin_labelled = sums.iter().map(|s| s.2).collect();
                q.bin_correct = sums.iter().map(|s| s.3).collect();
                let mut eb = vec![(0u64, 0u64, 0.0f64); ECE_BINS];
                for (i, f) in self.fine.iter().enumerate() {
                    let b = &mut eb[ece_bin((i as f64 + 0.5) / FINE as f64)];
                    b.0 += f.2;
                    b.1 += f.3;
                    b.2 += f.4;
                }
                q.ece = ece(&eb);
            }
        } else if q.labelled == 0 {
            return None;
        }
        // Nine significant digits: more than a calibration knows, and short
        // enough that the file reads back to the same numbers.
        let sig = |x: f64| format!("{x:.8e}").parse::<f64>().unwrap_or(x);
        for v in [&mut q.accuracy, &mut q.ece, &mut q.mae, &mut q.rmse] {
            *v = v.map(sig);
        }
        for c in &mut q.mean_confidence {
            *c = sig(*c);
        }
        Some(q)
    }
}

#[cfg(test)]
mod tests;
