//! The Kubernetes manifests in `deploy/`, checked the way the cluster would
//! check them: Kubernetes' own schemas (`kubernetes-validate --strict`,
//! installed by scripts/setup.sh), and every command and flag the
//! manifests give netfab accepted by the real binary.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use netfab_tests::manifests::{deploy_dir, load};

const VALIDATE: &str = "/opt/netfab-venv/bin/kubernetes-validate";
/// The oldest Kubernetes the manifests must pass (the tool's newest is
/// checked too).
const KUBE_VERSION: &str = "1.33.0";

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

fn validate(files: &[PathBuf], version: Option<&str>) -> (bool, String) {
    assert!(
        Path::new(VALIDATE).is_file(),
        "kubernetes-validate is missing: run scripts/setup.sh"
    );
    let mut c = Command::new(VALIDATE);
    c.arg("--strict");
    if let Some(v) = version {
        c.args(["-k", v]);
    }
    let out = c.args(files).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("ERROR"), text)
}

#[test]
fn every_manifest_passes_kubernetes_strict_schemas() {
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    for version in [Some(KUBE_VERSION), None] {
        let (ok, text) = validate(&files, version);
        assert!(ok, "kubernetes-validate --strict {version:?}:\n{text}");
        for f in &files {
            let name = f.file_name().unwrap().to_string_lossy();
            assert!(text.contains(&format!("{name} passed")), "{name}:\n{text}");
        }
    }
    // The check can fail: a misspelt field in a copy of the DaemonSet.
    let bad = std::env::temp_dir().join(format!("netfab-bad-ds-{}.yaml", std::process::id()));
    let ds = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    std::fs::write(&bad, ds.replace("hostNetwork: true", "hostNetwrok: true")).unwrap();
    let (ok, text) = validate(std::slice::from_ref(&bad), Some(KUBE_VERSION));
    std::fs::remove_file(&bad).unwrap();
    assert!(!ok, "a misspelt field passed:\n{text}");
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = load(&deploy_dir().join("Kustomization"));
    let listed: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let mut files: Vec<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    files.sort();
    assert_eq!(sorted, files);
}

/// Every flag the DaemonSet passes is one the real binary accepts: a typo
/// here would crash-loop every node.
#[test]
fn the_daemonset_commands_and_flags_exist_in_netfab() {
    let ds = load(&deploy_dir().join("daemonset.yaml"));
    let spec = &ds["spec"]["template"]["spec"];
    let netfab = netfab_lab::netfab_binary().unwrap();
    let containers = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap());
    for c in containers {
        let cmd: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(cmd[0], "netfab", "{c}");
        let help = Command::new(&netfab)
            .args(&cmd[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(help.status.success(), "{cmd:?}");
        let help = String::from_utf8_lossy(&help.stdout);
        for arg in c["args"].as_array().into_iter().flatten() {
            let arg = arg.as_str().unwrap();
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(&format!("--{flag}")),
                    "`{}` does not accept --{flag}",
                    cmd.join(" ")
                );
            }
        }
    }
}
