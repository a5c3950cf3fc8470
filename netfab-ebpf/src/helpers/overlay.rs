//! The checks every VXLAN frame passes, wherever it is taken apart (the
//! VXLAN device's `from_overlay`, or `native_decap` on the underlay): one
//! definition, so both paths accept and refuse exactly the same frames.
use aya_ebpf::maps::lpm_trie::Key;
use netfab_common::{DropReason, Endpoint};

use super::{
    counters::{drop_with, Verdict},
    endpoint::lookup_endpoint,
    maps::{KNOWN_HOSTS, NETWORKS, REMOTE_SUBNETS},
};

/// A VNI this host serves, from a host it knows (`sender` in host order).
#[inline(always)]
pub fn judge_sender(vni: u32, sender: u32) -> Result<(), Verdict> {
    if NETWORKS.get_ptr(&vni).is_none() {
        return Err(drop_with(DropReason::UnknownVni));
    }
    if KNOWN_HOSTS.get_ptr(&sender).is_none() {
        return Err(drop_with(DropReason::UnknownSource));
    }
    Ok(())
}

/// The inner packet: its source lies in a subnet this very sender holds in
/// this VNI (a known host cannot speak for another host or network), and
/// its destination is a local endpoint in the same VNI. Addresses as read
/// from the packet.
#[inline(always)]
pub fn judge_inner(
    vni: u32,
    sender: u32,
    inner_saddr: u32,
    inner_daddr: u32,
) -> Result<Endpoint, Verdict> {
    match REMOTE_SUBNETS.get(Key::new(32, inner_saddr)) {
        Some(o) if o.underlay_ip == sender && o.vni == vni => {}
        _ => return Err(drop_with(DropReason::ForeignInnerSource)),
    }
    let dst = lookup_endpoint(inner_daddr).ok_or(drop_with(DropReason::NoEndpoint))?;
    if dst.vni != vni {
        return Err(drop_with(DropReason::NetworkMismatch));
    }
    Ok(dst)
}
