//! The durable queue on local disk (`spool.dir`).
//!
//! Layout, one directory entry per message as MTAs do, so a queue can be read with `ls`,
//! `head -1 | jq` and `cat`:
//!
//! ```text
//! spool/lock               held (flock) by the running relay: one relay per spool
//! spool/control.sock       queue commands while the relay runs
//! spool/queue/ID.msg       line 1: JSON envelope, decision and plan; then the message bytes
//! spool/queue/ID.state     JSON lines: delivery events (only once a message needs them)
//! ```
//!
//! A message file is written under a temporary name, fsync'd, renamed, and the directory
//! fsync'd (group-committed) before the client hears 250; it never changes afterwards. The
//! journal is appended and fsync'd as delivery events happen; the state is rebuilt from it.

pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::durable::DirSync;
use crate::queue_id::QueueId;
use record::{Meta, Record, State};

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A directory or the lock file could not be created or opened.
    #[error("cannot use the spool directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another relay holds the lock.
    #[error("the spool {path} is in use by another bccguard process{pid}")]
    Locked {
        /// The spool directory.
        path: PathBuf,
        /// " (pid N)" when known.
        pid: String,
    },
}

/// Paths inside a spool directory; read-only operations that need no lock.
#[derive(Clone, Debug)]
pub struct SpoolPaths {
    root: PathBuf,
}

impl SpoolPaths {
    /// The spool at `root`.
    pub fn new(root: &Path) -> SpoolPaths {
        SpoolPaths { root: root.to_path_buf() }
    }

    /// The directory of message files.
    pub fn queue(&self) -> PathBuf {
        self.root.join("queue")
    }

    /// The control socket of the running relay.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    fn message_file(&self, id: &QueueId) -> PathBuf {
        self.queue().join(format!("{id}.msg"))
    }

    fn journal_file(&self, id: &QueueId) -> PathBuf {
        self.queue().join(format!("{id}.state"))
    }

    /// Queue ids of the messages in the spool, oldest first.
    pub fn ids(&self) -> io::Result<Vec<QueueId>> {
        let mut ids: Vec<QueueId> = match fs::read_dir(self.queue()) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".msg").and_then(QueueId::parse))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        ids.sort();
        Ok(ids)
    }

    /// A message's envelope and state, without reading its body.
    pub fn load_meta(&self, id: &QueueId) -> io::Result<(Meta, State)> {
        let mut reader = BufReader::new(File::open(self.message_file(id))?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let meta = parse_meta(&line)?;
        let state = State::replay(&meta, &self.journal(id)?);
        Ok((meta, state))
    }

    /// A message's envelope, bytes and state.
    pub fn load(&self, id: &QueueId) -> io::Result<(Meta, Bytes, State)> {
        let mut data = Vec::new();
        File::open(self.message_file(id))?.read_to_end(&mut data)?;
        let data = Bytes::from(data);
        let newline = memchr::memchr(b'\n', &data).ok_or_else(|| corrupt("no envelope line"))?;
        let meta = parse_meta(std::str::from_utf8(&data[..newline]).map_err(|_| corrupt("envelope is not UTF-8"))?)?;
        let state = State::replay(&meta, &self.journal(id)?);
        Ok((meta, data.slice(newline + 1..), state))
    }

    /// The journal records of a message (none when it has no journal). A torn last line,
    /// from a crash in the middle of a write, is ignored.
    pub fn journal(&self, id: &QueueId) -> io::Result<Vec<Record>> {
        let text = match fs::read_to_string(self.journal_file(id)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// Append records to a message's journal and fsync it (and, when the journal is new, the
    /// directory). Fails if the message is gone.
    pub fn append_blocking(&self, id: &QueueId, records: &[Record]) -> io::Result<()> {
        if !self.message_file(id).exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("message {id} is not in the spool")));
        }
        let path = self.journal_file(id);
        let created = !path.exists();
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let mut text = String::new();
        if ends_torn(&file)? {
            // An append that failed half-way (a full disk) left part of a line: end it, so
            // the records written now stay whole (the torn line is ignored when read).
            text.push('\n');
        }
        for r in records {
            text.push_str(&serde_json::to_string(r).map_err(io::Error::other)?);
            text.push('\n');
        }
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        if created {
            crate::durable::sync_dir(&self.queue())?;
        }
        Ok(())
    }

    /// Remove a message: its file first, so a crash in between leaves only a journal, which
    /// recovery deletes.
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        let removed = fs::remove_file(self.message_file(id));
        match fs::remove_file(self.journal_file(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        removed
    }

    /// Delete temporary files and journals without a message, left by a crash. Run it before
    /// any session can be storing a message (a temporary file may be one being written).
    pub fn clean(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(self.queue())?.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan_journal =
                name.strip_suffix(".state").and_then(QueueId::parse).is_some_and(|id| !self.message_file(&id).exists());
            if (name.starts_with('.') && name.ends_with(".tmp")) || orphan_journal {
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Try to take the spool's lock: `Ok(None)` when another process holds it.
    pub fn try_lock(&self) -> Result<Option<File>, SpoolError> {
        let io_err = |source| SpoolError::Io { path: self.root.clone(), source };
        fs::create_dir_all(self.queue()).map_err(io_err)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.lock_file())
            .map_err(io_err)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(io_err(e.into())),
        }
    }
}

/// Whether a journal ends in the middle of a line.
fn ends_torn(file: &File) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

fn parse_meta(line: &str) -> io::Result<Meta> {
    serde_json::from_str(line.trim_end()).map_err(|e| corrupt(&format!("bad envelope line: {e}")))
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The spool as the running relay holds it: locked, with group-committed directory syncs.
#[derive(Debug)]
pub struct Spool {
    paths: SpoolPaths,
    sync: DirSync,
    _lock: File,
    journal_fault: JournalFault,
}

/// A switch that makes journal appends fail as on a full disk (`ENOSPC`), for tests and fire
/// drills: everything else about the append is the real code path.
#[derive(Clone, Debug, Default)]
pub struct JournalFault(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl JournalFault {
    /// Make journal appends fail (`true`) or work again (`false`).
    pub fn set(&self, failing: bool) {
        self.0.store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()));
        }
        Ok(())
    }
}

impl Spool {
    /// Open (creating) the spool at `root` and take its lock.
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        let paths = SpoolPaths::new(root);
        let Some(mut lock) = paths.try_lock()? else {
            let pid = fs::read_to_string(paths.lock_file()).unwrap_or_default();
            let pid = pid.trim();
            let pid = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            return Err(SpoolError::Locked { path: root.to_path_buf(), pid });
        };
        let _ = lock.set_len(0).and_then(|()| write!(lock, "{}", std::process::id()));
        let sync = DirSync::new(paths.queue());
        Ok(Spool { paths, sync, _lock: lock, journal_fault: JournalFault::default() })
    }

    /// Paths and read operations.
    pub fn paths(&self) -> &SpoolPaths {
        &self.paths
    }

    /// Store a new message durably: when this returns `Ok`, the file's data and name are on
    /// disk.
    pub async fn store(&self, meta: &Meta, message: &Bytes) -> io::Result<()> {
        let mut line = serde_json::to_vec(meta).map_err(io::Error::other)?;
        line.push(b'\n');
        let name = format!("{}.msg", meta.id);
        self.sync.write_file(&name, vec![Bytes::from(line), message.clone()]).await
    }

    /// Remove a message (on a blocking thread: an unlink can wait on the filesystem's journal
    /// while other files are being fsync'd).
    pub async fn remove(&self, id: &QueueId) -> io::Result<()> {
        let (paths, id) = (self.paths.clone(), id.clone());
        tokio::task::spawn_blocking(move || paths.remove(&id)).await.map_err(io::Error::other)?
    }

    /// Whether a file can be written into the queue directory now.
    pub async fn probe(&self) -> bool {
        let path = self.paths.queue().join(".bccguard-probe");
        tokio::task::spawn_blocking(move || std::fs::write(&path, b"probe").and_then(|()| std::fs::remove_file(&path)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The switch that makes journal appends fail (see [`JournalFault`]).
    pub fn journal_fault(&self) -> JournalFault {
        self.journal_fault.clone()
    }

    /// Append journal records, durably (on a blocking thread).
    pub async fn append(&self, id: &QueueId, records: Vec<Record>) -> io::Result<()> {
        self.journal_fault.check()?;
        let (paths, id) = (self.paths.clone(), id.clone());
        tokio::task::spawn_blocking(move || paths.append_blocking(&id, &records)).await.map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use crate::spool::record::{DecisionSummary, FORMAT_VERSION};

    #[test]
    fn an_append_after_a_torn_line_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SpoolPaths::new(dir.path());
        fs::create_dir_all(paths.queue()).unwrap();
        let id = QueueId::generate();
        let meta = Meta {
            version: FORMAT_VERSION,
            id: id.clone(),
            received_at: 1,
            client: "127.0.0.1".into(),
            sender: "s@x.test".into(),
            recipients: vec!["a@x.test".into()],
            decision: DecisionSummary::default(),
            plan: crate::plan::Plan::default(),
            dsn: false,
        };
        fs::write(paths.message_file(&id), format!("{}\n", serde_json::to_string(&meta).unwrap())).unwrap();
        fs::write(paths.journal_file(&id), b"{\"event\":\"delivered\",\"tx").unwrap();
        let record = Record::Retry { at: 5 };
        paths.append_blocking(&id, std::slice::from_ref(&record)).unwrap();
        assert_eq!(paths.journal(&id).unwrap(), [record]);
    }
}
