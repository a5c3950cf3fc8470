//! What every backend needs from the host stack: IP forwarding, a /32 route
//! and a permanent neighbour per local container (the host's own traffic and
//! NAT replies reach containers through them; the stack-routed backends
//! forward through them), the backend's routes, and the iptables chains.
use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use log::warn;

use super::{iptables, ApplyReport};
use crate::{
    netlink::{neigh::Neigh, routes::HostRoute, LinkDetail, Netlink},
    reconcile::diff,
    state::DesiredState,
};

/// What a stack-routed backend needs the host firewall to check for it
/// (eBPF checks these in its programs).
#[derive(Debug, Clone, Default)]
pub struct FallbackGuards {
    /// (kernel VXLAN device, the remote subnets of its VNI).
    pub vxlan_devices: Vec<(String, Vec<ipnet::Ipv4Net>)>,
    /// Remote subnets routed over the underlay without encapsulation.
    pub direct_sources: Vec<ipnet::Ipv4Net>,
}

#[derive(Default)]
pub struct HostPlumbing {
    last_rules: Option<String>,
    /// The routes last written (what a `Changes` apply diffs against).
    routes: Option<BTreeMap<ipnet::Ipv4Net, HostRoute>>,
}

fn ensure_forwarding() -> Result<()> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p)
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    // In a non-privileged pod /proc/sys is read-only: the node must have
    // forwarding on already, as Kubernetes requires of every node.
    std::fs::write(p, "1").map_err(|e| {
        anyhow::anyhow!(
            "IP forwarding is off and enabling it failed ({e}): \
             set net.ipv4.ip_forward=1 on the node"
        )
    })
}

/// The host's own packets to a remote subnet leave from this host's gateway
/// address in the same network: the peer accepts that source (it is this
/// host's subnet) where it drops the underlay address as a spoofer's, and
/// the container's reply is routed back through the fabric unmasqueraded.
/// Returns the lookup from remote subnet to that address (built once per
/// apply: a search per route would cost N² at N peers).
fn local_gateways(state: &DesiredState) -> impl Fn(ipnet::Ipv4Net) -> Option<std::net::Ipv4Addr> {
    let by_vni: std::collections::HashMap<u32, std::net::Ipv4Addr> = state
        .networks
        .iter()
        .map(|n| (n.vni, crate::addr::gateway_of(n.subnet)))
        .collect();
    let vni: std::collections::HashMap<ipnet::Ipv4Net, u32> =
        state.remotes.iter().map(|r| (r.subnet, r.vni)).collect();
    move |remote| by_vni.get(vni.get(&remote)?).copied()
}

/// What a backend asks of the host plumbing.
pub struct HostWanted<'a> {
    pub state: &'a DesiredState,
    pub links: &'a HashMap<String, LinkDetail>,
    /// The backend's routes to remote subnets.
    pub routes: Vec<HostRoute>,
    /// The stack-routed backends' extra guards (none for eBPF).
    pub fallback: Option<FallbackGuards>,
}

impl HostPlumbing {
    /// Reconciles every route with netfab's protocol number to the endpoint
    /// routes plus the backend's.
    pub async fn apply(
        &mut self,
        nl: &Netlink,
        wanted: HostWanted<'_>,
        mode: super::ApplyMode,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let HostWanted {
            state,
            links,
            routes: backend_routes,
            fallback,
        } = wanted;
        ensure_forwarding()?;
        // The host holds each local subnet's gateway (see netlink::gateways).
        let gateways = state
            .networks
            .iter()
            .map(|n| crate::addr::gateway_of(n.subnet))
            .collect();
        nl.set_gateways(&gateways).await?;
        let local_gateway_for = local_gateways(state);
        let mut desired: BTreeMap<ipnet::Ipv4Net, HostRoute> = backend_routes
            .into_iter()
            .map(|mut r| {
                r.src = r.src.or_else(|| local_gateway_for(r.dst));
                (r.dst, r)
            })
            .collect();
        for e in &state.endpoints {
            let Some(link) = links.get(&e.host_ifname) else {
                continue;
            };
            let dst = ipnet::Ipv4Net::new(e.ip, 32).expect("/32 is valid");
            // A container deleted since the links were listed (churn) is
            // skipped, never a failed apply for every other container.
            if let Err(err) = nl
                .neigh_replace(&Neigh {
                    ifindex: link.facts.ifindex,
                    ip: e.ip,
                    mac: e.mac,
                })
                .await
            {
                report.skipped.push(super::Skip {
                    item: super::SkipItem::Endpoint(e.ip),
                    reason: format!("{err:#}"),
                });
                continue;
            }
            desired.insert(
                dst,
                HostRoute {
                    dst,
                    gateway: None,
                    oif: link.facts.ifindex,
                    onlink: false,
                    src: None,
                },
            );
            report.programmed_endpoints.push((e.ip, link.facts.ifindex));
        }
        let actual = match (mode, self.routes.take()) {
            (super::ApplyMode::Changes, Some(written)) => written,
            _ => nl
                .our_routes()
                .await?
                .into_iter()
                .map(|r| (r.dst, r))
                .collect(),
        };
        let d = diff(&desired, &actual);
        let mut failed = Vec::new();
        for (_, r) in &d.upserts {
            if let Err(e) = nl.route_replace(r).await {
                warn!("{e:#}");
                failed.push(r.dst);
                // A container's own /32 that cannot be routed is not served.
                report
                    .programmed_endpoints
                    .retain(|(ip, _)| r.dst.prefix_len() != 32 || *ip != r.dst.addr());
                report.skipped.push(super::Skip {
                    item: super::SkipItem::Route(r.dst),
                    reason: format!("{e:#}"),
                });
            }
        }
        for k in &d.removals {
            nl.route_del(&actual[k]).await?;
        }
        // What is in the kernel now; a failed route is retried next time.
        for dst in failed {
            desired.remove(&dst);
        }
        self.routes = Some(desired);
        report.map_upserts += d.upserts.len();
        report.map_removals += d.removals.len();

        let local: Vec<ipnet::Ipv4Net> = state.networks.iter().map(|n| n.subnet).collect();
        let mut input = iptables::RuleInput {
            masquerade: state.masquerade,
            local_subnets: local.clone(),
            cluster: state.cluster_cidrs.clone(),
            vxlan_port: state.vxlan_port,
            etcd: state.etcd_endpoints.clone(),
            ..Default::default()
        };
        if let Some(f) = &fallback {
            for e in state
                .endpoints
                .iter()
                .filter(|e| e.bandwidth.is_some_and(|b| !b.is_unlimited()))
            {
                report.bandwidth.push(super::BandwidthEnforcement {
                    ip: e.ip,
                    enforced: false,
                    how: "not enforced: bandwidth limits are enforced by the eBPF dataplane \
                          only, and this host runs a fallback"
                        .into(),
                });
            }
            // eBPF checks sources in from_container; the stack-routed
            // backends need a rule per container veth.
            input.endpoints = state
                .endpoints
                .iter()
                .filter(|e| links.contains_key(&e.host_ifname))
                .map(|e| (e.host_ifname.clone(), e.ip))
                .collect();
            input.known_hosts = Some(state.remotes.iter().map(|r| r.underlay_ip).collect());
            input.vxlan_devices = f.vxlan_devices.clone();
            input.underlay = Some((state.underlay_interface.clone(), f.direct_sources.clone()));
        }
        let rules = iptables::ruleset(&input);
        let unchanged = self.last_rules.as_deref() == Some(rules.as_str());
        if !unchanged {
            log::info!(
                "iptables: masquerade {} for {local:?}",
                if state.masquerade { "on" } else { "off" }
            );
        }
        // Checked against the kernel at every repair (rules flushed by hand
        // come back); a change apply with the same rules costs no process.
        if !unchanged || mode == super::ApplyMode::Repair {
            iptables::apply(&rules, unchanged)?;
        }
        self.last_rules = Some(rules);
        Ok(())
    }
}
