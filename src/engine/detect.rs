//! Verdicts: from scores to states, with the debounce that keeps pages rare.
//!
//! This module owns the rules (per metric: warning and critical thresholds)
//! and the state machine each (window, distribution, rule) runs:
//!
//! ```text
//!            score >= threshold              `for` evaluations in a row
//!   ok  ───────────────────────────▶ pending ─────────────────────────▶ firing
//!    ▲ ◀─── score back under ───────┘                                   │
//!    │                                                                   │ score under the clear level
//!    └──────────────── next evaluation ◀──────── resolved ◀─────────────┘ (`resolve_after` evaluations)
//! ```
//!
//! The clear level is the warning threshold times `hysteresis` (0.8 by
//! default; divided, for p-values, where lower is worse), so a score that
//! hovers at the threshold does not flap. No verdict moves while the window
//! holds fewer than `min_samples` events: small windows are noise.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::engine::compare::Metric;

/// Alert severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verdict's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Ok,
    Pending,
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }

    /// The value of `driftd_drift_state`: 0 ok, 1 pending, 2 firing
    /// (resolved reads as ok: the alert is over).
    pub fn gauge(self) -> i64 {
        match self {
            State::Ok | State::Resolved => 0,
            State::Pending => 1,
            State::Firing => 2,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which distributions a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    All,
    Features,
    Prediction,
    Confidence,
}

/// One metric's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rule {
    pub metric: Metric,
    pub warning: f64,
    pub critical: f64,
    pub target: Target,
}

impl Rule {
    fn worse(&self, value: f64, threshold: f64) -> bool {
        if self.metric.higher_is_worse() {
            value >= threshold
        } else {
            value <= threshold
        }
    }

    /// The severity a value deserves, if any.
    pub fn classify(&self, value: f64) -> Option<Severity> {
        if self.worse(value, self.critical) {
            Some(Severity::Critical)
        } else if self.worse(value, self.warning) {
            Some(Severity::Warning)
        } else {
            None
        }
    }

    pub fn threshold(&self, s: Severity) -> f64 {
        match s {
            Severity::Warning => self.warning,
            Severity::Critical => self.critical,
        }
    }

    /// The level a firing verdict must get back past to resolve.
    pub fn clear_level(&self, hysteresis: f64) -> f64 {
        if self.metric.higher_is_worse() {
            self.warning * hysteresis
        } else {
            self.warning / hysteresis
        }
    }

    fn cleared(&self, value: f64, hysteresis: f64) -> bool {
        let clear = self.clear_level(hysteresis);
        if self.metric.higher_is_worse() {
            value < clear
        } else {
            value > clear
        }
    }

    /// Problems with the thresholds, for config validation.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.warning.is_finite() || !self.critical.is_finite() {
            p.push(format!(
                "thresholds of {} must be finite numbers (warning {}, critical {})",
                self.metric, self.warning, self.critical
            ));
        } else if self.metric.higher_is_worse() && self.critical < self.warning {
            p.push(format!(
                "critical ({}) must be >= warning ({}) for {}, where higher is worse",
                self.critical, self.warning, self.metric
            ));
        } else if !self.metric.higher_is_worse() && self.critical > self.warning {
            p.push(format!(
                "critical ({}) must be <= warning ({}) for {}, a p-value where lower is worse",
                self.critical, self.warning, self.metric
            ));
        }
        p
    }

    pub fn applies(&self, role: crate::engine::baseline::SlotRole) -> bool {
        use crate::engine::baseline::SlotRole;
        matches!(
            (self.target, role),
            (Target::All, _)
                | (Target::Features, SlotRole::Feature)
                | (Target::Prediction, SlotRole::Prediction)
                | (Target::Confidence, SlotRole::Confidence)
        )
    }
}

/// The default rules, and why:
/// - `psi` 0.1 / 0.25: the credit-scoring convention operators already know
///   (under 0.1 no real change, 0.1-0.25 moderate, over 0.25 significant).
/// - `unseen_share` 0.05 / 0.2: 5% of traffic in values the baseline never
///   saw (new categories, out-of-range numbers) is worth a look; 20% means the
///   model is extrapolating on a fifth of its inputs.
pub fn default_rules() -> Vec<Rule> {
    vec![
        Rule {
            metric: Metric::Psi,
            warning: 0.1,
            critical: 0.25,
            target: Target::All,
        },
        Rule {
            metric: Metric::UnseenShare,
            warning: 0.05,
            critical: 0.2,
            target: Target::All,
        },
    ]
}

/// Debounce settings shared by all rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectConfig {
    pub rules: Vec<Rule>,
    /// Events the window must hold before any verdict moves.
    pub min_samples: u64,
    /// Consecutive breaching evaluations before pending turns firing.
    pub for_evaluations: u32,
    /// Consecutive clear evaluations before firing resolves.
    pub resolve_after: u32,
    /// Clear level as a fraction of the warning threshold (0 < h <= 1).
    pub hysteresis: f64,
    /// Where the warning thresholds come from: the rules as written, or the
    /// no-drift distribution of each metric at the window's sample size.
    pub thresholds: Thresholds,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            rules: default_rules(),
            min_samples: 500,
            for_evaluations: 2,
            resolve_after: 2,
            hysteresis: 0.8,
            thresholds: Thresholds::Static,
        }
    }
}

/// How a rule's thresholds are chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Thresholds {
    /// The rules' warning and critical values, whatever the sample size.
    Static,
    /// Thresholds from the baseline's own no-drift distribution at the
    /// window's sample size (see [`AutoThresholds`]).
    Auto(AutoThresholds),
}

/// Settings of automatic thresholds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoThresholds {
    /// False-alarm probability per model and evaluated window, before the
    /// correction for the number of tests.
    pub alpha: f64,
    /// Smallest effect worth a page, per metric: the warning threshold is
    /// never below it, so tiny real shifts in huge windows stay quiet.
    pub min_effect: BTreeMap<Metric, f64>,
}

impl Default for AutoThresholds {
    fn default() -> Self {
        AutoThresholds {
            alpha: 0.001,
            min_effect: default_min_effect(),
        }
    }
}

/// The smallest effects that page by default, and why:
/// - `psi` 0.05: about a quarter of a standard deviation's mean shift on ten
///   even bins; half the "moderate change" level of the static rule.
/// - `unseen_share` 0.02: one event in fifty from values never seen.
/// - the rest scaled to the same shift (KL and JS are about PSI / 2 and / 8
///   for small shifts, Hellinger is close to sqrt(PSI / 8)).
pub fn default_min_effect() -> BTreeMap<Metric, f64> {
    BTreeMap::from([
        (Metric::Psi, 0.05),
        (Metric::Kl, 0.025),
        (Metric::JsDivergence, 0.006),
        (Metric::JsDistance, 0.08),
        (Metric::Hellinger, 0.08),
        (Metric::Wasserstein, 0.25),
        (Metric::Ks, 0.1),
        (Metric::UnseenShare, 0.02),
    ])
}

/// One rule's state on one distribution of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub state: State,
    pub severity: Option<Severity>,
    /// Consecutive breaching (pending) or clear (firing) evaluations.
    pub streak: u32,
    /// When the current state began (ms since the epoch).
    pub since_ms: i64,
    /// Last evaluation had too few samples to judge.
    pub insufficient_data: bool,
    /// The (warning, critical) thresholds of the last evaluation, when they
    /// were not the rule's own (automatic thresholds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<(f64, f64)>,
}

/// A state change, as the alert sinks and the replay report see it. Drift
/// verdicts and the health conditions (errors, deploys, latency, arms) both
/// come out as transitions, so every sink handles one shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// `FeatureDrift`, `PredictionDrift`, `ErrorSpikeAfterDeploy` ...
    pub alertname: &'static str,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    /// What inside the model: a feature, `prediction`, a latency stage, an
    /// action; empty when the alert is about the model as a whole.
    pub feature: String,
    /// For drift: which distribution `feature` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    pub metric: &'static str,
    /// Whether `value` breaches by being above `threshold` (else below).
    #[serde(skip)]
    pub higher_is_worse: bool,
    pub from: State,
    pub to: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    pub value: f64,
    pub threshold: f64,
    pub samples: u64,
    pub at_ms: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub baseline_version: String,
    /// `[start, end)` of the window's event time (time windows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end_ms: Option<i64>,
    /// Extra alert labels; bounded values only (model versions, stages).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<&'static str, String>,
    /// Extra annotations (p-values, the rates compared ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<&'static str, String>,
}

/// What kind of distribution a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Feature,
    Prediction,
    Confidence,
    /// A latency stage of the model's timing lines.
    Latency,
}

impl Distribution {
    pub fn of(role: crate::engine::baseline::SlotRole) -> Distribution {
        use crate::engine::baseline::SlotRole;
        match role {
            SlotRole::Feature => Distribution::Feature,
            SlotRole::Prediction => Distribution::Prediction,
            SlotRole::Confidence => Distribution::Confidence,
            SlotRole::Latency => Distribution::Latency,
        }
    }

    /// The alert a drift verdict on this distribution raises.
    pub fn alertname(self) -> &'static str {
        match self {
            Distribution::Feature => "FeatureDrift",
            Distribution::Prediction => "PredictionDrift",
            Distribution::Confidence => "ConfidenceDrift",
            Distribution::Latency => "LatencyDrift",
        }
    }
}

/// Where a condition's evidence stands at one evaluation. Between breach
/// and clear is a band that holds the state, the hysteresis that keeps a
/// p-value hovering at alpha (or a p99 at its limit) from flapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionLevel {
    Breach,
    Hold,
    Clear,
}

/// A condition (an error rate significantly up, a p99 over its limit)
/// debounced like a drift verdict: `for` breaching evaluations to fire,
/// `resolve_after` clear ones to resolve; [`ConditionLevel::Hold`] neither starts
/// nor ends anything, and `None` (too little data) holds the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Condition {
    pub state: State,
    streak: u32,
    /// Last evaluation had too little data to judge.
    pub insufficient_data: bool,
}

impl Condition {
    /// Steps the condition; returns `(from, to)` when it fired or resolved.
    pub fn step(
        &mut self,
        level: Option<ConditionLevel>,
        cfg: &DetectConfig,
    ) -> Option<(State, State)> {
        let Some(level) = level else {
            self.insufficient_data = true;
            return None;
        };
        self.insufficient_data = false;
        let from = self.state;
        match (self.state, level) {
            (State::Ok | State::Resolved, ConditionLevel::Breach) => {
                if cfg.for_evaluations <= 1 {
                    self.streak = 0;
                    self.state = State::Firing;
                    return Some((from, State::Firing));
                }
                self.streak = 1;
                self.state = State::Pending;
                None
            }
            (State::Pending, ConditionLevel::Breach) => {
                self.streak += 1;
                if self.streak >= cfg.for_evaluations {
                    self.streak = 0;
                    self.state = State::Firing;
                    return Some((from, State::Firing));
                }
                None
            }
            (State::Pending | State::Resolved, ConditionLevel::Hold | ConditionLevel::Clear) => {
                self.streak = 0;
                self.state = State::Ok;
                None
            }
            (State::Ok, _) => None,
            (State::Firing, ConditionLevel::Breach | ConditionLevel::Hold) => {
                self.streak = 0;
                None
            }
            (State::Firing, ConditionLevel::Clear) => {
                self.streak += 1;
                if self.streak >= cfg.resolve_after {
                    self.streak = 0;
                    self.state = State::Resolved;
                    return Some((from, State::Resolved));
                }
                None
            }
        }
    }

    pub fn firing(&self) -> bool {
        self.state == State::Firing
    }
}

/// The level of a p-value test with an effect condition: breach under
/// `alpha` with the effect, clear at ten times `alpha` or with the effect
/// gone below `hysteresis` of its minimum, hold in between.
pub fn p_level(
    p: Option<f64>,
    alpha: f64,
    effect: f64,
    min_effect: f64,
    hysteresis: f64,
) -> ConditionLevel {
    let p = p.unwrap_or(1.0);
    if p < alpha && effect >= min_effect {
        ConditionLevel::Breach
    } else if p >= 10.0 * alpha || effect < min_effect * hysteresis {
        ConditionLevel::Clear
    } else {
        ConditionLevel::Hold
    }
}

/// The level of a value against an upper limit: breach above it, clear
/// under `hysteresis` of it.
pub fn limit_level(value: f64, limit: f64, hysteresis: f64) -> ConditionLevel {
    if value > limit {
        ConditionLevel::Breach
    } else if value < limit * hysteresis {
        ConditionLevel::Clear
    } else {
        ConditionLevel::Hold
    }
}

/// The outcome of one step, before names are attached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub from: State,
    pub to: State,
    pub severity: Option<Severity>,
    pub threshold: f64,
}

impl Verdict {
    /// Advances the state machine by one evaluation. Returns the transition,
    /// if the state (or a firing verdict's severity) changed.
    pub fn step(
        &mut self,
        rule: &Rule,
        cfg: &DetectConfig,
        value: Option<f64>,
        samples: u64,
        now_ms: i64,
    ) -> Option<Step> {
        let value = match value {
            Some(v) if samples >= cfg.min_samples && v.is_finite() => v,
            // Not enough evidence either way: hold the state, move nothing.
            _ => {
                self.insufficient_data = true;
                return None;
            }
        };
        self.insufficient_data = false;
        let from = self.state;
        let sev = rule.classify(value);
        let go = |v: &mut Verdict, to: State, severity: Option<Severity>, threshold: f64| {
            v.state = to;
            v.severity = severity;
            v.since_ms = now_ms;
            Some(Step {
                from,
                to,
                severity,
                threshold,
            })
        };
        match self.state {
            State::Ok | State::Resolved => match sev {
                Some(s) => {
                    let to = if cfg.for_evaluations <= 1 {
                        // Firing counts clear evaluations from zero.
                        self.streak = 0;
                        State::Firing
                    } else {
                        self.streak = 1;
                        State::Pending
                    };
                    go(self, to, Some(s), rule.threshold(s))
                }
                None if self.state == State::Resolved => {
                    self.streak = 0;
                    // Quietly back to ok: the resolve was the event.
                    self.state = State::Ok;
                    self.severity = None;
                    self.since_ms = now_ms;
                    None
                }
                None => None,
            },
            State::Pending => match sev {
                Some(s) => {
                    self.streak += 1;
                    if self.streak >= cfg.for_evaluations {
                        self.streak = 0;
                        go(self, State::Firing, Some(s), rule.threshold(s))
                    } else {
                        self.severity = Some(s);
                        None
                    }
                }
                None => {
                    self.streak = 0;
                    go(self, State::Ok, None, rule.warning)
                }
            },
            State::Firing => {
                if rule.cleared(value, cfg.hysteresis) {
                    self.streak += 1;
                    if self.streak >= cfg.resolve_after {
                        self.streak = 0;
                        let prev = self.severity;
                        let t = go(
                            self,
                            State::Resolved,
                            prev,
                            rule.clear_level(cfg.hysteresis),
                        );
                        return t;
                    }
                    None
                } else {
                    self.streak = 0;
                    match sev {
                        Some(s) if Some(s) != self.severity => {
                            go(self, State::Firing, Some(s), rule.threshold(s))
                        }
                        _ => None,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    /// A condition fires after `for` breaches, holds in the band between
    /// breach and clear (no flapping at the threshold), and resolves after
    /// `resolve_after` clears.
    #[test]
    fn conditions_debounce_with_a_hold_band() {
        use ConditionLevel::*;
        let cfg = DetectConfig {
            for_evaluations: 2,
            resolve_after: 2,
            ..DetectConfig::default()
        };
        let mut c = Condition::default();
        let mut seen = Vec::new();
        for l in [
            Breach, Hold, Breach, Breach, Hold, Clear, Hold, Clear, Clear, Breach,
        ] {
            seen.push((c.step(Some(l), &cfg), c.state));
        }
        let states: Vec<State> = seen.iter().map(|s| s.1).collect();
        assert_eq!(
            states,
            [
                State::Pending,
                State::Ok,
                State::Pending,
                State::Firing,
                State::Firing,
                State::Firing,
                State::Firing,
                State::Firing,
                State::Resolved,
                State::Pending,
            ]
        );
        assert_eq!(seen[3].0, Some((State::Pending, State::Firing)));
        assert_eq!(seen[8].0, Some((State::Firing, State::Resolved)));
        // Too little data holds whatever the state.
        assert_eq!(c.step(None, &cfg), None);
        assert!(c.insufficient_data);
        assert_eq!(c.state, State::Pending);
        assert_eq!(p_level(Some(0.0001), 0.001, 3.0, 2.0, 0.8), Breach);
        assert_eq!(p_level(Some(0.0001), 0.001, 1.7, 2.0, 0.8), Hold);
        assert_eq!(p_level(Some(0.005), 0.001, 3.0, 2.0, 0.8), Hold);
        assert_eq!(p_level(Some(0.02), 0.001, 3.0, 2.0, 0.8), Clear);
        assert_eq!(p_level(None, 0.001, 3.0, 2.0, 0.8), Clear);
        assert_eq!(limit_level(120.0, 100.0, 0.8), Breach);
        assert_eq!(limit_level(90.0, 100.0, 0.8), Hold);
        assert_eq!(limit_level(70.0, 100.0, 0.8), Clear);
    }

    use super::*;

    fn psi() -> Rule {
        Rule {
            metric: Metric::Psi,
            warning: 0.1,
            critical: 0.25,
            target: Target::All,
        }
    }

    fn run(values: &[f64], cfg: &DetectConfig, rule: &Rule) -> Vec<(State, Option<Severity>)> {
        let mut v = Verdict::default();
        values
            .iter()
            .enumerate()
            .map(|(i, x)| {
                v.step(rule, cfg, Some(*x), 1000, i as i64);
                (v.state, v.severity)
            })
            .collect()
    }

    #[test]
    fn debounce_then_fire_then_resolve_with_hysteresis() {
        let cfg = DetectConfig::default();
        let states: Vec<State> = run(
            &[0.0, 0.15, 0.15, 0.15, 0.09, 0.09, 0.07, 0.07, 0.0],
            &cfg,
            &psi(),
        )
        .into_iter()
        .map(|s| s.0)
        .collect();
        use State::*;
        // 0.09 is under the warning but above the clear level (0.08): still firing.
        assert_eq!(
            states,
            [Ok, Pending, Firing, Firing, Firing, Firing, Firing, Resolved, Ok]
        );
    }

    #[test]
    fn a_single_spike_does_not_fire() {
        let cfg = DetectConfig::default();
        let states: Vec<State> = run(&[0.5, 0.0, 0.5, 0.0], &cfg, &psi())
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert!(!states.contains(&State::Firing), "{states:?}");
    }

    #[test]
    fn severity_escalates_while_firing() {
        let cfg = DetectConfig {
            for_evaluations: 1,
            ..DetectConfig::default()
        };
        let rule = psi();
        let mut v = Verdict::default();
        let t1 = v.step(&rule, &cfg, Some(0.12), 1000, 0).unwrap();
        assert_eq!(
            (t1.to, t1.severity),
            (State::Firing, Some(Severity::Warning))
        );
        let t2 = v.step(&rule, &cfg, Some(0.4), 1000, 1).unwrap();
        assert_eq!(
            (t2.from, t2.to, t2.severity),
            (State::Firing, State::Firing, Some(Severity::Critical))
        );
        assert_eq!(t2.threshold, 0.25);
        assert_eq!(v.step(&rule, &cfg, Some(0.4), 1000, 2), None);
    }

    #[test]
    fn too_few_samples_hold_the_state() {
        let cfg = DetectConfig {
            for_evaluations: 1,
            ..DetectConfig::default()
        };
        let mut v = Verdict::default();
        assert_eq!(v.step(&psi(), &cfg, Some(9.0), 10, 0), None);
        assert!(v.insufficient_data);
        assert_eq!(v.state, State::Ok);
        v.step(&psi(), &cfg, Some(9.0), 1000, 1).unwrap();
        assert_eq!(v.state, State::Firing);
        // A quiet spell with an emptying window does not resolve the alert.
        assert_eq!(v.step(&psi(), &cfg, Some(0.0), 3, 2), None);
        assert_eq!(v.state, State::Firing);
    }

    #[test]
    fn p_value_rules_fire_when_low() {
        let rule = Rule {
            metric: Metric::Chi2P,
            warning: 0.01,
            critical: 0.001,
            target: Target::All,
        };
        assert_eq!(rule.classify(0.5), None);
        assert_eq!(rule.classify(0.005), Some(Severity::Warning));
        assert_eq!(rule.classify(1e-9), Some(Severity::Critical));
        assert!(rule.problems().is_empty());
        let cfg = DetectConfig {
            for_evaluations: 1,
            resolve_after: 1,
            ..DetectConfig::default()
        };
        let states: Vec<State> = run(&[1e-9, 0.011, 0.5], &cfg, &rule)
            .into_iter()
            .map(|s| s.0)
            .collect();
        // 0.011 is above the warning but under the clear level 0.0125.
        assert_eq!(states, [State::Firing, State::Firing, State::Resolved]);
    }

    #[test]
    fn inverted_thresholds_are_reported() {
        let mut r = psi();
        r.critical = 0.05;
        assert_eq!(r.problems().len(), 1);
    }
}
