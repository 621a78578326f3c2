//! Offline replay: a log file through the engine in event time, as if live.
//!
//! This module owns reading JSON lines from a file or stdin and decoding
//! them on every core (in chunks, handed on in input order, so the result
//! is one thread's), driving the engine's clock from the events themselves
//! (evaluating every `every` of event time), and rendering the result as a
//! table or as the JSON report that operators and scripts read. The same
//! code builds baselines (`driftd baseline build`), since both are "read a
//! log, count by model", and simulates their null laws on every core.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::baseline::{Baseline, BaselineBuilder, BaselineError, Binning};
use crate::engine::compare::CompareOptions;
use crate::engine::decode::{
    feature_hash, Decoded, Decoder, EventTime, Prediction, RecordKind, Reject,
};
use crate::engine::detect::{State, Transition};
use crate::engine::quality::{CalibrationBuilder, LabelJoin, Pred};
use crate::engine::time::rfc3339;
use crate::engine::{Engine, EngineStats, ModelReport, Report};
use serde::Serialize;

/// Where lines come from, for messages.
#[derive(Debug, Clone)]
pub enum Input {
    File(PathBuf),
    Stdin,
}

impl Input {
    pub fn parse(s: &str) -> Input {
        if s == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(s))
        }
    }

    pub fn name(&self) -> String {
        match self {
            Input::File(p) => p.display().to_string(),
            Input::Stdin => "stdin".into(),
        }
    }

    /// Opens the input; the size is known for files (progress bars).
    pub fn open(&self) -> Result<(Box<dyn BufRead + Send>, Option<u64>), ReplayError> {
        match self {
            Input::Stdin => Ok((
                Box::new(io::BufReader::with_capacity(1 << 20, io::stdin())),
                None,
            )),
            Input::File(p) => {
                let f = std::fs::File::open(p).map_err(|source| ReplayError::Open {
                    path: p.clone(),
                    source,
                })?;
                let size = f.metadata().ok().map(|m| m.len());
                Ok((Box::new(io::BufReader::with_capacity(1 << 20, f)), size))
            }
        }
    }
}

/// What can stop a replay or a baseline build.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot open {path}: {source} (check the path given to --input)")]
    Open { path: PathBuf, source: io::Error },
    #[error("{input}: read error after line {line}: {source}")]
    Read {
        input: String,
        line: u64,
        source: io::Error,
    },
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    #[error("{input}: no line was an inference record for model {model:?} (models seen: {seen})")]
    NoSuchModel {
        input: String,
        model: String,
        seen: String,
    },
}

/// The first line of each rejection reason, so the user can look at it.
#[derive(Debug, Default, Clone)]
pub struct FirstBad(pub BTreeMap<&'static str, u64>);

impl FirstBad {
    fn note(&mut self, r: Reject, line: u64) {
        self.0.entry(r.as_str()).or_insert(line);
    }

    /// `file:57: malformed_json (12 lines)` per reason.
    pub fn describe(&self, input: &str, stats: &crate::engine::decode::DecodeStats) -> Vec<String> {
        Reject::ALL
            .iter()
            .filter_map(|r| {
                let n = stats.rejected[*r as usize];
                let first = self.0.get(r.as_str())?;
                Some(format!(
                    "{input}:{first}: {} ({n} line{} like this skipped)",
                    r.as_str(),
                    if n == 1 { "" } else { "s" }
                ))
            })
            .collect()
    }
}

/// A line as read, without its `\n` or `\r\n`; `None` when blank (blank
/// lines are counted, never decoded).
fn content(read: &[u8]) -> Option<&[u8]> {
    let line = read.strip_suffix(b"\n").unwrap_or(read);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
}

/// Reads lines into `f`, reusing one buffer. Invalid UTF-8 is passed on as
/// bytes (the decoder rejects it with a reason).
pub fn for_each_line(
    input: &Input,
    reader: &mut dyn BufRead,
    mut f: impl FnMut(u64, &[u8], usize),
) -> Result<u64, ReplayError> {
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| ReplayError::Read {
                input: input.name(),
                line: n,
                source,
            })?;
        if read == 0 {
            return Ok(n);
        }
        n += 1;
        if let Some(line) = content(&buf) {
            f(n, line, read);
        }
    }
}

/// Bytes of whole lines read at once: one chunk is decoded while the
/// engine takes the one before it.
const CHUNK_BYTES: usize = 4 << 20;
/// Lines a thread decodes per grab, small enough that the two threads
/// finish a chunk together.
const PART_LINES: usize = 64;

/// The input being read in chunks: the lines counted so far, and the
/// start of a line that the last chunk's read cut off.
struct Source<'a> {
    input: &'a Input,
    reader: &'a mut (dyn BufRead + Send),
    lines: u64,
    carry: Vec<u8>,
}

/// Whole lines read from the input, with where each one is.
#[derive(Default)]
struct Chunk {
    data: Vec<u8>,
    /// (start, end, line number, bytes read including the newline).
    lines: Vec<(usize, usize, u64, usize)>,
}

impl Chunk {
    /// Reads whole lines until [`CHUNK_BYTES`] or the end of the input
    /// (then it stays empty), counting them in `src.lines`. Lines are
    /// trimmed and blank ones dropped by [`content`], as in
    /// [`for_each_line`]. The input is read in blocks of the chunk's size
    /// (straight into it: a `BufReader` passes reads larger than its
    /// buffer through) and split with `memchr`, not a line at a time; the
    /// cut-off end of the last line waits in `src.carry`. A line longer
    /// than a chunk makes the chunk longer.
    fn fill(&mut self, src: &mut Source<'_>) -> Result<(), ReplayError> {
        self.lines.clear();
        // A chunk of blank lines only is read past: an empty chunk means
        // the end of the input.
        loop {
            self.data.clear();
            self.data.append(&mut src.carry);
            let eof = self.read_block(src)?;
            let mut start = 0;
            let end = self.data.len();
            let ends = memchr::memchr_iter(b'\n', &self.data).map(|i| i + 1);
            let last = (end > 0 && self.data[end - 1] != b'\n').then_some(end);
            for stop in ends.chain(last) {
                src.lines += 1;
                if let Some(line) = content(&self.data[start..stop]) {
                    self.lines
                        .push((start, start + line.len(), src.lines, stop - start));
                }
                start = stop;
            }
            if eof || !self.lines.is_empty() {
                return Ok(());
            }
        }
    }

    /// Reads at least [`CHUNK_BYTES`] (or to the end of the input) and up
    /// to a newline into `data`, moving what follows the last newline to
    /// `src.carry`. Returns whether the input ended.
    fn read_block(&mut self, src: &mut Source<'_>) -> Result<bool, ReplayError> {
        use std::io::Read;
        loop {
            let before = self.data.len();
            let want = CHUNK_BYTES.saturating_sub(before).max(1 << 16);
            // Room first, so `read_to_end` reads in large blocks.
            self.data.reserve(want);
            let got = (&mut *src.reader)
                .take(want as u64)
                .read_to_end(&mut self.data)
                .map_err(|source| ReplayError::Read {
                    input: src.input.name(),
                    line: src.lines,
                    source,
                })?;
            if got < want {
                // The end: its last line may lack a newline.
                return Ok(true);
            }
            // The chunk is full. What came before this read held no
            // newline (the carry never does), so only the new part is
            // searched, and a giant line costs a linear scan.
            if let Some(i) = memchr::memrchr(b'\n', &self.data[before..]) {
                let cut = before + i + 1;
                src.carry.extend_from_slice(&self.data[cut..]);
                self.data.truncate(cut);
                return Ok(false);
            }
        }
    }

    fn line(&self, i: usize) -> &[u8] {
        let (start, end, ..) = self.lines[i];
        &self.data[start..end]
    }
}

/// Decodes parts of `chunk` until none is left, with the part's index.
fn decode_parts<'a>(
    decoder: &Decoder,
    chunk: &'a Chunk,
    next: &AtomicUsize,
) -> Vec<(usize, Vec<Decoded<'a>>)> {
    let mut out = Vec::new();
    loop {
        let p = next.fetch_add(1, Ordering::Relaxed);
        let lo = p * PART_LINES;
        if lo >= chunk.lines.len() {
            return out;
        }
        let hi = (lo + PART_LINES).min(chunk.lines.len());
        out.push((p, (lo..hi).map(|i| decoder.decode(chunk.line(i))).collect()));
    }
}

/// Lines decoded, with the chunk they borrow from: the parts in order,
/// each marked with whether the calling thread decoded it. (Not one
/// vector: a chunk's lines decoded are megabytes, which glibc maps and
/// unmaps at every chunk.)
type Ready<'c> = (&'c Chunk, Vec<(bool, Vec<Decoded<'c>>)>);

/// One step of the pipeline. This thread hands `cur`'s decoded lines to
/// `f` in order while another reads `next` from the input; then every
/// thread decodes parts of `next`. Reading overlaps the engine's work,
/// and the parts even out what each thread does. Returns `next`, read and
/// decoded, in order.
///
/// The parts this thread did not decode are freed by the next stage's
/// reader thread, not on the engine's: glibc gives a new thread the arena
/// of one that exited, so with two threads a part is freed in the arena
/// that allocated it. Freed on the engine's thread, the arenas' lock was
/// contended on every line, and two threads ran slower than one.
fn stage<'n>(
    decoder: &Decoder,
    threads: usize,
    cur: Option<Ready<'_>>,
    next: &'n mut Chunk,
    src: &mut Source<'_>,
    f: &mut dyn FnMut(u64, usize, &Decoded<'_>),
) -> Result<Ready<'n>, ReplayError> {
    let sorted = |mut parts: Vec<(usize, bool, Vec<Decoded<'n>>)>| {
        parts.sort_unstable_by_key(|(p, ..)| *p);
        parts.into_iter().map(|(_, mine, d)| (mine, d)).collect()
    };
    if threads <= 1 {
        // `cur` first, as with more threads: a read error comes after it.
        drop(feed(cur, f));
        next.fill(src)?;
        let next: &'n Chunk = next;
        let parts = decode_parts(decoder, next, &AtomicUsize::new(0));
        return Ok((
            next,
            sorted(parts.into_iter().map(|(p, d)| (p, true, d)).collect()),
        ));
    }
    let counter = AtomicUsize::new(0);
    let (tx, rx): (Vec<_>, Vec<_>) = (1..threads).map(|_| std::sync::mpsc::channel()).unzip();
    let (to_free, freed) = std::sync::mpsc::channel();
    let (filled, parts) = std::thread::scope(|s| {
        // Owned by the scope's closure, so a panic in `f` drops it and the
        // reader thread's `recv` returns instead of waiting forever.
        let to_free = to_free;
        let counter = &counter;
        let reader_thread = s.spawn(move || {
            let read = next.fill(src);
            let next: &'n Chunk = next;
            let parts = match read {
                // Dropping the senders tells the others there is nothing.
                Err(_) => Vec::new(),
                Ok(()) => {
                    for t in &tx {
                        let _ = t.send(next);
                    }
                    drop(tx);
                    decode_parts(decoder, next, counter)
                }
            };
            drop(freed.recv());
            (read.map(|_| next), parts)
        });
        let mut rx = rx.into_iter();
        let mine = rx.next();
        let helpers: Vec<_> = rx
            .map(|r| {
                s.spawn(move || {
                    r.recv()
                        .map_or_else(|_| Vec::new(), |c| decode_parts(decoder, c, counter))
                })
            })
            .collect();
        let _ = to_free.send(feed(cur, f));
        let mut parts: Vec<_> = match mine.map(|r| r.recv()) {
            Some(Ok(c)) => decode_parts(decoder, c, counter),
            _ => Vec::new(),
        }
        .into_iter()
        .map(|(p, d)| (p, true, d))
        .collect();
        for h in helpers {
            parts.extend(joined(h).into_iter().map(|(p, d)| (p, false, d)));
        }
        let (filled, theirs) = joined(reader_thread);
        parts.extend(theirs.into_iter().map(|(p, d)| (p, false, d)));
        (filled, parts)
    });
    Ok((filled?, sorted(parts)))
}

/// Hands `cur`'s lines to `f` in order, frees the parts this thread
/// decoded, and returns the others' (see [`stage`]).
fn feed<'c>(
    cur: Option<Ready<'c>>,
    f: &mut dyn FnMut(u64, usize, &Decoded<'_>),
) -> Vec<Vec<Decoded<'c>>> {
    let Some((chunk, parts)) = cur else {
        return Vec::new();
    };
    let mut lines = chunk.lines.iter();
    let mut theirs = Vec::new();
    for (mine, part) in parts {
        for (d, &(_, _, n, read)) in part.iter().zip(lines.by_ref()) {
            f(n, read, d);
        }
        if !mine {
            theirs.push(part);
        }
    }
    theirs
}

/// A scoped thread's result. Reading and decoding do not panic on any
/// input (the fuzz targets hold the decoder to that); a panic is a bug,
/// and is passed on.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Reads and decodes every line of `reader` on `threads` threads and hands
/// each one to `f` (line number, bytes read, decoded line) in input order,
/// on the calling thread: whatever `f` builds is what one thread would
/// have built. Returns the lines read. On a read error, the lines of the
/// chunk being read (up to 4 MB) are not handed on: the error ends the
/// replay or build anyway.
pub fn for_each_decoded(
    input: &Input,
    reader: &mut (dyn BufRead + Send),
    decoder: &Decoder,
    threads: usize,
    mut f: impl FnMut(u64, usize, &Decoded<'_>),
) -> Result<u64, ReplayError> {
    let threads = threads.max(1);
    let mut src = Source {
        input,
        reader,
        lines: 0,
        carry: Vec::new(),
    };
    let (mut a, mut b) = (Chunk::default(), Chunk::default());
    let mut ready_a = stage(decoder, threads, None, &mut a, &mut src, &mut f)?;
    // Two chunks take turns: one is being handed on while the other is
    // read and decoded.
    loop {
        if ready_a.0.lines.is_empty() {
            return Ok(src.lines);
        }
        let ready_b = stage(decoder, threads, Some(ready_a), &mut b, &mut src, &mut f)?;
        if ready_b.0.lines.is_empty() {
            return Ok(src.lines);
        }
        ready_a = stage(decoder, threads, Some(ready_b), &mut a, &mut src, &mut f)?;
    }
}

/// Worker threads for a replay or a build: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The outcome of a replay.
#[derive(Debug)]
pub struct ReplayResult {
    /// Health, experiments, the join and versions; the models' windows are
    /// written from [`Engine::model_reports`], one at a time.
    pub report: Report,
    pub transitions: Vec<Transition>,
    pub lines: u64,
    pub stats: EngineStats,
    pub first_bad: FirstBad,
    pub first_event_ms: Option<i64>,
    pub last_event_ms: Option<i64>,
}

/// Runs `engine` over `reader` in event time, evaluating every `every_ms`.
/// `progress` is called with the bytes read so far, now and then.
/// Lines are decoded on `threads` threads and reach the engine in input
/// order, so any number of threads gives the same result.
pub fn replay(
    engine: &mut Engine,
    input: &Input,
    reader: &mut (dyn BufRead + Send),
    every_ms: i64,
    threads: usize,
    mut progress: impl FnMut(u64),
) -> Result<ReplayResult, ReplayError> {
    let mut transitions = Vec::new();
    let mut watermark: Option<i64> = None;
    let mut next_eval: Option<i64> = None;
    let mut first_event = None;
    let mut first_bad = FirstBad::default();
    let mut bytes = 0u64;
    let decoder = engine.decoder().clone();
    let lines = for_each_decoded(input, reader, &decoder, threads, |n, read, d| {
        bytes += read as u64;
        if n % 65_536 == 0 {
            progress(bytes);
        }
        engine.count_decoded(d);
        let time = match d {
            Decoded::Event(ev) => ev.time,
            Decoded::Record(r) => r.time,
            Decoded::Rejected(r) => {
                first_bad.note(*r, n);
                return;
            }
            Decoded::Skipped(_) => return,
        };
        // Event time drives the clock; a line without a usable timestamp
        // happens "now", at the latest time seen.
        let arrival = match time {
            EventTime::Parsed(t) => t,
            _ => watermark.unwrap_or(0),
        };
        let t = engine.event_time(time, arrival);
        first_event.get_or_insert(t);
        let next = *next_eval.get_or_insert_with(|| (t.div_euclid(every_ms) + 1) * every_ms);
        if t >= next {
            // Evaluate at every boundary passed, before counting the event
            // that crossed it: that is what the live daemon would have seen.
            let mut at = next;
            while at <= t {
                transitions.extend(engine.evaluate(at));
                at += every_ms;
            }
            next_eval = Some(at);
        }
        watermark = Some(watermark.map_or(t, |w| w.max(t)));
        engine.accept(d, t, t);
    })?;
    progress(bytes);
    // The final window, as of the last event.
    if let Some(w) = watermark {
        transitions.extend(engine.evaluate(w));
    }
    Ok(ReplayResult {
        report: engine.report_without_models(),
        transitions,
        lines,
        stats: engine.stats.clone(),
        first_bad,
        first_event_ms: first_event,
        last_event_ms: watermark,
    })
}

/// What a baseline build produced.
#[derive(Debug)]
pub struct BuildResult {
    pub baselines: Vec<Baseline>,
    pub lines: u64,
    pub stats: crate::engine::decode::DecodeStats,
    pub first_bad: FirstBad,
}

/// Label lines calibrate the confidences of a baseline build: joined to
/// their predictions by the daemon's join, with a week's TTL and a hash
/// sample past 1M waiting predictions, so a file of any length builds in
/// bounded memory.
struct BuildLabels {
    join: LabelJoin,
    /// Model of each join slot, and back.
    names: Vec<String>,
    ids: std::collections::HashMap<String, u32>,
    /// Per join slot: the model's confidences and labelled predictions.
    calibration: Vec<CalibrationBuilder>,
}

impl Default for BuildLabels {
    fn default() -> Self {
        BuildLabels {
            join: LabelJoin::new(7 * 86_400_000, 1_000_000, 200_000),
            names: Vec::new(),
            ids: Default::default(),
            calibration: Vec::new(),
        }
    }
}

impl BuildLabels {
    /// Every inference event of a model being built: its confidence, and
    /// its prediction into the join when it has a request id.
    fn prediction(&mut self, ev: &crate::engine::decode::Event<'_>) {
        let slot = match self.ids.get(ev.model.as_ref()) {
            Some(i) => *i,
            None => {
                self.names.push(ev.model.to_string());
                self.calibration.push(CalibrationBuilder::default());
                let i = (self.names.len() - 1) as u32;
                self.ids.insert(ev.model.to_string(), i);
                i
            }
        };
        let cal = &mut self.calibration;
        if let Some(c) = ev.confidence {
            cal[slot as usize].confidence(c);
        }
        let (Some(req), Some(pred), EventTime::Parsed(t)) =
            (ev.request_id, &ev.prediction, ev.time)
        else {
            return;
        };
        let p = match pred {
            Prediction::Label(l) => Pred::class(slot, t, feature_hash(l), ev.confidence),
            Prediction::Value(v) => Pred::value(slot, t, *v),
        };
        self.join.prediction(req, p, &mut |p, truth| {
            cal[p.slot as usize].labelled(p, truth)
        });
    }

    fn label(&mut self, r: &crate::engine::decode::Record<'_>) {
        let (Some(req), Some(truth), EventTime::Parsed(t)) = (r.request_id, r.truth, r.time) else {
            return;
        };
        let cal = &mut self.calibration;
        self.join.label(req, truth, t, &mut |p, truth| {
            cal[p.slot as usize].labelled(p, truth)
        });
    }

    /// The quality block of `b`, on its confidence bins.
    fn finish(&self, b: &Baseline) -> Option<crate::engine::quality::QualityBaseline> {
        let slot = *self.ids.get(&b.model)?;
        self.calibration[slot as usize].finish(b.confidence.as_ref().map(|c| &c.bins))
    }
}

/// Builds one baseline per model (or only `model`) from reference logs,
/// decoded on `threads` threads (the baselines are the same for any).
pub fn build_baselines(
    (decoder, threads): (&Decoder, usize),
    input: &Input,
    reader: &mut (dyn BufRead + Send),
    model: Option<&str>,
    binning: &Binning,
    now_ms: i64,
    mut progress: impl FnMut(u64),
) -> Result<BuildResult, ReplayError> {
    let mut builders: BTreeMap<String, BaselineBuilder> = BTreeMap::new();
    let mut labels = BuildLabels::default();
    let mut seen_models: BTreeMap<String, u64> = BTreeMap::new();
    let mut stats = crate::engine::decode::DecodeStats::default();
    let mut first_bad = FirstBad::default();
    let mut bytes = 0u64;
    // Bounded: a hostile file of a million model ids must not build a
    // million baselines.
    const MAX_MODELS: usize = 10_000;
    let lines = for_each_decoded(input, reader, decoder, threads, |n, read, d| {
        bytes += read as u64;
        if n % 65_536 == 0 {
            progress(bytes);
        }
        stats.record(d);
        let ev = match d {
            Decoded::Event(ev) => ev,
            // Timing lines give the model's latency baseline, batch lines
            // a batch-only model's predicted classes.
            Decoded::Record(r) if matches!(r.kind, RecordKind::Timing | RecordKind::BatchStats) => {
                let Some(m) = r.model.as_deref() else { return };
                if model.is_some_and(|x| x != m) {
                    return;
                }
                if !builders.contains_key(m) && builders.len() >= MAX_MODELS {
                    return;
                }
                let b = builders
                    .entry(m.to_string())
                    .or_insert_with(|| BaselineBuilder::new(m));
                b.add_stages(&r.stages);
                b.add_class_counts(&r.class_counts);
                return;
            }
            Decoded::Record(r) if r.kind == RecordKind::Label => {
                labels.label(r);
                return;
            }
            Decoded::Rejected(r) => {
                first_bad.note(*r, n);
                return;
            }
            Decoded::Record(_) | Decoded::Skipped(_) => return,
        };
        if model.is_some_and(|m| m != ev.model) {
            if seen_models.len() < MAX_MODELS {
                *seen_models.entry(ev.model.to_string()).or_default() += 1;
            }
            return;
        }
        if let Some(b) = builders.get_mut(ev.model.as_ref()) {
            b.add(ev);
        } else if builders.len() < MAX_MODELS {
            let mut b = BaselineBuilder::new(&ev.model);
            b.add(ev);
            builders.insert(ev.model.to_string(), b);
        } else {
            return;
        }
        labels.prediction(ev);
    })?;
    progress(bytes);
    if builders.is_empty() {
        if let Some(m) = model {
            let seen: Vec<String> = seen_models.keys().take(10).cloned().collect();
            return Err(ReplayError::NoSuchModel {
                input: input.name(),
                model: m.to_owned(),
                seen: if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                },
            });
        }
        return Err(BaselineError::Empty { model: None }.into());
    }
    let source = match input {
        Input::File(p) => p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        Input::Stdin => "stdin".into(),
    };
    // A model seen only in timing lines has no inference events to build
    // from; it gets no baseline (its latency still gets quantiles).
    let baselines = builders
        .into_values()
        .filter(BaselineBuilder::has_data)
        .map(|b| {
            let mut b = b.finish(binning, &source, now_ms)?;
            b.quality = labels.finish(&b);
            Ok(b)
        })
        .collect::<Result<Vec<_>, BaselineError>>()?;
    if baselines.is_empty() {
        return Err(crate::engine::baseline::BaselineError::Empty {
            model: model.map(str::to_owned),
        }
        .into());
    }
    Ok(BuildResult {
        baselines,
        lines,
        stats,
        first_bad,
    })
}

/// Simulates and stores every distribution's no-drift law in its baseline
/// (see [`crate::engine::threshold`]), on every core: a daemon or replay
/// that loads the files then judges with automatic thresholds from its
/// first evaluation, without simulating. Seeded as the engine seeds its own
/// fits, so a file's fit is the one the engine would have made.
pub fn fit_nulls(baselines: &mut [Baseline], opts: &CompareOptions, threads: usize) {
    use crate::engine::baseline::Layout;
    use crate::engine::threshold;
    // (baseline, latency layout?, slot) of every distribution.
    let layouts: Vec<(Layout, Option<Layout>)> = baselines
        .iter()
        .map(|b| (Layout::new(b.clone()), Layout::for_latency(b)))
        .collect();
    let mut jobs = Vec::new();
    for (k, (main, latency)) in layouts.iter().enumerate() {
        jobs.extend((0..main.slots.len()).map(|i| (k, false, i)));
        if let Some(l) = latency {
            jobs.extend((0..l.slots.len()).map(|i| (k, true, i)));
        }
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let j = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(k, lat, i)) = jobs.get(j) else {
                return done;
            };
            let layout = match &layouts[k] {
                (_, Some(l)) if lat => l,
                (m, _) => m,
            };
            let slot = &layout.slots[i];
            let base = &layout.baseline_counts[slot.offset..slot.offset + slot.len];
            let seed = threshold::seed(&layout.baseline.model, i);
            done.push((j, threshold::fit(base, layout.bin_layout(i), opts, seed)));
        }
    };
    let fits: Vec<(usize, threshold::NullFit)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in handles {
            all.extend(joined(h));
        }
        all
    });
    for (j, fit) in fits {
        let (k, lat, i) = jobs[j];
        let b = &mut baselines[k];
        let f = if lat {
            b.latency.get_mut(i)
        } else {
            let nf = b.features.len();
            match i.checked_sub(nf) {
                None => b.features.get_mut(i),
                Some(0) if b.prediction.is_some() => b.prediction.as_mut(),
                Some(_) => b.confidence.as_mut(),
            }
        };
        if let Some(f) = f {
            f.null = Some(fit);
        }
    }
}

/// Loads every baseline in a directory, or says everything that is wrong.
pub fn load_baselines(dir: &Path) -> Result<Vec<Baseline>, Vec<BaselineError>> {
    crate::engine::baseline::load_dir(dir).map(|v| v.into_iter().map(|(_, b)| b).collect())
}

/// The transitions of each model, in time order.
fn transitions_by_model(ts: &[Transition]) -> HashMap<&str, Vec<&Transition>> {
    let mut by: HashMap<&str, Vec<&Transition>> = HashMap::new();
    for t in ts {
        by.entry(t.model.as_str()).or_default().push(t);
    }
    by
}

/// A transition as the JSON document shows it: `at` as RFC 3339, a value
/// that is not finite as null.
fn transition_json(t: &Transition) -> serde_json::Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("at".into(), serde_json::Value::String(rfc3339(t.at_ms)));
        if !t.value.is_finite() {
            o.insert("value".into(), serde_json::Value::Null);
        }
    }
    v
}

/// One model of the JSON document: its report and its transitions.
#[derive(Serialize)]
struct ModelJson {
    #[serde(flatten)]
    report: ModelReport,
    transitions: Vec<serde_json::Value>,
}

/// The models of the JSON document, built and written one at a time.
struct ModelsJson<'a, I> {
    models: std::cell::RefCell<Option<I>>,
    transitions: &'a HashMap<&'a str, Vec<&'a Transition>>,
}

impl<I: Iterator<Item = ModelReport>> Serialize for ModelsJson<'_, I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        for report in self.models.borrow_mut().take().into_iter().flatten() {
            let transitions = self
                .transitions
                .get(report.model.as_str())
                .map(|ts| ts.iter().map(|t| transition_json(t)).collect())
                .unwrap_or_default();
            seq.serialize_element(&ModelJson {
                report,
                transitions,
            })?;
        }
        seq.end()
    }
}

/// What the input held, for the JSON document.
fn input_json(r: &ReplayResult) -> serde_json::Value {
    let s = &r.stats;
    let mut rejected = serde_json::Map::new();
    for reason in Reject::ALL {
        rejected.insert(
            reason.as_str().into(),
            s.decode.rejected[reason as usize].into(),
        );
    }
    let mut skipped = serde_json::Map::new();
    for k in crate::engine::decode::Skip::ALL {
        skipped.insert(k.as_str().into(), s.decode.skipped[k as usize].into());
    }
    serde_json::json!({
        "lines": r.lines,
        "events": s.decode.events,
        "rejected": rejected,
        "skipped": skipped,
        "late": s.late,
        "no_baseline": s.no_baseline,
        "first_event": r.first_event_ms.map(rfc3339),
        "last_event": r.last_event_ms.map(rfc3339),
    })
}

/// Writes the replay report as the documented JSON document, the models
/// (from [`Engine::model_reports`]) one at a time, so a replay of many
/// models never holds every model's bins at once.
pub fn write_json(
    r: &ReplayResult,
    models: impl Iterator<Item = ModelReport>,
    out: &mut dyn io::Write,
) -> std::io::Result<()> {
    use serde::ser::SerializeMap;
    struct Doc<'a, I> {
        r: &'a ReplayResult,
        models: ModelsJson<'a, I>,
    }
    impl<I: Iterator<Item = ModelReport>> Serialize for Doc<'_, I> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let rep = &self.r.report;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("experiments", &rep.experiments)?;
            m.serialize_entry("health", &rep.health)?;
            m.serialize_entry("health_stats", &rep.health_stats)?;
            m.serialize_entry("input", &input_json(self.r))?;
            m.serialize_entry("join_stats", &rep.join_stats)?;
            m.serialize_entry("join_waiting", &rep.join_waiting)?;
            m.serialize_entry("label_join", &rep.label_stats)?;
            m.serialize_entry("label_sample_rate", &rep.label_sample_rate)?;
            m.serialize_entry("label_waiting", &rep.label_waiting)?;
            m.serialize_entry("models", &self.models)?;
            m.serialize_entry("quality", &rep.quality)?;
            m.serialize_entry("versions", &rep.versions)?;
            m.end()
        }
    }
    let by = transitions_by_model(&r.transitions);
    let doc = Doc {
        r,
        models: ModelsJson {
            models: std::cell::RefCell::new(Some(models)),
            transitions: &by,
        },
    };
    let mut w = std::io::BufWriter::new(out);
    serde_json::to_writer_pretty(&mut w, &doc).map_err(std::io::Error::other)?;
    io::Write::write_all(&mut w, b"\n")?;
    io::Write::flush(&mut w)
}

fn fmt_metric(v: Option<f64>) -> String {
    match v {
        Some(x) if x != 0.0 && x.abs() < 1e-3 => format!("{x:.1e}"),
        Some(x) => format!("{x:.4}"),
        None => "-".into(),
    }
}

/// Writes the replay as one self-contained HTML document: what fired, the
/// verdict transitions over the replayed time, an index of the models (the
/// drifted first) and each model's distributions, baseline and window side
/// by side (see [`crate::view`]). Models are drawn one at a time.
pub fn write_html(
    r: &ReplayResult,
    engine: &Engine,
    input: &str,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    use crate::view;
    let summary = engine.summary(true);
    let mut head = String::new();
    let span = match (r.first_event_ms, r.last_event_ms) {
        (Some(a), Some(b)) => format!("{} to {}", rfc3339(a), rfc3339(b)),
        _ => "no events".into(),
    };
    let _ = write!(
        head,
        "<h1>driftd replay: {}</h1><p>{} lines, {} events, {span}</p>",
        view::esc(input),
        r.lines,
        r.stats.decode.events
    );
    view::index(&summary.models, None, 0, &view::Links::Anchors, &mut head);
    transitions_table(&r.transitions, &mut head);
    let doc = view::document("driftd replay report", None, "\u{0}");
    let (before, after) = doc.split_once('\u{0}').expect("the marker");
    out.write_all(before.as_bytes())?;
    out.write_all(head.as_bytes())?;
    // In the index's order: the drifted first.
    let order: Vec<String> = view::ordered(&summary.models, None)
        .into_iter()
        .map(|m| m.model.clone())
        .collect();
    drop(summary);
    for name in order {
        let mut block = String::new();
        for m in engine.report_with(true, Some(&name)).models {
            let h = r.report.health.iter().find(|h| h.model == m.model);
            let beside = view::Beside {
                health: h,
                experiments: &r.report.experiments,
                quality: &r.report.quality,
            };
            view::model(&m, beside, &mut block);
        }
        out.write_all(block.as_bytes())?;
    }
    out.write_all(after.as_bytes())
}

/// The drift transitions of the replay, in time order.
fn transitions_table(ts: &[Transition], out: &mut String) {
    use crate::view::esc;
    let drift: Vec<&Transition> = ts.iter().filter(|t| t.distribution.is_some()).collect();
    let _ = write!(
        out,
        "<details><summary>{} drift verdict changes over the replay</summary>",
        drift.len()
    );
    if drift.is_empty() {
        out.push_str("</details>");
        return;
    }
    out.push_str("<table id=\"transitions\"><tr><th>at</th><th>model</th><th>distribution</th><th>metric</th><th>from</th><th>to</th><th>value</th><th>threshold</th><th>moved most</th></tr>");
    for t in drift {
        let _ = write!(
            out,
            "<tr class=\"{to}\"><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{to}\">{to}</td><td>{:.4}</td><td>{:.4}</td><td><small>{}</small></td></tr>",
            rfc3339(t.at_ms),
            esc(&t.model),
            t.arm.as_ref().map(|a| format!(" [arm {}]", esc(a))).unwrap_or_default(),
            esc(&t.feature),
            t.metric,
            t.from,
            t.value,
            t.threshold,
            esc(t.details.get("moved").map_or("", String::as_str)),
            to = t.to,
        );
    }
    out.push_str("</table></details>");
}

/// The replay as a human table: per model and feature the scores and the
/// verdict, then the transitions with their times; the models (from
/// [`Engine::model_reports`]) are written one at a time.
pub fn write_table(
    r: &ReplayResult,
    models: impl Iterator<Item = ModelReport>,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    use io::Write as _;
    let by = transitions_by_model(&r.transitions);
    let mut w = io::BufWriter::new(out);
    for m in models {
        let mut block = String::new();
        let ts = by.get(m.model.as_str()).map_or(&[][..], |v| &v[..]);
        model_table(&m, ts, &mut block);
        w.write_all(block.as_bytes())?;
    }
    let mut out = String::new();
    render_health(r, &mut out);
    let s = &r.stats;
    let _ = writeln!(
        out,
        "{} lines: {} inference events, {} other records (timing, error, feedback, batch), {} rejected, {} skipped, {} late, {} without a baseline",
        r.lines,
        s.decode.events,
        s.decode.records.iter().sum::<u64>(),
        s.decode.rejected_total(),
        s.decode.skipped.iter().sum::<u64>(),
        s.late,
        s.no_baseline
    );
    w.write_all(out.as_bytes())?;
    w.flush()
}

/// One model's block of the table.
fn model_table(m: &ModelReport, transitions: &[&Transition], out: &mut String) {
    let cols = [
        "psi",
        "js_distance",
        "hellinger",
        "chi2_p",
        "wasserstein",
        "ks",
        "unseen_share",
    ];
    let span = match (m.all.window_start_ms, m.all.window_end_ms) {
        (Some(a), Some(b)) => format!("{} .. {}", rfc3339(a), rfc3339(b)),
        _ => "count window".into(),
    };
    let _ = writeln!(
        out,
        "model {}  (baseline {}, window {}, {} events in window)",
        m.model, m.baseline_version, span, m.all.samples
    );
    let _ = write!(out, "  {:<22} {:<12}", "distribution", "kind");
    for c in cols {
        let _ = write!(out, " {c:>12}");
    }
    let _ = writeln!(out, "  verdict");
    let rows = m
        .all
        .distributions()
        .chain(m.latency.iter().flat_map(|l| l.features.iter()));
    for f in rows {
        let _ = write!(out, "  {:<22} {:<12}", truncate(&f.name, 22), f.kind);
        for c in cols {
            let _ = write!(out, " {:>12}", fmt_metric(f.metrics.get(c)));
        }
        let verdict = if f.verdicts.iter().all(|v| v.insufficient_data) && !f.verdicts.is_empty() {
            "insufficient_data".to_owned()
        } else {
            let firing: Vec<String> = f
                .verdicts
                .iter()
                .filter(|v| v.state != State::Ok)
                .map(|v| {
                    format!(
                        "{} {}{}",
                        v.metric,
                        v.state,
                        v.severity.map(|s| format!(" ({s})")).unwrap_or_default()
                    )
                })
                .collect();
            if firing.is_empty() {
                "ok".into()
            } else {
                firing.join(", ")
            }
        };
        let _ = writeln!(out, "  {verdict}");
    }
    let ts: Vec<&Transition> = transitions
        .iter()
        .copied()
        .filter(|t| t.distribution.is_some())
        .collect();
    if !ts.is_empty() {
        let _ = writeln!(out, "  transitions:");
        for t in ts {
            let _ = writeln!(
                out,
                "    {}  {}{}  {}: {} -> {}{}  value {:.4} threshold {} samples {}",
                rfc3339(t.at_ms),
                t.feature,
                t.arm
                    .as_ref()
                    .map(|a| format!(" [arm {a}]"))
                    .unwrap_or_default(),
                t.metric,
                t.from,
                t.to,
                t.severity.map(|s| format!(" ({s})")).unwrap_or_default(),
                t.value,
                t.threshold,
                t.samples
            );
        }
    }
    let _ = writeln!(out);
}

/// Errors, latency, deploys and arms, as of the last evaluation, and the
/// transitions of their conditions.
fn render_health(r: &ReplayResult, out: &mut String) {
    let h = &r.report.health;
    if !h.is_empty() {
        let _ = writeln!(
            out,
            "health (last window)\n  {:<16} {:>9} {:>9} {:>10}  {:<18} {:>9} {:>9} {:>9}  conditions",
            "model", "requests", "errors", "reference", "stage", "p50 ms", "p90 ms", "p99 ms"
        );
        for m in h {
            let pct = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
            let ms = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
            let cond: Vec<String> = m
                .conditions
                .iter()
                .filter(|c| c.2 != State::Ok)
                .map(|c| format!("{} {} {}", c.0, c.1, c.2).replace("  ", " "))
                .collect();
            let stages: Vec<_> = m.latency.iter().collect();
            for i in 0..stages.len().max(1) {
                let (name, p50, p90, p99) = match stages.get(i) {
                    Some(s) => (s.stage.as_str(), s.p50_ms, s.p90_ms, s.p99_ms),
                    None => ("", None, None, None),
                };
                if i == 0 {
                    let _ = writeln!(
                        out,
                        "  {:<16} {:>9} {:>9} {:>10}  {:<18} {:>9} {:>9} {:>9}  {}",
                        truncate(&m.model, 16),
                        m.requests,
                        pct(m.error_rate),
                        pct(m.reference_error_rate),
                        truncate(name, 18),
                        ms(p50),
                        ms(p90),
                        ms(p99),
                        if cond.is_empty() {
                            "ok".into()
                        } else {
                            cond.join(", ")
                        }
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "  {:<16} {:>9} {:>9} {:>10}  {:<18} {:>9} {:>9} {:>9}",
                        "",
                        "",
                        "",
                        "",
                        truncate(name, 18),
                        ms(p50),
                        ms(p90),
                        ms(p99)
                    );
                }
            }
            if let Some(d) = &m.deploy {
                let _ = writeln!(
                    out,
                    "  {:<16} deployed after {} at {}: {} then, {} now (p = {})",
                    "",
                    d.previous,
                    rfc3339(d.at_ms),
                    pct(d.previous_error_rate),
                    pct(m.error_rate),
                    d.p_value.map_or("-".into(), |p| format!("{p:.2e}"))
                );
            }
        }
        let _ = writeln!(out);
    }
    let x = &r.report.experiments;
    if !x.comparisons.is_empty() {
        let _ = writeln!(
            out,
            "experiments (last window): feedback rate, variant against control"
        );
        for c in &x.comparisons {
            let pct = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
            let _ = writeln!(
                out,
                "  {:<16} {:<22} {} {:>7}  {} {:>7}  p = {:<9} {}",
                truncate(&c.model, 16),
                truncate(&c.action, 22),
                c.control,
                pct(c.control_rate),
                c.variant,
                pct(c.variant_rate),
                c.p_value.map_or("-".into(), |p| format!("{p:.2e}")),
                c.state
            );
        }
        let _ = writeln!(out);
    }
    let ts: Vec<&Transition> = r
        .transitions
        .iter()
        .filter(|t| t.distribution.is_none())
        .collect();
    if !ts.is_empty() {
        let _ = writeln!(out, "health and experiment transitions:");
        for t in ts {
            let _ = writeln!(
                out,
                "  {}  {} {}{}{}: {} -> {}  {}",
                rfc3339(t.at_ms),
                t.alertname,
                t.model,
                t.arm
                    .as_ref()
                    .map(|a| format!(" [arm {a}]"))
                    .unwrap_or_default(),
                if t.feature.is_empty() {
                    String::new()
                } else {
                    format!(" {}", t.feature)
                },
                t.from,
                t.to,
                t.details.get("summary").map_or("", String::as_str)
            );
        }
        let _ = writeln!(out);
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line reaches `f` exactly once, in order, with its own line
    /// number, length and decoding, across chunk and part boundaries, with
    /// blank, `\r\n` and malformed lines among them, for any number of
    /// threads. (A first version handed each part's lines on with the line
    /// numbers shifted by one per part and lost a line a part: every thread
    /// count agreed, so only counting against the input shows it.)
    #[test]
    fn every_line_is_handed_on_once_in_order() {
        let pad = "x".repeat(300);
        let mut text = String::new();
        let mut want: Vec<(u64, String, usize)> = Vec::new();
        let mut n = 0u64;
        while text.len() < 2 * CHUNK_BYTES + 12_345 {
            n += 1;
            let (line, ending) = match n % 97 {
                0 => (String::new(), "\n"),
                1 => ("{bad".to_owned(), "\r\n"),
                _ => (
                    format!(
                        r#"{{"model_id":"m{}","timestamp":{},"prediction":"a","message":"{pad}"}}"#,
                        n % 7,
                        1_700_000_000_000u64 + n
                    ),
                    "\n",
                ),
            };
            text.push_str(&line);
            text.push_str(ending);
            if !line.is_empty() {
                want.push((n, line.clone(), line.len() + ending.len()));
            }
        }
        let decoder = Decoder::new(Default::default());
        for threads in [1, 2, 3] {
            let mut k = 0;
            let lines = for_each_decoded(
                &Input::Stdin,
                &mut text.as_bytes(),
                &decoder,
                threads,
                |got_n, read, d| {
                    let (n, line, len) = &want[k];
                    assert_eq!((got_n, read), (*n, *len), "{threads} threads, line {k}");
                    assert_eq!(d, &decoder.decode(line.as_bytes()), "line {n}");
                    k += 1;
                },
            )
            .unwrap();
            assert_eq!(k, want.len(), "{threads} threads: lines handed on");
            assert_eq!(lines, n, "{threads} threads: lines read");
        }
    }

    /// A reader that returns at most 1,000 bytes a call, as a pipe can.
    struct Trickle<'a>(&'a [u8]);

    impl io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let k = buf.len().min(1000).min(self.0.len());
            buf[..k].copy_from_slice(&self.0[..k]);
            self.0 = &self.0[k..];
            Ok(k)
        }
    }

    /// The chunking's edges: a line longer than a chunk, more than a
    /// chunk of blank lines (which must not read as the end), a last line
    /// without a newline, and short reads; every line counted, the kept
    /// ones handed on with their own numbers and lengths.
    #[test]
    fn chunks_survive_giant_lines_blank_runs_short_reads_and_no_final_newline() {
        let line = |n: u64, pad: usize| {
            format!(
                r#"{{"model_id":"m","timestamp":{},"prediction":"a","message":"{}"}}"#,
                1_700_000_000_000u64 + n,
                "y".repeat(pad)
            )
        };
        let mut text = String::new();
        let mut want: Vec<(u64, usize)> = Vec::new();
        let mut n = 0u64;
        let mut push = |text: &mut String, s: &str, ending: &str| {
            n += 1;
            text.push_str(s);
            text.push_str(ending);
            if !s.is_empty() {
                want.push((n, s.len() + ending.len()));
            }
            n
        };
        push(&mut text, &line(1, 10), "\n");
        let giant = line(2, CHUNK_BYTES + 100_000);
        push(&mut text, &giant, "\n");
        for _ in 0..(CHUNK_BYTES + 5) {
            push(&mut text, "", "\n");
        }
        push(&mut text, &line(3, 10), "\r\n");
        let last = push(&mut text, &line(4, 10), "");
        for threads in [1, 2] {
            for trickle in [false, true] {
                let decoder = Decoder::new(Default::default());
                let mut got = Vec::new();
                let mut bytes = text.as_bytes();
                let mut slow = io::BufReader::with_capacity(1 << 20, Trickle(text.as_bytes()));
                let reader: &mut (dyn BufRead + Send) =
                    if trickle { &mut slow } else { &mut bytes };
                let lines =
                    for_each_decoded(&Input::Stdin, reader, &decoder, threads, |n, read, d| {
                        // The giant line is refused by the decoder, with
                        // its reason; the others are events.
                        let event = matches!(d, Decoded::Event(_));
                        assert_eq!(event, n != 2, "line {n}: {d:?}");
                        got.push((n, read));
                    })
                    .unwrap();
                assert_eq!(got, want, "{threads} threads, trickle {trickle}");
                assert_eq!(lines, last, "{threads} threads, trickle {trickle}");
            }
        }
    }
}
