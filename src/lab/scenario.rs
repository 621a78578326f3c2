//! The scenario suite: what driftd's verdicts are worth, measured.
//!
//! This module owns `driftd scenarios`: generated streams with fixed seeds
//! run through the real engine (window → compare → detect, in event time,
//! evaluated every 30 s like the daemon), once per threshold mode, and the
//! table of what came out:
//!
//! - **stationary** streams (no drift) of one 50-feature model at window
//!   sizes from 200 to 1,000,000 samples: false alarms per 24 h of stream
//!   time (a week simulated up to 10k samples, a day above). The window
//!   stays 10 minutes; the event rate sets its size (n = rate x 600 s: 200
//!   samples is 0.33 events/s, 1M is 1,667/s).
//! - **drift** streams at 1,000 events/s with one injected change (mean
//!   shifts of 0.25, 0.5 and 1 standard deviation, variance doubled, a new
//!   category at 5% and 20%, a class-prior change, a 1 sd shift ramped in
//!   over an hour, and an outlier burst that should not page): whether the
//!   drifted distribution fired within one window length of the onset, the
//!   delay in seconds and events, and any firing elsewhere.
//!
//! The model and its distributions are the generator's ([`crate::lab::generate`],
//! `GeneratorConfig::synthetic(seed, 1, 50)`: 34 numeric features, normal or
//! log-normal at scales from 1 to 3,000, 15 categorical ones, a boolean, two
//! classes and a confidence); the drifts are the generator's
//! [`DriftSpec`]s, and the events are the generator's own inference records
//! ([`Generator::next_event`]: the draws its JSON lines are written from,
//! straight into engine events) handed to [`Engine::accept`], skipping only
//! the JSON text: writing and parsing
//! 50-feature lines runs at ~170k events/s, which would make the 24 h of a
//! million-sample window (144M events) take a quarter of an hour per mode.
//! Everything after decoding is the daemon's code path.
//!
//! The baseline is built, with [`BaselineBuilder`], from 100,000 reference
//! events of the same model under another stream seed. Each mode runs
//! with the config a file saying only `thresholds = "static"` (or `"auto"`)
//! gives, and static and auto runs of one scenario see the same events.
//! Scenarios run in parallel, one per thread; in the quick set the four
//! drifts share one stream (each on its own distribution).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::engine::baseline::{Baseline, BaselineBuilder};
use crate::engine::compare::Metric;
use crate::engine::decode::Decoded;
use crate::engine::detect::{AutoThresholds, State, Thresholds, Transition};
use crate::engine::window::WindowSpec;
use crate::engine::{Engine, EngineConfig};
use crate::lab::generate::{DriftSpec, EventVocabulary, FeatureInfo, FeatureKind};
use crate::lab::generate::{Generator, GeneratorConfig, GeneratorError};

/// Features of the suite's model.
pub const FEATURES: usize = 50;
/// Reference events the baseline is built from.
pub const BASELINE_EVENTS: u64 = 100_000;
/// Events per second of the drift scenarios.
pub const DRIFT_RATE: f64 = 1000.0;
/// The target: false alarms per 24 h of stream time, per model.
pub const TARGET_FA_PER_24H: f64 = 1.0;
/// The seed of the model, the reference sample and every stream.
pub const DEFAULT_SEED: u64 = 8;
/// Start of every stream (a whole number of panes and evaluations).
const T0: i64 = 1_800_000_000_000;
const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// Where a run's thresholds come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The rules' fixed thresholds.
    Static,
    /// [`AutoThresholds::default`].
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Static => "static",
            Mode::Auto => "auto",
        }
    }

    pub fn thresholds(self) -> Thresholds {
        match self {
            Mode::Static => Thresholds::Static,
            Mode::Auto => Thresholds::Auto(AutoThresholds::default()),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The reduced set (windows of 200 and 1,000 samples for a few hours,
    /// four drift scenarios in one stream, stopped once decided): for CI.
    pub quick: bool,
    pub modes: Vec<Mode>,
    pub seed: u64,
    /// Worker threads (scenarios run in parallel, each on one core).
    pub threads: usize,
    /// Called with a line after each finished run (progress on stderr).
    pub progress: Option<fn(&str)>,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            quick: false,
            modes: vec![Mode::Static, Mode::Auto],
            seed: DEFAULT_SEED,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: None,
        }
    }
}

/// One stationary stream: a window size and how long to run it.
#[derive(Debug, Clone, Copy)]
pub struct StationarySpec {
    /// Target samples per (full) window: rate x window length.
    pub window_samples: u64,
    /// Stream time simulated, in hours.
    pub hours: f64,
    /// A `min_samples` other than the default (to see verdicts on windows
    /// the default keeps from being judged).
    pub min_samples: Option<u64>,
}

/// What was expected of a drift scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The drifted distribution should fire.
    Page,
    /// Nothing should fire.
    NoPage,
}

/// One drift scenario.
#[derive(Debug, Clone)]
pub struct DriftScenario {
    pub name: &'static str,
    pub description: String,
    /// The distribution that drifts (a feature name or `prediction`).
    pub target: String,
    pub expect: Expect,
    pub drift: DriftSpec,
    /// Stream time simulated after the onset.
    pub after_ms: i64,
}

/// The suite's model, as the generator defines it.
#[derive(Debug, Clone)]
pub struct ModelDef {
    pub name: String,
    pub features: Vec<FeatureInfo>,
    pub classes: Vec<String>,
    pub priors: Vec<f64>,
    /// The generator's config of the model (the suite's streams differ only
    /// in their seed and drifts).
    config: GeneratorConfig,
}

impl ModelDef {
    /// Model 0 of `GeneratorConfig::synthetic(seed, 1, 50)`: `fraud-v1`.
    pub fn new(seed: u64) -> ModelDef {
        let mut config = GeneratorConfig::synthetic(seed, 1, FEATURES).inference_only();
        config.arms = false;
        let spec = config.models[0].clone();
        let g = Generator::new(config.clone());
        let sum: f64 = spec.class_priors.iter().sum();
        ModelDef {
            name: spec.name,
            features: g.features(0).to_vec(),
            classes: spec.classes,
            priors: spec.class_priors.iter().map(|p| p / sum).collect(),
            config,
        }
    }

    /// A generator of the model's events with `drifts`, seeded by `stream_seed`.
    pub fn generator(
        &self,
        drifts: &[DriftSpec],
        stream_seed: u64,
    ) -> Result<Generator, GeneratorError> {
        Generator::try_new(GeneratorConfig {
            stream_seed: Some(stream_seed),
            drifts: drifts.to_vec(),
            ..self.config.clone()
        })
    }

    /// The `k`-th normally distributed numeric feature.
    pub fn normal_feature(&self, k: usize) -> &str {
        self.features
            .iter()
            .filter(|f| matches!(f.kind, FeatureKind::Normal { .. }))
            .nth(k)
            .map(|f| f.name.as_str())
            .expect("the generator's 50-feature model has a dozen normal features")
    }

    /// The first categorical feature.
    pub fn categorical_feature(&self) -> &str {
        self.features
            .iter()
            .find(|f| f.is_categorical())
            .map(|f| f.name.as_str())
            .expect("the generator's 50-feature model has categorical features")
    }
}

/// The stationary streams of a run. The full run simulates a week of
/// stream time where windows are small (where noise pages, and events are
/// few) and a day at 100k and 1M samples per window (144M events a day at
/// 1M: about four minutes a mode).
pub fn stationary_specs(quick: bool) -> Vec<StationarySpec> {
    let s = |window_samples, hours| StationarySpec {
        window_samples,
        hours,
        min_samples: None,
    };
    // The same stream judged with static thresholds from 100 samples on,
    // as automatic ones are: what fixed thresholds do with small windows.
    let early = |window_samples, hours| StationarySpec {
        min_samples: Some(100),
        ..s(window_samples, hours)
    };
    if quick {
        // Small windows are where noise pages, and they are cheap.
        return vec![s(200, 4.0), s(1_000, 2.0)];
    }
    let week = 7.0 * 24.0;
    vec![
        s(200, week),
        early(200, week),
        s(500, week),
        early(500, week),
        s(1_000, week),
        s(2_000, week),
        s(5_000, week),
        s(10_000, week),
        s(100_000, 24.0),
        s(1_000_000, 24.0),
    ]
}

/// Drift scenarios run in one stream: each drifts its own distribution
/// (features are drawn independently, so each verdict sees only its own
/// drift), and a page on any other distribution is a false alarm.
#[derive(Debug, Clone)]
pub struct DriftStream {
    pub scenarios: Vec<DriftScenario>,
}

impl DriftStream {
    fn name(&self) -> String {
        self.scenarios
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join("+")
    }

    fn after_ms(&self) -> i64 {
        self.scenarios.iter().map(|s| s.after_ms).max().unwrap_or(0)
    }
}

/// The drift streams of a run, onset at `onset_ms`: one scenario per
/// stream in the full run; in the quick one a single stream of four
/// scenarios on different features, stopped once every outcome is decided.
pub fn drift_streams(def: &ModelDef, onset_ms: i64, quick: bool) -> Vec<DriftStream> {
    let num = |k: usize| def.normal_feature(k).to_owned();
    let cat = def.categorical_feature().to_owned();
    // Abrupt drifts run two windows past the onset.
    let after = 20 * MINUTE_MS;
    let scenario =
        |name, description: String, target: &str, expect, drift, after_ms| DriftScenario {
            name,
            description,
            target: target.to_owned(),
            expect,
            drift,
            after_ms,
        };
    let shift = |name, f: String, sds: f64| {
        scenario(
            name,
            format!("mean of {f} shifted by {sds} sd"),
            &f,
            Expect::Page,
            DriftSpec::mean_shift(f.as_str(), sds, onset_ms),
            after,
        )
    };
    let newcat = |name, share: f64| {
        scenario(
            name,
            format!(
                "new category in {cat} taking {}% of values",
                (share * 100.0).round()
            ),
            &cat,
            Expect::Page,
            DriftSpec::new_category(cat.as_str(), "__new_value__", share, onset_ms),
            after,
        )
    };
    // ~50 values at 10 sd in one second (5% of 1,000 events/s). The burst
    // stays in the window for one window length; a quick run watches the
    // first 3 minutes of it (a page would come within two evaluations).
    let burst = |f: String| {
        scenario(
            "outlier_burst",
            format!("~50 values of {f} at 10 sd within 1 s (should not page)"),
            &f,
            Expect::NoPage,
            DriftSpec::outlier_burst(f.as_str(), 0.05, 10.0, onset_ms, onset_ms + 1000),
            if quick { 3 * MINUTE_MS } else { after },
        )
    };
    let one = |s: DriftScenario| DriftStream { scenarios: vec![s] };
    if quick {
        return vec![DriftStream {
            scenarios: vec![
                shift("mean_shift_0.5sd", num(0), 0.5),
                newcat("new_category_5pct", 0.05),
                shift("mean_shift_1sd", num(1), 1.0),
                burst(num(2)),
            ],
        }];
    }
    let classes = def.classes.join("/");
    vec![
        one(shift("mean_shift_0.25sd", num(0), 0.25)),
        one(shift("mean_shift_0.5sd", num(0), 0.5)),
        one(shift("mean_shift_1sd", num(0), 1.0)),
        one(scenario(
            "variance_x2",
            format!("variance of {} doubled", num(0)),
            &num(0),
            Expect::Page,
            DriftSpec::variance_scale(num(0).as_str(), 2.0, onset_ms),
            after,
        )),
        one(newcat("new_category_5pct", 0.05)),
        one(newcat("new_category_20pct", 0.2)),
        one(scenario(
            "class_prior",
            format!(
                "class priors {classes} {} -> 0.15/0.85",
                def.priors
                    .iter()
                    .map(|p| format!("{p:.2}"))
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            crate::engine::baseline::PREDICTION,
            Expect::Page,
            DriftSpec::class_priors(vec![0.15, 0.85], onset_ms),
            after,
        )),
        one(scenario(
            "gradual_1sd_1h",
            format!("mean of {} shifted by 1 sd, ramped in over 1 h", num(0)),
            &num(0),
            Expect::Page,
            DriftSpec::mean_shift(num(0).as_str(), 1.0, onset_ms).ramp(HOUR_MS),
            HOUR_MS + after,
        )),
        one(burst(num(0))),
    ]
}

/// The suite's events: the generator's inference records, typed. Only the
/// JSON text is skipped.
pub struct Stream<'v> {
    generator: Generator,
    vocabulary: &'v EventVocabulary,
    decoded: Decoded<'v>,
}

impl<'v> Stream<'v> {
    /// The records of `generator`'s model 0, whose strings are `vocabulary`
    /// (see [`Generator::vocabulary`]).
    pub fn new(generator: Generator, vocabulary: &'v EventVocabulary) -> Self {
        Stream {
            generator,
            vocabulary,
            decoded: Decoded::Event(vocabulary.event()),
        }
    }

    /// The event at `t_ms`.
    pub fn next(&mut self, t_ms: i64) -> &Decoded<'v> {
        let Decoded::Event(ev) = &mut self.decoded else {
            unreachable!("the stream holds an event")
        };
        self.generator.next_event(t_ms, self.vocabulary, ev);
        &self.decoded
    }

    /// Values replaced by outliers so far.
    pub fn outliers(&self) -> u64 {
        self.generator.outliers_injected()
    }
}

/// The baseline of `def` from `events` reference events of seed `seed`.
pub fn build_baseline(def: &ModelDef, events: u64, seed: u64, cfg: &EngineConfig) -> Baseline {
    let generator = def.generator(&[], seed).expect("no drifts");
    let vocabulary = generator.vocabulary(0);
    let mut s = Stream::new(generator, &vocabulary);
    let mut b = BaselineBuilder::new(&def.name);
    for i in 0..events {
        if let Decoded::Event(ev) = s.next(T0 - HOUR_MS + i as i64) {
            b.add(ev);
        }
    }
    b.finish(&cfg.binning, "scenario-reference", T0 - HOUR_MS)
        .expect("the reference has events")
}

/// Runs `stream` through every engine from `start` to `end` at `rate`
/// events/s, evaluating at every multiple of `every_ms` before counting the
/// events at or after it (as `driftd replay` and the daemon do). `on_eval`
/// sees each engine's evaluations (its index, the time, the transitions)
/// and says whether that engine is done; the run ends when all are.
/// Returns the events each engine counted.
fn drive(
    engines: &mut [Engine],
    stream: &mut Stream<'_>,
    rate: f64,
    (start, end): (i64, i64),
    every_ms: i64,
    mut on_eval: impl FnMut(usize, i64, Vec<Transition>, &Engine) -> bool,
) -> Vec<u64> {
    let step = 1000.0 / rate;
    let mut next_eval = (start.div_euclid(every_ms) + 1) * every_ms;
    let mut counted: Vec<Option<u64>> = vec![None; engines.len()];
    let mut i = 0u64;
    loop {
        let t = start + (i as f64 * step) as i64;
        let stop_at = t.min(end);
        while next_eval <= stop_at {
            for (k, e) in engines.iter_mut().enumerate() {
                if counted[k].is_none() && on_eval(k, next_eval, e.evaluate(next_eval), e) {
                    counted[k] = Some(i);
                }
            }
            if counted.iter().all(Option::is_some) {
                return counted.into_iter().flatten().collect();
            }
            next_eval += every_ms;
        }
        if t >= end {
            return counted.into_iter().map(|c| c.unwrap_or(i)).collect();
        }
        let d = stream.next(t);
        for (k, e) in engines.iter_mut().enumerate() {
            if counted[k].is_none() {
                e.accept(d, t, t);
            }
        }
        i += 1;
    }
}

/// A page: a verdict turning firing (severity changes while firing are not
/// new pages).
fn is_page(t: &Transition) -> bool {
    t.to == State::Firing && t.from != State::Firing
}

/// What fired: `feature/metric`.
fn page_name(t: &Transition) -> String {
    if t.alertname.ends_with("Drift") {
        format!("{}/{}", t.feature, t.metric)
    } else {
        format!("{}:{}", t.alertname, t.feature)
    }
}

/// One stationary stream's outcome in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct StationaryResult {
    pub mode: Mode,
    /// Target samples per full window.
    pub window_samples: u64,
    /// The engine's `min_samples` in this run.
    pub min_samples: u64,
    /// Whether `min_samples` was changed from the default for this row.
    pub min_samples_override: bool,
    pub rate_per_s: f64,
    pub hours: f64,
    pub events: u64,
    pub evaluations: u64,
    /// Evaluations whose window held at least `min_samples` (the others
    /// cannot move a verdict).
    pub judged_evaluations: u64,
    /// Mean samples of the windows evaluated once the first window was full.
    pub mean_samples: f64,
    /// Verdicts turning firing.
    pub false_alarms: u64,
    /// `false_alarms` scaled to 24 h of stream time.
    pub false_alarms_per_24h: f64,
    /// The first few pages: `feature/metric at +h:mm`.
    pub pages: Vec<String>,
    /// Largest PSI and unseen share of any distribution in a judged window.
    pub max_psi: f64,
    pub max_unseen_share: f64,
    pub meets_target: bool,
    pub wall_s: f64,
}

/// When a drift was detected.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// Event time from the onset to the evaluation that fired.
    pub seconds: f64,
    /// Events counted from the onset up to then.
    pub events: u64,
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
}

/// One drift scenario's outcome in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct DriftResult {
    pub mode: Mode,
    pub scenario: String,
    pub description: String,
    pub target: String,
    pub expect: Expect,
    /// Seconds of stream before the onset, and after it.
    pub onset_s: f64,
    pub after_s: f64,
    pub events: u64,
    /// The first page on the drifted distribution.
    pub detected: Option<Detection>,
    /// Detected within one window length of the onset.
    pub caught: bool,
    /// The scenario's expectation held: caught within a window, or (no
    /// page expected) nothing fired on the target.
    pub ok: bool,
    /// Scenarios that ran in the same stream, on other distributions.
    pub run_with: Vec<String>,
    /// Pages on distributions no scenario of the stream drifted (false
    /// alarms), with when.
    pub other_pages: Vec<String>,
    /// Values replaced by outliers (the burst scenario).
    pub outliers_injected: u64,
    /// The run stopped early: the outcome was decided (quick runs).
    pub stopped_early: bool,
    pub wall_s: f64,
}

/// How the suite was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub model: String,
    pub features: usize,
    pub numeric_features: usize,
    pub categorical_features: usize,
    pub baseline_events: u64,
    pub window_ms: i64,
    pub pane_ms: i64,
    pub every_ms: i64,
    /// Each mode's `min_samples` (its config default).
    pub min_samples: Vec<(Mode, u64)>,
    pub for_evaluations: u32,
    pub rules: Vec<String>,
    pub drift_rate_per_s: f64,
    pub seed: u64,
    pub quick: bool,
    pub threads: usize,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub setup: Setup,
    pub stationary: Vec<StationaryResult>,
    pub drift: Vec<DriftResult>,
    /// The accuracy estimate, and quality drops seen with and without labels.
    pub quality: crate::lab::quality_suite::QualitySuite,
    pub wall_s: f64,
}

impl SuiteReport {
    pub fn stationary_of(&self, mode: Mode) -> impl Iterator<Item = &StationaryResult> {
        self.stationary.iter().filter(move |r| r.mode == mode)
    }

    pub fn drift_of(&self, mode: Mode, scenario: &str) -> Option<&DriftResult> {
        self.drift
            .iter()
            .find(|r| r.mode == mode && r.scenario == scenario)
    }
}

/// The engine configuration of a run and the evaluation interval: what
/// the daemon runs with a config file that says only
/// `[evaluation] thresholds = "static"` (or `"auto"`), so every default
/// that comes with a mode (its `min_samples`) comes with it here.
pub fn engine_config(mode: Mode) -> (EngineConfig, i64) {
    let text = format!("[evaluation]\nthresholds = \"{}\"\n", mode.as_str());
    let cfg = Config::from_toml(&text, "driftd scenarios")
        .unwrap_or_else(|e| panic!("the config of threshold mode {}: {e}", mode.as_str()));
    let mut e = cfg.engine;
    match (mode, &e.detect.thresholds) {
        (Mode::Static, Thresholds::Static) | (Mode::Auto, Thresholds::Auto(_)) => {}
        _ => e.detect.thresholds = mode.thresholds(),
    }
    // Event time is arrival time here; nothing is in the future.
    e.max_future_ms = None;
    (e, cfg.every.as_millis() as i64)
}

fn window_ms(cfg: &EngineConfig) -> i64 {
    match cfg.window {
        WindowSpec::Time { length_ms, .. } => length_ms,
        // A count window is as long as its events take at the drift rate.
        WindowSpec::Count { events, .. } => (events as f64 / DRIFT_RATE * 1000.0) as i64,
    }
}

fn seed_of(seed: u64, name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), seed)
}

fn clock(ms: i64) -> String {
    let m = ms.max(0) / MINUTE_MS;
    format!("+{}:{:02}", m / 60, m % 60)
}

struct Ctx<'a> {
    def: &'a ModelDef,
    baseline: &'a Baseline,
    seed: u64,
    stop_early: bool,
}

impl Ctx<'_> {
    /// An engine per mode (with `min_samples` if given), and the
    /// evaluation interval.
    fn engines(
        &self,
        modes: &[Mode],
        min_samples: Option<u64>,
    ) -> (Vec<Engine>, EngineConfig, i64) {
        let (cfg, every) = engine_config(Mode::Static);
        let engines = modes
            .iter()
            .map(|m| {
                let mut c = engine_config(*m).0;
                if let Some(n) = min_samples {
                    c.detect.min_samples = n;
                }
                Engine::new(c, vec![self.baseline.clone()])
            })
            .collect();
        (engines, cfg, every)
    }
}

#[derive(Default)]
struct StationaryAcc {
    min_samples: u64,
    evaluations: u64,
    judged: u64,
    full: u64,
    full_samples: u64,
    false_alarms: u64,
    pages: Vec<String>,
    max_psi: f64,
    max_unseen: f64,
}

/// A stationary stream through one engine per mode (the modes see the
/// same events).
fn run_stationary(ctx: &Ctx<'_>, spec: StationarySpec, modes: &[Mode]) -> Vec<StationaryResult> {
    let began = Instant::now();
    let (mut engines, cfg, every) = ctx.engines(modes, spec.min_samples);
    let window = window_ms(&cfg);
    let rate = spec.window_samples as f64 * 1000.0 / window as f64;
    let end = T0 + (spec.hours * HOUR_MS as f64) as i64;
    let generator = ctx
        .def
        .generator(
            &[],
            seed_of(ctx.seed, &format!("stationary-{}", spec.window_samples)),
        )
        .expect("no drifts");
    let vocabulary = generator.vocabulary(0);
    let mut stream = Stream::new(generator, &vocabulary);
    let mut acc: Vec<StationaryAcc> = modes.iter().map(|_| Default::default()).collect();
    let events = drive(
        &mut engines,
        &mut stream,
        rate,
        (T0, end),
        every,
        |k, at, tr, e| {
            let a = &mut acc[k];
            a.evaluations += 1;
            a.min_samples = e.config().detect.min_samples;
            for t in tr.iter().filter(|t| is_page(t)) {
                a.false_alarms += 1;
                if a.pages.len() < 8 {
                    a.pages
                        .push(format!("{} at {}", page_name(t), clock(at - T0)));
                }
            }
            let min_samples = e.config().detect.min_samples;
            if let Some(m) = e.model(&ctx.def.name) {
                let samples = m.all.window.samples();
                let full = at - T0 >= window;
                if full {
                    a.full += 1;
                    a.full_samples += samples;
                }
                if samples >= min_samples {
                    a.judged += 1;
                }
                // Scores of full windows only: a filling window's noise is
                // that of fewer samples than the row's size.
                if samples >= min_samples && full {
                    let opts = &e.config().compare;
                    let scores = (0..m.layout.slots.len()).filter_map(|i| m.all.scores(i, opts));
                    for s in scores {
                        a.max_psi = a.max_psi.max(s.get(Metric::Psi).unwrap_or(0.0));
                        a.max_unseen = a.max_unseen.max(s.get(Metric::UnseenShare).unwrap_or(0.0));
                    }
                }
            }
            false
        },
    );
    let wall_s = began.elapsed().as_secs_f64();
    modes
        .iter()
        .zip(acc)
        .zip(events)
        .map(|((mode, a), events)| {
            let per_24h = a.false_alarms as f64 * 24.0 / spec.hours;
            StationaryResult {
                mode: *mode,
                window_samples: spec.window_samples,
                min_samples: a.min_samples,
                min_samples_override: spec.min_samples.is_some(),
                rate_per_s: rate,
                hours: spec.hours,
                events,
                evaluations: a.evaluations,
                judged_evaluations: a.judged,
                mean_samples: if a.full > 0 {
                    a.full_samples as f64 / a.full as f64
                } else {
                    0.0
                },
                false_alarms: a.false_alarms,
                false_alarms_per_24h: per_24h,
                pages: a.pages,
                max_psi: a.max_psi,
                max_unseen_share: a.max_unseen,
                meets_target: per_24h <= TARGET_FA_PER_24H,
                wall_s,
            }
        })
        .collect()
}

/// A drift stream through one engine per mode (the modes see the same
/// events).
fn run_drift(ctx: &Ctx<'_>, ds: &DriftStream, onset: i64, modes: &[Mode]) -> Vec<DriftResult> {
    let began = Instant::now();
    let (mut engines, cfg, every) = ctx.engines(modes, None);
    let window = window_ms(&cfg);
    let drifts: Vec<DriftSpec> = ds.scenarios.iter().map(|s| s.drift.clone()).collect();
    let generator = ctx
        .def
        .generator(&drifts, seed_of(ctx.seed, &ds.name()))
        .expect("scenario drifts fit");
    let vocabulary = generator.vocabulary(0);
    let mut stream = Stream::new(generator, &vocabulary);
    let end = onset + ds.after_ms();
    // A no-page scenario is decided when its time is up.
    let watch_until = ds
        .scenarios
        .iter()
        .filter(|s| s.expect == Expect::NoPage)
        .map(|s| onset + s.after_ms)
        .max()
        .unwrap_or(onset);
    let step = 1000.0 / DRIFT_RATE;
    // Events before `t` (the stream's i-th event is at T0 + i * step).
    let events_before = |t: i64| ((t - T0) as f64 / step).ceil().max(0.0) as u64;
    let n = ds.scenarios.len();
    // [mode][scenario]
    let mut detected: Vec<Vec<Option<Detection>>> = vec![vec![None; n]; modes.len()];
    let mut other: Vec<Vec<String>> = vec![Vec::new(); modes.len()];
    let mut stopped: Vec<bool> = vec![false; modes.len()];
    let events = drive(
        &mut engines,
        &mut stream,
        DRIFT_RATE,
        (T0, end),
        every,
        |k, at, tr, _| {
            for t in tr.iter().filter(|t| is_page(t)) {
                let hit = ds
                    .scenarios
                    .iter()
                    .position(|s| t.feature == s.target && t.alertname.ends_with("Drift"));
                match hit {
                    Some(j) if at >= onset => {
                        // The first page counts; later ones (after a
                        // resolve) are the same drift.
                        detected[k][j].get_or_insert_with(|| Detection {
                            seconds: (at - onset) as f64 / 1000.0,
                            events: events_before(at) - events_before(onset),
                            metric: t.metric.to_owned(),
                            value: t.value,
                            threshold: t.threshold,
                        });
                    }
                    Some(_) => other[k].push(format!(
                        "{} at {} (before the onset)",
                        page_name(t),
                        clock(at - T0)
                    )),
                    None if other[k].len() < 8 => {
                        other[k].push(format!("{} at {}", page_name(t), clock(at - T0)))
                    }
                    None => {}
                }
            }
            let decided = at >= watch_until
                && ds
                    .scenarios
                    .iter()
                    .zip(&detected[k])
                    .all(|(s, d)| s.expect == Expect::NoPage || d.is_some());
            let stop = ctx.stop_early && decided && at < end;
            stopped[k] = stop;
            stop
        },
    );
    let wall_s = began.elapsed().as_secs_f64();
    let mut out = Vec::new();
    for (k, mode) in modes.iter().enumerate() {
        for (j, sc) in ds.scenarios.iter().enumerate() {
            let d = detected[k][j].take();
            let caught = d
                .as_ref()
                .is_some_and(|d| d.seconds * 1000.0 <= window as f64);
            let ok = match sc.expect {
                Expect::Page => caught,
                Expect::NoPage => d.is_none(),
            };
            out.push(DriftResult {
                mode: *mode,
                scenario: sc.name.to_owned(),
                description: sc.description.clone(),
                target: sc.target.clone(),
                expect: sc.expect,
                onset_s: (onset - T0) as f64 / 1000.0,
                after_s: (events[k] as f64 * step / 1000.0 - (onset - T0) as f64 / 1000.0)
                    .max(0.0)
                    .round(),
                events: events[k],
                detected: d,
                caught,
                ok,
                run_with: ds
                    .scenarios
                    .iter()
                    .filter(|o| o.name != sc.name)
                    .map(|o| o.name.to_owned())
                    .collect(),
                other_pages: other[k].clone(),
                outliers_injected: stream.outliers(),
                stopped_early: stopped[k],
                wall_s,
            });
        }
    }
    out
}

enum Job<'a> {
    Stationary(StationarySpec),
    Drift(&'a DriftStream),
}

/// What a job measured.
enum Done {
    Stationary(Vec<StationaryResult>),
    Drift(Vec<DriftResult>),
}

impl Job<'_> {
    fn run(&self, ctx: &Ctx<'_>, mode: Mode, onset: i64) -> Done {
        match self {
            Job::Stationary(spec) => Done::Stationary(run_stationary(ctx, *spec, &[mode])),
            Job::Drift(ds) => Done::Drift(run_drift(ctx, ds, onset, &[mode])),
        }
    }
}

impl Done {
    /// A progress line per result.
    fn progress_lines(&self) -> Vec<String> {
        match self {
            Done::Stationary(rs) => rs
                .iter()
                .map(|r| {
                    format!(
                        "stationary n={} {}: {} false alarms in {} h ({:.1} s){}",
                        size_label(r),
                        r.mode.as_str(),
                        r.false_alarms,
                        r.hours,
                        r.wall_s,
                        if r.pages.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", r.pages.join(", "))
                        }
                    )
                })
                .collect(),
            Done::Drift(rs) => rs
                .iter()
                .map(|r| {
                    format!(
                        "{} {}: {} ({:.1} s)",
                        r.scenario,
                        r.mode.as_str(),
                        outcome(r),
                        r.wall_s
                    )
                })
                .collect(),
        }
    }
}

/// The runs of the suite, longest first (so the last job to finish is a
/// short one), with their cost in events.
fn plan_jobs<'a>(
    opts: &SuiteOptions,
    window: i64,
    onset: i64,
    streams: &'a [DriftStream],
) -> Vec<(f64, Job<'a>, Mode)> {
    // A job per mode: the longest stream sets the wall time, and two
    // engines on one stream would run it on one core (sharing saves only
    // the sampling, ~40% of an engine).
    let mut jobs: Vec<(f64, Job<'_>, Mode)> = Vec::new();
    for &mode in &opts.modes {
        for spec in stationary_specs(opts.quick) {
            jobs.push((
                spec.window_samples as f64 * 1000.0 / window as f64 * spec.hours * 3600.0,
                Job::Stationary(spec),
                mode,
            ));
        }
        for ds in streams {
            let ms = (onset - T0 + ds.after_ms()) as f64;
            jobs.push((DRIFT_RATE * ms / 1000.0, Job::Drift(ds), mode));
        }
    }
    jobs.sort_by(|a, b| b.0.total_cmp(&a.0));
    jobs
}

/// Runs `jobs` on `threads` workers, reporting each result to `progress`.
fn run_jobs(
    ctx: &Ctx<'_>,
    jobs: &[(f64, Job<'_>, Mode)],
    onset: i64,
    threads: usize,
    progress: Option<fn(&str)>,
) -> (Vec<StationaryResult>, Vec<DriftResult>) {
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let stationary: Mutex<Vec<StationaryResult>> = Mutex::new(Vec::new());
    let drift: Mutex<Vec<DriftResult>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, job, mode)) = jobs.get(i) else {
                    return;
                };
                let done = job.run(ctx, *mode, onset);
                let lines = done.progress_lines();
                match done {
                    Done::Stationary(rs) => stationary.lock().expect("not poisoned").extend(rs),
                    Done::Drift(rs) => drift.lock().expect("not poisoned").extend(rs),
                }
                let k = finished.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(p) = progress {
                    for l in lines {
                        p(&format!("[{k}/{}] {l}", jobs.len()));
                    }
                }
            });
        }
    });
    (
        stationary.into_inner().expect("workers done"),
        drift.into_inner().expect("workers done"),
    )
}

/// How the suite was set up, for the report.
fn setup(opts: &SuiteOptions, def: &ModelDef, threads: usize) -> Setup {
    let (cfg, every) = engine_config(Mode::Static);
    let (length_ms, pane_ms) = match cfg.window {
        WindowSpec::Time { length_ms, pane_ms } => (length_ms, pane_ms),
        WindowSpec::Count { .. } => (window_ms(&cfg), 0),
    };
    Setup {
        model: def.name.clone(),
        features: def.features.len(),
        numeric_features: def.features.iter().filter(|f| f.is_numeric()).count(),
        categorical_features: def.features.iter().filter(|f| f.is_categorical()).count(),
        baseline_events: BASELINE_EVENTS,
        window_ms: length_ms,
        pane_ms,
        every_ms: every,
        min_samples: opts
            .modes
            .iter()
            .map(|m| (*m, engine_config(*m).0.detect.min_samples))
            .collect(),
        for_evaluations: cfg.detect.for_evaluations,
        rules: cfg
            .detect
            .rules
            .iter()
            .map(|r| format!("{} {} / {}", r.metric.name(), r.warning, r.critical))
            .collect(),
        drift_rate_per_s: DRIFT_RATE,
        seed: opts.seed,
        quick: opts.quick,
        threads,
    }
}

/// Runs the suite.
pub fn run(opts: &SuiteOptions) -> SuiteReport {
    let began = Instant::now();
    let def = ModelDef::new(opts.seed);
    let (cfg, _) = engine_config(Mode::Static);
    let window = window_ms(&cfg);
    let baseline = build_baseline(&def, BASELINE_EVENTS, seed_of(opts.seed, "reference"), &cfg);
    // The window is full after one length; the drift comes after a little
    // more stationary traffic (half a window in the full run).
    let onset = if opts.quick {
        T0 + window + window / 20
    } else {
        T0 + window + window / 2
    };
    let streams = drift_streams(&def, onset, opts.quick);
    let jobs = plan_jobs(opts, window, onset, &streams);
    let ctx = Ctx {
        def: &def,
        baseline: &baseline,
        seed: opts.seed,
        stop_early: opts.quick,
    };
    let threads = opts.threads.clamp(1, jobs.len().max(1));
    let (mut stationary, mut drift) = run_jobs(&ctx, &jobs, onset, threads, opts.progress);
    let quality = crate::lab::quality_suite::run(opts.seed, opts.quick);
    if let Some(p) = opts.progress {
        p("quality scenarios done");
    }
    // In table order: by size, scenario, then mode as asked.
    let mode_rank = |m: Mode| opts.modes.iter().position(|x| *x == m);
    stationary.sort_by_key(|r| (r.window_samples, r.min_samples_override, mode_rank(r.mode)));
    let order: Vec<&str> = streams
        .iter()
        .flat_map(|d| d.scenarios.iter().map(|s| s.name))
        .collect();
    drift.sort_by_key(|r| {
        (
            order.iter().position(|n| *n == r.scenario),
            mode_rank(r.mode),
        )
    });
    SuiteReport {
        setup: setup(opts, &def, threads),
        stationary,
        drift,
        quality,
        wall_s: began.elapsed().as_secs_f64(),
    }
}

fn outcome(r: &DriftResult) -> String {
    match (r.expect, &r.detected) {
        (Expect::Page, Some(d)) if r.caught => format!("caught after {:.0} s", d.seconds),
        (Expect::Page, Some(d)) => format!("caught late, after {:.0} s", d.seconds),
        (Expect::Page, None) => format!("missed (not fired in {:.0} min)", r.after_s / 60.0),
        (Expect::NoPage, None) => "no page (good)".into(),
        (Expect::NoPage, Some(d)) => format!("paged after {:.0} s (bad)", d.seconds),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate_str(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.2}")
    } else {
        format!("{r:.0}")
    }
}

/// A stationary row's label: its nominal size, and `min_samples` when changed.
fn size_label(x: &StationaryResult) -> String {
    if x.min_samples_override {
        format!(
            "{} (min_samples {})",
            thousands(x.window_samples),
            x.min_samples
        )
    } else {
        thousands(x.window_samples)
    }
}

/// One mode's false alarms in a stationary row.
fn fa_cell(x: &StationaryResult) -> String {
    let rate = if x.hours == 24.0 {
        format!("{}", x.false_alarms_per_24h)
    } else if x.hours > 24.0 {
        format!("{:.2}", x.false_alarms_per_24h)
    } else {
        format!("{:.1} extrapolated", x.false_alarms_per_24h)
    };
    let mut cell = format!("{} ({} / 24 h)", x.false_alarms, rate);
    if (1..=3).contains(&x.false_alarms) {
        let _ = write!(cell, ": {}", x.pages.join(", "));
    }
    if x.meets_target {
        cell
    } else {
        format!("**{cell}**")
    }
}

/// One mode's outcome in a drift row.
fn drift_cell(x: &DriftResult) -> String {
    let mut cell = match (x.expect, &x.detected) {
        (Expect::Page, Some(d)) => format!(
            "{}{:.0} s, {} events ({} {:.3} ≥ {:.3})",
            if x.caught { "caught, " } else { "**late**, " },
            d.seconds,
            thousands(d.events),
            d.metric,
            d.value,
            d.threshold,
        ),
        (Expect::Page, None) => format!("**missed** (nothing in {:.0} min)", x.after_s / 60.0),
        (Expect::NoPage, None) => format!(
            "no page (good; {} outliers, {:.0} min watched)",
            x.outliers_injected,
            x.after_s / 60.0
        ),
        (Expect::NoPage, Some(d)) => format!(
            "**paged** after {:.0} s ({} {:.3} ≥ {:.3})",
            d.seconds, d.metric, d.value, d.threshold
        ),
    };
    if !x.other_pages.is_empty() {
        let _ = write!(cell, "; **other pages**: {}", x.other_pages.join(", "));
    }
    cell
}

/// The report as markdown tables (what goes in the README): one column
/// per threshold mode.
pub fn render_markdown(r: &SuiteReport) -> String {
    let mut modes: Vec<Mode> = Vec::new();
    for m in r
        .stationary
        .iter()
        .map(|x| x.mode)
        .chain(r.drift.iter().map(|x| x.mode))
    {
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    let mut out = String::new();
    write_setup(&mut out, &r.setup);
    write_stationary_table(&mut out, r, &modes);
    write_drift_table(&mut out, r, &modes);
    crate::lab::quality_suite::render_markdown(&r.quality, &mut out);
    if let Some(x) = r.drift.iter().find(|x| !x.run_with.is_empty()) {
        let _ = writeln!(
            out,
            "\n(Quick set: {} and {} ran in one stream, each on its own distribution.)",
            x.scenario,
            x.run_with.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nWall time: {:.0} s on {} threads.",
        r.wall_s, r.setup.threads
    );
    out
}

/// The paragraph saying how the suite was set up.
fn write_setup(out: &mut String, s: &Setup) {
    let _ = writeln!(
        out,
        "Model `{}`: {} features ({} numeric, {} categorical, 1 boolean) plus prediction and \
         confidence, {} verdicts; baseline from {} reference events; {} min windows in {} s \
         panes, evaluated every {} s; min_samples {}; `for` {}; rules {}; seed {}{}.\n",
        s.model,
        s.features,
        s.numeric_features,
        s.categorical_features,
        (s.features + 2) * s.rules.len(),
        thousands(s.baseline_events),
        s.window_ms / MINUTE_MS,
        s.pane_ms / 1000,
        s.every_ms / 1000,
        s.min_samples
            .iter()
            .map(|(m, n)| format!("{n} ({})", m.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
        s.for_evaluations,
        s.rules.join(", "),
        s.seed,
        if s.quick { " (quick set)" } else { "" },
    );
}

/// A table's head: the fixed columns (with their alignment row), then a
/// column per mode named `{mode}{suffix}`.
fn write_head(out: &mut String, fixed: &str, fixed_align: &str, modes: &[Mode], suffix: &str) {
    out.push_str(fixed);
    for m in modes {
        let _ = write!(out, " {}{suffix} |", m.as_str());
    }
    out.push('\n');
    out.push_str(fixed_align);
    for _ in modes {
        out.push_str("---|");
    }
    out.push('\n');
}

/// Each mode's cell of a row: `cell` of the mode's result, or `-`.
fn write_mode_cells<T>(
    out: &mut String,
    xs: &[&T],
    modes: &[Mode],
    mode_of: fn(&T) -> Mode,
    cell: fn(&T) -> String,
) {
    for m in modes {
        let c = xs
            .iter()
            .find(|y| mode_of(y) == *m)
            .map_or_else(|| "-".to_string(), |y| cell(y));
        let _ = write!(out, " {c} |");
    }
    out.push('\n');
}

/// The stationary table: a row per window size (and `min_samples`).
fn write_stationary_table(out: &mut String, r: &SuiteReport, modes: &[Mode]) {
    let _ = writeln!(
        out,
        "No drift. False alarms = verdicts turning firing, per model (target: at most {} per 24 h).\n",
        TARGET_FA_PER_24H
    );
    write_head(
        out,
        "| window n | events/s | stream h | mean samples | judged / evaluations | max PSI | max unseen |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        modes,
        " false alarms",
    );
    let mut rows: Vec<(u64, bool)> = Vec::new();
    for x in &r.stationary {
        if !rows.contains(&(x.window_samples, x.min_samples_override)) {
            rows.push((x.window_samples, x.min_samples_override));
        }
    }
    for key in rows {
        let xs: Vec<&StationaryResult> = r
            .stationary
            .iter()
            .filter(|x| (x.window_samples, x.min_samples_override) == key)
            .collect();
        let x = xs[0];
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {} | {:.4} | {:.4} |",
            size_label(x),
            rate_str(x.rate_per_s),
            x.hours,
            thousands(x.mean_samples.round() as u64),
            judged_cell(&xs),
            xs.iter().map(|y| y.max_psi).fold(0.0, f64::max),
            xs.iter().map(|y| y.max_unseen_share).fold(0.0, f64::max),
        );
        write_mode_cells(out, &xs, modes, |y| y.mode, fa_cell);
    }
}

/// Judged evaluations of a stationary row, per mode where they differ.
fn judged_cell(xs: &[&StationaryResult]) -> String {
    let evaluations = thousands(xs[0].evaluations);
    let mut judged: Vec<u64> = xs.iter().map(|y| y.judged_evaluations).collect();
    judged.dedup();
    if judged.len() == 1 {
        return format!("{} / {evaluations}", thousands(judged[0]));
    }
    let per_mode: Vec<String> = xs
        .iter()
        .map(|y| format!("{} {}", thousands(y.judged_evaluations), y.mode.as_str()))
        .collect();
    format!("{} / {evaluations}", per_mode.join(", "))
}

/// The drift table: a row per scenario.
fn write_drift_table(out: &mut String, r: &SuiteReport, modes: &[Mode]) {
    let s = &r.setup;
    let _ = writeln!(
        out,
        "\nInjected drift at {} events/s (windows of ~{} samples), onset after {} min of \
         stationary traffic. Delay = from the onset to the evaluation where the drifted \
         distribution's verdict turned firing; caught = within one window length ({} min).\n",
        s.drift_rate_per_s,
        thousands((s.drift_rate_per_s * s.window_ms as f64 / 1000.0) as u64),
        r.drift.first().map_or(0.0, |d| d.onset_s / 60.0),
        s.window_ms / MINUTE_MS
    );
    write_head(out, "| scenario |", "|---|", modes, "");
    let mut names: Vec<&str> = Vec::new();
    for x in &r.drift {
        if !names.contains(&x.scenario.as_str()) {
            names.push(&x.scenario);
        }
    }
    for name in names {
        let xs: Vec<&DriftResult> = r.drift.iter().filter(|x| x.scenario == name).collect();
        let _ = write!(out, "| `{}`: {} |", name, xs[0].description);
        write_mode_cells(out, &xs, modes, |y| y.mode, drift_cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decode::{DecodeConfig, Decoder, FeatureValue};

    /// The typed events are what the generator writes: a window of them
    /// scores as noise against a baseline built from the generator's JSON
    /// lines through the decoder.
    #[test]
    fn typed_events_score_as_noise_against_the_generators_lines() {
        let def = ModelDef::new(DEFAULT_SEED);
        let mut gcfg = GeneratorConfig::synthetic(DEFAULT_SEED, 1, FEATURES).inference_only();
        gcfg.arms = false;
        let mut g = Generator::new(gcfg);
        let d = Decoder::new(DecodeConfig::default());
        let mut b = BaselineBuilder::new(&def.name);
        let mut buf = String::new();
        for i in 0..20_000 {
            g.next_line(T0 - HOUR_MS + i, &mut buf);
            if let Decoded::Event(ev) = d.decode(buf.as_bytes()) {
                b.add(&ev);
            }
        }
        let (cfg, _) = engine_config(Mode::Static);
        let base = b.finish(&cfg.binning, "generator", T0).unwrap();
        assert_eq!(base.features.len(), FEATURES);
        let mut e = Engine::new(cfg, vec![base]);
        let generator = def.generator(&[], 1).unwrap();
        let vocabulary = generator.vocabulary(0);
        let mut s = Stream::new(generator, &vocabulary);
        for i in 0..20_000 {
            let t = T0 + i * 20;
            e.accept(s.next(t), t, t);
        }
        e.evaluate(T0 + 400_000);
        let m = e.model(&def.name).unwrap();
        assert!(m.all.window.samples() >= 19_000);
        for (i, slot) in m.layout.slots.iter().enumerate() {
            let psi = m.all.scores(i, &e.config().compare).unwrap().psi;
            assert!(psi < 0.02, "{}: psi {psi}", slot.name);
        }
    }

    /// The suite's drifts reach its events: a 1 sd mean shift moves the
    /// mean by one baseline sd, a new category takes its share.
    #[test]
    fn drifts_have_their_effect() {
        let def = ModelDef::new(DEFAULT_SEED);
        let num = def.normal_feature(0).to_owned();
        let cat = def.categorical_feature().to_owned();
        let drifts = [
            DriftSpec::mean_shift(num.as_str(), 1.0, T0),
            DriftSpec::new_category(cat.as_str(), "zz", 0.2, T0),
        ];
        let i = def.features.iter().position(|f| f.name == num).unwrap();
        let j = def.features.iter().position(|f| f.name == cat).unwrap();
        let (mean, sd) = (
            def.features[i].mean().unwrap(),
            def.features[i].sd().unwrap(),
        );
        let generator = def.generator(&drifts, 3).unwrap();
        let vocabulary = generator.vocabulary(0);
        let mut s = Stream::new(generator, &vocabulary);
        let (mut sum, mut n, mut new) = (0.0f64, 0.0f64, 0.0f64);
        for k in 0..20_000 {
            let Decoded::Event(ev) = s.next(T0 + k) else {
                unreachable!()
            };
            if let FeatureValue::Num(x) = ev.features[i].1 {
                sum += x;
                n += 1.0;
            }
            if matches!(&ev.features[j].1, FeatureValue::Cat(c) if c == "zz") {
                new += 1.0;
            }
        }
        let shift = (sum / n - mean) / sd;
        assert!((shift - 1.0).abs() < 0.05, "shift {shift}");
        assert!((new / 20_000.0 - 0.2).abs() < 0.01, "{new}");
    }
}
