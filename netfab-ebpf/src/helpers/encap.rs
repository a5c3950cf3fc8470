//! VXLAN towards remote hosts: built here (`native_encap`) where this host
//! is set up for it, else by tunnel key, the collect-metadata VXLAN device
//! adding the outer headers.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::bpf_tunnel_key,
    helpers::{bpf_redirect, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use netfab_common::{Direction, DropReason, HostConfig, RemoteSubnet, ENCAP_F_NATIVE};

use super::{
    counters::{count, drop_with, to_stack, Verdict},
    maps::{ENCAP, HOST_CONFIG},
    native_encap,
    packet::Ipv4Frame,
};

/// Outer UDP checksum off: the inner packet carries its own, and computing it
/// costs a pass over the payload per packet.
const BPF_F_ZERO_CSUM_TX: u64 = 1 << 1;
const TUNNEL_TTL: u8 = 64;

/// Encapsulates natively where enabled; otherwise sets the tunnel key and
/// hands the frame to the collect-metadata VXLAN device, which adds the
/// outer headers.
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
    // The inner addresses either way: the device path sends the frame as it
    // is; the native one writes the same into its inner Ethernet header.
    frame.set_macs(&cfg.vxlan_mac, &remote.vtep_mac);
    if let Some(v) = native(ctx, frame.tos(), remote, cfg) {
        return v;
    }
    set_key(ctx, remote)?;
    count(Direction::ToOverlay, ctx.len());
    // SAFETY: plain helper call with scalar arguments.
    Ok(Verdict::Action(
        unsafe { bpf_redirect(cfg.vxlan_ifindex, 0) } as i32,
    ))
}

/// Native encapsulation where this host is set up for it. `None` when it
/// is not, or when the kernel refused to grow the frame (it is then as it
/// was, for the device).
#[inline(always)]
pub fn native(
    ctx: &TcContext,
    inner_tos: u8,
    remote: &RemoteSubnet,
    cfg: &HostConfig,
) -> Option<Result<Verdict, Verdict>> {
    let enc = ENCAP.get(0)?;
    if enc.flags & ENCAP_F_NATIVE == 0 || cfg.underlay_ifindex == 0 {
        return None;
    }
    native_encap::to_overlay(ctx, inner_tos, remote, cfg, enc)
}

/// Sets the VXLAN tunnel key (VNI, remote underlay address) the
/// collect-metadata device encapsulates by.
#[inline(always)]
pub fn set_key(ctx: &TcContext, remote: &RemoteSubnet) -> Result<(), Verdict> {
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
    Ok(())
}
