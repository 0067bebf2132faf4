//! `kooka serve --config FILE` (or `KOOKA_CONFIG`): every serve flag set from a TOML file.
//!
//! Keys are the long flags without `--` (`max-running = 8`; `max_running` is accepted too),
//! at the top level of the file. Precedence, lowest first: the flag's default, the file, the
//! `KOOKA_*` environment variable, the command line. The command line is parsed first; then
//! every key of the file is checked with clap's own parser for its flag alone (so a file value
//! is validated exactly as the flag would be, and a bad one is reported with the file, line and
//! key, even where it is overridden), and the values of flags that neither the command line nor
//! the environment set are appended to the command line for the final parse.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use toml::Spanned;

use super::Cli;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: key `{key}`: {message}", path.display())]
    Key {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("config file {}: {message}", path.display())]
    Combined { path: PathBuf, message: String },
}

/// A failed parse: clap's own (usage, `--help`; `exit()` prints it), or the config file's.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The command line of this process, with `kooka serve --config FILE`'s settings merged in.
pub fn parse() -> Result<Cli, ParseError> {
    parse_from(std::env::args_os().collect())
}

/// [`parse`] of `argv` (program name first).
pub fn parse_from(mut argv: Vec<OsString>) -> Result<Cli, ParseError> {
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let serve = match matches.subcommand() {
        Some(("serve", serve)) => serve,
        _ => return Ok(Cli::from_arg_matches(&matches)?),
    };
    let Some(path) = serve.get_one::<PathBuf>("config").cloned() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let extra = file_args(serve, &path, &text)?;
    if extra.is_empty() {
        return Ok(Cli::from_arg_matches(&matches)?);
    }
    argv.extend(extra);
    let merged = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| ConfigError::Combined {
            path: path.clone(),
            message: first_line(&e),
        })?;
    Ok(Cli::from_arg_matches(&merged)?)
}

/// `--flag=value` for every setting of the file that neither the command line nor the
/// environment gave (`matches`: serve's).
fn file_args(matches: &ArgMatches, path: &Path, text: &str) -> Result<Vec<OsString>, ConfigError> {
    type Table = BTreeMap<Spanned<String>, Spanned<toml::Value>>;
    let table: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: e.message().to_string(),
    })?;
    let mut cmd = Cli::command();
    cmd.build();
    let serve = cmd
        .find_subcommand("serve")
        .expect("the serve subcommand exists");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    // In file order, so that the first bad line is the one reported.
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let line = line_of(text, key.span().start);
        let err = |message: String| ConfigError::Key {
            path: path.to_path_buf(),
            line,
            key: key.get_ref().clone(),
            message,
        };
        let name = key.get_ref().replace('_', "-");
        if value.get_ref().is_table() {
            return Err(err(
                "sections are not read: put the keys at the top level of the file".into(),
            ));
        }
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && !a.is_hide_set())
            .filter(|a| !["config", "help", "version"].contains(&a.get_id().as_str()))
            .ok_or_else(|| err(unknown_key(serve, &name)))?;
        if let Some(first) = seen.insert(name.clone(), line) {
            return Err(err(format!("`{name}` is already set on line {first}")));
        }
        let Some(text_value) = flag_value(arg, value.get_ref()).map_err(err)? else {
            continue;
        };
        let flag = match arg.get_action().takes_values() {
            true => format!("--{name}={text_value}"),
            false => format!("--{name}"),
        };
        // The flag alone, through clap's parser for it: the same checks as on the command line.
        clap::Command::new("kooka serve")
            .no_binary_name(true)
            .arg(arg.clone())
            .try_get_matches_from([&flag])
            .map_err(|e| err(first_line(&e)))?;
        // Checked even when overridden: a bad file is an error whatever else is set.
        let source = matches.value_source(arg.get_id().as_str());
        if !matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            out.push(OsString::from(flag));
        }
    }
    Ok(out)
}

/// The file's value as the flag's text; `None` for a switch set to false.
fn flag_value(arg: &clap::Arg, value: &toml::Value) -> Result<Option<String>, String> {
    use toml::Value as V;
    let scalar = |v: &V| match v {
        V::String(s) => Ok(s.clone()),
        V::Integer(i) => Ok(i.to_string()),
        V::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            kind(other)
        )),
    };
    if !arg.get_action().takes_values() {
        return match value {
            V::Boolean(b) => Ok(b.then(String::new)),
            other => Err(format!("expected true or false, found {}", kind(other))),
        };
    }
    match value {
        V::Array(items) => {
            let many = arg.get_value_delimiter().is_some()
                || matches!(arg.get_action(), ArgAction::Append);
            if !many {
                return Err("expected one value, found an array".into());
            }
            let items: Vec<String> = items.iter().map(scalar).collect::<Result<_, _>>()?;
            Ok(Some(items.join(",")))
        }
        other => scalar(other).map(Some),
    }
}

fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// "unknown key", with the nearest key when one is close, else every key.
fn unknown_key(serve: &clap::Command, name: &str) -> String {
    let keys: Vec<&str> = serve
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| !["config", "help", "version"].contains(l))
        .collect();
    match keys.iter().min_by_key(|k| edit_distance(k, name)) {
        Some(near) if edit_distance(near, name) <= 2 => {
            format!("unknown key (did you mean `{near}`?)")
        }
        _ => format!("unknown key; the keys are {}", keys.join(", ")),
    }
}

/// Levenshtein distance (keys are short ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// clap's message (with its `[possible values: ...]` line) without the `error: ` prefix and
/// the usage and `--help` lines.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines.join(" ");
    joined
        .strip_prefix("error: ")
        .unwrap_or(&joined)
        .to_string()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
