//! `spool.min_free`: while the filesystem holding the spool has less free space than this,
//! MAIL gets `452 4.3.1`, so clients retry later instead of sending messages that cannot be
//! stored. The free space is read (statvfs) at most once a second.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

/// How long one reading of the free space is used.
const REFRESH: Duration = Duration::from_secs(1);

/// The free space on the spool's filesystem, against `spool.min_free`.
#[derive(Debug)]
pub struct FreeSpace {
    dir: PathBuf,
    min_free: u64,
    read: fn(&Path) -> io::Result<u64>,
    /// The last reading and when it was taken (`None`: it failed).
    last: Mutex<Option<(Instant, Option<u64>)>>,
}

impl FreeSpace {
    /// Watch the filesystem holding `dir`; `min_free` 0 turns the check off.
    pub fn new(dir: &Path, min_free: u64) -> FreeSpace {
        FreeSpace::with_reader(dir, min_free, available)
    }

    fn with_reader(dir: &Path, min_free: u64, read: fn(&Path) -> io::Result<u64>) -> FreeSpace {
        FreeSpace { dir: dir.to_path_buf(), min_free, read, last: Mutex::new(None) }
    }

    /// Whether a message of `size` bytes (0 when not declared) fits and leaves `min_free`.
    pub fn has_room(&self, size: u64) -> bool {
        self.has_room_at(Instant::now(), size)
    }

    /// [`FreeSpace::has_room`] at `now`. When the free space cannot be read, the answer is
    /// yes: storing the message then fails on its own, with `451 4.3.0`.
    pub fn has_room_at(&self, now: Instant, size: u64) -> bool {
        if self.min_free == 0 {
            return true;
        }
        self.free_at(now).is_none_or(|free| free >= self.min_free.saturating_add(size))
    }

    fn free_at(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, free)) = *last
            && now.saturating_duration_since(at) < REFRESH
        {
            return free;
        }
        let free = (self.read)(&self.dir)
            .inspect_err(|e| warn!(error = %e, dir = %self.dir.display(), "cannot read the spool's free space"))
            .ok();
        *last = Some((now, free));
        free
    }
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
fn available(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static READS: AtomicU64 = AtomicU64::new(0);

    fn gigabyte(_: &Path) -> io::Result<u64> {
        READS.fetch_add(1, Ordering::SeqCst);
        Ok(1 << 30)
    }

    #[test]
    fn room_is_free_space_beyond_min_free() {
        let space = FreeSpace::with_reader(Path::new("."), 1 << 20, gigabyte);
        let now = Instant::now();
        assert!(space.has_room_at(now, 0));
        assert!(space.has_room_at(now, (1 << 30) - (1 << 20)), "exactly min_free left");
        assert!(!space.has_room_at(now, (1 << 30) - (1 << 20) + 1), "a declared SIZE counts");
        let tight = FreeSpace::with_reader(Path::new("."), 2 << 30, gigabyte);
        assert!(!tight.has_room_at(now, 0));
    }

    #[test]
    fn the_free_space_is_read_at_most_once_a_second() {
        let space = FreeSpace::with_reader(Path::new("."), 1, gigabyte);
        let now = Instant::now();
        let before = READS.load(Ordering::SeqCst);
        for ms in [0, 10, 500, 999] {
            space.has_room_at(now + Duration::from_millis(ms), 0);
        }
        assert_eq!(READS.load(Ordering::SeqCst) - before, 1);
        space.has_room_at(now + REFRESH, 0);
        assert_eq!(READS.load(Ordering::SeqCst) - before, 2);
    }

    #[test]
    fn zero_turns_the_check_off_and_statvfs_works_here() {
        let off = FreeSpace::with_reader(Path::new("."), 0, |_| panic!("not read when off"));
        assert!(off.has_room(u64::MAX));
        assert!(available(Path::new(".")).unwrap() > 0);
        assert!(!FreeSpace::new(Path::new("."), u64::MAX).has_room(0));
        let unreadable = FreeSpace::new(Path::new("/nonexistent/spool"), u64::MAX);
        assert!(unreadable.has_room(0), "an unknown free space does not refuse mail");
    }
}
