//! The container image, built by `scripts/image.sh` from Debian packages
//! alone: an OCI layout whose config carries the version and source labels
//! and the agent as its command, and a rootfs that holds netfab, netfab-cni,
//! the eBPF object and every tool the agent executes. Then the DaemonSet
//! of `deploy/` run from that image on a lab's nodes as a kubelet would
//! run it (tests/src/kubelet.rs plays the kubelet).
use std::{
    process::Command,
    time::{Duration, Instant},
};

use netfab_lab::{self as lab, demo::ping, sh, topology::Topology};
use netfab_tests::{
    guards::LabGuard,
    image,
    kubelet::{self, cap_mask, Container, MountPoints, Node, PodInputs, Probe},
    libcni::{self, ConfList},
    require_privileges, result_ip, wait_for,
};
use serde_json::Value;

#[test]
fn the_image_holds_netfab_its_tools_and_labels() {
    require_privileges!();
    let img = image::built();
    let index: Value =
        serde_json::from_slice(&std::fs::read(img.layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(img.version, env!("CARGO_PKG_VERSION"));
    let manifest = img.blob(m["digest"].as_str().unwrap());
    let config = img.blob(manifest["config"]["digest"].as_str().unwrap());
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        img.version.as_str()
    );
    assert!(labels["org.opencontainers.image.source"].is_string());
    assert_eq!(config["config"]["Entrypoint"][0], "netfab");
    let size: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    eprintln!(
        "image {}: {:.1} MB compressed",
        img.version,
        size as f64 / 1e6
    );

    // Unpacked as a runtime would, each binary the agent needs runs.
    let rootfs = &img.rootfs;
    assert!(rootfs.join("usr/lib/netfab/netfab.bpf.o").is_file());
    for (cmd, env) in [
        (vec!["netfab", "--version"], None),
        (vec!["netfab-cni"], Some(("CNI_COMMAND", "VERSION"))),
        (vec!["iptables", "--version"], None),
        (vec!["tc", "-V"], None),
    ] {
        let mut c = Command::new("chroot");
        c.arg(rootfs).args(&cmd);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{cmd:?} in the image: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The runtime on `node` attaches a container through the plugin and
/// conflist the pod installed; returns its address.
fn attach(t: &Topology, node: &Node, h: u32) -> String {
    let ctr = t.container_ns(h, 1);
    sh::ip(&["netns", "add", &ctr]).unwrap();
    let list = ConfList {
        path: "/etc/cni/net.d/10-netfab.conflist".into(),
        cache: lab::state_dir(&t.name).join(format!("cni-cache-{h}")),
    };
    let cni_path = format!("/opt/cni/bin:{}", libcni::UPSTREAM_PLUGINS);
    let r = list
        .call(
            node.command(libcni::client()),
            &cni_path,
            "ADD",
            &ctr,
            "eth0",
            None,
        )
        .unwrap_or_else(|e| panic!("ADD on {} through the installed plugin: {e}", node.name));
    result_ip(&r)
}

fn ping_across(t: &Topology, ips: &[String], when: &str) {
    for (from, to) in [(1, 1), (2, 0)] {
        let st = ping(&t.container_ns(from, 1), &ips[to], 3, "0.05").unwrap();
        assert_eq!(st.received, 3, "{when}: host {from} to {}", ips[to]);
    }
}

/// Every probe answer until `until`, as (liveness, readiness) per node.
fn probe_all(
    nodes: &[Node],
    live: &Probe,
    ready: &Probe,
) -> Vec<(Result<u16, String>, Result<u16, String>)> {
    nodes
        .iter()
        .map(|n| (live.check(n), ready.check(n)))
        .collect()
}

#[test]
fn the_daemonset_runs_from_the_image_as_a_kubelet_would() {
    require_privileges!();
    let img = image::built();
    let (template, mut config_map) = kubelet::manifests();
    let mut t = Topology::new("kube", 2, 1).unwrap();
    t.external_agents = true;
    let lab = LabGuard::up_with(t);
    let t = &lab.topo;
    // The operator's part (docs/kubernetes.md): the ConfigMap points at the
    // cluster's etcd, and the networks it lists are created once.
    config_map["data"]["etcd-endpoints"] = t.etcd_url().into();
    wait_for("etcd to serve", Duration::from_secs(15), || {
        lab::netfab_cli(t, &["network", "list"]).ok()
    });
    let networks = config_map["data"]["networks"].as_str().unwrap().to_string();
    for line in networks.lines().filter(|l| !l.trim().is_empty()) {
        let mut args = vec!["network", "create"];
        args.extend(line.split_whitespace());
        lab::netfab_cli(t, &args).unwrap();
    }
    let _mount_points = MountPoints::new();
    let nodes: Vec<Node> = t.all_hosts().map(|h| Node::provision(t, h)).collect();
    let inputs: Vec<PodInputs> = nodes
        .iter()
        .map(|node| PodInputs {
            node,
            image: img,
            template: &template,
            config_map: &config_map,
        })
        .collect();
    let agent_spec = template["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("an agent container")
        .clone();
    let live = Probe::of(&agent_spec, "livenessProbe");
    let ready = Probe::of(&agent_spec, "readinessProbe");
    let caps = inputs[0].capabilities_of("agent");
    let conflist = |n: &Node| n.path("/etc/cni/net.d/10-netfab.conflist");

    // The pods start while etcd is down.
    lab::stop_etcd(t).unwrap();
    let mut pods: Vec<Vec<Container>> = inputs.iter().map(|p| p.start_pod()).collect();
    let agent = |pods: &[Vec<Container>], i: usize| -> usize {
        pods[i].iter().position(|c| c.name == "agent").unwrap()
    };
    for (i, node) in nodes.iter().enumerate() {
        assert!(
            node.path("/opt/cni/bin/netfab-cni").is_file(),
            "the init container installs the plugin on {}",
            node.name
        );
        let a = &pods[i][agent(&pods, i)];
        assert_eq!(
            a.effective_caps(),
            cap_mask(&caps),
            "the agent runs with exactly {caps:?}"
        );
        wait_for(
            "the liveness probe to pass",
            Duration::from_secs(30),
            || live.check(node).ok(),
        );
    }
    // Alive, not ready, no conflist, for a whole readiness period.
    let until = Instant::now() + ready.period;
    while Instant::now() < until {
        for (n, (l, r)) in nodes.iter().zip(probe_all(&nodes, &live, &ready)) {
            assert!(l.is_ok(), "{}: liveness fails without etcd: {l:?}", n.name);
            assert!(r.is_err(), "{}: ready without etcd", n.name);
            assert!(
                !conflist(n).exists(),
                "{}: a conflist before the agent is ready",
                n.name
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    lab::start_etcd(t).unwrap();
    for n in &nodes {
        wait_for("the conflist", Duration::from_secs(60), || {
            conflist(n).exists().then_some(())
        });
        // Ready before the conflist appears, and it stays ready.
        assert!(ready.check(n).is_ok(), "{}: conflist but not ready", n.name);
    }

    // The runtime attaches a container per node through what the pod installed.
    let ips: Vec<String> = nodes
        .iter()
        .zip(1..)
        .map(|(n, h)| attach(t, n, h))
        .collect();
    ping_across(t, &ips, "etcd up");

    // Troubleshooting as docs/kubernetes.md says: netfab inside the pod.
    let a = &pods[0][agent(&pods, 0)];
    let out = a.exec(&caps, &["netfab", "status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["dataplane"], "ebpf", "{st}");
    let out = a.exec(&caps, &["netfab", "stats", "--json"]);
    assert!(
        out.status.success(),
        "netfab stats in the pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An etcd outage longer than liveness tolerates: readiness fails,
    // liveness never does, and containers keep talking.
    lab::stop_etcd(t).unwrap();
    let outage = Instant::now();
    let budget = live.period * live.failure_threshold + live.period;
    let mut unready = vec![None; nodes.len()];
    while outage.elapsed() < budget {
        for (i, (n, (l, r))) in nodes
            .iter()
            .zip(probe_all(&nodes, &live, &ready))
            .enumerate()
        {
            assert!(
                l.is_ok(),
                "{}: liveness failed {:?} into an etcd outage: {l:?}",
                n.name,
                outage.elapsed()
            );
            if r.is_err() && unready[i].is_none() {
                unready[i] = Some(outage.elapsed());
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    for (n, u) in nodes.iter().zip(&unready) {
        let u =
            u.unwrap_or_else(|| panic!("{}: still ready {budget:?} into an etcd outage", n.name));
        eprintln!("{}: unready {u:?} into the etcd outage", n.name);
    }
    ping_across(t, &ips, "etcd down");
    lab::start_etcd(t).unwrap();
    for n in &nodes {
        wait_for(
            "readiness after etcd is back",
            Duration::from_secs(60),
            || ready.check(n).ok(),
        );
    }
    ping_across(t, &ips, "etcd back");

    // Stopped as the kubelet stops a pod: SIGTERM, done within the grace
    // period, nothing left behind in the pod.
    for (i, n) in nodes.iter().enumerate() {
        let a = agent(&pods, i);
        assert_eq!(pods[i][a].zombies(), 0, "{}: zombies in the pod", n.name);
        let (status, in_time) = pods[i][a].stop();
        assert!(
            status.success() && in_time,
            "{}: agent ended {status} (in time: {in_time}):\n{}",
            n.name,
            pods[i][a].logs()
        );
    }
}
