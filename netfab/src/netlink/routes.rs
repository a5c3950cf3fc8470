//! Routes netfab owns, marked with their own routing protocol number so they
//! can be listed and reconciled without touching anyone else's.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::RouteMessageBuilder;

use super::Netlink;

/// `ip route ... proto 212` marks netfab's routes.
pub const NETFAB_PROTO: u8 = 212;

/// A route as netfab wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
    /// The gateway is reachable on `oif` even without a covering prefix.
    pub onlink: bool,
    /// Source address for the host's own packets (the local gateway of
    /// the same network, so the peer accepts them and replies come back).
    pub src: Option<Ipv4Addr>,
}

fn parse(msg: &RouteMessage) -> Option<HostRoute> {
    let mut dst = None;
    let mut gateway = None;
    let mut oif = 0;
    let mut src = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => src = Some(*ip),
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(i) => oif = *i,
            _ => {}
        }
    }
    let dst = Ipv4Net::new(dst?, msg.header.destination_prefix_length).ok()?;
    let onlink = msg
        .header
        .flags
        .contains(netlink_packet_route::route::RouteFlags::Onlink);
    Some(HostRoute {
        dst,
        gateway,
        oif,
        onlink,
        src,
    })
}

impl Netlink {
    /// IPv4 routes in the main table that carry netfab's protocol number.
    pub async fn our_routes(&self) -> Result<Vec<HostRoute>> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(req).execute();
        let mut out = Vec::new();
        while let Some(msg) = s.try_next().await.context("listing routes")? {
            if msg.header.protocol == RouteProtocol::Other(NETFAB_PROTO) {
                if let Some(r) = parse(&msg) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    fn build(r: &HostRoute) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix_len())
            .output_interface(r.oif)
            .protocol(RouteProtocol::Other(NETFAB_PROTO));
        match r.gateway {
            Some(gw) => b = b.gateway(gw),
            None => b = b.scope(RouteScope::Link),
        }
        if r.onlink {
            b = b.onlink();
        }
        if let Some(src) = r.src {
            b = b.pref_source(src);
        }
        b.build()
    }

    pub async fn route_replace(&self, r: &HostRoute) -> Result<()> {
        self.handle
            .route()
            .add(Self::build(r))
            .replace()
            .execute()
            .await
            .with_context(|| format!("installing route {r:?}"))
    }

    /// Removes a route; one already gone (its device was deleted, which
    /// takes the device's routes with it) is not an error.
    pub async fn route_del(&self, r: &HostRoute) -> Result<()> {
        match self.handle.route().del(Self::build(r)).execute().await {
            Err(rtnetlink::Error::NetlinkError(e))
                if [-libc::ESRCH, -libc::ENODEV].contains(&e.raw_code()) =>
            {
                Ok(())
            }
            r2 => r2.with_context(|| format!("removing route {r:?}")),
        }
    }
}
