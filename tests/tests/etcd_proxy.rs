//! Agents behind an `etcd grpc-proxy` in front of a 3-member etcd, with
//! TLS on both sides. Their watches reach the members as the proxy's one
//! stream; the proxy refuses a client without a certificate; and killing
//! the proxy (by PID) while containers ping every 10 ms and a host joins
//! loses no reply: the agents report not-connected, reconnect when the
//! proxy is back, and program the host that joined meanwhile.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use netfab_lab::{self as lab, topology::Topology};
use netfab_tests::{guards::LabGuard, require_privileges, wait_for};

const JOINED: &str = "/netfab/networks/default/leases/10.244.202.0-24";
const LEASE: &str = r#"{"node":"joiner","underlay_ip":"100.64.0.98","vtep_mac":"0e:6e:64:40:00:62","dataplane":"ebpf","agent_version":"test"}"#;
const FORGED: &str = "/netfab/networks/default/leases/10.244.203.0-24";

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

/// Watch streams open on all members together.
fn member_watch_streams(t: &Topology) -> f64 {
    t.etcd_members()
        .map(|m| {
            let text = lab::etcd_metrics(t, m).unwrap();
            lab::metric_sum(&text, "etcd_debugging_mvcc_watch_stream_total").unwrap()
        })
        .sum()
}

/// etcdctl from host 1's namespace through the proxy, with the CA and,
/// when `with_cert`, the lab's client certificate.
fn etcdctl_via_proxy(t: &Topology, with_cert: bool, args: &[&str]) -> std::process::Output {
    let f = lab::tls::files(&lab::procs::tls_dir(t));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &t.host_ns(1), "etcdctl"])
        .args(["--endpoints", &t.etcd_proxy_url()])
        .args(["--dial-timeout", "3s", "--command-timeout", "5s"])
        .arg("--cacert")
        .arg(&f.ca);
    if with_cert {
        cmd.arg("--cert")
            .arg(&f.client_cert)
            .arg("--key")
            .arg(&f.client_key);
    }
    cmd.args(args).output().unwrap()
}

#[test]
fn agents_behind_a_grpc_proxy_share_one_watch_and_ride_out_its_death() {
    require_privileges!();
    let mut t = Topology::new("proxy", 3, 1).unwrap();
    t.etcd_members = 3;
    t.etcd_proxy = true;
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    let agents: Vec<i32> = t
        .all_hosts()
        .map(|h| lab::agent_pid(&t.name, h).unwrap())
        .collect();
    for h in t.all_hosts() {
        wait_for("the agents connected", Duration::from_secs(30), || {
            (connected(t, h) == Some(true)).then_some(())
        });
    }
    // Three agents watch; the members see only the proxy's streams (its
    // own leader watch and the coalesced one share at most two).
    let streams = member_watch_streams(t);
    eprintln!("member watch streams with 3 agents behind the proxy: {streams}");
    assert!(
        (1.0..=2.0).contains(&streams),
        "the members see {streams} watch streams for 3 agents behind the proxy"
    );

    // Without a client certificate the proxy lets nobody in.
    let forged = etcdctl_via_proxy(t, false, &["put", FORGED, LEASE]);
    assert!(
        !forged.status.success(),
        "a client without a certificate wrote through the proxy"
    );
    let stored = lab::etcdctl(t, &["get", FORGED, "--print-value-only"]).unwrap();
    assert!(stored.trim().is_empty(), "the forged lease is in etcd");
    let read = etcdctl_via_proxy(t, true, &["get", "/netfab/", "--prefix", "--keys-only"]);
    assert!(read.status.success(), "{read:?}");
    assert!(String::from_utf8_lossy(&read.stdout).contains("/netfab/networks/default/config"));

    // 15 s of pings every 10 ms, container to container across hosts.
    let pinger = Command::new("ip")
        .args(["netns", "exec", &t.container_ns(1, 1), "ping", "-q"])
        .args(["-i", "0.01", "-c", "1500", "-W", "1"])
        .arg(t.container_ip(2, 1).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    lab::stop_etcd_proxy(t, true).unwrap();
    for h in t.all_hosts() {
        wait_for(
            "the agents to report etcd unreachable",
            Duration::from_secs(30),
            || (connected(t, h) == Some(false)).then_some(()),
        );
    }
    // A host joins meanwhile, straight through a member.
    lab::etcdctl(t, &["put", JOINED, LEASE]).unwrap();
    lab::start_etcd_proxy(t).unwrap();
    for h in t.all_hosts() {
        wait_for("the agents to reconnect", Duration::from_secs(30), || {
            (connected(t, h) == Some(true)).then_some(())
        });
        wait_for(
            "the host that joined meanwhile programmed",
            Duration::from_secs(30),
            || programmed(t, h, "10.244.202.0/24").then_some(()),
        );
    }
    let out = pinger.wait_with_output().unwrap();
    let (sent, received) = summary(&String::from_utf8_lossy(&out.stdout));
    eprintln!("pings while the proxy died and came back: {received}/{sent}");
    assert_eq!(sent, 1500);
    assert_eq!(received, sent, "replies lost while the proxy was down");
    for (h, pid) in t.all_hosts().zip(&agents) {
        assert_eq!(
            lab::agent_pid(&t.name, h),
            Some(*pid),
            "agent {h} restarted"
        );
    }
    assert!(
        member_watch_streams(t) <= 2.0,
        "the agents' watches went around the proxy after it came back"
    );
}
