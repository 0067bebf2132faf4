//! `kooka models pull ORG/NAME`: download a repo's files into the Hugging Face cache (the
//! layout `huggingface_hub` writes, which [`super::resolve`] reads) through the `hf-hub`
//! crate. Before any request it checks that the hub (or the proxy in `HTTPS_PROXY`) accepts a
//! TCP connection within a few seconds, so that without a network it fails at once with a
//! message that says so, rather than after the HTTP client's own timeouts.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::progress::{Progress, Unit};

/// How long the first connection may take before the network counts as absent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0:?} is not a repo id: expected ORG/NAME (e.g. mlx-community/Qwen3-4B-4bit)")]
    BadRepoId(String),
    #[error(
        "no network: cannot reach {host} ({why}); pull needs access to the Hugging Face hub \
         (set HF_ENDPOINT for a mirror, HTTPS_PROXY for a proxy), or copy the model folder here"
    )]
    Offline { host: String, why: String },
    #[error("the hub answered for {repo}: {message}")]
    Hub { repo: String, message: String },
    #[error("downloading {file} of {repo}: {message}")]
    Download {
        repo: String,
        file: String,
        message: String,
    },
}

/// Where to download from.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub repo: String,
    pub revision: String,
    /// The hub cache folder (`HF_HUB_CACHE`, ...).
    pub cache: PathBuf,
    /// `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: String,
    pub token: Option<String>,
}

impl PullOptions {
    /// Options for `repo` from the environment (`HF_ENDPOINT`, `HF_TOKEN`).
    pub fn from_env(repo: &str, cache: &Path) -> Self {
        PullOptions {
            repo: repo.to_string(),
            revision: "main".into(),
            cache: cache.to_path_buf(),
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }
}

/// Downloads every file of the repo's revision (files already cached are kept); returns the
/// snapshot folder.
pub fn pull(options: &PullOptions) -> Result<PathBuf, PullError> {
    let repo_id = &options.repo;
    let valid = repo_id
        .split_once('/')
        .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
    if !valid {
        return Err(PullError::BadRepoId(repo_id.clone()));
    }
    let proxy = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    check_reachable(proxy.as_deref().unwrap_or(&options.endpoint))?;
    let hub = |e: &dyn std::fmt::Display| PullError::Hub {
        repo: repo_id.clone(),
        message: e.to_string(),
    };
    let api = ApiBuilder::from_cache(Cache::new(options.cache.clone()))
        .with_endpoint(options.endpoint.clone())
        .with_token(options.token.clone())
        .with_progress(false)
        .with_retries(0)
        .build()
        .map_err(|e| hub(&e))?;
    let repo = api.repo(Repo::with_revision(
        repo_id.clone(),
        RepoType::Model,
        options.revision.clone(),
    ));
    let info: hf_hub::api::RepoInfo = repo
        .info_request()
        .timeout(Duration::from_secs(30))
        .call()
        .map_err(|e| hub(&e))?
        .into_json()
        .map_err(|e| hub(&e))?;
    let mut last = None;
    let mut progress = ProgressAdapter(None);
    for sibling in &info.siblings {
        let file = &sibling.rfilename;
        tracing::info!(repo = %repo_id, %file, "downloading");
        let path = repo
            .download_with_progress(file, &mut progress)
            .map_err(|e| PullError::Download {
                repo: repo_id.clone(),
                file: file.clone(),
                message: e.to_string(),
            })?;
        last = Some((path, file.clone()));
    }
    // `<snapshot>/<file>` -> `<snapshot>` (a file may sit in a subfolder).
    let snapshot = last.and_then(|(path, file)| {
        let depth = Path::new(&file).components().count();
        path.ancestors().nth(depth).map(Path::to_path_buf)
    });
    snapshot.ok_or_else(|| PullError::Hub {
        repo: repo_id.clone(),
        message: "the repo lists no files".into(),
    })
}

/// Fails fast when `target` (the hub's URL, or the HTTPS proxy's) accepts no TCP connection.
fn check_reachable(target: &str) -> Result<(), PullError> {
    let (host, port) = host_port(target);
    let offline = |why: String| PullError::Offline {
        host: format!("{host}:{port}"),
        why,
    };
    // A resolver without a network can wait long; the lookup gets the same bound.
    let (tx, rx) = std::sync::mpsc::channel();
    let lookup_host = host.clone();
    std::thread::spawn(move || {
        let _ = tx.send(
            (lookup_host.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>()),
        );
    });
    let addrs = match rx.recv_timeout(CONNECT_TIMEOUT) {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => return Err(offline(format!("name lookup failed: {e}"))),
        Err(_) => return Err(offline("name lookup timed out".into())),
    };
    let mut why = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => why = format!("connecting to {addr}: {e}"),
        }
    }
    Err(offline(why))
}

/// Host and port of a URL (`https://h`, `http://h:8080/x`, `h:3128`).
fn host_port(url: &str) -> (String, u16) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let default_port = if scheme == "http" { 80 } else { 443 };
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
            Ok(port) => (h.trim_matches(['[', ']']).to_string(), port),
            Err(_) => (authority.to_string(), default_port),
        },
        _ => (authority.trim_matches(['[', ']']).to_string(), default_port),
    }
}

/// hf-hub's per-file progress calls, onto [`Progress`].
struct ProgressAdapter(Option<Progress>);

impl hf_hub::api::Progress for &mut ProgressAdapter {
    fn init(&mut self, size: usize, filename: &str) {
        match &mut self.0 {
            Some(p) => p.restart(filename, size as u64),
            None => self.0 = Some(Progress::new(filename, size as u64, Unit::Bytes)),
        }
    }
    fn update(&mut self, size: usize) {
        if let Some(p) = &mut self.0 {
            p.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(p) = self.0.take() {
            p.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            host_port("https://huggingface.co"),
            ("huggingface.co".into(), 443)
        );
        assert_eq!(host_port("http://proxy:3128/"), ("proxy".into(), 3128));
        assert_eq!(host_port("http://u:p@proxy"), ("proxy".into(), 80));
        assert_eq!(host_port("[::1]:8080"), ("::1".into(), 8080));
    }

    #[test]
    fn an_unreachable_hub_fails_at_once() {
        // A port nothing listens on, on loopback: refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let start = std::time::Instant::now();
        let err = check_reachable(&format!("http://127.0.0.1:{port}")).unwrap_err();
        assert!(matches!(err, PullError::Offline { .. }), "{err}");
        assert!(err.to_string().contains("no network"), "{err}");
        assert!(start.elapsed() < CONNECT_TIMEOUT);
    }
}
