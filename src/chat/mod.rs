//! The chat layer between HTTP requests and the engine, free of any model state:
//! rendering chat templates as transformers does ([`template`]) and parsing the tool calls
//! models emit back into OpenAI-style calls ([`tools`]).

mod pyfilters;
mod pyfmt;
pub mod template;
pub mod tools;

pub use template::{ChatTemplate, SpecialTokens, TemplateError};
