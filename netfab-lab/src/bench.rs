//! `netfab-lab bench`: every path measured side by side in one run.
//!
//! Paths: the raw underlay (host to host), netfab eBPF with VXLAN built in
//! eBPF (native) and by the VXLAN device, eBPF with direct routing, the
//! kernel-VXLAN backend (flannel's design) and host-gw. Each netfab path is
//! its own 2-host lab, all up at once; repetitions are interleaved across
//! paths so slow drift of the machine spreads over all of them alike. Per
//! path: iperf3 TCP with 1 and 4 streams, a TCP request/response test, ping
//! round trips, and 64-byte UDP datagrams per second (where per-packet
//! costs dominate); medians; ratios to raw.
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    chart,
    demo::{iperf3_pinned, IperfServer},
    rr::{self, RrServer},
    say,
    topology::Topology,
};
use netfab::dataplane::{kind::VxlanEncap, select::Choice};

#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    pub path: String,
    pub gbps_1_stream: f64,
    pub gbps_4_streams: f64,
    pub rr_per_sec: f64,
    pub rr_mean_us: f64,
    pub rr_p99_us: f64,
    /// 1-stream throughput over raw's.
    pub ratio_1_stream: f64,
    pub ratio_4_streams: f64,
    /// RR latency over raw's (higher is slower).
    pub rr_latency_ratio: f64,
    /// Median ping round trip (200 pings, 5 ms apart).
    pub ping_rtt_us: f64,
    pub ping_ratio: f64,
    /// 64-byte UDP datagrams per second received (iperf3, unthrottled).
    pub udp64_pps: f64,
    pub udp64_ratio: f64,
    /// During the one-stream run: segments the receiver queued out of
    /// order (TcpExtTCPOFOQueue) and duplicate SACKs the sender got for
    /// spurious retransmits (TcpExtTCPDSACKRecv).
    pub ofo_segments_1_stream: f64,
    pub dsacks_1_stream: f64,
    /// Segments the sender retransmitted (Tcp RetransSegs): with few
    /// DSACKs, out-of-order segments come from loss, not reordering.
    pub retransmits_1_stream: f64,
}

struct Path_ {
    name: &'static str,
    client_ns: String,
    server_ns: String,
    server_ip: String,
}

#[derive(Default)]
struct Samples {
    one: Vec<f64>,
    ofo: Vec<f64>,
    dsacks: Vec<f64>,
    retrans: Vec<f64>,
    four: Vec<f64>,
    rr: Vec<rr::RrResult>,
    ping_us: Vec<f64>,
    pps: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The labs behind the netfab paths: (path name, lab name, backend,
/// direct routing, VXLAN encapsulation, flow steering).
const LABS: [(&str, &str, Choice, bool, VxlanEncap, bool); 6] = [
    (
        "ebpf-vxlan-native",
        "bn-en",
        Choice::Ebpf,
        false,
        VxlanEncap::Native,
        false,
    ),
    // The same path with each container flow steered to one CPU
    // (`flowSteering`): what steering saves in reordering and costs.
    (
        "ebpf-vxlan-native-steered",
        "bn-es",
        Choice::Ebpf,
        false,
        VxlanEncap::Native,
        true,
    ),
    (
        "ebpf-vxlan-device",
        "bn-ev",
        Choice::Ebpf,
        false,
        VxlanEncap::Device,
        false,
    ),
    (
        "ebpf-direct",
        "bn-ed",
        Choice::Ebpf,
        true,
        VxlanEncap::Native,
        false,
    ),
    (
        "kernel-vxlan",
        "bn-kv",
        Choice::Vxlan,
        false,
        VxlanEncap::Native,
        false,
    ),
    (
        "host-gw",
        "bn-hg",
        Choice::HostGw,
        true,
        VxlanEncap::Native,
        false,
    ),
];

/// The raw underlay is measured between the hosts of this lab.
const RAW_LAB: &str = "bn-hg";

pub fn lab_names() -> impl Iterator<Item = &'static str> {
    LABS.iter().map(|l| l.1)
}

/// Median round trip of 200 pings 5 ms apart, µs. The median, not ping's
/// mean: a few wake-ups from a deep idle state on this 2-core machine moved
/// the mean by half from one repetition to the next.
fn ping_rtt_us(client_ns: &str, server_ip: &str) -> Result<f64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", client_ns, "ping", "-n", "-c", "200"])
        .args(["-i", "0.005", "-W", "1", server_ip])
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    median_ping_us(&text)
        .with_context(|| format!("no ping replies from {client_ns} to {server_ip}: {text}"))
}

/// The median of ping's per-reply `time=0.054 ms`, in µs.
fn median_ping_us(text: &str) -> Option<f64> {
    let times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    (!times.is_empty()).then(|| median(times))
}

/// 64-byte UDP datagrams per second that reached the server (iperf3
/// unthrottled: the sender goes as fast as the path lets it).
fn udp64_pps(
    client_ns: &str,
    server_ip: &str,
    port: u16,
    secs: u32,
    cpus: Option<(u32, u32)>,
) -> Result<f64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", client_ns, "iperf3", "-c", server_ip])
        .args(["-p", &port.to_string(), "-t", &secs.to_string()])
        .args(["-u", "-l", "64", "-b", "0", "-J"])
        .args(
            cpus.map(|(c, s)| vec!["-A".to_string(), format!("{c},{s}")])
                .unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .context("running iperf3 -u")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let sum = &v["end"]["sum"];
    match (
        sum["packets"].as_f64(),
        sum["lost_packets"].as_f64(),
        sum["seconds"].as_f64(),
    ) {
        (Some(p), Some(l), Some(s)) if s > 0.0 => Ok((p - l) / s),
        _ => anyhow::bail!(
            "iperf3 -u from {client_ns} to {server_ip}: {}",
            v["error"].as_str().unwrap_or("no JSON result")
        ),
    }
}

/// Client on CPU 0, server on CPU 1 (when there are two): on a small
/// machine unpinned runs swing by a factor of two with placement alone.
fn cpus() -> Option<(u32, u32)> {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (n >= 2).then_some((0, 1))
}

/// A TcpExt counter of namespace `ns` (its /proc/net/netstat).
fn tcp_ext(ns: &str, name: &str) -> Result<u64> {
    proto_stat(ns, "/proc/net/netstat", "TcpExt:", name)
}

/// A counter of `/proc/net/snmp` or `/proc/net/netstat` in `ns`: a line of
/// names and a line of values, both starting with `prefix`.
fn proto_stat(ns: &str, file: &str, prefix: &str, name: &str) -> Result<u64> {
    let text = crate::sh::in_ns(ns, "cat", &[file])?;
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (
        lines.next().with_context(|| format!("no {prefix} names"))?,
        lines
            .next()
            .with_context(|| format!("no {prefix} values"))?,
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no {prefix} {name} in {ns}"))
}

fn retrans_segs(ns: &str) -> Result<u64> {
    proto_stat(ns, "/proc/net/snmp", "Tcp:", "RetransSegs")
}

fn measure_once(p: &Path_, secs: u32, rr_secs: u32, s: &mut Samples) -> Result<()> {
    let cpus = cpus();
    let _iperf = IperfServer::start(&p.server_ns, 5202)?;
    // Reordering on the one-stream run, read off both ends' TCP.
    let ofo0 = tcp_ext(&p.server_ns, "TCPOFOQueue")?;
    let dsack0 = tcp_ext(&p.client_ns, "TCPDSACKRecv")?;
    let retrans0 = retrans_segs(&p.client_ns)?;
    s.one.push(iperf3_pinned(
        &p.client_ns,
        &p.server_ip,
        5202,
        secs,
        1,
        cpus,
    )?);
    s.ofo
        .push((tcp_ext(&p.server_ns, "TCPOFOQueue")? - ofo0) as f64);
    s.dsacks
        .push((tcp_ext(&p.client_ns, "TCPDSACKRecv")? - dsack0) as f64);
    s.retrans
        .push((retrans_segs(&p.client_ns)? - retrans0) as f64);
    s.four.push(iperf3_pinned(
        &p.client_ns,
        &p.server_ip,
        5202,
        secs,
        4,
        cpus,
    )?);
    s.pps
        .push(udp64_pps(&p.client_ns, &p.server_ip, 5202, secs, cpus)?);
    s.ping_us.push(ping_rtt_us(&p.client_ns, &p.server_ip)?);
    let _rr = RrServer::start(&p.server_ns, 5203, cpus.map(|c| c.1))?;
    let server = format!("{}:5203", p.server_ip);
    s.rr.push(rr::run_client(
        &p.client_ns,
        &server,
        rr_secs,
        cpus.map(|c| c.0),
    )?);
    Ok(())
}

/// Brings the labs up, measures, always takes them down again.
pub fn run(
    bpf_object: Option<&Path>,
    secs: u32,
    rr_secs: u32,
    reps: u32,
    out_dir: &Path,
) -> Result<Vec<PathResult>> {
    let mut topos = Vec::new();
    let result = (|| -> Result<Vec<PathResult>> {
        for (path, name, backend, direct, encap, steered) in LABS {
            let mut t = Topology::new(name, 2, 1)?;
            t.dataplane = backend;
            t.direct_routing = direct;
            t.vxlan_encap = encap;
            t.flow_steering = steered;
            say(format!("bench: bringing up lab {name} for path {path}"));
            topos.push(crate::up(&t, bpf_object).with_context(|| format!("lab {name}"))?);
        }
        measure(&topos, secs, rr_secs, reps, out_dir)
    })();
    for (_, name, ..) in LABS {
        let _ = crate::down(name);
    }
    result
}

fn measure(
    topos: &[Topology],
    secs: u32,
    rr_secs: u32,
    reps: u32,
    out_dir: &Path,
) -> Result<Vec<PathResult>> {
    let raw_lab = topos
        .iter()
        .find(|t| t.name == RAW_LAB)
        .context("the raw underlay's lab")?;
    let mut paths = vec![Path_ {
        name: "raw-underlay",
        client_ns: raw_lab.host_ns(2),
        server_ns: raw_lab.host_ns(1),
        server_ip: raw_lab.host_ip(1).to_string(),
    }];
    for (t, (path, ..)) in topos.iter().zip(LABS) {
        paths.push(Path_ {
            name: path,
            client_ns: t.container_ns(2, 1),
            server_ns: t.container_ns(1, 1),
            server_ip: t.container_ip(1, 1).to_string(),
        });
    }
    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    for r in 1..=reps {
        for (p, s) in paths.iter().zip(samples.iter_mut()) {
            measure_once(p, secs, rr_secs, s)?;
            let rr = s.rr.last().expect("just measured");
            say(format!(
                "rep {r}/{reps} {:<21} 1 stream {:6.2} Gbit/s ({} out of order, {} DSACKs, {} retransmits)  4 streams {:6.2} Gbit/s  RR {:7.0}/s mean {:5.1} µs  ping {:5.1} µs  UDP64 {:8.0}/s",
                p.name,
                s.one.last().expect("just measured"),
                s.ofo.last().expect("just measured"),
                s.dsacks.last().expect("just measured"),
                s.retrans.last().expect("just measured"),
                s.four.last().expect("just measured"),
                rr.per_sec,
                rr.mean_us,
                s.ping_us.last().expect("just measured"),
                s.pps.last().expect("just measured"),
            ));
        }
    }
    let mut results: Vec<PathResult> = paths
        .iter()
        .zip(samples)
        .map(|(p, s)| PathResult {
            path: p.name.into(),
            gbps_1_stream: median(s.one),
            gbps_4_streams: median(s.four),
            rr_per_sec: median(s.rr.iter().map(|r| r.per_sec).collect()),
            rr_mean_us: median(s.rr.iter().map(|r| r.mean_us).collect()),
            rr_p99_us: median(s.rr.iter().map(|r| r.p99_us).collect()),
            ratio_1_stream: 0.0,
            ratio_4_streams: 0.0,
            rr_latency_ratio: 0.0,
            ping_rtt_us: median(s.ping_us),
            ping_ratio: 0.0,
            udp64_pps: median(s.pps),
            udp64_ratio: 0.0,
            ofo_segments_1_stream: median(s.ofo),
            dsacks_1_stream: median(s.dsacks),
            retransmits_1_stream: median(s.retrans),
        })
        .collect();
    let raw = results[0].clone();
    for r in &mut results {
        r.ratio_1_stream = r.gbps_1_stream / raw.gbps_1_stream;
        r.ratio_4_streams = r.gbps_4_streams / raw.gbps_4_streams;
        r.rr_latency_ratio = r.rr_mean_us / raw.rr_mean_us;
        r.ping_ratio = r.ping_rtt_us / raw.ping_rtt_us;
        r.udp64_ratio = r.udp64_pps / raw.udp64_pps;
    }
    std::fs::create_dir_all(out_dir)?;
    let json = out_dir.join("bench.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    let table_text = table(&results, reps, secs);
    std::fs::write(out_dir.join("bench.md"), &table_text)?;
    println!("{table_text}");
    match chart::write(&results, out_dir, "bench") {
        Ok(png) => say(format!("chart: {}", png.display())),
        Err(e) => say(format!("chart not rendered: {e:#} (bench.svg is there)")),
    }
    say(format!("results: {}", json.display()));
    Ok(results)
}

pub fn table(results: &[PathResult], reps: u32, secs: u32) -> String {
    let mut s = format!(
        "medians of {reps} interleaved repetitions, iperf3 {secs} s per run\n\n\
         | path | 1 stream Gbit/s | ratio | out of order | DSACKs | retransmits | 4 streams Gbit/s | ratio | TCP_RR /s | RR mean µs | RR p99 µs | latency ratio | ping median µs | ratio | UDP 64 B /s | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in results {
        s += &format!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {:.2} | {:.1} | {:.2} | {:.0} | {:.2} |\n",
            r.path,
            r.gbps_1_stream,
            r.ratio_1_stream,
            r.ofo_segments_1_stream,
            r.dsacks_1_stream,
            r.retransmits_1_stream,
            r.gbps_4_streams,
            r.ratio_4_streams,
            r.rr_per_sec,
            r.rr_mean_us,
            r.rr_p99_us,
            r.rr_latency_ratio,
            r.ping_rtt_us,
            r.ping_ratio,
            r.udp64_pps,
            r.udp64_ratio
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_median_is_read_from_the_replies() {
        let text = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.0.0.2: icmp_seq=1 ttl=63 time=0.054 ms\n\
            64 bytes from 10.0.0.2: icmp_seq=2 ttl=63 time=1.90 ms\n\
            64 bytes from 10.0.0.2: icmp_seq=3 ttl=63 time=0.061 ms\n\
            \n--- 10.0.0.2 ping statistics ---\n\
            3 packets transmitted, 3 received, 0% packet loss, time 10ms\n\
            rtt min/avg/max/mdev = 0.054/0.671/1.900/0.870 ms\n";
        let us = median_ping_us(text).unwrap();
        assert!((us - 61.0).abs() < 1e-6, "{us}");
        assert_eq!(median_ping_us("100% packet loss\n"), None);
    }
}
