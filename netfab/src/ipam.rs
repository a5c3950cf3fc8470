//! Host-local address management for one host's subnet of a network.
//!
//! Each allocation is a file named after the address, created with O_EXCL:
//! the filesystem guarantees that two concurrent ADDs never get the same
//! address, with no lock held across the cluster or across containers.
//! Files live in a data directory that survives agent and plugin restarts.
//! The record says who holds the address, so leaks can be found
//! (`netfab ipam check`) and freed (`release`, CNI GC).
use std::{
    fs::OpenOptions,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
    /// The container's network namespace path, as the runtime gave it.
    pub netns: String,
    /// The host side of the container's veth.
    pub host_ifname: String,
    /// The CNI network (the configuration's `name`) that made it: GC of one
    /// CNI network must leave another's containers alone even when both
    /// use the same netfab network and data directory. Empty in records
    /// written before it was kept; GC leaves those to `netfab ipam`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_network: String,
    /// The runtime's `bandwidth` limits, kept so a rebuilt endpoints file
    /// keeps them too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<crate::bandwidth::Bandwidth>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("subnet {0} is exhausted: every address is allocated")]
    Exhausted(Ipv4Net),
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    /// `data_dir/<network>`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The allocations of `network` if any were ever made; creates nothing
    /// (DEL and STATUS must not make directories).
    pub fn open_existing(data_dir: &Path, network: &str) -> Option<Self> {
        let dir = data_dir.join(network);
        dir.is_dir().then_some(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gateway is the subnet's first address; containers get the rest
    /// (not the network or broadcast address).
    pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
        crate::addr::gateway_of(subnet)
    }

    /// Returns the address already held by (container, ifname), or takes the
    /// lowest free one.
    pub fn allocate(&self, subnet: Ipv4Net, a: &Allocation) -> Result<Ipv4Addr, IpamError> {
        if let Some((ip, _)) = self.list()?.into_iter().find(|(ip, r)| {
            r.container_id == a.container_id && r.ifname == a.ifname && subnet.contains(ip)
        }) {
            return Ok(ip);
        }
        let gw = Self::gateway(subnet);
        for ip in subnet.hosts().filter(|ip| *ip != gw) {
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let body = serde_json::to_vec(a).map_err(anyhow::Error::from)?;
                    f.write_all(&body)
                        .and_then(|_| f.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(anyhow::Error::from(e)
                        .context(format!("creating {}", path.display()))
                        .into())
                }
            }
        }
        Err(IpamError::Exhausted(subnet))
    }

    /// Every allocation with a readable record. A file still being written
    /// (empty) is skipped rather than misread.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, Allocation)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .with_context(|| format!("listing {}", self.dir.display()))?
        {
            let e = e?;
            let Some(ip) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let Ok(body) = std::fs::read(e.path()) else {
                continue;
            };
            if let Ok(a) = serde_json::from_slice::<Allocation>(&body) {
                out.push((ip, a));
            }
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// Frees one address; true if it was allocated.
    pub fn release_ip(&self, ip: Ipv4Addr) -> Result<bool> {
        match std::fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("releasing {ip}")),
        }
    }

    /// Frees whatever (container, ifname) holds; returns the addresses.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>> {
        let mut freed = Vec::new();
        for (ip, a) in self.list()? {
            if a.container_id == container_id && a.ifname == ifname && self.release_ip(ip)? {
                freed.push(ip);
            }
        }
        Ok(freed)
    }
}

/// Every network's allocations under a data directory.
pub fn all(data_dir: &Path) -> Result<Vec<(String, Ipv4Addr, Allocation)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        if !e.path().is_dir() {
            continue;
        }
        let net = e.file_name().to_string_lossy().into_owned();
        for (ip, a) in Ipam::open(data_dir, &net)?.list()? {
            out.push((net.clone(), ip, a));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(id: &str) -> Allocation {
        Allocation {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/x".into(),
            host_ifname: "nfx".into(),
            cni_network: "netfab".into(),
            bandwidth: None,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netfab-ipam-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocates_distinct_addresses_skipping_the_gateway_and_is_idempotent() {
        let d = tmp("basic");
        let ipam = Ipam::open(&d, "default").unwrap();
        let sn: Ipv4Net = "10.244.1.0/29".parse().unwrap();
        let a = ipam.allocate(sn, &alloc("a")).unwrap();
        let b = ipam.allocate(sn, &alloc("b")).unwrap();
        assert_eq!(
            (a, b),
            ("10.244.1.2".parse().unwrap(), "10.244.1.3".parse().unwrap())
        );
        assert_eq!(
            ipam.allocate(sn, &alloc("a")).unwrap(),
            a,
            "same container, same address"
        );
        assert_eq!(ipam.release("a", "eth0").unwrap(), vec![a]);
        assert!(
            ipam.release("a", "eth0").unwrap().is_empty(),
            "release is idempotent"
        );
        assert_eq!(
            ipam.allocate(sn, &alloc("c")).unwrap(),
            a,
            "freed address is reused"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let d = tmp("full");
        let ipam = Ipam::open(&d, "n").unwrap();
        let sn: Ipv4Net = "10.0.0.0/30".parse().unwrap(); // .1 gateway, .2 only
        ipam.allocate(sn, &alloc("a")).unwrap();
        let e = ipam.allocate(sn, &alloc("b")).unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/30 is exhausted"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let d = tmp("race");
        let sn: Ipv4Net = "10.9.0.0/24".parse().unwrap();
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let d = d.clone();
                std::thread::spawn(move || {
                    Ipam::open(&d, "n")
                        .unwrap()
                        .allocate(sn, &alloc(&format!("c{i}")))
                        .unwrap()
                })
            })
            .collect();
        let ips: std::collections::BTreeSet<_> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(ips.len(), 50);
        let _ = std::fs::remove_dir_all(d);
    }
}

/// An allocation whose container is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub network: String,
    pub ip: Ipv4Addr,
    pub allocation: Allocation,
    pub reason: String,
}

/// Allocations without a live attachment: the container's namespace is
/// gone, or its host veth is. `host_links` are this host's interface names.
pub fn find_leaks(
    data_dir: &Path,
    host_links: &std::collections::HashSet<String>,
) -> Result<Vec<Leak>> {
    Ok(all(data_dir)?
        .into_iter()
        .filter_map(|(network, ip, a)| {
            let reason = if !Path::new(&a.netns).exists() {
                format!("network namespace {} is gone", a.netns)
            } else if !host_links.contains(&a.host_ifname) {
                format!("host veth {} is gone", a.host_ifname)
            } else {
                return None;
            };
            Some(Leak {
                network,
                ip,
                allocation: a,
                reason,
            })
        })
        .collect())
}
