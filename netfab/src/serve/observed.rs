//! What the loop tells the agent's HTTP endpoints: when it last turned,
//! its last status report, how long applies take, how much lease time is
//! left. The loop writes it; probes and scrapes only read.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::rundir::Status;

/// Apply duration buckets (seconds): an apply takes milliseconds; seconds
/// mean trouble.
pub const APPLY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Cumulative counts per bucket of `APPLY_BUCKETS`.
    pub buckets: [u64; APPLY_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        for (b, le) in self.buckets.iter_mut().zip(APPLY_BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Clone)]
pub struct Observed {
    /// The loop's last turn (it turns at least every 200 ms, and at every
    /// resync).
    pub tick: Instant,
    pub status: Option<Status>,
    pub apply_seconds: Histogram,
    pub apply_failures: u64,
    /// Seconds until our etcd lease would expire without a keep-alive.
    pub lease_ttl_left: Option<f64>,
    /// Whether this agent leases through a store (etcd), so readiness
    /// needs a live session and a held subnet.
    pub store: bool,
}

pub type Shared = Arc<Mutex<Observed>>;

pub fn shared(store: bool) -> Shared {
    Arc::new(Mutex::new(Observed {
        tick: Instant::now(),
        status: None,
        apply_seconds: Histogram::default(),
        apply_failures: 0,
        lease_ttl_left: None,
        store,
    }))
}

impl Observed {
    /// Alive: the loop turned recently. Never depends on etcd, so an etcd
    /// outage does not get every agent restarted.
    pub fn live(&self, stale_after: Duration) -> Result<(), String> {
        let age = self.tick.elapsed();
        if age > stale_after {
            return Err(format!("the agent loop has not turned for {age:?}"));
        }
        Ok(())
    }

    /// Ready: programmed at least once and, with a store, connected and
    /// holding a subnet.
    pub fn ready(&self) -> Result<(), String> {
        let Some(st) = &self.status else {
            return Err("the dataplane has not been programmed yet".into());
        };
        if self.store {
            if !st.etcd_connected {
                return Err("no live etcd session".into());
            }
            if st.networks.is_empty() {
                return Err("no subnet leased yet".into());
            }
        }
        Ok(())
    }
}
