//! The eBPF datapath in a real multi-host lab: two hosts on one underlay
//! bridge, two containers each, agents running.
use std::{net::SocketAddrV4, time::Duration};

use netfab::addr::MacAddr;
use netfab_lab::{
    demo::{iperf3, ping, IperfServer},
    topology::{self, Topology},
};
use netfab_tests::{
    frames::{ethernet, ipv4_icmp, vxlan, ETH_P_IP},
    guards::{sh, LabGuard, NetNs},
    require_privileges,
    sockets::{send_raw_frame, send_udp},
    traffic::vxlan_frames,
    wait_for,
};

#[test]
fn cross_host_and_local_traffic_takes_the_ebpf_path() {
    require_privileges!();
    // Direct routing off: same segment, but this test is about VXLAN.
    let mut topo = Topology::new("dp", 2, 2).unwrap();
    topo.direct_routing = false;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;

    // Every container reaches every other, across hosts and on one host.
    for (h, c) in t.all_containers() {
        for (h2, c2) in t.all_containers() {
            if (h, c) == (h2, c2) {
                continue;
            }
            let st = lab.ping((h, c), (h2, c2), 3);
            assert_eq!(
                st.received,
                st.sent,
                "{} -> {}",
                t.container_ns(h, c),
                t.container_ip(h2, c2)
            );
        }
    }

    // On the wire: VXLAN to port 4789 with our VNI, between the hosts'
    // underlay IPs, inner destination MAC = the receiving host's VTEP.
    let frames = vxlan_frames(&t.underlay_ns(), 4, || {
        let st = lab.ping((2, 1), (1, 1), 2);
        assert_eq!(st.received, 2);
    });
    assert_eq!(frames.len(), 4);
    for f in frames {
        let f = f.expect("every captured frame parses as VXLAN");
        assert_eq!(f.vni, t.network_config(1).vni);
        let (src_h, dst_h) = if f.outer_dst == t.host_ip(1) {
            (2, 1)
        } else {
            (1, 2)
        };
        assert_eq!(
            (f.outer_src, f.outer_dst),
            (t.host_ip(src_h), t.host_ip(dst_h))
        );
        assert_eq!(f.inner_dst_mac, MacAddr::vtep_for(t.host_ip(dst_h)).0);
        assert_eq!(f.inner_src_ip, Some(t.container_ip(src_h, 1)));
        assert_eq!(f.inner_dst_ip, Some(t.container_ip(dst_h, 1)));
    }

    // TCP across hosts, then within one host; the counters show which path.
    let _server = IperfServer::start(&t.container_ns(1, 1), 5201).unwrap();
    let server_ip = t.container_ip(1, 1).to_string();
    let (h1, h2) = (lab.counters(1), lab.counters(2));
    let gbps = iperf3(&t.container_ns(2, 1), &server_ip, 5201, 2, 1).unwrap();
    eprintln!("iperf3 across hosts: {gbps:.2} Gbit/s");
    assert!(gbps > 0.05, "{gbps} Gbit/s");
    let (h1b, h2b) = (lab.counters(1), lab.counters(2));
    let enc = h2b.traffic["to_overlay"].packets - h2.traffic["to_overlay"].packets;
    let dec = h1b.traffic["from_overlay"].packets - h1.traffic["from_overlay"].packets;
    assert!(
        enc > 1000 && dec > 1000,
        "encapsulated {enc}, decapsulated {dec}"
    );

    let gbps = iperf3(&t.container_ns(1, 2), &server_ip, 5201, 2, 1).unwrap();
    eprintln!("iperf3 within a host: {gbps:.2} Gbit/s");
    let h1c = lab.counters(1);
    let local = h1c.traffic["local_delivery"].packets - h1b.traffic["local_delivery"].packets;
    assert!(local > 1000, "local deliveries {local}");
    // The containers' own IPv6 chatter at link-up (duplicate address
    // detection, router solicitations) is dropped as not_ipv4: IPv6 is not
    // carried yet. Nothing else.
    assert!(
        h1c.drops
            .iter()
            .all(|(reason, &d)| d == 0 || *reason == "not_ipv4"),
        "no drops in normal traffic: {:?}",
        h1c.drops
    );
}

#[test]
fn bad_traffic_is_dropped_and_counted() {
    require_privileges!();
    let lab = LabGuard::up("bad", 2, 1);
    let t = &lab.topo;
    let c1 = t.container_ns(1, 1);
    let drops = |reason: &str| lab.counters(1).drops[reason];

    // A container using an address it was not given.
    let subnet = t.subnet(1, 1).unwrap();
    let spoofed = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 200).to_string();
    sh(&[
        "-n",
        &c1,
        "addr",
        "add",
        &format!("{spoofed}/32"),
        "dev",
        "eth0",
    ]);
    let st = ping(&c1, &format!("{}", t.container_ip(2, 1)), 3, "0.05").map(|s| s.received);
    assert_eq!(st.unwrap(), 3, "the container's own address still works");
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &c1, "ping", "-n", "-q", "-c", "3", "-i", "0.05", "-W", "1", "-I",
            &spoofed,
        ])
        .arg(t.container_ip(2, 1).to_string())
        .output()
        .unwrap();
    let st = netfab_lab::demo::parse_ping(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(st.received, 0, "spoofed pings must not get through");
    assert!(drops("spoofed_source") >= 3, "{:?}", lab.counters(1).drops);

    // A frame that says IPv4 but stops after 10 bytes of header.
    let before = drops("truncated");
    let mut frame = ethernet(
        topology::GATEWAY_MAC.0,
        MacAddr::container_for(t.container_ip(1, 1)).0,
        ETH_P_IP,
        &[],
    );
    frame.extend_from_slice(&ipv4_icmp(t.container_ip(1, 1), t.container_ip(2, 1), 64)[..10]);
    send_raw_frame(&c1, "eth0", frame);
    wait_for("truncated drop", Duration::from_secs(5), || {
        (drops("truncated") > before).then_some(())
    });

    // VXLAN from a known host on a VNI this host does not serve.
    let inner = ethernet(
        MacAddr::vtep_for(t.host_ip(1)).0,
        MacAddr::vtep_for(t.host_ip(2)).0,
        ETH_P_IP,
        &ipv4_icmp(t.container_ip(2, 1), t.container_ip(1, 1), 64),
    );
    let to_h1 = SocketAddrV4::new(t.host_ip(1), 4789);
    send_udp(&t.host_ns(2), to_h1, vxlan(77, &inner));
    wait_for("unknown VNI drop", Duration::from_secs(5), || {
        (drops("unknown_vni") >= 1).then_some(())
    });

    // VXLAN with the right VNI from an underlay address that is no host.
    let rogue = NetNs::new("bad-rogue");
    sh(&[
        "-n",
        &t.underlay_ns(),
        "link",
        "add",
        "rogue",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &rogue.name,
    ]);
    sh(&[
        "-n",
        &t.underlay_ns(),
        "link",
        "set",
        "rogue",
        "master",
        "br0",
        "up",
    ]);
    sh(&[
        "-n",
        &rogue.name,
        "addr",
        "add",
        "100.64.0.250/24",
        "dev",
        "eth0",
    ]);
    sh(&["-n", &rogue.name, "link", "set", "eth0", "up"]);
    send_udp(&rogue.name, to_h1, vxlan(t.network_config(1).vni, &inner));
    wait_for("unknown source drop", Duration::from_secs(5), || {
        (drops("unknown_source") >= 1).then_some(())
    });
    // Nothing from either reached the container.
    assert_eq!(lab.counters(1).drops["no_endpoint"], 0);
}
