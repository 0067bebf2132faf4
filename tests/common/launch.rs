//! Helpers of the `kooka launch` tests (`tests/launcher*.rs`): the binary, a scratch folder
//! per test, free loopback ports, process output as text.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

pub fn kooka() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kooka"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("launcher-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A block of `n` consecutive loopback ports in the ephemeral range, free right now;
/// different per call and per test process so parallel runs do not collide.
pub fn free_port_block(n: u16) -> u16 {
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

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
