//! The agent's promises: bad input loses nothing, drift is repaired by the
//! periodic resync, and `netfab cleanup` removes what the dataplane made.
use std::{net::Ipv4Addr, process::Command, time::Duration};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use netfab_common::{maps::ENDPOINTS, Endpoint};
use netfab_lab::{
    self as lab,
    demo::ping,
    topology::{Control, Topology},
};
use netfab_tests::{
    guards::{in_netns, LabGuard},
    netfab_ok, require_privileges, wait_for,
};

/// Container entries in host `h`'s endpoint map (not the host's own
/// gateway entries).
fn endpoint_count(lab: &LabGuard, h: u32) -> usize {
    netfab::dataplane::ebpf::maps::BpfMaps::open(&lab.topo.pin_dir(h))
        .and_then(|m| m.read())
        .map(|t| {
            t.endpoints
                .values()
                .filter(|e| e.ifindex != netfab_common::HOST_ENDPOINT)
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn malformed_state_file_is_reported_and_the_last_good_state_kept() {
    require_privileges!();
    // The etcd-less mode: each agent reads a whole state file.
    let lab = LabGuard::up_with(Topology::with("badstate", 2, 1, 1, Control::Static).unwrap());
    let t = &lab.topo;
    let dir = lab::state_dir(&t.name);
    std::fs::write(dir.join("h1.json"), "{ this is not json").unwrap();
    let log = wait_for(
        "the agent to report the bad file",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(dir.join("h1.log")).unwrap();
            log.contains("is not valid").then_some(log)
        },
    );
    assert!(log.contains("h1.json"), "the error names the file:\n{log}");
    assert!(log.contains("keeping the previous state"), "{log}");
    let st = lab.ping((2, 1), (1, 1), 3);
    assert_eq!(st.received, 3, "traffic still flows");
    assert_eq!(endpoint_count(&lab, 1), 1, "nothing was removed");
}

#[test]
fn an_endpoint_deleted_by_hand_is_restored_by_resync() {
    require_privileges!();
    let lab = LabGuard::up("drift", 1, 2);
    let t = &lab.topo;
    let map = MapData::from_pin(t.pin_dir(1).join(ENDPOINTS)).unwrap();
    let mut eps: HashMap<MapData, u32, Endpoint> = Map::HashMap(map).try_into().unwrap();
    let victim: Ipv4Addr = t.container_ip(1, 2);
    eps.remove(&u32::from_ne_bytes(victim.octets())).unwrap();
    assert_eq!(endpoint_count(&lab, 1), 1);
    // The agent resyncs every 10 s by default.
    wait_for(
        "the resync to restore the entry",
        Duration::from_secs(15),
        || (endpoint_count(&lab, 1) == 2).then_some(()),
    );
    let st = ping(&t.container_ns(1, 1), &victim.to_string(), 3, "0.05").unwrap();
    assert_eq!(st.received, 3);
}

#[test]
fn cleanup_removes_links_pins_and_the_vxlan_device() {
    require_privileges!();
    let lab = LabGuard::up("clean", 1, 1);
    let t = lab.topo.clone();
    lab::stop_agent(&t.name, 1, false).unwrap();
    let pin = t.pin_dir(1);
    netfab_ok([
        "cleanup".as_ref(),
        "--netns".as_ref(),
        t.host_ns(1).as_ref(),
        "--pin-dir".as_ref(),
        pin.as_os_str(),
    ]);
    assert!(!pin.exists(), "pins removed");
    let host = t.host_ns(1);
    let veth = netfab::cni::attach::host_ifname(&t.container_ns(1, 1), "eth0");
    let (vxlan_gone, progs) = in_netns(&host, move || {
        let vxlan_gone = Command::new("ip")
            .args(["link", "show", "nf-vxlan"])
            .output()
            .unwrap();
        let (_, progs) = SchedClassifier::query_tcx(&veth, TcAttachType::Ingress).unwrap();
        (!vxlan_gone.status.success(), progs.len())
    });
    assert!(vxlan_gone, "VXLAN device deleted");
    let routes = netfab_lab::sh::ip_in(&host, &["route", "show", "proto", "212"]).unwrap();
    assert!(
        routes.trim().is_empty(),
        "netfab's routes removed: {routes}"
    );
    let masq = netfab_lab::sh::in_ns(&host, "iptables", &["-t", "nat", "-S", "NETFAB-MASQ"]);
    assert!(masq.is_err(), "iptables chain removed");
    for (table, chain) in [
        ("filter", "NETFAB-ISOLATE"),
        ("filter", "NETFAB-GUARD"),
        ("raw", "NETFAB-SOURCE"),
    ] {
        let r = netfab_lab::sh::in_ns(&host, "iptables", &["-t", table, "-S", chain]);
        assert!(r.is_err(), "{table} {chain} removed");
    }
    let save = netfab_lab::sh::in_ns(&host, "iptables-save", &[]).unwrap();
    assert!(!save.contains("NETFAB-"), "no jump left: {save}");
    assert_eq!(progs, 0, "no program left on the container veth");
}

/// The etcd-less mode honours `--dataplane` and reports like the etcd mode.
fn state_file_agent(b: netfab::dataplane::kind::Choice, name: &str) -> (LabGuard, String) {
    let mut topo = Topology::with(name, 2, 1, 1, Control::Static).unwrap();
    topo.dataplane = b;
    let lab = LabGuard::up_with(topo);
    let st = lab.ping((1, 1), (2, 1), 3);
    assert_eq!(st.received, 3, "{b}: traffic across hosts");
    // No TC program anywhere: no pinned links, no maps.
    assert!(
        !lab.topo.pin_dir(1).exists(),
        "{b}: the state-file agent loaded eBPF"
    );
    let status = netfab_ok([
        "status",
        "--status-file",
        lab::host_dir(&lab.topo.name, 1)
            .join("status.json")
            .to_str()
            .unwrap(),
    ]);
    assert!(status.contains(&format!("dataplane {b}")), "{status}");
    assert!(
        status.contains(&lab.topo.subnet(2, 1).unwrap().to_string()),
        "{status}"
    );
    (lab, status)
}

#[test]
fn a_state_file_agent_runs_kernel_vxlan_and_reports_its_peers() {
    require_privileges!();
    let (lab, status) = state_file_agent(netfab::dataplane::kind::Choice::Vxlan, "sfvx");
    let links = netfab_lab::sh::in_ns(&lab.topo.host_ns(1), "ip", &["-d", "link", "show", "nfvx1"])
        .unwrap();
    assert!(links.contains("vxlan id 1"), "{links}");
    // The lab's state files turn direct routing off: the peer's line says
    // VXLAN and why.
    let peer = status
        .lines()
        .find(|l| l.contains(&lab.topo.subnet(2, 1).unwrap().to_string()))
        .unwrap();
    assert!(
        peer.contains(" vxlan ") && peer.contains("direct routing is off"),
        "{peer}"
    );
}

#[test]
fn a_state_file_agent_runs_host_gw_and_reports_its_peers() {
    require_privileges!();
    let (lab, status) = state_file_agent(netfab::dataplane::kind::Choice::HostGw, "sfhg");
    let t = &lab.topo;
    let routes =
        netfab_lab::sh::in_ns(&t.host_ns(1), "ip", &["route", "show", "proto", "212"]).unwrap();
    let want = format!("{} via {}", t.subnet(2, 1).unwrap(), t.host_ip(2));
    assert!(routes.contains(&want), "{want} not in {routes}");
    let peer = status
        .lines()
        .find(|l| l.contains(&t.subnet(2, 1).unwrap().to_string()))
        .unwrap();
    assert!(peer.contains(" host-gw "), "{peer}");
}

/// Without --underlay-interface the agent finds the underlay as a
/// DaemonSet needs it: the interface holding NODE_IP, else the one the
/// default route leaves by; a NODE_IP no interface holds is an error.
#[test]
fn the_underlay_is_found_by_node_ip_or_default_route() {
    require_privileges!();
    let ns = netfab_tests::guards::NetNs::new("nf-udetect");
    for cmd in [
        "link add ua type veth peer name ub",
        "link add uc type veth peer name ud",
        "addr add 10.99.0.1/24 dev ua",
        "addr add 10.98.0.1/24 dev uc",
        "link set ua up",
        "link set ub up",
        "link set uc up",
        "link set ud up",
        "route add default via 10.99.0.2 dev ua",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        lab::sh::ip_in(&ns.name, &args).unwrap();
    }
    let detect = |ip: Option<&str>| {
        let ip = ip.map(|i| i.parse().unwrap());
        in_netns(&ns.name, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    netfab::netlink::Netlink::connect()?
                        .detect_underlay(ip)
                        .await
                })
                .map_err(|e| format!("{e:#}"))
        })
    };
    assert_eq!(detect(None).unwrap(), "ua", "the default route's interface");
    assert_eq!(detect(Some("10.98.0.1")).unwrap(), "uc", "the node IP's");
    let e = detect(Some("10.1.1.1")).unwrap_err();
    assert!(
        e.contains("10.1.1.1") && e.contains("--underlay-interface"),
        "{e}"
    );
}

/// A state-file agent takes its underlay interface from the file: a host
/// without a default route (nothing to detect the underlay by) still runs.
#[test]
fn a_state_file_agent_without_a_default_route_uses_the_files_underlay() {
    require_privileges!();
    let lab = LabGuard::up_with(Topology::with("sfnodef", 2, 1, 1, Control::Static).unwrap());
    let t = &lab.topo;
    lab::stop_agent(&t.name, 1, false).unwrap();
    netfab_lab::sh::ip_in(&t.host_ns(1), &["route", "del", "default"]).unwrap();
    let routes = netfab_lab::sh::ip_in(&t.host_ns(1), &["route", "show", "default"]).unwrap();
    assert!(routes.trim().is_empty(), "no default route left: {routes}");
    lab::start_agent(t, 1, None).unwrap();
    let st = wait_for("the agent's first report", Duration::from_secs(15), || {
        lab::read_status(t, 1).filter(|s| s.applies > 0)
    });
    assert_eq!(st.endpoints, 1, "{st:?}");
    let log = lab::agent_log(t, 1);
    assert!(!log.contains("no default route"), "{log}");
    assert_eq!(
        lab.ping((1, 1), (2, 1), 3).received,
        3,
        "traffic across hosts"
    );
}
