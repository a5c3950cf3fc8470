//! A replicated etcd (3 members, one namespace each on the underlay) under
//! the fabric. The leader is killed while containers on different hosts
//! ping every 10 ms and a new host joins: no reply is lost, the new host is
//! programmed everywhere, no agent restarts. Then a second member goes
//! (no quorum): forwarding goes on, the agents say they are not connected,
//! and they reconnect once a member is back.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use netfab_lab::{self as lab, topology::Topology};
use netfab_tests::{guards::LabGuard, require_privileges, wait_for};

const JOINED: &str = "/netfab/networks/default/leases/10.244.201.0-24";
const LEASE: &str = r#"{"node":"joiner","underlay_ip":"100.64.0.97","vtep_mac":"0e:6e:64:40:00:61","dataplane":"ebpf","agent_version":"test"}"#;

fn programmed(t: &Topology, h: u32, sn: &str) -> bool {
    lab::read_status(t, h).is_some_and(|s| {
        s.networks
            .iter()
            .flat_map(|n| &n.peers)
            .any(|p| p.subnet.to_string() == sn)
    })
}

fn connected(t: &Topology, h: u32) -> Option<bool> {
    lab::read_status(t, h).map(|s| s.etcd_connected)
}

/// (sent, received) from iputils ping's summary.
fn summary(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {out}"));
    let n: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

#[test]
fn killing_the_etcd_leader_loses_nothing_and_quorum_loss_keeps_forwarding() {
    require_privileges!();
    let mut t = Topology::new("quorum", 2, 1).unwrap();
    t.etcd_members = 3;
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    let agents: Vec<i32> = t
        .all_hosts()
        .map(|h| lab::agent_pid(&t.name, h).unwrap())
        .collect();
    let leader = wait_for("an etcd leader", Duration::from_secs(20), || {
        lab::etcd_leader(t)
    });

    // 15 s of pings every 10 ms, container to container across hosts.
    let pinger = Command::new("ip")
        .args(["netns", "exec", &t.container_ns(1, 1), "ping", "-q"])
        .args(["-i", "0.01", "-c", "1500", "-W", "1"])
        .arg(t.container_ip(2, 1).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    lab::stop_etcd_member(t, leader, true).unwrap();
    let next = wait_for("a new etcd leader", Duration::from_secs(30), || {
        lab::etcd_leader(t).filter(|&m| m != leader)
    });
    eprintln!("leader {leader} killed; member {next} leads");
    // A host joins meanwhile, through a live member.
    lab::etcdctl_at(t, next, &["put", JOINED, LEASE], None).unwrap();
    for h in t.all_hosts() {
        wait_for(
            "the joining host programmed",
            Duration::from_secs(30),
            || programmed(t, h, "10.244.201.0/24").then_some(()),
        );
    }
    let out = pinger.wait_with_output().unwrap();
    let (sent, received) = summary(&String::from_utf8_lossy(&out.stdout));
    eprintln!("pings during the leader kill: {received}/{sent}");
    assert_eq!(sent, 1500);
    assert_eq!(received, sent, "replies lost while the etcd leader died");
    for (h, pid) in t.all_hosts().zip(&agents) {
        assert_eq!(
            lab::agent_pid(&t.name, h),
            Some(*pid),
            "agent {h} restarted"
        );
    }

    // A second member goes: no quorum.
    let second = t.etcd_members().find(|&m| m != leader).unwrap();
    lab::stop_etcd_member(t, second, true).unwrap();
    for h in t.all_hosts() {
        wait_for(
            "the agents to report etcd unreachable",
            Duration::from_secs(60),
            || (connected(t, h) == Some(false)).then_some(()),
        );
    }
    assert_eq!(
        lab.ping((1, 1), (2, 1), 20).received,
        20,
        "forwarding without quorum"
    );
    // A member returns: quorum, and the agents reconnect.
    lab::start_etcd_member(t, leader).unwrap();
    for h in t.all_hosts() {
        wait_for("the agents to reconnect", Duration::from_secs(60), || {
            (connected(t, h) == Some(true)).then_some(())
        });
    }
    assert_eq!(lab.ping((1, 1), (2, 1), 5).received, 5);
    for (h, pid) in t.all_hosts().zip(&agents) {
        assert_eq!(
            lab::agent_pid(&t.name, h),
            Some(*pid),
            "agent {h} restarted"
        );
    }
}
