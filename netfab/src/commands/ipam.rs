//! `netfab ipam check|release`: find and free addresses whose container is
//! gone (namespace deleted without a CNI DEL). Only the leaked entries are
//! touched: no lock is held that would block new containers.
use std::{collections::HashSet, path::PathBuf};

use anyhow::Result;
use clap::Subcommand;
use netfab::{ipam, netlink::Netlink, netns, rundir::endpoints};

use super::runtime;

#[derive(Subcommand)]
pub enum IpamCmd {
    /// List allocations that have no live attachment.
    Check {
        #[arg(long, default_value = "/var/lib/netfab/ipam")]
        data_dir: PathBuf,
    },
    /// Free them: the address, a leftover host veth, the agent's endpoint entry.
    Release {
        #[arg(long, default_value = "/var/lib/netfab/ipam")]
        data_dir: PathBuf,
        /// The agent's run directory (its endpoints.json).
        #[arg(long, default_value = "/run/netfab")]
        run_dir: PathBuf,
    },
}

pub fn run(cmd: IpamCmd, netns_name: Option<String>) -> Result<()> {
    if let Some(ns) = &netns_name {
        netns::enter(ns)?;
    }
    runtime()?.block_on(async move {
        let nl = Netlink::connect()?;
        let links: HashSet<String> = nl.links().await?.into_keys().collect();
        match cmd {
            IpamCmd::Check { data_dir } => {
                let leaks = ipam::find_leaks(&data_dir, &links)?;
                for l in &leaks {
                    println!(
                        "{:<12} {:<15} container {} {}: {}",
                        l.network, l.ip, l.allocation.container_id, l.allocation.ifname, l.reason
                    );
                }
                println!("{} leaked allocation(s)", leaks.len());
            }
            IpamCmd::Release { data_dir, run_dir } => {
                let leaks = ipam::find_leaks(&data_dir, &links)?;
                for l in &leaks {
                    // As CNI DEL: the address is freed last.
                    endpoints::forget(
                        &run_dir.join(netfab::rundir::ENDPOINTS),
                        &l.allocation.host_ifname,
                    )?;
                    nl.delete(&l.allocation.host_ifname).await?;
                    ipam::Ipam::open(&data_dir, &l.network)?.release_ip(l.ip)?;
                    println!("released {} ({}: {})", l.ip, l.network, l.reason);
                }
                println!("{} allocation(s) released", leaks.len());
            }
        }
        Ok(())
    })
}
