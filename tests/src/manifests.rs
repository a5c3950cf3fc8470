//! The Kubernetes manifests in `deploy/`, read as the cluster would read
//! them (YAML through PyYAML, which comes with kubernetes-validate in the
//! venv scripts/setup.sh makes).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

const PYTHON: &str = "/opt/netfab-venv/bin/python";

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A YAML file as JSON.
pub fn load(path: &Path) -> Value {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The agent container of the DaemonSet.
pub fn agent_container() -> Value {
    let ds = load(&deploy_dir().join("daemonset.yaml"));
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("an agent container")
        .clone()
}

/// The capabilities the DaemonSet adds for the agent.
pub fn agent_capabilities() -> Vec<String> {
    agent_container()["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}
