//! Files of delivered messages, kept for a moment to hold the next messages.
//!
//! Creating and deleting a file per message makes the filesystem allocate and free an inode
//! and its blocks each time (and ext4 without a journal also scans for recently deleted
//! inodes): more CPU than the rest of a 4 KiB message's way through the relay. So while mail
//! flows, a delivered message's file (up to [`MAX_SIZE`]) is renamed to `queue/.free-N.tmp`
//! and the next message is written over it, from its start, and cut to its length.
//!
//! A kept file still holds the delivered message until it is overwritten, as a queued file
//! did a moment before (and as the blocks of a deleted file do): it is readable only by whoever
//! can read the queue. It is kept at most [`MAX_IDLE`]: a file not reused by then is deleted,
//! as it would have been without recycling. At most [`MAX_FILES`] are kept; the rest are
//! deleted at once, and all of them when the spool is closed and at start-up (they end in
//! `.tmp`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Files kept at most.
pub const MAX_FILES: usize = 64;
/// Larger files are deleted, not kept.
pub const MAX_SIZE: u64 = 256 * 1024;
/// A kept file not reused within this long is deleted.
pub const MAX_IDLE: Duration = Duration::from_secs(5);

/// A file ready for a new message: its temporary name, an open descriptor, and its length
/// (a new message longer than that needs no cut).
#[derive(Debug)]
pub(super) struct FreeFile {
    pub path: PathBuf,
    pub file: File,
    pub len: u64,
}

/// The kept files of one queue directory, the most recently kept last.
#[derive(Debug)]
pub(super) struct Recycler {
    dir: PathBuf,
    files: Mutex<Vec<(FreeFile, Instant)>>,
    next: AtomicU64,
}

impl Recycler {
    pub(super) fn new(dir: PathBuf) -> Recycler {
        Recycler { dir, files: Mutex::new(Vec::new()), next: AtomicU64::new(0) }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Vec<(FreeFile, Instant)>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently kept file, if any.
    pub(super) fn take(&self) -> Option<FreeFile> {
        self.files().pop().map(|(free, _)| free)
    }

    /// How many files are kept now.
    pub fn len(&self) -> usize {
        self.files().len()
    }

    /// Take the delivered message file `path` out of the queue: keep it or delete it.
    /// `NotFound` when there is no such file. Blocking.
    pub(super) fn give(&self, path: &Path) -> io::Result<()> {
        if self.len() >= MAX_FILES {
            return fs::remove_file(path);
        }
        let file = OpenOptions::new().write(true).open(path)?;
        let len = file.metadata()?.len();
        if len > MAX_SIZE {
            return fs::remove_file(path);
        }
        let free = self.dir.join(format!(".free-{}.tmp", self.next.fetch_add(1, Ordering::Relaxed)));
        fs::rename(path, &free)?;
        let mut files = self.files();
        if files.len() < MAX_FILES {
            files.push((FreeFile { path: free, file, len }, Instant::now()));
            return Ok(());
        }
        drop(files);
        fs::remove_file(&free)
    }

    /// Delete the files kept longer than [`MAX_IDLE`] before `now`; how many. Blocking.
    pub(super) fn sweep(&self, now: Instant) -> usize {
        self.delete(|kept| now.saturating_duration_since(kept) > MAX_IDLE)
    }

    /// Delete every kept file. Blocking.
    pub(super) fn clear(&self) {
        self.delete(|_| true);
    }

    /// Delete the oldest kept files, as long as `stale` says so of when they were kept.
    fn delete(&self, stale: impl Fn(Instant) -> bool) -> usize {
        let stale: Vec<FreeFile> = {
            let mut files = self.files();
            let fresh = files.partition_point(|(_, kept)| stale(*kept));
            files.drain(..fresh).map(|(free, _)| free).collect()
        };
        for free in &stale {
            let _ = fs::remove_file(&free.path);
        }
        stale.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_file_leaves_the_queue_and_is_taken_back_last_in_first_out() {
        let dir = tempfile::tempdir().unwrap();
        let recycler = Recycler::new(dir.path().to_path_buf());
        for name in ["A.msg", "B.msg"] {
            fs::write(dir.path().join(name), name).unwrap();
            recycler.give(&dir.path().join(name)).unwrap();
        }
        assert!(!dir.path().join("A.msg").exists() && !dir.path().join("B.msg").exists());
        let free = recycler.take().expect("kept");
        assert_eq!(free.len, 5, "its length, known without asking again");
        assert!(free.path.file_name().unwrap().to_str().unwrap().starts_with(".free-"));
        assert_eq!(fs::read(&free.path).unwrap(), b"B.msg", "the most recent first");
        assert_eq!(recycler.len(), 1);
        assert_eq!(recycler.give(&dir.path().join("C.msg")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn large_files_and_files_beyond_the_pool_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let recycler = Recycler::new(dir.path().to_path_buf());
        let big = dir.path().join("big.msg");
        fs::write(&big, vec![b'x'; MAX_SIZE as usize + 1]).unwrap();
        recycler.give(&big).unwrap();
        assert_eq!(recycler.len(), 0);
        assert!(!big.exists());
        for i in 0..MAX_FILES + 3 {
            let path = dir.path().join(format!("{i}.msg"));
            fs::write(&path, b"x").unwrap();
            recycler.give(&path).unwrap();
        }
        assert_eq!(recycler.len(), MAX_FILES);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), MAX_FILES);
    }

    #[test]
    fn files_idle_too_long_are_deleted_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let recycler = Recycler::new(dir.path().to_path_buf());
        for i in 0..3 {
            let path = dir.path().join(format!("{i}.msg"));
            fs::write(&path, b"x").unwrap();
            recycler.give(&path).unwrap();
        }
        let now = Instant::now();
        assert_eq!(recycler.sweep(now), 0);
        assert_eq!(recycler.sweep(now + MAX_IDLE + Duration::from_millis(1)), 3);
        assert_eq!(recycler.len(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "deleted from the disk too");
    }
}
