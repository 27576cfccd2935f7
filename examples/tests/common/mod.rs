//! Helpers shared by the reference server's integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trailmark_core::protocol;

pub const BIN: &str = env!("CARGO_BIN_EXE_trailmark-server");

/// A reference server process, killed when dropped.
pub struct Instance {
    pub child: Child,
    pub base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the reference server on a free port with app `app:secret`, admin key `admin` and
/// `args`, and waits until it listens.
pub fn spawn(args: &[&str]) -> Instance {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--app",
            "app:secret",
            "--admin-key",
            "test-admin-key-0123456789",
            "--ip-rate",
            "100000",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !line.starts_with("listening ") {
        line.clear();
        assert!(Instant::now() < deadline, "server did not start");
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited before listening");
    }
    std::thread::spawn(move || for _ in out.lines() {});
    Instance { child, base: line.trim().trim_start_matches("listening ").to_owned() }
}

/// A signed POST of `body` to `path`, as app `app`, with extra headers.
pub async fn signed(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let body = serde_json::to_vec(body).unwrap();
    let ts = trailmark_server::now_ms() / 1000;
    let mut req = http
        .post(format!("{base}{path}"))
        .header(protocol::HEADER_APP, "app")
        .header(protocol::HEADER_TIMESTAMP, ts.to_string())
        .header(protocol::HEADER_SIGNATURE, protocol::sign(b"secret", ts, &body));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(serde_json::Value::Null))
}
