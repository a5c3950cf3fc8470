//! How each side learns at once that the other wrote: every file in the
//! run directory is replaced atomically (temp file + rename), so a watch for
//! `IN_MOVED_TO` on the directory sees each new version exactly when it is
//! complete.
use std::{
    ffi::OsStr,
    os::fd::AsRawFd,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};

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
