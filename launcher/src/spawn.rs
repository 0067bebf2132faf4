//! Starting rank processes (a local rank's command, or the `ssh` client of a remote one)
//! and copying their output to the launcher's, each line prefixed with `[rank] `.
//!
//! Every child gets its own process group (so a signal sent with `killpg` reaches the
//! whole rank, and a Ctrl-C at the terminal reaches only the launcher, which forwards
//! it), and on Linux `PR_SET_PDEATHSIG(SIGTERM)`, so even a launcher killed with SIGKILL
//! does not leave its direct children running.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

/// A started rank process.
pub struct Spawned {
    pub child: Child,
    /// Also the process group id.
    pub pid: i32,
    /// The ssh channel for a remote rank (held open; see `ssh.rs`); `None` for local ones.
    pub stdin: Option<ChildStdin>,
    /// The threads copying stdout and stderr.
    pub pumps: Vec<JoinHandle<()>>,
}

/// What to start for one rank.
pub struct SpawnSpec<'a> {
    pub rank: usize,
    pub program: &'a str,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a Path>,
    /// Give the child a stdin pipe the launcher holds (remote ranks); else `/dev/null`.
    pub keep_stdin: bool,
    pub prefix: bool,
}

/// Starts the process in its own process group with piped output, and the copy threads.
pub fn spawn(spec: &SpawnSpec) -> std::io::Result<Spawned> {
    let mut cmd = Command::new(spec.program);
    cmd.args(spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = spec.cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: only async-signal-safe calls (sigprocmask, signal, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // The launcher forwards these; a launcher started in the background by a
            // non-interactive shell inherits SIGINT ignored, which would make it a no-op.
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (rank, prefix) = (spec.rank, spec.prefix);
    let pumps = vec![
        std::thread::spawn(move || pump(stdout, rank, prefix, Stream::Stdout)),
        std::thread::spawn(move || pump(stderr, rank, prefix, Stream::Stderr)),
    ];
    Ok(Spawned {
        child,
        pid,
        stdin,
        pumps,
    })
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn emit(stream: Stream, bytes: &[u8]) {
    // One write per line under the stream's lock, so lines of different ranks never mix.
    // Errors (a closed launcher stdout) are ignored: keep draining so the rank never blocks.
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|_| out.flush())
        }
        Stream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(bytes).and_then(|_| err.flush())
        }
    };
}

/// Copies one output stream of a rank until end of file: line by line with the `[rank] `
/// prefix (a last line without newline gets one), or as raw chunks without it.
fn pump(reader: impl Read, rank: usize, prefix: bool, stream: Stream) {
    let mut reader = BufReader::new(reader);
    if !prefix {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => emit(stream, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
    let tag = format!("[{rank}] ");
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                let mut out = Vec::with_capacity(tag.len() + line.len() + 1);
                out.extend_from_slice(tag.as_bytes());
                out.extend_from_slice(&line);
                if !line.ends_with(b"\n") {
                    out.push(b'\n');
                }
                emit(stream, &out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Sends `sig` to a process group; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: plain syscall; pgid > 0 so this never targets the launcher's own group.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}
