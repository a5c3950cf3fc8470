//! The agent's store on etcd: one session = one connection, one etcd lease
//! that every key of this host is bound to, its keep-alive stream and the
//! watch of the prefix. Any error ends the whole session (the caller opens
//! a new one); nothing here decides what the events mean.
use anyhow::{anyhow, Result};
use etcd_client::{EventType, LeaseKeepAliveStream, LeaseKeeper, WatchStream};
use ipnet::Ipv4Net;

use super::{EtcdConfig, EtcdStore};
use crate::{
    lease::SubnetLease,
    network::NetworkConfig,
    store::{
        KeyKind, Keys, LeaseEvent, Listing, Naming, RawRecord, Snapshot, StoreEvent, SubnetStore,
    },
};

struct Session {
    store: EtcdStore,
    lease: i64,
    keeper: LeaseKeeper,
    keepalive: LeaseKeepAliveStream,
    watch: Option<WatchStream>,
}

pub struct EtcdSubnets {
    cfg: EtcdConfig,
    keys: Keys,
    s: Option<Session>,
    /// The member the next session is opened with. One member per session,
    /// the next one after a failure: the client's own balancing kept
    /// picking a dead member (found by tests/etcd_cluster.rs).
    next: usize,
}

impl EtcdSubnets {
    pub fn new(cfg: EtcdConfig) -> Self {
        Self {
            keys: Keys::new(&cfg.prefix),
            cfg,
            s: None,
            next: 0,
        }
    }

    fn session(&mut self) -> Result<&mut Session> {
        self.s.as_mut().ok_or_else(|| anyhow!("no etcd session"))
    }
}

/// A watch response as typed record events (keys outside the layout dropped).
fn events(keys: &Keys, resp: &etcd_client::WatchResponse) -> Vec<LeaseEvent> {
    resp.events()
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv()?;
            let at = keys.parse(&String::from_utf8_lossy(kv.key()))?;
            Some(match ev.event_type() {
                EventType::Put => LeaseEvent::Put {
                    at,
                    value: kv.value().to_vec(),
                    created: kv.create_revision(),
                    modified: kv.mod_revision(),
                },
                EventType::Delete => LeaseEvent::Delete {
                    at,
                    modified: kv.mod_revision(),
                },
            })
        })
        .collect()
}

impl Naming for EtcdSubnets {
    fn name(&self, r: &KeyKind) -> String {
        self.keys.name(r)
    }
}

impl SubnetStore for EtcdSubnets {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn open(&mut self, ttl: i64) -> Result<()> {
        self.s = None;
        let n = self.cfg.endpoints.len().max(1);
        let endpoint = self.cfg.endpoints.get(self.next % n).cloned();
        // Whatever happens, the session after this one starts elsewhere.
        self.next = (self.next + 1) % n;
        let cfg = EtcdConfig {
            endpoints: endpoint.into_iter().collect(),
            ..self.cfg.clone()
        };
        let mut store = EtcdStore::connect(&cfg).await?;
        let lease = store.grant(ttl).await?;
        let (keeper, keepalive) = store.keep_alive(lease).await?;
        self.s = Some(Session {
            store,
            lease,
            keeper,
            keepalive,
            watch: None,
        });
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.s.is_some()
    }

    fn close(&mut self) {
        self.s = None;
    }

    async fn list(&mut self) -> Result<Listing> {
        self.session()?.store.list().await
    }

    async fn watch(&mut self, revision: i64) -> Result<()> {
        let s = self.session()?;
        s.watch = Some(s.store.watch(revision).await?);
        Ok(())
    }

    async fn next_event(&mut self) -> StoreEvent {
        let Self { keys, s, .. } = self;
        let Some(s) = s.as_mut() else {
            return std::future::pending().await;
        };
        let Some(w) = s.watch.as_mut() else {
            return std::future::pending().await;
        };
        let lost = |why: String| StoreEvent::Lost(why);
        tokio::select! {
            msg = w.message() => match msg {
                // Compacted past where it stood: the events it missed are
                // gone from etcd's history, so the session lists again.
                Ok(Some(resp)) if resp.canceled() && resp.compact_revision() > 0 => lost(format!(
                    "watch canceled: etcd compacted its history to revision {}",
                    resp.compact_revision()
                )),
                Ok(Some(resp)) if resp.canceled() => {
                    lost(format!("watch canceled: {}", resp.cancel_reason()))
                }
                Ok(Some(resp)) if resp.events().is_empty() && !resp.created() => {
                    StoreEvent::Progress(resp.header().map_or(0, |h| h.revision()))
                }
                Ok(Some(resp)) => StoreEvent::Changes(events(keys, &resp)),
                Ok(None) => lost("watch stream ended".into()),
                Err(e) => lost(format!("watch: {e}")),
            },
            msg = s.keepalive.message() => match msg {
                Ok(Some(r)) if r.ttl() <= 0 => lost(format!("etcd lease {:x} expired", s.lease)),
                // A renewal answered: nothing changed.
                Ok(Some(_)) => StoreEvent::Changes(Vec::new()),
                Ok(None) => lost("keep-alive stream ended".into()),
                Err(e) => lost(format!("keep-alive: {e}")),
            },
        }
    }

    async fn keep_alive(&mut self) -> Result<()> {
        let timeout = self.cfg.timeout;
        let s = self.session()?;
        match tokio::time::timeout(timeout, s.keeper.keep_alive()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow!("keep-alive request failed: {e}")),
            Err(_) => Err(anyhow!("keep-alive request: no answer within {timeout:?}")),
        }
    }

    async fn acquire(
        &mut self,
        net: &NetworkConfig,
        me: &SubnetLease,
        view: &Snapshot,
    ) -> Result<(Ipv4Net, i64)> {
        let s = self.session()?;
        s.store.acquire(net, me, s.lease, view).await
    }

    async fn reclaim(
        &mut self,
        net: &str,
        sn: &Ipv4Net,
        me: &SubnetLease,
        expect_mod: Option<i64>,
    ) -> Result<Option<i64>> {
        let s = self.session()?;
        s.store.reclaim(net, sn, me, s.lease, expect_mod).await
    }

    async fn lease_record(&mut self, net: &str, sn: &Ipv4Net) -> Result<Option<RawRecord>> {
        let key = self.keys.lease(net, sn);
        self.session()?.store.get_raw(&key).await
    }

    async fn release(&mut self) -> Result<()> {
        let s = self.session()?;
        s.store.revoke(s.lease).await?;
        self.s = None;
        Ok(())
    }
}
