//! Subnet leases: the value a host publishes for its subnet, and the pure
//! choice of which subnet to try next.
//!
//! Lease protocol (the etcd side is in `store::etcd`):
//! 1. A host's subnet is the key `<prefix>/networks/<net>/leases/<a.b.c.d-len>`,
//!    created only if absent (a transaction on create_revision == 0) and bound
//!    to an etcd lease with a TTL that the agent keeps alive.
//! 2. The host also records `<prefix>/networks/<net>/nodes/<node>` = its subnet,
//!    with no TTL: a restarted agent tries that subnet first and so gets it back.
//! 3. If the etcd lease expires (host dead or cut off), the key vanishes and
//!    every other host stops routing the subnet. A host that comes back
//!    re-acquires through the same create-if-absent transaction, so it can
//!    never take a subnet another host owns now.
//! 4. Free subnets are tried in an order that avoids subnets other nodes
//!    remember as theirs, so a briefly absent host usually gets its own back.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{addr::MacAddr, network::NetworkConfig};

/// Unknown fields (a newer agent's) are ignored; `min_agent_version`
/// guards those an older reader must not ignore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetLease {
    pub node: String,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// The dataplane the host runs for this network.
    pub dataplane: String,
    pub agent_version: String,
    /// Agents older than this refuse the lease (`compat::too_new`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agent_version: Option<String>,
}

/// Key-safe form of a subnet: `10.244.1.0-24`.
pub fn subnet_key(net: &Ipv4Net) -> String {
    format!("{}-{}", net.network(), net.prefix_len())
}

pub fn parse_subnet_key(s: &str) -> Option<Ipv4Net> {
    let (ip, len) = s.rsplit_once('-')?;
    let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.trunc() == net).then_some(net)
}

/// The subnets to try, best first: the node's previous subnet (if free),
/// then free subnets nobody remembers, then free subnets other nodes
/// remember. `taken` holds subnets with a live lease.
pub fn candidates(
    net: &NetworkConfig,
    taken: &BTreeSet<Ipv4Net>,
    remembered: &BTreeMap<String, Ipv4Net>,
    node: &str,
) -> Vec<Ipv4Net> {
    let Ok(all) = net.cidr.subnets(net.subnet_len) else {
        return Vec::new();
    };
    let mine = remembered.get(node).copied();
    let others: BTreeSet<Ipv4Net> = remembered
        .iter()
        .filter(|(n, _)| n.as_str() != node)
        .map(|(_, s)| *s)
        .collect();
    let mut fresh = Vec::new();
    let mut reused = Vec::new();
    for s in all {
        // A bad entry may be a larger prefix than ours: avoid any overlap.
        if taken.iter().any(|t| t.contains(&s) || s.contains(t)) || Some(s) == mine {
            continue;
        }
        if others.contains(&s) {
            reused.push(s);
        } else {
            fresh.push(s);
        }
        // Bound the work on huge networks: a few candidates are plenty,
        // each failed one costs a round trip.
        if fresh.len() >= 64 {
            break;
        }
    }
    let mut out = Vec::new();
    if let Some(m) = mine.filter(|m| {
        !taken.iter().any(|t| t.contains(m) || m.contains(t))
            && net.cidr.contains(m)
            && m.prefix_len() == net.subnet_len
    }) {
        out.push(m);
    }
    out.extend(fresh);
    out.extend(reused);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::DataplanePref;

    fn net(cidr: &str, len: u8) -> NetworkConfig {
        NetworkConfig {
            name: "n".into(),
            cidr: cidr.parse().unwrap(),
            subnet_len: len,
            vni: 1,
            port: 4789,
            dataplane: DataplanePref::Auto,
            direct_routing: true,
            min_agent_version: None,
        }
    }
    fn s(x: &str) -> Ipv4Net {
        x.parse().unwrap()
    }

    #[test]
    fn subnet_keys_round_trip() {
        assert_eq!(subnet_key(&s("10.244.3.0/24")), "10.244.3.0-24");
        assert_eq!(parse_subnet_key("10.244.3.0-24"), Some(s("10.244.3.0/24")));
        assert_eq!(
            parse_subnet_key("10.244.3.1-24"),
            None,
            "not a network address"
        );
        assert_eq!(parse_subnet_key("garbage"), None);
    }

    #[test]
    fn previous_subnet_first_then_fresh_then_remembered_by_others() {
        let n = net("10.0.0.0/22", 24);
        let remembered = BTreeMap::from([
            ("me".to_string(), s("10.0.2.0/24")),
            ("other".to_string(), s("10.0.0.0/24")),
        ]);
        let c = candidates(&n, &BTreeSet::new(), &remembered, "me");
        assert_eq!(
            c,
            vec![
                s("10.0.2.0/24"),
                s("10.0.1.0/24"),
                s("10.0.3.0/24"),
                s("10.0.0.0/24")
            ]
        );
    }

    #[test]
    fn never_offers_a_taken_subnet_not_even_our_old_one() {
        let n = net("10.0.0.0/23", 24);
        let taken = BTreeSet::from([s("10.0.0.0/24")]);
        let remembered = BTreeMap::from([("me".to_string(), s("10.0.0.0/24"))]);
        assert_eq!(
            candidates(&n, &taken, &remembered, "me"),
            vec![s("10.0.1.0/24")]
        );
        let all = BTreeSet::from([s("10.0.0.0/24"), s("10.0.1.0/24")]);
        assert!(
            candidates(&n, &all, &remembered, "me").is_empty(),
            "exhausted"
        );
    }
}
