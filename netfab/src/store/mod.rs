//! The cluster store behind one seam, [`SubnetStore`]: acquire a subnet,
//! keep this host alive, release, and a stream of typed record events. The
//! agent's loop sees only this trait, [`KeyKind`] (what a record is) and
//! [`LeaseEvent`]s; etcd types and key strings stay in [`etcd`]. A second
//! store (Kubernetes) is a new module implementing the trait. [`memory`] is
//! an in-process store for pure tests of the loop. The cached view built
//! from the events is [`Snapshot`] (pure).
//!
//! Key layout under a prefix (default `/netfab`):
//!
//! ```text
//! <prefix>/networks/<net>/config                   NetworkConfig (JSON)
//! <prefix>/networks/<net>/leases/<a.b.c.d-len>     SubnetLease (JSON), bound to the owner's etcd lease
//! <prefix>/networks/<net>/nodes/<node>             "a.b.c.d/len": the subnet the node last held (no TTL)
//! ```
pub mod etcd;
pub mod memory;
pub mod snapshot;

use anyhow::Result;
use ipnet::Ipv4Net;

pub use snapshot::Snapshot;

use crate::{lease::SubnetLease, network::NetworkConfig};

pub const DEFAULT_PREFIX: &str = "/netfab";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// What a record of the store is (for etcd: what a key under the prefix
/// names). The `subnet` of a lease is the record's own name for it
/// (`10.244.1.0-24`), judged by the snapshot, not trusted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    Config { net: String },
    Lease { net: String, subnet: String },
    Node { net: String, node: String },
}

/// How a store names its records to users (in refusals and logs).
pub trait Naming {
    fn name(&self, r: &KeyKind) -> String;
}

impl Naming for Keys {
    fn name(&self, r: &KeyKind) -> String {
        match r {
            KeyKind::Config { net } => self.config(net),
            KeyKind::Lease { net, subnet } => format!("{}{subnet}", self.leases(net)),
            KeyKind::Node { net, node } => self.node(net, node),
        }
    }
}

/// One change of one record, in store order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Written: the raw value (judged by the snapshot) and the record's
    /// create and modify revisions.
    Put {
        at: KeyKind,
        value: Vec<u8>,
        created: i64,
        modified: i64,
    },
    Delete {
        at: KeyKind,
        modified: i64,
    },
}

impl LeaseEvent {
    pub fn at(&self) -> &KeyKind {
        match self {
            LeaseEvent::Put { at, .. } | LeaseEvent::Delete { at, .. } => at,
        }
    }
    pub fn modified(&self) -> i64 {
        match self {
            LeaseEvent::Put { modified, .. } | LeaseEvent::Delete { modified, .. } => *modified,
        }
    }
}

/// What the store's session produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    Changes(Vec<LeaseEvent>),
    /// The store has sent everything up to this revision (a watch progress
    /// notification): an idle cache is still current.
    Progress(i64),
    /// The session is gone (stream ended, liveness lease expired, watch
    /// canceled): the caller keeps its dataplane and opens a new one.
    Lost(String),
}

/// A full listing: every record with its value and create revision, and
/// the revision the listing reflects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub records: Vec<(KeyKind, Vec<u8>, i64)>,
    pub revision: i64,
}

impl Listing {
    /// The cached view of this listing (see [`Snapshot::from_records`]).
    pub fn snapshot(
        &self,
        names: &dyn Naming,
        prev: Option<&Snapshot>,
    ) -> (Snapshot, Vec<snapshot::BadEntry>) {
        Snapshot::from_records(
            names,
            self.records.iter().map(|(r, v, c)| (r, v.as_slice(), *c)),
            self.revision,
            prev,
        )
    }
}

/// A record as the store holds it now: raw value, create and modify revision.
pub type RawRecord = (Vec<u8>, i64, i64);

/// The agent's view of the cluster store. A session binds this host's
/// leases to its liveness: when the session's keep-alives stop, the leases
/// expire after their TTL.
#[allow(async_fn_in_trait)]
pub trait SubnetStore: Naming {
    /// What the store is, for logs (`etcd`).
    fn kind(&self) -> &'static str;
    /// Opens a session whose leases live `ttl` seconds without keep-alive.
    async fn open(&mut self, ttl: i64) -> Result<()>;
    fn is_open(&self) -> bool;
    /// Drops the session (its leases expire after their TTL).
    fn close(&mut self);
    async fn list(&mut self) -> Result<Listing>;
    /// Streams every change after `revision` through [`Self::next_event`].
    async fn watch(&mut self, revision: i64) -> Result<()>;
    /// The next batch of changes, or the session's end. Never completes
    /// while no session (or no watch) is open.
    async fn next_event(&mut self) -> StoreEvent;
    /// Renews the session's liveness once.
    async fn keep_alive(&mut self) -> Result<()>;
    /// Leases a subnet of `net` for `me` (its own live lease first, then a
    /// free one); returns it with the revision of the write.
    async fn acquire(
        &mut self,
        net: &NetworkConfig,
        me: &SubnetLease,
        view: &Snapshot,
    ) -> Result<(Ipv4Net, i64)>;
    /// Writes `me` back onto our lease of `sn`: only if it is absent
    /// (`expect_mod: None`) or unchanged since `expect_mod`. Returns the
    /// write's revision, or `None` when the record moved on meanwhile.
    async fn reclaim(
        &mut self,
        net: &str,
        sn: &Ipv4Net,
        me: &SubnetLease,
        expect_mod: Option<i64>,
    ) -> Result<Option<i64>>;
    /// Our lease record of `sn` as the store holds it now.
    async fn lease_record(&mut self, net: &str, sn: &Ipv4Net) -> Result<Option<RawRecord>>;
    /// Gives every lease of the session up now (instead of after the TTL).
    async fn release(&mut self) -> Result<()>;
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
