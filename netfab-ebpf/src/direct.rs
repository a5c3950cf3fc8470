//! Direct routing between hosts on one L2 segment: no encapsulation. Out:
//! `bpf_redirect_neigh` to the peer's underlay IP (the kernel resolves its
//! MAC). In: a TC program on the underlay interface delivers packets for
//! local containers with `bpf_redirect_peer` and leaves everything else
//! (the host's own traffic, VXLAN for the overlay device) to the stack.
use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_redir_neigh, TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::bpf_redirect_neigh,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netfab_common::{Direction, DropReason, RemoteSubnet, REMOTE_F_DIRECT};

use crate::{
    counters::{count, Verdict},
    deliver::{deliver_local, lookup_endpoint},
    drop_with,
    maps::{HOST_CONFIG, REMOTE_SUBNETS},
    packet::{parse, Ipv4Frame, Parsed},
};

const AF_INET: u32 = 2;

/// Sends the frame to a direct peer, or returns `None` if direct routing is
/// not set up on this host (the caller then encapsulates).
#[inline(always)]
pub fn to_peer(
    ctx: &TcContext,
    frame: &Ipv4Frame,
    remote: &RemoteSubnet,
) -> Option<Result<Verdict, Verdict>> {
    let cfg = HOST_CONFIG.get(0)?;
    if cfg.underlay_ifindex == 0 {
        return None;
    }
    if let Err(v) = frame.decrement_ttl() {
        return Some(Err(v));
    }
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: remote.underlay_ip.to_be(),
        },
    };
    count(Direction::ToDirect, ctx.len());
    // SAFETY: `nh` lives on the stack for the call and the size passed is its size.
    let rc = unsafe {
        bpf_redirect_neigh(
            cfg.underlay_ifindex,
            &mut nh,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if rc != TC_ACT_REDIRECT as i64 {
        return Some(Err(drop_with(DropReason::HelperFailed)));
    }
    Some(Ok(Verdict::Action(TC_ACT_REDIRECT as i32)))
}

pub fn try_from_underlay(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let frame = match parse(ctx) {
        Ok(Parsed::Ipv4(f)) => f,
        // Not ours to judge: the host's own underlay traffic.
        _ => return Ok(Verdict::Action(TC_ACT_OK as i32)),
    };
    let Some(dst) = lookup_endpoint(frame.daddr()) else {
        return Ok(Verdict::Action(TC_ACT_OK as i32));
    };
    // Only a direct peer's container may reach ours unencapsulated.
    let Some(src) = REMOTE_SUBNETS.get(Key::new(32, frame.saddr())) else {
        return Err(drop_with(DropReason::NotDirectPeer));
    };
    if src.flags & REMOTE_F_DIRECT == 0 {
        return Err(drop_with(DropReason::NotDirectPeer));
    }
    if src.vni != dst.vni {
        return Err(drop_with(DropReason::NetworkMismatch));
    }
    deliver_local(ctx, &frame, &dst, Direction::FromDirect)
}
