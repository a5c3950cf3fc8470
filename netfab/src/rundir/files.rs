//! The versioned files of the run directory, as the agent writes them and
//! the CNI plugin, `netfab status` and the lab read them.
use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::v1;

/// What `leases.json` holds: the subnets this host leased, and the MTU its
/// containers must use.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct LeaseFile {
    #[serde(default = "v1")]
    pub version: u32,
    pub node: String,
    pub subnets: BTreeMap<String, Ipv4Net>,
    /// MTU for containers on this host.
    pub mtu: u32,
    /// Each network's whole CIDR: an attachment that does not own the
    /// container's default route reaches its network through a route to it.
    #[serde(default)]
    pub cidrs: BTreeMap<String, Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default = "v1")]
    pub version: u32,
    pub node: String,
    pub dataplane: String,
    pub reason: String,
    pub underlay: Option<Ipv4Net>,
    pub container_mtu: u32,
    pub networks: Vec<NetworkStatus>,
    /// Local containers and remote subnets in the last applied state.
    pub endpoints: usize,
    pub remotes: usize,
    pub refused: Vec<String>,
    pub skipped: Vec<String>,
    /// Seconds since the epoch of the last apply.
    pub applied_at: u64,
    /// Whether the agent has a live etcd session.
    #[serde(default)]
    pub etcd_connected: bool,
    /// Local containers the dataplane serves (CNI ADD waits for its own).
    #[serde(default)]
    pub endpoint_ips: Vec<std::net::Ipv4Addr>,
    /// The same, with the ifindex of the host veth each was programmed for:
    /// ADD waits for its own veth, not for an address a previous container
    /// held.
    #[serde(default)]
    pub programmed: Vec<(std::net::Ipv4Addr, u32)>,
    /// Store entries refused, each with its key and why.
    #[serde(default)]
    pub rejected: Vec<Rejected>,
    /// Peers still routed although their lease is gone (within the grace).
    #[serde(default)]
    pub retained: Vec<String>,
    /// Applies since the agent started (soak tests and operators watch it move).
    #[serde(default)]
    pub applies: u64,
    /// How each limited container's bandwidth limits are enforced.
    #[serde(default)]
    pub bandwidth: Vec<crate::dataplane::BandwidthEnforcement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: String,
    pub subnet: Ipv4Net,
    pub underlay_ip: std::net::Ipv4Addr,
    /// `direct`, `vxlan` or `host-gw`.
    pub path: String,
    pub reason: String,
}

/// What an agent that has not reported yet is waiting for (`waiting.json`,
/// removed once `status.json` is written): the CNI plugin says this rather
/// than "not running" while the agent runs but cannot vouch for its subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    #[serde(default = "v1")]
    pub version: u32,
    pub node: String,
    pub reason: String,
    /// Seconds since the epoch when the agent started waiting for this.
    pub since: u64,
}
