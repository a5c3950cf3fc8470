//! The `vxlan` backend: kernel VXLAN devices, one per network (VNI), set up
//! the way flannel's vxlan backend does it. Why routes + permanent
//! neighbours + FDB entries: the route sends a remote subnet to the remote
//! host's VTEP address on the device (onlink), the neighbour entry gives
//! that address the remote VTEP MAC (so no ARP crosses the overlay), and the
//! FDB entry maps the MAC to the remote underlay IP (so no flooding or
//! learning). Addresses and MACs match what the eBPF backend sends and
//! expects, so both kinds of hosts share one network.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Result;
use log::info;

use super::{
    host::{HostPlumbing, HostWanted},
    ApplyMode, ApplyReport, Dataplane,
};
use crate::{
    addr::MacAddr,
    netlink::{
        neigh::{Fdb, Neigh},
        routes::HostRoute,
        KernelVxlanSpec, Netlink, VXLAN_OVERHEAD,
    },
    state::DesiredState,
};

pub const DEVICE_PREFIX: &str = "nfvx";

pub fn device_name(vni: u32) -> String {
    format!("{DEVICE_PREFIX}{vni}")
}

pub struct KernelVxlanDataplane {
    netlink: Netlink,
    host: HostPlumbing,
}

impl KernelVxlanDataplane {
    pub fn new() -> Result<Self> {
        Ok(Self {
            netlink: Netlink::connect()?,
            host: HostPlumbing::default(),
        })
    }
}

impl Dataplane for KernelVxlanDataplane {
    async fn apply(&mut self, state: &DesiredState, mode: ApplyMode) -> Result<ApplyReport> {
        let nl = &self.netlink;
        let (underlay, unet) = nl.underlay(&state.underlay_interface).await?;
        let mut report = ApplyReport {
            paths: super::peer_paths(self.kind(), &state.remotes, unet),
            ..Default::default()
        };
        let local = unet.addr();
        let mut devs: BTreeMap<u32, u32> = BTreeMap::new();
        for n in &state.networks {
            let spec = KernelVxlanSpec {
                name: device_name(n.vni),
                vni: n.vni,
                port: state.vxlan_port,
                local,
                underlay_ifindex: underlay.facts.ifindex,
                mac: MacAddr::vtep_for(local),
                mtu: underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
            };
            let (dev, _) = nl.ensure_kernel_vxlan(&spec).await?;
            // The subnet's network address is this host's VTEP address.
            nl.addr_ensure(dev.ifindex, ipnet::Ipv4Net::new(n.subnet.network(), 32)?)
                .await?;
            devs.insert(n.vni, dev.ifindex);
        }

        let mut routes = Vec::new();
        let mut neighs: BTreeSet<Neigh> = BTreeSet::new();
        let mut fdbs: BTreeSet<Fdb> = BTreeSet::new();
        for r in &state.remotes {
            if r.direct {
                routes.push(HostRoute {
                    dst: r.subnet,
                    gateway: Some(r.underlay_ip),
                    oif: underlay.facts.ifindex,
                    onlink: false,
                    src: None,
                });
                continue;
            }
            let Some(&dev) = devs.get(&r.vni) else {
                report.skipped.push(super::Skip {
                    item: super::SkipItem::Remote(r.subnet),
                    reason: format!("VNI {} not served here", r.vni),
                });
                continue;
            };
            let vtep = r.subnet.network();
            routes.push(HostRoute {
                dst: r.subnet,
                gateway: Some(vtep),
                oif: dev,
                onlink: true,
                src: None,
            });
            neighs.insert(Neigh {
                ifindex: dev,
                ip: vtep,
                mac: r.vtep_mac,
            });
            fdbs.insert(Fdb {
                ifindex: dev,
                mac: r.vtep_mac,
                dst: r.underlay_ip,
            });
        }
        for f in &fdbs {
            nl.fdb_replace(f).await?;
        }
        for n in &neighs {
            nl.neigh_replace(n).await?;
        }
        // Entries on our devices that nobody wants any more.
        for &dev in devs.values() {
            let (ns, fs) = nl.neigh_list(dev).await?;
            for (n, msg) in ns {
                if !neighs.contains(&n) {
                    nl.neigh_del(msg).await?;
                    report.map_removals += 1;
                }
            }
            for (f, msg) in fs {
                // The all-zero MAC entry is the device's own default; leave it.
                if f.mac != MacAddr::default() && !fdbs.contains(&f) {
                    nl.neigh_del(msg).await?;
                    report.map_removals += 1;
                }
            }
        }
        // Devices of networks this host no longer serves.
        let links = nl.links().await?;
        for name in links.keys().filter(|n| n.starts_with(DEVICE_PREFIX)) {
            let keep = devs.keys().any(|v| &device_name(*v) == name);
            if !keep {
                info!("removing VXLAN device {name} of a network no longer served");
                nl.delete(name).await?;
            }
        }
        let links: HashMap<_, _> = nl.links().await?;
        let guards = super::host::FallbackGuards {
            vxlan_devices: state
                .networks
                .iter()
                .map(|n| {
                    let remote = state
                        .remotes
                        .iter()
                        .filter(|r| r.vni == n.vni && !r.direct)
                        .map(|r| r.subnet)
                        .collect();
                    (device_name(n.vni), remote)
                })
                .collect(),
            direct_sources: state
                .remotes
                .iter()
                .filter(|r| r.direct)
                .map(|r| r.subnet)
                .collect(),
        };
        self.host
            .apply(
                nl,
                HostWanted {
                    state,
                    links: &links,
                    routes,
                    fallback: Some(guards),
                },
                mode,
                &mut report,
            )
            .await?;
        Ok(report)
    }

    fn kind(&self) -> super::kind::DataplaneKind {
        super::kind::DataplaneKind::Vxlan
    }
}
