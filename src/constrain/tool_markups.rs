//! The call rules of each tool-call markup (`Markup`'s methods): open tags, names, argument
//! values and closes, as the matching parser in `chat::tools` reads them.

use super::*;

impl Markup {
    /// The tag that opens a block of calls (the trigger under `auto`).
    pub(super) fn open(self) -> &'static str {
        match self {
            Markup::JsonTools | Markup::Qwen3Coder | Markup::Glm45 => "<tool_call>",
            Markup::MinimaxM2 => "<minimax:tool_call>",
            Markup::Deepseek => deepseek::CALLS_BEGIN,
            Markup::KimiK2 => kimi_k2::SECTION_BEGIN,
            Markup::Mistral => MISTRAL_CALLS,
            Markup::DeepseekV32 => DSML_CALLS.0,
            Markup::Pythonic => PYTHONIC_CALLS.0,
        }
    }

    /// The markups whose arguments are one JSON object (a custom tool's `input` is a JSON
    /// string held to its grammar).
    pub(super) fn json_bodied(self) -> bool {
        matches!(
            self,
            Markup::JsonTools | Markup::Deepseek | Markup::KimiK2 | Markup::Mistral
        )
    }

    /// The XML-ish markups, whose arguments are raw text (a custom tool's `input` is its
    /// grammar as it is).
    pub(super) fn raw_text_args(self) -> bool {
        matches!(
            self,
            Markup::Qwen3Coder | Markup::MinimaxM2 | Markup::Glm45 | Markup::DeepseekV32
        )
    }

    /// DeepSeek's or Kimi-K2's call of `tool` with arguments `args` (a rule body), between
    /// the call tags. DeepSeek: V3.1's `NAME<｜tool▁sep｜>{..}`, or V3 / R1's
    /// `function<｜tool▁sep｜>NAME` and a fenced JSON block (the model writes its own).
    /// Kimi-K2: `functions.NAME:IDX<|tool_call_argument_begin|>{..}`, any index. Mistral:
    /// `NAME[ARGS]{..}` (Devstral, Ministral 3), or `NAME[CALL_ID]ID[ARGS]{..}` (Small 3.2).
    pub(super) fn tagged_call(self, tool: &Tool, args: &str) -> Result<String, ConstrainError> {
        let end_of_name = if self == Markup::Mistral { '[' } else { '<' };
        check_name(&tool.name, end_of_name, &tool.name, "its name")?;
        if tool.name.contains(char::is_whitespace) {
            return Err(ConstrainError::unsupported(
                "tools",
                format!(
                    "tool `{}`: its name cannot be written in this tool-call markup (it contains whitespace)",
                    tool.name
                ),
            ));
        }
        Ok(match self {
            Markup::Deepseek => {
                let (begin, end, sep) = (deepseek::CALL_BEGIN, deepseek::CALL_END, deepseek::SEP);
                format!(
                    "{} ({} {args} | {} {args} {}) {}",
                    lit(begin),
                    lit(&format!("{}{sep}", tool.name)),
                    lit(&format!("function{sep}{}\n```json\n", tool.name)),
                    lit("\n```"),
                    lit(end)
                )
            }
            Markup::Mistral => format!(
                "{} mistral_call_id? {} {args}",
                lit(&tool.name),
                lit("[ARGS]")
            ),
            _ => format!(
                "{} {} /[0-9]+/ {} {args} {}",
                lit(kimi_k2::CALL_BEGIN),
                lit(&format!("functions.{}:", tool.name)),
                lit(kimi_k2::ARGS_BEGIN),
                lit(kimi_k2::CALL_END)
            ),
        })
    }

    /// What follows the open tag: the calls (rule `call`) and the closing tag(s).
    pub(super) fn after_open(self, parallel: bool) -> String {
        match (self, parallel) {
            (Markup::Deepseek, false) => format!("call {}", lit(deepseek::CALLS_END)),
            (Markup::Deepseek, true) => {
                format!(r#"call ("\n"? call)* {}"#, lit(deepseek::CALLS_END))
            }
            (Markup::KimiK2, false) => format!("call {}", lit(kimi_k2::SECTION_END)),
            (Markup::KimiK2, true) => format!("call+ {}", lit(kimi_k2::SECTION_END)),
            // Each call after its own `[TOOL_CALLS]`, or Mistral-Nemo's JSON list.
            (Markup::Mistral, false) => "(call | mistral_list)".into(),
            (Markup::Mistral, true) => {
                format!("(call ({} call)* | mistral_list)", lit(MISTRAL_CALLS))
            }
            (Markup::MinimaxM2, false) => r#""\n" call "</minimax:tool_call>""#.into(),
            (Markup::MinimaxM2, true) => r#""\n" call+ "</minimax:tool_call>""#.into(),
            (Markup::DeepseekV32, false) => format!(r#""\n" call {}"#, lit(DSML_CALLS.1)),
            (Markup::DeepseekV32, true) => format!(r#""\n" call+ {}"#, lit(DSML_CALLS.1)),
            (Markup::Pythonic, false) => format!(r#""[" call "]" {}"#, lit(PYTHONIC_CALLS.1)),
            (Markup::Pythonic, true) => {
                format!(r#""[" call ("," " "? call)* "]" {}"#, lit(PYTHONIC_CALLS.1))
            }
            // One call per block, the name right after the tag.
            (Markup::Glm45, false) => r#"call "</tool_call>""#.into(),
            (Markup::Glm45, true) => {
                r#"call "</tool_call>" ("\n<tool_call>" call "</tool_call>")*"#.into()
            }
            (_, false) => r#""\n" call "\n</tool_call>""#.into(),
            (_, true) => {
                r#""\n" call "\n</tool_call>" ("\n<tool_call>\n" call "\n</tool_call>")*"#.into()
            }
        }
    }

    /// Mistral-Nemo's calls: one JSON list after `[TOOL_CALLS]`, each item `{"name": ..,
    /// "arguments": {..}}` with an optional 9-character `id` (its template writes one); the
    /// rules `mistral_list` and `mistral_call_id`.
    pub(super) fn mistral_rules(tools: &[Tool], parallel: bool) -> String {
        let mut rules = String::from("mistral_call_id: \"[CALL_ID]\" /[A-Za-z0-9]{9}/\n");
        let mut items = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            let mut schema = json_call_schema(tool, "arguments");
            schema["properties"]["id"] = json!({"type": "string", "pattern": "^[A-Za-z0-9]{9}$"});
            rules.push_str(&format!(
                "mistral_item_{i}: {}\n",
                json_rule(&schema, !tool.strict)
            ));
            items.push(format!("mistral_item_{i}"));
        }
        rules.push_str(&format!("mistral_item: {}\n", items.join(" | ")));
        rules.push_str(match parallel {
            true => "mistral_list: \"[\" mistral_item ((\",\" | \", \") mistral_item)* \"]\"\n",
            false => "mistral_list: \"[\" mistral_item \"]\"\n",
        });
        rules
    }

    /// LFM2's pythonic call of `tool` (the `i`th), `NAME(KEY=VALUE, ...)`: its rule body and
    /// the rules it uses. Keyword arguments come in the schema's order, the optional ones
    /// optional, with JSON values (which Python reads the same, and the parser reads
    /// `true`/`null` too) and `True`/`False` for a boolean parameter.
    pub(super) fn pythonic_call(tool: &Tool, i: usize) -> Result<(String, String), ConstrainError> {
        if tool.name.is_empty()
            || !tool
                .name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(ConstrainError::unsupported(
                "tools",
                format!(
                    "tool `{}`: its name cannot be written as a pythonic call (letters, digits, `_`, `.`, `-`)",
                    tool.name
                ),
            ));
        }
        let (props, required, keys) = tool.param_keys();
        let mut rules = String::new();
        let mut params = Vec::new();
        for (j, key) in keys.iter().enumerate() {
            if key.is_empty() || !key.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(ConstrainError::unsupported(
                    "tools",
                    format!(
                        "tool `{}` parameter `{key}`: not a Python keyword name",
                        tool.name
                    ),
                ));
            }
            let prop = props
                .and_then(|p| p.get(*key))
                .cloned()
                .unwrap_or(json!({}));
            let value = match schema_types(&prop).as_slice() {
                [t] if t == "boolean" => r#"("True" | "False")"#.to_string(),
                _ => json_rule(&with_defs(&prop, &tool.params), !tool.strict),
            };
            rules.push_str(&format!(
                "py{i}_p{j}: {} {value}\n",
                lit(&format!("{key}="))
            ));
            params.push((format!("py{i}_p{j}"), required.contains(key)));
        }
        // `py{i}_a{j}`: the arguments from the `j`th on when none is written yet, `py{i}_b{j}`
        // when one is (so a `, ` comes first).
        let n = params.len();
        rules.push_str(&format!("py{i}_a{n}: \"\"\npy{i}_b{n}: \"\"\n"));
        for (j, (param, required)) in params.iter().enumerate().rev() {
            let next = j + 1;
            let (first, more) = (
                format!("{param} py{i}_b{next}"),
                format!("\", \" {param} py{i}_b{next}"),
            );
            match required {
                true => rules.push_str(&format!("py{i}_a{j}: {first}\npy{i}_b{j}: {more}\n")),
                false => rules.push_str(&format!(
                    "py{i}_a{j}: {first} | py{i}_a{next}\npy{i}_b{j}: {more} | py{i}_b{next}\n"
                )),
            }
        }
        let body = format!("{} py{i}_a0 \")\"", lit(&format!("{}(", tool.name)));
        Ok((body, rules))
    }

    /// The body of one call of `tool` (a Lark rule body).
    pub(super) fn call(self, tool: &Tool) -> Result<String, ConstrainError> {
        if self == Markup::JsonTools {
            return Ok(json_rule(
                &json_call_schema(tool, "arguments"),
                !tool.strict,
            ));
        }
        if self.json_bodied() {
            return self.tagged_call(tool, &json_rule(&tool.params, !tool.strict));
        }
        let (open, close, forbidden) = match self {
            Markup::Qwen3Coder => (format!("<function={}>\n", tool.name), "</function>", '>'),
            Markup::Glm45 => (tool.name.clone(), "", '<'),
            Markup::DeepseekV32 => (
                format!("<｜DSML｜invoke name=\"{}\">\n", tool.name),
                "</｜DSML｜invoke>\n",
                '"',
            ),
            _ => (
                format!("<invoke name=\"{}\">\n", tool.name),
                "</invoke>\n",
                '"',
            ),
        };
        check_name(&tool.name, forbidden, &tool.name, "its name")?;
        let mut body = vec![lit(&open)];
        if self == Markup::Glm45 {
            // GLM-4.5/4.6 write a newline after the name and each tag, GLM-4.7 none.
            body.push(OPTIONAL_NEWLINE.into());
        }
        let (props, required, keys) = tool.param_keys();
        for key in keys {
            check_name(key, forbidden, &tool.name, &format!("parameter `{key}`"))?;
            let prop = props.and_then(|p| p.get(key));
            let param = self.param(key, self.value_rule(tool, key, prop)?);
            body.push(if required.contains(&key) {
                param
            } else {
                format!("({param})?")
            });
        }
        if !close.is_empty() {
            body.push(lit(close));
        }
        Ok(body.join(" "))
    }

    /// One parameter: open tag with `key`, the value, the close tag (and the newline after).
    pub(super) fn param(self, key: &str, rule: ValueRule) -> String {
        if self == Markup::Glm45 {
            let open = format!(
                "{} {OPTIONAL_NEWLINE} {}",
                lit(&format!("<arg_key>{key}</arg_key>")),
                lit("<arg_value>")
            );
            let close = format!("{} {OPTIONAL_NEWLINE}", lit("</arg_value>"));
            return match rule {
                ValueRule::Text => format!("{open} param_text {OPTIONAL_NEWLINE}"),
                ValueRule::Choice(texts) => {
                    let choices: Vec<String> = texts.iter().map(|t| lit(t)).collect();
                    format!("{open} ({}) {close}", choices.join(" | "))
                }
                ValueRule::Json(schema) => format!("{open} {schema} {close}"),
            };
        }
        if self == Markup::DeepseekV32 {
            // `string="true"` before raw text, `"false"` before JSON (a choice: either).
            let open = lit(&format!("<｜DSML｜parameter name=\"{key}\" string=\""));
            let close = lit("</｜DSML｜parameter>\n");
            return match rule {
                ValueRule::Text => format!(r#"{open} "true\">" param_text "\n""#),
                ValueRule::Choice(texts) => {
                    let choices: Vec<String> = texts.iter().map(|t| lit(t)).collect();
                    let choices = choices.join(" | ");
                    format!(r#"{open} ("true" | "false") "\">" ({choices}) {close}"#)
                }
                ValueRule::Json(schema) => format!(r#"{open} "false\">" {schema} {close}"#),
            };
        }
        let (open, close) = match self {
            Markup::Qwen3Coder => (format!("<parameter={key}>\n"), "\n</parameter>\n"),
            _ => (format!("<parameter name=\"{key}\">"), "</parameter>\n"),
        };
        match rule {
            ValueRule::Text => format!(r#"{} param_text "\n""#, lit(&open)),
            ValueRule::Choice(texts) => {
                let choices: Vec<String> = texts.iter().map(|t| lit(t)).collect();
                format!("{} ({}) {}", lit(&open), choices.join(" | "), lit(close))
            }
            ValueRule::Json(schema) => format!("{} {} {}", lit(&open), schema, lit(close)),
        }
    }

    /// How the raw text of parameter `key` (schema `prop`) is constrained.
    pub(super) fn value_rule(
        self,
        tool: &Tool,
        key: &str,
        prop: Option<&Value>,
    ) -> Result<ValueRule, ConstrainError> {
        if let (Some(rule), "input") = (&tool.raw_rule, key) {
            return Ok(ValueRule::Json(rule.clone()));
        }
        let Some(prop) = prop else {
            return Ok(ValueRule::Text);
        };
        let text_of = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some(c) = prop.get("const") {
            return Ok(ValueRule::Choice(vec![text_of(c)]));
        }
        if let Some(e) = prop.get("enum").and_then(Value::as_array) {
            if e.is_empty() {
                return Err(ConstrainError::invalid(
                    "tools",
                    format!("tool `{}` parameter `{key}`: empty enum", tool.name),
                ));
            }
            return Ok(ValueRule::Choice(e.iter().map(text_of).collect()));
        }
        let types = schema_types(prop);
        let annotations_only = prop.as_object().is_some_and(|o| {
            o.keys().all(|k| {
                [
                    "description",
                    "title",
                    "default",
                    "examples",
                    "$comment",
                    "deprecated",
                ]
                .contains(&k.as_str())
            })
        });
        if annotations_only || types.iter().any(|t| t == "string") {
            let unenforceable = ["pattern", "format", "minLength", "maxLength"]
                .into_iter()
                .find(|k| prop.get(*k).is_some());
            if let (true, Some(kw)) = (tool.strict, unenforceable) {
                return Err(ConstrainError::unsupported(
                    "tools",
                    format!(
                        "tool `{}` parameter `{key}`: `{kw}` on a string in the {} tool-call format (arguments are raw text there)",
                        tool.name,
                        self.name()
                    ),
                ));
            }
            return Ok(ValueRule::Text);
        }
        let mut prop = prop.clone();
        if types == ["integer"] {
            // The raw text becomes a JSON integer: keep it within what every JSON reader
            // holds exactly (the grammar would otherwise allow any number of digits).
            if let Some(o) = prop.as_object_mut() {
                o.entry("minimum").or_insert(json!(-MAX_SAFE_INTEGER));
                o.entry("maximum").or_insert(json!(MAX_SAFE_INTEGER));
            }
        }
        Ok(ValueRule::Json(json_rule(
            &with_defs(&prop, &tool.params),
            !tool.strict,
        )))
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Markup::JsonTools => "json_tools",
            Markup::Qwen3Coder => "qwen3_coder",
            Markup::MinimaxM2 => "minimax_m2",
            Markup::Glm45 => "glm45",
            Markup::Deepseek => "deepseek",
            Markup::KimiK2 => "kimi_k2",
            Markup::Mistral => "mistral",
            Markup::DeepseekV32 => "deepseek_v32",
            Markup::Pythonic => "pythonic",
        }
    }
}
