//! The control plane at scale: N simulated hosts' leases written straight
//! into the lab's real etcd (they need no namespaces), one real agent
//! measured. Figures, not assertions: how long until all N are in the
//! agent's eBPF map, how long one more lease takes with N present, what
//! the agent costs in memory and CPU, and how many requests it makes of
//! etcd while idle (etcd's own /metrics).
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

/// The network the simulated hosts lease in: room for 16,384 /24s.
pub(crate) const NET: &str = "scale";
pub(crate) const CIDR: &str = "10.128.0.0/10";
/// etcd's default limit of operations per transaction.
const TXN_OPS: usize = 128;
/// One-more-lease samples per size.
const SINGLES: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    pub hosts: u32,
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
}

pub(crate) fn subnet(i: u32) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    Ipv4Net::new(Ipv4Addr::from(base + (i << 8)), 24).expect("a /24")
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
        agent_version: env!("CARGO_PKG_VERSION").into(),
    })
    .expect("a lease encodes")
}

/// Writes the leases of simulated hosts `ids` in transactions of TXN_OPS.
pub(crate) async fn write_leases(client: &mut Client, keys: &Keys, ids: &[u32]) -> Result<()> {
    for chunk in ids.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| TxnOp::put(keys.lease(NET, &subnet(i)), lease_value(i), None))
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
    maps.remote_subnet(subnet(i))
        .ok()
        .flatten()
        .is_some_and(|r| r.underlay_ip == u32::from(underlay(i)))
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
fn measure(t: &Topology, hosts: u32, idle: Duration) -> Result<ScaleResult> {
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
        .filter(|&i| subnet(i) != own)
        .take(hosts as usize + SINGLES)
        .collect();
    let (bulk, singles) = ids.split_at(hosts as usize);
    let maps = BpfMaps::open(&t.pin_dir(1))?;

    let cpu0 = cpu_secs(pid)?;
    say(format!("scale {hosts}: writing the leases"));
    rt.block_on(write_leases(&mut client, &keys, bulk))?;
    let written = Instant::now();
    let last = *bulk.last().context("no hosts")?;
    wait(
        "the last lease in the map",
        Duration::from_secs(120),
        || programmed(&maps, last).then_some(()),
    )?;
    wait("every lease in the map", Duration::from_secs(120), || {
        bulk.iter().all(|&i| programmed(&maps, i)).then_some(())
    })?;
    let all_programmed_ms = written.elapsed().as_secs_f64() * 1e3;
    let agent_cpu_load_s = cpu_secs(pid)? - cpu0;
    say(format!(
        "scale {hosts}: all programmed {all_programmed_ms:.0} ms after the last write"
    ));

    let mut one_more = Vec::new();
    for &i in singles {
        // Let the previous one settle: each sample is one lone event.
        std::thread::sleep(Duration::from_millis(100));
        rt.block_on(write_leases(&mut client, &keys, &[i]))?;
        let put = Instant::now();
        wait("one more lease in the map", Duration::from_secs(30), || {
            programmed(&maps, i).then_some(())
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
        hosts,
        all_programmed_ms,
        one_more_median_ms,
        one_more_max_ms,
        one_more_samples_ms: one_more,
        agent_rss_mb: rss_mb(pid)?,
        agent_cpu_load_s,
        idle_cpu_pct: (c1 - c0) / secs * 100.0,
        etcd_per_min,
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
    idle: Duration,
    bpf_object: Option<&Path>,
    out_dir: &Path,
) -> Result<Vec<ScaleResult>> {
    let mut results = Vec::new();
    for &n in sizes {
        let mut t = Topology::new("scale", 1, 1)?;
        t.etcd_tls = false;
        // The agent's own default repair interval, not the lab's quick one.
        t.resync_ms = 60_000;
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
                    "24",
                    "--vni",
                    "2",
                ],
            )?;
            let ns = t.etcd_ns();
            std::thread::scope(|s| {
                s.spawn(|| {
                    netfab::netns::enter(&ns)?;
                    measure(&t, n, idle)
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
        "| hosts | all programmed after last write | one more lease (median / max) | agent RSS | agent CPU taking them in | idle agent CPU | etcd requests per minute while idle |\n\
         |---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in results {
        let reqs = r
            .etcd_per_min
            .iter()
            .map(|(m, v)| format!("{m} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        s += &format!(
            "| {} | {:.0} ms | {:.1} / {:.1} ms | {:.1} MB | {:.2} s | {:.2} % | {} |\n",
            r.hosts,
            r.all_programmed_ms,
            r.one_more_median_ms,
            r.one_more_max_ms,
            r.agent_rss_mb,
            r.agent_cpu_load_s,
            r.idle_cpu_pct,
            if reqs.is_empty() { "none".into() } else { reqs }
        );
    }
    s
}
