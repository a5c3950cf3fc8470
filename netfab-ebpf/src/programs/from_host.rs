//! `from_host` (TC egress of the collect-metadata VXLAN device): the host's
//! own packets to remote containers. The agent routes each network's whole
//! CIDR here (one route and one neighbour per network, however many peers:
//! the peer is chosen here, from the maps). A direct peer's packets leave
//! by the underlay unencapsulated; the rest are encapsulated natively and
//! leave by the underlay interface before the device's transmit runs, or,
//! where native encapsulation is off, get the inner VTEP MACs and the
//! tunnel key of the destination's host and the device encapsulates them.
//! An address of the CIDR that no host holds is dropped. Frames redirected
//! here by `from_container` carry their key already and pass untouched.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{bpf_tunnel_key, TC_ACT_OK},
    helpers::bpf_skb_get_tunnel_key,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netfab_common::{Direction, DropReason, REMOTE_F_DIRECT};

use crate::helpers::{
    counters::{count, drop_with, Verdict},
    direct,
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
    if remote.flags & REMOTE_F_DIRECT != 0 {
        if let Some(v) = direct::host_to_peer(ctx, &frame, &remote) {
            return v;
        }
    }
    let cfg = HOST_CONFIG
        .get(0)
        .ok_or(drop_with(DropReason::NoTunnelKey))?;
    // The inner addresses a kernel VXLAN peer accepts (the network's one
    // neighbour names no peer): the device path sends the frame as it is.
    // Written first: growing the frame invalidates the header pointers.
    frame.set_macs(&cfg.vxlan_mac, &remote.vtep_mac);
    if let Some(v) = encap::native(ctx, frame.tos(), &remote, cfg) {
        return v;
    }
    set_key(ctx, &remote)?;
    count(Direction::ToOverlay, ctx.len());
    Ok(Verdict::Action(TC_ACT_OK as i32))
}
