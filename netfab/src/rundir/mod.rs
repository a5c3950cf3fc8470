//! The run directory the agent and the CNI plugin share, and how each learns
//! at once that the other wrote something: every file in it is replaced
//! atomically (temp file + rename), so a watch for `IN_MOVED_TO` on the
//! directory sees each new version exactly when it is complete. No polling:
//! the agent wakes when `endpoints.json` changes, ADD wakes when
//! `status.json` does.
//!
//! Files (names below, all JSON): `endpoints.json` (the plugin's containers,
//! written under `endpoints.lock`), `leases.json` (subnets and MTU, from the
//! agent), `status.json` (what the agent applied), `waiting.json` (what an
//! agent that has not applied yet waits for), `agent.lock` (one agent per
//! node).
pub mod endpoints;
mod files;
mod notify;

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

pub use self::{
    endpoints::LocalEndpoint,
    files::{LeaseFile, NetworkStatus, PeerStatus, Rejected, Status, Waiting},
    notify::{Changes, Waiter},
};

pub const ENDPOINTS: &str = "endpoints.json";
pub const LEASES: &str = "leases.json";
pub const STATUS: &str = "status.json";
pub const AGENT_LOCK: &str = "agent.lock";
pub const WAITING: &str = "waiting.json";
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
    pub fn waiting(&self) -> PathBuf {
        self.0.join(WAITING)
    }
}

/// Says what the agent waits for before its first report (see [`Waiting`]).
pub fn write_waiting(path: &Path, node: &str, reason: &str) -> Result<()> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let w = Waiting {
        version: FORMAT_VERSION,
        node: node.to_string(),
        reason: reason.to_string(),
        since,
    };
    write_atomic(path, &serde_json::to_string_pretty(&w)?)
}

/// What a running agent that has not reported yet waits for, if it said.
pub fn read_waiting(path: &Path) -> Option<Waiting> {
    let w: Waiting = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    (w.version <= FORMAT_VERSION).then_some(w)
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

/// Writes atomically (temp file + rename) so readers never see half a file
/// and a directory watch sees each version once, complete.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

/// Takes `agent.lock` (flock) for the life of the returned file, with this
/// process's PID in it, or says who holds it: two agents for one node
/// would fight over the same dataplane and leases.
pub fn lock_agent(rd: &RunDir, node: &str) -> Result<std::fs::File> {
    use std::io::Write;
    std::fs::create_dir_all(rd.path())
        .with_context(|| format!("creating {}", rd.path().display()))?;
    let path = rd.lock();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // A plugin probing the lock (see `agent_alive`) holds it for an instant;
    // only a lock held for a whole second is another agent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    // SAFETY: flock on an fd we own; the lock lives as long as the file.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let mut words = holder.split_whitespace();
        let (pid, held_for) = (words.next(), words.next());
        bail!(
            "another netfab agent already holds {}{}{}; this one is for node {node}. \
             Stop the other first, or give each agent its own --run-dir (two agents \
             sharing a run directory would fight over the same dataplane and leases)",
            path.display(),
            held_for
                .map(|n| format!(" for node {n}"))
                .unwrap_or_default(),
            pid.map(|p| format!(" (PID {p})")).unwrap_or_default(),
        );
    }
    f.set_len(0)?;
    // "PID NODE": a second agent can say who holds the lock.
    write!(f, "{} {node}", std::process::id())?;
    Ok(f)
}

/// Whether an agent holds `agent.lock` right now. The kernel drops the lock
/// the moment the agent's process ends, however it ends, so a crashed
/// agent is noticed at once, where its last status file would look fresh
/// for a while. Creates nothing.
pub fn agent_alive(rd: &RunDir) -> Result<bool> {
    let f = match std::fs::File::open(rd.lock()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening {}", rd.lock().display())),
    };
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // SAFETY: as above; releasing at once so a starting agent gets it.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        return Ok(false);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(true)
    } else {
        Err(err).with_context(|| format!("probing {}", rd.lock().display()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

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
    fn the_lock_tells_whether_an_agent_lives() {
        let dir = std::env::temp_dir().join(format!("netfab-lock-{}", std::process::id()));
        let rd = RunDir::new(&dir);
        assert!(!agent_alive(&rd).unwrap(), "no lock file: no agent");
        assert!(!dir.exists(), "probing created nothing");
        let held = lock_agent(&rd, "n1").unwrap();
        assert!(agent_alive(&rd).unwrap());
        let e = lock_agent(&rd, "n1").unwrap_err().to_string();
        assert!(e.contains("another netfab agent"), "{e}");
        drop(held);
        assert!(!agent_alive(&rd).unwrap(), "released with its holder");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_change_wakes_the_waiter_and_silence_times_out() {
        let dir = std::env::temp_dir().join(format!("netfab-rundir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Waiter::watch(&dir).unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!w.wait_for(STATUS, soon).unwrap(), "nothing was written");
        write_atomic(&dir.join(STATUS), "{}").unwrap();
        let later = Instant::now() + Duration::from_secs(5);
        assert!(w.wait_for(STATUS, later).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
