//! The cluster store: key layout, the cached view of it (`Snapshot`, pure),
//! and the etcd client (`etcd`).
//!
//! Key layout under a prefix (default `/netfab`):
//!
//! ```text
//! <prefix>/networks/<net>/config                   NetworkConfig (JSON)
//! <prefix>/networks/<net>/leases/<a.b.c.d-len>     SubnetLease (JSON), bound to the owner's etcd lease
//! <prefix>/networks/<net>/nodes/<node>             "a.b.c.d/len": the subnet the node last held (no TTL)
//! ```
pub mod etcd;
pub mod snapshot;

pub use snapshot::Snapshot;

pub const DEFAULT_PREFIX: &str = "/netfab";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    Config { net: String },
    Lease { net: String, subnet: String },
    Node { net: String, node: String },
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
    pub fn root(&self) -> String {
        format!("{}/networks/", self.prefix)
    }
    pub fn network(&self, net: &str) -> String {
        format!("{}/networks/{net}/", self.prefix)
    }
    pub fn config(&self, net: &str) -> String {
        format!("{}/networks/{net}/config", self.prefix)
    }
    pub fn leases(&self, net: &str) -> String {
        format!("{}/networks/{net}/leases/", self.prefix)
    }
    pub fn lease(&self, net: &str, subnet: &ipnet::Ipv4Net) -> String {
        format!("{}{}", self.leases(net), crate::lease::subnet_key(subnet))
    }
    pub fn node(&self, net: &str, node: &str) -> String {
        format!("{}/networks/{net}/nodes/{node}", self.prefix)
    }

    pub fn parse(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&self.root())?;
        let mut parts = rest.splitn(3, '/');
        let net = parts.next()?.to_string();
        match (parts.next()?, parts.next()) {
            ("config", None) => Some(KeyKind::Config { net }),
            ("leases", Some(s)) if !s.is_empty() => Some(KeyKind::Lease {
                net,
                subnet: s.into(),
            }),
            ("nodes", Some(n)) if !n.is_empty() => Some(KeyKind::Node {
                net,
                node: n.into(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/netfab/");
        assert_eq!(k.config("default"), "/netfab/networks/default/config");
        let l = k.lease("default", &"10.244.1.0/24".parse().unwrap());
        assert_eq!(l, "/netfab/networks/default/leases/10.244.1.0-24");
        assert_eq!(
            k.parse(&l),
            Some(KeyKind::Lease {
                net: "default".into(),
                subnet: "10.244.1.0-24".into()
            })
        );
        assert_eq!(
            k.parse(&k.config("x")),
            Some(KeyKind::Config { net: "x".into() })
        );
        assert_eq!(
            k.parse(&k.node("x", "h1")),
            Some(KeyKind::Node {
                net: "x".into(),
                node: "h1".into()
            })
        );
        assert_eq!(k.parse("/netfab/networks/x/unknown"), None);
        assert_eq!(k.parse("/other/networks/x/config"), None);
    }
}
