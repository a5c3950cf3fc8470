//! `netfab agent`, `netfab status`, `netfab cleanup`, `netfab stats`.
use std::{path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use log::{info, warn};
use netfab::{
    agent::{self, fabric, statefile::StateFile, status, LoopConfig},
    dataplane::{
        ebpf::object,
        kind::VxlanEncap,
        select::{self, Choice},
        Dataplane,
    },
    netlink::Netlink,
    netns, stats,
    store::etcd::EtcdSubnets,
};

use super::{node_name, pin_dir, runtime, shutdown_signal, EtcdArgs, HostArgs};

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// etcd-less mode: the whole desired state from this JSON file.
    #[arg(long, conflicts_with = "endpoints_file")]
    state_file: Option<PathBuf>,
    /// The run directory this agent shares with the CNI plugin (its
    /// `runDir`): endpoints.json, leases.json, status.json, agent.lock.
    #[arg(long, env = "NETFAB_RUN_DIR", default_value = netfab::rundir::DEFAULT)]
    run_dir: PathBuf,
    /// The interface whose IPv4 address is this host's tunnel endpoint
    /// [default: the one holding --node-ip, else the default route's].
    #[arg(long, env = "NETFAB_UNDERLAY_INTERFACE")]
    underlay_interface: Option<String>,
    /// This node's IP, to find the underlay interface by (Kubernetes:
    /// `NODE_IP` from `status.hostIP`).
    #[arg(long, env = "NODE_IP")]
    node_ip: Option<std::net::Ipv4Addr>,
    /// Which dataplane: `auto` uses eBPF when it really works here, else
    /// kernel VXLAN.
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    dataplane: Choice,
    /// Source-NAT container traffic to destinations outside the cluster.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ip_masq: bool,
    /// Override: local containers (JSON) [default: <run-dir>/endpoints.json].
    #[arg(long)]
    endpoints_file: Option<PathBuf>,
    /// Override: the subnets this host leased [default: <run-dir>/leases.json].
    #[arg(long)]
    lease_file: Option<PathBuf>,
    /// Override: what `netfab status` shows [default: <run-dir>/status.json].
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// TTL of this host's leases in etcd, seconds. Only decides how soon a
    /// dead host's subnet may be leased again: peers keep routing it for
    /// --lease-grace-secs, so an agent that is down or cut off from etcd
    /// does not cut its containers off.
    #[arg(long, default_value_t = 30)]
    lease_ttl: i64,
    /// How long peers keep routing a subnet whose lease expired, unless
    /// another host leases it first, seconds.
    #[arg(long, default_value_t = 3600)]
    lease_grace_secs: u64,
    /// The compiled eBPF object [default: netfab.bpf.o next to this binary].
    #[arg(long, env = "NETFAB_BPF_OBJECT")]
    bpf_object: Option<PathBuf>,
    /// The CNI plugin's IPAM data directory (its `dataDir`): local
    /// containers are rebuilt from it if the endpoints file is corrupt.
    #[arg(long, default_value = "/var/lib/netfab/ipam")]
    ipam_dir: PathBuf,
    /// Log every datapath drop (the per-reason counters always count).
    #[arg(long)]
    log_drops: bool,
    /// eBPF dataplane: build VXLAN headers in the datapath and send frames
    /// (GSO super-packets whole, and the host's own) straight out of the
    /// underlay interface (`native`), or hand them all to the kernel's VXLAN
    /// device (`device`). The wire format is the same.
    #[arg(long, value_enum, default_value_t = VxlanEncap::Native)]
    vxlan_encap: VxlanEncap,
    /// Give this host's leases up at once when the agent stops (a node
    /// leaving for good). By default they run out their TTL, so a restarted
    /// agent takes them over without a moment of absence.
    #[arg(long)]
    release_on_exit: bool,
    /// Seconds between repairs that read the kernel back and put drift right
    /// (a map entry or route deleted by hand), from the agent's own view of
    /// the cluster, without asking the store (fractions allowed).
    /// At 10,000 peers a repair costs about 0.2 s of CPU (the kernel's
    /// tables read back), hence a minute, not seconds.
    #[arg(long, default_value_t = 60.0)]
    resync_secs: f64,
    /// Seconds between full re-lists of the store, jittered by ±25% so
    /// agents do not re-list together. The watch carries every change in
    /// between; a lost watch or a compaction re-lists at once.
    #[arg(long, default_value_t = 600.0)]
    relist_secs: f64,
    /// The conflist the agent writes once it is ready.
    #[command(flatten)]
    cni: super::install::CniConfArgs,
    /// Where to serve /healthz, /readyz and /metrics (host network), or
    /// `off`.
    #[arg(long, env = "NETFAB_HTTP_LISTEN", default_value = "0.0.0.0:9810")]
    http_listen: String,
}

pub fn run(a: AgentArgs) -> Result<()> {
    // Before any thread exists: setns changes only the calling thread.
    if let Some(ns) = &a.host.netns {
        netns::enter(ns)?;
    }
    let node = node_name(&a.host);
    let pins = pin_dir(&a.host, &node);
    if !(a.resync_secs.is_finite() && a.resync_secs >= 0.05) {
        bail!("--resync-secs must be at least 0.05");
    }
    let resync = Duration::from_secs_f64(a.resync_secs);
    if !(a.relist_secs.is_finite() && a.relist_secs >= 1.0) {
        bail!("--relist-secs must be at least 1");
    }
    let http_listen: Option<std::net::SocketAddr> = match a.http_listen.as_str() {
        "off" | "" => None,
        l => Some(
            l.parse()
                .with_context(|| format!("--http-listen `{l}` is not ADDRESS:PORT or `off`"))?,
        ),
    };
    if a.lease_ttl < 2 {
        bail!("--lease-ttl must be at least 2 seconds");
    }
    let rd = netfab::rundir::RunDir::new(&a.run_dir);
    let endpoints_file = a.endpoints_file.clone().unwrap_or_else(|| rd.endpoints());
    let lease_file = a.lease_file.clone().unwrap_or_else(|| rd.leases());
    let status_file = a.status_file.clone().unwrap_or_else(|| rd.status());
    // Every dataplane programs the host through netlink and iptables.
    let lacking = netfab::caps::missing(&[netfab::caps::NET_ADMIN]);
    if !lacking.is_empty() {
        bail!(
            "the agent is missing {}: grant it (the DaemonSet lists it)",
            netfab::caps::describe(&lacking)
        );
    }
    // One agent per node: two would fight over the same maps and leases.
    let _lock = netfab::rundir::lock_agent(&rd, &node)?;
    // Until the first report, the CNI plugin tells runtimes what we wait for.
    let _ = std::fs::remove_file(&status_file);
    if let Err(e) =
        netfab::rundir::write_waiting(&rd.waiting(), &node, "its start (loading its dataplane)")
    {
        warn!("writing {}: {e:#}", rd.waiting().display());
    }
    runtime()?.block_on(async move {
        let nl = Netlink::connect()?;
        // A state file names its underlay; the flag still wins. A file not
        // valid yet leaves detection to find it (the loop reports the file).
        let from_state_file = a.state_file.as_deref().and_then(|f| {
            netfab::state::DesiredState::load(f)
                .map(|s| s.underlay_interface)
                .map_err(|e| warn!("no underlay interface from {}: {e}", f.display()))
                .ok()
        });
        let underlay_interface = match a.underlay_interface.clone().or(from_state_file) {
            Some(i) => i,
            None => {
                let i = nl.detect_underlay(a.node_ip).await?;
                info!("underlay interface {i} (detected)");
                i
            }
        };
        let (underlay, underlay_net) = nl.underlay(&underlay_interface).await?;
        let sel =
            select::select(
                a.dataplane,
                object::locate(a.bpf_object.as_deref()),
                &pins,
                &a.host.vxlan_device,
            )
            .await?;
        let mut dp = sel.dataplane;
        let mut reason = sel.reason;
        if let select::AnyDataplane::Ebpf(e) = &mut dp {
            e.set_encap(a.vxlan_encap);
            reason += &format!("; VXLAN encapsulation {}", match a.vxlan_encap {
                VxlanEncap::Native => "native (built in eBPF, sent by the underlay interface)",
                VxlanEncap::Device => "by the VXLAN device (--vxlan-encap device)",
            });
        }
        // Without VXLAN (host-gw) a container can use the whole underlay MTU.
        let container_mtu = underlay.mtu.saturating_sub(dp.kind().encap_overhead());
        info!(
            "node {node}: dataplane {}, underlay {underlay_net}, container MTU {container_mtu}",
            dp.name()
        );
        if let Some(dir) = status_file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let observed = netfab::serve::observed::shared(a.state_file.is_none());
        if let Some(listen) = http_listen {
            let sc = netfab::serve::ServeConfig {
                listen,
                pin_dir: pins.clone(),
                // The loop turns at least every resync (and every 200 ms
                // with a store); silence for three resyncs means stuck.
                stale_after: (resync * 3).max(Duration::from_secs(30)),
            };
            netfab::serve::start(sc, observed.clone()).await?;
        }
        write_conflist_when_ready(a.cni.clone(), a.run_dir.clone(), observed.clone());
        let lc = LoopConfig {
            node: node.clone(),
            resync,
            status_file: Some(status_file),
            dataplane_reason: reason,
            underlay_net: Some(underlay_net),
            container_mtu,
            observed: Some(observed),
            waiting_file: Some(rd.waiting()),
        };
        if let Some(state_file) = a.state_file {
            info!("state-file mode: the desired state comes from {}", state_file.display());
            let mut src = StateFile::new(state_file, Duration::from_millis(200));
            agent::run(&lc, &mut src, &mut dp, shutdown_signal()).await?;
            return a.cni.remove();
        }
        let etcd = a.etcd.config();
        let store_addrs = super::etcd_addrs(&etcd.endpoints)?;
        if etcd.endpoints.iter().any(|e| !e.starts_with("https://")) || etcd.ca.is_none() {
            warn!(
                "etcd is reached over plain HTTP ({}): anyone who can reach it can rewrite the \
                 fabric's leases. Use https:// endpoints with --etcd-ca, --etcd-cert and --etcd-key",
                etcd.endpoints.join(",")
            );
        }
        let cni = a.cni.clone();
        let fc = fabric::FabricConfig {
            node,
            underlay_interface,
            underlay_net,
            dataplane: dp.name().to_string(),
            lease_ttl: a.lease_ttl,
            relist: Duration::from_secs_f64(a.relist_secs),
            endpoints_file,
            lease_file: Some(lease_file),
            container_mtu,
            masquerade: a.ip_masq,
            lease_grace: Duration::from_secs(a.lease_grace_secs),
            store_addrs,
            log_drops: a.log_drops,
            ipam_dir: a.ipam_dir,
            release_on_exit: a.release_on_exit,
        };
        let mut src = fabric::Fabric::new(fc, EtcdSubnets::new(etcd));
        agent::run(&lc, &mut src, &mut dp, shutdown_signal()).await?;
        cni.remove()
    })
}

/// Writes the conflist the first time the agent is ready (no runtime sees
/// a configuration before it can work), retrying a failed write.
fn write_conflist_when_ready(
    cni: super::install::CniConfArgs,
    run_dir: PathBuf,
    observed: netfab::serve::observed::Shared,
) {
    if cni.cni_conf_dir.is_none() {
        return;
    }
    tokio::spawn(async move {
        loop {
            let ready = observed.lock().expect("observed state poisoned").ready();
            if ready.is_ok() {
                match cni.write(&run_dir) {
                    Ok(()) => return,
                    Err(e) => warn!("writing the CNI conflist: {e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

pub fn show_status(run_dir: PathBuf, file: Option<PathBuf>, json: bool) -> Result<()> {
    let file = file.unwrap_or_else(|| netfab::rundir::RunDir::new(run_dir).status());
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading {} (is the agent running?)", file.display()))?;
    if json {
        println!("{text}");
        return Ok(());
    }
    let st: netfab::rundir::Status = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not a status file: {e}", file.display()))?;
    netfab::rundir::check_version(&file, st.version)?;
    print!("{}", status::render(&st));
    Ok(())
}

pub fn cleanup(h: HostArgs) -> Result<()> {
    if let Some(ns) = &h.netns {
        netns::enter(ns)?;
    }
    let node = node_name(&h);
    let dir = pin_dir(&h, &node);
    runtime()?.block_on(netfab::dataplane::cleanup::cleanup(&dir, &h.vxlan_device))
}

pub fn show_stats(h: HostArgs, json: bool) -> Result<()> {
    let node = node_name(&h);
    let c = stats::read(&pin_dir(&h, &node))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", stats::render(&c));
    }
    Ok(())
}
