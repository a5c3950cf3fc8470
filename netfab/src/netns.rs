//! Entering a named network namespace (`ip netns` style, /run/netns/NAME).
//!
//! The agent enters its namespace itself instead of running under
//! `ip netns exec`, because that command also remounts /sys in a private mount
//! namespace, which would hide the shared bpffs where the pins must live.
use std::{fs::File, os::fd::AsRawFd};

use anyhow::{bail, Context, Result};

pub fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).with_context(|| format!("opening network namespace {path}"))?;
    // SAFETY: setns takes a valid open fd and a namespace type; it changes
    // only the calling thread, which is why callers do this before starting
    // any other thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "entering network namespace {name}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
