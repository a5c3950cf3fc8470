//! `netfab network create|list|show|delete`: cluster networks in etcd.
use anyhow::{bail, Result};
use clap::Subcommand;
use ipnet::Ipv4Net;
use netfab::{
    netns,
    network::{DataplanePref, NetworkConfig},
    state::DEFAULT_VXLAN_PORT,
    store::etcd::EtcdStore,
};

use super::{runtime, EtcdArgs};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a network (validated against the existing ones first).
    Create {
        name: String,
        #[arg(long)]
        cidr: Ipv4Net,
        /// Prefix length of each host's subnet.
        #[arg(long, default_value_t = 24)]
        subnet_len: u8,
        #[arg(long)]
        vni: u32,
        #[arg(long, default_value_t = DEFAULT_VXLAN_PORT)]
        port: u16,
        #[arg(long, value_enum, default_value_t = Pref::Auto)]
        dataplane: Pref,
        /// Route without encapsulation between hosts on one L2 segment.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        direct_routing: bool,
    },
    List,
    Show {
        name: String,
    },
    /// Delete a network in which no host holds a lease.
    Delete {
        name: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Pref {
    Auto,
    Ebpf,
    Vxlan,
    HostGw,
}

impl From<Pref> for DataplanePref {
    fn from(p: Pref) -> Self {
        match p {
            Pref::Auto => DataplanePref::Auto,
            Pref::Ebpf => DataplanePref::Ebpf,
            Pref::Vxlan => DataplanePref::Vxlan,
            Pref::HostGw => DataplanePref::HostGw,
        }
    }
}

pub fn run(cmd: NetworkCmd, etcd: EtcdArgs, netns_name: Option<String>) -> Result<()> {
    if let Some(ns) = &netns_name {
        netns::enter(ns)?;
    }
    runtime()?.block_on(async move {
        let mut store = EtcdStore::connect(&etcd.config()).await?;
        match cmd {
            NetworkCmd::Create {
                name,
                cidr,
                subnet_len,
                vni,
                port,
                dataplane,
                direct_routing,
            } => {
                let cfg = NetworkConfig {
                    name,
                    cidr,
                    subnet_len,
                    vni,
                    port,
                    dataplane: dataplane.into(),
                    direct_routing,
                    min_agent_version: None,
                };
                store.create_network(&cfg).await?;
                println!(
                    "created network {} ({}, /{} per host, VNI {})",
                    cfg.name, cfg.cidr, cfg.subnet_len, cfg.vni
                );
            }
            NetworkCmd::List => {
                let (snap, _) = store.snapshot(None).await?;
                println!(
                    "{:<16} {:<18} {:>6} {:>8} {:>6} {:>7} {:>7}",
                    "NAME", "CIDR", "SUBNET", "VNI", "PORT", "PLANE", "LEASES"
                );
                for n in snap.networks.values() {
                    let leases = snap.leases.get(&n.name).map_or(0, |l| l.len());
                    println!(
                        "{:<16} {:<18} {:>6} {:>8} {:>6} {:>7} {:>7}",
                        n.name,
                        n.cidr.to_string(),
                        format!("/{}", n.subnet_len),
                        n.vni,
                        n.port,
                        n.dataplane.to_string(),
                        leases
                    );
                }
            }
            NetworkCmd::Show { name } => {
                let (snap, _) = store.snapshot(None).await?;
                let Some(n) = snap.networks.get(&name) else {
                    bail!("no network named {name}")
                };
                println!("{}", serde_json::to_string_pretty(n)?);
                println!("leases:");
                for (sn, l) in snap.leases.get(&name).into_iter().flatten() {
                    println!(
                        "  {sn:<18} {:<16} {:<15} {} {}",
                        l.node, l.underlay_ip, l.vtep_mac, l.dataplane
                    );
                }
            }
            NetworkCmd::Delete { name } => {
                store.delete_network(&name).await?;
                println!("deleted network {name}");
            }
        }
        Ok(())
    })
}
