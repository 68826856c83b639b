//! Durable files: write to a temporary name, fsync, rename into place, fsync the directory.
//!
//! The directory fsync is group-committed: every rename that finished before a sync started
//! is covered by it, so concurrent writers share one directory fsync instead of queueing
//! for one each.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::spool::content::Content;

/// Shares directory fsyncs among concurrent writers in one directory.
#[derive(Clone, Debug)]
pub struct DirSync {
    dir: PathBuf,
    requests: mpsc::UnboundedSender<oneshot::Sender<io::Result<()>>>,
}

impl DirSync {
    /// A syncer for `dir`; spawns its worker on the current runtime.
    pub fn new(dir: PathBuf) -> DirSync {
        let (requests, rx) = mpsc::unbounded_channel();
        tokio::spawn(sync_worker(dir.clone(), rx));
        DirSync { dir, requests }
    }

    /// The directory this syncer covers.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wait until a directory fsync that started after this call has completed.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).map_err(|_| io::Error::other("directory sync worker stopped"))?;
        rx.await.map_err(|_| io::Error::other("directory sync worker stopped"))?
    }

    /// Write `parts`, then `tail`, as the file `name` in the directory, durably: the file's
    /// data and its name are both on disk when this returns `Ok`. A tail that cannot be read
    /// whole fails the write (no file appears).
    pub async fn write_file(&self, name: &str, parts: Vec<Bytes>, tail: Option<Content>) -> io::Result<()> {
        let target = self.dir.join(name);
        let temp = self.dir.join(format!(".{name}.tmp"));
        tokio::task::spawn_blocking(move || write_synced(&temp, &target, &parts, tail.as_ref()))
            .await
            .map_err(io::Error::other)??;
        self.sync().await
    }
}

/// Write, fsync and rename one file (blocking).
fn write_synced(temp: &Path, target: &Path, parts: &[Bytes], tail: Option<&Content>) -> io::Result<()> {
    write_synced_with(temp, target, |file| {
        for part in parts {
            file.write_all(part)?;
        }
        if let Some(tail) = tail {
            tail.copy_to_file(file)?;
        }
        Ok(())
    })
}

/// Create `temp`, let `write` fill it, fsync it and rename it to `target` (blocking); on an
/// error the temporary file is removed. The directory is not fsync'd: see [`DirSync::sync`].
pub fn write_synced_with<T>(
    temp: &Path,
    target: &Path,
    write: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    let result = (|| {
        let mut file = File::create(temp)?;
        let value = write(&mut file)?;
        file.sync_all()?;
        fs::rename(temp, target)?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(temp);
    }
    result
}

/// fsync a directory, so the names created or renamed in it are durable (blocking).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

async fn sync_worker(dir: PathBuf, mut rx: mpsc::UnboundedReceiver<oneshot::Sender<io::Result<()>>>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiters.push(more);
        }
        let d = dir.clone();
        let result =
            tokio::task::spawn_blocking(move || sync_dir(&d)).await.unwrap_or_else(|e| Err(io::Error::other(e)));
        for w in waiters {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let _ = w.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_appear_whole_under_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let sync = DirSync::new(dir.path().to_path_buf());
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..20 {
            let sync = sync.clone();
            let parts = vec![Bytes::from_static(b"head\r\n"), Bytes::from_static(b"body")];
            writes.spawn(async move { sync.write_file(&format!("f{i}"), parts, None).await });
        }
        while let Some(r) = writes.join_next().await {
            r.unwrap().unwrap();
        }
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names.len(), 20, "no temporary files left: {names:?}");
        assert_eq!(fs::read(dir.path().join("f7")).unwrap(), b"head\r\nbody");
    }

    #[tokio::test]
    async fn a_failed_write_reports_the_error() {
        let sync = DirSync::new(PathBuf::from("/nonexistent/dir"));
        assert!(sync.write_file("x", vec![Bytes::from_static(b"data")], None).await.is_err());
    }
}
