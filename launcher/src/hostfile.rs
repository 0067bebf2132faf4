//! Hostfiles: which hosts run the ranks (list order = rank order), how to reach them
//! (`ssh`), which addresses the ring uses on each (`ips`) and extra environment.
//!
//! Two formats are read:
//! - kooka's TOML (`hostfile.example.toml`): top-level `backend`, `[env]` (a table),
//!   `[[hosts]]` with `ssh`, `ips` and an optional `[hosts.env]` table;
//! - mlx.launch's JSON, unchanged: a list of hosts, or `{"backend", "envs": ["K=V"],
//!   "hosts": [...]}` with hosts `{"ssh", "ips", "rdma"}`.
//!
//! The format is picked from the extension (`.toml` / `.json`), else from the content
//! (JSON is tried first). Every error names the file, the host (index and ssh) and the
//! field. `--hosts a,b -n N` builds the same structure without a file ([`Hostfile::from_list`]).

use std::net::IpAddr;
use std::path::Path;

use serde_json::{Map, Value};

/// One entry of the hostfile; its position in [`Hostfile::hosts`] is its rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// What `ssh` is given (`user@host`, an alias); exactly `127.0.0.1` runs locally.
    pub ssh: String,
    /// Addresses the ring listens on / connects to for this host.
    pub ips: Vec<String>,
    /// Per-host environment (`[hosts.env]`), applied after the file-wide one.
    pub env: Vec<(String, String)>,
}

impl Host {
    /// Whether this host runs locally (mlx.launch's rule: ssh is exactly `127.0.0.1`).
    pub fn is_local(&self) -> bool {
        self.ssh == "127.0.0.1"
    }
}

/// A parsed, validated hostfile (or `--hosts` list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostfile {
    /// Where the hosts came from: the file's path, or `--hosts`; used in error messages.
    pub source: String,
    pub backend: Option<String>,
    /// File-wide environment, in file order.
    pub env: Vec<(String, String)>,
    pub hosts: Vec<Host>,
}

/// The hostfile syntaxes understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        })
    }
}

/// A hostfile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostfileError {
    #[error("hostfile {file}: cannot read it: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("hostfile {file}: not valid {format}: {message}")]
    Syntax {
        file: String,
        format: Format,
        message: String,
    },
    /// `location` is e.g. `host 1 (ssh "b"), field "ips"`.
    #[error("hostfile {file}: {location}: {message}")]
    Invalid {
        file: String,
        location: String,
        message: String,
    },
}

/// Where in a hostfile a problem is, for error messages.
pub(crate) fn location(host: Option<(usize, Option<&str>)>, field: &str) -> String {
    match host {
        Some((i, Some(ssh))) => format!("host {i} (ssh {ssh:?}), field {field:?}"),
        Some((i, None)) => format!("host {i}, field {field:?}"),
        None => format!("field {field:?}"),
    }
}

/// Checks one `K=V` environment entry and splits it.
pub fn parse_env_entry(entry: &str) -> Result<(String, String), String> {
    let Some((key, value)) = entry.split_once('=') else {
        return Err(format!(
            "environment entry {entry:?} is not of the form K=V"
        ));
    };
    check_env_key(key).map_err(|m| format!("environment entry {entry:?}: {m}"))?;
    Ok((key.to_string(), value.to_string()))
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_env_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a valid variable name (letters, digits, _; not starting with a digit)"
        ))
    }
}

impl Hostfile {
    /// Reads and validates a hostfile, detecting its format.
    pub fn from_file(path: &Path) -> Result<Hostfile, HostfileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| HostfileError::Read {
            file: file.clone(),
            source,
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("toml") => Self::parse(&file, &text, Format::Toml),
            Some("json") => Self::parse(&file, &text, Format::Json),
            _ => match serde_json::from_str::<Value>(&text) {
                Ok(_) => Self::parse(&file, &text, Format::Json),
                Err(_) => Self::parse(&file, &text, Format::Toml),
            },
        }
    }

    /// Parses and validates hostfile text in the given format; `file` is for messages.
    pub fn parse(file: &str, text: &str, format: Format) -> Result<Hostfile, HostfileError> {
        let syntax = |message: String| HostfileError::Syntax {
            file: file.to_string(),
            format,
            message,
        };
        let value: Value = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?,
            Format::Toml => {
                let table: toml::Table = toml::from_str(text)
                    .map_err(|e| syntax(e.to_string().trim_end().to_string()))?;
                serde_json::to_value(table).map_err(|e| syntax(e.to_string()))?
            }
        };
        Validator { file, format }.hostfile(value)
    }

    /// `--hosts a,b` repeated `repeat` times each (mlx.launch's `-n`): a host that is an IP
    /// address gets itself as its ring address, a hostname gets none.
    pub fn from_list(list: &str, repeat: usize) -> Result<Hostfile, HostfileError> {
        let mut hosts = Vec::new();
        for (i, name) in list.split(',').enumerate() {
            if name.is_empty() {
                return Err(HostfileError::Invalid {
                    file: "--hosts".into(),
                    location: format!("host {i}"),
                    message: "a host name cannot be empty".into(),
                });
            }
            let ips = if name.parse::<IpAddr>().is_ok() {
                vec![name.to_string()]
            } else {
                vec![]
            };
            for _ in 0..repeat {
                hosts.push(Host {
                    ssh: name.to_string(),
                    ips: ips.clone(),
                    env: vec![],
                });
            }
        }
        Ok(Hostfile {
            source: "--hosts".into(),
            backend: None,
            env: vec![],
            hosts,
        })
    }

    /// The error for a host that the ring cannot use because it has no `ips`.
    /// Host `index` has no IP address, and `backend` needs one (`"ring"`: every host's;
    /// `"nccl"`: rank 0's, where the others fetch NCCL's unique id).
    pub fn missing_ips(&self, index: usize, backend: &str) -> HostfileError {
        let host = &self.hosts[index];
        let need = match backend {
            "nccl" => "the nccl backend needs rank 0's IP address (every rank reaches it there)",
            _ => "the ring backend needs at least one IP address for every host",
        };
        let hint = if self.source == "--hosts" {
            format!("{need}: give --hosts IP addresses, or use a hostfile with `ips`")
        } else {
            need.to_string()
        };
        HostfileError::Invalid {
            file: self.source.clone(),
            location: location(Some((index, Some(&host.ssh))), "ips"),
            message: hint,
        }
    }
}

struct Validator<'a> {
    file: &'a str,
    format: Format,
}

impl Validator<'_> {
    fn err(
        &self,
        host: Option<(usize, Option<&str>)>,
        field: &str,
        message: impl Into<String>,
    ) -> HostfileError {
        HostfileError::Invalid {
            file: self.file.to_string(),
            location: location(host, field),
            message: message.into(),
        }
    }

    fn hostfile(&self, value: Value) -> Result<Hostfile, HostfileError> {
        let (top, hosts) = match value {
            Value::Array(hosts) if self.format == Format::Json => (Map::new(), Value::Array(hosts)),
            Value::Object(mut top) => {
                let hosts = top
                    .remove("hosts")
                    .ok_or_else(|| self.err(None, "hosts", "missing (the list of hosts)"))?;
                (top, hosts)
            }
            _ => {
                return Err(self.err(
                    None,
                    "hosts",
                    "the file must be a list of hosts or an object with `hosts`",
                ))
            }
        };
        let (env_key, allowed): (&str, &[&str]) = match self.format {
            Format::Json => ("envs", &["backend", "envs"]),
            Format::Toml => ("env", &["backend", "env"]),
        };
        for key in top.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(self.err(
                    None,
                    key,
                    format!("unknown field (expected one of: backend, {env_key}, hosts)"),
                ));
            }
        }
        let backend = match top.get("backend") {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(self.err(None, "backend", "must be a string")),
        };
        let env = match top.get(env_key) {
            None => vec![],
            Some(v) => self.env(None, env_key, v)?,
        };
        let Value::Array(hosts) = hosts else {
            return Err(self.err(None, "hosts", "must be a list"));
        };
        if hosts.is_empty() {
            return Err(self.err(None, "hosts", "lists no host"));
        }
        let hosts = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| self.host(i, h))
            .collect::<Result<_, _>>()?;
        Ok(Hostfile {
            source: self.file.to_string(),
            backend,
            env,
            hosts,
        })
    }

    fn host(&self, i: usize, value: &Value) -> Result<Host, HostfileError> {
        let Value::Object(fields) = value else {
            return Err(self.err(
                Some((i, None)),
                "ssh",
                "a host must be an object with `ssh` and `ips`",
            ));
        };
        let ssh = match fields.get("ssh") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) => {
                return Err(self.err(Some((i, None)), "ssh", "cannot be empty"))
            }
            Some(_) => return Err(self.err(Some((i, None)), "ssh", "must be a string")),
            None => {
                return Err(self.err(
                    Some((i, None)),
                    "ssh",
                    "missing (what to give ssh; 127.0.0.1 = local)",
                ))
            }
        };
        let at = Some((i, Some(ssh.as_str())));
        let allowed: &[&str] = match self.format {
            Format::Json => &["ssh", "ips", "rdma"],
            Format::Toml => &["ssh", "ips", "rdma", "env"],
        };
        for key in fields.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(self.err(
                    at,
                    key,
                    format!("unknown field (expected one of: {})", allowed.join(", ")),
                ));
            }
        }
        let mut ips: Vec<String> = Vec::new();
        match fields.get("ips") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for ip in list {
                    let Value::String(ip) = ip else {
                        return Err(self.err(at, "ips", "must be a list of address strings"));
                    };
                    if ip.trim().is_empty() || ip.contains(char::is_whitespace) {
                        return Err(self.err(at, "ips", format!("{ip:?} is not an address")));
                    }
                    if ips.contains(ip) {
                        return Err(self.err(at, "ips", format!("duplicate address {ip:?}")));
                    }
                    ips.push(ip.clone());
                }
            }
            Some(_) => return Err(self.err(at, "ips", "must be a list of address strings")),
        }
        let env = match fields.get("env") {
            None => vec![],
            Some(v) => self.env(at, "env", v)?,
        };
        Ok(Host { ssh, ips, env })
    }

    /// `envs = ["K=V"]` (JSON) or an `[env]` table (TOML).
    fn env(
        &self,
        at: Option<(usize, Option<&str>)>,
        field: &str,
        value: &Value,
    ) -> Result<Vec<(String, String)>, HostfileError> {
        match (self.format, value) {
            (Format::Json, Value::Array(list)) => list
                .iter()
                .map(|e| match e {
                    Value::String(s) => parse_env_entry(s).map_err(|m| self.err(at, field, m)),
                    _ => Err(self.err(at, field, "must be a list of \"K=V\" strings")),
                })
                .collect(),
            (Format::Json, _) => Err(self.err(at, field, "must be a list of \"K=V\" strings")),
            (Format::Toml, Value::Object(table)) => table
                .iter()
                .map(|(k, v)| {
                    check_env_key(k).map_err(|m| self.err(at, field, m))?;
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(self.err(
                                at,
                                field,
                                format!("{k}: a value must be a string, number or boolean"),
                            ))
                        }
                    };
                    Ok((k.clone(), v))
                })
                .collect(),
            (Format::Toml, _) => Err(self.err(at, field, "must be a table of KEY = \"value\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<Hostfile, HostfileError> {
        Hostfile::parse("hosts.toml", text, Format::Toml)
    }
    fn json(text: &str) -> Result<Hostfile, HostfileError> {
        Hostfile::parse("hosts.json", text, Format::Json)
    }
    fn err(r: Result<Hostfile, HostfileError>) -> String {
        r.expect_err("should fail").to_string()
    }

    #[test]
    fn example_toml_parses() {
        let text = include_str!("../../hostfile.example.toml");
        let hf = Hostfile::parse("hostfile.example.toml", text, Format::Toml).unwrap();
        assert_eq!(hf.backend.as_deref(), Some("ring"));
        assert_eq!(hf.hosts.len(), 2);
        assert!(hf
            .hosts
            .iter()
            .all(|h| h.is_local() && h.ips == ["127.0.0.1"]));
    }

    #[test]
    fn toml_with_env_tables() {
        let hf = toml(
            "backend = \"ring\"\n[env]\nA = \"1\"\nN = 3\n[[hosts]]\nssh = \"me@a\"\nips = [\"10.0.0.1\"]\n[hosts.env]\nB = \"x y\"\n[[hosts]]\nssh = \"b\"\nips = [\"10.0.0.2\", \"10.0.1.2\"]\n",
        )
        .unwrap();
        assert_eq!(
            hf.env,
            vec![("A".into(), "1".into()), ("N".into(), "3".into())]
        );
        assert_eq!(hf.hosts[0].env, vec![("B".into(), "x y".into())]);
        assert_eq!(hf.hosts[1].ips, vec!["10.0.0.2", "10.0.1.2"]);
        assert!(!hf.hosts[0].is_local());
    }

    #[test]
    fn mlx_json_forms() {
        let hf = json(r#"[{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "h2"}]"#).unwrap();
        assert_eq!(hf.hosts.len(), 2);
        assert!(hf.hosts[1].ips.is_empty());
        let hf = json(
            r#"{"backend": "jaccl", "envs": ["MLX_METAL_FAST_SYNCH=1", "E="],
               "hosts": [{"ssh": "h1", "ips": ["1.2.3.4"], "rdma": [null, "rdma_en2"]}]}"#,
        )
        .unwrap();
        assert_eq!(hf.backend.as_deref(), Some("jaccl"));
        assert_eq!(
            hf.env,
            vec![
                ("MLX_METAL_FAST_SYNCH".into(), "1".into()),
                ("E".into(), "".into())
            ]
        );
    }

    #[test]
    fn errors_name_file_host_and_field() {
        let e = err(json(
            r#"[{"ssh": "a", "ips": ["1.1.1.1"]}, {"ssh": "b", "ips": ["2.2.2.2", "2.2.2.2"]}]"#,
        ));
        assert_eq!(
            e,
            r#"hostfile hosts.json: host 1 (ssh "b"), field "ips": duplicate address "2.2.2.2""#
        );
        let e = err(json(r#"{"envs": ["NOEQUALS"], "hosts": [{"ssh": "a"}]}"#));
        assert!(e.starts_with(r#"hostfile hosts.json: field "envs": environment entry "NOEQUALS" is not of the form K=V"#), "{e}");
        let e = err(json(r#"{"envs": ["1X=2"], "hosts": [{"ssh": "a"}]}"#));
        assert!(
            e.contains(r#"field "envs""#) && e.contains("not a valid variable name"),
            "{e}"
        );
        let e = err(toml(
            "[[hosts]]\nssh = \"a\"\nips = [\"1.1.1.1\"]\nport = 22\n",
        ));
        assert!(
            e.starts_with(r#"hostfile hosts.toml: host 0 (ssh "a"), field "port": unknown field"#),
            "{e}"
        );
        let e = err(toml("backnd = \"ring\"\n[[hosts]]\nssh = \"a\"\n"));
        assert!(
            e.starts_with(r#"hostfile hosts.toml: field "backnd": unknown field"#),
            "{e}"
        );
        let e = err(toml(
            "[[hosts]]\nssh = \"a\"\n[hosts.env]\n\"BAD-KEY\" = \"1\"\n",
        ));
        assert!(
            e.starts_with(
                r#"hostfile hosts.toml: host 0 (ssh "a"), field "env": "BAD-KEY" is not a valid"#
            ),
            "{e}"
        );
        let e = err(toml("[[hosts]]\nips = [\"1.1.1.1\"]\n"));
        assert!(
            e.starts_with(r#"hostfile hosts.toml: host 0, field "ssh": missing"#),
            "{e}"
        );
        let e = err(json(r#"{"hosts": []}"#));
        assert!(e.contains(r#"field "hosts": lists no host"#), "{e}");
        let e = err(toml("[[hosts]\n"));
        assert!(e.starts_with("hostfile hosts.toml: not valid TOML"), "{e}");
        // TOML hostfiles use `[env]`, JSON ones `envs`: the other is an unknown field.
        let e = err(json(r#"{"env": {"A": "1"}, "hosts": [{"ssh": "a"}]}"#));
        assert!(e.contains(r#"field "env": unknown field"#), "{e}");
    }

    #[test]
    fn missing_ips_names_host() {
        let hf = json(r#"[{"ssh": "a", "ips": ["1.1.1.1"]}, {"ssh": "me@b"}]"#).unwrap();
        assert!(hf
            .missing_ips(1, "ring")
            .to_string()
            .starts_with(r#"hostfile hosts.json: host 1 (ssh "me@b"), field "ips": "#));
    }

    #[test]
    fn host_list() {
        let hf = Hostfile::from_list("127.0.0.1,box", 2).unwrap();
        let names: Vec<_> = hf
            .hosts
            .iter()
            .map(|h| (h.ssh.as_str(), h.ips.len()))
            .collect();
        assert_eq!(
            names,
            [("127.0.0.1", 1), ("127.0.0.1", 1), ("box", 0), ("box", 0)]
        );
        assert!(Hostfile::from_list("a,,b", 1).is_err());
    }

    #[test]
    fn format_detected_from_content() {
        let dir = std::env::temp_dir().join(format!("kooka-hostfile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("hosts");
        std::fs::write(&a, "[[hosts]]\nssh = \"127.0.0.1\"\n").unwrap();
        assert_eq!(Hostfile::from_file(&a).unwrap().hosts.len(), 1);
        std::fs::write(&a, r#"[{"ssh": "127.0.0.1"}, {"ssh": "127.0.0.1"}]"#).unwrap();
        assert_eq!(Hostfile::from_file(&a).unwrap().hosts.len(), 2);
        let e = Hostfile::from_file(&dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml: cannot read it"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
