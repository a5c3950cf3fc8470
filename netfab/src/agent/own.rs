//! This host's own lease records: what the store says about them, judged
//! against what we wrote. Pure.
use ipnet::Ipv4Net;

use crate::lease::SubnetLease;

/// A subnet this host holds, and the store revision of our last write to
/// its record: events at or before it are older than our own write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub subnet: Ipv4Net,
    pub written: i64,
}

/// What the store says about our own lease record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnKey {
    Ours,
    /// Deleted: write it back.
    Absent,
    /// Garbage or rewritten in place: rewrite it (if unchanged since `mod_rev`).
    Foreign {
        mod_rev: i64,
        what: String,
    },
    /// Created anew by another node after a delete: that node holds it now.
    TakenBy(String),
}

/// Judges our record's value (with its create and modify revisions).
pub fn classify(me: &SubnetLease, value: Option<(&[u8], i64, i64)>) -> OwnKey {
    let Some((v, created, modified)) = value else {
        return OwnKey::Absent;
    };
    match serde_json::from_slice::<SubnetLease>(v) {
        Ok(l) if &l == me => OwnKey::Ours,
        Ok(l) if l.node != me.node && created == modified => OwnKey::TakenBy(l.node),
        Ok(l) => OwnKey::Foreign {
            mod_rev: modified,
            what: format!("a value naming node {} at {}", l.node, l.underlay_ip),
        },
        Err(e) => OwnKey::Foreign {
            mod_rev: modified,
            what: format!("garbage ({e})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str) -> SubnetLease {
        SubnetLease {
            node: node.into(),
            underlay_ip: "100.64.0.1".parse().unwrap(),
            vtep_mac: Default::default(),
            dataplane: "ebpf".into(),
            agent_version: "t".into(),
            min_agent_version: None,
        }
    }

    #[test]
    fn our_record_is_judged_by_value_and_revisions() {
        let me = lease("h1");
        let mine = serde_json::to_vec(&me).unwrap();
        let other = serde_json::to_vec(&lease("h2")).unwrap();
        assert_eq!(classify(&me, None), OwnKey::Absent);
        assert_eq!(classify(&me, Some((&mine, 3, 9))), OwnKey::Ours);
        // Created anew by h2 (create == modify): h2 holds it now.
        assert_eq!(
            classify(&me, Some((&other, 10, 10))),
            OwnKey::TakenBy("h2".into())
        );
        // Rewritten in place: ours to put right.
        assert!(matches!(
            classify(&me, Some((&other, 3, 10))),
            OwnKey::Foreign { mod_rev: 10, .. }
        ));
        assert!(matches!(
            classify(&me, Some((b"junk", 3, 11))),
            OwnKey::Foreign { mod_rev: 11, .. }
        ));
    }
}
