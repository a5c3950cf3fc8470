//! Judges every network and lease of the cluster view on its own, so one bad
//! entry is skipped and reported while the rest is served. Pure.
//!
//! Rules (older = lower create revision; a network is as old as the oldest
//! key under it; older wins every conflict):
//! - a network is refused when its VNI or CIDR collides with an older one,
//!   or when its CIDR overlaps this host's underlay prefix or holds an etcd
//!   endpoint (a route for it would cut the host off);
//! - a lease is refused when its subnet is not one of its network's subnets
//!   (inside the CIDR, with the network's subnet length), when it overlaps
//!   an older lease, or when its underlay IP is not a usable unicast address
//!   (unspecified, loopback, broadcast, multicast, an etcd endpoint, or
//!   inside a container network).
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use crate::{
    lease::SubnetLease,
    network::NetworkConfig,
    store::{snapshot::BadEntry, KeyKind, Naming, Snapshot},
};

/// What this host knows that makes an entry dangerous here.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// This host's underlay address with its prefix.
    pub underlay: Option<Ipv4Net>,
    /// Addresses of the etcd endpoints the agent uses.
    pub etcd_ips: Vec<Ipv4Addr>,
}

/// The entries that may be served, and the ones refused with their reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judged {
    pub networks: BTreeMap<String, NetworkConfig>,
    pub leases: BTreeMap<String, BTreeMap<Ipv4Net, SubnetLease>>,
    pub rejected: Vec<BadEntry>,
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
}

/// Why `ip` cannot be a host's underlay address, if it cannot.
fn unusable_underlay(ip: Ipv4Addr, cidrs: &[Ipv4Net], ctx: &Context) -> Option<String> {
    let why = if ip.is_unspecified() {
        "is unspecified"
    } else if ip.is_loopback() {
        "is a loopback address"
    } else if ip.is_broadcast() {
        "is the broadcast address"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if ctx.etcd_ips.contains(&ip) {
        "is an etcd endpoint"
    } else if let Some(c) = cidrs.iter().find(|c| c.contains(&ip)) {
        return Some(format!(
            "underlay IP {ip} lies inside container network {c}"
        ));
    } else {
        return None;
    };
    Some(format!("underlay IP {ip} {why}"))
}

/// The networks that may be served here, and the refused ones. Cheap
/// (networks only): the agent asks it on every watch event.
pub fn judge_networks(
    snap: &Snapshot,
    names: &dyn Naming,
    ctx: &Context,
) -> (BTreeMap<String, NetworkConfig>, Vec<BadEntry>) {
    let mut ok: BTreeMap<String, NetworkConfig> = BTreeMap::new();
    let mut rejected = Vec::new();
    let age = |n: &str| snap.network_age.get(n).copied().unwrap_or(i64::MAX);
    let mut nets: Vec<&NetworkConfig> = snap.networks.values().collect();
    nets.sort_by_key(|n| (age(&n.name), n.name.clone()));
    for n in nets {
        let clash = ok.values().find_map(|o| {
            if o.vni == n.vni {
                Some(format!(
                    "VNI {} is already used by older network {}",
                    n.vni, o.name
                ))
            } else if overlaps(&o.cidr, &n.cidr) {
                Some(format!(
                    "CIDR {} overlaps older network {} ({})",
                    n.cidr, o.name, o.cidr
                ))
            } else {
                None
            }
        });
        let local = if let Some(u) = ctx.underlay.filter(|u| overlaps(&u.trunc(), &n.cidr)) {
            Some(format!(
                "CIDR {} overlaps this host's underlay {}",
                n.cidr,
                u.trunc()
            ))
        } else {
            ctx.etcd_ips
                .iter()
                .find(|ip| n.cidr.contains(*ip))
                .map(|ip| format!("CIDR {} holds etcd endpoint {ip}", n.cidr))
        };
        match clash.or(local) {
            Some(reason) => rejected.push(BadEntry {
                key: names.name(&KeyKind::Config {
                    net: n.name.clone(),
                }),
                reason: format!("network {} refused: {reason}", n.name),
            }),
            None => {
                ok.insert(n.name.clone(), n.clone());
            }
        }
    }
    (ok, rejected)
}

/// Why lease `sn` of network `net` is refused, given the leases of `net`
/// accepted before it (all older), if it is.
fn lease_refusal(
    net: &NetworkConfig,
    sn: &Ipv4Net,
    l: &SubnetLease,
    accepted: &BTreeMap<Ipv4Net, SubnetLease>,
    cidrs: &[Ipv4Net],
    ctx: &Context,
) -> Option<String> {
    if !net.cidr.contains(sn) || sn.prefix_len() != net.subnet_len {
        return Some(format!(
            "subnet {sn} is not a /{} of network {}'s {}",
            net.subnet_len, net.name, net.cidr
        ));
    }
    // Accepted subnets all have the network's length, so one overlapping
    // `sn` starts inside it: a range lookup, not a scan (a scan makes
    // 10,000 leases cost 50 million comparisons).
    let lo = Ipv4Net::new(sn.network(), 0).expect("/0");
    let hi = Ipv4Net::new(sn.broadcast(), 32).expect("/32");
    if let Some((o, ol)) = accepted.range(lo..=hi).next() {
        return Some(format!(
            "subnet {sn} overlaps the older lease {o} of node {}",
            ol.node
        ));
    }
    unusable_underlay(l.underlay_ip, cidrs, ctx)
}

fn refused(names: &dyn Naming, net: &str, sn: &Ipv4Net, l: &SubnetLease, why: String) -> BadEntry {
    BadEntry {
        key: names.name(&KeyKind::Lease {
            net: net.to_string(),
            subnet: crate::lease::subnet_key(sn),
        }),
        reason: format!("lease of node {} refused: {why}", l.node),
    }
}

/// Takes one new lease into a judged view: the newest of all, so every
/// lease already judged is older and it is judged after them, as [`judge`]
/// would. What a host joining costs, instead of judging every lease again.
pub fn judge_new_lease(
    view: &mut Judged,
    snap: &Snapshot,
    names: &dyn Naming,
    ctx: &Context,
    net: &str,
    sn: Ipv4Net,
) {
    let Some(cfg) = view.networks.get(net) else {
        return;
    };
    let Some(l) = snap.leases.get(net).and_then(|m| m.get(&sn)) else {
        return;
    };
    let cidrs: Vec<Ipv4Net> = view.networks.values().map(|n| n.cidr).collect();
    let accepted = view.leases.entry(net.to_string()).or_default();
    match lease_refusal(cfg, &sn, l, accepted, &cidrs, ctx) {
        Some(r) => view.rejected.push(refused(names, net, &sn, l, r)),
        None => {
            accepted.insert(sn, l.clone());
        }
    }
}

pub fn judge(snap: &Snapshot, names: &dyn Naming, ctx: &Context) -> Judged {
    let (networks, rejected) = judge_networks(snap, names, ctx);
    let mut out = Judged {
        networks,
        rejected,
        ..Default::default()
    };
    // Only networks served here: a refused network (say, one written over
    // the underlay) must not get every lease refused with it.
    let cidrs: Vec<Ipv4Net> = out.networks.values().map(|n| n.cidr).collect();
    for (name, leases) in &snap.leases {
        let Some(net) = out.networks.get(name) else {
            continue;
        };
        // Creation revisions of this network's leases, looked up once.
        let lo = (name.clone(), Ipv4Net::default());
        let hi = (
            name.clone(),
            Ipv4Net::new(Ipv4Addr::BROADCAST, 32).expect("/32"),
        );
        let revs: std::collections::HashMap<Ipv4Net, i64> = snap
            .created
            .range(lo..=hi)
            .map(|((_, sn), rev)| (*sn, *rev))
            .collect();
        let created = |sn: &Ipv4Net| revs.get(sn).copied().unwrap_or(i64::MAX);
        let mut order: Vec<(&Ipv4Net, &SubnetLease)> = leases.iter().collect();
        order.sort_by_key(|(sn, _)| (created(sn), **sn));
        let accepted = out.leases.entry(name.clone()).or_default();
        for (sn, l) in order {
            match lease_refusal(net, sn, l, accepted, &cidrs, ctx) {
                Some(r) => out.rejected.push(refused(names, name, sn, l, r)),
                None => {
                    accepted.insert(*sn, l.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{snapshot::ListedKv, Keys};

    fn lease(node: &str, ip: &str) -> String {
        format!(
            r#"{{"node":"{node}","underlay_ip":"{ip}","vtep_mac":"0e:6e:00:00:00:01","dataplane":"ebpf","agent_version":"t"}}"#
        )
    }

    fn judged(kvs: &[(&str, String, i64)]) -> Judged {
        let k = Keys::new("/netfab");
        let list: Vec<ListedKv> = kvs
            .iter()
            .map(|(key, v, r)| (*key, v.as_bytes(), *r))
            .collect();
        let (snap, _) = Snapshot::from_kvs(&k, list, 100, None);
        let ctx = Context {
            underlay: Some("100.64.0.1/24".parse().unwrap()),
            etcd_ips: vec!["100.64.0.254".parse().unwrap()],
        };
        judge(&snap, &k, &ctx)
    }

    fn cfg(name: &str, cidr: &str, vni: u32) -> String {
        format!(r#"{{"name":"{name}","cidr":"{cidr}","subnet_len":24,"vni":{vni}}}"#)
    }

    /// Taking new leases in one by one (as hosts join) judges exactly as
    /// judging everything again: accepted, overlapping, with a bad underlay
    /// address, in a refused network.
    #[test]
    fn new_leases_judged_alone_match_the_full_judgement() {
        let k = Keys::new("/netfab");
        let ctx = Context {
            underlay: Some("100.64.0.1/24".parse().unwrap()),
            etcd_ips: vec!["100.64.0.254".parse().unwrap()],
        };
        let mut kvs: Vec<(String, String, i64)> = vec![
            (
                "/netfab/networks/a/config".into(),
                cfg("a", "10.244.0.0/16", 1),
                1,
            ),
            (
                "/netfab/networks/evil/config".into(),
                cfg("evil", "100.64.0.0/16", 2),
                2,
            ),
        ];
        for i in 0..50u32 {
            kvs.push((
                format!("/netfab/networks/a/leases/10.244.{i}.0-24"),
                lease(&format!("h{i}"), &format!("100.65.0.{}", i + 1)),
                10 + i64::from(i),
            ));
        }
        let snap_of = |kvs: &[(String, String, i64)]| {
            let list: Vec<ListedKv> = kvs
                .iter()
                .map(|(key, v, r)| (key.as_str(), v.as_bytes(), *r))
                .collect();
            Snapshot::from_kvs(&k, list, 1000, None).0
        };
        let mut view = judge(&snap_of(&kvs), &k, &ctx);
        let joining = [
            ("a", "10.244.60.0-24", lease("n1", "100.65.1.1")),
            // Inside the older 10.244.3.0/24, and not the network's length.
            ("a", "10.244.3.0-25", lease("n2", "100.65.1.2")),
            ("a", "10.244.61.0-24", lease("n3", "127.0.0.1")),
            ("a", "10.244.62.0-24", lease("n4", "10.244.9.9")),
            ("evil", "100.64.5.0-24", lease("n5", "100.65.1.5")),
            ("a", "10.244.63.0-24", lease("n6", "100.65.1.6")),
        ];
        for (i, (net, sn, v)) in joining.iter().enumerate() {
            kvs.push((
                format!("/netfab/networks/{net}/leases/{sn}"),
                v.clone(),
                100 + i as i64,
            ));
            let snap = snap_of(&kvs);
            let sn = crate::lease::parse_subnet_key(sn).unwrap();
            judge_new_lease(&mut view, &snap, &k, &ctx, net, sn);
            let full = judge(&snap, &k, &ctx);
            assert_eq!(view.networks, full.networks);
            assert_eq!(view.leases, full.leases, "after {sn}");
            let mut a = view.rejected.clone();
            let mut b = full.rejected.clone();
            a.sort_by(|x, y| x.key.cmp(&y.key));
            b.sort_by(|x, y| x.key.cmp(&y.key));
            assert_eq!(a, b, "after {sn}");
        }
        assert_eq!(
            view.leases["a"].len(),
            52,
            "two of the joining were accepted"
        );
        assert_eq!(view.rejected.len(), 1 + 3, "evil, and three bad leases");
    }

    #[test]
    fn older_network_wins_and_dangerous_cidrs_are_refused() {
        let j = judged(&[
            ("/netfab/networks/a/config", cfg("a", "10.244.0.0/16", 1), 5),
            ("/netfab/networks/b/config", cfg("b", "10.245.0.0/16", 1), 3),
            (
                "/netfab/networks/c/config",
                cfg("c", "10.244.128.0/17", 7),
                9,
            ),
            ("/netfab/networks/d/config", cfg("d", "100.64.0.0/16", 8), 1),
            (
                "/netfab/networks/e/config",
                cfg("e", "10.246.0.0/16", 9),
                10,
            ),
        ]);
        assert_eq!(j.networks.keys().collect::<Vec<_>>(), vec!["b", "c", "e"]);
        let reasons: Vec<String> = j
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.key, r.reason))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("networks/d/config") && reasons[0].contains("underlay"));
        assert!(reasons[1].contains("networks/a/config") && reasons[1].contains("VNI 1"));
    }

    #[test]
    fn a_refused_network_over_the_underlay_does_not_take_the_leases_with_it() {
        let j = judged(&[
            ("/netfab/networks/a/config", cfg("a", "10.244.0.0/16", 1), 5),
            (
                "/netfab/networks/evil/config",
                cfg("evil", "100.64.0.0/16", 2),
                6,
            ),
            (
                "/netfab/networks/a/leases/10.244.1.0-24",
                lease("h1", "100.64.0.1"),
                7,
            ),
        ]);
        assert_eq!(j.networks.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(j.leases["a"].len(), 1, "{:?}", j.rejected);
    }

    #[test]
    fn a_network_whose_config_was_rewritten_keeps_its_age() {
        // `a`'s config was deleted and written again (revision 20), after
        // `b` took its VNI (revision 10); its node record is from revision 2.
        let j = judged(&[
            (
                "/netfab/networks/a/config",
                cfg("a", "10.244.0.0/16", 1),
                20,
            ),
            ("/netfab/networks/a/nodes/h1", "10.244.1.0/24".into(), 2),
            (
                "/netfab/networks/b/config",
                cfg("b", "10.250.0.0/16", 1),
                10,
            ),
        ]);
        assert_eq!(j.networks.keys().collect::<Vec<_>>(), vec!["a"]);
        assert!(j.rejected[0].key.contains("networks/b/config"));
    }

    #[test]
    fn each_bad_lease_is_refused_with_its_key_and_the_rest_served() {
        let n = ("/netfab/networks/a/config", cfg("a", "10.244.0.0/16", 1), 1);
        let l = |sn: &str, node: &str, ip: &str, rev: i64| {
            (
                Box::leak(format!("/netfab/networks/a/leases/{sn}").into_boxed_str()) as &str,
                lease(node, ip),
                rev,
            )
        };
        let j = judged(&[
            n,
            l("10.244.1.0-24", "h1", "100.64.0.1", 2),
            l("10.244.2.0-24", "h2", "100.64.0.2", 3),
            l("10.244.0.0-23", "x1", "100.64.0.9", 4),
            l("10.244.1.0-25", "x2", "100.64.0.9", 4),
            l("198.18.0.0-24", "x3", "100.64.0.9", 5),
            l("100.64.0.0-24", "x4", "100.64.0.9", 5),
            l("10.244.3.0-24", "x5", "0.0.0.0", 6),
            l("10.244.4.0-24", "x6", "127.0.0.1", 6),
            l("10.244.5.0-24", "x7", "255.255.255.255", 6),
            l("10.244.6.0-24", "x8", "224.0.0.1", 6),
            l("10.244.7.0-24", "x9", "100.64.0.254", 6),
            l("10.244.8.0-24", "x10", "10.244.9.9", 6),
            l("10.244.10.0-24", "h3", "100.64.0.3", 7),
        ]);
        let ok: Vec<String> = j.leases["a"].keys().map(|s| s.to_string()).collect();
        assert_eq!(ok, vec!["10.244.1.0/24", "10.244.2.0/24", "10.244.10.0/24"]);
        assert_eq!(j.rejected.len(), 10, "{:?}", j.rejected);
        for r in &j.rejected {
            assert!(r.key.starts_with("/netfab/networks/a/leases/"), "{r:?}");
        }
        assert!(j
            .rejected
            .iter()
            .any(|r| r.reason.contains("is an etcd endpoint")));
        assert!(j
            .rejected
            .iter()
            .any(|r| r.reason.contains("inside container network")));
    }
}
