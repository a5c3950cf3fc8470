//! An in-process [`SubnetStore`]: records, revisions, sessions and watches
//! in memory, shared by clones. For pure tests of the agent's loop: a test
//! writes peers' records through [`MemoryStore::put`] and sees what the
//! loop does, with no etcd. Same semantics the loop relies on: revisions
//! grow by one per write, leases are created only if absent, a session's
//! records vanish when it is released or expired ([`MemoryStore::expire`]).
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use super::{
    KeyKind, Keys, LeaseEvent, Listing, Naming, RawRecord, Snapshot, StoreEvent, SubnetStore,
};
use crate::{
    lease::{candidates, subnet_key, SubnetLease},
    network::NetworkConfig,
};

#[derive(Default)]
struct Inner {
    revision: i64,
    /// Record -> (value, created, modified, owning session).
    records: BTreeMap<KeyKind, (Vec<u8>, i64, i64, Option<u64>)>,
    history: Vec<LeaseEvent>,
    watchers: Vec<mpsc::UnboundedSender<LeaseEvent>>,
    next_session: u64,
    expired: std::collections::BTreeSet<u64>,
    /// Calls the loop made, by kind (tests assert on them).
    calls: BTreeMap<&'static str, u64>,
}

impl Inner {
    fn emit(&mut self, ev: LeaseEvent) {
        self.history.push(ev.clone());
        self.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }
    fn put(&mut self, at: KeyKind, value: Vec<u8>, session: Option<u64>) -> i64 {
        self.revision += 1;
        let rev = self.revision;
        let created = self.records.get(&at).map_or(rev, |r| r.1);
        self.records
            .insert(at.clone(), (value.clone(), created, rev, session));
        self.emit(LeaseEvent::Put {
            at,
            value,
            created,
            modified: rev,
        });
        rev
    }
    fn delete(&mut self, at: &KeyKind) -> bool {
        if self.records.remove(at).is_none() {
            return false;
        }
        self.revision += 1;
        let modified = self.revision;
        self.emit(LeaseEvent::Delete {
            at: at.clone(),
            modified,
        });
        true
    }
    fn count(&mut self, call: &'static str) {
        *self.calls.entry(call).or_default() += 1;
    }
}

/// A handle on one shared in-memory store; each clone is another client
/// with its own session and watch.
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    keys: Keys,
    session: Option<u64>,
    events: Option<mpsc::UnboundedReceiver<LeaseEvent>>,
    lost: Option<String>,
}

impl Clone for MemoryStore {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keys: self.keys.clone(),
            session: None,
            events: None,
            lost: None,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Default::default(),
            keys: Keys::new(super::DEFAULT_PREFIX),
            session: None,
            events: None,
            lost: None,
        }
    }
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test thread that panicked while holding it has failed already.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a record as any client would (no session: it never expires).
    pub fn put(&self, at: KeyKind, value: &[u8]) -> i64 {
        self.lock().put(at, value.to_vec(), None)
    }

    pub fn delete(&self, at: &KeyKind) -> bool {
        self.lock().delete(at)
    }

    pub fn get(&self, at: &KeyKind) -> Option<Vec<u8>> {
        self.lock().records.get(at).map(|r| r.0.clone())
    }

    /// How often the loop called `call` (`list`, `acquire`, ...).
    pub fn calls(&self, call: &'static str) -> u64 {
        self.lock().calls.get(call).copied().unwrap_or(0)
    }

    /// Ends every session (as etcd does when keep-alives stop): their
    /// records go, and each session's holder sees it lost.
    pub fn expire_sessions(&self) {
        let mut i = self.lock();
        let gone: Vec<KeyKind> = i
            .records
            .iter()
            .filter(|(_, r)| r.3.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            i.delete(&k);
        }
        let upto = i.next_session;
        i.expired.extend(1..=upto);
    }

    fn live(&self) -> Result<u64> {
        match self.session {
            Some(s) if self.lock().expired.contains(&s) => bail!("session expired"),
            Some(s) => Ok(s),
            None => bail!("no session"),
        }
    }

    fn lease_kind(net: &str, sn: &Ipv4Net) -> KeyKind {
        KeyKind::Lease {
            net: net.into(),
            subnet: subnet_key(sn),
        }
    }

    /// Create-if-absent, bound to our session.
    fn create(&self, at: KeyKind, value: &[u8], session: u64) -> Option<i64> {
        let mut i = self.lock();
        if i.records.contains_key(&at) {
            return None;
        }
        Some(i.put(at, value.to_vec(), Some(session)))
    }
}

impl Naming for MemoryStore {
    fn name(&self, r: &KeyKind) -> String {
        self.keys.name(r)
    }
}

impl SubnetStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "the in-memory store"
    }

    async fn open(&mut self, _ttl: i64) -> Result<()> {
        let mut i = self.lock();
        i.count("open");
        i.next_session += 1;
        let s = i.next_session;
        drop(i);
        self.session = Some(s);
        self.events = None;
        self.lost = None;
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.session.is_some()
    }

    fn close(&mut self) {
        self.session = None;
        self.events = None;
    }

    async fn list(&mut self) -> Result<Listing> {
        self.live()?;
        let mut i = self.lock();
        i.count("list");
        Ok(Listing {
            records: i
                .records
                .iter()
                .map(|(k, (v, c, _, _))| (k.clone(), v.clone(), *c))
                .collect(),
            revision: i.revision,
        })
    }

    async fn watch(&mut self, revision: i64) -> Result<()> {
        self.live()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut i = self.lock();
        i.count("watch");
        for ev in i.history.iter().filter(|e| e.modified() >= revision) {
            let _ = tx.send(ev.clone());
        }
        i.watchers.push(tx);
        drop(i);
        self.events = Some(rx);
        Ok(())
    }

    async fn next_event(&mut self) -> StoreEvent {
        if self.session.is_some() && self.live().is_err() {
            return StoreEvent::Lost("session expired".into());
        }
        let Some(rx) = self.events.as_mut() else {
            return std::future::pending().await;
        };
        let Some(first) = rx.recv().await else {
            return StoreEvent::Lost("watch ended".into());
        };
        let mut batch = vec![first];
        while let Ok(ev) = rx.try_recv() {
            batch.push(ev);
        }
        StoreEvent::Changes(batch)
    }

    async fn keep_alive(&mut self) -> Result<()> {
        self.live().map(|_| ())
    }

    async fn acquire(
        &mut self,
        net: &NetworkConfig,
        me: &SubnetLease,
        view: &Snapshot,
    ) -> Result<(Ipv4Net, i64)> {
        let s = self.live()?;
        self.lock().count("acquire");
        let value = serde_json::to_vec(me)?;
        let taken = view
            .leases
            .get(&net.name)
            .map(|l| l.keys().copied().collect())
            .unwrap_or_default();
        let remembered = view.remembered.get(&net.name).cloned().unwrap_or_default();
        for sn in candidates(net, &taken, &remembered, &me.node) {
            if let Some(rev) = self.create(Self::lease_kind(&net.name, &sn), &value, s) {
                return Ok((sn, rev));
            }
        }
        bail!("network {} is exhausted", net.name)
    }

    async fn reclaim(
        &mut self,
        net: &str,
        sn: &Ipv4Net,
        me: &SubnetLease,
        expect_mod: Option<i64>,
    ) -> Result<Option<i64>> {
        let s = self.live()?;
        let at = Self::lease_kind(net, sn);
        let value = serde_json::to_vec(me)?;
        let mut i = self.lock();
        i.count("reclaim");
        let cur = i.records.get(&at).map(|r| r.2);
        if cur != expect_mod {
            return Ok(None);
        }
        Ok(Some(i.put(at, value, Some(s))))
    }

    async fn lease_record(&mut self, net: &str, sn: &Ipv4Net) -> Result<Option<RawRecord>> {
        self.live()?;
        let mut i = self.lock();
        i.count("lease_record");
        Ok(i.records
            .get(&Self::lease_kind(net, sn))
            .map(|(v, c, m, _)| (v.clone(), *c, *m)))
    }

    async fn release(&mut self) -> Result<()> {
        let s = self.live()?;
        let mut i = self.lock();
        i.count("release");
        let mine: Vec<KeyKind> = i
            .records
            .iter()
            .filter(|(_, r)| r.3 == Some(s))
            .map(|(k, _)| k.clone())
            .collect();
        for k in mine {
            i.delete(&k);
        }
        drop(i);
        self.close();
        Ok(())
    }
}
