//! Bandwidth limits (the CNI `bandwidth` capability), as Cilium's Bandwidth
//! Manager does egress: each packet leaving a limited container is stamped
//! with its earliest departure time and the `fq` qdisc on the underlay
//! holds it until then, so the rate holds without a queue per container.
//! Ingress cannot be paced (redirects into a container pass no qdisc), so
//! it is policed: a token bucket that drops what exceeds it.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_set_tstamp},
    programs::TcContext,
};
use netfab_common::{DropReason, RateLimit, RateState};

use super::{
    counters::{drop_with, Verdict},
    maps::{RATE_LIMITS, RATE_STATE},
};

const NSEC_PER_SEC: u64 = 1_000_000_000;
/// `BPF_SKB_TSTAMP_DELIVERY_MONO` (an anonymous enum in the bindings): the
/// stamp is a departure time on the monotonic clock, which survives
/// forwarding and encapsulation and which `fq` reads.
const BPF_SKB_TSTAMP_DELIVERY_MONO: u32 = 1;
/// Packets that would leave later than the horizon are dropped rather than
/// queued. A container's TCP gets no backpressure from a qdisc in another
/// namespace, so it fills whatever queue it is allowed: the horizon is that
/// queue. 500 ms, or two full-size (64 KiB GSO) packets at the rate if that
/// is longer, so a slow limit still passes aggregated packets.
const MIN_HORIZON_NS: u64 = NSEC_PER_SEC / 2;
const MAX_PACKET: u64 = 65536;

#[inline(always)]
fn state(ip: u32) -> Option<*mut RateState> {
    if let Some(p) = RATE_STATE.get_ptr_mut(&ip) {
        return Some(p);
    }
    let _ = RATE_STATE.insert(&ip, &RateState::default(), 0);
    RATE_STATE.get_ptr_mut(&ip)
}

/// Container `ip`'s limits, its state and the time, if the direction
/// `rate` picks is limited.
#[inline(always)]
fn limited(ip: u32, rate: impl Fn(&RateLimit) -> u64) -> Option<(RateLimit, *mut RateState, u64)> {
    // SAFETY: the value is copied out at once.
    let limit = (unsafe { RATE_LIMITS.get(&ip) }).copied()?;
    if rate(&limit) == 0 {
        return None;
    }
    let st = state(ip)?;
    // SAFETY: no arguments.
    Some((limit, st, unsafe { bpf_ktime_get_ns() }))
}

/// Paces a packet from container `ip` that leaves the host, by its egress
/// limit if it has one: stamped with its departure time for `fq`.
#[inline(always)]
pub fn pace_egress(ctx: &TcContext, ip: u32) -> Result<(), Verdict> {
    if let Some((departs, now)) = egress_departure(ctx, ip)? {
        if departs > now {
            // SAFETY: plain helper call on the context's skb.
            unsafe {
                bpf_skb_set_tstamp(ctx.skb.skb, departs, BPF_SKB_TSTAMP_DELIVERY_MONO);
            }
        }
    }
    Ok(())
}

/// The same limit for a packet that stays on this host (its gateway, the
/// host's addresses, a container here): no qdisc holds such packets, so the
/// pacing horizon is the queue and what exceeds it is dropped (policed).
#[inline(always)]
pub fn police_egress(ctx: &TcContext, ip: u32) -> Result<(), Verdict> {
    egress_departure(ctx, ip).map(|_| ())
}

/// Books a packet of container `ip` against its egress limit: (departure
/// time, now), `None` without a limit, a drop beyond the horizon.
#[inline(always)]
fn egress_departure(ctx: &TcContext, ip: u32) -> Result<Option<(u64, u64)>, Verdict> {
    let Some((limit, st, now)) = limited(ip, |l| l.egress_bytes_per_sec) else {
        return Ok(None);
    };
    let cost = ctx.len() as u64 * NSEC_PER_SEC / limit.egress_bytes_per_sec;
    // SAFETY: the pointer comes from a successful lookup in an LRU map the
    // datapath alone writes; a race between CPUs costs accuracy, not safety.
    let next = unsafe { (*st).egress_next_ns };
    // Idle time earns at most the burst allowance.
    let start = if next + limit.egress_burst_ns < now {
        now - limit.egress_burst_ns
    } else {
        next
    };
    let departs = start + cost;
    let horizon = core::cmp::max(
        MIN_HORIZON_NS,
        2 * MAX_PACKET * NSEC_PER_SEC / limit.egress_bytes_per_sec,
    );
    if departs > now + horizon {
        return Err(drop_with(DropReason::RateLimited));
    }
    // SAFETY: as above.
    unsafe { (*st).egress_next_ns = departs };
    Ok(Some((departs, now)))
}

/// Polices a packet for container `ip` by its ingress limit, if it has one.
#[inline(always)]
pub fn police_ingress(ctx: &TcContext, ip: u32) -> Result<(), Verdict> {
    let Some((limit, st, now)) = limited(ip, |l| l.ingress_bytes_per_sec) else {
        return Ok(());
    };
    // SAFETY: as in `pace_egress`.
    let (tokens, at) = unsafe { ((*st).ingress_tokens, (*st).ingress_at_ns) };
    // At most a second of refill counts: a full bucket is far less, and the
    // product stays well inside u64.
    let idle = core::cmp::min(now.saturating_sub(at), NSEC_PER_SEC);
    let earned = idle * limit.ingress_bytes_per_sec / NSEC_PER_SEC;
    let tokens = core::cmp::min(tokens + earned, limit.ingress_burst_bytes);
    let len = ctx.len() as u64;
    let (left, verdict) = if len > tokens {
        (tokens, Err(drop_with(DropReason::RateLimited)))
    } else {
        (tokens - len, Ok(()))
    };
    // SAFETY: as above.
    unsafe {
        (*st).ingress_tokens = left;
        (*st).ingress_at_ns = now;
    }
    verdict
}
