//! Traffic the tests run and watch: a continuous 10 ms ping in the
//! background, and VXLAN frames captured while something runs.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use netfab_lab::demo::{parse_ping, PingStats};

use crate::{
    capture::Capture,
    pcap::{self, VxlanFrame},
};

/// `ping -i 0.01 -c COUNT` from a namespace, running until `finish`.
pub struct Pinger(Child);

impl Pinger {
    pub fn start(ns: &str, dst: &str, count: u32) -> Self {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-q", "-i", "0.01", "-W", "1", "-c",
            ])
            .arg(count.to_string())
            .arg(dst)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting ping");
        Self(child)
    }

    pub fn finish(self) -> PingStats {
        let out = self.0.wait_with_output().expect("waiting for ping");
        parse_ping(&String::from_utf8_lossy(&out.stdout)).expect("ping summary")
    }
}

/// Captures `count` UDP/4789 frames on the underlay bridge while `traffic`
/// runs; each is parsed as VXLAN (None if it is not).
pub fn vxlan_frames(
    underlay_ns: &str,
    count: u32,
    traffic: impl FnOnce(),
) -> Vec<Option<VxlanFrame>> {
    let cap = Capture::start(underlay_ns, "br0", "udp port 4789", count);
    traffic();
    let file = cap.finish(Duration::from_secs(10));
    pcap::packets(&file)
        .into_iter()
        .map(|f| pcap::parse_vxlan(f, 4789))
        .collect()
}
