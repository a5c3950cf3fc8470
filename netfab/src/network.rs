//! Cluster networks: what `netfab network create` stores in etcd, and the
//! checks that run before anything is written.
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::state::{DEFAULT_VXLAN_PORT, VNI_MAX};

/// Which dataplane a network prefers; `auto` lets each host decide.
pub use crate::dataplane::kind::Choice as DataplanePref;

/// Read from etcd, where newer agents and CLIs may have added fields:
/// unknown fields are ignored (docs/control-plane.md, "Compatibility").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub name: String,
    /// The whole network, from which each host leases one subnet.
    pub cidr: Ipv4Net,
    /// Prefix length of each host's subnet.
    pub subnet_len: u8,
    pub vni: u32,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub dataplane: DataplanePref,
    /// Route without encapsulation between hosts on one L2 segment.
    #[serde(default = "yes")]
    pub direct_routing: bool,
    /// Set by a writer whose record older agents must not half-apply:
    /// agents older than this refuse the network (`compat::too_new`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agent_version: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    #[error("network name `{0}` must be 1-32 characters of lowercase letters, digits and '-'")]
    BadName(String),
    #[error("network {name}: CIDR {cidr} is not a network address (did you mean {}?)", cidr.trunc())]
    NotNetworkAddress { name: String, cidr: Ipv4Net },
    #[error("network {name}: subnet length /{len} must be longer than the CIDR's /{cidr_len} and at most /30")]
    BadSubnetLen { name: String, len: u8, cidr_len: u8 },
    #[error("network {name}: VNI {vni} is outside 1..={VNI_MAX}")]
    BadVni { name: String, vni: u32 },
    #[error("network {name}: UDP port must not be 0")]
    BadPort { name: String },
    #[error("a network named {0} already exists")]
    DuplicateName(String),
    #[error("network {name}: VNI {vni} is already used by network {other}")]
    DuplicateVni {
        name: String,
        vni: u32,
        other: String,
    },
    #[error("network {name}: CIDR {cidr} overlaps network {other} ({other_cidr})")]
    Overlap {
        name: String,
        cidr: Ipv4Net,
        other: String,
        other_cidr: Ipv4Net,
    },
}

/// A network name: 1-32 lowercase letters, digits and '-' (safe as a key
/// segment and a directory name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl NetworkConfig {
    /// Checks the network on its own.
    pub fn validate(&self) -> Result<(), NetworkError> {
        let name = self.name.clone();
        if !valid_name(&self.name) {
            return Err(NetworkError::BadName(name));
        }
        if self.cidr.trunc() != self.cidr {
            return Err(NetworkError::NotNetworkAddress {
                name,
                cidr: self.cidr,
            });
        }
        if self.subnet_len <= self.cidr.prefix_len() || self.subnet_len > 30 {
            return Err(NetworkError::BadSubnetLen {
                name,
                len: self.subnet_len,
                cidr_len: self.cidr.prefix_len(),
            });
        }
        if self.vni == 0 || self.vni > VNI_MAX {
            return Err(NetworkError::BadVni {
                name,
                vni: self.vni,
            });
        }
        if self.port == 0 {
            return Err(NetworkError::BadPort { name });
        }
        Ok(())
    }

    /// Checks the network against the ones that already exist.
    pub fn validate_against(&self, existing: &[NetworkConfig]) -> Result<(), NetworkError> {
        self.validate()?;
        for o in existing {
            if o.name == self.name {
                return Err(NetworkError::DuplicateName(self.name.clone()));
            }
            if o.vni == self.vni {
                return Err(NetworkError::DuplicateVni {
                    name: self.name.clone(),
                    vni: self.vni,
                    other: o.name.clone(),
                });
            }
            if o.cidr.contains(&self.cidr) || self.cidr.contains(&o.cidr) {
                return Err(NetworkError::Overlap {
                    name: self.name.clone(),
                    cidr: self.cidr,
                    other: o.name.clone(),
                    other_cidr: o.cidr,
                });
            }
        }
        Ok(())
    }

    /// How many host subnets the network holds.
    pub fn capacity(&self) -> u64 {
        1u64 << (self.subnet_len - self.cidr.prefix_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, cidr: &str, len: u8, vni: u32) -> NetworkConfig {
        NetworkConfig {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            subnet_len: len,
            vni,
            port: 4789,
            dataplane: DataplanePref::Auto,
            direct_routing: true,
            min_agent_version: None,
        }
    }

    #[test]
    fn accepts_a_sane_network() {
        let n = net("default", "10.244.0.0/16", 24, 1);
        n.validate_against(&[net("other", "10.245.0.0/16", 24, 2)])
            .unwrap();
        assert_eq!(n.capacity(), 256);
    }

    #[test]
    fn rejects_each_kind_of_bad_network() {
        let existing = [net("a", "10.244.0.0/16", 24, 1)];
        let cases = [
            (net("Bad_Name", "10.1.0.0/16", 24, 9), "must be 1-32"),
            (net("b", "10.1.0.1/16", 24, 9), "not a network address"),
            (net("b", "10.1.0.0/16", 16, 9), "subnet length /16"),
            (net("b", "10.1.0.0/16", 31, 9), "subnet length /31"),
            (net("b", "10.1.0.0/16", 24, 0), "VNI 0"),
            (net("b", "10.1.0.0/16", 24, 1 << 24), "VNI 16777216"),
            (net("a", "10.1.0.0/16", 24, 9), "already exists"),
            (net("b", "10.1.0.0/16", 24, 1), "already used by network a"),
            (net("b", "10.244.128.0/17", 24, 9), "overlaps network a"),
            (net("b", "10.0.0.0/8", 24, 9), "overlaps network a"),
        ];
        for (n, needle) in cases {
            let e = n.validate_against(&existing).unwrap_err().to_string();
            assert!(e.contains(needle), "`{needle}` not in `{e}`");
        }
    }

    #[test]
    fn config_json_round_trips_and_rejects_garbage() {
        let n = net("default", "10.244.0.0/16", 24, 1);
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<NetworkConfig>(&j).unwrap(), n);
        assert!(serde_json::from_str::<NetworkConfig>(
            r#"{"name":"x","cidr":"10.0.0.0/33","subnet_len":24,"vni":1}"#
        )
        .is_err());
    }
}
