//! The cross-host scenarios run against every backend (ebpf, vxlan,
//! host-gw), plus a mixed ebpf + vxlan cluster where eBPF is really
//! unavailable to one agent, host-gw refusing a peer behind a router, and
//! egress masquerade.
use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use netfab::dataplane::{ebpf::maps::BpfMaps, select::Choice};
use netfab_lab::{
    self as lab,
    demo::{iperf3, parse_ping, ping, IperfServer},
    sh,
    topology::{Topology, WAN_IP},
};
use netfab_tests::{
    capture::Capture,
    guards::LabGuard,
    pcap, require_privileges,
    traffic::{vxlan_frames, Pinger},
    wait_for,
};

fn lab(name: &str, backend: Choice, hosts: u32, containers: u32) -> LabGuard {
    let mut t = Topology::new(name, hosts, containers).unwrap();
    t.dataplane = backend;
    LabGuard::up_with(t)
}

fn short(b: Choice) -> &'static str {
    match b {
        Choice::Ebpf => "e",
        Choice::Vxlan => "v",
        Choice::HostGw => "h",
        Choice::Auto => "a",
    }
}

/// Remote subnets host `h` has really programmed into the kernel.
fn programmed_remotes(t: &Topology, h: u32) -> BTreeSet<Ipv4Net> {
    match lab::read_status(t, h).map(|s| s.dataplane).as_deref() {
        Some("ebpf") => BpfMaps::open(&t.pin_dir(h))
            .and_then(|m| m.read())
            .map(|tb| tb.remote_subnets.keys().copied().collect())
            .unwrap_or_default(),
        _ => sh::ip_in(&t.host_ns(h), &["route", "show", "proto", "212"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<Ipv4Net>().ok())
            .filter(|n| n.prefix_len() < 32)
            .collect(),
    }
}

fn container_mtu(t: &Topology, h: u32, c: u32) -> u32 {
    let out = sh::ip_in(&t.container_ns(h, c), &["-o", "link", "show", "eth0"]).unwrap();
    let mtu = out
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap();
    mtu.parse().unwrap()
}

fn traffic(b: Choice) {
    require_privileges!();
    let lab = lab(&format!("tr-{}", short(b)), b, 2, 2);
    let t = &lab.topo;
    let st = lab::read_status(t, 1).unwrap();
    assert_eq!(
        st.dataplane,
        format!("{b:?}").to_lowercase().replace("hostgw", "host-gw")
    );
    let want_mtu = if b == Choice::HostGw { 1500 } else { 1450 };
    assert_eq!(st.container_mtu, want_mtu);
    assert_eq!(
        container_mtu(t, 1, 1),
        want_mtu,
        "containers get the agent's MTU"
    );
    for (h, c) in t.all_containers() {
        for (h2, c2) in t.all_containers() {
            if (h, c) == (h2, c2) {
                continue;
            }
            // Full-size packets with DF set: the MTU really fits the path.
            let size = (want_mtu - 28).to_string();
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &t.container_ns(h, c),
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    "2",
                    "-i",
                    "0.05",
                    "-W",
                    "1",
                    "-M",
                    "do",
                    "-s",
                    &size,
                ])
                .arg(t.container_ip(h2, c2).to_string())
                .output()
                .unwrap();
            let p = parse_ping(&String::from_utf8_lossy(&out.stdout)).unwrap();
            assert_eq!(
                p.received,
                2,
                "{} -> {} with {size} bytes",
                t.container_ns(h, c),
                t.container_ip(h2, c2)
            );
        }
    }
    let _server = IperfServer::start(&t.container_ns(1, 1), 5201).unwrap();
    let ip = t.container_ip(1, 1).to_string();
    let across = iperf3(&t.container_ns(2, 1), &ip, 5201, 2, 1).unwrap();
    let within = iperf3(&t.container_ns(1, 2), &ip, 5201, 2, 1).unwrap();
    eprintln!("{b:?}: iperf3 across hosts {across:.2} Gbit/s, within a host {within:.2} Gbit/s");
    assert!(across > 0.05 && within > 0.05);
}

fn host_death(b: Choice) {
    require_privileges!();
    let mut t = Topology::new(&format!("hd-{}", short(b)), 3, 1).unwrap();
    t.dataplane = b;
    t.lease_ttl = 4;
    // Peers keep routing a vanished host for the grace period; short here.
    t.lease_grace = 3;
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    let dead = t.subnet(3, 1).unwrap();
    for h in [1, 2] {
        assert!(
            programmed_remotes(t, h).contains(&dead),
            "host {h} routes host 3 first"
        );
    }
    lab::stop_agent(&t.name, 3, true).unwrap();
    sh::ip(&["netns", "del", &t.container_ns(3, 1)]).unwrap();
    sh::ip(&["netns", "del", &t.host_ns(3)]).unwrap();
    let killed = Instant::now();
    wait_for(
        "host 3's subnet to leave every kernel",
        Duration::from_secs(25),
        || {
            [1, 2]
                .iter()
                .all(|&h| !programmed_remotes(t, h).contains(&dead))
                .then_some(())
        },
    );
    eprintln!(
        "{b:?}: dead host's subnet unprogrammed after {:?} (TTL 4 s + grace 3 s)",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(6),
        "unprogrammed before TTL and grace ran out"
    );
    let st = lab.ping((1, 1), (2, 1), 3);
    assert_eq!(st.received, 3, "the survivors still talk");
}

fn restart(b: Choice) {
    require_privileges!();
    let lab = lab(&format!("rs-{}", short(b)), b, 2, 1);
    let t = lab.topo.clone();
    let pinger = Pinger::start(
        &t.container_ns(1, 1),
        &t.container_ip(2, 1).to_string(),
        400,
    );
    std::thread::sleep(Duration::from_millis(800));
    for h in [1, 2] {
        lab::stop_agent(&t.name, h, true).unwrap();
        lab::start_agent(&t, h, None).unwrap();
        lab::wait_host_programmed(&t, h, Duration::from_secs(15)).unwrap();
    }
    let st = pinger.finish();
    eprintln!(
        "{b:?}: {}/{} pings answered across two agent kills",
        st.received, st.sent
    );
    assert_eq!(st.received, st.sent);
}

fn masquerade(b: Choice) {
    require_privileges!();
    let lab = lab(&format!("mq-{}", short(b)), b, 2, 1);
    let t = &lab.topo;
    // To the outside world: the host's address.
    let cap = Capture::start(
        &t.underlay_ns(),
        "br0",
        &format!("icmp and host {WAN_IP}"),
        2,
    );
    let st = ping(&t.container_ns(1, 1), &WAN_IP.to_string(), 1, "0.05").unwrap();
    assert_eq!(st.received, 1, "the outside world answers");
    let file = cap.finish(Duration::from_secs(10));
    let srcs: BTreeSet<String> = pcap::packets(&file)
        .iter()
        .filter(|f| f.len() >= 34 && f[23] == 1)
        .map(|f| format!("{}.{}.{}.{}", f[26], f[27], f[28], f[29]))
        .collect();
    assert!(
        srcs.contains(&t.host_ip(1).to_string()),
        "NATed to the host: {srcs:?}"
    );
    assert!(
        !srcs.contains(&t.container_ip(1, 1).to_string()),
        "{srcs:?}"
    );
    // Between containers (routed directly on this segment): never NATed.
    let cap = Capture::start(
        &t.underlay_ns(),
        "br0",
        &format!("icmp and host {}", t.container_ip(2, 1)),
        2,
    );
    ping(
        &t.container_ns(1, 1),
        &t.container_ip(2, 1).to_string(),
        1,
        "0.05",
    )
    .unwrap();
    let file = cap.finish(Duration::from_secs(10));
    let first = pcap::packets(&file)[0].to_vec();
    assert_eq!(
        &first[26..30],
        &t.container_ip(1, 1).octets(),
        "container source kept"
    );
}

macro_rules! per_backend {
    ($($scenario:ident),*) => {$(
        mod $scenario {
            use super::*;
            #[test]
            fn ebpf() { super::$scenario(Choice::Ebpf) }
            #[test]
            fn vxlan() { super::$scenario(Choice::Vxlan) }
            #[test]
            fn host_gw() { super::$scenario(Choice::HostGw) }
        }
    )*};
}

per_backend!(traffic, host_death, restart, masquerade);

#[test]
fn mixed_cluster_with_ebpf_really_unavailable_on_one_host() {
    require_privileges!();
    let mut t = Topology::new("mixed", 2, 1).unwrap();
    t.no_bpf_hosts = vec![2];
    // VXLAN between the two, to prove the encapsulations interoperate.
    t.direct_routing = false;
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    let (s1, s2) = (
        lab::read_status(t, 1).unwrap(),
        lab::read_status(t, 2).unwrap(),
    );
    assert_eq!(s1.dataplane, "ebpf");
    assert_eq!(s2.dataplane, "vxlan");
    assert!(s2.reason.contains("missing CAP_BPF"), "{}", s2.reason);
    let shown = Command::new(lab::netfab_binary().unwrap())
        .arg("status")
        .arg("--run-dir")
        .arg(lab::host_dir(&t.name, 2))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("dataplane vxlan") && shown.contains("eBPF unavailable"),
        "{shown}"
    );
    assert!(shown.contains("vxlan    direct routing is off"), "{shown}");

    let frames: Vec<_> = vxlan_frames(&t.underlay_ns(), 4, || {
        let st = lab.ping((1, 1), (2, 1), 2);
        assert_eq!(st.received, 2);
    })
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(frames.len(), 4);
    let senders: BTreeSet<_> = frames.iter().map(|f| f.outer_src).collect();
    assert_eq!(senders.len(), 2, "both hosts encapsulate: {frames:?}");
    assert!(frames.iter().all(|f| f.vni == 1));
    let _server = IperfServer::start(&t.container_ns(2, 1), 5201).unwrap();
    let gbps = iperf3(
        &t.container_ns(1, 1),
        &t.container_ip(2, 1).to_string(),
        5201,
        2,
        1,
    )
    .unwrap();
    eprintln!("mixed ebpf -> vxlan host: {gbps:.2} Gbit/s");
    assert!(gbps > 0.05);
}

#[test]
fn host_gw_refuses_a_peer_behind_a_router() {
    require_privileges!();
    let mut t = Topology::new("hgw-seg", 2, 1).unwrap();
    t.dataplane = Choice::HostGw;
    t.segments = 2;
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    let st = lab::read_status(t, 1).unwrap();
    let refused = st.refused.join("\n");
    assert!(
        refused.contains(&format!(
            "host-gw cannot route {} via {}",
            t.subnet(2, 1).unwrap(),
            t.host_ip(2)
        )) && refused.contains("not on this host's L2 segment 100.64.0.0/24"),
        "{refused}"
    );
    assert!(
        lab::agent_log(t, 1).contains("host-gw cannot route"),
        "the agent logs it"
    );
    assert!(
        programmed_remotes(t, 1).is_empty(),
        "nothing half-programmed"
    );
}

/// Two networks on every backend: within each traffic flows, between them
/// it is dropped and counted (by the datapath on eBPF, by the NETFAB-ISOLATE
/// chain where the host stack routes).
fn isolation(b: Choice) {
    require_privileges!();
    let mut t = Topology::with(
        &format!("is-{}", short(b)),
        2,
        2,
        2,
        netfab_lab::topology::Control::Etcd,
    )
    .unwrap();
    t.dataplane = b;
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    for c in [1, 2] {
        let st = lab.ping((1, c), (2, c), 2);
        assert_eq!(st.received, 2, "within network {}", t.container_network(c));
    }
    for dst in [t.container_ip(2, 2), t.container_ip(1, 2)] {
        let st = ping(&t.container_ns(1, 1), &dst.to_string(), 2, "0.05").unwrap();
        assert_eq!(st.received, 0, "{dst} is in another network");
    }
    let dropped = if b == Choice::Ebpf {
        lab.counters(1).drops["network_mismatch"]
    } else {
        let rules = sh::in_ns(
            &t.host_ns(1),
            "iptables",
            &["-L", "NETFAB-ISOLATE", "-v", "-x", "-n"],
        )
        .unwrap();
        rules
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(dropped >= 4, "{b:?}: drops counted: {dropped}");
}

per_backend!(isolation);

/// Node-to-pod across hosts (kubelet probes, host-network pods, NodePort
/// backends): host 1 itself reaches host 2's container and gets the
/// replies, by ICMP and by TCP. On eBPF both the overlay and the direct
/// (shared L2) path are covered.
fn host_to_remote_container(b: Choice) {
    require_privileges!();
    for direct in [true, false] {
        if b != Choice::Ebpf && !direct {
            continue;
        }
        let mut t = Topology::new(&format!("nd-{}{}", short(b), direct as u8), 2, 1).unwrap();
        t.dataplane = b;
        t.direct_routing = direct;
        let lab = LabGuard::up_with(t);
        let t = &lab.topo;
        let pod = t.container_ip(2, 1).to_string();
        let st = ping(&t.host_ns(1), &pod, 20, "0.02").unwrap();
        assert_eq!(
            st.received, 20,
            "{b:?} direct={direct}: host 1 -> pod on host 2"
        );
        if b == Choice::Ebpf {
            // No container on host 1 sent anything: these are the host's
            // own packets, sent by from_host on the peer's path (direct once
            // the peer's MAC is known: its first packet may take VXLAN).
            let c = lab.counters(1).traffic;
            let (dir, over) = (c["to_direct"].packets, c["to_overlay"].packets);
            if direct {
                assert!(
                    dir >= 19 && over <= 1,
                    "from_host: {dir} direct, {over} VXLAN"
                );
            } else {
                assert!(
                    over >= 20 && dir == 0,
                    "from_host: {dir} direct, {over} VXLAN"
                );
            }
        }
        let _srv = IperfServer::start(&t.container_ns(2, 1), 5201).unwrap();
        let gbps = iperf3(&t.host_ns(1), &pod, 5201, 1, 1)
            .unwrap_or_else(|e| panic!("{b:?} direct={direct}: TCP host 1 -> pod: {e:#}"));
        assert!(gbps > 0.0);
        // And the other way: a pod reaches a remote host's own address.
        let st = ping(&t.container_ns(2, 1), &t.host_ip(1).to_string(), 5, "0.02").unwrap();
        assert_eq!(st.received, 5, "{b:?} direct={direct}: pod -> host 1");
    }
}

per_backend!(host_to_remote_container);
