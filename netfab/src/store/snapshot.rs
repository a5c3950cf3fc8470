//! The agent's cached view of the store, built from a listing and kept
//! current by watch events. Pure: bad values are recorded with their key and
//! skipped, never fatal, so one broken entry cannot take the rest down.
use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::{KeyKind, Keys};
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
}

/// A key whose value could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    pub key: String,
    pub reason: String,
}

impl Snapshot {
    pub fn from_kvs<'a>(
        keys: &Keys,
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        revision: i64,
    ) -> (Self, Vec<BadEntry>) {
        let mut s = Snapshot {
            revision,
            ..Default::default()
        };
        let mut bad = Vec::new();
        for (k, v) in kvs {
            if let Err(reason) = s.put(keys, k, v) {
                bad.push(BadEntry {
                    key: k.to_string(),
                    reason,
                });
            }
        }
        (s, bad)
    }

    /// Applies a put. On a bad value the old entry (if any) is removed too:
    /// what the store says now is unusable, and stale data would be wrong.
    pub fn put(&mut self, keys: &Keys, key: &str, value: &[u8]) -> Result<(), String> {
        let Some(kind) = keys.parse(key) else {
            return Ok(()); // not ours to interpret
        };
        let res = match &kind {
            KeyKind::Config { net } => serde_json::from_slice::<NetworkConfig>(value)
                .map_err(|e| format!("invalid network config: {e}"))
                .and_then(|c| {
                    c.validate().map_err(|e| e.to_string())?;
                    if &c.name != net {
                        return Err(format!(
                            "config names network {} but sits under {net}",
                            c.name
                        ));
                    }
                    self.networks.insert(net.clone(), c);
                    Ok(())
                }),
            KeyKind::Lease { net, subnet } => {
                let parsed = parse_subnet_key(subnet)
                    .ok_or_else(|| format!("`{subnet}` is not a subnet"))
                    .and_then(|sn| {
                        serde_json::from_slice::<SubnetLease>(value)
                            .map(|l| (sn, l))
                            .map_err(|e| format!("invalid lease: {e}"))
                    });
                parsed.map(|(sn, l)| {
                    self.leases.entry(net.clone()).or_default().insert(sn, l);
                })
            }
            KeyKind::Node { net, node } => std::str::from_utf8(value)
                .ok()
                .and_then(|t| t.trim().parse::<Ipv4Net>().ok())
                .ok_or_else(|| "node record is not a subnet".to_string())
                .map(|sn| {
                    self.remembered
                        .entry(net.clone())
                        .or_default()
                        .insert(node.clone(), sn);
                }),
        };
        if res.is_err() {
            self.remove_kind(&kind);
        }
        res
    }

    pub fn delete(&mut self, keys: &Keys, key: &str) {
        if let Some(kind) = keys.parse(key) {
            self.remove_kind(&kind);
        }
    }

    fn remove_kind(&mut self, kind: &KeyKind) {
        match kind {
            KeyKind::Config { net } => {
                self.networks.remove(net);
            }
            KeyKind::Lease { net, subnet } => {
                if let (Some(m), Some(sn)) = (self.leases.get_mut(net), parse_subnet_key(subnet)) {
                    m.remove(&sn);
                }
            }
            KeyKind::Node { net, node } => {
                if let Some(m) = self.remembered.get_mut(net) {
                    m.remove(node);
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = r#"{"name":"default","cidr":"10.244.0.0/16","subnet_len":24,"vni":1}"#;
    const LEASE: &str = r#"{"node":"h1","underlay_ip":"100.64.0.1","vtep_mac":"0e:6e:64:40:00:01","dataplane":"ebpf","agent_version":"0.1.0"}"#;

    #[test]
    fn builds_from_a_listing_and_skips_bad_entries_with_their_key() {
        let k = Keys::new("/netfab");
        let kvs: Vec<(&str, &[u8])> = vec![
            ("/netfab/networks/default/config", NET.as_bytes()),
            (
                "/netfab/networks/default/leases/10.244.1.0-24",
                LEASE.as_bytes(),
            ),
            (
                "/netfab/networks/default/leases/10.244.2.0-24",
                b"{not json",
            ),
            (
                "/netfab/networks/bad/config",
                br#"{"name":"bad","cidr":"10.0.0.0/40","subnet_len":24,"vni":2}"#,
            ),
            ("/netfab/networks/default/nodes/h1", b"10.244.1.0/24"),
            ("/netfab/unrelated", b"whatever"),
        ];
        let (s, bad) = Snapshot::from_kvs(&k, kvs, 7);
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

    #[test]
    fn events_update_and_a_bad_update_removes_the_stale_value() {
        let k = Keys::new("/netfab");
        let key = "/netfab/networks/default/leases/10.244.1.0-24";
        let mut s = Snapshot::default();
        s.put(&k, key, LEASE.as_bytes()).unwrap();
        assert!(s.put(&k, key, b"[]").is_err());
        assert!(s.leases["default"].is_empty());
        s.put(&k, key, LEASE.as_bytes()).unwrap();
        s.delete(&k, key);
        assert!(s.leases["default"].is_empty());
    }
}
