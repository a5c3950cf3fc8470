//! The run directory the agent and the CNI plugin share, and how each learns
//! at once that the other wrote something: every file in it is replaced
//! atomically (temp file + rename), so a watch for `IN_MOVED_TO` on the
//! directory sees each new version exactly when it is complete. No polling:
//! the agent wakes when `endpoints.json` changes, ADD wakes when
//! `status.json` does.
//!
//! Files (names below, all JSON): `endpoints.json` (the plugin's containers,
//! written under `endpoints.lock`), `leases.json` (subnets and MTU, from the
//! agent), `status.json` (what the agent applied), `agent.lock` (one agent
//! per node).
use std::{
    collections::BTreeMap,
    ffi::OsStr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub const ENDPOINTS: &str = "endpoints.json";
pub const LEASES: &str = "leases.json";
pub const STATUS: &str = "status.json";
pub const AGENT_LOCK: &str = "agent.lock";
pub const DEFAULT: &str = "/run/netfab";

/// Version of the JSON files written here. A reader refuses a newer one
/// with a clear error instead of misreading it (a plugin older than its
/// agent, say, during an upgrade).
pub const FORMAT_VERSION: u32 = 1;

pub fn v1() -> u32 {
    1
}

/// One host's run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new(p: impl Into<PathBuf>) -> Self {
        Self(p.into())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn endpoints(&self) -> PathBuf {
        self.0.join(ENDPOINTS)
    }
    pub fn leases(&self) -> PathBuf {
        self.0.join(LEASES)
    }
    pub fn status(&self) -> PathBuf {
        self.0.join(STATUS)
    }
    pub fn lock(&self) -> PathBuf {
        self.0.join(AGENT_LOCK)
    }
}

/// What `leases.json` holds: the subnets this host leased, and the MTU its
/// containers must use.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct LeaseFile {
    #[serde(default = "v1")]
    pub version: u32,
    pub node: String,
    pub subnets: BTreeMap<String, Ipv4Net>,
    /// MTU for containers on this host.
    pub mtu: u32,
}

/// Refuses a file written in a newer format than this binary knows.
pub fn check_version(what: &Path, version: u32) -> Result<()> {
    if version > FORMAT_VERSION {
        anyhow::bail!(
            "{} is format version {version}, this netfab reads up to {FORMAT_VERSION}: \
             upgrade netfab-cni and netfab together",
            what.display()
        );
    }
    Ok(())
}

/// What a completed write looks like to inotify.
fn mask() -> WatchMask {
    WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE
}

/// Async notification for the agent: resolves when a file in the directory
/// was replaced or written.
pub struct Changes {
    stream: Option<EventStream<Vec<u8>>>,
}

impl Changes {
    /// Watches `dir`; without inotify (say, a filesystem that lacks it) the
    /// agent falls back to its periodic checks and says so.
    pub fn watch(dir: &Path) -> Self {
        let res = (|| -> Result<EventStream<Vec<u8>>> {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let ino = Inotify::init().context("inotify_init")?;
            ino.watches()
                .add(dir, mask())
                .with_context(|| format!("watching {}", dir.display()))?;
            ino.into_event_stream(vec![0u8; 4096])
                .context("inotify event stream")
        })();
        match res {
            Ok(stream) => Self {
                stream: Some(stream),
            },
            Err(e) => {
                log::warn!("{e:#}; noticing local changes by polling instead");
                Self { stream: None }
            }
        }
    }

    /// The next change; pending forever without inotify.
    pub async fn next(&mut self) {
        match &mut self.stream {
            Some(s) => {
                if s.next().await.is_none() {
                    self.stream = None;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Blocking notification for the plugin: watches `dir` from creation on, so
/// a change made after `watch` returns is never missed.
pub struct Waiter {
    ino: Inotify,
    buf: Vec<u8>,
}

impl Waiter {
    pub fn watch(dir: &Path) -> Result<Self> {
        let ino = Inotify::init().context("inotify_init")?;
        ino.watches()
            .add(dir, mask())
            .with_context(|| format!("watching {}", dir.display()))?;
        Ok(Self {
            ino,
            buf: vec![0u8; 4096],
        })
    }

    /// Waits until `name` changes or `deadline` passes; true if it changed.
    pub fn wait_for(&mut self, name: &str, deadline: Instant) -> Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd: self.ino.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.min(Duration::from_secs(1)).as_millis() as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll on inotify");
            }
            if rc == 0 {
                continue;
            }
            let events = self
                .ino
                .read_events(&mut self.buf)
                .context("reading inotify")?;
            if events.into_iter().any(|e| e.name == Some(OsStr::new(name))) {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_a_newer_format_are_refused_clearly() {
        let p = Path::new("/run/netfab/leases.json");
        check_version(p, FORMAT_VERSION).unwrap();
        let e = check_version(p, FORMAT_VERSION + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("upgrade netfab-cni and netfab together"), "{e}");
        // Files from before versioning read as version 1.
        let lf: LeaseFile =
            serde_json::from_str(r#"{"node":"h1","subnets":{},"mtu":1450}"#).unwrap();
        assert_eq!(lf.version, 1);
    }

    #[test]
    fn a_change_wakes_the_waiter_and_silence_times_out() {
        let dir = std::env::temp_dir().join(format!("netfab-rundir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Waiter::watch(&dir).unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!w.wait_for(STATUS, soon).unwrap(), "nothing was written");
        crate::endpoints::write_atomic(&dir.join(STATUS), "{}").unwrap();
        let later = Instant::now() + Duration::from_secs(5);
        assert!(w.wait_for(STATUS, later).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
