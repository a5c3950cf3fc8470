//! `netfab stats`: the datapath's counters, read from the pinned maps.
use std::path::Path;

use anyhow::Result;

use crate::dataplane::ebpf::maps::{BpfMaps, Counters};

pub fn read(pin_dir: &Path) -> Result<Counters> {
    BpfMaps::open(pin_dir)?.counters()
}

pub fn render(c: &Counters) -> String {
    // Columns as wide as their longest name or number, so long drop
    // reasons (foreign_inner_source, guard_tunnel_port) stay aligned.
    let name_w = c
        .traffic
        .keys()
        .map(|n| n.len())
        .chain(c.drops.keys().map(|n| n.len()))
        .chain(["direction".len(), "drop reason".len()])
        .max()
        .unwrap_or(0);
    let num_w = |v: u64| v.to_string().len();
    let pkt_w = c
        .traffic
        .values()
        .map(|t| num_w(t.packets))
        .chain(c.drops.values().map(|n| num_w(*n)))
        .chain(["packets".len()])
        .max()
        .unwrap_or(0);
    let byte_w = c
        .traffic
        .values()
        .map(|t| num_w(t.bytes))
        .chain(["bytes".len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:<name_w$}  {:>pkt_w$}  {:>byte_w$}\n",
        "direction", "packets", "bytes"
    );
    for (name, t) in &c.traffic {
        out += &format!(
            "{name:<name_w$}  {:>pkt_w$}  {:>byte_w$}\n",
            t.packets, t.bytes
        );
    }
    out += &format!("{:<name_w$}  {:>pkt_w$}\n", "drop reason", "packets");
    for (name, n) in &c.drops {
        out += &format!("{name:<name_w$}  {n:>pkt_w$}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::ebpf::maps::TrafficSum;

    /// Every number ends in the same column as its header, whatever the
    /// length of the names.
    #[test]
    fn columns_line_up_for_long_names_and_numbers() {
        let c = Counters {
            traffic: [
                (
                    "to_container",
                    TrafficSum {
                        packets: 5,
                        bytes: 700,
                    },
                ),
                (
                    "from_overlay",
                    TrafficSum {
                        packets: 123_456_789_012,
                        bytes: 98_765_432_109_876,
                    },
                ),
            ]
            .into(),
            drops: [
                ("bad_source", 3),
                ("foreign_inner_source_long_reason", 40_000),
            ]
            .into(),
        };
        let text = render(&c);
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[0];
        let pkt_end = header.find("packets").unwrap() + "packets".len();
        let bytes_end = header.len();
        for l in &lines[1..3] {
            assert_eq!(l.len(), bytes_end, "{l:?}");
            let pkt = l[..pkt_end].split_whitespace().last().unwrap();
            assert!(
                pkt.parse::<u64>().is_ok(),
                "packets ends under its header: {l:?}"
            );
        }
        let drop_header = lines[3];
        assert!(drop_header.starts_with("drop reason"));
        assert_eq!(drop_header.len(), pkt_end);
        for l in &lines[4..] {
            assert_eq!(l.len(), pkt_end, "{l:?}");
        }
        // BTreeMap order: bad_source, then the long one.
        assert!(lines[5].starts_with("foreign_inner_source_long_reason  "));
    }
}
