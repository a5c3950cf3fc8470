//! The etcd-less source: the whole desired state from a JSON file, re-read
//! when it changes (inotify on its directory; a slow tick as fallback). A
//! bad file keeps the last good state: bad input loses nothing.
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use log::error;

use super::{Source, StatusContext};
use crate::{rundir::Changes, state::DesiredState};

pub struct StateFile {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    current: Option<DesiredState>,
    changes: Changes,
    poll: Duration,
}

impl StateFile {
    pub fn new(path: PathBuf, poll: Duration) -> Self {
        let changes = Changes::watch(path.parent().unwrap_or(Path::new("/")));
        Self {
            path,
            stamp: None,
            current: None,
            changes,
            poll,
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Source for StateFile {
    async fn refresh(&mut self) -> bool {
        let s = stamp(&self.path);
        if s == self.stamp {
            return false;
        }
        self.stamp = s;
        match DesiredState::load(&self.path) {
            Ok(st) => {
                self.current = Some(st);
                true
            }
            Err(e) => {
                error!("{e}; keeping the previous state");
                false
            }
        }
    }

    async fn wait(&mut self) -> bool {
        tokio::select! {
            _ = self.changes.next() => {}
            _ = tokio::time::sleep(self.poll) => {}
        }
        false
    }

    fn waiting_for(&self) -> String {
        format!("a valid state file at {}", self.path.display())
    }

    fn desired(&mut self) -> Option<DesiredState> {
        self.current.clone()
    }

    fn context(&self) -> StatusContext<'_> {
        StatusContext::default()
    }
}
