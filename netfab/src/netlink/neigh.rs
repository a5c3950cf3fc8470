//! Permanent neighbour entries and VXLAN FDB entries.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    AddressFamily,
};

use super::Netlink;
use crate::addr::MacAddr;

/// `ip neigh replace IP lladdr MAC dev IF nud permanent`
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neigh {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// `bridge fdb append MAC dev VXLAN dst IP`
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub dst: Ipv4Addr,
}

fn lladdr(msg: &NeighbourMessage) -> Option<MacAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(b);
            Some(MacAddr(m))
        }
        _ => None,
    })
}

fn dst(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

impl Netlink {
    pub async fn neigh_replace(&self, n: &Neigh) -> Result<()> {
        self.handle
            .neighbours()
            .add(n.ifindex, IpAddr::V4(n.ip))
            .link_layer_address(&n.mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("installing neighbour {n:?}"))
    }

    pub async fn fdb_replace(&self, f: &Fdb) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(f.ifindex, &f.mac.0)
            .destination(IpAddr::V4(f.dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("installing FDB entry {f:?}"))
    }

    /// Permanent IPv4 neighbours and FDB entries with a destination on `ifindex`.
    pub async fn neigh_list(
        &self,
        ifindex: u32,
    ) -> Result<(Vec<(Neigh, NeighbourMessage)>, Vec<(Fdb, NeighbourMessage)>)> {
        self.neigh_dump(ifindex, &[AddressFamily::Inet, AddressFamily::Bridge])
            .await
    }

    /// Permanent IPv4 neighbours on `ifindex` (no FDB: a dump less).
    pub async fn neigh_list_ip(&self, ifindex: u32) -> Result<Vec<(Neigh, NeighbourMessage)>> {
        Ok(self.neigh_dump(ifindex, &[AddressFamily::Inet]).await?.0)
    }

    async fn neigh_dump(
        &self,
        ifindex: u32,
        families: &[AddressFamily],
    ) -> Result<(Vec<(Neigh, NeighbourMessage)>, Vec<(Fdb, NeighbourMessage)>)> {
        let mut neighs = Vec::new();
        let mut fdbs = Vec::new();
        for &family in families {
            let mut req = self.handle.neighbours().get().set_address_family(family);
            req.message_mut().header.ifindex = ifindex;
            let mut s = req.execute();
            while let Some(msg) = s.try_next().await.context("listing neighbours")? {
                if msg.header.ifindex != ifindex || msg.header.state != NeighbourState::Permanent {
                    continue;
                }
                match (family, dst(&msg), lladdr(&msg)) {
                    (AddressFamily::Inet, Some(ip), Some(mac)) => {
                        neighs.push((Neigh { ifindex, ip, mac }, msg))
                    }
                    (AddressFamily::Bridge, Some(d), Some(mac)) => fdbs.push((
                        Fdb {
                            ifindex,
                            mac,
                            dst: d,
                        },
                        msg,
                    )),
                    _ => {}
                }
            }
        }
        Ok((neighs, fdbs))
    }

    pub async fn neigh_del(&self, msg: NeighbourMessage) -> Result<()> {
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .context("removing neighbour")
    }
}
