//! netfab-cni driven through the upstream libcni (as containerd and CRI-O
//! drive plugins) and chained with the upstream plugins (tuning, portmap,
//! firewall) from Debian's containernetworking-plugins.
use std::process::Command;

use netfab::{cni::attach::host_ifname, dataplane::select::Choice};
use netfab_lab::{
    self as lab, cni,
    demo::{iperf3, ping, IperfServer},
    sh,
    topology::Topology,
};
use netfab_tests::{guards::LabGuard, libcni::ConfList, require_privileges, result_ip};
use serde_json::{json, Value};

/// netfab's own entry of a conflist: libcni injects name and cniVersion.
pub fn netfab_entry(t: &Topology, h: u32, network: &str) -> Value {
    let mut nf = cni::conf(t, h, network);
    let o = nf.as_object_mut().expect("an object");
    for k in ["cniVersion", "cniVersions", "name"] {
        o.remove(k);
    }
    nf
}

/// netfab, then tuning and firewall, and portmap if asked. (Debian's
/// portmap 1.1.1 fails every CHECK of an IPv4-only pod on a host with
/// ip6tables, containernetworking/plugins#819, so CHECK runs on a list
/// without it.)
fn chain(t: &Topology, version: &str, portmap: bool) -> Value {
    let mut plugins = vec![
        netfab_entry(t, 1, "default"),
        json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "500"}}),
        json!({"type": "firewall", "backend": "iptables"}),
    ];
    if portmap {
        plugins
            .push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
    }
    json!({
        "cniVersion": version,
        "name": format!("nfchain-{}-{portmap}", version.replace('.', "")),
        "plugins": plugins,
    })
}

fn host_iptables(t: &Topology, table: &str) -> String {
    sh::in_ns(&t.host_ns(1), "iptables", &["-w", "-t", table, "-S"]).unwrap()
}

#[test]
fn libcni_add_check_del_twice_chained_with_tuning_portmap_and_firewall() {
    require_privileges!();
    let lab = LabGuard::up("lcni", 2, 1);
    let t = &lab.topo;
    for (i, version) in ["0.4.0", "1.0.0"].into_iter().enumerate() {
        let list = ConfList::write(t, &format!("chain{i}"), &chain(t, version, true));
        let ctr = format!("{}-lc{i}", t.name);
        sh::ip(&["netns", "add", &ctr]).unwrap();
        let host_port = 18080 + i as u16;
        let caps = json!({"portMappings": [
            {"hostPort": host_port, "containerPort": 5201, "protocol": "tcp"}
        ]});

        let r = list
            .run(t, 1, "ADD", &ctr, "eth0", Some(&caps))
            .unwrap_or_else(|e| panic!("{version} ADD: {e}"));
        assert_eq!(r["cniVersion"], version, "{r}");
        let ip = result_ip(&r);
        assert!(t
            .subnet(1, 1)
            .unwrap()
            .contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()));

        // tuning ran after us in the container, firewall and portmap in
        // the host.
        let somaxconn = sh::in_ns(&ctr, "cat", &["/proc/sys/net/core/somaxconn"]).unwrap();
        assert_eq!(somaxconn.trim(), "500", "{version}: tuning's sysctl");
        assert!(
            host_iptables(t, "filter").contains(&format!("{ip}/32")),
            "{version}: firewall admitted the pod"
        );
        assert!(
            host_iptables(t, "nat").contains(&format!("--dport {host_port}")),
            "{version}: portmap's DNAT"
        );

        // portmap forwards: from another host, and from the pod itself
        // through its own host port (hairpin).
        let _srv = IperfServer::start(&ctr, 5201).unwrap();
        let host1 = t.host_ip(1).to_string();
        let gbps = iperf3(&t.host_ns(2), &host1, host_port, 1, 1)
            .unwrap_or_else(|e| panic!("{version}: host 2 -> host port: {e:#}"));
        assert!(gbps > 0.0);
        let gbps = iperf3(&ctr, &host1, host_port, 1, 1)
            .unwrap_or_else(|e| panic!("{version}: hairpin: {e:#}"));
        assert!(gbps > 0.0);
        drop(_srv);

        for round in 1..=2 {
            list.run(t, 1, "DEL", &ctr, "eth0", Some(&caps))
                .unwrap_or_else(|e| panic!("{version} DEL #{round}: {e}"));
        }
        let links = sh::ip_in(&t.host_ns(1), &["-o", "link"]).unwrap();
        assert!(!links.contains(&host_ifname(&ctr, "eth0")), "veth removed");
        assert!(
            !host_iptables(t, "filter").contains(&format!("{ip}/32")),
            "{version}: firewall rule removed"
        );
        assert!(
            !host_iptables(t, "nat").contains(&format!("--dport {host_port}")),
            "{version}: DNAT removed"
        );
        let held =
            netfab::ipam::Ipam::open(&netfab_lab::host_dir(&t.name, 1).join("ipam"), "default")
                .unwrap()
                .list()
                .unwrap();
        assert!(
            held.iter().all(|(a, _)| a.to_string() != ip),
            "{version}: address released"
        );
        sh::ip(&["netns", "del", &ctr]).unwrap();

        // CHECK through libcni: libcni hands each plugin its cached result.
        let list = ConfList::write(t, &format!("check{i}"), &chain(t, version, false));
        let ctr = format!("{}-lk{i}", t.name);
        sh::ip(&["netns", "add", &ctr]).unwrap();
        list.run(t, 1, "ADD", &ctr, "eth0", None)
            .unwrap_or_else(|e| panic!("{version} ADD: {e}"));
        list.run(t, 1, "CHECK", &ctr, "eth0", None)
            .unwrap_or_else(|e| panic!("{version} CHECK: {e}"));
        sh::ip_in(&ctr, &["addr", "flush", "dev", "eth0"]).unwrap();
        let e = list.run(t, 1, "CHECK", &ctr, "eth0", None).unwrap_err();
        assert_eq!(
            e["code"], 100,
            "{version}: netfab's CHECK reports the lost address: {e}"
        );
        for round in 1..=2 {
            list.run(t, 1, "DEL", &ctr, "eth0", None)
                .unwrap_or_else(|e| panic!("{version} DEL #{round}: {e}"));
        }
        sh::ip(&["netns", "del", &ctr]).unwrap();
    }
}

fn link_mac(ns: &str, ifname: &str) -> String {
    let out = sh::ip_in(ns, &["-o", "link", "show", ifname]).unwrap();
    out.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// The runtime sets the pod's MAC (the `mac` capability, as kubevirt and
/// multus do); netfab declares the capability too, so its datapath delivers
/// to that MAC: the pod is reachable. A MAC changed behind netfab's back
/// (only tuning told) is caught by CHECK.
#[test]
fn runtime_set_mac_keeps_the_pod_reachable_and_a_hidden_change_fails_check() {
    require_privileges!();
    let lab = LabGuard::up("lmac", 2, 1);
    let t = &lab.topo;
    let mac = "02:42:ac:11:00:99";
    let caps = json!({"mac": mac});
    let tuning = json!({"type": "tuning", "capabilities": {"mac": true}});
    for (i, netfab_told) in [true, false].into_iter().enumerate() {
        let mut nf = netfab_entry(t, 1, "default");
        if netfab_told {
            nf["capabilities"] = json!({"mac": true});
        }
        let list = ConfList::write(
            t,
            &format!("mac{i}"),
            &json!({"cniVersion": "1.0.0", "name": format!("nfmac{i}"), "plugins": [nf, tuning]}),
        );
        let ctr = format!("{}-m{i}", t.name);
        sh::ip(&["netns", "add", &ctr]).unwrap();
        let r = list
            .run(t, 1, "ADD", &ctr, "eth0", Some(&caps))
            .unwrap_or_else(|e| panic!("ADD: {e}"));
        assert_eq!(link_mac(&ctr, "eth0"), mac, "tuning set the MAC");
        let ip = result_ip(&r);
        let check = list.run(t, 1, "CHECK", &ctr, "eth0", Some(&caps));
        if netfab_told {
            let ours = r["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["name"] == "eth0")
                .unwrap();
            assert_eq!(
                ours["mac"], mac,
                "netfab's result reports the runtime's MAC"
            );
            let st = ping(&t.container_ns(2, 1), &ip, 3, "0.05").unwrap();
            assert_eq!(
                st.received, 3,
                "the pod with a runtime-set MAC is reachable"
            );
            check.unwrap_or_else(|e| panic!("CHECK: {e}"));
        } else {
            let e = check.unwrap_err();
            assert_eq!(e["code"], 100, "{e}");
            assert!(e["details"].as_str().unwrap().contains("MAC"), "{e}");
        }
        list.run(t, 1, "DEL", &ctr, "eth0", Some(&caps)).unwrap();
        sh::ip(&["netns", "del", &ctr]).unwrap();
    }
}

/// One pod, two netfab interfaces in two networks: eth0 owns the default
/// route, eth1 (`defaultRoute: false`) routes its network's CIDR. Both
/// networks are reached, and a third attachment that also wants the
/// default route is refused with code 7, leaving nothing.
#[test]
fn a_pod_with_two_netfab_interfaces_reaches_both_networks() {
    require_privileges!();
    let topo = Topology::with("ltwo", 2, 2, 2, netfab_lab::topology::Control::Etcd).unwrap();
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    let one = ConfList::write(
        t,
        "net1",
        &json!({"cniVersion": "1.0.0", "name": "nf-one", "plugins": [netfab_entry(t, 1, "default")]}),
    );
    let mut second = netfab_entry(t, 1, &t.network_name(2));
    second["defaultRoute"] = false.into();
    let two = ConfList::write(
        t,
        "net2",
        &json!({"cniVersion": "1.0.0", "name": "nf-two", "plugins": [second]}),
    );
    let ctr = format!("{}-two", t.name);
    sh::ip(&["netns", "add", &ctr]).unwrap();
    one.run(t, 1, "ADD", &ctr, "eth0", None)
        .unwrap_or_else(|e| panic!("eth0: {e}"));
    let r2 = two
        .run(t, 1, "ADD", &ctr, "eth1", None)
        .unwrap_or_else(|e| panic!("eth1: {e}"));
    assert_eq!(
        r2["routes"][0]["dst"],
        t.network_cidr(2).to_string(),
        "{r2}"
    );
    let eth1 = result_ip(&r2);
    for c in [1, 2] {
        let dst = t.container_ip(2, c).to_string();
        let st = ping(&ctr, &dst, 3, "0.05").unwrap();
        assert_eq!(st.received, 3, "pod reaches network {c}'s container {dst}");
    }
    let st = ping(&t.container_ns(2, 2), &eth1, 3, "0.05").unwrap();
    assert_eq!(st.received, 3, "network 2 reaches the pod's eth1");
    one.run(t, 1, "CHECK", &ctr, "eth0", None).unwrap();
    two.run(t, 1, "CHECK", &ctr, "eth1", None).unwrap();

    let mut third = netfab_entry(t, 1, &t.network_name(2));
    third["defaultRoute"] = true.into();
    let three = ConfList::write(
        t,
        "net2d",
        &json!({"cniVersion": "1.0.0", "name": "nf-three", "plugins": [third]}),
    );
    let links = sh::ip_in(&t.host_ns(1), &["-o", "link"])
        .unwrap()
        .lines()
        .count();
    let e = three.run(t, 1, "ADD", &ctr, "eth2", None).unwrap_err();
    assert_eq!(e["code"], 7, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("default route"), "{e}");
    assert_eq!(
        sh::ip_in(&t.host_ns(1), &["-o", "link"])
            .unwrap()
            .lines()
            .count(),
        links,
        "no veth left"
    );
    assert!(
        sh::ip_in(&ctr, &["link", "show", "eth2"]).is_err(),
        "no eth2"
    );

    two.run(t, 1, "DEL", &ctr, "eth1", None).unwrap();
    one.run(t, 1, "DEL", &ctr, "eth0", None).unwrap();
    sh::ip(&["netns", "del", &ctr]).unwrap();
}

/// Rate in bit/s the iperf3 receiver saw, the first second (the burst
/// allowance and the pacing horizon filling) left out. `udp`: send UDP at
/// that rate instead of TCP.
fn iperf_rate(client: &str, server: &str, port: u16, udp: Option<&str>) -> f64 {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", client, "iperf3", "-c", server, "-p"])
        .arg(port.to_string())
        .args(["-t", "4", "-O", "1", "-J"]);
    if let Some(rate) = udp {
        cmd.args(["-u", "-b", rate, "-l", "1200"]);
    }
    // The server takes one test at a time and needs a moment between
    // tests (and at start): its refusals are retried, a wrong rate is not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = cmd.output().expect("running iperf3");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps;
        }
        let err = v["error"].as_str().unwrap_or("no JSON").to_string();
        assert!(
            std::time::Instant::now() < deadline,
            "iperf3 {client} -> {server}:{port}: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// The `bandwidth` capability in netfab's own datapath: a 10 Mbit/s egress
/// limit holds, over TCP and UDP, towards every kind of destination (the
/// pod's gateway, the host's underlay address, a pod on the same host, a
/// pod and a host elsewhere, the outside world), on the direct and the
/// VXLAN path; the ingress limit (1 Mbit burst) polices what arrives;
/// `netfab status` says how each is enforced; an unlimited pod is not
/// slowed.
#[test]
fn bandwidth_capability_limits_a_pod_and_leaves_others_alone() {
    require_privileges!();
    const LIMIT: f64 = 10e6;
    for direct in [true, false] {
        let mut topo = Topology::new(&format!("lbw{}", direct as u8), 2, 1).unwrap();
        topo.direct_routing = direct;
        let lab = LabGuard::up_with(topo);
        let t = &lab.topo;
        let mut nf = netfab_entry(t, 1, "default");
        nf["capabilities"] = json!({"bandwidth": true});
        let list = ConfList::write(
            t,
            "bw",
            &json!({"cniVersion": "1.0.0", "name": "nfbw", "plugins": [nf]}),
        );
        let remote_pod = t.container_ip(2, 1).to_string();
        let _pod_srv = IperfServer::start(&t.container_ns(2, 1), 5201).unwrap();
        let _host_srv = IperfServer::start(&t.host_ns(2), 5202).unwrap();
        let _local_pod_srv = IperfServer::start(&t.container_ns(1, 1), 5204).unwrap();
        let gateway = t.gateway(1, 1).to_string();
        let underlay = t.host_ip(1).to_string();
        let _gw_srv = IperfServer::start_on(&t.host_ns(1), 5205, Some(&gateway)).unwrap();
        let _own_host_srv = IperfServer::start_on(&t.host_ns(1), 5207, Some(&underlay)).unwrap();
        let wan = netfab_lab::topology::WAN_IP.to_string();
        let _wan_srv = IperfServer::start_on(&t.underlay_ns(), 5206, Some(&wan)).unwrap();

        let free = format!("{}-bwf", t.name);
        sh::ip(&["netns", "add", &free]).unwrap();
        list.run(t, 1, "ADD", &free, "eth0", None).unwrap();
        let before = iperf3(&free, &remote_pod, 5201, 2, 1).unwrap() * 1e9;

        let capped = format!("{}-bwc", t.name);
        sh::ip(&["netns", "add", &capped]).unwrap();
        let caps = json!({"bandwidth": {
            "egressRate": LIMIT as u64, "egressBurst": 100_000,
            "ingressRate": LIMIT as u64, "ingressBurst": 1_000_000
        }});
        let r = list
            .run(t, 1, "ADD", &capped, "eth0", Some(&caps))
            .unwrap_or_else(|e| panic!("ADD with a limit: {e}"));
        let ip = result_ip(&r);
        let st = lab::read_status(t, 1).unwrap();
        let how = st
            .bandwidth
            .iter()
            .find(|b| b.ip.to_string() == ip)
            .unwrap_or_else(|| panic!("no bandwidth report for {ip}: {:?}", st.bandwidth));
        assert!(
            how.enforced && how.how.contains("egress") && how.how.contains("ingress policed"),
            "{how:?}"
        );
        eprintln!(
            "bandwidth (direct={direct}): netfab status says: {}",
            how.how
        );

        let mut targets = vec![(remote_pod.clone(), 5201, "a remote pod")];
        if direct {
            targets.extend([
                (t.host_ip(2).to_string(), 5202, "a remote host"),
                (t.container_ip(1, 1).to_string(), 5204, "a pod on its host"),
                (gateway.clone(), 5205, "its gateway"),
                (underlay, 5207, "its host's underlay address"),
                (wan.clone(), 5206, "the outside"),
            ]);
        }
        for (dst, port, what) in targets {
            for udp in [None, Some("50M")] {
                let proto = if udp.is_some() { "UDP" } else { "TCP" };
                let bps = iperf_rate(&capped, &dst, port, udp);
                eprintln!(
                    "bandwidth (direct={direct}): limited pod -> {what} over {proto}: {:.2} Mbit/s (limit 10)",
                    bps / 1e6
                );
                assert!(
                    (bps - LIMIT).abs() <= 0.10 * LIMIT,
                    "direct={direct}: limited pod -> {what} over {proto}: {:.2} Mbit/s, not within 10 % of 10",
                    bps / 1e6
                );
            }
        }
        let after = iperf3(&free, &remote_pod, 5201, 2, 1).unwrap() * 1e9;
        eprintln!(
            "bandwidth (direct={direct}): unlimited pod {:.0} Mbit/s before, {:.0} after",
            before / 1e6,
            after / 1e6
        );
        assert!(
            after > 0.7 * before && after > 20.0 * LIMIT,
            "direct={direct}: the unlimited pod was slowed: {before} -> {after}"
        );
        if direct {
            // Ingress: a remote pod sends to the limited one (iperf3 -R
            // would reverse the roles; a server in the pod is simpler).
            let _srv = IperfServer::start(&capped, 5203).unwrap();
            let drops = lab.counters(1).drops["rate_limited"];
            let bps = iperf_rate(&t.container_ns(2, 1), &ip, 5203, None);
            eprintln!(
                "bandwidth: into the limited pod over TCP {:.2} Mbit/s (policed at 10, 1 Mbit burst)",
                bps / 1e6
            );
            assert!(
                (bps - LIMIT).abs() <= 0.10 * LIMIT,
                "ingress over TCP: {:.2} Mbit/s, not within 10 % of 10",
                bps / 1e6
            );
            assert!(
                lab.counters(1).drops["rate_limited"] > drops,
                "policer drops counted"
            );
        }
        for c in [&free, &capped] {
            list.run(t, 1, "DEL", c, "eth0", None).unwrap();
            sh::ip(&["netns", "del", c]).unwrap();
        }
    }
}

/// On the fallbacks limits are not enforced: `netfab status` and the
/// metrics say so, and a network that sets `requireBandwidthEnforcement`
/// refuses such a pod at ADD with a clear error, leaving nothing behind.
#[test]
fn bandwidth_on_a_fallback_is_reported_unenforced_and_refused_where_required() {
    require_privileges!();
    let mut topo = Topology::new("lbwv", 2, 1).unwrap();
    topo.dataplane = Choice::Vxlan;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    let caps = json!({"bandwidth": {
        "egressRate": 10_000_000, "egressBurst": 100_000,
        "ingressRate": 0, "ingressBurst": 0
    }});
    for require in [false, true] {
        let mut nf = netfab_entry(t, 1, "default");
        nf["capabilities"] = json!({"bandwidth": true});
        nf["requireBandwidthEnforcement"] = json!(require);
        let list = ConfList::write(
            t,
            &format!("bwv{require}"),
            &json!({"cniVersion": "1.0.0", "name": format!("nfbwv{require}"), "plugins": [nf]}),
        );
        let ns = format!("{}-bw{require}", t.name);
        sh::ip(&["netns", "add", &ns]).unwrap();
        let veths = sh::ip_in(&t.host_ns(1), &["-o", "link"])
            .unwrap()
            .lines()
            .count();
        let r = list.run(t, 1, "ADD", &ns, "eth0", Some(&caps));
        if require {
            let e = r.expect_err("ADD must refuse an unenforceable limit");
            assert_eq!(e["code"], 7, "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains("cannot be enforced") && msg.contains("vxlan"),
                "{e}"
            );
            assert_eq!(
                sh::ip_in(&t.host_ns(1), &["-o", "link"])
                    .unwrap()
                    .lines()
                    .count(),
                veths,
                "no veth left behind"
            );
            let eps =
                netfab::rundir::endpoints::load(&lab::host_dir(&t.name, 1).join("endpoints.json"))
                    .unwrap();
            assert_eq!(eps.len(), 1, "the refused pod is not registered: {eps:?}");
        } else {
            let r = r.unwrap_or_else(|e| panic!("ADD without requireBandwidthEnforcement: {e}"));
            let ip = result_ip(&r);
            let st = lab::read_status(t, 1).unwrap();
            let b = st
                .bandwidth
                .iter()
                .find(|b| b.ip.to_string() == ip)
                .expect("reported");
            assert!(!b.enforced && b.how.contains("not enforced"), "{b:?}");
            let text = netfab_tests::netfab_ok([
                "status",
                "--status-file",
                lab::host_dir(&t.name, 1)
                    .join("status.json")
                    .to_str()
                    .unwrap(),
            ]);
            assert!(
                text.contains(&format!("bandwidth {ip}: not enforced")),
                "{text}"
            );
            list.run(t, 1, "DEL", &ns, "eth0", None).unwrap();
        }
        sh::ip(&["netns", "del", &ns]).unwrap();
    }
}
