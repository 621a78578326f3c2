//! The quality scenarios of `driftd scenarios`: how good the accuracy
//! estimate is, how soon a drop is seen with and without labels, and how
//! often it is seen when nothing dropped.
//!
//! This module owns those measurements. The streams are the generator's
//! JSON lines (one classifier of 8 features, calibrated on its reference:
//! each prediction is right with the probability of its printed
//! confidence; see [`crate::lab::generate`]), with label lines, through
//! [`Engine::ingest`] and [`Engine::evaluate`] every 30 s of event time,
//! the daemon's defaults otherwise (a 10-minute drift window; `[quality]`
//! as shipped, except that the join runs from the first prediction). The
//! baseline, with its calibration, is built from 50,000 labelled reference
//! records by [`build_baselines`], as `driftd baseline build` does.
//!
//! - **Estimate**: under covariate shifts that lower the accuracy by 0 to
//!   10 points (`DriftEffect::AccuracyDrop`: a 1 sd shift of a feature, the
//!   confidences lower with it), the engine's estimate at the end of each
//!   10-minute window of about 2,000 predictions, against the realized
//!   accuracy of exactly those predictions, counted here from the lines.
//! - **Detection**: a 5-point drop at a known time, 20 predictions/s, every
//!   prediction labelled 6 h ± 30 min later: when `EstimatedAccuracyDrop`
//!   and `AccuracyDrop` fire.
//! - **False alarms**: the same stream without a drop, for 24 h (6 h in the
//!   quick set): firings of either, per 24 h.

use std::collections::HashMap;
use std::io::Cursor;

use serde::Serialize;

use crate::config::Config;
use crate::engine::baseline::Baseline;
use crate::engine::decode::{Decoded, Decoder, Prediction};
use crate::engine::detect::State;
use crate::engine::quality::{ACCURACY_DROP, ESTIMATED_ACCURACY_DROP};
use crate::engine::{Engine, EngineConfig};
use crate::lab::generate::{
    DriftSpec, FeatureRef, Generator, GeneratorConfig, LabelSpec, LineKind,
};
use crate::replay::{build_baselines, Input};

const T0: i64 = 1_800_000_000_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const EVERY_MS: i64 = 30_000;
const WINDOW_MS: i64 = 10 * MINUTE_MS;
/// Drops (accuracy points) of the estimate scenarios.
pub const SHIFTS: [f64; 4] = [0.0, 0.03, 0.05, 0.10];
/// Predictions per second of the estimate scenarios: 2,000 a window.
const ESTIMATE_RATE: f64 = 2000.0 / 600.0;
/// Predictions per second of the detection and false-alarm streams.
const STREAM_RATE: f64 = 20.0;
const LABEL_DELAY_MS: i64 = 6 * HOUR_MS;

/// The estimate against the realized accuracy under one shift.
#[derive(Debug, Clone, Serialize)]
pub struct EstimateError {
    pub drop: f64,
    pub windows: usize,
    /// Predictions per window, on average.
    pub mean_predictions: f64,
    pub mean_realized: f64,
    pub mean_estimate: f64,
    pub mean_abs_error: f64,
    pub max_abs_error: f64,
    /// Windows whose realized accuracy fell inside the estimate's interval.
    pub covered: usize,
}

/// When the verdicts fired after a drop, in seconds (`None`: never).
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub drop: f64,
    pub label_delay_s: i64,
    pub estimated_s: Option<f64>,
    pub realized_s: Option<f64>,
    /// Firings of either verdict before the drop.
    pub before: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FalseAlarms {
    pub hours: f64,
    pub estimated: usize,
    pub realized: usize,
    pub per_24h: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QualitySuite {
    pub reference_accuracy: f64,
    pub reference_labelled: u64,
    pub estimate: Vec<EstimateError>,
    pub detection: Detection,
    pub false_alarms: FalseAlarms,
}

fn generator(seed: u64, stream: u64, labels: LabelSpec, drift: Option<DriftSpec>) -> Generator {
    let mut g = GeneratorConfig::synthetic(seed, 1, 8)
        .inference_only()
        .with_labels(labels);
    g.arms = false;
    g.stream_seed = Some(stream);
    if let Some(d) = drift {
        g = g.with_drift(d);
    }
    Generator::new(g)
}

fn drop_at(g: &GeneratorConfig, drop: f64, at: i64) -> DriftSpec {
    let f = g.models[0].first_numeric_feature().unwrap_or(0);
    DriftSpec::accuracy_drop(vec![FeatureRef::from(f)], 1.0, drop, at)
}

/// The engine of a scenario: the shipped defaults, the label join from
/// the first prediction, event time as arrival time.
fn engine() -> EngineConfig {
    let cfg = Config::from_toml("[quality]\njoin = \"always\"\n", "driftd scenarios")
        .expect("the quality scenarios' config");
    let mut e = cfg.engine;
    e.max_future_ms = None;
    e
}

/// Lines of `g` at `rate` predictions per second over `[from, to)`, each
/// handed to `f` with its time (a label line at the time it is due).
fn stream(g: &mut Generator, rate: f64, from: i64, to: i64, mut f: impl FnMut(&str, i64)) {
    let step = 1000.0 / rate;
    let mut buf = String::with_capacity(1024);
    let mut i = 0u64;
    loop {
        let t = from + (i as f64 * step) as i64;
        if t >= to {
            return;
        }
        // A label line takes no slot of its own: ask again at the same time.
        while g.next_line(t, &mut buf) == LineKind::Label {
            f(&buf, t);
        }
        f(&buf, t);
        i += 1;
    }
}

/// The calibrated baseline from 50,000 labelled reference records.
fn reference(seed: u64) -> Baseline {
    let mut g = generator(seed, seed ^ 0x5eed, LabelSpec::new(1.0, 500, 0), None);
    let mut text = String::new();
    stream(&mut g, 100.0, T0 - 1_000_000, T0 - 500_000, |l, _| {
        text.push_str(l);
        text.push('\n');
    });
    let built = build_baselines(
        (&Decoder::new(Default::default()), 2),
        &Input::File("reference".into()),
        &mut Cursor::new(text.into_bytes()),
        None,
        &Default::default(),
        T0,
        |_| {},
    )
    .expect("the reference builds");
    built.baselines.into_iter().next().expect("one model")
}

/// The estimate at the end of each window, against the realized accuracy
/// of that window's predictions (labels due at once).
fn estimate_error(seed: u64, baseline: &Baseline, drop: f64, windows: usize) -> EstimateError {
    let cfg = GeneratorConfig::synthetic(seed, 1, 8);
    let drift = (drop > 0.0).then(|| drop_at(&cfg, drop, T0));
    let mut g = generator(
        seed,
        seed ^ (drop * 1e4) as u64,
        LabelSpec::new(1.0, 0, 0),
        drift,
    );
    let mut e = Engine::new(engine(), vec![baseline.clone()]);
    let decoder = Decoder::new(Default::default());
    // Prediction time and class hash by request, then right/wrong per window.
    let mut pending: HashMap<u64, (i64, u64)> = HashMap::new();
    let mut per_window: Vec<(u64, u64)> = vec![(0, 0); windows];
    let mut results = Vec::new();
    let mut next_eval = T0 + EVERY_MS;
    let end = T0 + windows as i64 * WINDOW_MS;
    stream(&mut g, ESTIMATE_RATE, T0, end + 1, |line, t| {
        match decoder.decode(line.as_bytes()) {
            Decoded::Event(ev) => {
                if let (Some(r), Some(Prediction::Label(l))) = (ev.request_id, &ev.prediction) {
                    pending.insert(r, (t, crate::engine::decode::feature_hash(l)));
                }
            }
            Decoded::Record(r) => {
                if let (Some(req), Some(truth)) = (r.request_id, r.truth) {
                    if let Some((pt, h)) = pending.remove(&req) {
                        let w = ((pt - T0) / WINDOW_MS) as usize;
                        if let Some(c) = per_window.get_mut(w) {
                            c.0 += 1;
                            c.1 += u64::from(truth.class_hash() == Some(h));
                        }
                    }
                }
            }
            _ => {}
        }
        if t >= next_eval {
            e.evaluate(next_eval);
            if (next_eval - T0) % WINDOW_MS == 0 {
                let q = e.report_without_models().quality;
                let est = q.iter().find(|x| x.arm.is_none()).and_then(|x| x.estimate);
                results.push(((next_eval - T0) / WINDOW_MS - 1, est));
            }
            next_eval += EVERY_MS;
        }
        e.ingest(line.as_bytes(), t);
    });
    let mut errs = Vec::new();
    let (mut n, mut real, mut estm, mut covered) = (0.0, 0.0, 0.0, 0);
    for (w, est) in results {
        let (Some(est), Some(&(k, right))) = (est, per_window.get(w as usize)) else {
            continue;
        };
        if k == 0 {
            continue;
        }
        let realized = right as f64 / k as f64;
        errs.push((est.accuracy - realized).abs());
        n += k as f64;
        real += realized;
        estm += est.accuracy;
        covered += usize::from(est.lower <= realized && realized <= est.upper);
    }
    let w = errs.len().max(1) as f64;
    EstimateError {
        drop,
        windows: errs.len(),
        mean_predictions: n / w,
        mean_realized: real / w,
        mean_estimate: estm / w,
        mean_abs_error: errs.iter().sum::<f64>() / w,
        max_abs_error: errs.iter().cloned().fold(0.0, f64::max),
        covered,
    }
}

/// Firing times of the two verdicts, from `from` to `to`.
fn firings(
    seed: u64,
    baseline: &Baseline,
    drift: Option<DriftSpec>,
    stream_seed: u64,
    to: i64,
) -> Vec<(&'static str, i64)> {
    let labels = LabelSpec::new(1.0, LABEL_DELAY_MS, 30 * MINUTE_MS);
    let mut g = generator(seed, stream_seed, labels, drift);
    let mut e = Engine::new(engine(), vec![baseline.clone()]);
    let mut out = Vec::new();
    let mut next_eval = T0 + EVERY_MS;
    stream(&mut g, STREAM_RATE, T0, to, |line, t| {
        while t >= next_eval {
            for tr in e.evaluate(next_eval) {
                let quality =
                    tr.alertname == ACCURACY_DROP || tr.alertname == ESTIMATED_ACCURACY_DROP;
                if quality && tr.to == State::Firing && tr.arm.is_none() {
                    out.push((tr.alertname, next_eval));
                }
            }
            next_eval += EVERY_MS;
        }
        e.ingest(line.as_bytes(), t);
    });
    out
}

/// Runs the three measurements; the quick set runs fewer windows and a
/// shorter false-alarm stream.
pub fn run(seed: u64, quick: bool) -> QualitySuite {
    let baseline = reference(seed);
    let q = baseline
        .quality
        .clone()
        .unwrap_or_else(|| panic!("no quality in the reference baseline"));
    let windows = if quick { 6 } else { 18 };
    let shifts: &[f64] = if quick { &[0.0, 0.05] } else { &SHIFTS };
    let (estimate, detection, false_alarms) = std::thread::scope(|s| {
        let est = s.spawn(|| {
            shifts
                .iter()
                .map(|d| estimate_error(seed, &baseline, *d, windows))
                .collect::<Vec<_>>()
        });
        let det = s.spawn(|| {
            let onset = T0 + HOUR_MS;
            let cfg = GeneratorConfig::synthetic(seed, 1, 8);
            let f = firings(
                seed,
                &baseline,
                Some(drop_at(&cfg, 0.05, onset)),
                seed ^ 1,
                onset + 8 * HOUR_MS,
            );
            let first = |name: &str| {
                f.iter()
                    .find(|(n, t)| *n == name && *t >= onset)
                    .map(|(_, t)| (t - onset) as f64 / 1000.0)
            };
            Detection {
                drop: 0.05,
                label_delay_s: LABEL_DELAY_MS / 1000,
                estimated_s: first(ESTIMATED_ACCURACY_DROP),
                realized_s: first(ACCURACY_DROP),
                before: f.iter().filter(|(_, t)| *t < onset).count(),
            }
        });
        let hours = if quick { 6.0 } else { 24.0 };
        let fa = firings(
            seed,
            &baseline,
            None,
            seed ^ 2,
            T0 + (hours * HOUR_MS as f64) as i64,
        );
        let count = |name: &str| fa.iter().filter(|(n, _)| *n == name).count();
        let fa = FalseAlarms {
            hours,
            estimated: count(ESTIMATED_ACCURACY_DROP),
            realized: count(ACCURACY_DROP),
            per_24h: fa.len() as f64 * 24.0 / hours,
        };
        (
            est.join().expect("estimate"),
            det.join().expect("detection"),
            fa,
        )
    });
    QualitySuite {
        reference_accuracy: q.accuracy.unwrap_or(f64::NAN),
        reference_labelled: q.labelled,
        estimate,
        detection,
        false_alarms,
    }
}

/// The quality tables, in markdown.
pub fn render_markdown(q: &QualitySuite, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\n## Quality\n\nReference: {} labelled predictions, accuracy {:.2}%. Estimate against realized accuracy, per 10-minute window:\n",
        q.reference_labelled,
        100.0 * q.reference_accuracy
    );
    let _ = writeln!(out, "| accuracy drop | windows | predictions / window | realized | estimated | mean \\|error\\| | max \\|error\\| | realized inside the 99% interval |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for e in &q.estimate {
        let _ = writeln!(
            out,
            "| {:.0} points | {} | {:.0} | {:.2}% | {:.2}% | {:.4} | {:.4} | {} of {} |",
            100.0 * e.drop,
            e.windows,
            e.mean_predictions,
            100.0 * e.mean_realized,
            100.0 * e.mean_estimate,
            e.mean_abs_error,
            e.max_abs_error,
            e.covered,
            e.windows
        );
    }
    let d = &q.detection;
    let s = |x: Option<f64>| {
        x.map_or("never".into(), |v| {
            format!("{:.0} s ({:.1} h)", v, v / 3600.0)
        })
    };
    let _ = writeln!(
        out,
        "\nA {:.0}-point drop at 20 predictions/s, labels {} h ± 30 min late: EstimatedAccuracyDrop after {}, AccuracyDrop after {}; {} firing(s) before the drop.",
        100.0 * d.drop,
        d.label_delay_s / 3600,
        s(d.estimated_s),
        s(d.realized_s),
        d.before
    );
    let f = &q.false_alarms;
    let _ = writeln!(
        out,
        "\nNo drop, {:.0} h: EstimatedAccuracyDrop fired {} time(s), AccuracyDrop {}: {:.2} per 24 h.",
        f.hours, f.estimated, f.realized, f.per_24h
    );
}
