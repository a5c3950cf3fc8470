//! The agent: one loop for every mode. A [`Source`] says what this host
//! should look like (a state file, or the cluster store through
//! [`fabric::Fabric`]); the loop hands it to the [`Dataplane`], and writes
//! the typed report to the status file.
//!
//! ```text
//! Source::desired -> DesiredState -> Dataplane::apply -> ApplyReport
//!     -> status::build (+ Source::context) -> status.json
//! ```
//!
//! It applies when the source says something changed and at every resync
//! (which repairs kernel drift: an entry deleted by hand, a detached link).
//! Until the source knows the desired state (no store listing yet) the
//! dataplane is not touched, so an agent restarted during an outage keeps
//! forwarding with what the pinned maps hold. On shutdown the dataplane
//! stays: traffic keeps flowing while no agent runs.
pub mod desired;
pub mod fabric;
pub mod grace;
pub mod judge;
pub mod own;
pub mod statefile;
pub mod status;

#[cfg(test)]
mod tests;

use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use ipnet::Ipv4Net;
use log::{error, info, warn};

use crate::{
    dataplane::{self, ApplyMode, ApplyReport, Dataplane},
    state::DesiredState,
    store::Snapshot,
};

/// What every mode shares.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub node: String,
    /// Full re-apply interval (drift repair).
    pub resync: Duration,
    /// Where `netfab status` reads what the agent is doing.
    pub status_file: Option<PathBuf>,
    /// Why this dataplane was chosen (shown by `netfab status`).
    pub dataplane_reason: String,
    pub underlay_net: Option<Ipv4Net>,
    /// MTU containers on this host must use.
    pub container_mtu: u32,
    /// What the health and metrics endpoints read, if they are served.
    pub observed: Option<crate::serve::observed::Shared>,
    /// Where to say what the loop waits for before its first report.
    pub waiting_file: Option<PathBuf>,
}

/// What a source knows beyond the desired state, for `netfab status`.
#[derive(Default)]
pub struct StatusContext<'a> {
    /// The cluster view (who owns which subnet); none without a store.
    pub snap: Option<&'a Snapshot>,
    pub connected: bool,
    pub rejected: Vec<status::Rejected>,
    /// Retained peers: subnet, node, seconds since its lease went.
    pub retained: Vec<(Ipv4Net, String, u64)>,
}

/// Where the desired state comes from.
#[allow(async_fn_in_trait)]
pub trait Source {
    /// Upkeep before the loop decides whether to apply: reload local files,
    /// (re)connect, periodic re-list. Returns whether the desired state may
    /// have changed.
    async fn refresh(&mut self) -> bool;
    /// Waits for the next change or tick and takes it in. Returns whether
    /// the desired state may have changed. Dropped only at shutdown.
    async fn wait(&mut self) -> bool;
    /// The desired state now; `None` while it is not known yet.
    fn desired(&mut self) -> Option<DesiredState>;
    fn context(&self) -> StatusContext<'_>;
    /// Seconds until our store lease would expire without a keep-alive.
    fn lease_ttl_left(&self) -> Option<f64> {
        None
    }
    /// After each apply attempt (say, to publish what was leased).
    fn applied(&mut self) {}
    /// While [`Self::desired`] is `None`: what is missing, as the CNI
    /// plugin should tell a runtime.
    fn waiting_for(&self) -> String {
        "its first desired state".into()
    }
    async fn shutdown(&mut self) {}
}

/// Runs until `shutdown` completes.
pub async fn run<S: Source, D: Dataplane>(
    cfg: &LoopConfig,
    source: &mut S,
    dp: &mut D,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    // The last repair (a full apply that reads the kernel back).
    let mut last_repair: Option<Instant> = None;
    let mut dirty = true;
    let mut applies = 0u64;
    let mut reports = Reports::default();
    // After a failed apply: when to try again (without waiting for the next
    // event or resync, which would leave a waiting CNI ADD to time out).
    let mut retry = Retry::default();
    let mut waiting = Waiting::default();
    loop {
        if let Some((state, r)) = reports.due() {
            reports.write(cfg, dp.name(), source, &state, &r, applies);
        }
        dirty |= source.refresh().await;
        let due = last_repair.is_none_or(|t| t.elapsed() >= cfg.resync);
        if reports.last.is_none() {
            waiting.say(cfg, source.waiting_for());
        } else {
            waiting.clear(cfg);
        }
        if dirty || due {
            if let Some(state) = source.desired() {
                match state.validate() {
                    Err(e) => error!("computed state is inconsistent, not applied: {e}"),
                    Ok(()) => {
                        applies += 1;
                        let started = Instant::now();
                        // Events write their own difference; the resync
                        // reads the kernel back and repairs drift.
                        let mode = if due {
                            ApplyMode::Repair
                        } else {
                            ApplyMode::Changes
                        };
                        let applied = dp.apply(&state, mode).await;
                        let took = started.elapsed().as_secs_f64();
                        match applied {
                            Ok(r) => {
                                retry.succeeded();
                                log_report(&state, &r);
                                observe(cfg, |o| o.apply_seconds.observe(took));
                                if reports.urgent(&r) {
                                    reports.write(cfg, dp.name(), source, &state, &r, applies);
                                } else {
                                    reports.pending = Some((state, r));
                                }
                            }
                            Err(e) => {
                                let after = retry.failed();
                                error!("apply failed (again in {after:?}): {e:#}");
                                observe(cfg, |o| o.apply_failures += 1);
                            }
                        }
                    }
                }
                source.applied();
                if due {
                    last_repair = Some(Instant::now());
                }
                dirty = false;
            }
        }
        let ttl = source.lease_ttl_left();
        observe(cfg, |o| {
            o.tick = Instant::now();
            o.lease_ttl_left = ttl;
        });
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down; the dataplane stays in place");
                source.shutdown().await;
                // Nobody is answering for this host any more.
                for p in [&cfg.status_file, &cfg.waiting_file].into_iter().flatten() {
                    let _ = std::fs::remove_file(p);
                }
                return Ok(());
            }
            changed = source.wait() => dirty |= changed,
            _ = reports.pending_deadline() => {}
            _ = retry.due() => {
                retry.at = None;
                dirty = true;
            }
        }
    }
}

/// `waiting.json` while the loop has not reported: written when what it
/// waits for changes, removed after the first report.
#[derive(Default)]
struct Waiting {
    said: Option<String>,
    cleared: bool,
}

impl Waiting {
    fn say(&mut self, cfg: &LoopConfig, reason: String) {
        let Some(path) = &cfg.waiting_file else {
            return;
        };
        if self.said.as_ref() == Some(&reason) {
            return;
        }
        if let Err(e) = crate::rundir::write_waiting(path, &cfg.node, &reason) {
            warn!("writing {}: {e:#}", path.display());
        }
        self.said = Some(reason);
    }

    fn clear(&mut self, cfg: &LoopConfig) {
        if self.cleared {
            return;
        }
        if let Some(path) = &cfg.waiting_file {
            let _ = std::fs::remove_file(path);
        }
        self.cleared = true;
    }
}

/// Backoff for applies that failed: 100 ms doubling to 5 s, reset by a
/// success.
#[derive(Default)]
struct Retry {
    at: Option<Instant>,
    failures: u32,
}

impl Retry {
    fn failed(&mut self) -> Duration {
        let after = Duration::from_millis(100 << self.failures.min(6)).min(Duration::from_secs(5));
        self.failures += 1;
        self.at = Some(Instant::now() + after);
        after
    }

    fn succeeded(&mut self) {
        *self = Self::default();
    }

    async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    }
}

/// The status report (file and metrics) is rebuilt at most once a second:
/// at 10,000 peers one costs tens of milliseconds, and a burst of events
/// would pay it each time. What the CNI plugin waits for (which local
/// containers are programmed) and what it reports (skipped items) go out
/// at once.
#[derive(Default)]
struct Reports {
    last: Option<LastReport>,
    pending: Option<(DesiredState, ApplyReport)>,
}

struct LastReport {
    at: Instant,
    programmed: Vec<(std::net::Ipv4Addr, u32)>,
    skipped: Vec<dataplane::Skip>,
}

const STATUS_EVERY: Duration = Duration::from_secs(1);

impl Reports {
    fn urgent(&self, r: &ApplyReport) -> bool {
        self.last.as_ref().is_none_or(|l| {
            l.at.elapsed() >= STATUS_EVERY
                || l.programmed != r.programmed_endpoints
                || l.skipped != r.skipped
        })
    }

    fn due(&mut self) -> Option<(DesiredState, ApplyReport)> {
        let at = self.last.as_ref()?.at;
        (at.elapsed() >= STATUS_EVERY)
            .then(|| self.pending.take())
            .flatten()
    }

    async fn pending_deadline(&self) {
        match (&self.pending, &self.last) {
            (Some(_), Some(l)) => tokio::time::sleep_until((l.at + STATUS_EVERY).into()).await,
            _ => std::future::pending().await,
        }
    }

    fn write<S: Source>(
        &mut self,
        cfg: &LoopConfig,
        dataplane: &str,
        source: &S,
        state: &DesiredState,
        r: &ApplyReport,
        applies: u64,
    ) {
        let st = report_status(cfg, dataplane, source, state, r, applies);
        observe(cfg, |o| o.status = Some(st));
        self.last = Some(LastReport {
            at: Instant::now(),
            programmed: r.programmed_endpoints.clone(),
            skipped: r.skipped.clone(),
        });
        self.pending = None;
    }
}

fn log_report(state: &DesiredState, r: &ApplyReport) {
    for sk in &r.skipped {
        warn!("not programmed yet: {sk}");
    }
    for rf in &r.refused {
        error!("{rf}");
    }
    if r.map_upserts + r.map_removals > 0 {
        info!(
            "applied: {} map upserts, {} removals, {} remotes, {} endpoints",
            r.map_upserts,
            r.map_removals,
            state.remotes.len(),
            state.endpoints.len()
        );
    }
}

/// Updates what the health and metrics endpoints see, if they are served.
fn observe(cfg: &LoopConfig, f: impl FnOnce(&mut crate::serve::observed::Observed)) {
    if let Some(o) = &cfg.observed {
        f(&mut o.lock().expect("observed state poisoned"));
    }
}

/// Builds the status report and writes it to the status file, if any.
fn report_status<S: Source>(
    cfg: &LoopConfig,
    dataplane: &str,
    source: &S,
    state: &DesiredState,
    report: &ApplyReport,
    applies: u64,
) -> status::Status {
    let ctx = source.context();
    let empty = Snapshot::default();
    let st = status::build(
        status::StatusInput {
            node: &cfg.node,
            dataplane,
            reason: &cfg.dataplane_reason,
            underlay: cfg.underlay_net,
            container_mtu: cfg.container_mtu,
            snap: ctx.snap.unwrap_or(&empty),
            state,
            report,
            etcd_connected: ctx.connected,
            rejected: ctx.rejected,
            retained: ctx.retained,
            applies,
        },
        status::now_secs(),
    );
    if let Some(path) = &cfg.status_file {
        if let Err(e) = status::write(path, &st) {
            error!("writing status file: {e:#}");
        }
    }
    st
}
