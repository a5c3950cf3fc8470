//! `netfab install-cni` as a node's init container and installer use it:
//! the plugin binary replaced atomically while runtimes keep executing it,
//! and the conflist written only once the local agent is ready.
use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use netfab_lab::{self as lab, demo::ping, sh};
use netfab_tests::{guards::LabGuard, libcni::ConfList, require_privileges, result_ip, wait_for};
use serde_json::Value;

fn install(bin_dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(lab::netfab_binary().unwrap());
    c.arg("install-cni")
        .arg("--cni-bin-dir")
        .arg(bin_dir)
        .args(extra);
    c
}

#[test]
fn the_binary_is_replaced_atomically_while_in_use() {
    let dir = std::env::temp_dir().join(format!("netfab-cni-bin-{}", std::process::id()));
    assert!(install(&dir, &[]).status().unwrap().success());
    let plugin = dir.join("netfab-cni");
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (plugin, stop) = (plugin.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0;
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new(&plugin)
                        .env("CNI_COMMAND", "VERSION")
                        .stdin(Stdio::null())
                        .output()
                        .unwrap_or_else(|e| panic!("executing the plugin mid-install: {e}"));
                    let v: Value = serde_json::from_slice(&out.stdout)
                        .unwrap_or_else(|e| panic!("plugin answered {out:?}: {e}"));
                    assert!(v["supportedVersions"].is_array());
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for _ in 0..10 {
        assert!(install(&dir, &[]).status().unwrap().success());
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u32 = callers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(calls > 0);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["netfab-cni".to_string()], "no temp file left");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_conflist_appears_only_once_the_agent_is_ready_and_works() {
    require_privileges!();
    let lab = LabGuard::up("inst", 2, 1);
    let t = &lab.topo;
    let base = lab::state_dir(&t.name).join("node1");
    let (bin_dir, conf_dir) = (base.join("opt-cni-bin"), base.join("etc-cni-net.d"));
    let run_dir = lab::host_dir(&t.name, 1);
    lab::stop_agent(&t.name, 1, false).unwrap();
    let mut installer = Command::new("ip")
        .args(["netns", "exec", &t.host_ns(1)])
        .arg(lab::netfab_binary().unwrap())
        .arg("install-cni")
        .arg("--cni-bin-dir")
        .arg(&bin_dir)
        .arg("--cni-conf-dir")
        .arg(&conf_dir)
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--cni-data-dir")
        .arg(run_dir.join("ipam"))
        .args(["--wait-ready-secs", "60"])
        .spawn()
        .unwrap();
    wait_for("the plugin binary", Duration::from_secs(10), || {
        bin_dir.join("netfab-cni").is_file().then_some(())
    });
    // No agent: the installer waits and writes no configuration.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !conf_dir.join("10-netfab.conflist").exists(),
        "a conflist was written before the agent was ready"
    );
    assert!(installer.try_wait().unwrap().is_none(), "still waiting");
    lab::start_agent(t, 1, None).unwrap();
    let conflist = conf_dir.join("10-netfab.conflist");
    wait_for("the conflist", Duration::from_secs(30), || {
        conflist.is_file().then_some(())
    });
    assert!(installer.wait().unwrap().success());
    assert!(lab::read_status(t, 1).is_some_and(|s| !s.networks.is_empty()));

    // The installed plugin with the written conflist, through libcni.
    let list = ConfList {
        path: conflist.clone(),
        cache: base.join("cache"),
    };
    let ctr = format!("{}-ic", t.name);
    sh::ip(&["netns", "add", &ctr]).unwrap();
    let r = list
        .run_with_plugins(t, 1, &bin_dir, "ADD", &ctr, "eth0", None)
        .unwrap_or_else(|e| panic!("ADD through the installed plugin: {e}"));
    let st = ping(&t.container_ns(2, 1), &result_ip(&r), 3, "0.05").unwrap();
    assert_eq!(st.received, 3);
    list.run_with_plugins(t, 1, &bin_dir, "DEL", &ctr, "eth0", None)
        .unwrap();
}
