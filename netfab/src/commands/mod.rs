//! One file per subcommand; arguments shared between them live here.
pub mod agent;
pub mod install;
pub mod ipam;
pub mod network;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use netfab::{
    dataplane::ebpf::DEFAULT_PIN_ROOT,
    state::DEFAULT_VXLAN_DEVICE,
    store::{etcd::EtcdConfig, DEFAULT_PREFIX},
};

#[derive(Args, Clone)]
pub struct HostArgs {
    /// This host's name in the cluster [default: netns name, else hostname]
    /// (Kubernetes: `NODE_NAME` from `spec.nodeName`; it names the pin
    /// directory, so `netfab stats` in the pod finds the agent's maps).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Network namespace (as in `ip netns`) to act in.
    #[arg(long)]
    pub netns: Option<String>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/netfab/<node>]
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_VXLAN_DEVICE)]
    pub vxlan_device: String,
}

#[derive(Args, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated.
    #[arg(
        long,
        global = true,
        env = "NETFAB_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this fabric in etcd.
    #[arg(long, global = true, env = "NETFAB_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd; enables TLS.
    #[arg(long, global = true, env = "NETFAB_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, global = true, env = "NETFAB_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, global = true, env = "NETFAB_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// Seconds each etcd request may take.
    #[arg(long, global = true, default_value_t = 3)]
    pub etcd_timeout_secs: u64,
}

impl EtcdArgs {
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            timeout: Duration::from_secs(self.etcd_timeout_secs.max(1)),
        }
    }
}

/// The etcd endpoints as IPv4 socket addresses (names resolved once).
pub fn etcd_addrs(endpoints: &[String]) -> Result<Vec<std::net::SocketAddrV4>> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let mut out = Vec::new();
    for e in endpoints {
        let hostport = e
            .split_once("://")
            .map_or(e.as_str(), |(_, r)| r)
            .trim_end_matches('/');
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:2379")
        };
        let addrs = hostport
            .to_socket_addrs()
            .with_context(|| format!("resolving etcd endpoint {e}"))?;
        out.extend(addrs.filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        }));
    }
    Ok(out)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "local".into())
}

/// The node name: explicit, else the namespace name, else the hostname.
pub fn node_name(h: &HostArgs) -> String {
    h.node
        .as_deref()
        .or(h.netns.as_deref())
        .map(str::to_string)
        .unwrap_or_else(hostname)
}

pub fn pin_dir(h: &HostArgs, node: &str) -> PathBuf {
    h.pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT).join(node))
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
