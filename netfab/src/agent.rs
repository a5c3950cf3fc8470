//! The agent loop (etcd-less mode): read the desired state from a file, apply
//! it with whichever dataplane was selected, report what was applied in the
//! status file, and re-apply on every change and on a periodic resync that
//! repairs drift (an entry deleted by hand, a link detached).
use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use ipnet::Ipv4Net;
use log::{error, info, warn};

use crate::{control::status, dataplane::Dataplane, state::DesiredState, store::Snapshot};

pub struct AgentConfig {
    pub state_file: PathBuf,
    pub resync: Duration,
    /// How often the state file is checked for changes.
    pub poll: Duration,
    pub node: String,
    /// Where `netfab status` reads what the agent is doing.
    pub status_file: Option<PathBuf>,
    /// Why this dataplane was chosen (shown by `netfab status`).
    pub dataplane_reason: String,
    pub underlay_net: Option<Ipv4Net>,
    pub container_mtu: u32,
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Runs until `shutdown` completes. Leaves the dataplane in place on exit:
/// traffic keeps flowing while no agent runs (`netfab cleanup` removes it).
pub async fn run<D: Dataplane>(
    cfg: AgentConfig,
    dp: &mut D,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    info!("state-file mode: dataplane {}", dp.name());
    tokio::pin!(shutdown);
    let mut last_stamp = None;
    let mut current: Option<DesiredState> = None;
    let mut last_apply = Instant::now() - cfg.resync;
    let mut applies = 0u64;
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
                applies += 1;
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
                        write_status(&cfg, dp.name(), st, &r, applies);
                    }
                    Err(e) => error!("apply failed: {e:#}"),
                }
                last_apply = Instant::now();
            }
        }
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down; the dataplane stays in place");
                if let Some(p) = &cfg.status_file {
                    let _ = std::fs::remove_file(p);
                }
                return Ok(());
            }
            _ = tokio::time::sleep(cfg.poll) => {}
        }
    }
}

fn write_status(
    cfg: &AgentConfig,
    dataplane: &str,
    state: &DesiredState,
    report: &crate::dataplane::ApplyReport,
    applies: u64,
) {
    let Some(path) = &cfg.status_file else {
        return;
    };
    let st = status::build(
        status::StatusInput {
            node: &cfg.node,
            dataplane,
            reason: &cfg.dataplane_reason,
            underlay: cfg.underlay_net,
            container_mtu: cfg.container_mtu,
            // No store in this mode: peers are known by subnet only.
            snap: &Snapshot::default(),
            state,
            report,
            etcd_connected: false,
            rejected: Vec::new(),
            retained: Vec::new(),
            applies,
        },
        status::now_secs(),
    );
    if let Err(e) = status::write(path, &st) {
        error!("writing status file: {e:#}");
    }
}
