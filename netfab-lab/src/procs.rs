//! Processes the lab starts (agents, etcd): started detached with a PID file
//! each, and stopped by that PID only.
use std::{
    fs::OpenOptions,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    state_dir, tls,
    topology::{Control, Topology},
};

pub fn pid_file(lab: &str, proc_name: &str) -> PathBuf {
    state_dir(lab).join(format!("{proc_name}.pid"))
}

/// The binary `name`: `$var`, else this executable when it is `name`, else
/// one next to it or one level up (test binaries live in
/// target/<profile>/deps).
fn sibling(name: &str, var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("finding the running executable")?;
    if exe.file_name().is_some_and(|n| n == name) {
        return Ok(exe);
    }
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("no {name} binary found next to this program; set {var}"))
}

/// The product binary (agent and CLI): `NETFAB_BIN` or next to this one.
pub fn netfab_binary() -> Result<PathBuf> {
    sibling("netfab", "NETFAB_BIN")
}

/// The lab binary (bench helpers run inside namespaces): `NETFAB_LAB_BIN`
/// or next to this one.
pub fn lab_binary() -> Result<PathBuf> {
    sibling("netfab-lab", "NETFAB_LAB_BIN")
}

/// Starts `cmd` detached, logging to `<proc_name>.log`, and records its PID.
fn spawn(lab: &str, proc_name: &str, mut cmd: Command) -> Result<u32> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir(lab).join(format!("{proc_name}.log")))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {proc_name}"))?;
    let pid = child.id();
    std::fs::write(pid_file(lab, proc_name), pid.to_string())?;
    Ok(pid)
}

pub fn agent_name(h: u32) -> String {
    format!("h{h}")
}

/// Starts host `h`'s agent in the background, in the host's namespace.
pub fn start_agent(topo: &Topology, h: u32, bpf_object: Option<&Path>) -> Result<u32> {
    let dir = state_dir(&topo.name);
    std::fs::create_dir_all(crate::host_dir(&topo.name, h))?;
    let mut cmd;
    // Without some capabilities, nsenter enters the network namespace first
    // (setns needs CAP_SYS_ADMIN; unlike `ip netns exec` it leaves the mounts
    // alone, so bpffs stays at /sys/fs/bpf as a hostPath mount would) and
    // setpriv narrows the bounding set: a root process then holds exactly
    // what is left, as in a container.
    let bounding = match &topo.agent_caps {
        Some(caps) => Some(format!(
            "-all{}",
            caps.iter()
                .map(|c| format!(",+{}", c.to_lowercase()))
                .collect::<String>()
        )),
        // eBPF really unavailable: no CAP_BPF, no CAP_SYS_ADMIN.
        None if topo.no_bpf_hosts.contains(&h) => Some("-bpf,-sys_admin,-perfmon".into()),
        None => None,
    };
    if let Some(bounding) = bounding {
        cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", topo.host_ns(h)));
        cmd.args(["setpriv", "--bounding-set", &bounding, "--"])
            .arg(netfab_binary()?)
            .arg("agent");
    } else {
        cmd = Command::new(netfab_binary()?);
        cmd.arg("agent").args(["--netns", &topo.host_ns(h)]);
    }
    let dataplane = topo.dataplane.to_string();
    cmd.args(["--node", &topo.host_ns(h), "--dataplane", &dataplane])
        .args(["--vxlan-encap", topo.encap_of(h).as_str()])
        .arg("--run-dir")
        .arg(crate::host_dir(&topo.name, h))
        .arg("--pin-dir")
        .arg(topo.pin_dir(h))
        .args([
            "--resync-secs",
            &format!("{:.3}", f64::from(topo.resync_ms) / 1000.0),
        ]);
    match topo.control {
        Control::Static => {
            cmd.arg("--state-file").arg(dir.join(format!("h{h}.json")));
        }
        Control::Etcd => {
            cmd.args(tls_client_args(topo));
            cmd.args(["--etcd-endpoints", &topo.agent_endpoints()])
                .args(["--lease-ttl", &topo.lease_ttl.to_string()])
                .args(["--lease-grace-secs", &topo.lease_grace.to_string()])
                .arg("--ipam-dir")
                .arg(crate::host_dir(&topo.name, h).join("ipam"));
        }
    }
    if let Some(o) = bpf_object {
        cmd.arg("--bpf-object").arg(o);
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    spawn(&topo.name, &agent_name(h), cmd)
}

/// Where etcd serves /metrics, inside its namespace.
pub const ETCD_METRICS: &str = "http://127.0.0.1:2381";

/// Every etcd member; returns member 1's PID.
pub fn start_etcd(topo: &Topology) -> Result<u32> {
    let mut first = 0;
    for m in topo.etcd_members() {
        let pid = start_etcd_member(topo, m)?;
        if m == 1 {
            first = pid;
        }
    }
    Ok(first)
}

/// The lab's process name of etcd member `m`.
pub fn etcd_name(m: u32) -> String {
    match m {
        1 => "etcd".into(),
        _ => format!("etcd{m}"),
    }
}

/// Starts etcd member `m` in its namespace (its data kept across restarts).
pub fn start_etcd_member(topo: &Topology, m: u32) -> Result<u32> {
    let name = etcd_name(m);
    let data = state_dir(&topo.name).join(format!("{name}-data"));
    // One member talks to nobody: its peer port stays on loopback.
    let peer = |m: u32| match topo.etcd_members {
        1 => "http://127.0.0.1:2380".to_string(),
        _ => format!("http://{}:2380", topo.etcd_ip_of(m)),
    };
    let member = |m: u32| match m {
        1 => "lab".to_string(),
        _ => format!("lab{m}"),
    };
    let cluster = topo
        .etcd_members()
        .map(|m| format!("{}={}", member(m), peer(m)))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &topo.etcd_ns_of(m),
        "etcd",
        "--name",
        &member(m),
    ])
    .arg("--data-dir")
    .arg(&data)
    .args([
        "--listen-client-urls",
        &format!("{},{}", topo.etcd_url_of(m), topo.etcd_local_url()),
        "--advertise-client-urls",
        &topo.etcd_url_of(m),
        "--listen-peer-urls",
        &peer(m),
        "--initial-advertise-peer-urls",
        &peer(m),
        "--initial-cluster",
        &cluster,
        // Its own counters, plain HTTP inside its namespace.
        "--listen-metrics-urls",
        ETCD_METRICS,
        "--log-level",
        "warn",
    ]);
    if topo.etcd_tls {
        let f = tls::files(&tls_dir(topo));
        cmd.arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&f.ca)
            .arg("--cert-file")
            .arg(&f.server_cert)
            .arg("--key-file")
            .arg(&f.server_key);
    }
    spawn(&topo.name, &name, cmd)
}

pub const ETCD_PROXY: &str = "etcd-proxy";

/// Starts `etcd grpc-proxy` in its namespace, in front of every member: one
/// watch on the members per distinct key range, however many agents watch
/// it through the proxy. It serves agents with the members' server
/// certificate (client certificates required) and reaches the members with
/// its own, whose Common Name is empty as etcd requires of a proxy.
pub fn start_etcd_proxy(topo: &Topology) -> Result<u32> {
    let hostports = topo
        .etcd_members()
        .map(|m| format!("{}:2379", topo.etcd_ip_of(m)))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &topo.etcd_proxy_ns(),
        "etcd",
        "grpc-proxy",
        "start",
        "--endpoints",
        &hostports,
        "--listen-addr",
        &format!("{}:2379", crate::topology::ETCD_PROXY_IP),
        // /health for operators (etcd 3.4's proxy serves no counters of its
        // own: /metrics there relays a member's).
        "--metrics-addr",
        ETCD_METRICS,
    ])
    .arg("--data-dir")
    .arg(state_dir(&topo.name).join("etcd-proxy-data"));
    if topo.etcd_tls {
        let f = tls::files(&tls_dir(topo));
        cmd.arg("--cacert")
            .arg(&f.ca)
            .arg("--cert")
            .arg(&f.proxy_cert)
            .arg("--key")
            .arg(&f.proxy_key)
            .arg("--trusted-ca-file")
            .arg(&f.ca)
            .arg("--cert-file")
            .arg(&f.server_cert)
            .arg("--key-file")
            .arg(&f.server_key);
    }
    spawn(&topo.name, ETCD_PROXY, cmd)
}

pub fn tls_dir(topo: &Topology) -> PathBuf {
    state_dir(&topo.name).join("tls")
}

/// The client TLS flags for netfab commands talking to the lab's etcd.
pub fn tls_client_args(topo: &Topology) -> Vec<String> {
    if !topo.etcd_tls {
        return Vec::new();
    }
    let f = tls::files(&tls_dir(topo));
    let p = |p: PathBuf| p.to_string_lossy().into_owned();
    vec![
        "--etcd-ca".into(),
        p(f.ca),
        "--etcd-cert".into(),
        p(f.client_cert),
        "--etcd-key".into(),
        p(f.client_key),
    ]
}

fn read_pid(lab: &str, proc_name: &str) -> Option<i32> {
    std::fs::read_to_string(pid_file(lab, proc_name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Collects the exit status if the process is our child (it is when the
/// same process started it, as in tests), so it does not linger as a zombie.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: non-blocking waitpid on one PID; harmless if not our child.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Stops a process this lab started, by its recorded PID. `hard` = SIGKILL
/// at once, as a crash would.
pub fn stop(lab: &str, proc_name: &str, hard: bool) -> Result<()> {
    let Some(pid) = read_pid(lab, proc_name) else {
        return Ok(());
    };
    reap(pid);
    if alive(pid) {
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
    }
    let _ = std::fs::remove_file(pid_file(lab, proc_name));
    Ok(())
}

/// Names of the processes with a PID file in the lab's state directory.
pub fn recorded(lab: &str) -> Vec<String> {
    std::fs::read_dir(state_dir(lab))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".pid")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}
