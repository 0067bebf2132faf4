//! Pythonic tool calls (LFM2): `<|tool_call_start|>[f(a=1, b="x"), g()]<|tool_call_end|>`,
//! keyword arguments with Python literal values (strings, numbers, `True`/`False`/`None`,
//! lists, dicts), read by a small recursive-descent parser.

use serde_json::{Map, Value};

use super::scan::BlockParser;
use super::{CallCounter, ParseEvent, ToolParser};

/// The pythonic-list parser.
#[derive(Debug)]
pub struct PythonicParser(BlockParser);

impl PythonicParser {
    pub fn new() -> Self {
        PythonicParser(BlockParser::new(
            "<|tool_call_start|>",
            Some("<|tool_call_end|>"),
            parse_body,
        ))
    }
}

impl Default for PythonicParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolParser for PythonicParser {
    fn push(&mut self, text_delta: &str) -> Vec<ParseEvent> {
        self.0.push(text_delta)
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        self.0.finish()
    }

    fn finish_cut(&mut self) -> Vec<ParseEvent> {
        self.0.finish_cut()
    }
}

fn parse_body(body: &str, calls: &mut CallCounter) -> Option<Vec<ParseEvent>> {
    let mut p = Cursor {
        s: body.trim(),
        pos: 0,
    };
    let list = p.calls()?;
    p.ws();
    if p.pos != p.s.len() {
        return None;
    }
    Some(
        list.into_iter()
            .flat_map(|(name, args)| calls.whole(&name, None, &Value::Object(args)))
            .collect(),
    )
}

/// A position in the text being parsed.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn ws(&mut self) {
        self.pos = self.s.len() - self.rest().trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.ws();
        let n = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '-'))
            .unwrap_or(self.rest().len());
        (n > 0).then(|| {
            let id = self.rest()[..n].to_string();
            self.pos += n;
            id
        })
    }

    /// `[call, call, ...]` (the brackets are optional for a single call).
    fn calls(&mut self) -> Option<Vec<(String, Map<String, Value>)>> {
        let bracketed = self.eat('[');
        let mut out = Vec::new();
        loop {
            if bracketed && self.eat(']') {
                break;
            }
            out.push(self.call()?);
            if !self.eat(',') {
                if bracketed && !self.eat(']') {
                    return None;
                }
                break;
            }
        }
        Some(out)
    }

    fn call(&mut self) -> Option<(String, Map<String, Value>)> {
        let name = self.ident()?;
        if !self.eat('(') {
            return None;
        }
        let mut args = Map::new();
        loop {
            if self.eat(')') {
                break;
            }
            let key = self.ident()?;
            if !self.eat('=') {
                return None;
            }
            args.insert(key, self.value()?);
            if self.eat(',') {
                continue;
            }
            if self.eat(')') {
                break;
            }
            return None;
        }
        Some((name, args))
    }

    fn value(&mut self) -> Option<Value> {
        self.ws();
        let c = self.rest().chars().next()?;
        match c {
            '"' | '\'' => self.string(c).map(Value::String),
            '[' | '(' => {
                self.pos += 1;
                let close = if c == '[' { ']' } else { ')' };
                let mut items = Vec::new();
                while !self.eat(close) {
                    items.push(self.value()?);
                    if !self.eat(',') && !self.rest().trim_start().starts_with(close) {
                        return None;
                    }
                }
                Some(Value::Array(items))
            }
            '{' => {
                self.pos += 1;
                let mut map = Map::new();
                while !self.eat('}') {
                    let key = match self.value()? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    if !self.eat(':') {
                        return None;
                    }
                    map.insert(key, self.value()?);
                    if !self.eat(',') && !self.rest().trim_start().starts_with('}') {
                        return None;
                    }
                }
                Some(Value::Object(map))
            }
            _ => {
                let n = self
                    .rest()
                    .find([',', ')', ']', '}', ':'])
                    .unwrap_or(self.rest().len());
                let word = self.rest()[..n].trim().to_string();
                self.pos += n;
                match word.as_str() {
                    "True" | "true" => Some(Value::Bool(true)),
                    "False" | "false" => Some(Value::Bool(false)),
                    "None" | "null" => Some(Value::Null),
                    w => w.parse::<i64>().map(Value::from).ok().or_else(|| {
                        w.parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map(Value::Number)
                    }),
                }
            }
        }
    }

    /// A quoted Python string with the common escapes.
    fn string(&mut self, quote: char) -> Option<String> {
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.pos += i + 1;
                    return Some(out);
                }
                '\\' => {
                    let (_, e) = chars.next()?;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        None
    }
}
