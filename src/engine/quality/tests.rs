use super::*;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution};

use crate::engine::baseline::{BinOf, Binner, Bins, FeatureBaseline};
use crate::engine::decode::feature_hash;
use crate::engine::detect::{ConditionLevel, DetectConfig, Severity, State};

// Reference numbers below were computed outside this crate with scipy
// 1.17.1, scikit-learn 1.9.1 and numpy (the call is named in each comment),
// or are worked out by hand in the comment.

/// scipy.stats.norm.ppf(0.995)
const Z99: f64 = 2.575_829_303_548_900_4;

const CLASSES: [&str; 4] = ["cat", "dog", "bird", "fish"];

fn cfg() -> QualityConfig {
    QualityConfig {
        join_from_start: true,
        ..QualityConfig::default()
    }
}

fn class_set() -> Arc<[(Box<str>, u64)]> {
    CLASSES
        .iter()
        .map(|c| (Box::<str>::from(*c), feature_hash(c)))
        .collect()
}

fn no_classes() -> Arc<[(Box<str>, u64)]> {
    Arc::from(Vec::new())
}

/// A uniform request hash, as the decoder makes from a request id.
fn req(i: u64) -> u64 {
    feature_hash(&format!("request-{i}"))
}

fn cat() -> Truth {
    Truth::Class(feature_hash("cat"))
}

fn pred(slot: u32, t_ms: i64) -> Pred {
    Pred::class(slot, t_ms, feature_hash("cat"), Some(0.9))
}

fn noop(_: &Pred, _: Truth) {}

fn predict(
    q: &mut Quality,
    model: &str,
    arm: Option<&str>,
    request: u64,
    t_ms: i64,
    class: &str,
    conf: f64,
) {
    let predicted = PredictedAs::Class(feature_hash(class), Some(conf));
    q.prediction(
        model,
        arm,
        request,
        t_ms,
        predicted,
        &class_set,
        &mut |_| true,
    );
}

fn label(q: &mut Quality, request: u64, class: &str, t_ms: i64) {
    q.label(request, Truth::Class(feature_hash(class)), t_ms);
}

fn reports(q: &mut Quality, now_ms: i64) -> Vec<QualityReport> {
    q.evaluate(now_ms, &DetectConfig::default(), &|_, _| None).0
}

#[track_caller]
fn assert_close(got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "got {got}, want {want} ± {tol}");
}

// ---------------------------------------------------------------------------
// Realized metrics against reference values

/// (truth, predicted, confidence). With labels=["cat","dog","bird"],
/// sklearn gives accuracy_score = 0.6,
/// precision_score(average=None) = [0.6667, 0.5, 0.6667],
/// recall_score(average=None)    = [0.5, 0.6667, 0.6667].
/// ECE by hand (numpy, bin = min(floor(10c), 9)):
///   bin 9: 0.95 0.92 0.97, all right: 3/10·|1 − 0.94667| = 0.016
///   bin 8: 0.85 0.88, right:          2/10·|1 − 0.865|   = 0.027
///   bin 7: 0.78, right:               1/10·|1 − 0.78|    = 0.022
///   bin 6: 0.65 0.62, wrong:          2/10·|0 − 0.635|   = 0.127
///   bin 5: 0.55, wrong:               1/10·0.55          = 0.055
///   bin 4: 0.45, wrong:               1/10·0.45          = 0.045
///   total 0.292
const TABLE: [(&str, &str, f64); 10] = [
    ("cat", "cat", 0.95),
    ("cat", "cat", 0.85),
    ("cat", "dog", 0.65),
    ("dog", "dog", 0.92),
    ("dog", "cat", 0.55),
    ("dog", "dog", 0.78),
    ("bird", "bird", 0.88),
    ("bird", "dog", 0.62),
    ("bird", "bird", 0.97),
    ("cat", "bird", 0.45),
];

fn table_quality() -> Quality {
    let mut q = Quality::new(cfg());
    for (i, (truth, predicted, conf)) in TABLE.iter().enumerate() {
        let t = 1_000 * i as i64;
        predict(&mut q, "m", None, req(i as u64), t, predicted, *conf);
        label(&mut q, req(i as u64), truth, t + 500);
    }
    q
}

#[test]
fn realized_accuracy_and_ece_match_sklearn_and_numpy() {
    let r = &reports(&mut table_quality(), 60_000)[0];
    assert_eq!((r.predictions, r.labelled), (10, 10));
    assert_close(r.accuracy.unwrap(), 0.6, 1e-12);
    // Confidences are kept to 1/65535 and summed as f32.
    assert_close(r.ece.unwrap(), 0.292, 1e-4);
    assert_eq!((r.mae, r.rmse), (None, None));
}

#[test]
fn realized_precision_and_recall_per_class_match_sklearn() {
    let r = &reports(&mut table_quality(), 60_000)[0];
    let want = [
        ("cat", 4, 2.0 / 3.0, 0.5),
        ("dog", 3, 0.5, 2.0 / 3.0),
        ("bird", 3, 2.0 / 3.0, 2.0 / 3.0),
    ];
    assert_eq!(r.classes.len(), 4);
    for (c, (name, support, precision, recall)) in r.classes.iter().zip(want) {
        assert_eq!((c.class.as_str(), c.support), (name, support));
        assert_close(c.precision.unwrap(), precision, 1e-12);
        assert_close(c.recall.unwrap(), recall, 1e-12);
    }
    // Never predicted, never true: nothing to divide by.
    let fish = &r.classes[3];
    assert_eq!((fish.support, fish.precision, fish.recall), (0, None, None));
}

#[test]
fn realized_regression_errors_match_sklearn() {
    // sklearn: mean_absolute_error = 0.64,
    // sqrt(mean_squared_error) = 0.7668115805072326.
    let truth = [3.0, -0.5, 2.0, 7.0, 4.2];
    let predicted = [2.5, 0.0, 2.0, 8.0, 3.0];
    let mut q = Quality::new(cfg());
    for (i, (y, p)) in truth.iter().zip(predicted).enumerate() {
        let t = 1_000 * i as i64;
        let v = PredictedAs::Value(p);
        q.prediction("reg", None, req(i as u64), t, v, &no_classes, &mut |_| true);
        q.label(req(i as u64), Truth::Value(*y), t + 1);
    }
    let r = &reports(&mut q, 60_000)[0];
    assert_eq!(r.labelled, 5);
    assert_close(r.mae.unwrap(), 0.64, 1e-12);
    assert_close(r.rmse.unwrap(), 0.766_811_580_507_232_6, 1e-12);
    assert_eq!((r.accuracy, r.ece), (None, None));
    assert!(r.classes.is_empty());
}

/// A regression model that hits every label exactly still has an MAE of 0
/// and no accuracy. Ignored: `realized` tells regression from
/// classification by `abs_err > 0 || sq_err > 0`, so an exact window is
/// reported as a classifier with accuracy 0 and no MAE (see the report).
#[test]
fn exact_regression_predictions_report_zero_error_not_zero_accuracy() {
    let mut q = Quality::new(cfg());
    for i in 0..5u64 {
        let v = PredictedAs::Value(i as f64);
        q.prediction("reg", None, req(i), 0, v, &no_classes, &mut |_| true);
        q.label(req(i), Truth::Value(i as f64), 1);
    }
    let r = &reports(&mut q, 60_000)[0];
    assert_eq!(r.accuracy, None);
    assert_eq!((r.mae, r.rmse), (Some(0.0), Some(0.0)));
}

#[test]
fn ece_weighs_each_bins_gap_by_its_share() {
    // By hand: N = 5. Bin A: 2 labelled, 1 right, Σconf 1.3 (mean 0.65):
    // 2/5·|0.5 − 0.65| = 0.06. Bin B: 3, 3 right, mean 0.9: 3/5·0.1 = 0.06.
    let bins = [(2, 1, 1.3), (0, 0, 0.0), (3, 3, 2.7)];
    assert_close(ece(&bins).unwrap(), 0.12, 1e-12);
    assert_eq!(ece(&[(0, 0, 0.0); ECE_BINS]), None);
}

#[test]
fn label_of_the_wrong_kind_is_counted_not_credited() {
    let mut q = Quality::new(cfg());
    predict(&mut q, "m", None, req(1), 0, "cat", 0.9);
    q.label(req(1), Truth::Value(1.0), 10);
    assert_eq!(q.join.stats.mismatched_kind, 1);
    assert_eq!(reports(&mut q, 1_000)[0].labelled, 0);
}

#[test]
fn integer_label_is_a_class_to_a_classifier_and_a_value_to_a_regression() {
    let three = Truth::Number(feature_hash("3"), 3.0);
    let class = Pred::class(0, 0, feature_hash("3"), None);
    assert_eq!(class.against(three), Some(Outcome::Class { correct: true }));
    let other = Pred::class(0, 0, feature_hash("4"), None);
    assert_eq!(
        other.against(three),
        Some(Outcome::Class { correct: false })
    );
    assert_eq!(
        Pred::value(0, 0, 4.5).against(three),
        Some(Outcome::Error(1.5))
    );
    // A class for a regression, a value for a classifier: nothing to compare.
    assert_eq!(Pred::value(0, 0, 4.5).against(cat()), None);
    assert_eq!(class.against(Truth::Value(3.0)), None);
}

// ---------------------------------------------------------------------------
// Binomial test and normal quantile

#[test]
fn z_of_is_the_two_sided_normal_quantile() {
    assert_close(z_of(0.99), Z99, 1e-6);
    // scipy.stats.norm.ppf(0.975)
    assert_close(z_of(0.95), 1.959_963_984_540_054, 1e-6);
}

// ---------------------------------------------------------------------------
// The join

#[test]
fn label_after_its_prediction_is_matched() {
    let mut j = LabelJoin::new(10_000, 100, 100);
    j.prediction(req(1), pred(3, 100), &mut |_, _| panic!("no label yet"));
    let mut got = Vec::new();
    j.label(req(1), cat(), 200, &mut |p, t| got.push((*p, t)));
    assert_eq!(got, vec![(pred(3, 100), cat())]);
    assert_eq!((j.stats.matched, j.stats.matched_early), (1, 0));
    assert_eq!(j.waiting(), (0, 0));
}

#[test]
fn label_before_its_prediction_is_matched_early() {
    let mut j = LabelJoin::new(10_000, 100, 100);
    j.label(req(1), cat(), 100, &mut |_, _| panic!("nothing waiting"));
    assert_eq!(j.waiting(), (0, 1));
    let mut got = Vec::new();
    j.prediction(req(1), pred(3, 200), &mut |p, t| got.push((*p, t)));
    // The label stays for its TTL: a second model's prediction joins too.
    j.prediction(req(1), pred(4, 300), &mut |p, t| got.push((*p, t)));
    assert_eq!(got, vec![(pred(3, 200), cat()), (pred(4, 300), cat())]);
    assert_eq!((j.stats.matched, j.stats.matched_early), (0, 2));
}

#[test]
fn duplicate_label_is_counted_once_and_not_credited_twice() {
    let mut q = Quality::new(cfg());
    // Late duplicate: the second label (a wrong class) must not count.
    predict(&mut q, "m", None, req(1), 0, "cat", 0.9);
    label(&mut q, req(1), "cat", 10);
    label(&mut q, req(1), "dog", 20);
    // Early duplicate: two labels before the prediction.
    label(&mut q, req(2), "cat", 30);
    label(&mut q, req(2), "dog", 40);
    predict(&mut q, "m", None, req(2), 50, "cat", 0.9);
    let s = &q.join.stats;
    assert_eq!((s.duplicate, s.matched, s.matched_early), (2, 1, 1));
    let r = &reports(&mut q, 1_000)[0];
    assert_eq!((r.labelled, r.accuracy), (2, Some(1.0)));
}

#[test]
fn orphan_label_expires_after_ttl_checked_at_most_once_a_second() {
    let mut j = LabelJoin::new(5_000, 100, 100);
    // Later events of other requests move event time on.
    let tick = |j: &mut LabelJoin, i: u64, t: i64| j.prediction(req(i), pred(0, t), &mut noop);
    j.label(req(0), cat(), 0, &mut noop);
    tick(&mut j, 1, 5_000); // exactly a TTL old: still waiting
    assert_eq!((j.stats.orphan, j.waiting().1), (0, 1));
    tick(&mut j, 2, 5_500); // past the TTL, but expiry ran 500 ms ago
    assert_eq!((j.stats.orphan, j.waiting().1), (0, 1));
    tick(&mut j, 3, 6_000); // a second on: expired
    assert_eq!((j.stats.orphan, j.waiting().1), (1, 0));
}

#[test]
fn prediction_without_label_becomes_unlabelled_after_ttl() {
    let mut j = LabelJoin::new(5_000, 100, 100);
    // Two models scoring one request: both wait, both are unlabelled.
    j.prediction(req(1), pred(0, 0), &mut noop);
    j.prediction(req(1), pred(1, 0), &mut noop);
    j.prediction(req(2), pred(0, 5_000), &mut noop);
    assert_eq!(j.stats.unlabelled, 0);
    j.prediction(req(3), pred(0, 6_000), &mut noop);
    assert_eq!(j.stats.unlabelled, 2);
    // Its label, too late, finds nothing.
    j.label(req(1), cat(), 6_100, &mut |_, _| panic!("expired"));
    assert_eq!(j.stats.matched, 0);
}

#[test]
fn label_whose_prediction_left_the_window_is_late_and_not_counted() {
    let mut q = Quality::new(QualityConfig {
        pane_ms: 1_000,
        panes: 3,
        ttl_ms: 1_000_000,
        ..cfg()
    });
    predict(&mut q, "m", None, req(1), 500, "cat", 0.9);
    predict(&mut q, "m", None, req(2), 10_000, "cat", 0.9);
    label(&mut q, req(1), "dog", 10_100); // pane 0; the window is panes 8..=10
    label(&mut q, req(2), "cat", 10_200);
    assert_eq!((q.join.stats.matched, q.join.stats.late), (2, 1));
    let r = &reports(&mut q, 10_300)[0];
    assert_eq!((r.predictions, r.labelled, r.accuracy), (1, 1, Some(1.0)));
}

#[test]
fn auto_join_skips_predictions_before_the_first_label() {
    let mut q = Quality::new(QualityConfig {
        ttl_ms: 10_000,
        ..QualityConfig::default()
    });
    assert!(!q.joining());
    for i in 0..3 {
        predict(&mut q, "m", None, req(i), 100 * i as i64, "cat", 0.9);
    }
    assert_eq!((q.join.stats.before_labels, q.slot_count()), (3, 0));
    label(&mut q, req(0), "cat", 1_000); // its prediction was not joined
    assert!(q.joining());
    predict(&mut q, "m", None, req(9), 1_100, "cat", 0.9);
    label(&mut q, req(9), "cat", 1_200);
    let r = &reports(&mut q, 2_000)[0];
    assert_eq!((r.predictions, r.labelled), (1, 1));
    let s = &q.join.stats;
    assert_eq!((s.before_labels, s.matched, s.matched_early), (3, 1, 0));
    reports(&mut q, 20_000); // past the TTL: the first label was orphaned
    assert_eq!(q.join.stats.orphan, 1);
}

// ---------------------------------------------------------------------------
// The hash sample

/// Whether `h` is in a sample of rate `rate`: its top log2(1/rate) bits are
/// zero (worked out here, not asked of the join).
fn in_sample(h: u64, rate: f64) -> bool {
    let shift = (1.0 / rate).log2().round() as u32;
    shift == 0 || h >> (64 - shift) == 0
}

#[test]
fn hash_sample_keeps_prediction_and_label_together() {
    const N: u64 = 2_000;
    let mut j = LabelJoin::new(1_000_000, 64, 10_000);
    for i in 0..N {
        j.prediction(req(i), pred(0, i as i64), &mut noop);
    }
    let rate = j.sample_rate();
    assert!(rate < 1.0);
    let kept: Vec<u64> = (0..N).filter(|&i| in_sample(req(i), rate)).collect();
    assert!(!kept.is_empty() && kept.len() <= 64, "{}", kept.len());
    assert_eq!(j.waiting().0, kept.len());
    assert_eq!(j.stats.evicted_predictions, 0);
    let predictions_out = j.stats.sampled_out;
    assert_eq!(predictions_out, N - kept.len() as u64);

    let mut matched = Vec::new();
    for i in 0..N {
        let t = (N + i) as i64;
        j.label(req(i), cat(), t, &mut |p, _| matched.push(p.t_ms as u64));
    }
    // Every kept prediction's label found it; every other label was out.
    assert_eq!(matched, kept);
    let labels_out = j.stats.sampled_out - predictions_out;
    assert_eq!(j.stats.matched, kept.len() as u64);
    assert_eq!(labels_out, N - kept.len() as u64);
    assert_eq!(j.stats.matched + labels_out, N);
    assert_eq!(j.waiting(), (0, 0));
    // Past the TTL nothing turns orphan or unlabelled.
    j.label(u64::MAX, cat(), 5_000_000, &mut noop);
    assert_eq!((j.stats.orphan, j.stats.unlabelled), (0, 0));
}

#[test]
fn sample_gets_denser_after_a_quiet_ttl() {
    let ttl = 10_000;
    let mut j = LabelJoin::new(ttl, 64, 10_000);
    for i in 0..500 {
        j.prediction(req(i), pred(0, i as i64), &mut noop);
    }
    for i in 0..500 {
        j.label(req(i), cat(), 500 + i as i64, &mut noop);
    }
    let thinned = j.sample_rate();
    assert!(thinned <= 0.25, "{thinned}");
    assert_eq!(j.waiting().0, 0);
    // A label outside any sample: it only moves event time on.
    let tick = |j: &mut LabelJoin, t: i64| j.label(u64::MAX, cat(), t, &mut noop);
    tick(&mut j, 1_000 + ttl / 2);
    assert_eq!(j.sample_rate(), thinned, "quiet for less than a TTL");
    tick(&mut j, 1_000 + ttl);
    assert_eq!(j.sample_rate(), 2.0 * thinned);
    tick(&mut j, 2_000 + ttl);
    assert_eq!(j.sample_rate(), 2.0 * thinned, "one step per TTL");
    tick(&mut j, 1_000 + 2 * ttl);
    assert_eq!(j.sample_rate(), 4.0 * thinned);
}

// ---------------------------------------------------------------------------
// Caps

#[test]
fn full_early_map_evicts_its_oldest_labels() {
    let mut j = LabelJoin::new(1_000_000, 100, 3);
    for i in 0..5 {
        j.label(req(i), cat(), i as i64, &mut noop);
    }
    assert_eq!((j.stats.evicted_labels, j.waiting().1), (2, 3));
    let mut joined = Vec::new();
    for i in 0..5 {
        j.prediction(req(i), pred(0, 10), &mut |_, _| joined.push(i));
    }
    // The two oldest labels are gone: their predictions wait.
    assert_eq!(joined, vec![2, 3, 4]);
    assert_eq!(j.waiting().0, 2);
}

#[test]
fn models_beyond_the_cap_are_refused() {
    let mut q = Quality::new(QualityConfig {
        max_models: 1,
        ..cfg()
    });
    predict(&mut q, "a", None, req(1), 0, "cat", 0.9);
    predict(&mut q, "b", None, req(2), 0, "cat", 0.9);
    predict(&mut q, "b", None, req(3), 0, "cat", 0.9);
    assert_eq!((q.join.stats.refused, q.slot_count()), (2, 1));
    assert_eq!(q.join.waiting().0, 1);
}

#[test]
fn arms_beyond_the_cap_are_refused_but_the_model_still_counts() {
    let mut q = Quality::new(QualityConfig {
        max_arms_per_model: 1,
        ..cfg()
    });
    predict(&mut q, "m", Some("blue"), req(1), 0, "cat", 0.9);
    predict(&mut q, "m", Some("green"), req(2), 0, "cat", 0.9);
    assert_eq!((q.join.stats.refused, q.slot_count()), (1, 2));
    let r = reports(&mut q, 1_000);
    let seen: Vec<_> = r
        .iter()
        .map(|r| (r.arm.as_deref(), r.predictions))
        .collect();
    assert_eq!(seen, vec![(None, 2), (Some("blue"), 1)]);
}

#[test]
fn refused_budget_is_counted_and_nothing_joins() {
    let mut q = Quality::new(cfg());
    let mut asked = Vec::new();
    let p = PredictedAs::Class(feature_hash("cat"), Some(0.9));
    q.prediction("m", Some("a"), req(1), 0, p, &class_set, &mut |bytes| {
        asked.push(bytes);
        false
    });
    // The model is refused: its arm is not even asked for.
    assert_eq!(asked, vec![q.config().slot_bytes(true)]);
    assert_eq!((q.join.stats.refused, q.slot_count()), (1, 0));
    assert_eq!(q.join.waiting(), (0, 0));
}

#[test]
fn refused_arm_budget_still_counts_the_model() {
    let mut q = Quality::new(cfg());
    let arm_bytes = q.config().slot_bytes(false);
    let p = PredictedAs::Class(feature_hash("cat"), Some(0.9));
    q.prediction("m", Some("a"), req(1), 0, p, &class_set, &mut |b| {
        b != arm_bytes
    });
    assert_eq!((q.join.stats.refused, q.slot_count()), (1, 1));
    assert!(q.has("m", None) && !q.has("m", Some("a")));
    label(&mut q, req(1), "cat", 10);
    let r = reports(&mut q, 1_000);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].labelled, r[0].accuracy), (1, Some(1.0)));
}

#[test]
fn forgotten_slot_never_receives_an_old_predictions_label() {
    let mut q = Quality::new(QualityConfig {
        ttl_ms: 10_000,
        ..cfg()
    });
    predict(&mut q, "a", None, req(1), 0, "cat", 0.9);
    // The join last expired at 9.5 s: its next expiry is not before 10.5 s.
    label(&mut q, req(99), "cat", 9_500);
    // Idle for longer than the TTL: forgotten.
    let (freed, _) = q.expire_idle(10_001, 1_000);
    assert_eq!((freed, q.slot_count()), (q.config().slot_bytes(true), 0));
    // "b" takes the freed slot; the label of "a"'s prediction must not count.
    predict(&mut q, "b", None, req(2), 10_100, "cat", 0.9);
    label(&mut q, req(1), "cat", 10_200);
    assert_eq!(q.join.stats.matched, 0);
    let r = reports(&mut q, 10_300);
    assert_eq!((r[0].model.as_str(), r[0].labelled), ("b", 0));
}

// ---------------------------------------------------------------------------
// The estimate without labels

/// Edges every 0.05 over [0.5, 1]: ten bins, plus underflow, overflow and
/// missing.
fn confidence_bins() -> Bins {
    Bins::Numeric {
        edges: (0..=10).map(|i| 0.5 + 0.05 * f64::from(i)).collect(),
        mean: 0.8,
        std: 0.1,
    }
}

/// A prediction with confidence c = 0.5 + 0.5·Beta, right with probability
/// c − `overconfidence` (0: calibrated).
fn draw(rng: &mut SmallRng, conf: &Beta<f64>, overconfidence: f64) -> (f64, bool) {
    let c = 0.5 + 0.5 * conf.sample(rng);
    (c, rng.random::<f64>() < c - overconfidence)
}

/// A labelled reference of `n` predictions.
fn reference(
    rng: &mut SmallRng,
    conf: &Beta<f64>,
    overconfidence: f64,
    n: usize,
    bins: &Bins,
) -> QualityBaseline {
    let (right, wrong) = (feature_hash("right"), feature_hash("wrong"));
    let mut b = CalibrationBuilder::default();
    for _ in 0..n {
        let (c, ok) = draw(rng, conf, overconfidence);
        b.confidence(c);
        let truth = Truth::Class(if ok { right } else { wrong });
        b.labelled(&Pred::class(0, 0, right, Some(c)), truth);
    }
    b.finish(Some(bins)).expect("a labelled reference")
}

/// A window of `n` predictions: its confidence counts in `bins` (last =
/// missing) and its realized accuracy.
fn window(
    rng: &mut SmallRng,
    conf: &Beta<f64>,
    overconfidence: f64,
    n: usize,
    bins: &Bins,
) -> (Vec<u64>, f64) {
    let binner = Binner::new(bins);
    let mut counts = vec![0u64; bins.len()];
    let mut right = 0;
    for _ in 0..n {
        let (c, ok) = draw(rng, conf, overconfidence);
        match binner.bin_num(c) {
            BinOf::Bin(b) => counts[b as usize] += 1,
            BinOf::Invalid => counts[bins.len() - 1] += 1,
        }
        right += usize::from(ok);
    }
    (counts, right as f64 / n as f64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0071_a117),
        ..ProptestConfig::default()
    })]

    #[test]
    fn estimate_is_within_four_standard_errors_of_realized_accuracy(
        ref_a in 1.0f64..6.0,
        ref_b in 1.0f64..4.0,
        win_a in 1.0f64..6.0,
        win_b in 1.0f64..4.0,
        seed in any::<u64>(),
    ) {
        let bins = confidence_bins();
        let mut rng = SmallRng::seed_from_u64(seed);
        let q = reference(&mut rng, &Beta::new(ref_a, ref_b).unwrap(), 0.0, 4_000, &bins);
        prop_assert!(q.calibrated());
        // The window's confidences come from another distribution.
        let win = Beta::new(win_a, win_b).unwrap();
        let (counts, realized) = window(&mut rng, &win, 0.0, 4_000, &bins);
        let e = estimate(&counts, &q, 0.99).unwrap();
        prop_assert!(e.calibrated);
        prop_assert_eq!(e.samples, 4_000);
        // One end may be clamped to [0, 1]: the other is the half width.
        let se = (e.accuracy - e.lower).max(e.upper - e.accuracy) / Z99;
        prop_assert!(
            (e.accuracy - realized).abs() <= 4.0 * se,
            "estimate {:?}, realized {}", e, realized
        );
    }
}

#[test]
fn estimate_is_unbiased_and_covers_under_covariate_shift() {
    let bins = confidence_bins();
    let mut rng = SmallRng::seed_from_u64(7);
    // Reference accuracy E[c] = 0.5 + 0.5·4/6 = 0.833; the window's 0.75.
    let (before, after) = (Beta::new(4.0, 2.0).unwrap(), Beta::new(2.0, 2.0).unwrap());
    let draws = 200;
    let (mut bias, mut covered, mut reference_accuracy) = (0.0, 0, 0.0);
    for _ in 0..draws {
        let q = reference(&mut rng, &before, 0.0, 2_000, &bins);
        let (counts, realized) = window(&mut rng, &after, 0.0, 2_000, &bins);
        let e = estimate(&counts, &q, 0.99).unwrap();
        bias += (e.accuracy - realized) / f64::from(draws);
        covered += u32::from(e.lower <= realized && realized <= e.upper);
        reference_accuracy += q.accuracy.unwrap() / f64::from(draws);
    }
    assert!(reference_accuracy - 0.75 > 0.07, "the shift is real");
    assert!(bias.abs() < 0.005, "bias {bias}");
    // Nominal 99%; 190 of 200 is far below what it should reach.
    assert!(covered >= 190, "covered {covered} of {draws}");
}

#[test]
fn calibration_corrects_an_overconfident_model() {
    let bins = confidence_bins();
    let mut rng = SmallRng::seed_from_u64(11);
    let conf = Beta::new(4.0, 2.0).unwrap();
    // Right with probability c − 0.1: raw confidences overstate by 0.1.
    let q = reference(&mut rng, &conf, 0.1, 50_000, &bins);
    let (counts, realized) = window(&mut rng, &conf, 0.1, 50_000, &bins);
    let calibrated = estimate(&counts, &q, 0.99).unwrap();
    // Within four standard errors of its own interval.
    let se = (calibrated.upper - calibrated.lower) / (2.0 * Z99);
    assert_close(calibrated.accuracy, realized, 4.0 * se);
    let raw = QualityBaseline {
        labelled: 0,
        accuracy: None,
        ..q
    };
    let e = estimate(&counts, &raw, 0.99).unwrap();
    assert!(!e.calibrated);
    assert_close(e.accuracy, realized + 0.1, 0.01);
}

#[test]
fn without_labels_the_estimate_is_the_uncalibrated_mean_confidence() {
    let bins = confidence_bins();
    let confs = [0.57, 0.66, 0.78, 0.93];
    let mut b = CalibrationBuilder::default();
    confs.iter().for_each(|c| b.confidence(*c));
    let q = b.finish(Some(&bins)).unwrap();
    assert!(!q.calibrated());
    assert_eq!((q.labelled, q.accuracy), (0, None));
    let binner = Binner::new(&bins);
    let mut counts = vec![0u64; bins.len()];
    for c in confs {
        let BinOf::Bin(i) = binner.bin_num(c) else {
            panic!()
        };
        counts[i as usize] += 1;
    }
    let e = estimate(&counts, &q, 0.99).unwrap();
    assert!(!e.calibrated);
    // One per bin, so the mean of the confidences: 2.94 / 4 = 0.735.
    // var = Σ c(1 − c) / 4² = 0.7062 / 16; lower = 0.735 − 2.5758·0.21009
    // = 0.193846 (numpy); the upper end is clamped to 1.
    assert_close(e.accuracy, 0.735, 1e-12);
    assert_close(e.lower, 0.193_845_910_366_027_27, 1e-9);
    assert_eq!((e.upper, e.samples), (1.0, 4));
}

#[test]
fn calibrated_estimate_follows_the_documented_formula() {
    let q = QualityBaseline {
        labelled: 300,
        accuracy: Some(0.8),
        ece: None,
        mae: None,
        rmse: None,
        mean_confidence: vec![0.6, 0.9],
        bin_labelled: vec![100, 200],
        bin_correct: vec![50, 190],
    };
    // By hand (numpy): a = (k + 10·c̄)/(m + 10) = [56/110, 199/210];
    // mean = 0.3·a0 + 0.7·a1 = 0.816061; var = Σ n_b a(1−a)/n² +
    // Σ (n_b/n)² a(1−a)/(m_b + 10); interval [0.719081, 0.913040].
    // The third count is the missing bin: left out.
    let e = estimate(&[30, 70, 5], &q, 0.99).unwrap();
    assert!(e.calibrated);
    assert_eq!(e.samples, 100);
    assert_close(e.accuracy, 0.816_060_606_060_605_9, 1e-12);
    assert_close(e.lower, 0.719_081_049_239_083_3, 1e-9);
    assert_close(e.upper, 0.913_040_162_882_128_5, 1e-9);
}

#[test]
fn calibration_needs_min_calibration_labels() {
    let bins = confidence_bins();
    let mut rng = SmallRng::seed_from_u64(3);
    let conf = Beta::new(4.0, 2.0).unwrap();
    let n = MIN_CALIBRATION_LABELS as usize;
    assert!(!reference(&mut rng, &conf, 0.0, n - 1, &bins).calibrated());
    assert!(reference(&mut rng, &conf, 0.0, n, &bins).calibrated());
}

#[test]
fn estimate_level_breaches_clears_and_holds() {
    let e = |accuracy: f64, upper: f64| Estimate {
        accuracy,
        lower: accuracy - 0.01,
        upper,
        samples: 1_000,
        calibrated: true,
    };
    // Reference 0.9, minimum effect 0.02: breach under 0.88, clear over 0.89.
    let level = |x| estimate_level(0.9, x, 0.02);
    assert_eq!(level(e(0.87, 0.879)), ConditionLevel::Breach);
    assert_eq!(level(e(0.87, 0.881)), ConditionLevel::Hold);
    assert_eq!(level(e(0.885, 0.895)), ConditionLevel::Hold);
    assert_eq!(level(e(0.891, 0.9)), ConditionLevel::Clear);
}

// ---------------------------------------------------------------------------
// Verdicts through `Quality::evaluate`

fn judged_accuracy(reference: f64) -> impl Fn(&str, Option<&str>) -> Option<Judged> {
    move |_, _| {
        Some(Judged {
            reference: Reference {
                accuracy: Some(reference),
                estimated: None,
                ece: None,
                mae: None,
                labelled: 10_000,
                calibrated: true,
            },
            estimate: None,
        })
    }
}

fn judged_estimate(samples: u64) -> impl Fn(&str, Option<&str>) -> Option<Judged> {
    move |_, _| {
        Some(Judged {
            reference: Reference {
                accuracy: None,
                estimated: Some(0.9),
                ece: None,
                mae: None,
                labelled: 10_000,
                calibrated: true,
            },
            estimate: Some(Estimate {
                accuracy: 0.85,
                lower: 0.83,
                upper: 0.87,
                samples,
                calibrated: true,
            }),
        })
    }
}

/// `n` labelled predictions of "cat", the first `right` of them right.
fn labelled_run(q: &mut Quality, arm: Option<&str>, n: u64, right: u64) {
    for i in 0..n {
        let t = 10 * i as i64;
        predict(q, "m", arm, req(i), t, "cat", 0.9);
        label(q, req(i), if i < right { "cat" } else { "dog" }, t + 5);
    }
}

#[test]
fn five_point_realized_drop_fires_accuracy_drop() {
    let mut q = Quality::new(cfg());
    assert_eq!(q.config().min_labels, 1_000);
    labelled_run(&mut q, Some("canary"), 1_000, 850);
    let detect = DetectConfig::default();
    assert_eq!(detect.for_evaluations, 2);
    let judge = judged_accuracy(0.9);
    let (r, t) = q.evaluate(20_000, &detect, &judge);
    assert!(t.is_empty());
    assert!(r.iter().all(|r| r.accuracy_drop == State::Pending));
    let recent = r[0].recent.unwrap();
    assert_eq!(recent.labelled, 1_000);
    assert_close(recent.accuracy, 0.85, 1e-12);
    // One-sided pooled two-proportion z-test, errors 1000 of 10,000 in the
    // reference against 150 of 1,000: z = 4.92719, p = 1 − Φ(z) =
    // 4.17103e-7 (Python's statistics.NormalDist).
    assert!((recent.p_value / 4.171_030_909_549_955_4e-7 - 1.0).abs() < 1e-4);

    let (r, t) = q.evaluate(21_000, &detect, &judge);
    assert!(r.iter().all(|r| r.accuracy_drop == State::Firing));
    let arms: Vec<_> = t.iter().map(|t| t.arm.as_deref()).collect();
    assert_eq!(arms, vec![None, Some("canary")]);
    for t in &t {
        assert_eq!((t.alertname, t.model.as_str()), (ACCURACY_DROP, "m"));
        assert_eq!(
            (t.from, t.to, t.severity),
            (State::Pending, State::Firing, Some(Severity::Critical))
        );
        assert_eq!((t.metric, t.samples), ("accuracy", 1_000));
        assert_close(t.value, 0.85, 1e-12);
        assert_close(t.threshold, 0.88, 1e-12);
    }
}

#[test]
fn realized_accuracy_at_the_reference_does_not_fire() {
    let mut q = Quality::new(cfg());
    // p = binom.cdf(900, 1000, 0.9) = 0.515: nothing to see.
    labelled_run(&mut q, None, 1_000, 900);
    let judge = judged_accuracy(0.9);
    for now in [20_000, 21_000, 22_000] {
        let (r, t) = q.evaluate(now, &DetectConfig::default(), &judge);
        assert!(t.is_empty());
        assert_eq!(r[0].accuracy_drop, State::Ok);
    }
}

#[test]
fn accuracy_drop_waits_for_min_labels() {
    let mut q = Quality::new(cfg());
    labelled_run(&mut q, None, 999, 800);
    let judge = judged_accuracy(0.9);
    for now in [20_000, 21_000, 22_000] {
        let (r, t) = q.evaluate(now, &DetectConfig::default(), &judge);
        assert!(t.is_empty());
        assert_eq!((r[0].recent, r[0].accuracy_drop), (None, State::Ok));
    }
}

#[test]
fn estimated_drop_below_reference_fires_estimated_accuracy_drop() {
    let mut q = Quality::new(cfg());
    predict(&mut q, "m", None, req(1), 0, "cat", 0.9);
    let (detect, judge) = (DetectConfig::default(), judged_estimate(600));
    assert!(q.evaluate(1_000, &detect, &judge).1.is_empty());
    let (r, t) = q.evaluate(2_000, &detect, &judge);
    assert_eq!(t.len(), 1);
    let t = &t[0];
    assert_eq!(
        (t.alertname, t.model.as_str()),
        (ESTIMATED_ACCURACY_DROP, "m")
    );
    assert_eq!(
        (t.metric, t.to, t.samples),
        ("estimated_accuracy", State::Firing, 600)
    );
    assert_close(t.value, 0.85, 1e-12);
    assert_close(t.threshold, 0.88, 1e-12);
    assert_eq!(
        t.details.get("interval").map(String::as_str),
        Some("[0.8300, 0.8700]")
    );
    assert_eq!(
        (r[0].estimated_accuracy_drop, r[0].accuracy_drop),
        (State::Firing, State::Ok)
    );
}

#[test]
fn estimate_on_too_few_confidences_is_not_judged() {
    let mut q = Quality::new(cfg());
    predict(&mut q, "m", None, req(1), 0, "cat", 0.9);
    let judge = judged_estimate(q.config().min_estimate_samples - 1);
    for now in [1_000, 2_000, 3_000, 4_000] {
        let (r, t) = q.evaluate(now, &DetectConfig::default(), &judge);
        assert!(t.is_empty());
        assert_eq!(r[0].estimated_accuracy_drop, State::Ok);
    }
}

// ---------------------------------------------------------------------------
// Baseline validation

/// A confidence distribution with edges [0.5, 0.75, 1]: four bins besides
/// the missing one.
fn confidence_feature() -> FeatureBaseline {
    FeatureBaseline {
        name: "confidence".into(),
        bins: Bins::Numeric {
            edges: vec![0.5, 0.75, 1.0],
            mean: 0.8,
            std: 0.1,
        },
        counts: vec![0; 5],
        null: None,
    }
}

fn valid_quality() -> QualityBaseline {
    QualityBaseline {
        labelled: 300,
        accuracy: Some(0.8),
        ece: Some(0.05),
        mae: None,
        rmse: None,
        mean_confidence: vec![0.25, 0.6, 0.9, 1.0],
        bin_labelled: vec![0, 100, 200, 0],
        bin_correct: vec![0, 60, 180, 0],
    }
}

fn problems(q: &QualityBaseline) -> Vec<String> {
    let mut p = Vec::new();
    q.validate(Some(&confidence_feature()), &mut p);
    p
}

#[test]
fn validate_accepts_a_consistent_quality_baseline() {
    assert_eq!(problems(&valid_quality()), Vec::<String>::new());
    let bins = confidence_feature().bins;
    assert_eq!(
        problems(&QualityBaseline::uncalibrated(&bins).unwrap()),
        Vec::<String>::new()
    );
}

#[test]
fn validate_reports_wrong_lengths() {
    let short = QualityBaseline {
        mean_confidence: vec![0.6, 0.9, 1.0],
        bin_labelled: vec![100, 200, 0],
        bin_correct: vec![60, 180, 0],
        ..valid_quality()
    };
    let p = problems(&short);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("3 values for 4 confidence bins"), "{p:?}");

    let counts = QualityBaseline {
        bin_correct: vec![0, 60, 180],
        ..valid_quality()
    };
    let p = problems(&counts);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("bin_labelled and bin_correct"), "{p:?}");
}

#[test]
fn validate_reports_out_of_range_values() {
    let accuracy = QualityBaseline {
        accuracy: Some(1.2),
        ..valid_quality()
    };
    assert!(problems(&accuracy)[0].contains("accuracy and ece"));
    let ece = QualityBaseline {
        ece: Some(-0.1),
        ..valid_quality()
    };
    assert!(problems(&ece)[0].contains("accuracy and ece"));
    let confidence = QualityBaseline {
        mean_confidence: vec![0.25, 0.6, 1.5, 1.0],
        ..valid_quality()
    };
    assert!(problems(&confidence)[0].contains("mean_confidence: every value"));
    let correct = QualityBaseline {
        bin_correct: vec![0, 60, 201, 0],
        ..valid_quality()
    };
    assert!(problems(&correct)[0].contains("correct ≤ labelled"));
}

#[test]
fn matched_predictions_leave_the_order_queue_within_twice_the_cap() {
    // Labels right after their predictions for 100 TTL-less rounds of the
    // cap: the map stays near empty and the order queue must not grow with
    // the stream.
    let mut j = LabelJoin::new(1_000_000_000, 100, 10);
    for i in 0..10_000u64 {
        let p = Pred::class(0, i as i64, 1, Some(0.9));
        j.prediction(req(i), p, &mut |_, _| {});
        j.label(req(i), Truth::Class(1), i as i64, &mut |_, _| {});
        assert!(j.pending_order.len() <= 200, "{}", j.pending_order.len());
    }
    assert_eq!(j.stats.matched, 10_000);
    assert_eq!(j.sample_rate(), 1.0);
}

#[test]
fn redelivered_lines_are_counted_once() {
    let mut q = Quality::new(cfg());
    // Prediction, label, then both again (a rebalance redelivers them).
    predict(&mut q, "m", None, req(1), 0, "cat", 0.9);
    label(&mut q, req(1), "cat", 10);
    predict(&mut q, "m", None, req(1), 0, "cat", 0.9);
    label(&mut q, req(1), "cat", 10);
    // Label first, then its prediction twice.
    label(&mut q, req(2), "dog", 20);
    predict(&mut q, "m", None, req(2), 15, "cat", 0.9);
    predict(&mut q, "m", None, req(2), 15, "cat", 0.9);
    let r = reports(&mut q, 1_000);
    assert_eq!((r[0].labelled, r[0].accuracy), (2, Some(0.5)));
    assert_eq!((q.join.stats.matched, q.join.stats.matched_early), (1, 1));
    assert_eq!(q.join.stats.duplicate, 3);
}

#[test]
fn an_unusable_truth_is_counted_and_never_credited() {
    let mut q = Quality::new(cfg());
    predict(&mut q, "m", None, req(1), 0, "cat", 0.9);
    q.label(req(1), Truth::Unusable, 10);
    let r = reports(&mut q, 1_000);
    assert_eq!((r[0].labelled, r[0].accuracy), (0, None));
    assert_eq!(q.join.stats.mismatched_kind, 1);
}
