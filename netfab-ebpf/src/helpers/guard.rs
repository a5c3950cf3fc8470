//! What containers may not reach through the host stack: any host's tunnel
//! (VXLAN) port and the etcd endpoints. A container that could send VXLAN to
//! a host's underlay address would have it masqueraded to a known host's
//! address and so inject frames into any network; one that could reach etcd
//! could rewrite the fabric. User space fills the guards map; `daddr == 0`
//! entries match every destination.
use aya_ebpf::programs::TcContext;
use netfab_common::{DropReason, GuardKey};

use super::{
    counters::{drop_with, Verdict},
    maps::GUARDS,
    packet::Ipv4Frame,
};

#[inline(always)]
fn reason(v: u32) -> DropReason {
    if v == DropReason::ControlPlane as u32 {
        DropReason::ControlPlane
    } else {
        DropReason::TunnelPort
    }
}

/// Drops a stack-bound packet that hits a guard.
#[inline(always)]
pub fn check(ctx: &TcContext, frame: &Ipv4Frame) -> Result<(), Verdict> {
    let Some((proto, dport)) = frame.l4_dport(ctx) else {
        return Ok(());
    };
    let mut key = GuardKey {
        daddr: frame.daddr(),
        dport,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { GUARDS.get(&key) } {
        return Err(drop_with(reason(*v)));
    }
    key.daddr = 0;
    // SAFETY: as above.
    if let Some(v) = unsafe { GUARDS.get(&key) } {
        return Err(drop_with(reason(*v)));
    }
    Ok(())
}
