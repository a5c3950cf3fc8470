//! `netfab-lab bench`: every path measured side by side in one run.
//!
//! Paths: the raw underlay (host to host), netfab eBPF with VXLAN, eBPF with
//! direct routing, the kernel-VXLAN backend and host-gw. Each netfab path is
//! its own 2-host lab, all up at once; repetitions are interleaved across
//! paths so slow drift of the machine spreads over all of them alike. Per
//! path: iperf3 TCP with 1 and 4 streams and a TCP request/response test;
//! medians; ratios to raw.
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
use netfab::dataplane::select::Choice;

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
    four: Vec<f64>,
    rr: Vec<rr::RrResult>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The labs behind the netfab paths: (path name, lab name, backend, direct).
const LABS: [(&str, &str, Choice, bool); 4] = [
    ("ebpf-vxlan", "bn-ev", Choice::Ebpf, false),
    ("ebpf-direct", "bn-ed", Choice::Ebpf, true),
    ("kernel-vxlan", "bn-kv", Choice::Vxlan, false),
    ("host-gw", "bn-hg", Choice::HostGw, true),
];

pub fn lab_names() -> impl Iterator<Item = &'static str> {
    LABS.iter().map(|l| l.1)
}

/// Client on CPU 0, server on CPU 1 (when there are two): on a small
/// machine unpinned runs swing by a factor of two with placement alone.
fn cpus() -> Option<(u32, u32)> {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (n >= 2).then_some((0, 1))
}

fn measure_once(p: &Path_, secs: u32, rr_secs: u32, s: &mut Samples) -> Result<()> {
    let cpus = cpus();
    let _iperf = IperfServer::start(&p.server_ns, 5202)?;
    for (streams, out) in [(1, &mut s.one), (4, &mut s.four)] {
        out.push(iperf3_pinned(
            &p.client_ns,
            &p.server_ip,
            5202,
            secs,
            streams,
            cpus,
        )?);
    }
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
        for (path, name, backend, direct) in LABS {
            let mut t = Topology::new(name, 2, 1)?;
            t.dataplane = backend;
            t.direct_routing = direct;
            say(format!("bench: bringing up lab {name} for path {path}"));
            topos.push(crate::up(&t, bpf_object).with_context(|| format!("lab {name}"))?);
        }
        measure(&topos, secs, rr_secs, reps, out_dir)
    })();
    for (_, name, _, _) in LABS {
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
    let raw_lab = &topos[3];
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
                "rep {r}/{reps} {:<13} 1 stream {:6.2} Gbit/s  4 streams {:6.2} Gbit/s  RR {:7.0}/s mean {:5.1} µs",
                p.name,
                s.one.last().expect("just measured"),
                s.four.last().expect("just measured"),
                rr.per_sec,
                rr.mean_us
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
        })
        .collect();
    let raw = results[0].clone();
    for r in &mut results {
        r.ratio_1_stream = r.gbps_1_stream / raw.gbps_1_stream;
        r.ratio_4_streams = r.gbps_4_streams / raw.gbps_4_streams;
        r.rr_latency_ratio = r.rr_mean_us / raw.rr_mean_us;
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
         | path | 1 stream Gbit/s | ratio | 4 streams Gbit/s | ratio | TCP_RR /s | RR mean µs | RR p99 µs | latency ratio |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    for r in results {
        s += &format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {:.2} |\n",
            r.path,
            r.gbps_1_stream,
            r.ratio_1_stream,
            r.gbps_4_streams,
            r.ratio_4_streams,
            r.rr_per_sec,
            r.rr_mean_us,
            r.rr_p99_us,
            r.rr_latency_ratio
        );
    }
    s
}
