//! The control plane under bad data and bad luck, with traffic flowing:
//! every bad etcd entry written straight into etcd, agents down and hosts cut
//! off from etcd for three lease TTLs, a second agent for one node, corrupt
//! local files. Loss is counted with 10 ms pings; it must be zero.
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use netfab_lab::{self as lab, cni, sh, topology::Topology};
use netfab_tests::{guards::LabGuard, require_privileges, traffic::Pinger, wait_for};

/// 10 ms pings from every host's container 1 to the next host's.
fn ring(t: &Topology, count: u32) -> Vec<(String, Pinger)> {
    t.all_hosts()
        .map(|h| {
            let to = h % t.hosts + 1;
            (
                format!("h{h}->h{to}"),
                Pinger::start(
                    &t.container_ns(h, 1),
                    &t.container_ip(to, 1).to_string(),
                    count,
                ),
            )
        })
        .collect()
}

fn assert_no_loss(pingers: Vec<(String, Pinger)>, what: &str) {
    for (name, p) in pingers {
        let st = p.finish();
        eprintln!("{what}: {name} {}/{} replies", st.received, st.sent);
        assert!(st.sent > 0);
        assert_eq!(st.received, st.sent, "{what}: {name} lost replies");
    }
}

fn wait_logged(t: &Topology, hosts: &[u32], needle: &str) {
    for &h in hosts {
        wait_for(
            &format!("host {h} to report {needle}"),
            Duration::from_secs(10),
            || lab::agent_log(t, h).contains(needle).then_some(()),
        );
    }
}

fn lease(node: &str, ip: &str) -> String {
    format!(
        r#"{{"node":"{node}","underlay_ip":"{ip}","vtep_mac":"0e:6e:64:40:00:63","dataplane":"ebpf","agent_version":"hostile"}}"#
    )
}

fn key(sn: Ipv4Net) -> String {
    format!(
        "/netfab/networks/default/leases/{}-{}",
        sn.network(),
        sn.prefix_len()
    )
}

#[test]
fn bad_etcd_entries_lose_no_packet_and_are_reported_with_their_key() {
    require_privileges!();
    let lab = LabGuard::up("bad", 3, 1);
    let t = &lab.topo;
    let all: Vec<u32> = t.all_hosts().collect();
    let subnets: Vec<Ipv4Net> = all.iter().map(|&h| t.subnet(h, 1).unwrap()).collect();
    // 45 s of pings; the scenarios below take about 21 s alone, more when
    // other labs run beside them.
    let pingers = ring(t, 4500);
    let started = Instant::now();
    let put = |k: &str, v: &str| lab::etcdctl(t, &["put", k, v]).unwrap();

    // Leases: overlapping another host's subnet, outside the CIDR, covering
    // the etcd address, and with unusable underlay addresses.
    let h2 = subnets[1];
    let wide = Ipv4Net::new(h2.network(), 23).unwrap().trunc();
    let bad_leases = [
        (key(wide), lease("x-wide", "100.64.0.91")),
        (
            "/netfab/networks/default/leases/198.18.0.0-24".into(),
            lease("x-out", "100.64.0.92"),
        ),
        (
            "/netfab/networks/default/leases/100.64.0.0-24".into(),
            lease("x-etcd", "100.64.0.93"),
        ),
        (
            "/netfab/networks/default/leases/10.244.201.0-24".into(),
            lease("x-zero", "0.0.0.0"),
        ),
        (
            "/netfab/networks/default/leases/10.244.202.0-24".into(),
            lease("x-lo", "127.0.0.1"),
        ),
        (
            "/netfab/networks/default/leases/10.244.203.0-24".into(),
            lease("x-bcast", "255.255.255.255"),
        ),
    ];
    for (k, v) in &bad_leases {
        put(k, v);
    }
    for (k, _) in &bad_leases {
        wait_logged(t, &all, k);
    }
    // Networks: a duplicate VNI, an overlapping CIDR.
    let dup = "/netfab/networks/dupvni/config";
    put(
        dup,
        r#"{"name":"dupvni","cidr":"10.250.0.0/16","subnet_len":24,"vni":1}"#,
    );
    let over = "/netfab/networks/overlap/config";
    put(
        over,
        r#"{"name":"overlap","cidr":"10.244.128.0/17","subnet_len":24,"vni":9}"#,
    );
    // A network over the underlay itself: refused, and it must not take
    // every host's lease (whose underlay IP it holds) down with it.
    let under = "/netfab/networks/under/config";
    put(
        under,
        r#"{"name":"under","cidr":"100.64.0.0/16","subnet_len":24,"vni":10}"#,
    );
    wait_logged(t, &all, dup);
    wait_logged(t, &all, over);
    wait_logged(t, &all, under);
    for &h in &all {
        wait_for(
            "netfab status to list the offenders",
            Duration::from_secs(10),
            || {
                let st = lab::read_status(t, h)?;
                [dup, over, under, bad_leases[0].0.as_str()]
                    .iter()
                    .all(|k| st.rejected.iter().any(|r| r.key == *k))
                    .then_some(())
            },
        );
    }

    // The network's own config: invalid for 10 s, then deleted for 10 s.
    let cfg = "/netfab/networks/default/config";
    let good = lab::etcdctl(t, &["get", cfg, "--print-value-only"]).unwrap();
    let good = good.trim();
    put(cfg, "{not a config");
    wait_logged(t, &all, &format!("skipping {cfg}: invalid network config"));
    std::thread::sleep(Duration::from_secs(10));
    put(cfg, good);
    lab::etcdctl(t, &["del", cfg]).unwrap();
    wait_logged(t, &all, "network config deleted while hosts hold leases");
    std::thread::sleep(Duration::from_secs(10));
    put(cfg, good);

    // Another host's lease: overwritten with a foreign value, then garbage.
    let k2 = key(subnets[1]);
    put(&k2, &lease("intruder", "100.64.0.77"));
    wait_logged(t, &[2], &format!("our lease {k2} was overwritten"));
    let k3 = key(subnets[2]);
    put(&k3, "garbage");
    wait_logged(t, &[3], &format!("our lease {k3} was overwritten"));
    for &h in &all {
        assert_eq!(
            lab::read_leases(t, h).unwrap().subnets["default"],
            subnets[(h - 1) as usize],
            "host {h} kept its subnet"
        );
    }

    // Meanwhile new containers are programmed: one more on host 1.
    sh::ip(&["netns", "add", &t.container_ns(1, 2)]).unwrap();
    let ip = cni::add(t, 1, 2).expect("ADD amid bad entries");
    let st = netfab_lab::demo::ping(&t.container_ns(2, 1), &ip.to_string(), 3, "0.05").unwrap();
    assert_eq!(st.received, 3, "a new container is reachable at once");

    let took = started.elapsed();
    eprintln!("bad entries: scenarios took {took:?}");
    assert!(
        took < Duration::from_secs(43),
        "pings ended before the scenarios"
    );
    assert_no_loss(pingers, "bad entries");
}

#[test]
fn an_agent_down_or_a_host_cut_off_for_three_ttls_loses_no_packet() {
    require_privileges!();
    let mut topo = Topology::new("down", 3, 1).unwrap();
    topo.lease_ttl = 4;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    let before: Vec<Ipv4Net> = t.all_hosts().map(|h| t.subnet(h, 1).unwrap()).collect();
    let ttl3 = Duration::from_secs(3 * u64::from(t.lease_ttl));

    // Agent 2 killed and left down for 3 TTLs.
    let pingers = ring(t, 2200);
    lab::stop_agent(&t.name, 2, true).unwrap();
    std::thread::sleep(ttl3);
    let st = lab::read_status(t, 1).unwrap();
    assert!(
        st.retained
            .iter()
            .any(|r| r.starts_with(&before[1].to_string())),
        "host 1 keeps routing host 2's expired subnet: {:?}",
        st.retained
    );
    lab::start_agent(t, 2, None).unwrap();
    wait_for(
        "agent 2 back with its subnet",
        Duration::from_secs(15),
        || {
            lab::read_leases(t, 2)
                .filter(|l| l.subnets.get("default") == Some(&before[1]))
                .and_then(|_| lab::read_status(t, 2))
                .filter(|s| s.etcd_connected)
        },
    );
    assert_no_loss(pingers, "agent down 3x TTL");

    // Host 3 cut off from etcd (both directions) for 3 TTLs.
    let etcd_ip = netfab_lab::topology::ETCD_IP.to_string();
    let rules = |op: &str| {
        for (chain, dir) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            sh::in_ns(
                &t.host_ns(3),
                "iptables",
                &[op, chain, dir, &etcd_ip, "-j", "DROP"],
            )
            .unwrap();
        }
    };
    let pingers = ring(t, 2200);
    let log_mark = lab::agent_log(t, 3).matches("connected to etcd").count();
    rules("-I");
    std::thread::sleep(ttl3);
    rules("-D");
    wait_for("agent 3 to reconnect", Duration::from_secs(20), || {
        (lab::agent_log(t, 3).matches("connected to etcd").count() > log_mark).then_some(())
    });
    assert_no_loss(pingers, "host cut off from etcd 3x TTL");
    let after: Vec<Ipv4Net> = t
        .all_hosts()
        .map(|h| lab::read_leases(t, h).unwrap().subnets["default"])
        .collect();
    assert_eq!(before, after, "every host kept its subnet");
}

#[test]
fn a_second_agent_for_a_node_exits_with_a_clear_error() {
    require_privileges!();
    let lab = LabGuard::up("twice", 1, 1);
    let t = &lab.topo;
    let out = std::process::Command::new(netfab_lab::netfab_binary().unwrap())
        .args(["agent", "--netns", &t.host_ns(1), "--node", "intruder"])
        .arg("--run-dir")
        .arg(lab::host_dir(&t.name, 1))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second agent ran: {err}");
    let pid = lab::agent_pid(&t.name, 1).unwrap();
    // The holder is named (not the second agent's own node), and the way out.
    assert!(
        err.contains("another netfab agent already holds")
            && err.contains(&format!("for node {} (PID {pid})", t.host_ns(1)))
            && err.contains("this one is for node intruder")
            && err.contains("--run-dir"),
        "{err}"
    );
    // The first one is unharmed.
    assert_eq!(lab.ping((1, 1), (1, 1), 1).received, 1);
}

#[test]
fn corrupt_local_files_are_rebuilt_and_lose_no_packet() {
    require_privileges!();
    let lab = LabGuard::up("files", 2, 1);
    let t = &lab.topo;
    let dir = lab::host_dir(&t.name, 1);
    let pingers = ring(t, 1500);
    // endpoints.json corrupt, and the agent restarted on top of it.
    std::fs::write(dir.join("endpoints.json"), "{corrupt").unwrap();
    lab::stop_agent(&t.name, 1, false).unwrap();
    lab::start_agent(t, 1, None).unwrap();
    wait_for(
        "the endpoints file rebuilt",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(dir.join("endpoints.json")).ok()?;
            let eps = netfab::rundir::endpoints::parse(&dir.join("endpoints.json"), &text).ok()?;
            (eps.len() == 1 && eps[0].ip == t.container_ip(1, 1)).then_some(())
        },
    );
    // leases.json corrupt under a running agent: rewritten at the next apply.
    std::fs::write(dir.join("leases.json"), "{corrupt").unwrap();
    wait_for("the lease file rewritten", Duration::from_secs(15), || {
        lab::read_leases(t, 1).filter(|l| l.subnets.contains_key("default"))
    });
    sh::ip(&["netns", "add", &t.container_ns(1, 2)]).unwrap();
    let ip = cni::add(t, 1, 2).expect("ADD after the lease file was rewritten");
    assert_eq!(
        netfab_lab::demo::ping(&t.container_ns(2, 1), &ip.to_string(), 3, "0.05")
            .unwrap()
            .received,
        3
    );
    assert_no_loss(pingers, "corrupt local files");
}
