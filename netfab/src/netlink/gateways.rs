//! Each local subnet's gateway address, held by the host on `lo` as a /32
//! under the label `lo:netfab`. Why the host holds it: a container's ARP
//! for its gateway is then answered by the host side of its veth (an
//! interface bounced by a chained plugin loses the permanent neighbour entry
//! ADD made), and the host has an address inside the cluster CIDR to send
//! node-to-pod traffic from, so replies come back unmasqueraded.
use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressScope};

use super::Netlink;

pub const LABEL: &str = "lo:netfab";
const LO: u32 = 1;

impl Netlink {
    /// The gateway addresses netfab put on `lo`.
    pub async fn gateways(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut out = BTreeSet::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(LO)
            .execute();
        while let Some(msg) = s.try_next().await.context("listing lo's addresses")? {
            let ours = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Label(l) if l == LABEL));
            for a in &msg.attributes {
                if let (true, AddressAttribute::Address(std::net::IpAddr::V4(ip))) = (ours, a) {
                    out.insert(*ip);
                }
            }
        }
        Ok(out)
    }

    /// Makes the gateways on `lo` exactly `want`.
    pub async fn set_gateways(&self, want: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let have = self.gateways().await?;
        for ip in want.difference(&have) {
            let mut req = self.handle.address().add(LO, std::net::IpAddr::V4(*ip), 32);
            let m = req.message_mut();
            m.header.scope = AddressScope::Universe;
            m.attributes.push(AddressAttribute::Label(LABEL.into()));
            match req.execute().await {
                Ok(()) => {}
                // Held already (say, added by hand without our label).
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                Err(e) => return Err(e).with_context(|| format!("adding gateway {ip} to lo")),
            }
        }
        for ip in have.difference(want) {
            let mut s = self
                .handle
                .address()
                .get()
                .set_link_index_filter(LO)
                .set_address_filter(std::net::IpAddr::V4(*ip))
                .execute();
            while let Some(msg) = s.try_next().await? {
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .with_context(|| format!("removing gateway {ip} from lo"))?;
            }
        }
        Ok(())
    }
}
