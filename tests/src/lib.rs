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
    // The skip machinery's own test forces a skip in a child run.
    if let Some(why) = std::env::var_os("NETFAB_TEST_FORCE_SKIP") {
        return Some(why.to_string_lossy().into_owned());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces and eBPF need it)".into());
    }
    if netfab::dataplane::ebpf::object::locate(None).is_err() {
        return Some("no eBPF object: run `cargo xtask build-ebpf` first".into());
    }
    None
}

/// Skips the calling test, loudly, when it cannot run on this machine: the
/// skip is printed and recorded (see [`record_skip`]), and on CI it fails.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if let Some(why) = $crate::missing_privilege() {
            $crate::record_skip(module_path!(), &why);
            return;
        }
    };
}

/// Where skipped tests are recorded, one file each: `cargo xtask test`
/// empties it first and lists what it holds at the end (libtest itself can
/// only count a returned test as passed).
pub fn skip_dir() -> std::path::PathBuf {
    std::env::var_os("NETFAB_TEST_SKIPS")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-skips")
        })
}

/// Records that the current test could not run, and why. Under CI (which
/// runs as root with everything installed) a privileged test that cannot
/// run is a failure, never a silent pass.
pub fn record_skip(module: &str, why: &str) {
    // libtest names each test's thread after the test.
    let name = match std::thread::current().name() {
        Some(n) if n != "main" => format!("{module}::{}", n.rsplit("::").next().unwrap_or(n)),
        _ => module.to_string(),
    };
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("privileged test {name} cannot run on CI: {why}");
    }
    eprintln!("SKIPPED {name}: {why}");
    let dir = skip_dir();
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(name.replace("::", "__"));
    if let Err(e) = std::fs::write(&file, format!("{name}: {why}\n")) {
        eprintln!("cannot record the skip in {}: {e}", file.display());
    }
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
