//! Score history: each distribution's scores at every evaluation, for the
//! last hour minute by minute and for the last day half-hour by half-hour,
//! in two fixed rings.
//!
//! This module owns how much of the past a window remembers. A history
//! keeps the scores that can fire (PSI, and every metric a rule judges;
//! [`crate::engine::EngineConfig::history_metrics`]): a point is the worst
//! score of its step, so a spike between two points is not lost when the
//! history coarsens. For p-values, where smaller is worse, that is the
//! smallest. The rings never grow: a distribution's history is
//! [`History::bytes`] whatever the traffic, and the engine reserves it with
//! the model. Points are stored in 16 bits ([`encode`]: three significant
//! digits from 1e-12 to 8e6), which is what lets a thousand models keep a
//! day of every such score. Time is a parameter (event time in replay, the
//! wall clock in the daemon).

/// Steps of the fine ring: a minute, for an hour.
pub const FINE_STEP_MS: i64 = 60_000;
const FINE: usize = 60;
/// Steps of the coarse ring: half an hour, for a day.
pub const COARSE_STEP_MS: i64 = 30 * 60_000;
const COARSE: usize = 48;

/// A 16-bit point: no value.
const NONE: u16 = u16::MAX;
/// Exponents kept: 2^-39 (about 1.8e-12) up to 2^23 (about 8.4e6).
const EXP_BIAS: i32 = 127 - 40;

/// A non-negative score in 16 bits: 6 bits of exponent, 10 of mantissa
/// (relative error at most 2^-11, about 0.05%). Zero and anything below
/// 1.8e-12 is 0; anything above 8.4e6 is the largest point; NaN is
/// [`NONE`]. Negative values (rounding noise of a score that is never
/// negative) are 0.
pub fn encode(v: f64) -> u16 {
    if v.is_nan() {
        return NONE;
    }
    let v = v.max(0.0) as f32;
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - EXP_BIAS;
    if exp < 1 {
        return 0;
    }
    // Round the 23-bit mantissa to 10 bits; a carry moves to the exponent.
    let m = (bits & 0x7f_ffff) + (1 << 12);
    let (exp, m) = if m >> 23 != 0 {
        (exp + 1, 0)
    } else {
        (exp, m >> 13)
    };
    if exp > 63 || (exp == 63 && m >= 1023) {
        return (63 << 10) | 1022;
    }
    ((exp as u16) << 10) | m as u16
}

/// The value of a point made by [`encode`]; `None` for no value.
pub fn decode(p: u16) -> Option<f32> {
    match p {
        NONE => None,
        0 => Some(0.0),
        p => {
            let exp = u32::from(p >> 10) + EXP_BIAS as u32;
            Some(f32::from_bits((exp << 23) | (u32::from(p & 0x3ff) << 13)))
        }
    }
}

/// Whether a larger score is worse (a divergence) or a smaller one (a
/// p-value); a step keeps its worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worse {
    Larger,
    Smaller,
}

/// Ring heads: the step of the newest point, or `i64::MIN` before the
/// first.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Heads {
    fine: i64,
    coarse: i64,
}

/// A distribution's scores over the last day: fine for the last hour,
/// coarse before, one column per kept metric.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    heads: Heads,
    /// `FINE` fine steps then `COARSE` coarse ones, each `columns` points.
    points: Box<[u16]>,
}

impl History {
    /// A history of `columns` metrics.
    pub fn new(columns: usize) -> History {
        History {
            heads: Heads {
                fine: i64::MIN,
                coarse: i64::MIN,
            },
            points: vec![NONE; (FINE + COARSE) * columns].into_boxed_slice(),
        }
    }

    /// What one distribution's history of `columns` metrics holds, whatever
    /// happens.
    pub const fn bytes(columns: usize) -> usize {
        std::mem::size_of::<History>() + (FINE + COARSE) * columns * 2
    }

    fn columns(&self) -> usize {
        self.points.len() / (FINE + COARSE)
    }

    /// Records the scores at `t_ms`, one per column (NaN: none), each
    /// judged by its `worse`.
    pub fn record(&mut self, t_ms: i64, values: &[f64], worse: &[Worse]) {
        let cols = self.columns();
        let (fine, coarse) = self.points.split_at_mut(FINE * cols);
        let step = t_ms.div_euclid(FINE_STEP_MS);
        if let Some(row) = ring_row(&mut self.heads.fine, fine, FINE, cols, step) {
            keep_worst(row, values, worse);
        }
        let step = t_ms.div_euclid(COARSE_STEP_MS);
        if let Some(row) = ring_row(&mut self.heads.coarse, coarse, COARSE, cols, step) {
            keep_worst(row, values, worse);
        }
    }

    /// Column `col`'s (start of the step in ms, worst score in it), oldest
    /// first: the coarse points before the fine ring's first step, then
    /// the fine ones.
    pub fn points(&self, col: usize) -> Vec<(i64, f32)> {
        let cols = self.columns();
        if col >= cols {
            return Vec::new();
        }
        let (fine, coarse) = self.points.split_at(FINE * cols);
        let fine_from = match self.heads.fine {
            i64::MIN => i64::MAX,
            h => (h - FINE as i64 + 1) * FINE_STEP_MS,
        };
        let mut out: Vec<(i64, f32)> =
            ring_points(self.heads.coarse, coarse, COARSE, cols, col, COARSE_STEP_MS)
                .filter(|(t, _)| *t + COARSE_STEP_MS <= fine_from)
                .collect();
        out.extend(ring_points(
            self.heads.fine,
            fine,
            FINE,
            cols,
            col,
            FINE_STEP_MS,
        ));
        out
    }
}

fn keep_worst(row: &mut [u16], values: &[f64], worse: &[Worse]) {
    for ((p, v), w) in row.iter_mut().zip(values).zip(worse) {
        let new = encode(*v);
        if new == NONE {
            continue;
        }
        // The encoding is monotonic, so points compare as their values.
        let better = match w {
            Worse::Larger => new > *p,
            Worse::Smaller => new < *p,
        };
        if *p == NONE || better {
            *p = new;
        }
    }
}

/// The row of `step` in a ring of `n` rows of `cols` points whose newest
/// step is `head`, clearing the steps skipped since; `None` when `step` is
/// older than the ring.
fn ring_row<'a>(
    head: &mut i64,
    points: &'a mut [u16],
    n: usize,
    cols: usize,
    step: i64,
) -> Option<&'a mut [u16]> {
    if *head != i64::MIN && step <= *head - n as i64 {
        return None;
    }
    if *head == i64::MIN || step > *head {
        // Steps skipped since the newest point have no value.
        let from = if *head == i64::MIN {
            step - n as i64 + 1
        } else {
            (*head + 1).max(step - n as i64 + 1)
        };
        for s in from..=step {
            let r = s.rem_euclid(n as i64) as usize;
            points[r * cols..(r + 1) * cols].fill(NONE);
        }
        *head = step;
    }
    let r = step.rem_euclid(n as i64) as usize;
    Some(&mut points[r * cols..(r + 1) * cols])
}

/// (step start in ms, value) of every step of column `col` that has one,
/// oldest first.
fn ring_points(
    head: i64,
    points: &[u16],
    n: usize,
    cols: usize,
    col: usize,
    step_ms: i64,
) -> impl Iterator<Item = (i64, f32)> + '_ {
    (0..n as i64)
        .filter(move |_| head != i64::MIN)
        .map(move |k| head - n as i64 + 1 + k)
        .filter_map(move |s| {
            let r = s.rem_euclid(n as i64) as usize;
            decode(points[r * cols + col]).map(|v| (s * step_ms, v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LARGER: [Worse; 1] = [Worse::Larger];

    #[test]
    fn recent_points_are_fine_older_ones_coarse_and_each_keeps_its_worst() {
        let mut h = History::new(1);
        // Every 30 s for three hours: the score rises by 0.001 a step, with
        // one spike at 1 h.
        let n = 3 * 120;
        for i in 0..n {
            let v = if i == 120 { 5.0 } else { i as f64 * 0.001 };
            h.record(i * 30_000, &[v], &LARGER);
        }
        let p = h.points(0);
        let last = (n - 1) * 30_000;
        // The last hour minute by minute: 60 points.
        let fine: Vec<_> = p.iter().filter(|(t, _)| *t > last - 3_600_000).collect();
        assert_eq!(fine.len(), 60, "{fine:?}");
        // Each minute holds the worse of its two evaluations.
        let (t, v) = **fine.last().unwrap();
        assert_eq!(t, (last / 60_000) * 60_000);
        let want = (n - 1) as f64 * 0.001;
        assert!((f64::from(v) - want).abs() <= want * 1e-3, "{v}");
        // Before: half hours, oldest first, the spike kept in its half hour.
        let coarse: Vec<_> = p.iter().filter(|(t, _)| *t <= last - 3_600_000).collect();
        assert!(coarse.windows(2).all(|w| w[1].0 - w[0].0 == COARSE_STEP_MS));
        assert!(coarse.iter().any(|(_, v)| *v == 5.0), "{coarse:?}");
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn a_gap_leaves_no_stale_points_and_old_scores_are_dropped() {
        let mut h = History::new(1);
        h.record(0, &[1.0], &LARGER);
        // Two days later: the old point is gone from both rings.
        h.record(2 * 86_400_000, &[2.0], &LARGER);
        assert_eq!(h.points(0), vec![(2 * 86_400_000, 2.0)]);
        // Older than the rings: ignored; not a number: ignored.
        h.record(0, &[9.0], &LARGER);
        h.record(2 * 86_400_000 + 60_000, &[f64::NAN], &LARGER);
        assert_eq!(h.points(0), vec![(2 * 86_400_000, 2.0)]);
        assert!(History::bytes(2) < 512);
    }

    #[test]
    fn columns_are_kept_apart_and_a_p_value_keeps_its_smallest() {
        let mut h = History::new(2);
        let worse = [Worse::Larger, Worse::Smaller];
        h.record(0, &[0.1, 0.5], &worse);
        h.record(10_000, &[0.3, 0.01], &worse);
        h.record(20_000, &[0.2, 0.2], &worse);
        let near = |a: f32, b: f64| (f64::from(a) - b).abs() <= b * 1e-3;
        let psi = h.points(0);
        let p = h.points(1);
        assert_eq!((psi.len(), p.len()), (1, 1));
        assert!(near(psi[0].1, 0.3) && near(p[0].1, 0.01), "{psi:?} {p:?}");
        assert!(h.points(2).is_empty(), "no third column");
    }

    #[test]
    fn the_encoding_keeps_order_ends_and_no_value() {
        assert_eq!(decode(encode(0.0)), Some(0.0));
        assert_eq!(decode(encode(-1e-18)), Some(0.0));
        assert_eq!(decode(encode(1e-20)), Some(0.0), "below the range");
        assert_eq!(decode(encode(f64::NAN)), None);
        let top = decode(encode(f64::INFINITY)).unwrap();
        assert!(top > 8e6 && top.is_finite(), "{top}");
        assert_eq!(encode(1e300), encode(f64::INFINITY));
    }

    proptest! {
        /// Three significant digits over the range, and order kept (the
        /// worst-of-step comparison is made on the codes).
        #[test]
        fn the_encoding_is_close_and_monotonic(a in 2e-12f64..8e6, b in 2e-12f64..8e6) {
            let back = f64::from(decode(encode(a)).unwrap());
            prop_assert!((back - a).abs() <= a * (1.0 / 2048.0 + 1e-7), "{a} -> {back}");
            if a <= b {
                prop_assert!(encode(a) <= encode(b));
            }
        }
    }
}
