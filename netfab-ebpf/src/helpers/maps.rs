//! The maps user space fills. All are pinned by name so a restarted agent
//! adopts them (and their contents) instead of starting empty.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use netfab_common::{
    EncapConfig, Endpoint, GuardKey, HostConfig, KnownHost, NetworkInfo, RateLimit, RateState,
    RemoteSubnet, Settings, TrafficCounter, MAX_ENDPOINTS, MAX_GUARDS, MAX_HOSTS, MAX_NETWORKS,
    MAX_REMOTE_SUBNETS,
};

/// Local containers by IPv4 (network order).
#[map(name = "NF_ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Remote hosts' subnets, longest-prefix match on the destination (network order).
#[map(name = "NF_REMOTE_SUBNETS")]
pub static REMOTE_SUBNETS: LpmTrie<u32, RemoteSubnet> = LpmTrie::pinned(MAX_REMOTE_SUBNETS, 0);

/// Underlay IPv4s (host order) allowed to send us VXLAN.
#[map(name = "NF_KNOWN_HOSTS")]
pub static KNOWN_HOSTS: HashMap<u32, KnownHost> = HashMap::pinned(MAX_HOSTS, 0);

/// VNIs this host serves.
#[map(name = "NF_NETWORKS")]
pub static NETWORKS: HashMap<u32, NetworkInfo> = HashMap::pinned(MAX_NETWORKS, 0);

#[map(name = "NF_HOST_CONFIG")]
pub static HOST_CONFIG: Array<HostConfig> = Array::pinned(1, 0);

/// Native VXLAN settings; all zero (the device path) until the agent writes.
#[map(name = "NF_ENCAP")]
pub static ENCAP: Array<EncapConfig> = Array::pinned(1, 0);

#[map(name = "NF_TRAFFIC")]
pub static TRAFFIC: PerCpuArray<TrafficCounter> =
    PerCpuArray::pinned(netfab_common::Direction::COUNT, 0);

#[map(name = "NF_DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(netfab_common::DropReason::COUNT, 0);

/// Destinations containers may not reach through the stack; value: the
/// drop reason to count.
#[map(name = "NF_GUARDS")]
pub static GUARDS: HashMap<GuardKey, u32> = HashMap::pinned(MAX_GUARDS, 0);

#[map(name = "NF_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Bandwidth limits of local containers, by IPv4 (network order).
#[map(name = "NF_RATE_LIMITS")]
pub static RATE_LIMITS: HashMap<u32, RateLimit> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Pacing and policing state of limited containers; the datapath's alone.
/// LRU: entries of containers long gone age out without user space.
#[map(name = "NF_RATE_STATE")]
pub static RATE_STATE: LruHashMap<u32, RateState> = LruHashMap::pinned(MAX_ENDPOINTS, 0);

/// VXLAN flows (outer source address and UDP source port) that recently
/// arrived as GRO aggregates, with when the last one did. Not pinned: a
/// restarted agent losing it costs a few frames taking the native path.
#[map(name = "NF_DEVICE_FLOWS")]
pub static DEVICE_FLOWS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_DEVICE_FLOWS, 0);

const MAX_DEVICE_FLOWS: u32 = 16_384;
