//! Building the lab's namespaces and links with iproute2.
use std::net::Ipv4Addr;

use anyhow::Result;

use crate::{
    sh::{self, ip_in},
    topology::{self, Topology},
};
use netfab::addr::MacAddr;

/// A namespace on segment `seg`'s bridge with one address and a default
/// route via the segment's router.
fn attach_to_underlay(topo: &Topology, ns: &str, port: &str, seg: u32, ip: Ipv4Addr) -> Result<()> {
    let ul = topo.underlay_ns();
    sh::ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    ip_in(
        &ul,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip_in(
        &ul,
        &["link", "set", port, "master", &topo.bridge(seg), "up"],
    )?;
    ip_in(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
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
    ip_in(
        ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &topo.router_ip(seg).to_string(),
        ],
    )?;
    Ok(())
}

/// The underlay namespace: one bridge per L2 segment, routing between them
/// (it is every segment's router), and the "outside world" address.
pub fn underlay(topo: &Topology) -> Result<()> {
    let ul = topo.underlay_ns();
    sh::ip(&["netns", "add", &ul])?;
    ip_in(&ul, &["link", "set", "lo", "up"])?;
    ip_in(
        &ul,
        &[
            "addr",
            "add",
            &format!("{}/32", topology::WAN_IP),
            "dev",
            "lo",
        ],
    )?;
    sh::in_ns(&ul, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    for seg in 1..=topo.segments.max(1) {
        let br = topo.bridge(seg);
        ip_in(&ul, &["link", "add", &br, "type", "bridge"])?;
        ip_in(&ul, &["link", "set", &br, "up"])?;
        ip_in(
            &ul,
            &[
                "addr",
                "add",
                &format!("{}/24", topo.router_ip(seg)),
                "dev",
                &br,
            ],
        )?;
    }
    Ok(())
}

pub fn etcd_host(topo: &Topology) -> Result<()> {
    for m in topo.etcd_members() {
        let veth = if m == 1 {
            "etcd".into()
        } else {
            format!("etcd{m}")
        };
        attach_to_underlay(topo, &topo.etcd_ns_of(m), &veth, 1, topo.etcd_ip_of(m))?;
    }
    if topo.etcd_proxy {
        attach_to_underlay(
            topo,
            &topo.etcd_proxy_ns(),
            "etcdp",
            1,
            crate::topology::ETCD_PROXY_IP,
        )?;
    }
    Ok(())
}

pub fn host(topo: &Topology, h: u32) -> Result<()> {
    attach_to_underlay(
        topo,
        &topo.host_ns(h),
        &format!("h{h}"),
        topo.segment(h),
        topo.host_ip(h),
    )
}

/// A container namespace with a veth to its host. No on-link prefix route:
/// every destination, same subnet included, goes through the gateway, i.e.
/// through the eBPF program on the host veth (or the host's routing).
pub fn container(topo: &Topology, h: u32, c: u32) -> Result<()> {
    let host = topo.host_ns(h);
    let ns = topo.container_ns(h, c);
    let veth = topo.host_veth(c);
    let n = topo.container_network(c);
    let ip = topo.container_ip(h, c);
    let subnet = topo.subnet(h, n).expect("subnet known before wiring");
    let gw = topo.gateway(h, n).to_string();
    let mtu = topo.container_mtu.to_string();
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
    // As netfab-cni does: no IPv6 from containers reaches the host stack.
    sh::in_ns(
        &host,
        "sh",
        &[
            "-c",
            &format!("echo 1 > /proc/sys/net/ipv6/conf/{veth}/disable_ipv6"),
        ],
    )?;
    if topo.flow_steering {
        // As netfab-cni's `flowSteering` does (`steer_by_flow`).
        let mask = netfab::cni::attach::all_cpus_mask()?;
        sh::in_ns(
            &host,
            "sh",
            &[
                "-c",
                &format!("echo {mask} > /sys/class/net/{veth}/queues/rx-0/rps_cpus"),
            ],
        )?;
    }
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
