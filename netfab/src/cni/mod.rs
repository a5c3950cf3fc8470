//! `netfab-cni`: the CNI plugin (spec 0.4.0, 1.0.0, 1.1.0; ADD, DEL, CHECK,
//! VERSION, GC, STATUS).
//!
//! How the plugin and the agent talk: through files in the agent's run
//! directory, not a socket. The agent writes `leases.json` (this host's
//! subnet per network and the container MTU) and `status.json`; the plugin
//! writes `endpoints.json` (under a lock) and the agent programs whatever
//! appears there. Addresses are allocated by the plugin itself in a data
//! directory (see [`crate::ipam`]). So ADD needs a running agent only for
//! the lease, and DEL, GC and `netfab ipam` work with the agent down.
pub mod attach;
pub mod install;
pub mod types;

use std::{collections::BTreeSet, path::PathBuf};

use ipnet::Ipv4Net;
use serde_json::Value;

use self::types::{code, AddResult, CniError, Interface, NetConf, SUPPORTED};
use crate::{
    addr::{MacAddr, GATEWAY_MAC},
    ipam::{Allocation, Ipam, IpamError},
    netlink::Netlink,
    rundir::{
        endpoints::{self, LocalEndpoint},
        LeaseFile, Status,
    },
};

/// The CNI_* environment, as the runtime set it.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
        }
    }

    fn require(&self, names: &[&str]) -> Result<(), CniError> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| match *n {
                "CNI_CONTAINERID" => self.container_id.is_none(),
                "CNI_NETNS" => self.netns.is_none(),
                "CNI_IFNAME" => self.ifname.is_none(),
                _ => false,
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                code::INVALID_ENV,
                format!("missing environment variables: {}", missing.join(", ")),
            ))
        }
    }
}

/// Runs one plugin invocation; returns (exit code, stdout).
pub fn run(env: &Env, stdin: &[u8]) -> (i32, String) {
    let mut version = "1.1.0".to_string();
    match dispatch(env, stdin, &mut version) {
        Ok(Some(v)) => (0, v.to_string()),
        Ok(None) => (0, String::new()),
        Err(e) => (1, e.to_json(&version).to_string()),
    }
}

fn dispatch(env: &Env, stdin: &[u8], version: &mut String) -> Result<Option<Value>, CniError> {
    let Some(cmd) = env.command.as_deref() else {
        return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"));
    };
    if cmd == "VERSION" {
        let asked = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .filter(|v| SUPPORTED.contains(&v.as_str()))
            .unwrap_or_else(|| "1.1.0".into());
        return Ok(Some(
            serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED}),
        ));
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(code::DECODE, "cannot decode the network configuration")
            .details(e.to_string())
    })?;
    *version = conf.negotiate()?;
    if conf.kind != "netfab-cni" && conf.kind != "netfab" {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("type is `{}`, not netfab-cni", conf.kind),
        ));
    }
    conf.validate()?;
    match cmd {
        "ADD" => add(env, &conf, version).map(Some),
        "DEL" => del(env, &conf).map(|()| None),
        "CHECK" => check(env, &conf).map(|()| None),
        "GC" => gc(&conf).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND `{other}` is not supported"),
        )),
    }
}

fn run_dir(conf: &NetConf) -> PathBuf {
    PathBuf::from(&conf.run_dir)
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO, "cannot start a runtime").details(e.to_string()))
}

/// What the agent's lease file says about the configured network.
struct Lease {
    subnet: Ipv4Net,
    mtu: u32,
    /// The network's whole CIDR (absent from older agents' files).
    cidr: Option<Ipv4Net>,
}

/// This host's subnet in the configured network, and the container MTU.
fn lease(conf: &NetConf) -> Result<Lease, CniError> {
    let path = run_dir(conf).join(crate::rundir::LEASES);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        CniError::new(code::TRY_AGAIN, "this host has no subnet yet").details(format!(
            "{} is missing: is the netfab agent running?",
            path.display()
        ))
    })?;
    let lf: LeaseFile = serde_json::from_str(&text).map_err(|e| {
        CniError::new(code::IO, format!("{} is unreadable", path.display())).details(e.to_string())
    })?;
    crate::rundir::check_version(&path, lf.version)
        .map_err(|e| CniError::new(code::IO, format!("{e:#}")))?;
    let subnet = lf.subnets.get(&conf.network).copied().ok_or_else(|| {
        let known: Vec<&String> = lf.subnets.keys().collect();
        CniError::new(
            code::INVALID_CONFIG,
            format!("network `{}` does not exist on this host", conf.network),
        )
        .details(format!("networks with a subnet here: {known:?}"))
    })?;
    Ok(Lease {
        subnet,
        mtu: lf.mtu,
        cidr: lf.cidrs.get(&conf.network).copied(),
    })
}

fn endpoints_file(conf: &NetConf) -> PathBuf {
    run_dir(conf).join(crate::rundir::ENDPOINTS)
}

fn ipam(conf: &NetConf) -> Result<Ipam, CniError> {
    Ok(Ipam::open(
        std::path::Path::new(&conf.data_dir),
        &conf.network,
    )?)
}

fn add(env: &Env, conf: &NetConf, version: &str) -> Result<Value, CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let (cid, netns, ifname) = (
        env.container_id.clone().unwrap_or_default(),
        env.netns.clone().unwrap_or_default(),
        env.ifname.clone().unwrap_or_default(),
    );
    check_netns(&netns)?;
    check_ifname(&ifname)?;
    // No agent, no network: fail before allocating, so nothing is left
    // behind and the runtime retries.
    require_agent(conf)?;
    refuse_unenforceable_early(conf)?;
    let Lease { subnet, mtu, cidr } = lease(conf)?;
    let route = route_for(conf, &netns, &ifname, cidr)?;
    let runtime_mac = conf.runtime_mac()?;
    let ipam = ipam(conf)?;
    let host_ifname = attach::host_ifname(&cid, &ifname);
    let alloc = Allocation {
        container_id: cid.clone(),
        ifname: ifname.clone(),
        netns: netns.clone(),
        host_ifname: host_ifname.clone(),
        cni_network: conf.name.clone(),
        bandwidth: bandwidth(conf),
    };
    let ip = ipam.allocate(subnet, &alloc).map_err(|e| match e {
        IpamError::Exhausted(_) => CniError::new(code::EXHAUSTED, e.to_string()),
        IpamError::Io(e) => e.into(),
    })?;
    let gateway = Ipam::gateway(subnet);
    let address = Ipv4Net::new(ip, subnet.prefix_len()).expect("prefix from a valid subnet");
    let mac = runtime_mac.unwrap_or(MacAddr::container_for(ip));
    let wired = runtime()?.block_on(async {
        let host = Netlink::connect()?;
        // A retried ADD finds its own leftovers: start from scratch.
        let _ = host.delete(&host_ifname).await;
        let w = attach::Wiring {
            netns: &netns,
            ifname: &ifname,
            host_ifname: &host_ifname,
            address,
            gateway,
            mtu,
            mac,
            route,
            flow_steering: conf.flow_steering,
        };
        let r = attach::wire(&host, &w).await;
        if r.is_err() {
            let _ = host.delete(&host_ifname).await;
        }
        r
    });
    match wired {
        Ok(()) => {}
        Err(e) => {
            let _ = ipam.release(&cid, &ifname);
            return Err(
                CniError::new(code::IO, "cannot wire the container").details(format!("{e:#}"))
            );
        }
    };
    // Watch before registering, so the agent's report cannot slip by.
    let waiter = crate::rundir::Waiter::watch(&run_dir(conf)).ok();
    let ep = LocalEndpoint {
        ip,
        network: conf.network.clone(),
        host_ifname: host_ifname.clone(),
        mac,
        bandwidth: bandwidth(conf),
    };
    if let Err(e) = endpoints::update(&endpoints_file(conf), |eps| {
        eps.retain(|x| x.ip != ep.ip && x.host_ifname != ep.host_ifname);
        eps.push(ep.clone());
    }) {
        let _ = ipam.release(&cid, &ifname);
        let _ = runtime()
            .map(|rt| rt.block_on(async { Netlink::connect()?.delete(&host_ifname).await }));
        return Err(e.into());
    }
    let host_ifindex = runtime()?
        .block_on(async { Netlink::connect()?.link(&host_ifname).await })?
        .map(|l| l.facts.ifindex)
        .unwrap_or(0);
    let programmed = wait_programmed(conf, ip, host_ifindex, waiter)
        .and_then(|st| bandwidth_enforced(conf, ip, &st));
    if let Err(e) = programmed {
        // Leave nothing behind: the runtime retries from scratch.
        let _ = forget_endpoint(conf, &host_ifname);
        let _ = remove_veth(&host_ifname);
        let _ = ipam.release(&cid, &ifname);
        return Err(e);
    }
    let result = AddResult {
        interfaces: vec![
            Interface {
                name: host_ifname,
                mac: GATEWAY_MAC.to_string(),
                sandbox: None,
                mtu: None,
            },
            Interface {
                name: ifname,
                mac: mac.to_string(),
                sandbox: Some(netns),
                mtu: None,
            },
        ],
        address,
        gateway,
        interface: 1,
        mtu,
        route,
    };
    Ok(result.to_json(version, conf.prev_result.as_ref()))
}

/// The runtime's limits, if it set any.
fn bandwidth(conf: &NetConf) -> Option<crate::bandwidth::Bandwidth> {
    conf.runtime_config.bandwidth.filter(|b| !b.is_unlimited())
}

/// A container with bandwidth limits: how the agent reports it enforces
/// them. Not at all (a fallback dataplane) is refused where the network
/// asks for it (`requireBandwidthEnforcement`), else said on stderr (the
/// runtime's log).
fn bandwidth_enforced(conf: &NetConf, ip: std::net::Ipv4Addr, st: &Status) -> Result<(), CniError> {
    if bandwidth(conf).is_none() {
        return Ok(());
    }
    let how = st.bandwidth.iter().find(|b| b.ip == ip);
    match how {
        Some(b) if b.enforced => Ok(()),
        _ => {
            let why = how.map_or("the agent reports no enforcement for it", |b| {
                b.how.as_str()
            });
            if conf.require_bandwidth_enforcement {
                Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("bandwidth limits cannot be enforced on this host ({} dataplane)", st.dataplane),
                )
                .details(format!(
                    "{why}; the network sets requireBandwidthEnforcement, so the container is refused"
                )))
            } else {
                eprintln!("netfab-cni: bandwidth limits of {ip} are not enforced: {why}");
                Ok(())
            }
        }
    }
}

/// Before anything is made: a limited container on a host whose dataplane
/// enforces no limits (as its last report says) is refused at once where
/// the network requires enforcement. What the agent reports for the
/// programmed container is checked again after (see [`bandwidth_enforced`]).
fn refuse_unenforceable_early(conf: &NetConf) -> Result<(), CniError> {
    if bandwidth(conf).is_none() || !conf.require_bandwidth_enforcement {
        return Ok(());
    }
    let Ok(st) = read_status(&run_dir(conf).join(crate::rundir::STATUS)) else {
        return Ok(());
    };
    if st.dataplane == crate::dataplane::kind::DataplaneKind::Ebpf.as_str() {
        return Ok(());
    }
    Err(CniError::new(
        code::INVALID_CONFIG,
        format!(
            "bandwidth limits cannot be enforced on this host ({} dataplane)",
            st.dataplane
        ),
    )
    .details(
        "only the eBPF dataplane enforces bandwidth limits; the network sets \
         requireBandwidthEnforcement, so the container is refused",
    ))
}

/// Where this attachment routes through its gateway: everything if it owns
/// the default route (and no other attachment does yet), else its
/// network's CIDR.
fn route_for(
    conf: &NetConf,
    netns: &str,
    ifname: &str,
    cidr: Option<Ipv4Net>,
) -> Result<Ipv4Net, CniError> {
    if !conf.default_route {
        return cidr.ok_or_else(|| {
            CniError::new(
                code::TRY_AGAIN,
                format!(
                    "the agent has not published network `{}`'s CIDR yet",
                    conf.network
                ),
            )
        });
    }
    let taken = attach::default_gateways(netns, ifname)
        .map_err(|e| CniError::new(code::IO, format!("reading routes in {netns}: {e:#}")))?;
    if let Some(gw) = taken.first() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("the container already has a default route (via {gw})"),
        )
        .details(
            "only one attachment can own the default route: set \"defaultRoute\": false \
             on netfab's entry for the others",
        ));
    }
    Ok(Ipv4Net::default())
}

/// Waits (up to 10 s) until the agent reports the endpoint as programmed,
/// so the container's first packets are not lost. ADD never reports success
/// for an endpoint no agent serves: with no agent, a stale one, or one that
/// cannot program it in time, the runtime gets "try again later".
fn wait_programmed(
    conf: &NetConf,
    ip: std::net::Ipv4Addr,
    host_ifindex: u32,
    mut waiter: Option<crate::rundir::Waiter>,
) -> Result<Status, CniError> {
    let path = run_dir(conf).join(crate::rundir::STATUS);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // An agent that dies meanwhile will never report: say so at once.
        require_agent(conf)?;
        let st = match read_status(&path) {
            Ok(st) => Some(st),
            // A running agent that has not reported yet (just started, or
            // waiting for etcd): wait for it like for any report, and say
            // what it waits for if the time runs out.
            Err(e) if !path.exists() => {
                if std::time::Instant::now() >= deadline {
                    return Err(e);
                }
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(st) = st {
            if st.programmed.contains(&(ip, host_ifindex)) {
                return Ok(st);
            }
            if std::time::Instant::now() >= deadline {
                return Err(CniError::new(
                    code::TRY_AGAIN,
                    format!("the netfab agent has not programmed {ip} within 10 s"),
                )
                .details(format!(
                    "last report: {} skipped item(s){}",
                    st.skipped.len(),
                    st.skipped
                        .first()
                        .map(|s| format!(", first: {s}"))
                        .unwrap_or_default()
                )));
            }
        }
        // Woken by the agent's next report; polling only without inotify.
        let next = deadline.min(std::time::Instant::now() + LIVENESS_PROBE);
        match waiter.as_mut() {
            Some(w) => {
                if let Err(e) = w.wait_for(crate::rundir::STATUS, next) {
                    eprintln!("netfab-cni: {e:#}; polling instead");
                    waiter = None;
                }
            }
            None => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// How often ADD, while waiting for the agent, checks that it still lives.
const LIVENESS_PROBE: std::time::Duration = std::time::Duration::from_millis(100);

/// A running agent holds its lock; a dead one (even SIGKILLed a moment ago)
/// does not, whatever its last status file says.
fn require_agent(conf: &NetConf) -> Result<(), CniError> {
    let rd = crate::rundir::RunDir::new(run_dir(conf));
    match crate::rundir::agent_alive(&rd) {
        Ok(true) => Ok(()),
        Ok(false) => Err(
            CniError::new(code::TRY_AGAIN, "the netfab agent is not running").details(format!(
                "no process holds {}; start the agent (or wait for it to restart) and retry",
                rd.lock().display()
            )),
        ),
        Err(e) => Err(CniError::new(code::IO, format!("{e:#}"))),
    }
}

fn check_ifname(ifname: &str) -> Result<(), CniError> {
    if !types::valid_ifname(ifname) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME `{ifname}` is not a valid interface name"),
        ));
    }
    Ok(())
}

/// CNI_NETNS must be a network namespace, and not the plugin's own (the
/// host's): wiring that one would put the container end on the host.
fn check_netns(netns: &str) -> Result<(), CniError> {
    use std::os::unix::{ffi::OsStrExt, fs::MetadataExt};
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let bad = |m: String| CniError::new(code::INVALID_ENV, m);
    let meta = std::fs::metadata(netns)
        .map_err(|e| bad(format!("CNI_NETNS {netns} does not exist ({e})")))?;
    let c = std::ffi::CString::new(std::path::Path::new(netns).as_os_str().as_bytes())
        .map_err(|_| bad(format!("CNI_NETNS {netns:?} is not a path")))?;
    // SAFETY: statfs fills a zeroed struct we own, from a NUL-terminated path.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointers live for the duration of the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 || fs.f_type as i64 != NSFS_MAGIC {
        return Err(bad(format!("CNI_NETNS {netns} is not a network namespace")));
    }
    let own = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| CniError::new(code::IO, format!("reading /proc/self/ns/net: {e}")))?;
    if (meta.dev(), meta.ino()) == (own.dev(), own.ino()) {
        return Err(bad(format!(
            "CNI_NETNS {netns} is the plugin's own (the host's) network namespace"
        )));
    }
    Ok(())
}

/// Removes the host veth (and so the pair) if it exists.
fn remove_veth(host_ifname: &str) -> Result<(), CniError> {
    runtime()?.block_on(async { Netlink::connect()?.delete(host_ifname).await.map(|_| ()) })?;
    Ok(())
}

/// Unregisters this attachment's veth, and nothing else: an address is no
/// key here, as another container may hold it by now.
fn forget_endpoint(conf: &NetConf, host_ifname: &str) -> Result<(), CniError> {
    if run_dir(conf).is_dir() {
        endpoints::forget(&endpoints_file(conf), host_ifname)?;
    }
    Ok(())
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
    let cid = env.container_id.clone().unwrap_or_default();
    let ifname = env.ifname.clone().unwrap_or_default();
    check_ifname(&ifname)?;
    let host_ifname = attach::host_ifname(&cid, &ifname);
    // Each step tolerates what is already gone; DEL must be repeatable, and
    // creates nothing that is not there. ADD in reverse: the address is
    // freed last, so no other container can take it while this DEL still
    // tears down what served it.
    forget_endpoint(conf, &host_ifname)?;
    remove_veth(&host_ifname)?;
    if let Some(ipam) = Ipam::open_existing(std::path::Path::new(&conf.data_dir), &conf.network) {
        ipam.release(&cid, &ifname)?;
    }
    Ok(())
}

/// Our address and gateway in a (possibly chained) previous result: the IP
/// entry whose interface is `ifname` inside a sandbox. Entries of other
/// plugins (loopback's 127.0.0.1/8, a second attachment) are not ours.
fn our_ip(prev: &Value, ifname: &str) -> (Option<Ipv4Net>, Option<std::net::Ipv4Addr>) {
    let ifaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let ours = |ip: &&Value| {
        ip["interface"]
            .as_u64()
            .and_then(|i| ifaces.get(i as usize))
            .is_some_and(|i| {
                i["name"].as_str() == Some(ifname)
                    && i["sandbox"].as_str().is_some_and(|s| !s.is_empty())
            })
    };
    let ips = prev["ips"].as_array().cloned().unwrap_or_default();
    let Some(ip) = ips.iter().find(ours) else {
        return (None, None);
    };
    (
        ip["address"].as_str().and_then(|a| a.parse().ok()),
        ip["gateway"].as_str().and_then(|g| g.parse().ok()),
    )
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let cid = env.container_id.clone().unwrap_or_default();
    let ifname = env.ifname.clone().unwrap_or_default();
    let netns = env.netns.clone().unwrap_or_default();
    check_netns(&netns)?;
    check_ifname(&ifname)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
    let (want, want_gw) = our_ip(prev, &ifname);
    let mut problems = Vec::new();
    let held: Vec<_> = ipam(conf)?
        .list()?
        .into_iter()
        .filter(|(_, a)| a.container_id == cid && a.ifname == ifname)
        .collect();
    if want.is_none() {
        problems.push(format!("prevResult has no address for {ifname}"));
    }
    match (&want, held.first()) {
        (Some(w), Some((ip, _))) if w.addr() != *ip => {
            problems.push(format!("allocation is {ip}, result says {w}"))
        }
        (_, None) => problems.push("no address is allocated for this attachment".into()),
        _ => {}
    }
    let host_ifname = attach::host_ifname(&cid, &ifname);
    let host_ok = runtime()?
        .block_on(async { Netlink::connect()?.link(&host_ifname).await })?
        .is_some();
    if !host_ok {
        problems.push(format!("host veth {host_ifname} is missing"));
    }
    let registered = endpoints::load(&endpoints_file(conf))?
        .into_iter()
        .find(|e| e.host_ifname == host_ifname);
    if registered.is_none() {
        problems.push("the endpoint is not registered with the agent".into());
    }
    match attach::inspect(&netns, &ifname) {
        Ok(None) => problems.push(format!("interface {ifname} is missing in {netns}")),
        Ok(Some(found)) => {
            if let Some(w) = want {
                if !found.nets.contains(&w) {
                    problems.push(format!("{ifname} has {:?}, expected {w}", found.nets));
                }
            }
            match want_gw {
                Some(g) if conf.default_route && !found.default_gateways.contains(&g) => problems
                    .push(format!(
                        "no default route via {g} (have {:?})",
                        found.default_gateways
                    )),
                _ => {}
            }
            if let Some(ep) = registered.filter(|ep| ep.mac != found.mac) {
                problems.push(format!(
                    "{ifname} has MAC {} but netfab delivers to {}: a MAC set after ADD must \
                     reach netfab too (declare the `mac` capability on its entry)",
                    found.mac, ep.mac
                ));
            }
        }
        Err(e) => problems.push(format!("cannot inspect {netns}: {e:#}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(code::CHECK_FAILED, "attachment differs from the ADD result")
                .details(problems.join("; ")),
        )
    }
}

/// Releases every allocation of this CNI network (the configuration's
/// `name`) not in the valid list. Other CNI networks sharing the netfab
/// network and data directory are not this GC's to judge.
fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: BTreeSet<(String, String)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let Some(ipam) = Ipam::open_existing(std::path::Path::new(&conf.data_dir), &conf.network)
    else {
        return Ok(());
    };
    for (ip, a) in ipam.list()? {
        if a.cni_network != conf.name || valid.contains(&(a.container_id.clone(), a.ifname.clone()))
        {
            continue;
        }
        forget_endpoint(conf, &a.host_ifname)?;
        remove_veth(&a.host_ifname)?;
        ipam.release_ip(ip)?;
    }
    Ok(())
}

/// The agent's last report, if it is recent. Errors say why the agent
/// cannot be relied on.
fn read_status(path: &std::path::Path) -> Result<Status, CniError> {
    let st: Status = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| not_reported(path))?;
    crate::rundir::check_version(path, st.version)
        .map_err(|e| CniError::new(code::IO, format!("{e:#}")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let age = now.saturating_sub(st.applied_at);
    if age > STALE_SECS {
        return Err(
            CniError::new(code::TRY_AGAIN, "the netfab agent is not responding")
                .details(format!("its last report is {age} s old")),
        );
    }
    Ok(st)
}

/// No status yet. Callers checked the agent's lock first, so the agent
/// runs: say what it waits for, not that it is missing.
fn not_reported(status: &std::path::Path) -> CniError {
    let waiting = status
        .parent()
        .and_then(|d| crate::rundir::read_waiting(&d.join(crate::rundir::WAITING)));
    match waiting {
        Some(w) => CniError::new(
            code::TRY_AGAIN,
            format!(
                "the netfab agent runs but is not ready: it waits for {}",
                w.reason
            ),
        )
        .details(format!(
            "node {}, waiting for {} s; retry once it has reported",
            w.node,
            crate::agent::status::now_secs().saturating_sub(w.since)
        )),
        None => CniError::new(
            code::TRY_AGAIN,
            "the netfab agent runs but has not reported yet",
        )
        .details(format!("no status at {} yet", status.display())),
    }
}

/// Ready when the agent reports recently and is connected to etcd.
fn status(conf: &NetConf) -> Result<(), CniError> {
    require_agent(conf).map_err(|e| e.with_code(code::NOT_AVAILABLE))?;
    let path = run_dir(conf).join(crate::rundir::STATUS);
    let st = read_status(&path).map_err(|e| e.with_code(code::NOT_AVAILABLE))?;
    if !st.etcd_connected {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            "the netfab agent cannot reach etcd",
        ));
    }
    // Ready means an ADD for this network could succeed now.
    let Lease { subnet, .. } = lease(conf).map_err(|e| e.with_code(code::NOT_AVAILABLE))?;
    let used = Ipam::open_existing(std::path::Path::new(&conf.data_dir), &conf.network)
        .map(|i| i.list().map(|l| l.len()))
        .transpose()?
        .unwrap_or(0);
    // Every host address but the gateway can be a container's.
    let capacity = subnet.hosts().count().saturating_sub(1);
    if used >= capacity {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "network `{}` is exhausted on this host: all {capacity} addresses of {subnet} are allocated",
                conf.network
            ),
        ));
    }
    Ok(())
}

/// The agent reports at least every resync interval (10 s by default).
const STALE_SECS: u64 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finds_our_address_among_other_plugins_entries() {
        // loopback put 127.0.0.1/8 first; a second attachment sits in the
        // same sandbox under another name.
        let prev = serde_json::json!({
            "interfaces": [
                {"name": "lo", "sandbox": "/run/netns/c"},
                {"name": "nf0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                {"name": "eth0", "sandbox": "/run/netns/c"},
                {"name": "eth1", "sandbox": "/run/netns/c"}
            ],
            "ips": [
                {"address": "127.0.0.1/8", "interface": 0},
                {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2},
                {"address": "10.245.1.5/24", "gateway": "10.245.1.1", "interface": 3}
            ]
        });
        let (ip, gw) = our_ip(&prev, "eth0");
        assert_eq!(ip, Some("10.244.1.5/24".parse().unwrap()));
        assert_eq!(gw, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(
            our_ip(&prev, "eth1").0,
            Some("10.245.1.5/24".parse().unwrap())
        );
        // The host-side interface (no sandbox) never matches.
        assert_eq!(our_ip(&prev, "nf0123456789a"), (None, None));
    }
}
