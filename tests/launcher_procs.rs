//! `kooka launch` end to end with real processes: a real 2-rank ring (`kooka dist-check`),
//! failure and signal teardown (no process left behind), and remote ranks over real OpenSSH
//! servers in network namespaces.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::launch::*;

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
    common::exit_within(child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("launcher still running after {limit:?}");
    })
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
