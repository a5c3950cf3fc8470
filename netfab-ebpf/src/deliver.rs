//! The container side: traffic entering the fabric from a container veth.
use aya_ebpf::{
    bindings::TC_ACT_REDIRECT, helpers::bpf_redirect_peer, maps::lpm_trie::Key, programs::TcContext,
};
use netfab_common::{Direction, DropReason, Endpoint, REMOTE_F_DIRECT};

use crate::{
    counters::{count, Verdict},
    direct, drop_with, encap, guard,
    maps::{ENDPOINTS, REMOTE_SUBNETS},
    packet::{parse, Ipv4Frame, Parsed},
    to_stack,
};

pub fn try_from_container(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let frame = match parse(ctx)? {
        Parsed::Ipv4(f) => f,
        // ARP, IPv6 and the rest go to the host stack untouched.
        Parsed::Other => return Ok(to_stack(ctx)),
    };

    // SAFETY: `ctx.skb.skb` is the context pointer the kernel passed in.
    let ingress_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let src = lookup_endpoint(frame.saddr()).ok_or(drop_with(DropReason::SpoofedSource))?;
    if src.ifindex != ingress_ifindex {
        return Err(drop_with(DropReason::SpoofedSource));
    }

    if let Some(dst) = lookup_endpoint(frame.daddr()) {
        if dst.vni != src.vni {
            return Err(drop_with(DropReason::NetworkMismatch));
        }
        return deliver_local(ctx, &frame, &dst, Direction::LocalDelivery);
    }

    if let Some(remote) = REMOTE_SUBNETS.get(Key::new(32, frame.daddr())) {
        if remote.vni != src.vni {
            return Err(drop_with(DropReason::NetworkMismatch));
        }
        let remote = *remote;
        if remote.flags & REMOTE_F_DIRECT != 0 {
            if let Some(v) = direct::to_peer(ctx, &frame, &remote) {
                return v;
            }
        }
        return encap::to_overlay(ctx, &frame, &remote);
    }

    // The host itself or the outside world: the host stack routes it,
    // unless it is aimed at the fabric's own plumbing.
    guard::check(ctx, &frame)?;
    Ok(to_stack(ctx))
}

#[inline(always)]
pub fn lookup_endpoint(ip: u32) -> Option<Endpoint> {
    // SAFETY: the value is copied out at once; user space replaces entries
    // whole, so the worst case is reading the previous or the next version.
    unsafe { ENDPOINTS.get(&ip).copied() }
}

/// Delivers straight into the container's namespace, skipping the host-side
/// veth's transmit path (`bpf_redirect_peer`).
#[inline(always)]
pub fn deliver_local(
    ctx: &TcContext,
    frame: &Ipv4Frame,
    dst: &Endpoint,
    dir: Direction,
) -> Result<Verdict, Verdict> {
    if dir == Direction::LocalDelivery {
        frame.decrement_ttl()?;
    }
    frame.set_macs(&dst.gw_mac, &dst.mac);
    // SAFETY: plain helper call with scalar arguments.
    let rc = unsafe { bpf_redirect_peer(dst.ifindex, 0) };
    if rc != TC_ACT_REDIRECT as i64 {
        return Err(drop_with(DropReason::HelperFailed));
    }
    count(dir, ctx.len());
    Ok(Verdict::Action(TC_ACT_REDIRECT as i32))
}
