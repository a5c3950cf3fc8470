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
    ns: String,
}

impl Prometheus {
    fn start(t: &Topology) -> Self {
        let targets = t
            .all_hosts()
            .map(|h| agent_addr(t, h).to_string())
            .collect();
        Self::start_in(t, &t.etcd_ns(), targets, "1s")
    }

    /// A Prometheus in namespace `ns` scraping `targets` every `every`.
    fn start_in(t: &Topology, ns: &str, targets: Vec<String>, every: &str) -> Self {
        let dir = lab::state_dir(&t.name).join(format!("prometheus-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = targets.iter().map(|a| format!("'{a}'")).collect();
        let conf = format!(
            "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\nscrape_configs:\n  - job_name: netfab\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), conf).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "prometheus"])
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
        Self {
            child,
            dir,
            ns: ns.to_string(),
        }
    }

    fn api(&self, t: &Topology, path: &str) -> Option<Value> {
        let addr: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let _ = t;
        let (code, body) = http::get(&self.ns, addr, path).ok()?;
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

/// Seconds of CPU (user + system) process `pid` has used.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime, stime
    // are the 12th and 13th of them, in clock ticks.
    let rest = stat.rsplit_once(") ").unwrap().1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[0] + f[1]) as f64 / hz
}

/// (sum, count) of the agent's apply-duration histogram, from a body
/// rendered after this call (a body lives for a second).
fn apply_stats(t: &Topology) -> (f64, f64) {
    std::thread::sleep(Duration::from_millis(1100));
    let body = wait_for("/metrics", Duration::from_secs(10), || {
        http::get(&t.host_ns(1), agent_addr(t, 1), "/metrics").ok()
    })
    .1;
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    (
        value("netfab_apply_duration_seconds_sum"),
        value("netfab_apply_duration_seconds_count"),
    )
}

/// ADD and DEL of container (1, 3), `n` times; the ADDs' durations.
fn add_del(t: &Topology, n: usize) -> Vec<Duration> {
    let ns = t.container_ns(1, 3);
    let mut took = Vec::new();
    for _ in 0..n {
        lab::sh::ip(&["netns", "add", &ns]).unwrap();
        let start = std::time::Instant::now();
        lab::cni::add(t, 1, 3).expect("ADD");
        took.push(start.elapsed());
        lab::cni::del(t, 1, 3).expect("DEL");
        lab::sh::ip(&["netns", "del", &ns]).unwrap();
    }
    took.sort();
    took
}

/// 50 clients in a pod loop `GET /metrics` at their gateway for 10 s. The
/// agent's work for them is bounded (under 10 % of a core), ADD and the
/// loop's applies stay within 20 % of idle (plus a few ms for a loaded
/// 2-core machine), and Prometheus in another pod keeps scraping.
#[test]
fn a_metrics_flood_from_a_pod_is_bounded_and_prometheus_still_scrapes() {
    require_privileges!();
    let lab = LabGuard::up("mflood", 2, 2);
    let t = &lab.topo;
    let pid = lab::agent_pid(&t.name, 1).unwrap();
    let gw = t.gateway(1, t.container_network(1));
    let prom = Prometheus::start_in(t, &t.container_ns(1, 2), vec![format!("{gw}:{PORT}")], "1s");
    wait_for(
        "Prometheus in a pod to scrape",
        Duration::from_secs(30),
        || (prom.query(t, "up")? == 1.0).then_some(()),
    );

    // The agent's CPU over `secs` of whatever runs meanwhile.
    let cpu_over = |secs: u64| {
        let (c, at) = (cpu_secs(pid), std::time::Instant::now());
        std::thread::sleep(Duration::from_secs(secs));
        (cpu_secs(pid) - c) / at.elapsed().as_secs_f64()
    };
    // Idle: the agent's CPU, then ADDs and the applies they cause.
    let idle_cpu = cpu_over(3);
    let (s0, c0) = apply_stats(t);
    let idle_adds = add_del(t, 8);
    let (s1, c1) = apply_stats(t);

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile/attack.py");
    let flooder = Command::new("ip")
        .args(["netns", "exec", &t.container_ns(1, 1), "/usr/bin/python3"])
        .arg(script)
        .args([
            "flood",
            &gw.to_string(),
            &PORT.to_string(),
            "/metrics",
            "50",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The flood alone for 4 s, then ADDs while it goes on.
    let flood_cpu = cpu_over(4);
    let flood_adds = add_del(t, 8);
    let out = flooder.wait_with_output().unwrap();
    let flood = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (s2, c2) = apply_stats(t);

    let median = |v: &[Duration]| v[v.len() / 2].as_secs_f64();
    let (idle_add, flood_add) = (median(&idle_adds), median(&flood_adds));
    let idle_apply = (s1 - s0) / (c1 - c0).max(1.0);
    let flood_apply = (s2 - s1) / (c2 - c1).max(1.0);
    let scrapes = prom.query(t, "sum_over_time(up[10s])").unwrap_or(0.0);
    eprintln!(
        "metrics flood: {flood}; agent CPU {:.1} % of a core (idle {:.1} %); ADD median \
         {:.1} ms (idle {:.1} ms); apply mean {:.2} ms (idle {:.2} ms); Prometheus in a pod: \
         {scrapes} good scrapes in the last 10 s",
        flood_cpu * 100.0,
        idle_cpu * 100.0,
        flood_add * 1e3,
        idle_add * 1e3,
        flood_apply * 1e3,
        idle_apply * 1e3,
    );
    let served: u64 = flood
        .strip_prefix("requests ")
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("flood output: {flood}"));
    assert!(served > 100, "the flood was served at all: {flood}");
    assert!(
        flood_cpu < 0.10,
        "agent CPU {flood_cpu:.3} of a core under the flood"
    );
    assert!(
        flood_add <= idle_add * 1.2 + 0.010,
        "ADD {flood_add:.4} s under the flood, {idle_add:.4} s idle"
    );
    assert!(
        flood_apply <= idle_apply * 1.2 + 0.002,
        "apply {flood_apply:.5} s under the flood, {idle_apply:.5} s idle"
    );
    assert!(scrapes >= 5.0, "Prometheus scraped {scrapes} times in 10 s");
}
