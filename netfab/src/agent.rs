//! The agent loop (etcd-less mode): read the desired state from a file, apply
//! it, and re-apply on every change and on a periodic resync that repairs
//! drift (an entry deleted by hand, a link detached).
use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use log::{error, info, warn};

use crate::{
    dataplane::{ebpf::EbpfDataplane, Dataplane},
    state::DesiredState,
};

pub struct AgentConfig {
    pub state_file: PathBuf,
    pub pin_dir: PathBuf,
    pub bpf_object: PathBuf,
    pub resync: Duration,
    /// How often the state file is checked for changes.
    pub poll: Duration,
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Runs until `shutdown` completes. Leaves the dataplane in place on exit:
/// traffic keeps flowing while no agent runs (`netfab cleanup` removes it).
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut dp = EbpfDataplane::load(&cfg.bpf_object, &cfg.pin_dir)?;
    info!(
        "dataplane {} loaded; maps pinned in {}",
        dp.name(),
        cfg.pin_dir.display()
    );
    tokio::pin!(shutdown);
    let mut last_stamp = None;
    let mut current: Option<DesiredState> = None;
    let mut last_apply = Instant::now() - cfg.resync;
    loop {
        let s = stamp(&cfg.state_file);
        let changed = s != last_stamp;
        if changed {
            last_stamp = s;
            match DesiredState::load(&cfg.state_file) {
                Ok(st) => current = Some(st),
                // Keep serving the last good state: bad input loses nothing.
                Err(e) => error!("{e}; keeping the previous state"),
            }
        }
        if let Some(st) = &current {
            if changed || last_apply.elapsed() >= cfg.resync {
                match dp.apply(st).await {
                    Ok(r) => {
                        for s in &r.skipped {
                            warn!("not programmed yet: {s}");
                        }
                        if r.map_upserts + r.map_removals > 0 || changed {
                            info!(
                                "applied: {} map upserts, {} removals, {} attachments",
                                r.map_upserts, r.map_removals, r.attached
                            );
                        }
                    }
                    Err(e) => error!("apply failed: {e:#}"),
                }
                last_apply = Instant::now();
            }
        }
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down; the dataplane stays in place");
                return Ok(());
            }
            _ = tokio::time::sleep(cfg.poll) => {}
        }
    }
}
