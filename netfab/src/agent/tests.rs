//! The loop with an in-memory store and a recording dataplane: pure (no
//! etcd, no kernel). Lease events must reach the dataplane as deltas.
use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf, time::Duration};

use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot};

use super::{fabric::*, *};
use crate::{
    dataplane::kind::DataplaneKind,
    lease::{subnet_key, SubnetLease},
    store::{memory::MemoryStore, KeyKind},
};

/// Records every state it is asked to apply.
struct Recorder(mpsc::UnboundedSender<DesiredState>);

impl Dataplane for Recorder {
    async fn apply(
        &mut self,
        state: &DesiredState,
        _mode: crate::dataplane::ApplyMode,
    ) -> anyhow::Result<ApplyReport> {
        let _ = self.0.send(state.clone());
        Ok(ApplyReport::default())
    }
    fn kind(&self) -> DataplaneKind {
        DataplaneKind::Ebpf
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("netfab-loop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg(dir: &std::path::Path) -> FabricConfig {
    FabricConfig {
        node: "h1".into(),
        underlay_interface: "eth0".into(),
        underlay_net: "100.64.0.1/24".parse().unwrap(),
        dataplane: "ebpf".into(),
        lease_ttl: 30,
        // Long: every change in this test must come from an event.
        relist: Duration::from_secs(3600),
        endpoints_file: dir.join("endpoints.json"),
        lease_file: Some(dir.join("leases.json")),
        container_mtu: 1450,
        masquerade: false,
        lease_grace: Duration::ZERO,
        store_addrs: Vec::new(),
        log_drops: false,
        ipam_dir: dir.join("ipam"),
        release_on_exit: true,
    }
}

fn config() -> KeyKind {
    KeyKind::Config {
        net: "default".into(),
    }
}

fn lease_at(sn: &str) -> KeyKind {
    KeyKind::Lease {
        net: "default".into(),
        subnet: subnet_key(&sn.parse().unwrap()),
    }
}

fn peer(node: &str, ip: &str) -> Vec<u8> {
    serde_json::to_vec(&SubnetLease {
        node: node.into(),
        underlay_ip: ip.parse().unwrap(),
        vtep_mac: Default::default(),
        dataplane: "ebpf".into(),
        agent_version: "t".into(),
        min_agent_version: None,
    })
    .unwrap()
}

fn remotes(s: &DesiredState) -> BTreeSet<(Ipv4Net, Ipv4Addr)> {
    s.remotes
        .iter()
        .map(|r| (r.subnet, r.underlay_ip))
        .collect()
}

/// The next applied state that differs from `prev` in its remotes.
async fn next_change(
    rx: &mut mpsc::UnboundedReceiver<DesiredState>,
    prev: &BTreeSet<(Ipv4Net, Ipv4Addr)>,
) -> DesiredState {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = rx.recv().await.expect("loop ended");
            if &remotes(&s) != prev {
                return s;
            }
        }
    })
    .await
    .expect("no change reached the dataplane within 5 s")
}

/// A store holding network `default` and peer h9's lease.
fn seeded_store() -> MemoryStore {
    let store = MemoryStore::default();
    store.put(
        config(),
        br#"{"name":"default","cidr":"10.244.0.0/16","subnet_len":24,"vni":1}"#,
    );
    store.put(lease_at("10.244.9.0/24"), &peer("h9", "100.64.0.9"));
    store
}

fn loop_cfg(status_file: Option<PathBuf>) -> LoopConfig {
    LoopConfig {
        node: "h1".into(),
        // Long: every change in these tests must come from an event.
        resync: Duration::from_secs(3600),
        status_file,
        dataplane_reason: "test".into(),
        underlay_net: Some("100.64.0.1/24".parse().unwrap()),
        container_mtu: 1450,
        observed: None,
        waiting_file: None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn lease_events_reach_the_dataplane_as_deltas() {
    let dir = tmpdir("deltas");
    let store = seeded_store();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let lc = loop_cfg(Some(dir.join("status.json")));
    let mut src = Fabric::new(cfg(&dir), store.clone());
    let mut dp = Recorder(tx);
    let agent = run(&lc, &mut src, &mut dp, async {
        let _ = stopped.await;
    });
    let test = async {
        // First apply: our own subnet leased, the existing peer routed.
        let first = next_change(&mut rx, &BTreeSet::new()).await;
        let ours = first.networks[0].subnet;
        assert_eq!(
            remotes(&first),
            BTreeSet::from([(
                "10.244.9.0/24".parse().unwrap(),
                "100.64.0.9".parse().unwrap()
            )])
        );
        assert!(store.get(&lease_at(&ours.to_string())).is_some());
        let lists = store.calls("list");

        // A peer joins: exactly its subnet is added.
        store.put(lease_at("10.244.7.0/24"), &peer("h7", "100.64.0.7"));
        let s = next_change(&mut rx, &remotes(&first)).await;
        let added: Vec<_> = remotes(&s).difference(&remotes(&first)).copied().collect();
        assert_eq!(
            added,
            vec![(
                "10.244.7.0/24".parse().unwrap(),
                "100.64.0.7".parse().unwrap()
            )]
        );
        assert!(remotes(&first).is_subset(&remotes(&s)));

        // Garbage on a peer's record keeps its last good value (no change)
        // and is reported; the next good event is still taken in.
        store.put(lease_at("10.244.7.0/24"), b"{garbage");
        store.put(lease_at("10.244.8.0/24"), &peer("h8", "100.64.0.8"));
        let s2 = next_change(&mut rx, &remotes(&s)).await;
        let added: Vec<_> = remotes(&s2).difference(&remotes(&s)).copied().collect();
        assert_eq!(
            added,
            vec![(
                "10.244.8.0/24".parse().unwrap(),
                "100.64.0.8".parse().unwrap()
            )]
        );
        assert!(remotes(&s2).contains(&(
            "10.244.7.0/24".parse().unwrap(),
            "100.64.0.7".parse().unwrap()
        )));
        // The report follows within a second (reports are coalesced).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let st: status::Status =
                serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).unwrap())
                    .unwrap();
            if st.rejected.iter().any(|r| r.key.ends_with("10.244.7.0-24")) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not reported: {:?}",
                st.rejected
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        // A peer leaves (grace 0): exactly its subnet is removed.
        store.delete(&lease_at("10.244.9.0/24"));
        let s3 = next_change(&mut rx, &remotes(&s2)).await;
        let removed: Vec<_> = remotes(&s2).difference(&remotes(&s3)).copied().collect();
        assert_eq!(
            removed,
            vec![(
                "10.244.9.0/24".parse().unwrap(),
                "100.64.0.9".parse().unwrap()
            )]
        );
        assert_eq!(remotes(&s3).len() + 1, remotes(&s2).len());

        // Our own record deleted by hand: written back from the event.
        store.delete(&lease_at(&ours.to_string()));
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.get(&lease_at(&ours.to_string())).is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("our lease was not written back");
        // Every change came as an event: no re-list was needed.
        assert_eq!(store.calls("list"), lists);
        let _ = stop.send(());
        ours
    };
    let (r, ours) = tokio::join!(agent, test);
    r.unwrap();
    // Released on exit; the status file is gone with the agent.
    assert!(store.get(&lease_at(&ours.to_string())).is_none());
    assert!(!dir.join("status.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "current_thread")]
async fn a_lost_session_keeps_the_state_and_reopens() {
    let dir = tmpdir("lost");
    let store = seeded_store();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let lc = loop_cfg(None);
    let mut c = cfg(&dir);
    // The peer's lease goes with the sessions below: it must stay routed.
    c.lease_grace = Duration::from_secs(3600);
    let mut src = Fabric::new(c, store.clone());
    let mut dp = Recorder(tx);
    let agent = run(&lc, &mut src, &mut dp, async {
        let _ = stopped.await;
    });
    let test = async {
        let first = next_change(&mut rx, &BTreeSet::new()).await;
        let ours = first.networks[0].subnet;
        let opens = store.calls("open");
        // The store forgets every session (etcd after a long partition).
        store.expire_sessions();
        store.delete(&lease_at("10.244.9.0/24"));
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.calls("open") == opens || store.get(&lease_at(&ours.to_string())).is_none()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the loop did not reopen and re-lease");
        // Every state applied since kept the peer (grace) and our subnet.
        while let Ok(s) = rx.try_recv() {
            assert_eq!(remotes(&s), remotes(&first));
            assert_eq!(s.networks[0].subnet, ours);
        }
        let _ = stop.send(());
    };
    let (r, ()) = tokio::join!(agent, test);
    r.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
