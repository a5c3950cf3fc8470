//! Comparison anchors for the benchmark, built beside the netfab containers
//! in the same host namespaces: one extra container per host reached through
//! a plain kernel VXLAN device set up the way flannel's vxlan backend does it
//! (route via the remote VTEP address, permanent neighbour, FDB entry, no
//! learning), on its own VNI, port and subnet so it never touches netfab's.
use std::net::Ipv4Addr;

use anyhow::Result;

use super::{sh::ip_in, topology::Topology};
use crate::addr::MacAddr;

const VNI: &str = "100";
const PORT: &str = "4790";
const DEV: &str = "kvx";

pub fn ns(topo: &Topology, h: u32) -> String {
    format!("{}-h{h}-k", topo.name)
}

pub fn ip(h: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, h as u8, 2)
}

fn vtep_ip(h: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, h as u8, 0)
}

fn vtep_mac(topo: &Topology, h: u32) -> MacAddr {
    let o = topo.host_ip(h).octets();
    MacAddr([0x0e, 0x6b, o[0], o[1], o[2], o[3]])
}

/// Builds the kernel-VXLAN anchor on every host.
pub fn build(topo: &Topology) -> Result<()> {
    for h in topo.all_hosts() {
        let host = topo.host_ns(h);
        let k = ns(topo, h);
        let local = topo.host_ip(h).to_string();
        super::sh::ip(&["netns", "add", &k])?;
        ip_in(&k, &["link", "set", "lo", "up"])?;
        super::sh::in_ns(&host, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        ip_in(
            &host,
            &[
                "link",
                "add",
                DEV,
                "type",
                "vxlan",
                "id",
                VNI,
                "local",
                &local,
                "dev",
                "eth0",
                "dstport",
                PORT,
                "nolearning",
            ],
        )?;
        ip_in(
            &host,
            &[
                "link",
                "set",
                DEV,
                "address",
                &vtep_mac(topo, h).to_string(),
                "mtu",
                "1450",
                "up",
            ],
        )?;
        ip_in(
            &host,
            &["addr", "add", &format!("{}/32", vtep_ip(h)), "dev", DEV],
        )?;
        ip_in(
            &host,
            &[
                "link", "add", "kvh", "type", "veth", "peer", "name", "eth0", "netns", &k,
            ],
        )?;
        ip_in(
            &host,
            &["addr", "add", &format!("10.250.{h}.1/24"), "dev", "kvh"],
        )?;
        ip_in(&host, &["link", "set", "kvh", "mtu", "1450", "up"])?;
        ip_in(
            &k,
            &["addr", "add", &format!("{}/24", ip(h)), "dev", "eth0"],
        )?;
        ip_in(&k, &["link", "set", "eth0", "mtu", "1450", "up"])?;
        ip_in(
            &k,
            &["route", "add", "default", "via", &format!("10.250.{h}.1")],
        )?;
        for o in topo.all_hosts().filter(|&o| o != h) {
            let mac = vtep_mac(topo, o).to_string();
            let vip = vtep_ip(o).to_string();
            ip_in(
                &host,
                &[
                    "neigh",
                    "add",
                    &vip,
                    "lladdr",
                    &mac,
                    "dev",
                    DEV,
                    "nud",
                    "permanent",
                ],
            )?;
            ip_in(
                &host,
                &[
                    "route",
                    "add",
                    &format!("10.250.{o}.0/24"),
                    "via",
                    &vip,
                    "dev",
                    DEV,
                    "onlink",
                ],
            )?;
            super::sh::run(
                "bridge",
                &[
                    "-n",
                    &host,
                    "fdb",
                    "append",
                    &mac,
                    "dev",
                    DEV,
                    "dst",
                    &topo.host_ip(o).to_string(),
                ],
            )?;
        }
    }
    Ok(())
}
