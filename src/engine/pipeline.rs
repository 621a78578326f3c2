//! The engine: decode -> window -> compare -> detect, for every model.
//!
//! This module owns the per-model state (windows, verdicts, last scores) and
//! the caps that bound it. It is pure and synchronous: lines and the current
//! time come in as parameters, transitions and reports go out. The streaming
//! daemon and `driftd replay` drive the same engine, so what a replay shows
//! is what the daemon would have done.
//!
//! Every line is counted exactly once, here, in [`EngineStats`]; exporters
//! read the counters per evaluation, never per event.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use serde::Serialize;

use crate::engine::baseline::{
    Baseline, BaselineBuilder, Binning, Bins, BuildLimits, Layout, SlotRole,
};
use crate::engine::compare::{self, CompareOptions, Metric, Scores};
use crate::engine::decode::{
    DecodeConfig, DecodeStats, Decoded, Decoder, Event, EventTime, FeatureValue, Prediction,
    Record, RecordKind,
};
use crate::engine::detect::{
    AutoThresholds, DetectConfig, Rule, State, Thresholds, Transition, Verdict,
};
use crate::engine::experiment::{ExperimentConfig, ExperimentReport, Experiments};
use crate::engine::health::version_base;
use crate::engine::health::{Health, HealthConfig, HealthReport, Observation};
use crate::engine::history::{History, Worse};
use crate::engine::memory::{human, Budget, Plan};
use crate::engine::quality::{
    self as q, Judged, PredictedAs, Quality, QualityConfig, QualityReport,
};
use crate::engine::threshold::{self, NullCache, Quantiles};
use crate::engine::window::{Inserted, Window, WindowSpec, WindowState};

/// Capture a baseline from live traffic for models that have none.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoBaseline {
    /// Reference events collected before the baseline is built.
    pub after_events: u64,
}

/// Engine settings (validated config).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub decode: DecodeConfig,
    pub window: WindowSpec,
    /// Timestamps further ahead of the arrival time are clamped to it.
    /// `None` (replay) trusts event time.
    pub max_future_ms: Option<i64>,
    pub compare: CompareOptions,
    pub detect: DetectConfig,
    pub binning: Binning,
    /// Keep a window per experiment arm as well as per model.
    pub per_arm: bool,
    /// Scores kept in each distribution's history besides PSI and the
    /// rules' metrics (`window.history`; "all" keeps every score).
    pub history_extra: Vec<Metric>,
    pub max_models: usize,
    pub max_arms_per_model: usize,
    pub auto_baseline: Option<AutoBaseline>,
    /// Errors, deploys, latency quantiles, batch statistics.
    pub health: HealthConfig,
    /// The feedback join and arm comparison.
    pub experiments: ExperimentConfig,
    /// The label join, realized and estimated quality.
    pub quality: QualityConfig,
    /// Panes per window at most: a longer window gets longer panes
    /// ([`WindowSpec::capped`]), so memory does not grow with its length.
    pub max_panes: usize,
    /// Panes per arm window at most (`window.arm_max_panes`). Arms are
    /// compared over the whole window, with each other and with the
    /// baseline, so their edge may move in coarser steps than the model's:
    /// a day in 12 panes of 2 h. That keeps a model with arms near the cost
    /// of one window instead of one per arm.
    pub arm_max_panes: usize,
    /// Bytes the engine's state may take (see [`crate::engine::memory`]);
    /// `None`: no limit.
    pub max_memory: Option<usize>,
    /// What a model costs outside the engine once published (the daemon's
    /// series text and snapshot); reserved with the model. Zero in replay.
    pub published: Published,
}

/// What publishing a model's evaluation costs outside the engine, set by
/// the daemon from its metrics configuration: exposition lines per
/// distribution (of the model's window, and of each arm's), each of
/// `line_bytes` plus the model's and the distribution's names, and a
/// report entry per distribution, all held `copies` times at once (the
/// text served while the next is built, and the families it is built
/// from). The engine reserves it with the model, so the budget covers it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Published {
    pub lines_per_distribution: usize,
    pub lines_per_arm_distribution: usize,
    pub line_bytes: usize,
    pub report_bytes_per_distribution: usize,
    pub copies: usize,
}

impl Published {
    /// Bytes for a model's (`arm` false) or one arm's distributions.
    fn bytes(&self, layout: &Layout, arm: bool) -> usize {
        let lines = if arm {
            self.lines_per_arm_distribution
        } else {
            self.lines_per_distribution
        };
        let model = layout.baseline.model.len();
        let per_slot: usize = layout
            .slots
            .iter()
            .map(|s| {
                lines * (self.line_bytes + model + s.name.len())
                    + self.report_bytes_per_distribution
            })
            .sum();
        per_slot * self.copies
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            decode: DecodeConfig::default(),
            window: WindowSpec::default(),
            max_future_ms: Some(5 * 60_000),
            compare: CompareOptions::default(),
            detect: DetectConfig::default(),
            binning: Binning::default(),
            per_arm: true,
            history_extra: Vec::new(),
            max_models: 1000,
            max_arms_per_model: 8,
            auto_baseline: None,
            health: HealthConfig::default(),
            experiments: ExperimentConfig::default(),
            quality: QualityConfig::default(),
            max_panes: DEFAULT_MAX_PANES,
            arm_max_panes: DEFAULT_ARM_MAX_PANES,
            max_memory: None,
            published: Published::default(),
        }
    }
}

impl EngineConfig {
    /// The bound of one drift window on `bins` bins in `slots`
    /// distributions, with its verdicts, scores and cached thresholds.
    fn tracked_bytes(&self, bins: usize, slots: usize, panes: usize) -> usize {
        Window::bytes_bound(bins, slots, panes, self.decode.max_features)
            + slots * self.detect.rules.len() * std::mem::size_of::<Verdict>()
            + slots * NullCache::BYTES_PER_SLOT
            + 256
    }

    /// A model's drift state without its arms: its window, its latency
    /// window (when the baseline has stages) and its bookkeeping.
    pub fn model_bytes(&self, layout: &Layout) -> usize {
        let latency = Layout::latency_shape(&layout.baseline).map_or(0, |(bins, slots)| {
            self.tracked_bytes(bins, slots, self.window.panes())
        });
        let latency_slots = Layout::latency_shape(&layout.baseline).map_or(0, |(_, slots)| slots);
        self.tracked_bytes(layout.total_bins, layout.slots.len(), self.window.panes())
            + latency
            + 512
            + 2 * threshold::Laws::BYTES
            + self.model_bytes_of_history(layout.slots.len() + latency_slots)
            + self.published.bytes(layout, false)
    }

    /// One arm's window of a model.
    pub fn arm_bytes(&self, layout: &Layout) -> usize {
        self.tracked_bytes(
            layout.total_bins,
            layout.slots.len(),
            self.arm_window().panes(),
        ) + self.published.bytes(layout, true)
    }

    /// The scores a distribution's history keeps: PSI, every metric a rule
    /// judges (the scores that can fire) and those `window.history` adds,
    /// in [`Metric::ALL`]'s order.
    pub fn history_metrics(&self) -> Vec<Metric> {
        Metric::ALL
            .into_iter()
            .filter(|m| {
                *m == Metric::Psi
                    || self.detect.rules.iter().any(|r| r.metric == *m)
                    || self.history_extra.contains(m)
            })
            .collect()
    }

    /// What the score history of `slots` distributions holds.
    pub fn model_bytes_of_history(&self, slots: usize) -> usize {
        slots * History::bytes(self.history_metrics().len())
    }

    /// An arm's window: the model's, in at most `arm_max_panes` panes.
    pub fn arm_window(&self) -> WindowSpec {
        self.window.capped(self.arm_max_panes).0
    }

    /// What publishing a model and `arms` arms costs outside the engine.
    fn published_bytes(&self, layout: &Layout, arms: usize) -> usize {
        self.published.bytes(layout, false) + arms * self.published.bytes(layout, true)
    }

    /// One model's health state.
    pub fn health_bytes(&self) -> usize {
        self.health.model_bytes()
    }

    /// One (model, arm)'s feedback counts.
    pub fn arm_stats_bytes(&self) -> usize {
        self.experiments.arm_bytes()
    }

    /// One feature (or stage) of an automatic baseline being collected; a
    /// collection reserves this per feature as its features appear.
    pub fn collecting_bytes(&self) -> usize {
        BuildLimits::sampled(self.decode.max_features, &self.binning).accumulator_bytes()
    }

    /// What the engine may hold with these baselines loaded: every baselined
    /// model at the worst case (all panes full, every arm up to the cap), their
    /// health and feedback counts, the feedback join at its caps, and the
    /// automatic baselines being collected. Models beyond (new versions,
    /// automatic baselines) are admitted at run time while the budget allows.
    pub fn memory_plan(&self, layouts: &[&Layout]) -> Plan {
        let cfg = self;
        let mut p = Plan::default();
        let panes = cfg.window.panes();
        let n = layouts.len();
        let arms_each = if cfg.per_arm {
            cfg.max_arms_per_model
        } else {
            0
        };
        let published: usize = layouts
            .iter()
            .map(|l| cfg.published_bytes(l, arms_each))
            .sum();
        let windows: usize = layouts
            .iter()
            .map(|l| cfg.model_bytes(l) - cfg.published.bytes(l, false))
            .sum();
        let bins: usize = layouts.iter().map(|l| l.total_bins).sum();
        let fits = layouts
            .iter()
            .flat_map(|l| &l.baseline.features)
            .filter(|f| f.null.is_some())
            .count();
        p.push(
            "baselines",
            format!("{n} baselines as loaded: bins, counts, names, {fits} null fits"),
            layouts.iter().map(|l| l.heap_bytes()).sum(),
        );
        p.push(
            "drift windows",
            format!(
                "{n} baselines, {bins} bins in all, × {panes} panes × 4 B, with latency windows and score history"
            ),
            windows,
        );
        if cfg.per_arm && cfg.max_arms_per_model > 0 {
            let arms: usize = layouts
                .iter()
                .map(|l| cfg.arm_bytes(l) - cfg.published.bytes(l, true))
                .sum();
            p.push(
                "arm windows",
                format!(
                    "{} arms per model at most × the model's bins × {} panes (window.arm_max_panes)",
                    cfg.max_arms_per_model,
                    cfg.arm_window().panes()
                ),
                arms * cfg.max_arms_per_model,
            );
        }
        if published > 0 {
            let c = cfg.published;
            p.push(
                "published series and reports",
                format!(
                    "{} + {} per arm exposition lines per distribution, held {}×",
                    c.lines_per_distribution, c.lines_per_arm_distribution, c.copies
                ),
                published,
            );
        }
        if cfg.health.enabled {
            p.push(
                "health",
                format!(
                    "{n} models × {} B (panes, latency histograms)",
                    cfg.health_bytes()
                ),
                n * cfg.health_bytes(),
            );
        }
        if cfg.experiments.enabled {
            let arms = n * cfg.max_arms_per_model.max(1);
            p.push(
                "feedback counts",
                format!("{arms} (model, arm) pairs × {} B", cfg.arm_stats_bytes()),
                arms * cfg.arm_stats_bytes(),
            );
            p.push(
                "feedback join",
                format!(
                    "{} predictions and {} feedback lines waiting at most",
                    cfg.experiments.max_pending, cfg.experiments.max_early
                ),
                cfg.experiments.join_bytes(),
            );
        }
        if cfg.quality.enabled {
            let q = &cfg.quality;
            let slots = n * (q.slot_bytes(true) + arms_each * q.slot_bytes(false));
            p.push(
                "realized quality",
                format!(
                    "{n} models × (1 + {arms_each} arms) × {} panes of labelled counts",
                    q.panes
                ),
                slots,
            );
            p.push(
                "label join",
                format!(
                    "{} predictions and {} labels waiting at most (then a hash sample)",
                    q.max_pending, q.max_early
                ),
                q.join_bytes(),
            );
        }
        if cfg.auto_baseline.is_some() {
            p.push(
                "automatic baselines being collected",
                format!(
                    "within the budget, {} per feature of each (a sample of its values)",
                    human(cfg.collecting_bytes())
                ),
                0,
            );
        }
        p
    }
}

/// Panes per window unless configured (`window.max_panes`): a 10-minute
/// window of 30 s panes has 20; a day window gets 24-minute panes.
pub const DEFAULT_MAX_PANES: usize = 60;
/// Panes per arm window unless configured (`window.arm_max_panes`).
pub const DEFAULT_ARM_MAX_PANES: usize = 12;

impl EngineConfig {
    /// Aligns the health and experiment windows with the drift window (same
    /// length and panes when it is a time window) and their caps with the
    /// engine's. Call after changing `window` or the caps.
    pub fn align(&mut self) {
        self.window = self.window.capped(self.max_panes).0;
        // Health follows the model's window; the arms' feedback counts
        // follow the arms' windows, which compare over the whole window too.
        let arm_window = self.arm_window();
        for (spec, p, n) in [
            (
                self.window,
                &mut self.health.pane_ms,
                &mut self.health.panes,
            ),
            (
                arm_window,
                &mut self.experiments.pane_ms,
                &mut self.experiments.panes,
            ),
        ] {
            if let WindowSpec::Time { length_ms, pane_ms } = spec {
                *p = pane_ms;
                *n = (length_ms.max(1) as u64).div_ceil(pane_ms.max(1) as u64) as usize;
            }
        }
        self.health.max_models = self.max_models;
        self.experiments.max_models = self.max_models;
        self.experiments.max_arms_per_model = self.max_arms_per_model;
        self.quality.max_models = self.max_models;
        self.quality.max_arms_per_model = if self.per_arm {
            self.max_arms_per_model
        } else {
            0
        };
    }
}

/// Engine-wide counters, beyond what the decoder counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub decode: DecodeStats,
    /// Events dropped for arriving after their pane left the window.
    pub late: u64,
    /// Events whose timestamp was too far in the future (clamped).
    pub future_clamped: u64,
    /// Events of models with no baseline (and no auto-baseline).
    pub no_baseline: u64,
    /// Events of new models refused because `max_models` was reached.
    pub models_refused: u64,
    /// Events of new arms refused because `max_arms_per_model` was reached
    /// (still counted in the model's window).
    pub arms_refused: u64,
    /// Baselines captured automatically.
    pub auto_baselines: u64,
    /// Batch-statistics class counts added to prediction distributions.
    pub batch_class_counts: u64,
    /// Lines whose model, arm, health state or automatic baseline would
    /// have passed the memory budget (`limits.max_memory`): not tracked.
    pub memory_refused: u64,
}

/// What happened to one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Counted,
    Late,
    NoBaseline,
    /// Collected for an automatic baseline.
    Collected,
    Refused,
    Skipped,
    Rejected,
}

/// A window and its verdicts. Its scores are not kept: a report computes
/// them from the window's counts (the same comparison the evaluation made,
/// on the same counts when the report follows the evaluation, as the
/// daemon's snapshot and replay's report do), so four thousand windows do
/// not hold 3 KiB of scores each that only a report reads.
#[derive(Debug)]
pub struct Tracked {
    pub window: Window,
    /// One verdict per (distribution, rule), distribution-major, in one
    /// allocation: a model with arms holds thousands of these.
    verdicts: Box<[Verdict]>,
    rules: usize,
    pub evaluated_at_ms: Option<i64>,
    /// Each distribution's PSI over the last day (a model's and its latency
    /// window; arms keep none): empty until the first evaluation.
    pub history: Vec<History>,
}

impl Tracked {
    /// Distribution `slot`'s verdict under rule `rule`.
    pub fn verdict(&self, slot: usize, rule: usize) -> &Verdict {
        &self.verdicts[slot * self.rules + rule]
    }

    /// Distribution `slot`'s scores as the window holds it now; none
    /// before its first evaluation (or for an empty window).
    pub fn scores(&self, slot: usize, opts: &CompareOptions) -> Option<Scores> {
        self.evaluated_at_ms?;
        let layout = self.window.layout();
        let s = &layout.slots[slot];
        let base = &layout.baseline_counts[s.offset..s.offset + s.len];
        compare::compare(
            self.window.slot_counts(slot),
            base,
            layout.bin_layout(slot),
            opts,
        )
    }

    fn verdict_mut(&mut self, slot: usize, rule: usize) -> &mut Verdict {
        &mut self.verdicts[slot * self.rules + rule]
    }

    fn new(layout: Arc<Layout>, spec: WindowSpec, rules: usize) -> Tracked {
        let slots = layout.slots.len();
        Tracked {
            window: Window::new(layout, spec),
            verdicts: vec![Verdict::default(); slots * rules].into_boxed_slice(),
            rules,
            evaluated_at_ms: None,
            history: Vec::new(),
        }
    }
}

/// Everything tracked for one model.
#[derive(Debug)]
pub struct ModelState {
    pub name: Arc<str>,
    pub layout: Arc<Layout>,
    pub all: Tracked,
    /// Stage latencies, when the baseline has them (see [`Layout::for_latency`]).
    pub latency: Option<Tracked>,
    pub arms: Vec<(Arc<str>, Tracked)>,
    /// Simulated no-drift quantiles of the model's distributions
    /// (automatic thresholds), shared by its window and its arms' windows:
    /// the same bins, the same seeds, so the same quantiles, simulated once
    /// instead of once per arm. Cleared when the baseline changes.
    pub null: NullCache,
    /// The same for the latency window's stages.
    pub latency_null: NullCache,
    /// Inference events of this model counted into windows, ever.
    pub events: u64,
    /// Last event time seen (ms).
    pub last_event_ms: i64,
    /// Where this model's events came from (opaque ids the caller gives,
    /// Kafka partitions in the daemon), so its state can follow a partition
    /// to another replica. Bounded: a model keyed to its partitions has one.
    pub sources: Vec<u32>,
    /// A source was not remembered ([`MAX_SOURCES`] reached).
    pub sources_overflow: bool,
    /// Bytes reserved for this model's windows, its arms' included.
    reserved: usize,
}

impl ModelState {
    /// Its window and its arms' windows as they can be saved and restored
    /// ([`Engine::restore_window`]): (arm, panes), the model's own first.
    /// One model at a time, so a checkpoint never copies every window at
    /// once.
    pub fn window_states(&self) -> Vec<(Option<String>, WindowState)> {
        let mut v = vec![(None, self.all.window.state())];
        for (a, t) in &self.arms {
            v.push((Some(a.to_string()), t.window.state()));
        }
        v
    }

    /// Whether [`ModelState::sources`] names every source the model's
    /// lines came from.
    pub fn sources_complete(&self) -> bool {
        !self.sources_overflow
    }

    fn note_source(&mut self, s: u32) {
        if self.sources.last() == Some(&s) || self.sources.contains(&s) {
            return;
        }
        if self.sources.len() < MAX_SOURCES {
            self.sources.push(s);
        } else {
            self.sources_overflow = true;
        }
    }
}

/// The model's class set for per-class quality: the baseline's
/// prediction categories, the first `max` of them.
fn classes_of(layout: &Layout, max: usize) -> Arc<[(Box<str>, u64)]> {
    match layout.baseline.prediction.as_ref().map(|p| &p.bins) {
        Some(Bins::Categorical { categories }) => categories
            .iter()
            .take(max)
            .map(|c| (c.as_str().into(), crate::engine::decode::feature_hash(c)))
            .collect(),
        _ => Arc::from(Vec::new()),
    }
}

/// What a (model, arm)'s quality is judged against: the baseline's
/// quality (or, without one, raw confidences on its confidence bins) and
/// the estimate from the drift window's confidence counts, when the model
/// has a window (labels may come long after its last prediction).
fn judge_quality(
    layouts: &FxHashMap<Box<str>, Arc<Layout>>,
    models: &FxHashMap<Box<str>, ModelState>,
    model: &str,
    arm: Option<&str>,
    level: f64,
) -> Option<Judged> {
    let layout = layouts.get(model)?;
    let b = &layout.baseline;
    let conf = b.confidence.as_ref();
    let stored = b.quality.clone();
    let calibration = stored
        .clone()
        .filter(|x| !x.mean_confidence.is_empty())
        .or_else(|| conf.and_then(|c| q::QualityBaseline::uncalibrated(&c.bins)));
    let estimated = calibration
        .as_ref()
        .zip(conf)
        .and_then(|(cal, c)| q::estimate(&c.counts, cal, level))
        .map(|e| e.accuracy);
    let reference = q::Reference {
        accuracy: stored.as_ref().and_then(|x| x.accuracy),
        estimated,
        ece: stored.as_ref().and_then(|x| x.ece),
        mae: stored.as_ref().and_then(|x| x.mae),
        labelled: stored.as_ref().map_or(0, |x| x.labelled),
        calibrated: calibration.as_ref().is_some_and(|c| c.calibrated()),
    };
    let window = models.get(model).and_then(|m| match arm {
        None => Some(&m.all),
        Some(a) => m.arms.iter().find(|(n, _)| **n == *a).map(|(_, t)| t),
    });
    // The window's own layout: its bins are the baseline's in force.
    let estimate = match (&calibration, window) {
        (Some(cal), Some(t)) => t
            .window
            .layout()
            .confidence
            .and_then(|slot| q::estimate(t.window.slot_counts(slot), cal, level)),
        _ => None,
    };
    Some(Judged {
        reference,
        estimate,
    })
}

/// Sources remembered per model.
const MAX_SOURCES: usize = 64;

/// The drift engine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    decoder: Decoder,
    layouts: FxHashMap<Box<str>, Arc<Layout>>,
    models: FxHashMap<Box<str>, ModelState>,
    /// Models collecting an automatic baseline, with when they were last
    /// seen and the bytes reserved for them.
    collecting: FxHashMap<Box<str>, (BaselineBuilder, i64, usize)>,
    pub stats: EngineStats,
    /// Reused per event: the flat bins of the event being inserted.
    scratch: Vec<u32>,
    /// The source of the lines being ingested (see [`ModelState::sources`]).
    source: Option<u32>,
    pub health: Health,
    pub experiments: Experiments,
    pub quality: Quality,
    /// What the last evaluation found beside drift (for reports and metrics).
    last_health: Vec<HealthReport>,
    last_experiments: ExperimentReport,
    last_quality: Vec<QualityReport>,
    /// Transitions made outside an evaluation (resolves of forgotten
    /// models), handed out by the next one.
    pending: Vec<Transition>,
    /// What the state may take, and what it takes (reserved bounds).
    budget: Budget,
    /// Models with a baseline per lineage (see `health::version_base`): a
    /// new version of a model with a baseline is tracked for its health,
    /// so its deploy is judged, before it has a baseline of its own.
    lineages: FxHashMap<Box<str>, u32>,
}

impl Engine {
    pub fn new(mut cfg: EngineConfig, baselines: Vec<Baseline>) -> Engine {
        cfg.align();
        let cfg_max_memory = cfg.max_memory;
        let decoder = Decoder::new(cfg.decode.clone());
        let mut e = Engine {
            health: Health::new(cfg.health.clone()),
            experiments: Experiments::new(cfg.experiments.clone()),
            quality: Quality::new(cfg.quality.clone()),
            last_health: Vec::new(),
            last_experiments: ExperimentReport::default(),
            last_quality: Vec::new(),
            pending: Vec::new(),
            cfg,
            decoder,
            layouts: FxHashMap::default(),
            models: FxHashMap::default(),
            collecting: FxHashMap::default(),
            stats: EngineStats::default(),
            scratch: Vec::new(),
            source: None,
            budget: Budget::new(cfg_max_memory),
            lineages: FxHashMap::default(),
        };
        for b in baselines {
            e.set_baseline(b);
        }
        e
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Installs or replaces a model's baseline. Windows on the old bins are
    /// rebuilt empty only when the bins changed; verdict history is kept
    /// when the layout is the same shape.
    pub fn set_baseline(&mut self, b: Baseline) {
        let name: Box<str> = b.model.as_str().into();
        let layout = Arc::new(Layout::new(b));
        if !self.refit(&name, &layout) {
            // Its windows on the new bins would pass the budget: they start
            // again when the model is next seen, if they fit then.
            self.stats.memory_refused += 1;
            self.forget(&name, 0, |m| {
                format!("{m}: its new baseline does not fit the memory budget")
            });
        }
        if let Some(m) = self.models.get_mut(&name) {
            let same_bins = m.layout.slots.len() == layout.slots.len()
                && m.layout
                    .baseline
                    .features
                    .iter()
                    .zip(&layout.baseline.features)
                    .all(|(a, b)| a.name == b.name && a.bins == b.bins)
                && m.layout.baseline.prediction.as_ref().map(|p| &p.bins)
                    == layout.baseline.prediction.as_ref().map(|p| &p.bins)
                && m.layout.baseline.confidence.as_ref().map(|p| &p.bins)
                    == layout.baseline.confidence.as_ref().map(|p| &p.bins);
            let rules = self.cfg.detect.rules.len();
            let (spec, arm_spec) = (self.cfg.window, self.cfg.arm_window());
            let rebuild = |t: &mut Tracked, spec: WindowSpec| {
                let state = t.window.state();
                let mut fresh = Tracked::new(layout.clone(), spec, rules);
                if same_bins {
                    // Same bins: the counts stay meaningful; keep them.
                    let _ = fresh.window.restore(&state);
                    fresh.verdicts = std::mem::take(&mut t.verdicts);
                    fresh.history = std::mem::take(&mut t.history);
                }
                *t = fresh;
            };
            rebuild(&mut m.all, spec);
            for (_, t) in &mut m.arms {
                rebuild(t, arm_spec);
            }
            let same_stages = m.layout.baseline.latency.len() == layout.baseline.latency.len()
                && m.layout
                    .baseline
                    .latency
                    .iter()
                    .zip(&layout.baseline.latency)
                    .all(|(a, b)| a.name == b.name && a.bins == b.bins);
            let mut latency = latency_tracked(&layout, spec, rules);
            if let (true, Some(old), Some(new)) = (same_stages, &mut m.latency, &mut latency) {
                // Same stage bins (a capture keeps them): keep the counts.
                let _ = new.window.restore(&old.window.state());
                new.verdicts = std::mem::take(&mut old.verdicts);
            }
            m.latency = latency;
            m.layout = layout.clone();
            // Quantiles of the old bins mean nothing on the new ones.
            m.null = NullCache::default();
            m.latency_null = NullCache::default();
        }
        if let Some((_, _, reserved)) = self.collecting.remove(&name) {
            self.budget.release(reserved);
        }
        if !self.layouts.contains_key(&name) {
            *self.lineages.entry(version_base(&name).into()).or_default() += 1;
        }
        // A baseline is held whether or not it fits: counted, so that the
        // models admitted after it are refused instead of the limit passed.
        self.budget.reserve_anyway(layout.heap_bytes());
        if let Some(old) = self.layouts.insert(name, layout) {
            self.budget.release(old.heap_bytes());
        }
    }

    /// Moves a tracked model's reservation to its windows on `layout`;
    /// false when they do not fit (the old reservation is released).
    fn refit(&mut self, name: &str, layout: &Layout) -> bool {
        let Some(m) = self.models.get_mut(name) else {
            return true;
        };
        let bytes = self.cfg.model_bytes(layout) + m.arms.len() * self.cfg.arm_bytes(layout);
        self.budget.release(m.reserved);
        m.reserved = 0;
        if !self.budget.try_reserve(bytes) {
            return false;
        }
        m.reserved = bytes;
        true
    }

    /// Makes `loaded` the baselines in force (a reload of the baselines
    /// directory): a model whose version changed gets the new one, a model
    /// whose file went away loses its baseline and windows, automatic
    /// baselines stay. Returns the models loaded.
    pub fn replace_baselines(&mut self, loaded: Vec<Baseline>) -> Vec<String> {
        let names: Vec<String> = loaded.iter().map(|b| b.model.clone()).collect();
        let current: Vec<String> = self
            .baselines()
            .filter(|b| b.source != "auto")
            .map(|b| b.model.clone())
            .collect();
        for b in loaded {
            let unchanged = self
                .baselines()
                .any(|x| x.model == b.model && x.version == b.version);
            if !unchanged {
                self.set_baseline(b);
            }
        }
        for m in current {
            if !names.contains(&m) {
                self.remove_baseline(&m);
            }
        }
        names
    }

    /// Drops a model's baseline and its windows.
    pub fn remove_baseline(&mut self, model: &str) {
        if let Some(old) = self.layouts.remove(model) {
            self.budget.release(old.heap_bytes());
            let base = version_base(model);
            if let Some(n) = self.lineages.get_mut(base) {
                *n -= 1;
                if *n == 0 {
                    self.lineages.remove(base);
                }
            }
        }
        if let Some(m) = self.models.remove(model) {
            self.budget.release(m.reserved);
        }
    }

    /// Whether a model's health and feedback are tracked: it has a baseline
    /// (or is collecting one), or it is a new version of a model that has
    /// one (so its deploy is judged). Any other model costs counters only:
    /// a stream of junk model ids cannot fill memory.
    fn tracks(&self, model: &str) -> bool {
        self.layouts.contains_key(model)
            || self.collecting.contains_key(model)
            || self.lineages.contains_key(version_base(model))
    }

    /// Admits a model to the health analysis, within the budget.
    fn admit_health(&mut self, model: &str) -> bool {
        if self.health.model(model).is_some() {
            return true;
        }
        if !self.cfg.health.enabled || !self.tracks(model) {
            return false;
        }
        if self.budget.try_reserve(self.cfg.health_bytes()) {
            return true;
        }
        self.stats.memory_refused += 1;
        false
    }

    /// Counts a line in the model's health, if it is tracked.
    fn observe_health(
        &mut self,
        model: &str,
        service: Option<&str>,
        t_ms: i64,
        o: Observation<'_, '_>,
    ) {
        if !self.admit_health(model) {
            return;
        }
        let had = self.health.model(model).is_some();
        self.health.observe(model, service, t_ms, o);
        if !had && self.health.model(model).is_none() {
            // The health caps refused it after all.
            self.budget.release(self.cfg.health_bytes());
        }
    }

    /// Bytes reserved for the engine's state, and the limit.
    pub fn memory(&self) -> (usize, Option<usize>) {
        (self.budget.used(), self.budget.limit())
    }

    /// The version of the model's baseline in force, if it has one.
    pub fn baseline_version(&self, model: &str) -> Option<&str> {
        self.layouts.get(model).map(|l| l.baseline.version.as_str())
    }

    pub fn baselines(&self) -> impl Iterator<Item = &Baseline> {
        self.layouts.values().map(|l| &l.baseline)
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelState> {
        self.models.values()
    }

    pub fn model(&self, name: &str) -> Option<&ModelState> {
        self.models.get(name)
    }

    /// Decodes a line and counts the result. The event borrows the line, not
    /// the engine.
    pub fn decode<'a>(&mut self, line: &'a [u8]) -> Decoded<'a> {
        let d = self.decoder.decode(line);
        self.count_decoded(&d);
        d
    }

    /// The engine's decoder, to decode on other threads (a replay does);
    /// what it decodes is then counted with [`Engine::count_decoded`].
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn count_decoded(&mut self, d: &Decoded<'_>) {
        self.stats.decode.record(d);
    }

    /// The event time to file a line under: its own timestamp, or the
    /// arrival time when it had none, clamped to the arrival time when it is
    /// too far in the future.
    pub fn event_time(&mut self, time: EventTime, arrival_ms: i64) -> i64 {
        match time {
            EventTime::Parsed(t) => match self.cfg.max_future_ms {
                Some(max) if t > arrival_ms.saturating_add(max) => {
                    self.stats.future_clamped += 1;
                    arrival_ms
                }
                _ => t,
            },
            EventTime::Missing | EventTime::Invalid => arrival_ms,
        }
    }

    /// Says where the next lines come from (a Kafka partition's id).
    pub fn set_source(&mut self, source: Option<u32>) {
        self.source = source;
    }

    /// Decodes and counts one line arriving at `arrival_ms`.
    pub fn ingest(&mut self, line: &[u8], arrival_ms: i64) -> Outcome {
        let d = self.decode(line);
        let t = match &d {
            Decoded::Event(ev) => ev.time,
            Decoded::Record(r) => r.time,
            _ => EventTime::Missing,
        };
        let t = self.event_time(t, arrival_ms);
        self.accept(&d, t, arrival_ms)
    }

    /// Counts a decoded line at event time `t_ms` in every analysis it
    /// feeds: an inference record in the drift windows, the model's health
    /// and the feedback join; the other records where they belong.
    pub fn accept(&mut self, d: &Decoded<'_>, t_ms: i64, now_ms: i64) -> Outcome {
        match d {
            Decoded::Event(ev) => {
                // Health and the join file by event time too, but never in
                // a pane ahead of now: that would overwrite live panes.
                let th = t_ms.min(now_ms);
                self.observe_health(
                    &ev.model,
                    ev.service.as_deref(),
                    th,
                    Observation {
                        request: true,
                        error: ev
                            .level
                            .is_some_and(crate::engine::decode::LogLevel::is_error),
                        error_type: ev.error_type.as_deref(),
                        stages: &ev.stages,
                    },
                );
                if let Some(r) = ev.request_id {
                    self.predicted(&ev.model, ev.arm.as_deref(), r, th);
                    self.quality_prediction(ev, r, th);
                }
                let out = self.insert(ev, t_ms, now_ms);
                // A collected event's stages went into its automatic
                // baseline; a refused one's model has no window.
                if !ev.stages.is_empty() && matches!(out, Outcome::Counted | Outcome::Late) {
                    self.add_latency(&ev.model, &ev.stages, t_ms);
                }
                out
            }
            Decoded::Record(r) => self.record(r, t_ms, now_ms),
            Decoded::Skipped(_) => Outcome::Skipped,
            Decoded::Rejected(_) => Outcome::Rejected,
        }
    }

    /// A prediction with a request id, for the feedback join: counted for
    /// tracked models, a new (model, arm) only within the budget.
    fn predicted(&mut self, model: &str, arm: Option<&str>, request: u64, t_ms: i64) {
        let tracked = self.tracks(model);
        let bytes = self.cfg.arm_stats_bytes();
        let (budget, stats) = (&mut self.budget, &mut self.stats);
        let mut admit = || {
            if !tracked {
                return false;
            }
            let ok = budget.try_reserve(bytes);
            stats.memory_refused += u64::from(!ok);
            ok
        };
        self.experiments
            .prediction(model, arm, request, t_ms, &mut admit);
    }

    /// A prediction with a request id, for the label join: a model with a
    /// baseline only (its class set bounds the per-class counts), within
    /// the budget.
    fn quality_prediction(&mut self, ev: &Event<'_>, request: u64, t_ms: i64) {
        if !self.cfg.quality.enabled {
            return;
        }
        if !self.quality.joining() {
            self.quality.join.stats.before_labels += 1;
            return;
        }
        let predicted = match &ev.prediction {
            Some(Prediction::Label(l)) => {
                PredictedAs::Class(crate::engine::decode::feature_hash(l), ev.confidence)
            }
            Some(Prediction::Value(v)) => PredictedAs::Value(*v),
            None => return,
        };
        let layout = self.layouts.get(ev.model.as_ref()).cloned();
        let Some(layout) = layout else {
            self.quality.join.stats.refused += 1;
            return;
        };
        let max_classes = self.cfg.quality.max_classes;
        let classes = || classes_of(&layout, max_classes);
        let (budget, stats) = (&mut self.budget, &mut self.stats);
        let mut admit = |bytes: usize| {
            let ok = budget.try_reserve(bytes);
            stats.memory_refused += u64::from(!ok);
            ok
        };
        let arm = ev.arm.as_deref().filter(|_| self.cfg.per_arm);
        self.quality.prediction(
            &ev.model, arm, request, t_ms, predicted, &classes, &mut admit,
        );
    }

    fn record(&mut self, r: &Record<'_>, t_ms: i64, now_ms: i64) -> Outcome {
        let model = r.model.as_deref();
        let th = t_ms.min(now_ms);
        match (r.kind, model) {
            (RecordKind::Label, _) => {
                if let (Some(req), Some(truth)) = (r.request_id, r.truth) {
                    self.quality.label(req, truth, th);
                }
            }
            (RecordKind::Feedback, _) => {
                if let (Some(req), Some(a)) = (r.request_id, r.action.as_deref()) {
                    self.experiments.feedback(req, a, th);
                }
            }
            (RecordKind::Timing, Some(m)) => {
                let o = Observation {
                    stages: &r.stages,
                    ..Observation::default()
                };
                self.observe_health(m, r.service.as_deref(), th, o);
                self.add_latency(m, &r.stages, t_ms);
            }
            (RecordKind::Error, Some(m)) => {
                let o = Observation {
                    request: true,
                    error: true,
                    error_type: r.error_type.as_deref(),
                    stages: &r.stages,
                };
                self.observe_health(m, r.service.as_deref(), th, o);
            }
            (RecordKind::BatchStats, Some(m)) => {
                if self.admit_health(m) {
                    self.health.observe_batch(
                        m,
                        r.service.as_deref(),
                        th,
                        &r.input_stats,
                        r.avg_confidence,
                    );
                }
                self.add_class_counts(m, &r.class_counts, t_ms);
            }
            (_, None) => {}
        }
        Outcome::Counted
    }

    /// The model's state, created when it has a baseline and the cap allows.
    fn state_of(&mut self, model: &str, t_ms: i64) -> Option<&mut ModelState> {
        if !self.models.contains_key(model) {
            let layout = self.layouts.get(model)?.clone();
            if self.models.len() >= self.cfg.max_models {
                self.stats.models_refused += 1;
                return None;
            }
            let reserved = self.cfg.model_bytes(&layout);
            if !self.budget.try_reserve(reserved) {
                self.stats.memory_refused += 1;
                return None;
            }
            let rules = self.cfg.detect.rules.len();
            self.models.insert(
                model.into(),
                ModelState {
                    name: model.into(),
                    all: Tracked::new(layout.clone(), self.cfg.window, rules),
                    latency: latency_tracked(&layout, self.cfg.window, rules),
                    layout,
                    arms: Vec::new(),
                    events: 0,
                    last_event_ms: t_ms,
                    sources: Vec::new(),
                    sources_overflow: false,
                    null: NullCache::default(),
                    latency_null: NullCache::default(),
                    reserved,
                },
            );
        }
        self.models.get_mut(model)
    }

    /// Counts stage latencies in the model's latency window (and in an
    /// automatic baseline being collected).
    fn add_latency(&mut self, model: &str, stages: &[(std::borrow::Cow<'_, str>, f64)], t_ms: i64) {
        if let Some((b, _, _)) = self.collecting.get_mut(model) {
            b.add_stages(stages);
            self.reserve_collection(model);
            return;
        }
        let source = self.source;
        let Some(m) = self.state_of(model, t_ms) else {
            return;
        };
        if let Some(s) = source {
            m.note_source(s);
        }
        if let Some(t) = &mut m.latency {
            let ev = Event {
                model: std::borrow::Cow::Borrowed(""),
                arm: None,
                time: EventTime::Missing,
                features: stages
                    .iter()
                    .map(|(k, v)| {
                        (
                            std::borrow::Cow::Borrowed(k.as_ref()),
                            FeatureValue::Num(*v),
                        )
                    })
                    .collect(),
                prediction: None,
                confidence: None,
                level: None,
                service: None,
                error_type: None,
                request_id: None,
                stages: Vec::new(),
                issues: 0,
            };
            t.window.insert(&ev, t_ms);
            m.last_event_ms = m.last_event_ms.max(t_ms);
        }
    }

    /// Adds a batch line's class counts to the model's prediction distribution.
    fn add_class_counts(
        &mut self,
        model: &str,
        counts: &[(std::borrow::Cow<'_, str>, u64)],
        t_ms: i64,
    ) {
        if counts.is_empty() {
            return;
        }
        let source = self.source;
        let Some(m) = self.state_of(model, t_ms) else {
            return;
        };
        if let Some(s) = source {
            m.note_source(s);
        }
        // A model that logs its inferences one by one has them counted
        // already; its batch lines summarise the same predictions.
        if m.events > 0 {
            return;
        }
        let Some(p) = m.layout.prediction else {
            return;
        };
        let slot = &m.layout.slots[p];
        let mut bins = Vec::with_capacity(counts.len());
        let mut total = 0u64;
        for (label, c) in counts {
            if let crate::engine::baseline::BinOf::Bin(b) = slot
                .binner
                .bin_prediction(&Prediction::Label(std::borrow::Cow::Borrowed(label)))
            {
                bins.push(((slot.offset + b as usize) as u32, *c));
                total = total.saturating_add(*c);
            }
        }
        if m.all.window.add_counts(t_ms, &bins) == Inserted::Counted {
            m.last_event_ms = m.last_event_ms.max(t_ms);
            self.stats.batch_class_counts = self.stats.batch_class_counts.saturating_add(total);
        }
    }

    /// Counts a decoded event at event time `t_ms`. `now_ms` stamps any
    /// automatic baseline.
    pub fn insert(&mut self, ev: &Event<'_>, t_ms: i64, now_ms: i64) -> Outcome {
        let model = ev.model.as_ref();
        if !self.models.contains_key(model) {
            if !self.layouts.contains_key(model) {
                return self.collect(ev, now_ms);
            }
            if self.state_of(model, t_ms).is_none() {
                return Outcome::Refused;
            }
        }
        let cfg = &self.cfg;
        let m = self.models.get_mut(model).expect("inserted above");
        // Bin once; the arm's window shares the model's layout.
        let mut bins = std::mem::take(&mut self.scratch);
        m.all.window.bins_of(ev, &mut bins);
        if m.all.window.add(t_ms, &bins) == Inserted::Late {
            self.scratch = bins;
            self.stats.late += 1;
            return Outcome::Late;
        }
        m.events += 1;
        m.last_event_ms = m.last_event_ms.max(t_ms);
        if let Some(s) = self.source {
            m.note_source(s);
        }
        if let (true, Some(arm)) = (cfg.per_arm, ev.arm.as_deref()) {
            let idx = match m.arms.iter().position(|(a, _)| **a == *arm) {
                Some(i) => Some(i),
                None if m.arms.len() < cfg.max_arms_per_model => {
                    let bytes = cfg.arm_bytes(&m.layout);
                    if self.budget.try_reserve(bytes) {
                        m.reserved += bytes;
                        m.arms.push((
                            arm.into(),
                            Tracked::new(
                                m.layout.clone(),
                                cfg.arm_window(),
                                cfg.detect.rules.len(),
                            ),
                        ));
                        Some(m.arms.len() - 1)
                    } else {
                        self.stats.memory_refused += 1;
                        None
                    }
                }
                None => {
                    self.stats.arms_refused += 1;
                    None
                }
            };
            if let Some(i) = idx {
                m.arms[i].1.window.add(t_ms, &bins);
            }
        }
        self.scratch = bins;
        Outcome::Counted
    }

    fn collect(&mut self, ev: &Event<'_>, now_ms: i64) -> Outcome {
        let Some(auto) = &self.cfg.auto_baseline else {
            self.stats.no_baseline += 1;
            return Outcome::NoBaseline;
        };
        let after = auto.after_events;
        let model = ev.model.as_ref();
        if !self.collecting.contains_key(model) {
            if self.collecting.len() + self.layouts.len() >= self.cfg.max_models {
                self.stats.models_refused += 1;
                return Outcome::Refused;
            }
            let limits = self.build_limits();
            self.collecting.insert(
                model.into(),
                (BaselineBuilder::with_limits(model, limits), now_ms, 0),
            );
        }
        let (b, seen, _) = self.collecting.get_mut(model).expect("inserted above");
        b.add(ev);
        *seen = now_ms;
        if !self.reserve_collection(model) {
            return Outcome::Refused;
        }
        let (b, _, _) = self.collecting.get_mut(model).expect("kept");
        if b.events() >= after {
            let (b, _, reserved) = self.collecting.remove(model).expect("present");
            self.budget.release(reserved);
            if let Ok(baseline) = b.finish(&self.cfg.binning, "auto", now_ms) {
                self.stats.auto_baselines += 1;
                self.set_baseline(baseline);
            }
        }
        Outcome::Collected
    }

    fn build_limits(&self) -> BuildLimits {
        BuildLimits::sampled(self.cfg.decode.max_features, &self.cfg.binning)
    }

    /// Keeps a collection's reservation up with its accumulators (each new
    /// feature or stage reserves its bound); a collection that no longer
    /// fits the budget is dropped, and false returned.
    fn reserve_collection(&mut self, model: &str) -> bool {
        let per = self.build_limits().accumulator_bytes();
        let Some((b, _, reserved)) = self.collecting.get_mut(model) else {
            return false;
        };
        let need = b.accumulators() * per;
        if need <= *reserved {
            return true;
        }
        if self.budget.try_reserve(need - *reserved) {
            *reserved = need;
            return true;
        }
        let (_, _, reserved) = self.collecting.remove(model).expect("present");
        self.budget.release(reserved);
        self.stats.memory_refused += 1;
        false
    }

    /// Baselines captured automatically and not yet handed out (the daemon
    /// writes them to the baselines directory).
    pub fn auto_captured(&self) -> impl Iterator<Item = &Baseline> {
        self.layouts
            .values()
            .map(|l| &l.baseline)
            .filter(|b| b.source == "auto")
    }

    /// A new baseline for `model` from its current window, on the same bins
    /// ("what we see now is the new normal").
    pub fn capture(&self, model: &str, now_ms: i64) -> Result<Baseline, String> {
        let m = self.models.get(model).ok_or_else(|| {
            format!("no window for model {model:?}: it has no baseline or no events yet")
        })?;
        let samples = m.all.window.samples();
        if samples == 0 {
            return Err(format!(
                "the window of model {model:?} is empty; wait for events"
            ));
        }
        Ok(m.layout
            .baseline
            .recapture(&m.layout, m.all.window.totals(), samples, now_ms))
    }

    /// Scores every window at `now_ms` and steps every verdict. Returns the
    /// transitions, in a stable order (model, arm, feature, metric).
    pub fn evaluate(&mut self, now_ms: i64) -> Vec<Transition> {
        let mut out = std::mem::take(&mut self.pending);
        let cfg = &self.cfg;
        let mut names: Vec<&Box<str>> = self.models.keys().collect();
        names.sort();
        let names: Vec<Box<str>> = names.into_iter().cloned().collect();
        let mut budget = SIMULATIONS_PER_EVALUATION;
        for name in names {
            let m = self.models.get_mut(&name).expect("listed");
            let mut eval = |arm: Option<&str>, t: &mut Tracked, null: &mut NullCache| {
                evaluate_tracked(cfg, (&m.name, arm), t, null, now_ms, &mut budget, &mut out)
            };
            eval(None, &mut m.all, &mut m.null);
            if let Some(t) = &mut m.latency {
                eval(None, t, &mut m.latency_null);
            }
            for (arm, t) in &mut m.arms {
                eval(Some(arm), t, &mut m.null);
            }
        }
        let (health, t) = self.health.evaluate(now_ms, &self.cfg.detect);
        self.last_health = health;
        out.extend(t);
        let (exp, t) = self.experiments.evaluate(now_ms, &self.cfg.detect);
        self.last_experiments = exp;
        out.extend(t);
        let (models, layouts, level) = (&self.models, &self.layouts, self.cfg.quality.interval);
        let judged =
            |model: &str, arm: Option<&str>| judge_quality(layouts, models, model, arm, level);
        let (quality, t) = self.quality.evaluate(now_ms, &self.cfg.detect, &judged);
        self.last_quality = quality;
        out.extend(t);
        out
    }

    /// Records sources for a restored model (see [`ModelState::sources`]).
    pub fn add_sources(&mut self, model: &str, sources: &[u32]) {
        if let Some(m) = self.models.get_mut(model) {
            for s in sources {
                m.note_source(*s);
            }
        }
    }

    /// Forgets models that sent nothing for `idle_ms` (their series go away),
    /// and unfinished automatic baselines of models gone quiet, so a burst of
    /// junk model ids cannot hold the `max_models` slots forever.
    pub fn expire_idle(&mut self, now_ms: i64, idle_ms: i64) -> Vec<Arc<str>> {
        let mut freed = 0;
        self.collecting.retain(|_, (_, seen, reserved)| {
            let keep = now_ms - *seen <= idle_ms;
            if !keep {
                freed += *reserved;
            }
            keep
        });
        let (models, arm_stats) = (self.health.models().count(), self.experiments.arm_count());
        let health = self.health.expire_idle(now_ms, idle_ms);
        let arms = self.experiments.expire_idle(now_ms, idle_ms);
        // What went away gives its reservation back.
        let cfg = &self.cfg;
        self.budget.release(
            freed
                + (models - self.health.models().count()) * cfg.health_bytes()
                + (arm_stats - self.experiments.arm_count()) * cfg.arm_stats_bytes(),
        );
        self.pending.extend(health);
        self.pending.extend(arms);
        let (freed, t) = self.quality.expire_idle(now_ms, idle_ms);
        self.budget.release(freed);
        self.pending.extend(t);
        let qm = &self.quality;
        self.last_quality
            .retain(|r| qm.has(&r.model, r.arm.as_deref()));
        // What the last evaluation reported about them goes too.
        let health = &self.health;
        self.last_health
            .retain(|h| health.model(&h.model).is_some());
        let x = &self.experiments;
        self.last_experiments.arms.retain(|a| x.has_model(&a.model));
        self.last_experiments
            .comparisons
            .retain(|c| x.has_model(&c.model));
        let gone: Vec<Box<str>> = self
            .models
            .iter()
            .filter(|(_, m)| now_ms - m.last_event_ms > idle_ms)
            .map(|(k, _)| k.clone())
            .collect();
        let why = |m: &str| format!("{m} went quiet and was forgotten");
        gone.into_iter()
            .filter_map(|k| self.forget(&k, now_ms, why))
            .collect()
    }

    /// Forgets the models whose lines came from `source` (its position
    /// turned out to describe a partition that is gone: what they counted
    /// from it can no longer be trusted), and those whose sources are not
    /// all remembered. Their firing verdicts resolve.
    pub fn forget_source(&mut self, source: u32, now_ms: i64, why: &str) -> Vec<Arc<str>> {
        let gone: Vec<Box<str>> = self
            .models
            .iter()
            .filter(|(_, m)| m.sources.contains(&source) || m.sources_overflow)
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|k| self.forget(&k, now_ms, |m| format!("{m}: {why}")))
            .collect()
    }

    /// Drops a model's windows; a firing verdict of a forgotten window
    /// resolves (nothing would ever resolve its alert otherwise), saying
    /// `why`.
    fn forget(
        &mut self,
        name: &str,
        now_ms: i64,
        why: impl Fn(&str) -> String,
    ) -> Option<Arc<str>> {
        let m = self.models.remove(name)?;
        self.budget.release(m.reserved);
        let cfg = &self.cfg;
        let windows = std::iter::once((None, &m.all))
            .chain(m.latency.iter().map(|t| (None, t)))
            .chain(m.arms.iter().map(|(a, t)| (Some(a), t)));
        for (arm, t) in windows {
            let layout = t.window.layout();
            for (i, slot) in layout.slots.iter().enumerate() {
                for (r, rule) in cfg.detect.rules.iter().enumerate() {
                    if t.verdict(i, r).state != State::Firing {
                        continue;
                    }
                    let distribution = crate::engine::detect::Distribution::of(slot.role);
                    self.pending.push(Transition {
                        alertname: distribution.alertname(),
                        model: m.name.to_string(),
                        arm: arm.map(|a| a.to_string()),
                        feature: slot.name.to_string(),
                        distribution: Some(distribution),
                        metric: rule.metric.name(),
                        higher_is_worse: rule.metric.higher_is_worse(),
                        from: State::Firing,
                        to: State::Resolved,
                        severity: None,
                        value: f64::NAN,
                        threshold: rule.warning,
                        samples: 0,
                        at_ms: now_ms,
                        baseline_version: layout.baseline.version.clone(),
                        window_start_ms: None,
                        window_end_ms: None,
                        labels: Default::default(),
                        details: std::collections::BTreeMap::from([("summary", why(&m.name))]),
                    });
                }
            }
        }
        Some(m.name)
    }

    /// Current state of every window with bins and counts, for replay
    /// reports and the API.
    pub fn report(&self) -> Report {
        self.report_with(true, None)
    }

    /// Scores, states and sizes without bins and counts, and the arms'
    /// windows as their sizes only unless `arm_features`: what each
    /// evaluation publishes for /metrics (a fraction of the memory and time).
    pub fn summary(&self, arm_features: bool) -> Report {
        self.report_of(false, None, arm_features)
    }

    /// The report, with bins and counts or not, of every model or of one.
    pub fn report_with(&self, detail: bool, only: Option<&str>) -> Report {
        self.report_of(detail, only, true)
    }

    fn report_of(&self, detail: bool, only: Option<&str>, arm_features: bool) -> Report {
        let mut models: Vec<&ModelState> = self
            .models
            .values()
            .filter(|m| only.is_none_or(|o| *o == *m.name))
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Report {
            models: models
                .into_iter()
                .map(|m| self.model_report(m, detail, arm_features))
                .collect(),
            ..self.report_without_models()
        }
    }

    /// Every model's report with bins and counts, in name order, built one
    /// at a time: a replay of a thousand models writes each and drops it
    /// rather than holding them all (tens of MiB of bin labels and counts).
    pub fn model_reports(&self) -> impl Iterator<Item = ModelReport> + '_ {
        let mut models: Vec<&ModelState> = self.models.values().collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models.into_iter().map(|m| self.model_report(m, true, true))
    }

    /// The report's parts that are not per-model windows: health,
    /// experiments, the join and versions; `models` is empty.
    pub fn report_without_models(&self) -> Report {
        let mut health = self.last_health.clone();
        for h in &mut health {
            if let (Some(b), Some(l)) = (&mut h.batch, self.layouts.get(h.model.as_str())) {
                b.shifts = batch_shifts(&b.stats, &l.baseline);
            }
        }
        Report {
            models: Vec::new(),
            health,
            experiments: self.last_experiments.clone(),
            health_stats: self.health.stats.clone(),
            join_stats: self.experiments.stats.clone(),
            join_waiting: self.experiments.waiting(),
            quality: self.last_quality.clone(),
            label_stats: self.quality.join.stats.clone(),
            label_waiting: self.quality.join.waiting(),
            label_sample_rate: self.quality.join.sample_rate(),
            versions: self.health.versions(),
        }
    }

    /// A model's report for its page: its window and latency window with
    /// bins, counts and score history, its arms as sizes only; `None` when
    /// the model is unknown or its report could pass `max_bytes` (labels
    /// and counts of every bin, and a full score history per
    /// distribution), so what a snapshot holds for pages stays bounded.
    pub fn page_report(&self, model: &str, max_bytes: usize) -> Option<ModelReport> {
        let m = self.models.get(model)?;
        let (bins, slots) = [Some(&m.all), m.latency.as_ref()]
            .into_iter()
            .flatten()
            .map(|t| t.window.layout())
            .fold((0, 0), |(b, s), l| (b + l.total_bins, s + l.slots.len()));
        let history = History::bytes(self.cfg.history_metrics().len());
        let bound = bins * PAGE_BYTES_PER_BIN + slots * (PAGE_BYTES_PER_SLOT + history * 4);
        if bound > max_bytes {
            return None;
        }
        Some(self.model_report(m, true, false))
    }

    /// The report of one model (see [`Engine::page_report`] for its cost).
    fn model_report(&self, m: &ModelState, detail: bool, arm_features: bool) -> ModelReport {
        let control = self.cfg.experiments.control_arm.as_str();
        ModelReport {
            model: m.name.to_string(),
            baseline_version: m.layout.baseline.version.clone(),
            events: m.events,
            all: window_report(&self.cfg, &m.layout, &m.all, detail),
            arms: m
                .arms
                .iter()
                .map(|(a, t)| {
                    let w = if arm_features {
                        window_report(&self.cfg, &m.layout, t, detail)
                    } else {
                        size_report(t)
                    };
                    (a.to_string(), w)
                })
                .collect(),
            latency: m
                .latency
                .as_ref()
                .map(|t| window_report(&self.cfg, t.window.layout(), t, detail)),
            arm_divergence: arm_divergence(&self.cfg, m, control),
        }
    }

    /// Window states of every model, for checkpoints.
    pub fn window_states(&self) -> Vec<(String, Option<String>, String, WindowState)> {
        let mut v = Vec::new();
        for m in self.models.values() {
            let version = &m.layout.baseline.version;
            for (arm, state) in m.window_states() {
                v.push((m.name.to_string(), arm, version.clone(), state));
            }
        }
        v
    }

    /// Restores a window saved by [`Engine::window_states`]. Refused (with
    /// the reason) when the model has no baseline or its version changed:
    /// counts on other bins would be wrong.
    /// `saved_at_ms` is when the checkpoint was written: a count window has
    /// no event time, so that stands in for its last event.
    pub fn restore_window(
        &mut self,
        model: &str,
        arm: Option<&str>,
        baseline_version: &str,
        st: &WindowState,
        saved_at_ms: i64,
    ) -> Result<(), String> {
        let Some(layout) = self.layouts.get(model).cloned() else {
            return Err(format!("no baseline for model {model:?}"));
        };
        if layout.baseline.version != baseline_version {
            return Err(format!(
                "checkpoint is for baseline version {baseline_version}, loaded is {}",
                layout.baseline.version
            ));
        }
        let rules = self.cfg.detect.rules.len();
        let spec = self.cfg.window;
        // The head is a pane number, not a time: its pane's end is the
        // latest event time the window can hold. An arm's panes are its own.
        let saved_spec = if arm.is_some() {
            self.cfg.arm_window()
        } else {
            spec
        };
        let last_event_ms = match (saved_spec, st.head) {
            (WindowSpec::Time { pane_ms, .. }, Some(h)) => (h + 1) * pane_ms - 1,
            _ => saved_at_ms,
        };
        if !self.models.contains_key(model) {
            if self.models.len() >= self.cfg.max_models {
                return Err("limits.max_models reached".into());
            }
            let reserved = self.cfg.model_bytes(&layout);
            if !self.budget.try_reserve(reserved) {
                self.stats.memory_refused += 1;
                return Err("the memory budget (limits.max_memory) is full".into());
            }
            self.models.insert(
                model.into(),
                ModelState {
                    name: model.into(),
                    all: Tracked::new(layout.clone(), spec, rules),
                    latency: latency_tracked(&layout, spec, rules),
                    layout: layout.clone(),
                    arms: Vec::new(),
                    events: 0,
                    last_event_ms,
                    sources: Vec::new(),
                    sources_overflow: false,
                    null: NullCache::default(),
                    latency_null: NullCache::default(),
                    reserved,
                },
            );
        }
        let arm_bytes = self.cfg.arm_bytes(&layout);
        let m = self.models.get_mut(model).expect("inserted above");
        m.last_event_ms = m.last_event_ms.max(last_event_ms);
        let t = match arm {
            None => &mut m.all,
            Some(a) => match m.arms.iter().position(|(x, _)| **x == *a) {
                Some(i) => &mut m.arms[i].1,
                None => {
                    if m.arms.len() >= self.cfg.max_arms_per_model {
                        return Err(format!("arm cap reached, arm {a:?} not restored"));
                    }
                    if !self.budget.try_reserve(arm_bytes) {
                        self.stats.memory_refused += 1;
                        return Err(format!(
                            "the memory budget (limits.max_memory) is full, arm {a:?} not restored"
                        ));
                    }
                    m.reserved += arm_bytes;
                    let arm_spec = self.cfg.arm_window();
                    m.arms
                        .push((a.into(), Tracked::new(layout, arm_spec, rules)));
                    &mut m.arms.last_mut().expect("pushed").1
                }
            },
        };
        t.window.restore(st)?;
        if arm.is_none() {
            m.events = m.events.max(st.counters.events);
        }
        Ok(())
    }
}

/// Each variant arm's window against the control arm's (named `control`, or
/// the first arm by name), on the model's bins, with the same comparator.
fn arm_divergence(cfg: &EngineConfig, m: &ModelState, control: &str) -> Vec<ArmDivergence> {
    if m.arms.len() < 2 {
        return Vec::new();
    }
    let mut arms: Vec<&(Arc<str>, Tracked)> = m.arms.iter().collect();
    arms.sort_by(|a, b| a.0.cmp(&b.0));
    let c = arms.iter().position(|(a, _)| **a == *control).unwrap_or(0);
    let (c_name, c_t) = arms[c];
    let mut out = Vec::new();
    for (i, (v_name, v_t)) in arms.iter().enumerate() {
        if i == c {
            continue;
        }
        for (s, slot) in m.layout.slots.iter().enumerate() {
            let Some(scores) = compare::compare(
                v_t.window.slot_counts(s),
                c_t.window.slot_counts(s),
                m.layout.bin_layout(s),
                &cfg.compare,
            ) else {
                continue;
            };
            out.push(ArmDivergence {
                arm_a: c_name.to_string(),
                arm_b: v_name.to_string(),
                feature: slot.name.to_string(),
                metrics: ScoreMap(Some(scores)),
            });
        }
    }
    out
}

/// Batch statistics named `<feature>_mean` against the baseline's mean of
/// that feature, in baseline standard deviations.
fn batch_shifts(stats: &[(String, f64)], b: &Baseline) -> Vec<(String, f64)> {
    stats
        .iter()
        .filter_map(|(name, v)| {
            let feature = name.strip_suffix("_mean")?;
            let f = b.features.iter().find(|f| f.name == feature)?;
            match f.bins {
                crate::engine::baseline::Bins::Numeric { mean, std, .. } if std > 0.0 => {
                    Some((name.clone(), (v - mean) / std))
                }
                _ => None,
            }
        })
        .collect()
}

/// A latency window, when the model's baseline has latency stages.
fn latency_tracked(layout: &Layout, spec: WindowSpec, rules: usize) -> Option<Tracked> {
    Layout::for_latency(&layout.baseline).map(|l| Tracked::new(Arc::new(l), spec, rules))
}

/// New no-drift simulations (one distribution at one anchor, see
/// [`threshold::anchors`]: about 1.5 ms for a numeric feature of 13 bins)
/// an evaluation may run, for distributions whose baseline file holds no
/// fit; a distribution's fit is made whole once started, so an evaluation
/// may pass this by up to one fit's anchors. The rest wait for the next
/// evaluation, judged on the asymptotic laws meanwhile. Bounds the pause a
/// burst of new models can put on the consumer loop (well under a second).
pub const SIMULATIONS_PER_EVALUATION: usize = 32;

/// The tests of one window: (distribution, rule) pairs that apply, the
/// number the automatic thresholds' alpha is divided by (Bonferroni).
fn tests_of(cfg: &EngineConfig, layout: &Layout) -> usize {
    let mut n = 0;
    for (i, slot) in layout.slots.iter().enumerate() {
        let numeric = matches!(layout.bin_layout(i), compare::BinLayout::Numeric { .. });
        n += cfg
            .detect
            .rules
            .iter()
            .filter(|r| r.applies(slot.role) && (numeric || !r.metric.numeric_only()))
            .count();
    }
    n
}

/// The rule as automatic thresholds make it for one distribution, and the
/// value to judge; `None` when there is no threshold yet (the verdict
/// holds). See [`crate::engine::threshold`].
fn auto_rule(
    rule: &Rule,
    auto: &AutoThresholds,
    null: &Quantiles,
    alpha: f64,
    scores: Option<&Scores>,
    value: Option<f64>,
) -> Option<(Rule, Option<f64>)> {
    let floor = |m: Metric| auto.min_effect.get(&m).copied().unwrap_or(0.0);
    if rule.metric.higher_is_worse() {
        let warning = null.get(rule.metric)?.max(floor(rule.metric));
        let critical = rule.critical.max(warning);
        Some((
            Rule {
                warning,
                critical,
                ..*rule
            },
            value,
        ))
    } else {
        // A p-value at the corrected alpha, with the effect its statistic
        // measures above the minimum: at a million events everything is
        // significant, and only a large enough change should page.
        let effect = match rule.metric {
            Metric::KsP => Metric::Ks,
            _ => Metric::Psi,
        };
        let big_enough = scores
            .and_then(|s| s.get(effect))
            .is_some_and(|e| e >= floor(effect));
        Some((
            Rule {
                warning: alpha,
                critical: alpha.min(rule.critical),
                ..*rule
            },
            value.map(|p| if big_enough { p } else { 1.0 }),
        ))
    }
}

fn evaluate_tracked(
    cfg: &EngineConfig,
    (model, arm): (&str, Option<&str>),
    t: &mut Tracked,
    null_cache: &mut NullCache,
    now_ms: i64,
    budget: &mut usize,
    out: &mut Vec<Transition>,
) {
    t.window.advance_to(now_ms);
    t.evaluated_at_ms = Some(now_ms);
    let layout = t.window.layout().clone();
    let samples = t.window.samples();
    let span = t.window.span_ms();
    let auto = match &cfg.detect.thresholds {
        Thresholds::Auto(a) => Some((a, a.alpha / tests_of(cfg, &layout).max(1) as f64)),
        Thresholds::Static => None,
    };
    let kept = cfg.history_metrics();
    for (i, slot) in layout.slots.iter().enumerate() {
        let base = &layout.baseline_counts[slot.offset..slot.offset + slot.len];
        let counts = t.window.slot_counts(i);
        let scores = compare::compare(counts, base, layout.bin_layout(i), &cfg.compare);
        if let (None, Some(s)) = (arm, scores.as_ref()) {
            if t.history.len() != layout.slots.len() {
                t.history = vec![History::new(kept.len()); layout.slots.len()];
            }
            let (mut values, mut worse) = (
                [f64::NAN; Metric::ALL.len()],
                [Worse::Larger; Metric::ALL.len()],
            );
            for (k, m) in kept.iter().enumerate() {
                values[k] = s.get(*m).unwrap_or(f64::NAN);
                if !m.higher_is_worse() {
                    worse[k] = Worse::Smaller;
                }
            }
            t.history[i].record(now_ms, &values[..kept.len()], &worse[..kept.len()]);
        }
        // The no-drift quantiles at this distribution's sample size
        // (automatic thresholds, once there is enough to judge).
        let null = match auto {
            Some((_, alpha)) if samples >= cfg.detect.min_samples => {
                let n = counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
                let n = threshold::judged_size(n);
                Some(null_quantiles(
                    cfg,
                    (model, i),
                    &layout,
                    null_cache,
                    budget,
                    n,
                    alpha,
                ))
            }
            _ => None,
        };
        for (r, rule) in cfg.detect.rules.iter().enumerate() {
            if !rule.applies(slot.role) {
                continue;
            }
            let value = scores.and_then(|s| s.get(rule.metric));
            if value.is_none() && rule.metric.numeric_only() {
                continue;
            }
            let (rule, value) = match (auto, &null) {
                (Some((a, alpha)), Some(q)) => {
                    match auto_rule(rule, a, q, alpha, scores.as_ref(), value) {
                        Some((made, v)) => {
                            t.verdict_mut(i, r).thresholds = Some((made.warning, made.critical));
                            (made, v)
                        }
                        // No threshold yet: hold, as with too few samples.
                        None => (*rule, None),
                    }
                }
                _ => (*rule, value),
            };
            let rule = &rule;
            if let Some(step) = t
                .verdict_mut(i, r)
                .step(rule, &cfg.detect, value, samples, now_ms)
            {
                let distribution = crate::engine::detect::Distribution::of(slot.role);
                let mut details = BTreeMap::new();
                if step.to != State::Ok {
                    let moved = moved_bins(cfg, &layout, i, t.window.slot_counts(i), false);
                    details.insert("moved", describe_moved(&slot.name, &moved));
                }
                out.push(Transition {
                    alertname: distribution.alertname(),
                    model: model.to_owned(),
                    arm: arm.map(str::to_owned),
                    feature: slot.name.to_string(),
                    distribution: Some(distribution),
                    metric: rule.metric.name(),
                    higher_is_worse: rule.metric.higher_is_worse(),
                    labels: Default::default(),
                    details,
                    from: step.from,
                    to: step.to,
                    severity: step.severity,
                    value: value.unwrap_or(f64::NAN),
                    threshold: step.threshold,
                    samples,
                    at_ms: now_ms,
                    baseline_version: layout.baseline.version.clone(),
                    window_start_ms: span.map(|s| s.0),
                    window_end_ms: span.map(|s| s.1),
                });
            }
        }
    }
}

/// The no-drift quantiles of distribution `i` at window size `n`: from
/// its cached curve; else from the fit stored in its baseline file; else
/// fitted now if the evaluation's simulation budget allows (counted in
/// anchors); else the first-order laws until a later evaluation.
fn null_quantiles(
    cfg: &EngineConfig,
    (model, i): (&str, usize),
    layout: &Layout,
    cache: &mut NullCache,
    budget: &mut usize,
    n: u64,
    alpha: f64,
) -> Quantiles {
    if let Some(c) = cache.get(i, alpha) {
        return c.quantiles(n);
    }
    let slot = &layout.slots[i];
    let base = &layout.baseline_counts[slot.offset..slot.offset + slot.len];
    let m = layout.baseline_totals[i];
    if m == 0 {
        // Nothing to fit or judge against; no budget spent every time.
        return cache.laws.asymptotic(base, layout.bin_layout(i), n, alpha);
    }
    let stored = layout
        .feature_baseline(i)
        .null
        .as_ref()
        .filter(|f| f.smoothing.to_bits() == cfg.compare.smoothing.to_bits());
    let curve = match stored {
        Some(f) => f.curve(m, alpha),
        None if *budget > 0 => {
            *budget = budget.saturating_sub(threshold::anchors(base).len());
            let seed = threshold::seed(model, i);
            threshold::fit(base, layout.bin_layout(i), &cfg.compare, seed).curve(m, alpha)
        }
        None => None,
    };
    match curve {
        Some(c) => {
            let q = c.quantiles(n);
            cache.insert(i, c);
            q
        }
        None => cache.laws.asymptotic(base, layout.bin_layout(i), n, alpha),
    }
}

/// The engine's view of every window, serialisable as the replay report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub models: Vec<ModelReport>,
    /// Errors, deploys, latency and batch statistics per model, as of the
    /// last evaluation.
    pub health: Vec<HealthReport>,
    /// Feedback per arm and the arm comparisons, as of the last evaluation.
    pub experiments: ExperimentReport,
    pub health_stats: crate::engine::health::HealthStats,
    pub join_stats: crate::engine::experiment::JoinStats,
    /// (predictions, feedback lines) waiting in the join.
    pub join_waiting: (usize, usize),
    /// Realized and estimated quality per (model, arm).
    pub quality: Vec<QualityReport>,
    pub label_stats: crate::engine::quality::LabelStats,
    /// (predictions, labels) waiting in the label join.
    pub label_waiting: (usize, usize),
    /// The share of requests the label join keeps.
    pub label_sample_rate: f64,
    /// (service, model, first seen ms) of every version seen.
    pub versions: Vec<(String, String, i64)>,
}

/// How a variant arm's inputs differ from the control's, per distribution.
#[derive(Debug, Clone, Serialize)]
pub struct ArmDivergence {
    pub arm_a: String,
    pub arm_b: String,
    pub feature: String,
    pub metrics: ScoreMap,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub model: String,
    pub baseline_version: String,
    pub events: u64,
    #[serde(flatten)]
    pub all: WindowReport,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub arms: Vec<(String, WindowReport)>,
    /// The latency stages' window, when the baseline has stages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<WindowReport>,
    /// Each variant arm against the control arm.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub arm_divergence: Vec<ArmDivergence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub samples: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end_ms: Option<i64>,
    pub late_events: u64,
    pub invalid_values: u64,
    pub features: Vec<FeatureReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<FeatureReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<FeatureReport>,
}

impl WindowReport {
    /// Every distribution: the features, then the prediction and confidence.
    pub fn distributions(&self) -> impl Iterator<Item = &FeatureReport> {
        self.features
            .iter()
            .chain(self.prediction.iter())
            .chain(self.confidence.iter())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FeatureReport {
    pub name: String,
    pub kind: &'static str,
    /// Bins and counts: in detailed reports only (replay, the API for one
    /// model); the per-evaluation snapshot leaves them out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bins: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baseline_counts: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub window_counts: Vec<u64>,
    /// The bins that moved most, largest PSI term first (see
    /// [`MovedBin`]): in detailed reports, and in every report while the
    /// distribution is pending or firing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<MovedBin>,
    /// The scores that can fire over the last day, by metric: `[start of
    /// step ms, worst score in it]`, oldest first, minutes for the last
    /// hour and half hours before (detailed reports of a model's and its
    /// latency window; see [`EngineConfig::history_metrics`]).
    #[serde(skip_serializing_if = "ScoreHistory::is_empty")]
    pub score_history: ScoreHistory,
    /// Every metric the comparator computed (empty when the window is).
    pub metrics: ScoreMap,
    pub verdicts: Vec<VerdictReport>,
    /// The worst state over this distribution's rules.
    pub state: State,
}

/// Bins a report names as having moved, per distribution.
pub const MOVED_BINS: usize = 3;

/// What a detailed report holds per bin at most: its label (a JSON string
/// of a category name or two edges) and its two counts.
const PAGE_BYTES_PER_BIN: usize = 96;
/// And per distribution: name, scores, verdicts, moved bins.
const PAGE_BYTES_PER_SLOT: usize = 1024;

/// A bin that moved: its label (edges, a category's name or a hashed
/// bucket's number, never a raw value), its shares of the baseline and of
/// the window, and its term of PSI (on smoothed proportions; the terms of
/// all bins sum to the distribution's `psi`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MovedBin {
    pub bin: String,
    pub baseline_share: f64,
    pub window_share: f64,
    pub psi_term: f64,
}

/// The [`MOVED_BINS`] bins of distribution `slot` that contribute most to
/// its PSI against the baseline, given the window's counts; categories by
/// name in reports (`named`), by position in alerts.
fn moved_bins(
    cfg: &EngineConfig,
    layout: &Layout,
    slot: usize,
    counts: &[u64],
    named: bool,
) -> Vec<MovedBin> {
    let s = &layout.slots[slot];
    let base = &layout.baseline_counts[s.offset..s.offset + s.len];
    let bins = &layout.feature_baseline(slot).bins;
    compare::top_shifts(counts, base, cfg.compare.smoothing, MOVED_BINS)
        .into_iter()
        .map(|b| MovedBin {
            bin: if named {
                bins.label(b.bin)
            } else {
                bins.public_label(b.bin)
            },
            baseline_share: b.baseline_share,
            window_share: b.window_share,
            psi_term: b.psi_term,
        })
        .collect()
}

/// The moved bins as the alert's `moved` annotation says them:
/// `amount [950,1200): 2.1% -> 14.3%; amount <120: 31.0% -> 22.0%`.
pub fn describe_moved(feature: &str, moved: &[MovedBin]) -> String {
    moved
        .iter()
        .map(|m| {
            format!(
                "{feature} {}: {:.1}% -> {:.1}%",
                m.bin,
                100.0 * m.baseline_share,
                100.0 * m.window_share
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone, Serialize)]
pub struct VerdictReport {
    pub metric: Metric,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<crate::engine::detect::Severity>,
    pub insufficient_data: bool,
    pub warning: f64,
    pub critical: f64,
}

fn window_report(cfg: &EngineConfig, layout: &Layout, t: &Tracked, detail: bool) -> WindowReport {
    let mut features = Vec::with_capacity(layout.feature_count);
    let mut prediction = None;
    let mut confidence = None;
    for (i, slot) in layout.slots.iter().enumerate() {
        let fb = layout.feature_baseline(i);
        let metrics = ScoreMap(t.scores(i, &cfg.compare));
        let mut verdicts = Vec::new();
        let mut worst = State::Ok;
        for (r, rule) in cfg.detect.rules.iter().enumerate() {
            if !rule.applies(slot.role) {
                continue;
            }
            let v = *t.verdict(i, r);
            if v.state.gauge() > worst.gauge() {
                worst = v.state;
            }
            verdicts.push(VerdictReport {
                metric: rule.metric,
                state: v.state,
                severity: v.severity,
                insufficient_data: v.insufficient_data,
                warning: v.thresholds.map_or(rule.warning, |t| t.0),
                critical: v.thresholds.map_or(rule.critical, |t| t.1),
            });
        }
        let fr = FeatureReport {
            name: slot.name.to_string(),
            kind: fb.bins.kind(),
            bins: if detail { fb.bins.labels() } else { Vec::new() },
            baseline_counts: if detail {
                fb.counts.clone()
            } else {
                Vec::new()
            },
            window_counts: if detail {
                t.window.slot_counts(i).to_vec()
            } else {
                Vec::new()
            },
            moved: if detail || worst != State::Ok {
                moved_bins(cfg, layout, i, t.window.slot_counts(i), true)
            } else {
                Vec::new()
            },
            score_history: match t.history.get(i) {
                Some(h) if detail => ScoreHistory(
                    cfg.history_metrics()
                        .into_iter()
                        .enumerate()
                        .map(|(k, m)| (m, h.points(k)))
                        .filter(|(_, p)| !p.is_empty())
                        .collect(),
                ),
                _ => ScoreHistory::default(),
            },
            metrics,
            verdicts,
            state: worst,
        };
        match slot.role {
            SlotRole::Feature | SlotRole::Latency => features.push(fr),
            SlotRole::Prediction => prediction = Some(fr),
            SlotRole::Confidence => confidence = Some(fr),
        }
    }
    let span = t.window.span_ms();
    WindowReport {
        samples: t.window.samples(),
        window_start_ms: span.map(|s| s.0),
        window_end_ms: span.map(|s| s.1),
        late_events: t.window.counters.late,
        invalid_values: t.window.counters.invalid_values,
        features,
        prediction,
        confidence,
    }
}

/// A window's size and span only.
fn size_report(t: &Tracked) -> WindowReport {
    let span = t.window.span_ms();
    WindowReport {
        samples: t.window.samples(),
        window_start_ms: span.map(|s| s.0),
        window_end_ms: span.map(|s| s.1),
        late_events: t.window.counters.late,
        invalid_values: t.window.counters.invalid_values,
        features: Vec::new(),
        prediction: None,
        confidence: None,
    }
}

/// A distribution's scores, serialised as `{"kl": .., "psi": .., ...}`
/// (every metric computed, plus `chi2`), typed in memory: the exporter reads
/// them for every feature of every model at each evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScoreMap(pub Option<Scores>);

impl ScoreMap {
    /// A score by its name (`psi`, `js_distance`, ..., `chi2`).
    pub fn get(&self, name: &str) -> Option<f64> {
        let s = self.0.as_ref()?;
        if name == "chi2" {
            return Some(s.chi2);
        }
        s.get(name.parse::<Metric>().ok()?)
    }

    pub fn metric(&self, m: Metric) -> Option<f64> {
        self.0.as_ref().and_then(|s| s.get(m))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl Serialize for ScoreMap {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(None)?;
        if let Some(s) = &self.0 {
            for m in Metric::ALL {
                if let Some(v) = s.get(m) {
                    map.serialize_entry(m.name(), &json_num(v))?;
                }
            }
            map.serialize_entry("chi2", &json_num(s.chi2))?;
        }
        map.end()
    }
}

/// A distribution's score history by metric, as a JSON object `{"psi":
/// [[ms, value], ...], ...}` with values to three significant digits (what
/// the history keeps).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreHistory(pub Vec<(Metric, Vec<(i64, f32)>)>);

impl ScoreHistory {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The points of `m`, empty when it is not kept.
    pub fn of(&self, m: Metric) -> &[(i64, f32)] {
        self.0
            .iter()
            .find(|(x, _)| *x == m)
            .map_or(&[], |(_, p)| p.as_slice())
    }
}

impl Serialize for ScoreHistory {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(Some(self.0.len()))?;
        for (m, points) in &self.0 {
            let points: Vec<(i64, serde_json::Value)> = points
                .iter()
                .map(|(t, v)| (*t, json_num(three_digits(f64::from(*v)))))
                .collect();
            map.serialize_entry(m.name(), &points)?;
        }
        map.end()
    }
}

/// `v` rounded to three significant digits, so a point prints as what the
/// history knows (0.25, not 0.2499847412109375).
fn three_digits(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(2 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// JSON has no infinity: a smoothing of 0 can make KL infinite, which is
/// reported as null rather than breaking the document.
fn json_num(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_and_future_events_are_counted() {
        let lines: Vec<String> = (0..600)
            .map(|i| format!(r#"{{"model_id":"m","prediction":"a","timestamp":{},"input_features":{{"x":{}}}}}"#, 1_700_000_000 + i, i % 10))
            .collect();
        let d = Decoder::new(DecodeConfig::default());
        let mut b = BaselineBuilder::new("m");
        for l in &lines {
            if let Decoded::Event(e) = d.decode(l.as_bytes()) {
                b.add(&e);
            }
        }
        let base = b.finish(&Binning::default(), "t", 0).unwrap();
        let mut e = Engine::new(EngineConfig::default(), vec![base]);
        let now = 1_700_000_600_000;
        for l in &lines {
            assert_eq!(e.ingest(l.as_bytes(), now), Outcome::Counted);
        }
        // Far future: clamped to arrival and counted.
        let fut =
            r#"{"model_id":"m","prediction":"a","timestamp":1800000000,"input_features":{"x":1}}"#;
        assert_eq!(e.ingest(fut.as_bytes(), now), Outcome::Counted);
        assert_eq!(e.stats.future_clamped, 1);
        // An hour old: outside a 10-minute window.
        let old =
            r#"{"model_id":"m","prediction":"a","timestamp":1699990000,"input_features":{"x":1}}"#;
        assert_eq!(e.ingest(old.as_bytes(), now), Outcome::Late);
        assert_eq!(e.stats.late, 1);
        let other = r#"{"model_id":"other","prediction":"a"}"#;
        assert_eq!(e.ingest(other.as_bytes(), now), Outcome::NoBaseline);
        assert_eq!(e.stats.decode.events, 603);
    }

    /// A drifted distribution names the bins that moved: in the firing
    /// transition's `moved` detail and in the report, largest term first,
    /// with their shares, and by label, not by value.
    #[test]
    fn drift_names_the_bins_that_moved() {
        let line = |t: i64, c: &str| {
            format!(
                r#"{{"model_id":"m","prediction":"a","timestamp":{t},"input_features":{{"country":"{c}"}}}}"#
            )
        };
        let d = Decoder::new(DecodeConfig::default());
        let mut b = BaselineBuilder::new("m");
        for i in 0..1000 {
            let c = ["US", "DE", "FR", "GB"][i % 4];
            if let Decoded::Event(e) = d.decode(line(1_700_000_000, c).as_bytes()) {
                b.add(&e);
            }
        }
        let base = b.finish(&Binning::default(), "t", 0).unwrap();
        let cfg = EngineConfig {
            detect: DetectConfig {
                for_evaluations: 1,
                thresholds: Thresholds::Static,
                ..DetectConfig::default()
            },
            ..EngineConfig::default()
        };
        let mut e = Engine::new(cfg, vec![base]);
        let now = 1_700_000_100_000;
        for i in 0..1000 {
            // Half of the window is FR now, against a quarter before.
            let c = ["FR", "FR", "US", "DE"][i % 4];
            e.ingest(line(1_700_000_050 + (i as i64 % 40), c).as_bytes(), now);
        }
        let ts = e.evaluate(now);
        let t = ts
            .iter()
            .find(|t| t.feature == "country" && t.to != State::Ok)
            .expect("country drifts");
        // GB emptied: its term, (0.0005 - 0.2498) ln(0.0005 / 0.2498) =
        // 1.55 (0.5 pseudo-counts in 6 bins), beats FR's doubling, 0.17;
        // US and DE did not move and are not named.
        // The alert names a category by its position; the report by name.
        let labels = e.layouts["m"].baseline.features[0].bins.labels();
        let at = |c: &str| labels.iter().position(|l| l == c).unwrap();
        assert_eq!(
            t.details["moved"],
            format!(
                "country category #{}: 25.0% -> 0.0%; country category #{}: 25.0% -> 50.0%",
                at("GB"),
                at("FR")
            )
        );
        let r = e.report();
        let f = r.models[0]
            .all
            .features
            .iter()
            .find(|f| f.name == "country")
            .unwrap();
        let bins: Vec<&str> = f.moved.iter().map(|m| m.bin.as_str()).collect();
        assert_eq!(bins, ["GB", "FR"]);
        assert!((f.moved[1].window_share - 0.5).abs() < 1e-9);
        assert!((f.moved[1].baseline_share - 0.25).abs() < 1e-9);
        assert!(
            (f.moved[0].psi_term - 1.5498).abs() < 1e-3,
            "{:?}",
            f.moved[0]
        );
        let terms: Vec<f64> = f.moved.iter().map(|m| m.psi_term).collect();
        assert!(terms.windows(2).all(|w| w[0] >= w[1]), "{terms:?}");
    }

    #[test]
    fn auto_baseline_after_n_events_then_counts() {
        let cfg = EngineConfig {
            auto_baseline: Some(AutoBaseline { after_events: 100 }),
            ..EngineConfig::default()
        };
        let mut e = Engine::new(cfg, vec![]);
        let line = r#"{"model_id":"m","prediction":"a","input_features":{"x":1.5}}"#;
        for _ in 0..100 {
            assert_eq!(e.ingest(line.as_bytes(), 0), Outcome::Collected);
        }
        assert_eq!(e.stats.auto_baselines, 1);
        assert_eq!(e.ingest(line.as_bytes(), 0), Outcome::Counted);
        assert_eq!(e.auto_captured().count(), 1);
    }

    #[test]
    fn model_and_arm_caps_hold() {
        let cfg = EngineConfig {
            max_models: 2,
            max_arms_per_model: 1,
            auto_baseline: Some(AutoBaseline { after_events: 1 }),
            ..EngineConfig::default()
        };
        let mut e = Engine::new(cfg, vec![]);
        for i in 0..100 {
            let l = format!(r#"{{"model_id":"m{i}","prediction":"a"}}"#);
            e.ingest(l.as_bytes(), 0);
        }
        assert_eq!(e.layouts.len(), 2);
        assert_eq!(e.stats.models_refused, 98);
        for i in 0..10 {
            let l =
                format!(r#"{{"model_id":"m0","prediction":"a","experiment_assignment":"arm{i}"}}"#);
            e.ingest(l.as_bytes(), 0);
        }
        assert_eq!(e.model("m0").unwrap().arms.len(), 1);
        assert_eq!(e.stats.arms_refused, 9);
    }

    /// A flood of junk model ids holds the collecting slots only until it
    /// goes quiet; then real models get their automatic baselines again.
    #[test]
    fn quiet_unfinished_auto_baselines_free_their_slots() {
        let cfg = EngineConfig {
            max_models: 3,
            auto_baseline: Some(AutoBaseline { after_events: 100 }),
            ..EngineConfig::default()
        };
        let mut e = Engine::new(cfg, vec![]);
        for i in 0..10 {
            let l = format!(r#"{{"model_id":"junk{i}","prediction":"a"}}"#);
            e.ingest(l.as_bytes(), 0);
        }
        let real = r#"{"model_id":"real","prediction":"a"}"#;
        assert_eq!(e.ingest(real.as_bytes(), 1_000), Outcome::Refused);
        e.expire_idle(10_000, 5_000);
        assert_eq!(e.ingest(real.as_bytes(), 10_000), Outcome::Collected);
    }

    /// Restored windows belong to live models: they must not look idle.
    #[test]
    fn restored_windows_survive_the_idle_sweep() {
        let cfg = EngineConfig {
            auto_baseline: Some(AutoBaseline { after_events: 100 }),
            ..EngineConfig::default()
        };
        let now = 1_800_000_000_000i64;
        let mut e = Engine::new(cfg.clone(), vec![]);
        let line = format!(
            r#"{{"model_id":"m","prediction":"a","timestamp":{},"input_features":{{"x":1.5}}}}"#,
            now / 1000
        );
        for _ in 0..300 {
            e.ingest(line.as_bytes(), now);
        }
        let base: Vec<Baseline> = e.baselines().cloned().collect();
        let states = e.window_states();
        let mut e2 = Engine::new(cfg, base);
        for (model, arm, version, st) in &states {
            e2.restore_window(model, arm.as_deref(), version, st, now)
                .unwrap();
        }
        assert!(e2.expire_idle(now + 60_000, 3_600_000).is_empty());
        e2.evaluate(now + 60_000);
        assert_eq!(e2.model("m").unwrap().all.window.samples(), 200);
    }

    /// Timing, error, feedback and batch lines reach their analyses through
    /// `ingest`: latency in the latency window and quantiles, errors in the
    /// error rate, batch class counts in the prediction distribution,
    /// feedback joined to its prediction.
    #[test]
    fn every_record_kind_reaches_its_analysis() {
        let t0 = 1_800_000_000i64;
        let d = Decoder::new(DecodeConfig::default());
        let mut b = BaselineBuilder::new("m");
        for i in 0..600 {
            let l = format!(
                r#"{{"model_id":"m","prediction":"{}","timestamp":{},"inference_ms":{},"input_features":{{"x":{}}}}}"#,
                if i % 2 == 0 { "a" } else { "b" },
                t0 - 3600 + i,
                5 + i % 10,
                i % 10
            );
            if let Decoded::Event(e) = d.decode(l.as_bytes()) {
                b.add(&e);
            }
        }
        let base = b.finish(&Binning::default(), "t", 0).unwrap();
        assert_eq!(
            base.latency.len(),
            1,
            "stages on inference lines build a latency baseline"
        );
        // A batch-only model: its baseline is its batches' class counts.
        let batch = |t: i64| {
            format!(
                r#"{{"model_id":"b","timestamp_end":{t},"prediction_stats":{{"class_counts":{{"a":7,"b":3}}}}}}"#
            )
        };
        let mut bb = BaselineBuilder::new("b");
        for _ in 0..100 {
            if let Decoded::Record(r) = d.decode(batch(t0 - 3600).as_bytes()) {
                bb.add_class_counts(&r.class_counts);
            }
        }
        let bbase = bb.finish(&Binning::default(), "t", 0).unwrap();
        assert_eq!(bbase.samples, 1000);
        // The prediction comes before any feedback line: joined only with
        // the join on from the start.
        let mut cfg = EngineConfig::default();
        cfg.experiments.join_from_start = true;
        let mut e = Engine::new(cfg, vec![base, bbase]);
        let now = (t0 + 100) * 1000;
        let lines = [
            format!(
                r#"{{"model_id":"m","prediction":"a","request_id":"r1","experiment_assignment":"control","timestamp":{t0},"input_features":{{"x":1}}}}"#
            ),
            format!(
                r#"{{"model_id":"m","level":"ERROR","error_type":"Timeout","timestamp":{t0}}}"#
            ),
            format!(
                r#"{{"model_id":"m","inference_ms":250.0,"total_latency_ms":300,"timestamp":{t0}}}"#
            ),
            format!(
                r#"{{"request_id":"r1","action":"clicked_on_item","timestamp":{}}}"#,
                t0 + 5
            ),
            format!(
                r#"{{"model_id":"m","timestamp_end":{t0},"input_stats":{{"x_mean":4.5}},"prediction_stats":{{"class_counts":{{"a":7,"b":3}},"avg_confidence":0.8}}}}"#
            ),
            batch(t0),
        ];
        for l in &lines {
            assert_eq!(e.ingest(l.as_bytes(), now), Outcome::Counted, "{l}");
        }
        e.evaluate(now);
        let r = e.report();
        let h = r.health.iter().find(|h| h.model == "m").unwrap();
        assert_eq!((h.requests, h.errors), (2, 1));
        assert_eq!(h.errors_by_type, vec![("Timeout".into(), 1)]);
        let inf = h
            .latency
            .iter()
            .find(|s| s.stage == "inference_ms")
            .unwrap();
        assert_eq!(inf.samples, 1);
        assert!(
            (inf.p50_ms.unwrap() - 250.0).abs() <= 250.0 * HealthConfig::default().sketch_error
        );
        let m = r.models.iter().find(|m| m.model == "m").unwrap();
        assert_eq!(m.latency.as_ref().unwrap().samples, 1);
        // m logs its inferences: its batch lines summarise predictions
        // already counted, and are not counted again.
        assert_eq!(m.all.samples, 1);
        let pred = m.all.prediction.as_ref().unwrap();
        assert_eq!(pred.window_counts.iter().sum::<u64>(), 1);
        // b logs only batches: their class counts are its predictions.
        let bm = r.models.iter().find(|m| m.model == "b").unwrap();
        assert_eq!(bm.all.samples, 10);
        let pred = bm.all.prediction.as_ref().unwrap();
        assert_eq!(pred.window_counts.iter().sum::<u64>(), 10);
        let b = h.batch.as_ref().unwrap();
        assert_eq!(b.stats, vec![("x_mean".into(), 4.5)]);
        // x was 0..9 uniformly: mean 4.5, so no shift.
        assert!(b.shifts[0].1.abs() < 1e-9, "{:?}", b.shifts);
        assert_eq!(r.join_stats.joined, 1);
        let arm = &r.experiments.arms[0];
        assert_eq!((arm.arm.as_str(), arm.predictions), ("control", 1));
        assert_eq!(arm.feedback[0], ("any".into(), 1));
        assert_eq!(e.stats.decode.records, [1, 1, 1, 2, 0]);
    }

    /// Timing lines three times slower than the reference's make the
    /// latency stage drift (LatencyDrift on `latency.inference_ms`); the
    /// same speed does not.
    #[test]
    fn slower_stages_raise_latency_drift() {
        let t0 = 1_800_000_000_000i64;
        let d = Decoder::new(DecodeConfig::default());
        let timing = |ms: f64, t: i64| {
            format!(
                r#"{{"model_id":"m","inference_ms":{ms},"timestamp":{}}}"#,
                t / 1000
            )
        };
        let mut b = BaselineBuilder::new("m");
        b.add(&match d.decode(br#"{"model_id":"m","prediction":"a"}"#) {
            Decoded::Event(e) => e,
            _ => unreachable!(),
        });
        for i in 0..2000 {
            let l = timing(5.0 + (i % 50) as f64 * 0.2, t0);
            if let Decoded::Record(r) = d.decode(l.as_bytes()) {
                b.add_stages(&r.stages);
            }
        }
        let base = b.finish(&Binning::default(), "t", 0).unwrap();
        assert_eq!(base.latency[0].name, "inference_ms");
        for (factor, expect) in [(1.0, false), (3.0, true)] {
            let mut e = Engine::new(EngineConfig::default(), vec![base.clone()]);
            let mut fired = Vec::new();
            for i in 0..6000i64 {
                let t = t0 + i * 100;
                let ms = factor * (5.0 + (i % 50) as f64 * 0.2);
                e.ingest(timing(ms, t).as_bytes(), t);
                if i % 300 == 299 {
                    fired.extend(e.evaluate(t).into_iter().filter(|x| x.to == State::Firing));
                }
            }
            let latency: Vec<_> = fired
                .iter()
                .filter(|t| t.alertname == "LatencyDrift")
                .collect();
            assert_eq!(!latency.is_empty(), expect, "factor {factor}: {fired:?}");
            if expect {
                assert_eq!(latency[0].feature, "latency.inference_ms");
                assert_eq!(
                    latency[0].distribution,
                    Some(crate::engine::detect::Distribution::Latency)
                );
            }
        }
    }
}

#[cfg(test)]
mod auto_threshold_tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    const FEATURES: usize = 10;
    const T0: i64 = 1_800_000_000_000;

    /// A line of model `m` with `FEATURES` standard normal features, the
    /// first shifted by `shift` standard deviations.
    fn line(rng: &mut SmallRng, shift: f64) -> String {
        let z = Normal::new(0.0, 1.0).unwrap();
        let mut s = String::from(r#"{"model_id":"m","input_features":{"#);
        for f in 0..FEATURES {
            let x = z.sample(rng) + if f == 0 { shift } else { 0.0 };
            if f > 0 {
                s.push(',');
            }
            s.push_str(&format!("\"f{f}\":{x:.4}"));
        }
        s.push_str("}}");
        s
    }

    fn baseline(rng: &mut SmallRng) -> Baseline {
        let d = Decoder::new(DecodeConfig::default());
        let mut b = BaselineBuilder::new("m");
        for _ in 0..20_000 {
            let l = line(rng, 0.0);
            let Decoded::Event(ev) = d.decode(l.as_bytes()) else {
                panic!("reference line is an event");
            };
            b.add(&ev);
        }
        b.finish(&Binning::default(), "t", 0).unwrap()
    }

    fn engine(auto: bool, base: Baseline) -> Engine {
        let mut cfg = EngineConfig::default();
        cfg.detect.min_samples = 100;
        if auto {
            cfg.detect.thresholds = Thresholds::Auto(AutoThresholds::default());
        }
        Engine::new(cfg, vec![base])
    }

    /// Feeds `hours` of events at `per_window` events per 10-minute window,
    /// evaluating every 30 s; returns the firing transitions.
    fn run(
        e: &mut Engine,
        rng: &mut SmallRng,
        hours: i64,
        per_window: i64,
        shift: f64,
    ) -> Vec<Transition> {
        let step = 600_000 / per_window;
        let mut fired = Vec::new();
        let mut next_eval = T0 + 30_000;
        let mut t = T0;
        while t < T0 + hours * 3_600_000 {
            e.ingest(line(rng, shift).as_bytes(), t);
            t += step;
            while next_eval <= t {
                fired.extend(
                    e.evaluate(next_eval)
                        .into_iter()
                        .filter(|x| x.to == State::Firing),
                );
                next_eval += 30_000;
            }
        }
        fired
    }

    /// The reason for automatic thresholds: windows of 200 events from the
    /// baseline's own distribution. The static PSI threshold (0.1) pages
    /// over and over; the automatic one, which knows PSI's no-drift level at
    /// 200 events, stays quiet for the day.
    #[test]
    fn small_windows_page_on_noise_with_static_thresholds_only() {
        let mut rng = SmallRng::seed_from_u64(1);
        let base = baseline(&mut rng);
        let mut stat = engine(false, base.clone());
        let noisy = run(&mut stat, &mut SmallRng::seed_from_u64(2), 24, 200, 0.0);
        assert!(noisy.len() > 10, "static: {} false alarms", noisy.len());
        let mut auto = engine(true, base);
        let quiet = run(&mut auto, &mut SmallRng::seed_from_u64(2), 24, 200, 0.0);
        assert!(
            quiet.len() <= 1,
            "auto: {} false alarms: {quiet:?}",
            quiet.len()
        );
    }

    /// The history keeps PSI and every metric a rule judges, one point a
    /// minute; a p-value's point is the smallest of its minute. The score
    /// history is what the page draws, so it must follow the rules.
    #[test]
    fn the_history_keeps_the_scores_the_rules_judge() {
        let mut rng = SmallRng::seed_from_u64(5);
        let base = baseline(&mut rng);
        let mut cfg = EngineConfig::default();
        cfg.detect.min_samples = 100;
        cfg.detect.rules.push(crate::engine::detect::Rule {
            metric: Metric::KsP,
            warning: 0.01,
            critical: 0.001,
            target: crate::engine::detect::Target::All,
        });
        assert_eq!(
            cfg.history_metrics(),
            vec![Metric::Psi, Metric::KsP, Metric::UnseenShare]
        );
        let mut e = Engine::new(cfg, vec![base]);
        // 20 minutes, evaluated every 30 s; the first feature shifts in
        // the second half.
        let mut ks_p_at = Vec::new();
        for i in 0..2400i64 {
            let t = T0 + i * 500;
            e.ingest(
                line(&mut rng, if i < 1200 { 0.0 } else { 1.0 }).as_bytes(),
                t,
            );
            if i % 60 == 59 {
                e.evaluate(t);
                let r = e.report_with(false, Some("m"));
                let f0 = &r.models[0].all.features[0];
                ks_p_at.push((t, f0.metrics.metric(Metric::KsP).unwrap()));
            }
        }
        let r = e.report_with(true, Some("m"));
        let f0 = r.models[0]
            .all
            .features
            .iter()
            .find(|f| f.name == "f0")
            .unwrap();
        let kept: Vec<Metric> = f0.score_history.0.iter().map(|(m, _)| *m).collect();
        assert_eq!(kept, vec![Metric::Psi, Metric::KsP, Metric::UnseenShare]);
        let ks_p = f0.score_history.of(Metric::KsP);
        assert_eq!(ks_p.len(), 20, "a point a minute: {ks_p:?}");
        for (step, v) in ks_p {
            // The smallest p-value evaluated in the minute, to 0.05%.
            let want = ks_p_at
                .iter()
                .filter(|(t, _)| t.div_euclid(60_000) * 60_000 == *step)
                .map(|(_, p)| *p)
                .fold(f64::INFINITY, f64::min);
            let got = f64::from(*v);
            assert!(
                (got - want).abs() <= want * 1e-3 || (want < 1e-12 && got == 0.0),
                "{step}: {got} vs {want}"
            );
        }
        assert!(f64::from(ks_p[19].1) < 1e-3, "the shift shows: {ks_p:?}");
        // Without the rule, no ks_p history: the default rules keep two.
        assert_eq!(
            EngineConfig::default().history_metrics(),
            vec![Metric::Psi, Metric::UnseenShare]
        );
    }

    /// A half standard deviation shift of one feature fires under automatic
    /// thresholds, on that feature only, and the thresholds in use (what
    /// `driftd_drift_threshold` exports) fall as the window grows.
    #[test]
    fn a_half_sd_shift_fires_and_thresholds_fall_with_the_sample_size() {
        let mut rng = SmallRng::seed_from_u64(3);
        let base = baseline(&mut rng);
        let psi_warning = |e: &Engine| {
            let r = e.report_with(false, Some("m"));
            let f = r.models[0]
                .all
                .features
                .iter()
                .find(|f| f.name == "f1")
                .unwrap()
                .clone();
            f.verdicts
                .iter()
                .find(|v| v.metric == Metric::Psi)
                .unwrap()
                .warning
        };
        let mut small = engine(true, base.clone());
        assert!(run(&mut small, &mut rng, 1, 300, 0.0).is_empty());
        let mut big = engine(true, base);
        assert!(run(&mut big, &mut rng, 1, 6000, 0.0).is_empty());
        let (at_300, at_6000) = (psi_warning(&small), psi_warning(&big));
        assert!(
            at_300 > at_6000,
            "threshold at 300 events {at_300}, at 6000 {at_6000}"
        );
        // The floor: never under the minimum effect.
        assert!(at_6000 >= 0.05, "{at_6000}");
        let fired = run(&mut big, &mut rng, 1, 6000, 0.5);
        assert!(!fired.is_empty(), "a 0.5 sd shift did not fire");
        assert!(fired.iter().all(|t| t.feature == "f0"), "{fired:?}");
    }
}
