//! Remote ranks: the `ssh` command line and the bash script it runs on the host.
//!
//! The script (bash, which mlx.launch needs on remote hosts too):
//! 1. `cd`s to `--cwd` (an error if that fails) or to the launcher's directory (if it
//!    exists there), exports the environment, writes the rank's `MLX_HOSTFILE` into a
//!    `mktemp` file, and sets `MLX_RANK`;
//! 2. starts the command in the background in its own process group (`set -m`), with
//!    stdin from `/dev/null`;
//! 3. runs a watchdog that reads the ssh channel (the launcher holds its stdin open):
//!    a line `TERM` / `INT` / `HUP` / `KILL` sends that signal to the rank's whole process
//!    group; end of input (the launcher closed it, died, or the connection dropped)
//!    sends SIGTERM, then SIGKILL after the grace period;
//! 4. waits for the command, removes the temp file and exits with the command's status
//!    (128+signal when killed), which ssh passes back.
//!
//! This is what makes teardown reach the remote process without a tty: killing an ssh
//! client alone leaves its remote command running.

use crate::env::RankPlan;

/// Quotes a word for POSIX shells (bash, zsh, dash): unchanged when only safe characters,
/// else single-quoted with `'` written as `'\''` (Python's `shlex.quote` rules).
pub fn quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Quotes and joins a command line.
pub fn join(words: &[String]) -> String {
    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

/// What the remote side needs to know besides the rank's plan.
pub struct RemoteOptions<'a> {
    /// `--cwd`; when `None`, `default_cwd` is tried and a failure is ignored (mlx.launch).
    pub cwd: Option<&'a str>,
    pub default_cwd: &'a str,
    /// Seconds between the SIGTERM and SIGKILL that end-of-input triggers.
    pub grace_secs: f64,
    /// `--tty`: the channel is a terminal; turn its echo off.
    pub tty: bool,
}

/// The bash script that runs one rank on its host (see the module docs).
pub fn remote_script(plan: &RankPlan, command: &[String], opts: &RemoteOptions) -> String {
    let mut s = String::new();
    if opts.tty {
        s.push_str("stty -echo 2>/dev/null\n");
    }
    s.push_str("set -m\nexec 3<&0\n");
    match opts.cwd {
        Some(dir) => s.push_str(&format!(
            "cd {q} || {{ echo \"kooka launch: rank {r}: cannot change directory to \"{q}\" on $(hostname)\" >&2; exit 126; }}\n",
            q = quote(dir),
            r = plan.rank
        )),
        None => s.push_str(&format!("cd {} 2>/dev/null\n", quote(opts.default_cwd))),
    }
    for (k, v) in &plan.env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    if let Some(content) = &plan.hostfile {
        let content = content.strip_suffix('\n').unwrap_or(content);
        s.push_str("kooka_hf=$(mktemp \"${TMPDIR:-/tmp}/kooka-hostfile.XXXXXX\") || exit 126\n");
        s.push_str(&format!(
            "printf '%s\\n' {} >\"$kooka_hf\"\n",
            quote(content)
        ));
        s.push_str(&format!(
            "export MLX_HOSTFILE=\"$kooka_hf\" MLX_RANK={}\n",
            plan.rank
        ));
    }
    s.push_str(&format!("{} </dev/null &\n", join(command)));
    s.push_str("kooka_pid=$!\n");
    s.push_str(&format!(
        "( while read -r kooka_l <&3; do case $kooka_l in TERM|INT|HUP|KILL) kill -s $kooka_l -- -$kooka_pid 2>/dev/null;; esac; done; \
         kill -s TERM -- -$kooka_pid 2>/dev/null; sleep {g}; kill -s KILL -- -$kooka_pid 2>/dev/null ) &\n",
        g = format_secs(opts.grace_secs)
    ));
    s.push_str("kooka_wd=$!\nset +m\n");
    s.push_str("wait $kooka_pid 2>/dev/null\nkooka_rc=$?\n");
    s.push_str("kill -- -$kooka_wd 2>/dev/null\n");
    if plan.hostfile.is_some() {
        s.push_str("rm -f \"$kooka_hf\"\n");
    }
    s.push_str("exit $kooka_rc\n");
    s
}

fn format_secs(secs: f64) -> String {
    let s = format!("{:.3}", secs.max(0.0));
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.to_string()
    }
}

/// `ssh`'s argv for one remote rank: the user's `-o` options first (ssh keeps the first
/// value of an option, so they win), then `BatchMode=yes` and `-T` (or `-tt` with `--tty`).
pub fn ssh_argv(host: &str, ssh_options: &[String], tty: bool, script: &str) -> Vec<String> {
    let mut argv = vec!["ssh".to_string()];
    for opt in ssh_options {
        argv.push("-o".into());
        argv.push(opt.clone());
    }
    argv.extend(["-o".into(), "BatchMode=yes".into()]);
    argv.push(if tty { "-tt".into() } else { "-T".into() });
    argv.push(host.to_string());
    argv.push(format!("exec bash -c {}", quote(script)));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_shlex() {
        assert_eq!(quote("abc-1.2/x_y@h:3,=%+"), "abc-1.2/x_y@h:3,=%+");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME;`x`"), "'$HOME;`x`'");
        assert_eq!(
            join(&["echo".into(), "a b".into(), "c".into()]),
            "echo 'a b' c"
        );
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        let words = [
            "plain",
            "two words",
            "it's",
            "$X `y` \"z\" \\n",
            "*",
            "",
            "new\nline",
            "ünï",
        ];
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let script = format!("for a in {}; do printf '%s\\0' \"$a\"; done", join(&words));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let got: Vec<String> = out
            .stdout
            .split(|&b| b == 0)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(&got[..words.len()], &words[..]);
    }

    #[test]
    fn grace_formatting() {
        assert_eq!(format_secs(5.0), "5");
        assert_eq!(format_secs(0.25), "0.25");
        assert_eq!(format_secs(0.0), "0");
    }

    #[test]
    fn script_runs_locally_through_bash() {
        // The remote script, run by a local bash without ssh: env, hostfile, rank, exit code.
        let plan = RankPlan {
            rank: 1,
            host: "h".into(),
            local: false,
            env: vec![("GREETING".into(), "it's here".into())],
            hostfile: Some("[[\"1.2.3.4:5\"], [\"1.2.3.5:6\"]]\n".into()),
        };
        let cmd: Vec<String> = [
            "sh",
            "-c",
            "printf '%s|%s|' \"$GREETING\" \"$MLX_RANK\"; cat \"$MLX_HOSTFILE\"; exit 7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let opts = RemoteOptions {
            cwd: Some("/"),
            default_cwd: "/",
            grace_secs: 1.0,
            tty: false,
        };
        let argv = ssh_argv("h", &[], false, &remote_script(&plan, &cmd, &opts));
        // stdin stays open (it is the teardown channel): end of input would stop the rank.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(argv.last().unwrap())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _stdin = child.stdin.take();
        let mut stdout = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        let status = child.wait().unwrap();
        let out = (stdout, status);
        assert_eq!(out.0, "it's here|1|[[\"1.2.3.4:5\"], [\"1.2.3.5:6\"]]\n");
        assert_eq!(out.1.code(), Some(7));
    }
}
