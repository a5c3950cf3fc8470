//! The control plane at scale: N simulated hosts' leases written straight
//! into the lab's real etcd (they need no namespaces), one real agent
//! measured. Figures, not assertions: how long until all N are in the
//! agent's eBPF map, how long one more lease takes with N present, what
//! the agent costs in memory and CPU, how many requests it makes of etcd
//! while idle (etcd's own /metrics), and how many kernel routes and
//! neighbours it holds (none per peer on eBPF).
//!
//! Two patterns: `burst` (all leases in as few transactions as etcd takes,
//! /24 subnets, the agent's default intervals) and `batches` (as an
//! independent probe wrote them: transactions of 100 spread over about two
//! seconds, /26 subnets, the lab's intervals: a repair every 5 s). The
//! simulated hosts sit behind a router in both (VXLAN peers).
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Txn, TxnOp};
use ipnet::Ipv4Net;
use netfab::{
    addr::MacAddr,
    dataplane::ebpf::maps::BpfMaps,
    lease::SubnetLease,
    store::{Keys, DEFAULT_PREFIX},
};
use serde::Serialize;

use crate::{say, topology::Topology};

/// The network the simulated hosts lease in: room for 16,384 /24s (or
/// 65,536 /26s).
pub(crate) const NET: &str = "scale";
pub(crate) const CIDR: &str = "10.128.0.0/10";

/// How the leases arrive and what the agent runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Transactions of 128 as fast as etcd takes them; /24s; the agent's
    /// default intervals.
    Burst,
    /// Transactions of 100 over about 2 s; /26s; the lab's intervals.
    Batches,
}

impl Pattern {
    /// /26 where N hosts' /24s would not fit the CIDR (16,384).
    pub fn subnet_len(self, hosts: u32) -> u8 {
        match self {
            Pattern::Burst if hosts as usize + SINGLES < 16_000 => 24,
            _ => 26,
        }
    }
    fn resync_ms(self) -> u32 {
        match self {
            // The agent's own default repair interval.
            Pattern::Burst => 60_000,
            Pattern::Batches => Topology::new("x", 1, 1).map_or(5000, |t| t.resync_ms),
        }
    }
    fn txn(self) -> usize {
        match self {
            Pattern::Burst => TXN_OPS,
            Pattern::Batches => 100,
        }
    }
    /// The whole write is spread over this long.
    fn spread(self) -> Duration {
        match self {
            Pattern::Burst => Duration::ZERO,
            Pattern::Batches => Duration::from_secs(2),
        }
    }
}
/// etcd's default limit of operations per transaction.
const TXN_OPS: usize = 128;
/// One-more-lease samples per size.
const SINGLES: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    pub pattern: Pattern,
    pub hosts: u32,
    pub subnet_len: u8,
    /// From the last write until every simulated subnet is in the map.
    pub all_programmed_ms: f64,
    /// One more lease with N present, until its map entry is there.
    pub one_more_median_ms: f64,
    pub one_more_max_ms: f64,
    pub one_more_samples_ms: Vec<f64>,
    pub agent_rss_mb: f64,
    /// Agent CPU time spent taking the N leases in.
    pub agent_cpu_load_s: f64,
    /// Idle agent CPU, percent of one core.
    pub idle_cpu_pct: f64,
    /// etcd requests per minute while the agent is idle, by gRPC method.
    pub etcd_per_min: BTreeMap<String, f64>,
    /// netfab's routes and the VXLAN device's permanent neighbours in the
    /// agent's namespace with all N programmed.
    pub kernel_routes: usize,
    pub kernel_neighbours: usize,
}

pub(crate) fn subnet(i: u32) -> Ipv4Net {
    subnet_of(24, i)
}

fn subnet_of(len: u8, i: u32) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    Ipv4Net::new(Ipv4Addr::from(base + (i << (32 - len))), len).expect("a subnet")
}

/// A simulated host's underlay address: behind the router, so VXLAN.
fn underlay(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 96, 0, 0)) + i + 1)
}

pub(crate) fn lease_value(i: u32) -> Vec<u8> {
    let ip = underlay(i);
    serde_json::to_vec(&SubnetLease {
        node: format!("sim-{i}"),
        underlay_ip: ip,
        vtep_mac: MacAddr::vtep_for(ip),
        dataplane: "ebpf".into(),
        agent_version: netfab::compat::AGENT_VERSION.into(),
        min_agent_version: None,
    })
    .expect("a lease encodes")
}

/// Writes the leases of simulated hosts `ids` in transactions of TXN_OPS.
pub(crate) async fn write_leases(client: &mut Client, keys: &Keys, ids: &[u32]) -> Result<()> {
    write_pattern(client, keys, Pattern::Burst, 24, ids).await
}

/// Writes the leases of simulated hosts `ids` as `p` says.
async fn write_pattern(
    client: &mut Client,
    keys: &Keys,
    p: Pattern,
    len: u8,
    ids: &[u32],
) -> Result<()> {
    let chunks = ids.len().div_ceil(p.txn()).max(1);
    let gap = p.spread() / chunks as u32;
    for (n, chunk) in ids.chunks(p.txn()).enumerate() {
        if n > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| TxnOp::put(keys.lease(NET, &subnet_of(len, i)), lease_value(i), None))
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .context("writing simulated leases")?;
    }
    Ok(())
}

/// Whether simulated host `i`'s subnet is in the map, pointing at it.
pub(crate) fn programmed(maps: &BpfMaps, i: u32) -> bool {
    programmed_of(maps, 24, i)
}

fn programmed_of(maps: &BpfMaps, len: u8, i: u32) -> bool {
    maps.remote_subnet(subnet_of(len, i))
        .ok()
        .flatten()
        .is_some_and(|r| r.underlay_ip == u32::from(underlay(i)))
}

/// Lines `ip ARGS` prints in namespace `ns`.
fn count_lines(ns: &str, args: &[&str]) -> Result<usize> {
    Ok(crate::sh::ip_in(ns, args)?.lines().count())
}

/// (utime + stime) of `pid`, seconds.
fn cpu_secs(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((f[11].parse::<f64>()? + f[12].parse::<f64>()?) / hz)
}

pub(crate) fn rss_mb(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

pub(crate) fn wait<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measures one size on a lab that is up (one host, plain etcd). Runs in
/// the etcd namespace (the caller's thread has entered it).
fn measure(t: &Topology, p: Pattern, hosts: u32, idle: Duration) -> Result<ScaleResult> {
    let len = p.subnet_len(hosts);
    let pid = crate::agent_pid(&t.name, 1).context("the agent is not running")?;
    let etcd = format!("{}:2379", crate::topology::ETCD_IP);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut client = rt
        .block_on(Client::connect([format!("http://{etcd}")], None))
        .context("connecting to the lab's etcd")?;
    let keys = Keys::new(DEFAULT_PREFIX);
    // The agent's own subnet in the scale network is not simulated.
    let own = wait(
        "the agent's lease in the scale network",
        Duration::from_secs(30),
        || crate::read_leases(t, 1)?.subnets.get(NET).copied(),
    )?;
    let ids: Vec<u32> = (0..)
        .filter(|&i| !own.contains(&subnet_of(len, i).network()))
        .take(hosts as usize + SINGLES)
        .collect();
    let (bulk, singles) = ids.split_at(hosts as usize);
    let maps = BpfMaps::open(&t.pin_dir(1))?;

    let cpu0 = cpu_secs(pid)?;
    say(format!("scale {hosts}: writing the leases"));
    rt.block_on(write_pattern(&mut client, &keys, p, len, bulk))?;
    let written = Instant::now();
    let last = *bulk.last().context("no hosts")?;
    wait(
        "the last lease in the map",
        Duration::from_secs(120),
        || programmed_of(&maps, len, last).then_some(()),
    )?;
    wait("every lease in the map", Duration::from_secs(120), || {
        bulk.iter()
            .all(|&i| programmed_of(&maps, len, i))
            .then_some(())
    })?;
    let all_programmed_ms = written.elapsed().as_secs_f64() * 1e3;
    let agent_cpu_load_s = cpu_secs(pid)? - cpu0;
    let host = t.host_ns(1);
    let kernel_routes = count_lines(&host, &["route", "show", "proto", "212"])?;
    let kernel_neighbours = count_lines(
        &host,
        &[
            "neigh",
            "show",
            "dev",
            netfab::state::DEFAULT_VXLAN_DEVICE,
            "nud",
            "permanent",
        ],
    )?;
    say(format!(
        "scale {hosts}: all programmed {all_programmed_ms:.0} ms after the last write"
    ));

    let mut one_more = Vec::new();
    for &i in singles {
        // Let the previous one settle: each sample is one lone event.
        std::thread::sleep(Duration::from_millis(100));
        rt.block_on(write_pattern(&mut client, &keys, p, len, &[i]))?;
        let put = Instant::now();
        wait("one more lease in the map", Duration::from_secs(30), || {
            programmed_of(&maps, len, i).then_some(())
        })?;
        one_more.push(put.elapsed().as_secs_f64() * 1e3);
    }
    let one_more_max_ms = one_more.iter().cloned().fold(0.0, f64::max);
    let one_more_median_ms = median(one_more.clone());

    say(format!("scale {hosts}: idle for {idle:?}"));
    let (c0, r0, t0) = (cpu_secs(pid)?, crate::etcd_requests(t)?, Instant::now());
    std::thread::sleep(idle);
    let (c1, r1) = (cpu_secs(pid)?, crate::etcd_requests(t)?);
    let secs = t0.elapsed().as_secs_f64();
    let etcd_per_min = r1
        .iter()
        .map(|(m, v)| (m.clone(), (v - r0.get(m).unwrap_or(&0.0)) * 60.0 / secs))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let result = ScaleResult {
        pattern: p,
        hosts,
        subnet_len: len,
        all_programmed_ms,
        one_more_median_ms,
        one_more_max_ms,
        one_more_samples_ms: one_more,
        agent_rss_mb: rss_mb(pid)?,
        agent_cpu_load_s,
        idle_cpu_pct: (c1 - c0) / secs * 100.0,
        etcd_per_min,
        kernel_routes,
        kernel_neighbours,
    };
    // The next size starts from none.
    rt.block_on(client.delete(
        keys.leases(NET),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    ))?;
    Ok(result)
}

/// For each size: a one-host lab on plain etcd, the leases written, the
/// agent measured, the lab removed.
pub fn run(
    sizes: &[u32],
    patterns: &[Pattern],
    idle: Duration,
    bpf_object: Option<&Path>,
    out_dir: &Path,
) -> Result<Vec<ScaleResult>> {
    let mut results = Vec::new();
    for (&p, &n) in patterns
        .iter()
        .flat_map(|p| sizes.iter().map(move |n| (p, n)))
    {
        let mut t = Topology::new("scale", 1, 1)?;
        t.etcd_tls = false;
        t.resync_ms = p.resync_ms();
        let _ = crate::down(&t.name);
        let r = (|| -> Result<ScaleResult> {
            let t = crate::up(&t, bpf_object)?;
            crate::netfab_cli(
                &t,
                &[
                    "network",
                    "create",
                    NET,
                    "--cidr",
                    CIDR,
                    "--subnet-len",
                    &p.subnet_len(n).to_string(),
                    "--vni",
                    "2",
                ],
            )?;
            let ns = t.etcd_ns();
            std::thread::scope(|s| {
                s.spawn(|| {
                    netfab::netns::enter(&ns)?;
                    measure(&t, p, n, idle)
                })
                .join()
                .expect("measuring thread")
            })
        })();
        let down = crate::down(&t.name);
        results.push(r?);
        down?;
    }
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("scale.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = table(&results);
    std::fs::write(out_dir.join("scale.md"), &md)?;
    print!("{md}");
    Ok(results)
}

pub fn table(results: &[ScaleResult]) -> String {
    let mut s = String::from(
        "| pattern | hosts | all programmed after last write | one more lease (median / max) | agent RSS | agent CPU taking them in | idle agent CPU | kernel routes / neighbours | etcd requests per minute while idle |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in results {
        let reqs = r
            .etcd_per_min
            .iter()
            .map(|(m, v)| format!("{m} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        s += &format!(
            "| {:?} (/{}) | {} | {:.0} ms | {:.1} / {:.1} ms | {:.1} MB | {:.2} s | {:.2} % | {} / {} | {} |\n",
            r.pattern,
            r.subnet_len,
            r.hosts,
            r.all_programmed_ms,
            r.one_more_median_ms,
            r.one_more_max_ms,
            r.agent_rss_mb,
            r.agent_cpu_load_s,
            r.idle_cpu_pct,
            r.kernel_routes,
            r.kernel_neighbours,
            if reqs.is_empty() { "none".into() } else { reqs }
        );
    }
    s
}
