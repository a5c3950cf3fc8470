//! MAC addresses and the conventions netfab uses to derive them.
use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A subnet's gateway: its first address, held by every host-side veth
/// of that subnet (IPAM hands out the rest).
pub fn gateway_of(subnet: ipnet::Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Every host-side veth gets this MAC (as Calico does): containers then need
/// one static neighbour entry for their gateway, whatever host they are on.
pub const GATEWAY_MAC: MacAddr = MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);

impl MacAddr {
    /// A host's VTEP MAC, derived from its underlay IP so it is stable across
    /// agent restarts and host reboots without being stored anywhere.
    /// `0e` = locally administered, unicast.
    pub fn vtep_for(underlay: Ipv4Addr) -> Self {
        let o = underlay.octets();
        MacAddr([0x0e, 0x6e, o[0], o[1], o[2], o[3]])
    }

    /// A container MAC derived from its IP (the convention Docker uses), so
    /// the host side never has to read it out of the container's namespace.
    pub fn container_for(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        MacAddr([0x0a, 0x6e, o[0], o[1], o[2], o[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a MAC address (expected six hex bytes such as 0e:6e:64:40:00:01)")]
pub struct BadMac(String);

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(|| BadMac(s.into()))?;
            if p.len() != 2 {
                return Err(BadMac(s.into()));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.into()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: MacAddr = "0e:6e:64:40:00:01".parse().unwrap();
        assert_eq!(m.0, [0x0e, 0x6e, 0x64, 0x40, 0x00, 0x01]);
        assert_eq!(m.to_string(), "0e:6e:64:40:00:01");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "0e:6e:64:40:00",
            "0e:6e:64:40:00:01:02",
            "zz:6e:64:40:00:01",
            "e:6e:64:40:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_macs_are_unicast_and_local() {
        let m = MacAddr::vtep_for(Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(m.0[0] & 1, 0, "unicast");
        assert_eq!(m.0[0] & 2, 2, "locally administered");
        let c = MacAddr::container_for(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(c.0[0] & 3, 2);
        assert_ne!(m, c);
    }
}
