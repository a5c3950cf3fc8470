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
