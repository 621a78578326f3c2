//! A/B experiments: what users do with each arm's predictions.
//!
//! This module owns the feedback join. A prediction that carries a request
//! id waits (bounded, for `ttl`) for feedback lines naming the same request;
//! feedback that arrives before its prediction waits likewise, and is
//! applied when the prediction comes. Only a hash of the request id is ever
//! held. Per model and arm it counts, in panes of prediction time over the
//! window: predictions with a request id, and how many of them got feedback
//! (any, and per action: the first `max_actions` actions seen get their own
//! label, the rest count as `other`). Each variant is compared with the
//! control arm by a two-sided two-proportion z-test per action; a p-value
//! under `alpha` with enough predictions on both sides raises
//! `ArmFeedbackDifference`.
//!
//! Recent predictions have had less time to collect feedback than old ones,
//! so the rates of the newest panes are low; they are equally low in every
//! arm, which keeps the comparison fair.
//!
//! How the arms' *inputs* differ is computed by the engine, which owns the
//! per-arm windows (see `Engine::report`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use serde::Serialize;

use crate::engine::compare::{two_proportion_test, Tail};
use crate::engine::detect::{
    p_level, Condition, ConditionLevel, DetectConfig, Severity, State, Transition,
};

/// Makes room for one more entry in a map keyed by request hash, whose
/// insertion order `order` records as (hash, sequence number): the oldest
/// entries leave first. An order entry whose map entry is gone, or was
/// replaced since (another sequence number), is skipped. Returns how many
/// entries left the map. Both joins (feedback here, labels in
/// `engine::quality`) bound their maps with it.
pub(crate) fn evict_oldest<V>(
    map: &mut FxHashMap<u64, V>,
    order: &mut VecDeque<(u64, u64)>,
    cap: usize,
    seq: impl Fn(&V) -> u64,
) -> u64 {
    let mut evicted = 0;
    while map.len() >= cap {
        let Some((h, s)) = order.pop_front() else {
            break;
        };
        if map.get(&h).is_some_and(|v| seq(v) == s) {
            map.remove(&h);
            evicted += 1;
        }
    }
    evicted
}

/// Settings (validated config, `[experiments]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentConfig {
    pub enabled: bool,
    /// Join predictions from the start (`experiments.join = "always"`), or
    /// only once the stream has carried a feedback line (`"auto"`, the
    /// default): a stream that never carries feedback then pays no join
    /// entry per prediction. Feedback lines name no model, so the first one
    /// turns the join on for every model.
    pub join_from_start: bool,
    /// How long a prediction waits for its feedback (and feedback for its
    /// prediction), in event time.
    pub ttl_ms: i64,
    /// Predictions waiting for feedback; the oldest are evicted (counted)
    /// beyond it.
    pub max_pending: usize,
    /// Feedback lines waiting for their prediction.
    pub max_early: usize,
    /// Actions with their own label; at most 14.
    pub max_actions: usize,
    /// The arm the others are compared with. When no arm has this name, the
    /// first arm by name is the control.
    pub control_arm: String,
    /// Two-sided significance level of the feedback-rate test.
    pub alpha: f64,
    /// Predictions each arm needs in the window before it is tested.
    pub min_predictions: u64,
    pub pane_ms: i64,
    pub panes: usize,
    pub max_models: usize,
    pub max_arms_per_model: usize,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            enabled: true,
            join_from_start: false,
            ttl_ms: 3_600_000,
            max_pending: 100_000,
            max_early: 50_000,
            max_actions: 8,
            control_arm: "control".into(),
            alpha: 0.001,
            min_predictions: 500,
            pane_ms: 30_000,
            panes: 20,
            max_models: 1000,
            max_arms_per_model: 8,
        }
    }
}

impl ExperimentConfig {
    /// The most one (model, arm)'s counts take on the heap: its panes, each
    /// with a count per action (`max_actions`, at most 14, plus `other`).
    pub fn arm_bytes(&self) -> usize {
        let actions = self.max_actions.min(14) + 1;
        let pane = std::mem::size_of::<Pane>() + actions * 8;
        std::mem::size_of::<ArmStats>() + self.panes * pane + 64
    }

    /// The most the feedback join takes at its caps: `max_pending`
    /// predictions and `max_early` feedback lines, each a hash-map entry
    /// (allowing for the map's spare capacity, up to twice its length) and
    /// an eviction-order entry.
    pub fn join_bytes(&self) -> usize {
        let map = |entry: usize| 2 * (entry + 1);
        let order = 2 * std::mem::size_of::<(u64, u64)>();
        self.max_pending * (map(std::mem::size_of::<(u64, Pending)>()) + order)
            + self.max_early * (map(std::mem::size_of::<(u64, Early)>()) + order)
    }
}

/// What the join did, counted; exported per evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JoinStats {
    /// Feedback lines joined to a prediction already seen.
    pub joined: u64,
    /// Feedback lines that came first and were joined when the prediction did.
    pub joined_early: u64,
    /// The same action on the same request again (counted once).
    pub duplicate_feedback: u64,
    /// A request id seen on a second prediction (a redelivery): counted once.
    pub duplicate_predictions: u64,
    /// Predictions evicted from a full pending map before their TTL.
    pub pending_evicted: u64,
    /// Feedback evicted from a full early map before its prediction came.
    pub early_evicted: u64,
    /// Feedback whose prediction never came within the TTL.
    pub early_expired: u64,
    /// Feedback for a prediction whose pane already left the window.
    pub late_feedback: u64,
    /// Predictions of models or arms beyond the caps.
    pub refused: u64,
    /// Predictions counted but not joined, before the stream's first
    /// feedback line (`experiments.join = "auto"`).
    pub before_feedback: u64,
}

const ANY: u16 = 1 << 15;

#[derive(Debug, Clone, Default)]
struct Pane {
    id: i64,
    predictions: u64,
    any: u64,
    /// Per action index (`max_actions` is `other`).
    actions: Vec<u64>,
}

#[derive(Debug)]
struct ArmStats {
    model: Arc<str>,
    arm: Arc<str>,
    panes: Vec<Pane>,
    last_ms: i64,
}

/// Predictions of one request waiting for feedback: usually one, more when
/// several models (a canary, a shadow, a pipeline) score the same request.
///
/// 40 bytes for the common case (one prediction, no allocation): the join
/// holds `max_pending` of these, the biggest map of the daemon.
#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    first: Pred,
    more: Option<Box<[Pred]>>,
}

impl Pending {
    fn len(&self) -> usize {
        1 + self.more.as_ref().map_or(0, |m| m.len())
    }
    fn t_ms(&self) -> i64 {
        self.first.t_ms
    }
    fn iter(&self) -> impl Iterator<Item = &Pred> {
        std::iter::once(&self.first).chain(self.more.iter().flat_map(|m| m.iter()))
    }
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Pred> {
        std::iter::once(&mut self.first).chain(self.more.iter_mut().flat_map(|m| m.iter_mut()))
    }
    fn push(&mut self, p: Pred) {
        // Rare (a second model on the same request): rebuild the slice.
        let mut v = self.more.take().map(Vec::from).unwrap_or_default();
        v.push(p);
        self.more = Some(v.into_boxed_slice());
    }
}

/// Predictions kept per request id; more are refused (and counted).
const MAX_PREDICTIONS_PER_REQUEST: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Pred {
    arm: u32,
    t_ms: i64,
    /// Actions already counted for this prediction (bit 15: any).
    seen: u16,
}

/// Feedback waiting for its prediction.
#[derive(Debug, Clone, Copy)]
struct Early {
    t_ms: i64,
    seq: u64,
    actions: u16,
    /// A prediction took it (it stays for other models' predictions).
    joined: bool,
}

/// A variant against the control, for one action.
#[derive(Debug, Clone, Serialize)]
pub struct ArmComparison {
    pub model: String,
    pub control: String,
    pub variant: String,
    /// `any` or an action.
    pub action: String,
    pub control_rate: Option<f64>,
    pub variant_rate: Option<f64>,
    pub p_value: Option<f64>,
    pub state: State,
}

/// One arm's window.
#[derive(Debug, Clone, Serialize)]
pub struct ArmFeedback {
    pub model: String,
    pub arm: String,
    pub predictions: u64,
    /// (action, predictions with that feedback); `any` first.
    pub feedback: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExperimentReport {
    pub arms: Vec<ArmFeedback>,
    pub comparisons: Vec<ArmComparison>,
}

/// One arm's window sums: (arm, predictions, any feedback, per action).
type ArmWindow = (Arc<str>, u64, u64, Vec<u64>);

/// The join and the per-arm counts.
#[derive(Debug)]
pub struct Experiments {
    cfg: ExperimentConfig,
    arm_ids: FxHashMap<(Box<str>, Box<str>), u32>,
    arms: HashMap<u32, ArmStats>,
    /// Arms per model, for the caps.
    arms_per_model: HashMap<Arc<str>, usize>,
    next_arm: u32,
    actions: Vec<Arc<str>>,
    pending: FxHashMap<u64, Pending>,
    pending_order: VecDeque<(u64, u64)>,
    early: FxHashMap<u64, Early>,
    early_order: VecDeque<(u64, u64)>,
    seq: u64,
    /// A feedback line has been seen: predictions from now on are joined.
    feedback_seen: bool,
    /// Latest event time seen; drives expiry.
    watermark: i64,
    last_expire: i64,
    /// (model, variant, action index or ANY) -> condition.
    conditions: HashMap<(Arc<str>, Arc<str>, u16), Condition>,
    pub stats: JoinStats,
}

impl Experiments {
    pub fn new(cfg: ExperimentConfig) -> Experiments {
        Experiments {
            cfg,
            arm_ids: FxHashMap::default(),
            arms: HashMap::new(),
            arms_per_model: HashMap::new(),
            next_arm: 0,
            actions: Vec::new(),
            pending: FxHashMap::default(),
            pending_order: VecDeque::new(),
            early: FxHashMap::default(),
            early_order: VecDeque::new(),
            seq: 0,
            feedback_seen: false,
            watermark: i64::MIN,
            last_expire: i64::MIN,
            conditions: HashMap::new(),
            stats: JoinStats::default(),
        }
    }

    /// Predictions and feedback lines waiting in the join (for metrics).
    pub fn waiting(&self) -> (usize, usize) {
        (self.pending.len(), self.early.len())
    }

    fn arm_id(
        &mut self,
        model: &str,
        arm: &str,
        t_ms: i64,
        admit: &mut dyn FnMut() -> bool,
    ) -> Option<u32> {
        if let Some(id) = self.arm_ids.get(&(model.into(), arm.into())) {
            return Some(*id);
        }
        let arms_of_model = self.arms_per_model.get(model).copied().unwrap_or(0);
        if (arms_of_model == 0 && self.arms_per_model.len() >= self.cfg.max_models)
            || arms_of_model >= self.cfg.max_arms_per_model
            || !admit()
        {
            return None;
        }
        let model: Arc<str> = model.into();
        *self.arms_per_model.entry(model.clone()).or_default() += 1;
        let id = self.next_arm;
        self.next_arm += 1;
        self.arm_ids.insert((model.as_ref().into(), arm.into()), id);
        self.arms.insert(
            id,
            ArmStats {
                model,
                arm: arm.into(),
                panes: vec![
                    Pane {
                        id: i64::MIN,
                        ..Pane::default()
                    };
                    self.cfg.panes
                ],
                last_ms: t_ms,
            },
        );
        Some(id)
    }

    fn action_index(&mut self, action: &str) -> usize {
        match self.actions.iter().position(|a| **a == *action) {
            Some(i) => i,
            None if self.actions.len() < self.cfg.max_actions.min(14) => {
                self.actions.push(action.into());
                self.actions.len() - 1
            }
            None => self.cfg.max_actions.min(14),
        }
    }

    /// Counts `bits` (actions, and ANY) for the prediction of `arm` made at
    /// `t_ms`, unless they were counted already (`seen`).
    fn credit(&mut self, arm: u32, t_ms: i64, bits: u16, seen: &mut u16) {
        if bits & !*seen == 0 {
            self.stats.duplicate_feedback += 1;
            return;
        }
        self.credit_quiet(arm, t_ms, bits, seen);
    }

    /// [`Experiments::credit`] without counting a duplicate.
    fn credit_quiet(&mut self, arm: u32, t_ms: i64, bits: u16, seen: &mut u16) {
        let new = bits & !*seen;
        if new == 0 {
            return;
        }
        *seen |= new;
        let Some(a) = self.arms.get_mut(&arm) else {
            return;
        };
        let id = t_ms.div_euclid(self.cfg.pane_ms);
        let n = a.panes.len() as i64;
        let p = &mut a.panes[id.rem_euclid(n) as usize];
        if p.id != id {
            self.stats.late_feedback += 1;
            return;
        }
        if new & ANY != 0 {
            p.any += 1;
        }
        let slots = self.cfg.max_actions.min(14) + 1;
        if p.actions.len() < slots {
            p.actions.resize(slots, 0);
        }
        for (i, c) in p.actions.iter_mut().enumerate() {
            if new & (1 << i) != 0 {
                *c += 1;
            }
        }
    }

    /// A prediction of `model` (and `arm`) with a request id, at event time
    /// `t_ms`. A (model, arm) without counts yet gets them only if `admit`
    /// agrees (the engine's memory budget); else it is refused (counted).
    pub fn prediction(
        &mut self,
        model: &str,
        arm: Option<&str>,
        request: u64,
        t_ms: i64,
        admit: &mut dyn FnMut() -> bool,
    ) {
        if !self.cfg.enabled {
            return;
        }
        self.watermark = self.watermark.max(t_ms);
        self.expire();
        let Some(id) = self.arm_id(model, arm.unwrap_or(""), t_ms, admit) else {
            self.stats.refused += 1;
            return;
        };
        if let Some(w) = self.pending.get(&request) {
            if w.iter().any(|p| p.arm == id) {
                // The same request in the same arm again: a redelivery.
                self.stats.duplicate_predictions += 1;
                return;
            }
            if w.len() >= MAX_PREDICTIONS_PER_REQUEST {
                self.stats.refused += 1;
                return;
            }
        }
        {
            let a = self.arms.get_mut(&id).expect("exists");
            a.last_ms = a.last_ms.max(t_ms);
            let pid = t_ms.div_euclid(self.cfg.pane_ms);
            let n = a.panes.len() as i64;
            let p = &mut a.panes[pid.rem_euclid(n) as usize];
            if p.id > pid {
                // Older than the window: not counted, not joined.
                return;
            }
            if p.id != pid {
                *p = Pane {
                    id: pid,
                    ..Pane::default()
                };
            }
            p.predictions += 1;
        }
        if !self.feedback_seen && !self.cfg.join_from_start {
            // Nothing to join with yet: counted for the rates only.
            self.stats.before_feedback += 1;
            return;
        }
        let mut seen = 0;
        // Feedback that came first stays until its TTL: another model may
        // yet log a prediction for the same request.
        if let Some(actions) = self.early.get_mut(&request).map(|e| {
            e.joined = true;
            e.actions
        }) {
            self.stats.joined_early += 1;
            self.credit(id, t_ms, actions, &mut seen);
        }
        let pred = Pred {
            arm: id,
            t_ms,
            seen,
        };
        if let Some(w) = self.pending.get_mut(&request) {
            w.push(pred);
            return;
        }
        self.stats.pending_evicted += evict_oldest(
            &mut self.pending,
            &mut self.pending_order,
            self.cfg.max_pending,
            |p| p.seq,
        );
        self.seq += 1;
        self.pending.insert(
            request,
            Pending {
                seq: self.seq,
                first: pred,
                more: None,
            },
        );
        self.pending_order.push_back((request, self.seq));
    }

    /// A feedback line for `request` with `action`, at event time `t_ms`.
    pub fn feedback(&mut self, request: u64, action: &str, t_ms: i64) {
        if !self.cfg.enabled {
            return;
        }
        self.feedback_seen = true;
        self.watermark = self.watermark.max(t_ms);
        self.expire();
        let bits = ANY | (1 << self.action_index(action));
        if let Some(mut w) = self.pending.remove(&request) {
            self.stats.joined += 1;
            let mut dup = true;
            for p in w.iter_mut() {
                dup &= bits & !p.seen == 0;
                self.credit_quiet(p.arm, p.t_ms, bits, &mut p.seen);
            }
            if dup {
                self.stats.duplicate_feedback += 1;
            }
            self.pending.insert(request, w);
            return;
        }
        if let Some(e) = self.early.get_mut(&request) {
            if e.actions & bits == bits {
                self.stats.duplicate_feedback += 1;
            }
            e.actions |= bits;
            return;
        }
        self.stats.early_evicted += evict_oldest(
            &mut self.early,
            &mut self.early_order,
            self.cfg.max_early,
            |e| e.seq,
        );
        self.seq += 1;
        self.early.insert(
            request,
            Early {
                t_ms,
                seq: self.seq,
                actions: bits,
                joined: false,
            },
        );
        self.early_order.push_back((request, self.seq));
    }

    /// Drops what waited longer than the TTL behind the watermark; at most
    /// once per second of event time (it is on the per-event path).
    fn expire(&mut self) {
        if self.watermark < self.last_expire.saturating_add(1000) {
            return;
        }
        self.last_expire = self.watermark;
        let cutoff = self.watermark.saturating_sub(self.cfg.ttl_ms);
        while let Some(&(h, seq)) = self.pending_order.front() {
            match self.pending.get(&h) {
                Some(p) if p.seq == seq && p.t_ms() >= cutoff => break,
                Some(p) if p.seq == seq => {
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
                        self.stats.early_expired += 1;
                    }
                    self.early.remove(&h);
                }
                _ => {}
            }
            self.early_order.pop_front();
        }
        // Entries removed early (evicted, joined) leave their place in the
        // order queues; compact them so the queues stay near the maps' size.
        if self.pending_order.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.pending_order
                .retain(|(h, seq)| pending.get(h).is_some_and(|p| p.seq == *seq));
        }
        if self.early_order.len() > 2 * self.early.len() + 1024 {
            let early = &self.early;
            self.early_order
                .retain(|(h, seq)| early.get(h).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Forgets arms idle for `idle_ms` (their waiting predictions then
    /// credit nothing). A firing comparison of a forgotten arm resolves (the
    /// returned transitions): nothing would ever resolve it otherwise.
    pub fn expire_idle(&mut self, now_ms: i64, idle_ms: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        let gone: Vec<u32> = self
            .arms
            .iter()
            .filter(|(_, a)| now_ms - a.last_ms > idle_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let Some(a) = self.arms.remove(&id) else {
                continue;
            };
            self.arm_ids
                .remove(&(a.model.as_ref().into(), a.arm.as_ref().into()));
            if let Some(n) = self.arms_per_model.get_mut(&a.model) {
                *n -= 1;
                if *n == 0 {
                    self.arms_per_model.remove(&a.model);
                }
            }
            let actions = &self.actions;
            let control = self.cfg.control_arm.as_str();
            self.conditions.retain(|(m, v, key), c| {
                // A model's comparisons all end with its control, or with the variant.
                let ends = *m == a.model && (*v == a.arm || *a.arm == *control);
                if ends && c.state == State::Firing {
                    let action = if *key == ANY {
                        "any".to_owned()
                    } else {
                        actions
                            .get(*key as usize)
                            .map_or("other".to_owned(), |x| x.to_string())
                    };
                    out.push(Transition {
                        alertname: "ArmFeedbackDifference",
                        model: m.to_string(),
                        arm: Some(v.to_string()),
                        feature: action,
                        distribution: None,
                        metric: "feedback_rate_p_value",
                        higher_is_worse: false,
                        from: State::Firing,
                        to: State::Resolved,
                        severity: None,
                        value: 1.0,
                        threshold: 0.0,
                        samples: 0,
                        at_ms: now_ms,
                        baseline_version: String::new(),
                        window_start_ms: None,
                        window_end_ms: None,
                        labels: BTreeMap::new(),
                        details: BTreeMap::from([(
                            "summary",
                            format!("{m}: arm {} went quiet and was forgotten", a.arm),
                        )]),
                    });
                }
                !ends
            });
        }
        out
    }

    /// Whether `model` has any arm tracked.
    /// (model, arm) pairs with counts.
    pub fn arm_count(&self) -> usize {
        self.arms.len()
    }

    pub fn has_model(&self, model: &str) -> bool {
        self.arms.values().any(|a| *a.model == *model)
    }

    /// Window counts per arm, comparisons, and the transitions of
    /// `ArmFeedbackDifference`.
    pub fn evaluate(
        &mut self,
        now_ms: i64,
        detect: &DetectConfig,
    ) -> (ExperimentReport, Vec<Transition>) {
        let mut report = ExperimentReport::default();
        let mut out = Vec::new();
        if !self.cfg.enabled {
            return (report, out);
        }
        self.watermark = self.watermark.max(now_ms);
        self.expire();
        let head = now_ms.div_euclid(self.cfg.pane_ms);
        let lo = head - self.cfg.panes as i64 + 1;
        let slots = self.cfg.max_actions.min(14) + 1;
        let mut labels: Vec<String> = self.actions.iter().map(|a| a.to_string()).collect();
        labels.push("other".into());
        // (model) -> [(arm, predictions, any, per action)]
        let mut by_model: BTreeMap<Arc<str>, Vec<ArmWindow>> = BTreeMap::new();
        for a in self.arms.values() {
            let mut n = 0;
            let mut any = 0;
            let mut acts = vec![0u64; slots];
            for p in a.panes.iter().filter(|p| p.id >= lo && p.id <= head) {
                n += p.predictions;
                any += p.any;
                for (i, c) in p.actions.iter().enumerate() {
                    acts[i] += c;
                }
            }
            by_model
                .entry(a.model.clone())
                .or_default()
                .push((a.arm.clone(), n, any, acts));
        }
        for (model, mut arms) in by_model {
            arms.sort_by(|a, b| a.0.cmp(&b.0));
            for (arm, n, any, acts) in arms.iter().filter(|a| a.1 > 0) {
                let mut feedback = vec![("any".to_owned(), *any)];
                for (i, c) in acts.iter().enumerate() {
                    if i < self.actions.len() || (i == slots - 1 && *c > 0) {
                        feedback
                            .push((labels.get(i).cloned().unwrap_or_else(|| "other".into()), *c));
                    }
                }
                report.arms.push(ArmFeedback {
                    model: model.to_string(),
                    arm: arm.to_string(),
                    predictions: *n,
                    feedback,
                });
            }
            // Predictions without an arm are reported, not compared.
            arms.retain(|a| !a.0.is_empty());
            if arms.len() < 2 {
                continue;
            }
            let control = arms
                .iter()
                .position(|a| *a.0 == *self.cfg.control_arm)
                .unwrap_or(0);
            let (c_arm, c_n, c_any, c_acts) = arms[control].clone();
            for (i, (v_arm, v_n, v_any, v_acts)) in arms.iter().enumerate() {
                if i == control {
                    continue;
                }
                let mut tests: Vec<(u16, String, u64, u64)> =
                    vec![(ANY, "any".into(), c_any, *v_any)];
                for k in 0..self.actions.len() {
                    tests.push((k as u16, labels[k].clone(), c_acts[k], v_acts[k]));
                }
                for (key, action, cx, vx) in tests {
                    let enough =
                        c_n >= self.cfg.min_predictions && *v_n >= self.cfg.min_predictions;
                    let p = two_proportion_test(cx, c_n, vx, *v_n, Tail::TwoSided).map(|(_, p)| p);
                    // Any difference counts (two-sided): the effect is 1.
                    let breach: Option<ConditionLevel> = if c_n == 0 && *v_n == 0 {
                        // Both arms quiet: nothing differs any more.
                        Some(ConditionLevel::Clear)
                    } else {
                        enough.then(|| p_level(p, self.cfg.alpha, 1.0, 1.0, 1.0))
                    };
                    let cond = self
                        .conditions
                        .entry((model.clone(), v_arm.clone(), key))
                        .or_default();
                    let c_rate = (c_n > 0).then(|| cx as f64 / c_n as f64);
                    let v_rate = (*v_n > 0).then(|| vx as f64 / *v_n as f64);
                    if let Some((from, to)) = cond.step(breach, detect) {
                        let mut t = Transition {
                            alertname: "ArmFeedbackDifference",
                            model: model.to_string(),
                            arm: Some(v_arm.to_string()),
                            feature: action.clone(),
                            distribution: None,
                            metric: "feedback_rate_p_value",
                            higher_is_worse: false,
                            from,
                            to,
                            severity: (to == State::Firing).then_some(Severity::Warning),
                            value: p.unwrap_or(1.0),
                            threshold: self.cfg.alpha,
                            samples: *v_n,
                            at_ms: now_ms,
                            baseline_version: String::new(),
                            window_start_ms: Some(lo * self.cfg.pane_ms),
                            window_end_ms: Some((head + 1) * self.cfg.pane_ms),
                            labels: BTreeMap::new(),
                            details: BTreeMap::new(),
                        };
                        t.labels.insert("control_arm", c_arm.to_string());
                        t.details.insert(
                            "summary",
                            format!(
                                "{model}: arm {v_arm} gets {action} feedback on {} of predictions ({vx} of {v_n}), arm {c_arm} on {} ({cx} of {c_n}); p = {:.2e}",
                                v_rate.map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                                c_rate.map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                                p.unwrap_or(1.0)
                            ),
                        );
                        out.push(t);
                    }
                    if c_n == 0 && *v_n == 0 {
                        continue;
                    }
                    report.comparisons.push(ArmComparison {
                        model: model.to_string(),
                        control: c_arm.to_string(),
                        variant: v_arm.to_string(),
                        action,
                        control_rate: c_rate,
                        variant_rate: v_rate,
                        p_value: p,
                        state: cond.state,
                    });
                }
            }
        }
        (report, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decode::feature_hash;

    const T0: i64 = 1_800_000_000_000;

    fn detect() -> DetectConfig {
        DetectConfig {
            for_evaluations: 1,
            ..DetectConfig::default()
        }
    }

    fn req(i: u64) -> u64 {
        feature_hash(&format!("req_{i}"))
    }

    /// The join on from the first prediction (`join = "always"`).
    fn from_start() -> ExperimentConfig {
        ExperimentConfig {
            join_from_start: true,
            ..ExperimentConfig::default()
        }
    }

    /// By default predictions are joined from the stream's first feedback
    /// line: before it they are counted (for the rates) and cost no join
    /// entry; feedback for them waits as early feedback and expires. After
    /// it, the join works as always.
    #[test]
    fn the_join_starts_with_the_first_feedback_line() {
        let mut x = Experiments::new(ExperimentConfig::default());
        for i in 0..1000u64 {
            x.prediction("m", Some("control"), req(i), T0 + i as i64, &mut || true);
        }
        assert_eq!(x.waiting(), (0, 0), "no join entry before feedback");
        assert_eq!(x.stats.before_feedback, 1000);
        // Feedback for one of them: the join has nothing to find.
        x.feedback(req(3), "clicked_on_item", T0 + 1000);
        assert_eq!((x.stats.joined, x.waiting().1), (0, 1));
        // From now on predictions are joined, in either order.
        x.prediction("m", Some("control"), req(2000), T0 + 1001, &mut || true);
        x.feedback(req(2000), "clicked_on_item", T0 + 1002);
        x.feedback(req(2001), "clicked_on_item", T0 + 1003);
        x.prediction("m", Some("control"), req(2001), T0 + 1004, &mut || true);
        assert_eq!((x.stats.joined, x.stats.joined_early), (1, 1));
        assert_eq!(x.stats.before_feedback, 1000);
        let (r, _) = x.evaluate(T0 + 2000, &detect());
        assert_eq!(r.arms[0].predictions, 1002);
        assert_eq!(r.arms[0].feedback[0], ("any".into(), 2));
        // A stream that never carries feedback holds nothing in the join.
        let mut quiet = Experiments::new(ExperimentConfig::default());
        for i in 0..100_000u64 {
            quiet.prediction("m", None, req(i), T0 + i as i64, &mut || true);
        }
        assert_eq!(quiet.waiting(), (0, 0));
    }

    /// Control clicks 30%, variant 20%: the comparison is significant and
    /// ArmFeedbackDifference fires for the variant; rates are exact.
    #[test]
    fn a_lower_click_through_arm_is_significantly_different() {
        let mut x = Experiments::new(from_start());
        for i in 0..4000u64 {
            let t = T0 + i as i64 * 100;
            let arm = if i % 2 == 0 { "control" } else { "variant" };
            x.prediction("recsys-v3", Some(arm), req(i), t, &mut || true);
            let clicks = if arm == "control" {
                i % 20 < 6
            } else {
                i % 20 < 4
            };
            let action = if clicks {
                "clicked_on_item"
            } else {
                "dismissed_recommendation"
            };
            // Half the feedback arrives before its prediction's line.
            x.feedback(req(i), action, t + 50);
        }
        let (r, ts) = x.evaluate(T0 + 400_000, &detect());
        let arm = |a: &str| r.arms.iter().find(|x| x.arm == a).unwrap();
        assert_eq!(arm("control").predictions, 2000);
        assert_eq!(arm("control").feedback[0], ("any".into(), 2000));
        let clicks = |a: &str| {
            arm(a)
                .feedback
                .iter()
                .find(|(k, _)| k == "clicked_on_item")
                .unwrap()
                .1
        };
        assert_eq!(clicks("control"), 600);
        assert_eq!(clicks("variant"), 400);
        let c = r
            .comparisons
            .iter()
            .find(|c| c.action == "clicked_on_item")
            .unwrap();
        assert_eq!(c.control, "control");
        assert_eq!(c.variant, "variant");
        assert!(c.p_value.unwrap() < 1e-6, "{c:?}");
        let fired: Vec<_> = ts.iter().filter(|t| t.to == State::Firing).collect();
        assert!(
            fired.iter().any(|t| t.alertname == "ArmFeedbackDifference"
                && t.feature == "clicked_on_item"
                && t.arm.as_deref() == Some("variant")),
            "{ts:?}"
        );
        // Every prediction got some feedback in both arms: no difference there.
        assert!(!fired.iter().any(|t| t.feature == "any"));
    }

    #[test]
    fn feedback_before_its_prediction_is_joined_and_duplicates_count_once() {
        let mut x = Experiments::new(ExperimentConfig::default());
        x.feedback(req(1), "clicked_on_item", T0);
        x.feedback(req(1), "clicked_on_item", T0 + 1);
        x.prediction("m", Some("control"), req(1), T0 + 2, &mut || true);
        x.feedback(req(1), "clicked_on_item", T0 + 3);
        x.prediction("m", Some("control"), req(1), T0 + 4, &mut || true);
        assert_eq!(x.stats.joined_early, 1);
        assert_eq!(x.stats.duplicate_predictions, 1);
        assert_eq!(x.stats.duplicate_feedback, 2);
        let (r, _) = x.evaluate(T0 + 10, &detect());
        assert_eq!(r.arms[0].predictions, 1);
        assert_eq!(r.arms[0].feedback[0], ("any".into(), 1));
    }

    #[test]
    fn the_join_is_bounded_and_expires() {
        let cfg = ExperimentConfig {
            max_pending: 100,
            max_early: 10,
            ..from_start()
        };
        let mut x = Experiments::new(cfg);
        for i in 0..1000 {
            x.prediction("m", None, req(i), T0, &mut || true);
        }
        assert_eq!(x.waiting().0, 100);
        assert_eq!(x.stats.pending_evicted, 900);
        for i in 5000..5100 {
            x.feedback(req(i), "a", T0);
        }
        assert_eq!(x.waiting().1, 10);
        assert_eq!(x.stats.early_evicted, 90);
        // Two hours later everything waiting has expired.
        x.prediction("m", None, req(99_999), T0 + 7_200_000, &mut || true);
        assert_eq!(x.waiting(), (1, 0));
        assert_eq!(x.stats.early_expired, 10);
        // A feedback for an expired prediction waits as early feedback.
        x.feedback(req(999), "a", T0 + 7_200_000);
        assert_eq!(x.stats.joined, 0);
    }

    #[test]
    fn actions_and_arms_are_capped() {
        let cfg = ExperimentConfig {
            max_actions: 2,
            max_arms_per_model: 2,
            ..ExperimentConfig::default()
        };
        let mut x = Experiments::new(cfg);
        for i in 0..10 {
            x.prediction("m", Some(&format!("arm{i}")), req(i), T0, &mut || true);
            x.feedback(req(i), &format!("action{i}"), T0);
        }
        assert_eq!(x.stats.refused, 8);
        let (r, _) = x.evaluate(T0, &detect());
        assert_eq!(r.arms.len(), 2);
        let labels: Vec<&str> = r.arms[0].feedback.iter().map(|(k, _)| k.as_str()).collect();
        assert!(labels.len() <= 4, "{labels:?}");
    }
}
