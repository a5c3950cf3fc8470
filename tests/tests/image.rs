//! The container image, built by `scripts/image.sh` from Debian packages
//! alone: an OCI layout whose config carries the version and source labels
//! and the agent as its command, and a rootfs that holds netfab, netfab-cni,
//! the eBPF object and every tool the agent executes.
use std::{path::Path, process::Command};

use netfab_tests::require_privileges;
use serde_json::Value;

fn blob(layout: &Path, digest: &str) -> Value {
    let (alg, hex) = digest.split_once(':').unwrap();
    serde_json::from_slice(&std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap())
        .unwrap()
}

#[test]
fn the_image_holds_netfab_its_tools_and_labels() {
    require_privileges!();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/image-test");
    let _ = std::fs::remove_dir_all(&out);
    let build = Command::new("bash")
        .arg(root.join("scripts/image.sh"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "scripts/image.sh: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let layout = out.join("oci");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    let version = m["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let manifest = blob(&layout, m["digest"].as_str().unwrap());
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], version.as_str());
    assert!(labels["org.opencontainers.image.source"].is_string());
    assert_eq!(config["config"]["Entrypoint"][0], "netfab");
    let size: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    eprintln!("image {version}: {:.1} MB compressed", size as f64 / 1e6);

    // Unpacked as a runtime would, each binary the agent needs runs.
    let bundle = out.join("bundle");
    let unpack = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{version}", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        unpack.status.success(),
        "{}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("usr/lib/netfab/netfab.bpf.o").is_file());
    for (cmd, env) in [
        (vec!["netfab", "--version"], None),
        (vec!["netfab-cni"], Some(("CNI_COMMAND", "VERSION"))),
        (vec!["iptables", "--version"], None),
        (vec!["tc", "-V"], None),
    ] {
        let mut c = Command::new("chroot");
        c.arg(&rootfs).args(&cmd);
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
    std::fs::remove_dir_all(&out).unwrap();
}
