//! Typed access to the pinned eBPF maps: read what they hold, apply a diff,
//! read the counters. Works the same in the agent and in `netfab stats`.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, PerCpuArray,
};
use ipnet::Ipv4Net;
use netfab_common::{
    maps as names, Direction, DropReason, EncapConfig, Endpoint, GuardKey, HostConfig, KnownHost,
    NetworkInfo, RateLimit, RemoteSubnet, Settings, TrafficCounter,
};
use serde::Serialize;

use super::tables::{Delta, Tables};

pub struct BpfMaps {
    endpoints: HashMap<MapData, u32, Endpoint>,
    remote_subnets: LpmTrie<MapData, u32, RemoteSubnet>,
    known_hosts: HashMap<MapData, u32, KnownHost>,
    networks: HashMap<MapData, u32, NetworkInfo>,
    host_config: Array<MapData, HostConfig>,
    encap: Array<MapData, EncapConfig>,
    traffic: PerCpuArray<MapData, TrafficCounter>,
    drops: PerCpuArray<MapData, u64>,
    guards: HashMap<MapData, GuardKey, u32>,
    settings: Array<MapData, Settings>,
    rate_limits: HashMap<MapData, u32, RateLimit>,
}

fn open(dir: &Path, name: &str) -> Result<Map> {
    let path: PathBuf = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open($dir, $name)?
            .try_into()
            .with_context(|| format!("map {} has an unexpected type", $name))?
    };
}

/// IPv4 as the raw u32 the datapath reads from the IP header.
fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}
fn lpm_key(sn: &Ipv4Net) -> Key<u32> {
    Key::new(sn.prefix_len() as u32, wire(sn.network()))
}
fn from_wire(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// Summed counters, named for humans and JSON.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub traffic: BTreeMap<&'static str, TrafficSum>,
    pub drops: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TrafficSum {
    pub packets: u64,
    pub bytes: u64,
}

impl BpfMaps {
    /// Opens the maps pinned in `dir` by a loaded netfab object.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            endpoints: typed!(dir, names::ENDPOINTS),
            remote_subnets: typed!(dir, names::REMOTE_SUBNETS),
            known_hosts: typed!(dir, names::KNOWN_HOSTS),
            networks: typed!(dir, names::NETWORKS),
            host_config: typed!(dir, names::HOST_CONFIG),
            encap: typed!(dir, names::ENCAP),
            traffic: typed!(dir, names::TRAFFIC),
            drops: typed!(dir, names::DROPS),
            guards: typed!(dir, names::GUARDS),
            settings: typed!(dir, names::SETTINGS),
            rate_limits: typed!(dir, names::RATE_LIMITS),
        })
    }

    pub fn read(&self) -> Result<Tables> {
        let mut t = Tables::default();
        for kv in self.endpoints.iter() {
            let (k, v) = kv.context("reading endpoints")?;
            t.endpoints.insert(from_wire(k), v);
        }
        for kv in self.remote_subnets.iter() {
            let (k, v) = kv.context("reading remote subnets")?;
            let net = Ipv4Net::new(from_wire(k.data()), k.prefix_len() as u8)
                .context("remote subnet key with a bad prefix length")?;
            t.remote_subnets.insert(net, v);
        }
        for kv in self.known_hosts.iter() {
            let (k, v) = kv.context("reading known hosts")?;
            t.known_hosts.insert(Ipv4Addr::from(k), v);
        }
        for kv in self.networks.iter() {
            let (k, v) = kv.context("reading networks")?;
            t.networks.insert(k, v);
        }
        for kv in self.guards.iter() {
            let (k, v) = kv.context("reading guards")?;
            t.guards.insert(k, v);
        }
        for kv in self.rate_limits.iter() {
            let (k, v) = kv.context("reading rate limits")?;
            t.rate_limits.insert(from_wire(k), v);
        }
        t.host_config = self.host_config.get(&0, 0).context("reading host config")?;
        t.settings = self.settings.get(&0, 0).context("reading settings")?;
        t.encap = self.encap.get(&0, 0).context("reading encap config")?;
        Ok(t)
    }

    /// What the datapath finds for `sn` in the remote subnets map (a
    /// longest-prefix match: callers compare the value).
    pub fn remote_subnet(&self, sn: Ipv4Net) -> Result<Option<RemoteSubnet>> {
        match self.remote_subnets.get(&lpm_key(&sn), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading a remote subnet"),
        }
    }

    /// Makes the maps equal to `desired`; returns (upserts, removals).
    /// Upserts go first so that nothing in use disappears before its
    /// replacement is in place. `written` is what the maps held after the
    /// last apply, trusted instead of reading them back; `None` reads them
    /// (and so repairs anything changed behind our back).
    pub fn apply(&mut self, desired: &Tables, written: Option<&Tables>) -> Result<(usize, usize)> {
        let d = match written {
            Some(w) => Delta::between(desired, w),
            None => Delta::between(desired, &self.read()?),
        };
        for (k, v) in &d.networks.upserts {
            self.networks.insert(k, v, 0).context("writing network")?;
        }
        for (k, v) in &d.known_hosts.upserts {
            self.known_hosts
                .insert(u32::from(*k), v, 0)
                .context("writing known host")?;
        }
        for (k, v) in &d.endpoints.upserts {
            self.endpoints
                .insert(wire(*k), v, 0)
                .context("writing endpoint")?;
        }
        for (k, v) in &d.remote_subnets.upserts {
            self.remote_subnets
                .insert(&lpm_key(k), v, 0)
                .context("writing remote subnet")?;
        }
        for (k, v) in &d.guards.upserts {
            self.guards.insert(k, v, 0).context("writing guard")?;
        }
        for k in &d.guards.removals {
            self.guards.remove(k).context("removing guard")?;
        }
        for (k, v) in &d.rate_limits.upserts {
            self.rate_limits
                .insert(wire(*k), v, 0)
                .context("writing rate limit")?;
        }
        for k in &d.rate_limits.removals {
            self.rate_limits
                .remove(&wire(*k))
                .context("removing rate limit")?;
        }
        if let Some(s) = d.settings {
            self.settings.set(0, s, 0).context("writing settings")?;
        }
        if let Some(h) = d.host_config {
            self.host_config
                .set(0, h, 0)
                .context("writing host config")?;
        }
        if let Some(e) = d.encap {
            self.encap.set(0, e, 0).context("writing encap config")?;
        }
        for k in &d.remote_subnets.removals {
            self.remote_subnets
                .remove(&lpm_key(k))
                .context("removing remote subnet")?;
        }
        for k in &d.endpoints.removals {
            self.endpoints
                .remove(&wire(*k))
                .context("removing endpoint")?;
        }
        for k in &d.known_hosts.removals {
            self.known_hosts
                .remove(&u32::from(*k))
                .context("removing known host")?;
        }
        for k in &d.networks.removals {
            self.networks.remove(k).context("removing network")?;
        }
        Ok(d.counts())
    }

    pub fn counters(&self) -> Result<Counters> {
        let mut c = Counters::default();
        for d in Direction::ALL {
            let per_cpu = self
                .traffic
                .get(&(d as u32), 0)
                .context("reading traffic")?;
            let sum = per_cpu
                .iter()
                .fold(TrafficSum::default(), |a, v| TrafficSum {
                    packets: a.packets + v.packets,
                    bytes: a.bytes + v.bytes,
                });
            c.traffic.insert(d.name(), sum);
        }
        for r in DropReason::ALL {
            let per_cpu = self.drops.get(&(r as u32), 0).context("reading drops")?;
            c.drops.insert(r.name(), per_cpu.iter().sum());
        }
        Ok(c)
    }
}
