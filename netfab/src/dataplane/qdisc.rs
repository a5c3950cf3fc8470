//! Earliest-departure-time pacing (see `netfab-ebpf` helpers/rate.rs) needs
//! the `fq` qdisc where paced packets leave the host: the underlay's root.
//! It is put there only once some container has an egress limit, and left
//! in place afterwards (fq is a sound default qdisc; swapping qdiscs back
//! and forth would drop what they hold).
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Whether `dev`'s root qdisc is fq.
fn has_fq(dev: &str) -> Result<bool> {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", dev, "root"])
        .output()
        .context("running tc (iproute2)")?;
    if !out.status.success() {
        bail!(
            "tc qdisc show dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).starts_with("qdisc fq "))
}

/// Makes fq the root qdisc of `dev`; true if it was not already.
pub fn ensure_fq(dev: &str) -> Result<bool> {
    if has_fq(dev)? {
        return Ok(false);
    }
    let out = Command::new("tc")
        .args(["qdisc", "replace", "dev", dev, "root", "fq"])
        .output()
        .context("running tc (iproute2)")?;
    if !out.status.success() {
        bail!(
            "tc qdisc replace dev {dev} root fq: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(true)
}
