//! Packet tests: crafted frames through the real programs with
//! BPF_PROG_TEST_RUN, checking verdicts, rewritten bytes and counters.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    programs::{SchedClassifier, TestRunOptions},
    Ebpf, EbpfLoader, TestRun,
};
use netfab::dataplane::ebpf::{
    maps::{BpfMaps, Counters},
    object,
    tables::Tables,
};
use netfab_common::{
    EncapConfig, Endpoint, HostConfig, KnownHost, NetworkInfo, RemoteSubnet, ENCAP_F_NATIVE,
    REMOTE_F_DIRECT,
};
use netfab_tests::{
    frames::{self, checksum, ethernet, ipv4_icmp, ipv4_udp, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
    require_privileges,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// Without a context, BPF_PROG_TEST_RUN runs the skb on loopback.
const LO_IFINDEX: u32 = 1;
const VNI: u32 = 7;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// One loaded copy of the datapath with its own maps, removed on drop.
struct TestDatapath {
    ebpf: Ebpf,
    maps: BpfMaps,
    pin_dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestDatapath {
    fn load() -> Self {
        netfab::dataplane::ebpf::ensure_bpffs().unwrap();
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/netfab-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&pin_dir).unwrap();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load_file(object::locate(None).unwrap())
            .expect("loading object");
        for name in [
            "from_container",
            "from_overlay",
            "from_underlay",
            "from_host",
        ] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e}"));
        }
        let maps = BpfMaps::open(&pin_dir).unwrap();
        let mut dp = Self {
            ebpf,
            maps,
            pin_dir,
        };
        dp.maps.apply(&tables(), None).unwrap();
        dp
    }

    fn run(&mut self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let p: &mut SchedClassifier = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// As `run`, but `None` when the kernel refuses the frame itself (say,
    /// shorter than an Ethernet header).
    fn try_run(&mut self, prog: &str, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        let p: &mut SchedClassifier = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = p.test_run(opts).ok()?;
        out.truncate(r.data_size_out as usize);
        Some((r.return_value, out))
    }

    fn counters(&self) -> Counters {
        self.maps.counters().unwrap()
    }
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

const A_MAC: [u8; 6] = [0x0a, 0x6e, 10, 0, 0, 2];
const B_MAC: [u8; 6] = [0x0a, 0x6e, 10, 0, 0, 3];
const GW_MAC: [u8; 6] = [0xee; 6];
const VTEP_LOCAL: [u8; 6] = [0x0e, 0x6e, 100, 64, 0, 1];
const VTEP_REMOTE: [u8; 6] = [0x0e, 0x6e, 100, 64, 0, 2];

/// A (10.0.0.2) sits on the interface the test runs on; B (10.0.0.3) on
/// ifindex 42; C (10.0.0.4) is in another network; 10.0.1.0/24 is remote
/// behind VXLAN, 10.0.2.0/24 remote on the same L2 (direct routing).
fn tables() -> Tables {
    let mut t = Tables::default();
    let ep = |ifindex, vni, mac| Endpoint {
        ifindex,
        vni,
        mac,
        gw_mac: GW_MAC,
    };
    t.endpoints
        .insert(ip("10.0.0.2"), ep(LO_IFINDEX, VNI, A_MAC));
    t.endpoints.insert(ip("10.0.0.3"), ep(42, VNI, B_MAC));
    t.endpoints.insert(ip("10.0.0.4"), ep(43, VNI + 1, B_MAC));
    t.remote_subnets.insert(
        "10.0.1.0/24".parse().unwrap(),
        RemoteSubnet {
            underlay_ip: u32::from(ip("100.64.0.2")),
            vni: VNI,
            vtep_mac: VTEP_REMOTE,
            flags: 0,
        },
    );
    t.known_hosts.insert(ip("100.64.0.2"), KnownHost::default());
    t.networks.insert(VNI, NetworkInfo::default());
    t.remote_subnets.insert(
        "10.0.2.0/24".parse().unwrap(),
        RemoteSubnet {
            underlay_ip: u32::from(ip("100.64.0.3")),
            vni: VNI,
            vtep_mac: VTEP_REMOTE,
            flags: REMOTE_F_DIRECT,
        },
    );
    t.host_config = HostConfig {
        vxlan_ifindex: 44,
        underlay_ifindex: 45,
        vxlan_mac: VTEP_LOCAL,
        _pad: [0; 2],
    };
    t
}

fn icmp_frame(src: &str, dst: &str, ttl: u8) -> Vec<u8> {
    ethernet(GW_MAC, A_MAC, ETH_P_IP, &ipv4_icmp(ip(src), ip(dst), ttl))
}

/// Counters that moved, by name: (traffic packets, drops).
type Moved = Vec<(&'static str, u64)>;

fn delta(before: &Counters, after: &Counters) -> (Moved, Moved) {
    let t = after
        .traffic
        .iter()
        .map(|(k, v)| (*k, v.packets - before.traffic[k].packets))
        .filter(|(_, d)| *d > 0)
        .collect();
    let d = after
        .drops
        .iter()
        .map(|(k, v)| (*k, v - before.drops[k]))
        .filter(|(_, d)| *d > 0)
        .collect();
    (t, d)
}

#[test]
fn local_delivery_rewrites_macs_and_ttl() {
    require_privileges!();
    let mut dp = TestDatapath::load();
    let before = dp.counters();
    let (verdict, out) = dp.run("from_container", &icmp_frame("10.0.0.2", "10.0.0.3", 64));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &B_MAC, "destination MAC is the container's");
    assert_eq!(&out[6..12], &GW_MAC, "source MAC is the gateway's");
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(
        checksum(&out[14..34]),
        0,
        "IPv4 header checksum still valid"
    );
    let (traffic, drops) = delta(&before, &dp.counters());
    assert_eq!(traffic, vec![("local_delivery", 1)]);
    assert!(drops.is_empty(), "{drops:?}");
}

#[test]
fn remote_destination_is_encapsulated_towards_its_host() {
    require_privileges!();
    let mut dp = TestDatapath::load();
    let before = dp.counters();
    let (verdict, out) = dp.run("from_container", &icmp_frame("10.0.0.2", "10.0.1.9", 64));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &out[0..6],
        &VTEP_REMOTE,
        "inner destination MAC is the remote VTEP"
    );
    assert_eq!(&out[6..12], &VTEP_LOCAL, "inner source MAC is our VTEP");
    assert_eq!(checksum(&out[14..34]), 0);
    let (traffic, _) = delta(&before, &dp.counters());
    assert_eq!(traffic, vec![("to_overlay", 1)]);
}

#[test]
fn non_ipv4_and_unknown_destinations_go_to_the_stack() {
    require_privileges!();
    let mut dp = TestDatapath::load();
    let before = dp.counters();
    let arp = ethernet([0xff; 6], A_MAC, ETH_P_ARP, &[0u8; 28]);
    let (verdict, out) = dp.run("from_container", &arp);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, arp, "passed through untouched");
    // TEST-NET-1: only ever an in-memory frame here.
    let (verdict, _) = dp.run("from_container", &icmp_frame("10.0.0.2", "192.0.2.1", 64));
    assert_eq!(verdict, TC_ACT_OK);
    let (traffic, drops) = delta(&before, &dp.counters());
    assert_eq!(traffic, vec![("to_stack", 2)]);
    assert!(drops.is_empty(), "{drops:?}");
}

#[test]
fn malformed_and_unauthorised_packets_are_dropped_with_their_reason() {
    require_privileges!();
    let mut dp = TestDatapath::load();
    let mut bad_ihl = icmp_frame("10.0.0.2", "10.0.0.3", 64);
    bad_ihl[14] = 0x44;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // (A cut-short IPv4 header is refused by BPF_PROG_TEST_RUN itself on
        // this kernel; tests/datapath.rs sends one through a real veth.)
        ("bad_ip_header", bad_ihl, "from_container"),
        // Source not assigned to anyone.
        (
            "spoofed_source",
            icmp_frame("10.0.0.99", "10.0.0.3", 64),
            "from_container",
        ),
        // Source is B's address, but B's veth is not where this arrived.
        (
            "spoofed_source",
            icmp_frame("10.0.0.3", "10.0.0.2", 64),
            "from_container",
        ),
        (
            "ttl_exceeded",
            icmp_frame("10.0.0.2", "10.0.0.3", 1),
            "from_container",
        ),
        (
            "network_mismatch",
            icmp_frame("10.0.0.2", "10.0.0.4", 64),
            "from_container",
        ),
        // IPv6 from a container (not carried; the stack would take it
        // unchecked): a TCP SYN to a host service on `::` over the
        // gateway's link-local address, and a neighbour solicitation.
        (
            "not_ipv4",
            ethernet(
                GW_MAC,
                A_MAC,
                ETH_P_IPV6,
                &frames::ipv6(
                    "fe80::1".parse().unwrap(),
                    "fe80::ecee:eeff:feee:eeee".parse().unwrap(),
                    6,
                    &[
                        0x9c, 0x40, 0x09, 0x53, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0,
                        0, 0, 0,
                    ],
                ),
            ),
            "from_container",
        ),
        (
            "not_ipv4",
            ethernet(
                [0x33, 0x33, 0xff, 0xee, 0xee, 0xee],
                A_MAC,
                ETH_P_IPV6,
                &frames::ipv6(
                    "fe80::1".parse().unwrap(),
                    "ff02::1:ffee:eeee".parse().unwrap(),
                    58,
                    &[135, 0, 0, 0, 0, 0, 0, 0],
                ),
            ),
            "from_container",
        ),
        // A frame at the overlay device without tunnel metadata.
        (
            "no_tunnel_key",
            icmp_frame("10.0.1.9", "10.0.0.2", 64),
            "from_overlay",
        ),
    ];
    for (reason, frame, prog) in cases {
        let before = dp.counters();
        let (verdict, _) = dp.run(prog, &frame);
        assert_eq!(verdict, TC_ACT_SHOT, "{reason}: verdict");
        let (traffic, drops) = delta(&before, &dp.counters());
        assert_eq!(drops, vec![(reason, 1)], "{reason}: drop counters");
        assert!(traffic.is_empty(), "{reason}: {traffic:?}");
    }
}

#[test]
fn direct_peers_are_routed_without_encapsulation_both_ways() {
    require_privileges!();
    let mut dp = TestDatapath::load();
    let before = dp.counters();
    let (verdict, out) = dp.run("from_container", &icmp_frame("10.0.0.2", "10.0.2.7", 64));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[14 + 8], 63, "routed: TTL decremented");
    assert_eq!(
        &out[14 + 16..14 + 20],
        &[10, 0, 2, 7],
        "no encapsulation, same packet"
    );
    // Arriving on the underlay from that peer's container: into ours.
    let inbound = ethernet(
        [0x02; 6],
        [0x04; 6],
        ETH_P_IP,
        &ipv4_icmp(ip("10.0.2.7"), ip("10.0.0.3"), 63),
    );
    let (verdict, out) = dp.run("from_underlay", &inbound);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &B_MAC);
    let (traffic, drops) = delta(&before, &dp.counters());
    assert_eq!(traffic, vec![("from_direct", 1), ("to_direct", 1)]);
    assert!(drops.is_empty(), "{drops:?}");

    // Host traffic on the underlay is left alone; a container-bound packet
    // from a VXLAN-only peer's subnet is not accepted unencapsulated.
    let host_traffic = ethernet(
        [0x02; 6],
        [0x04; 6],
        ETH_P_IP,
        &ipv4_icmp(ip("100.64.0.3"), ip("100.64.0.1"), 64),
    );
    assert_eq!(dp.run("from_underlay", &host_traffic).0, TC_ACT_OK);
    let before = dp.counters();
    let sneaky = ethernet(
        [0x02; 6],
        [0x04; 6],
        ETH_P_IP,
        &ipv4_icmp(ip("10.0.1.9"), ip("10.0.0.3"), 64),
    );
    assert_eq!(dp.run("from_underlay", &sneaky).0, TC_ACT_SHOT);
    let (_, drops) = delta(&before, &dp.counters());
    assert_eq!(drops, vec![("not_direct_peer", 1)]);
}

const VXLAN_PORT: u16 = 4789;
const PORT_MIN: u16 = 32768;
const PORT_MAX: u16 = 61000;

/// The test datapath with native VXLAN switched on, this host at 100.64.0.1.
fn native() -> TestDatapath {
    let mut dp = TestDatapath::load();
    let mut t = tables();
    t.encap = EncapConfig {
        underlay_ip: u32::from_ne_bytes([100, 64, 0, 1]),
        port: VXLAN_PORT.to_be(),
        flags: ENCAP_F_NATIVE,
        src_port_min: PORT_MIN,
        src_port_max: PORT_MAX,
    };
    dp.maps.apply(&t, None).unwrap();
    dp
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Native VXLAN: the frame leaves with the headers the kernel's VXLAN
/// device writes (RFC 7348), and the inner frame is what the device path
/// would have carried: the hop's TTL and checksum, the VTEP MACs, nothing
/// else.
#[test]
fn native_encapsulation_writes_the_kernel_devices_headers() {
    require_privileges!();
    let mut dp = native();
    let before = dp.counters();
    let frame = icmp_frame("10.0.0.2", "10.0.1.9", 64);
    let (verdict, out) = dp.run("from_container", &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out.len(),
        frame.len() + 50,
        "outer IPv4 + UDP + VXLAN + Ethernet"
    );
    assert_eq!(be16(&out[12..14]), ETH_P_IP);
    let (ip, udp, vx, eth, inner) = (
        &out[14..34],
        &out[34..42],
        &out[42..50],
        &out[50..64],
        &out[64..],
    );
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip[1], 0, "no DSCP, inner ECN not-ECT");
    assert_eq!(
        be16(&ip[2..4]) as usize,
        frame.len() + 36,
        "outer total length"
    );
    assert_eq!(be16(&ip[6..8]), 0, "DF clear, not a fragment");
    assert_eq!(ip[8], 64, "outer TTL");
    assert_eq!(ip[9], 17, "UDP");
    assert_eq!(checksum(ip), 0, "outer header checksum");
    assert_eq!(
        &ip[12..16],
        &[100, 64, 0, 1],
        "from this host's underlay address"
    );
    assert_eq!(&ip[16..20], &[100, 64, 0, 2], "to the subnet's host");
    let sport = be16(&udp[0..2]);
    assert!((PORT_MIN..PORT_MAX).contains(&sport), "source port {sport}");
    assert_eq!(be16(&udp[2..4]), VXLAN_PORT);
    assert_eq!(be16(&udp[4..6]) as usize, frame.len() + 16, "UDP length");
    assert_eq!(be16(&udp[6..8]), 0, "outer UDP checksum off");
    assert_eq!(vx, &[0x08, 0, 0, 0, 0, 0, VNI as u8, 0], "flags and VNI");
    assert_eq!(
        &eth[0..6],
        &VTEP_REMOTE,
        "inner destination: the remote VTEP"
    );
    assert_eq!(&eth[6..12], &VTEP_LOCAL, "inner source: our VTEP");
    assert_eq!(be16(&eth[12..14]), ETH_P_IP);
    assert_eq!(inner[8], 63, "inner TTL decremented once");
    assert_eq!(checksum(&inner[0..20]), 0, "inner checksum still valid");
    let mut expected = frame[14..].to_vec();
    expected[8] = 63;
    expected[10..12].copy_from_slice(&inner[10..12]);
    assert_eq!(inner, &expected[..], "inner packet otherwise untouched");
    let (traffic, drops) = delta(&before, &dp.counters());
    assert_eq!(traffic, vec![("to_overlay", 1)]);
    assert!(drops.is_empty(), "{drops:?}");
}

/// The host's own packet to a remote container, at its VXLAN device's
/// egress (the kernel routed it there and wrote the VTEP MACs): encapsulated
/// natively like a container's, the TTL left alone (no forwarding hop).
/// With native encapsulation off it passes to the device untouched.
#[test]
fn host_packets_to_remote_containers_are_encapsulated_natively() {
    require_privileges!();
    let from_host = ethernet(
        VTEP_REMOTE,
        VTEP_LOCAL,
        ETH_P_IP,
        &ipv4_icmp(ip("10.0.0.0"), ip("10.0.1.9"), 64),
    );
    let mut dp = native();
    let before = dp.counters();
    let (verdict, out) = dp.run("from_host", &from_host);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), from_host.len() + 50);
    assert_eq!(&out[26..30], &[100, 64, 0, 1], "outer source: this host");
    assert_eq!(&out[30..34], &[100, 64, 0, 2], "outer destination");
    assert_eq!(be16(&out[36..38]), VXLAN_PORT);
    assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);
    assert_eq!(&out[50..64], &from_host[0..14], "inner Ethernet as written");
    assert_eq!(&out[64..], &from_host[14..], "inner packet untouched");
    let (traffic, drops) = delta(&before, &dp.counters());
    assert_eq!(traffic, vec![("to_overlay", 1)]);
    assert!(drops.is_empty(), "{drops:?}");

    let mut dp = TestDatapath::load();
    let (verdict, out) = dp.run("from_host", &from_host);
    assert_eq!(verdict, TC_ACT_OK, "native off: on to the VXLAN device");
    assert_eq!(out, from_host);
}

/// The host's own packets reach the VXLAN device through one route per
/// network CIDR, so `from_host` picks the peer: a VXLAN peer's packet gets
/// the peer's inner addresses on the device path (whatever the route's one
/// neighbour said); a direct peer whose MAC the kernel does not know (here
/// there is no real underlay to look it up on) is reached through VXLAN
/// meanwhile, TTL untouched; an address nobody holds is dropped. (The
/// direct path itself: tests/backends.rs, host_to_remote_container.)
#[test]
fn host_packets_take_each_peers_path_from_the_maps() {
    require_privileges!();
    let mut dp = TestDatapath::load();
    let hop_mac = [0x0e, 0, 0, 0, 0, 0x99];
    let frame = |dst: &str| {
        ethernet(
            hop_mac,
            VTEP_LOCAL,
            ETH_P_IP,
            &ipv4_icmp(ip("10.0.0.1"), ip(dst), 64),
        )
    };
    let before = dp.counters();
    for dst in ["10.0.1.9", "10.0.2.7"] {
        let (verdict, out) = dp.run("from_host", &frame(dst));
        assert_eq!(verdict, TC_ACT_OK, "{dst}: on to the device");
        assert_eq!(
            &out[0..6],
            &VTEP_REMOTE,
            "{dst}: inner destination: the peer's VTEP"
        );
        assert_eq!(&out[6..12], &VTEP_LOCAL, "{dst}: inner source: ours");
        assert_eq!(
            &out[14..],
            &frame(dst)[14..],
            "{dst}: the packet untouched, TTL too"
        );
    }
    let (verdict, _) = dp.run("from_host", &frame("10.9.9.9"));
    assert_eq!(verdict, TC_ACT_SHOT, "nobody's address");
    let (traffic, drops) = delta(&before, &dp.counters());
    assert_eq!(traffic, vec![("to_overlay", 2)]);
    assert_eq!(drops, vec![("no_tunnel_key", 1)]);
}

/// ECN crosses the tunnel as the kernel carries it: copied to the outer
/// header, except CE, which becomes ECT(0); the DSCP stays inside.
#[test]
fn native_encapsulation_carries_ecn_as_the_kernel_does() {
    require_privileges!();
    let mut dp = native();
    for (tos, outer) in [(0x00, 0x00), (0xb8 | 1, 1), (2, 2), (0x28 | 3, 2)] {
        let mut frame = icmp_frame("10.0.0.2", "10.0.1.9", 64);
        frame[15] = tos;
        frame[24..26].copy_from_slice(&[0, 0]);
        let c = checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
        let (verdict, out) = dp.run("from_container", &frame);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out[15], outer, "outer TOS for inner {tos:#x}");
        assert_eq!(out[64 + 1], tos, "inner TOS kept");
    }
}

/// The outer source port comes from the flow: one flow keeps its port,
/// different flows spread over the range (ECMP and RSS entropy).
#[test]
fn native_encapsulation_picks_the_source_port_by_flow() {
    require_privileges!();
    let mut dp = native();
    let udp = |sport: u16| {
        ethernet(
            GW_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4_udp(ip("10.0.0.2"), ip("10.0.1.9"), sport, 5201, b"flow"),
        )
    };
    let port_of = |dp: &mut TestDatapath, sport: u16| {
        let (verdict, out) = dp.run("from_container", &udp(sport));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        be16(&out[34..36])
    };
    let first = port_of(&mut dp, 40000);
    assert_eq!(port_of(&mut dp, 40000), first, "one flow, one port");
    let ports: std::collections::BTreeSet<u16> =
        (40000..40016).map(|s| port_of(&mut dp, s)).collect();
    assert!(
        ports.iter().all(|p| (PORT_MIN..PORT_MAX).contains(p)),
        "{ports:?}"
    );
    assert!(
        ports.len() >= 12,
        "16 flows got only {} ports: {ports:?}",
        ports.len()
    );
}

/// A VXLAN frame as it arrives on the underlay: outer Ethernet, IPv4 from
/// `outer_src` to this host (100.64.0.1), UDP to `dport`, then `vxlan`.
fn underlay_udp(outer_src: [u8; 4], outer_dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&outer_src);
    ip.extend_from_slice(&outer_dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&udp);
    ethernet(VTEP_LOCAL, VTEP_REMOTE, ETH_P_IP, &ip)
}

const HERE: [u8; 4] = [100, 64, 0, 1];
const PEER: [u8; 4] = [100, 64, 0, 2];

/// What host 100.64.0.2 sends for its container 10.0.1.9 to reach `dst`.
fn vxlan_from_peer(vni: u32, src: &str, dst: &str) -> Vec<u8> {
    let inner = ethernet(
        VTEP_LOCAL,
        VTEP_REMOTE,
        ETH_P_IP,
        &ipv4_icmp(ip(src), ip(dst), 63),
    );
    underlay_udp(PEER, HERE, VXLAN_PORT, &frames::vxlan(vni, &inner))
}

/// Native decapsulation on the underlay: a peer's VXLAN frame for a local
/// container comes out as the inner packet, addressed to the container.
#[test]
fn native_decapsulation_delivers_the_inner_packet() {
    require_privileges!();
    let mut dp = native();
    let before = dp.counters();
    let frame = vxlan_from_peer(VNI, "10.0.1.9", "10.0.0.3");
    let (verdict, out) = dp.run("from_underlay", &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), frame.len() - 50, "outer headers gone");
    assert_eq!(&out[0..6], &B_MAC, "to the container");
    assert_eq!(&out[6..12], &GW_MAC, "from its gateway");
    assert_eq!(be16(&out[12..14]), ETH_P_IP);
    assert_eq!(&out[14..], &frame[64..], "the inner packet, untouched");
    let (traffic, drops) = delta(&before, &dp.counters());
    assert_eq!(traffic, vec![("from_overlay", 1)]);
    assert!(drops.is_empty(), "{drops:?}");
}

/// The object pins exactly the maps user space knows by name
/// (`netfab_common::maps::ALL`): a map added on one side only is caught
/// here, not by an agent that silently adopts or misses it.
#[test]
fn the_object_pins_exactly_the_maps_user_space_knows() {
    require_privileges!();
    let dp = TestDatapath::load();
    let mut pinned: Vec<String> = std::fs::read_dir(&dp.pin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pinned.sort();
    let mut known: Vec<String> = netfab_common::maps::ALL
        .iter()
        .map(|n| n.to_string())
        .collect();
    known.sort();
    assert_eq!(pinned, known);
}

/// `__sk_buff` as BPF_PROG_TEST_RUN takes it, with only GSO fields set: the
/// frame then looks to the program like a GRO aggregate.
fn aggregate_ctx(gso_size: u32, gso_segs: u32) -> [u8; 192] {
    // Offsets of `gso_segs` and `gso_size` in the UAPI's `struct __sk_buff`.
    let mut ctx = [0u8; 192];
    ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    ctx
}

/// One flow, one path: after a GRO aggregate of a flow went to the VXLAN
/// device, that flow's single frames follow it there (were they decapsulated
/// natively they would overtake it and the receiver would see the flow
/// reordered); other flows stay native, and the flow itself comes back once
/// it has sent no aggregate for a while.
#[test]
fn a_flow_with_aggregates_keeps_to_the_device_path() {
    require_privileges!();
    let mut dp = native();
    let flow = vxlan_from_peer(VNI, "10.0.1.9", "10.0.0.3");
    let mut other = flow.clone();
    other[34..36].copy_from_slice(&40001u16.to_be_bytes());

    let (verdict, _) = dp.run("from_underlay", &flow);
    assert_eq!(verdict, TC_ACT_REDIRECT, "a single frame, no aggregate yet");

    let ctx = aggregate_ctx(1400, 2);
    let before = dp.counters();
    let p: &mut SchedClassifier = dp
        .ebpf
        .program_mut("from_underlay")
        .unwrap()
        .try_into()
        .unwrap();
    let mut out = vec![0u8; flow.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&flow);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let r = p.test_run(opts).expect("BPF_PROG_TEST_RUN with a context");
    out.truncate(r.data_size_out as usize);
    assert_eq!(r.return_value, TC_ACT_OK, "an aggregate: to the device");
    assert_eq!(out, flow, "an aggregate is left whole");

    let (verdict, out) = dp.run("from_underlay", &flow);
    assert_eq!(
        verdict, TC_ACT_OK,
        "its flow's next single frame follows it"
    );
    assert_eq!(out, flow, "untouched");
    let (traffic, drops) = delta(&before, &dp.counters());
    assert!(
        traffic.is_empty() && drops.is_empty(),
        "{traffic:?} {drops:?}"
    );

    let (verdict, _) = dp.run("from_underlay", &other);
    assert_eq!(verdict, TC_ACT_REDIRECT, "another flow stays native");

    // Age the flow's entry past the sticky time (0: boot, long ago).
    let mut flows: aya::maps::HashMap<_, u64, u64> = dp
        .ebpf
        .map_mut("NF_DEVICE_FLOWS")
        .expect("the flow map")
        .try_into()
        .unwrap();
    let key = (u32::from_be_bytes(PEER) as u64) << 16 | 40000;
    let keys: Vec<u64> = flows.keys().map(|k| k.unwrap()).collect();
    assert_eq!(
        keys,
        vec![key],
        "one flow recorded, by outer source and port"
    );
    flows.insert(key, 0, 0).unwrap();
    let (verdict, _) = dp.run("from_underlay", &flow);
    assert_eq!(verdict, TC_ACT_REDIRECT, "a quiet flow is native again");
}

/// What native decapsulation refuses is dropped with the overlay's own
/// reasons; what it does not handle goes on to the stack (and the VXLAN
/// device) untouched.
#[test]
fn native_decapsulation_drops_or_passes_what_it_cannot_take() {
    require_privileges!();
    let mut dp = native();
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("unknown_vni", vxlan_from_peer(99, "10.0.1.9", "10.0.0.3")),
        (
            "unknown_source",
            underlay_udp(
                [100, 64, 0, 66],
                HERE,
                VXLAN_PORT,
                &frames::vxlan(
                    VNI,
                    &vxlan_from_peer(VNI, "10.0.1.9", "10.0.0.3")[64 - 14..],
                ),
            ),
        ),
        // 10.0.2.0/24 belongs to 100.64.0.3, not to the sender.
        (
            "foreign_inner_source",
            vxlan_from_peer(VNI, "10.0.2.5", "10.0.0.3"),
        ),
        ("no_endpoint", vxlan_from_peer(VNI, "10.0.1.9", "10.0.0.77")),
        // C (10.0.0.4) is in another network.
        (
            "network_mismatch",
            vxlan_from_peer(VNI, "10.0.1.9", "10.0.0.4"),
        ),
    ];
    for (reason, frame) in refused {
        let before = dp.counters();
        let (verdict, _) = dp.run("from_underlay", &frame);
        assert_eq!(verdict, TC_ACT_SHOT, "{reason}: verdict");
        let (traffic, drops) = delta(&before, &dp.counters());
        assert_eq!(drops, vec![(reason, 1)], "{reason}: drop counters");
        assert!(traffic.is_empty(), "{reason}: {traffic:?}");
    }

    let good = vxlan_from_peer(VNI, "10.0.1.9", "10.0.0.3");
    let mut no_i_flag = good.clone();
    no_i_flag[42] = 0;
    let mut elsewhere = good.clone();
    elsewhere[30..34].copy_from_slice(&[100, 64, 0, 7]);
    let c = checksum(&{
        let mut h = elsewhere[14..34].to_vec();
        h[10..12].copy_from_slice(&[0, 0]);
        h
    });
    elsewhere[24..26].copy_from_slice(&c.to_be_bytes());
    let passed: Vec<(&str, Vec<u8>)> = vec![
        (
            "not the VXLAN port",
            underlay_udp(PEER, HERE, 5000, &good[42..]),
        ),
        ("no VNI flag", no_i_flag),
        ("cut after the VXLAN header", good[..50].to_vec()),
        ("for another host", elsewhere),
    ];
    for (what, frame) in passed {
        let before = dp.counters();
        let (verdict, out) = dp.run("from_underlay", &frame);
        assert_eq!(verdict, TC_ACT_OK, "{what}: verdict");
        assert_eq!(out, frame, "{what}: untouched");
        let (traffic, drops) = delta(&before, &dp.counters());
        assert!(
            drops.is_empty() && traffic.is_empty(),
            "{what}: {traffic:?} {drops:?}"
        );
    }
}

/// xorshift64*: a reproducible stream of random numbers for the fuzz test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A frame from the seeds, mutated: bytes flipped, cut short, grown, or
/// replaced by noise altogether.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut f = seeds[rng.below(seeds.len())].clone();
    match rng.below(10) {
        0 => {
            let len = 14 + rng.below(150);
            f = (0..len).map(|_| rng.next() as u8).collect();
        }
        1 => f.truncate(14 + rng.below(f.len() - 13)),
        2 => f.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
        _ => {
            for _ in 0..1 + rng.below(6) {
                let i = rng.below(f.len());
                f[i] = rng.next() as u8;
            }
        }
    }
    f
}

/// 100,000 random and mutated frames through the programs that take
/// frames from outside a container's own veth. Whatever is delivered goes
/// to the endpoint its destination address names, in the network it came
/// from; whatever is encapsulated keeps its network's VNI.
#[test]
fn fuzzed_frames_never_reach_a_wrong_endpoint_or_change_network() {
    require_privileges!();
    const C_MAC: [u8; 6] = [0x0a, 0x6e, 10, 0, 0, 4];
    let mut dp = native();
    let mut t = tables();
    t.encap = EncapConfig {
        underlay_ip: u32::from_ne_bytes(HERE),
        port: VXLAN_PORT.to_be(),
        flags: ENCAP_F_NATIVE,
        src_port_min: PORT_MIN,
        src_port_max: PORT_MAX,
    };
    t.endpoints.get_mut(&ip("10.0.0.4")).unwrap().mac = C_MAC;
    dp.maps.apply(&t, None).unwrap();
    // (address, MAC, VNI) of every local container.
    let endpoints = [
        ([10, 0, 0, 2], A_MAC, VNI),
        ([10, 0, 0, 3], B_MAC, VNI),
        ([10, 0, 0, 4], C_MAC, VNI + 1),
    ];
    let delivered_to = |out: &[u8]| {
        endpoints
            .iter()
            .find(|e| out.len() >= 34 && out[0..6] == e.1)
    };

    let underlay_seeds = vec![
        vxlan_from_peer(VNI, "10.0.1.9", "10.0.0.3"),
        vxlan_from_peer(VNI, "10.0.1.9", "10.0.0.2"),
        vxlan_from_peer(VNI + 1, "10.0.1.9", "10.0.0.4"),
        // Plain IP from the direct peer's subnet.
        icmp_frame("10.0.2.5", "10.0.0.3", 64),
    ];
    let container_seeds = vec![
        icmp_frame("10.0.0.2", "10.0.0.3", 64),
        icmp_frame("10.0.0.2", "10.0.0.4", 64),
        icmp_frame("10.0.0.2", "10.0.1.9", 64),
        icmp_frame("10.0.0.2", "10.0.2.5", 64),
        ethernet(
            GW_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4_udp(ip("10.0.0.2"), ip("10.0.1.9"), 4000, VXLAN_PORT, b"inner"),
        ),
    ];
    let seed = 0x6e65_7466_6162_u64;
    eprintln!("fuzz seed {seed:#x}");
    let mut rng = Rng(seed);
    let (mut delivered, mut encapsulated, mut runs) = (0u32, 0u32, 0u32);
    while runs < 100_000 {
        let from_underlay = rng.below(2) == 0;
        let (prog, seeds) = if from_underlay {
            ("from_underlay", &underlay_seeds)
        } else {
            ("from_container", &container_seeds)
        };
        let frame = mutate(&mut rng, seeds);
        let Some((verdict, out)) = dp.try_run(prog, &frame) else {
            continue; // the kernel refused the frame itself (too short)
        };
        runs += 1;
        assert!(
            [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&verdict),
            "{prog} returned {verdict} for {frame:02x?}"
        );
        if verdict != TC_ACT_REDIRECT {
            continue;
        }
        if let Some(&(addr, _, vni)) = delivered_to(&out) {
            delivered += 1;
            assert_eq!(
                out[30..34],
                addr,
                "{prog} delivered {frame:02x?} as {out:02x?}"
            );
            if from_underlay
                && frame.len() >= 50
                && frame[23] == 17
                && be16(&frame[36..38]) == VXLAN_PORT
            {
                let in_vni = u32::from_be_bytes([0, frame[46], frame[47], frame[48]]);
                assert_eq!(
                    in_vni, vni,
                    "VNI {in_vni} delivered into network {vni}: {frame:02x?}"
                );
            } else {
                // From a container (A, network VNI) or a direct peer.
                assert_eq!(vni, VNI, "{prog} crossed networks: {frame:02x?}");
            }
        } else if !from_underlay && out.len() == frame.len() + 50 {
            encapsulated += 1;
            let out_vni = u32::from_be_bytes([0, out[46], out[47], out[48]]);
            assert_eq!(
                out_vni, VNI,
                "encapsulated into VNI {out_vni}: {frame:02x?}"
            );
        }
    }
    eprintln!("{runs} frames: {delivered} delivered, {encapsulated} encapsulated natively");
    assert!(
        delivered > 1000 && encapsulated > 1000,
        "the seeds must keep paths alive"
    );
}
