//! The benchmark command runs end to end and produces its table, JSON and
//! chart (a smoke run: one short repetition; the figures themselves come
//! from `netfab-lab bench` run for real).
use std::process::Command;

use netfab_lab as lab;
use netfab_tests::require_privileges;

#[test]
fn bench_measures_every_path_and_writes_table_json_and_chart() {
    require_privileges!();
    let out_dir = std::env::temp_dir().join(format!("netfab-bench-{}", std::process::id()));
    let out = Command::new(lab::lab_binary().unwrap())
        .args([
            "bench",
            "--what",
            "datapath",
            "--secs",
            "1",
            "--rr-secs",
            "1",
            "--reps",
            "1",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rep 1/1 ebpf-vxlan-native"),
        "progress is printed: {stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("bench.json")).unwrap()).unwrap();
    let paths: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "raw-underlay",
            "ebpf-vxlan-native",
            "ebpf-vxlan-native-steered",
            "ebpf-vxlan-device",
            "ebpf-direct",
            "kernel-vxlan",
            "host-gw"
        ]
    );
    for r in json.as_array().unwrap() {
        for k in [
            "gbps_1_stream",
            "gbps_4_streams",
            "rr_per_sec",
            "rr_mean_us",
            "ping_rtt_us",
            "udp64_pps",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k} of {}", r["path"]);
        }
        // Counted from both ends' TCP (zero is a fair count).
        for k in [
            "ofo_segments_1_stream",
            "dsacks_1_stream",
            "retransmits_1_stream",
        ] {
            assert!(r[k].as_f64().is_some(), "{k} of {}", r["path"]);
        }
    }
    assert_eq!(json[0]["ratio_1_stream"].as_f64(), Some(1.0));
    let png = std::fs::read(out_dir.join("bench.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let table = std::fs::read_to_string(out_dir.join("bench.md")).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        8,
        "{table}"
    );
    for name in lab::bench::lab_names() {
        assert!(
            !std::path::Path::new(&format!("/run/netns/{name}-ul")).exists(),
            "lab {name} removed"
        );
    }
    let _ = std::fs::remove_dir_all(out_dir);
}

/// The scale bench runs end to end: simulated hosts' leases written into a
/// lab's real etcd reach the one real agent's map, and it reports its
/// figures (a smoke run with few hosts; the figures come from a real run).
#[test]
fn scale_bench_programs_the_simulated_hosts_and_reports() {
    require_privileges!();
    let out_dir = std::env::temp_dir().join(format!("netfab-scale-{}", std::process::id()));
    let out = Command::new(lab::lab_binary().unwrap())
        .args([
            "bench",
            "--what",
            "scale",
            "--scale-hosts",
            "200,400",
            "--scale-patterns",
            "burst,batches",
            "--idle-secs",
            "2",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("scale.json")).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r["pattern"].as_str().unwrap(), r["hosts"].as_u64().unwrap()))
            .collect::<Vec<_>>(),
        [
            ("burst", 200),
            ("burst", 400),
            ("batches", 200),
            ("batches", 400)
        ]
    );
    // On eBPF the kernel holds nothing per peer: the same routes and
    // neighbours at 200 peers and at 400.
    for pair in rows.chunks(2) {
        for k in ["kernel_routes", "kernel_neighbours"] {
            assert_eq!(pair[0][k], pair[1][k], "{k}: {pair:?}");
            assert!(pair[0][k].as_u64().unwrap() < 10, "{k}: {pair:?}");
        }
    }
    for r in rows {
        for k in ["all_programmed_ms", "one_more_median_ms", "agent_rss_mb"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k} of {r}");
        }
        // Counted in clock ticks (10 ms): a few hundred leases may cost
        // less than one now that no route is written per peer.
        assert!(r["agent_cpu_load_s"].as_f64().unwrap() >= 0.0, "{r}");
        assert_eq!(r["one_more_samples_ms"].as_array().unwrap().len(), 20);
        assert!(r["etcd_per_min"].is_object());
    }
    let table = std::fs::read_to_string(out_dir.join("scale.md")).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        5,
        "{table}"
    );
    assert!(
        !std::path::Path::new("/run/netns/scale-ul").exists(),
        "lab removed"
    );
    let _ = std::fs::remove_dir_all(out_dir);
}

/// The fan-out bench runs both modes: agents given the members, then the
/// same agents behind an etcd grpc-proxy. The members' own counters show
/// the coalescing: one watch stream's worth of events per lease instead of
/// one per agent.
#[test]
fn fanout_bench_shows_the_grpc_proxy_coalescing_the_agents_watches() {
    require_privileges!();
    let out_dir = std::env::temp_dir().join(format!("netfab-fanout-{}", std::process::id()));
    let out = Command::new(lab::lab_binary().unwrap())
        .args([
            "bench",
            "--what",
            "fanout",
            "--fanout-agents",
            "4",
            "--fanout-members",
            "1",
            "--fanout-leases",
            "20",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("fanout.json")).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["direct", "grpc-proxy"]);
    let f = |r: usize, k: &str| rows[r][k].as_f64().unwrap_or_else(|| panic!("{k}"));
    // Direct: every agent's watch gets every lease.
    assert_eq!(f(0, "member_watch_streams"), 4.0, "{json}");
    assert!(f(0, "member_events_per_lease") >= 4.0, "{json}");
    // Behind the proxy: the members serve the proxy, not the agents.
    assert!(f(1, "member_watch_streams") <= 2.0, "{json}");
    assert!(
        f(1, "member_events_per_lease") <= 1.5,
        "the proxy did not coalesce: {json}"
    );
    assert!(f(1, "member_bytes_per_lease") < f(0, "member_bytes_per_lease"));
    assert!(f(1, "proxy_rss_mb") > 0.0);
    for r in 0..2 {
        assert!(f(r, "all_programmed_ms") > 0.0);
    }
    let table = std::fs::read_to_string(out_dir.join("fanout.md")).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        3,
        "{table}"
    );
    assert!(
        !std::path::Path::new("/run/netns/fanout-ul").exists(),
        "lab removed"
    );
    let _ = std::fs::remove_dir_all(out_dir);
}
