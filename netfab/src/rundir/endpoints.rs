//! `endpoints.json`: the containers attached on this host, as the CNI
//! plugin records them for the agent. Written under `endpoints.lock` by
//! read-modify-write, so concurrent CNI calls never lose each other's
//! entries. Versioned like every run-dir file; a bare list (the format
//! before versioning) is still read.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<crate::bandwidth::Bandwidth>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    version: u32,
    endpoints: Vec<LocalEndpoint>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Versioned(EndpointsFile),
    Legacy(Vec<LocalEndpoint>),
}

/// Parses the file's text (either format).
pub fn parse(path: &Path, text: &str) -> Result<Vec<LocalEndpoint>> {
    match serde_json::from_str::<OnDisk>(text)
        .with_context(|| format!("endpoints file {} is not valid", path.display()))?
    {
        OnDisk::Versioned(f) => {
            super::check_version(path, f.version)?;
            Ok(f.endpoints)
        }
        OnDisk::Legacy(eps) => Ok(eps),
    }
}

/// Reads the file; a missing file means no containers yet.
pub fn load(path: &Path) -> Result<Vec<LocalEndpoint>> {
    match std::fs::read_to_string(path) {
        Ok(t) => parse(path, &t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn render(eps: Vec<LocalEndpoint>) -> Result<String> {
    Ok(serde_json::to_string_pretty(&EndpointsFile {
        version: super::FORMAT_VERSION,
        endpoints: eps,
    })?)
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
                bandwidth: a.bandwidth,
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

/// Removes the entries of one host veth (a DEL, GC or release). Only by
/// veth: the address may already belong to another container.
pub fn forget(path: &Path, host_ifname: &str) -> Result<()> {
    update(path, |eps| eps.retain(|e| e.host_ifname != host_ifname))
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
    super::write_atomic(path, &render(eps)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_read_and_a_newer_one_is_refused() {
        let p = Path::new("/run/netfab/endpoints.json");
        let ep = r#"{"ip":"10.244.1.2","network":"default","host_ifname":"nfabc","mac":"02:00:00:00:00:01"}"#;
        let legacy = parse(p, &format!("[{ep}]")).unwrap();
        assert_eq!(legacy.len(), 1);
        let text = render(legacy.clone()).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert_eq!(parse(p, &text).unwrap(), legacy);
        let newer = format!(r#"{{"version":99,"endpoints":[{ep}]}}"#);
        let e = parse(p, &newer).unwrap_err().to_string();
        assert!(e.contains("format version 99"), "{e}");
        assert!(parse(p, "{garbage").is_err());
    }
}
