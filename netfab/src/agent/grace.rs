//! Peers whose lease is gone stay routed for a grace period (unless another
//! host leases their subnet first), so a peer agent that is down or cut off
//! from the store does not cut its containers off.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;

use super::{desired::RetainedLease, judge::Judged};
use crate::lease::SubnetLease;

#[derive(Debug, Default)]
pub struct Grace {
    grace: Duration,
    /// Each peer lease seen live, and since when it has been gone.
    seen: BTreeMap<(String, Ipv4Net), (SubnetLease, Option<Instant>)>,
}

impl Grace {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            seen: BTreeMap::new(),
        }
    }

    /// Peers to keep routing although their lease is gone, given what is
    /// live now (`view`); forgets what the grace has run out for.
    pub fn retained(&mut self, view: &Judged, me: &str, now: Instant) -> Vec<RetainedLease> {
        let live = |n: &String, s: &Ipv4Net| view.leases.get(n).is_some_and(|m| m.contains_key(s));
        for (net, m) in &view.leases {
            for (sn, l) in m {
                if l.node == me {
                    continue;
                }
                // A live lease replaces what we kept for its subnet (every
                // served lease of a network has the network's prefix length,
                // so an overlapping subnet is the same key). Unchanged ones
                // are left alone: this runs at every event, over every peer.
                let key = (net.clone(), *sn);
                match self.seen.get_mut(&key) {
                    Some((kept, gone)) if kept == l => *gone = None,
                    _ => {
                        self.seen.insert(key, (l.clone(), None));
                    }
                }
            }
        }
        for ((n, s), (_, gone)) in self.seen.iter_mut() {
            if gone.is_none() && !live(n, s) {
                *gone = Some(now);
            }
        }
        let grace = self.grace;
        self.seen
            .retain(|_, (_, gone)| gone.is_none_or(|t| now.duration_since(t) < grace));
        self.seen
            .iter()
            .filter(|(_, (_, gone))| gone.is_some())
            .map(|((n, s), (l, _))| RetainedLease {
                network: n.clone(),
                subnet: *s,
                lease: l.clone(),
            })
            .collect()
    }

    /// Seconds since the lease of `subnet` in `net` went (0 if live).
    pub fn gone_for(&self, net: &str, subnet: Ipv4Net) -> u64 {
        self.seen
            .get(&(net.to_string(), subnet))
            .and_then(|(_, gone)| *gone)
            .map_or(0, |t| t.elapsed().as_secs())
    }
}
