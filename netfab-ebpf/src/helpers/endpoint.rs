//! Local containers: look one up by address, deliver into it.
use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect_peer, programs::TcContext};
use netfab_common::{Direction, DropReason, Endpoint, HOST_ENDPOINT};

use super::{
    counters::{count, drop_with, to_stack, Verdict},
    maps::ENDPOINTS,
    packet::Ipv4Frame,
    rate,
};

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
    // A gateway address the host holds: its own traffic's replies.
    if dst.ifindex == HOST_ENDPOINT {
        return Ok(to_stack(ctx));
    }
    rate::police_ingress(ctx, frame.daddr())?;
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
