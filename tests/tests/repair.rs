//! Kernel drift is repaired from the agent's own view of the cluster: a
//! remote subnet's map entry and the route that carries the host's own
//! packets into the fabric (its network's CIDR: an eBPF host has no route
//! per peer), deleted by hand, come back within the repair interval, and
//! etcd is not asked (its own counters show no range request meanwhile).
use std::{
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};
use netfab_common::{maps as names, RemoteSubnet};
use netfab_lab::{self as lab, sh};
use netfab_tests::{guards::LabGuard, require_privileges, wait_for};

fn route_present(ns: &str, dst: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "route", "show", dst])
        .output()
        .unwrap();
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

#[test]
fn drift_is_repaired_without_reading_etcd() {
    require_privileges!();
    let lab = LabGuard::up("drift", 2, 1);
    let t = &lab.topo;
    let remote = t.subnet(2, 1).unwrap();
    let cidr = t.network_cidr(1).to_string();
    let host = t.host_ns(1);
    let map = MapData::from_pin(t.pin_dir(1).join(names::REMOTE_SUBNETS)).unwrap();
    let mut trie: LpmTrie<MapData, u32, RemoteSubnet> = Map::LpmTrie(map).try_into().unwrap();
    let key = Key::new(
        u32::from(remote.prefix_len()),
        u32::from_ne_bytes(remote.network().octets()),
    );
    let entry = |trie: &LpmTrie<MapData, u32, RemoteSubnet>| {
        trie.get(&key, 0)
            .ok()
            .filter(|r| r.underlay_ip == u32::from(t.host_ip(2)))
    };
    assert!(entry(&trie).is_some() && route_present(&host, &cidr));
    assert_eq!(lab.ping((1, 1), (2, 1), 2).received, 2);

    let ranges = || {
        lab::etcd_requests(t)
            .unwrap()
            .get("Range")
            .copied()
            .unwrap_or(0.0)
    };
    let before = ranges();
    assert!(before > 0.0, "the agents' listings are counted");
    trie.remove(&key).unwrap();
    sh::ip_in(&host, &["route", "del", &cidr]).unwrap();
    assert!(entry(&trie).is_none() && !route_present(&host, &cidr));
    let cut = Instant::now();
    let interval = Duration::from_millis(u64::from(t.resync_ms));
    wait_for(
        "the map entry and the route to come back",
        interval + Duration::from_secs(3),
        || (entry(&trie).is_some() && route_present(&host, &cidr)).then_some(()),
    );
    eprintln!(
        "repaired {:?} after the cut (repair interval {interval:?})",
        cut.elapsed()
    );
    assert_eq!(lab.ping((1, 1), (2, 1), 2).received, 2);
    let st = netfab_lab::demo::ping(&host, &t.container_ip(2, 1).to_string(), 2, "0.05").unwrap();
    assert_eq!(st.received, 2, "the host's own packets into the fabric");
    assert_eq!(ranges(), before, "the repair read etcd");
}
