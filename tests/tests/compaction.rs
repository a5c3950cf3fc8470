//! etcd compacted past an agent's watch: the agent's watch is cancelled
//! (the events it missed are gone from etcd's history), so it lists again
//! and converges: a host that joined meanwhile is programmed, one that left
//! is removed. The prefix then holds about 20 MB, more than one gRPC
//! message may carry: the listing must come in pages.
use std::time::Duration;

use netfab_lab as lab;
use netfab_tests::{guards::LabGuard, require_privileges, wait_for};

const JOINED: &str = "/netfab/networks/default/leases/10.244.201.0-24";
const LEFT: &str = "/netfab/networks/default/leases/10.244.202.0-24";

fn lease(node: &str, ip: &str) -> String {
    format!(
        r#"{{"node":"{node}","underlay_ip":"{ip}","vtep_mac":"0e:6e:64:40:00:63","dataplane":"ebpf","agent_version":"test"}}"#
    )
}

fn revision(t: &netfab_lab::topology::Topology) -> i64 {
    let out = lab::etcdctl(t, &["endpoint", "status", "-w", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Status"]["header"]["revision"].as_i64().unwrap()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling the lab's agent, which this test's lab started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn agents_list_again_when_etcd_compacts_past_their_watch() {
    require_privileges!();
    let mut t = netfab_lab::topology::Topology::new("compact", 2, 1).unwrap();
    // The frozen agent's lease must outlive the freeze; a peer whose lease
    // is gone is dropped at once (not kept for the grace period).
    t.lease_ttl = 60;
    t.lease_grace = 0;
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    lab::etcdctl(t, &["put", LEFT, &lease("leaver", "100.64.0.98")]).unwrap();
    let remote = |sn: &str| {
        lab::read_status(t, 1).is_some_and(|s| {
            s.networks
                .iter()
                .flat_map(|n| &n.peers)
                .any(|p| p.subnet.to_string() == sn)
        })
    };
    wait_for("the leaver programmed", Duration::from_secs(10), || {
        remote("10.244.202.0/24").then_some(())
    });

    // Host 1's agent stops reading its watch; meanwhile 300 changes
    // (20 MB) fill the stream and etcd's buffer for it, so etcd sets the
    // watch aside; a host joins, one leaves, and etcd compacts its history
    // past everything the agent has seen.
    let pid = lab::agent_pid(&t.name, 1).unwrap();
    signal(pid, libc::SIGSTOP);
    let filler = vec![b'x'; 64 * 1024];
    for i in 0..300 {
        let key = format!("/netfab/networks/default/filler-{i}");
        lab::etcdctl_with_input(t, &["put", &key], Some(&filler)).unwrap();
    }
    lab::etcdctl(t, &["put", JOINED, &lease("joiner", "100.64.0.97")]).unwrap();
    lab::etcdctl(t, &["del", LEFT]).unwrap();
    let rev = revision(t);
    lab::etcdctl(t, &["compact", &rev.to_string(), "--physical"]).unwrap();
    signal(pid, libc::SIGCONT);

    wait_for("host 1 to converge", Duration::from_secs(30), || {
        (remote("10.244.201.0/24") && !remote("10.244.202.0/24")).then_some(())
    });
    let log = lab::agent_log(t, 1);
    assert!(
        log.contains("etcd compacted its history"),
        "the watch was not cut by the compaction (nothing was tested):\n{log}"
    );
    assert_eq!(lab.ping((1, 1), (2, 1), 3).received, 3);
}
