//! `from_overlay` (TC ingress of the collect-metadata VXLAN device): frames
//! from remote hosts, accepted only from known hosts on served VNIs with an
//! inner source inside a subnet that very host holds in that VNI.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::bpf_tunnel_key, helpers::bpf_skb_get_tunnel_key, maps::lpm_trie::Key,
    programs::TcContext,
};
use netfab_common::{Direction, DropReason};

use crate::helpers::{
    counters::{drop_with, Verdict},
    endpoint::{deliver_local, lookup_endpoint},
    maps::{KNOWN_HOSTS, NETWORKS, REMOTE_SUBNETS},
    packet::{parse, Parsed},
};

pub fn try_from_overlay(ctx: &TcContext) -> Result<Verdict, Verdict> {
    // SAFETY: as in `to_overlay`.
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    // SAFETY: the key is on the stack and the size passed is its size.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if rc != 0 {
        return Err(drop_with(DropReason::NoTunnelKey));
    }
    let vni = key.tunnel_id;
    // SAFETY: the IPv4 member is the one the kernel fills for IPv4 tunnels.
    let remote_ip = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    if NETWORKS.get_ptr(&vni).is_none() {
        return Err(drop_with(DropReason::UnknownVni));
    }
    if KNOWN_HOSTS.get_ptr(&remote_ip).is_none() {
        return Err(drop_with(DropReason::UnknownSource));
    }

    let frame = match parse(ctx)? {
        Parsed::Ipv4(f) => f,
        Parsed::Other => return Err(drop_with(DropReason::NotIpv4)),
    };
    // The inner source must lie in a subnet this very host holds in this
    // VNI: a known host cannot speak for another host or another network.
    match REMOTE_SUBNETS.get(Key::new(32, frame.saddr())) {
        Some(o) if o.underlay_ip == remote_ip && o.vni == vni => {}
        _ => return Err(drop_with(DropReason::ForeignInnerSource)),
    }
    let dst = lookup_endpoint(frame.daddr()).ok_or(drop_with(DropReason::NoEndpoint))?;
    if dst.vni != vni {
        return Err(drop_with(DropReason::NetworkMismatch));
    }
    deliver_local(ctx, &frame, &dst, Direction::FromOverlay)
}
