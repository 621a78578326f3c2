//! Service health from the same stream: error rates, deployments, latency
//! quantiles and batch statistics, per model.
//!
//! This module owns what the seed's error, latency and batch-statistics
//! analyses need beside drift. Per model: a ring of time panes with request
//! and error counts, one mergeable latency sketch per stage and pane
//! (DDSketch: bounded memory, 1% relative error by default), error counts by
//! `error_type` (top K, the rest as `other`) and the latest batch
//! statistics. Per lineage (a service and a model name without its version
//! suffix), the versions in the order they were first seen. Like the engine
//! it is pure: time comes in as a parameter, transitions go out.
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

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use serde::Serialize;
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::engine::compare::{two_proportion_test, Tail};
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
    /// Relative accuracy of the latency sketches.
    pub sketch_error: f64,
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
            sketch_error: 0.01,
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

impl HealthConfig {
    /// The most one model's health state takes on the heap (a first bound,
    /// superseded by the histogram rework): the pane ring, and a latency
    /// sketch of up to 512 bins per stage and pane.
    pub fn model_bytes(&self) -> usize {
        let history = self.panes * (1 + self.reference_windows);
        history * (64 + self.max_stages * 16)
            + self.max_stages * self.panes * (512 * 8 + 128)
            + self.max_error_types * 64
            + self.max_batch_stats * 64
            + 4096
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
    /// Lines older than the model's history ring.
    pub late: u64,
    /// New lineages refused because `max_lineages` was reached.
    pub lineages_refused: u64,
}

/// Request and error counts of one pane, and (after a deploy) how many
/// requests per stage were slower than the previous version's quantile.
#[derive(Debug, Clone, Default)]
struct Pane {
    id: i64,
    requests: u64,
    errors: u64,
    /// Per stage: (values, values above the previous version's quantile).
    slow: Vec<(u64, u64)>,
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
    panes: Vec<Pane>,
    pub requests_total: u64,
    pub errors_total: u64,
    /// Error types with their own label, and their counts; `other_errors`
    /// holds the rest.
    pub error_types: Vec<(Arc<str>, u64)>,
    pub other_errors: u64,
    pub stages: Vec<Arc<str>>,
    /// `[stage][pane % panes]`: (pane id, sketch).
    sketches: Vec<Vec<Option<(i64, Sketch)>>>,
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
}

/// A DDSketch that prints as its count (the crate's type has no `Debug`).
#[derive(Clone)]
struct Sketch(DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DDSketch({} values)", self.0.count())
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
    sketch_cfg: SketchConfig,
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
        // 512 bins cover 1 us to over an hour at 1% (the lowest bins
        // collapse beyond): about 4 KiB at most per stage and pane.
        let sketch_cfg = SketchConfig::new(cfg.sketch_error, 512, 1e-6);
        Health {
            cfg,
            sketch_cfg,
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

    fn history(&self) -> usize {
        self.cfg.panes * (1 + self.cfg.reference_windows)
    }

    /// The model's state, created (and its deploy detected) on first sight.
    fn entry(&mut self, model: &str, service: Option<&str>, t_ms: i64) -> Option<&mut ModelHealth> {
        if !self.models.contains_key(model) {
            if self.models.len() >= self.cfg.max_models {
                self.stats.models_refused += 1;
                return None;
            }
            let deploy = self.note_version(model, t_ms);
            let history = self.history();
            self.models.insert(
                model.into(),
                ModelHealth {
                    name: model.into(),
                    service: service.map(Into::into),
                    first_seen_ms: t_ms,
                    last_seen_ms: t_ms,
                    panes: vec![
                        Pane {
                            id: i64::MIN,
                            ..Pane::default()
                        };
                        history
                    ],
                    requests_total: 0,
                    errors_total: 0,
                    error_types: Vec::new(),
                    other_errors: 0,
                    stages: Vec::new(),
                    sketches: Vec::new(),
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
        let live: Vec<(&ModelHealth, u64, u64)> = lineage
            .versions
            .iter()
            .rev()
            .filter_map(|(v, _)| self.models.get(v.as_ref()))
            .map(|p| {
                let (r, e) = p
                    .panes
                    .iter()
                    .filter(|x| x.id != i64::MIN)
                    .fold((0, 0), |(r, e), x| (r + x.requests, e + x.errors));
                (p, r, e)
            })
            .collect();
        let previous = live
            .iter()
            .find(|(_, r, _)| *r >= self.cfg.deploy.min_requests)
            .or(live.first())
            .map(|(p, r, e)| {
                let q = self.cfg.deploy_latency_quantile;
                let latency = (0..p.stages.len())
                    .filter_map(|s| {
                        let sk = merged(&p.sketches[s], self.sketch_cfg, None, None)?;
                        let v = sk.quantile(q).ok().flatten()?;
                        Some((p.stages[s].clone(), v, sk.count() as u64))
                    })
                    .collect();
                (p.name.clone(), *r, *e, latency)
            });
        lineage.versions.push((model.into(), t_ms));
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
        let cfg = self.cfg.clone_limits();
        let sketch_cfg = self.sketch_cfg;
        let Some(m) = self.entry(model, service, t_ms) else {
            return;
        };
        let (late, refused) = observe_model(m, &cfg, sketch_cfg, t_ms, o);
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
                None if b.stats.len() < max => b.stats.push((name.as_ref().into(), *v)),
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
                &self.cfg,
                self.sketch_cfg,
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

/// The caps [`observe_model`] needs, copied out of the config so the
/// model's state can be borrowed at the same time.
#[derive(Debug, Clone, Copy)]
struct Limits {
    pane_ms: i64,
    panes: usize,
    max_types: usize,
    max_stages: usize,
}

impl HealthConfig {
    fn clone_limits(&self) -> Limits {
        Limits {
            pane_ms: self.pane_ms,
            panes: self.panes,
            max_types: self.max_error_types,
            max_stages: self.max_stages,
        }
    }
}

/// Counts one line into a model's state; returns (late, stages refused).
fn observe_model(
    m: &mut ModelHealth,
    l: &Limits,
    sketch_cfg: SketchConfig,
    t_ms: i64,
    o: Observation<'_, '_>,
) -> (bool, u64) {
    let (pane_ms, panes, max_types, max_stages) = (l.pane_ms, l.panes, l.max_types, l.max_stages);
    let mut stages_refused = 0;
    let id = t_ms.div_euclid(pane_ms);
    let n = m.panes.len();
    let row = &mut m.panes[id.rem_euclid(n as i64) as usize];
    if row.id > id {
        return (true, 0);
    }
    if row.id != id {
        *row = Pane {
            id,
            ..Pane::default()
        };
    }
    if o.request {
        row.requests += 1;
        m.requests_total += 1;
    }
    if o.error {
        row.errors += 1;
        m.errors_total += 1;
        let ty = o.error_type.unwrap_or("unknown");
        match m.error_types.iter().position(|(t, _)| **t == *ty) {
            Some(i) => m.error_types[i].1 += 1,
            None if m.error_types.len() < max_types => m.error_types.push((ty.into(), 1)),
            None => m.other_errors += 1,
        }
    }
    for (name, ms) in o.stages {
        let s = match m.stages.iter().position(|x| **x == **name) {
            Some(s) => s,
            None if m.stages.len() < max_stages => {
                m.stages.push(name.as_ref().into());
                m.sketches.push(vec![None; panes]);
                m.deploy_latency.push(Condition::default());
                m.p99_high.push(Condition::default());
                m.stages.len() - 1
            }
            None => {
                stages_refused += 1;
                continue;
            }
        };
        let cell = &mut m.sketches[s][id.rem_euclid(panes as i64) as usize];
        match cell {
            Some((cid, sk)) if *cid == id => sk.0.add(*ms),
            Some((cid, _)) if *cid > id => {}
            _ => {
                let mut sk = DDSketch::new(sketch_cfg);
                sk.add(*ms);
                *cell = Some((id, Sketch(sk)));
            }
        }
        if let Some(d) = &m.deploy {
            if let Some((_, q, _)) = d.previous_latency.iter().find(|(st, _, _)| **st == **name) {
                if row.slow.len() <= s {
                    row.slow.resize(s + 1, (0, 0));
                }
                row.slow[s].0 += 1;
                row.slow[s].1 += u64::from(*ms > *q);
            }
        }
    }
    (false, stages_refused)
}

/// The merge of a stage's live pane sketches (`lo`: the oldest pane id to
/// include).
fn merged(
    cells: &[Option<(i64, Sketch)>],
    cfg: SketchConfig,
    lo: Option<i64>,
    hi: Option<i64>,
) -> Option<DDSketch> {
    let mut out: Option<DDSketch> = None;
    for (id, sk) in cells.iter().flatten() {
        if lo.is_some_and(|lo| *id < lo) || hi.is_some_and(|hi| *id > hi) {
            continue;
        }
        match &mut out {
            None => {
                let mut s = DDSketch::new(cfg);
                s.merge(&sk.0).ok()?;
                out = Some(s);
            }
            Some(s) => s.merge(&sk.0).ok()?,
        }
    }
    out.filter(|s| s.count() > 0)
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
    /// Oldest and newest pane of the current window.
    cur_lo: i64,
    head: i64,
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
    fn sum(cfg: &HealthConfig, m: &ModelHealth, now_ms: i64) -> WindowCounts {
        let head = now_ms.div_euclid(cfg.pane_ms);
        let cur_lo = head - cfg.panes as i64 + 1;
        let hist_lo = head - m.panes.len() as i64 + 1;
        let mut w = WindowCounts {
            cur_lo,
            head,
            span: (cur_lo * cfg.pane_ms, (head + 1) * cfg.pane_ms),
            n: 0,
            x: 0,
            n0: 0,
            x0: 0,
            slow: vec![(0, 0); m.stages.len()],
        };
        for p in &m.panes {
            if p.id >= cur_lo && p.id <= head {
                w.n += p.requests;
                w.x += p.errors;
                for (s, (a, b)) in p.slow.iter().enumerate() {
                    w.slow[s].0 += a;
                    w.slow[s].1 += b;
                }
            } else if p.id >= hist_lo && p.id < cur_lo {
                w.n0 += p.requests;
                w.x0 += p.errors;
            }
        }
        w
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
    cfg: &HealthConfig,
    sketch_cfg: SketchConfig,
    m: &mut ModelHealth,
    now_ms: i64,
    detect: &DetectConfig,
    out: &mut Vec<Transition>,
) -> HealthReport {
    let w = WindowCounts::sum(cfg, m, now_ms);
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
        latency.push(judge.stage_latency(m, s, sketch_cfg, &w));
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
        sketch_cfg: SketchConfig,
        w: &WindowCounts,
    ) -> StageReport {
        let sk = merged(&m.sketches[s], sketch_cfg, Some(w.cur_lo), Some(w.head));
        let samples = sk.as_ref().map_or(0, |k| k.count() as u64);
        let qv = |p: f64| sk.as_ref().and_then(|k| k.quantile(p).ok().flatten());
        let mut report = StageReport {
            stage: m.stages[s].to_string(),
            samples,
            p50_ms: qv(0.5),
            p90_ms: qv(0.9),
            p99_ms: qv(0.99),
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

    /// Quantiles of a known distribution (1..=1000 ms, uniform) are within
    /// the sketch's relative error, a p99 over its limit fires, and a new
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
}
