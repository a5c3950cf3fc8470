//! iptables rules every backend shares, in chains of their own:
//! - `NETFAB-MASQ` (nat POSTROUTING) source-NATs container traffic leaving the
//!   cluster, as flannel's --ip-masq does;
//! - `NETFAB-ISOLATE` (filter FORWARD) drops traffic between two networks
//!   where the host stack routes it;
//! - `NETFAB-GUARD` (filter INPUT and FORWARD) keeps containers away from
//!   the fabric's plumbing: any host's tunnel port and the etcd endpoints;
//!   where the kernel VXLAN device receives (`vxlan`, `host-gw`), it also
//!   accepts the tunnel port only from known hosts;
//! - `NETFAB-SOURCE` (raw PREROUTING) validates sources before routing: each
//!   container veth carries only its container's address, each kernel VXLAN
//!   device only its VNI's remote subnets, and the underlay delivers plain IP
//!   to containers only from direct peers' subnets.
//!
//! On the eBPF backend the TC programs drop all of this first (counted per
//! reason); the chains are the fallbacks' enforcement and counters
//! (`iptables-save -c`). What the kernel-VXLAN fallback cannot check: that
//! an inner source belongs to the very host that sent the frame (only to a
//! remote subnet of that VNI); `docs/trust.md`.
use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

/// Everything the rules are made from. Pure input.
#[derive(Debug, Clone, Default)]
pub struct RuleInput {
    pub masquerade: bool,
    /// This host's subnets.
    pub local_subnets: Vec<Ipv4Net>,
    /// Every network's CIDR.
    pub cluster: Vec<Ipv4Net>,
    pub vxlan_port: u16,
    pub etcd: Vec<SocketAddrV4>,
    /// (host veth, container address) of each local container.
    pub endpoints: Vec<(String, Ipv4Addr)>,
    /// Underlay addresses allowed to send to the tunnel port; `None` where
    /// the datapath filters them itself (eBPF).
    pub known_hosts: Option<Vec<Ipv4Addr>>,
    /// (kernel VXLAN device, remote subnets of its VNI).
    pub vxlan_devices: Vec<(String, Vec<Ipv4Net>)>,
    /// The underlay interface and the remote subnets allowed to arrive on it
    /// unencapsulated; `None` where the datapath checks that itself.
    pub underlay: Option<(String, Vec<Ipv4Net>)>,
}

/// The iptables-restore input for the chains. Pure.
pub fn ruleset(r: &RuleInput) -> String {
    let mut s = String::from("*nat\n:NETFAB-MASQ - [0:0]\n-F NETFAB-MASQ\n");
    if r.masquerade {
        for c in &r.cluster {
            s += &format!("-A NETFAB-MASQ -d {c} -j RETURN\n");
        }
        for l in &r.local_subnets {
            s += &format!("-A NETFAB-MASQ -s {l} -j MASQUERADE\n");
        }
    }
    s += "COMMIT\n*filter\n:NETFAB-ISOLATE - [0:0]\n-F NETFAB-ISOLATE\n";
    for a in &r.cluster {
        for b in &r.cluster {
            if a != b {
                s += &format!("-A NETFAB-ISOLATE -s {a} -d {b} -j DROP\n");
            }
        }
    }
    s += ":NETFAB-GUARD - [0:0]\n-F NETFAB-GUARD\n";
    let port = r.vxlan_port;
    for c in &r.cluster {
        for e in &r.etcd {
            s += &format!(
                "-A NETFAB-GUARD -s {c} -d {}/32 -p tcp --dport {} -j DROP\n",
                e.ip(),
                e.port()
            );
        }
    }
    // Nor to etcd's port on any address of this host (its gateway
    // addresses included) when etcd runs here.
    let etcd_ports: std::collections::BTreeSet<u16> = r.etcd.iter().map(|e| e.port()).collect();
    for c in &r.cluster {
        for p in &etcd_ports {
            s += &format!(
                "-A NETFAB-GUARD -s {c} -p tcp --dport {p} -m addrtype --dst-type LOCAL -j DROP\n"
            );
        }
    }
    // A container may talk to another container on any port, but never to a
    // host's tunnel port: not this host's (INPUT, any local address), not
    // another's (FORWARD, masqueraded to a known host's address otherwise).
    for c in &r.cluster {
        s += &format!(
            "-A NETFAB-GUARD -s {c} -p udp --dport {port} -m addrtype --dst-type LOCAL -j DROP\n"
        );
    }
    for c in &r.cluster {
        for d in &r.cluster {
            s += &format!("-A NETFAB-GUARD -s {c} -d {d} -j RETURN\n");
        }
        s += &format!("-A NETFAB-GUARD -s {c} -p udp --dport {port} -j DROP\n");
    }
    if let Some(known) = &r.known_hosts {
        for h in known {
            s += &format!(
                "-A NETFAB-GUARD -s {h}/32 -p udp --dport {port} -m addrtype --dst-type LOCAL -j RETURN\n"
            );
        }
        s += &format!(
            "-A NETFAB-GUARD -p udp --dport {port} -m addrtype --dst-type LOCAL -j DROP\n"
        );
    }
    s += "COMMIT\n*raw\n:NETFAB-SOURCE - [0:0]\n-F NETFAB-SOURCE\n";
    for (ifname, ip) in &r.endpoints {
        s += &format!("-A NETFAB-SOURCE -i {ifname} ! -s {ip}/32 -j DROP\n");
    }
    for (dev, subnets) in &r.vxlan_devices {
        for sn in subnets {
            s += &format!("-A NETFAB-SOURCE -i {dev} -s {sn} -j RETURN\n");
        }
        s += &format!("-A NETFAB-SOURCE -i {dev} -j DROP\n");
    }
    if let Some((ul, allowed)) = &r.underlay {
        for l in &r.local_subnets {
            for a in allowed {
                s += &format!("-A NETFAB-SOURCE -i {ul} -s {a} -d {l} -j RETURN\n");
            }
            s += &format!("-A NETFAB-SOURCE -i {ul} -d {l} -j DROP\n");
        }
    }
    s + "COMMIT\n"
}

fn run(args: &[&str]) -> Result<bool> {
    let st = Command::new("iptables")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running iptables (is it installed?)")?;
    Ok(st.success())
}

/// The built-in chains that jump to ours.
const JUMPS: [(&str, &str, &str); 5] = [
    ("nat", "POSTROUTING", "NETFAB-MASQ"),
    ("filter", "FORWARD", "NETFAB-ISOLATE"),
    ("filter", "FORWARD", "NETFAB-GUARD"),
    ("filter", "INPUT", "NETFAB-GUARD"),
    ("raw", "PREROUTING", "NETFAB-SOURCE"),
];

/// How many rules each of our chains holds in an iptables-restore input or
/// an iptables-save output, and how many jumps to it exist. Formatting
/// differs between the two (`-m udp` is added, addresses normalised), the
/// counts do not.
fn shape(text: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for (_, chain, target) in JUMPS {
        let rules = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {target} ")))
            .count();
        let jumps = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!("-A {chain} ")) && l.ends_with(&format!("-j {target}"))
            })
            .count();
        out.push((format!("{chain}->{target}"), jumps.min(1)));
        out.push((target.to_string(), rules));
    }
    out.dedup();
    out
}

fn saved() -> Option<String> {
    let out = Command::new("iptables-save")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn want_with_jumps(rules: &str) -> String {
    let mut want = rules.to_string();
    for (_, chain, target) in JUMPS {
        want += &format!("-A {chain} -j {target}\n");
    }
    want
}

/// Loads the chains and makes sure the built-in chains jump to them. With
/// `unchanged` (the same rules as last time) it only checks, with one
/// iptables-save, that nobody flushed or removed them, and reloads if
/// someone did. Each process costs milliseconds, and a CNI ADD waits for
/// this.
pub fn apply(rules: &str, unchanged: bool) -> Result<()> {
    let want = want_with_jumps(rules);
    let before = saved();
    if unchanged && before.as_deref().is_some_and(|h| shape(h) == shape(&want)) {
        return Ok(());
    }
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Jumps: added only where the table we saw lacks them.
    let have = before.unwrap_or_default();
    for (table, chain, target) in JUMPS {
        let present = have.lines().any(|l| l == format!("-A {chain} -j {target}"));
        if !present
            && !run(&["-t", table, "-C", chain, "-j", target])?
            && !run(&["-t", table, "-I", chain, "1", "-j", target])?
        {
            bail!("cannot add the {table} {chain} -> {target} jump");
        }
    }
    Ok(())
}

/// Removes the jumps and the chains (cleanup); returns what failed. What
/// is absent is not a failure (`-C`/`-L` ask first), and neither is a host
/// without iptables: netfab cannot have added rules there.
pub fn remove_all() -> Vec<String> {
    if Command::new("iptables")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Vec::new();
    }
    let mut errors = Vec::new();
    let mut check = |what: String, r: Result<bool>| match r {
        Ok(true) => true,
        Ok(false) => {
            errors.push(format!("iptables {what} failed"));
            false
        }
        Err(e) => {
            errors.push(format!("iptables {what}: {e:#}"));
            false
        }
    };
    for (table, chain, target) in JUMPS {
        // Bounded: a jump that cannot be deleted must not loop forever.
        for _ in 0..64 {
            if !run(&["-t", table, "-C", chain, "-j", target]).unwrap_or(false) {
                break;
            }
            let del = run(&["-t", table, "-D", chain, "-j", target]);
            if !check(format!("-t {table} -D {chain} -j {target}"), del) {
                break;
            }
        }
    }
    for (table, _, target) in JUMPS {
        if !run(&["-t", table, "-n", "-L", target]).unwrap_or(false) {
            continue;
        }
        for op in ["-F", "-X"] {
            let r = run(&["-t", table, op, target]);
            check(format!("-t {table} {op} {target}"), r);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> RuleInput {
        RuleInput {
            masquerade: true,
            local_subnets: vec!["10.244.3.0/24".parse().unwrap()],
            cluster: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.245.0.0/16".parse().unwrap(),
            ],
            vxlan_port: 4789,
            etcd: vec!["100.64.0.254:2379".parse().unwrap()],
            endpoints: vec![("nfabc".into(), "10.244.3.2".parse().unwrap())],
            known_hosts: None,
            vxlan_devices: Vec::new(),
            underlay: None,
        }
    }

    #[test]
    fn masquerades_only_cluster_egress_and_isolates_networks() {
        let r = ruleset(&input());
        assert!(r.contains("-A NETFAB-MASQ -d 10.244.0.0/16 -j RETURN\n"));
        assert!(r.contains("-A NETFAB-MASQ -s 10.244.3.0/24 -j MASQUERADE\n"));
        // RETURN for cluster destinations comes before MASQUERADE.
        assert!(r.find("RETURN").unwrap() < r.find("MASQUERADE").unwrap());
        assert!(r.contains("-A NETFAB-ISOLATE -s 10.244.0.0/16 -d 10.245.0.0/16 -j DROP\n"));
        assert!(r.contains("-A NETFAB-ISOLATE -s 10.245.0.0/16 -d 10.244.0.0/16 -j DROP\n"));
        let off = ruleset(&RuleInput {
            masquerade: false,
            ..input()
        });
        assert!(!off.contains("MASQUERADE"));
    }

    #[test]
    fn containers_never_reach_etcd_or_a_tunnel_port_and_cannot_spoof() {
        let r = ruleset(&input());
        let etcd =
            "-A NETFAB-GUARD -s 10.244.0.0/16 -d 100.64.0.254/32 -p tcp --dport 2379 -j DROP\n";
        let local = "-A NETFAB-GUARD -s 10.244.0.0/16 -p udp --dport 4789 -m addrtype --dst-type LOCAL -j DROP\n";
        let ret = "-A NETFAB-GUARD -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN\n";
        let fwd = "-A NETFAB-GUARD -s 10.244.0.0/16 -p udp --dport 4789 -j DROP\n";
        for needle in [etcd, local, ret, fwd] {
            assert!(r.contains(needle), "missing {needle}");
        }
        // The local tunnel port is closed before container-to-container
        // traffic is let through (a VTEP address is a cluster address).
        assert!(r.find(local).unwrap() < r.find(ret).unwrap());
        assert!(r.find(etcd).unwrap() < r.find(ret).unwrap());
        assert!(r.contains("-A NETFAB-SOURCE -i nfabc ! -s 10.244.3.2/32 -j DROP\n"));
        assert!(
            !r.contains("--dst-type LOCAL -j RETURN"),
            "eBPF filters known hosts itself"
        );
    }

    #[test]
    fn a_saved_table_matches_its_restore_input_by_shape() {
        let rules = ruleset(&input());
        let mut saved = String::from("*filter\n-A FORWARD -j NETFAB-GUARD\n-A FORWARD -j NETFAB-ISOLATE\n-A INPUT -j NETFAB-GUARD\n");
        saved += "-A POSTROUTING -j NETFAB-MASQ\n-A PREROUTING -j NETFAB-SOURCE\n";
        // iptables-save spells rules its own way; only the counts matter.
        for l in rules.lines().filter(|l| l.starts_with("-A ")) {
            saved += &l.replace("-p udp", "-p udp -m udp");
            saved.push('\n');
        }
        let want = want_with_jumps(&rules);
        assert_eq!(shape(&saved), shape(&want));
        // A flushed chain or a lost jump shows.
        let flushed: String = saved
            .lines()
            .filter(|l| !l.starts_with("-A NETFAB-SOURCE"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(shape(&flushed), shape(&want));
        let unjumped = saved.replace("-A INPUT -j NETFAB-GUARD\n", "");
        assert_ne!(shape(&unjumped), shape(&want));
    }

    #[test]
    fn fallbacks_filter_known_hosts_vxlan_sources_and_the_underlay() {
        let r = ruleset(&RuleInput {
            known_hosts: Some(vec!["100.64.0.2".parse().unwrap()]),
            vxlan_devices: vec![("nfvx1".into(), vec!["10.244.2.0/24".parse().unwrap()])],
            underlay: Some(("eth0".into(), vec!["10.244.2.0/24".parse().unwrap()])),
            ..input()
        });
        let allow = "-A NETFAB-GUARD -s 100.64.0.2/32 -p udp --dport 4789 -m addrtype --dst-type LOCAL -j RETURN\n";
        let deny = "-A NETFAB-GUARD -p udp --dport 4789 -m addrtype --dst-type LOCAL -j DROP\n";
        assert!(r.find(allow).unwrap() < r.find(deny).unwrap());
        assert!(r.contains("-A NETFAB-SOURCE -i nfvx1 -s 10.244.2.0/24 -j RETURN\n-A NETFAB-SOURCE -i nfvx1 -j DROP\n"));
        assert!(r.contains("-A NETFAB-SOURCE -i eth0 -s 10.244.2.0/24 -d 10.244.3.0/24 -j RETURN\n-A NETFAB-SOURCE -i eth0 -d 10.244.3.0/24 -j DROP\n"));
    }
}
