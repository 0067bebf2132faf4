//! Reading one field of an untrusted JSON body: its type and range checked, and a 400 that
//! names it (`param`) otherwise; and the fields every route shares (sampling, stop,
//! `max_tokens`, logprobs, `logit_bias`, `stream`).

use serde_json::{Map, Value};

use crate::engine::sampling::SamplingParams;
use crate::server::error::ApiError;

/// A present, non-null field.
pub(crate) fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

pub(crate) fn number(obj: &Map<String, Value>, name: &str) -> Result<Option<f32>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            // 1e300 is valid JSON but no f32: refused rather than made infinite.
            Some(x) if (x as f32).is_finite() => Ok(Some(x as f32)),
            Some(x) => Err(ApiError::field(
                name,
                format!("`{name}` is out of range ({x:e})"),
            )),
            _ => Err(ApiError::field(
                name,
                format!("`{name}` must be a number, got {}", type_name(v)),
            )),
        },
    }
}

pub(crate) fn integer(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            let why = match v {
                Value::Number(n) if n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                    format!("`{name}` is out of range ({n})")
                }
                _ => format!("`{name}` must be an integer, got {}", type_name(v)),
            };
            ApiError::field(name, why)
        }),
    }
}

pub(crate) fn boolean(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            ApiError::field(
                name,
                format!("`{name}` must be a boolean, got {}", type_name(v)),
            )
        }),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn check(ok: bool, name: &str, message: &str) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(name, format!("`{name}` {message}")))
    }
}

/// The body as a JSON object (400 otherwise).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(ApiError::bad_request(format!(
            "The request body must be a JSON object, got {}",
            type_name(&other)
        ))),
    }
}

/// An optional string field.
pub(crate) fn string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::field(
            name,
            format!("`{name}` must be a string, got {}", type_name(v)),
        )),
    }
}

/// `n`: only 1 is served.
pub(crate) fn check_n(obj: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(n) = integer(obj, "n")? {
        check(
            n == 1,
            "n",
            "other than 1 is not supported (one choice per request)",
        )?;
    }
    Ok(())
}

/// `stream` and `stream_options.include_usage`.
pub(crate) fn stream_fields(obj: &Map<String, Value>) -> Result<(bool, bool), ApiError> {
    let stream = boolean(obj, "stream")?.unwrap_or(false);
    let include_usage = match get(obj, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")
            .map_err(|_| {
                ApiError::field(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::field(
                "stream_options",
                format!("`stream_options` must be an object, got {}", type_name(v)),
            ))
        }
    };
    Ok((stream, include_usage))
}

/// The first present of `names` (e.g. `max_completion_tokens`, then `max_tokens`), >= 1.
pub(crate) fn max_tokens(
    obj: &Map<String, Value>,
    names: &[&str],
) -> Result<Option<usize>, ApiError> {
    for name in names {
        if let Some(n) = integer(obj, name)? {
            check(n >= 1, name, "must be at least 1")?;
            return Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)));
        }
    }
    Ok(None)
}

/// The sampling fields shared by every route; the flag says whether any was set.
pub(crate) fn sampling(obj: &Map<String, Value>) -> Result<(SamplingParams, bool), ApiError> {
    let mut params = SamplingParams::default();
    let mut set = false;
    if let Some(t) = number(obj, "temperature")? {
        check(t >= 0.0, "temperature", "must be >= 0")?;
        params.temperature = t;
        set = true;
    }
    if let Some(p) = number(obj, "top_p")? {
        check(p > 0.0 && p <= 1.0, "top_p", "must be in (0, 1]")?;
        params.top_p = p;
        set = true;
    }
    if let Some(k) = integer(obj, "top_k")? {
        // -1 and 0 both mean "disabled", as in vLLM and mlx-lm.
        check(k >= -1, "top_k", "must be >= -1")?;
        params.top_k = i32::try_from(k.max(0)).unwrap_or(i32::MAX);
        set = true;
    }
    if let Some(p) = number(obj, "min_p")? {
        check((0.0..=1.0).contains(&p), "min_p", "must be in [0, 1]")?;
        params.min_p = p;
        set = true;
    }
    if let Some(p) = number(obj, "repetition_penalty")? {
        check(p > 0.0, "repetition_penalty", "must be > 0")?;
        params.repetition_penalty = Some(p);
    }
    if let Some(p) = number(obj, "presence_penalty")? {
        check(
            (-2.0..=2.0).contains(&p),
            "presence_penalty",
            "must be in [-2, 2]",
        )?;
        params.presence_penalty = Some(p);
    }
    if let Some(p) = number(obj, "frequency_penalty")? {
        check(
            (-2.0..=2.0).contains(&p),
            "frequency_penalty",
            "must be in [-2, 2]",
        )?;
        params.frequency_penalty = Some(p);
    }
    // Negative seeds are accepted (some clients send them) and used as their bit pattern.
    params.seed = integer(obj, "seed")?.map(|s| s as u64);
    params.logit_bias = logit_bias(obj)?;
    Ok((params, set))
}

/// `logit_bias`: `{"token id": bias in [-100, 100]}`.
fn logit_bias(obj: &Map<String, Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(v) = get(obj, "logit_bias") else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = v else {
        return Err(ApiError::field(
            "logit_bias",
            format!(
                "`logit_bias` must be an object mapping token ids to numbers, got {}",
                type_name(v)
            ),
        ));
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let id: u32 = k.trim().parse().map_err(|_| {
            ApiError::field(
                "logit_bias",
                format!("`logit_bias` key {k:?} is not a token id"),
            )
        })?;
        let bias = v
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                ApiError::field(
                    "logit_bias",
                    format!("`logit_bias[{k:?}]` must be a number in [-100, 100]"),
                )
            })?;
        out.push((id, bias as f32));
    }
    Ok(out)
}

/// `logprobs` (a boolean on chat; an integer count on legacy completions) and
/// `top_logprobs` (0..=20) into the params.
pub(crate) fn chat_logprobs(
    obj: &Map<String, Value>,
    params: &mut SamplingParams,
) -> Result<(), ApiError> {
    params.logprobs = boolean(obj, "logprobs")?.unwrap_or(false);
    if let Some(n) = integer(obj, "top_logprobs")? {
        check((0..=20).contains(&n), "top_logprobs", "must be in [0, 20]")?;
        check(
            params.logprobs || n == 0,
            "top_logprobs",
            "needs `logprobs: true`",
        )?;
        params.top_logprobs = n as usize;
    }
    Ok(())
}

/// A string or a list of strings (`stop`, `stop_sequences`); empty strings dropped.
pub(crate) fn stop_list(obj: &Map<String, Value>, name: &str) -> Result<Vec<String>, ApiError> {
    let list = match get(obj, name) {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::field(
                    name,
                    format!("`{name}` must be a string or a list of strings"),
                )
            })?,
        Some(v) => {
            return Err(ApiError::field(
                name,
                format!(
                    "`{name}` must be a string or a list of strings, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}
