//! Finding the compiled eBPF object.
//!
//! Order: an explicit `--bpf-object`/`NETFAB_BPF_OBJECT`, then `netfab.bpf.o`
//! next to the running binary (where `cargo xtask build-ebpf` and packaging put
//! it), then the system location.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub const OBJECT_NAME: &str = "netfab.bpf.o";
const SYSTEM_PATH: &str = "/usr/lib/netfab/netfab.bpf.o";

pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("eBPF object {} does not exist", p.display());
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Test binaries live one level deeper (target/debug/deps).
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join(OBJECT_NAME);
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p);
        }
    }
    let sys = PathBuf::from(SYSTEM_PATH);
    if sys.is_file() {
        return Ok(sys);
    }
    tried.push(sys);
    bail!(
        "no eBPF object found (looked at {}); build it with `cargo xtask build-ebpf` \
         or pass --bpf-object",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
