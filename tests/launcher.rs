//! `kooka launch` end to end, with real processes: the rank environment and MLX_HOSTFILE
//! against the real `mlx.launch` (MLX 0.32.2, from third_party/venv), a real 2-rank ring
//! (`kooka dist-check`), failure and signal teardown (no process left behind), and remote
//! ranks over real OpenSSH servers in network namespaces.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

fn kooka() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kooka"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("launcher-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A block of `n` consecutive loopback ports in the ephemeral range, free right now;
/// different per call and per test process so parallel runs do not collide.
fn free_port_block(n: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 1000) as u16 * 17;
    for _ in 0..200 {
        let start = 40000 + (seed + NEXT.fetch_add(n + 3, Ordering::SeqCst)) % 20000;
        let held: Vec<_> = (start..start + n)
            .map(|p| TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if held.iter().all(|l| l.is_ok()) {
            return start;
        }
    }
    panic!("no block of {n} free ports");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Prints, as one JSON line, what mlx.launch / kooka launch gave the rank. It lingers a
/// little after printing: mlx.launch stops reading a rank's output once the rank has
/// exited, so output still in the pipe at that moment is lost.
const SHOW_ENV: &str = "import os, json, time; e = os.environ; print(json.dumps({'rank': e.get('MLX_RANK'), \
    'verbose': e.get('MLX_RING_VERBOSE'), 'foo': e.get('FOO'), 'bar': e.get('BAR'), \
    'hostfile': open(e['MLX_HOSTFILE']).read() if 'MLX_HOSTFILE' in e else None, \
    'nccl': [e.get(k) for k in ('NCCL_HOST_IP', 'NCCL_PORT', 'MLX_WORLD_SIZE', 'NCCL_DEBUG')], \
    'gpu': e.get('CUDA_VISIBLE_DEVICES'), 'nvls': e.get('NCCL_NVLS_ENABLE')}), flush=True); time.sleep(0.5)";

fn python() -> String {
    repo()
        .join("third_party/venv/bin/python")
        .display()
        .to_string()
}

/// Rank reports (one JSON object line per rank) from an output, keyed by MLX_RANK; with
/// `prefixed`, also checks that each line's `[rank] ` prefix names the same rank.
fn reports(stdout: &str, prefixed: bool) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let (tag, body) = match (prefixed, line.split_once("] ")) {
            (true, Some((tag, body))) if tag.starts_with('[') => (Some(tag[1..].to_string()), body),
            (true, _) => continue,
            (false, _) => (None, line),
        };
        let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        let rank = v["rank"].as_str().unwrap_or("none").to_string();
        if let Some(tag) = tag {
            assert_eq!(
                v["rank"].as_str().unwrap_or("0"),
                tag,
                "prefix and MLX_RANK differ: {line}"
            );
        }
        out.insert(rank, v);
    }
    out
}

fn mlx_launch(args: &[&str]) -> BTreeMap<String, Value> {
    let out = Command::new(repo().join("third_party/venv/bin/mlx.launch"))
        .args(args)
        .args(["--", &python(), "-c", SHOW_ENV])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mlx.launch {args:?}: {}",
        text(&out.stderr)
    );
    reports(&text(&out.stdout), false)
}

/// The ranks' reports without `nvls`, after checking that every kooka rank had
/// NCCL_NVLS_ENABLE=0 (kooka launch sets it for every backend; mlx.launch does not).
fn without_nvls(mut ranks: BTreeMap<String, Value>, kooka: bool) -> BTreeMap<String, Value> {
    for (rank, report) in ranks.iter_mut() {
        let nvls = report.as_object_mut().unwrap().remove("nvls");
        if kooka {
            assert_eq!(
                nvls,
                Some(Value::from("0")),
                "rank {rank}: NCCL_NVLS_ENABLE"
            );
        }
    }
    ranks
}

/// Every rank of `kooka launch ARGS` sees what it would under `mlx.launch ARGS` (NVLS aside).
fn assert_same_as_mlx_launch(args: &[&str]) {
    let expected = without_nvls(mlx_launch(args), false);
    let got = without_nvls(kooka_launch(args), true);
    assert!(expected.len() >= 2, "mlx.launch {args:?} gave {expected:?}");
    assert_eq!(
        got, expected,
        "kooka launch {args:?} differs from mlx.launch"
    );
}

fn kooka_launch(args: &[&str]) -> BTreeMap<String, Value> {
    let out = kooka()
        .arg("launch")
        .args(args)
        .args(["--", &python(), "-c", SHOW_ENV])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kooka launch {args:?}: {}",
        text(&out.stderr)
    );
    reports(&text(&out.stdout), true)
}

#[test]
fn rank_environment_matches_mlx_launch() {
    let dir = scratch("env");
    let port = free_port_block(6).to_string();
    let json = dir.join("hosts.json");
    std::fs::write(
        &json,
        r#"{"backend": "ring", "envs": ["FOO=from file"],
            "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
                      {"ssh": "127.0.0.1", "ips": ["127.0.0.1", "127.0.0.2"]}]}"#,
    )
    .unwrap();
    let toml = dir.join("hosts.toml");
    std::fs::write(
        &toml,
        "backend = \"ring\"\n[env]\nFOO = \"from file\"\n\n[[hosts]]\nssh = \"127.0.0.1\"\nips = [\"127.0.0.1\"]\n\n\
         [[hosts]]\nssh = \"127.0.0.1\"\nips = [\"127.0.0.1\", \"127.0.0.2\"]\n",
    )
    .unwrap();
    let json = json.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["-n", "2"],
        vec!["-n", "3", "--connections-per-ip", "2", "-p", &port],
        vec![
            "--hostfile",
            json,
            "-p",
            &port,
            "--env",
            "BAR=cli value",
            "--verbose",
        ],
    ];
    for args in &cases {
        assert_same_as_mlx_launch(args);
    }
    // The same hosts as kooka's TOML give the same result as mlx.launch's JSON.
    let toml_args = [
        "--hostfile",
        toml.to_str().unwrap(),
        "-p",
        &port,
        "--env",
        "BAR=cli value",
        "--verbose",
    ];
    assert_eq!(
        without_nvls(kooka_launch(&toml_args), true),
        without_nvls(mlx_launch(&cases[2]), false)
    );
    // And the hostfile is what the issue spells out.
    let two = kooka_launch(&["-n", "2"]);
    assert_eq!(
        two["1"]["hostfile"],
        "[[\"127.0.0.1:32323\"], [\"127.0.0.1:32324\"]]\n"
    );
}

/// `--backend nccl`: NCCL_HOST_IP, NCCL_PORT, MLX_WORLD_SIZE, MLX_RANK, NCCL_DEBUG and the GPU
/// per rank as mlx.launch sets them (mlx.launch writes them without checking for a GPU, so
/// this runs here). One difference on purpose: a hostfile listing one host twice gives its
/// ranks GPUs 0 and 1 (mlx.launch: 0 and 0, rank modulo -n).
#[test]
fn nccl_environment_matches_mlx_launch() {
    let dir = scratch("nccl-env");
    let port = free_port_block(1).to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--backend", "nccl", "-n", "2"],
        vec![
            "--backend",
            "nccl",
            "-n",
            "3",
            "--nccl-port",
            &port,
            "--verbose",
            "--env",
            "BAR=cli value",
        ],
    ];
    for args in &cases {
        assert_same_as_mlx_launch(args);
    }
    let three = kooka_launch(&cases[1]);
    assert_eq!(three["2"]["gpu"], "2");
    assert_eq!(
        three["2"]["nccl"],
        serde_json::json!(["127.0.0.1", port, "3", "INFO"])
    );

    let json = dir.join("hosts.json");
    std::fs::write(
        &json,
        r#"{"backend": "nccl", "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
                                        {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]}"#,
    )
    .unwrap();
    let args = ["--hostfile", json.to_str().unwrap()];
    let mut expected = without_nvls(mlx_launch(&args), false);
    let got = without_nvls(kooka_launch(&args), true);
    assert_eq!(expected["1"]["gpu"], "0", "mlx.launch's rank modulo -n");
    expected.get_mut("1").unwrap()["gpu"] = Value::from("1");
    assert_eq!(got, expected);
}

/// mlx.launch's `--python` (the interpreter runs the command on every rank) and
/// `--print-python`; `--mpi-arg` is accepted.
#[test]
fn python_flags_as_mlx_launch() {
    let out = kooka()
        .args([
            "launch",
            "-n",
            "2",
            "--python",
            &python(),
            "--mpi-arg",
            "-x",
            "--",
        ])
        .args(["-c", "import os; print('rank', os.environ['MLX_RANK'])"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[0] rank 0") && stdout.contains("[1] rank 1"),
        "{stdout}"
    );
    let out = kooka()
        .args([
            "launch",
            "--print-python",
            "--python",
            "/opt/py/bin/python3",
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "/opt/py/bin/python3\n");
}

#[test]
fn single_rank_gets_no_hostfile() {
    let out = kooka()
        .args([
            "launch",
            "--",
            "sh",
            "-c",
            "echo ${MLX_RANK-unset} ${MLX_HOSTFILE-unset}",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "[0] unset unset\n");
    // And a bare kooka subcommand runs this kooka binary, as a group of one.
    let out = kooka()
        .args(["launch", "--no-prefix", "dist-check", "--expect-size", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["rank"].as_u64(), report["size"].as_u64()),
        (Some(0), Some(1))
    );
}

#[test]
fn dry_run_and_config_errors() {
    let out = kooka()
        .args([
            "launch",
            "--dry-run",
            "-n",
            "2",
            "-p",
            "40100",
            "--connections-per-ip",
            "2",
            "--env",
            "A=b c",
            "dist-check",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("rank 1: host 127.0.0.1 (local)"), "{s}");
    assert!(
        s.contains(&format!(
            "command: {} dist-check",
            env!("CARGO_BIN_EXE_kooka")
        )),
        "{s}"
    );
    assert!(
        s.contains("env: A='b c'") && s.contains("env: MLX_RANK=1"),
        "{s}"
    );
    assert!(s.contains(r#"MLX_HOSTFILE content: [["127.0.0.1:40100", "127.0.0.1:40101"], ["127.0.0.1:40102", "127.0.0.1:40103"]]"#), "{s}");

    let dir = scratch("errors");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[hosts]]\nssh = \"127.0.0.1\"\nips = [\"127.0.0.1\"]\n[[hosts]]\nssh = \"me@box\"\n",
    )
    .unwrap();
    let cases: [(Vec<&str>, String); 4] = [
        (
            vec!["--hostfile", bad.to_str().unwrap()],
            format!(
                "hostfile {}: host 1 (ssh \"me@box\"), field \"ips\"",
                bad.display()
            ),
        ),
        (
            vec!["--backend", "mpi", "-n", "2"],
            "\"mpi\" is not supported yet".into(),
        ),
        (
            vec!["--env", "NOPE", "-n", "2"],
            "\"NOPE\" is not of the form K=V".into(),
        ),
        (
            vec!["--hosts", "127.0.0.1,box"],
            "host 1 (ssh \"box\"), field \"ips\"".into(),
        ),
    ];
    for (args, want) in cases {
        let out = kooka()
            .arg("launch")
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(&want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn two_local_ranks_run_a_real_ring() {
    let port = free_port_block(2).to_string();
    let out = kooka()
        .args([
            "launch",
            "-n",
            "2",
            "-p",
            &port,
            "--",
            "dist-check",
            "--expect-size",
            "2",
            "--timeout-secs",
            "30",
        ])
        .output()
        .unwrap();
    check_dist(&out);
}

fn check_dist(out: &Output) {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "launch failed: {stdout}\n{}",
        text(&out.stderr)
    );
    for rank in 0..2 {
        let tag = format!("[{rank}] ");
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&tag))
            .unwrap_or_else(|| panic!("no rank {rank} line: {stdout}"));
        let report: Value = serde_json::from_str(&line[tag.len()..]).unwrap();
        assert_eq!(
            (report["rank"].as_u64(), report["size"].as_u64()),
            (Some(rank), Some(2))
        );
        assert_eq!(report["all_sum"], serde_json::json!([3.0, 3.0, 3.0, 3.0]));
    }
}

#[test]
fn failing_rank_stops_the_others_and_sets_the_exit_code() {
    let start = Instant::now();
    let out = kooka()
        .args([
            "launch",
            "-n",
            "2",
            "--",
            "sh",
            "-c",
            "if [ $MLX_RANK = 1 ]; then echo bye >&2; exit 3; fi; sleep 60",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "teardown took {:?}",
        start.elapsed()
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("[1] bye\n") && stderr.contains("rank 1 (127.0.0.1) exited with code 3"),
        "{stderr}"
    );
}

/// Rank script for teardown tests: records its pid and a background child's, then waits.
fn pid_script(dir: &Path) -> String {
    let d = dir.display();
    format!("sleep 60 & echo $! > {d}/child$MLX_RANK.pid; echo $$ > {d}/rank$MLX_RANK.pid; wait")
}

fn read_pids(dir: &Path, n: usize, within: Duration) -> Vec<u32> {
    let until = Instant::now() + within;
    loop {
        let pids: Vec<u32> = (0..n)
            .flat_map(|r| [format!("rank{r}.pid"), format!("child{r}.pid")])
            .filter_map(|f| {
                std::fs::read_to_string(dir.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        if pids.len() == 2 * n {
            return pids;
        }
        assert!(
            Instant::now() < until,
            "ranks did not start (pid files in {})",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Alive = has a /proc entry that is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn assert_gone(pids: &[u32], within: Duration) {
    let until = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = pids.iter().filter(|&&p| alive(p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

fn sigterm(child: &Child) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("launcher still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_to_the_launcher_leaves_nothing_behind() {
    let dir = scratch("sigterm");
    let mut launcher = kooka()
        .args(["launch", "-n", "2", "--", "sh", "-c", &pid_script(&dir)])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pids = read_pids(&dir, 2, Duration::from_secs(10));
    assert!(pids.iter().all(|&p| alive(p)));
    sigterm(&launcher);
    let status = wait_with_timeout(&mut launcher, Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + 15));
    assert_gone(&pids, Duration::from_secs(2));
}

#[test]
fn sigint_to_the_launcher_reaches_every_rank() {
    let dir = scratch("sigint");
    let script = format!("trap 'echo got INT; exit 9' INT; {}", pid_script(&dir));
    let mut launcher = kooka()
        .args(["launch", "-n", "2", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pids = read_pids(&dir, 2, Duration::from_secs(10));
    assert!(Command::new("kill")
        .args(["-INT", &launcher.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_with_timeout(&mut launcher, Duration::from_secs(4));
    assert_eq!(status.code(), Some(128 + 2));
    let mut stdout = String::new();
    std::io::Read::read_to_string(launcher.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(
        stdout.contains("[0] got INT\n") && stdout.contains("[1] got INT\n"),
        "{stdout}"
    );
    assert_gone(&pids, Duration::from_secs(2));
}

// ---- Remote ranks: OpenSSH servers in network namespaces --------------------------------

/// Two "hosts": network namespaces, each with an sshd on a veth link to the root namespace
/// (for ssh) and a direct veth link between them (for the ring). Torn down on drop.
struct TestHosts {
    dir: PathBuf,
    namespaces: Vec<String>,
    links: Vec<String>,
    sshd: Vec<Child>,
    ssh_addrs: Vec<String>,
    ring_addrs: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            text(&out.stderr).trim()
        ))
    }
}

impl TestHosts {
    /// `Ok(None)` when network namespaces cannot be created here (not root, no permission).
    fn create() -> Result<Option<TestHosts>, String> {
        let id = std::process::id() % 100_000;
        let dir = scratch("remote");
        let names = [format!("kl{id}a"), format!("kl{id}b")];
        if let Err(e) = ip(&["netns", "add", &names[0]]) {
            eprintln!("SKIP remote launcher test: cannot create network namespaces ({e})");
            return Ok(None);
        }
        let mut hosts = TestHosts {
            dir,
            namespaces: vec![names[0].clone()],
            links: vec![],
            sshd: vec![],
            ssh_addrs: vec![],
            ring_addrs: vec![],
        };
        ip(&["netns", "add", &names[1]])?;
        hosts.namespaces.push(names[1].clone());
        let (x, y) = (200 + id % 50, (id / 50) % 80 * 3);
        for (i, ns) in names.iter().enumerate() {
            // ssh link: root end 10.x.(y+i).1, namespace end .2
            let (root_end, ns_end) = (format!("kl{id}{i}h"), format!("kl{id}{i}n"));
            ip(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            hosts.links.push(root_end.clone());
            ip(&["link", "set", &ns_end, "netns", ns])?;
            ip(&[
                "addr",
                "add",
                &format!("10.{x}.{}.1/24", y + i as u32),
                "dev",
                &root_end,
            ])?;
            ip(&["link", "set", &root_end, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.{x}.{}.2/24", y + i as u32),
                "dev",
                &ns_end,
            ])?;
            ip(&["-n", ns, "link", "set", &ns_end, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            hosts.ssh_addrs.push(format!("10.{x}.{}.2", y + i as u32));
        }
        // ring link between the two namespaces: 10.x.(y+2).2 and .3
        let (a_end, b_end) = (format!("kl{id}ra"), format!("kl{id}rb"));
        ip(&[
            "link", "add", &a_end, "type", "veth", "peer", "name", &b_end,
        ])?;
        hosts.links.push(a_end.clone());
        for (ns, end, host) in [(&names[0], &a_end, 2), (&names[1], &b_end, 3)] {
            ip(&["link", "set", end, "netns", ns])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.{x}.{}.{host}/24", y + 2),
                "dev",
                end,
            ])?;
            ip(&["-n", ns, "link", "set", end, "up"])?;
            hosts.ring_addrs.push(format!("10.{x}.{}.{host}", y + 2));
        }
        hosts.start_sshd()?;
        Ok(Some(hosts))
    }

    fn start_sshd(&mut self) -> Result<(), String> {
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        let d = &self.dir;
        for key in ["hostkey", "userkey"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("ssh-keygen: {}", text(&out.stderr)));
            }
        }
        std::fs::copy(d.join("userkey.pub"), d.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        for (i, ns) in self.namespaces.clone().iter().enumerate() {
            let config = d.join(format!("sshd{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "ListenAddress {addr}\nPort 22\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
                     PidFile {d}/sshd{i}.pidfile\nStrictModes no\nPermitRootLogin yes\nUsePAM no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n",
                    addr = self.ssh_addrs[i],
                    d = d.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            let log =
                std::fs::File::create(d.join(format!("sshd{i}.log"))).map_err(|e| e.to_string())?;
            let child = Command::new("ip")
                .args(["netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("sshd: {e}"))?;
            self.sshd.push(child);
        }
        for addr in &self.ssh_addrs {
            let until = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect_timeout(
                &format!("{addr}:22").parse().unwrap(),
                Duration::from_millis(200),
            )
            .is_err()
            {
                if Instant::now() > until {
                    return Err(format!("sshd on {addr} did not come up: {}", self.logs()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn logs(&self) -> String {
        (0..2)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("sshd{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn hostfile(&self) -> PathBuf {
        let path = self.dir.join("hosts.toml");
        let hosts: String = (0..2)
            .map(|i| {
                format!(
                    "[[hosts]]\nssh = \"root@{}\"\nips = [\"{}\"]\n\n",
                    self.ssh_addrs[i], self.ring_addrs[i]
                )
            })
            .collect();
        std::fs::write(&path, format!("backend = \"ring\"\n\n{hosts}")).unwrap();
        path
    }

    fn launch(&self, command: &[&str]) -> Command {
        let mut cmd = kooka();
        cmd.args(["launch", "--hostfile"])
            .arg(self.hostfile())
            .args(["--grace-period", "3"]);
        for opt in [
            format!("IdentityFile={}/userkey", self.dir.display()),
            "IdentitiesOnly=yes".into(),
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "LogLevel=ERROR".into(),
            "ConnectTimeout=5".into(),
        ] {
            cmd.arg("--ssh-option").arg(opt);
        }
        cmd.arg("--").args(command);
        cmd
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        // Rank processes this test started (their pid files), then the sshd servers.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
            {
                if let Ok(pid) = std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .trim()
                    .parse::<u32>()
                {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        for child in &mut self.sshd {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..self.sshd.len() {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("sshd{i}.pidfile"))) {
                let _ = Command::new("kill")
                    .args(["-TERM", pid.trim()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for link in &self.links {
            let _ = ip(&["link", "del", link]);
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

#[test]
fn remote_ranks_over_ssh_in_network_namespaces() {
    let hosts = match TestHosts::create() {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => panic!("setting up the test hosts: {e}"),
    };

    // A real ring between the two namespaces, started over ssh.
    let out = hosts
        .launch(&["dist-check", "--expect-size", "2", "--timeout-secs", "30"])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("sshd logs:\n{}", hosts.logs());
    }
    check_dist(&out);

    // Teardown reaches the remote ranks (and what they started).
    let script = pid_script(&hosts.dir);
    let mut launcher = hosts
        .launch(&["sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = launcher.stdout.take().unwrap();
    let pump = std::thread::spawn(move || BufReader::new(stdout).lines().count());
    let pids = read_pids(&hosts.dir, 2, Duration::from_secs(15));
    assert!(pids.iter().all(|&p| alive(p)), "remote ranks not running");
    sigterm(&launcher);
    let status = wait_with_timeout(&mut launcher, Duration::from_secs(15));
    assert_eq!(status.code(), Some(128 + 15));
    assert_gone(&pids, Duration::from_secs(3));
    pump.join().unwrap();
}
