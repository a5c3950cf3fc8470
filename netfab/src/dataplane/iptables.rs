//! iptables rules every backend shares, in chains of their own:
//! `NETFAB-MASQ` (nat POSTROUTING) source-NATs container traffic leaving the
//! cluster, as flannel's --ip-masq does; `NETFAB-ISOLATE` (filter FORWARD)
//! drops traffic between two networks where the host stack routes it.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

/// The iptables-restore input for the two chains. Pure.
pub fn ruleset(masquerade: bool, local_subnets: &[Ipv4Net], cluster: &[Ipv4Net]) -> String {
    let mut s = String::from("*nat\n:NETFAB-MASQ - [0:0]\n-F NETFAB-MASQ\n");
    if masquerade {
        for c in cluster {
            s += &format!("-A NETFAB-MASQ -d {c} -j RETURN\n");
        }
        for l in local_subnets {
            s += &format!("-A NETFAB-MASQ -s {l} -j MASQUERADE\n");
        }
    }
    s += "COMMIT\n*filter\n:NETFAB-ISOLATE - [0:0]\n-F NETFAB-ISOLATE\n";
    for a in cluster {
        for b in cluster {
            if a != b {
                s += &format!("-A NETFAB-ISOLATE -s {a} -d {b} -j DROP\n");
            }
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

/// Loads the chains and makes sure the built-in chains jump to them.
pub fn apply(rules: &str) -> Result<()> {
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
    for (table, chain, target) in [
        ("nat", "POSTROUTING", "NETFAB-MASQ"),
        ("filter", "FORWARD", "NETFAB-ISOLATE"),
    ] {
        if !run(&["-t", table, "-C", chain, "-j", target])?
            && !run(&["-t", table, "-I", chain, "1", "-j", target])?
        {
            bail!("cannot add the {table} {chain} -> {target} jump");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerades_only_cluster_egress_and_isolates_networks() {
        let a: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.245.0.0/16".parse().unwrap();
        let r = ruleset(true, &["10.244.3.0/24".parse().unwrap()], &[a, b]);
        assert!(r.contains("-A NETFAB-MASQ -d 10.244.0.0/16 -j RETURN\n"));
        assert!(r.contains("-A NETFAB-MASQ -s 10.244.3.0/24 -j MASQUERADE\n"));
        // RETURN for cluster destinations comes before MASQUERADE.
        assert!(r.find("RETURN").unwrap() < r.find("MASQUERADE").unwrap());
        assert!(r.contains("-A NETFAB-ISOLATE -s 10.244.0.0/16 -d 10.245.0.0/16 -j DROP\n"));
        assert!(r.contains("-A NETFAB-ISOLATE -s 10.245.0.0/16 -d 10.244.0.0/16 -j DROP\n"));
        let off = ruleset(false, &["10.244.3.0/24".parse().unwrap()], &[a]);
        assert!(!off.contains("MASQUERADE"));
    }
}
