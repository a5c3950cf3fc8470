//! Desired state of one host's dataplane, and its file form (the etcd-less
//! mode: `netfab agent --state-file`).
//!
//! The file is JSON. Everything the dataplane needs that cannot be read from
//! the kernel is in it: the networks this host serves, the remote hosts'
//! subnets and how to reach them, and the local containers.
use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::addr::MacAddr;

pub const DEFAULT_VXLAN_PORT: u16 = 4789;
pub const DEFAULT_VXLAN_DEVICE: &str = "nf-vxlan";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// The host's underlay interface (its address is the tunnel source).
    pub underlay_interface: String,
    #[serde(default = "default_port")]
    pub vxlan_port: u16,
    #[serde(default = "default_device")]
    pub vxlan_device: String,
    /// Networks (VNIs) served on this host.
    pub networks: Vec<Network>,
    #[serde(default)]
    pub remotes: Vec<RemoteHostSubnet>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Source-NAT container traffic leaving the cluster to this host's address.
    #[serde(default)]
    pub masquerade: bool,
    /// Every network's CIDR: traffic to these is never NATed, and traffic
    /// between two of them is dropped on the stack-routed backends.
    #[serde(default)]
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// etcd endpoints: containers may never reach them.
    #[serde(default)]
    pub etcd_endpoints: Vec<std::net::SocketAddrV4>,
    /// Log every datapath drop (the counters always count).
    #[serde(default)]
    pub log_drops: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    /// This host's subnet in the network.
    pub subnet: Ipv4Net,
}

/// A remote host's subnet and where to send traffic for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteHostSubnet {
    pub subnet: Ipv4Net,
    pub vni: u32,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// Route without encapsulation: the peer shares this host's L2 segment.
    #[serde(default)]
    pub direct: bool,
}

/// A container attached on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub ip: Ipv4Addr,
    pub vni: u32,
    /// The host-side veth.
    pub host_ifname: String,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<crate::bandwidth::Bandwidth>,
}

fn default_port() -> u16 {
    DEFAULT_VXLAN_PORT
}
fn default_device() -> String {
    DEFAULT_VXLAN_DEVICE.into()
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading state file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("state is inconsistent: {0}")]
    Invalid(String),
}

/// Linux interface names are at most 15 bytes.
const IFNAMSIZ_MAX: usize = 15;
/// VXLAN network identifiers are 24 bits.
pub const VNI_MAX: u32 = (1 << 24) - 1;

impl DesiredState {
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Read {
            path: p.clone(),
            source,
        })?;
        let state: DesiredState =
            serde_json::from_str(&text).map_err(|source| StateError::Parse { path: p, source })?;
        state.validate()?;
        Ok(state)
    }

    /// Checks everything that would otherwise surface as a confusing kernel
    /// error or, worse, as silently wrong routing.
    pub fn validate(&self) -> Result<(), StateError> {
        let bad = |m: String| Err(StateError::Invalid(m));
        check_ifname("underlay_interface", &self.underlay_interface)?;
        check_ifname("vxlan_device", &self.vxlan_device)?;
        if self.vxlan_port == 0 {
            return bad("vxlan_port must not be 0".into());
        }
        let mut vnis = BTreeSet::new();
        for n in &self.networks {
            if n.vni == 0 || n.vni > VNI_MAX {
                return bad(format!(
                    "network {}: VNI {} is outside 1..={VNI_MAX}",
                    n.name, n.vni
                ));
            }
            if !vnis.insert(n.vni) {
                return bad(format!("VNI {} is used by two networks", n.vni));
            }
        }
        let mut subnets: Vec<Ipv4Net> = self.networks.iter().map(|n| n.subnet).collect();
        for r in &self.remotes {
            if !vnis.contains(&r.vni) {
                return bad(format!(
                    "remote subnet {} names unknown VNI {}",
                    r.subnet, r.vni
                ));
            }
            subnets.push(r.subnet);
        }
        // CIDR blocks nest or are apart: sorted by start, each block can
        // only overlap the one reaching furthest before it (a pairwise
        // check costs 50 million comparisons at 10,000 peers).
        subnets.sort_by_key(|n| (n.network(), n.prefix_len()));
        let mut reach: Option<Ipv4Net> = None;
        for b in subnets {
            if let Some(a) = reach {
                if a.contains(&b.network()) {
                    return bad(format!("subnets {a} and {b} overlap"));
                }
            }
            if reach.is_none_or(|a| b.broadcast() > a.broadcast()) {
                reach = Some(b);
            }
        }
        let mut ips = BTreeSet::new();
        for e in &self.endpoints {
            check_ifname("endpoint host_ifname", &e.host_ifname)?;
            let Some(net) = self.networks.iter().find(|n| n.vni == e.vni) else {
                return bad(format!("endpoint {} names unknown VNI {}", e.ip, e.vni));
            };
            if !net.subnet.contains(&e.ip) {
                return bad(format!(
                    "endpoint {} is outside its network's subnet {}",
                    e.ip, net.subnet
                ));
            }
            if !ips.insert(e.ip) {
                return bad(format!("endpoint IP {} appears twice", e.ip));
            }
        }
        Ok(())
    }
}

fn check_ifname(what: &str, name: &str) -> Result<(), StateError> {
    if name.is_empty() || name.len() > IFNAMSIZ_MAX || name.contains(['/', ' ', '\0']) {
        return Err(StateError::Invalid(format!(
            "{what} `{name}` is not a valid interface name (1-15 bytes, no '/' or spaces)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DesiredState {
        serde_json::from_str(
            r#"{
              "underlay_interface": "eth0",
              "networks": [{"name": "default", "vni": 1, "subnet": "10.244.1.0/24"}],
              "remotes": [{"subnet": "10.244.2.0/24", "vni": 1, "underlay_ip": "100.64.0.2",
                           "vtep_mac": "0e:6e:64:40:00:02"}],
              "endpoints": [{"ip": "10.244.1.2", "vni": 1, "host_ifname": "nfc1",
                             "mac": "0a:6e:0a:f4:01:02"}]
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn sample_is_valid_with_defaults() {
        let s = sample();
        s.validate().unwrap();
        assert_eq!(s.vxlan_port, 4789);
        assert_eq!(s.vxlan_device, "nf-vxlan");
    }

    #[test]
    fn rejects_inconsistent_state() {
        type Mutation = Box<dyn Fn(&mut DesiredState)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "overlap",
                Box::new(|s| s.remotes[0].subnet = "10.244.1.128/25".parse().unwrap()),
            ),
            ("unknown VNI", Box::new(|s| s.remotes[0].vni = 7)),
            ("VNI", Box::new(|s| s.networks[0].vni = 1 << 24)),
            (
                "outside",
                Box::new(|s| s.endpoints[0].ip = "10.244.9.9".parse().unwrap()),
            ),
            (
                "twice",
                Box::new(|s| {
                    let e = s.endpoints[0].clone();
                    s.endpoints.push(e)
                }),
            ),
            (
                "interface name",
                Box::new(|s| s.endpoints[0].host_ifname = "x".repeat(16)),
            ),
            ("vxlan_port", Box::new(|s| s.vxlan_port = 0)),
        ];
        for (needle, mutate) in cases {
            let mut s = sample();
            mutate(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "expected `{needle}` in `{err}`");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_parse_errors() {
        assert!(serde_json::from_str::<DesiredState>(
            r#"{"underlay_interface":"eth0","networks":[],"bogus":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<DesiredState>(
            r#"{"underlay_interface":"eth0","networks":[{"name":"a","vni":1,"subnet":"10.0.0.0/33"}]}"#
        )
        .is_err());
    }
}
