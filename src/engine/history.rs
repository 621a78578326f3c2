//! Score history: each distribution's PSI at every evaluation, for the
//! last hour minute by minute and for the last day half-hour by half-hour,
//! in two fixed rings.
//!
//! This module owns how much of the past a window remembers. A point is the
//! worst (largest) score of its step, so a spike between two points is not
//! lost when the history coarsens. The rings never grow: a distribution's
//! history is [`History::BYTES`] whatever the traffic, and the engine
//! reserves it with the model. Time is a parameter (event time in replay,
//! the wall clock in the daemon).

/// One ring of points `step_ms` apart; NaN is a step without evaluation.
#[derive(Debug, Clone, PartialEq)]
struct Ring<const N: usize> {
    points: [f32; N],
    /// The step of the newest point, or `i64::MIN` before the first.
    head: i64,
}

impl<const N: usize> Ring<N> {
    fn new() -> Self {
        Ring {
            points: [f32::NAN; N],
            head: i64::MIN,
        }
    }

    fn record(&mut self, step: i64, v: f32) {
        if self.head != i64::MIN && step <= self.head - N as i64 {
            return; // Older than the ring: nothing to keep.
        }
        if self.head == i64::MIN || step > self.head {
            // Steps skipped since the newest point have no value.
            let from = if self.head == i64::MIN {
                step - N as i64 + 1
            } else {
                (self.head + 1).max(step - N as i64 + 1)
            };
            for s in from..=step {
                self.points[s.rem_euclid(N as i64) as usize] = f32::NAN;
            }
            self.head = step;
        }
        let p = &mut self.points[step.rem_euclid(N as i64) as usize];
        if p.is_nan() || v > *p {
            *p = v;
        }
    }

    /// (step, value) of every step that has one, oldest first.
    fn points(&self) -> impl Iterator<Item = (i64, f32)> + '_ {
        let head = self.head;
        (0..N as i64)
            .filter(move |_| head != i64::MIN)
            .map(move |k| head - N as i64 + 1 + k)
            .map(move |s| (s, self.points[s.rem_euclid(N as i64) as usize]))
            .filter(|(_, v)| !v.is_nan())
    }
}

/// Steps of the fine ring: a minute, for an hour.
pub const FINE_STEP_MS: i64 = 60_000;
const FINE: usize = 60;
/// Steps of the coarse ring: half an hour, for a day.
pub const COARSE_STEP_MS: i64 = 30 * 60_000;
const COARSE: usize = 48;

/// A distribution's score over the last day: fine for the last hour,
/// coarse before.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    fine: Ring<FINE>,
    coarse: Ring<COARSE>,
}

impl Default for History {
    fn default() -> Self {
        History {
            fine: Ring::new(),
            coarse: Ring::new(),
        }
    }
}

impl History {
    /// What one distribution's history holds, whatever happens.
    pub const BYTES: usize = std::mem::size_of::<History>();

    /// Records a score at `t_ms`; a NaN or infinite one is not a point.
    pub fn record(&mut self, t_ms: i64, v: f64) {
        if !v.is_finite() {
            return;
        }
        let v = v as f32;
        self.fine.record(t_ms.div_euclid(FINE_STEP_MS), v);
        self.coarse.record(t_ms.div_euclid(COARSE_STEP_MS), v);
    }

    /// (start of the step in ms, worst score in it), oldest first: the
    /// coarse points before the fine ring's first step, then the fine ones.
    pub fn points(&self) -> Vec<(i64, f32)> {
        let fine: Vec<(i64, f32)> = self
            .fine
            .points()
            .map(|(s, v)| (s * FINE_STEP_MS, v))
            .collect();
        let fine_from = match self.fine.head {
            i64::MIN => i64::MAX,
            h => (h - FINE as i64 + 1) * FINE_STEP_MS,
        };
        let mut out: Vec<(i64, f32)> = self
            .coarse
            .points()
            .map(|(s, v)| (s * COARSE_STEP_MS, v))
            .filter(|(t, _)| *t + COARSE_STEP_MS <= fine_from)
            .collect();
        out.extend(fine);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_points_are_fine_older_ones_coarse_and_each_keeps_its_worst() {
        let mut h = History::default();
        // Every 30 s for three hours: the score rises by 0.001 a step, with
        // one spike at 1 h.
        let n = 3 * 120;
        for i in 0..n {
            let v = if i == 120 { 5.0 } else { i as f64 * 0.001 };
            h.record(i * 30_000, v);
        }
        let p = h.points();
        let last = (n - 1) * 30_000;
        // The last hour minute by minute: 60 points.
        let fine: Vec<_> = p.iter().filter(|(t, _)| *t > last - 3_600_000).collect();
        assert_eq!(fine.len(), 60, "{fine:?}");
        // Each minute holds the worse of its two evaluations.
        let (t, v) = **fine.last().unwrap();
        assert_eq!(t, (last / 60_000) * 60_000);
        assert!((f64::from(v) - (n - 1) as f64 * 0.001).abs() < 1e-6);
        // Before: half hours, oldest first, the spike kept in its half hour.
        let coarse: Vec<_> = p.iter().filter(|(t, _)| *t <= last - 3_600_000).collect();
        assert!(coarse.windows(2).all(|w| w[1].0 - w[0].0 == COARSE_STEP_MS));
        assert!(coarse.iter().any(|(_, v)| *v == 5.0), "{coarse:?}");
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn a_gap_leaves_no_stale_points_and_old_scores_are_dropped() {
        let mut h = History::default();
        h.record(0, 1.0);
        // Two days later: the old point is gone from both rings.
        h.record(2 * 86_400_000, 2.0);
        assert_eq!(h.points(), vec![(2 * 86_400_000, 2.0)]);
        // Older than the rings: ignored; not a number: ignored.
        h.record(0, 9.0);
        h.record(2 * 86_400_000 + 60_000, f64::NAN);
        assert_eq!(h.points(), vec![(2 * 86_400_000, 2.0)]);
        const { assert!(History::BYTES < 512) };
    }
}
