//! Baselines: the stored, versioned, binned reference distributions.
//!
//! This module owns the baseline file format, building a baseline from
//! reference events, loading and validating baseline files, and the bin
//! layout ([`Layout`]) that windows count into. A baseline stores counts,
//! never raw rows: numeric features keep quantile edges, categorical features
//! keep their top-K vocabulary, hashed features keep only bucket counts.
//!
//! Bin order inside each feature (the order of `counts` in the file, of the
//! window counts, and of `bins` in `replay --format json`):
//!
//! ```text
//! numeric      [underflow, bin_0 .. bin_{k-1}, overflow, missing]   edges e_0 < .. < e_k
//! categorical  [cat_0 .. cat_{K-1}, __other__, missing]             top-K by reference count
//! hashed       [bucket_0 .. bucket_{B-1}, missing]
//! ```
//!
//! Numeric bin i is `[e_i, e_{i+1})`, the last one closed at `e_k`; below
//! `e_0` is underflow, above `e_k` overflow.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::engine::compare::BinLayout;
use crate::engine::decode::{feature_hash, Event, FeatureValue, Prediction};
use crate::engine::time::rfc3339;

/// The file format version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Name of the prediction distribution in reports and metrics.
pub const PREDICTION: &str = "prediction";
/// Name of the confidence distribution in reports and metrics.
pub const CONFIDENCE: &str = "confidence";
/// Label of the catch-all bin for unseen or rare categories.
pub const OTHER: &str = "__other__";
/// Label of the missing bin.
pub const MISSING: &str = "__missing__";

/// How reference data is cut into bins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Binning {
    /// Equal-frequency bins per numeric feature (2 to 64).
    pub numeric_bins: usize,
    /// Categories kept per categorical feature; the rest go to `__other__`.
    pub top_k: usize,
    /// Buckets of a hashed feature.
    pub hash_buckets: usize,
}

impl Default for Binning {
    fn default() -> Self {
        Binning {
            numeric_bins: 10,
            top_k: 50,
            hash_buckets: 64,
        }
    }
}

/// One feature's bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Bins {
    Numeric {
        edges: Vec<f64>,
        /// Reference mean and standard deviation: `wasserstein` is reported
        /// in units of this standard deviation.
        mean: f64,
        std: f64,
    },
    Categorical {
        categories: Vec<String>,
    },
    Hashed {
        buckets: usize,
    },
}

impl Bins {
    /// Number of bins including underflow/overflow/other/missing.
    pub fn len(&self) -> usize {
        match self {
            Bins::Numeric { edges, .. } => edges.len() + 2,
            Bins::Categorical { categories } => categories.len() + 2,
            Bins::Hashed { buckets } => buckets + 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Bins::Numeric { .. } => "numeric",
            Bins::Categorical { .. } => "categorical",
            Bins::Hashed { .. } => "hashed",
        }
    }

    /// Human labels of the bins, in bin order (for reports).
    pub fn labels(&self) -> Vec<serde_json::Value> {
        (0..self.len()).map(|i| self.label(i).into()).collect()
    }

    /// The label of bin `i`: a numeric bin by its edges (`<lo`, `[a,b)`,
    /// the last `[a,b]`, `>hi`), a category by its name (or `__other__`),
    /// a hashed bucket by its number only (`#3`), never a raw value; the
    /// last bin of each is `__missing__`.
    pub fn label(&self, i: usize) -> String {
        match self {
            Bins::Numeric { edges, .. } => {
                let k = edges.len() - 1;
                match i {
                    0 => format!("<{}", edges[0]),
                    i if i <= k => {
                        let close = if i == k { ']' } else { ')' };
                        format!("[{},{}{close}", edges[i - 1], edges[i])
                    }
                    i if i == k + 1 => format!(">{}", edges[k]),
                    _ => MISSING.to_owned(),
                }
            }
            Bins::Categorical { categories } => match categories.get(i) {
                Some(c) => c.clone(),
                None if i == categories.len() => OTHER.to_owned(),
                None => MISSING.to_owned(),
            },
            Bins::Hashed { buckets } if i < *buckets => format!("#{i}"),
            Bins::Hashed { .. } => MISSING.to_owned(),
        }
    }

    /// The label of bin `i` for text that travels further than the API
    /// (alerts, logs, the alert topic): as [`Bins::label`], but a baseline
    /// category by its position (`category #2`), since a category is a
    /// value of the feature.
    pub fn public_label(&self, i: usize) -> String {
        match self {
            Bins::Categorical { categories } if i < categories.len() => format!("category #{i}"),
            _ => self.label(i),
        }
    }
}

/// One feature (or the prediction, or the confidence) in a baseline file.
/// (No `deny_unknown_fields` here: serde cannot combine it with `flatten`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureBaseline {
    pub name: String,
    #[serde(flatten)]
    pub bins: Bins,
    pub counts: Vec<u64>,
    /// The no-drift law of its divergences, simulated at a few window
    /// sizes by `driftd baseline build` (the automatic thresholds read it;
    /// without it they fit it on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null: Option<crate::engine::threshold::NullFit>,
}

/// A baseline file: one model's reference distributions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub schema_version: u32,
    pub model: String,
    /// Shown as `driftd_baseline_info{version}`; checkpoints made against
    /// another version are discarded.
    pub version: String,
    /// RFC 3339.
    pub created_at: String,
    /// Where the reference data came from (a file name, `stdin`, `window`).
    pub source: String,
    /// Reference events counted.
    pub samples: u64,
    pub binning: Binning,
    pub features: Vec<FeatureBaseline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<FeatureBaseline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<FeatureBaseline>,
    /// Stage latencies (milliseconds) from the model's timing lines, named
    /// by stage (`total_latency_ms` ...); compared like numeric features.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<FeatureBaseline>,
    /// The reference's quality and the confidence calibration (built and
    /// read by the engine's quality module); absent in baselines built
    /// before it, and in ones built without labels or confidences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityBaseline>,
}

// ---- What a baseline knows about its model's quality (the engine's
// quality module builds and reads it).

/// Labelled reference predictions a calibration needs; with fewer, raw
/// confidences are used and everything says "uncalibrated".
pub const MIN_CALIBRATION_LABELS: u64 = 200;
/// Pseudo-counts that pull a bin with few labels towards its mean raw
/// confidence, so one unlucky label cannot set a bin to 0 or 1.
pub(crate) const PRIOR_LABELS: f64 = 10.0;

/// What a baseline knows about its model's quality: the reference's
/// realized quality and, per bin of the confidence distribution, the mean
/// confidence and the accuracy of the labelled predictions in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityBaseline {
    /// Reference predictions joined to a label.
    pub labelled: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    /// Per confidence bin (the baseline's, missing bin excluded).
    pub mean_confidence: Vec<f64>,
    #[serde(default)]
    pub bin_labelled: Vec<u64>,
    #[serde(default)]
    pub bin_correct: Vec<u64>,
}

impl QualityBaseline {
    pub fn calibrated(&self) -> bool {
        self.accuracy.is_some() && self.labelled >= MIN_CALIBRATION_LABELS
    }

    /// Each bin's expected accuracy: its labelled accuracy pulled towards
    /// its mean confidence by [`PRIOR_LABELS`] pseudo-counts, or the mean
    /// confidence alone when uncalibrated.
    pub fn bin_accuracy(&self) -> Vec<f64> {
        self.mean_confidence
            .iter()
            .enumerate()
            .map(|(b, &c)| {
                if !self.calibrated() {
                    return c;
                }
                let m = self.bin_labelled.get(b).copied().unwrap_or(0) as f64;
                let k = self.bin_correct.get(b).copied().unwrap_or(0) as f64;
                (k + PRIOR_LABELS * c) / (m + PRIOR_LABELS)
            })
            .collect()
    }

    /// A quality baseline without labels, for a confidence distribution
    /// whose bins are `bins`: each bin's mean confidence taken as its middle.
    pub fn uncalibrated(bins: &Bins) -> Option<QualityBaseline> {
        let Bins::Numeric { edges, .. } = bins else {
            return None;
        };
        let k = edges.len();
        let mut mean = Vec::with_capacity(k + 1);
        let clamp = |x: f64| x.clamp(0.0, 1.0);
        mean.push(clamp(edges[0]) / 2.0);
        for w in edges.windows(2) {
            mean.push((clamp(w[0]) + clamp(w[1])) / 2.0);
        }
        mean.push((clamp(edges[k - 1]) + 1.0) / 2.0);
        Some(QualityBaseline {
            labelled: 0,
            accuracy: None,
            ece: None,
            mae: None,
            rmse: None,
            mean_confidence: mean,
            bin_labelled: Vec::new(),
            bin_correct: Vec::new(),
        })
    }

    /// Problems with the numbers, for baseline validation.
    pub fn validate(&self, confidence: Option<&FeatureBaseline>, problems: &mut Vec<String>) {
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if self.accuracy.is_some_and(|a| !unit(a)) || self.ece.is_some_and(|a| !unit(a)) {
            problems.push("quality: accuracy and ece must be within [0, 1]".into());
        }
        if self.mean_confidence.iter().any(|c| !unit(*c)) {
            problems.push("quality.mean_confidence: every value must be within [0, 1]".into());
        }
        if !self.mean_confidence.is_empty() {
            let bins = confidence.map_or(0, |c| c.bins.len().saturating_sub(1));
            if self.mean_confidence.len() != bins {
                problems.push(format!(
                    "quality.mean_confidence has {} values for {bins} confidence bins; rebuild the baseline",
                    self.mean_confidence.len()
                ));
            }
        }
        let n = self.mean_confidence.len();
        if (!self.bin_labelled.is_empty() && self.bin_labelled.len() != n)
            || self.bin_correct.len() != self.bin_labelled.len()
            || self
                .bin_correct
                .iter()
                .zip(&self.bin_labelled)
                .any(|(k, m)| k > m)
        {
            problems.push(
                "quality: bin_labelled and bin_correct must have one count per confidence bin, correct ≤ labelled".into(),
            );
        }
    }
}

/// What can go wrong with baseline files. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("cannot read baseline {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write baseline {path}: {source} (check that the directory exists and is writable)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("baseline {path} is not valid baseline JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("baseline {path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("baselines {first} and {second} are both for model {model:?}; keep one")]
    Duplicate {
        model: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no baseline could be built: the input had no inference events{}", model.as_ref().map(|m| format!(" for model {m:?}")).unwrap_or_default())]
    Empty { model: Option<String> },
}

impl Baseline {
    /// Checks everything a window relies on; returns every problem found,
    /// each naming the feature.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.schema_version != SCHEMA_VERSION {
            problems.push(format!(
                "schema_version {} is not supported (this driftd reads {SCHEMA_VERSION}); rebuild it with `driftd baseline build`",
                self.schema_version
            ));
        }
        if self.model.is_empty() || self.model.len() > crate::engine::decode::MAX_NAME_LEN {
            problems.push(format!(
                "model {:?} must be 1 to {} bytes",
                self.model,
                crate::engine::decode::MAX_NAME_LEN
            ));
        }
        if self.version.is_empty() {
            problems.push("version is empty".into());
        }
        let mut seen = HashMap::new();
        for f in self.all_features() {
            if seen.insert(f.name.as_str(), ()).is_some() {
                problems.push(format!("feature {:?} appears twice", f.name));
            }
            validate_feature(f, &mut problems);
        }
        if let Some(q) = &self.quality {
            q.validate(self.confidence.as_ref(), &mut problems);
        }
        let mut stages = HashMap::new();
        for f in &self.latency {
            if stages.insert(f.name.as_str(), ()).is_some() {
                problems.push(format!("latency stage {:?} appears twice", f.name));
            }
            if !matches!(f.bins, Bins::Numeric { .. }) {
                problems.push(format!(
                    "latency stage {:?} must have numeric bins, has {}",
                    f.name,
                    f.bins.kind()
                ));
            }
            validate_feature(f, &mut problems);
        }
        problems
    }

    fn all_features(&self) -> impl Iterator<Item = &FeatureBaseline> {
        self.features
            .iter()
            .chain(self.prediction.iter())
            .chain(self.confidence.iter())
            .chain(self.latency.iter())
    }

    /// Reads and validates one baseline file.
    pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
        let text = std::fs::read(path).map_err(|source| BaselineError::Read {
            path: path.to_owned(),
            source,
        })?;
        let b: Baseline = serde_json::from_slice(&text).map_err(|source| BaselineError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let problems = b.validate();
        if !problems.is_empty() {
            return Err(BaselineError::Invalid {
                path: path.to_owned(),
                what: problems.join("; "),
            });
        }
        Ok(b)
    }

    /// Writes the baseline as `<dir>/<model>.json`, atomically (temporary
    /// file, fsync, rename), so a reader never sees half a file.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, BaselineError> {
        let path = dir.join(format!("{}.json", file_stem(&self.model)));
        let werr = |source| BaselineError::Write {
            path: path.clone(),
            source,
        };
        let tmp = dir.join(format!(".{}.json.tmp", file_stem(&self.model)));
        let body = serde_json::to_vec_pretty(self).map_err(|e| werr(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(werr)?;
        f.write_all(&body).map_err(werr)?;
        f.write_all(b"\n").map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(werr)?;
        Ok(path)
    }

    /// Builds a baseline from a window's counts on this baseline's bins
    /// (a capture: "what we see now is the new normal").
    pub fn recapture(
        &self,
        layout: &Layout,
        counts: &[u64],
        samples: u64,
        now_ms: i64,
    ) -> Baseline {
        let mut b = self.clone();
        for (slot, fb) in layout.slots.iter().zip(
            b.features
                .iter_mut()
                .chain(b.prediction.iter_mut())
                .chain(b.confidence.iter_mut()),
        ) {
            fb.counts = counts[slot.offset..slot.offset + slot.len].to_vec();
            // The old counts' law; the engine fits the new ones on first use.
            fb.null = None;
        }
        b.samples = samples;
        b.source = "window".into();
        b.created_at = rfc3339(now_ms);
        b.version = version_of(&b);
        b
    }
}

fn validate_feature(f: &FeatureBaseline, problems: &mut Vec<String>) {
    let name = &f.name;
    if name.is_empty() {
        problems.push("a feature has an empty name".into());
    }
    match &f.bins {
        Bins::Numeric { edges, mean, std } => {
            if edges.len() < 2 {
                problems.push(format!(
                    "feature {name:?}: needs at least 2 edges, has {}",
                    edges.len()
                ));
            }
            if edges.len() > 65 {
                problems.push(format!(
                    "feature {name:?}: {} edges, at most 65 (64 bins)",
                    edges.len()
                ));
            }
            if let Some(bad) = edges.iter().find(|e| !e.is_finite()) {
                problems.push(format!("feature {name:?}: edge {bad} is not finite"));
            } else if let Some(w) = edges.windows(2).find(|w| w[0] >= w[1]) {
                problems.push(format!(
                    "feature {name:?}: edges must be strictly increasing, found {} then {}",
                    w[0], w[1]
                ));
            }
            if !mean.is_finite() || !std.is_finite() || *std < 0.0 {
                problems.push(format!(
                    "feature {name:?}: mean {mean} and std {std} must be finite, std >= 0"
                ));
            }
        }
        Bins::Categorical { categories } => {
            let mut seen = HashMap::new();
            for c in categories {
                if seen.insert(c.as_str(), ()).is_some() {
                    problems.push(format!("feature {name:?}: category {c:?} appears twice"));
                    break;
                }
            }
            if categories.len() > 10_000 {
                problems.push(format!(
                    "feature {name:?}: {} categories, at most 10000",
                    categories.len()
                ));
            }
        }
        Bins::Hashed { buckets } => {
            if !(1..=4096).contains(buckets) {
                problems.push(format!(
                    "feature {name:?}: buckets {buckets} must be 1 to 4096"
                ));
            }
        }
    }
    if f.counts.len() != f.bins.len() {
        problems.push(format!(
            "feature {name:?}: {} counts for {} bins (a {} feature with these bins has {} counts: see the bin order in the docs)",
            f.counts.len(),
            f.bins.len(),
            f.bins.kind(),
            f.bins.len()
        ));
    }
}

/// A file name for a model id: model ids may hold `/` or `..`.
fn file_stem(model: &str) -> String {
    model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

/// Loads every `*.json` baseline in a directory. Returns all the problems at
/// once rather than the first, so one restart fixes them all.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, Baseline)>, Vec<BaselineError>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(source) => {
            return Err(vec![BaselineError::Read {
                path: dir.to_owned(),
                source,
            }])
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    paths.sort();
    let mut out: Vec<(PathBuf, Baseline)> = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match Baseline::load(&p) {
            Ok(b) => {
                if let Some((first, _)) = out.iter().find(|(_, o)| o.model == b.model) {
                    errors.push(BaselineError::Duplicate {
                        model: b.model.clone(),
                        first: first.clone(),
                        second: p,
                    });
                } else {
                    out.push((p, b));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Where a value lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOf {
    Bin(u32),
    /// NaN, infinity, or a value of the wrong type for the feature: counted
    /// as invalid for the feature, never binned.
    Invalid,
}

/// A feature's bins compiled for fast lookup. The category index uses
/// FxHash: it is built once from the baseline and only read with input
/// values, never grown by them, so a fast non-keyed hash is safe here.
#[derive(Debug, Clone)]
pub enum Binner {
    Numeric {
        edges: Box<[f64]>,
    },
    Categorical {
        /// (hash of the category, its bin), sorted by hash: a thousand
        /// models' categories as 12-byte entries instead of a string map
        /// each. Two categories with one 64-bit hash (about 1 in 10^16 for
        /// 50 categories) share the first one's bin.
        index: Box<[(u64, u32)]>,
        k: u32,
    },
    Hashed {
        buckets: u32,
    },
}

impl Binner {
    pub fn new(bins: &Bins) -> Binner {
        match bins {
            Bins::Numeric { edges, .. } => Binner::Numeric {
                edges: edges.clone().into_boxed_slice(),
            },
            Bins::Categorical { categories } => {
                let mut index: Vec<(u64, u32)> = categories
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (feature_hash(c), i as u32))
                    .collect();
                index.sort_unstable();
                index.dedup_by_key(|e| e.0);
                Binner::Categorical {
                    index: index.into_boxed_slice(),
                    k: categories.len() as u32,
                }
            }
            Bins::Hashed { buckets } => Binner::Hashed {
                buckets: *buckets as u32,
            },
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Binner::Numeric { edges } => edges.len() + 2,
            Binner::Categorical { k, .. } => *k as usize + 2,
            Binner::Hashed { buckets } => *buckets as usize + 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn missing(&self) -> u32 {
        self.len() as u32 - 1
    }

    pub fn bin_num(&self, x: f64) -> BinOf {
        if !x.is_finite() {
            return BinOf::Invalid;
        }
        match self {
            Binner::Numeric { edges } => BinOf::Bin(numeric_bin(edges, x)),
            Binner::Categorical { .. } => {
                let s = num_label(x);
                self.bin_str(&s)
            }
            Binner::Hashed { buckets } => {
                BinOf::Bin((num_label_hash(x) % u64::from(*buckets)) as u32)
            }
        }
    }

    pub fn bin_str(&self, s: &str) -> BinOf {
        match self {
            Binner::Numeric { .. } => BinOf::Invalid,
            Binner::Categorical { index, k } => {
                let h = feature_hash(s);
                BinOf::Bin(
                    index
                        .binary_search_by_key(&h, |e| e.0)
                        .map_or(*k, |i| index[i].1),
                )
            }
            Binner::Hashed { buckets } => {
                BinOf::Bin((feature_hash(s) % u64::from(*buckets)) as u32)
            }
        }
    }

    pub fn bin(&self, v: &FeatureValue<'_>) -> BinOf {
        match v {
            FeatureValue::Num(x) => self.bin_num(*x),
            FeatureValue::Cat(s) => self.bin_str(s),
            FeatureValue::Hashed(h) => match self {
                Binner::Hashed { buckets } => BinOf::Bin((h % u64::from(*buckets)) as u32),
                Binner::Categorical { k, .. } => BinOf::Bin(*k),
                Binner::Numeric { .. } => BinOf::Invalid,
            },
            FeatureValue::Missing => BinOf::Bin(self.missing()),
            FeatureValue::NonFinite => BinOf::Invalid,
        }
    }

    pub fn bin_prediction(&self, p: &Prediction<'_>) -> BinOf {
        match p {
            Prediction::Label(s) => self.bin_str(s),
            Prediction::Value(x) => self.bin_num(*x),
        }
    }
}

/// Index into `[underflow, bin_0 .. bin_{k-1}, overflow, missing]`.
fn numeric_bin(edges: &[f64], x: f64) -> u32 {
    let k = edges.len() - 1;
    if x < edges[0] {
        return 0;
    }
    if x > edges[k] {
        return k as u32 + 1;
    }
    // Number of edges e_1..e_k that are <= x is the bin; x == e_k closes the last bin.
    let i = edges[1..].partition_point(|e| *e <= x).min(k - 1);
    i as u32 + 1
}

/// The label a numeric value of a categorical feature is looked up by
/// (`3` and `3.0` both as "3").
fn num_label(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn num_label_hash(x: f64) -> u64 {
    feature_hash(&num_label(x))
}

/// Which distribution a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRole {
    Feature,
    Prediction,
    Confidence,
    /// A latency stage (in the latency layout, see [`Layout::for_latency`]).
    Latency,
}

/// One distribution's place in the flat count array.
#[derive(Debug, Clone)]
pub struct Slot {
    pub name: Arc<str>,
    pub role: SlotRole,
    pub binner: Binner,
    pub offset: usize,
    pub len: usize,
}

/// A baseline compiled for counting: every distribution of a model laid out
/// in one flat array (features, then prediction, then confidence), so a pane
/// is one contiguous row and expiring it is one vector subtraction.
#[derive(Debug)]
pub struct Layout {
    pub baseline: Baseline,
    pub slots: Vec<Slot>,
    pub index: FxHashMap<Box<str>, u32>,
    pub prediction: Option<usize>,
    pub confidence: Option<usize>,
    pub total_bins: usize,
    /// Baseline counts in the same flat order.
    pub baseline_counts: Vec<u64>,
    /// Sum of baseline counts per slot.
    pub baseline_totals: Vec<u64>,
    /// How many named features (not prediction/confidence) there are.
    pub feature_count: usize,
}

impl Layout {
    pub fn new(baseline: Baseline) -> Layout {
        let mut slots = Vec::new();
        let mut offset = 0;
        let mut baseline_counts = Vec::new();
        let mut push = |f: &FeatureBaseline, role| {
            let binner = Binner::new(&f.bins);
            let len = binner.len();
            slots.push(Slot {
                name: f.name.as_str().into(),
                role,
                binner,
                offset,
                len,
            });
            baseline_counts.extend_from_slice(&f.counts);
            offset += len;
        };
        for f in &baseline.features {
            push(f, SlotRole::Feature);
        }
        let feature_count = baseline.features.len();
        let prediction = baseline.prediction.as_ref().map(|f| {
            push(f, SlotRole::Prediction);
            feature_count
        });
        let confidence = baseline.confidence.as_ref().map(|f| {
            push(f, SlotRole::Confidence);
            feature_count + usize::from(prediction.is_some())
        });
        let index = slots[..feature_count]
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_ref().into(), i as u32))
            .collect();
        let baseline_totals = slots
            .iter()
            // Saturating: a hand-edited file can hold counts whose sum
            // overflows u64 (found by cargo fuzz).
            .map(|s| {
                baseline_counts[s.offset..s.offset + s.len]
                    .iter()
                    .fold(0u64, |a, &c| a.saturating_add(c))
            })
            .collect();
        Layout {
            baseline,
            slots,
            index,
            prediction,
            confidence,
            total_bins: offset,
            baseline_counts,
            baseline_totals,
            feature_count,
        }
    }

    /// What this layout and its baseline hold on the heap: names, edges,
    /// categories, counts (twice: the baseline's and the flat copy), null
    /// fits, the binners and the name index. Loaded before start, so the
    /// memory plan counts what is there rather than a bound.
    pub fn heap_bytes(&self) -> usize {
        use crate::engine::memory::alloc_bytes as a;
        let b = &self.baseline;
        let feature = |f: &FeatureBaseline| {
            let bins = match &f.bins {
                Bins::Numeric { edges, .. } => a(edges.capacity() * 8),
                Bins::Categorical { categories } => {
                    a(categories.capacity() * 24)
                        + categories.iter().map(|c| a(c.capacity())).sum::<usize>()
                }
                Bins::Hashed { .. } => 0,
            };
            a(f.name.capacity())
                + a(f.counts.capacity() * 8)
                + bins
                + f.null.as_ref().map_or(0, |n| n.heap_bytes())
        };
        let features = b.features.iter().chain(&b.prediction).chain(&b.confidence);
        let baseline = a(b.features.capacity() * std::mem::size_of::<FeatureBaseline>())
            + features.chain(&b.latency).map(feature).sum::<usize>()
            + a(b.latency.capacity() * std::mem::size_of::<FeatureBaseline>())
            + [&b.model, &b.version, &b.created_at, &b.source]
                .iter()
                .map(|s| a(s.capacity()))
                .sum::<usize>()
            + b.quality.as_ref().map_or(0, |q| {
                a(q.mean_confidence.capacity() * 8)
                    + a(q.bin_labelled.capacity() * 8)
                    + a(q.bin_correct.capacity() * 8)
            });
        let slots = a(self.slots.capacity() * std::mem::size_of::<Slot>())
            + self
                .slots
                .iter()
                .map(|s| {
                    // An `Arc<str>` is its two counts and the bytes.
                    a(s.name.len() + 16)
                        + match &s.binner {
                            Binner::Numeric { edges } => a(edges.len() * 8),
                            Binner::Categorical { index, .. } => a(index.len() * 16),
                            Binner::Hashed { .. } => 0,
                        }
                })
                .sum::<usize>();
        // The index: a hashbrown table of (Box<str>, u32), a control byte
        // each, at most 8/7 full; and each key.
        let index = a(self.index.capacity() * 8 / 7 * (std::mem::size_of::<(Box<str>, u32)>() + 1))
            + self.index.keys().map(|k| a(k.len())).sum::<usize>();
        baseline
            + slots
            + index
            + a(self.baseline_counts.capacity() * 8)
            + a(self.baseline_totals.capacity() * 8)
    }

    /// The comparator's view of a slot's bins.
    pub fn bin_layout(&self, slot: usize) -> BinLayout<'_> {
        let fb = self.feature_baseline(slot);
        match &fb.bins {
            Bins::Numeric { edges, std, .. } => BinLayout::Numeric {
                edges,
                spread: *std,
            },
            Bins::Categorical { .. } => BinLayout::Categorical,
            Bins::Hashed { .. } => BinLayout::Hashed,
        }
    }

    /// The layout of a model's latency stages, counted in a window of their
    /// own (timing lines are not inference records: counting them in the
    /// model's window would fill every feature's missing bin). Slots are
    /// named `latency.<stage>`; events look their stages up by bare name.
    /// (bins, distributions) of the latency window [`Layout::for_latency`]
    /// would make, without making it.
    pub fn latency_shape(b: &Baseline) -> Option<(usize, usize)> {
        if b.latency.is_empty() {
            return None;
        }
        let bins = b.latency.iter().map(|f| Binner::new(&f.bins).len()).sum();
        Some((bins, b.latency.len()))
    }

    pub fn for_latency(b: &Baseline) -> Option<Layout> {
        if b.latency.is_empty() {
            return None;
        }
        let lb = Baseline {
            features: b.latency.clone(),
            prediction: None,
            confidence: None,
            latency: Vec::new(),
            ..b.clone()
        };
        let mut l = Layout::new(lb);
        for s in &mut l.slots {
            s.role = SlotRole::Latency;
            s.name = format!("latency.{}", s.name).into();
        }
        Some(l)
    }

    pub fn feature_baseline(&self, slot: usize) -> &FeatureBaseline {
        match self.slots[slot].role {
            SlotRole::Feature | SlotRole::Latency => &self.baseline.features[slot],
            SlotRole::Prediction => self.baseline.prediction.as_ref().expect("slot exists"),
            SlotRole::Confidence => self.baseline.confidence.as_ref().expect("slot exists"),
        }
    }
}

/// Per-feature accumulation while reading reference data.
#[derive(Debug, Default)]
struct FeatureAcc {
    /// Numeric values: all of them, or (in a bounded builder) a uniform
    /// sample of [`BuildLimits::values`] of `num_seen`.
    values: Vec<f64>,
    num_seen: u64,
    hashed_seen: u64,
    cats: FxHashMap<String, u64>,
    /// Categorical values beyond the distinct-value cap; they land in `__other__`.
    cats_overflow: u64,
    hashed: Vec<u64>,
    missing: u64,
    invalid: u64,
    seen_events: u64,
}

/// Distinct categorical values tracked per feature while building; beyond it
/// values count as `__other__` (bounded memory on hostile input).
const MAX_DISTINCT_WHILE_BUILDING: usize = 100_000;
/// Features tracked per model while building.
pub const MAX_BUILD_FEATURES: usize = 1024;

/// Keeps `x` in a uniform sample of at most `cap` of the `seen` values so
/// far (Vitter's algorithm R); `cap` of `usize::MAX` keeps everything.
fn sample<T>(v: &mut Vec<T>, x: T, seen: &mut u64, cap: usize, rng: &mut SmallRng) {
    *seen += 1;
    if v.len() < cap {
        v.push(x);
    } else {
        let j = rng.random_range(0..*seen);
        if (j as usize) < cap {
            v[j as usize] = x;
        }
    }
}

impl FeatureAcc {
    fn add(&mut self, v: &FeatureValue<'_>, l: &BuildLimits, rng: &mut SmallRng) {
        self.seen_events += 1;
        match v {
            FeatureValue::Num(x) => sample(&mut self.values, *x, &mut self.num_seen, l.values, rng),
            FeatureValue::Cat(s) => self.add_cat(s, l),
            FeatureValue::Hashed(h) => {
                sample(&mut self.hashed, *h, &mut self.hashed_seen, l.values, rng)
            }
            FeatureValue::Missing => self.missing += 1,
            FeatureValue::NonFinite => self.invalid += 1,
        }
    }

    fn add_cat(&mut self, s: &str, l: &BuildLimits) {
        self.add_cat_n(s, 1, l);
    }

    fn add_cat_n(&mut self, s: &str, n: u64, l: &BuildLimits) {
        if let Some(c) = self.cats.get_mut(s) {
            *c += n;
        } else if self.cats.len() < l.distinct {
            self.cats.insert(s.to_owned(), n);
        } else {
            self.cats_overflow += n;
        }
    }

    fn finish(mut self, name: &str, events: u64, binning: &Binning) -> FeatureBaseline {
        // Events that lacked the feature count as missing.
        let missing = self.missing + events.saturating_sub(self.seen_events);
        let n_cat: u64 = self.cats.values().sum::<u64>() + self.cats_overflow;
        let bins = if !self.hashed.is_empty() && self.hashed.len() as u64 >= n_cat {
            Bins::Hashed {
                buckets: binning.hash_buckets,
            }
        } else if self.values.len() as u64 >= n_cat && !self.values.is_empty() {
            numeric_bins(&mut self.values, binning.numeric_bins)
        } else {
            let mut cats: Vec<(&String, &u64)> = self.cats.iter().collect();
            // Most frequent first; ties by name so builds are reproducible.
            cats.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            Bins::Categorical {
                categories: cats
                    .iter()
                    .take(binning.top_k)
                    .map(|(c, _)| (*c).clone())
                    .collect(),
            }
        };
        let binner = Binner::new(&bins);
        let mut counts = vec![0u64; binner.len()];
        let miss = binner.missing() as usize;
        counts[miss] += missing;
        let mut sampled = vec![0u64; counts.len()];
        for x in &self.values {
            if let BinOf::Bin(b) = binner.bin_num(*x) {
                sampled[b as usize] += 1;
            }
        }
        for h in &self.hashed {
            if let BinOf::Bin(b) = binner.bin(&FeatureValue::Hashed(*h)) {
                sampled[b as usize] += 1;
            }
        }
        // A sample stands for every value seen: scale it back up, keeping
        // the exact total.
        let seen = self.num_seen + self.hashed_seen;
        for (c, s) in counts.iter_mut().zip(scale(&sampled, seen)) {
            *c += s;
        }
        for (c, n) in &self.cats {
            if let BinOf::Bin(b) = binner.bin_str(c) {
                counts[b as usize] += n;
            }
        }
        if let Binner::Categorical { k, .. } = &binner {
            counts[*k as usize] += self.cats_overflow;
        }
        FeatureBaseline {
            name: name.to_owned(),
            bins,
            counts,
            null: None,
        }
    }
}

/// `counts` scaled to sum to `total` (largest remainders first), or as they
/// are when they already do (nothing was sampled).
fn scale(counts: &[u64], total: u64) -> Vec<u64> {
    let sum: u64 = counts.iter().sum();
    if sum == 0 || sum == total {
        return counts.to_vec();
    }
    let f = total as f64 / sum as f64;
    let mut out: Vec<u64> = counts
        .iter()
        .map(|c| (*c as f64 * f).floor() as u64)
        .collect();
    let mut rest: Vec<(f64, usize)> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| (*c as f64 * f - out[i] as f64, i))
        .collect();
    rest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let missing = total.saturating_sub(out.iter().sum());
    for (_, i) in rest.into_iter().take(missing as usize) {
        out[i] += 1;
    }
    out
}

/// Equal-frequency edges at the reference quantiles, duplicates merged.
fn numeric_bins(values: &mut [f64], bins: usize) -> Bins {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
    let ranks = edge_ranks(n, bins);
    select_ranks(values, &ranks, 0);
    let mut edges: Vec<f64> = Vec::with_capacity(bins + 1);
    for &r in &ranks {
        let e = values[r];
        if edges.last().is_none_or(|l| e > *l) {
            edges.push(e);
        }
    }
    if edges.len() < 2 {
        // A constant feature: one narrow bin around the value, so anything
        // else shows up as underflow or overflow.
        let v = edges[0];
        let eps = (v.abs() * 1e-9).max(1e-9);
        edges = vec![v, v + eps];
    }
    Bins::Numeric {
        edges,
        mean,
        std: var.sqrt(),
    }
}

/// The ranks (in sorted order, distinct, ascending) of the `bins + 1`
/// edges of `n > 0` values: nearest-rank quantiles, so an edge is always an
/// observed value.
fn edge_ranks(n: usize, bins: usize) -> Vec<usize> {
    let mut ranks: Vec<usize> = (0..=bins)
        .map(|i| (((i as f64 / bins as f64) * (n - 1) as f64).round() as usize).min(n - 1))
        .collect();
    ranks.dedup();
    ranks
}

/// Puts the order statistics at `ranks` (ascending, distinct, counted from
/// `offset`, where `values` starts) where a sort would put them: the
/// median rank by selection, then each side. O(n log ranks), against
/// O(n log n) for sorting a reference's values only to read ten of them.
fn select_ranks(values: &mut [f64], ranks: &[usize], offset: usize) {
    let Some(&r) = ranks.get(ranks.len() / 2) else {
        return;
    };
    let mid = ranks.len() / 2;
    values.select_nth_unstable_by(r - offset, f64::total_cmp);
    let (left, right) = values.split_at_mut(r - offset);
    select_ranks(left, &ranks[..mid], offset);
    // `right` starts with rank `r` itself, in place.
    select_ranks(&mut right[1..], &ranks[mid + 1..], r + 1);
}

/// Accumulates one model's reference events into a baseline.
#[derive(Debug)]
pub struct BaselineBuilder {
    model: String,
    events: u64,
    features: Vec<(String, FeatureAcc)>,
    index: FxHashMap<String, usize>,
    prediction: FeatureAcc,
    confidence: FeatureAcc,
    /// Timing lines (or inference lines with stages) seen.
    latency_events: u64,
    /// Class counts of batch-statistics lines, used only for a model that
    /// logs no inference records (else they would count its predictions
    /// twice).
    batch_prediction: FeatureAcc,
    batch_events: u64,
    latency: Vec<(String, FeatureAcc)>,
    /// Features beyond [`BuildLimits::features`], ignored.
    pub dropped_features: u64,
    limits: BuildLimits,
    rng: SmallRng,
}

/// What a builder keeps. A build from files (`driftd baseline build`) keeps
/// everything; one inside the daemon (an automatic baseline) keeps a sample,
/// so its memory is known before start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildLimits {
    /// Numeric (and hashed) values kept per feature: a uniform sample.
    pub values: usize,
    /// Distinct categories per feature; the rest count as `__other__`.
    pub distinct: usize,
    /// Features per model; more are ignored (counted).
    pub features: usize,
}

impl BuildLimits {
    /// Everything, within what hostile input may not exceed.
    pub const UNBOUNDED: BuildLimits = BuildLimits {
        values: usize::MAX,
        distinct: MAX_DISTINCT_WHILE_BUILDING,
        features: MAX_BUILD_FEATURES,
    };

    /// An automatic baseline's: 4,096 values per feature put 10 to 64
    /// equal-frequency edges within about 1% of the quantiles they stand
    /// for; four times `top_k` categories find the top k.
    pub fn sampled(max_features: usize, binning: &Binning) -> BuildLimits {
        BuildLimits {
            values: 4096,
            distinct: (4 * binning.top_k).max(16),
            features: max_features.min(MAX_BUILD_FEATURES),
        }
    }

    /// The most one accumulator (a feature, the prediction, the
    /// confidence, the batch classes or a latency stage) takes on the heap
    /// under these limits: a numeric and a hashed sample and the categories,
    /// with names of up to 256 bytes.
    pub fn accumulator_bytes(&self) -> usize {
        let per_cat = 2 * (std::mem::size_of::<(String, u64)>() + 1) + 256;
        2 * self.values.min(1 << 20) * 8 + self.distinct * per_cat + 256 + 512
    }
}

/// Latency stages kept per model while building.
const MAX_STAGES_WHILE_BUILDING: usize = 32;

impl BaselineBuilder {
    /// A builder that keeps everything (reference files).
    pub fn new(model: &str) -> BaselineBuilder {
        BaselineBuilder::with_limits(model, BuildLimits::UNBOUNDED)
    }

    /// A builder that keeps within `limits`; its samples are drawn with a
    /// seed of the model name, so the same stream builds the same baseline.
    pub fn with_limits(model: &str, limits: BuildLimits) -> BaselineBuilder {
        BaselineBuilder {
            limits,
            rng: SmallRng::seed_from_u64(xxhash_rust::xxh3::xxh3_64(model.as_bytes())),
            model: model.to_owned(),
            events: 0,
            features: Vec::new(),
            index: FxHashMap::default(),
            prediction: FeatureAcc::default(),
            confidence: FeatureAcc::default(),
            latency_events: 0,
            batch_prediction: FeatureAcc::default(),
            batch_events: 0,
            latency: Vec::new(),
            dropped_features: 0,
        }
    }

    /// Inference records, or batch-counted predictions of a batch-only
    /// model: whether there is anything to build from.
    pub fn has_data(&self) -> bool {
        self.events > 0 || self.batch_events > 0
    }

    /// Adds a batch-statistics line's class counts.
    pub fn add_class_counts(&mut self, counts: &[(std::borrow::Cow<'_, str>, u64)]) {
        for (label, n) in counts {
            // Bounded like the window: a batch stands for at most 2^32 events.
            let n = (*n).min(u64::from(u32::MAX));
            self.batch_prediction.seen_events += n;
            self.batch_prediction.add_cat_n(label, n, &self.limits);
            self.batch_events = self.batch_events.saturating_add(n);
        }
    }

    /// Adds one line's stage latencies (a timing line, or an inference line
    /// that carries them).
    pub fn add_stages(&mut self, stages: &[(std::borrow::Cow<'_, str>, f64)]) {
        if stages.is_empty() {
            return;
        }
        self.latency_events += 1;
        for (name, ms) in stages {
            let i = match self.latency.iter().position(|(n, _)| n == name) {
                Some(i) => i,
                // Stages per line are capped by the decoder; this caps the
                // union over a hostile file.
                None if self.latency.len() < MAX_STAGES_WHILE_BUILDING => {
                    self.latency.push((name.to_string(), FeatureAcc::default()));
                    self.latency.len() - 1
                }
                None => continue,
            };
            self.latency[i]
                .1
                .add(&FeatureValue::Num(*ms), &self.limits, &mut self.rng);
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Accumulators held: one per feature and latency stage, and the
    /// prediction, confidence and batch classes. A bounded builder's memory
    /// is at most this many [`BuildLimits::accumulator_bytes`].
    pub fn accumulators(&self) -> usize {
        self.features.len() + self.latency.len() + 3
    }

    pub fn add(&mut self, ev: &Event<'_>) {
        self.events += 1;
        for (name, v) in &ev.features {
            let i = match self.index.get(name.as_ref()) {
                Some(i) => *i,
                None if self.features.len() < self.limits.features => {
                    self.features
                        .push((name.to_string(), FeatureAcc::default()));
                    self.index.insert(name.to_string(), self.features.len() - 1);
                    self.features.len() - 1
                }
                None => {
                    self.dropped_features += 1;
                    continue;
                }
            };
            self.features[i].1.add(v, &self.limits, &mut self.rng);
        }
        match &ev.prediction {
            Some(Prediction::Label(l)) => {
                self.prediction.seen_events += 1;
                self.prediction.add_cat(l, &self.limits);
            }
            Some(Prediction::Value(x)) => {
                self.prediction
                    .add(&FeatureValue::Num(*x), &self.limits, &mut self.rng)
            }
            None => {}
        }
        if let Some(c) = ev.confidence {
            self.confidence
                .add(&FeatureValue::Num(c), &self.limits, &mut self.rng);
        }
        self.add_stages(&ev.stages);
    }

    /// The finished baseline; `now_ms` stamps it.
    pub fn finish(
        mut self,
        binning: &Binning,
        source: &str,
        now_ms: i64,
    ) -> Result<Baseline, BaselineError> {
        if self.events == 0 && self.batch_events > 0 {
            // A batch-only model: its predicted classes are all there is.
            let (events, acc) = (self.batch_events, self.batch_prediction);
            self.events = events;
            self.prediction = acc;
        }
        if self.events == 0 {
            return Err(BaselineError::Empty {
                model: Some(self.model),
            });
        }
        let events = self.events;
        let mut features: Vec<FeatureBaseline> = self
            .features
            .into_iter()
            .map(|(name, acc)| acc.finish(&name, events, binning))
            .collect();
        // Sorted by name: files diff cleanly and layouts are stable.
        features.sort_by(|a, b| a.name.cmp(&b.name));
        let has_pred = self.prediction.seen_events > 0;
        let has_conf = self.confidence.seen_events > 0;
        let prediction = has_pred.then(|| self.prediction.finish(PREDICTION, events, binning));
        let confidence = has_conf.then(|| self.confidence.finish(CONFIDENCE, events, binning));
        let latency_events = self.latency_events;
        let mut latency: Vec<FeatureBaseline> = self
            .latency
            .into_iter()
            .map(|(name, acc)| acc.finish(&name, latency_events, binning))
            .collect();
        latency.sort_by(|a, b| a.name.cmp(&b.name));
        let mut b = Baseline {
            schema_version: SCHEMA_VERSION,
            model: self.model,
            version: String::new(),
            created_at: rfc3339(now_ms),
            source: source.to_owned(),
            samples: events,
            binning: *binning,
            features,
            prediction,
            // Set by the caller that joined the reference's labels
            // (`driftd baseline build`).
            quality: None,
            confidence,
            latency,
        };
        b.version = version_of(&b);
        Ok(b)
    }
}

/// A content version: creation date plus a hash of the bins and counts, so
/// two different baselines never share a version.
fn version_of(b: &Baseline) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in b.all_features() {
        h.update(f.name.as_bytes());
        h.update(
            serde_json::to_string(&f.bins)
                .unwrap_or_default()
                .as_bytes(),
        );
        for c in &f.counts {
            h.update(&c.to_le_bytes());
        }
    }
    let date: String = b
        .created_at
        .chars()
        .filter(char::is_ascii_digit)
        .take(8)
        .collect();
    format!("{date}-{:08x}", h.digest() as u32)
}

impl fmt::Display for Bins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bins)", self.kind(), self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decode::{Decoded, Decoder};

    fn build(lines: &[String]) -> Baseline {
        let d = Decoder::new(Default::default());
        let mut b = BaselineBuilder::new("m");
        for l in lines {
            if let Decoded::Event(e) = d.decode(l.as_bytes()) {
                b.add(&e);
            }
        }
        b.finish(&Binning::default(), "test", 0).unwrap()
    }

    fn lines(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let country = ["DE", "FR", "US"][i % 3];
                format!(
                    r#"{{"model_id":"m","prediction":"{}","confidence":{},"input_features":{{"x":{},"c":"{country}","k":7}}}}"#,
                    if i % 4 == 0 { "a" } else { "b" },
                    0.5 + (i % 50) as f64 / 100.0,
                    i
                )
            })
            .collect()
    }

    proptest::proptest! {
        /// The selected order statistics are the sorted values at those
        /// ranks, with ties, NaNs and infinities among them.
        #[test]
        fn selected_ranks_are_the_sorted_values(
            mut values in proptest::collection::vec(
                proptest::prop_oneof![
                    -1e6..1e6f64,
                    proptest::strategy::Strategy::prop_map(0..5i32, f64::from),
                    proptest::prop_oneof![proptest::strategy::Just(f64::NAN), proptest::strategy::Just(f64::INFINITY)],
                ],
                1..300,
            ),
            bins in 1usize..40,
        ) {
            let n = values.len();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let ranks = edge_ranks(n, bins);
            select_ranks(&mut values, &ranks, 0);
            for &r in &ranks {
                proptest::prop_assert_eq!(values[r].to_bits(), sorted[r].to_bits(), "rank {}", r);
            }
        }
    }

    #[test]
    fn numeric_bins_split_at_quantiles_with_all_counts_kept() {
        let b = build(&lines(1000));
        let x = b.features.iter().find(|f| f.name == "x").unwrap();
        let Bins::Numeric { edges, mean, .. } = &x.bins else {
            panic!()
        };
        assert_eq!(edges.len(), 11);
        assert_eq!(edges[0], 0.0);
        assert_eq!(edges[10], 999.0);
        assert!((mean - 499.5).abs() < 1e-9);
        // Equal frequency: every interior bin holds about a tenth.
        for c in &x.counts[1..11] {
            assert!((90..=110).contains(c), "{:?}", x.counts);
        }
        assert_eq!(x.counts[0], 0, "no underflow in the reference itself");
        assert_eq!(x.counts.iter().sum::<u64>(), 1000);
    }

    #[test]
    fn constant_feature_gets_one_narrow_bin() {
        let b = build(&lines(100));
        let k = b.features.iter().find(|f| f.name == "k").unwrap();
        let Bins::Numeric { edges, .. } = &k.bins else {
            panic!()
        };
        assert_eq!(edges.len(), 2);
        let binner = Binner::new(&k.bins);
        assert_eq!(binner.bin_num(7.0), BinOf::Bin(1));
        assert_eq!(binner.bin_num(8.0), BinOf::Bin(2));
        assert_eq!(binner.bin_num(6.0), BinOf::Bin(0));
        assert_eq!(k.counts, vec![0, 100, 0, 0]);
    }

    #[test]
    fn counts_whose_sum_overflows_load_without_panicking() {
        // Found by cargo fuzz: summing the counts overflowed u64.
        let text = r#"{"schema_version":1,"model":"m","version":"v","created_at":"","source":"","samples":0,"binning":{"numeric_bins":2,"top_k":2,"hash_buckets":2},"features":[{"name":"x","kind":"hashed","buckets":1,"counts":[18446744073709551615,1]}]}"#;
        let b: Baseline = serde_json::from_str(text).unwrap();
        let layout = Layout::new(b);
        assert_eq!(layout.baseline_totals, vec![u64::MAX]);
    }

    #[test]
    fn categorical_top_k_and_prediction_classes() {
        let b = build(&lines(300));
        let c = b.features.iter().find(|f| f.name == "c").unwrap();
        assert_eq!(
            c.bins,
            Bins::Categorical {
                categories: vec!["DE".into(), "FR".into(), "US".into()]
            }
        );
        assert_eq!(c.counts, vec![100, 100, 100, 0, 0]);
        let p = b.prediction.as_ref().unwrap();
        assert_eq!(
            p.bins,
            Bins::Categorical {
                categories: vec!["b".into(), "a".into()]
            }
        );
        assert_eq!(p.counts, vec![225, 75, 0, 0]);
        assert!(b.confidence.is_some());
        assert!(b.validate().is_empty());
    }

    #[test]
    fn numeric_binning_edges() {
        let edges = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(numeric_bin(&edges, -0.1), 0);
        assert_eq!(numeric_bin(&edges, 0.0), 1);
        assert_eq!(numeric_bin(&edges, 0.99), 1);
        assert_eq!(numeric_bin(&edges, 1.0), 2);
        assert_eq!(numeric_bin(&edges, 3.0), 3);
        assert_eq!(numeric_bin(&edges, 3.01), 4);
    }

    #[test]
    fn save_load_round_trip_and_validation_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(&lines(100));
        let path = b.save(dir.path()).unwrap();
        assert_eq!(Baseline::load(&path).unwrap(), b);

        let mut bad = b.clone();
        if let Bins::Numeric { edges, .. } = &mut bad.features[2].bins {
            edges[1] = edges[0];
        }
        bad.features[0].counts.pop();
        let problems = bad.validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("strictly increasing")));
        assert!(problems.iter().any(|p| p.contains("counts for")));

        std::fs::write(dir.path().join("broken.json"), b"{\"schema_version\": 1").unwrap();
        let errs = load_dir(dir.path()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("broken.json"), "{}", errs[0]);
    }

    #[test]
    fn file_names_are_safe_for_any_model_id() {
        assert_eq!(file_stem("../etc/passwd"), "_etc_passwd");
        assert_eq!(file_stem("fraud-v1.2"), "fraud-v1.2");
    }

    #[test]
    fn hashed_values_land_in_stable_buckets() {
        let binner = Binner::new(&Bins::Hashed { buckets: 8 });
        let a = binner.bin_str("alice@example.com");
        assert_eq!(
            a,
            binner.bin(&FeatureValue::Hashed(feature_hash("alice@example.com")))
        );
        assert_eq!(binner.bin(&FeatureValue::Missing), BinOf::Bin(8));
    }
}
