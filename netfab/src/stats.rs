//! `netfab stats`: the datapath's counters, read from the pinned maps.
use std::path::Path;

use anyhow::Result;

use crate::dataplane::ebpf::maps::{BpfMaps, Counters};

pub fn read(pin_dir: &Path) -> Result<Counters> {
    BpfMaps::open(pin_dir)?.counters()
}

pub fn render(c: &Counters) -> String {
    let mut out = String::from("direction          packets          bytes\n");
    for (name, t) in &c.traffic {
        out += &format!("{name:<16} {:>9} {:>14}\n", t.packets, t.bytes);
    }
    out += "drop reason        packets\n";
    for (name, n) in &c.drops {
        out += &format!("{name:<16} {n:>9}\n");
    }
    out
}
