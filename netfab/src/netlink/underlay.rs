//! Which interface is the underlay when none is named: the one holding the
//! node's IP (Kubernetes passes it as `NODE_IP` from `status.hostIP`), else
//! the one the default route leaves by.
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::route::RouteAttribute;
use rtnetlink::RouteMessageBuilder;

use super::Netlink;

impl Netlink {
    pub async fn detect_underlay(&self, node_ip: Option<Ipv4Addr>) -> Result<String> {
        let links = self.links().await?;
        if let Some(ip) = node_ip {
            for (name, l) in &links {
                if self.ipv4_addrs(l.facts.ifindex).await?.contains(&ip) {
                    return Ok(name.clone());
                }
            }
            bail!("no interface holds the node IP {ip}: set --underlay-interface");
        }
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = s.try_next().await.context("listing routes")? {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if let Some((name, _)) = links.iter().find(|(_, l)| Some(l.facts.ifindex) == oif) {
                return Ok(name.clone());
            }
        }
        bail!("no default route to find the underlay by: set --underlay-interface or NODE_IP")
    }
}
