//! GBNF (llama.cpp's grammar format, which vLLM's xgrammar backend also reads) as llguidance
//! Lark: `name ::= body` rules (a body may run over several lines), `root` the start, string
//! literals, character classes `[...]`, `.`, groups, `|`, `*` `+` `?` `{m,n}` and `#` comments.
//! Rule names become lower-case Lark rule names with a `g_` prefix (`-` as `_`), classes and `.`
//! become regex terminals. What does not parse is an error naming the problem.

/// `source` (GBNF) as Lark text with a `start` rule.
pub fn to_lark(source: &str) -> Result<String, String> {
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in source.lines() {
        let line = strip_comment(line);
        if line.trim().is_empty() {
            continue;
        }
        match line.split_once("::=") {
            Some((name, body)) if is_name(name.trim()) => {
                rules.push((name.trim().to_string(), body.to_string()));
            }
            _ => match rules.last_mut() {
                Some((_, body)) => {
                    body.push(' ');
                    body.push_str(line);
                }
                None => return Err(format!("GBNF: `{}` comes before any rule", line.trim())),
            },
        }
    }
    if !rules.iter().any(|(name, _)| name == "root") {
        return Err("GBNF: no `root` rule".into());
    }
    let mut lark = String::from("start: g_root\n");
    for (name, body) in &rules {
        lark.push_str(&format!("{}: {}\n", rule_name(name), convert_body(body)?));
    }
    Ok(lark)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn rule_name(name: &str) -> String {
    format!("g_{}", name.to_ascii_lowercase().replace('-', "_"))
}

/// The line up to a `#` outside strings and classes.
fn strip_comment(line: &str) -> &str {
    let (mut in_string, mut in_class, mut escaped) = (false, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string || in_class => escaped = true,
            '"' if !in_class => in_string = !in_string,
            '[' if !in_string => in_class = true,
            ']' if in_class => in_class = false,
            '#' if !in_string && !in_class => return &line[..i],
            _ => {}
        }
    }
    line
}

/// One rule's body, token by token.
fn convert_body(body: &str) -> Result<String, String> {
    let chars: Vec<char> = body.chars().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    // Reads a delimited span from `chars[i]` (its opener) to its closer, escapes kept.
    let span = |i: &mut usize, close: char| -> Result<String, String> {
        let start = *i;
        *i += 1;
        while *i < chars.len() {
            match chars[*i] {
                '\\' => *i += 2,
                c if c == close => {
                    *i += 1;
                    return Ok(chars[start..*i].iter().collect());
                }
                _ => *i += 1,
            }
        }
        Err(format!(
            "GBNF: unclosed `{}` in `{}`",
            chars[start],
            body.trim()
        ))
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '"' => out.push(span(&mut i, '"')?),
            '[' => {
                let class = span(&mut i, ']')?;
                out.push(format!("/{}/", class.replace('/', "\\/")));
            }
            '.' => {
                out.push("/(?s:.)/".into());
                i += 1;
            }
            '{' => {
                let rep = span(&mut i, '}')?;
                out.push(rep.replace(' ', ""));
            }
            '(' | ')' | '|' | '*' | '+' | '?' => {
                out.push(c.to_string());
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '-' || chars[i] == '_')
                {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                out.push(rule_name(&name));
            }
            other => return Err(format!("GBNF: unexpected `{other}` in `{}`", body.trim())),
        }
    }
    if out.is_empty() {
        return Err("GBNF: a rule with an empty body".into());
    }
    // Postfix operators attach to what precedes them.
    let mut joined = String::new();
    for token in out {
        let postfix = matches!(token.as_str(), "*" | "+" | "?") || token.starts_with('{');
        if !joined.is_empty() && !postfix {
            joined.push(' ');
        }
        joined.push_str(&token);
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_classes_and_repeats_become_lark() {
        let gbnf = r##"
# a list of moves
root ::= move ("," ws move)*   # at least one
move ::= [a-h] [1-8] "-" [a-h] [1-8]
  | "O-O"
ws   ::= [ \t]{0,2}
any-char ::= .
"##;
        let lark = to_lark(gbnf).unwrap();
        assert_eq!(
            lark,
            "start: g_root\n\
             g_root: g_move ( \",\" g_ws g_move )*\n\
             g_move: /[a-h]/ /[1-8]/ \"-\" /[a-h]/ /[1-8]/ | \"O-O\"\n\
             g_ws: /[ \\t]/{0,2}\n\
             g_any_char: /(?s:.)/\n"
        );
        crate::constrain::lark::validate(&lark).unwrap();
    }

    #[test]
    fn problems_are_named() {
        assert!(to_lark("move ::= \"a\"").unwrap_err().contains("root"));
        assert!(to_lark("root ::= \"a").unwrap_err().contains("unclosed"));
        assert!(to_lark("root ::= a ; b").unwrap_err().contains("`;`"));
        assert!(to_lark("  | \"a\"\nroot ::= \"b\"")
            .unwrap_err()
            .contains("before any rule"));
        // `#` inside a string or class is not a comment; `/` in a class is escaped.
        let lark = to_lark(r##"root ::= "#" [#/]"##).unwrap();
        assert_eq!(lark, "start: g_root\ng_root: \"#\" /[#\\/]/\n");
    }
}
