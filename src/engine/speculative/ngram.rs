//! Prompt lookup: drafts are the tokens that followed an earlier occurrence of the context's
//! last few tokens. An edit repeats long spans of the file it was given, so in a coding
//! agent's conversation the continuation is often already in the context, for free.

use super::SpeculationConfig;

/// Up to `max` tokens that followed the most recent earlier occurrence of the last `n`
/// tokens of `context`, trying the longest n-gram first (`ngram_max` down to `ngram_min`).
/// Empty when nothing matches.
pub fn draft(context: &[u32], config: &SpeculationConfig, max: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    let len = context.len();
    for n in (config.ngram_min.max(1)..=config.ngram_max).rev() {
        if len <= n {
            continue;
        }
        let tail = &context[len - n..];
        // Earlier occurrences only: one that ends at the tail itself drafts nothing.
        for start in (0..len - n).rev() {
            if context[start] == tail[0] && &context[start..start + n] == tail {
                let from = start + n;
                let to = (from + max).min(len);
                return context[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min: usize, max: usize) -> SpeculationConfig {
        SpeculationConfig {
            ngram_min: min,
            ngram_max: max,
            ..SpeculationConfig::default()
        }
    }

    #[test]
    fn drafts_what_followed_the_latest_match() {
        // "1 2 3 9 | 1 2 3 7 8 | 1 2 3": the latest "1 2 3" is followed by 7 8.
        let ctx = [1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3];
        assert_eq!(draft(&ctx, &config(2, 3), 4), [7, 8, 1, 2]);
        assert_eq!(draft(&ctx, &config(2, 3), 1), [7]);
        assert_eq!(draft(&ctx, &config(2, 3), 0), Vec::<u32>::new());
    }

    #[test]
    fn prefers_the_longest_ngram() {
        // The 3-gram "5 1 2" occurs once (followed by 4); the 2-gram "1 2" later (then 6).
        let ctx = [5, 1, 2, 4, 0, 1, 2, 6, 5, 1, 2];
        assert_eq!(draft(&ctx, &config(2, 3), 1), [4]);
        assert_eq!(draft(&ctx, &config(2, 2), 1), [6]);
    }

    #[test]
    fn nothing_without_an_earlier_occurrence() {
        assert!(draft(&[1, 2, 3, 4], &config(1, 3), 5).is_empty());
        assert!(draft(&[7], &config(1, 3), 5).is_empty());
        assert!(draft(&[], &config(1, 3), 5).is_empty());
        // A 1-gram is only tried when asked for.
        assert!(draft(&[3, 8, 1, 3], &config(2, 3), 5).is_empty());
        assert_eq!(draft(&[3, 8, 1, 3], &config(1, 3), 5), [8, 1, 3]);
    }

    #[test]
    fn a_repeating_run_drafts_itself() {
        let ctx = [4, 4, 4, 4];
        assert_eq!(draft(&ctx, &config(2, 3), 3), [4]);
    }
}
