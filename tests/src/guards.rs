//! RAII guards: a lab, a network namespace, a thread inside a namespace.
use std::{fs::File, os::fd::AsRawFd, process::Command};

use netfab::dataplane::ebpf::maps::{BpfMaps, Counters};
use netfab_lab::{self as lab, topology::Topology};

/// A lab built for one test and always torn down after it.
pub struct LabGuard {
    pub topo: Topology,
}

impl LabGuard {
    /// A lab in etcd mode (real etcd, leased subnets), one network.
    pub fn up(name: &str, hosts: u32, containers: u32) -> Self {
        Self::up_with(Topology::new(name, hosts, containers).expect("valid lab shape"))
    }

    pub fn up_with(topo: Topology) -> Self {
        // A previous run that was killed may have left this lab behind.
        let _ = lab::down(&topo.name);
        let topo = lab::up(&topo, None).expect("lab up");
        Self { topo }
    }

    pub fn counters(&self, h: u32) -> Counters {
        BpfMaps::open(&self.topo.pin_dir(h))
            .and_then(|m| m.counters())
            .expect("reading counters")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.topo.name) {
            eprintln!("lab down for {}: {e:#}", self.topo.name);
        }
    }
}

/// A network namespace created by a test and deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&["netns", "add", name]);
        Self { name: name.into() }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`
/// (a namespace belongs to a thread, so the test thread stays where it is).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: valid fd of a network namespace; affects only this thread,
        // which ends when `f` returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

impl LabGuard {
    /// Pings container `to` from container `from` (host, container pairs).
    pub fn ping(
        &self,
        from: (u32, u32),
        to: (u32, u32),
        count: u32,
    ) -> netfab_lab::demo::PingStats {
        let t = &self.topo;
        netfab_lab::demo::ping(
            &t.container_ns(from.0, from.1),
            &t.container_ip(to.0, to.1).to_string(),
            count,
            "0.05",
        )
        .expect("running ping")
    }
}
