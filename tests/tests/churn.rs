//! Pod churn through the upstream libcni, on every backend: each round DELs
//! the previous round's pods while as many ADDs run at the same time and
//! take the addresses they free. Every ADD must succeed and leave a pod
//! that answers its first ping and is registered under its own veth; a DEL
//! must never touch another pod (a bystander's link, routes, neighbour and
//! map entry are compared before and after).
use netfab::{cni::attach::host_ifname, dataplane::select::Choice, rundir::endpoints};
use netfab_lab::{self as lab, cni, demo::ping, sh, topology::Topology};
use netfab_tests::{guards::LabGuard, libcni::ConfList, require_privileges, result_ip};
use serde_json::{json, Value};

/// Pods per round (and DELs run against them in the next).
const PODS: usize = 20;
/// 13 rounds: 260 ADDs and 260 DELs per backend.
const ROUNDS: usize = 13;

fn conflist(t: &Topology) -> ConfList {
    let mut nf = cni::conf(t, 1, "default");
    let o = nf.as_object_mut().expect("an object");
    for k in ["cniVersion", "cniVersions", "name"] {
        o.remove(k);
    }
    ConfList::write(
        t,
        "churn",
        &json!({"cniVersion": "1.0.0", "name": "churn", "plugins": [nf]}),
    )
}

/// What host 1 holds for its lab container (1, 1), which no round touches.
fn bystander(t: &Topology, b: Choice) -> Vec<String> {
    let ns = t.host_ns(1);
    let ip = t.container_ip(1, 1);
    let veth = host_ifname(&t.container_ns(1, 1), "eth0");
    let link = sh::ip_in(&ns, &["-o", "link", "show", "dev", &veth]).unwrap();
    let ifindex = link.split(':').next().unwrap_or_default().to_string();
    let routes: Vec<String> = sh::ip_in(&ns, &["route", "show", "proto", "212"])
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&format!("{ip} ")))
        .map(str::to_string)
        .collect();
    let neigh = sh::ip_in(&ns, &["neigh", "show", "dev", &veth]).unwrap();
    let mut out = vec![format!("ifindex {ifindex}"), format!("neigh {neigh}")];
    out.extend(routes.into_iter().map(|r| format!("route {r}")));
    if b == Choice::Ebpf {
        let maps = netfab::dataplane::ebpf::maps::BpfMaps::open(&t.pin_dir(1)).unwrap();
        let entry = maps.read().unwrap().endpoints.get(&ip).copied();
        out.push(format!("map {entry:?}"));
    }
    out
}

fn registered(t: &Topology) -> Vec<endpoints::LocalEndpoint> {
    endpoints::load(&lab::host_dir(&t.name, 1).join("endpoints.json")).unwrap()
}

fn churn(b: Choice, name: &str) {
    require_privileges!();
    let mut topo = Topology::new(name, 2, 1).unwrap();
    topo.dataplane = b;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    let list = std::sync::Arc::new(conflist(t));
    let before = bystander(t, b);
    assert!(before.iter().any(|l| l.starts_with("route ")), "{before:?}");
    let prober = t.container_ns(2, 1);
    let mut alive: Vec<(String, String)> = Vec::new();
    let (mut adds, mut dels, mut reused) = (0, 0, 0);
    let mut seen_ips = std::collections::BTreeSet::new();
    for round in 0..=ROUNDS {
        let fresh: Vec<String> = if round < ROUNDS {
            (0..PODS)
                .map(|i| format!("{}-r{round}p{i}", t.name))
                .collect()
        } else {
            Vec::new()
        };
        for ns in &fresh {
            sh::ip(&["netns", "add", ns]).unwrap();
        }
        let mut handles = Vec::new();
        for (ns, _) in &alive {
            let (t, list, ns) = (t.clone(), list.clone(), ns.clone());
            handles.push(std::thread::spawn(move || {
                let r = list.run(&t, 1, "DEL", &ns, "eth0", None);
                (ns, "DEL", r)
            }));
        }
        for ns in &fresh {
            let (t, list, ns) = (t.clone(), list.clone(), ns.clone());
            handles.push(std::thread::spawn(move || {
                let r = list.run(&t, 1, "ADD", &ns, "eth0", None);
                (ns, "ADD", r)
            }));
        }
        let mut added = Vec::new();
        for h in handles {
            let (ns, verb, r) = h.join().unwrap();
            let r: Value = r.unwrap_or_else(|e| panic!("{b:?} round {round}: {verb} {ns}: {e}"));
            if verb == "ADD" {
                let ip = result_ip(&r);
                if !seen_ips.insert(ip.clone()) {
                    reused += 1;
                }
                added.push((ns, ip));
                adds += 1;
            } else {
                dels += 1;
            }
        }
        for (ns, _) in &alive {
            sh::ip(&["netns", "del", ns]).unwrap();
        }
        // Every ADD that returned 0: its first ping answered, and it is
        // registered under its own veth (a DEL of another pod removed nothing).
        let eps = registered(t);
        for (ns, ip) in &added {
            let veth = host_ifname(ns, "eth0");
            assert!(
                eps.iter()
                    .any(|e| e.host_ifname == veth && e.ip.to_string() == *ip),
                "{b:?} round {round}: {ns} ({ip}) lost its endpoint entry"
            );
            let st = ping(&prober, ip, 1, "0.05").unwrap();
            assert_eq!(
                st.received, 1,
                "{b:?} round {round}: first ping to {ns} ({ip}) unanswered"
            );
        }
        alive = added;
    }
    assert_eq!(registered(t).len(), 1, "only the bystander is left");
    assert_eq!(
        bystander(t, b),
        before,
        "{b:?}: the bystander's link, routes, neighbour or map entry changed"
    );
    assert_eq!(
        lab.ping((2, 1), (1, 1), 3).received,
        3,
        "bystander reachable"
    );
    assert!(reused > 0, "{b:?}: no address was reused");
    eprintln!("{b:?}: {adds} ADDs, {dels} DELs, {reused} reused addresses, none lost");
    assert!(adds + dels >= 500);
}

#[test]
fn churn_with_concurrent_dels_and_address_reuse_on_ebpf() {
    churn(Choice::Ebpf, "chre");
}

#[test]
fn churn_with_concurrent_dels_and_address_reuse_on_kernel_vxlan() {
    churn(Choice::Vxlan, "chrv");
}

#[test]
fn churn_with_concurrent_dels_and_address_reuse_on_host_gw() {
    churn(Choice::HostGw, "chrg");
}
