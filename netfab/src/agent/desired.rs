//! From the judged cluster view, this host's leases and its local
//! containers to the desired state of its dataplane. Pure; everything that
//! cannot be programmed is skipped with a reason instead of failing the rest.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

use super::judge::Judged;
use crate::{
    lease::SubnetLease,
    rundir::LocalEndpoint,
    state::{DesiredState, EndpointSpec, Network, RemoteHostSubnet, DEFAULT_VXLAN_DEVICE},
};

/// A peer's subnet whose lease is gone but which is still routed (within
/// the grace period, until another host leases the subnet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedLease {
    pub network: String,
    pub subnet: Ipv4Net,
    pub lease: SubnetLease,
}

/// `underlay_net` is this host's underlay address with its prefix: peers
/// inside it share the L2 segment and are routed directly where the network
/// allows it.
pub fn desired_state(
    snap: &Judged,
    retained: &[RetainedLease],
    held: &BTreeMap<String, Ipv4Net>,
    endpoints: &[LocalEndpoint],
    underlay_interface: &str,
    underlay_net: Option<Ipv4Net>,
    node: &str,
) -> (DesiredState, Vec<String>) {
    let mut warnings = Vec::new();
    let mut state = DesiredState {
        underlay_interface: underlay_interface.into(),
        vxlan_port: crate::state::DEFAULT_VXLAN_PORT,
        vxlan_device: DEFAULT_VXLAN_DEVICE.into(),
        networks: Vec::new(),
        remotes: Vec::new(),
        endpoints: Vec::new(),
        masquerade: false,
        etcd_endpoints: Vec::new(),
        log_drops: false,
        cluster_cidrs: snap.networks.values().map(|n| n.cidr).collect(),
    };
    let mut port = None;
    for (name, subnet) in held {
        let Some(cfg) = snap.networks.get(name) else {
            continue;
        };
        // One collect-metadata VXLAN device serves one UDP port.
        match port {
            None => port = Some(cfg.port),
            Some(p) if p != cfg.port => {
                warnings.push(format!(
                    "network {name} uses UDP port {} but this host's VXLAN device uses {p}; not served",
                    cfg.port
                ));
                continue;
            }
            _ => {}
        }
        state.networks.push(Network {
            name: name.clone(),
            vni: cfg.vni,
            subnet: *subnet,
        });
        let live = snap.leases.get(name);
        let kept = retained
            .iter()
            .filter(|r| &r.network == name)
            // Another host leased it (or part of it): the new owner wins.
            .filter(|r| {
                !live.is_some_and(|m| {
                    m.keys()
                        .any(|s| s.contains(&r.subnet) || r.subnet.contains(s))
                })
            })
            .map(|r| (&r.subnet, &r.lease));
        for (sn, lease) in live.into_iter().flatten().chain(kept) {
            if lease.node == node || sn.contains(subnet) || subnet.contains(sn) {
                continue;
            }
            state.remotes.push(RemoteHostSubnet {
                subnet: *sn,
                vni: cfg.vni,
                underlay_ip: lease.underlay_ip,
                vtep_mac: lease.vtep_mac,
                direct: cfg.direct_routing
                    && underlay_net.is_some_and(|u| u.trunc().contains(&lease.underlay_ip)),
            });
        }
    }
    state.vxlan_port = port.unwrap_or(state.vxlan_port);
    let mut seen = BTreeSet::new();
    for e in endpoints {
        let Some(net) = state.networks.iter().find(|n| n.name == e.network) else {
            warnings.push(format!(
                "endpoint {}: this host holds no subnet in network {}",
                e.ip, e.network
            ));
            continue;
        };
        if !net.subnet.contains(&e.ip) {
            warnings.push(format!(
                "endpoint {}: outside this host's subnet {} of {}",
                e.ip, net.subnet, e.network
            ));
            continue;
        }
        if !seen.insert(e.ip) {
            warnings.push(format!("endpoint {}: listed twice", e.ip));
            continue;
        }
        state.endpoints.push(EndpointSpec {
            ip: e.ip,
            vni: net.vni,
            host_ifname: e.host_ifname.clone(),
            mac: e.mac,
            bandwidth: e.bandwidth,
        });
    }
    (state, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::judge,
        store::{Keys, Snapshot},
    };

    fn snap() -> Judged {
        let k = Keys::new("/netfab");
        let lease = |node: &str, ip: &str| {
            format!(
                r#"{{"node":"{node}","underlay_ip":"{ip}","vtep_mac":"0e:6e:00:00:00:01","dataplane":"ebpf","agent_version":"t"}}"#
            )
        };
        let l1 = lease("h1", "100.64.0.1");
        let l2 = lease("h2", "100.64.0.2");
        let kvs: Vec<(String, Vec<u8>)> = vec![
            (
                "/netfab/networks/a/config".into(),
                br#"{"name":"a","cidr":"10.244.0.0/16","subnet_len":24,"vni":1}"#.to_vec(),
            ),
            (
                "/netfab/networks/b/config".into(),
                br#"{"name":"b","cidr":"10.245.0.0/16","subnet_len":24,"vni":2}"#.to_vec(),
            ),
            (
                "/netfab/networks/c/config".into(),
                br#"{"name":"c","cidr":"10.246.0.0/16","subnet_len":24,"vni":3,"port":9999}"#
                    .to_vec(),
            ),
            (
                "/netfab/networks/a/leases/10.244.1.0-24".into(),
                l1.clone().into_bytes(),
            ),
            (
                "/netfab/networks/a/leases/10.244.2.0-24".into(),
                l2.clone().into_bytes(),
            ),
            (
                "/netfab/networks/b/leases/10.245.7.0-24".into(),
                l2.into_bytes(),
            ),
        ];
        let snap = Snapshot::from_kvs(
            &k,
            kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice(), 1)),
            1,
            None,
        )
        .0;
        judge::judge(&snap, &k, &judge::Context::default())
    }

    fn ep(ip: &str, net: &str) -> LocalEndpoint {
        LocalEndpoint {
            ip: ip.parse().unwrap(),
            network: net.into(),
            host_ifname: "nfc1".into(),
            mac: Default::default(),
            bandwidth: None,
        }
    }

    #[test]
    fn remotes_are_other_hosts_leases_per_network() {
        let held = BTreeMap::from([
            ("a".to_string(), "10.244.1.0/24".parse().unwrap()),
            ("b".to_string(), "10.245.1.0/24".parse().unwrap()),
        ]);
        let (s, warnings) = desired_state(
            &snap(),
            &[],
            &held,
            &[ep("10.244.1.2", "a")],
            "eth0",
            None,
            "h1",
        );
        s.validate().unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let remotes: Vec<(String, u32)> = s
            .remotes
            .iter()
            .map(|r| (r.subnet.to_string(), r.vni))
            .collect();
        assert_eq!(
            remotes,
            vec![("10.244.2.0/24".into(), 1), ("10.245.7.0/24".into(), 2)]
        );
        assert_eq!(s.endpoints[0].vni, 1);
    }

    #[test]
    fn unusable_items_are_skipped_with_a_reason() {
        let held = BTreeMap::from([
            ("a".to_string(), "10.244.1.0/24".parse().unwrap()),
            ("c".to_string(), "10.246.1.0/24".parse().unwrap()),
        ]);
        let eps = [
            ep("10.244.9.9", "a"),
            ep("10.245.1.2", "b"),
            ep("10.244.1.2", "a"),
            ep("10.244.1.2", "a"),
        ];
        let (s, w) = desired_state(&snap(), &[], &held, &eps, "eth0", None, "h1");
        s.validate().unwrap();
        assert_eq!(s.networks.len(), 1, "network c needs another UDP port");
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(w.len(), 4, "{w:?}");
    }

    #[test]
    fn an_expired_peer_stays_routed_until_its_subnet_is_leased_again() {
        let held = BTreeMap::from([("a".to_string(), "10.244.1.0/24".parse().unwrap())]);
        let gone = |sn: &str| RetainedLease {
            network: "a".into(),
            subnet: sn.parse().unwrap(),
            lease: SubnetLease {
                node: "h9".into(),
                underlay_ip: "100.64.0.9".parse().unwrap(),
                vtep_mac: Default::default(),
                dataplane: "ebpf".into(),
                agent_version: "t".into(),
                min_agent_version: None,
            },
        };
        // 10.244.9.0/24 is free: still routed to its last holder.
        // 10.244.2.0/24 is leased by h2 now: the new owner wins.
        let retained = [gone("10.244.9.0/24"), gone("10.244.2.0/24")];
        let (s, _) = desired_state(&snap(), &retained, &held, &[], "eth0", None, "h1");
        s.validate().unwrap();
        let routed: Vec<(String, String)> = s
            .remotes
            .iter()
            .filter(|r| r.vni == 1)
            .map(|r| (r.subnet.to_string(), r.underlay_ip.to_string()))
            .collect();
        assert_eq!(
            routed,
            vec![
                ("10.244.2.0/24".into(), "100.64.0.2".into()),
                ("10.244.9.0/24".into(), "100.64.0.9".into())
            ]
        );
    }
}
