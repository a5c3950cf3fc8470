//! The overlay side: VXLAN by tunnel key towards remote hosts, and the checks
//! on frames that arrive from them.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::bpf_tunnel_key,
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netfab_common::{Direction, DropReason, RemoteSubnet};

use crate::{
    counters::{count, Verdict},
    deliver::{deliver_local, lookup_endpoint},
    drop_with,
    maps::{HOST_CONFIG, KNOWN_HOSTS, NETWORKS, REMOTE_SUBNETS},
    packet::{parse, Ipv4Frame, Parsed},
    to_stack,
};

/// Outer UDP checksum off: the inner packet carries its own, and computing it
/// costs a pass over the payload per packet.
const BPF_F_ZERO_CSUM_TX: u64 = 1 << 1;
const TUNNEL_TTL: u8 = 64;

/// Sets the tunnel key and hands the frame to the collect-metadata VXLAN
/// device, which adds the outer headers.
#[inline(always)]
pub fn to_overlay(
    ctx: &TcContext,
    frame: &Ipv4Frame,
    remote: &RemoteSubnet,
) -> Result<Verdict, Verdict> {
    let Some(cfg) = HOST_CONFIG.get(0) else {
        return Ok(to_stack(ctx));
    };
    if cfg.vxlan_ifindex == 0 {
        // The VXLAN device is not set up (yet): let the stack decide.
        return Ok(to_stack(ctx));
    }
    frame.decrement_ttl()?;
    frame.set_macs(&cfg.vxlan_mac, &remote.vtep_mac);

    // SAFETY: bpf_tunnel_key is plain old data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    key.tunnel_id = remote.vni;
    key.__bindgen_anon_1.remote_ipv4 = remote.underlay_ip;
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: the key lives on the stack for the duration of the call and the
    // size passed is its size.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            size_of::<bpf_tunnel_key>() as u32,
            BPF_F_ZERO_CSUM_TX,
        )
    };
    if rc != 0 {
        return Err(drop_with(DropReason::HelperFailed));
    }
    count(Direction::ToOverlay, ctx.len());
    // SAFETY: plain helper call with scalar arguments.
    Ok(Verdict::Action(
        unsafe { bpf_redirect(cfg.vxlan_ifindex, 0) } as i32,
    ))
}

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
