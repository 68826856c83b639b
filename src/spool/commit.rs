//! Group commit of new message files: the client hears 250 only once its message's file is
//! on disk under its name, and messages that arrive together share the wait.
//!
//! One thread per spool takes every request that is waiting when it gets to run, and makes
//! them durable at once:
//!
//! - `spool.sync = "filesystem"` (the default): the files were written and renamed without an
//!   fsync; a group is covered by one `syncfs(2)` of the spool's filesystem (one device flush
//!   for the whole group), except a lone file after a lone file (a quiet relay): an fsync of it
//!   and of the queue directory, so a quiet relay does not wait for other programs' writes.
//! - `spool.sync = "file"`: each file was fsync'd before its rename; the group shares one
//!   fsync of the queue directory, as Postfix-style spools do.
//!
//! Under load (the previous group had more than one message) the thread waits up to
//! [`GATHER`] for more messages before it syncs, as databases delay a commit for their
//! siblings: a device flush costs far more than the wait, and every session waiting on the
//! group is answered at once.
//!
//! The thread also deletes the kept files of delivered messages that were not reused in time
//! (see [`super::recycle`]), and all of them when the spool is closed.
//!
//! `syncfs` reports a write-back error of the filesystem since the previous call on the same
//! descriptor (Linux 5.8 and later), so the directory stays open for the thread's life and an
//! error fails the whole group: its clients get 451 and send again.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::recycle::Recycler;
use crate::config::SpoolSync;

/// The longest a group waits for more messages, under load.
pub const GATHER: Duration = Duration::from_micros(200);
/// How often kept files are checked for idleness.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Request {
    file: Arc<File>,
    done: oneshot::Sender<io::Result<()>>,
}

/// The sending side of a spool's commit thread; the thread ends when this is dropped.
#[derive(Debug)]
pub(super) struct Commit {
    requests: mpsc::Sender<Request>,
    mode: SpoolSync,
}

impl Commit {
    /// Start the commit thread for the queue directory `dir`, sweeping `recycler`.
    pub(super) fn start(dir: &Path, mode: SpoolSync, recycler: Arc<Recycler>) -> io::Result<Commit> {
        let dir = File::open(dir)?;
        let (requests, rx) = mpsc::channel();
        std::thread::Builder::new().name("spool-commit".into()).spawn(move || run(&dir, mode, &rx, &recycler))?;
        Ok(Commit { requests, mode })
    }

    /// Whether each file must be fsync'd by its writer before it is renamed into place.
    pub(super) fn per_file(&self) -> bool {
        self.mode == SpoolSync::File
    }

    /// Wait until `file` (written, and linked or renamed to its name in the queue directory)
    /// and its name are durable.
    pub(super) async fn commit(&self, file: Arc<File>) -> io::Result<()> {
        let stopped = || io::Error::other("the spool's commit thread stopped");
        let (done, rx) = oneshot::channel();
        self.requests.send(Request { file, done }).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn run(dir: &File, mode: SpoolSync, rx: &mpsc::Receiver<Request>, recycler: &Recycler) {
    let mut swept = Instant::now();
    let mut last_group = 0;
    loop {
        let first = match rx.recv_timeout(SWEEP_EVERY) {
            Ok(first) => Some(first),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            // The spool is closed: no message will take a kept file any more.
            Err(mpsc::RecvTimeoutError::Disconnected) => return recycler.clear(),
        };
        if swept.elapsed() >= SWEEP_EVERY {
            recycler.sweep(Instant::now());
            swept = Instant::now();
        }
        let Some(first) = first else { continue };
        if last_group > 1 {
            // One sleep, not a wake-up per message arriving meanwhile.
            std::thread::sleep(GATHER);
        }
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let quiet = last_group <= 1;
        last_group = group.len();
        let result = match (mode, group.len()) {
            (SpoolSync::Filesystem, 1) if quiet => group[0].file.sync_all().and_then(|()| dir.sync_all()),
            (SpoolSync::Filesystem, _) => rustix::fs::syncfs(dir).map_err(io::Error::from),
            (SpoolSync::File, _) => dir.sync_all(),
        };
        let metrics = crate::metrics::metrics();
        metrics.spool_commit_groups.inc();
        metrics.spool_commit_messages.inc_by(group.len() as u64);
        if result.is_err() {
            metrics.spool_commit_failures.inc();
        }
        for request in group {
            let copy = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let _ = request.done.send(copy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_and_a_lone_file_are_both_committed_in_each_mode() {
        for mode in [SpoolSync::Filesystem, SpoolSync::File] {
            let dir = tempfile::tempdir().unwrap();
            let recycler = Arc::new(Recycler::new(dir.path().to_path_buf()));
            let commit = Arc::new(Commit::start(dir.path(), mode, recycler).unwrap());
            let lone = Arc::new(File::create(dir.path().join("lone")).unwrap());
            commit.commit(lone).await.unwrap();
            let mut group = tokio::task::JoinSet::new();
            for i in 0..20 {
                let commit = commit.clone();
                let file = Arc::new(File::create(dir.path().join(format!("f{i}"))).unwrap());
                group.spawn(async move { commit.commit(file).await });
            }
            while let Some(r) = group.join_next().await {
                r.unwrap().unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_stopped_thread_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let recycler = Arc::new(Recycler::new(dir.path().to_path_buf()));
        let commit = Commit::start(dir.path(), SpoolSync::Filesystem, recycler).unwrap();
        let (requests, _) = mpsc::channel();
        let dead = Commit { requests, mode: commit.mode };
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        assert!(dead.commit(file).await.is_err());
    }
}
