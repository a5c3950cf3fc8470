//! The `host-gw` backend: a static route to each remote subnet via the
//! remote host's underlay IP. No encapsulation at all, so it only works for
//! peers on this host's L2 segment; others are refused, loudly.
use anyhow::Result;

use super::{
    host::{HostPlumbing, HostWanted},
    ApplyMode, ApplyReport, Dataplane,
};
use crate::{
    netlink::{routes::HostRoute, Netlink},
    state::DesiredState,
};

pub struct HostGwDataplane {
    netlink: Netlink,
    host: HostPlumbing,
}

impl HostGwDataplane {
    pub fn new() -> Result<Self> {
        Ok(Self {
            netlink: Netlink::connect()?,
            host: HostPlumbing::default(),
        })
    }
}

impl Dataplane for HostGwDataplane {
    async fn apply(&mut self, state: &DesiredState, mode: ApplyMode) -> Result<ApplyReport> {
        let nl = &self.netlink;
        let (underlay, unet) = nl.underlay(&state.underlay_interface).await?;
        let mut report = ApplyReport {
            paths: super::peer_paths(self.kind(), &state.remotes, unet),
            ..Default::default()
        };
        let mut routes = Vec::new();
        for r in &state.remotes {
            if !unet.trunc().contains(&r.underlay_ip) {
                report.refused.push(format!(
                    "host-gw cannot route {} via {}: that host is not on this host's L2 segment {}; \
                     use --dataplane vxlan or auto",
                    r.subnet,
                    r.underlay_ip,
                    unet.trunc()
                ));
                continue;
            }
            routes.push(HostRoute {
                dst: r.subnet,
                gateway: Some(r.underlay_ip),
                oif: underlay.facts.ifindex,
                onlink: false,
                src: None,
            });
        }
        let links = nl.links().await?;
        let guards = super::host::FallbackGuards {
            vxlan_devices: Vec::new(),
            direct_sources: routes.iter().map(|r| r.dst).collect(),
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
        super::kind::DataplaneKind::HostGw
    }
}
