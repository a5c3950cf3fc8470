//! `from_overlay` (TC ingress of the collect-metadata VXLAN device): frames
//! from remote hosts, accepted only from known hosts on served VNIs with an
//! inner source inside a subnet that very host holds in that VNI.
use core::mem::{size_of, zeroed};

use aya_ebpf::{bindings::bpf_tunnel_key, helpers::bpf_skb_get_tunnel_key, programs::TcContext};
use netfab_common::{Direction, DropReason};

use crate::helpers::{
    counters::{drop_with, Verdict},
    endpoint::deliver_local,
    overlay::{judge_inner, judge_sender},
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
    judge_sender(vni, remote_ip)?;
    let frame = match parse(ctx)? {
        Parsed::Ipv4(f) => f,
        Parsed::Other => return Err(drop_with(DropReason::NotIpv4)),
    };
    let dst = judge_inner(vni, remote_ip, frame.saddr(), frame.daddr())?;
    deliver_local(ctx, &frame, &dst, Direction::FromOverlay)
}
