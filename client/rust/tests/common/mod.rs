//! A real `turnstore serve` for the tests, on a temporary directory and a Unix socket.
//!
//! The daemon is `$TURNSTORE_BIN` (tests/test_rust.py sets it), or else the
//! repository's `.venv/bin/turnstore` (after `make .venv/.installed`).
//! `start` returns once the daemon's first JSON log line says `serving`;
//! stderr is drained by a thread so the daemon never blocks on logging.
//! Dropping a `Daemon` kills it.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use turnstore_client::{Client, ClientOptions};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub fn turnstore_bin() -> PathBuf {
    match std::env::var_os("TURNSTORE_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/turnstore"),
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub target: String,
    extra_args: Vec<String>,
    child: Option<Child>,
    lines: Option<mpsc::Receiver<String>>,
}

impl Daemon {
    /// A daemon on a fresh temporary data directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A daemon with extra `serve` flags.
    pub fn start_with(extra_args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ts-rust-")
            .tempdir()
            .expect("temporary directory");
        let target = format!("unix:{}", dir.path().join("s.sock").display());
        let mut daemon = Self {
            dir,
            target,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            lines: None,
        };
        daemon.spawn();
        daemon
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let bin = turnstore_bin();
        let socket = self.target.strip_prefix("unix:").unwrap().to_owned();
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args([
                "--listen",
                &format!("unix:{socket}"),
                "--log-format",
                "json",
            ])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("PYTHONUNBUFFERED", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (set TURNSTORE_BIN)", bin.display()));
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    // Nobody listens any more: keep draining.
                }
            }
        });
        self.child = Some(child);
        let first = receiver
            .recv_timeout(STARTUP_TIMEOUT)
            .unwrap_or_else(|e| panic!("the daemon logged nothing ({e})"));
        let parsed: serde_json::Value = serde_json::from_str(&first)
            .unwrap_or_else(|_| panic!("first log line is not JSON: {first}"));
        assert_eq!(parsed["event"], "serving", "daemon did not start: {first}");
        self.lines = Some(receiver);
    }

    /// Stop it with SIGTERM (a graceful shutdown) and return its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("daemon is running");
        child.wait().expect("wait for the daemon")
    }

    /// Start it again after `stop`, on the same directory and socket.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon is running");
        self.spawn();
    }

    /// Send it a signal (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("daemon is running").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGKILL it (no shutdown at all), then start it again on the same directory.
    pub fn crash_and_restart(&mut self) {
        let mut child = self.child.take().expect("daemon is running");
        child.kill().expect("kill the daemon");
        child.wait().expect("reap the daemon");
        self.spawn();
    }

    /// Start it again on the same data directory and socket.
    pub fn restart(&mut self) {
        assert!(self.stop().success(), "the daemon exited with an error");
        self.spawn();
    }

    pub async fn client(&self) -> Client {
        self.client_with(ClientOptions::default()).await
    }

    pub async fn client_with(&self, options: ClientOptions) -> Client {
        Client::connect(&self.target, options)
            .await
            .expect("connect to the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A thread id of its own for each case.
pub fn thread(name: &str) -> agent_sdk_foundation::types::ThreadId {
    agent_sdk_foundation::types::ThreadId::from_string(format!("{name}-{}", uuid::Uuid::new_v4()))
}
