//! Direct routing out: `bpf_redirect_neigh` to a peer on the same L2
//! segment, no encapsulation (the kernel resolves the peer's MAC).
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT,
        TC_ACT_REDIRECT,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use netfab_common::{Direction, DropReason, RemoteSubnet};

use super::{
    counters::{count, drop_with, Verdict},
    maps::HOST_CONFIG,
    packet::{Ipv4Frame, ETH_LEN},
};

const AF_INET: u32 = 2;

/// Sends a container's frame to a direct peer (a forwarding hop: the TTL
/// drops), or returns `None` if direct routing is not set up on this host
/// (the caller then encapsulates).
#[inline(always)]
pub fn to_peer(
    ctx: &TcContext,
    frame: &Ipv4Frame,
    remote: &RemoteSubnet,
) -> Option<Result<Verdict, Verdict>> {
    send(ctx, frame, remote, true)
}

/// The host's own frame to a direct peer (its first hop: TTL untouched),
/// sent only once the kernel knows the peer's MAC. From this egress hook a
/// frame `bpf_redirect_neigh` queues for neighbour resolution keeps the
/// VXLAN device's route and is lost when the queue is flushed (measured:
/// the first ping after the peer's ARP entry expired); `None` until then,
/// and the caller encapsulates that frame (the peer takes both), which
/// resolves the peer's MAC on the way.
#[inline(always)]
pub fn host_to_peer(
    ctx: &TcContext,
    frame: &Ipv4Frame,
    remote: &RemoteSubnet,
) -> Option<Result<Verdict, Verdict>> {
    let cfg = HOST_CONFIG.get(0)?;
    if cfg.underlay_ifindex == 0 {
        return None;
    }
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid value.
    let mut p: bpf_fib_lookup = unsafe { zeroed() };
    p.family = AF_INET as u8;
    p.ifindex = cfg.underlay_ifindex;
    p.__bindgen_anon_1.tot_len = (ctx.len() as usize).saturating_sub(ETH_LEN) as u16;
    p.__bindgen_anon_4.ipv4_dst = remote.underlay_ip.to_be();
    // SAFETY: `p` lives on the stack for the call and the size passed is its
    // size; the context pointer is the one the kernel passed in.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut p,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    frame.set_macs(&p.smac, &p.dmac);
    count(Direction::ToDirect, ctx.len());
    // SAFETY: plain helper call with scalar arguments.
    Some(Ok(Verdict::Action(
        unsafe { bpf_redirect(p.ifindex, 0) } as i32
    )))
}

#[inline(always)]
fn send(
    ctx: &TcContext,
    frame: &Ipv4Frame,
    remote: &RemoteSubnet,
    forwarded: bool,
) -> Option<Result<Verdict, Verdict>> {
    let cfg = HOST_CONFIG.get(0)?;
    if cfg.underlay_ifindex == 0 {
        return None;
    }
    if forwarded {
        if let Err(v) = frame.decrement_ttl() {
            return Some(Err(v));
        }
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
