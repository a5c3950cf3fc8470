//! The container image, built once per test binary by `scripts/image.sh`
//! and unpacked with umoci as a runtime would unpack it.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value;

pub struct Image {
    /// The OCI image layout.
    pub layout: PathBuf,
    /// Its tag (the crate version).
    pub version: String,
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    /// The runtime spec umoci derived from the image config (env, cwd, …).
    pub runtime_config: Value,
}

impl Image {
    /// A blob of the layout, parsed as JSON.
    pub fn blob(&self, digest: &str) -> Value {
        let (alg, hex) = digest.split_once(':').expect("algorithm:hex");
        let path = self.layout.join("blobs").join(alg).join(hex);
        serde_json::from_slice(&std::fs::read(&path).expect("reading a blob")).expect("a JSON blob")
    }

    /// The image's environment (`KEY=VALUE`), as the runtime starts with it.
    pub fn env(&self) -> Vec<(String, String)> {
        self.runtime_config["process"]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds and unpacks the image on first use (under target/image-test).
pub fn built() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = root.join("target/image-test");
        let _ = std::fs::remove_dir_all(&out);
        run(
            Command::new("bash")
                .arg(root.join("scripts/image.sh"))
                .arg(&out),
            "scripts/image.sh",
        );
        let layout = out.join("oci");
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let version = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("a tagged image")
            .to_string();
        let bundle = out.join("bundle");
        run(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:{version}", layout.display()))
                .arg(&bundle),
            "umoci unpack",
        );
        let runtime_config =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        Image {
            layout,
            version,
            rootfs: bundle.join("rootfs"),
            runtime_config,
        }
    })
}
