//! `from_container` (TC ingress of each container's host-side veth): traffic
//! entering the fabric from a container.
use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use netfab_common::{Direction, DropReason, HOST_ENDPOINT, REMOTE_F_DIRECT};

use crate::helpers::{
    counters::{drop_with, to_stack, Verdict},
    direct, encap,
    endpoint::{deliver_local, lookup_endpoint},
    guard,
    maps::REMOTE_SUBNETS,
    packet::{is_ipv6, parse, Parsed},
    rate,
};

pub fn try_from_container(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let frame = match parse(ctx)? {
        Parsed::Ipv4(f) => f,
        // IPv6 is not carried yet, and the stack would take it unchecked (no
        // source check, no guard: any listener on `::`, over the veth's
        // link-local address). A container needs none of it to come up.
        Parsed::Other if is_ipv6(ctx) => return Err(drop_with(DropReason::NotIpv4)),
        // ARP and the rest go to the host stack untouched.
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
        // Staying on this host: the sender's egress limit polices it.
        if dst.ifindex == HOST_ENDPOINT {
            // This host's gateway address: the stack, behind the guards.
            guard::check(ctx, &frame)?;
            rate::police_egress(ctx, frame.saddr())?;
            return Ok(to_stack(ctx));
        }
        rate::police_egress(ctx, frame.saddr())?;
        return deliver_local(ctx, &frame, &dst, Direction::LocalDelivery);
    }

    if let Some(remote) = REMOTE_SUBNETS.get(Key::new(32, frame.daddr())) {
        if remote.vni != src.vni {
            return Err(drop_with(DropReason::NetworkMismatch));
        }
        // Leaving the host: the fq qdisc on the underlay enforces the pace.
        rate::pace_egress(ctx, frame.saddr())?;
        let remote = *remote;
        if remote.flags & REMOTE_F_DIRECT != 0 {
            if let Some(v) = direct::to_peer(ctx, &frame, &remote) {
                return v;
            }
        }
        return encap::to_overlay(ctx, &frame, &remote);
    }

    // The host itself or the outside world: the host stack routes it,
    // unless it is aimed at the fabric's own plumbing. Paced: what leaves
    // by the underlay meets fq there; what the host takes itself is held
    // to the same pace by the horizon.
    guard::check(ctx, &frame)?;
    rate::pace_egress(ctx, frame.saddr())?;
    Ok(to_stack(ctx))
}
