//! `from_host` (TC egress of the collect-metadata VXLAN device): the host's
//! own packets to remote containers (routed here by the agent's routes) are
//! encapsulated natively and leave by the underlay interface, before the
//! device's transmit runs; where native encapsulation is off, they get the
//! tunnel key of the destination's host and the device encapsulates them.
//! The inner Ethernet addresses come from the maps, the same VTEP MACs the
//! agent writes into the device's neighbour table. Frames redirected here
//! by `from_container` carry their key already and pass untouched.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{bpf_tunnel_key, TC_ACT_OK},
    helpers::bpf_skb_get_tunnel_key,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netfab_common::{Direction, DropReason};

use crate::helpers::{
    counters::{count, drop_with, Verdict},
    encap::{self, set_key},
    maps::{HOST_CONFIG, REMOTE_SUBNETS},
    packet::{parse, Parsed},
};

pub fn try_from_host(ctx: &TcContext) -> Result<Verdict, Verdict> {
    // SAFETY: bpf_tunnel_key is plain old data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { zeroed() };
    // SAFETY: the key is on the stack and the size passed is its size.
    let keyed = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    } == 0;
    if keyed {
        return Ok(Verdict::Action(TC_ACT_OK as i32));
    }
    let frame = match parse(ctx)? {
        Parsed::Ipv4(f) => f,
        // The device's own chatter (IPv6 neighbour discovery and the like):
        // without a key the device drops it, as it always did.
        Parsed::Other => return Ok(Verdict::Action(TC_ACT_OK as i32)),
    };
    let remote = *REMOTE_SUBNETS
        .get(Key::new(32, frame.daddr()))
        .ok_or(drop_with(DropReason::NoTunnelKey))?;
    if let Some(cfg) = HOST_CONFIG.get(0) {
        if let Some(v) = encap::native(ctx, frame.tos(), &remote, cfg) {
            return v;
        }
    }
    set_key(ctx, &remote)?;
    count(Direction::ToOverlay, ctx.len());
    Ok(Verdict::Action(TC_ACT_OK as i32))
}
