//! The lab's names and addresses. Hosts, containers and networks count
//! from 1.
//!
//!   underlay   100.64.0.0/24 on bridge br0 in namespace <name>-ul
//!   etcd       namespace <name>-etcd, 100.64.0.254 (etcd mode); member m
//!              of a cluster in <name>-etcd<m> at .(255-m)
//!   proxy      `etcd grpc-proxy` in namespace <name>-etcdp, 100.64.0.249
//!   host h     namespace <name>-h<h>, eth0 = 100.64.0.<h>
//!   network n  "default" (n = 1) or "net<n>", CIDR 10.<243+n>.0.0/16, VNI n
//!   container  namespace <name>-h<h>-c<c>, in network ((c-1) mod N) + 1,
//!              address from the host's subnet of that network (.1 is the
//!              gateway, containers from .2)
//!
//! Host subnets are leased from etcd in etcd mode (and recorded here once
//! known); in static mode host h gets 10.<243+n>.<h>.0/24.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use netfab::{
    addr::MacAddr,
    dataplane::ebpf::DEFAULT_PIN_ROOT,
    dataplane::{kind::VxlanEncap, select::Choice},
    network::{DataplanePref, NetworkConfig},
    rundir::LocalEndpoint,
    state::{
        DesiredState, EndpointSpec, Network, RemoteHostSubnet, DEFAULT_VXLAN_DEVICE,
        DEFAULT_VXLAN_PORT,
    },
};

pub use netfab::addr::GATEWAY_MAC;
pub const UNDERLAY_MTU: u32 = 1500;
pub const CONTAINER_MTU: u32 = UNDERLAY_MTU - netfab::netlink::VXLAN_OVERHEAD;
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 254);
/// Below every member's address (.254 down to .250).
pub const ETCD_PROXY_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 249);
/// "The outside world": an address outside every cluster network, held by
/// the underlay namespace (RFC 2544 benchmarking range, never routed beyond
/// the lab's namespaces).
pub const WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn default_resync() -> u32 {
    5000
}
fn default_grace() -> u32 {
    3600
}
fn one() -> u32 {
    1
}
fn auto() -> Choice {
    Choice::Auto
}
fn yes() -> bool {
    true
}
fn container_mtu() -> u32 {
    CONTAINER_MTU
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Control {
    /// Subnets leased from a real etcd server started by the lab.
    Etcd,
    /// Each agent gets a fixed state file (etcd-less mode).
    Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSubnet {
    pub host: u32,
    pub network: u32,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    pub hosts: u32,
    pub containers: u32,
    pub networks: u32,
    pub control: Control,
    pub lease_ttl: u32,
    /// Agents' --resync-secs, in milliseconds.
    #[serde(default = "default_resync")]
    pub resync_ms: u32,
    /// Agents' --lease-grace-secs.
    #[serde(default = "default_grace")]
    pub lease_grace: u32,
    /// etcd serves TLS and requires client certificates (the default).
    #[serde(default)]
    pub etcd_tls: bool,
    /// L2 segments of the underlay, joined by a router; hosts alternate.
    #[serde(default = "one")]
    pub segments: u32,
    /// `--dataplane` of every agent.
    #[serde(default = "auto")]
    pub dataplane: Choice,
    /// Hosts whose agent runs without CAP_BPF and CAP_SYS_ADMIN, so eBPF is
    /// really unavailable to it.
    #[serde(default)]
    pub no_bpf_hosts: Vec<u32>,
    /// Run every agent with exactly these capabilities (names as in a pod's
    /// `securityContext`, say `NET_ADMIN`), as a container runtime would.
    #[serde(default)]
    pub agent_caps: Option<Vec<String>>,
    /// etcd members, each in its own namespace on the underlay (1 or 3).
    #[serde(default = "one")]
    pub etcd_members: u32,
    /// An `etcd grpc-proxy` in front of the members; agents are given only
    /// the proxy, which coalesces their identical watches.
    #[serde(default)]
    pub etcd_proxy: bool,
    /// The lab wires hosts and etcd only: networks, agents and containers
    /// are the caller's (a test acting as operator and kubelet).
    #[serde(default)]
    pub external_agents: bool,
    /// `--vxlan-encap` of every eBPF agent, except the hosts listed in
    /// `device_encap_hosts`, which use the VXLAN device.
    #[serde(default)]
    pub vxlan_encap: VxlanEncap,
    #[serde(default)]
    pub device_encap_hosts: Vec<u32>,
    /// Direct routing between hosts on one segment (per network).
    #[serde(default = "yes")]
    pub direct_routing: bool,
    /// Containers' flows steered to one CPU each (`flowSteering`).
    #[serde(default)]
    pub flow_steering: bool,
    /// Container MTU (from the agents in etcd mode).
    #[serde(default = "container_mtu")]
    pub container_mtu: u32,
    /// Known host subnets (all of them once the lab is up).
    pub subnets: Vec<HostSubnet>,
    /// Container addresses handed out by the CNI plugin (etcd mode).
    #[serde(default)]
    pub assigned: Vec<AssignedIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedIp {
    pub host: u32,
    pub container: u32,
    pub ip: Ipv4Addr,
}

impl Topology {
    pub fn new(name: &str, hosts: u32, containers: u32) -> Result<Self> {
        Self::with(name, hosts, containers, 1, Control::Etcd)
    }

    pub fn with(
        name: &str,
        hosts: u32,
        containers: u32,
        networks: u32,
        control: Control,
    ) -> Result<Self> {
        if name.is_empty()
            || name.len() > 10
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("lab name `{name}` must be 1-10 characters of letters, digits and '-'");
        }
        if !(1..=200).contains(&hosts) || !(1..=200).contains(&containers) {
            bail!("hosts and containers per host must each be between 1 and 200");
        }
        if !(1..=8).contains(&networks) {
            bail!("networks must be between 1 and 8");
        }
        let mut t = Self {
            name: name.into(),
            hosts,
            containers,
            networks,
            control,
            lease_ttl: 10,
            lease_grace: default_grace(),
            resync_ms: default_resync(),
            etcd_tls: true,
            segments: 1,
            dataplane: Choice::Auto,
            no_bpf_hosts: Vec::new(),
            agent_caps: None,
            external_agents: false,
            etcd_members: 1,
            etcd_proxy: false,
            vxlan_encap: VxlanEncap::default(),
            device_encap_hosts: Vec::new(),
            direct_routing: true,
            flow_steering: false,
            container_mtu: CONTAINER_MTU,
            subnets: Vec::new(),
            assigned: Vec::new(),
        };
        if control == Control::Static {
            for h in 1..=hosts {
                for n in 1..=networks {
                    let o = t.network_cidr(n).network().octets();
                    let subnet = Ipv4Net::new(Ipv4Addr::new(o[0], o[1], h as u8, 0), 24)?;
                    t.subnets.push(HostSubnet {
                        host: h,
                        network: n,
                        subnet,
                    });
                }
            }
        }
        Ok(t)
    }

    pub fn underlay_ns(&self) -> String {
        format!("{}-ul", self.name)
    }
    /// etcd member 1's namespace (the one the lab's clients use).
    pub fn etcd_ns(&self) -> String {
        self.etcd_ns_of(1)
    }
    pub fn etcd_ns_of(&self, m: u32) -> String {
        match m {
            1 => format!("{}-etcd", self.name),
            _ => format!("{}-etcd{m}", self.name),
        }
    }
    /// Member `m`'s underlay address: .254, .253, ...
    pub fn etcd_ip_of(&self, m: u32) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, 0, 255 - m as u8)
    }
    pub fn etcd_members(&self) -> impl Iterator<Item = u32> {
        1..=self.etcd_members
    }
    /// Every member's client URL, comma separated (what agents are given).
    pub fn etcd_endpoints(&self) -> String {
        self.etcd_members()
            .map(|m| self.etcd_url_of(m))
            .collect::<Vec<_>>()
            .join(",")
    }
    /// What agents are given: the proxy when there is one, else every member.
    pub fn agent_endpoints(&self) -> String {
        if self.etcd_proxy {
            self.etcd_proxy_url()
        } else {
            self.etcd_endpoints()
        }
    }
    pub fn etcd_proxy_ns(&self) -> String {
        format!("{}-etcdp", self.name)
    }
    pub fn etcd_proxy_url(&self) -> String {
        format!("{}://{ETCD_PROXY_IP}:2379", self.scheme())
    }
    /// Addresses etcd's server certificate must name: every member's, and
    /// the proxy's (it serves with the same certificate).
    pub fn etcd_server_ips(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<_> = self.etcd_members().map(|m| self.etcd_ip_of(m)).collect();
        if self.etcd_proxy {
            ips.push(ETCD_PROXY_IP);
        }
        ips
    }
    pub fn etcd_url_of(&self, m: u32) -> String {
        format!("{}://{}:2379", self.scheme(), self.etcd_ip_of(m))
    }
    fn scheme(&self) -> &'static str {
        if self.etcd_tls {
            "https"
        } else {
            "http"
        }
    }
    pub fn etcd_url(&self) -> String {
        self.etcd_url_of(1)
    }
    /// etcd as seen from inside its own namespace.
    pub fn etcd_local_url(&self) -> String {
        format!("{}://127.0.0.1:2379", self.scheme())
    }
    /// How host `h`'s eBPF agent encapsulates VXLAN.
    pub fn encap_of(&self, h: u32) -> VxlanEncap {
        if self.device_encap_hosts.contains(&h) {
            VxlanEncap::Device
        } else {
            self.vxlan_encap
        }
    }
    pub fn host_ns(&self, h: u32) -> String {
        format!("{}-h{h}", self.name)
    }
    pub fn container_ns(&self, h: u32, c: u32) -> String {
        format!("{}-h{h}-c{c}", self.name)
    }
    /// The underlay segment host `h` sits on (1-based).
    pub fn segment(&self, h: u32) -> u32 {
        (h - 1) % self.segments.max(1) + 1
    }
    pub fn host_ip(&self, h: u32) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, (self.segment(h) - 1) as u8, h as u8)
    }
    /// The underlay namespace routes between segments at .250 of each.
    pub fn router_ip(&self, seg: u32) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, (seg - 1) as u8, 250)
    }
    pub fn bridge(&self, seg: u32) -> String {
        format!("br{}", seg - 1)
    }
    pub fn host_veth(&self, c: u32) -> String {
        format!("nfc{c}")
    }
    pub fn pin_dir(&self, h: u32) -> PathBuf {
        PathBuf::from(DEFAULT_PIN_ROOT).join(self.host_ns(h))
    }
    pub fn all_hosts(&self) -> impl Iterator<Item = u32> {
        1..=self.hosts
    }
    pub fn all_containers(&self) -> Vec<(u32, u32)> {
        self.all_hosts()
            .flat_map(|h| (1..=self.containers).map(move |c| (h, c)))
            .collect()
    }

    pub fn network_name(&self, n: u32) -> String {
        if n == 1 {
            "default".into()
        } else {
            format!("net{n}")
        }
    }
    pub fn network_cidr(&self, n: u32) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, (243 + n) as u8, 0, 0), 16).expect("valid prefix")
    }
    pub fn network_config(&self, n: u32) -> NetworkConfig {
        NetworkConfig {
            name: self.network_name(n),
            cidr: self.network_cidr(n),
            subnet_len: 24,
            vni: n,
            port: DEFAULT_VXLAN_PORT,
            dataplane: DataplanePref::Auto,
            direct_routing: self.direct_routing,
            min_agent_version: None,
        }
    }
    /// The network container `c` belongs to.
    pub fn container_network(&self, c: u32) -> u32 {
        (c - 1) % self.networks + 1
    }

    pub fn subnet(&self, h: u32, n: u32) -> Option<Ipv4Net> {
        self.subnets
            .iter()
            .find(|s| s.host == h && s.network == n)
            .map(|s| s.subnet)
    }
    fn subnet_or_panic(&self, h: u32, n: u32) -> Ipv4Net {
        self.subnet(h, n)
            .unwrap_or_else(|| panic!("host {h} has no subnet in network {n} (lab not up?)"))
    }
    pub fn gateway(&self, h: u32, n: u32) -> Ipv4Addr {
        offset(self.subnet_or_panic(h, n), 1)
    }
    pub fn container_ip(&self, h: u32, c: u32) -> Ipv4Addr {
        if let Some(a) = self
            .assigned
            .iter()
            .find(|a| a.host == h && a.container == c)
        {
            return a.ip;
        }
        let n = self.container_network(c);
        offset(self.subnet_or_panic(h, n), (c - 1) / self.networks + 2)
    }

    /// Host `h`'s local containers, as the agent reads them in etcd mode.
    pub fn endpoints(&self, h: u32) -> Vec<LocalEndpoint> {
        (1..=self.containers)
            .map(|c| LocalEndpoint {
                ip: self.container_ip(h, c),
                network: self.network_name(self.container_network(c)),
                host_ifname: self.host_veth(c),
                mac: MacAddr::container_for(self.container_ip(h, c)),
                bandwidth: None,
            })
            .collect()
    }

    /// The desired state of host `h`'s dataplane in static mode.
    pub fn state(&self, h: u32) -> DesiredState {
        let nets = 1..=self.networks;
        DesiredState {
            underlay_interface: "eth0".into(),
            vxlan_port: DEFAULT_VXLAN_PORT,
            vxlan_device: DEFAULT_VXLAN_DEVICE.into(),
            networks: nets
                .clone()
                .map(|n| Network {
                    name: self.network_name(n),
                    vni: n,
                    subnet: self.subnet_or_panic(h, n),
                })
                .collect(),
            remotes: self
                .all_hosts()
                .filter(|&o| o != h)
                .flat_map(|o| nets.clone().map(move |n| (o, n)))
                .map(|(o, n)| RemoteHostSubnet {
                    subnet: self.subnet_or_panic(o, n),
                    vni: n,
                    underlay_ip: self.host_ip(o),
                    vtep_mac: MacAddr::vtep_for(self.host_ip(o)),
                    direct: false,
                })
                .collect(),
            endpoints: self
                .endpoints(h)
                .into_iter()
                .map(|e| EndpointSpec {
                    ip: e.ip,
                    vni: self
                        .network_config(self.container_network_by_name(&e.network))
                        .vni,
                    host_ifname: e.host_ifname,
                    mac: e.mac,
                    bandwidth: None,
                })
                .collect(),
            masquerade: true,
            cluster_cidrs: (1..=self.networks).map(|n| self.network_cidr(n)).collect(),
            etcd_endpoints: Vec::new(),
            log_drops: false,
        }
    }

    fn container_network_by_name(&self, name: &str) -> u32 {
        (1..=self.networks)
            .find(|&n| self.network_name(n) == name)
            .unwrap_or(1)
    }

    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn offset(net: Ipv4Net, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let t = Topology::with("lab", 3, 4, 2, Control::Static).unwrap();
        assert_eq!(t.host_ns(2), "lab-h2");
        assert_eq!(t.container_ns(2, 1), "lab-h2-c1");
        assert_eq!(t.container_network(3), 1);
        assert_eq!(t.container_network(4), 2);
        assert_eq!(t.container_ip(3, 1).to_string(), "10.244.3.2");
        assert_eq!(t.container_ip(3, 3).to_string(), "10.244.3.3");
        assert_eq!(t.container_ip(3, 2).to_string(), "10.245.3.2");
        assert_eq!(t.gateway(3, 2).to_string(), "10.245.3.1");
        assert_eq!(t.all_containers().len(), 12);
    }

    #[test]
    fn every_static_state_is_valid_and_sees_all_other_hosts() {
        let t = Topology::with("lab", 3, 2, 2, Control::Static).unwrap();
        for h in t.all_hosts() {
            let s = t.state(h);
            s.validate().unwrap();
            assert_eq!(s.remotes.len(), 4);
            assert!(s.remotes.iter().all(|r| r.underlay_ip != t.host_ip(h)));
            assert_eq!(s.endpoints[1].vni, 2);
        }
    }

    #[test]
    fn etcd_mode_knows_no_subnets_until_leased() {
        let t = Topology::new("lab", 2, 1).unwrap();
        assert_eq!(t.subnet(1, 1), None);
        assert!(t.network_config(1).validate().is_ok());
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Topology::new("bad name", 2, 2).is_err());
        assert!(Topology::new("much-too-long", 2, 2).is_err());
        assert!(Topology::new("ok", 0, 2).is_err());
        assert!(Topology::new("ok", 2, 201).is_err());
        assert!(Topology::with("ok", 2, 2, 9, Control::Etcd).is_err());
    }
}
