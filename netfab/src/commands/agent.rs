//! `netfab agent`, `netfab cleanup`, `netfab stats`.
use std::{path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use log::info;
use netfab::{
    agent::{self, AgentConfig},
    control::{ControlConfig, Controller},
    dataplane::{
        ebpf::{self, object, EbpfDataplane},
        Dataplane,
    },
    netlink::Netlink,
    netns, stats,
};

use super::{node_name, pin_dir, runtime, shutdown_signal, EtcdArgs, HostArgs};

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// etcd-less mode: the whole desired state from this JSON file.
    #[arg(long, conflicts_with = "endpoints_file")]
    state_file: Option<PathBuf>,
    /// This host's name in the cluster [default: netns name, else hostname].
    #[arg(long)]
    node: Option<String>,
    /// The interface whose IPv4 address is this host's tunnel endpoint.
    #[arg(long, default_value = "eth0")]
    underlay_interface: String,
    /// Local containers (JSON), in etcd mode.
    #[arg(long, default_value = "/run/netfab/endpoints.json")]
    endpoints_file: PathBuf,
    /// Where to write the subnets this host leased (JSON), in etcd mode.
    #[arg(long)]
    lease_file: Option<PathBuf>,
    /// TTL of this host's leases in etcd, seconds.
    #[arg(long, default_value_t = 30)]
    lease_ttl: i64,
    /// The compiled eBPF object [default: netfab.bpf.o next to this binary].
    #[arg(long, env = "NETFAB_BPF_OBJECT")]
    bpf_object: Option<PathBuf>,
    /// Seconds between full resyncs that repair drift.
    #[arg(long, default_value_t = 10)]
    resync_secs: u64,
}

pub fn run(a: AgentArgs) -> Result<()> {
    // Before any thread exists: setns changes only the calling thread.
    if let Some(ns) = &a.host.netns {
        netns::enter(ns)?;
    }
    let node = node_name(a.node.as_deref(), a.host.netns.as_deref());
    let pins = pin_dir(&a.host, &node);
    let object = object::locate(a.bpf_object.as_deref())?;
    let resync = Duration::from_secs(a.resync_secs.max(1));
    if a.lease_ttl < 2 {
        bail!("--lease-ttl must be at least 2 seconds");
    }
    runtime()?.block_on(async move {
        if let Some(state_file) = a.state_file {
            let cfg = AgentConfig {
                state_file,
                pin_dir: pins,
                bpf_object: object,
                resync,
                poll: Duration::from_millis(200),
            };
            return agent::run(cfg, shutdown_signal()).await;
        }
        let underlay_ip = underlay_ip(&a.underlay_interface).await?;
        let mut dp = EbpfDataplane::load(&object, &pins)?;
        info!(
            "node {node}: dataplane {} loaded, underlay {underlay_ip}",
            dp.name()
        );
        let cfg = ControlConfig {
            etcd: a.etcd.config(),
            node,
            underlay_interface: a.underlay_interface,
            underlay_ip,
            lease_ttl: a.lease_ttl,
            resync,
            endpoints_file: a.endpoints_file,
            lease_file: a.lease_file,
        };
        Controller::new(cfg, &mut dp).run(shutdown_signal()).await
    })
}

async fn underlay_ip(iface: &str) -> Result<std::net::Ipv4Addr> {
    let nl = Netlink::connect()?;
    let link = nl
        .link(iface)
        .await?
        .ok_or_else(|| anyhow!("underlay interface {iface} not found"))?;
    nl.ipv4_addrs(link.facts.ifindex)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("underlay interface {iface} has no IPv4 address"))
}

pub fn cleanup(h: HostArgs) -> Result<()> {
    if let Some(ns) = &h.netns {
        netns::enter(ns)?;
    }
    let node = node_name(None, h.netns.as_deref());
    let dir = pin_dir(&h, &node);
    runtime()?.block_on(ebpf::cleanup(&dir, &h.vxlan_device))
}

pub fn show_stats(h: HostArgs, json: bool) -> Result<()> {
    let node = node_name(None, h.netns.as_deref());
    let c = stats::read(&pin_dir(&h, &node))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", stats::render(&c));
    }
    Ok(())
}
