//! The control plane against a real etcd server: leases, convergence, host
//! death, etcd outages, partitions, isolation between networks, bad data.
use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use netfab::dataplane::ebpf::maps::BpfMaps;
use netfab_lab::{
    self as lab,
    demo::ping,
    procs, sh,
    topology::{Control, Topology},
    wiring,
};
use netfab_tests::{guards::LabGuard, require_privileges, traffic::Pinger, wait_for};

fn remote_subnets(t: &Topology, h: u32) -> BTreeSet<Ipv4Net> {
    BpfMaps::open(&t.pin_dir(h))
        .and_then(|m| m.read())
        .map(|tb| tb.remote_subnets.keys().copied().collect())
        .unwrap_or_default()
}

fn lease_of(t: &Topology, h: u32, net: &str) -> Option<Ipv4Net> {
    lab::read_leases(t, h)?.subnets.get(net).copied()
}

#[test]
fn three_hosts_route_each_other_and_converge_fast() {
    require_privileges!();
    // Grace 0: a deleted lease is unprogrammed at once (flannel's behaviour),
    // so both directions of convergence can be timed.
    let mut topo = Topology::new("conv", 3, 1).unwrap();
    topo.lease_grace = 0;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    for h in t.all_hosts() {
        let want: BTreeSet<Ipv4Net> = t
            .all_hosts()
            .filter(|&o| o != h)
            .map(|o| t.subnet(o, 1).unwrap())
            .collect();
        assert_eq!(
            remote_subnets(t, h),
            want,
            "host {h} routes every other host's subnet"
        );
    }
    for (h, c) in t.all_containers() {
        for (h2, c2) in t.all_containers() {
            if h != h2 {
                let st = lab.ping((h, c), (h2, c2), 2);
                assert_eq!(st.received, 2);
            }
        }
    }
    // A new lease written to etcd: how long until the last host routes it?
    let ghost: Ipv4Net = "10.244.200.0/24".parse().unwrap();
    let value = r#"{"node":"ghost","underlay_ip":"100.64.0.99","vtep_mac":"0e:6e:64:40:00:63","dataplane":"ebpf","agent_version":"test"}"#;
    let written = Instant::now();
    lab::etcdctl(
        t,
        &[
            "put",
            "/netfab/networks/default/leases/10.244.200.0-24",
            value,
        ],
    )
    .unwrap();
    wait_for(
        "every host to route the new lease",
        Duration::from_secs(5),
        || {
            t.all_hosts()
                .all(|h| remote_subnets(t, h).contains(&ghost))
                .then_some(())
        },
    );
    let converged = written.elapsed();
    eprintln!("convergence: last lease written -> last host programmed in {converged:?}");
    let removed = Instant::now();
    lab::etcdctl(
        t,
        &["del", "/netfab/networks/default/leases/10.244.200.0-24"],
    )
    .unwrap();
    wait_for(
        "every host to drop the lease",
        Duration::from_secs(5),
        || {
            t.all_hosts()
                .all(|h| !remote_subnets(t, h).contains(&ghost))
                .then_some(())
        },
    );
    eprintln!(
        "convergence: lease deleted -> last host unprogrammed in {:?}",
        removed.elapsed()
    );
    assert!(
        converged < Duration::from_secs(1),
        "goal < 1 s, took {converged:?}"
    );
}

#[test]
fn dead_host_subnet_expires_and_is_leased_again_and_exhaustion_is_reported() {
    require_privileges!();
    let mut topo = Topology::with("death", 3, 1, 1, Control::Etcd).unwrap();
    topo.lease_ttl = 4;
    topo.lease_grace = 3;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    // A network with room for two hosts: one of the three must be told.
    lab::netfab_cli(
        t,
        &[
            "network",
            "create",
            "tiny",
            "--cidr",
            "10.99.0.0/23",
            "--subnet-len",
            "24",
            "--vni",
            "99",
        ],
    )
    .unwrap();
    let holders = wait_for(
        "two hosts to lease in `tiny`",
        Duration::from_secs(10),
        || {
            let h: Vec<u32> = t
                .all_hosts()
                .filter(|&h| lease_of(t, h, "tiny").is_some())
                .collect();
            (h.len() == 2).then_some(h)
        },
    );
    let left_out = t.all_hosts().find(|h| !holders.contains(h)).unwrap();
    let log = wait_for("the exhaustion error", Duration::from_secs(10), || {
        let l = lab::agent_log(t, left_out);
        l.contains("is exhausted").then_some(l)
    });
    assert!(
        log.contains("network tiny is exhausted: all 2 /24 subnets of 10.99.0.0/23 are leased"),
        "{log}"
    );

    // Kill a holder and delete its namespaces.
    let dead = holders[0];
    let dead_default = t.subnet(dead, 1).unwrap();
    let dead_tiny = lease_of(t, dead, "tiny").unwrap();
    lab::stop_agent(&t.name, dead, true).unwrap();
    sh::ip(&["netns", "del", &t.container_ns(dead, 1)]).unwrap();
    sh::ip(&["netns", "del", &t.host_ns(dead)]).unwrap();
    let killed = Instant::now();
    wait_for(
        "the dead host's subnet to leave the others' maps",
        Duration::from_secs(25),
        || {
            t.all_hosts()
                .filter(|&h| h != dead)
                .all(|h| !remote_subnets(t, h).contains(&dead_default))
                .then_some(())
        },
    );
    eprintln!(
        "reclaim: host killed -> its subnet gone from every map in {:?} (TTL {} s, grace {} s)",
        killed.elapsed(),
        t.lease_ttl,
        t.lease_grace
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(6),
        "removed before the lease and the grace could expire"
    );
    // The host that found `tiny` full now gets the freed subnet.
    let got = wait_for(
        "the freed subnet to be leased again",
        Duration::from_secs(10),
        || lease_of(t, left_out, "tiny"),
    );
    assert_eq!(got, dead_tiny);
}

#[test]
fn etcd_down_for_30s_loses_no_ping_and_agents_reconnect() {
    require_privileges!();
    let lab = LabGuard::up("outage", 2, 1);
    let t = &lab.topo;
    let before: Vec<_> = t.all_hosts().map(|h| lease_of(t, h, "default")).collect();
    // 3800 pings at 10 ms: about 38 s, covering the whole outage.
    let pinger = Pinger::start(
        &t.container_ns(1, 1),
        &t.container_ip(2, 1).to_string(),
        3800,
    );
    std::thread::sleep(Duration::from_secs(2));
    lab::stop_etcd(t).unwrap();
    std::thread::sleep(Duration::from_secs(30));
    lab::start_etcd(t).unwrap();
    let back = Instant::now();
    for h in t.all_hosts() {
        wait_for("the agent to reconnect", Duration::from_secs(20), || {
            (lab::agent_log(t, h).matches("connected to etcd").count() >= 2).then_some(())
        });
    }
    eprintln!(
        "agents reconnected {:?} after etcd returned",
        back.elapsed()
    );
    let st = pinger.finish();
    let (sent, received) = (st.sent, st.received);
    eprintln!("etcd outage: {received}/{sent} replies");
    assert_eq!(received, sent, "replies lost during the etcd outage");
    let after: Vec<_> = t.all_hosts().map(|h| lease_of(t, h, "default")).collect();
    assert_eq!(before, after, "same subnets after the outage");
}

#[test]
fn partitioned_agents_learn_a_new_host_when_the_cut_heals() {
    require_privileges!();
    let mut topo = Topology::with("cut", 2, 1, 1, Control::Etcd).unwrap();
    topo.lease_ttl = 20;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    let etcd_ip = netfab_lab::topology::ETCD_IP.to_string();
    // Both directions: with only outgoing packets dropped, data etcd
    // already sent would still reach the agent.
    let rules = |op: &str| {
        for h in t.all_hosts() {
            sh::in_ns(
                &t.host_ns(h),
                "iptables",
                &[op, "OUTPUT", "-d", &etcd_ip, "-j", "DROP"],
            )
            .unwrap();
            sh::in_ns(
                &t.host_ns(h),
                "iptables",
                &[op, "INPUT", "-s", &etcd_ip, "-j", "DROP"],
            )
            .unwrap();
        }
    };
    rules("-I");
    // A third host joins through etcd while the first two cannot see it.
    wiring::host(t, 3).unwrap();
    procs::start_agent(t, 3, None).unwrap();
    let new = wait_for("the new host's lease", Duration::from_secs(15), || {
        lease_of(t, 3, "default")
    });
    std::thread::sleep(Duration::from_secs(3));
    for h in t.all_hosts() {
        assert!(
            !remote_subnets(t, h).contains(&new),
            "host {h} cannot know yet"
        );
    }
    let healed = Instant::now();
    rules("-D");
    wait_for(
        "both agents to program the new host",
        Duration::from_secs(15),
        || {
            t.all_hosts()
                .all(|h| remote_subnets(t, h).contains(&new))
                .then_some(())
        },
    );
    eprintln!(
        "partition healed -> new host programmed everywhere in {:?}",
        healed.elapsed()
    );
    assert!(healed.elapsed() < Duration::from_secs(10));
}

#[test]
fn two_networks_are_isolated() {
    require_privileges!();
    let lab = LabGuard::up_with(Topology::with("twonet", 2, 2, 2, Control::Etcd).unwrap());
    let t = &lab.topo;
    for c in [1, 2] {
        let st = lab.ping((1, c), (2, c), 3);
        assert_eq!(st.received, 3, "within network {}", t.container_network(c));
    }
    let mismatch = |h| lab.counters(h).drops["network_mismatch"];
    let before = mismatch(1);
    // Container 1 is in `default`, container 2 in `net2`: across hosts and on one host.
    for dst in [t.container_ip(2, 2), t.container_ip(1, 2)] {
        let st = ping(&t.container_ns(1, 1), &dst.to_string(), 3, "0.05").unwrap();
        assert_eq!(st.received, 0, "{dst} is in another network");
    }
    assert!(
        mismatch(1) >= before + 6,
        "drops counted: {} -> {}",
        before,
        mismatch(1)
    );
}

#[test]
fn bad_etcd_data_is_logged_with_its_key_and_skipped() {
    require_privileges!();
    let lab = LabGuard::up("baddata", 2, 1);
    let t = &lab.topo;
    let bad_lease = "/netfab/networks/default/leases/10.244.77.0-24";
    let bad_net = "/netfab/networks/broken/config";
    lab::etcdctl(t, &["put", bad_lease, "{this is not json"]).unwrap();
    lab::etcdctl(
        t,
        &[
            "put",
            bad_net,
            r#"{"name":"broken","cidr":"10.300.0.0/16","subnet_len":24,"vni":5}"#,
        ],
    )
    .unwrap();
    for h in t.all_hosts() {
        wait_for("both bad keys in the log", Duration::from_secs(10), || {
            let l = lab::agent_log(t, h);
            (l.contains(bad_lease) && l.contains(bad_net)).then_some(())
        });
    }
    // Everything else keeps working, and later good data is still applied.
    let st = lab.ping((1, 1), (2, 1), 3);
    assert_eq!(st.received, 3);
    let good: Ipv4Net = "10.244.78.0/24".parse().unwrap();
    let value = r#"{"node":"ghost","underlay_ip":"100.64.0.99","vtep_mac":"0e:6e:64:40:00:63","dataplane":"ebpf","agent_version":"test"}"#;
    lab::etcdctl(
        t,
        &[
            "put",
            "/netfab/networks/default/leases/10.244.78.0-24",
            value,
        ],
    )
    .unwrap();
    wait_for(
        "the good lease to be programmed",
        Duration::from_secs(5),
        || {
            t.all_hosts()
                .all(|h| remote_subnets(t, h).contains(&good))
                .then_some(())
        },
    );
    assert!(t
        .all_hosts()
        .all(|h| !remote_subnets(t, h).contains(&"10.244.77.0/24".parse().unwrap())));

    // Records of a newer release. Guarded ones (min_agent_version above
    // this agent) are written first and must be refused whole; the ones
    // with fields this agent does not know, written after, are served.
    // The store's order makes "served" prove "guarded ones were judged".
    let guarded_lease = "/netfab/networks/default/leases/10.244.80.0-24";
    let guarded_net = "/netfab/networks/guarded/config";
    lab::etcdctl(
        t,
        &[
            "put",
            guarded_lease,
            r#"{"node":"next","underlay_ip":"100.64.0.98","vtep_mac":"0e:6e:64:40:00:62","dataplane":"ebpf","agent_version":"999.0.0","min_agent_version":"999.0.0"}"#,
        ],
    )
    .unwrap();
    lab::etcdctl(
        t,
        &[
            "put",
            guarded_net,
            r#"{"name":"guarded","cidr":"10.252.0.0/16","subnet_len":24,"vni":10,"min_agent_version":"999.0.0","encryption":"required"}"#,
        ],
    )
    .unwrap();
    let future: Ipv4Net = "10.244.79.0/24".parse().unwrap();
    lab::etcdctl(
        t,
        &[
            "put",
            "/netfab/networks/default/leases/10.244.79.0-24",
            r#"{"node":"future","underlay_ip":"100.64.0.97","vtep_mac":"0e:6e:64:40:00:61","dataplane":"ebpf","agent_version":"9.0.0","underlay_ip6":"fd00::97","wireguard":{"public_key":"AAAA","port":51820}}"#,
        ],
    )
    .unwrap();
    lab::etcdctl(
        t,
        &[
            "put",
            "/netfab/networks/future/config",
            r#"{"name":"future","cidr":"10.251.0.0/16","subnet_len":24,"vni":9,"cidr6":"fd10:251::/56","subnet6_len":64}"#,
        ],
    )
    .unwrap();
    for h in t.all_hosts() {
        wait_for(
            "a newer release's lease served, its network leased from",
            Duration::from_secs(10),
            || {
                (remote_subnets(t, h).contains(&future) && lease_of(t, h, "future").is_some())
                    .then_some(())
            },
        );
        let log = lab::agent_log(t, h);
        for key in [guarded_lease, guarded_net] {
            assert!(
                log.lines()
                    .any(|l| l.contains(key) && l.contains("needs netfab agent 999.0.0")),
                "host {h}: {key} refused with the reason"
            );
        }
        assert!(
            !remote_subnets(t, h).contains(&"10.244.80.0/24".parse().unwrap()),
            "host {h}: the guarded lease is not routed"
        );
        assert_eq!(
            lease_of(t, h, "guarded"),
            None,
            "host {h}: no lease in the guarded network"
        );
    }
    let st = lab.ping((1, 1), (2, 1), 3);
    assert_eq!(st.received, 3, "the rest keeps working");
}

#[test]
fn network_cli_validates_before_writing() {
    require_privileges!();
    let lab = LabGuard::up("netcli", 1, 1);
    let t = &lab.topo;
    let cli = |args: &[&str]| lab::netfab_cli(t, args);
    let listing = || cli(&["network", "list"]).unwrap();
    let before = listing();
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "network",
                "create",
                "x",
                "--cidr",
                "10.244.128.0/17",
                "--vni",
                "9",
            ],
            "overlaps network default",
        ),
        (
            &[
                "network",
                "create",
                "x",
                "--cidr",
                "10.50.0.0/16",
                "--subnet-len",
                "8",
                "--vni",
                "9",
            ],
            "subnet length /8",
        ),
        (
            &[
                "network",
                "create",
                "x",
                "--cidr",
                "10.50.0.0/16",
                "--vni",
                "1",
            ],
            "VNI 1 is already used by network default",
        ),
        (
            &[
                "network",
                "create",
                "default",
                "--cidr",
                "10.50.0.0/16",
                "--vni",
                "9",
            ],
            "already exists",
        ),
        (&["network", "delete", "default"], "still has 1 live lease"),
    ];
    for (args, needle) in cases {
        let err = cli(args).unwrap_err().to_string();
        assert!(
            err.contains(needle),
            "`{}`: expected `{needle}` in `{err}`",
            args.join(" ")
        );
        assert_eq!(
            listing(),
            before,
            "nothing changed after `{}`",
            args.join(" ")
        );
    }
    cli(&[
        "network",
        "create",
        "extra",
        "--cidr",
        "10.50.0.0/16",
        "--vni",
        "9",
    ])
    .unwrap();
    assert!(listing().contains("extra"));
}

#[test]
fn agents_talk_to_etcd_over_tls_with_client_certificates() {
    require_privileges!();
    let mut topo = Topology::with("tls", 2, 1, 1, Control::Etcd).unwrap();
    topo.etcd_tls = true;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    assert!(t.etcd_url().starts_with("https://"));
    let st = lab.ping((1, 1), (2, 1), 3);
    assert_eq!(st.received, 3);
    // Without a client certificate etcd refuses us.
    let out = Command::new(lab::netfab_binary().unwrap())
        .args([
            "network",
            "list",
            "--netns",
            &t.etcd_ns(),
            "--etcd-endpoints",
            &t.etcd_local_url(),
            "--etcd-timeout-secs",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "plain connection to a TLS etcd must fail"
    );
}
