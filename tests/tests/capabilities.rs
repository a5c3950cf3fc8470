//! The agent with exactly the capabilities the DaemonSet grants, as a
//! container runtime would run it (root, bounding set narrowed): eBPF
//! works with that set, and without any one of them the agent either says
//! which capability it lacks or falls back as documented. A capability
//! the agent works fine without does not belong in the manifest.
use std::time::Duration;

use netfab_lab::{self as lab, topology::Topology};
use netfab_tests::{guards::LabGuard, manifests::agent_capabilities, require_privileges, wait_for};

/// What the agent made of a capability set: its dataplane and reason, or
/// the error it stopped with.
fn outcome(t: &Topology, h: u32) -> Result<(String, String), String> {
    wait_for(
        "the agent to report or stop",
        Duration::from_secs(30),
        || {
            if let Some(st) = lab::read_status(t, h) {
                return Some(Ok((st.dataplane, st.reason)));
            }
            let alive = lab::agent_pid(&t.name, h).is_some_and(|p| {
                // A zombie (reaped only by the lab) has stopped too.
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                !stat.is_empty() && !stat.contains(") Z ")
            });
            (!alive).then(|| Err(lab::agent_log(t, h)))
        },
    )
}

#[test]
fn the_manifest_capabilities_are_enough_and_each_is_needed() {
    require_privileges!();
    let caps = agent_capabilities();
    let mut t = Topology::new("caps", 2, 1).unwrap();
    t.agent_caps = Some(caps.clone());
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    for h in t.all_hosts() {
        let (dp, reason) = outcome(t, h).unwrap_or_else(|log| panic!("host {h}:\n{log}"));
        assert_eq!(dp, "ebpf", "host {h} with {caps:?}: {reason}");
    }
    assert_eq!(lab.ping((1, 1), (2, 1), 3).received, 3);

    for dropped in &caps {
        let mut fewer = t.clone();
        fewer.agent_caps = Some(caps.iter().filter(|c| *c != dropped).cloned().collect());
        lab::stop_agent(&t.name, 1, false).unwrap();
        lab::start_agent(&fewer, 1, None).unwrap();
        let name = format!("CAP_{dropped}");
        match outcome(&fewer, 1) {
            Err(log) => {
                eprintln!("without {name}: the agent stopped");
                assert!(
                    log.contains(&name),
                    "without {name} the error must name it:\n{log}"
                );
            }
            Ok((dp, reason)) => {
                eprintln!("without {name}: {dp} ({reason})");
                assert!(
                    dp != "ebpf" && reason.contains(&name),
                    "the agent runs eBPF without {name}: the manifest's set is not minimal ({reason})"
                );
            }
        }
    }
}
