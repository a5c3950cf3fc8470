//! Containers attached on this host, as the lab (and later the CNI plugin)
//! records them for the agent in etcd mode: a local JSON file.
use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::addr::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalEndpoint {
    pub ip: Ipv4Addr,
    pub network: String,
    pub host_ifname: String,
    pub mac: MacAddr,
}

/// Reads the file; a missing file means no containers yet.
pub fn load(path: &Path) -> Result<Vec<LocalEndpoint>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("endpoints file {} is not valid", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes atomically (temp file + rename) so readers never see half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

/// The endpoints as the durable records say: every IPAM allocation whose
/// host veth exists, with the container MAC the host knows for it. Pure.
pub fn rebuild(
    allocations: &[(String, std::net::Ipv4Addr, crate::ipam::Allocation)],
    macs: &std::collections::BTreeMap<std::net::Ipv4Addr, MacAddr>,
) -> Vec<LocalEndpoint> {
    allocations
        .iter()
        .filter_map(|(net, ip, a)| {
            Some(LocalEndpoint {
                ip: *ip,
                network: net.clone(),
                host_ifname: a.host_ifname.clone(),
                mac: *macs.get(ip)?,
            })
        })
        .collect()
}

/// Replaces the file's contents under the lock (a rebuild after corruption).
pub fn replace(path: &Path, eps: Vec<LocalEndpoint>) -> Result<()> {
    locked(path, |_| Ok(eps))
}

/// Read-modify-write of the endpoints file under an exclusive lock, so
/// concurrent CNI calls never lose each other's entries.
pub fn update(path: &Path, f: impl FnOnce(&mut Vec<LocalEndpoint>)) -> Result<()> {
    locked(path, |p| {
        let mut eps = load(p)?;
        f(&mut eps);
        Ok(eps)
    })
}

fn locked(path: &Path, f: impl FnOnce(&Path) -> Result<Vec<LocalEndpoint>>) -> Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // SAFETY: flock on an fd we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the endpoints file");
    }
    let eps = f(path)?;
    write_atomic(path, &serde_json::to_string_pretty(&eps)?)
}
