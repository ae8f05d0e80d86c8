//! `steward dev up` as a newcomer runs it, for the tests that need the
//! real binaries in real processes (one global tracing subscriber and one
//! metrics recorder per service, as in production).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::binary_dir;

/// The `steward` CLI, run in `dir`.
pub fn steward(dir: &Path) -> Command {
    let binary = binary_dir().join("steward");
    assert!(
        binary.exists(),
        "{} missing: run `cargo build --bins` first (make test does)",
        binary.display()
    );
    let mut command = Command::new(binary);
    command.current_dir(dir);
    command
}

/// A base port whose next three ports are free too (and the four probe
/// ports 10 above them), from below the
/// kernel's ephemeral range (where other tests' port-0 listeners land),
/// so none is handed out between this probe and `dev up`'s bind.
pub fn free_base_port() -> u16 {
    free_base_port_for(&[0..4, 10..14])
}

/// A base port for `dev up --postgres`: its balancers, both replicas'
/// ports and probes, and its throwaway server's port are free.
pub fn free_base_port_for_replicas() -> u16 {
    free_base_port_for(&[0..4, 10..14, 20..28, 30..34, 40..41])
}

fn free_base_port_for(offsets: &[std::ops::Range<u16>]) -> u16 {
    for _ in 0..200 {
        let base = 30_000 + (uuid::Uuid::new_v4().as_u128() % 2_700) as u16;
        let all_free = offsets
            .iter()
            .cloned()
            .flatten()
            .all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free base port");
}

/// Starts `steward dev up` and waits for its `ready` line (its probes
/// listen 10 above each gRPC port); returns the
/// process and everything it printed.
pub fn dev_up(dir: &Path, base_port: u16) -> (Child, Vec<String>) {
    dev_up_with(dir, base_port, &[], Stdio::null())
}

/// [`dev_up`] with `env` set and the services' logs (stderr) to `stderr`.
pub fn dev_up_with(
    dir: &Path,
    base_port: u16,
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, Vec<String>) {
    dev_up_args(dir, base_port, &[], env, stderr)
}

/// [`dev_up_with`] with more arguments to `dev up` (`--postgres`, say).
pub fn dev_up_args(
    dir: &Path,
    base_port: u16,
    args: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, Vec<String>) {
    let mut child = steward(dir)
        .args(["dev", "up", "--base-port", &base_port.to_string()])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let ready = line == "ready";
        lines.push(line);
        if ready {
            return (child, lines);
        }
    }
    let status = child.wait().unwrap();
    panic!(
        "dev up exited ({status}) before ready:\n{}",
        lines.join("\n")
    );
}

pub fn children_of(pid: u32) -> Vec<i32> {
    let output = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn interrupt_and_wait(mut child: Child) -> std::process::ExitStatus {
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "dev up did not stop within 30s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
