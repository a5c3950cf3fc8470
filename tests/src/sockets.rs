//! Sending crafted traffic from inside a namespace: raw Ethernet frames
//! (AF_PACKET) and UDP datagrams.
use std::net::{SocketAddrV4, UdpSocket};

use crate::guards::in_netns;

/// Sends `frame` as-is out of `iface` in namespace `ns`.
pub fn send_raw_frame(ns: &str, iface: &str, frame: Vec<u8>) {
    let iface = std::ffi::CString::new(iface).unwrap();
    in_netns(ns, move || {
        // SAFETY: plain socket(2) call; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
        assert!(ifindex > 0, "no interface {iface:?}");
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
        assert_eq!(n, frame.len() as isize, "sendto: {err}");
    })
}

/// Sends one UDP datagram from namespace `ns`.
pub fn send_udp(ns: &str, to: SocketAddrV4, payload: Vec<u8>) {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("binding UDP socket");
        s.send_to(&payload, to).expect("sending UDP");
    })
}
