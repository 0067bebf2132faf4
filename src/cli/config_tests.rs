//! Unit tests of the config file merge (the environment's part is in `tests/config.rs`,
//! which owns its process's environment).

use super::*;
use crate::cli::{Command, ParallelArg};

fn write(name: &str, text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("kooka-config-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn serve(argv: &[&str]) -> Result<crate::cli::ServeArgs, ParseError> {
    let argv = ["kooka", "serve"]
        .iter()
        .chain(argv)
        .map(OsString::from)
        .collect();
    match parse_from(argv)?.command {
        Command::Serve(args) => Ok(args),
        other => panic!("parsed {other:?}"),
    }
}

fn config_error(name: &str, text: &str) -> String {
    let path = write(name, text);
    match serve(&["--config", path.to_str().unwrap()]) {
        Err(ParseError::Config(e)) => e.to_string(),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn the_file_sets_what_the_command_line_does_not() {
    let path = write(
        "merge",
        "# limits\nmax-running = 3\nmax_queue = 5\nport = 1234\nincremental-tool-calls = true\n\
         allowed-origins = [\"https://a.example\", \"https://b.example\"]\n\
         parallel = \"tensor\"\nkv-cache-bytes = 1000000\n",
    );
    let args = serve(&["--config", path.to_str().unwrap(), "--port", "9"]).unwrap();
    assert_eq!(args.port, 9, "the command line wins over the file");
    assert_eq!(args.max_running, 3);
    assert_eq!(args.max_queue, 5);
    assert!(args.incremental_tool_calls);
    assert_eq!(
        args.allowed_origins.unwrap(),
        vec!["https://a.example", "https://b.example"]
    );
    assert_eq!(args.parallel, ParallelArg::Tensor);
    assert_eq!(args.kv_cache_bytes, Some(1_000_000));
    // Untouched flags keep their defaults.
    assert_eq!(args.queue_timeout, 600);
    assert_eq!(args.host, "127.0.0.1");
}

#[test]
fn a_false_switch_and_an_empty_file_change_nothing() {
    let path = write("empty", "incremental_tool_calls = false\n");
    let args = serve(&["--config", path.to_str().unwrap()]).unwrap();
    assert!(!args.incremental_tool_calls);
    assert_eq!(args.max_running, 64);
}

#[test]
fn bad_files_name_the_file_line_and_key() {
    let cases = [
        (
            "unknown",
            "port = 1\n\nmax-runing = 3\n",
            ":3: key `max-runing`: unknown key (did you mean `max-running`?)",
        ),
        (
            "far",
            "colour = 3\n",
            ":1: key `colour`: unknown key; the keys are model, served-model-name, host, port",
        ),
        (
            "type",
            "host = \"h\"\nmax_running = true\n",
            ":2: key `max_running`: expected a string or a number, found a boolean",
        ),
        (
            "range",
            "port = 70000\n",
            ":1: key `port`: invalid value '70000' for '--port <PORT>'",
        ),
        (
            "enum",
            "\n\nparallel = \"foo\"\n",
            ":3: key `parallel`: invalid value 'foo' for '--parallel <PARALLEL>' [possible values: pipeline, tensor]",
        ),
        (
            "number",
            "max-queue = \"lots\"\n",
            ":1: key `max-queue`: invalid value 'lots'",
        ),
        (
            "switch",
            "incremental-tool-calls = \"yes\"\n",
            ":1: key `incremental-tool-calls`: expected true or false, found a string",
        ),
        (
            "array",
            "host = [\"a\", \"b\"]\n",
            ":1: key `host`: expected one value, found an array",
        ),
        (
            "section",
            "[http]\nport = 1\n",
            ":1: key `http`: sections are not read",
        ),
        (
            "twice",
            "max-running = 1\nmax_running = 2\n",
            ":2: key `max_running`: `max-running` is already set on line 1",
        ),
        ("syntax", "port = 1\nhost = \n", ":2: not valid TOML"),
    ];
    for (name, text, want) in cases {
        let err = config_error(name, text);
        let file = format!("kooka-config-{name}-{}.toml", std::process::id());
        assert!(
            err.contains(&file) && err.contains(want),
            "{name}: {err}\nwanted {want}"
        );
    }
}

#[test]
fn a_missing_file_is_named() {
    let err = serve(&["--config", "/nonexistent/kooka.toml"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reading config file /nonexistent/kooka.toml"),
        "{err}"
    );
}

#[test]
fn other_subcommands_ignore_config() {
    let argv = ["kooka", "models", "--json"]
        .iter()
        .map(OsString::from)
        .collect();
    assert!(matches!(
        parse_from(argv).unwrap().command,
        Command::Models(_)
    ));
}

#[test]
fn the_global_log_format_is_a_key_too() {
    let path = write("log", "log-format = \"json\"\n");
    let argv = ["kooka", "serve", "--config", path.to_str().unwrap()];
    let cli = parse_from(argv.iter().map(OsString::from).collect()).unwrap();
    assert!(matches!(cli.log_format, crate::cli::LogFormat::Json));
    let argv = [
        "kooka",
        "--log-format",
        "text",
        "serve",
        "--config",
        path.to_str().unwrap(),
    ];
    let cli = parse_from(argv.iter().map(OsString::from).collect()).unwrap();
    assert!(
        matches!(cli.log_format, crate::cli::LogFormat::Text),
        "the flag wins"
    );
}

#[test]
fn the_example_file_is_valid_and_states_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/kooka.example.toml");
    let from_file = serve(&["--config", example]).unwrap();
    let defaults = serve(&[]).unwrap();
    let text = std::fs::read_to_string(example).unwrap();
    assert!(text.contains("\nmax-running = 64\n") && text.contains("\nport = 8080\n"));
    assert_eq!(
        format!("{:?}", from_file.config),
        format!("{:?}", Some(PathBuf::from(example)))
    );
    // Apart from --config itself, the example only restates defaults.
    let from_file = format!("{from_file:?}").replace(
        &format!("config: {:?}", Some(PathBuf::from(example))),
        "config: None",
    );
    assert_eq!(from_file, format!("{defaults:?}"));
}
