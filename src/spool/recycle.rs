//! Files of delivered messages, kept for a moment to hold the next messages.
//!
//! Creating and deleting a file per message makes the filesystem allocate and free an inode
//! and its blocks each time (and ext4 without a journal also scans for recently deleted
//! inodes): more CPU than the rest of a 4 KiB message's way through the relay. So while mail
//! flows, a delivered message's file (up to [`MAX_SIZE`]) is kept under a temporary name,
//! `queue/.free-N.tmp` (or the `.ID.msg.tmp` it was written as), and the next message is
//! written over it, from its start, and cut to its length.
//!
//! A message written into such a file is *lent* it: the file gets the queue name `ID.msg` as
//! a second link (`link(2)`), keeping its own, instead of being renamed, and when the message
//! is delivered the queue name is unlinked and the file is kept again, its descriptor still
//! open: a link and an unlink cost about half of two renames, and no open. A file is kept only
//! when its own name is then its only name ([`give`](Recycler::give) checks the link count), so
//! a file still named in the queue is never written over. A message that leaves the queue
//! another way (bounced, expired, held, set aside, deleted) leaves its lent file behind; the
//! sweep notices that `ID.msg` is gone, or names another file, and deletes the lent file's own
//! name. At most [`MAX_LENT`] files are lent, and none to a held message (it may wait for
//! days, holding a descriptor); past that a message's file is renamed into place, and opened
//! again and renamed to a free name when it is delivered.
//!
//! A crash leaves queue names as they are: the temporary names are deleted at start-up (they
//! end in `.tmp`), and a queued message keeps its `ID.msg`.
//!
//! A kept file still holds the delivered message until it is overwritten, as a queued file
//! did a moment before (and as the blocks of a deleted file do): it is readable only by whoever
//! can read the queue. It is kept at most [`MAX_IDLE`]: a file not reused by then is deleted,
//! as it would have been without recycling. At most [`MAX_FILES`] are kept; the rest are
//! deleted at once, and all of them (with the lent files' own names) when the spool is closed.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::queue_id::QueueId;

/// Files kept at most.
pub const MAX_FILES: usize = 64;
/// Files lent to queued messages at most (each holds a descriptor).
pub const MAX_LENT: usize = 256;
/// Larger files are deleted, not kept.
pub const MAX_SIZE: u64 = 256 * 1024;
/// A kept file not reused within this long is deleted.
pub const MAX_IDLE: Duration = Duration::from_secs(5);

/// A file ready for a new message: its temporary name, an open descriptor, its length (a new
/// message longer than that needs no cut) and its inode number.
#[derive(Debug)]
pub(super) struct FreeFile {
    pub path: PathBuf,
    pub file: Arc<File>,
    pub len: u64,
    pub ino: u64,
}

/// The kept files of one queue directory, the most recently kept last, and the files lent to
/// queued messages.
#[derive(Debug)]
pub(super) struct Recycler {
    dir: PathBuf,
    files: Mutex<Vec<(FreeFile, Instant)>>,
    lent: Mutex<HashMap<QueueId, FreeFile>>,
    next: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recycler {
    pub(super) fn new(dir: PathBuf) -> Recycler {
        Recycler { dir, files: Mutex::new(Vec::new()), lent: Mutex::new(HashMap::new()), next: AtomicU64::new(0) }
    }

    /// The most recently kept file, if any.
    pub(super) fn take(&self) -> Option<FreeFile> {
        locked(&self.files).pop().map(|(free, _)| free)
    }

    /// How many files are kept now.
    pub fn len(&self) -> usize {
        locked(&self.files).len()
    }

    /// How many files are lent now.
    pub fn lent(&self) -> usize {
        locked(&self.lent).len()
    }

    /// Whether a file of `len` bytes may be lent to a new message.
    pub(super) fn can_lend(&self, len: u64) -> bool {
        len <= MAX_SIZE && self.lent() < MAX_LENT
    }

    /// `free`, just linked as `id`'s queue name, is lent to that message until
    /// [`give`](Recycler::give) or [`forget`](Recycler::forget).
    pub(super) fn lend(&self, id: QueueId, free: FreeFile) {
        locked(&self.lent).insert(id, free);
    }

    /// The message `id` was not stored after all (its queue name is being removed): delete its
    /// lent file's own name. Blocking.
    pub(super) fn forget(&self, id: &QueueId) {
        let free = locked(&self.lent).remove(id);
        if let Some(free) = free {
            let _ = fs::remove_file(&free.path);
        }
    }

    /// Take the delivered message `id`, whose file is `path`, out of the queue: keep its file
    /// or delete it. `NotFound` when there is no such file. Blocking.
    pub(super) fn give(&self, id: &QueueId, path: &Path) -> io::Result<()> {
        let lent = locked(&self.lent).remove(id);
        let Some(free) = lent else { return self.keep_named(path) };
        if let Err(e) = fs::remove_file(path) {
            if e.kind() == io::ErrorKind::NotFound {
                let _ = fs::remove_file(&free.path);
            } else {
                // The queue name may still be there: the file stays lent, never reused.
                locked(&self.lent).insert(id.clone(), free);
            }
            return Err(e);
        }
        match free.file.metadata() {
            Ok(m) if m.nlink() == 1 => self.keep(free),
            _ => fs::remove_file(&free.path),
        }
    }

    /// Keep the queue file `path` of a message whose file was not lent: renamed to a free
    /// name, opened again.
    fn keep_named(&self, path: &Path) -> io::Result<()> {
        if self.len() >= MAX_FILES {
            return fs::remove_file(path);
        }
        let file = OpenOptions::new().write(true).open(path)?;
        let meta = file.metadata()?;
        if meta.len() > MAX_SIZE {
            return fs::remove_file(path);
        }
        let free = self.dir.join(format!(".free-{}.tmp", self.next.fetch_add(1, Ordering::Relaxed)));
        fs::rename(path, &free)?;
        self.keep(FreeFile { path: free, file: Arc::new(file), len: meta.len(), ino: meta.ino() })
    }

    /// Put `free` among the kept files, or delete it when they are full.
    fn keep(&self, free: FreeFile) -> io::Result<()> {
        let mut files = locked(&self.files);
        if files.len() < MAX_FILES {
            files.push((free, Instant::now()));
            return Ok(());
        }
        drop(files);
        fs::remove_file(&free.path)
    }

    /// Delete the files kept longer than [`MAX_IDLE`] before `now`, and the own names of lent
    /// files whose message left the queue another way; how many kept files. Blocking.
    pub(super) fn sweep(&self, now: Instant) -> usize {
        self.release_strays();
        self.delete(|kept| now.saturating_duration_since(kept) > MAX_IDLE)
    }

    /// Delete every kept file, and the own names of lent ones. Blocking.
    pub(super) fn clear(&self) {
        self.delete(|_| true);
        let lent: Vec<FreeFile> = locked(&self.lent).drain().map(|(_, free)| free).collect();
        for free in &lent {
            let _ = fs::remove_file(&free.path);
        }
    }

    /// Release the lent files whose `ID.msg` is gone or names another file.
    fn release_strays(&self) {
        let lent: Vec<(QueueId, u64)> = locked(&self.lent).iter().map(|(id, f)| (id.clone(), f.ino)).collect();
        for (id, ino) in lent {
            let stray = match fs::metadata(self.dir.join(format!("{id}.msg"))) {
                Ok(named) => named.ino() != ino,
                // Unreadable now: it may still be there.
                Err(e) => e.kind() == io::ErrorKind::NotFound,
            };
            if !stray {
                continue;
            }
            let stray = locked(&self.lent).remove_entry(&id);
            // Given back meanwhile: nothing left to do.
            if let Some((_, free)) = stray {
                let _ = fs::remove_file(&free.path);
            }
        }
    }

    /// Delete the oldest kept files, as long as `stale` says so of when they were kept.
    fn delete(&self, stale: impl Fn(Instant) -> bool) -> usize {
        let stale: Vec<FreeFile> = {
            let mut files = locked(&self.files);
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
            recycler.give(&QueueId::generate(), &dir.path().join(name)).unwrap();
        }
        assert!(!dir.path().join("A.msg").exists() && !dir.path().join("B.msg").exists());
        let free = recycler.take().expect("kept");
        assert_eq!(free.len, 5, "its length, known without asking again");
        assert!(free.path.file_name().unwrap().to_str().unwrap().starts_with(".free-"));
        assert_eq!(fs::read(&free.path).unwrap(), b"B.msg", "the most recent first");
        assert_eq!(recycler.len(), 1);
        assert_eq!(
            recycler.give(&QueueId::generate(), &dir.path().join("C.msg")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn large_files_and_files_beyond_the_pool_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let recycler = Recycler::new(dir.path().to_path_buf());
        let big = dir.path().join("big.msg");
        fs::write(&big, vec![b'x'; MAX_SIZE as usize + 1]).unwrap();
        recycler.give(&QueueId::generate(), &big).unwrap();
        assert_eq!(recycler.len(), 0);
        assert!(!big.exists());
        for i in 0..MAX_FILES + 3 {
            let path = dir.path().join(format!("{i}.msg"));
            fs::write(&path, b"x").unwrap();
            recycler.give(&QueueId::generate(), &path).unwrap();
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
            recycler.give(&QueueId::generate(), &path).unwrap();
        }
        let now = Instant::now();
        assert_eq!(recycler.sweep(now), 0);
        assert_eq!(recycler.sweep(now + MAX_IDLE + Duration::from_millis(1)), 3);
        assert_eq!(recycler.len(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "deleted from the disk too");
    }
}
