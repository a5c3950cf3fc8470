//! VXLAN built here: the outer IPv4/UDP/VXLAN headers and the inner
//! Ethernet header are pushed with `bpf_skb_adjust_room`'s encapsulation
//! flags and the frame leaves by the underlay interface itself, so the
//! VXLAN device (its second transmit pass, route lookup and netfilter) is
//! skipped. The bytes are what the kernel's device sends for the same
//! packet (RFC 7348): outer UDP checksum 0, DF clear, TTL 64, ECN from the
//! inner header, source port from the flow hash in the same range.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_ENCAP_L2_SHIFT,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ADJ_ROOM_NO_CSUM_RESET, TC_ACT_REDIRECT,
    },
    helpers::{bpf_get_hash_recalc, bpf_get_prandom_u32, bpf_redirect_neigh},
    programs::TcContext,
};
use netfab_common::{Direction, DropReason, EncapConfig, HostConfig, RemoteSubnet};

use super::{
    counters::{count, drop_with, Verdict},
    packet::ETH_LEN,
};

const OUTER_IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const VXLAN_LEN: usize = 8;
/// What goes between the outer Ethernet header and the inner IPv4 header.
pub const ENCAP_LEN: usize = OUTER_IP_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN;
const TUNNEL_TTL: u8 = 64;
const IPPROTO_UDP: u8 = 17;
/// The VXLAN flags byte: "I", a valid VNI follows.
const VXLAN_FLAG_VNI: u8 = 0x08;

/// - ENCAP_L3_IPV4 | ENCAP_L4_UDP: a GSO packet becomes a UDP-tunnel GSO
///   packet, segmented (or offloaded) at the underlay with every segment
///   getting the outer headers.
/// - ENCAP_L2(Ethernet) | ENCAP_L2_ETH: the inner MAC header is the inner
///   Ethernet header alone, and the inner protocol is Ethernet (TEB), as
///   the kernel's VXLAN device marks its packets. GSO then treats outer
///   UDP + VXLAN as the tunnel header and reads the inner frame's type at
///   the inner MAC header. Counting the VXLAN header into the L2 length
///   (as the kernel's selftest does) makes it read the type from inside the
///   VXLAN header: every GSO packet fails to segment and is dropped, which
///   is how hand-built VXLAN collapsed TCP here before.
/// - FIXED_GSO: the container's TCP already sized its segments for the
///   overlay MTU; without it the kernel shrinks gso_size by the header
///   length.
/// - NO_CSUM_RESET: the checksum state of the inner packet stays valid.
const ADJ_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH
    | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64
    | ((ETH_LEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);

/// The outer ECN field for an inner TOS byte, as the kernel's
/// `INET_ECN_encapsulate`: copied, except CE becomes ECT(0).
#[inline(always)]
fn outer_ecn(inner_tos: u8) -> u8 {
    match inner_tos & 3 {
        3 => 2,
        e => e,
    }
}

/// The outer UDP source port for a flow hash, as the kernel's
/// `udp_flow_src_port` picks it in [min, max).
#[inline(always)]
fn src_port(hash: u32, min: u16, max: u16) -> u16 {
    if max <= min {
        return min;
    }
    let h = hash ^ (hash << 16);
    ((u64::from(h) * u64::from(max - min)) >> 32) as u16 + min
}

#[inline(always)]
fn ipv4_checksum(h: &[u8; ENCAP_LEN]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < OUTER_IP_LEN {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Encapsulates the (already routed) frame towards `remote` and sends it
/// out of the underlay interface; the kernel fills the outer Ethernet
/// addresses from its route and neighbour tables.
/// `None` when the kernel refuses to grow this packet (already
/// encapsulated, say): it is then as it was, for the VXLAN device.
#[inline(always)]
pub fn to_overlay(
    ctx: &TcContext,
    inner_tos: u8,
    remote: &RemoteSubnet,
    cfg: &HostConfig,
    enc: &EncapConfig,
) -> Option<Result<Verdict, Verdict>> {
    // GSO super-packets are encapsulated whole. bpf_skb_adjust_room marks
    // what it grows SKB_GSO_DODGY, so on a device without GSO_ROBUST (veth,
    // most NICs) the kernel re-checks the headers at transmit, but it only
    // segments where the device cannot take UDP-tunnel GSO, as it would the
    // VXLAN device's own. Measured here: ~50 KB frames cross the underlay
    // veth, and bulk TCP is not slower than by the device.
    let inner_len = ctx.len() as usize;
    // SAFETY: the context pointer the kernel passed in.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    ctx.adjust_room(ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ADJ_FLAGS)
        .ok()?;

    let mut h = [0u8; ENCAP_LEN];
    // A super-packet's lengths may not fit 16 bits: segmentation rewrites
    // every segment's lengths and checksum, so they only need to be right
    // for a single packet.
    let ip_len = (OUTER_IP_LEN + UDP_LEN + VXLAN_LEN + inner_len) as u16;
    // SAFETY: plain helper call.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    h[0] = 0x45;
    h[1] = outer_ecn(inner_tos);
    h[2..4].copy_from_slice(&ip_len.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[8] = TUNNEL_TTL;
    h[9] = IPPROTO_UDP;
    h[12..16].copy_from_slice(&enc.underlay_ip.to_ne_bytes());
    h[16..20].copy_from_slice(&remote.underlay_ip.to_be_bytes());
    let csum = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    let u = OUTER_IP_LEN;
    h[u..u + 2].copy_from_slice(&src_port(hash, enc.src_port_min, enc.src_port_max).to_be_bytes());
    h[u + 2..u + 4].copy_from_slice(&enc.port.to_ne_bytes());
    h[u + 4..u + 6].copy_from_slice(&ip_len.wrapping_sub(OUTER_IP_LEN as u16).to_be_bytes());
    let v = u + UDP_LEN;
    h[v] = VXLAN_FLAG_VNI;
    h[v + 4..v + 8].copy_from_slice(&(remote.vni << 8).to_be_bytes());
    let e = v + VXLAN_LEN;
    h[e..e + 6].copy_from_slice(&remote.vtep_mac);
    h[e + 6..e + 12].copy_from_slice(&cfg.vxlan_mac);
    h[e + 12..e + 14].copy_from_slice(&0x0800u16.to_be_bytes());
    if ctx.store(ETH_LEN, &h, 0).is_err() {
        return Some(Err(drop_with(DropReason::HelperFailed)));
    }

    count(Direction::ToOverlay, ctx.len());
    // No next hop given: the kernel looks the outer destination up in the
    // host's routes (a peer on another segment is reached via its router).
    // SAFETY: plain helper call; a null params pointer with length 0 is the
    // documented way to ask for a lookup.
    let rc = unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    if rc != TC_ACT_REDIRECT as i64 {
        return Some(Err(drop_with(DropReason::HelperFailed)));
    }
    Some(Ok(Verdict::Action(TC_ACT_REDIRECT as i32)))
}
