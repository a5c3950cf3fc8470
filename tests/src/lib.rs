//! Shared pieces of the privileged integration tests: skipping loudly when
//! the machine cannot run them, RAII guards for labs, namespaces and
//! captures, and packet crafting and parsing.
//!
//! Every guard removes what it created in `Drop`, so a failing assertion
//! still leaves the machine clean.
pub mod capture;
pub mod frames;
pub mod guards;
pub mod http;
pub mod image;
pub mod kubelet;
pub mod libcni;
pub mod manifests;
pub mod pcap;
pub mod sockets;
pub mod traffic;

use std::time::{Duration, Instant};

/// Returns why privileged tests cannot run here, if they cannot.
pub fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces and eBPF need it)".into());
    }
    if netfab::dataplane::ebpf::object::locate(None).is_err() {
        return Some("no eBPF object: run `cargo xtask build-ebpf` first".into());
    }
    None
}

/// Skips the calling test, loudly, when it cannot run on this machine.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if let Some(why) = $crate::missing_privilege() {
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
}

/// The first address of a CNI result, without its prefix length.
pub fn result_ip(r: &serde_json::Value) -> String {
    let a = r["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in the result {r}"));
    a.split('/').next().unwrap_or_default().to_string()
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the netfab CLI; panics with its stderr if it fails, else returns stdout.
pub fn netfab_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(netfab_lab::netfab_binary().expect("netfab binary"))
        .args(args)
        .output()
        .expect("running netfab");
    assert!(
        out.status.success(),
        "netfab failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
