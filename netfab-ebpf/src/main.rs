//! netfab's kernel datapath: four TC programs that route container traffic
//! between hosts. This file holds only the entry points; each program's
//! logic is in `programs/` (one module per attach point) and the helpers they
//! share in `helpers/`, which never import a program.
//!
//! - `from_container` (TC ingress of each container's host-side veth): checks
//!   the source address, then delivers to a local container with
//!   `bpf_redirect_peer`, or encapsulates in VXLAN itself and sends the frame
//!   out of the underlay interface (`native_encap`, GSO super-packets whole;
//!   with native encapsulation off, a tunnel key and this host's
//!   collect-metadata VXLAN device), or routes it to a direct peer, or hands
//!   the packet to the host stack (except what aims at a tunnel port or
//!   etcd: dropped).
//! - `from_overlay` (TC ingress of the VXLAN device): accepts frames only from
//!   known hosts on served VNIs, with inner sources that host holds, and
//!   delivers them into the container.
//! - `from_underlay` (TC ingress of the underlay interface): takes single
//!   VXLAN frames for local containers apart itself (`native_decap`, the same
//!   checks as `from_overlay`), delivers unencapsulated packets from direct
//!   peers' subnets, drops plain IP for containers from anyone else.
//! - `from_host` (TC egress of the VXLAN device): encapsulates the host's own
//!   packets to remote containers natively too (else gives them their
//!   tunnel key).
//!
//! Design note: the VXLAN device stays for what native decapsulation cannot
//! do safely on this kernel (GRO aggregates; see docs/dataplanes.md), for
//! frames the kernel will not grow, and for `--vxlan-encap device`; it
//! interoperates byte for byte with the native path and with plain kernel
//! VXLAN peers.
#![no_std]
#![no_main]

mod helpers;
mod programs;

use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    match programs::from_container::try_from_container(&ctx) {
        Ok(v) | Err(v) => v.finish(&ctx),
    }
}

#[classifier]
pub fn from_underlay(ctx: TcContext) -> i32 {
    match programs::from_underlay::try_from_underlay(&ctx) {
        Ok(v) | Err(v) => v.finish(&ctx),
    }
}

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    match programs::from_overlay::try_from_overlay(&ctx) {
        Ok(v) | Err(v) => v.finish(&ctx),
    }
}

#[classifier]
pub fn from_host(ctx: TcContext) -> i32 {
    match programs::from_host::try_from_host(&ctx) {
        Ok(v) | Err(v) => v.finish(&ctx),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
