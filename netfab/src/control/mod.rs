//! The agent's etcd mode: lease a subnet in every network, keep the leases
//! alive, watch every host's leases, and keep the dataplane equal to that.
//!
//! Reconcile strategy: watch events are trusted and applied at once; a full
//! re-list every `resync` repairs anything a lost event or a hand edit left
//! behind, and re-applies the dataplane (repairing kernel drift). When etcd
//! is unreachable nothing is removed: the dataplane keeps its last state and
//! the agent reconnects by itself. Until the first successful listing after
//! start the dataplane is not touched at all, so an agent restarted during an
//! etcd outage keeps forwarding with what the pinned maps hold.
pub mod desired;
pub mod status;

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Result};
use etcd_client::{EventType, LeaseKeepAliveStream, LeaseKeeper, WatchStream};
use ipnet::Ipv4Net;
use log::{error, info, warn};
use serde::Serialize;

use crate::{
    addr::MacAddr,
    dataplane::Dataplane,
    endpoints::{self, LocalEndpoint},
    lease::SubnetLease,
    store::{
        etcd::{EtcdConfig, EtcdStore},
        Keys, Snapshot,
    },
};

pub struct ControlConfig {
    pub etcd: EtcdConfig,
    pub node: String,
    pub underlay_interface: String,
    pub underlay_ip: Ipv4Addr,
    pub lease_ttl: i64,
    pub resync: Duration,
    pub endpoints_file: PathBuf,
    /// Where the leased subnets are written for local consumers (lab, CNI).
    pub lease_file: Option<PathBuf>,
    /// Where `netfab status` reads what the agent is doing.
    pub status_file: Option<PathBuf>,
    /// Why this dataplane was chosen (shown by `netfab status`).
    pub dataplane_reason: String,
    /// The underlay address with its prefix: decides who is on our L2.
    pub underlay_net: Option<Ipv4Net>,
    /// MTU containers on this host must use.
    pub container_mtu: u32,
    /// Source-NAT container traffic that leaves the cluster.
    pub masquerade: bool,
}

/// What the lease file holds.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq, Clone)]
pub struct LeaseFile {
    pub node: String,
    pub subnets: BTreeMap<String, Ipv4Net>,
    /// MTU for containers on this host.
    pub mtu: u32,
}

/// The live connection to etcd; any error drops all of it and the loop
/// reconnects.
#[derive(Default)]
struct Session {
    store: Option<EtcdStore>,
    lease: i64,
    keeper: Option<LeaseKeeper>,
    keepalive: Option<LeaseKeepAliveStream>,
    watch: Option<WatchStream>,
    last_list: Option<Instant>,
}

impl Session {
    fn is_up(&self) -> bool {
        self.store.is_some()
    }
    fn drop_all(&mut self, why: &str) {
        if self.is_up() {
            warn!("etcd session lost ({why}); keeping the dataplane as it is and reconnecting");
        }
        *self = Session::default();
    }
}

fn stamp(p: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

pub struct Controller<'a, D: Dataplane> {
    cfg: ControlConfig,
    dp: &'a mut D,
    me: SubnetLease,
    keys: Keys,
    snap: Option<Snapshot>,
    held: BTreeMap<String, Ipv4Net>,
    endpoints: Vec<LocalEndpoint>,
    reported_bad: HashSet<String>,
    written: Option<LeaseFile>,
    /// Whether the etcd session is up, for `netfab status` and CNI STATUS.
    connected: bool,
}

impl<'a, D: Dataplane> Controller<'a, D> {
    pub fn new(cfg: ControlConfig, dp: &'a mut D) -> Self {
        let me = SubnetLease {
            node: cfg.node.clone(),
            underlay_ip: cfg.underlay_ip,
            vtep_mac: MacAddr::vtep_for(cfg.underlay_ip),
            dataplane: dp.name().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Self {
            keys: Keys::new(&cfg.etcd.prefix),
            cfg,
            dp,
            me,
            snap: None,
            held: BTreeMap::new(),
            endpoints: Vec::new(),
            reported_bad: HashSet::new(),
            written: None,
            connected: false,
        }
    }

    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let mut s = Session::default();
        let mut next_connect = Instant::now();
        let mut ep_stamp = None;
        let mut last_apply: Option<Instant> = None;
        let mut dirty = true;
        let ka_every = Duration::from_secs((self.cfg.lease_ttl / 3).max(1) as u64);
        let mut ka_tick = tokio::time::interval(ka_every);
        loop {
            let st = stamp(&self.cfg.endpoints_file);
            if st != ep_stamp {
                ep_stamp = st;
                match endpoints::load(&self.cfg.endpoints_file) {
                    Ok(e) => {
                        self.endpoints = e;
                        dirty = true;
                    }
                    Err(e) => error!("{e:#}; keeping the previous endpoints"),
                }
            }
            if !s.is_up() && Instant::now() >= next_connect {
                match self.open_session(&mut s).await {
                    Ok(()) => dirty = true,
                    Err(e) => {
                        warn!("etcd: {e:#}; retrying in 1 s");
                        s = Session::default();
                        next_connect = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            let resync_due = s.last_list.is_some_and(|t| t.elapsed() >= self.cfg.resync);
            if s.is_up() && resync_due {
                if let Err(e) = self.relist(&mut s).await {
                    s.drop_all(&format!("{e:#}"));
                }
                dirty = true;
            }
            if self.connected != s.is_up() {
                self.connected = s.is_up();
                dirty = true;
            }
            let apply_due = last_apply.is_none_or(|t| t.elapsed() >= self.cfg.resync);
            if (dirty || apply_due) && self.snap.is_some() {
                self.apply().await;
                last_apply = Some(Instant::now());
                dirty = false;
            }

            tokio::select! {
                                _ = &mut shutdown => {
                    info!("shutting down; leases expire after their TTL, the dataplane stays");
                    // Nobody is answering for this host any more.
                    if let Some(p) = &self.cfg.status_file {
                        let _ = std::fs::remove_file(p);
                    }
                    return Ok(());
                }
                msg = next_watch(&mut s.watch) => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            s.drop_all(&format!("watch canceled: {}", resp.cancel_reason()));
                        } else if self.on_watch(&resp) {
                            dirty = true;
                            if self.needs_acquire() {
                                if let Err(e) = self.acquire_missing(&mut s).await {
                                    warn!("acquiring leases: {e:#}");
                                }
                            }
                        }
                    }
                    Ok(None) => s.drop_all("watch stream ended"),
                    Err(e) => s.drop_all(&format!("watch: {e}")),
                },
                msg = next_keepalive(&mut s.keepalive) => match msg {
                    Ok(Some(r)) if r.ttl() <= 0 => {
                        warn!("etcd lease {:x} expired; re-acquiring subnets", s.lease);
                        s.drop_all("lease expired");
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => s.drop_all("keep-alive stream ended"),
                    Err(e) => s.drop_all(&format!("keep-alive: {e}")),
                },
                _ = ka_tick.tick() => {
                    if let Some(k) = s.keeper.as_mut() {
                        let r = tokio::time::timeout(self.cfg.etcd.timeout, k.keep_alive()).await;
                        if !matches!(r, Ok(Ok(()))) {
                            s.drop_all("keep-alive request failed");
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn open_session(&mut self, s: &mut Session) -> Result<()> {
        let mut store = EtcdStore::connect(&self.cfg.etcd).await?;
        let (snap, bad) = store.snapshot().await?;
        self.report_bad(&bad);
        s.lease = store.grant(self.cfg.lease_ttl).await?;
        let (keeper, ka) = store.keep_alive(s.lease).await?;
        s.keeper = Some(keeper);
        s.keepalive = Some(ka);
        s.store = Some(store);
        self.snap = Some(snap);
        self.held.clear();
        self.acquire_missing(s).await?;
        self.relist(s).await?;
        info!("connected to etcd; holding {:?}", self.held);
        Ok(())
    }

    /// Full listing: replaces the cached view and restarts the watch from it.
    async fn relist(&mut self, s: &mut Session) -> Result<()> {
        let store = s.store.as_mut().ok_or_else(|| anyhow!("not connected"))?;
        let (snap, bad) = store.snapshot().await?;
        self.report_bad(&bad);
        s.watch = Some(store.watch(snap.revision + 1).await?);
        s.last_list = Some(Instant::now());
        // Our leases must still be there; if one vanished, take one again.
        let lost: Vec<String> = self
            .held
            .iter()
            .filter(|(net, sn)| snap.held_by(net, &self.me.node) != Some(**sn))
            .map(|(n, _)| n.clone())
            .collect();
        self.snap = Some(snap);
        for n in lost {
            warn!("our lease in network {n} is gone; re-acquiring");
            self.held.remove(&n);
        }
        if self.needs_acquire() {
            self.acquire_missing(s).await?;
        }
        Ok(())
    }

    fn needs_acquire(&self) -> bool {
        self.snap
            .as_ref()
            .is_some_and(|snap| snap.networks.keys().any(|n| !self.held.contains_key(n)))
    }

    async fn acquire_missing(&mut self, s: &mut Session) -> Result<()> {
        let (Some(store), Some(mut snap)) = (s.store.as_mut(), self.snap.clone()) else {
            return Ok(());
        };
        let wanted: Vec<_> = snap
            .networks
            .values()
            .filter(|n| !self.held.contains_key(&n.name))
            .cloned()
            .collect();
        for net in wanted {
            match store.acquire(&net, &self.me, s.lease, &snap).await {
                Ok(sn) => {
                    info!("network {}: leased {sn}", net.name);
                    self.held.insert(net.name.clone(), sn);
                    // Our own put reaches us through the watch later; until
                    // then the cache must already know the subnet is ours.
                    snap.leases
                        .entry(net.name.clone())
                        .or_default()
                        .insert(sn, self.me.clone());
                }
                Err(e) => error!("network {}: {e:#}", net.name),
            }
        }
        self.held.retain(|n, _| snap.networks.contains_key(n));
        self.snap = Some(snap);
        Ok(())
    }

    /// Applies watch events to the cache; true if anything changed.
    fn on_watch(&mut self, resp: &etcd_client::WatchResponse) -> bool {
        let Some(snap) = self.snap.as_mut() else {
            return false;
        };
        let store_keys = &self.keys;
        let mut changed = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => {
                    if let Err(reason) = snap.put(store_keys, &key, kv.value()) {
                        error!("skipping {key}: {reason}");
                    }
                }
                EventType::Delete => snap.delete(store_keys, &key),
            }
            snap.revision = snap.revision.max(kv.mod_revision());
            changed = true;
        }
        // Judge loss by what the events say about our own keys, not by
        // comparing with the cache: events older than our own acquisition
        // can still be in flight and would make a fresh lease look gone.
        let me = self.me.node.clone();
        let mut gone: Vec<String> = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(crate::store::KeyKind::Lease { net, subnet }) = store_keys.parse(&key) else {
                if let Some(crate::store::KeyKind::Config { net }) = store_keys.parse(&key) {
                    if ev.event_type() == EventType::Delete && self.held.contains_key(&net) {
                        gone.push(net);
                    }
                }
                continue;
            };
            let ours = self.held.get(&net).map(crate::lease::subnet_key) == Some(subnet);
            let taken = ev.event_type() == EventType::Put
                && serde_json::from_slice::<crate::lease::SubnetLease>(kv.value())
                    .is_ok_and(|l| l.node != me);
            if ours && (ev.event_type() == EventType::Delete || taken) {
                gone.push(net);
            }
        }
        for n in gone {
            warn!("our lease in network {n} disappeared from etcd; re-acquiring");
            self.held.remove(&n);
        }
        changed
    }

    fn report_bad(&mut self, bad: &[crate::store::snapshot::BadEntry]) {
        for b in bad {
            if self.reported_bad.insert(format!("{}{}", b.key, b.reason)) {
                error!("skipping {}: {}", b.key, b.reason);
            }
        }
    }

    async fn apply(&mut self) {
        let Some(snap) = &self.snap else { return };
        let (mut state, warnings) = desired::desired_state(
            snap,
            &self.held,
            &self.endpoints,
            &self.cfg.underlay_interface,
            self.cfg.underlay_net,
            &self.me.node,
        );
        state.masquerade = self.cfg.masquerade;
        for w in warnings {
            warn!("{w}");
        }
        if let Err(e) = state.validate() {
            error!("computed state is inconsistent, not applied: {e}");
            return;
        }
        match self.dp.apply(&state).await {
            Ok(r) => {
                for sk in &r.skipped {
                    warn!("not programmed yet: {sk}");
                }
                for rf in &r.refused {
                    error!("{rf}");
                }
                self.write_status(snap, &state, &r);
                if r.map_upserts + r.map_removals > 0 {
                    info!(
                        "applied: {} map upserts, {} removals, {} remotes, {} endpoints",
                        r.map_upserts,
                        r.map_removals,
                        state.remotes.len(),
                        state.endpoints.len()
                    );
                }
            }
            Err(e) => error!("apply failed: {e:#}"),
        }
        self.write_lease_file();
    }

    fn write_status(
        &self,
        snap: &Snapshot,
        state: &crate::state::DesiredState,
        r: &crate::dataplane::ApplyReport,
    ) {
        let Some(path) = &self.cfg.status_file else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let st = status::build(
            status::StatusInput {
                node: &self.me.node,
                dataplane: self.dp.name(),
                reason: &self.cfg.dataplane_reason,
                underlay: self.cfg.underlay_net,
                container_mtu: self.cfg.container_mtu,
                snap,
                state,
                report: r,
                etcd_connected: self.connected,
            },
            now,
        );
        let res = serde_json::to_string_pretty(&st)
            .map_err(anyhow::Error::from)
            .and_then(|t| endpoints::write_atomic(path, &t));
        if let Err(e) = res {
            error!("writing status file: {e:#}");
        }
    }

    fn write_lease_file(&mut self) {
        let Some(path) = &self.cfg.lease_file else {
            return;
        };
        let lf = LeaseFile {
            node: self.me.node.clone(),
            subnets: self.held.clone(),
            mtu: self.cfg.container_mtu,
        };
        if self.written.as_ref() == Some(&lf) {
            return;
        }
        match serde_json::to_string_pretty(&lf)
            .map_err(anyhow::Error::from)
            .and_then(|t| endpoints::write_atomic(path, &t))
        {
            Ok(()) => self.written = Some(lf),
            Err(e) => error!("writing lease file: {e:#}"),
        }
    }
}

async fn next_watch(
    w: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match w {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

async fn next_keepalive(
    k: &mut Option<LeaseKeepAliveStream>,
) -> Result<Option<etcd_client::LeaseKeepAliveResponse>, etcd_client::Error> {
    match k {
        Some(k) => k.message().await,
        None => std::future::pending().await,
    }
}
