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
            message: message.into(),
        }
    }
}
