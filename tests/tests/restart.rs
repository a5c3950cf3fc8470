//! Agents killed with SIGKILL and started again while traffic flows: the
//! pinned links and maps keep forwarding, and the new agent adopts them.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use netfab::lab::{self, demo::parse_ping};
use netfab_tests::{guards::LabGuard, require_privileges};

#[test]
fn agent_kill_and_restart_loses_no_ping() {
    require_privileges!();
    let lab = LabGuard::up("rs", 2, 1);
    let t = &lab.topo;
    // 600 pings, one every 10 ms: about six seconds of traffic.
    let pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.container_ns(1, 1),
            "ping",
            "-n",
            "-q",
            "-c",
            "600",
            "-i",
            "0.01",
            "-W",
            "1",
        ])
        .arg(t.container_ip(2, 1).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for h in [1, 2] {
        lab::stop_agent(&t.name, h, true).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        lab::start_agent(t, h, None).unwrap();
        lab::wait_programmed(t, Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = pinger.wait_with_output().unwrap();
    let st = parse_ping(&String::from_utf8_lossy(&out.stdout)).unwrap();
    eprintln!(
        "pings during two agent restarts: {}/{} replies",
        st.received, st.sent
    );
    assert_eq!(st.sent, 600);
    assert_eq!(st.received, st.sent, "replies lost across agent restarts");

    // The restarted agents adopted the links instead of creating new ones.
    for h in [1, 2] {
        let log =
            std::fs::read_to_string(lab::state_dir(&t.name).join(format!("h{h}.log"))).unwrap();
        let loads = log.matches("dataplane ebpf loaded").count();
        assert_eq!(loads, 2, "host {h} log:\n{log}");
    }
}
