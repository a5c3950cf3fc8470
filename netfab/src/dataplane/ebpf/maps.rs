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
    maps as names, Direction, DropReason, Endpoint, GuardKey, HostConfig, KnownHost, NetworkInfo,
    RateLimit, RemoteSubnet, Settings, TrafficCounter,
};
use serde::Serialize;

use super::tables::Tables;
use crate::reconcile::diff;

pub struct BpfMaps {
    endpoints: HashMap<MapData, u32, Endpoint>,
    remote_subnets: LpmTrie<MapData, u32, RemoteSubnet>,
    known_hosts: HashMap<MapData, u32, KnownHost>,
    networks: HashMap<MapData, u32, NetworkInfo>,
    host_config: Array<MapData, HostConfig>,
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
        Ok(t)
    }

    /// What the datapath finds for `sn` in the remote subnets map (a
    /// longest-prefix match: callers compare the value).
    pub fn remote_subnet(&self, sn: Ipv4Net) -> Result<Option<RemoteSubnet>> {
        let key = Key::new(sn.prefix_len() as u32, wire(sn.network()));
        match self.remote_subnets.get(&key, 0) {
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
        let read;
        let actual = match written {
            Some(w) => w,
            None => {
                read = self.read()?;
                &read
            }
        };
        let mut ups = 0;
        let mut rms = 0;

        let d = diff(&desired.networks, &actual.networks);
        for (k, v) in &d.upserts {
            self.networks.insert(k, v, 0).context("writing network")?;
        }
        let d_known = diff(&desired.known_hosts, &actual.known_hosts);
        for (k, v) in &d_known.upserts {
            self.known_hosts
                .insert(u32::from(*k), v, 0)
                .context("writing known host")?;
        }
        let d_ep = diff(&desired.endpoints, &actual.endpoints);
        for (k, v) in &d_ep.upserts {
            self.endpoints
                .insert(wire(*k), v, 0)
                .context("writing endpoint")?;
        }
        let d_rs = diff(&desired.remote_subnets, &actual.remote_subnets);
        for (k, v) in &d_rs.upserts {
            let key = Key::new(k.prefix_len() as u32, wire(k.network()));
            self.remote_subnets
                .insert(&key, v, 0)
                .context("writing remote subnet")?;
        }
        let d_g = diff(&desired.guards, &actual.guards);
        for (k, v) in &d_g.upserts {
            self.guards.insert(k, v, 0).context("writing guard")?;
        }
        for k in &d_g.removals {
            self.guards.remove(k).context("removing guard")?;
        }
        ups += d_g.upserts.len();
        rms += d_g.removals.len();
        let d_rl = diff(&desired.rate_limits, &actual.rate_limits);
        for (k, v) in &d_rl.upserts {
            self.rate_limits
                .insert(wire(*k), v, 0)
                .context("writing rate limit")?;
        }
        for k in &d_rl.removals {
            self.rate_limits
                .remove(&wire(*k))
                .context("removing rate limit")?;
        }
        ups += d_rl.upserts.len();
        rms += d_rl.removals.len();
        if desired.settings != actual.settings {
            self.settings
                .set(0, desired.settings, 0)
                .context("writing settings")?;
            ups += 1;
        }
        if desired.host_config != actual.host_config {
            self.host_config
                .set(0, desired.host_config, 0)
                .context("writing host config")?;
            ups += 1;
        }
        ups += d.upserts.len() + d_known.upserts.len() + d_ep.upserts.len() + d_rs.upserts.len();

        for k in &d_rs.removals {
            let key = Key::new(k.prefix_len() as u32, wire(k.network()));
            self.remote_subnets
                .remove(&key)
                .context("removing remote subnet")?;
        }
        for k in &d_ep.removals {
            self.endpoints
                .remove(&wire(*k))
                .context("removing endpoint")?;
        }
        for k in &d_known.removals {
            self.known_hosts
                .remove(&u32::from(*k))
                .context("removing known host")?;
        }
        for k in &d.removals {
            self.networks.remove(k).context("removing network")?;
        }
        rms +=
            d.removals.len() + d_known.removals.len() + d_ep.removals.len() + d_rs.removals.len();
        Ok((ups, rms))
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
