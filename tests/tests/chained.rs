//! netfab-cni driven through the upstream libcni (as containerd and CRI-O
//! drive plugins) and chained with the upstream plugins (tuning, portmap,
//! firewall) from Debian's containernetworking-plugins.
use netfab::cni::attach::host_ifname;
use netfab_lab::{
    cni,
    demo::{iperf3, IperfServer},
    sh,
    topology::Topology,
};
use netfab_tests::{guards::LabGuard, libcni::ConfList, require_privileges};
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
        let addr = r["ips"][0]["address"].as_str().expect("an address");
        let ip = addr.split('/').next().unwrap().to_string();
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
