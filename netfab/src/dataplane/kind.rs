//! The dataplane kinds, spelled once: what a host runs (`DataplaneKind`),
//! what an operator asks for (`Choice`, which adds `auto`), and what each
//! peer's packets take (`PathKind`). Used by clap, serde, status and the lab.
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::netlink::VXLAN_OVERHEAD;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DataplaneKind {
    Ebpf,
    Vxlan,
    HostGw,
}

impl DataplaneKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DataplaneKind::Ebpf => "ebpf",
            DataplaneKind::Vxlan => "vxlan",
            DataplaneKind::HostGw => "host-gw",
        }
    }

    /// Bytes the backend may add to a container's packet on the underlay:
    /// containers get the underlay MTU minus this.
    pub const fn encap_overhead(self) -> u32 {
        match self {
            DataplaneKind::Ebpf | DataplaneKind::Vxlan => VXLAN_OVERHEAD,
            DataplaneKind::HostGw => 0,
        }
    }
}

impl fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--dataplane` of an agent and the preference a network config records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Choice {
    /// eBPF where it really loads and attaches, else kernel VXLAN.
    #[default]
    Auto,
    Ebpf,
    Vxlan,
    HostGw,
}

impl Choice {
    /// The kind asked for, or `None` for `auto`.
    pub const fn kind(self) -> Option<DataplaneKind> {
        match self {
            Choice::Auto => None,
            Choice::Ebpf => Some(DataplaneKind::Ebpf),
            Choice::Vxlan => Some(DataplaneKind::Vxlan),
            Choice::HostGw => Some(DataplaneKind::HostGw),
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().map_or("auto", DataplaneKind::as_str))
    }
}

/// How the eBPF dataplane puts VXLAN headers on frames to remote hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum VxlanEncap {
    /// Built in the datapath and sent out of the underlay interface,
    /// bypassing the VXLAN device; GSO super-packets stay whole. Only frames
    /// the kernel will not grow (already encapsulated) take the device.
    #[default]
    Native,
    /// A tunnel key, and the kernel's collect-metadata VXLAN device.
    Device,
}

impl VxlanEncap {
    pub const fn as_str(self) -> &'static str {
        match self {
            VxlanEncap::Native => "native",
            VxlanEncap::Device => "device",
        }
    }
}

/// How packets for one peer's subnet leave this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Unencapsulated to the peer's underlay address (same L2 segment).
    Direct,
    /// VXLAN to the peer's underlay address.
    Vxlan,
    /// A static route via the peer's underlay address.
    HostGw,
    /// This backend cannot reach the peer.
    Refused,
}

impl PathKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Vxlan => "vxlan",
            PathKind::HostGw => "host-gw",
            PathKind::Refused => "refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_everywhere() {
        for (c, s) in [
            (Choice::Auto, "auto"),
            (Choice::Ebpf, "ebpf"),
            (Choice::Vxlan, "vxlan"),
            (Choice::HostGw, "host-gw"),
        ] {
            assert_eq!(c.to_string(), s);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{s}\""));
            assert_eq!(<Choice as clap::ValueEnum>::from_str(s, false).unwrap(), c);
            if let Some(k) = c.kind() {
                assert_eq!(k.to_string(), s);
                assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{s}\""));
            }
        }
        assert_eq!(DataplaneKind::HostGw.encap_overhead(), 0);
        assert_eq!(DataplaneKind::Ebpf.encap_overhead(), VXLAN_OVERHEAD);
    }
}
