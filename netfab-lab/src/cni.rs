//! Attaching lab containers exactly the way a container runtime does: the
//! netfab-cni binary, run in the host's namespace with the CNI_* variables
//! and the network configuration on stdin.
use std::{
    io::Write,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{host_dir, topology::Topology};

/// The plugin binary: `NETFAB_CNI_BIN`, else `netfab-cni` next to netfab.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETFAB_CNI_BIN") {
        return Ok(PathBuf::from(p));
    }
    let netfab = crate::netfab_binary()?;
    let p = netfab.with_file_name("netfab-cni");
    if !p.is_file() {
        bail!("{} not found; build the workspace first", p.display());
    }
    Ok(p)
}

/// The network configuration the lab hands the plugin for host `h`.
pub fn conf(topo: &Topology, h: u32, network: &str) -> Value {
    let dir = host_dir(&topo.name, h);
    serde_json::json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": format!("netfab-{network}"),
        "type": "netfab-cni",
        "network": network,
        "runDir": dir,
        "dataDir": dir.join("ipam"),
        "flowSteering": topo.flow_steering,
    })
}

/// One plugin invocation in host `h`'s namespace: (exit ok, stdout JSON).
pub fn invoke(
    topo: &Topology,
    h: u32,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Result<(bool, Value)> {
    let bin = binary()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.host_ns(h)])
        .arg(&bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "CNI_PATH",
            bin.parent().unwrap_or(std::path::Path::new("/")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("running netfab-cni")?;
    child.stdin.take().expect("piped").write_all(stdin)?;
    let out = child.wait_with_output()?;
    let v = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "netfab-cni printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?
    };
    Ok((out.status.success(), v))
}

/// Runs `verb` for container `c` of host `h` as a runtime would.
fn verb(topo: &Topology, h: u32, c: u32, verb: &str) -> Result<Value> {
    let ns = topo.container_ns(h, c);
    let netns = format!("/run/netns/{ns}");
    let network = topo.network_name(topo.container_network(c));
    let env = [
        ("CNI_COMMAND", verb),
        ("CNI_CONTAINERID", ns.as_str()),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let (ok, v) = invoke(
        topo,
        h,
        &env,
        conf(topo, h, &network).to_string().as_bytes(),
    )?;
    if !ok {
        bail!("CNI {verb} for {ns} failed: {v}");
    }
    Ok(v)
}

/// CNI ADD for container `c` of host `h` (its namespace must exist).
pub fn add(topo: &Topology, h: u32, c: u32) -> Result<Ipv4Addr> {
    let v = verb(topo, h, c, "ADD")?;
    let addr = v["ips"][0]["address"]
        .as_str()
        .context("ADD result has no address")?;
    let ip = addr.split('/').next().unwrap_or_default();
    ip.parse()
        .with_context(|| format!("bad address {addr} in the ADD result"))
}

/// CNI DEL for container `c` of host `h`.
pub fn del(topo: &Topology, h: u32, c: u32) -> Result<()> {
    verb(topo, h, c, "DEL").map(|_| ())
}
