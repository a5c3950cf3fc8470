//! The agent's /healthz, /readyz and /metrics as Kubernetes and Prometheus
//! use them: probes from the host network, `promtool check metrics` on the
//! exposition, and a real Prometheus server scraping every agent of a lab.
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use netfab_lab::{self as lab, topology::Topology};
use netfab_tests::{guards::LabGuard, http, require_privileges, traffic::Pinger, wait_for};
use serde_json::Value;

const PORT: u16 = 9810;

fn agent_addr(t: &Topology, h: u32) -> SocketAddr {
    SocketAddr::new(t.host_ip(h).into(), PORT)
}

/// A Prometheus server in the lab's etcd namespace (on the underlay, like
/// a monitoring host), killed on drop.
struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(t: &Topology) -> Self {
        let dir = lab::state_dir(&t.name).join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = t
            .all_hosts()
            .map(|h| format!("'{}'", agent_addr(t, h)))
            .collect();
        let conf = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: netfab\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), conf).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &t.etcd_ns(), "prometheus"])
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's prometheus package; scripts/setup.sh installs it)");
        Self { child, dir }
    }

    fn api(&self, t: &Topology, path: &str) -> Option<Value> {
        let addr: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let (code, body) = http::get(&t.etcd_ns(), addr, path).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The summed value of an instant query.
    fn query(&self, t: &Topology, q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = self.api(t, &format!("/api/v1/query?query={enc}"))?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn probes_follow_etcd_metrics_pass_promtool_and_prometheus_scrapes_every_agent() {
    require_privileges!();
    let lab = LabGuard::up("mtr", 2, 1);
    let t = &lab.topo;
    let get = |h: u32, path: &str| http::get(&t.host_ns(h), agent_addr(t, h), path);

    for h in t.all_hosts() {
        assert_eq!(get(h, "/healthz").unwrap().0, 200);
        assert_eq!(get(h, "/readyz").unwrap().0, 200);
        let (code, body) = get(h, "/metrics").unwrap();
        assert_eq!(code, 200);
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package)");
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics on host {h}: {}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [
            "netfab_datapath_packets_total{direction=",
            "netfab_datapath_drops_total{reason=\"spoofed_source\"}",
            "netfab_peers{path=\"direct\"} 1",
            "netfab_etcd_connected 1",
            "netfab_lease_ttl_remaining_seconds ",
            "netfab_map_capacity{map=\"endpoints\"}",
            "netfab_apply_duration_seconds_count ",
            "netfab_dataplane_info{dataplane=\"ebpf\"",
        ] {
            assert!(body.contains(needle), "host {h} lacks {needle}:\n{body}");
        }
    }

    // A real Prometheus scrapes both agents; a datapath counter rises
    // while traffic flows.
    let prom = Prometheus::start(t);
    wait_for(
        "Prometheus to see both agents up",
        Duration::from_secs(30),
        || {
            let v = prom.api(t, "/api/v1/targets")?;
            let active = v["data"]["activeTargets"].as_array()?.clone();
            (active.len() == 2 && active.iter().all(|a| a["health"] == "up")).then_some(())
        },
    );
    let q = r#"sum(netfab_datapath_packets_total{direction=~"from_overlay|from_direct"})"#;
    let before = wait_for("a first sample", Duration::from_secs(15), || {
        prom.query(t, q)
    });
    let pinger = Pinger::start(
        &t.container_ns(1, 1),
        &t.container_ip(2, 1).to_string(),
        100,
    );
    let after = wait_for(
        "the counter to rise in Prometheus",
        Duration::from_secs(20),
        || prom.query(t, q).filter(|v| *v >= before + 50.0),
    );
    let st = pinger.finish();
    eprintln!(
        "Prometheus saw {before} -> {after} packets while {} pings flowed",
        st.received
    );

    // etcd down: not ready, still alive (Kubernetes must not restart every
    // agent for an etcd outage). Back: ready again.
    lab::stop_etcd(t).unwrap();
    wait_for(
        "readyz to fail without etcd",
        Duration::from_secs(30),
        || (get(1, "/readyz").ok()?.0 == 503).then_some(()),
    );
    assert_eq!(
        get(1, "/healthz").unwrap().0,
        200,
        "alive during the outage"
    );
    let (_, why) = get(1, "/readyz").unwrap();
    assert!(why.contains("etcd"), "{why}");
    lab::start_etcd(t).unwrap();
    wait_for("readyz to pass again", Duration::from_secs(30), || {
        (get(1, "/readyz").ok()?.0 == 200).then_some(())
    });
}
