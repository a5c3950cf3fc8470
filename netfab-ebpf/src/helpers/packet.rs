//! Ethernet and IPv4 header access with the bounds checks the verifier wants.
use aya_ebpf::programs::TcContext;
use netfab_common::DropReason;

use super::counters::Verdict;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    /// Network byte order, as on the wire.
    pub saddr: u32,
    pub daddr: u32,
}

/// Pointers to the headers of an IPv4-over-Ethernet frame.
pub struct Ipv4Frame {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
}

/// The outcome of parsing: an IPv4 frame, or some other ethertype.
pub enum Parsed {
    Ipv4(Ipv4Frame),
    Other,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Parses Ethernet and, for IPv4, the fixed IPv4 header. Headers that are in
/// the packet but outside the linear area are pulled in first.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, Verdict> {
    let want = ETH_LEN + IPV4_LEN;
    if ctx.data() + want > ctx.data_end() && ctx.len() as usize >= want {
        // Failure leaves the packet as it was; the bounds checks below decide.
        let _ = ctx.skb.pull_data(want as u32);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Verdict::Drop(DropReason::Truncated))?;
    // SAFETY: `ptr_at` checked that the whole header lies inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IP.to_be() {
        return Ok(Parsed::Other);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(Verdict::Drop(DropReason::Truncated))?;
    // SAFETY: as above.
    let vihl = unsafe { (*ip).version_ihl };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(Verdict::Drop(DropReason::BadIpHeader));
    }
    Ok(Parsed::Ipv4(Ipv4Frame { eth, ip }))
}

/// Whether the frame is IPv6 (Ethernet header already checked by `parse`).
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    match ptr_at::<EthHdr>(ctx, 0) {
        // SAFETY: `ptr_at` checked that the whole header lies inside the packet.
        Some(eth) => (unsafe { (*eth).ether_type }) == ETH_P_IPV6.to_be(),
        None => false,
    }
}

impl Ipv4Frame {
    #[inline(always)]
    pub fn saddr(&self) -> u32 {
        // SAFETY: the header was bounds-checked in `parse`.
        unsafe { (*self.ip).saddr }
    }

    /// Protocol and destination port (network order) of a TCP or UDP
    /// packet; `None` for other protocols and for non-first fragments
    /// (which carry no port).
    #[inline(always)]
    pub fn l4_dport(&self, ctx: &TcContext) -> Option<(u8, u16)> {
        // SAFETY: the header was bounds-checked in `parse`.
        let (proto, frag, ihl) = unsafe {
            (
                (*self.ip).protocol,
                u16::from_be((*self.ip).frag_off),
                ((*self.ip).version_ihl & 0x0f) as usize,
            )
        };
        if (proto != 6 && proto != 17) || frag & 0x1fff != 0 {
            return None;
        }
        // The port sits 2 bytes into the TCP/UDP header; load_bytes also
        // reads from the non-linear part of the packet.
        let port: u16 = ctx.load(ETH_LEN + ihl * 4 + 2).ok()?;
        Some((proto, port))
    }

    /// UDP in a header without options, and not a fragment.
    #[inline(always)]
    pub fn is_plain_udp(&self) -> bool {
        // SAFETY: the header was bounds-checked in `parse`.
        let (vihl, proto, frag) = unsafe {
            (
                (*self.ip).version_ihl,
                (*self.ip).protocol,
                u16::from_be((*self.ip).frag_off),
            )
        };
        vihl == 0x45 && proto == 17 && frag & 0x3fff == 0
    }

    /// The TOS byte (DSCP and ECN).
    #[inline(always)]
    pub fn tos(&self) -> u8 {
        // SAFETY: the header was bounds-checked in `parse`.
        unsafe { (*self.ip).tos }
    }

    #[inline(always)]
    pub fn daddr(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.ip).daddr }
    }

    /// Rewrites the Ethernet addresses for the next hop.
    #[inline(always)]
    pub fn set_macs(&self, src: &[u8; 6], dst: &[u8; 6]) {
        // SAFETY: as above; TC programs may write directly into the packet.
        unsafe {
            (*self.eth).src = *src;
            (*self.eth).dst = *dst;
        }
    }

    /// Decrements the TTL as a router does, updating the header checksum
    /// incrementally (RFC 1624). Refuses when the TTL would reach zero.
    #[inline(always)]
    pub fn decrement_ttl(&self) -> Result<(), Verdict> {
        // SAFETY: as above.
        unsafe {
            let ttl = (*self.ip).ttl;
            if ttl <= 1 {
                return Err(Verdict::Drop(DropReason::TtlExceeded));
            }
            (*self.ip).ttl = ttl - 1;
            // The TTL is the high byte of a 16-bit word: it dropped by 0x0100,
            // so the one's-complement checksum rises by 0x0100.
            let sum = u16::from_be((*self.ip).check) as u32 + 0x0100;
            let sum = (sum & 0xffff) + (sum >> 16);
            (*self.ip).check = (sum as u16).to_be();
        }
        Ok(())
    }
}
