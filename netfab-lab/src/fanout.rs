//! Watch fan-out at the etcd members, with and without an `etcd grpc-proxy`
//! in front of them. K real agents (one per lab host) watch the prefix;
//! simulated hosts' leases are written one at a time, as hosts join; etcd's
//! own /metrics, summed over the members, count what the members had to
//! send for them. Both modes run in one bench run, one after the other.
use std::{collections::HashSet, path::Path, time::Duration, time::Instant};

use anyhow::{Context, Result};
use etcd_client::Client;
use netfab::{
    dataplane::ebpf::maps::BpfMaps,
    store::{Keys, DEFAULT_PREFIX},
};
use serde::Serialize;

use crate::{
    metric_sum, say,
    scale::{self, programmed, NET},
    topology::Topology,
};

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    /// `direct` (agents given every member) or `grpc-proxy`.
    pub mode: String,
    pub agents: u32,
    pub etcd_members: u32,
    /// Leases written, one transaction each.
    pub leases: u32,
    /// Watch streams and watchers open on the members once all agents
    /// watch (etcd_debugging_mvcc_watch_stream_total / watcher_total).
    pub member_watch_streams: f64,
    pub member_watchers: f64,
    /// Events the members sent to watchers, per lease written
    /// (etcd_debugging_mvcc_events_total).
    pub member_events_per_lease: f64,
    /// Bytes the members sent to gRPC clients, per lease written
    /// (etcd_network_client_grpc_sent_bytes_total; keep-alive replies
    /// included).
    pub member_bytes_per_lease: f64,
    /// From the last write until every agent has every lease in its map.
    pub all_programmed_ms: f64,
    /// The proxy's resident memory, in grpc-proxy mode.
    pub proxy_rss_mb: Option<f64>,
}

/// The members' counters and gauges that watch fan-out moves, summed.
struct MemberCounts {
    events: f64,
    bytes: f64,
    streams: f64,
    watchers: f64,
}

fn member_counts(t: &Topology) -> Result<MemberCounts> {
    let mut c = MemberCounts {
        events: 0.0,
        bytes: 0.0,
        streams: 0.0,
        watchers: 0.0,
    };
    for m in t.etcd_members() {
        let text = crate::etcd_metrics(t, m)?;
        let get = |name: &str| {
            metric_sum(&text, name).with_context(|| format!("member {m} reports no {name}"))
        };
        c.events += get("etcd_debugging_mvcc_events_total")?;
        c.bytes += get("etcd_network_client_grpc_sent_bytes_total")?;
        c.streams += get("etcd_debugging_mvcc_watch_stream_total")?;
        c.watchers += get("etcd_debugging_mvcc_watcher_total")?;
    }
    Ok(c)
}

/// Every agent has a lease in the bench's network and the others' subnets
/// in both networks: the lab is quiet before counting starts.
fn settled(t: &Topology) -> bool {
    t.all_hosts().all(|h| {
        crate::read_leases(t, h).is_some_and(|l| l.subnets.contains_key(NET))
            && crate::read_status(t, h).is_some_and(|s| s.remotes == 2 * (t.hosts as usize - 1))
    })
}

fn measure(t: &Topology, leases: u32) -> Result<FanoutResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let etcd = format!("http://{}:2379", crate::topology::ETCD_IP);
    let mut client = rt
        .block_on(Client::connect([etcd], None))
        .context("connecting to the lab's etcd")?;
    let keys = Keys::new(DEFAULT_PREFIX);
    scale::wait("every agent settled", Duration::from_secs(60), || {
        settled(t).then_some(())
    })?;
    let own: HashSet<_> = t
        .all_hosts()
        .filter_map(|h| crate::read_leases(t, h)?.subnets.get(NET).copied())
        .collect();
    let ids: Vec<u32> = (0..)
        .filter(|&i| !own.contains(&scale::subnet(i)))
        .take(leases as usize)
        .collect();
    let maps = t
        .all_hosts()
        .map(|h| BpfMaps::open(&t.pin_dir(h)))
        .collect::<Result<Vec<_>, _>>()?;

    let before = member_counts(t)?;
    say(format!(
        "fanout ({}): writing {leases} leases one by one",
        mode(t)
    ));
    for &i in &ids {
        rt.block_on(scale::write_leases(&mut client, &keys, &[i]))?;
    }
    let written = Instant::now();
    scale::wait(
        "every lease in every agent's map",
        Duration::from_secs(60),
        || {
            maps.iter()
                .all(|m| ids.iter().all(|&i| programmed(m, i)))
                .then_some(())
        },
    )?;
    let all_programmed_ms = written.elapsed().as_secs_f64() * 1e3;
    let after = member_counts(t)?;
    let proxy_rss_mb = match t.etcd_proxy {
        true => Some(scale::rss_mb(
            crate::pid_of(&t.name, crate::procs::ETCD_PROXY).context("the proxy is not running")?,
        )?),
        false => None,
    };
    let per_lease = |a: f64, b: f64| (b - a) / f64::from(leases);
    Ok(FanoutResult {
        mode: mode(t).into(),
        agents: t.hosts,
        etcd_members: t.etcd_members,
        leases,
        member_watch_streams: after.streams,
        member_watchers: after.watchers,
        member_events_per_lease: per_lease(before.events, after.events),
        member_bytes_per_lease: per_lease(before.bytes, after.bytes),
        all_programmed_ms,
        proxy_rss_mb,
    })
}

fn mode(t: &Topology) -> &'static str {
    if t.etcd_proxy {
        "grpc-proxy"
    } else {
        "direct"
    }
}

/// Both modes, each in a lab of `agents` hosts built and removed.
pub fn run(
    agents: u32,
    members: u32,
    leases: u32,
    bpf_object: Option<&Path>,
    out_dir: &Path,
) -> Result<Vec<FanoutResult>> {
    let mut results = Vec::new();
    for proxy in [false, true] {
        let mut t = Topology::new("fanout", agents, 1)?;
        t.etcd_tls = false;
        t.etcd_members = members;
        t.etcd_proxy = proxy;
        t.resync_ms = 60_000;
        let _ = crate::down(&t.name);
        let r = (|| -> Result<FanoutResult> {
            let t = crate::up(&t, bpf_object)?;
            crate::netfab_cli(
                &t,
                &[
                    "network",
                    "create",
                    NET,
                    "--cidr",
                    scale::CIDR,
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
                    measure(&t, leases)
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
        out_dir.join("fanout.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = table(&results);
    std::fs::write(out_dir.join("fanout.md"), &md)?;
    print!("{md}");
    Ok(results)
}

pub fn table(results: &[FanoutResult]) -> String {
    let mut s = String::from(
        "| agents given | agents | etcd members | member watch streams | member watchers | events sent by the members per lease | bytes sent by the members per lease | all agents programmed after the last write | proxy RSS |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        s += &format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} ms | {} |\n",
            if r.mode == "direct" {
                "the members"
            } else {
                "the grpc-proxy"
            },
            r.agents,
            r.etcd_members,
            r.member_watch_streams,
            r.member_watchers,
            r.member_events_per_lease,
            r.member_bytes_per_lease,
            r.all_programmed_ms,
            r.proxy_rss_mb.map_or("-".into(), |m| format!("{m:.1} MB")),
        );
    }
    s
}
