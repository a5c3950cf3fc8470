//! `netfab lab bench`: throughput and latency of netfab's eBPF path next to a
//! plain kernel VXLAN setup and the raw underlay, measured in one run on the
//! same hosts, reported as medians with each path's ratio to raw.
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    anchor,
    demo::{iperf3, ping, IperfServer},
    say,
    topology::Topology,
};

#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    pub path: String,
    pub gbps_1_stream: f64,
    pub gbps_4_streams: f64,
    pub rtt_ms: f64,
    pub ratio_to_raw: f64,
}

struct Endpoints {
    name: &'static str,
    client_ns: String,
    server_ns: String,
    server_ip: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Default)]
struct Samples {
    one: Vec<f64>,
    four: Vec<f64>,
    rtt: Vec<f64>,
}

/// One repetition on one path: 1-stream and 4-stream iperf3, then 200 pings.
fn measure_once(e: &Endpoints, secs: u32, s: &mut Samples) -> Result<()> {
    let _server = IperfServer::start(&e.server_ns, 5202)?;
    s.one
        .push(iperf3(&e.client_ns, &e.server_ip, 5202, secs, 1)?);
    s.four
        .push(iperf3(&e.client_ns, &e.server_ip, 5202, secs, 4)?);
    let p = ping(&e.client_ns, &e.server_ip, 200, "0.005")?;
    anyhow::ensure!(
        p.received == p.sent,
        "{}: lost {} pings",
        e.name,
        p.sent - p.received
    );
    s.rtt.push(p.avg_rtt_ms);
    Ok(())
}

/// Runs the comparison on lab `topo` (which must be up, with 2+ hosts) and
/// writes `bench.json` into `out_dir`.
pub fn run(topo: &Topology, secs: u32, reps: u32, out_dir: &Path) -> Result<Vec<PathResult>> {
    anyhow::ensure!(topo.hosts >= 2, "the benchmark needs at least 2 hosts");
    anchor::build(topo).context("building the kernel-VXLAN anchor")?;
    let paths = [
        Endpoints {
            name: "raw-underlay",
            client_ns: topo.host_ns(2),
            server_ns: topo.host_ns(1),
            server_ip: topo.host_ip(1).to_string(),
        },
        Endpoints {
            name: "netfab-ebpf",
            client_ns: topo.container_ns(2, 1),
            server_ns: topo.container_ns(1, 1),
            server_ip: topo.container_ip(1, 1).to_string(),
        },
        Endpoints {
            name: "kernel-vxlan",
            client_ns: anchor::ns(topo, 2),
            server_ns: anchor::ns(topo, 1),
            server_ip: anchor::ip(1).to_string(),
        },
    ];
    // Repetitions are interleaved across paths so that slow drift of the
    // machine (other load, thermal) spreads over all paths alike.
    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    for r in 1..=reps {
        for (e, s) in paths.iter().zip(samples.iter_mut()) {
            measure_once(e, secs, s)?;
            say(format!(
                "{:<12} rep {r}/{reps}: 1 stream {:.2} Gbit/s, 4 streams {:.2} Gbit/s, RTT {:.3} ms",
                e.name,
                s.one.last().unwrap(),
                s.four.last().unwrap(),
                s.rtt.last().unwrap()
            ));
        }
    }
    let mut results: Vec<PathResult> = paths
        .iter()
        .zip(samples)
        .map(|(e, s)| PathResult {
            path: e.name.into(),
            gbps_1_stream: median(s.one),
            gbps_4_streams: median(s.four),
            rtt_ms: median(s.rtt),
            ratio_to_raw: 0.0,
        })
        .collect();
    let raw = results[0].gbps_1_stream;
    for r in &mut results {
        r.ratio_to_raw = r.gbps_1_stream / raw;
    }
    std::fs::create_dir_all(out_dir)?;
    let json = out_dir.join("bench.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    println!("{}", table(&results));
    say(format!("results written to {}", json.display()));
    Ok(results)
}

pub fn table(results: &[PathResult]) -> String {
    let mut s = String::from("| path | 1 stream Gbit/s | 4 streams Gbit/s | ping RTT µs | 1-stream ratio to raw |\n|---|---|---|---|---|\n");
    for r in results {
        s += &format!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.2} |\n",
            r.path,
            r.gbps_1_stream,
            r.gbps_4_streams,
            r.rtt_ms * 1000.0,
            r.ratio_to_raw
        );
    }
    s
}
