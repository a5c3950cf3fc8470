//! Just enough of the pcap file format (and of Ethernet/IPv4/UDP/VXLAN) to
//! check what went over the wire in a capture tcpdump wrote.
use std::net::Ipv4Addr;

/// A VXLAN frame seen on the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanFrame {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub udp_dst_port: u16,
    pub vni: u32,
    pub inner_dst_mac: [u8; 6],
    pub inner_src_ip: Option<Ipv4Addr>,
    pub inner_dst_ip: Option<Ipv4Addr>,
}

/// Splits a classic pcap file (either byte order, Ethernet link type) into
/// packets.
pub fn packets(file: &[u8]) -> Vec<&[u8]> {
    assert!(file.len() >= 24, "pcap file too short");
    let le = match &file[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        m => panic!("not a pcap file (magic {m:02x?})"),
    };
    let u32_at = |b: &[u8], o: usize| {
        let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    assert_eq!(u32_at(file, 20), 1, "capture is not Ethernet");
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= file.len() {
        let caplen = u32_at(file, off + 8) as usize;
        let start = off + 16;
        if start + caplen > file.len() {
            break;
        }
        out.push(&file[start..start + caplen]);
        off = start + caplen;
    }
    out
}

fn ip_at(b: &[u8], o: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3])
}

/// Parses an Ethernet frame as IPv4/UDP/VXLAN on `port`; `None` otherwise.
pub fn parse_vxlan(frame: &[u8], port: u16) -> Option<VxlanFrame> {
    if frame.len() < 14 + 20 + 8 + 8 + 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 + 8 + 14 {
        return None;
    }
    let udp = &ip[ihl..];
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if dport != port {
        return None;
    }
    let vx = &udp[8..];
    if vx[0] & 0x08 == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([vx[4], vx[5], vx[6], vx[7]]) >> 8;
    let inner = &vx[8..];
    let mut inner_dst_mac = [0u8; 6];
    inner_dst_mac.copy_from_slice(&inner[..6]);
    let (inner_src_ip, inner_dst_ip) = if inner[12..14] == [0x08, 0x00] && inner.len() >= 34 {
        (Some(ip_at(inner, 26)), Some(ip_at(inner, 30)))
    } else {
        (None, None)
    };
    Some(VxlanFrame {
        outer_src: ip_at(ip, 12),
        outer_dst: ip_at(ip, 16),
        udp_dst_port: dport,
        vni,
        inner_dst_mac,
        inner_src_ip,
        inner_dst_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{ethernet, ipv4_icmp, vxlan, ETH_P_IP};

    #[test]
    fn parses_a_crafted_vxlan_frame() {
        let inner = ethernet(
            [2; 6],
            [4; 6],
            ETH_P_IP,
            &ipv4_icmp([10, 0, 0, 1].into(), [10, 0, 1, 1].into(), 64),
        );
        let payload = vxlan(42, &inner);
        let mut udp = vec![0x30, 0x39, 0x12, 0xb5, 0, 0, 0, 0];
        udp.extend_from_slice(&payload);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        ip.extend_from_slice(&udp);
        let frame = ethernet([1; 6], [3; 6], ETH_P_IP, &ip);
        let v = parse_vxlan(&frame, 4789).unwrap();
        assert_eq!(v.vni, 42);
        assert_eq!(v.inner_dst_mac, [2; 6]);
        assert_eq!(v.inner_dst_ip, Some(Ipv4Addr::new(10, 0, 1, 1)));
        assert_eq!(v.outer_dst, Ipv4Addr::new(5, 6, 7, 8));
        assert!(parse_vxlan(&frame, 4790).is_none());
    }
}
