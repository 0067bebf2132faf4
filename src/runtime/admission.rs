//! Admission: which waiting request may start now. A request runs when fewer than
//! `max_running` are running and the decode batch, with it, fits the KV budget. The batch
//! pads every row to the longest (see `model/cache/rows.rs`), so its cost is rows x the
//! longest end position (prompt + `max_tokens`); counting the end, not today's length,
//! means a running sequence never outgrows what was admitted, so memory never runs out
//! mid-generation.

/// The runtime's limits, in sequences and KV positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_running: usize,
    pub kv_budget_tokens: usize,
}

impl Limits {
    /// Whether a request ending at position `new_end` may join `running_ends`.
    pub fn admits(&self, running_ends: &[usize], new_end: usize) -> bool {
        let rows = running_ends.len() + 1;
        let longest = running_ends.iter().copied().max().unwrap_or(0).max(new_end);
        rows <= self.max_running && rows.saturating_mul(longest) <= self.kv_budget_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_times_the_longest_end_must_fit() {
        let l = Limits {
            max_running: 3,
            kv_budget_tokens: 1000,
        };
        assert!(l.admits(&[], 1000));
        assert!(!l.admits(&[], 1001));
        assert!(l.admits(&[400], 500));
        assert!(!l.admits(&[400], 501));
        assert!(!l.admits(&[10, 10, 10], 10), "max_running");
    }
}
