//! Direct routing out: `bpf_redirect_neigh` to a peer on the same L2
//! segment, no encapsulation (the kernel resolves the peer's MAC).
use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_redir_neigh, TC_ACT_REDIRECT},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use netfab_common::{Direction, DropReason, RemoteSubnet};

use super::{
    counters::{count, drop_with, Verdict},
    maps::HOST_CONFIG,
    packet::Ipv4Frame,
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
