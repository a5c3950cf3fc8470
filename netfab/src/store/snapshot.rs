//! The agent's cached view of the store, built from a listing and kept
//! current by watch events. Pure: bad values are recorded with their key and
//! skipped, never fatal, so one broken entry cannot take the rest down.
//!
//! Bad input never replaces good state: a value that cannot be parsed, a
//! network whose immutable fields (CIDR, subnet length, VNI, port) change in
//! place, and a lease that changes hands in place (another node's name on a
//! key that was not deleted and created again) are reported and the last
//! good value is kept. Leases change hands only by expiry and re-creation.
//! A network config that disappears while leases in it exist is kept too
//! (`orphaned`), so one stray delete does not tear the network down.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

use super::{KeyKind, Naming};
use crate::{
    lease::{parse_subnet_key, SubnetLease},
    network::NetworkConfig,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store revision this view reflects.
    pub revision: i64,
    pub networks: BTreeMap<String, NetworkConfig>,
    pub leases: BTreeMap<String, BTreeMap<Ipv4Net, SubnetLease>>,
    /// Per network: node -> the subnet it last held.
    pub remembered: BTreeMap<String, BTreeMap<String, Ipv4Net>>,
    /// Create revision of each lease: who was first decides conflicts, and
    /// a lease changes hands only with a new one.
    pub created: BTreeMap<(String, Ipv4Net), i64>,
    /// Networks whose config is gone from the store but which still have
    /// leases: served with their last good config.
    pub orphaned: BTreeSet<String>,
    /// Per network, the oldest create revision of any key under it: its
    /// age, which decides conflicts between networks. A config deleted and
    /// written again does not make its network young (its node records
    /// and leases are still old), and nobody can forge an old revision.
    pub network_age: BTreeMap<String, i64>,
}

/// A key whose value could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BadEntry {
    pub key: String,
    pub reason: String,
}

/// One listed key: name, value, create revision.
#[cfg(test)]
pub type ListedKv<'a> = (&'a str, &'a [u8], i64);

/// One listed record: what it is, value, create revision.
pub type Listed<'a> = (&'a KeyKind, &'a [u8], i64);

impl Snapshot {
    /// Builds the view from a full listing. With `prev` (the view before a
    /// re-list), last good values survive bad ones exactly as they do for
    /// watch events.
    pub fn from_records<'a>(
        names: &dyn Naming,
        records: impl IntoIterator<Item = Listed<'a>>,
        revision: i64,
        prev: Option<&Snapshot>,
    ) -> (Self, Vec<BadEntry>) {
        let mut s = Snapshot {
            revision,
            ..Default::default()
        };
        let mut bad = Vec::new();
        for (r, v, created) in records {
            if let Some(p) = prev {
                s.seed(p, r);
            }
            if let Err(reason) = s.put(r, v, created) {
                bad.push(BadEntry {
                    key: names.name(r),
                    reason,
                });
            }
        }
        if let Some(p) = prev {
            for (net, age) in &p.network_age {
                if s.network_age.contains_key(net) {
                    let a = s.network_age.entry(net.clone()).or_insert(*age);
                    *a = (*a).min(*age);
                }
            }
            for (net, cfg) in &p.networks {
                if !s.networks.contains_key(net) && s.has_leases(net) {
                    s.networks.insert(net.clone(), cfg.clone());
                    s.orphaned.insert(net.clone());
                    bad.push(BadEntry {
                        key: names.name(&KeyKind::Config { net: net.clone() }),
                        reason: ORPHAN_REASON.into(),
                    });
                }
            }
        }
        (s, bad)
    }

    /// Builds the view from a listing of etcd keys (keys outside the layout
    /// are ignored). Tests write their fixtures this way.
    #[cfg(test)]
    pub fn from_kvs<'a>(
        keys: &super::Keys,
        kvs: impl IntoIterator<Item = ListedKv<'a>>,
        revision: i64,
        prev: Option<&Snapshot>,
    ) -> (Self, Vec<BadEntry>) {
        let parsed: Vec<(KeyKind, &[u8], i64)> = kvs
            .into_iter()
            .filter_map(|(k, v, c)| Some((keys.parse(k)?, v, c)))
            .collect();
        Self::from_records(
            keys,
            parsed.iter().map(|(r, v, c)| (r, *v, *c)),
            revision,
            prev,
        )
    }

    /// Copies `prev`'s good value for `r`, so a bad value can fall back to it.
    fn seed(&mut self, prev: &Snapshot, r: &KeyKind) {
        match r {
            KeyKind::Config { net } => {
                if let Some(c) = prev.networks.get(net) {
                    self.networks.insert(net.clone(), c.clone());
                }
            }
            KeyKind::Lease { net, subnet } => {
                let Some(sn) = parse_subnet_key(subnet) else {
                    return;
                };
                if let Some(l) = prev.leases.get(net).and_then(|m| m.get(&sn)) {
                    self.leases
                        .entry(net.clone())
                        .or_default()
                        .insert(sn, l.clone());
                    if let Some(r) = prev.created.get(&(net.clone(), sn)) {
                        self.created.insert((net.clone(), sn), *r);
                    }
                }
            }
            _ => {}
        }
    }

    fn has_leases(&self, net: &str) -> bool {
        self.leases.get(net).is_some_and(|m| !m.is_empty())
    }

    /// Applies a put with the key's create revision. On a bad value the last
    /// good one (if any) stays and the reason is returned.
    pub fn put(&mut self, record: &KeyKind, value: &[u8], created: i64) -> Result<(), String> {
        let kind = record.clone();
        let kept = |old: bool| {
            if old {
                "; keeping the last good value"
            } else {
                ""
            }
        };
        let net_name = match &kind {
            KeyKind::Config { net } | KeyKind::Lease { net, .. } | KeyKind::Node { net, .. } => net,
        };
        let age = self.network_age.entry(net_name.clone()).or_insert(created);
        *age = (*age).min(created);
        match kind {
            KeyKind::Config { net } => {
                let old = self.networks.get(&net);
                let c = serde_json::from_slice::<NetworkConfig>(value)
                    .map_err(|e| format!("invalid network config: {e}{}", kept(old.is_some())))?;
                if let Some(why) = crate::compat::too_new(c.min_agent_version.as_deref()) {
                    return Err(format!("network config {why}{}", kept(old.is_some())));
                }
                c.validate()
                    .map_err(|e| format!("{e}{}", kept(old.is_some())))?;
                if c.name != net {
                    return Err(format!(
                        "config names network {} but sits under {net}{}",
                        c.name,
                        kept(old.is_some())
                    ));
                }
                if let Some(o) = old {
                    if (o.cidr, o.subnet_len, o.vni, o.port)
                        != (c.cidr, c.subnet_len, c.vni, c.port)
                    {
                        return Err(format!(
                            "CIDR, subnet length, VNI and port of a network cannot change in \
                             place (was {} /{} VNI {} port {}){}",
                            o.cidr,
                            o.subnet_len,
                            o.vni,
                            o.port,
                            kept(true)
                        ));
                    }
                }
                self.orphaned.remove(&net);
                self.networks.insert(net, c);
                Ok(())
            }
            KeyKind::Lease { net, subnet } => {
                let sn = parse_subnet_key(&subnet)
                    .ok_or_else(|| format!("`{subnet}` is not a subnet"))?;
                let old = self.leases.get(&net).and_then(|m| m.get(&sn));
                let l = serde_json::from_slice::<SubnetLease>(value)
                    .map_err(|e| format!("invalid lease: {e}{}", kept(old.is_some())))?;
                if let Some(why) = crate::compat::too_new(l.min_agent_version.as_deref()) {
                    return Err(format!("lease {why}{}", kept(old.is_some())));
                }
                let old_created = self.created.get(&(net.clone(), sn)).copied();
                if let Some(o) = old.filter(|o| o.node != l.node) {
                    if old_created == Some(created) {
                        return Err(format!(
                            "lease of node {} rewritten in place to name node {}; a lease \
                             changes hands only by expiry and re-creation{}",
                            o.node,
                            l.node,
                            kept(true)
                        ));
                    }
                }
                self.created.insert((net.clone(), sn), created);
                self.leases.entry(net).or_default().insert(sn, l);
                Ok(())
            }
            KeyKind::Node { net, node } => {
                let sn = std::str::from_utf8(value)
                    .ok()
                    .and_then(|t| t.trim().parse::<Ipv4Net>().ok())
                    .ok_or_else(|| "node record is not a subnet".to_string())?;
                self.remembered.entry(net).or_default().insert(node, sn);
                Ok(())
            }
        }
    }

    /// Applies a delete. Returns a report when a config is kept as orphaned.
    pub fn delete(&mut self, names: &dyn Naming, record: &KeyKind) -> Option<BadEntry> {
        match record.clone() {
            KeyKind::Config { net } => {
                if self.has_leases(&net) && self.networks.contains_key(&net) {
                    self.orphaned.insert(net);
                    return Some(BadEntry {
                        key: names.name(record),
                        reason: ORPHAN_REASON.into(),
                    });
                }
                self.networks.remove(&net);
                self.network_age.remove(&net);
            }
            KeyKind::Lease { net, subnet } => {
                if let (Some(m), Some(sn)) = (self.leases.get_mut(&net), parse_subnet_key(&subnet))
                {
                    m.remove(&sn);
                    self.created.remove(&(net.clone(), sn));
                }
                // The last lease of an orphaned network is gone: so is it.
                if self.orphaned.contains(&net) && !self.has_leases(&net) {
                    self.orphaned.remove(&net);
                    self.networks.remove(&net);
                    self.network_age.remove(&net);
                }
            }
            KeyKind::Node { net, node } => {
                if let Some(m) = self.remembered.get_mut(&net) {
                    m.remove(&node);
                }
            }
        }
        None
    }

    /// The subnet `node` holds in `net`, if any.
    pub fn held_by(&self, net: &str, node: &str) -> Option<Ipv4Net> {
        self.leases
            .get(net)?
            .iter()
            .find(|(_, l)| l.node == node)
            .map(|(s, _)| *s)
    }
}

const ORPHAN_REASON: &str =
    "network config deleted while hosts hold leases in it; serving its last good config";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Keys;

    const NET: &str = r#"{"name":"default","cidr":"10.244.0.0/16","subnet_len":24,"vni":1}"#;
    const LEASE: &str = r#"{"node":"h1","underlay_ip":"100.64.0.1","vtep_mac":"0e:6e:64:40:00:01","dataplane":"ebpf","agent_version":"0.1.0"}"#;
    const LEASE_H2: &str = r#"{"node":"h2","underlay_ip":"100.64.0.2","vtep_mac":"0e:6e:64:40:00:02","dataplane":"ebpf","agent_version":"0.1.0"}"#;
    const KEY: &str = "/netfab/networks/default/leases/10.244.1.0-24";
    const CFG: &str = "/netfab/networks/default/config";

    /// Tests name records by their etcd keys.
    trait ByKey {
        fn put_key(&mut self, k: &Keys, key: &str, v: &[u8], c: i64) -> Result<(), String>;
        fn delete_key(&mut self, k: &Keys, key: &str) -> Option<BadEntry>;
    }
    impl ByKey for Snapshot {
        fn put_key(&mut self, k: &Keys, key: &str, v: &[u8], c: i64) -> Result<(), String> {
            self.put(&k.parse(key).unwrap(), v, c)
        }
        fn delete_key(&mut self, k: &Keys, key: &str) -> Option<BadEntry> {
            self.delete(k, &k.parse(key).unwrap())
        }
    }

    #[test]
    fn builds_from_a_listing_and_skips_bad_entries_with_their_key() {
        let k = Keys::new("/netfab");
        let kvs: Vec<ListedKv> = vec![
            (CFG, NET.as_bytes(), 1),
            (KEY, LEASE.as_bytes(), 2),
            (
                "/netfab/networks/default/leases/10.244.2.0-24",
                b"{not json",
                3,
            ),
            (
                "/netfab/networks/bad/config",
                br#"{"name":"bad","cidr":"10.0.0.0/40","subnet_len":24,"vni":2}"#,
                4,
            ),
            ("/netfab/networks/default/nodes/h1", b"10.244.1.0/24", 5),
            ("/netfab/unrelated", b"whatever", 6),
        ];
        let (s, bad) = Snapshot::from_kvs(&k, kvs, 7, None);
        assert_eq!(s.revision, 7);
        assert_eq!(s.networks.keys().collect::<Vec<_>>(), vec!["default"]);
        assert_eq!(s.leases["default"].len(), 1);
        assert_eq!(
            s.held_by("default", "h1"),
            Some("10.244.1.0/24".parse().unwrap())
        );
        assert_eq!(
            s.remembered["default"]["h1"],
            "10.244.1.0/24".parse().unwrap()
        );
        let bad_keys: Vec<&str> = bad.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(
            bad_keys,
            vec![
                "/netfab/networks/default/leases/10.244.2.0-24",
                "/netfab/networks/bad/config"
            ]
        );
    }

    /// Records from newer writers: fields this agent does not know are
    /// ignored; a record asking for a newer agent is refused whole, with
    /// its key, and the rest is served.
    #[test]
    fn unknown_fields_are_served_and_newer_minimums_refused_by_key() {
        let k = Keys::new("/netfab");
        let net_plus = r#"{"name":"default","cidr":"10.244.0.0/16","subnet_len":24,"vni":1,"cidr6":"fd10:244::/56","subnet6_len":64}"#;
        let lease_plus = r#"{"node":"h1","underlay_ip":"100.64.0.1","vtep_mac":"0e:6e:64:40:00:01","dataplane":"ebpf","agent_version":"9.0.0","underlay_ip6":"fd00::1","wireguard":{"public_key":"k"}}"#;
        let net_guarded = r#"{"name":"v6only","cidr":"10.250.0.0/16","subnet_len":24,"vni":2,"min_agent_version":"999.0.0"}"#;
        let lease_guarded = r#"{"node":"h3","underlay_ip":"100.64.0.3","vtep_mac":"0e:6e:64:40:00:03","dataplane":"ebpf","agent_version":"999.0.0","min_agent_version":"999.0.0"}"#;
        let kvs: Vec<ListedKv> = vec![
            (CFG, net_plus.as_bytes(), 1),
            (KEY, lease_plus.as_bytes(), 2),
            ("/netfab/networks/v6only/config", net_guarded.as_bytes(), 3),
            (
                "/netfab/networks/default/leases/10.244.3.0-24",
                lease_guarded.as_bytes(),
                4,
            ),
        ];
        let (s, bad) = Snapshot::from_kvs(&k, kvs, 5, None);
        assert_eq!(s.networks["default"].cidr, "10.244.0.0/16".parse().unwrap());
        let served: Vec<String> = s.leases["default"]
            .values()
            .map(|l| l.node.clone())
            .collect();
        assert_eq!(
            served,
            vec!["h1"],
            "the lease with unknown fields is served"
        );
        assert!(!s.networks.contains_key("v6only"));
        let bad: Vec<(&str, &str)> = bad
            .iter()
            .map(|b| (b.key.as_str(), b.reason.as_str()))
            .collect();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(bad[0].0, "/netfab/networks/v6only/config");
        assert!(bad[0].1.contains("needs netfab agent 999.0.0"), "{bad:?}");
        assert_eq!(bad[1].0, "/netfab/networks/default/leases/10.244.3.0-24");
        assert!(bad[1].1.contains("needs netfab agent 999.0.0"), "{bad:?}");
    }

    /// A guarded update never replaces the last good value.
    #[test]
    fn a_guarded_update_keeps_the_last_good_value() {
        let k = Keys::new("/netfab");
        let mut s = Snapshot::default();
        s.put_key(&k, CFG, NET.as_bytes(), 1).unwrap();
        let guarded = r#"{"name":"default","cidr":"10.244.0.0/16","subnet_len":24,"vni":1,"direct_routing":false,"min_agent_version":"999.0.0"}"#;
        let e = s.put_key(&k, CFG, guarded.as_bytes(), 1).unwrap_err();
        assert!(e.contains("keeping the last good value"), "{e}");
        assert!(s.networks["default"].direct_routing, "not half-applied");
    }

    #[test]
    fn a_bad_update_keeps_the_last_good_value_and_a_delete_removes_it() {
        let k = Keys::new("/netfab");
        let mut s = Snapshot::default();
        s.put_key(&k, KEY, LEASE.as_bytes(), 5).unwrap();
        let e = s.put_key(&k, KEY, b"[]", 5).unwrap_err();
        assert!(e.contains("keeping the last good value"), "{e}");
        assert_eq!(s.leases["default"].len(), 1);
        s.delete_key(&k, KEY);
        assert!(s.leases["default"].is_empty());
    }

    #[test]
    fn a_lease_changes_hands_only_by_re_creation() {
        let k = Keys::new("/netfab");
        let mut s = Snapshot::default();
        s.put_key(&k, KEY, LEASE.as_bytes(), 5).unwrap();
        // Overwritten in place (same create revision): refused.
        let e = s.put_key(&k, KEY, LEASE_H2.as_bytes(), 5).unwrap_err();
        assert!(e.contains("rewritten in place"), "{e}");
        assert_eq!(
            s.held_by("default", "h1").map(|n| n.to_string()),
            Some("10.244.1.0/24".into())
        );
        // Deleted and created again by another node: accepted.
        s.delete_key(&k, KEY);
        s.put_key(&k, KEY, LEASE_H2.as_bytes(), 9).unwrap();
        assert!(s.held_by("default", "h2").is_some());
    }

    #[test]
    fn network_configs_are_immutable_in_place_and_kept_while_leased() {
        let k = Keys::new("/netfab");
        let mut s = Snapshot::default();
        s.put_key(&k, CFG, NET.as_bytes(), 1).unwrap();
        let moved = br#"{"name":"default","cidr":"10.250.0.0/16","subnet_len":24,"vni":1}"#;
        assert!(s
            .put_key(&k, CFG, moved, 1)
            .unwrap_err()
            .contains("cannot change"));
        assert_eq!(s.networks["default"].cidr.to_string(), "10.244.0.0/16");
        assert!(s.put_key(&k, CFG, b"garbage", 1).is_err());
        assert_eq!(s.networks["default"].cidr.to_string(), "10.244.0.0/16");
        // Deleted while a lease exists: kept, reported.
        s.put_key(&k, KEY, LEASE.as_bytes(), 2).unwrap();
        assert!(s.delete_key(&k, CFG).is_some());
        assert!(s.networks.contains_key("default"));
        // A re-list without the config keeps it too.
        let kvs: Vec<ListedKv> = vec![(KEY, LEASE.as_bytes(), 2)];
        let (r, bad) = Snapshot::from_kvs(&k, kvs, 10, Some(&s));
        assert!(r.networks.contains_key("default"));
        assert_eq!(bad.len(), 1);
        // Back again: no longer orphaned. Its last lease gone while orphaned: removed.
        s.put_key(&k, CFG, NET.as_bytes(), 11).unwrap();
        assert!(s.orphaned.is_empty());
        s.delete_key(&k, CFG);
        s.delete_key(&k, KEY);
        assert!(!s.networks.contains_key("default"));
    }

    #[test]
    fn a_relist_keeps_good_values_over_bad_ones() {
        let k = Keys::new("/netfab");
        let (prev, _) = Snapshot::from_kvs(
            &k,
            vec![(CFG, NET.as_bytes(), 1), (KEY, LEASE.as_bytes(), 2)],
            2,
            None,
        );
        let (s, bad) = Snapshot::from_kvs(
            &k,
            vec![(CFG, NET.as_bytes(), 1), (KEY, &b"junk"[..], 2)],
            3,
            Some(&prev),
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(s.leases["default"].len(), 1);
    }
}
