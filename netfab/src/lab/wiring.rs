//! Building the lab's namespaces and links with iproute2.
use anyhow::Result;

use super::{
    sh::{self, ip_in},
    topology::{self, Topology},
};
use crate::addr::MacAddr;

/// A namespace on the underlay bridge with one address.
fn attach_to_underlay(topo: &Topology, ns: &str, port: &str, cidr: &str) -> Result<()> {
    let ul = topo.underlay_ns();
    sh::ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    ip_in(
        &ul,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip_in(&ul, &["link", "set", port, "master", "br0", "up"])?;
    ip_in(ns, &["addr", "add", cidr, "dev", "eth0"])?;
    ip_in(
        ns,
        &[
            "link",
            "set",
            "eth0",
            "mtu",
            &topology::UNDERLAY_MTU.to_string(),
            "up",
        ],
    )?;
    Ok(())
}

pub fn underlay(topo: &Topology) -> Result<()> {
    let ul = topo.underlay_ns();
    sh::ip(&["netns", "add", &ul])?;
    ip_in(&ul, &["link", "set", "lo", "up"])?;
    ip_in(&ul, &["link", "add", "br0", "type", "bridge"])?;
    ip_in(&ul, &["link", "set", "br0", "up"])?;
    Ok(())
}

pub fn etcd_host(topo: &Topology) -> Result<()> {
    attach_to_underlay(
        topo,
        &topo.etcd_ns(),
        "etcd",
        &format!("{}/24", topology::ETCD_IP),
    )
}

pub fn host(topo: &Topology, h: u32) -> Result<()> {
    attach_to_underlay(
        topo,
        &topo.host_ns(h),
        &format!("h{h}"),
        &format!("{}/24", topo.host_ip(h)),
    )
}

/// A container namespace with a veth to its host. No on-link prefix route:
/// every destination, same subnet included, goes through the gateway, i.e.
/// through the eBPF program on the host veth.
pub fn container(topo: &Topology, h: u32, c: u32) -> Result<()> {
    let host = topo.host_ns(h);
    let ns = topo.container_ns(h, c);
    let veth = topo.host_veth(c);
    let n = topo.container_network(c);
    let ip = topo.container_ip(h, c);
    let subnet = topo.subnet(h, n).expect("subnet known before wiring");
    let gw = topo.gateway(h, n).to_string();
    let mtu = topology::CONTAINER_MTU.to_string();
    let gw_mac = topology::GATEWAY_MAC.to_string();
    let mac = MacAddr::container_for(ip).to_string();
    sh::ip(&["netns", "add", &ns])?;
    ip_in(&ns, &["link", "set", "lo", "up"])?;
    ip_in(
        &host,
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    ip_in(
        &host,
        &["link", "set", &veth, "address", &gw_mac, "mtu", &mtu, "up"],
    )?;
    ip_in(
        &ns,
        &["link", "set", "eth0", "address", &mac, "mtu", &mtu, "up"],
    )?;
    let cidr = format!("{ip}/{}", subnet.prefix_len());
    ip_in(&ns, &["addr", "add", &cidr, "dev", "eth0", "noprefixroute"])?;
    ip_in(&ns, &["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    ip_in(&ns, &["route", "add", "default", "via", &gw, "dev", "eth0"])?;
    ip_in(
        &ns,
        &[
            "neigh",
            "add",
            &gw,
            "lladdr",
            &gw_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    Ok(())
}
