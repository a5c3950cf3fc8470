//! The store-driven source: lease a subnet in every network, keep the
//! leases alive, follow every host's leases, and compute this host's
//! desired state from them. It sees the store only through
//! [`SubnetStore`]: typed record events, never etcd types or key strings.
//!
//! Reconcile strategy: events are trusted and taken in at once; a full
//! re-list every `relist` repairs anything a lost event or a hand edit left
//! behind. When the store is unreachable nothing is removed: the desired
//! state keeps its last value and the session is reopened by itself.
//!
//! Trust: every entry is judged on its own (`judge`); refused ones are
//! reported with their name and the rest is served. This host's own lease
//! record is guarded (`own`): deleted, it is written back; overwritten in
//! place (garbage or another node's name), it is rewritten. A subnet is
//! given up only when another node created the record anew after it was
//! deleted, and even then not while local containers live in it. Peers
//! whose lease expired stay routed (`grace`) until another host leases
//! their subnet.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use ipnet::Ipv4Net;
use log::{error, info, warn};

use super::{
    desired::{self, RetainedLease},
    grace::Grace,
    judge::{self, judge, Judged},
    own::{classify, Held, OwnKey},
    status, Source, StatusContext,
};
use crate::{
    addr::MacAddr,
    lease::{parse_subnet_key, SubnetLease},
    network::NetworkConfig,
    rundir::{
        endpoints::{self, LocalEndpoint},
        write_atomic, Changes, LeaseFile,
    },
    state::DesiredState,
    store::{snapshot::BadEntry, KeyKind, LeaseEvent, Snapshot, StoreEvent, SubnetStore},
};

pub struct FabricConfig {
    pub node: String,
    pub underlay_interface: String,
    /// The underlay address with its prefix: decides who is on our L2.
    pub underlay_net: Ipv4Net,
    /// The dataplane this host runs (published in its leases).
    pub dataplane: String,
    pub lease_ttl: i64,
    /// Full re-list interval (each one jittered by ±25%).
    pub relist: Duration,
    pub endpoints_file: PathBuf,
    /// Where the leased subnets are written for local consumers (lab, CNI).
    pub lease_file: Option<PathBuf>,
    /// MTU containers on this host must use (published in the lease file).
    pub container_mtu: u32,
    /// Source-NAT container traffic that leaves the cluster.
    pub masquerade: bool,
    /// How long a peer's subnet stays routed after its lease is gone.
    pub lease_grace: Duration,
    /// The store's endpoints as addresses: never routed into the fabric,
    /// never reachable from containers.
    pub store_addrs: Vec<SocketAddrV4>,
    /// Log every datapath drop.
    pub log_drops: bool,
    /// The CNI plugin's IPAM data directory: the durable record of local
    /// containers, from which a corrupt endpoints file is rebuilt.
    pub ipam_dir: PathBuf,
    /// Give the leases up at once on shutdown (a node leaving for good)
    /// instead of letting them run out their TTL (a restart takes them over).
    pub release_on_exit: bool,
}

/// `d` give or take a quarter, so agents started together drift apart.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(Instant::now()) % 1000;
    d.mul_f64(0.75 + r as f64 / 2000.0)
}

/// Identifies one version of a file: an atomic replace makes a new inode.
fn stamp(p: &Path) -> Option<(u64, SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

/// Local containers from the durable records: IPAM allocations whose host
/// veth still exists, with the MAC of the host's permanent neighbour entry
/// for the container (every backend installs one). Rewrites the file.
async fn rebuild_endpoints(ipam_dir: &Path, file: &Path) -> Result<Vec<LocalEndpoint>> {
    let allocs = crate::ipam::all(ipam_dir)?;
    let nl = crate::netlink::Netlink::connect()?;
    let links = nl.links().await?;
    let mut macs = BTreeMap::new();
    for (_, ip, a) in &allocs {
        let Some(link) = links.get(&a.host_ifname) else {
            continue;
        };
        let neighs = nl.neigh_list_ip(link.facts.ifindex).await?;
        if let Some((n, _)) = neighs.into_iter().find(|(n, _)| n.ip == *ip) {
            macs.insert(*ip, n.mac);
        }
    }
    let eps = endpoints::rebuild(&allocs, &macs);
    endpoints::replace(file, eps.clone())?;
    Ok(eps)
}

/// Whether `last_view` still judges the snapshot, but for new leases to
/// take in: while only hosts join (each lease the newest of all, judged
/// alone, as the full judgement would), an event costs its own lease; any
/// other change judges the whole view again.
#[derive(Default)]
struct ViewCache {
    current: bool,
    /// The newest create revision judged.
    newest: i64,
    fresh: Vec<(String, Ipv4Net)>,
}

pub struct Fabric<S: SubnetStore> {
    cfg: FabricConfig,
    store: S,
    me: SubnetLease,
    /// The cluster view; `None` until the first listing since start.
    snap: Option<Snapshot>,
    held: BTreeMap<String, Held>,
    endpoints: Vec<LocalEndpoint>,
    ep_stamp: Option<(u64, SystemTime, u64)>,
    /// (name, reason) pairs already logged, so each offender is reported once.
    reported: BTreeSet<(String, String)>,
    /// Records the snapshot refused, by name (until a good value comes).
    bad: BTreeMap<String, String>,
    written: Option<LeaseFile>,
    connected: bool,
    grace: Grace,
    /// What the last `desired` judged and retained (for status).
    last_view: Judged,
    views: ViewCache,
    last_retained: Vec<RetainedLease>,
    next_connect: Instant,
    /// When the next full re-list is due; `None` while not listed.
    next_list: Option<Instant>,
    ka_tick: tokio::time::Interval,
    /// When the store last confirmed our lease (session opened or kept
    /// alive).
    lease_renewed: Option<Instant>,
    /// The plugin's writes wake the loop at once (no polling delay).
    local: Changes,
    /// Why the last attempt to open a store session failed (for the CNI
    /// plugin while nothing is listed yet).
    connect_error: Option<String>,
}

impl<S: SubnetStore> Fabric<S> {
    pub fn new(cfg: FabricConfig, store: S) -> Self {
        let me = SubnetLease {
            node: cfg.node.clone(),
            underlay_ip: cfg.underlay_net.addr(),
            vtep_mac: MacAddr::vtep_for(cfg.underlay_net.addr()),
            dataplane: cfg.dataplane.clone(),
            agent_version: crate::compat::AGENT_VERSION.to_string(),
            min_agent_version: None,
        };
        let ka_every = Duration::from_secs((cfg.lease_ttl / 3).max(1) as u64);
        let local = Changes::watch(cfg.endpoints_file.parent().unwrap_or(Path::new("/")));
        Self {
            grace: Grace::new(cfg.lease_grace),
            cfg,
            store,
            me,
            snap: None,
            held: BTreeMap::new(),
            endpoints: Vec::new(),
            ep_stamp: None,
            reported: BTreeSet::new(),
            bad: BTreeMap::new(),
            written: None,
            connected: false,
            last_view: Judged::default(),
            views: ViewCache::default(),
            last_retained: Vec::new(),
            next_connect: Instant::now(),
            next_list: None,
            ka_tick: tokio::time::interval(ka_every),
            lease_renewed: None,
            connect_error: None,
            local,
        }
    }

    /// The subnets this host holds, by network.
    pub fn held(&self) -> BTreeMap<String, Ipv4Net> {
        self.held
            .iter()
            .map(|(n, h)| (n.clone(), h.subnet))
            .collect()
    }

    fn judge_ctx(&self) -> judge::Context {
        judge::Context {
            underlay: Some(self.cfg.underlay_net),
            etcd_ips: self.cfg.store_addrs.iter().map(|a| *a.ip()).collect(),
        }
    }

    fn lost(&mut self, why: &str) {
        if self.store.is_open() {
            warn!(
                "{} session lost ({why}); keeping the dataplane as it is and reconnecting",
                self.store.kind()
            );
        }
        self.store.close();
        self.next_list = None;
    }

    async fn load_endpoints(&mut self) -> bool {
        let st = stamp(&self.cfg.endpoints_file);
        if st == self.ep_stamp {
            return false;
        }
        self.ep_stamp = st;
        match endpoints::load(&self.cfg.endpoints_file) {
            Ok(e) => {
                self.endpoints = e;
                true
            }
            Err(e) => {
                error!("{e:#}; rebuilding it from the IPAM allocations");
                match rebuild_endpoints(&self.cfg.ipam_dir, &self.cfg.endpoints_file).await {
                    Ok(eps) => {
                        info!("endpoints file rebuilt: {} containers", eps.len());
                        self.endpoints = eps;
                        self.ep_stamp = stamp(&self.cfg.endpoints_file);
                        true
                    }
                    Err(e) => {
                        error!("rebuilding endpoints: {e:#}; keeping the previous");
                        false
                    }
                }
            }
        }
    }

    async fn open_session(&mut self) -> Result<()> {
        self.store.open(self.cfg.lease_ttl).await?;
        self.lease_renewed = Some(Instant::now());
        let listing = self.store.list().await?;
        let (snap, bad) = listing.snapshot(&self.store, self.snap.as_ref());
        self.set_bad(&bad);
        self.snap = Some(snap);
        self.views.current = false;
        self.held.clear();
        self.acquire_missing().await?;
        self.relist().await?;
        info!(
            "connected to {}; holding {:?}",
            self.store.kind(),
            self.held()
        );
        Ok(())
    }

    /// Full listing: replaces the cached view (keeping last good values over
    /// bad ones), restarts the watch from it, and checks our own records as
    /// the store has them now (the view may keep a last good value over
    /// garbage written onto them).
    async fn relist(&mut self) -> Result<()> {
        let listing = self.store.list().await?;
        let (snap, bad) = listing.snapshot(&self.store, self.snap.as_ref());
        self.store.watch(snap.revision + 1).await?;
        self.next_list = Some(Instant::now() + jittered(self.cfg.relist));
        self.snap = Some(snap);
        self.views.current = false;
        self.set_bad(&bad);
        let held: Vec<(String, Held)> = self.held.iter().map(|(n, h)| (n.clone(), *h)).collect();
        for (net, h) in held {
            let raw = self.store.lease_record(&net, &h.subnet).await?;
            let own = classify(
                &self.me,
                raw.as_ref().map(|(v, c, m)| (v.as_slice(), *c, *m)),
            );
            if own != OwnKey::Ours {
                self.repair(&net, own).await?;
            }
        }
        if self.needs_acquire() {
            self.acquire_missing().await?;
        }
        Ok(())
    }

    /// Puts our own lease record right (see `OwnKey`).
    async fn repair(&mut self, net: &str, own: OwnKey) -> Result<()> {
        let Some(h) = self.held.get(net).copied() else {
            return Ok(());
        };
        let name = self.store.name(&KeyKind::Lease {
            net: net.into(),
            subnet: crate::lease::subnet_key(&h.subnet),
        });
        let expect = match &own {
            OwnKey::Ours => return Ok(()),
            OwnKey::Absent => None,
            OwnKey::Foreign { mod_rev, .. } => Some(*mod_rev),
            OwnKey::TakenBy(node) => {
                let live = self
                    .endpoints
                    .iter()
                    .filter(|e| e.network == net && h.subnet.contains(&e.ip))
                    .count();
                if live > 0 {
                    error!(
                        "our subnet {} in {net} was deleted and leased by node {node}; {live} \
                         container(s) live in it, so this host keeps it and does not switch \
                         subnets: resolve the conflict by hand",
                        h.subnet
                    );
                } else {
                    warn!(
                        "our subnet {} in {net} was deleted and leased by node {node}; \
                         taking another (no containers here)",
                        h.subnet
                    );
                    self.held.remove(net);
                }
                return Ok(());
            }
        };
        if let Some(rev) = self.store.reclaim(net, &h.subnet, &self.me, expect).await? {
            match own {
                OwnKey::Foreign { what, .. } => {
                    error!("our lease {name} was overwritten with {what}; rewritten")
                }
                _ => warn!(
                    "our lease {name} was deleted from {}; written back",
                    self.store.kind()
                ),
            }
            self.held.insert(net.into(), Held { written: rev, ..h });
        }
        Ok(())
    }

    /// Networks this host should lease in: accepted here, config present.
    fn wanted_networks(&self) -> Vec<NetworkConfig> {
        let Some(snap) = &self.snap else {
            return Vec::new();
        };
        judge::judge_networks(snap, &self.store, &self.judge_ctx())
            .0
            .into_values()
            .filter(|n| !snap.orphaned.contains(&n.name))
            .collect()
    }

    fn needs_acquire(&self) -> bool {
        self.wanted_networks()
            .iter()
            .any(|n| !self.held.contains_key(&n.name))
    }

    async fn acquire_missing(&mut self) -> Result<()> {
        let wanted: Vec<_> = self
            .wanted_networks()
            .into_iter()
            .filter(|n| !self.held.contains_key(&n.name))
            .collect();
        let Some(mut snap) = self.snap.clone() else {
            return Ok(());
        };
        for net in wanted {
            match self.store.acquire(&net, &self.me, &snap).await {
                Ok((sn, rev)) => {
                    info!("network {}: leased {sn}", net.name);
                    self.held.insert(
                        net.name.clone(),
                        Held {
                            subnet: sn,
                            written: rev,
                        },
                    );
                    // Our own put reaches us as an event later; until then
                    // the cache must already know the subnet is ours.
                    snap.leases
                        .entry(net.name.clone())
                        .or_default()
                        .insert(sn, self.me.clone());
                    snap.created.insert((net.name.clone(), sn), rev);
                }
                Err(e) => error!("network {}: {e:#}", net.name),
            }
        }
        self.held.retain(|n, _| snap.networks.contains_key(n));
        self.snap = Some(snap);
        self.views.current = false;
        Ok(())
    }

    /// Takes record events into the cache. Returns whether anything changed
    /// and what our own records need.
    fn on_events(&mut self, events: &[LeaseEvent]) -> (bool, Vec<(String, OwnKey)>) {
        let Some(snap) = self.snap.as_mut() else {
            return (false, Vec::new());
        };
        let mut repairs: BTreeMap<String, OwnKey> = BTreeMap::new();
        let mut reports = Vec::new();
        for ev in events {
            let at = ev.at();
            // Names are for reports: built only when one is made or cleared.
            let name = || self.store.name(at);
            let views = &mut self.views;
            match ev {
                LeaseEvent::Put { value, created, .. } => {
                    // A lease key the view has not seen, newer than all.
                    let new_lease = match at {
                        KeyKind::Lease { net, subnet } => parse_subnet_key(subnet)
                            .filter(|sn| {
                                *created > views.newest
                                    && !snap.leases.get(net).is_some_and(|m| m.contains_key(sn))
                            })
                            .map(|sn| (net.clone(), sn)),
                        _ => None,
                    };
                    match snap.put(at, value, *created) {
                        Ok(()) => {
                            if !self.bad.is_empty() {
                                self.bad.remove(&name());
                            }
                            match new_lease {
                                Some(k) => {
                                    views.newest = *created;
                                    views.fresh.push(k);
                                }
                                // Node records are not judged.
                                None if matches!(at, KeyKind::Node { .. }) => {}
                                None => views.current = false,
                            }
                        }
                        Err(reason) => reports.push(BadEntry {
                            key: name(),
                            reason,
                        }),
                    }
                }
                LeaseEvent::Delete { .. } => {
                    views.current = false;
                    if !self.bad.is_empty() {
                        self.bad.remove(&name());
                    }
                    if let Some(b) = snap.delete(&self.store, at) {
                        reports.push(b);
                    }
                }
            }
            snap.revision = snap.revision.max(ev.modified());
            // Our own record: judged by the event itself, and only events
            // newer than our last write to it (older ones may be in flight).
            let KeyKind::Lease { net, subnet } = at else {
                continue;
            };
            let Some(h) = self.held.get(net) else {
                continue;
            };
            if parse_subnet_key(subnet) != Some(h.subnet) || ev.modified() <= h.written {
                continue;
            }
            let own = match ev {
                LeaseEvent::Delete { .. } => OwnKey::Absent,
                LeaseEvent::Put {
                    value,
                    created,
                    modified,
                    ..
                } => classify(&self.me, Some((value, *created, *modified))),
            };
            if own == OwnKey::Ours {
                repairs.remove(net);
            } else {
                repairs.insert(net.clone(), own);
            }
        }
        for b in reports {
            self.note_bad(b);
        }
        (!events.is_empty(), repairs.into_iter().collect())
    }

    async fn on_store_event(&mut self, ev: StoreEvent) -> bool {
        let events = match ev {
            StoreEvent::Lost(why) => {
                self.lost(&why);
                return true;
            }
            // A keep-alive answer: nothing changed, nothing to acquire.
            StoreEvent::Changes(events) if events.is_empty() => return false,
            StoreEvent::Progress(rev) => {
                if let Some(s) = self.snap.as_mut() {
                    s.revision = s.revision.max(rev);
                }
                return false;
            }
            StoreEvent::Changes(events) => events,
        };
        let (changed, repairs) = self.on_events(&events);
        for (net, own) in repairs {
            if let Err(e) = self.repair(&net, own).await {
                self.lost(&format!("repairing our lease in {net}: {e:#}"));
                return true;
            }
        }
        if self.store.is_open() && self.needs_acquire() {
            if let Err(e) = self.acquire_missing().await {
                warn!("acquiring leases: {e:#}");
            }
        }
        changed
    }

    /// Replaces the store-level refusals with a listing's.
    fn set_bad(&mut self, bad: &[BadEntry]) {
        self.bad.clear();
        for b in bad {
            self.note_bad(b.clone());
        }
    }

    fn note_bad(&mut self, b: BadEntry) {
        self.log_once(&b);
        self.bad.insert(b.key, b.reason);
    }

    /// Each offender is logged once per reason, not at every apply.
    fn log_once(&mut self, b: &BadEntry) {
        if self.reported.insert((b.key.clone(), b.reason.clone())) {
            error!("skipping {}: {}", b.key, b.reason);
        }
    }

    /// Writes the lease file when it differs from what is on disk, so a
    /// file corrupted or removed by hand is rewritten at the next apply.
    fn write_lease_file(&mut self) {
        let Some(path) = &self.cfg.lease_file else {
            return;
        };
        let subnets = self.held();
        let cidrs = self
            .wanted_networks()
            .into_iter()
            .filter(|n| subnets.contains_key(&n.name))
            .map(|n| (n.name, n.cidr))
            .collect();
        let lf = LeaseFile {
            version: crate::rundir::FORMAT_VERSION,
            node: self.me.node.clone(),
            subnets,
            mtu: self.cfg.container_mtu,
            cidrs,
        };
        let on_disk = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<LeaseFile>(&t).ok());
        if on_disk.as_ref() == Some(&lf) {
            self.written = Some(lf);
            return;
        }
        if self.written.is_some() && on_disk.is_none() {
            warn!(
                "lease file {} was unreadable or gone; rewriting it",
                path.display()
            );
        }
        match serde_json::to_string_pretty(&lf)
            .map_err(anyhow::Error::from)
            .and_then(|t| write_atomic(path, &t))
        {
            Ok(()) => self.written = Some(lf),
            Err(e) => error!("writing lease file: {e:#}"),
        }
    }
}

impl<S: SubnetStore> Source for Fabric<S> {
    async fn refresh(&mut self) -> bool {
        let mut dirty = self.load_endpoints().await;
        if !self.store.is_open() && Instant::now() >= self.next_connect {
            match self.open_session().await {
                Ok(()) => {
                    self.connect_error = None;
                    dirty = true
                }
                Err(e) => {
                    warn!("{}: {e:#}; retrying in 1 s", self.store.kind());
                    self.connect_error = Some(format!("{e:#}"));
                    self.store.close();
                    self.next_connect = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        let due = self.next_list.is_some_and(|t| Instant::now() >= t);
        if self.store.is_open() && due {
            if let Err(e) = self.relist().await {
                self.lost(&format!("{e:#}"));
            }
            dirty = true;
        }
        if self.connected != self.store.is_open() {
            self.connected = self.store.is_open();
            dirty = true;
        }
        dirty
    }

    async fn wait(&mut self) -> bool {
        tokio::select! {
            ev = self.store.next_event() => {
                let mut changed = self.on_store_event(ev).await;
                // Whatever else has already arrived is taken in too, so a
                // burst of watch responses costs one apply, not one each.
                while self.store.is_open() {
                    use futures::FutureExt;
                    match self.store.next_event().now_or_never() {
                        Some(ev) => changed |= self.on_store_event(ev).await,
                        None => break,
                    }
                }
                changed
            }
            _ = self.ka_tick.tick() => {
                if self.store.is_open() {
                    if let Err(e) = self.store.keep_alive().await {
                        self.lost(&format!("{e:#}"));
                        return true;
                    }
                    self.lease_renewed = Some(Instant::now());
                }
                false
            }
            _ = self.local.next() => false,
            // The periodic checks (re-list, reconnect) and the fallback when
            // inotify is unavailable.
            _ = tokio::time::sleep(Duration::from_millis(200)) => false,
        }
    }

    fn waiting_for(&self) -> String {
        match (&self.connect_error, self.store.is_open()) {
            (_, true) => "the first listing of the store (connected to etcd)".into(),
            (Some(e), false) => format!(
                "etcd, which it cannot reach ({e}); it has not listed the store since it \
                 started, so it programs no new container until it has (running containers \
                 keep their network)"
            ),
            (None, false) => "its first connection to etcd".into(),
        }
    }

    fn desired(&mut self) -> Option<DesiredState> {
        let snap = self.snap.as_ref()?;
        let ctx = self.judge_ctx();
        let view = if self.views.current {
            let mut v = std::mem::take(&mut self.last_view);
            for (net, sn) in self.views.fresh.drain(..) {
                judge::judge_new_lease(&mut v, snap, &self.store, &ctx, &net, sn);
            }
            v
        } else {
            self.views = ViewCache {
                current: true,
                newest: snap.created.values().copied().max().unwrap_or(0),
                fresh: Vec::new(),
            };
            judge(snap, &self.store, &ctx)
        };
        for b in &view.rejected {
            self.log_once(b);
        }
        let retained = self.grace.retained(&view, &self.me.node, Instant::now());
        let (mut state, warnings) = desired::desired_state(
            &view,
            &retained,
            &self.held(),
            &self.endpoints,
            &self.cfg.underlay_interface,
            Some(self.cfg.underlay_net),
            &self.me.node,
        );
        state.masquerade = self.cfg.masquerade;
        state.etcd_endpoints = self.cfg.store_addrs.clone();
        state.log_drops = self.cfg.log_drops;
        for w in warnings {
            warn!("{w}");
        }
        self.last_view = view;
        self.last_retained = retained;
        Some(state)
    }

    fn context(&self) -> StatusContext<'_> {
        StatusContext {
            snap: self.snap.as_ref(),
            connected: self.connected,
            rejected: self
                .last_view
                .rejected
                .iter()
                .map(|b| (b.key.clone(), b.reason.clone()))
                .chain(self.bad.iter().map(|(k, v)| (k.clone(), v.clone())))
                .map(|(key, reason)| status::Rejected { key, reason })
                .collect(),
            retained: self
                .last_retained
                .iter()
                .map(|r| {
                    let age = self.grace.gone_for(&r.network, r.subnet);
                    (r.subnet, r.lease.node.clone(), age)
                })
                .collect(),
        }
    }

    fn lease_ttl_left(&self) -> Option<f64> {
        let renewed = self.lease_renewed.filter(|_| self.store.is_open())?;
        Some((self.cfg.lease_ttl as f64 - renewed.elapsed().as_secs_f64()).max(0.0))
    }

    fn applied(&mut self) {
        self.write_lease_file();
    }

    async fn shutdown(&mut self) {
        if self.cfg.release_on_exit && self.store.is_open() {
            match self.store.release().await {
                Ok(()) => info!("leases released"),
                Err(e) => warn!("releasing leases: {e:#}; they expire after their TTL"),
            }
        } else {
            info!("leases expire after their TTL unless a restarted agent takes them over");
        }
    }
}
