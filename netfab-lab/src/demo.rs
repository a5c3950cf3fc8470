//! What the lab shows: containers pinging each other across hosts and within
//! one, and an iperf3 transfer between hosts. Also used by the tests.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{say, topology::Topology};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub avg_rtt_ms: f64,
}

/// Parses iputils ping's summary lines.
pub fn parse_ping(out: &str) -> Option<PingStats> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line.split(',').map(|p| {
        p.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u32>().ok())
    });
    let sent = nums.next()??;
    let received = nums.next()??;
    let avg_rtt_ms = out
        .lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Some(PingStats {
        sent,
        received,
        avg_rtt_ms,
    })
}

/// Pings `dst` from namespace `ns`. A lossy result is returned, not an error;
/// callers decide what loss means.
pub fn ping(ns: &str, dst: &str, count: u32, interval: &str) -> Result<PingStats> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            dst,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).with_context(|| format!("unexpected ping output from {ns} to {dst}: {text}"))
}

/// A running iperf3 server in a namespace, stopped on drop.
pub struct IperfServer {
    child: Child,
}

impl IperfServer {
    pub fn start(ns: &str, port: u16) -> Result<Self> {
        Self::start_on(ns, port, None)
    }

    /// A server bound to `addr`: on a host with several addresses its UDP
    /// replies then come from the address the client sent to (unbound, the
    /// route picks the source and a connected UDP client ignores them).
    pub fn start_on(ns: &str, port: u16, addr: Option<&str>) -> Result<Self> {
        let mut args = vec!["netns", "exec", ns, "iperf3", "-s"];
        if let Some(a) = addr {
            args.extend(["-B", a]);
        }
        let port = port.to_string();
        let child = Command::new("ip")
            .args(args)
            .args(["-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 server (is iperf3 installed?)")?;
        Ok(Self { child })
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an iperf3 TCP client; returns the receiver's throughput in Gbit/s.
/// Retries the connection for a moment while the server starts listening.
pub fn iperf3(client_ns: &str, server_ip: &str, port: u16, secs: u32, streams: u32) -> Result<f64> {
    iperf3_pinned(client_ns, server_ip, port, secs, streams, None)
}

/// As [`iperf3`], with client and server pinned to CPUs (`-A c,s`) so runs
/// are comparable on a small machine.
pub fn iperf3_pinned(
    client_ns: &str,
    server_ip: &str,
    port: u16,
    secs: u32,
    streams: u32,
    cpus: Option<(u32, u32)>,
) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                client_ns,
                "iperf3",
                "-c",
                server_ip,
                "-p",
                &port.to_string(),
                "-t",
                &secs.to_string(),
                "-P",
                &streams.to_string(),
                "-J",
            ])
            .args(
                cpus.map(|(c, s)| vec!["-A".to_string(), format!("{c},{s}")])
                    .unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .output()
            .context("running iperf3 client")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        let err = v["error"].as_str().unwrap_or("no JSON result").to_string();
        if Instant::now() > deadline || !err.contains("connect") {
            bail!("iperf3 from {client_ns} to {server_ip}: {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every container pings every other container: within a network every ping
/// must be answered, across networks none may be. Then one iperf3 run
/// between two hosts.
pub fn run(topo: &Topology, iperf_secs: u32) -> Result<()> {
    let all = topo.all_containers();
    let mut failures = Vec::new();
    let mut rtts = Vec::new();
    let mut isolated = 0;
    for &(h, c) in &all {
        for &(h2, c2) in &all {
            if (h, c) == (h2, c2) {
                continue;
            }
            let dst = topo.container_ip(h2, c2).to_string();
            let same_net = topo.container_network(c) == topo.container_network(c2);
            let count = if same_net { 3 } else { 1 };
            let st = ping(&topo.container_ns(h, c), &dst, count, "0.05")?;
            let from = topo.container_ns(h, c);
            if same_net && st.received != st.sent {
                failures.push(format!(
                    "{from} -> {dst}: {}/{} answered",
                    st.received, st.sent
                ));
            } else if !same_net && st.received > 0 {
                failures.push(format!("{from} -> {dst}: crossed networks"));
            }
            if same_net {
                rtts.push(st.avg_rtt_ms);
            } else {
                isolated += 1;
            }
        }
    }
    let avg = rtts.iter().sum::<f64>() / rtts.len().max(1) as f64;
    say(format!(
        "ping matrix: {} pairs in the same network (mean RTT {avg:.3} ms), {isolated} pairs across networks kept apart, {} failures",
        rtts.len(),
        failures.len()
    ));
    if !failures.is_empty() {
        bail!("ping matrix failed: {}", failures.join(", "));
    }
    if topo.hosts >= 2 && iperf_secs > 0 {
        let server_ns = topo.container_ns(1, 1);
        let server_ip = topo.container_ip(1, 1).to_string();
        let _server = IperfServer::start(&server_ns, 5201)?;
        let gbps = iperf3(&topo.container_ns(2, 1), &server_ip, 5201, iperf_secs, 1)?;
        let path = crate::read_status(topo, 2)
            .and_then(|st| {
                let peer = st
                    .networks
                    .first()?
                    .peers
                    .iter()
                    .find(|p| p.subnet.contains(&topo.container_ip(1, 1)))?
                    .path
                    .clone();
                Some(format!("{} dataplane, {peer} path", st.dataplane))
            })
            .unwrap_or_else(|| "static eBPF + VXLAN".into());
        say(format!(
            "iperf3 {} -> {server_ip} (across hosts, {path}): {gbps:.2} Gbit/s",
            topo.container_ns(2, 1)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let out = "--- 10.244.2.2 ping statistics ---\n\
                   5 packets transmitted, 4 received, 20% packet loss, time 4005ms\n\
                   rtt min/avg/max/mdev = 0.041/0.057/0.080/0.014 ms\n";
        let s = parse_ping(out).unwrap();
        assert_eq!((s.sent, s.received), (5, 4));
        assert!((s.avg_rtt_ms - 0.057).abs() < 1e-9);
    }

    #[test]
    fn parses_total_loss() {
        let out = "3 packets transmitted, 0 received, 100% packet loss, time 2041ms\n";
        let s = parse_ping(out).unwrap();
        assert_eq!((s.sent, s.received), (3, 0));
        assert!(s.avg_rtt_ms.is_nan());
    }
}
