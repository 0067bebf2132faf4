//! `kooka launch`: starts and supervises the ranks of a multi-process run, set up exactly
//! as `mlx.launch --backend ring|nccl` (MLX 0.32) would (same `MLX_RANK`, same `MLX_HOSTFILE`
//! content and ports; same `NCCL_HOST_IP`, `NCCL_PORT`, `MLX_WORLD_SIZE`), without its weak
//! points: output is prefixed by rank, a failing rank
//! stops the others and sets the exit code, signals reach every rank (remote ones too),
//! and a single rank runs without a (broken, empty) hostfile.
//!
//! Modules: [`cli`] (flags), [`hostfile`] (TOML / JSON hostfiles), [`env`] (per-rank
//! environment and `MLX_HOSTFILE`), [`spawn`] (processes and output), [`ssh`] (remote
//! ranks), [`supervise`] (signals, teardown, exit code).

pub mod cli;
pub mod env;
pub mod hostfile;
pub mod spawn;
pub mod ssh;
pub mod supervise;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cli::LaunchArgs;
use env::RankPlan;
use hostfile::{Hostfile, HostfileError};

/// Everything a run needs, resolved from [`LaunchArgs`].
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub args: LaunchArgs,
    /// The binary that runs a command starting with one of `self_subcommands`.
    pub self_exe: Option<PathBuf>,
    pub self_subcommands: Vec<String>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Hostfile(#[from] HostfileError),
    #[error("--env: {0}")]
    Env(String),
    #[error(
        "backend {0:?} is not supported yet by kooka launch (only \"ring\" and \"nccl\"; use mlx.launch for it)"
    )]
    UnsupportedBackend(String),
    #[error("unknown backend {0:?} (expected ring, mpi, nccl, jaccl or jaccl-ring)")]
    UnknownBackend(String),
    #[error("--grace-period must be a non-negative number of seconds")]
    GracePeriod,
    #[error("--drain-timeout must be a non-negative number of seconds")]
    DrainTimeout,
    #[error("no command given")]
    NoCommand,
    #[error("cannot write the ring hostfile {path}: {source}")]
    TempFile {
        path: String,
        source: std::io::Error,
    },
}

/// Entry point for `kooka launch`: runs and returns the process exit code (2 when the
/// run cannot start, after printing why).
pub fn main(args: LaunchArgs, self_subcommands: Vec<String>) -> i32 {
    let config = LaunchConfig {
        args,
        self_exe: std::env::current_exe().ok(),
        self_subcommands,
    };
    match run(config) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kooka launch: error: {err}");
            2
        }
    }
}

/// The resolved hosts, backend checks, and per-rank plans of a configuration.
pub fn plan(config: &LaunchConfig) -> Result<Vec<RankPlan>, LaunchError> {
    let a = &config.args;
    let hostfile = match &a.hostfile {
        Some(path) => Hostfile::from_file(path)?,
        None => Hostfile::from_list(
            a.hosts.as_deref().unwrap_or("127.0.0.1"),
            a.repeat_hosts.unwrap_or(1) as usize,
        )?,
    };
    let backend = a
        .backend
        .clone()
        .or_else(|| hostfile.backend.clone())
        .unwrap_or_else(|| "ring".into());
    let backend = match backend.as_str() {
        "ring" => env::Backend::Ring {
            starting_port: a.starting_port,
            connections_per_ip: a.connections_per_ip as usize,
        },
        "nccl" => env::Backend::Nccl { port: a.nccl_port },
        "mpi" | "jaccl" | "jaccl-ring" => return Err(LaunchError::UnsupportedBackend(backend)),
        _ => return Err(LaunchError::UnknownBackend(backend)),
    };
    let cli_env = a
        .env
        .iter()
        .map(|e| hostfile::parse_env_entry(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LaunchError::Env)?;
    if let Some((_, v)) = cli_env
        .iter()
        .chain(&hostfile.env)
        .chain(hostfile.hosts.iter().flat_map(|h| &h.env))
        .find(|(k, v)| k == env::NCCL_NVLS.0 && v != env::NCCL_NVLS.1)
    {
        eprintln!(
            "kooka launch: warning: {}={v} ignored: every rank gets {}={} (NVLink multicast \
             can take a shared host's GPUs out of service)",
            env::NCCL_NVLS.0,
            env::NCCL_NVLS.0,
            env::NCCL_NVLS.1
        );
    }
    Ok(env::plan(&hostfile, &cli_env, a.verbose, backend)?)
}

/// The command line a rank runs: the kooka binary itself for a kooka subcommand.
pub fn resolve_command(config: &LaunchConfig) -> Result<Vec<String>, LaunchError> {
    let mut command = config.args.command.clone();
    if command.first().map(String::as_str) == Some("--") {
        command.remove(0);
    }
    let first = command.first().ok_or(LaunchError::NoCommand)?;
    if let Some(exe) = &config.self_exe {
        if config.self_subcommands.iter().any(|s| s == first) {
            command.insert(0, exe.display().to_string());
        }
    }
    if let Some(python) = &config.args.python {
        command.insert(0, python.clone());
    }
    Ok(command)
}

/// `--print-python`: the interpreter `--python` names, else `python3` as found on PATH.
pub fn python_path(args: &LaunchArgs) -> String {
    if let Some(python) = &args.python {
        return python.clone();
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("python3"))
                .find(|p| p.is_file())
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "python3".into())
}

/// Runs the ranks to completion; returns the launcher's exit code.
pub fn run(config: LaunchConfig) -> Result<i32, LaunchError> {
    let a = &config.args;
    if a.print_python {
        println!("{}", python_path(a));
        return Ok(0);
    }
    if !(a.grace_period.is_finite() && a.grace_period >= 0.0) {
        return Err(LaunchError::GracePeriod);
    }
    if !(a.drain_timeout.is_finite() && a.drain_timeout >= 0.0) {
        return Err(LaunchError::DrainTimeout);
    }
    let plans = plan(&config)?;
    let command = resolve_command(&config)?;
    let launcher_cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "/".into());
    let remote_opts = ssh::RemoteOptions {
        cwd: a.cwd.as_deref(),
        default_cwd: &launcher_cwd,
        grace_secs: a.grace_period,
        tty: a.tty,
    };

    if a.dry_run {
        print!("{}", dry_run(&plans, &command, &config, &remote_opts));
        return Ok(0);
    }

    // One ring hostfile for the local ranks (its content is the same for every rank).
    let local_hostfile = match plans
        .iter()
        .find(|p| p.local)
        .and_then(|p| p.hostfile.as_ref())
    {
        Some(content) => Some(TempFile::create(content)?),
        None => None,
    };
    if a.verbose {
        eprintln!(
            "kooka launch: running {} on {} rank(s)",
            ssh::join(&command),
            plans.len()
        );
    }
    let mut supervisor = supervise::Supervisor::new(
        Duration::from_secs_f64(a.grace_period),
        Duration::from_secs_f64(a.drain_timeout),
        a.verbose,
    );
    for p in &plans {
        let (program, args, env, cwd) = if p.local {
            let mut env = p.env.clone();
            if let (Some(file), Some(rank)) = (&local_hostfile, p.mlx_rank()) {
                env.push(("MLX_HOSTFILE".into(), file.0.display().to_string()));
                env.push(("MLX_RANK".into(), rank));
            }
            (
                command[0].clone(),
                command[1..].to_vec(),
                env,
                a.cwd.as_deref().map(Path::new),
            )
        } else {
            let mut argv = ssh::ssh_argv(
                &p.host,
                &a.ssh_options,
                a.tty,
                &ssh::remote_script(p, &command, &remote_opts),
            );
            let program = argv.remove(0);
            (program, argv, vec![], None)
        };
        let spec = spawn::SpawnSpec {
            rank: p.rank,
            program: &program,
            args: &args,
            env: &env,
            cwd,
            keep_stdin: !p.local,
            prefix: !a.no_prefix,
        };
        match spawn::spawn(&spec) {
            Ok(spawned) => supervisor.add(p.rank, &p.host, !p.local, spawned),
            Err(err) => {
                let what = if p.local {
                    program.clone()
                } else {
                    "ssh".into()
                };
                eprintln!(
                    "kooka launch: rank {} ({}): cannot start {what}: {err}",
                    p.rank, p.host
                );
                supervisor.add_failed(p.rank, &p.host, 127);
            }
        }
    }
    let code = supervisor.run();
    drop(local_hostfile);
    Ok(code)
}

/// `--dry-run`'s report: per rank, the host, how it is started, and its environment.
pub fn dry_run(
    plans: &[RankPlan],
    command: &[String],
    config: &LaunchConfig,
    remote: &ssh::RemoteOptions,
) -> String {
    let a = &config.args;
    let mut out = String::new();
    for p in plans {
        let how = if p.local { "local" } else { "ssh" };
        out.push_str(&format!("rank {}: host {} ({how})\n", p.rank, p.host));
        out.push_str(&format!("  command: {}\n", ssh::join(command)));
        let cwd = a
            .cwd
            .clone()
            .unwrap_or_else(|| remote.default_cwd.to_string());
        out.push_str(&format!("  cwd: {cwd}\n"));
        for (k, v) in &p.env {
            out.push_str(&format!("  env: {k}={}\n", ssh::quote(v)));
        }
        if let (Some(content), Some(rank)) = (&p.hostfile, p.mlx_rank()) {
            out.push_str("  env: MLX_HOSTFILE=<temporary file>\n");
            out.push_str(&format!("  env: MLX_RANK={rank}\n"));
            out.push_str(&format!("  MLX_HOSTFILE content: {}\n", content.trim_end()));
        }
        if !p.local {
            let argv = ssh::ssh_argv(&p.host, &a.ssh_options, a.tty, "<remote script>");
            out.push_str(&format!("  ssh: {}\n", argv.join(" ")));
        }
    }
    out
}

/// A temp file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn create(content: &str) -> Result<TempFile, LaunchError> {
        use std::io::Write;
        let dir = std::env::temp_dir();
        let mut n = 0u32;
        loop {
            let path = dir.join(format!("kooka-launch-{}-{n}.json", std::process::id()));
            let err = |source| LaunchError::TempFile {
                path: path.display().to_string(),
                source,
            };
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(content.as_bytes()).map_err(err)?;
                    return Ok(TempFile(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(err(e)),
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
