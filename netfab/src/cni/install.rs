//! Installing the plugin on a node (`netfab install-cni`, and the agent's
//! `--cni-conf-dir`): the binary into the CNI bin dir, atomically, and the
//! network configuration list into the conf dir only once the agent is
//! ready, so a runtime never picks up a configuration that cannot work
//! yet (flannel's "CNI not ready" window).
use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// What the conflist says.
#[derive(Debug, Clone)]
pub struct ConfSpec {
    /// The CNI network name (the list's `name`).
    pub name: String,
    /// The netfab network.
    pub network: String,
    pub run_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Chain portmap (hostPort) after netfab.
    pub portmap: bool,
}

pub fn conflist(s: &ConfSpec) -> Value {
    let mut plugins = vec![json!({
        "type": "netfab-cni",
        "network": s.network,
        "runDir": s.run_dir,
        "dataDir": s.data_dir,
        "capabilities": {"mac": true, "bandwidth": true}
    })];
    if s.portmap {
        plugins
            .push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
    }
    json!({"cniVersion": "1.0.0", "name": s.name, "plugins": plugins})
}

/// Writes `bytes` to `dir/name` through a temp file in the same directory
/// and a rename: a reader (a runtime executing the old binary, or reading
/// the conf dir) sees the old file or the new one, never half of one.
fn replace(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dst = dir.join(name);
    let tmp = dir.join(format!(".{name}.netfab-tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    // Closed before it becomes visible: executing a file still open for
    // writing fails with ETXTBSY.
    drop(f);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &dst).with_context(|| format!("renaming onto {}", dst.display()))?;
    Ok(dst)
}

/// Copies the plugin binary `src` into `bin_dir` as `netfab-cni`.
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    replace(bin_dir, "netfab-cni", &bytes, 0o755)
}

/// Writes the conflist as `conf_dir/file`.
pub fn write_conflist(conf_dir: &Path, file: &str, spec: &ConfSpec) -> Result<PathBuf> {
    let text = serde_json::to_string_pretty(&conflist(spec))?;
    replace(conf_dir, file, text.as_bytes(), 0o644)
}

/// Removes the conflist (the node stops offering netfab); absent is fine.
pub fn remove_conflist(conf_dir: &Path, file: &str) -> Result<()> {
    match std::fs::remove_file(conf_dir.join(file)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", conf_dir.join(file).display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_declares_the_capabilities_and_chains_portmap() {
        let spec = ConfSpec {
            name: "netfab".into(),
            network: "default".into(),
            run_dir: "/run/netfab".into(),
            data_dir: "/var/lib/netfab/ipam".into(),
            portmap: true,
        };
        let c = conflist(&spec);
        assert_eq!(c["plugins"][0]["type"], "netfab-cni");
        assert_eq!(c["plugins"][0]["capabilities"]["bandwidth"], true);
        assert_eq!(c["plugins"][1]["type"], "portmap");
        let dir = std::env::temp_dir().join(format!("netfab-install-{}", std::process::id()));
        let p = write_conflist(&dir, "10-netfab.conflist", &spec).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        remove_conflist(&dir, "10-netfab.conflist").unwrap();
        remove_conflist(&dir, "10-netfab.conflist").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
