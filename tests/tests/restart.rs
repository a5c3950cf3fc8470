//! Agents stopped (SIGTERM) and killed (SIGKILL) and started again while a
//! TCP stream and a 10 ms ping run: the pinned links and maps keep
//! forwarding, and the new agent adopts them and gets its subnet back.
use std::time::Duration;

use netfab_lab::{
    self as lab,
    demo::{iperf3, IperfServer},
};
use netfab_tests::{guards::LabGuard, require_privileges, traffic::Pinger};

#[test]
fn agent_restarts_during_a_tcp_stream_lose_no_ping() {
    require_privileges!();
    let lab = LabGuard::up("rs", 2, 1);
    let t = lab.topo.clone();
    let subnets_before: Vec<_> = t.all_hosts().map(|h| lab::read_leases(&t, h)).collect();
    let _server = IperfServer::start(&t.container_ns(1, 1), 5201).unwrap();
    let server_ip = t.container_ip(1, 1).to_string();
    let client_ns = t.container_ns(2, 1);
    let stream = std::thread::spawn(move || iperf3(&client_ns, &server_ip, 5201, 8, 1));
    // 600 pings, one every 10 ms: about six seconds of traffic.
    let pinger = Pinger::start(
        &t.container_ns(1, 1),
        &t.container_ip(2, 1).to_string(),
        600,
    );
    std::thread::sleep(Duration::from_millis(800));
    for (h, hard) in [(1, false), (2, true)] {
        lab::stop_agent(&t.name, h, hard).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        lab::start_agent(&t, h, None).unwrap();
        lab::wait_programmed(&t, Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let st = pinger.finish();
    eprintln!(
        "pings during two agent restarts: {}/{} replies",
        st.received, st.sent
    );
    assert_eq!(st.sent, 600);
    assert_eq!(st.received, st.sent, "replies lost across agent restarts");
    let gbps = stream
        .join()
        .unwrap()
        .expect("the TCP stream survived the restarts");
    eprintln!("TCP stream across the restarts: {gbps:.2} Gbit/s");

    for h in t.all_hosts() {
        let log = lab::agent_log(&t, h);
        assert_eq!(
            log.matches("dataplane ebpf: ").count(),
            2,
            "host {h} log:\n{log}"
        );
        // The restarted agent took over its own lease key: same subnet.
        let leased: Vec<&str> = log
            .lines()
            .filter_map(|l| l.split("network default: leased ").nth(1))
            .collect();
        let before =
            subnets_before[h as usize - 1].as_ref().unwrap().subnets["default"].to_string();
        assert_eq!(leased, vec![before.as_str(); 2], "host {h} kept its subnet");
    }
}
