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
//!
//! Trust: every entry is judged on its own (`judge`); refused ones are
//! reported with their key and the rest is served. This host's own lease key
//! is guarded: deleted, it is written back; overwritten in place (garbage or
//! another node's name), it is rewritten. A subnet is given up only when
//! another node created the key anew after it was deleted, and even then not
//! while local containers live in it. Peers whose lease expired stay routed
//! (`--lease-grace`) until another host leases their subnet, so an agent
//! that is down or cut off from etcd does not cut its containers off.
pub mod desired;
pub mod judge;
pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Result};
use etcd_client::{EventType, LeaseKeepAliveStream, LeaseKeeper, WatchStream};
use ipnet::Ipv4Net;
use log::{error, info, warn};

use self::{
    desired::RetainedLease,
    judge::{judge, Judged},
};
use crate::{
    addr::MacAddr,
    dataplane::Dataplane,
    endpoints::{self, LocalEndpoint},
    lease::{subnet_key, SubnetLease},
    store::{
        etcd::{EtcdConfig, EtcdStore},
        snapshot::BadEntry,
        KeyKind, Keys, Snapshot,
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
    /// How long a peer's subnet stays routed after its lease is gone (unless
    /// another host leases it first).
    pub lease_grace: Duration,
    /// The etcd endpoints as addresses: never routed into the fabric, never
    /// reachable from containers.
    pub etcd_addrs: Vec<SocketAddrV4>,
    /// Log every datapath drop.
    pub log_drops: bool,
    /// The CNI plugin's IPAM data directory: the durable record of local
    /// containers, from which a corrupt endpoints file is rebuilt.
    pub ipam_dir: PathBuf,
}

/// Local containers from the durable records: IPAM allocations whose host
/// veth still exists, with the MAC of the host's permanent neighbour entry
/// for the container (every backend installs one). Rewrites the file.
async fn rebuild_endpoints(
    ipam_dir: &std::path::Path,
    file: &std::path::Path,
) -> Result<Vec<LocalEndpoint>> {
    let allocs = crate::ipam::all(ipam_dir)?;
    let nl = crate::netlink::Netlink::connect()?;
    let links = nl.links().await?;
    let mut macs = BTreeMap::new();
    for (_, ip, a) in &allocs {
        let Some(link) = links.get(&a.host_ifname) else {
            continue;
        };
        let (neighs, _) = nl.neigh_list(link.facts.ifindex).await?;
        if let Some((n, _)) = neighs.into_iter().find(|(n, _)| n.ip == *ip) {
            macs.insert(*ip, n.mac);
        }
    }
    let eps = endpoints::rebuild(&allocs, &macs);
    endpoints::replace(file, eps.clone())?;
    Ok(eps)
}

pub use crate::rundir::LeaseFile;

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

/// Identifies one version of a file: an atomic replace makes a new inode.
fn stamp(p: &PathBuf) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

/// A subnet this host holds, and the store revision of our last write to
/// its key: events at or before it are older than our own write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    subnet: Ipv4Net,
    written: i64,
}

/// What the store says about our own lease key, judged against `me`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnKey {
    Ours,
    /// Deleted: write it back.
    Absent,
    /// Garbage or rewritten in place: rewrite it (if unchanged since `mod_rev`).
    Foreign {
        mod_rev: i64,
        what: String,
    },
    /// Created anew by another node after a delete: that node holds it now.
    TakenBy(String),
}

fn classify_own(me: &SubnetLease, value: Option<(&[u8], i64, i64)>) -> OwnKey {
    let Some((v, created, modified)) = value else {
        return OwnKey::Absent;
    };
    match serde_json::from_slice::<SubnetLease>(v) {
        Ok(l) if &l == me => OwnKey::Ours,
        Ok(l) if l.node != me.node && created == modified => OwnKey::TakenBy(l.node),
        Ok(l) => OwnKey::Foreign {
            mod_rev: modified,
            what: format!("a value naming node {} at {}", l.node, l.underlay_ip),
        },
        Err(e) => OwnKey::Foreign {
            mod_rev: modified,
            what: format!("garbage ({e})"),
        },
    }
}

pub struct Controller<'a, D: Dataplane> {
    cfg: ControlConfig,
    dp: &'a mut D,
    me: SubnetLease,
    keys: Keys,
    snap: Option<Snapshot>,
    held: BTreeMap<String, Held>,
    endpoints: Vec<LocalEndpoint>,
    /// (key, reason) pairs already logged, so each offender is reported once.
    reported: BTreeSet<(String, String)>,
    /// Store entries the snapshot refused, by key (until a good value comes).
    bad_keys: BTreeMap<String, String>,
    written: Option<LeaseFile>,
    /// Whether the etcd session is up, for `netfab status` and CNI STATUS.
    connected: bool,
    /// Each peer lease seen live, and since when it has been gone (the
    /// grace runs from there).
    seen: BTreeMap<(String, Ipv4Net), (SubnetLease, Option<Instant>)>,
    applies: u64,
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
            reported: BTreeSet::new(),
            bad_keys: BTreeMap::new(),
            written: None,
            connected: false,
            seen: BTreeMap::new(),
            applies: 0,
        }
    }

    fn judge_ctx(&self) -> judge::Context {
        judge::Context {
            underlay: self.cfg.underlay_net,
            etcd_ips: self.cfg.etcd_addrs.iter().map(|a| *a.ip()).collect(),
        }
    }

    fn view(&self) -> Judged {
        self.snap
            .as_ref()
            .map(|s| judge(s, &self.keys, &self.judge_ctx()))
            .unwrap_or_default()
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
        // The plugin's writes wake the loop at once (no polling delay).
        let mut local = crate::rundir::Changes::watch(
            self.cfg
                .endpoints_file
                .parent()
                .unwrap_or(std::path::Path::new("/")),
        );
        loop {
            let st = stamp(&self.cfg.endpoints_file);
            if st != ep_stamp {
                ep_stamp = st;
                match endpoints::load(&self.cfg.endpoints_file) {
                    Ok(e) => {
                        self.endpoints = e;
                        dirty = true;
                    }
                    Err(e) => {
                        error!("{e:#}; rebuilding it from the IPAM allocations");
                        match rebuild_endpoints(&self.cfg.ipam_dir, &self.cfg.endpoints_file).await
                        {
                            Ok(eps) => {
                                info!("endpoints file rebuilt: {} containers", eps.len());
                                self.endpoints = eps;
                                dirty = true;
                                ep_stamp = stamp(&self.cfg.endpoints_file);
                            }
                            Err(e) => error!("rebuilding endpoints: {e:#}; keeping the previous"),
                        }
                    }
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
                        } else {
                            let (changed, repairs) = self.on_watch(&resp);
                            if changed {
                                dirty = true;
                            }
                            for (net, own) in repairs {
                                if let Err(e) = self.repair(&mut s, &net, own).await {
                                    s.drop_all(&format!("repairing our lease in {net}: {e:#}"));
                                    break;
                                }
                            }
                            if s.is_up() && self.needs_acquire() {
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
                _ = local.next() => {}
                // The periodic checks (resync, reconnect) and the fallback
                // when inotify is unavailable.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn open_session(&mut self, s: &mut Session) -> Result<()> {
        let mut store = EtcdStore::connect(&self.cfg.etcd).await?;
        let (snap, bad) = store.snapshot(self.snap.as_ref()).await?;
        self.set_bad(&bad);
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

    /// Full listing: replaces the cached view (keeping last good values over
    /// bad ones) and restarts the watch from it.
    async fn relist(&mut self, s: &mut Session) -> Result<()> {
        let store = s.store.as_mut().ok_or_else(|| anyhow!("not connected"))?;
        let (snap, bad) = store.snapshot(self.snap.as_ref()).await?;
        s.watch = Some(store.watch(snap.revision + 1).await?);
        s.last_list = Some(Instant::now());
        self.snap = Some(snap);
        self.set_bad(&bad);
        // Our keys as the store has them now (the view may keep a last good
        // value over garbage written onto them).
        let held: Vec<(String, Held)> = self.held.iter().map(|(n, h)| (n.clone(), *h)).collect();
        for (net, h) in held {
            let key = self.keys.lease(&net, &h.subnet);
            let store = s.store.as_mut().ok_or_else(|| anyhow!("not connected"))?;
            let raw = store.get_raw(&key).await?;
            let own = classify_own(
                &self.me,
                raw.as_ref().map(|(v, c, m)| (v.as_slice(), *c, *m)),
            );
            if own != OwnKey::Ours {
                self.repair(s, &net, own).await?;
            }
        }
        if self.needs_acquire() {
            self.acquire_missing(s).await?;
        }
        Ok(())
    }

    /// Puts our own lease key right (see `OwnKey`).
    async fn repair(&mut self, s: &mut Session, net: &str, own: OwnKey) -> Result<()> {
        let Some(h) = self.held.get(net).copied() else {
            return Ok(());
        };
        let key = self.keys.lease(net, &h.subnet);
        let Some(store) = s.store.as_mut() else {
            return Ok(());
        };
        match own {
            OwnKey::Ours => {}
            OwnKey::Absent => {
                if let Some(rev) = store
                    .reclaim(net, &h.subnet, &self.me, s.lease, None)
                    .await?
                {
                    warn!("our lease {key} was deleted from etcd; written back");
                    self.held.insert(net.into(), Held { written: rev, ..h });
                }
            }
            OwnKey::Foreign { mod_rev, what } => {
                if let Some(rev) = store
                    .reclaim(net, &h.subnet, &self.me, s.lease, Some(mod_rev))
                    .await?
                {
                    error!("our lease {key} was overwritten with {what}; rewritten");
                    self.held.insert(net.into(), Held { written: rev, ..h });
                }
            }
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
            }
        }
        Ok(())
    }

    /// Networks this host should lease in: accepted here, config present.
    fn wanted_networks(&self) -> Vec<crate::network::NetworkConfig> {
        let Some(snap) = &self.snap else {
            return Vec::new();
        };
        judge::judge_networks(snap, &self.keys, &self.judge_ctx())
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

    async fn acquire_missing(&mut self, s: &mut Session) -> Result<()> {
        let wanted: Vec<_> = self
            .wanted_networks()
            .into_iter()
            .filter(|n| !self.held.contains_key(&n.name))
            .collect();
        let (Some(store), Some(mut snap)) = (s.store.as_mut(), self.snap.clone()) else {
            return Ok(());
        };
        for net in wanted {
            match store.acquire(&net, &self.me, s.lease, &snap).await {
                Ok((sn, rev)) => {
                    info!("network {}: leased {sn}", net.name);
                    self.held.insert(
                        net.name.clone(),
                        Held {
                            subnet: sn,
                            written: rev,
                        },
                    );
                    // Our own put reaches us through the watch later; until
                    // then the cache must already know the subnet is ours.
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
        Ok(())
    }

    /// Applies watch events to the cache. Returns whether anything changed
    /// and what our own keys need.
    fn on_watch(&mut self, resp: &etcd_client::WatchResponse) -> (bool, Vec<(String, OwnKey)>) {
        let Some(snap) = self.snap.as_mut() else {
            return (false, Vec::new());
        };
        let mut changed = false;
        let mut repairs: BTreeMap<String, OwnKey> = BTreeMap::new();
        let mut reports = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => {
                    match snap.put(&self.keys, &key, kv.value(), kv.create_revision()) {
                        Ok(()) => {
                            self.bad_keys.remove(&key);
                        }
                        Err(reason) => reports.push(BadEntry {
                            key: key.clone(),
                            reason,
                        }),
                    }
                }
                EventType::Delete => {
                    self.bad_keys.remove(&key);
                    if let Some(b) = snap.delete(&self.keys, &key) {
                        reports.push(b);
                    }
                }
            }
            snap.revision = snap.revision.max(kv.mod_revision());
            changed = true;
            // Our own key: judged by the event itself, and only events newer
            // than our last write to it (older ones may still be in flight).
            let Some(KeyKind::Lease { net, subnet }) = self.keys.parse(&key) else {
                continue;
            };
            let Some(h) = self.held.get(&net) else {
                continue;
            };
            if subnet_key(&h.subnet) != subnet || kv.mod_revision() <= h.written {
                continue;
            }
            let own = match ev.event_type() {
                EventType::Delete => OwnKey::Absent,
                EventType::Put => classify_own(
                    &self.me,
                    Some((kv.value(), kv.create_revision(), kv.mod_revision())),
                ),
            };
            if own == OwnKey::Ours {
                repairs.remove(&net);
            } else {
                repairs.insert(net, own);
            }
        }
        for b in reports {
            self.note_bad(b);
        }
        (changed, repairs.into_iter().collect())
    }

    /// Replaces the store-level refusals with a listing's.
    fn set_bad(&mut self, bad: &[BadEntry]) {
        self.bad_keys.clear();
        for b in bad {
            self.note_bad(b.clone());
        }
    }

    fn note_bad(&mut self, b: BadEntry) {
        self.log_once(&b);
        self.bad_keys.insert(b.key, b.reason);
    }

    /// Each offender is logged once per reason, not at every apply.
    fn log_once(&mut self, b: &BadEntry) {
        if self.reported.insert((b.key.clone(), b.reason.clone())) {
            error!("skipping {}: {}", b.key, b.reason);
        }
    }

    /// Peers to keep routing although their lease is gone; also forgets
    /// what the grace has run out for. `view` is what is live now.
    fn retained(&mut self, view: &Judged) -> Vec<RetainedLease> {
        let now = Instant::now();
        let live = |n: &String, s: &Ipv4Net| view.leases.get(n).is_some_and(|m| m.contains_key(s));
        for (net, m) in &view.leases {
            for (sn, l) in m {
                if l.node == self.me.node {
                    continue;
                }
                // A live lease replaces what we kept for its subnet (every
                // served lease of a network has the network's prefix length,
                // so an overlapping subnet is the same key).
                self.seen.insert((net.clone(), *sn), (l.clone(), None));
            }
        }
        for ((n, s), (_, gone)) in self.seen.iter_mut() {
            if gone.is_none() && !live(n, s) {
                *gone = Some(now);
            }
        }
        let grace = self.cfg.lease_grace;
        self.seen
            .retain(|_, (_, gone)| gone.is_none_or(|t| now.duration_since(t) < grace));
        self.seen
            .iter()
            .filter(|(_, (_, gone))| gone.is_some())
            .map(|((n, s), (l, _))| RetainedLease {
                network: n.clone(),
                subnet: *s,
                lease: l.clone(),
            })
            .collect()
    }

    async fn apply(&mut self) {
        if self.snap.is_none() {
            return;
        }
        let view = self.view();
        for b in &view.rejected {
            self.log_once(b);
        }
        let retained = self.retained(&view);
        let held: BTreeMap<String, Ipv4Net> = self
            .held
            .iter()
            .map(|(n, h)| (n.clone(), h.subnet))
            .collect();
        let (mut state, warnings) = desired::desired_state(
            &view,
            &retained,
            &held,
            &self.endpoints,
            &self.cfg.underlay_interface,
            self.cfg.underlay_net,
            &self.me.node,
        );
        state.masquerade = self.cfg.masquerade;
        state.etcd_endpoints = self.cfg.etcd_addrs.clone();
        state.log_drops = self.cfg.log_drops;
        for w in warnings {
            warn!("{w}");
        }
        if let Err(e) = state.validate() {
            error!("computed state is inconsistent, not applied: {e}");
            return;
        }
        self.applies += 1;
        let Some(snap) = &self.snap else { return };
        match self.dp.apply(&state).await {
            Ok(r) => {
                for sk in &r.skipped {
                    warn!("not programmed yet: {sk}");
                }
                for rf in &r.refused {
                    error!("{rf}");
                }
                self.write_status(snap, &view, &retained, &state, &r);
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
        view: &Judged,
        retained: &[RetainedLease],
        state: &crate::state::DesiredState,
        r: &crate::dataplane::ApplyReport,
    ) {
        let Some(path) = &self.cfg.status_file else {
            return;
        };
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
                rejected: view
                    .rejected
                    .iter()
                    .map(|b| (b.key.clone(), b.reason.clone()))
                    .chain(self.bad_keys.iter().map(|(k, v)| (k.clone(), v.clone())))
                    .map(|(key, reason)| status::Rejected { key, reason })
                    .collect(),
                retained: retained
                    .iter()
                    .map(|r| {
                        let age = self
                            .seen
                            .get(&(r.network.clone(), r.subnet))
                            .and_then(|(_, gone)| *gone)
                            .map_or(0, |t| t.elapsed().as_secs());
                        (r.subnet, r.lease.node.clone(), age)
                    })
                    .collect(),
                applies: self.applies,
            },
            status::now_secs(),
        );
        if let Err(e) = status::write(path, &st) {
            error!("writing status file: {e:#}");
        }
    }

    /// Writes the lease file when it differs from what is on disk, so a
    /// file corrupted or removed by hand is rewritten at the next apply.
    fn write_lease_file(&mut self) {
        let Some(path) = &self.cfg.lease_file else {
            return;
        };
        let lf = LeaseFile {
            version: crate::rundir::FORMAT_VERSION,
            node: self.me.node.clone(),
            subnets: self
                .held
                .iter()
                .map(|(n, h)| (n.clone(), h.subnet))
                .collect(),
            mtu: self.cfg.container_mtu,
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
