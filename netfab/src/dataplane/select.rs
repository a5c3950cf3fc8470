//! Choosing the dataplane: `--dataplane auto|ebpf|vxlan|host-gw`. `auto`
//! proves eBPF works (programs load through the verifier and attach to a
//! probe interface) and otherwise falls back to kernel VXLAN, saying why.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use log::{info, warn};

use super::{
    ebpf::EbpfDataplane, hostgw::HostGwDataplane, kind::DataplaneKind, vxlan::KernelVxlanDataplane,
    ApplyMode, ApplyReport, Dataplane,
};
use crate::state::DesiredState;

pub use super::kind::Choice;

pub enum AnyDataplane {
    Ebpf(Box<EbpfDataplane>),
    Vxlan(KernelVxlanDataplane),
    HostGw(HostGwDataplane),
}

impl Dataplane for AnyDataplane {
    async fn apply(&mut self, state: &DesiredState, mode: ApplyMode) -> Result<ApplyReport> {
        match self {
            AnyDataplane::Ebpf(d) => d.apply(state, mode).await,
            AnyDataplane::Vxlan(d) => d.apply(state, mode).await,
            AnyDataplane::HostGw(d) => d.apply(state, mode).await,
        }
    }
    fn kind(&self) -> DataplaneKind {
        match self {
            AnyDataplane::Ebpf(d) => d.kind(),
            AnyDataplane::Vxlan(d) => d.kind(),
            AnyDataplane::HostGw(d) => d.kind(),
        }
    }
}

/// The chosen dataplane and why it was chosen.
pub struct Selected {
    pub dataplane: AnyDataplane,
    pub reason: String,
}

/// The cheapest question first: may this process use bpf(2) at all?
/// Creates (and closes) a one-entry array map.
fn probe_bpf_syscall() -> Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // bpf_attr for MAP_CREATE starts with map_type, key_size, value_size,
    // max_entries (u32 each); the rest stays zero.
    let mut attr = [0u8; 128];
    for (i, v) in [BPF_MAP_TYPE_ARRAY, 4, 4, 1].iter().enumerate() {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: the attr buffer is valid for the size passed and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("bpf(2) refused: {e} (CAP_BPF or CAP_SYS_ADMIN missing, or eBPF disabled)");
    }
    // SAFETY: closing the fd the kernel just returned.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

async fn ebpf(object: Result<PathBuf>, pin_dir: &Path) -> Result<EbpfDataplane> {
    let lacking = crate::caps::missing_for_ebpf();
    if !lacking.is_empty() {
        anyhow::bail!("missing {}", crate::caps::describe(&lacking));
    }
    probe_bpf_syscall()?;
    let object = object?;
    let mut dp = EbpfDataplane::load(&object, pin_dir)?;
    dp.probe_attach().await?;
    Ok(dp)
}

pub async fn select(
    choice: Choice,
    object: Result<PathBuf>,
    pin_dir: &Path,
    vxlan_device: &str,
) -> Result<Selected> {
    let sel = match choice {
        Choice::Ebpf => Selected {
            dataplane: AnyDataplane::Ebpf(Box::new(
                ebpf(object, pin_dir)
                    .await
                    .context("--dataplane ebpf was asked for")?,
            )),
            reason: "requested (--dataplane ebpf); programs loaded and attached".into(),
        },
        Choice::Auto => match ebpf(object, pin_dir).await {
            Ok(dp) => Selected {
                dataplane: AnyDataplane::Ebpf(Box::new(dp)),
                reason: "auto: eBPF programs load and attach on this host".into(),
            },
            Err(e) => {
                let reason = format!("auto: eBPF unavailable ({e:#}); using kernel VXLAN");
                warn!("{reason}");
                Selected {
                    dataplane: AnyDataplane::Vxlan(KernelVxlanDataplane::new()?),
                    reason,
                }
            }
        },
        Choice::Vxlan => Selected {
            dataplane: AnyDataplane::Vxlan(KernelVxlanDataplane::new()?),
            reason: "requested (--dataplane vxlan)".into(),
        },
        Choice::HostGw => Selected {
            dataplane: AnyDataplane::HostGw(HostGwDataplane::new()?),
            reason: "requested (--dataplane host-gw)".into(),
        },
    };
    if sel.dataplane.kind() == super::kind::DataplaneKind::Ebpf {
        clear_kernel_vxlan().await?;
    } else {
        clear_ebpf(pin_dir, vxlan_device).await?;
    }
    info!("dataplane {}: {}", sel.dataplane.name(), sel.reason);
    Ok(sel)
}

/// The kernel VXLAN fallback's devices (one per VNI) hold the tunnel port
/// the eBPF dataplane's device needs: a host that gained eBPF (CAP_BPF
/// granted, a newer kernel) removes them first.
async fn clear_kernel_vxlan() -> Result<()> {
    let nl = crate::netlink::Netlink::connect()?;
    for name in nl.links().await?.into_keys() {
        if name.starts_with(super::vxlan::DEVICE_PREFIX) {
            warn!("removing the kernel VXLAN dataplane's device {name}");
            nl.delete(&name).await?;
        }
    }
    Ok(())
}

/// What an eBPF agent left here (pinned programs still attached, its
/// collect-metadata VXLAN device holding the tunnel port) would steal
/// packets from another dataplane and keep its VXLAN device from binding:
/// a host that falls back (an upgrade that lost CAP_BPF, a kernel without
/// TCX) removes it first.
async fn clear_ebpf(pin_dir: &Path, vxlan_device: &str) -> Result<()> {
    if pin_dir.exists() {
        warn!(
            "removing the eBPF dataplane's pins in {} (its programs detach with them)",
            pin_dir.display()
        );
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    let nl = crate::netlink::Netlink::connect()?;
    if nl.link(vxlan_device).await?.is_some() {
        warn!("removing the eBPF dataplane's VXLAN device {vxlan_device}");
        nl.delete(vxlan_device).await?;
    }
    Ok(())
}
