//! The eBPF dataplane: TC programs on each container veth and on a
//! collect-metadata VXLAN device, driven by pinned maps.
//!
//! Layout in bpffs (`pin_dir`, default /sys/fs/bpf/netfab/<node>):
//!   NF_*            the maps (pinned by the loader, adopted on restart)
//!   links/<if>_ingress   one TCX link per attachment point
pub mod attach;
pub mod maps;
pub mod object;
pub mod tables;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{
        SchedClassifier,
        TcAttachType::{self, Egress, Ingress},
    },
    Ebpf, EbpfLoader,
};
use log::{info, warn};
use netfab_common::{programs, EncapConfig, ENCAP_F_NATIVE};

use self::{maps::BpfMaps, tables::LinkFacts};
use super::{kind::VxlanEncap, ApplyMode, ApplyReport, Dataplane};
use crate::{
    addr::MacAddr,
    netlink::{neigh::Neigh, routes::HostRoute, Netlink, Touched, VxlanSpec, VXLAN_OVERHEAD},
    state::DesiredState,
};

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/netfab";

pub struct EbpfDataplane {
    ebpf: Ebpf,
    maps: BpfMaps,
    pin_dir: PathBuf,
    netlink: Netlink,
    host: super::host::HostPlumbing,
    /// What the maps and the VXLAN device's neighbours held after the last
    /// apply: a `Changes` apply writes only the difference from these.
    written: Option<tables::Tables>,
    vtep_neighs: Option<BTreeSet<Neigh>>,
    encap: VxlanEncap,
    /// Outer UDP source ports, [min, max), as the kernel's VXLAN device
    /// picks them in this namespace.
    src_ports: (u16, u16),
}

/// This namespace's ephemeral port range as [min, max): where the kernel's
/// VXLAN device picks outer source ports (`udp_flow_src_port`).
fn local_port_range() -> (u16, u16) {
    let parsed = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        });
    match parsed {
        Some((min, max)) if max > min => (min, max.saturating_add(1)),
        _ => (32768, 61000),
    }
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .context("running mount for bpffs")?;
    if !status.success() {
        return Err(anyhow!("mounting bpffs at /sys/fs/bpf failed ({status})"));
    }
    Ok(())
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

impl EbpfDataplane {
    /// Loads the programs, creating or adopting the pinned maps in `pin_dir`.
    pub fn load(object: &Path, pin_dir: &Path) -> Result<Self> {
        ensure_bpffs()?;
        std::fs::create_dir_all(links_dir(pin_dir))
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load_file(object)
            .with_context(|| format!("loading eBPF object {}", object.display()))?;
        for name in [
            programs::FROM_CONTAINER,
            programs::FROM_OVERLAY,
            programs::FROM_UNDERLAY,
            programs::FROM_HOST,
        ] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifying/loading program {name}"))?;
        }
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_log_reader(logger),
            Err(e) => warn!("eBPF logs unavailable: {e}"),
        }
        let maps = BpfMaps::open(pin_dir)?;
        let netlink = Netlink::connect()?;
        Ok(Self {
            ebpf,
            maps,
            pin_dir: pin_dir.to_path_buf(),
            netlink,
            host: Default::default(),
            written: None,
            vtep_neighs: None,
            encap: VxlanEncap::default(),
            src_ports: local_port_range(),
        })
    }

    /// How frames to remote hosts get their VXLAN headers from now on.
    pub fn set_encap(&mut self, encap: VxlanEncap) {
        self.encap = encap;
    }

    /// What NF_ENCAP should hold for this host.
    fn encap_config(&self, underlay_ip: std::net::Ipv4Addr, port: u16) -> EncapConfig {
        EncapConfig {
            underlay_ip: u32::from_ne_bytes(underlay_ip.octets()),
            port: port.to_be(),
            flags: match self.encap {
                VxlanEncap::Native => ENCAP_F_NATIVE,
                VxlanEncap::Device => 0,
            },
            src_port_min: self.src_ports.0,
            src_port_max: self.src_ports.1,
        }
    }

    /// Proves that a TC program can really be attached here: attaches the
    /// container program to a throw-away veth and removes both again.
    pub async fn probe_attach(&mut self) -> Result<()> {
        const PROBE: &str = "nfprobe0";
        let _ = self.netlink.delete(PROBE).await;
        self.netlink.add_veth(PROBE, "nfprobe1").await?;
        let result = (|| -> Result<()> {
            let prog = classifier(&mut self.ebpf, programs::FROM_CONTAINER)?;
            let id = prog
                .attach(PROBE, aya::programs::TcAttachType::Ingress)
                .context("attaching a TC program to a probe veth")?;
            prog.detach(id).context("detaching the probe program")?;
            Ok(())
        })();
        self.netlink.delete(PROBE).await?;
        result
    }

    pub fn maps(&self) -> &BpfMaps {
        &self.maps
    }

    /// Creates or adopts the VXLAN device; returns it, the underlay's ifindex
    /// and the underlay address with its prefix.
    async fn ensure_vxlan(
        &mut self,
        state: &DesiredState,
    ) -> Result<(LinkFacts, u32, ipnet::Ipv4Net)> {
        let (underlay, ip) = self.netlink.underlay(&state.underlay_interface).await?;
        let spec = VxlanSpec {
            name: state.vxlan_device.clone(),
            port: state.vxlan_port,
            underlay_ifindex: underlay.facts.ifindex,
            mac: MacAddr::vtep_for(ip.addr()),
            mtu: underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
        };
        let (dev, touched) = self.netlink.ensure_vxlan(&spec).await?;
        if touched == Touched::Yes {
            // Its neighbour table is empty now, whatever was written.
            self.vtep_neighs = None;
        }
        Ok((dev, underlay.facts.ifindex, ip))
    }

    /// Attaches (or re-attaches) each program to its interface and drops
    /// pins of interfaces that are no longer wanted. Returns the interfaces
    /// that now run their program.
    fn attach_all(
        &mut self,
        wanted: &[(String, &'static str, TcAttachType)],
        report: &mut ApplyReport,
    ) -> Result<BTreeSet<String>> {
        let dir = links_dir(&self.pin_dir);
        let mut ok = BTreeSet::new();
        for (ifname, program, hook) in wanted {
            let prog = classifier(&mut self.ebpf, program)?;
            let pin = attach::link_pin_path(&dir, ifname, *hook);
            match attach::attach(prog, ifname, *hook, &pin) {
                Ok(_) => {
                    ok.insert(ifname.clone());
                }
                Err(e) => {
                    warn!("{ifname}: {e:#}");
                    report.skipped.push(super::Skip {
                        item: super::SkipItem::Attach(ifname.clone()),
                        reason: format!("{e:#}"),
                    });
                }
            }
        }
        let names: BTreeSet<String> = wanted
            .iter()
            .map(|(i, _, hook)| attach::link_pin_name(i, *hook))
            .collect();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !names.contains(&name) {
                info!("detaching stale link {name}");
                attach::detach(&entry.path())?;
            }
        }
        Ok(ok)
    }
}

/// Egress limits are paced by departure time where fq on the underlay
/// holds packets until then; without fq (this kernel may lack sch_fq) the
/// same accounting polices them: what would leave later than the pacing
/// horizon is dropped. Traffic that stays on the host is policed either
/// way (no qdisc holds it). Ingress is always policed (a token bucket).
/// Each limited container is reported with how.
fn pace_on_underlay(state: &DesiredState, report: &mut ApplyReport) {
    let limited: Vec<_> = state
        .endpoints
        .iter()
        .filter(|e| e.bandwidth.is_some_and(|b| !b.is_unlimited()))
        .collect();
    if limited.is_empty() {
        return;
    }
    let egress = if limited
        .iter()
        .any(|e| e.bandwidth.is_some_and(|b| b.limits_egress()))
    {
        match super::qdisc::ensure_fq(&state.underlay_interface) {
            Ok(added) => {
                if added {
                    info!(
                        "egress bandwidth limits in use: fq is now the root qdisc of {}",
                        state.underlay_interface
                    );
                }
                format!(
                    "egress paced by departure time (fq on {}), policed for what stays on \
                     this host",
                    state.underlay_interface
                )
            }
            Err(e) => {
                warn!("egress bandwidth limits are policed, not paced: {e:#}");
                format!(
                    "egress policed, not paced: beyond a 500 ms queue at the rate packets are \
                     dropped (no fq on {}: {e:#})",
                    state.underlay_interface
                )
            }
        }
    } else {
        String::new()
    };
    for ep in limited {
        let b = ep.bandwidth.unwrap_or_default();
        let mut how = Vec::new();
        if b.limits_egress() {
            how.push(egress.clone());
        }
        if b.ingress_rate > 0 {
            how.push(format!(
                "ingress policed by a token bucket of {} bytes",
                b.rate_limit().ingress_burst_bytes
            ));
        }
        report.bandwidth.push(super::BandwidthEnforcement {
            ip: ep.ip,
            enforced: true,
            how: how.join("; "),
        });
    }
}

impl EbpfDataplane {
    /// The routes that carry the host's own packets into the fabric: one per
    /// network this host is in, its whole CIDR through the VXLAN device,
    /// where `from_host` picks the peer and the path (direct or VXLAN) from
    /// the maps, so the kernel holds nothing per peer. Each route's next hop
    /// is the local subnet's network address, with one permanent neighbour
    /// (the frame's addresses are rewritten in `from_host`); its source is
    /// the local gateway, which every peer accepts. A state file that does
    /// not give the network's CIDR gets a route per remote subnet instead,
    /// through the same next hop.
    async fn host_paths(
        &mut self,
        state: &DesiredState,
        vxlan: LinkFacts,
        mode: ApplyMode,
        report: &mut ApplyReport,
    ) -> Result<Vec<HostRoute>> {
        let mut routes = Vec::new();
        let mut neighs = BTreeSet::new();
        for n in &state.networks {
            let hop = n.subnet.network();
            let src = Some(crate::addr::gateway_of(n.subnet));
            let route = |dst| HostRoute {
                dst,
                gateway: Some(hop),
                oif: vxlan.ifindex,
                onlink: true,
                src,
            };
            match state.cluster_cidrs.iter().find(|c| c.contains(&n.subnet)) {
                Some(cidr) => routes.push(route(cidr.trunc())),
                None => routes.extend(
                    state
                        .remotes
                        .iter()
                        .filter(|r| r.vni == n.vni)
                        .map(|r| route(r.subnet.trunc())),
                ),
            }
            neighs.insert(Neigh {
                ifindex: vxlan.ifindex,
                ip: hop,
                mac: vxlan.mac,
            });
        }
        // Trusted from the last apply, or read back (a repair, or when one
        // must go: deleting takes the kernel's own message).
        let written = match (mode, self.vtep_neighs.take()) {
            (ApplyMode::Changes, Some(w)) if w.is_subset(&neighs) => w,
            _ => {
                let have = self.netlink.neigh_list_ip(vxlan.ifindex).await?;
                let mut kept = BTreeSet::new();
                for (n, msg) in have {
                    if neighs.contains(&n) {
                        kept.insert(n);
                    } else {
                        self.netlink.neigh_del(msg).await?;
                        report.map_removals += 1;
                    }
                }
                kept
            }
        };
        for n in neighs.difference(&written) {
            self.netlink.neigh_replace(n).await?;
        }
        self.vtep_neighs = Some(neighs);
        Ok(routes)
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

fn spawn_log_reader(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // The datapath logs drops at debug level; forward them to `log`.
    // SAFETY: the fd is the logger's ring buffer map, owned by the logger,
    // which the AsyncFd owns for its whole life.
    match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    } {
        Ok(mut fd) => {
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        break;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => warn!("eBPF log reader: {}", e.into_parts().1),
    }
}

impl Dataplane for EbpfDataplane {
    async fn apply(&mut self, state: &DesiredState, mode: ApplyMode) -> Result<ApplyReport> {
        let (vxlan, underlay_ifindex, underlay_net) = self.ensure_vxlan(state).await?;
        let links = self.netlink.links().await?;
        let facts: HashMap<String, LinkFacts> =
            links.iter().map(|(n, d)| (n.clone(), d.facts)).collect();
        let (mut tables, skipped) =
            tables::desired_tables(state, &facts, Some(vxlan), underlay_ifindex);
        tables.encap = self.encap_config(underlay_net.addr(), state.vxlan_port);
        // Maps before attachments: a new container's first packet must find
        // its endpoint entry, or it would be dropped as spoofed.
        // Forgotten until the write succeeds: after a failure the next
        // apply reads the maps back.
        let written = self.written.take().filter(|_| mode == ApplyMode::Changes);
        let (map_upserts, map_removals) = self.maps.apply(&tables, written.as_ref())?;
        self.written = Some(tables);
        // The underlay always gets its program: it delivers direct peers'
        // packets and drops plain IP for containers from anyone else (without
        // it the host stack would route such packets in).
        let mut wanted: Vec<(String, &'static str, TcAttachType)> = vec![
            (state.vxlan_device.clone(), programs::FROM_OVERLAY, Ingress),
            (state.vxlan_device.clone(), programs::FROM_HOST, Egress),
            (
                state.underlay_interface.clone(),
                programs::FROM_UNDERLAY,
                Ingress,
            ),
        ];
        let veths: BTreeSet<&String> = state
            .endpoints
            .iter()
            .filter(|e| facts.contains_key(&e.host_ifname))
            .map(|e| &e.host_ifname)
            .collect();
        wanted.extend(
            veths
                .into_iter()
                .map(|v| (v.clone(), programs::FROM_CONTAINER, Ingress)),
        );
        let mut report = ApplyReport {
            map_upserts,
            map_removals,
            skipped,
            paths: super::peer_paths(self.kind(), &state.remotes, underlay_net),
            ..Default::default()
        };
        let attached = self.attach_all(&wanted, &mut report)?;
        report.attached = attached.len();
        let routes = self.host_paths(state, vxlan, mode, &mut report).await?;
        pace_on_underlay(state, &mut report);
        self.host
            .apply(
                &self.netlink,
                super::host::HostWanted {
                    state,
                    links: &links,
                    routes,
                    fallback: None,
                },
                mode,
                &mut report,
            )
            .await?;
        // A container is served only once its veth runs the program.
        report.programmed_endpoints.retain(|(ip, _)| {
            state
                .endpoints
                .iter()
                .any(|e| e.ip == *ip && attached.contains(&e.host_ifname))
        });
        Ok(report)
    }

    fn kind(&self) -> crate::dataplane::kind::DataplaneKind {
        crate::dataplane::kind::DataplaneKind::Ebpf
    }
}
