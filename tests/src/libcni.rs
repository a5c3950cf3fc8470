//! The upstream CNI library (libcni, as containerd and CRI-O use it) and the
//! upstream plugins: a small Go client (`tests/libcni/main.go`), built here
//! once per test binary against Debian's `golang-github-appc-cni-dev`.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use netfab_lab::topology::Topology;
use serde_json::Value;

/// Debian's `containernetworking-plugins` install here.
pub const UPSTREAM_PLUGINS: &str = "/usr/lib/cni";
const GOPATH: &str = "/usr/share/gocode";

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("libcni")
}

/// The client binary, built on first use. Fails loudly when Go or the
/// library is missing: `scripts/setup.sh` installs both.
pub fn client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        assert!(
            Path::new(GOPATH)
                .join("src/github.com/containernetworking/cni/libcni")
                .is_dir(),
            "libcni is missing: install golang-github-appc-cni-dev (scripts/setup.sh does)"
        );
        assert!(
            Path::new(UPSTREAM_PLUGINS).join("portmap").is_file(),
            "the upstream plugins are missing: install containernetworking-plugins (scripts/setup.sh does)"
        );
        let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/libcni");
        std::fs::create_dir_all(&out_dir).expect("creating target/libcni");
        // Built under a per-process name and renamed: test binaries may
        // build it at the same time.
        let tmp = out_dir.join(format!("netfab-libcni.{}", std::process::id()));
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&tmp)
            .arg(".")
            .current_dir(source_dir())
            .env("GOPATH", GOPATH)
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .output()
            .expect("running go (install golang-go: scripts/setup.sh does)");
        assert!(
            out.status.success(),
            "building the libcni client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = out_dir.join("netfab-libcni");
        std::fs::rename(&tmp, &bin).expect("installing the libcni client");
        bin
    })
}

/// A network configuration list written for libcni, with its result cache.
pub struct ConfList {
    pub path: PathBuf,
    pub cache: PathBuf,
}

impl ConfList {
    pub fn write(topo: &Topology, name: &str, list: &Value) -> Self {
        let dir = netfab_lab::host_dir(&topo.name, 1)
            .parent()
            .expect("lab dir")
            .join("libcni");
        std::fs::create_dir_all(&dir).expect("creating the conflist dir");
        let path = dir.join(format!("{name}.conflist"));
        std::fs::write(&path, list.to_string()).expect("writing the conflist");
        Self {
            path,
            cache: dir.join("cache"),
        }
    }

    /// One libcni call run in host `h`'s namespace, as a runtime there would
    /// run it: Ok(result JSON or Null) or Err(error JSON).
    pub fn run(
        &self,
        topo: &Topology,
        h: u32,
        verb: &str,
        container: &str,
        ifname: &str,
        capability_args: Option<&Value>,
    ) -> Result<Value, Value> {
        let netfab_dir = netfab_lab::cni::binary()
            .expect("netfab-cni built")
            .parent()
            .expect("a directory")
            .to_path_buf();
        self.run_with_plugins(
            topo,
            h,
            &netfab_dir,
            verb,
            container,
            ifname,
            capability_args,
        )
    }

    /// As [`Self::run`], with netfab-cni taken from `netfab_dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with_plugins(
        &self,
        topo: &Topology,
        h: u32,
        netfab_dir: &Path,
        verb: &str,
        container: &str,
        ifname: &str,
        capability_args: Option<&Value>,
    ) -> Result<Value, Value> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &topo.host_ns(h)]).arg(client());
        let cni_path = format!("{}:{UPSTREAM_PLUGINS}", netfab_dir.display());
        self.call(cmd, &cni_path, verb, container, ifname, capability_args)
    }

    /// One libcni call through `client`, a command that runs [`client()`]
    /// wherever the runtime runs (say, on a kubelet-played node), with
    /// plugins found on `cni_path`.
    pub fn call(
        &self,
        mut cmd: Command,
        cni_path: &str,
        verb: &str,
        container: &str,
        ifname: &str,
        capability_args: Option<&Value>,
    ) -> Result<Value, Value> {
        cmd.args([verb, self.path.to_str().expect("utf-8 path"), container])
            .arg(format!("/run/netns/{container}"))
            .arg(ifname)
            .env("CNI_PATH", cni_path)
            .env("NETFAB_CNI_CACHE", &self.cache);
        if let Some(c) = capability_args {
            cmd.arg(c.to_string());
        }
        let out = cmd.output().expect("running the libcni client");
        let parse = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let line = s.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
            serde_json::from_str(line).unwrap_or_else(|_| Value::String(s.into_owned()))
        };
        if out.status.success() {
            Ok(if out.stdout.is_empty() {
                Value::Null
            } else {
                parse(&out.stdout)
            })
        } else {
            Err(parse(&out.stderr))
        }
    }
}
