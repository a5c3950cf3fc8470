//! Dataplane backends. Each takes a [`DesiredState`](crate::state::DesiredState)
//! and makes the kernel match it; `ebpf` is the TC datapath. The fallback
//! backends (kernel VXLAN, host-gw) implement the same trait.
pub mod cleanup;
pub mod ebpf;
pub mod host;
pub mod hostgw;
pub mod iptables;
pub mod kind;
pub mod qdisc;
pub mod select;
pub mod vxlan;

use crate::state::DesiredState;

/// What one `apply` changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub map_upserts: usize,
    pub map_removals: usize,
    pub attached: usize,
    /// Desired items that could not be programmed yet (for example a container
    /// veth that does not exist), each with what it is and why.
    pub skipped: Vec<Skip>,
    /// Desired items this backend refuses (for example a host-gw peer on
    /// another L2 segment), with the reason.
    pub refused: Vec<String>,
    /// Local containers that are programmed, with the ifindex of the host
    /// veth they were programmed for (a re-used address on a new veth is a
    /// new endpoint).
    pub programmed_endpoints: Vec<(std::net::Ipv4Addr, u32)>,
    /// Per remote subnet, the path its packets take and why.
    pub paths: Vec<PeerPath>,
    /// Per container with a bandwidth limit, how the kernel enforces it.
    pub bandwidth: Vec<BandwidthEnforcement>,
}

/// How a container's bandwidth limits are enforced, as the kernel does it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BandwidthEnforcement {
    pub ip: std::net::Ipv4Addr,
    /// False when the limits are not enforced at all (then ADD refuses the
    /// container where the network asks for enforced limits).
    pub enforced: bool,
    /// How, in words: paced, policed, or why not at all.
    pub how: String,
}

/// What a skipped item is, so callers (status, CNI ADD) need not parse text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipItem {
    /// A local container, by address.
    Endpoint(std::net::Ipv4Addr),
    /// A remote subnet.
    Remote(ipnet::Ipv4Net),
    /// A host route.
    Route(ipnet::Ipv4Net),
    /// A TC attachment, by interface.
    Attach(String),
}

/// A desired item not programmed yet, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub item: SkipItem,
    pub reason: String,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.item {
            SkipItem::Endpoint(ip) => write!(f, "endpoint {ip}: {}", self.reason),
            SkipItem::Remote(sn) => write!(f, "remote {sn}: {}", self.reason),
            SkipItem::Route(sn) => write!(f, "route {sn}: {}", self.reason),
            SkipItem::Attach(i) => write!(f, "attaching to {i}: {}", self.reason),
        }
    }
}

/// The path one remote subnet's packets take from this host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPath {
    pub subnet: ipnet::Ipv4Net,
    pub vni: u32,
    pub underlay_ip: std::net::Ipv4Addr,
    pub path: kind::PathKind,
    pub reason: String,
}

/// What a backend of `kind` does with each remote, given this host's
/// underlay address and prefix. Pure; every backend reports through it.
pub fn peer_paths(
    kind: kind::DataplaneKind,
    remotes: &[crate::state::RemoteHostSubnet],
    underlay: ipnet::Ipv4Net,
) -> Vec<PeerPath> {
    use kind::{DataplaneKind, PathKind};
    let seg = underlay.trunc();
    remotes
        .iter()
        .map(|r| {
            let same_l2 = seg.contains(&r.underlay_ip);
            let (path, reason) = match kind {
                DataplaneKind::HostGw if same_l2 => (
                    PathKind::HostGw,
                    format!(
                        "static route via {} on the same L2 segment {seg}",
                        r.underlay_ip
                    ),
                ),
                DataplaneKind::HostGw => (
                    PathKind::Refused,
                    format!(
                        "{} is not on this host's L2 segment {seg}; host-gw cannot reach it",
                        r.underlay_ip
                    ),
                ),
                _ if r.direct => (
                    PathKind::Direct,
                    format!("same L2 segment {seg}: routed without encapsulation"),
                ),
                _ if same_l2 => (
                    PathKind::Vxlan,
                    "direct routing is off for this network".to_string(),
                ),
                _ => (
                    PathKind::Vxlan,
                    format!("{} is behind a router (outside {seg})", r.underlay_ip),
                ),
            };
            PeerPath {
                subnet: r.subnet,
                vni: r.vni,
                underlay_ip: r.underlay_ip,
                path,
                reason,
            }
        })
        .collect()
}

/// How much an apply may trust what the dataplane wrote before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Only the desired state changed (a store event, a new container):
    /// write its difference from what this dataplane last wrote, reading
    /// nothing back. A lease event then costs its own entries, not N.
    Changes,
    /// Read the kernel back and put right whatever differs: the periodic
    /// repair of drift (an entry or route deleted by hand).
    Repair,
}

#[allow(async_fn_in_trait)]
pub trait Dataplane {
    /// Makes the kernel match `state`. Idempotent; safe to call periodically.
    async fn apply(&mut self, state: &DesiredState, mode: ApplyMode)
        -> anyhow::Result<ApplyReport>;
    /// Which backend this is.
    fn kind(&self) -> kind::DataplaneKind;
    /// The backend's name as `netfab status` reports it.
    fn name(&self) -> &'static str {
        self.kind().as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::{kind::*, *};

    #[test]
    fn each_backend_reports_its_path_per_peer() {
        let r = |sn: &str, ip: &str, direct: bool| crate::state::RemoteHostSubnet {
            subnet: sn.parse().unwrap(),
            vni: 1,
            underlay_ip: ip.parse().unwrap(),
            vtep_mac: Default::default(),
            direct,
        };
        let remotes = [
            r("10.244.2.0/24", "100.64.0.2", true),
            r("10.244.3.0/24", "100.64.0.3", false),
            r("10.244.4.0/24", "100.64.1.4", false),
        ];
        let u: ipnet::Ipv4Net = "100.64.0.1/24".parse().unwrap();
        let paths =
            |k| -> Vec<PathKind> { peer_paths(k, &remotes, u).iter().map(|p| p.path).collect() };
        use PathKind::*;
        assert_eq!(paths(DataplaneKind::Ebpf), vec![Direct, Vxlan, Vxlan]);
        assert_eq!(paths(DataplaneKind::Vxlan), vec![Direct, Vxlan, Vxlan]);
        assert_eq!(paths(DataplaneKind::HostGw), vec![HostGw, HostGw, Refused]);
        let p = peer_paths(DataplaneKind::Ebpf, &remotes, u);
        assert!(p[1].reason.contains("direct routing is off"));
        assert!(p[2].reason.contains("behind a router"));
    }
}
