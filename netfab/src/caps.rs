//! The capabilities this process holds, read from `/proc/self/status`, so
//! the agent can say which one is missing instead of reporting a bare
//! "Operation not permitted".
use anyhow::{Context, Result};

/// A capability the agent may need, with its number and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

pub const NET_ADMIN: Cap = Cap {
    name: "CAP_NET_ADMIN",
    bit: 12,
    why: "links, addresses, routes, neighbours, iptables, qdiscs, TC attachments",
};
pub const BPF: Cap = Cap {
    name: "CAP_BPF",
    bit: 39,
    why: "creating the maps and loading the TC programs",
};

pub const PERFMON: Cap = Cap {
    name: "CAP_PERFMON",
    bit: 38,
    why: "the verifier refuses the programs (Permission denied) to a loader without it",
};
/// Implies CAP_PERFMON's rights for the verifier; broader than needed.
pub const SYS_ADMIN: Cap = Cap {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "stands in for CAP_PERFMON",
};

/// What loading the eBPF dataplane lacks: CAP_BPF, and CAP_PERFMON unless
/// CAP_SYS_ADMIN stands in for it.
pub fn missing_for_ebpf() -> Vec<Cap> {
    let mut lacking = missing(&[BPF]);
    if missing(&[PERFMON, SYS_ADMIN]).len() == 2 {
        lacking.push(PERFMON);
    }
    lacking
}

/// The effective set, as the kernel reports it (`CapEff`).
pub fn effective() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff in /proc/self/status")?;
    u64::from_str_radix(hex.trim(), 16).context("parsing CapEff")
}

/// Those of `caps` the process lacks.
pub fn missing(caps: &[Cap]) -> Vec<Cap> {
    let Ok(eff) = effective() else {
        return Vec::new();
    };
    caps.iter()
        .copied()
        .filter(|c| eff & (1u64 << c.bit) == 0)
        .collect()
}

/// "CAP_X (why), CAP_Y (why)".
pub fn describe(caps: &[Cap]) -> String {
    caps.iter()
        .map(|c| format!("{} ({})", c.name, c.why))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read() {
        // Whoever runs the unit tests holds some set; it parses.
        effective().unwrap();
        assert_eq!(
            describe(&[NET_ADMIN]),
            "CAP_NET_ADMIN (links, addresses, routes, neighbours, iptables, qdiscs, TC attachments)"
        );
    }
}
