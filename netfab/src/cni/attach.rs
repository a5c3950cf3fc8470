//! Wiring a container: a veth pair with the host end in the host namespace
//! (MAC ee:ee:ee:ee:ee:ee, like Calico, so every container's gateway has the
//! same MAC) and the other end created in the container's namespace under its
//! final name, addressed without an on-link prefix route (everything goes through the
//! gateway, i.e. through the datapath), with a default route and a permanent
//! neighbour entry for the gateway.
use std::{fs::File, net::Ipv4Addr, os::fd::AsRawFd};

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    route::RouteScope,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{
    addr::{MacAddr, GATEWAY_MAC},
    netlink::Netlink,
};

/// Host-side veth name: `nf` + 11 hex digits of a hash of (container, ifname).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across runs and versions, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("nf{:011x}", h & 0xfff_ffff_ffff)
}

pub struct Wiring<'a> {
    pub netns: &'a str,
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// The container interface's MAC.
    pub mac: MacAddr,
    /// Routed through the gateway: 0.0.0.0/0 for the attachment that owns
    /// the default route, the network's CIDR for the others.
    pub route: Ipv4Net,
    /// `flowSteering` of the network's config: `steer_by_flow`.
    pub flow_steering: bool,
}

/// Runs `f` with a netlink handle inside the namespace at `path`, on a
/// thread of its own (a namespace belongs to a thread).
pub fn in_netns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce(Netlink) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>>>>
        + Send
        + 'static,
) -> Result<T> {
    let path = path.to_string();
    std::thread::spawn(move || -> Result<T> {
        let ns = File::open(&path).with_context(|| format!("opening network namespace {path}"))?;
        // SAFETY: setns on a valid namespace fd; only this thread moves.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("entering {path}: {}", std::io::Error::last_os_error());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move { f(Netlink::connect()?).await })
    })
    .join()
    .map_err(|_| anyhow!("namespace worker panicked"))?
}

/// Creates the veth pair and configures both ends. The caller removes the
/// host end (and with it the pair) if this fails half-way.
///
/// The container end is created directly in the container's namespace,
/// named, addressed (MAC) and sized there: moving a device between
/// namespaces waits for an RCU grace period (about 13 ms here, most of an
/// ADD's own time), creating it in place does not.
pub async fn wire(host: &Netlink, w: &Wiring<'_>) -> Result<()> {
    let mac = w.mac;
    let ns = File::open(w.netns).with_context(|| format!("opening {}", w.netns))?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(w.ifname.to_string())
        .address(mac.0.to_vec())
        .mtu(w.mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(w.host_ifname.to_string())
        .address(GATEWAY_MAC.0.to_vec())
        .mtu(w.mtu)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.handle
        .link()
        .add(pair)
        .execute()
        .await
        .with_context(|| {
            format!(
                "creating veth {} with its peer {} in {}",
                w.host_ifname, w.ifname, w.netns
            )
        })?;
    drop(ns);
    refuse_ipv6(w.host_ifname)?;
    if w.flow_steering {
        steer_by_flow(w.host_ifname)?;
    }

    let (ifname, address, gateway, route) = (w.ifname.to_string(), w.address, w.gateway, w.route);
    in_netns(w.netns, move |nl| {
        Box::pin(async move {
            let links = nl.links().await?;
            let idx = links
                .get(&ifname)
                .map(|l| l.facts.ifindex)
                .context("veth not in the container")?;
            if let Some(lo) = links.get("lo") {
                nl.handle
                    .link()
                    .set(LinkUnspec::new_with_index(lo.facts.ifindex).up().build())
                    .execute()
                    .await?;
            }
            nl.handle
                .link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .with_context(|| format!("bringing {ifname} up"))?;
            let mut add = nl.handle.address().add(
                idx,
                std::net::IpAddr::V4(address.addr()),
                address.prefix_len(),
            );
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
            add.execute()
                .await
                .context("adding the container address")?;
            let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(gateway, 32)
                .output_interface(idx)
                .scope(RouteScope::Link)
                .build();
            nl.handle
                .route()
                .add(gw_route)
                .execute()
                .await
                .context("adding the gateway route")?;
            let via = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(route.addr(), route.prefix_len())
                .gateway(gateway)
                .output_interface(idx)
                .build();
            nl.handle
                .route()
                .add(via)
                .execute()
                .await
                .with_context(|| format!("adding the route to {route} via {gateway}"))?;
            nl.neigh_replace(&crate::netlink::neigh::Neigh {
                ifindex: idx,
                ip: gateway,
                mac: GATEWAY_MAC,
            })
            .await?;
            Ok(())
        })
    })
}

/// Turns IPv6 off on the host end: the stack then discards every IPv6
/// packet the container sends (counted as `Ip6InDiscards` of the veth), on
/// every backend, and the veth holds no link-local address a container
/// could reach host services through. netfab does not carry IPv6 yet; the
/// eBPF datapath drops it before the stack (`not_ipv4`). A host without
/// IPv6 has nothing to turn off.
pub fn refuse_ipv6(host_ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{host_ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && !std::path::Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("turning IPv6 off on {host_ifname} ({path})")),
    }
}

/// Steers the container's packets by flow (RPS over every online CPU) as
/// they arrive on the host end. A veth queues each packet on the backlog of
/// the CPU that sent it, and a TCP sender transmits from two (its own
/// thread, and the softirq where ACKs arrive): without steering, one flow
/// crosses two backlogs and reaches the other end reordered, costing
/// spurious retransmits. Hashing each flow to one CPU keeps it in order, as
/// a NIC's queue does. `/sys` must be this namespace's (as it is for a
/// plugin run by the runtime in the host's namespace).
pub fn steer_by_flow(host_ifname: &str) -> Result<()> {
    let mask = all_cpus_mask()?;
    let path = format!("/sys/class/net/{host_ifname}/queues/rx-0/rps_cpus");
    std::fs::write(&path, &mask)
        .with_context(|| format!("steering {host_ifname} by flow ({path} = {mask})"))
}

/// Every online CPU, as an RPS mask.
pub fn all_cpus_mask() -> Result<String> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .context("reading the online CPUs")?;
    Ok(rps_mask(&parse_cpu_list(online.trim())?))
}

/// `0-3,6`: the kernel's CPU list format.
pub fn parse_cpu_list(list: &str) -> Result<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (
            a.parse().with_context(|| format!("CPU list {list:?}"))?,
            b.parse().with_context(|| format!("CPU list {list:?}"))?,
        );
        if a > b || b >= 65_536 {
            anyhow::bail!("CPU list {list:?}: range {part}");
        }
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

/// A CPU bitmap as sysfs takes it: hex, in 32-bit groups separated by
/// commas, highest first (CPUs 0-39: `ff,ffffffff`).
pub fn rps_mask(cpus: &[u32]) -> String {
    let groups = cpus.iter().max().map_or(1, |m| *m as usize / 32 + 1);
    let mut words = vec![0u32; groups];
    for c in cpus {
        words[*c as usize / 32] |= 1 << (c % 32);
    }
    let mut out = format!("{:x}", words[groups - 1]);
    for w in words[..groups - 1].iter().rev() {
        out += &format!(",{w:08x}");
    }
    out
}

/// The gateways of the namespace's default routes other than through
/// `except` (the interface a retried ADD is about to replace): ADD checks
/// that the default route it would add is not another attachment's already.
pub fn default_gateways(netns: &str, except: &str) -> Result<Vec<Ipv4Addr>> {
    let except = except.to_string();
    in_netns(netns, move |nl| {
        Box::pin(async move {
            let skip = nl.link(&except).await?.map(|l| l.facts.ifindex);
            Ok(default_routes(&nl)
                .await?
                .into_iter()
                .filter(|(_, oif)| Some(*oif) != skip)
                .map(|(gw, _)| gw)
                .collect())
        })
    })
}

/// (gateway, output interface) of each IPv4 default route.
async fn default_routes(nl: &Netlink) -> Result<Vec<(Ipv4Addr, u32)>> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};
    let mut out = Vec::new();
    let mut s = nl
        .handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = s.try_next().await? {
        if r.header.destination_prefix_length != 0 {
            continue;
        }
        let (mut gw, mut oif) = (None, 0);
        for a in &r.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => oif = *i,
                _ => {}
            }
        }
        if let Some(g) = gw {
            out.push((g, oif));
        }
    }
    Ok(out)
}

/// What CHECK compares, of the container interface: its addresses, its MAC,
/// and the gateways of the namespace's default routes.
pub struct Inspected {
    pub nets: Vec<Ipv4Net>,
    pub mac: MacAddr,
    pub default_gateways: Vec<Ipv4Addr>,
}

pub fn inspect(netns: &str, ifname: &str) -> Result<Option<Inspected>> {
    let ifname = ifname.to_string();
    in_netns(netns, move |nl| {
        Box::pin(async move {
            let Some(link) = nl.link(&ifname).await? else {
                return Ok(None);
            };
            Ok(Some(Inspected {
                nets: nl.ipv4_nets(link.facts.ifindex).await?,
                mac: link.facts.mac,
                default_gateways: default_routes(&nl)
                    .await?
                    .into_iter()
                    .map(|r| r.0)
                    .collect(),
            }))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("nf"));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
    }

    #[test]
    fn cpu_lists_become_sysfs_bitmaps() {
        assert_eq!(parse_cpu_list("0-1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert_eq!(rps_mask(&[0, 1]), "3");
        assert_eq!(rps_mask(&[0]), "1");
        assert_eq!(rps_mask(&(0..40).collect::<Vec<_>>()), "ff,ffffffff");
        assert_eq!(rps_mask(&[32]), "1,00000000");
        assert_eq!(rps_mask(&[]), "0");
    }
}
