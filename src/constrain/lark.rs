//! Writing llguidance's Lark dialect: string literals, regex escapes, inline JSON schemas in
//! kooka's JSON style, and the tokenizer-free compile that validates a grammar.

use llguidance::api::{GrammarInit, ParserLimits, TopLevelGrammar};
use llguidance::earley::ValidationResult;
use serde_json::{json, Value};

/// A Lark string literal for `s` (the dialect reads literals as JSON strings).
pub(crate) fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `s` as a regex matching itself, for use inside `/.../`. Only the regex metacharacters and
/// `/` are escaped: Rust's regex reads `\<` and `\>` as word boundaries.
pub(crate) fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `%json {...}`: `schema` in kooka's JSON style (`json.dumps` separators, no free
/// whitespace); `lenient` ignores keywords llguidance cannot enforce instead of failing.
pub(crate) fn json_rule(schema: &Value, lenient: bool) -> String {
    let mut schema = match schema {
        Value::Bool(true) => json!({}),
        Value::Bool(false) => json!({"not": {}}),
        other => other.clone(),
    };
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "x-guidance".into(),
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "lenient": lenient,
            }),
        );
    }
    format!(
        "%json {}",
        serde_json::to_string(&schema).unwrap_or_default()
    )
}

/// Compiles `lark` without a tokenizer, as llguidance would for a matcher: `Err` carries
/// llguidance's message, which names what failed (`Unimplemented keys: ["not"]`,
/// `Unknown format: ...`, an unsatisfiable schema, a bad regex).
pub(crate) fn validate(lark: &str) -> Result<(), String> {
    let init = GrammarInit::Serialized(TopLevelGrammar::from_lark(lark.to_string()));
    // The schema is the client's: a panic in the compiler must not take the worker down.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        init.validate(None, ParserLimits::default())
    }))
    .map_err(|_| "the grammar compiler failed on this schema".to_string())?;
    match result {
        ValidationResult::Error(e) => Err(clean_message(&e)),
        ValidationResult::Valid | ValidationResult::Warnings(_) => Ok(()),
    }
}

/// llguidance prefixes schema errors with positions in the generated grammar, which mean
/// nothing to the client; keep the part after the last "failed to compile JSON schema:".
fn clean_message(e: &str) -> String {
    const MARK: &str = "failed to compile JSON schema: ";
    match e.rfind(MARK) {
        Some(at) => e[at + MARK.len()..].trim().to_string(),
        None => e.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_escapes() {
        assert_eq!(lit("a\"b\n"), r#""a\"b\n""#);
        assert_eq!(regex_escape("<minimax:tool_call>"), "<minimax:tool_call>");
        assert_eq!(regex_escape("a.b/c"), r"a\.b\/c");
        assert!(validate(&format!("start: {}", lit("x\"\\\u{1F600}"))).is_ok());
    }

    #[test]
    fn validation_names_the_feature() {
        let err = validate(&format!(
            "start: {}",
            json_rule(
                &json!({"type": "string", "format": "no-such-format"}),
                false
            )
        ))
        .unwrap_err();
        assert!(err.contains("no-such-format"), "{err}");
        assert!(validate(&format!(
            "start: {}",
            json_rule(&json!({"type": "string", "format": "no-such-format"}), true)
        ))
        .is_ok());
    }
}
