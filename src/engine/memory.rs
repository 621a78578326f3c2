//! Memory: what the engine's state may take, known before start and kept at
//! run time.
//!
//! This module owns the memory budget. Every structure the engine grows
//! has a bound stated from the config, beside the structure:
//!
//! - a drift window: panes × bins × 4 bytes of counts, plus its totals and
//!   bookkeeping ([`Window::bytes_bound`]); a model has one, one more for
//!   its latency stages, and one per arm (`limits.max_arms_per_model`);
//! - a model's health: its pane ring and latency histograms
//!   (`HealthConfig::model_bytes`);
//! - a (model, arm)'s feedback counts (`ExperimentConfig::arm_bytes`), and
//!   the feedback join at its caps (`ExperimentConfig::join_bytes`);
//! - an automatic baseline being collected
//!   (`BaselineBuilder::bounded_bytes`);
//! - the loaded baselines themselves, with their null fits: measured, not
//!   bounded, since they are read before start ([`Layout::heap_bytes`]).
//!
//! [`Layout::heap_bytes`]: crate::engine::baseline::Layout::heap_bytes
//! [`Window::bytes_bound`]: crate::engine::window::Window::bytes_bound
//!
//! The module imports nothing from the engine: the structures' files use
//! its [`alloc_bytes`] to state their own sizes, and the pipeline, which
//! knows them all, adds them up.
//!
//! `EngineConfig::memory_plan` adds them up for a configuration and the
//! baselines it will load: what `check-config` and the start-up log state
//! ([`Plan`]). [`Budget`] keeps
//! the total at run time: the engine reserves a structure's bound before
//! it allocates it, and a new model, arm, health state or collection that
//! would pass the budget is refused and counted, never allocated.

/// Bytes reserved against a limit.
#[derive(Debug, Clone, Default)]
pub(crate) struct Budget {
    limit: Option<usize>,
    used: usize,
}

impl Budget {
    /// `None`: no limit (counted all the same).
    pub(crate) fn new(limit: Option<usize>) -> Budget {
        Budget { limit, used: 0 }
    }

    /// Reserves `bytes` if they fit.
    pub(crate) fn try_reserve(&mut self, bytes: usize) -> bool {
        match self.limit {
            Some(l) if self.used.saturating_add(bytes) > l => false,
            _ => {
                self.used += bytes;
                true
            }
        }
    }

    /// Reserves `bytes` even past the limit: for what is held anyway.
    pub(crate) fn reserve_anyway(&mut self, bytes: usize) {
        self.used = self.used.saturating_add(bytes);
    }

    pub(crate) fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
    }

    pub(crate) fn used(&self) -> usize {
        self.used
    }

    pub(crate) fn limit(&self) -> Option<usize> {
        self.limit
    }
}

/// One line of the memory plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub what: String,
    /// How it is made, e.g. "2 models × 3 windows × 310 bins × 20 panes × 4 B".
    pub formula: String,
    pub bytes: usize,
}

/// What a configuration may hold, term by term.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub terms: Vec<Term>,
}

impl Plan {
    pub fn total(&self) -> usize {
        self.terms.iter().map(|t| t.bytes).sum()
    }

    pub fn push(&mut self, what: impl Into<String>, formula: impl Into<String>, bytes: usize) {
        self.terms.push(Term {
            what: what.into(),
            formula: formula.into(),
            bytes,
        });
    }

    /// The `n` largest terms, largest first.
    pub fn largest(&self, n: usize) -> Vec<&Term> {
        let mut v: Vec<&Term> = self.terms.iter().collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        v.truncate(n);
        v
    }
}

/// What one allocation of `bytes` takes from glibc's malloc: its 8-byte
/// header, rounded up to 16, at least 32; nothing for an empty one.
pub(crate) fn alloc_bytes(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes + 8).next_multiple_of(16).max(32)
    }
}

/// `1234567` as `1.2 MiB`.
pub(crate) fn human(bytes: usize) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if b < K {
        format!("{bytes} B")
    } else if b < K * K {
        format!("{:.1} KiB", b / K)
    } else if b < K * K * K {
        format!("{:.1} MiB", b / (K * K))
    } else {
        format!("{:.2} GiB", b / (K * K * K))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_what_would_pass_it_and_takes_back_what_is_released() {
        let mut b = Budget::new(Some(100));
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert_eq!(b.used(), 60);
        assert!(b.try_reserve(40));
        b.release(60);
        assert!(b.try_reserve(60));
        assert_eq!(b.used(), 100);
        let mut none = Budget::new(None);
        assert!(none.try_reserve(usize::MAX / 2));
    }

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(96 << 20), "96.0 MiB");
        assert_eq!(human(3 << 30), "3.00 GiB");
    }
}
