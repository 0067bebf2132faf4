//! Jinja2's semantics for the filters and tests where minijinja's differ in ways real chat
//! templates notice: `none` is not iterable and has no length, an undefined value has length
//! 0, `trim`/`string` use Python's `str()`, and `map`/`select`/... return one-shot generators
//! (so `tools|map(...)|tojson` fails as it does in Python).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Rest, Value, ValueKind};
use minijinja::{filters, Environment, Error, ErrorKind, State};

use super::pyfmt::py_str;

/// Replaces minijinja's versions of the filters and tests in `env` with Jinja2's.
pub fn install(env: &mut Environment<'_>) {
    env.add_test("iterable", is_iterable);
    env.add_test("sequence", is_sequence);
    env.add_test("mapping", |v: Value| v.kind() == ValueKind::Map);
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_filter("string", |v: Value| py_str(&v));
    // llama.cpp's (minja's) `from_json`, which DeepSeek-V3.2's template applies to string
    // tool-call arguments (transformers has none).
    env.add_filter("from_json", |s: String| -> Result<Value, Error> {
        serde_json::from_str::<serde_json::Value>(&s)
            .map(|v| Value::from_serialize(&v))
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("from_json: {e}")))
    });
    env.add_filter("trim", trim);
    env.add_filter("indent", indent);
    env.add_filter("map", |s: &State, v: Value, args: Rest<Value>| {
        generator(filters::map(s, v, args))
    });
    env.add_filter(
        "select",
        |s: &State, v: Value, t: Option<Cow<'_, str>>, args: Rest<Value>| {
            generator(filters::select(s, v, t, args))
        },
    );
    env.add_filter(
        "reject",
        |s: &State, v: Value, t: Option<Cow<'_, str>>, args: Rest<Value>| {
            generator(filters::reject(s, v, t, args))
        },
    );
    env.add_filter(
        "selectattr",
        |s: &State, v: Value, attr: Cow<'_, str>, t: Option<Cow<'_, str>>, args: Rest<Value>| {
            generator(filters::selectattr(s, v, attr, t, args))
        },
    );
    env.add_filter(
        "rejectattr",
        |s: &State, v: Value, attr: Cow<'_, str>, t: Option<Cow<'_, str>>, args: Rest<Value>| {
            generator(filters::rejectattr(s, v, attr, t, args))
        },
    );
}

/// Python's `iter(x)` succeeds (jinja2's Undefined iterates as empty; `None` does not).
fn is_iterable(v: Value) -> bool {
    matches!(
        v.kind(),
        ValueKind::Undefined
            | ValueKind::String
            | ValueKind::Seq
            | ValueKind::Map
            | ValueKind::Iterable
    )
}

/// Python's `len(x)` and `x[...]` both work (true for strings and dicts too; minijinja's
/// own iterables, such as `messages[1:]` and `range()`, are lists in Python).
fn is_sequence(v: Value) -> bool {
    match v.kind() {
        ValueKind::Undefined | ValueKind::String | ValueKind::Seq | ValueKind::Map => true,
        ValueKind::Iterable => !is_generator(&v),
        _ => false,
    }
}

/// Python's `len(x)`: 0 for undefined, an error for `None`, numbers and generators.
fn length(v: Value) -> Result<usize, Error> {
    match v.kind() {
        ValueKind::Undefined => Ok(0),
        ValueKind::String => Ok(v.as_str().unwrap_or_default().chars().count()),
        ValueKind::Seq | ValueKind::Map => v.len().ok_or_else(|| no_len(&v)),
        ValueKind::Iterable if !is_generator(&v) => Ok(v.try_iter()?.count()),
        _ => Err(no_len(&v)),
    }
}

fn no_len(v: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("object of type {} has no len()", v.kind()),
    )
}

/// Jinja2's `trim(value, chars=None)`: `str(value).strip(chars)`.
fn trim(v: Value, chars: Option<Cow<'_, str>>) -> String {
    let s = py_str(&v);
    match chars {
        Some(chars) => s.trim_matches(|c| chars.contains(c)).to_string(),
        None => s.trim().to_string(),
    }
}

/// Jinja2's `indent(s, width=4, first=False, blank=False)`, including its quirk of appending
/// a newline before splitting (so a trailing newline survives) and Python's `splitlines`.
fn indent(v: Value, args: Rest<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let mut params = [Value::from(4), Value::from(false), Value::from(false)];
    if args.len() > params.len() {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    for (slot, arg) in params.iter_mut().zip(args.iter()) {
        *slot = arg.clone();
    }
    for (slot, name) in params.iter_mut().zip(["width", "first", "blank"]) {
        if let Some(value) = kwargs.get::<Option<Value>>(name)? {
            *slot = value;
        }
    }
    kwargs.assert_all_used()?;
    let [width, first, blank] = params;
    let indention = match width.as_str() {
        Some(s) => s.to_string(),
        None => " ".repeat(width.as_i64().unwrap_or(0).max(0) as usize),
    };
    let text = py_str(&v) + "\n";
    let lines = splitlines(&text);
    let mut rv = if blank.is_true() {
        lines.join(&format!("\n{indention}"))
    } else {
        let mut rv = lines.first().copied().unwrap_or_default().to_string();
        if lines.len() > 1 {
            rv.push('\n');
            let rest: Vec<String> = lines[1..]
                .iter()
                .map(|l| {
                    if l.is_empty() {
                        String::new()
                    } else {
                        format!("{indention}{l}")
                    }
                })
                .collect();
            rv.push_str(&rest.join("\n"));
        }
        rv
    };
    if first.is_true() {
        rv.insert_str(0, &indention);
    }
    Ok(rv)
}

/// Python's `str.splitlines()` (no trailing empty piece; `\r\n` is one break).
fn splitlines(s: &str) -> Vec<&str> {
    let is_break = |c: char| {
        matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if is_break(c) {
            out.push(&s[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(j, '\n')) = chars.peek() {
                    chars.next();
                    end = j + 1;
                }
            }
            start = end;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// A one-shot iterator over a filter's result, like the generators Jinja2's filters return:
/// iterable once, with no length, not JSON-serialisable.
#[derive(Debug)]
struct Generator(Mutex<Option<std::vec::IntoIter<Value>>>);

impl Object for Generator {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Iterable
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.0.lock().ok().and_then(|mut items| items.take()) {
            Some(items) => Enumerator::Iter(Box::new(items)),
            None => Enumerator::Empty,
        }
    }
}

fn generator(items: Result<Vec<Value>, Error>) -> Result<Value, Error> {
    Ok(Value::from_object(Generator(Mutex::new(Some(
        items?.into_iter(),
    )))))
}

/// Whether `v` came from [`generator`] (Python would see a generator, not a list).
pub fn is_generator(v: &Value) -> bool {
    v.downcast_object_ref::<Generator>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    /// Each row: expression, then Jinja2's output for x = None, undefined, "ab", [1, 2],
    /// {"a": 1}, 3 (from jinja2 3.1.6; `ERR` where it raises).
    const TABLE: &[(&str, [&str; 6])] = &[
        (
            "x is iterable",
            ["false", "true", "true", "true", "true", "false"],
        ),
        (
            "x is sequence",
            ["false", "true", "true", "true", "true", "false"],
        ),
        (
            "x is mapping",
            ["false", "false", "false", "false", "true", "false"],
        ),
        (
            "x is string",
            ["false", "false", "true", "false", "false", "false"],
        ),
        ("x|length", ["ERR", "0", "2", "2", "1", "ERR"]),
        ("x|count", ["ERR", "0", "2", "2", "1", "ERR"]),
        ("x|trim", ["None", "", "ab", "[1, 2]", "{'a': 1}", "3"]),
        ("x|string", ["None", "", "ab", "[1, 2]", "{'a': 1}", "3"]),
    ];

    #[test]
    fn matches_jinja2() {
        let mut env = Environment::new();
        install(&mut env);
        env.set_formatter(|out, _, v| out.write_str(&py_str(v)).map_err(Error::from));
        let values = [
            Value::from(()),
            Value::UNDEFINED,
            Value::from("ab"),
            Value::from(vec![1, 2]),
            { Value::from_serialize(serde_json::json!({"a": 1})) },
            Value::from(3),
        ];
        for (expr, want) in TABLE {
            for (x, want) in values.iter().zip(want) {
                let got = env.render_str(&format!("{{{{ {expr} }}}}"), context! { x => x.clone() });
                let got = got
                    .map(|s| s.to_lowercase())
                    .unwrap_or_else(|_| "err".into());
                assert_eq!(got, want.to_lowercase(), "{expr} with x = {x:?}");
            }
        }
    }

    #[test]
    fn indent_like_jinja2() {
        let mut env = Environment::new();
        install(&mut env);
        let r = |src: &str| env.render_str(src, context! {}).unwrap();
        assert_eq!(r("{{ '{\\n'|indent(4, first=true) }}"), "    {\n");
        assert_eq!(r("{{ 'a\\n\\nb'|indent(2) }}"), "a\n\n  b");
        assert_eq!(r("{{ 'a\\n\\nb'|indent('> ', blank=true) }}"), "a\n> \n> b");
    }

    #[test]
    fn map_is_a_generator() {
        let mut env = Environment::new();
        install(&mut env);
        let ctx = context! { xs => vec![context! { a => 1 }, context! { a => 2 }] };
        assert_eq!(
            env.render_str("{{ xs|map(attribute='a')|join(',') }}", ctx.clone())
                .unwrap(),
            "1,2"
        );
        assert!(env
            .render_str("{{ xs|map(attribute='a')|length }}", ctx)
            .is_err());
    }
}
