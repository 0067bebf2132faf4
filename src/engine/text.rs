//! Text out of token ids, incrementally: a streaming detokenizer that never emits broken
//! UTF-8, and a stop-string matcher that holds back text that may be the start of a stop
//! string spanning several tokens. Pure Rust; no MLX state.

use crate::model::Result;

/// Anything that turns token ids into text (lossy: incomplete UTF-8 becomes U+FFFD).
pub trait Decode {
    fn decode(&self, ids: &[u32]) -> Result<String>;
}

/// Incremental detokenizer in the style of TGI's `decode_token`: decodes a small window
/// of tokens (so tokenizers that add spaces by context behave) and emits only text that
/// does not end in U+FFFD, i.e. whose UTF-8 is complete.
#[derive(Debug, Default, Clone)]
pub struct StreamDetokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl StreamDetokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the newly complete text (possibly empty).
    pub fn push(&mut self, dec: &dyn Decode, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = dec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = dec.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (lossy), at the end of generation.
    pub fn flush(&mut self, dec: &dyn Decode) -> Result<String> {
        let prefix = dec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = dec.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(
            if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
                full[prefix.len()..].to_string()
            } else {
                String::new()
            },
        )
    }

    pub fn tokens(&self) -> &[u32] {
        &self.ids
    }
}

/// Finds stop strings in streamed text. Emits text as soon as it cannot be part of a stop
/// string; on a match emits the text before it and reports the stop.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What the matcher lets through for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCheck {
    /// Text safe to emit now.
    pub text: String,
    /// The stop string that matched; generation should end.
    pub stopped: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, chunk: &str) -> StopCheck {
        self.pending.push_str(chunk);
        // Earliest match wins.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i);
        if let Some((i, s)) = hit {
            let text = self.pending[..i].to_string();
            let stopped = Some(s.clone());
            self.pending.clear();
            return StopCheck { text, stopped };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > hold && self.pending.ends_with(&s[..k]) {
                    hold = k;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let text = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopCheck {
            text,
            stopped: None,
        }
    }

    /// Held-back text at the end of generation (no stop string completed).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token i decodes to the bytes in `table[i]`, lossily like a byte-level BPE decoder.
    struct Bytes(Vec<Vec<u8>>);

    impl Decode for Bytes {
        fn decode(&self, ids: &[u32]) -> Result<String> {
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&i| self.0[i as usize].clone())
                .collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    #[test]
    fn multibyte_char_split_across_tokens_is_held_back() {
        // "é" = C3 A9 and "🦀" = F0 9F A6 80, split over tokens.
        let dec = Bytes(vec![
            b"a".to_vec(),
            vec![0xC3],
            vec![0xA9],
            vec![0xF0, 0x9F],
            vec![0xA6],
            vec![0x80, b'!'],
        ]);
        let mut d = StreamDetokenizer::new();
        let out: Vec<String> = [0, 1, 2, 3, 4, 5]
            .iter()
            .map(|&t| d.push(&dec, t).unwrap())
            .collect();
        assert_eq!(out, ["a", "", "é", "", "", "🦀!"]);
        assert_eq!(d.flush(&dec).unwrap(), "");
    }

    #[test]
    fn flush_emits_incomplete_tail_lossily() {
        let dec = Bytes(vec![b"x".to_vec(), vec![0xE2, 0x82]]);
        let mut d = StreamDetokenizer::new();
        assert_eq!(d.push(&dec, 0).unwrap(), "x");
        assert_eq!(d.push(&dec, 1).unwrap(), "");
        assert_eq!(d.flush(&dec).unwrap(), "\u{FFFD}");
    }

    #[test]
    fn stop_string_spanning_chunks() {
        let mut m = StopMatcher::new(vec!["</s>".into(), "STOP".into()]);
        assert_eq!(
            m.push("hello <"),
            StopCheck {
                text: "hello ".into(),
                stopped: None
            }
        );
        assert_eq!(
            m.push("/"),
            StopCheck {
                text: "".into(),
                stopped: None
            }
        );
        assert_eq!(
            m.push("s> tail"),
            StopCheck {
                text: "".into(),
                stopped: Some("</s>".into())
            }
        );
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ST").text, "");
        assert_eq!(m.push("AR").text, "STAR");
        assert_eq!(m.push("xS").text, "x");
        assert_eq!(m.flush(), "S");
    }

    #[test]
    fn stop_inside_one_chunk_cuts_before_it() {
        let mut m = StopMatcher::new(vec!["\n\n".into()]);
        assert_eq!(
            m.push("ab\n\ncd"),
            StopCheck {
                text: "ab".into(),
                stopped: Some("\n\n".into())
            }
        );
    }
}
