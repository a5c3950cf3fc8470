//! VXLAN taken apart here, on the underlay's TC ingress: a frame for this
//! host's VXLAN port is checked as the overlay program checks it (known
//! sender, served VNI, inner source held by that sender, a local endpoint
//! in that VNI), its outer headers are removed with `bpf_skb_adjust_room`,
//! and it goes straight into the container, without the UDP socket, the
//! VXLAN device and its second NAPI pass.
//!
//! GSO/GRO aggregates are left to the VXLAN device: on this kernel,
//! shrinking an aggregate leaves its UDP-tunnel GSO bits set (the kernel's
//! fix, `BPF_F_ADJ_ROOM_DECAP_L4_UDP`, is newer), and such a packet would be
//! segmented wrongly if the container ever forwarded it. For a while after
//! an aggregate, so is every frame of its flow: one flow, one path, no
//! reordering. So is anything the
//! checks here do not cover (options, fragments, a malformed VXLAN header,
//! the host's own gateway address): the device path decides.
use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_NO_CSUM_RESET},
    helpers::{bpf_csum_level, bpf_ktime_get_ns},
    programs::TcContext,
};
use netfab_common::{Direction, DropReason, ENCAP_F_NATIVE, HOST_ENDPOINT};

use super::{
    counters::{drop_with, Verdict},
    endpoint::deliver_local,
    maps::{DEVICE_FLOWS, ENCAP},
    native_encap::ENCAP_LEN,
    overlay::{judge_inner, judge_sender},
    packet::{parse, Ipv4Frame, Parsed, ETH_LEN, ETH_P_IP, IPV4_LEN},
};

/// Outer Ethernet, outer IPv4 (no options), UDP, VXLAN, inner Ethernet and
/// inner IPv4: what must be readable to decide.
const HEADERS: usize = ETH_LEN + ENCAP_LEN + IPV4_LEN;
const UDP_AT: usize = ETH_LEN + IPV4_LEN;
const BPF_CSUM_LEVEL_DEC: u64 = 2;
/// How long a flow that sent an aggregate keeps all its frames on the
/// device path: long past any frame still queued there, short enough that
/// a flow turned request/response is back on the fast path within a second.
const STICKY_NS: u64 = 1_000_000_000;
const STICKY_REFRESH_NS: u64 = 10_000_000;

/// The headers of a VXLAN frame, read out of the packet.
#[repr(C)]
struct VxlanHeaders {
    udp_sport: u16,
    udp_dport: u16,
    udp_len: u16,
    udp_check: u16,
    vxlan_flags: u8,
    _reserved: [u8; 3],
    /// VNI, then a reserved byte. Byte arrays here and below keep the
    /// struct free of padding: it mirrors the packet byte for byte.
    vni: [u8; 4],
    inner_dst: [u8; 6],
    inner_src: [u8; 6],
    inner_type: u16,
    inner_vihl: u8,
    inner_tos: u8,
    inner_tot_len: u16,
    inner_id: u16,
    inner_frag: u16,
    inner_ttl: u8,
    inner_proto: u8,
    inner_check: u16,
    inner_saddr: [u8; 4],
    inner_daddr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<VxlanHeaders>() == HEADERS - UDP_AT);

/// `None`: not a frame this path takes (the stack and the VXLAN device
/// get it as before). Otherwise the verdict: delivered, or dropped with
/// the reason the overlay program would have given.
#[inline(always)]
pub fn from_underlay(ctx: &TcContext, outer: &Ipv4Frame) -> Option<Result<Verdict, Verdict>> {
    let enc = ENCAP.get(0)?;
    if enc.flags & ENCAP_F_NATIVE == 0 || !outer.is_plain_udp() || outer.daddr() != enc.underlay_ip
    {
        return None;
    }
    if (ctx.len() as usize) < HEADERS {
        return None;
    }
    let h: VxlanHeaders = ctx.load(UDP_AT).ok()?;
    if h.udp_dport != enc.port {
        return None;
    }
    if !single_frame_path(ctx, outer.saddr(), h.udp_sport) {
        return None;
    }
    if h.vxlan_flags & 0x08 == 0 || h.inner_type != ETH_P_IP.to_be() {
        return None;
    }
    if h.inner_vihl != 0x45 {
        return None;
    }
    Some(deliver(ctx, outer.saddr(), &h))
}

/// Whether this frame may be decapsulated here. Aggregates go to the
/// device (see the module's note); so do the single frames of a flow that
/// sent one within `STICKY_NS`, or they would overtake its aggregates still
/// queued in the device's GRO cells, and the receiver would see one TCP
/// flow reordered. The sender hashes each inner flow to its own UDP source
/// port, so outer source address and port name the flow.
#[inline(always)]
fn single_frame_path(ctx: &TcContext, outer_saddr: u32, udp_sport: u16) -> bool {
    let flow = ((u32::from_be(outer_saddr) as u64) << 16) | u16::from_be(udp_sport) as u64;
    // SAFETY: plain helper call, no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the context pointer the kernel passed in; a plain field read.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        match DEVICE_FLOWS.get_ptr_mut(&flow) {
            // Refreshed at most every STICKY_REFRESH_NS: a write per
            // aggregate would bounce the entry's cache line between CPUs.
            // SAFETY: a valid pointer into the map's value, written whole.
            Some(seen) => unsafe {
                if now.wrapping_sub(*seen) > STICKY_REFRESH_NS {
                    *seen = now;
                }
            },
            None => {
                let _ = DEVICE_FLOWS.insert(&flow, &now, 0);
            }
        }
        return false;
    }
    match DEVICE_FLOWS.get_ptr(&flow) {
        // SAFETY: a valid pointer into the map's value.
        Some(seen) => now.wrapping_sub(unsafe { *seen }) > STICKY_NS,
        None => true,
    }
}

#[inline(always)]
fn deliver(ctx: &TcContext, outer_saddr: u32, h: &VxlanHeaders) -> Result<Verdict, Verdict> {
    let vni = u32::from_be_bytes([0, h.vni[0], h.vni[1], h.vni[2]]);
    let (inner_saddr, inner_daddr) = (
        u32::from_ne_bytes(h.inner_saddr),
        u32::from_ne_bytes(h.inner_daddr),
    );
    let sender = u32::from_be(outer_saddr);
    judge_sender(vni, sender)?;
    let dst = judge_inner(vni, sender, inner_saddr, inner_daddr)?;
    if dst.ifindex == HOST_ENDPOINT {
        // The host's own traffic: the device path hands it to the stack.
        return Ok(Verdict::Action(aya_ebpf::bindings::TC_ACT_OK as i32));
    }
    // Outer IPv4, UDP, VXLAN and the inner Ethernet header go; the outer
    // Ethernet header stays (its type is IPv4 either way).
    if ctx
        .adjust_room(
            -(ENCAP_LEN as i32),
            BPF_ADJ_ROOM_MAC,
            BPF_F_ADJ_ROOM_NO_CSUM_RESET as u64,
        )
        .is_err()
    {
        return Err(drop_with(DropReason::HelperFailed));
    }
    // A checksum the NIC validated for the outer UDP layer no longer
    // covers anything: one level fewer.
    // SAFETY: plain helper call on the context.
    unsafe { bpf_csum_level(ctx.skb.skb, BPF_CSUM_LEVEL_DEC) };
    let inner = match parse(ctx)? {
        Parsed::Ipv4(f) => f,
        Parsed::Other => return Err(drop_with(DropReason::NotIpv4)),
    };
    deliver_local(ctx, &inner, &dst, Direction::FromOverlay)
}
