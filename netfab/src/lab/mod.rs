//! A simulated cluster on one machine: an underlay bridge in its own network
//! namespace, N host namespaces each running an agent, M container namespaces
//! per host. `down` removes all of it, also after a crash half-way through
//! `up` (it finds the pieces by their names).
pub mod anchor;
pub mod bench;
pub mod demo;
pub mod sh;
pub mod topology;

use std::{
    fs::OpenOptions,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use self::{sh::ip_in, topology::Topology};
use crate::dataplane::ebpf::{maps::BpfMaps, DEFAULT_PIN_ROOT};

pub const STATE_ROOT: &str = "/run/netfab-lab";

pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[lab] {}", msg.as_ref());
}

/// Loads the topology a previous `up` recorded.
pub fn load(name: &str) -> Result<Topology> {
    let p = state_dir(name).join("topology.json");
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("lab `{name}` is not up ({} missing)", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

pub fn up(topo: &Topology, bpf_object: Option<&Path>) -> Result<()> {
    if sh::netns_list()?.contains(&topo.underlay_ns()) {
        bail!(
            "lab `{}` already exists; run `netfab lab down --name {}` first",
            topo.name,
            topo.name
        );
    }
    let result = build(topo, bpf_object);
    if let Err(e) = &result {
        say(format!(
            "setting up failed ({e:#}); tearing down what was built"
        ));
        if let Err(e2) = down(&topo.name) {
            say(format!("teardown after failure also failed: {e2:#}"));
        }
    }
    result
}

fn build(topo: &Topology, bpf_object: Option<&Path>) -> Result<()> {
    let dir = state_dir(&topo.name);
    // Logs of an earlier lab with this name would mix with this one's.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("topology.json"),
        serde_json::to_string_pretty(topo)?,
    )?;

    let ul = topo.underlay_ns();
    say(format!("underlay {ul}: bridge br0, 100.64.0.0/24"));
    sh::ip(&["netns", "add", &ul])?;
    ip_in(&ul, &["link", "set", "lo", "up"])?;
    ip_in(&ul, &["link", "add", "br0", "type", "bridge"])?;
    ip_in(&ul, &["link", "set", "br0", "up"])?;

    for h in topo.all_hosts() {
        build_host(topo, h)?;
        for c in 1..=topo.containers {
            build_container(topo, h, c)?;
        }
    }
    for h in topo.all_hosts() {
        let state = dir.join(format!("h{h}.json"));
        std::fs::write(&state, serde_json::to_string_pretty(&topo.state(h))?)?;
        start_agent(topo, h, bpf_object)?;
    }
    wait_programmed(topo, Duration::from_secs(30))?;
    say(format!(
        "up: {} hosts x {} containers; state in {}",
        topo.hosts,
        topo.containers,
        dir.display()
    ));
    Ok(())
}

fn build_host(topo: &Topology, h: u32) -> Result<()> {
    let ns = topo.host_ns(h);
    let ul = topo.underlay_ns();
    let port = format!("h{h}");
    let ip = format!("{}/24", topo.host_ip(h));
    say(format!(
        "host {ns}: eth0 {ip}, subnet {}",
        topo.host_subnet(h)
    ));
    sh::ip(&["netns", "add", &ns])?;
    ip_in(&ns, &["link", "set", "lo", "up"])?;
    ip_in(
        &ul,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    ip_in(&ul, &["link", "set", &port, "master", "br0", "up"])?;
    ip_in(&ns, &["addr", "add", &ip, "dev", "eth0"])?;
    ip_in(
        &ns,
        &[
            "link",
            "set",
            "eth0",
            "mtu",
            &topology::UNDERLAY_MTU.to_string(),
            "up",
        ],
    )?;
    Ok(())
}

fn build_container(topo: &Topology, h: u32, c: u32) -> Result<()> {
    let host = topo.host_ns(h);
    let ns = topo.container_ns(h, c);
    let veth = topo.host_veth(c);
    let ip = topo.container_ip(h, c);
    let gw = topo.gateway(h).to_string();
    let mtu = topology::CONTAINER_MTU.to_string();
    let gw_mac = topology::GATEWAY_MAC.to_string();
    let mac = crate::addr::MacAddr::container_for(ip).to_string();
    sh::ip(&["netns", "add", &ns])?;
    ip_in(&ns, &["link", "set", "lo", "up"])?;
    ip_in(
        &host,
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    ip_in(
        &host,
        &["link", "set", &veth, "address", &gw_mac, "mtu", &mtu, "up"],
    )?;
    ip_in(
        &ns,
        &["link", "set", "eth0", "address", &mac, "mtu", &mtu, "up"],
    )?;
    // No on-link prefix route: every destination, same subnet included, goes
    // through the gateway, i.e. through the eBPF program on the host veth.
    let cidr = format!("{ip}/{}", topo.host_subnet(h).prefix_len());
    ip_in(&ns, &["addr", "add", &cidr, "dev", "eth0", "noprefixroute"])?;
    ip_in(&ns, &["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    ip_in(&ns, &["route", "add", "default", "via", &gw, "dev", "eth0"])?;
    ip_in(
        &ns,
        &[
            "neigh",
            "add",
            &gw,
            "lladdr",
            &gw_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    Ok(())
}

fn pid_file(name: &str, h: u32) -> PathBuf {
    state_dir(name).join(format!("h{h}.pid"))
}

/// Starts host `h`'s agent in the background, detached from this process.
pub fn start_agent(topo: &Topology, h: u32, bpf_object: Option<&Path>) -> Result<u32> {
    let dir = state_dir(&topo.name);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("h{h}.log")))?;
    let mut cmd = Command::new(netfab_binary()?);
    cmd.arg("agent")
        .args(["--netns", &topo.host_ns(h)])
        .arg("--state-file")
        .arg(dir.join(format!("h{h}.json")))
        .arg("--pin-dir")
        .arg(topo.pin_dir(h));
    if let Some(o) = bpf_object {
        cmd.arg("--bpf-object").arg(o);
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    )
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log)
    .process_group(0);
    let child = cmd.spawn().context("starting agent")?;
    let pid = child.id();
    std::fs::write(pid_file(&topo.name, h), pid.to_string())?;
    Ok(pid)
}

/// The agent binary: `NETFAB_BIN`, else this executable when it is netfab,
/// else a `netfab` next to it or one level up (test binaries live in
/// target/<profile>/deps).
pub fn netfab_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETFAB_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("finding the running executable")?;
    if exe.file_name().is_some_and(|n| n == "netfab") {
        return Ok(exe);
    }
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("netfab"))
        .find(|p| p.is_file())
        .context("no netfab binary found next to this program; set NETFAB_BIN")
}

fn read_pid(name: &str, h: u32) -> Option<i32> {
    std::fs::read_to_string(pid_file(name, h))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Stops host `h`'s agent (the PID this lab recorded, nothing else).
/// `hard` = SIGKILL at once, as a crash would.
pub fn stop_agent(name: &str, h: u32, hard: bool) -> Result<()> {
    let Some(pid) = read_pid(name, h) else {
        return Ok(());
    };
    if !alive(pid) {
        let _ = std::fs::remove_file(pid_file(name, h));
        return Ok(());
    }
    let sig = if hard { libc::SIGKILL } else { libc::SIGTERM };
    // SAFETY: plain signal delivery to a PID this lab started.
    unsafe { libc::kill(pid, sig) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        reap(pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(50));
        reap(pid);
    }
    let _ = std::fs::remove_file(pid_file(name, h));
    Ok(())
}

/// Collects the exit status if the agent is our child (it is when the same
/// process started it, as in tests), so it does not linger as a zombie.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: non-blocking waitpid on a specific PID; harmless if it is not
    // our child.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Waits until every agent has filled its maps with every local container and
/// every remote host, and has attached (and pinned) its programs to every
/// container veth and the VXLAN device.
pub fn wait_programmed(topo: &Topology, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for h in topo.all_hosts() {
        loop {
            let ready = BpfMaps::open(&topo.pin_dir(h))
                .and_then(|m| m.read())
                .map(|t| {
                    t.endpoints.len() == topo.containers as usize
                        && t.remote_subnets.len() == (topo.hosts - 1) as usize
                        && t.host_config.vxlan_ifindex != 0
                })
                .unwrap_or(false)
                && std::fs::read_dir(topo.pin_dir(h).join("links"))
                    .map(|d| d.count() == topo.containers as usize + 1)
                    .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(state_dir(&topo.name).join(format!("h{h}.log")))
                    .unwrap_or_default();
                bail!("agent of host {h} did not program its maps within {timeout:?}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Removes the lab `name`: agents, namespaces, pins, state. Works from names
/// alone, so it also cleans up after a crashed `up`. Reports every failure.
pub fn down(name: &str) -> Result<()> {
    let mut errors = Vec::new();
    let prefix = format!("{name}-");
    let dir = state_dir(name);
    for h in 1..=250 {
        if !pid_file(name, h).exists() {
            continue;
        }
        if let Err(e) = stop_agent(name, h, false) {
            errors.push(format!("stopping agent {h}: {e:#}"));
        }
    }
    // Containers first, then hosts, then the underlay.
    let mut namespaces: Vec<String> = sh::netns_list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    namespaces.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for ns in &namespaces {
        if let Err(e) = sh::ip(&["netns", "del", ns]) {
            errors.push(format!("{e:#}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(DEFAULT_PIN_ROOT) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    errors.push(format!("removing {}: {err}", e.path().display()));
                }
            }
        }
    }
    if dir.exists() {
        // Keep agent logs for post-mortems; the rest goes.
        for e in std::fs::read_dir(&dir)?.flatten() {
            let keep = e.path().extension().is_some_and(|x| x == "log");
            if !keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    say(format!(
        "down: removed {} namespaces of lab `{name}`",
        namespaces.len()
    ));
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("lab down incomplete: {}", errors.join("; "))
    }
}
