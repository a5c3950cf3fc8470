//! `from_underlay` (TC ingress of the underlay interface): takes VXLAN for
//! local containers apart itself where native VXLAN is on
//! (`native_decap`), delivers plain IP from direct peers' subnets to local
//! containers, drops plain IP for containers from anyone else, and leaves
//! the rest (the host's own traffic, VXLAN aggregates for the overlay
//! device) to the stack.
use aya_ebpf::{bindings::TC_ACT_OK, maps::lpm_trie::Key, programs::TcContext};
use netfab_common::{Direction, DropReason, REMOTE_F_DIRECT};

use crate::helpers::{
    counters::{drop_with, Verdict},
    endpoint::{deliver_local, lookup_endpoint},
    maps::REMOTE_SUBNETS,
    native_decap,
    packet::{parse, Parsed},
};

pub fn try_from_underlay(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let frame = match parse(ctx) {
        Ok(Parsed::Ipv4(f)) => f,
        // Not ours to judge: the host's own underlay traffic.
        _ => return Ok(Verdict::Action(TC_ACT_OK as i32)),
    };
    if let Some(v) = native_decap::from_underlay(ctx, &frame) {
        return v;
    }
    let Some(dst) = lookup_endpoint(frame.daddr()) else {
        return Ok(Verdict::Action(TC_ACT_OK as i32));
    };
    // Only a direct peer's container may reach ours unencapsulated.
    let Some(src) = REMOTE_SUBNETS.get(Key::new(32, frame.saddr())) else {
        return Err(drop_with(DropReason::NotDirectPeer));
    };
    if src.flags & REMOTE_F_DIRECT == 0 {
        return Err(drop_with(DropReason::NotDirectPeer));
    }
    if src.vni != dst.vni {
        return Err(drop_with(DropReason::NetworkMismatch));
    }
    deliver_local(ctx, &frame, &dst, Direction::FromDirect)
}
