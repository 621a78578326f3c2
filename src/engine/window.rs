//! Sliding windows: per-model bin counts over the last W of event time.
//!
//! This module owns the panes. A window of length W is a ring of
//! `ceil(W / P)` panes of length P; each pane is one row of counts on the
//! baseline's flat bin layout ([`Layout`]), and the window keeps running
//! totals. An event costs one increment per distribution (O(1) per feature);
//! when time moves past a pane, its row is subtracted from the totals and
//! freed. A row is allocated at its pane's first count, so memory is at most
//! `panes x bins x 4 bytes` per window whatever the event rate, and an empty
//! pane costs nothing ([`Window::bytes_bound`] states the whole bound).
//! Evaluation reads the running totals: its cost does not depend on the
//! number of panes. Nothing here reads a clock: time comes in as a
//! parameter.
//!
//! A count-based window (the last N events) uses the same ring with panes of
//! `N / panes` events, so it holds the last N events to within one pane.

use std::sync::Arc;

use ndarray::Array1;
use serde::{Deserialize, Serialize};

use crate::engine::baseline::{BinOf, Layout};
use crate::engine::decode::Event;

/// The shape of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// The last `length_ms` of event time, in panes of `pane_ms`.
    Time { length_ms: i64, pane_ms: i64 },
    /// The last `events` events, in `panes` panes.
    Count { events: u64, panes: usize },
}

impl WindowSpec {
    /// The window with at most `max_panes` panes: a time window's pane grows
    /// to `length / max_panes` (rounded up to a whole second), a count
    /// window gets fewer, larger panes. Memory is panes x bins, so a day
    /// window in 30 s panes (2,880 of them) would hold a day of rows per
    /// model; in 60 panes of 24 minutes it slides in 1.7% steps instead.
    /// Returns the window and whether it changed.
    pub fn capped(self, max_panes: usize) -> (WindowSpec, bool) {
        let max = max_panes.max(1);
        match self {
            WindowSpec::Time { length_ms, .. } if self.panes() > max => {
                let wanted = (length_ms.max(1) as u64).div_ceil(max as u64);
                let pane_ms = (wanted.div_ceil(1000) * 1000) as i64;
                (WindowSpec::Time { length_ms, pane_ms }, true)
            }
            WindowSpec::Count { events, panes } if panes > max => {
                (WindowSpec::Count { events, panes: max }, true)
            }
            other => (other, false),
        }
    }

    pub fn panes(&self) -> usize {
        match *self {
            WindowSpec::Time { length_ms, pane_ms } => {
                (length_ms.max(1) as u64).div_ceil(pane_ms.max(1) as u64) as usize
            }
            WindowSpec::Count { panes, .. } => panes.max(1),
        }
    }

    fn events_per_pane(&self) -> u64 {
        match *self {
            WindowSpec::Count { events, panes } => events.div_ceil(panes.max(1) as u64).max(1),
            WindowSpec::Time { .. } => 1,
        }
    }
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec::Time {
            length_ms: 10 * 60_000,
            pane_ms: 30_000,
        }
    }
}

/// What happened to an inserted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Counted,
    /// Older than the window's start: dropped and counted as late.
    Late,
}

/// Per-window counters that are not distributions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounters {
    pub events: u64,
    pub late: u64,
    /// Values that could not be binned (NaN, wrong type for the feature).
    pub invalid_values: u64,
    /// Feature names in events that the baseline does not know.
    pub unknown_features: u64,
}

/// One pane's counts on the flat bin layout.
#[derive(Debug, Default)]
enum Row {
    /// No count yet: costs nothing.
    #[default]
    Empty,
    /// Being counted into: the newest pane, or an older one a late line
    /// reached (packed again when the head next moves).
    Dense(Vec<u32>),
    /// A pane the head has moved past, packed: for each non-zero bin, the
    /// gap from the previous one and the count, both LEB128 varints. Most
    /// panes of a long window are small (a day in 24-minute panes of a
    /// quiet model); packed, a bin costs about two bytes instead of four,
    /// and zero bins nothing. Kept dense when packing would not be smaller.
    Packed(Box<[u8]>),
}

impl Row {
    /// Packs `dense` when that takes less room.
    fn pack(dense: &[u32]) -> Option<Box<[u8]>> {
        let mut out = Vec::with_capacity(dense.len());
        let mut last = 0usize;
        for (i, c) in dense.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            put_varint(&mut out, (i - last) as u64);
            put_varint(&mut out, u64::from(*c));
            last = i;
            if out.len() >= dense.len() * 4 {
                return None;
            }
        }
        Some(out.into_boxed_slice())
    }

    /// Calls `f(bin, count)` for every non-zero count.
    fn for_each(&self, mut f: impl FnMut(usize, u32)) {
        match self {
            Row::Empty => {}
            Row::Dense(v) => {
                for (i, c) in v.iter().enumerate() {
                    if *c != 0 {
                        f(i, *c);
                    }
                }
            }
            Row::Packed(bytes) => {
                let (mut pos, mut bin) = (0, 0usize);
                while pos < bytes.len() {
                    bin += get_varint(bytes, &mut pos) as usize;
                    let c = get_varint(bytes, &mut pos) as u32;
                    f(bin, c);
                }
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Row::Empty => 0,
            Row::Dense(v) => v.capacity() * 4,
            Row::Packed(b) => b.len(),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    while let Some(b) = bytes.get(*pos) {
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    v
}

/// One model's (or model and arm's) sliding window.
#[derive(Debug)]
pub struct Window {
    layout: Arc<Layout>,
    spec: WindowSpec,
    n: usize,
    /// `n` rows, one per pane, each on the flat bin layout; a row is
    /// allocated when its pane gets its first count, packed when the head
    /// moves past it, and freed when the pane expires, so empty panes cost
    /// nothing and old ones little.
    rows: Vec<Row>,
    /// Rows other than the head's made dense again by a late line.
    unpacked: Vec<usize>,
    /// The last freed row, zeroed and reused by the next pane, so a steady
    /// stream does not allocate a row per pane.
    spare: Vec<u32>,
    /// Events per pane (each event counts once however many features it has).
    pane_samples: Vec<u64>,
    /// The pane id held by each row; `i64::MIN` for a row not yet used.
    pane_ids: Vec<i64>,
    totals: Array1<u64>,
    samples: u64,
    head: Option<i64>,
    seq: u64,
    pub counters: WindowCounters,
    /// Slot guessed for the j-th feature of an event: producers write
    /// features in the same order every time, so a name compare usually
    /// replaces a hash lookup.
    hint: Vec<u32>,
    stamp: Vec<u32>,
    generation: u32,
    scratch: Vec<u32>,
}

impl Window {
    pub fn new(layout: Arc<Layout>, spec: WindowSpec) -> Window {
        let n = spec.panes();
        let bins = layout.total_bins;
        let slots = layout.slots.len();
        Window {
            rows: (0..n).map(|_| Row::Empty).collect(),
            unpacked: Vec::new(),
            spare: Vec::new(),
            pane_samples: vec![0; n],
            pane_ids: vec![i64::MIN; n],
            totals: Array1::zeros(bins),
            samples: 0,
            head: None,
            seq: 0,
            counters: WindowCounters::default(),
            hint: Vec::new(),
            stamp: vec![0; slots],
            generation: 0,
            scratch: Vec::new(),
            layout,
            spec,
            n,
        }
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The most a window on `bins` bins in `panes` panes can hold on the heap,
    /// with events of up to `max_features` features: every pane's row, the
    /// spare row, the totals, the per-pane bookkeeping and the scratch.
    pub fn bytes_bound(bins: usize, slots: usize, panes: usize, max_features: usize) -> usize {
        let row = bins * 4;
        panes * (row + std::mem::size_of::<Row>() + 16 + 8)
            + row
            + bins * 8
            + slots * 4
            + max_features * 4
            + row
    }

    /// What the window holds on the heap now (at most [`Window::bytes_bound`]).
    pub fn heap_bytes(&self) -> usize {
        let rows: usize = self.rows.iter().map(Row::heap_bytes).sum();
        rows + self.rows.capacity() * std::mem::size_of::<Row>()
            + self.unpacked.capacity() * 8
            + self.spare.capacity() * 4
            + self.totals.len() * 8
            + self.pane_samples.capacity() * 8
            + self.pane_ids.capacity() * 8
            + self.stamp.capacity() * 4
            + self.hint.capacity() * 4
            + self.scratch.capacity() * 4
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// Events currently in the window.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Window counts on the flat layout.
    pub fn totals(&self) -> &[u64] {
        self.totals.as_slice().expect("contiguous")
    }

    /// Counts of one slot (feature, prediction or confidence).
    pub fn slot_counts(&self, slot: usize) -> &[u64] {
        let s = &self.layout.slots[slot];
        &self.totals()[s.offset..s.offset + s.len]
    }

    /// `[start, end)` of the event time the window covers, for time windows.
    pub fn span_ms(&self) -> Option<(i64, i64)> {
        match (self.spec, self.head) {
            (WindowSpec::Time { pane_ms, .. }, Some(h)) => {
                Some(((h - self.n as i64 + 1) * pane_ms, (h + 1) * pane_ms))
            }
            _ => None,
        }
    }

    fn pane_of(&self, t_ms: i64) -> i64 {
        match self.spec {
            WindowSpec::Time { pane_ms, .. } => t_ms.div_euclid(pane_ms),
            WindowSpec::Count { .. } => (self.seq / self.spec.events_per_pane()) as i64,
        }
    }

    /// Moves the head to `pane`, expiring every pane that falls out.
    fn advance(&mut self, pane: i64) {
        let Some(head) = self.head else {
            self.head = Some(pane);
            self.claim(pane);
            return;
        };
        if pane <= head {
            return;
        }
        if pane - head >= self.n as i64 {
            // Everything expired at once: cheaper to clear than to walk.
            for r in &mut self.rows {
                if let Row::Dense(v) = std::mem::take(r) {
                    self.spare = v;
                }
            }
            self.unpacked.clear();
            self.totals.fill(0);
            self.pane_samples.fill(0);
            self.pane_ids.fill(i64::MIN);
            self.samples = 0;
        } else {
            for id in head + 1..=pane {
                self.expire_row(id.rem_euclid(self.n as i64) as usize);
            }
            // The old head, and rows a late line unpacked, are done with.
            self.pack_row(head.rem_euclid(self.n as i64) as usize);
            for row in std::mem::take(&mut self.unpacked) {
                self.pack_row(row);
            }
        }
        self.head = Some(pane);
        self.claim(pane);
    }

    /// Packs a row the head has moved past (see [`Row::Packed`]).
    fn pack_row(&mut self, row: usize) {
        if let Row::Dense(v) = &self.rows[row] {
            if let Some(p) = Row::pack(v) {
                if let Row::Dense(v) = std::mem::replace(&mut self.rows[row], Row::Packed(p)) {
                    self.spare = v;
                }
            }
        }
    }

    fn claim(&mut self, pane: i64) {
        let row = pane.rem_euclid(self.n as i64) as usize;
        if self.pane_ids[row] != pane {
            self.expire_row(row);
            self.pane_ids[row] = pane;
        }
    }

    fn expire_row(&mut self, row: usize) {
        if self.pane_ids[row] == i64::MIN && self.pane_samples[row] == 0 {
            return;
        }
        let r = std::mem::take(&mut self.rows[row]);
        let totals = self.totals.as_slice_mut().expect("contiguous");
        r.for_each(|i, c| totals[i] -= u64::from(c));
        if let Row::Dense(v) = r {
            self.spare = v;
        }
        self.samples -= self.pane_samples[row];
        self.pane_samples[row] = 0;
        self.pane_ids[row] = i64::MIN;
    }

    /// Moves the window to `now_ms` without an event, so an idle model's
    /// window drains instead of showing stale counts forever.
    pub fn advance_to(&mut self, now_ms: i64) {
        if let WindowSpec::Time { .. } = self.spec {
            if self.head.is_some() {
                let p = self.pane_of(now_ms);
                self.advance(p);
            }
        }
    }

    /// Counts one event at event time `t_ms` (ignored for count windows).
    pub fn insert(&mut self, ev: &Event<'_>, t_ms: i64) -> Inserted {
        let mut bins = std::mem::take(&mut self.scratch);
        self.bins_of(ev, &mut bins);
        let r = self.add(t_ms, &bins);
        self.scratch = bins;
        r
    }

    /// The flat bin index of every distribution of `ev` on this window's
    /// layout, into `out`. Binning is most of an insert's cost; windows on
    /// the same layout (a model's, and its arms') share the result.
    /// Unknown features and unbinnable values are counted here.
    pub fn bins_of(&mut self, ev: &Event<'_>, out: &mut Vec<u32>) {
        out.clear();
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        let gen = self.generation;
        let layout = &*self.layout;
        if self.hint.len() < ev.features.len() {
            self.hint.resize(ev.features.len(), u32::MAX);
        }
        for (j, (name, value)) in ev.features.iter().enumerate() {
            let guess = self.hint[j];
            let slot = if (guess as usize) < layout.feature_count
                && *layout.slots[guess as usize].name == **name
            {
                guess as usize
            } else if let Some(&s) = layout.index.get(name.as_ref()) {
                self.hint[j] = s;
                s as usize
            } else {
                self.counters.unknown_features += 1;
                continue;
            };
            if self.stamp[slot] == gen {
                // The same feature twice in one line (flattening can do
                // that): count it once.
                continue;
            }
            self.stamp[slot] = gen;
            let s = &layout.slots[slot];
            match s.binner.bin(value) {
                BinOf::Bin(b) => out.push((s.offset + b as usize) as u32),
                BinOf::Invalid => self.counters.invalid_values += 1,
            }
        }
        for (slot, s) in layout.slots[..layout.feature_count].iter().enumerate() {
            if self.stamp[slot] != gen {
                out.push((s.offset + s.binner.missing() as usize) as u32);
            }
        }
        if let Some(p) = layout.prediction {
            let s = &layout.slots[p];
            let b = match &ev.prediction {
                Some(pred) => s.binner.bin_prediction(pred),
                None => BinOf::Bin(s.binner.missing()),
            };
            match b {
                BinOf::Bin(b) => out.push((s.offset + b as usize) as u32),
                BinOf::Invalid => self.counters.invalid_values += 1,
            }
        }
        if let Some(c) = layout.confidence {
            let s = &layout.slots[c];
            let b = match ev.confidence {
                Some(x) => s.binner.bin_num(x),
                None => BinOf::Bin(s.binner.missing()),
            };
            match b {
                BinOf::Bin(b) => out.push((s.offset + b as usize) as u32),
                BinOf::Invalid => self.counters.invalid_values += 1,
            }
        }
    }

    /// The row of the pane holding event time `t_ms`, the window moved on
    /// to it if it is the newest; `None` (counted as late) when the pane
    /// already left the window.
    fn row_for(&mut self, t_ms: i64) -> Option<usize> {
        let pane = self.pane_of(t_ms);
        if let Some(head) = self.head {
            if pane <= head - self.n as i64 {
                self.counters.late += 1;
                return None;
            }
        }
        if self.head.is_none_or(|h| pane > h) {
            self.advance(pane);
        }
        let row = pane.rem_euclid(self.n as i64) as usize;
        if self.pane_ids[row] != pane {
            // A late-but-in-window line for a pane nobody has written yet.
            self.pane_ids[row] = pane;
        }
        Some(row)
    }

    /// A pane's row as counts and the totals: allocated (or the spare
    /// reused) at its pane's first count, unpacked when a late line reaches
    /// a packed one.
    fn row_mut(&mut self, row: usize) -> (&mut [u32], &mut [u64]) {
        if !matches!(self.rows[row], Row::Dense(_)) {
            let mut fresh = std::mem::take(&mut self.spare);
            fresh.clear();
            fresh.resize(self.layout.total_bins, 0);
            let old = std::mem::replace(&mut self.rows[row], Row::Empty);
            if matches!(old, Row::Packed(_)) {
                self.unpacked.push(row);
            }
            old.for_each(|i, c| fresh[i] = c);
            self.rows[row] = Row::Dense(fresh);
        }
        let Row::Dense(r) = &mut self.rows[row] else {
            unreachable!("made dense above")
        };
        (r, self.totals.as_slice_mut().expect("contiguous"))
    }

    /// Counts one event, given its bins from [`Window::bins_of`] on a window
    /// of the same layout.
    pub fn add(&mut self, t_ms: i64, bins: &[u32]) -> Inserted {
        let Some(row) = self.row_for(t_ms) else {
            return Inserted::Late;
        };
        self.seq += 1;
        self.counters.events += 1;
        self.pane_samples[row] += 1;
        self.samples += 1;
        let (pane_row, totals) = self.row_mut(row);
        for &i in bins {
            // Indices come from bins_of on this layout: always in range.
            if let (Some(p), Some(t)) = (pane_row.get_mut(i as usize), totals.get_mut(i as usize)) {
                *p += 1;
                *t += 1;
            }
        }
        Inserted::Counted
    }

    /// Adds precomputed counts (a batch-statistics line's class counts) at
    /// event time `t_ms`: `counts` pairs flat bin indices with counts. The
    /// counts added (clamped so no pane count overflows) are also added to
    /// the window's size, as that many events.
    pub fn add_counts(&mut self, t_ms: i64, counts: &[(u32, u64)]) -> Inserted {
        let Some(row) = self.row_for(t_ms) else {
            return Inserted::Late;
        };
        let mut added = 0u64;
        let (pane_row, totals) = self.row_mut(row);
        for &(i, c) in counts {
            if let (Some(p), Some(t)) = (pane_row.get_mut(i as usize), totals.get_mut(i as usize)) {
                let c = c.min(u64::from(u32::MAX - *p));
                *p += c as u32;
                *t = t.saturating_add(c);
                added += c;
            }
        }
        self.pane_samples[row] = self.pane_samples[row].saturating_add(added);
        self.samples = self.samples.saturating_add(added);
        self.counters.events = self.counters.events.saturating_add(added);
        // A count window moves on by the events the batch stood for.
        self.seq = self.seq.saturating_add(added);
        Inserted::Counted
    }

    /// The panes as they are, for checkpoints.
    pub fn state(&self) -> WindowState {
        let mut panes = Vec::new();
        for row in 0..self.n {
            let r = &self.rows[row];
            if self.pane_ids[row] == i64::MIN || self.pane_samples[row] == 0 {
                continue;
            }
            // Sparse: (index, count) pairs for the non-zero bins only.
            let mut counts = Vec::new();
            r.for_each(|i, c| counts.push((i as u32, c)));
            panes.push(PaneState {
                id: self.pane_ids[row],
                samples: self.pane_samples[row],
                counts,
            });
        }
        WindowState {
            head: self.head,
            seq: self.seq,
            counters: self.counters,
            panes,
        }
    }

    /// Restores panes saved by [`Window::state`] on the same layout and spec.
    pub fn restore(&mut self, st: &WindowState) -> Result<(), String> {
        let bins = self.layout.total_bins;
        for p in &st.panes {
            if let Some((i, _)) = p.counts.iter().find(|(i, _)| *i as usize >= bins) {
                return Err(format!("bin {i} out of range for a layout of {bins} bins"));
            }
        }
        *self = Window::new(self.layout.clone(), self.spec);
        self.head = st.head;
        self.seq = st.seq;
        self.counters = st.counters;
        let Some(head) = st.head else { return Ok(()) };
        for p in &st.panes {
            if p.id <= head - self.n as i64 || p.id > head {
                continue; // expired while we were down
            }
            let row = p.id.rem_euclid(self.n as i64) as usize;
            self.pane_ids[row] = p.id;
            self.pane_samples[row] = p.samples;
            self.samples += p.samples;
            if p.counts.is_empty() {
                continue;
            }
            let (r, totals) = self.row_mut(row);
            for &(i, c) in &p.counts {
                r[i as usize] += c;
                totals[i as usize] += u64::from(c);
            }
        }
        self.unpacked.clear();
        for row in 0..self.n {
            if self.pane_ids[row] != head {
                self.pack_row(row);
            }
        }
        Ok(())
    }
}

/// A window's panes in a serialisable form (checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    pub head: Option<i64>,
    pub seq: u64,
    pub counters: WindowCounters,
    pub panes: Vec<PaneState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaneState {
    pub id: i64,
    pub samples: u64,
    pub counts: Vec<(u32, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::baseline::{Baseline, Binning, Bins, FeatureBaseline, SCHEMA_VERSION};
    use crate::engine::decode::{Decoded, Decoder};
    use proptest::prelude::*;

    fn layout() -> Arc<Layout> {
        let b = Baseline {
            schema_version: SCHEMA_VERSION,
            model: "m".into(),
            version: "v".into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            source: "test".into(),
            samples: 10,
            binning: Binning::default(),
            features: vec![
                FeatureBaseline {
                    name: "c".into(),
                    bins: Bins::Categorical {
                        categories: vec!["a".into(), "b".into()],
                    },
                    counts: vec![5, 5, 0, 0],
                    null: None,
                },
                FeatureBaseline {
                    name: "x".into(),
                    bins: Bins::Numeric {
                        edges: vec![0.0, 1.0, 2.0],
                        mean: 1.0,
                        std: 0.5,
                    },
                    counts: vec![0, 5, 5, 0, 0],
                    null: None,
                },
            ],
            prediction: Some(FeatureBaseline {
                name: "prediction".into(),
                bins: Bins::Categorical {
                    categories: vec!["yes".into()],
                },
                counts: vec![10, 0, 0],
                null: None,
            }),
            confidence: None,
            latency: Vec::new(),
            quality: None,
        };
        Arc::new(Layout::new(b))
    }

    fn ev(line: &str) -> Event<'static> {
        match Decoder::new(Default::default()).decode(line.as_bytes()) {
            Decoded::Event(e) => e.into_owned(),
            other => panic!("{other:?}"),
        }
    }

    const MIN: i64 = 60_000;

    fn spec() -> WindowSpec {
        WindowSpec::Time {
            length_ms: 10 * MIN,
            pane_ms: MIN,
        }
    }

    #[test]
    fn long_windows_get_larger_panes_not_more_of_them() {
        const DAY: i64 = 24 * 60 * MIN;
        let day = WindowSpec::Time {
            length_ms: DAY,
            pane_ms: 30_000,
        };
        assert_eq!(day.panes(), 2880);
        let (capped, changed) = day.capped(60);
        assert!(changed);
        assert_eq!(
            capped,
            WindowSpec::Time {
                length_ms: DAY,
                pane_ms: 24 * MIN
            }
        );
        assert_eq!(capped.panes(), 60);
        // A length that does not divide: whole seconds, still at most 60.
        let (odd, _) = WindowSpec::Time {
            length_ms: 7 * DAY + 1,
            pane_ms: 30_000,
        }
        .capped(60);
        assert!(odd.panes() <= 60, "{odd:?}");
        let WindowSpec::Time { pane_ms, .. } = odd else {
            unreachable!()
        };
        assert_eq!(pane_ms % 1000, 0);
        // Windows within the cap are untouched.
        assert_eq!(spec().capped(60), (spec(), false));
        assert_eq!(
            WindowSpec::Count {
                events: 1000,
                panes: 200
            }
            .capped(60),
            (
                WindowSpec::Count {
                    events: 1000,
                    panes: 60
                },
                true
            )
        );
    }

    fn bound(w: &Window) -> usize {
        let l = w.layout();
        Window::bytes_bound(l.total_bins, l.slots.len(), w.spec().panes(), 16)
    }

    #[test]
    fn empty_panes_cost_nothing_and_expired_ones_are_freed() {
        let mut w = Window::new(layout(), spec());
        let row = w.layout().total_bins * 4;
        let e = ev(r#"{"model_id":"m","prediction":"yes","input_features":{"c":"a","x":0.5}}"#);
        w.insert(&e, 0);
        // One pane, one row (and the scratch of a first event).
        let empty = w.heap_bytes() - row;
        assert!(empty < Window::new(layout(), spec()).heap_bytes() + row);
        for p in 1..10 {
            w.insert(&e, p * MIN);
        }
        // The head's row is dense; the nine before it are packed: one
        // event's three non-zero bins (c, x, prediction) take six bytes,
        // not a row.
        assert_eq!(w.heap_bytes(), empty + row + 9 * 6, "nine packed panes");
        assert!(w.heap_bytes() <= bound(&w));
        // A late line unpacks its pane; the next pane packs it again.
        w.insert(&e, 5 * MIN);
        let list = w.unpacked.capacity() * 8;
        assert_eq!(w.heap_bytes(), empty + row + 8 * 6 + row + list);
        w.insert(&e, 10 * MIN);
        assert_eq!(w.samples(), 11, "pane 0 expired, the late line counted");
        assert_eq!(w.heap_bytes(), empty + row + 9 * 6);
        // A day later every pane has expired: one spare row is kept.
        w.advance_to(24 * 60 * MIN);
        assert_eq!(w.samples(), 0);
        assert_eq!(w.heap_bytes(), empty + row);
        // The next pane reuses it.
        w.insert(&e, 24 * 60 * MIN);
        assert_eq!(w.heap_bytes(), empty + row);
        assert_eq!(w.samples(), 1);
    }

    proptest! {
        /// Packed panes, late lines into them and expiry keep the totals
        /// equal to a plain recount of the events still in the window.
        #[test]
        fn packed_panes_keep_the_counts(
            events in proptest::collection::vec((0i64..30 * MIN, 0usize..4), 1..400),
        ) {
            let lines = [
                r#"{"model_id":"m","prediction":"yes","input_features":{"c":"a","x":0.5}}"#,
                r#"{"model_id":"m","prediction":"yes","input_features":{"c":"b","x":1.5}}"#,
                r#"{"model_id":"m","input_features":{"x":9.0}}"#,
                r#"{"model_id":"m","prediction":"no","input_features":{"c":"z"}}"#,
            ];
            let evs: Vec<Event<'static>> = lines.iter().map(|l| ev(l)).collect();
            let mut w = Window::new(layout(), spec());
            let mut kept: Vec<(i64, usize)> = Vec::new();
            for (t, k) in events {
                if w.insert(&evs[k], t) == Inserted::Counted {
                    kept.push((t, k));
                }
                // What a plain recount of the live panes gives.
                let (start, _) = w.span_ms().unwrap();
                let mut want = vec![0u64; w.layout().total_bins];
                let mut probe = Window::new(layout(), spec());
                let mut bins = Vec::new();
                let mut n = 0;
                for (t2, k2) in &kept {
                    if *t2 >= start {
                        probe.bins_of(&evs[*k2], &mut bins);
                        for b in &bins {
                            want[*b as usize] += 1;
                        }
                        n += 1;
                    }
                }
                prop_assert_eq!(w.totals(), &want[..]);
                prop_assert_eq!(w.samples(), n);
            }
            // And a checkpoint of packed panes restores the same counts.
            let mut back = Window::new(layout(), spec());
            back.restore(&w.state()).unwrap();
            prop_assert_eq!(back.totals(), w.totals());
        }

        #[test]
        fn memory_stays_within_the_bound(times in proptest::collection::vec(0i64..40 * MIN, 1..300)) {
            let mut w = Window::new(layout(), spec());
            let e = ev(r#"{"model_id":"m","prediction":"yes","input_features":{"c":"b","x":1.5}}"#);
            for t in times {
                w.insert(&e, t);
                prop_assert!(w.heap_bytes() <= bound(&w), "{} > {}", w.heap_bytes(), bound(&w));
            }
        }
    }

    #[test]
    fn counts_every_distribution_including_missing() {
        let mut w = Window::new(layout(), spec());
        let e = ev(r#"{"model_id":"m","prediction":"yes","input_features":{"c":"b","x":1.5}}"#);
        assert_eq!(w.insert(&e, 0), Inserted::Counted);
        let e = ev(r#"{"model_id":"m","prediction":"no","input_features":{"c":"zzz","y":3}}"#);
        w.insert(&e, 1);
        assert_eq!(w.samples(), 2);
        assert_eq!(w.slot_counts(0), &[0, 1, 1, 0]); // b, then other
        assert_eq!(w.slot_counts(1), &[0, 0, 1, 0, 1]); // [1,2], then missing
        assert_eq!(w.slot_counts(2), &[1, 1, 0]); // yes, then other
        assert_eq!(w.counters.unknown_features, 1);
    }

    #[test]
    fn panes_expire_and_late_events_are_dropped() {
        let mut w = Window::new(layout(), spec());
        let e = ev(r#"{"model_id":"m","input_features":{"x":0.5}}"#);
        for minute in 0..10 {
            w.insert(&e, minute * MIN);
        }
        assert_eq!(w.samples(), 10);
        // Minute 10 pushes minute 0 out.
        w.insert(&e, 10 * MIN);
        assert_eq!(w.samples(), 10);
        assert_eq!(w.insert(&e, 0), Inserted::Late);
        assert_eq!(w.counters.late, 1);
        // An out-of-order event still inside the window is counted.
        assert_eq!(w.insert(&e, 5 * MIN + 1), Inserted::Counted);
        assert_eq!(w.samples(), 11);
        // Idle: the window drains with time.
        w.advance_to(19 * MIN);
        assert_eq!(w.samples(), 1);
        w.advance_to(100 * MIN);
        assert_eq!(w.samples(), 0);
        assert!(w.totals().iter().all(|c| *c == 0));
    }

    #[test]
    fn count_window_keeps_the_last_n_events_to_a_pane() {
        let mut w = Window::new(
            layout(),
            WindowSpec::Count {
                events: 100,
                panes: 10,
            },
        );
        let e = ev(r#"{"model_id":"m","input_features":{"x":0.5}}"#);
        for _ in 0..1000 {
            w.insert(&e, 0);
        }
        assert!((90..=100).contains(&w.samples()), "{}", w.samples());
    }

    #[test]
    fn state_round_trips() {
        let mut w = Window::new(layout(), spec());
        for i in 0..50 {
            let e = ev(&format!(
                r#"{{"model_id":"m","prediction":"yes","input_features":{{"x":{},"c":"a"}}}}"#,
                i as f64 / 25.0
            ));
            w.insert(&e, i * 20_000);
        }
        let st = w.state();
        let mut w2 = Window::new(layout(), spec());
        w2.restore(&st).unwrap();
        assert_eq!(w2.totals(), w.totals());
        assert_eq!(w2.samples(), w.samples());
        let json = serde_json::to_string(&st).unwrap();
        let back: WindowState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);
    }

    proptest! {
        /// Whatever the arrival order, the totals equal a recount of the
        /// events whose pane is inside the final window.
        #[test]
        fn totals_match_a_recount(times in proptest::collection::vec(0i64..(40 * MIN), 1..300)) {
            let mut w = Window::new(layout(), spec());
            let e = ev(r#"{"model_id":"m","input_features":{"x":0.5}}"#);
            let mut counted = Vec::new();
            for &t in &times {
                if w.insert(&e, t) == Inserted::Counted {
                    counted.push(t);
                }
            }
            let head = counted.iter().map(|t| t / MIN).max().unwrap();
            let expect = counted.iter().filter(|t| **t / MIN > head - 10).count() as u64;
            prop_assert_eq!(w.samples(), expect);
            prop_assert_eq!(w.slot_counts(1)[1], expect);
            let total: u64 = w.totals().iter().sum();
            // Each event counts once per distribution: 2 features + prediction.
            prop_assert_eq!(total, 3 * expect);
        }
    }
}
