//! TC attachment through pinned TCX links.
//!
//! Why pinned links: a link pinned in bpffs stays attached when the agent
//! exits or is killed, so traffic keeps flowing while no agent runs. A new
//! agent swaps its freshly loaded program into the existing link with
//! `bpf_link_update`, which is atomic: no packet sees "no program".
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    SchedClassifier, TcAttachType,
};
use log::{debug, info};

/// How an attachment point was brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// An existing pinned link now runs the new program.
    Replaced,
    /// A new link was created and pinned.
    Created,
}

/// bpffs refuses names with a '.', which interface names may contain.
pub fn link_pin_name(ifname: &str) -> String {
    format!("{}_ingress", ifname.replace('.', "~"))
}

pub fn link_pin_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(link_pin_name(ifname))
}

/// Makes `prog` the ingress program of `ifname`, reusing a pinned link if one
/// is there. A pin left by an interface that was deleted and created again
/// refers to a dead link; it is replaced.
pub fn attach_ingress(prog: &mut SchedClassifier, ifname: &str, pin: &Path) -> Result<Attached> {
    if pin.exists() {
        match replace(prog, pin) {
            Ok(()) => return Ok(Attached::Replaced),
            Err(e) => {
                info!("{ifname}: pinned link unusable ({e:#}); attaching anew");
                std::fs::remove_file(pin)
                    .with_context(|| format!("removing stale pin {}", pin.display()))?;
            }
        }
    }
    let id = prog
        .attach(ifname, TcAttachType::Ingress)
        .with_context(|| format!("attaching TC ingress program to {ifname}"))?;
    let link = prog
        .take_link(id)
        .context("taking ownership of the new link")?;
    let fd_link: FdLink = link
        .try_into()
        .context("kernel attached without a TCX link (kernel older than 6.6?)")?;
    fd_link
        .pin(pin)
        .with_context(|| format!("pinning link at {}", pin.display()))?;
    debug!("{ifname}: attached and pinned at {}", pin.display());
    Ok(Attached::Created)
}

fn replace(prog: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let pinned = PinnedLink::from_pin(pin).context("opening pinned link")?;
    let fd_link = FdLink::from(pinned);
    let link = fd_link
        .try_into()
        .context("pinned object is not a TCX link")?;
    prog.attach_to_link(link).context("bpf_link_update")?;
    Ok(())
}

/// Removes a pinned link; the program detaches once no process holds it.
pub fn detach(pin: &Path) -> Result<()> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", pin.display())),
    }
}
