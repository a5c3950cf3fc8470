//! rtnetlink access for the agent: interfaces, addresses, and the
//! collect-metadata VXLAN device. One socket per agent (per namespace).
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan};

use crate::addr::MacAddr;

/// An interface as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFacts {
    pub ifindex: u32,
    pub mac: MacAddr,
}

pub mod gateways;
pub mod neigh;
pub mod routes;
pub mod underlay;

/// Bytes VXLAN adds over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

pub struct Netlink {
    pub(crate) handle: Handle,
}

/// Whether ensuring a device created or changed it (which empties its
/// neighbour table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    No,
    Yes,
}

#[derive(Debug, Clone)]
pub struct LinkDetail {
    pub facts: LinkFacts,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    pub kind: Option<InfoKind>,
    pub vxlan: Vec<InfoVxlan>,
}

/// A one-VNI kernel VXLAN device (the `vxlan` backend).
#[derive(Debug, Clone)]
pub struct KernelVxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub mac: MacAddr,
    pub mtu: u32,
}

/// The collect-metadata VXLAN device netfab wants.
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    pub name: String,
    pub port: u16,
    pub underlay_ifindex: u32,
    pub mac: MacAddr,
    pub mtu: u32,
}

fn detail(msg: &LinkMessage) -> Option<(String, LinkDetail)> {
    let mut name = None;
    let mut mac = MacAddr::default();
    let mut mtu = 0;
    let mut kind = None;
    let mut vxlan = Vec::new();
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(b) if b.len() == 6 => mac.0.copy_from_slice(b),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => vxlan = v.clone(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let facts = LinkFacts {
        ifindex: msg.header.index,
        mac,
    };
    Some((
        name?,
        LinkDetail {
            facts,
            mtu,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind,
            vxlan,
        },
    ))
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace. Needs a tokio
    /// runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn links(&self) -> Result<HashMap<String, LinkDetail>> {
        let mut out = HashMap::new();
        let mut s = self.handle.link().get().execute();
        while let Some(msg) = s.try_next().await.context("listing links")? {
            if let Some((name, d)) = detail(&msg) {
                out.insert(name, d);
            }
        }
        Ok(out)
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkDetail>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(detail(&msg).map(|(_, d)| d)),
            Ok(None) => Ok(None),
            // ENODEV: no such interface.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
        }
    }

    /// The underlay interface and its first IPv4 address (with prefix).
    pub async fn underlay(&self, name: &str) -> Result<(LinkDetail, Ipv4Net)> {
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("underlay interface {name} not found"))?;
        let net = self
            .ipv4_nets(link.facts.ifindex)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("underlay interface {name} has no IPv4 address"))?;
        Ok((link, net))
    }

    /// IPv4 addresses with their prefix length.
    pub async fn ipv4_nets(&self, ifindex: u32) -> Result<Vec<Ipv4Net>> {
        let mut out = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        while let Some(msg) = s.try_next().await.context("listing addresses")? {
            for a in &msg.attributes {
                if let AddressAttribute::Address(std::net::IpAddr::V4(ip)) = a {
                    out.push(Ipv4Net::new(*ip, msg.header.prefix_len)?);
                }
            }
        }
        Ok(out)
    }

    pub async fn ipv4_addrs(&self, ifindex: u32) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .ipv4_nets(ifindex)
            .await?
            .into_iter()
            .map(|n| n.addr())
            .collect())
    }

    /// Creates the collect-metadata VXLAN device, or adopts an existing one
    /// that already has the right shape (an agent restart must not disturb it).
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(LinkFacts, Touched)> {
        let wanted = [
            InfoVxlan::CollectMetadata(true),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(false),
        ];
        let create = LinkMessageBuilder::<LinkVxlan>::new(&spec.name)
            .collect_metadata(true)
            .learning(false)
            .port(spec.port)
            .dev(spec.underlay_ifindex)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec())
            .up()
            .build();
        self.adopt_or_create(&spec.name, &wanted, spec.mtu, spec.mac, create)
            .await
    }

    /// Creates or adopts a plain (one-VNI) kernel VXLAN device, flannel style:
    /// no learning, fixed MAC, the given MTU.
    pub async fn ensure_kernel_vxlan(
        &self,
        spec: &KernelVxlanSpec,
    ) -> Result<(LinkFacts, Touched)> {
        let wanted = [
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(false),
            InfoVxlan::Local(spec.local),
        ];
        let create = LinkMessageBuilder::<LinkVxlan>::new(&spec.name)
            .id(spec.vni)
            .local(spec.local)
            .dev(spec.underlay_ifindex)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec())
            .up()
            .build();
        self.adopt_or_create(&spec.name, &wanted, spec.mtu, spec.mac, create)
            .await
    }

    /// A VXLAN device whose attributes include all of `wanted` is adopted
    /// (MTU, MAC and up state set in place); any other device of that name is
    /// replaced by `create`.
    async fn adopt_or_create(
        &self,
        name: &str,
        wanted: &[InfoVxlan],
        mtu: u32,
        mac: MacAddr,
        create: LinkMessage,
    ) -> Result<(LinkFacts, Touched)> {
        if let Some(d) = self.link(name).await? {
            if d.kind == Some(InfoKind::Vxlan) && wanted.iter().all(|w| d.vxlan.contains(w)) {
                let facts = LinkFacts {
                    ifindex: d.facts.ifindex,
                    mac,
                };
                // Left alone when it is right: setting the address, even to
                // the same value, flushes the device's neighbours.
                if d.mtu == mtu && d.facts.mac == mac && d.up {
                    return Ok((facts, Touched::No));
                }
                let msg = LinkUnspec::new_with_index(d.facts.ifindex)
                    .mtu(mtu)
                    .address(mac.0.to_vec())
                    .up()
                    .build();
                self.handle
                    .link()
                    .set(msg)
                    .execute()
                    .await
                    .with_context(|| format!("updating {name}"))?;
                return Ok((facts, Touched::Yes));
            }
            log::warn!("{name} exists with other settings; recreating it");
            self.delete(name).await?;
        }
        self.handle
            .link()
            .add(create)
            .execute()
            .await
            .with_context(|| format!("creating VXLAN device {name}"))?;
        match self.link(name).await? {
            Some(d) => Ok((d.facts, Touched::Yes)),
            None => bail!("VXLAN device {name} vanished right after creation"),
        }
    }

    /// Adds an address if the interface does not have it yet.
    pub async fn addr_ensure(&self, ifindex: u32, net: Ipv4Net) -> Result<()> {
        if self.ipv4_nets(ifindex).await?.contains(&net) {
            return Ok(());
        }
        self.handle
            .address()
            .add(ifindex, std::net::IpAddr::V4(net.addr()), net.prefix_len())
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding address {net}"))
    }

    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        let msg = rtnetlink::LinkVeth::new(name, peer).up().build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| format!("creating veth {name}"))
    }

    /// Deletes a link by name; `false` if it did not exist.
    pub async fn delete(&self, name: &str) -> Result<bool> {
        let Some(d) = self.link(name).await? else {
            return Ok(false);
        };
        self.handle
            .link()
            .del(d.facts.ifindex)
            .execute()
            .await
            .with_context(|| format!("deleting link {name}"))?;
        Ok(true)
    }
}
