//! `kooka launch`'s flags (clap derive), mirroring `mlx.launch` (MLX 0.32) plus kooka's own.

use std::path::PathBuf;

use clap::Args;

/// Start and supervise the ranks of a multi-process run, as `mlx.launch --backend ring|nccl`
/// would set them up (same MLX_RANK / MLX_HOSTFILE and ports; same NCCL_HOST_IP / NCCL_PORT /
/// MLX_WORLD_SIZE). Output lines are
/// prefixed with their rank; when a rank fails the others are stopped and its exit code
/// is returned; SIGINT / SIGTERM reach every rank, local and remote.
///
/// A command whose first word is a kooka subcommand (`serve`, `generate`, `dist-check`,
/// ...) runs this same kooka binary; on remote hosts, the binary must exist at the same
/// absolute path. Remote hosts are reached with the system `ssh` (key-based, no prompts:
/// BatchMode=yes) and need `bash`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Ranks get MLX_RANK and MLX_HOSTFILE exactly as `mlx.launch --backend ring` sets them; with
--backend nccl, NCCL_HOST_IP (rank 0's first IP), NCCL_PORT (--nccl-port), MLX_WORLD_SIZE,
MLX_RANK and CUDA_VISIBLE_DEVICES (one GPU per rank, counted per host; picked from a
CUDA_VISIBLE_DEVICES list in --env, the hostfile or, for local ranks, the launcher's own
environment) as `mlx.launch --backend nccl` does. A single rank gets none of them. Every rank gets NCCL_NVLS_ENABLE=0 (NVLink
multicast off, whatever --env says). Output lines are prefixed with `[rank] `. When a rank exits non-zero the
others get SIGTERM (SIGKILL after --grace-period) and kooka launch exits with that rank's code;
SIGINT/SIGTERM to kooka launch go to rank 0 first (kooka serve drains, then stops the other
ranks), then, once it has exited or after --drain-timeout, to every rank left, local and remote;
kooka launch exits 0 if every rank exited 0, else 128+signal.

A command starting with a kooka subcommand (serve, generate, dist-check, ...) runs this kooka
binary; on remote hosts it must exist at the same absolute path. Remote hosts (ssh other than
127.0.0.1) are reached with the system ssh (keys, no prompts: BatchMode=yes) and need bash.

Examples:
  kooka launch -n 2 -- dist-check --expect-size 2
  kooka launch --hostfile hosts.toml -- serve --model M
  kooka launch -n 2 --backend nccl -- serve --model M --parallel tensor
  kooka launch --dry-run --hosts 10.0.0.1,10.0.0.2 -- python3 job.py")]
pub struct LaunchArgs {
    /// Comma-separated hosts (ssh names; IP addresses are also used for the ring).
    /// 127.0.0.1 runs locally. Default: 127.0.0.1.
    #[arg(long, conflicts_with = "hostfile")]
    pub hosts: Option<String>,
    /// Repeat each host this many times (ranks per host).
    #[arg(short = 'n', long = "repeat-hosts", value_name = "N", conflicts_with = "hostfile",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat_hosts: Option<u32>,
    /// Hostfile: kooka's TOML (see hostfile.example.toml) or mlx.launch's JSON.
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
    /// Distributed backend: ring or nccl (default: the hostfile's, else ring; mlx.launch picks
    /// nccl on CUDA machines, kooka launch never guesses).
    #[arg(long)]
    pub backend: Option<String>,
    /// The port rank 0 hands NCCL's unique id out on (nccl backend).
    #[arg(long, default_value_t = 12345)]
    pub nccl_port: u16,
    /// Set an environment variable on every rank (repeatable; wins over the hostfile's).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory of every rank (default: the launcher's, where it exists).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Print what is started and every rank's exit; sets MLX_RING_VERBOSE=1 (ring) or
    /// NCCL_DEBUG=INFO (nccl).
    #[arg(long)]
    pub verbose: bool,
    /// First ring port; ports count up by one per rank, IP and connection.
    #[arg(short = 'p', long, default_value_t = 32323)]
    pub starting_port: u16,
    /// Ring connections (ports) per IP address.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections_per_ip: u32,
    /// Do not prefix output lines with `[rank] ` (output is then passed through unbuffered).
    #[arg(long)]
    pub no_prefix: bool,
    /// Print each rank's host, command and environment (with MLX_HOSTFILE's content) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds between SIGTERM and SIGKILL when stopping ranks.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub grace_period: f64,
    /// After a signal to the launcher: seconds rank 0 gets to stop on its own (`kooka serve`
    /// drains its requests: see its --shutdown-grace) before every rank is signalled.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// Extra ssh option, passed as `-o OPT` (repeatable), e.g. `IdentityFile=~/.ssh/k`, `Port=2222`.
    #[arg(long = "ssh-option", value_name = "OPT", allow_hyphen_values = true)]
    pub ssh_options: Vec<String>,
    /// Give remote ranks a terminal (`ssh -tt`); default: none (`ssh -T`).
    #[arg(long)]
    pub tty: bool,
    /// Run the command with this interpreter on every rank (`PY COMMAND...`), as mlx.launch.
    #[arg(long, value_name = "PY")]
    pub python: Option<String>,
    /// Print the interpreter --python names (else `python3` on PATH) and exit.
    #[arg(long)]
    pub print_python: bool,
    /// An mpirun argument (repeatable; mlx.launch's, for --backend mpi, which kooka launch does
    /// not support).
    #[arg(long = "mpi-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub mpi_args: Vec<String>,
    /// The command every rank runs (after the flags, optionally after `--`).
    #[arg(
        required_unless_present = "print_python",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}
