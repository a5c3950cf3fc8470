//! A TCP request/response latency test (1-byte request, 1-byte answer, one
//! transaction in flight), like netperf's TCP_RR: what a chatty RPC sees.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RrResult {
    pub transactions: u64,
    pub per_sec: f64,
    pub mean_us: f64,
    pub p99_us: f64,
}

/// Serves echo transactions until killed.
pub fn serve(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("listening on {port}"))?;
    for conn in l.incoming() {
        let mut c = conn?;
        c.set_nodelay(true)?;
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
        });
    }
    Ok(())
}

/// Runs transactions against `server` for `secs`.
pub fn client(server: &str, secs: u32) -> Result<RrResult> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut c = loop {
        match TcpStream::connect(server) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e).with_context(|| format!("connecting to {server}")),
        }
    };
    c.set_nodelay(true)?;
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut b = [7u8; 1];
    while start.elapsed() < Duration::from_secs(secs as u64) {
        let t = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    if lat.is_empty() {
        bail!("no transaction completed");
    }
    let n = lat.len();
    let mean = lat.iter().sum::<f64>() / n as f64;
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(RrResult {
        transactions: n as u64,
        per_sec: n as f64 / start.elapsed().as_secs_f64(),
        mean_us: mean,
        p99_us: lat[(n * 99 / 100).min(n - 1)],
    })
}

fn pin(cpu: Option<u32>) -> Vec<String> {
    cpu.map(|c| vec!["taskset".into(), "-c".into(), c.to_string()])
        .unwrap_or_default()
}

/// `netfab-lab rr-serve` inside a namespace, stopped on drop.
pub struct RrServer(Child);

impl RrServer {
    /// `cpu`: pin the server to this CPU (taskset), for comparable runs.
    pub fn start(ns: &str, port: u16, cpu: Option<u32>) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(pin(cpu))
            .arg(crate::lab_binary()?)
            .args(["rr-serve", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the RR server")?;
        Ok(Self(child))
    }
}

impl Drop for RrServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the RR client inside a namespace.
pub fn run_client(ns: &str, server: &str, secs: u32, cpu: Option<u32>) -> Result<RrResult> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(pin(cpu))
        .arg(crate::lab_binary()?)
        .args(["rr", "--server", server, "--secs", &secs.to_string()])
        .output()
        .context("running the RR client")?;
    if !out.status.success() {
        bail!(
            "rr client in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the RR client's result")
}
