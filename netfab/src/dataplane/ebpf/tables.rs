//! The contents the eBPF maps should have, computed from the desired state
//! and a few facts read from the kernel (ifindexes and MACs). Pure: no I/O.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use netfab_common::{
    DropReason, EncapConfig, Endpoint, GuardKey, HostConfig, KnownHost, NetworkInfo, RateLimit,
    RemoteSubnet, Settings, HOST_ENDPOINT, IPPROTO_TCP, IPPROTO_UDP, REMOTE_F_DIRECT,
    SETTINGS_F_LOG_DROPS,
};

use crate::{
    dataplane::{Skip, SkipItem},
    reconcile::{diff, Diff},
    state::DesiredState,
};

pub use crate::netlink::LinkFacts;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tables {
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// Bandwidth limits of the containers that have any.
    pub rate_limits: BTreeMap<Ipv4Addr, RateLimit>,
    pub remote_subnets: BTreeMap<Ipv4Net, RemoteSubnet>,
    pub known_hosts: BTreeMap<Ipv4Addr, KnownHost>,
    pub networks: BTreeMap<u32, NetworkInfo>,
    pub host_config: HostConfig,
    /// Native VXLAN settings (all zero: the VXLAN device encapsulates).
    pub encap: EncapConfig,
    /// Stack-bound destinations containers may not reach, with the reason.
    pub guards: BTreeMap<GuardKey, u32>,
    pub settings: Settings,
}

/// What turns one set of tables into another, table by table. Pure: what
/// an apply writes, so what one lease event costs is plain to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub endpoints: Diff<Ipv4Addr, Endpoint>,
    pub rate_limits: Diff<Ipv4Addr, RateLimit>,
    pub remote_subnets: Diff<Ipv4Net, RemoteSubnet>,
    pub known_hosts: Diff<Ipv4Addr, KnownHost>,
    pub networks: Diff<u32, NetworkInfo>,
    pub guards: Diff<GuardKey, u32>,
    /// New values of the single-entry tables, when they changed.
    pub host_config: Option<HostConfig>,
    pub encap: Option<EncapConfig>,
    pub settings: Option<Settings>,
}

impl Delta {
    /// From `from` (what the maps hold) to `to` (what they should).
    pub fn between(to: &Tables, from: &Tables) -> Self {
        Self {
            endpoints: diff(&to.endpoints, &from.endpoints),
            rate_limits: diff(&to.rate_limits, &from.rate_limits),
            remote_subnets: diff(&to.remote_subnets, &from.remote_subnets),
            known_hosts: diff(&to.known_hosts, &from.known_hosts),
            networks: diff(&to.networks, &from.networks),
            guards: diff(&to.guards, &from.guards),
            host_config: (to.host_config != from.host_config).then_some(to.host_config),
            encap: (to.encap != from.encap).then_some(to.encap),
            settings: (to.settings != from.settings).then_some(to.settings),
        }
    }

    /// (entries written, entries removed).
    pub fn counts(&self) -> (usize, usize) {
        let sizes = [
            (self.endpoints.upserts.len(), self.endpoints.removals.len()),
            (
                self.rate_limits.upserts.len(),
                self.rate_limits.removals.len(),
            ),
            (
                self.remote_subnets.upserts.len(),
                self.remote_subnets.removals.len(),
            ),
            (
                self.known_hosts.upserts.len(),
                self.known_hosts.removals.len(),
            ),
            (self.networks.upserts.len(), self.networks.removals.len()),
            (self.guards.upserts.len(), self.guards.removals.len()),
            (usize::from(self.host_config.is_some()), 0),
            (usize::from(self.encap.is_some()), 0),
            (usize::from(self.settings.is_some()), 0),
        ];
        sizes
            .iter()
            .fold((0, 0), |(u, r), (du, dr)| (u + du, r + dr))
    }
}

/// Builds the tables. Endpoints whose veth is not (yet) in `links` are left
/// out and reported, so one missing container never blocks the others.
pub fn desired_tables(
    state: &DesiredState,
    links: &HashMap<String, LinkFacts>,
    vxlan: Option<LinkFacts>,
    underlay_ifindex: u32,
) -> (Tables, Vec<Skip>) {
    let mut skipped = Vec::new();
    let mut t = Tables::default();
    for e in &state.endpoints {
        match links.get(&e.host_ifname) {
            Some(link) => {
                t.endpoints.insert(
                    e.ip,
                    Endpoint {
                        ifindex: link.ifindex,
                        vni: e.vni,
                        mac: e.mac.0,
                        gw_mac: link.mac.0,
                    },
                );
                if let Some(b) = e.bandwidth.filter(|b| !b.is_unlimited()) {
                    t.rate_limits.insert(e.ip, b.rate_limit());
                }
            }
            None => skipped.push(Skip {
                item: SkipItem::Endpoint(e.ip),
                reason: format!("interface {} not found", e.host_ifname),
            }),
        }
    }
    for r in &state.remotes {
        t.remote_subnets.insert(
            r.subnet.trunc(),
            RemoteSubnet {
                underlay_ip: u32::from(r.underlay_ip),
                vni: r.vni,
                vtep_mac: r.vtep_mac.0,
                flags: if r.direct { REMOTE_F_DIRECT } else { 0 },
            },
        );
        t.known_hosts.insert(r.underlay_ip, KnownHost::default());
    }
    for n in &state.networks {
        t.networks.insert(n.vni, NetworkInfo::default());
        // The gateway address the host holds: replies to the host's own
        // packets are handed to the stack (see netlink::gateways).
        t.endpoints.insert(
            crate::addr::gateway_of(n.subnet),
            Endpoint {
                ifindex: HOST_ENDPOINT,
                vni: n.vni,
                mac: [0; 6],
                gw_mac: [0; 6],
            },
        );
    }
    // Any host's tunnel port, whatever address of it: the stack would
    // masquerade the datagram to this host's address, a known host.
    t.guards.insert(
        GuardKey {
            daddr: 0,
            dport: state.vxlan_port.to_be(),
            proto: IPPROTO_UDP,
            _pad: 0,
        },
        DropReason::TunnelPort as u32,
    );
    // etcd at its own addresses, and at the gateway addresses this host
    // holds (etcd running here must not be reachable through them either).
    let gateways = state
        .networks
        .iter()
        .map(|n| crate::addr::gateway_of(n.subnet));
    for e in &state.etcd_endpoints {
        for ip in std::iter::once(*e.ip()).chain(gateways.clone()) {
            t.guards.insert(
                GuardKey {
                    daddr: u32::from_ne_bytes(ip.octets()),
                    dport: e.port().to_be(),
                    proto: IPPROTO_TCP,
                    _pad: 0,
                },
                DropReason::ControlPlane as u32,
            );
        }
    }
    if state.log_drops {
        t.settings.flags |= SETTINGS_F_LOG_DROPS;
    }
    if let Some(v) = vxlan {
        t.host_config = HostConfig {
            vxlan_ifindex: v.ifindex,
            underlay_ifindex,
            vxlan_mac: v.mac.0,
            _pad: [0; 2],
        };
    }
    (t, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::MacAddr;

    fn state() -> DesiredState {
        serde_json::from_str(
            r#"{"underlay_interface":"eth0",
                "networks":[{"name":"a","vni":5,"subnet":"10.244.1.0/24"}],
                "remotes":[{"subnet":"10.244.2.0/24","vni":5,"underlay_ip":"100.64.0.2","vtep_mac":"0e:6e:64:40:00:02"},
                           {"subnet":"10.244.3.0/24","vni":5,"underlay_ip":"100.64.0.2","vtep_mac":"0e:6e:64:40:00:02"}],
                "endpoints":[{"ip":"10.244.1.2","vni":5,"host_ifname":"nfc1","mac":"0a:6e:0a:f4:01:02"},
                             {"ip":"10.244.1.3","vni":5,"host_ifname":"gone","mac":"0a:6e:0a:f4:01:03"}]}"#,
        )
        .unwrap()
    }

    /// One lease event among thousands of peers: the write touches that
    /// peer's entries and nothing else (and a leaving peer removes exactly
    /// them).
    #[test]
    fn one_lease_event_is_a_delta_of_its_own_entries() {
        let peer = |i: u32| crate::state::RemoteHostSubnet {
            subnet: Ipv4Net::new(Ipv4Addr::from(0x0a80_0000 + (i << 8)), 24).unwrap(),
            vni: 5,
            underlay_ip: Ipv4Addr::from(0x6460_0000 + i),
            vtep_mac: MacAddr::vtep_for(Ipv4Addr::from(0x6460_0000 + i)),
            direct: false,
        };
        let mut s = state();
        s.remotes = (1..=5000).map(peer).collect();
        let links = HashMap::new();
        let (before, _) = desired_tables(&s, &links, None, 9);
        s.remotes.push(peer(5001));
        let (after, _) = desired_tables(&s, &links, None, 9);

        let keys = |d: &[(Ipv4Net, RemoteSubnet)]| d.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        let hosts = |d: &[(Ipv4Addr, KnownHost)]| d.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        let d = Delta::between(&after, &before);
        let new = peer(5001);
        assert_eq!(d.counts(), (2, 0), "{d:?}");
        assert_eq!(keys(&d.remote_subnets.upserts), vec![new.subnet]);
        assert_eq!(hosts(&d.known_hosts.upserts), vec![new.underlay_ip]);
        // It leaves again: exactly its entries go.
        let d = Delta::between(&before, &after);
        assert_eq!(d.counts(), (0, 2), "{d:?}");
        assert_eq!(d.remote_subnets.removals, vec![new.subnet]);
        assert_eq!(d.known_hosts.removals, vec![new.underlay_ip]);
        // A peer moving to a new underlay address rewrites its own subnet.
        let mut moved = s.clone();
        moved.remotes[0].underlay_ip = "100.97.0.1".parse().unwrap();
        let (m, _) = desired_tables(&moved, &links, None, 9);
        let d = Delta::between(&m, &after);
        assert_eq!(keys(&d.remote_subnets.upserts), vec![peer(1).subnet]);
        assert_eq!(d.known_hosts.removals, vec![peer(1).underlay_ip]);
        assert_eq!(d.counts(), (2, 1), "{d:?}");
        assert_eq!(Delta::between(&after, &after).counts(), (0, 0));
    }

    #[test]
    fn builds_every_table() {
        let mac: MacAddr = "aa:bb:cc:dd:ee:ff".parse().unwrap();
        let links = HashMap::from([("nfc1".to_string(), LinkFacts { ifindex: 7, mac })]);
        let vx = LinkFacts {
            ifindex: 3,
            mac: MacAddr::vtep_for("100.64.0.1".parse().unwrap()),
        };
        let (t, skipped) = desired_tables(&state(), &links, Some(vx), 9);

        let ep = t.endpoints[&"10.244.1.2".parse::<Ipv4Addr>().unwrap()];
        assert_eq!((ep.ifindex, ep.vni, ep.gw_mac), (7, 5, mac.0));
        let gw = t.endpoints[&"10.244.1.1".parse::<Ipv4Addr>().unwrap()];
        assert_eq!(
            (gw.ifindex, gw.vni),
            (HOST_ENDPOINT, 5),
            "the host's gateway"
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(
            skipped[0].item,
            SkipItem::Endpoint("10.244.1.3".parse().unwrap())
        );
        assert!(skipped[0].to_string().contains("interface gone not found"));

        assert_eq!(t.remote_subnets.len(), 2);
        let r = t.remote_subnets[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(
            r.underlay_ip, 0x6440_0002,
            "host byte order for the tunnel key"
        );
        // Two subnets behind one host: one known host.
        assert_eq!(t.known_hosts.len(), 1);
        assert_eq!(t.networks.keys().copied().collect::<Vec<_>>(), vec![5]);
        assert_eq!(t.host_config.vxlan_ifindex, 3);
        let tunnel = GuardKey {
            daddr: 0,
            dport: 4789u16.to_be(),
            proto: IPPROTO_UDP,
            _pad: 0,
        };
        assert_eq!(
            t.guards.get(&tunnel),
            Some(&(DropReason::TunnelPort as u32))
        );
    }

    #[test]
    fn etcd_endpoints_are_guarded_by_address_and_port() {
        let mut s = state();
        s.etcd_endpoints = vec!["100.64.0.254:2379".parse().unwrap()];
        let (t, _) = desired_tables(&s, &HashMap::new(), None, 0);
        let k = GuardKey {
            daddr: u32::from_ne_bytes([100, 64, 0, 254]),
            dport: 2379u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: 0,
        };
        assert_eq!(t.guards.get(&k), Some(&(DropReason::ControlPlane as u32)));
        // Also through the gateway address this host holds.
        let gw = crate::addr::gateway_of(s.networks[0].subnet);
        let k = GuardKey {
            daddr: u32::from_ne_bytes(gw.octets()),
            ..k
        };
        assert_eq!(t.guards.get(&k), Some(&(DropReason::ControlPlane as u32)));
        assert_eq!(t.guards.len(), 3, "tunnel port, etcd, etcd via the gateway");
    }

    #[test]
    fn no_vxlan_device_means_not_ready() {
        let (t, _) = desired_tables(&state(), &HashMap::new(), None, 0);
        assert_eq!(t.host_config.vxlan_ifindex, 0);
        // No container is programmed: only the host's own gateway entry.
        let eps: Vec<_> = t.endpoints.values().map(|e| e.ifindex).collect();
        assert_eq!(eps, vec![HOST_ENDPOINT]);
    }
}
