//! netfab's kernel datapath: two TC programs that route container traffic
//! between hosts.
//!
//! - `from_container` (TC ingress of each container's host-side veth): checks
//!   the source address, then delivers to a local container with
//!   `bpf_redirect_peer`, or sets a VXLAN tunnel key and redirects to this host's
//!   collect-metadata VXLAN device, or hands the packet to the host stack.
//! - `from_overlay` (TC ingress of the VXLAN device): accepts frames only from
//!   known hosts on served VNIs and delivers them into the container.
//! - `from_underlay` (TC ingress of the underlay interface, direct routing):
//!   delivers unencapsulated packets from peers on the same L2 segment.
//!
//! Design note: encapsulation is done by the kernel's VXLAN device in
//! collect-metadata mode, not by building headers here, because that path keeps
//! GSO/TSO working (hand-built headers collapsed TCP throughput on this kernel)
//! and interoperates byte for byte with plain kernel VXLAN peers.
#![no_std]
#![no_main]

mod counters;
mod deliver;
mod direct;
mod encap;
mod guard;
mod maps;
mod packet;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use netfab_common::{Direction, DropReason};

use counters::{count, Verdict};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    match deliver::try_from_container(&ctx) {
        Ok(v) | Err(v) => v.finish(&ctx),
    }
}

#[classifier]
pub fn from_underlay(ctx: TcContext) -> i32 {
    match direct::try_from_underlay(&ctx) {
        Ok(v) | Err(v) => v.finish(&ctx),
    }
}

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    match encap::try_from_overlay(&ctx) {
        Ok(v) | Err(v) => v.finish(&ctx),
    }
}

/// Hand to the host stack, counted.
#[inline(always)]
pub(crate) fn to_stack(ctx: &TcContext) -> Verdict {
    count(Direction::ToStack, ctx.len());
    Verdict::Action(TC_ACT_OK as i32)
}

#[inline(always)]
pub(crate) fn drop_with(reason: DropReason) -> Verdict {
    Verdict::Drop(reason)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
