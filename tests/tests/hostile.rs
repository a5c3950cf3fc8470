//! A hostile tenant on every backend. A container with raw sockets sends
//! VXLAN to every host's tunnel port (every VNI, forged inner sources),
//! forges its own source address, and dials etcd with and without TLS,
//! and etcd's port on its own host (every address, the gateway's too); a
//! known host (a compromised node) injects VXLAN with inner sources that are
//! not its own, and plain IP from outside its subnets. Nothing may arrive in
//! another container, etcd must stay out of reach, and each attempt must be
//! counted under a named drop reason (eBPF) or a rule's counter (fallbacks).
//! A legitimate frame through the same listener proves the listeners hear.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use netfab::dataplane::select::Choice;
use netfab_lab::{
    sh,
    topology::{Control, Topology},
};
use netfab_tests::{guards::LabGuard, require_privileges};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hostile/attack.py")
}

/// Debian's scapy runs under /usr/bin/python3 (not the pyenv one on PATH).
fn attack(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "/usr/bin/python3"])
        .arg(script())
        .args(args)
        .output()
        .expect("running attack.py");
    assert!(
        out.status.success(),
        "attack.py {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// attack.py `args` in `ns`, started and waited on until it says "ready".
fn spawn_ready(ns: &str, args: &[&str]) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "/usr/bin/python3"])
        .arg(script())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting attack.py");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "attack.py {args:?} in {ns}");
    child
}

/// Counts MARKER frames arriving in a namespace until `finish`.
struct Listener(Child, String);

impl Listener {
    fn start(ns: &str, secs: u32) -> Self {
        Self(spawn_ready(ns, &["listen", &secs.to_string()]), ns.into())
    }

    fn finish(self) -> (String, u32) {
        let out = self.0.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let n = text
            .trim()
            .strip_prefix("seen ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("listener output: {text}"));
        (self.1, n)
    }
}

/// TCP services of a host itself, stopped on drop.
struct HostService(Child);

impl Drop for HostService {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn join(v: &[String]) -> String {
    v.join(",")
}

/// Sum of the packet counters of the rules in `chain` (in host `h`'s
/// namespace) whose text contains every needle.
fn rule_hits(t: &Topology, h: u32, table: &str, chain: &str, needles: &[&str]) -> u64 {
    let out = sh::in_ns(&t.host_ns(h), "iptables-save", &["-c", "-t", table]).unwrap();
    out.lines()
        .filter(|l| l.contains(&format!("-A {chain} ")) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.strip_prefix('[')?.split(':').next()?.parse::<u64>().ok())
        .sum()
}

fn eth0_mac(t: &Topology, h: u32) -> String {
    sh::in_ns(&t.host_ns(h), "cat", &["/sys/class/net/eth0/address"])
        .unwrap()
        .trim()
        .to_string()
}

/// The link-local IPv6 address of host `h`'s underlay interface.
fn link_local(t: &Topology, h: u32) -> String {
    let out = sh::ip_in(
        &t.host_ns(h),
        &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
    )
    .unwrap();
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no link-local address on eth0: {out}"))
        .to_string()
}

/// IPv6 packets host `h` discarded on the host veth of container netns
/// `ctr` (IPv6 is off there).
fn ip6_in_discards(t: &Topology, h: u32, ctr: &str) -> u64 {
    let veth = netfab::cni::attach::host_ifname(ctr, "eth0");
    let text = sh::in_ns(
        &t.host_ns(h),
        "cat",
        &[&format!("/proc/net/dev_snmp6/{veth}")],
    )
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Ip6InDiscards")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Ip6InDiscards for {veth}: {text}"))
}

fn hostile(b: Choice, short: &str) {
    require_privileges!();
    let mut topo = Topology::with(&format!("hs-{short}"), 3, 2, 2, Control::Etcd).unwrap();
    topo.dataplane = b;
    let lab = LabGuard::up_with(topo);
    let t = &lab.topo;
    let ip = |h, c| t.container_ip(h, c).to_string();
    let attacker = t.container_ns(1, 1);
    let victims: Vec<(u32, u32)> = t
        .all_containers()
        .into_iter()
        .filter(|&x| x != (1, 1))
        .collect();
    let hosts: Vec<String> = t.all_hosts().map(|h| t.host_ip(h).to_string()).collect();
    // Every address a host has: underlay, and (kernel VXLAN) its VTEP
    // addresses, the network address of each of its subnets.
    let mut dsts = hosts.clone();
    for h in t.all_hosts() {
        for n in 1..=t.networks {
            dsts.push(t.subnet(h, n).unwrap().network().to_string());
        }
    }
    let inner_dsts: Vec<String> = victims.iter().map(|&(h, c)| ip(h, c)).collect();
    let inner_srcs = vec!["8.8.8.8".to_string(), ip(2, 2), ip(2, 1), ip(1, 1)];

    let listeners: Vec<Listener> = victims
        .iter()
        .map(|&(h, c)| Listener::start(&t.container_ns(h, c), 10))
        .collect();
    // 1. A container: VXLAN to every host, every VNI (and one nobody serves).
    let sent = attack(
        &attacker,
        &[
            "vxlan",
            "4789",
            "1,2,77",
            &join(&dsts),
            &join(&inner_srcs),
            &join(&inner_dsts),
        ],
    );
    assert!(sent.starts_with("sent ") && sent != "sent 0", "{sent}");
    // 2. A container forging its source: another container of its network,
    // the outside world, a container of another network.
    let spoofs = [
        format!("{}>{}", ip(2, 1), ip(3, 1)),
        format!("8.8.8.8>{}", ip(2, 1)),
        format!("{}>{}", ip(1, 2), ip(2, 2)),
        format!("{}>{}", ip(3, 1), ip(1, 2)),
    ];
    attack(&attacker, &["spoof", &join(&spoofs)]);
    // 3. A container dialling etcd.
    let etcd = netfab_lab::topology::ETCD_IP.to_string();
    for mode in ["plain", "tls"] {
        let r = attack(&attacker, &["tcp", &etcd, "2379", mode]);
        assert!(
            r.starts_with("refused"),
            "etcd reachable from a container ({mode}): {r}"
        );
    }
    // 3b. etcd on the attacker's own host (a control-plane node): etcd's
    // port refuses a container at every address of the host, the gateway
    // it routes through included; another port of the host answers (the
    // control: the refusal is the guard's, not the path's).
    let _service = HostService(spawn_ready(&t.host_ns(1), &["serve", "60", "2379,8080"]));
    let gateway = t.gateway(1, t.container_network(1)).to_string();
    for dst in [gateway, t.host_ip(1).to_string()] {
        let r = attack(&attacker, &["tcp", &dst, "2379", "plain"]);
        assert!(
            r.starts_with("refused"),
            "{b:?}: etcd's port on the host reachable at {dst}: {r}"
        );
        let r = attack(&attacker, &["tcp", &dst, "8080", "plain"]);
        assert_eq!(r, "connected", "{b:?}: control: the host at {dst}:8080");
    }
    // 3c. IPv6, which netfab does not carry yet: a service on `::` of the
    // attacker's host, tried at the link-local address the host veth would
    // have (EUI-64 of the gateway MAC), the host's underlay link-local, a
    // global address of the host, and all-nodes multicast: nothing answers.
    // The control: the same listener answers the host itself.
    let h1ns = t.host_ns(1);
    sh::ip_in(&h1ns, &["-6", "addr", "add", "fd64::1/128", "dev", "lo"]).unwrap();
    let _service6 = HostService(spawn_ready(&h1ns, &["serve6", "60", "2379"]));
    let r = attack(&h1ns, &["tcp", "fd64::1", "2379", "plain"]);
    assert_eq!(r, "connected", "control: the IPv6 listener of host 1");
    let eth0_ll = link_local(t, 1);
    let targets = format!("fe80::ecee:eeff:feee:eeee,{eth0_ll},fd64::1,ff02::1");
    let gw_mac = netfab_lab::topology::GATEWAY_MAC.to_string();
    let r = attack(&attacker, &["ipv6", &gw_mac, &targets, "2379,8080"]);
    assert!(
        r.starts_with("sent ") && r.ends_with(" replies 0") && !r.starts_with("sent 0"),
        "{b:?}: a host answered a container over IPv6: {r}"
    );
    let v6_discards = ip6_in_discards(t, 1, &attacker);

    // 4. A known host (host 2) speaking for others: VXLAN whose inner
    // source is outside its subnets, and plain IP from outside its subnets.
    let h1 = t.host_ip(1).to_string();
    attack(
        &t.host_ns(2),
        &[
            "vxlan",
            "4789",
            "1,2",
            &h1,
            &format!("8.8.8.8,{}", ip(3, 1)),
            &ip(1, 2),
        ],
    );
    let mac1 = eth0_mac(t, 1);
    attack(
        &t.host_ns(2),
        &[
            "l2",
            "eth0",
            &mac1,
            &format!("8.8.8.8>{},{}>{}", ip(1, 2), t.host_ip(2), ip(1, 2)),
        ],
    );
    for l in listeners {
        let (ns, seen) = l.finish();
        assert_eq!(seen, 0, "{b:?}: hostile frames reached {ns}");
    }

    // Control: the same listener hears a legitimate frame from host 2's
    // container subnet (a direct peer), so zero above means dropped.
    let l = Listener::start(&t.container_ns(1, 2), 3);
    attack(
        &t.host_ns(2),
        &["l2", "eth0", &mac1, &format!("{}>{}", ip(2, 2), ip(1, 2))],
    );
    let (_, seen) = l.finish();
    assert!(
        seen >= 3,
        "{b:?}: the control frames did not arrive ({seen})"
    );

    if b == Choice::Ebpf {
        let d = lab.counters(1).drops;
        eprintln!("{b:?}: host 1 drops {d:?}");
        for reason in [
            "tunnel_port",
            "control_plane",
            "spoofed_source",
            "not_direct_peer",
            // The container's IPv6.
            "not_ipv4",
        ] {
            assert!(d[reason] > 0, "no {reason} drops counted");
        }
        assert!(
            d["foreign_inner_source"] > 0,
            "injection from a known host not counted"
        );
    } else {
        let guard = |needles: &[&str]| rule_hits(t, 1, "filter", "NETFAB-GUARD", needles);
        let source = |needles: &[&str]| rule_hits(t, 1, "raw", "NETFAB-SOURCE", needles);
        let tunnel = guard(&["--dport 4789", "-j DROP"]);
        let control = guard(&["--dport 2379", "-j DROP"]);
        let spoof = source(&["! -s", "-j DROP"]);
        let underlay = source(&["-i eth0", "-j DROP"]);
        eprintln!(
            "{b:?}: host 1 rule hits: tunnel port {tunnel}, etcd {control}, spoofed {spoof}, \
             underlay {underlay}"
        );
        assert!(tunnel > 0 && control > 0 && spoof > 0 && underlay > 0);
        // IPv6 is off on the container's host veth: the stack discards it.
        assert!(
            v6_discards > 0,
            "{b:?}: the container's IPv6 not counted as discarded"
        );
        if b == Choice::Vxlan {
            // VXLAN from host 2 carrying 8.8.8.8 or another network's
            // source: refused at the VXLAN device.
            let vx = source(&["-i nfvx", "-j DROP"]);
            assert!(vx > 0, "foreign inner sources not counted on nfvx");
        }
    }
}

#[test]
fn hostile_tenant_on_ebpf() {
    hostile(Choice::Ebpf, "e");
}

#[test]
fn hostile_tenant_on_kernel_vxlan() {
    hostile(Choice::Vxlan, "v");
}

#[test]
fn hostile_tenant_on_host_gw() {
    hostile(Choice::HostGw, "g");
}
