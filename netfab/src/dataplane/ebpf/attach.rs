//! TC attachment through pinned TCX links.
//!
//! Why pinned links: a link pinned in bpffs stays attached when the agent
//! exits or is killed, so traffic keeps flowing while no agent runs. A new
//! agent swaps its freshly loaded program into the existing link with
//! `bpf_link_update`, which is atomic: no packet sees "no program".
//!
//! Two rules keep this safe over days of operation:
//! - every link fd the agent opens is closed again before `attach_ingress`
//!   returns (aya keeps each link handed to `attach_to_link` in the program's
//!   link table; it is taken out and closed at once, the pin keeps the link);
//! - a pin is removed only when the kernel says the link is gone (`ENOLINK`:
//!   its interface was deleted) or is not a TCX link. Any other failure
//!   (`EMFILE`, `ENOMEM`, ...) is transient: the pin stays, the error goes up.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
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
pub fn link_pin_name(ifname: &str, hook: TcAttachType) -> String {
    let side = match hook {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    };
    format!("{}_{side}", ifname.replace('.', "~"))
}

pub fn link_pin_path(dir: &Path, ifname: &str, hook: TcAttachType) -> PathBuf {
    dir.join(link_pin_name(ifname, hook))
}

/// What reusing a pinned link came to.
enum Reuse {
    Done,
    /// The kernel says the pin can never work again.
    Stale(String),
}

/// The errno somewhere in an error's chain, if any.
fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .and_then(|io| io.raw_os_error())
}

/// Makes `prog` the `hook` (ingress or egress) program of `ifname`, reusing a
/// pinned link if one is there. A pin left by an interface that was deleted
/// and created again refers to a dead link; it is replaced.
pub fn attach(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: TcAttachType,
    pin: &Path,
) -> Result<Attached> {
    match reuse(prog, pin)? {
        Some(Reuse::Done) => return Ok(Attached::Replaced),
        Some(Reuse::Stale(why)) => {
            info!("{ifname}: pinned link is dead ({why}); attaching anew");
            std::fs::remove_file(pin)
                .with_context(|| format!("removing dead pin {}", pin.display()))?;
        }
        None => {}
    }
    let id = prog
        .attach(ifname, hook)
        .with_context(|| format!("attaching TC {hook:?} program to {ifname}"))?;
    let link = prog
        .take_link(id)
        .context("taking ownership of the new link")?;
    let fd_link: FdLink = link
        .try_into()
        .context("kernel attached without a TCX link (kernel older than 6.6?)")?;
    // Pinning consumes the fd link; the returned PinnedLink closes its fd
    // when dropped at the end of this function, the pin keeps the link.
    fd_link
        .pin(pin)
        .with_context(|| format!("pinning link at {}", pin.display()))?;
    debug!("{ifname}: attached and pinned at {}", pin.display());
    Ok(Attached::Created)
}

/// Swaps `prog` into the pinned link. `Ok(None)`: no pin. `Err`: a transient
/// failure, the pin is left alone.
fn reuse(prog: &mut SchedClassifier, pin: &Path) -> Result<Option<Reuse>> {
    let pinned = match PinnedLink::from_pin(pin) {
        Ok(p) => p,
        Err(e) => {
            let e = anyhow::Error::from(e);
            return match errno(&e) {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(e.context(format!("opening pinned link {}", pin.display()))),
            };
        }
    };
    let fd_link = FdLink::from(pinned);
    let link: SchedClassifierLink = match fd_link.try_into() {
        Ok(l) => l,
        Err(e) => {
            let e = anyhow::Error::from(e);
            return match errno(&e) {
                // Not a link at all (BPF_LINK_GET_INFO refuses the fd), or a
                // link of another type: the pin can never serve here.
                None | Some(libc::EINVAL) => Ok(Some(Reuse::Stale(format!("{e:#}")))),
                Some(_) => Err(e.context(format!("inspecting pinned link {}", pin.display()))),
            };
        }
    };
    match prog.attach_to_link(link) {
        Ok(id) => {
            // aya stored the link (and its fd) in the program; close it now,
            // or every apply leaks one fd per attachment.
            let owned = prog.take_link(id).context("releasing the updated link")?;
            drop(owned);
            Ok(Some(Reuse::Done))
        }
        Err(e) => {
            let e = anyhow::Error::from(e);
            match errno(&e) {
                Some(libc::ENOLINK) => Ok(Some(Reuse::Stale(format!("{e:#}")))),
                _ => Err(e.context("bpf_link_update")),
            }
        }
    }
}

/// Removes a pinned link; the program detaches once no process holds it.
pub fn detach(pin: &Path) -> Result<()> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", pin.display())),
    }
}
