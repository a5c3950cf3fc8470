//! The CNI `bandwidth` capability (`runtimeConfig.bandwidth`, in bits per
//! second and bits, as the upstream bandwidth plugin takes it), kept with a
//! container's allocation and endpoint and enforced by the eBPF datapath:
//! egress paced by earliest departure time with `fq` on the underlay,
//! ingress policed by a token bucket.
use netfab_common::RateLimit;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default)]
    pub ingress_rate: u64,
    #[serde(default)]
    pub ingress_burst: u64,
    #[serde(default)]
    pub egress_rate: u64,
    #[serde(default)]
    pub egress_burst: u64,
}

/// The ingress bucket holds at least four full-size (64 KiB GRO) packets:
/// a policer drops whole aggregates, and with room for two TCP reached
/// only about half the rate (1 Mbit burst at 10 Mbit/s: measured 5 of 10;
/// 2 Mbit: 9.7).
pub const MIN_INGRESS_BUCKET: u64 = 4 * 65536;

impl Bandwidth {
    /// As the upstream plugin: a rate needs a burst and a burst a rate.
    pub fn validate(&self) -> Result<(), String> {
        for (what, rate, burst) in [
            ("ingress", self.ingress_rate, self.ingress_burst),
            ("egress", self.egress_rate, self.egress_burst),
        ] {
            if (rate == 0) != (burst == 0) {
                return Err(format!(
                    "{what}Rate and {what}Burst must be set together (got {rate} bit/s, {burst} bit)"
                ));
            }
        }
        Ok(())
    }

    pub fn limits_egress(&self) -> bool {
        self.egress_rate > 0
    }

    pub fn is_unlimited(&self) -> bool {
        self.ingress_rate == 0 && self.egress_rate == 0
    }

    /// The datapath's form: bytes per second, the egress burst as time at
    /// the rate, the ingress burst in bytes.
    pub fn rate_limit(&self) -> RateLimit {
        let egress_bytes = self.egress_rate / 8;
        RateLimit {
            egress_bytes_per_sec: egress_bytes,
            egress_burst_ns: if egress_bytes == 0 {
                0
            } else {
                (self.egress_burst as u128 * 1_000_000_000 / self.egress_rate as u128) as u64
            },
            ingress_bytes_per_sec: self.ingress_rate / 8,
            ingress_burst_bytes: if self.ingress_rate == 0 {
                0
            } else {
                (self.ingress_burst / 8).max(MIN_INGRESS_BUCKET)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_become_bytes_and_bursts_time_or_bytes() {
        let b = Bandwidth {
            egress_rate: 10_000_000,
            egress_burst: 1_000_000,
            ingress_rate: 8_000_000,
            ingress_burst: 80_000,
        };
        b.validate().unwrap();
        let r = b.rate_limit();
        assert_eq!(r.egress_bytes_per_sec, 1_250_000);
        assert_eq!(
            r.egress_burst_ns, 100_000_000,
            "1 Mbit at 10 Mbit/s: 100 ms"
        );
        assert_eq!(r.ingress_bytes_per_sec, 1_000_000);
        assert_eq!(
            r.ingress_burst_bytes, MIN_INGRESS_BUCKET,
            "raised to four GRO packets"
        );
        assert_eq!(Bandwidth::default().rate_limit(), RateLimit::default());
    }

    #[test]
    fn a_rate_without_a_burst_is_refused() {
        let b = Bandwidth {
            egress_rate: 1000,
            ..Default::default()
        };
        assert!(b
            .validate()
            .unwrap_err()
            .contains("egressRate and egressBurst"));
        let b = Bandwidth {
            ingress_burst: 1000,
            ..Default::default()
        };
        assert!(b.validate().is_err());
    }
}
