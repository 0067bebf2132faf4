//! A client's Lark grammar (a Responses `custom` tool's `format.definition`, such as Codex's
//! `apply_patch`) embedded in a tool-call grammar: its names get a prefix of their own (so two
//! grammars and the call markup do not collide; a terminal stays upper case), `%import
//! common.LF`/`CR` become literals, `-> alias`es go, and, for a call written as JSON, every
//! terminal is rewritten to match its own text as it appears inside a JSON string (`"` as
//! `\"`, a newline as `\n`, ...). That rewrite handles string literals and the regex subset
//! such grammars use (`.`, groups, alternation, repetition, literal characters); anything else
//! is an [`EmbedError`], and the caller leaves that tool's input unconstrained.
//!
//! In JSON mode a regex becomes a rule over one-character lexemes (`C_JDOT`, escaped literals)
//! and every terminal a rule: llguidance's lexemes are greedy, so `/(.*)/ LF` as lexemes would
//! read the `\` of the escaped newline into the line and fail at the `n`.

/// Why a grammar could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("custom tool grammar not enforced: {0}")]
pub struct EmbedError(String);

fn unsupported(what: impl Into<String>) -> EmbedError {
    EmbedError(what.into())
}

/// `definition` as rules whose names start with `prefix` (its start rule is
/// `{prefix}start`); with `json_string`, matching the JSON-escaped text.
pub fn embed(definition: &str, prefix: &str, json_string: bool) -> Result<String, EmbedError> {
    let mut source = String::new();
    for line in definition.lines() {
        let t = line.trim();
        match t.strip_prefix("%import") {
            Some(rest) => {
                for name in rest.trim().trim_start_matches("common.").split(',') {
                    let name = name.trim().trim_matches(|c| c == '(' || c == ')');
                    let body = match name {
                        "LF" => r#""\n""#,
                        "CR" => r#""\r""#,
                        other => return Err(unsupported(format!("%import common.{other}"))),
                    };
                    source.push_str(&format!("{name}: {body}\n"));
                }
            }
            None if t.starts_with('%') => return Err(unsupported(format!("directive {t}"))),
            None => {
                source.push_str(line);
                source.push('\n');
            }
        }
    }
    let mut out = String::with_capacity(source.len() * 2);
    let dot = format!("{}JDOT", prefix.to_ascii_uppercase());
    let chars: Vec<char> = source.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '#' => i = skip_line(&chars, i),
            '/' if chars.get(i + 1) == Some(&'/') => i = skip_line(&chars, i),
            '"' => {
                let end = closing(&chars, i, '"')?;
                let raw: String = chars[i..=end].iter().collect();
                if chars.get(end + 1).is_some_and(|c| c.is_ascii_alphabetic()) {
                    return Err(unsupported(format!("literal flags after {raw}")));
                }
                let text: String = serde_json::from_str(&raw)
                    .map_err(|_| unsupported(format!("literal {raw}")))?;
                let text = if json_string {
                    json_escaped(&text)
                } else {
                    text
                };
                out.push_str(&super::lark::lit(&text));
                i = end + 1;
            }
            '/' => {
                let end = closing(&chars, i, '/')?;
                let body: String = chars[i + 1..end].iter().collect();
                if chars.get(end + 1).is_some_and(|c| c.is_ascii_alphabetic()) {
                    return Err(unsupported(format!("regex flags after /{body}/")));
                }
                if json_string {
                    out.push_str(&json_regex_rule(&body, &dot)?);
                } else {
                    out.push('/');
                    out.push_str(&body);
                    out.push('/');
                }
                i = end + 1;
            }
            '-' if chars.get(i + 1) == Some(&'>') => {
                // `-> alias` names a tree node: nothing to match.
                i += 2;
                while chars.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
                    i += 1;
                }
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                let upper = name.starts_with(|c: char| c.is_ascii_uppercase());
                out.push_str(&match (upper, json_string) {
                    (false, _) => format!("{prefix}{name}"),
                    (true, false) => format!("{}{name}", prefix.to_ascii_uppercase()),
                    // A terminal becomes a rule (see the module's note).
                    (true, true) => format!("{prefix}_{}", name.to_ascii_lowercase()),
                });
            }
            '[' | '%' | '@' | '<' => return Err(unsupported(format!("`{c}` in the grammar"))),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    if !out.contains(&format!("{prefix}start")) {
        return Err(unsupported("no start rule"));
    }
    if json_string {
        out.push_str(&format!("\n{dot}: /{JSON_DOT}/\n"));
    }
    Ok(out)
}

fn skip_line(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i] != '\n' {
        i += 1;
    }
    i
}

/// The index of the `quote` that closes the one at `open` (backslash escapes skipped).
fn closing(chars: &[char], open: usize, quote: char) -> Result<usize, EmbedError> {
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '\n' => break,
            c if c == quote => return Ok(i),
            _ => i += 1,
        }
    }
    Err(unsupported(format!("unterminated {quote}")))
}

/// `s` as it reads inside a JSON string (without the quotes).
fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_string()
}

/// Any one character but a newline, as it reads inside a JSON string: a plain character, or
/// an escape other than `\n`.
/// (`/` written `\/`: the regex sits between slashes.)
const JSON_DOT: &str = r#"(?:[^"\\\x00-\x1f]|\\["\\\/bfrt]|\\u[0-9a-fA-F]{4})"#;

/// A regex matching text, as a Lark rule expression matching that text JSON-escaped: `.` is
/// the `dot` terminal (one escaped character), other characters escaped literals.
fn json_regex_rule(body: &str, dot: &str) -> Result<String, EmbedError> {
    let mut out = String::from("(");
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                out.push(' ');
                out.push_str(dot);
                out.push(' ');
            }
            '(' => {
                if chars.peek() == Some(&'?') {
                    chars.next();
                    if chars.next() != Some(':') {
                        return Err(unsupported(format!("group flags in /{body}/")));
                    }
                }
                out.push_str(" (");
            }
            ')' | '*' | '+' | '?' => out.push(c),
            '|' => out.push_str(" | "),
            '{' => {
                // A repetition count, copied as it is (`expr{M,N}`).
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '}' {
                        break;
                    }
                    if !(d.is_ascii_digit() || d == ',') {
                        return Err(unsupported(format!("`{{` in /{body}/")));
                    }
                }
            }
            '\\' => {
                let e = chars
                    .next()
                    .ok_or_else(|| unsupported(format!("trailing `\\` in /{body}/")))?;
                let literal = match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    e if e.is_ascii_punctuation() => e,
                    _ => return Err(unsupported(format!("`\\{e}` in /{body}/"))),
                };
                push_literal(&mut out, literal);
            }
            '[' | '^' | '$' => return Err(unsupported(format!("`{c}` in /{body}/"))),
            c => push_literal(&mut out, c),
        }
    }
    out.push(')');
    Ok(out)
}

/// Character `c`, JSON-escaped, as a Lark literal.
fn push_literal(out: &mut String, c: char) {
    out.push(' ');
    out.push_str(&super::lark::lit(&json_escaped(&c.to_string())));
    out.push(' ');
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATCH: &str = r#"start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?

hunk: add_hunk | delete_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
filename: /(.+)/
add_line: "+" /(.*)/ LF -> line

%import common.LF
"#;

    fn accepts(lark: &str, text: &str) -> bool {
        use crate::constrain::matcher::tests::{run, test_constrainer, Run};
        let grammar = crate::constrain::Grammar::new(lark.to_string(), "test", "tools").unwrap();
        let r = run(&test_constrainer(), &grammar, text);
        matches!(r, Run::Complete(_))
    }

    #[test]
    fn names_get_the_prefix_and_terminals_stay_upper_case() {
        let out = embed(PATCH, "c0_", false).unwrap();
        assert!(
            out.starts_with("c0_start: c0_begin_patch c0_hunk+ c0_end_patch"),
            "{out}"
        );
        assert!(out.contains("C0_LF: \"\\n\""), "{out}");
        assert!(!out.contains("->"), "{out}");
    }

    #[test]
    fn json_mode_matches_the_escaped_text_only() {
        let rules = embed(PATCH, "c0_", true).unwrap();
        let lark = format!("start: \"\\\"\" c0_start \"\\\"\"\n{rules}");
        let patch = "*** Begin Patch\n*** Add File: a \"b\".txt\n+hi\tthere\n*** End Patch\n";
        let escaped = serde_json::to_string(patch).unwrap();
        assert!(accepts(&lark, &escaped), "{lark}\n{escaped}");
        // The raw text (a real newline inside a JSON string) is refused.
        assert!(!accepts(&lark, &format!("\"{patch}\"")));
        assert!(
            !accepts(&lark, "\"*** Begin Patch\\n*** End Patch\\n\""),
            "a hunk is required"
        );
    }

    #[test]
    fn what_cannot_be_rewritten_is_an_error() {
        assert!(embed("start: /[a-z]+/", "c0_", true).is_err());
        assert!(embed("start: x\n%import common.WS", "c0_", false).is_err());
        assert!(embed("start: \"a\"i", "c0_", false).is_err());
        assert!(embed("x: \"a\"", "c0_", false).is_err());
    }
}
