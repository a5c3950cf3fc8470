//! `/metrics` in the Prometheus text format (0.0.4): `netfab_` prefix,
//! `_total` for counters, base units (`_seconds`, `_bytes`). Pure: the
//! caller reads the pinned maps.
use std::{collections::BTreeMap, fmt::Write};

use super::observed::{Observed, APPLY_BUCKETS};
use crate::dataplane::ebpf::{
    maps::{Counters, TrafficSum},
    tables::Tables,
};

/// Entries and capacity per pinned map.
pub fn occupancy(t: &Tables) -> Vec<(&'static str, usize, u32)> {
    use netfab_common::*;
    vec![
        ("endpoints", t.endpoints.len(), MAX_ENDPOINTS),
        ("remote_subnets", t.remote_subnets.len(), MAX_REMOTE_SUBNETS),
        ("known_hosts", t.known_hosts.len(), MAX_HOSTS),
        ("networks", t.networks.len(), MAX_NETWORKS),
        ("guards", t.guards.len(), MAX_GUARDS),
        ("rate_limits", t.rate_limits.len(), MAX_ENDPOINTS),
    ]
}

/// One counter of a direction's traffic sum.
type Pick = fn(&TrafficSum) -> u64;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        let _ = writeln!(self.0, "{name}{labels} {v}");
    }
    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], v);
    }
}

pub fn render(
    o: &Observed,
    counters: Option<&Counters>,
    maps: &[(&'static str, usize, u32)],
) -> String {
    let mut m = Out(String::new());
    m.family("netfab_build_info", "gauge", "The running netfab version.");
    m.sample(
        "netfab_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    m.gauge(
        "netfab_ready",
        "1 when the agent is ready (as /readyz).",
        o.ready().is_ok() as u8 as f64,
    );
    if let Some(st) = &o.status {
        m.family(
            "netfab_dataplane_info",
            "gauge",
            "The dataplane in use, with why it was chosen.",
        );
        m.sample(
            "netfab_dataplane_info",
            &[("dataplane", &st.dataplane), ("reason", &st.reason)],
            1.0,
        );
        if o.store {
            m.gauge(
                "netfab_etcd_connected",
                "1 while the agent has a live etcd session.",
                st.etcd_connected as u8 as f64,
            );
        }
        m.gauge(
            "netfab_endpoints",
            "Local containers in the applied state.",
            st.endpoints as f64,
        );
        m.gauge(
            "netfab_remote_subnets",
            "Remote subnets in the applied state.",
            st.remotes as f64,
        );
        let mut paths: BTreeMap<&str, usize> = ["direct", "vxlan", "host-gw", "refused"]
            .into_iter()
            .map(|p| (p, 0))
            .collect();
        for p in st.networks.iter().flat_map(|n| &n.peers) {
            *paths.entry(p.path.as_str()).or_default() += 1;
        }
        let unenforced = st.bandwidth.iter().filter(|b| !b.enforced).count();
        m.family(
            "netfab_bandwidth_limited_endpoints",
            "gauge",
            "Local containers with bandwidth limits, by whether the kernel enforces them.",
        );
        for (enforced, n) in [
            ("true", st.bandwidth.len() - unenforced),
            ("false", unenforced),
        ] {
            m.sample(
                "netfab_bandwidth_limited_endpoints",
                &[("enforced", enforced)],
                n as f64,
            );
        }
        m.family(
            "netfab_peers",
            "gauge",
            "Remote subnets by the path their packets take.",
        );
        for (path, n) in paths {
            m.sample("netfab_peers", &[("path", path)], n as f64);
        }
        m.gauge(
            "netfab_skipped_items",
            "Desired items not programmed in the last apply.",
            st.skipped.len() as f64,
        );
        m.gauge(
            "netfab_rejected_entries",
            "Store entries refused as invalid.",
            st.rejected.len() as f64,
        );
        m.family(
            "netfab_applies_total",
            "counter",
            "Dataplane applies since the agent started.",
        );
        m.sample("netfab_applies_total", &[], st.applies as f64);
    }
    if let Some(ttl) = o.lease_ttl_left {
        m.gauge(
            "netfab_lease_ttl_remaining_seconds",
            "Seconds until this host's etcd lease expires without a keep-alive.",
            ttl,
        );
    }
    m.family(
        "netfab_apply_failures_total",
        "counter",
        "Dataplane applies that failed.",
    );
    m.sample("netfab_apply_failures_total", &[], o.apply_failures as f64);
    let h = &o.apply_seconds;
    m.family(
        "netfab_apply_duration_seconds",
        "histogram",
        "Time to program the dataplane.",
    );
    for (le, n) in APPLY_BUCKETS.iter().zip(h.buckets) {
        m.sample(
            "netfab_apply_duration_seconds_bucket",
            &[("le", &le.to_string())],
            n as f64,
        );
    }
    m.sample(
        "netfab_apply_duration_seconds_bucket",
        &[("le", "+Inf")],
        h.count as f64,
    );
    m.sample("netfab_apply_duration_seconds_sum", &[], h.sum);
    m.sample("netfab_apply_duration_seconds_count", &[], h.count as f64);
    if let Some(c) = counters {
        let per_direction: [(&str, &str, Pick); 2] = [
            (
                "netfab_datapath_packets_total",
                "Packets the eBPF datapath handled, by direction.",
                |s| s.packets,
            ),
            (
                "netfab_datapath_bytes_total",
                "Bytes the eBPF datapath handled, by direction.",
                |s| s.bytes,
            ),
        ];
        for (name, help, value) in per_direction {
            m.family(name, "counter", help);
            for (d, s) in &c.traffic {
                m.sample(name, &[("direction", d)], value(s) as f64);
            }
        }
        m.family(
            "netfab_datapath_drops_total",
            "counter",
            "Packets the eBPF datapath dropped, by reason.",
        );
        for (r, n) in &c.drops {
            m.sample("netfab_datapath_drops_total", &[("reason", r)], *n as f64);
        }
    }
    if !maps.is_empty() {
        m.family(
            "netfab_map_entries",
            "gauge",
            "Entries in each pinned eBPF map.",
        );
        for (name, n, _) in maps {
            m.sample("netfab_map_entries", &[("map", name)], *n as f64);
        }
        m.family(
            "netfab_map_capacity",
            "gauge",
            "Capacity of each pinned eBPF map.",
        );
        for (name, _, cap) in maps {
            m.sample("netfab_map_capacity", &[("map", name)], *cap as f64);
        }
    }
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::observed::shared;

    #[test]
    fn every_family_has_help_and_type_and_labels_are_escaped() {
        let o = shared(true);
        let mut o = o.lock().unwrap().clone();
        o.apply_seconds.observe(0.004);
        o.apply_seconds.observe(2.0);
        o.lease_ttl_left = Some(27.5);
        o.status = Some(crate::rundir::Status {
            version: 1,
            node: "h1".into(),
            dataplane: "vxlan".into(),
            reason: "bpf(2) refused: \"Operation not permitted\"".into(),
            underlay: None,
            container_mtu: 1450,
            networks: Vec::new(),
            endpoints: 3,
            remotes: 2,
            refused: Vec::new(),
            skipped: Vec::new(),
            applied_at: 0,
            etcd_connected: false,
            endpoint_ips: Vec::new(),
            programmed: Vec::new(),
            rejected: Vec::new(),
            retained: Vec::new(),
            applies: 7,
            bandwidth: vec![crate::dataplane::BandwidthEnforcement {
                ip: "10.244.1.5".parse().unwrap(),
                enforced: false,
                how: "not enforced".into(),
            }],
        });
        let text = render(&o, None, &[("endpoints", 3, 16384)]);
        for family in [
            "netfab_ready",
            "netfab_dataplane_info",
            "netfab_etcd_connected",
            "netfab_peers",
            "netfab_lease_ttl_remaining_seconds",
            "netfab_apply_duration_seconds",
            "netfab_map_entries",
            "netfab_bandwidth_limited_endpoints",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
        assert!(text.contains(r#"reason="bpf(2) refused: \"Operation not permitted\"""#));
        assert!(text.contains("netfab_ready 0"), "etcd down: not ready");
        assert!(text.contains(r#"netfab_apply_duration_seconds_bucket{le="0.005"} 1"#));
        assert!(text.contains(r#"netfab_apply_duration_seconds_bucket{le="+Inf"} 2"#));
        assert!(text.contains("netfab_applies_total 7"));
        assert!(text.contains(r#"netfab_map_capacity{map="endpoints"} 16384"#));
    }

    #[test]
    fn liveness_ignores_etcd_and_readiness_needs_it() {
        let o = shared(true);
        let mut o = o.lock().unwrap().clone();
        assert!(o.live(std::time::Duration::from_secs(30)).is_ok());
        assert!(o.ready().unwrap_err().contains("not been programmed"));
        o.tick -= std::time::Duration::from_secs(60);
        assert!(o.live(std::time::Duration::from_secs(30)).is_err());
    }
}
