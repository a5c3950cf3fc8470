//! The lab's names and addresses, as pure functions of (lab name, host,
//! container). Hosts and containers count from 1.
//!
//!   underlay   100.64.0.0/24 on bridge br0 in namespace <name>-ul
//!   host h     namespace <name>-h<h>, eth0 = 100.64.0.<h>, subnet 10.244.<h>.0/24
//!   container  namespace <name>-h<h>-c<c>, eth0 = 10.244.<h>.<c+1>, gateway .1
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    addr::MacAddr,
    dataplane::ebpf::DEFAULT_PIN_ROOT,
    state::{
        DesiredState, EndpointSpec, Network, RemoteHostSubnet, DEFAULT_VXLAN_DEVICE,
        DEFAULT_VXLAN_PORT,
    },
};

pub const VNI: u32 = 1;
/// Every host-side veth gets this MAC (as Calico does): containers then need
/// one static neighbour entry for their gateway, whatever host they are on.
pub const GATEWAY_MAC: MacAddr = MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
pub const UNDERLAY_MTU: u32 = 1500;
pub const CONTAINER_MTU: u32 = UNDERLAY_MTU - crate::netlink::VXLAN_OVERHEAD;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    pub hosts: u32,
    pub containers: u32,
}

impl Topology {
    pub fn new(name: &str, hosts: u32, containers: u32) -> Result<Self> {
        if name.is_empty()
            || name.len() > 12
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("lab name `{name}` must be 1-12 characters of letters, digits and '-'");
        }
        if !(1..=250).contains(&hosts) || !(1..=250).contains(&containers) {
            bail!("hosts and containers per host must each be between 1 and 250");
        }
        Ok(Self {
            name: name.into(),
            hosts,
            containers,
        })
    }

    pub fn underlay_ns(&self) -> String {
        format!("{}-ul", self.name)
    }
    pub fn host_ns(&self, h: u32) -> String {
        format!("{}-h{h}", self.name)
    }
    pub fn container_ns(&self, h: u32, c: u32) -> String {
        format!("{}-h{h}-c{c}", self.name)
    }
    pub fn host_ip(&self, h: u32) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, 0, h as u8)
    }
    pub fn host_subnet(&self, h: u32) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, 244, h as u8, 0), 24).expect("24 is a valid prefix")
    }
    pub fn gateway(&self, h: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, h as u8, 1)
    }
    pub fn container_ip(&self, h: u32, c: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, h as u8, (c + 1) as u8)
    }
    pub fn host_veth(&self, c: u32) -> String {
        format!("nfc{c}")
    }
    pub fn pin_dir(&self, h: u32) -> PathBuf {
        PathBuf::from(DEFAULT_PIN_ROOT).join(self.host_ns(h))
    }
    pub fn all_hosts(&self) -> impl Iterator<Item = u32> {
        1..=self.hosts
    }
    pub fn all_containers(&self) -> Vec<(u32, u32)> {
        self.all_hosts()
            .flat_map(|h| (1..=self.containers).map(move |c| (h, c)))
            .collect()
    }

    /// The desired state of host `h`'s dataplane.
    pub fn state(&self, h: u32) -> DesiredState {
        DesiredState {
            underlay_interface: "eth0".into(),
            vxlan_port: DEFAULT_VXLAN_PORT,
            vxlan_device: DEFAULT_VXLAN_DEVICE.into(),
            networks: vec![Network {
                name: "default".into(),
                vni: VNI,
                subnet: self.host_subnet(h),
            }],
            remotes: self
                .all_hosts()
                .filter(|&o| o != h)
                .map(|o| RemoteHostSubnet {
                    subnet: self.host_subnet(o),
                    vni: VNI,
                    underlay_ip: self.host_ip(o),
                    vtep_mac: MacAddr::vtep_for(self.host_ip(o)),
                })
                .collect(),
            endpoints: (1..=self.containers)
                .map(|c| EndpointSpec {
                    ip: self.container_ip(h, c),
                    vni: VNI,
                    host_ifname: self.host_veth(c),
                    mac: MacAddr::container_for(self.container_ip(h, c)),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let t = Topology::new("lab", 3, 2).unwrap();
        assert_eq!(t.host_ns(2), "lab-h2");
        assert_eq!(t.container_ns(2, 1), "lab-h2-c1");
        assert_eq!(t.container_ip(3, 2).to_string(), "10.244.3.3");
        assert!(t.host_subnet(3).contains(&t.container_ip(3, 2)));
        assert_eq!(t.all_containers().len(), 6);
    }

    #[test]
    fn every_state_is_valid_and_sees_all_other_hosts() {
        let t = Topology::new("lab", 3, 2).unwrap();
        for h in t.all_hosts() {
            let s = t.state(h);
            s.validate().unwrap();
            assert_eq!(s.remotes.len(), 2);
            assert!(s.remotes.iter().all(|r| r.underlay_ip != t.host_ip(h)));
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Topology::new("bad name", 2, 2).is_err());
        assert!(Topology::new("much-too-long-name", 2, 2).is_err());
        assert!(Topology::new("ok", 0, 2).is_err());
        assert!(Topology::new("ok", 2, 251).is_err());
    }
}
