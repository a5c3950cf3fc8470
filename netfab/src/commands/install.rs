//! `netfab install-cni`, and the agent's part of it: the plugin binary goes
//! into the CNI bin dir at once (an init container's job); the conflist is
//! written only once the local agent is ready.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use log::info;
use netfab::cni::install::{self, ConfSpec};

#[derive(Args, Debug, Clone)]
pub struct CniConfArgs {
    /// The CNI bin dir (the plugin goes there; portmap is chained if it is
    /// there too).
    #[arg(long, env = "NETFAB_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The CNI conf dir to write the conflist into once the agent is
    /// ready [default: none, no conflist].
    #[arg(long, env = "NETFAB_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    #[arg(long, default_value = "10-netfab.conflist")]
    pub cni_conf_file: String,
    /// The CNI network name (the conflist's `name`).
    #[arg(long, default_value = "netfab")]
    pub cni_name: String,
    /// The netfab network containers join.
    #[arg(long, env = "NETFAB_CNI_NETWORK", default_value = "default")]
    pub cni_network: String,
    /// Where the plugin keeps address allocations.
    #[arg(long, default_value = "/var/lib/netfab/ipam")]
    pub cni_data_dir: PathBuf,
    /// Remove the conflist when the agent stops (a node leaving netfab for
    /// good; an upgrade keeps it so pods can still be created).
    #[arg(long)]
    pub cni_remove_conf_on_exit: bool,
}

impl CniConfArgs {
    pub fn spec(&self, run_dir: &Path) -> ConfSpec {
        ConfSpec {
            name: self.cni_name.clone(),
            network: self.cni_network.clone(),
            run_dir: run_dir.to_path_buf(),
            data_dir: self.cni_data_dir.clone(),
            portmap: self.cni_bin_dir.join("portmap").is_file(),
        }
    }

    /// Writes the conflist if a conf dir is set.
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        if let Some(dir) = &self.cni_conf_dir {
            let p = install::write_conflist(dir, &self.cni_conf_file, &self.spec(run_dir))?;
            info!("agent ready: wrote {}", p.display());
        }
        Ok(())
    }

    pub fn remove(&self) -> Result<()> {
        if let (Some(dir), true) = (&self.cni_conf_dir, self.cni_remove_conf_on_exit) {
            install::remove_conflist(dir, &self.cni_conf_file)?;
            info!("removed {}", dir.join(&self.cni_conf_file).display());
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    pub conf: CniConfArgs,
    /// The plugin binary to install [default: netfab-cni next to netfab].
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// The agent's run directory.
    #[arg(long, env = "NETFAB_RUN_DIR", default_value = netfab::rundir::DEFAULT)]
    pub run_dir: PathBuf,
    /// Also wait (up to this many seconds) for the local agent to be ready
    /// and then write the conflist. Without it only the binary is installed
    /// (an init container runs before the agent; the agent writes the
    /// conflist itself with --cni-conf-dir).
    #[arg(long)]
    pub wait_ready_secs: Option<u64>,
}

pub fn run(a: InstallArgs) -> Result<()> {
    let src = match &a.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("netfab-cni"),
    };
    let dst = install::install_binary(&src, &a.conf.cni_bin_dir)?;
    info!("installed {} as {}", src.display(), dst.display());
    let Some(secs) = a.wait_ready_secs else {
        return Ok(());
    };
    if a.conf.cni_conf_dir.is_none() {
        bail!("--wait-ready-secs needs --cni-conf-dir");
    }
    let rd = netfab::rundir::RunDir::new(&a.run_dir);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match agent_ready(&rd) {
            Ok(()) => return a.conf.write(&a.run_dir),
            Err(why) if Instant::now() >= deadline => {
                bail!("the agent is not ready after {secs} s ({why}); no conflist written")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The agent runs (holds its lock) and its last report shows a programmed
/// dataplane with a subnet leased.
fn agent_ready(rd: &netfab::rundir::RunDir) -> Result<(), String> {
    if !netfab::rundir::agent_alive(rd).map_err(|e| format!("{e:#}"))? {
        return Err("no agent running".into());
    }
    let text = std::fs::read_to_string(rd.status())
        .with_context(|| format!("reading {}", rd.status().display()))
        .map_err(|e| format!("{e:#}"))?;
    let st: netfab::rundir::Status = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if st.networks.is_empty() {
        return Err("no subnet leased yet".into());
    }
    Ok(())
}
