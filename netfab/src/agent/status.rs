//! What `netfab status` shows: the dataplane in use and why, and per network
//! and per peer the path packets take and why. The agent writes it to a
//! JSON file after every apply; pure to build.
use std::collections::BTreeMap;

use ipnet::Ipv4Net;

pub use crate::rundir::{NetworkStatus, PeerStatus, Rejected, Status};
use crate::{dataplane::ApplyReport, state::DesiredState, store::Snapshot};

pub struct StatusInput<'a> {
    pub node: &'a str,
    pub dataplane: &'a str,
    pub reason: &'a str,
    pub underlay: Option<Ipv4Net>,
    pub container_mtu: u32,
    pub snap: &'a Snapshot,
    pub state: &'a DesiredState,
    pub report: &'a ApplyReport,
    pub etcd_connected: bool,
    pub rejected: Vec<Rejected>,
    /// Retained peers: subnet, node, seconds since its lease went.
    pub retained: Vec<(Ipv4Net, String, u64)>,
    pub applies: u64,
}

pub fn build(i: StatusInput<'_>, applied_at: u64) -> Status {
    let mut owners: BTreeMap<Ipv4Net, String> = i
        .snap
        .leases
        .values()
        .flat_map(|m| m.iter().map(|(s, l)| (*s, l.node.clone())))
        .collect();
    for (sn, node, _) in &i.retained {
        owners.entry(*sn).or_insert_with(|| node.clone());
    }
    let networks = i
        .state
        .networks
        .iter()
        .map(|n| {
            let peers = i
                .report
                .paths
                .iter()
                .filter(|p| p.vni == n.vni)
                .map(|p| PeerStatus {
                    node: owners.get(&p.subnet).cloned().unwrap_or_default(),
                    subnet: p.subnet,
                    underlay_ip: p.underlay_ip,
                    path: p.path.as_str().into(),
                    reason: p.reason.clone(),
                })
                .collect();
            NetworkStatus {
                name: n.name.clone(),
                vni: n.vni,
                subnet: n.subnet,
                peers,
            }
        })
        .collect();
    Status {
        version: crate::rundir::FORMAT_VERSION,
        node: i.node.into(),
        dataplane: i.dataplane.into(),
        reason: i.reason.into(),
        underlay: i.underlay,
        container_mtu: i.container_mtu,
        networks,
        endpoints: i.state.endpoints.len(),
        remotes: i.state.remotes.len(),
        refused: i.report.refused.clone(),
        skipped: i.report.skipped.iter().map(|s| s.to_string()).collect(),
        applied_at,
        etcd_connected: i.etcd_connected,
        endpoint_ips: i
            .report
            .programmed_endpoints
            .iter()
            .map(|(ip, _)| *ip)
            .collect(),
        programmed: i.report.programmed_endpoints.clone(),
        retained: i
            .retained
            .iter()
            .map(|(sn, node, age)| {
                format!("{sn} of node {node}: lease gone {age} s ago, still routed (grace)")
            })
            .collect(),
        rejected: i.rejected,
        applies: i.applies,
        bandwidth: i.report.bandwidth.clone(),
    }
}

/// Seconds since the epoch, as `applied_at` records them.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes the status file atomically (readers never see half a file).
pub fn write(path: &std::path::Path, st: &Status) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(st)?;
    crate::rundir::write_atomic(path, &text)
}

pub fn render(s: &Status) -> String {
    let mut out = format!(
        "node {}  dataplane {}  ({})\nunderlay {}  container MTU {}\n",
        s.node,
        s.dataplane,
        s.reason,
        s.underlay.map(|u| u.to_string()).unwrap_or_default(),
        s.container_mtu
    );
    for n in &s.networks {
        out += &format!(
            "network {} (VNI {}): this host {}\n",
            n.name, n.vni, n.subnet
        );
        for p in &n.peers {
            out += &format!(
                "  {:<18} {:<12} {:<15} {:<8} {}\n",
                p.subnet.to_string(),
                p.node,
                p.underlay_ip.to_string(),
                p.path,
                p.reason
            );
        }
    }
    for r in &s.refused {
        out += &format!("refused: {r}\n");
    }
    for r in &s.skipped {
        out += &format!("not programmed: {r}\n");
    }
    for b in &s.bandwidth {
        out += &format!("bandwidth {}: {}\n", b.ip, b.how);
    }
    for r in &s.retained {
        out += &format!("retained: {r}\n");
    }
    for r in &s.rejected {
        out += &format!("rejected: {}: {}\n", r.key, r.reason);
    }
    out
}
