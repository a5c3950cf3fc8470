//! Types shared by the kernel side (`netfab-ebpf`) and user space (`netfab`).
//!
//! Every map key and value is `#[repr(C)]`, has only fixed-size fields, carries
//! explicit padding and has its size asserted at compile time, so both sides
//! agree byte for byte. Flags are `u32`/`u16` rather than `bool` for the same
//! reason. Byte order is stated per field.
#![no_std]

use core::mem::size_of;

/// Map names, shared so user space looks up exactly what the object defines.
pub mod maps {
    pub const ENDPOINTS: &str = "NF_ENDPOINTS";
    pub const REMOTE_SUBNETS: &str = "NF_REMOTE_SUBNETS";
    pub const KNOWN_HOSTS: &str = "NF_KNOWN_HOSTS";
    pub const NETWORKS: &str = "NF_NETWORKS";
    pub const HOST_CONFIG: &str = "NF_HOST_CONFIG";
    pub const TRAFFIC: &str = "NF_TRAFFIC";
    pub const DROPS: &str = "NF_DROPS";
    pub const GUARDS: &str = "NF_GUARDS";
    pub const SETTINGS: &str = "NF_SETTINGS";
    pub const RATE_LIMITS: &str = "NF_RATE_LIMITS";
    pub const RATE_STATE: &str = "NF_RATE_STATE";
    pub const ENCAP: &str = "NF_ENCAP";
    /// Every map user space pins and adopts across restarts.
    pub const ALL: [&str; 12] = [
        ENDPOINTS,
        REMOTE_SUBNETS,
        KNOWN_HOSTS,
        NETWORKS,
        HOST_CONFIG,
        TRAFFIC,
        DROPS,
        GUARDS,
        SETTINGS,
        RATE_LIMITS,
        RATE_STATE,
        ENCAP,
    ];
}

/// Program names (the function names in `netfab-ebpf`).
pub mod programs {
    pub const FROM_CONTAINER: &str = "from_container";
    pub const FROM_OVERLAY: &str = "from_overlay";
    pub const FROM_UNDERLAY: &str = "from_underlay";
    pub const FROM_HOST: &str = "from_host";
}

pub const MAX_ENDPOINTS: u32 = 16384;
/// Room for 50,000 hosts and more (an LPM trie allocates per entry; the
/// known-hosts hash preallocates 65,536 small entries, about 5 MB).
pub const MAX_REMOTE_SUBNETS: u32 = 65536;
pub const MAX_HOSTS: u32 = 65536;
pub const MAX_NETWORKS: u32 = 256;
pub const MAX_GUARDS: u32 = 256;

/// A destination containers must never reach through the host stack: the
/// tunnel port of any host, the etcd endpoints. Key of the guards map; the
/// value is the `DropReason` (as u32) counted when a packet hits it.
/// `daddr == 0` matches every destination the host stack would route.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuardKey {
    /// IPv4 destination, network byte order (0 = any).
    pub daddr: u32,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol (6 TCP, 17 UDP).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<GuardKey>() == 8);

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Host-wide switches; a one-slot array at index 0.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// `SETTINGS_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<Settings>() == 4);

/// Log every drop through aya-log (costly under a flood; off by default,
/// the per-reason counters always count).
pub const SETTINGS_F_LOG_DROPS: u32 = 1;

/// A container attached on this host. Key: container IPv4, network byte order
/// (the raw `u32` as it sits in the IP header).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host-side veth ifindex: packets from the container arrive here, and
    /// `bpf_redirect_peer` to it lands in the container.
    pub ifindex: u32,
    /// The network (VXLAN VNI) the container belongs to.
    pub vni: u32,
    /// The container interface's MAC (inner destination on delivery).
    pub mac: [u8; 6],
    /// The host-side veth's MAC (the container's gateway MAC).
    pub gw_mac: [u8; 6],
}
const _: () = assert!(size_of::<Endpoint>() == 20);

/// A local container's bandwidth limits (the CNI `bandwidth` capability).
/// Key: the container's IPv4, as in `Endpoint`. Zero rate: no limit.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Egress (from the container) rate in bytes per second, paced by
    /// earliest departure time.
    pub egress_bytes_per_sec: u64,
    /// How far (ns) an idle container may send ahead of its rate.
    pub egress_burst_ns: u64,
    /// Ingress (to the container) rate in bytes per second, policed.
    pub ingress_bytes_per_sec: u64,
    /// Ingress token bucket depth in bytes.
    pub ingress_burst_bytes: u64,
}
const _: () = assert!(size_of::<RateLimit>() == 32);

/// The datapath's own bookkeeping per limited container (user space never
/// writes it): when the next egress packet may leave, and the ingress
/// bucket.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    pub egress_next_ns: u64,
    pub ingress_tokens: u64,
    pub ingress_at_ns: u64,
}
const _: () = assert!(size_of::<RateState>() == 24);

/// `Endpoint::ifindex` of the host itself: a local gateway address the host
/// holds. Packets for it go to the host stack.
pub const HOST_ENDPOINT: u32 = 0;

/// A remote host's subnet. Key: LPM trie key with the prefix in network order.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RemoteSubnet {
    /// The remote host's underlay IPv4 in host byte order (what
    /// `bpf_tunnel_key.remote_ipv4` takes).
    pub underlay_ip: u32,
    /// VNI of the network the subnet belongs to.
    pub vni: u32,
    /// The remote host's VXLAN device MAC: inner destination MAC, so a plain
    /// kernel VXLAN receiver accepts the frame.
    pub vtep_mac: [u8; 6],
    /// `REMOTE_F_*` bits.
    pub flags: u16,
}
const _: () = assert!(size_of::<RemoteSubnet>() == 16);

/// Reach the peer without encapsulation: it shares this host's L2 segment,
/// so the packet goes to its underlay IP as is (`bpf_redirect_neigh`).
pub const REMOTE_F_DIRECT: u16 = 1;

/// Value of the known-hosts map (key: underlay IPv4, host byte order).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct KnownHost {
    pub flags: u32,
}
const _: () = assert!(size_of::<KnownHost>() == 4);

/// Value of the networks map (key: VNI).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct NetworkInfo {
    pub flags: u32,
}
const _: () = assert!(size_of::<NetworkInfo>() == 4);

/// Per-host settings; a one-slot array at index 0.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct HostConfig {
    /// ifindex of this host's collect-metadata VXLAN device; 0 = not ready,
    /// remote traffic then goes to the stack.
    pub vxlan_ifindex: u32,
    /// ifindex of the underlay interface, for direct routing; 0 = off.
    pub underlay_ifindex: u32,
    /// MAC of the VXLAN device: the inner source MAC of encapsulated frames.
    pub vxlan_mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<HostConfig>() == 16);

/// Packets and bytes, per CPU, per [`Direction`].
/// Native VXLAN encapsulation (NF_ENCAP, one entry): the outer headers the
/// datapath builds itself instead of handing frames to the VXLAN device. A
/// map of its own, so an upgraded datapath adopts the older pinned maps as
/// they are.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct EncapConfig {
    /// This host's underlay IPv4, network order: the outer source.
    pub underlay_ip: u32,
    /// The VXLAN UDP port, network order.
    pub port: u16,
    pub flags: u16,
    /// Outer UDP source ports are picked in [min, max) from the flow hash,
    /// as the kernel's VXLAN device does (host order).
    pub src_port_min: u16,
    pub src_port_max: u16,
}
const _: () = assert!(size_of::<EncapConfig>() == 12);

/// Build the outer headers in the datapath (else: the VXLAN device).
pub const ENCAP_F_NATIVE: u16 = 1;

#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<TrafficCounter>() == 16);

/// Where the datapath sent a packet; index into the traffic map.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From a container to a container on the same host.
    LocalDelivery = 0,
    /// From a container, encapsulated towards a remote host.
    ToOverlay = 1,
    /// From the overlay, delivered to a local container.
    FromOverlay = 2,
    /// From a container, handed to the host stack (host, outside, non-IPv4).
    ToStack = 3,
    /// From a container, routed unencapsulated to a peer on the same L2.
    ToDirect = 4,
    /// Arrived unencapsulated from a direct peer, delivered to a container.
    FromDirect = 5,
}

impl Direction {
    pub const COUNT: u32 = 6;
    pub const ALL: [Direction; 6] = [
        Direction::LocalDelivery,
        Direction::ToOverlay,
        Direction::FromOverlay,
        Direction::ToStack,
        Direction::ToDirect,
        Direction::FromDirect,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::LocalDelivery => "local_delivery",
            Direction::ToOverlay => "to_overlay",
            Direction::FromOverlay => "from_overlay",
            Direction::ToStack => "to_stack",
            Direction::ToDirect => "to_direct",
            Direction::FromDirect => "from_direct",
        }
    }
}

/// Why the datapath dropped a packet; index into the drops map.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Ethernet or IPv4 header shorter than it must be.
    Truncated = 0,
    /// IPv4 header with a bad version or header length.
    BadIpHeader = 1,
    /// Source IP is not the address assigned to the container's interface.
    SpoofedSource = 2,
    /// VXLAN frame whose VNI is not a network this host serves.
    UnknownVni = 3,
    /// VXLAN frame from an underlay IP that is not a known host.
    UnknownSource = 4,
    /// Overlay frame for an IP with no endpoint on this host.
    NoEndpoint = 5,
    /// No tunnel metadata on a frame at the overlay device.
    NoTunnelKey = 6,
    /// TTL would reach zero on forwarding.
    TtlExceeded = 7,
    /// Source and destination belong to different networks.
    NetworkMismatch = 8,
    /// A kernel helper (tunnel key, header rewrite) failed.
    HelperFailed = 9,
    /// Non-IPv4 frame arriving from the overlay, or IPv6 from a container
    /// (not carried yet; the host stack would take it unchecked).
    NotIpv4 = 10,
    /// Unencapsulated packet for a container from a source that is not a
    /// direct-routing peer's subnet.
    NotDirectPeer = 11,
    /// A container sent to the tunnel (VXLAN) port of a host.
    TunnelPort = 12,
    /// A container sent to an etcd endpoint.
    ControlPlane = 13,
    /// VXLAN from a known host whose inner source is not inside a subnet
    /// that host holds in that VNI.
    ForeignInnerSource = 14,
    /// Over the container's bandwidth limit: egress queued beyond the
    /// pacing horizon, or ingress beyond its token bucket.
    RateLimited = 15,
}

impl DropReason {
    pub const COUNT: u32 = 16;
    pub const ALL: [DropReason; 16] = [
        DropReason::Truncated,
        DropReason::BadIpHeader,
        DropReason::SpoofedSource,
        DropReason::UnknownVni,
        DropReason::UnknownSource,
        DropReason::NoEndpoint,
        DropReason::NoTunnelKey,
        DropReason::TtlExceeded,
        DropReason::NetworkMismatch,
        DropReason::HelperFailed,
        DropReason::NotIpv4,
        DropReason::NotDirectPeer,
        DropReason::TunnelPort,
        DropReason::ControlPlane,
        DropReason::ForeignInnerSource,
        DropReason::RateLimited,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::UnknownSource => "unknown_source",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoTunnelKey => "no_tunnel_key",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::NetworkMismatch => "network_mismatch",
            DropReason::HelperFailed => "helper_failed",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::NotDirectPeer => "not_direct_peer",
            DropReason::TunnelPort => "tunnel_port",
            DropReason::ControlPlane => "control_plane",
            DropReason::ForeignInnerSource => "foreign_inner_source",
            DropReason::RateLimited => "rate_limited",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], has no implicit padding (sizes asserted
    // above) and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateLimit {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RemoteSubnet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KnownHost {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetworkInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HostConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EncapConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrafficCounter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GuardKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_indices_are_dense() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
        }
        for (i, d) in Direction::ALL.iter().enumerate() {
            assert_eq!(*d as u32, i as u32, "{}", d.name());
        }
        assert_eq!(DropReason::ALL.len() as u32, DropReason::COUNT);
        assert_eq!(Direction::ALL.len() as u32, Direction::COUNT);
    }
}
