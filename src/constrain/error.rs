//! [`ConstrainError`]: why a constraint could not be built or followed.

/// Why a constraint could not be built, compiled or followed.
///
/// `Unsupported` and `Invalid` are the request's fault (HTTP 400 with [`Self::param`]); the
/// other two are the server's (500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstrainError {
    /// The schema or tool list uses something the engine cannot enforce; the message names
    /// the feature (e.g. `Unimplemented keys: ["not"]`).
    #[error("{param}: the constrained-decoding engine cannot enforce this: {message}")]
    Unsupported {
        /// The request field at fault: `response_format`, `tools` or `tool_choice`.
        param: &'static str,
        message: String,
    },
    /// The request is not a usable constraint (no tools, a tool_choice naming an unknown
    /// function, a schema that is not an object...).
    #[error("{param}: {message}")]
    Invalid {
        /// The request field at fault.
        param: &'static str,
        message: String,
    },
    /// The tokenizer cannot back a token mask (its tokens cannot be mapped to bytes).
    #[error("constrained decoding is unavailable for this tokenizer: {0}")]
    Tokenizer(String),
    /// The grammar did not compile against the tokenizer, or the matcher failed while
    /// generating.
    #[error("constrained decoding failed: {0}")]
    Matcher(String),
}

impl ConstrainError {
    /// The request field to blame, for a client error.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            ConstrainError::Unsupported { param, .. } | ConstrainError::Invalid { param, .. } => {
                Some(param)
            }
            _ => None,
        }
    }

    /// Whether the request is at fault (answer 400) rather than the server.
    pub fn is_client_error(&self) -> bool {
        self.param().is_some()
    }

    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ConstrainError::Invalid {
            param,
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(param: &'static str, message: impl Into<String>) -> Self {
        ConstrainError::Unsupported {
            param,
            message: client_message(&message.into()),
        }
    }
}

/// The engine's message as a client should read it: its first lines, without the listing of
/// kooka's internal grammar that llguidance appends (`   1 | start: %json {...}`), on one line.
fn client_message(raw: &str) -> String {
    const MAX: usize = 400;
    let listing = |line: &str| {
        let t = line.trim_start();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && t[digits..].trim_start().starts_with('|')
    };
    let text = raw
        .lines()
        .take_while(|l| !listing(l))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ");
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_messages_drop_the_internal_grammar() {
        let raw = "regex parse error:\n    ((((\n       ^\nerror: unclosed group\n   1 | start: %json {\"type\":1}\n              ^";
        let e = ConstrainError::unsupported("response_format", raw);
        assert_eq!(
            e.to_string(),
            "response_format: the constrained-decoding engine cannot enforce this: regex parse \
             error: (((( error: unclosed group"
        );
        let long = "x".repeat(1000);
        assert!(client_message(&long).len() < 420);
    }
}
