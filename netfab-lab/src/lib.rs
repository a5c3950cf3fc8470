//! netfab's lab and bench, outside the product: they drive netfab only
//! through its CLI (`netfab agent`, `netfab network`, `netfab status`), the
//! CNI plugin and the run-directory files ([`netfab::rundir`]), as an
//! operator's tooling would.
//!
//! A simulated cluster on one machine: an underlay bridge in its own network
//! namespace, a real etcd server in another (etcd mode), N host namespaces
//! each running an agent, M container namespaces per host. `down` removes
//! all of it, also after a crash half-way through `up` (it finds the pieces
//! by their names and PID files).
pub mod bench;
pub mod chart;
pub mod cni;
pub mod demo;
pub mod fanout;
pub mod procs;
pub mod rr;
pub mod scale;
pub mod sh;
pub mod tls;
pub mod topology;
pub mod wiring;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use self::procs::{lab_binary, netfab_binary};
use self::topology::{Control, HostSubnet, Topology};
use netfab::{dataplane::ebpf::DEFAULT_PIN_ROOT, rundir::LeaseFile};

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

/// Builds the lab; returns the topology with every host's subnets filled in.
pub fn up(topo: &Topology, bpf_object: Option<&Path>) -> Result<Topology> {
    if sh::netns_list()?.contains(&topo.underlay_ns()) {
        bail!(
            "lab `{}` already exists; run `netfab-lab down --name {}` first",
            topo.name,
            topo.name
        );
    }
    let result = build(topo.clone(), bpf_object);
    if let Err(e) = &result {
        if std::env::var_os("NETFAB_LAB_KEEP_ON_FAILURE").is_some() {
            say(format!("setting up failed ({e:#}); kept for inspection"));
            return result;
        }
        say(format!(
            "setting up failed ({e:#}); tearing down what was built"
        ));
        if let Err(e2) = down(&topo.name) {
            say(format!("teardown after failure also failed: {e2:#}"));
        }
    }
    result
}

fn build(mut topo: Topology, bpf_object: Option<&Path>) -> Result<Topology> {
    let dir = state_dir(&topo.name);
    // Logs of an earlier lab with this name would mix with this one's.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    topo.save(&dir.join("topology.json"))?;

    say(format!(
        "underlay {}: bridge br0, 100.64.0.0/24",
        topo.underlay_ns()
    ));
    wiring::underlay(&topo)?;
    if topo.control == Control::Etcd {
        say(format!("etcd in {} at {}", topo.etcd_ns(), topo.etcd_url()));
        wiring::etcd_host(&topo)?;
        if topo.etcd_tls {
            tls::generate(&procs::tls_dir(&topo), &topo.etcd_server_ips())?;
        }
        procs::start_etcd(&topo)?;
        if topo.etcd_proxy {
            say(format!(
                "etcd grpc-proxy in {} at {}",
                topo.etcd_proxy_ns(),
                topo.etcd_proxy_url()
            ));
            procs::start_etcd_proxy(&topo)?;
        }
        // External agents come with their own cluster's networks.
        let networks = if topo.external_agents {
            0
        } else {
            topo.networks
        };
        for n in 1..=networks {
            let c = topo.network_config(n);
            let args = [
                "network",
                "create",
                &c.name,
                "--cidr",
                &c.cidr.to_string(),
                "--subnet-len",
                "24",
                "--vni",
                &c.vni.to_string(),
                "--direct-routing",
                if c.direct_routing { "true" } else { "false" },
            ];
            // etcd takes a moment to start serving.
            retry(Duration::from_secs(15), || netfab_cli(&topo, &args))?;
        }
    }
    for h in topo.all_hosts() {
        say(format!(
            "host {}: eth0 {}",
            topo.host_ns(h),
            topo.host_ip(h)
        ));
        wiring::host(&topo, h)?;
    }
    if topo.external_agents {
        say("hosts wired; agents are run by the caller");
        return Ok(topo);
    }
    match topo.control {
        Control::Static => {
            for h in topo.all_hosts() {
                for c in 1..=topo.containers {
                    wiring::container(&topo, h, c)?;
                }
                let state = serde_json::to_string_pretty(&topo.state(h))?;
                std::fs::write(dir.join(format!("h{h}.json")), state)?;
                procs::start_agent(&topo, h, bpf_object)?;
            }
        }
        Control::Etcd => {
            for h in topo.all_hosts() {
                procs::start_agent(&topo, h, bpf_object)?;
            }
            topo.subnets = wait_leases(&topo, Duration::from_secs(30))?;
            // Containers get the MTU their host's agent computed.
            if let Some(mtu) = topo
                .all_hosts()
                .filter_map(|h| read_leases(&topo, h))
                .map(|l| l.mtu)
                .min()
            {
                topo.container_mtu = mtu;
            }
            topo.save(&dir.join("topology.json"))?;
            // Containers join the way a runtime attaches them: CNI ADD.
            for h in topo.all_hosts() {
                for c in 1..=topo.containers {
                    sh::ip(&["netns", "add", &topo.container_ns(h, c)])?;
                    let ip = cni::add(&topo, h, c)?;
                    topo.assigned.push(topology::AssignedIp {
                        host: h,
                        container: c,
                        ip,
                    });
                }
            }
            topo.save(&dir.join("topology.json"))?;
        }
    }
    wait_programmed(&topo, Duration::from_secs(30))?;
    for s in &topo.subnets {
        say(format!(
            "host {} network {}: {}",
            s.host,
            topo.network_name(s.network),
            s.subnet
        ));
    }
    say(format!(
        "up: {} hosts x {} containers; state in {}",
        topo.hosts,
        topo.containers,
        dir.display()
    ));
    Ok(topo)
}

fn retry<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// etcd member `m`'s /metrics, read inside its namespace.
pub fn etcd_metrics(topo: &Topology, m: u32) -> Result<String> {
    metrics_in(&topo.etcd_ns_of(m))
}

/// GET /metrics from [`procs::ETCD_METRICS`] inside namespace `ns`.
fn metrics_in(ns: &str) -> Result<String> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<String> {
            use std::io::{Read, Write};
            netfab::netns::enter(ns)?;
            let addr = procs::ETCD_METRICS.trim_start_matches("http://");
            let mut c = std::net::TcpStream::connect(addr)
                .with_context(|| format!("connecting to etcd's metrics at {addr} in {ns}"))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            // HTTP/1.0: the body comes whole, not in chunks whose size
            // lines would land in the middle of a sample.
            write!(c, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut text = String::new();
            c.read_to_string(&mut text)?;
            let (head, body) = text
                .split_once("\r\n\r\n")
                .with_context(|| format!("no HTTP response from etcd's metrics in {ns}"))?;
            if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
                bail!(
                    "etcd's metrics in {ns} answered {}",
                    head.lines().next().unwrap_or("")
                );
            }
            Ok(body.to_string())
        })
        .join()
        .expect("metrics thread")
    })
}

/// The sum of every sample of metric `name` (all label sets) in a
/// Prometheus text exposition; None when it has no sample.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// etcd's gRPC requests so far, by method (`grpc_server_started_total`
/// from every live member's /metrics).
pub fn etcd_requests(topo: &Topology) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut by = std::collections::BTreeMap::new();
    for m in topo.etcd_members() {
        let Ok(text) = etcd_metrics(topo, m) else {
            continue;
        };
        for l in text
            .lines()
            .filter(|l| l.starts_with("grpc_server_started_total{"))
        {
            let method = l
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let v: f64 = l.rsplit(' ').next().unwrap_or("0").parse().unwrap_or(0.0);
            *by.entry(method.to_string()).or_insert(0.0) += v;
        }
    }
    if by.is_empty() {
        bail!("no grpc_server_started_total in etcd's /metrics");
    }
    Ok(by)
}

/// The member that leads the etcd cluster now, if one does.
pub fn etcd_leader(topo: &Topology) -> Option<u32> {
    topo.etcd_members().find(|&m| {
        etcd_metrics(topo, m).is_ok_and(|t| t.lines().any(|l| l == "etcd_server_is_leader 1"))
    })
}

/// Runs the netfab CLI against the lab's etcd (from inside etcd's namespace).
pub fn netfab_cli(topo: &Topology, args: &[&str]) -> Result<String> {
    let out = Command::new(netfab_binary()?)
        .args(args)
        .args([
            "--netns",
            &topo.etcd_ns(),
            "--etcd-endpoints",
            &topo.etcd_local_url(),
        ])
        .args(procs::tls_client_args(topo))
        .output()
        .context("running netfab")?;
    if !out.status.success() {
        bail!(
            "netfab {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs etcdctl against the lab's etcd.
pub fn etcdctl(topo: &Topology, args: &[&str]) -> Result<String> {
    etcdctl_with_input(topo, args, None)
}

/// As [`etcdctl`], with `input` on standard input (say, a large value for
/// `put`).
pub fn etcdctl_with_input(topo: &Topology, args: &[&str], input: Option<&[u8]>) -> Result<String> {
    etcdctl_at(topo, 1, args, input)
}

/// etcdctl run in member `m`'s namespace, against that member.
pub fn etcdctl_at(topo: &Topology, m: u32, args: &[&str], input: Option<&[u8]>) -> Result<String> {
    let url = topo.etcd_local_url();
    let mut a: Vec<String> = vec!["--endpoints".into(), url];
    if topo.etcd_tls {
        let f = tls::files(&procs::tls_dir(topo));
        for (flag, p) in [
            ("--cacert", f.ca),
            ("--cert", f.client_cert),
            ("--key", f.client_key),
        ] {
            a.push(flag.into());
            a.push(p.to_string_lossy().into_owned());
        }
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    sh::in_ns_with_input(&topo.etcd_ns_of(m), "etcdctl", &refs, input)
}

/// Host `h`'s run directory: what its agent and its CNI plugin share
/// (leases.json, endpoints.json, status.json) and its IPAM data.
pub fn host_dir(name: &str, h: u32) -> PathBuf {
    state_dir(name).join(format!("h{h}"))
}

pub fn read_leases(topo: &Topology, h: u32) -> Option<LeaseFile> {
    let p = host_dir(&topo.name, h).join(netfab::rundir::LEASES);
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

/// Waits until every agent has leased a subnet in every network.
fn wait_leases(topo: &Topology, timeout: Duration) -> Result<Vec<HostSubnet>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    for h in topo.all_hosts() {
        loop {
            if let Some(lf) = read_leases(topo, h) {
                let found: Vec<HostSubnet> = (1..=topo.networks)
                    .filter_map(|n| {
                        lf.subnets.get(&topo.network_name(n)).map(|s| HostSubnet {
                            host: h,
                            network: n,
                            subnet: *s,
                        })
                    })
                    .collect();
                if found.len() == topo.networks as usize {
                    out.extend(found);
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "host {h} did not lease its subnets within {timeout:?}; its log:\n{}",
                    agent_log(topo, h)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(out)
}

pub fn agent_log(topo: &Topology, h: u32) -> String {
    std::fs::read_to_string(state_dir(&topo.name).join(format!("h{h}.log"))).unwrap_or_default()
}

/// Starts host `h`'s agent again after `stop_agent`.
pub fn start_agent(topo: &Topology, h: u32, bpf_object: Option<&Path>) -> Result<u32> {
    procs::start_agent(topo, h, bpf_object)
}

/// The PID of host `h`'s running agent, if any.
pub fn agent_pid(name: &str, h: u32) -> Option<i32> {
    pid_of(name, &procs::agent_name(h))
}

/// The PID the lab recorded for its process `proc_name`, if any.
pub fn pid_of(name: &str, proc_name: &str) -> Option<i32> {
    std::fs::read_to_string(procs::pid_file(name, proc_name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Stops host `h`'s agent (the PID this lab recorded, nothing else).
pub fn stop_agent(name: &str, h: u32, hard: bool) -> Result<()> {
    procs::stop(name, &procs::agent_name(h), hard)?;
    // A new agent's first status must not be mistaken for this one's.
    let _ = std::fs::remove_file(status_path(name, h));
    Ok(())
}

/// SIGKILLs host `h`'s agent and leaves its files as a crash would.
pub fn crash_agent(name: &str, h: u32) -> Result<()> {
    procs::stop(name, &procs::agent_name(h), true)
}

fn status_path(name: &str, h: u32) -> PathBuf {
    host_dir(name, h).join(netfab::rundir::STATUS)
}

/// What host `h`'s agent last reported (`netfab status`).
pub fn read_status(topo: &Topology, h: u32) -> Option<netfab::rundir::Status> {
    serde_json::from_str(&std::fs::read_to_string(status_path(&topo.name, h)).ok()?).ok()
}

pub fn stop_etcd(topo: &Topology) -> Result<()> {
    for m in topo.etcd_members() {
        stop_etcd_member(topo, m, false)?;
    }
    Ok(())
}

/// Stops etcd member `m` (`hard`: SIGKILL).
pub fn stop_etcd_member(topo: &Topology, m: u32, hard: bool) -> Result<()> {
    procs::stop(&topo.name, &procs::etcd_name(m), hard)
}

pub fn start_etcd_member(topo: &Topology, m: u32) -> Result<u32> {
    procs::start_etcd_member(topo, m)
}

pub fn start_etcd(topo: &Topology) -> Result<u32> {
    procs::start_etcd(topo)
}

/// Stops the grpc-proxy (`hard`: SIGKILL).
pub fn stop_etcd_proxy(topo: &Topology, hard: bool) -> Result<()> {
    procs::stop(&topo.name, procs::ETCD_PROXY, hard)
}

pub fn start_etcd_proxy(topo: &Topology) -> Result<u32> {
    procs::start_etcd_proxy(topo)
}

/// Waits until agent `h` has filled its maps with every local container and
/// every remote subnet and attached its programs to every container veth and
/// the VXLAN device.
pub fn wait_host_programmed(topo: &Topology, h: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let remotes = ((topo.hosts - 1) * topo.networks) as usize;
    loop {
        // Both modes report what they applied, whatever the backend.
        let ready = read_status(topo, h).is_some_and(|st| {
            st.endpoints == topo.containers as usize
                && st.remotes == remotes
                && st.endpoint_ips.len() == topo.containers as usize
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "agent of host {h} did not program its dataplane within {timeout:?}; its log:\n{}",
                agent_log(topo, h)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_programmed(topo: &Topology, timeout: Duration) -> Result<()> {
    for h in topo.all_hosts() {
        wait_host_programmed(topo, h, timeout)?;
    }
    Ok(())
}

/// Removes the lab `name`: processes, namespaces, pins, state. Works from
/// names alone, so it also cleans up after a crashed `up`. Reports every
/// failure and keeps going.
pub fn down(name: &str) -> Result<()> {
    let mut errors = Vec::new();
    let prefix = format!("{name}-");
    for p in procs::recorded(name) {
        if let Err(e) = procs::stop(name, &p, false) {
            errors.push(format!("stopping {p}: {e:#}"));
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
    let dir = state_dir(name);
    if dir.exists() {
        // Keep logs for post-mortems; the rest (etcd data included) goes.
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                continue;
            }
            let r = if e.path().is_dir() {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
            if let Err(err) = r {
                errors.push(format!("removing {}: {err}", e.path().display()));
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

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sum_adds_every_label_set_of_exactly_that_name() {
        let text = "# HELP x_total help\n\
                    x_total{a=\"1\"} 2\n\
                    x_total{a=\"2\"} 3.5\n\
                    x_total_other 100\n\
                    y 7\n";
        assert_eq!(metric_sum(text, "x_total"), Some(5.5));
        assert_eq!(metric_sum(text, "y"), Some(7.0));
        assert_eq!(metric_sum(text, "x"), None);
        assert_eq!(metric_sum(text, "z"), None);
    }
}
