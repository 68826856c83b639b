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
//! spool/damaged/ID.*       messages that failed their checks: kept for a person, never sent
//! ```
//!
//! A message file is written under a temporary name (a new file, or a delivered message's
//! kept file: see [`recycle`]), linked or renamed to its queue name, and made durable with
//! the messages arriving at the same time (see the `commit` module) before the client hears
//! 250; it never changes afterwards. Its envelope line records the length and CRC-32 of the
//! message bytes; a file that does not match them is moved to `damaged/` instead of being
//! delivered. The journal is appended and fsync'd as delivery events happen; the state is
//! rebuilt from it, up to its last good record.

mod commit;
pub mod content;
pub mod held;
pub mod record;
pub mod recycle;
mod spill;

pub use spill::Spill;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::config::SpoolSync;
use crate::message::parse::MAX_HEADER_BLOCK;
use crate::queue_id::QueueId;
use content::Content;
use record::{Meta, Record, State};

/// Messages up to this size are read whole into memory for delivery; larger ones are read
/// from their file as each copy is written.
pub const IN_MEMORY: u64 = 256 * 1024;
/// Longest envelope line read (1,000 recipients and their plan take a few hundred KiB).
const MAX_ENVELOPE_LINE: u64 = 64 * 1024 * 1024;

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
    queue: PathBuf,
}

impl SpoolPaths {
    /// The spool at `root`.
    pub fn new(root: &Path) -> SpoolPaths {
        SpoolPaths { root: root.to_path_buf(), queue: root.join("queue") }
    }

    /// The directory of message files.
    pub fn queue(&self) -> PathBuf {
        self.queue.clone()
    }

    /// The control socket of the running relay.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// The directory of damaged messages.
    pub fn damaged(&self) -> PathBuf {
        self.root.join("damaged")
    }

    fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    fn message_file(&self, id: &QueueId) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    fn journal_file(&self, id: &QueueId) -> PathBuf {
        self.queue.join(format!("{id}.state"))
    }

    /// Queue ids of the messages in the queue directory, oldest first.
    pub fn ids(&self) -> io::Result<Vec<QueueId>> {
        ids_in(&self.queue)
    }

    /// Queue ids of the damaged messages, oldest first.
    pub fn damaged_ids(&self) -> io::Result<Vec<QueueId>> {
        ids_in(&self.damaged())
    }

    /// Why a damaged message was set aside.
    pub fn damage_reason(&self, id: &QueueId) -> String {
        fs::read_to_string(self.damaged().join(format!("{id}.reason"))).unwrap_or_default().trim_end().to_string()
    }

    /// A message's envelope and state, without reading its body.
    pub fn load_meta(&self, id: &QueueId) -> io::Result<(Meta, State)> {
        let mut reader = BufReader::new(File::open(self.message_file(id))?);
        let mut meta = read_envelope(&mut reader)?.0;
        let records = record::resolve_release(&mut meta, self.journal(id)?);
        let state = State::replay(&meta, &records);
        Ok((meta, state))
    }

    /// Open a message for delivery: its envelope, state, header block and bytes, checked
    /// against the length and checksum its envelope line records; a torn last line of its
    /// journal is cut off. Blocking; for the relay, which holds the spool's lock.
    pub fn open(&self, id: &QueueId) -> Result<Opened, OpenError> {
        let file = match File::open(self.message_file(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenError::Gone),
            Err(e) => return Err(OpenError::Io(e)),
        };
        let total = file.metadata().map_err(OpenError::Io)?.len();
        let (mut meta, line_len) = read_envelope(&mut BufReader::new(&file)).map_err(OpenError::from_read)?;
        // A crash after a kept file was renamed into place but before its new bytes reached
        // the disk can leave a delivered message under a new name: never deliver it again.
        if meta.id != *id {
            return Err(OpenError::Damaged(format!("the envelope line is for {}", meta.id)));
        }
        let len = total - line_len;
        if let Some(size) = meta.size
            && size != len
        {
            return Err(OpenError::Damaged(format!("{len} bytes after the envelope line, which says {size}")));
        }
        let file_region = Content::File { file: std::sync::Arc::new(file), offset: line_len, len };
        let content = if len <= IN_MEMORY {
            Content::Memory(file_region.to_bytes().map_err(OpenError::Io)?)
        } else {
            file_region
        };
        // One read of the bytes for both the checksum and the 8-bit scan.
        let (mut crc, mut ascii) = (crc32fast::Hasher::new(), true);
        for chunk in content.chunks() {
            let chunk = chunk.map_err(OpenError::Io)?;
            crc.update(&chunk);
            ascii &= chunk.is_ascii();
        }
        if let Some(expected) = meta.crc32 {
            let found = crc.finalize();
            if found != expected {
                return Err(OpenError::Damaged(format!("checksum {found:08x}, the envelope line says {expected:08x}")));
            }
        }
        let head = header_prefix(&content).map_err(OpenError::Io)?;
        let (records, journaled, journal_cut) = match self.read_journal(id) {
            Ok((records, good, total)) => (records, true, self.cut_journal(id, good, total).map_err(OpenError::Io)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), false, 0),
            Err(e) => return Err(OpenError::Io(e)),
        };
        let records = record::resolve_release(&mut meta, records);
        let state = State::replay(&meta, &records);
        Ok(Opened { meta, state, head, content, eight_bit: !ascii, journaled, journal_cut })
    }

    /// The journal records of a message (none when it has no journal). Each line is a record
    /// on its own: a line that is not one (garbage from a disk error) is skipped, and a last
    /// line without its newline (a crash in the middle of a write) is not read.
    pub fn journal(&self, id: &QueueId) -> io::Result<Vec<Record>> {
        match self.read_journal(id) {
            Ok((records, _, _)) => Ok(records),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The good records, the length of the journal up to its last complete line, and its
    /// whole length; `NotFound` when there is no journal.
    fn read_journal(&self, id: &QueueId) -> io::Result<(Vec<Record>, u64, u64)> {
        let data = fs::read(self.journal_file(id))?;
        let mut records = Vec::new();
        let mut complete = 0;
        while let Some(end) = memchr::memchr(b'\n', &data[complete..]) {
            if let Ok(r) = serde_json::from_slice::<Record>(&data[complete..complete + end]) {
                records.push(r);
            }
            complete += end + 1;
        }
        Ok((records, complete as u64, data.len() as u64))
    }

    /// Cut a torn last line (from `good` to `total`) off a journal, so the records appended
    /// after it start on a line of their own. Returns the bytes cut.
    fn cut_journal(&self, id: &QueueId, good: u64, total: u64) -> io::Result<u64> {
        if good == total {
            return Ok(0);
        }
        let file = OpenOptions::new().write(true).open(self.journal_file(id))?;
        file.set_len(good)?;
        file.sync_all()?;
        Ok(total - good)
    }

    /// Move a message that failed its checks to `damaged/`, with the reason beside it.
    pub fn quarantine(&self, id: &QueueId, reason: &str) -> io::Result<()> {
        let damaged = self.damaged();
        fs::create_dir_all(&damaged)?;
        fs::write(damaged.join(format!("{id}.reason")), format!("{reason}\n"))?;
        match fs::rename(self.journal_file(id), damaged.join(format!("{id}.state"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::rename(self.message_file(id), damaged.join(format!("{id}.msg")))?;
        crate::durable::sync_dir(&damaged)?;
        crate::durable::sync_dir(&self.queue())
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

    /// Remove a message, from the queue or from `damaged/`: its file first, so a crash in
    /// between leaves only a journal, which recovery deletes. `NotFound` when it is in
    /// neither. (A message found in the queue costs two unlinks, as before `damaged/`.)
    pub fn remove(&self, id: &QueueId) -> io::Result<()> {
        let ignore_missing = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            other => other.map(|()| true),
        };
        if ignore_missing(fs::remove_file(self.message_file(id)))? {
            ignore_missing(fs::remove_file(self.journal_file(id)))?;
            return Ok(());
        }
        let damaged = self.damaged();
        let mut found = ignore_missing(fs::remove_file(self.journal_file(id)))?;
        for ext in ["msg", "state", "reason"] {
            found |= ignore_missing(fs::remove_file(damaged.join(format!("{id}.{ext}"))))?;
        }
        if found { Ok(()) } else { Err(io::Error::new(io::ErrorKind::NotFound, format!("{id} is not in the spool"))) }
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

/// A message opened for delivery.
#[derive(Debug)]
pub struct Opened {
    /// Its envelope line.
    pub meta: Meta,
    /// Its delivery state, from the journal.
    pub state: State,
    /// The start of its bytes, at least the whole header block (all of them when small).
    pub head: Bytes,
    /// Its bytes (after the envelope line).
    pub content: Content,
    /// Whether any of its bytes is not ASCII (for `BODY=8BITMIME`).
    pub eight_bit: bool,
    /// Whether it has a journal file.
    pub journaled: bool,
    /// Bytes of a torn last line cut off its journal (a crash in the middle of a write).
    pub journal_cut: u64,
}

impl Opened {
    /// A message just stored, as [`SpoolPaths::open`] would read it back: its bytes (after
    /// the envelope line) are `bytes`, and nothing has happened to it yet. The relay hands
    /// this to delivery for small messages, so their first pass reads nothing back.
    pub fn fresh(meta: Meta, bytes: Bytes) -> Opened {
        let state = State::new(&meta);
        let eight_bit = !bytes.is_ascii();
        Opened {
            meta,
            state,
            head: bytes.clone(),
            content: Content::Memory(bytes),
            eight_bit,
            journaled: false,
            journal_cut: 0,
        }
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> usize {
        match &self.content {
            Content::Memory(b) => b.len(),
            // A stored message is never made of parts (only a copy's body is).
            Content::File { .. } | Content::Parts(_) => self.head.len(),
        }
    }
}

/// Why a message could not be opened for delivery.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// It is not in the queue (delivered or deleted meanwhile).
    #[error("the message is not in the queue")]
    Gone,
    /// It does not match its envelope line, or has none: never to be delivered.
    #[error("damaged: {0}")]
    Damaged(String),
    /// It could not be read now.
    #[error(transparent)]
    Io(io::Error),
}

impl OpenError {
    fn from_read(e: io::Error) -> OpenError {
        if e.kind() == io::ErrorKind::InvalidData { OpenError::Damaged(e.to_string()) } else { OpenError::Io(e) }
    }
}

/// Messages up to this size (with at most [`INLINE_RECIPIENTS`] recipients) are written and
/// removed on the runtime's thread: a write into the page cache and a rename take a few
/// microseconds, less than handing them to a blocking thread and back (two thread switches).
/// Larger ones, and fsyncs, go to blocking threads.
const INLINE_MAX: usize = 64 * 1024;
const INLINE_RECIPIENTS: usize = 100;

/// Write a message into `free` (or a new temporary file) and give it the name `target`: as a
/// second link when the file can be lent (see [`recycle`]), else by renaming it; on an error
/// the temporary file is removed. Gives back the envelope and the open file, for the commit.
fn write_into_place(
    target: &Path,
    free: Option<recycle::FreeFile>,
    recycler: &recycle::Recycler,
    meta: Meta,
    parts: &[Bytes],
    tail: Option<Content>,
    fsync: bool,
) -> io::Result<(Meta, std::sync::Arc<File>)> {
    let (temp, file, len, ino) = match free {
        Some(free) => (free.path, free.file, free.len, Some(free.ino)),
        None => {
            let temp = target.with_file_name(format!(".{}.msg.tmp", meta.id));
            (temp.clone(), std::sync::Arc::new(File::create(&temp)?), 0, None)
        }
    };
    let placed = write_message_file(&file, len, &meta, parts, tail.as_ref(), fsync).and_then(|end| {
        // A held message may wait for days: it is not lent a descriptor.
        if meta.is_held() || !recycler.can_lend(end) {
            return fs::rename(&temp, target);
        }
        let ino = match ino {
            Some(ino) => ino,
            None => std::os::unix::fs::MetadataExt::ino(&file.metadata()?),
        };
        fs::hard_link(&temp, target)?;
        let free = recycle::FreeFile { path: temp.clone(), file: file.clone(), len: end, ino };
        recycler.lend(meta.id.clone(), free);
        Ok(())
    });
    if let Err(e) = placed {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    Ok((meta, file))
}

/// Write a message file from its start, fsync'd when `fsync`. A file `len` bytes long before
/// (a kept one) is cut to its new contents when they are shorter. Positioned writes: no seek
/// for a message in memory.
fn write_message_file(
    mut file: &File,
    len: u64,
    meta: &Meta,
    parts: &[Bytes],
    tail: Option<&Content>,
    fsync: bool,
) -> io::Result<u64> {
    // The envelope line goes through a buffer sized for it (the line of a message to many
    // recipients is written out as it grows); what is left of it goes with the parts in one
    // `pwritev`, the parts not copied.
    let capacity = meta.recipients.len().saturating_mul(64).saturating_add(512).min(64 * 1024);
    let mut out = io::BufWriter::with_capacity(capacity, WriteAt { file, at: 0 });
    serde_json::to_writer(&mut out, meta).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    let (WriteAt { at, .. }, head) = out.into_parts();
    let head = head.map_err(|_| io::Error::other("writing the envelope line panicked"))?;
    let mut slices: Vec<io::IoSlice<'_>> =
        std::iter::once(io::IoSlice::new(&head)).chain(parts.iter().map(|p| io::IoSlice::new(p))).collect();
    let mut end = write_all_at(file, &mut slices, at)?;
    if let Some(tail) = tail {
        file.seek(io::SeekFrom::Start(end))?;
        tail.copy_to_file(file)?;
        end += tail.len();
    }
    if end < len {
        file.set_len(end)?;
    }
    if fsync {
        file.sync_all()?;
    }
    Ok(end)
}

/// Write all of `slices` to `file` from `at` (`pwritev`, no seek; a call takes at most
/// `IOV_MAX` slices, and may write less than it is given); the position after them.
fn write_all_at(file: &File, mut slices: &mut [io::IoSlice<'_>], mut at: u64) -> io::Result<u64> {
    while !slices.is_empty() {
        let n = match rustix::io::pwritev(file, slices, at) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += n as u64;
        io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(at)
}

/// Writes at a position of a file, moving on (`pwrite`, no seek).
struct WriteAt<'a> {
    file: &'a File,
    at: u64,
}

impl Write for WriteAt<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::write_at(self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn ids_in(dir: &Path) -> io::Result<Vec<QueueId>> {
    let mut ids: Vec<QueueId> = match fs::read_dir(dir) {
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

/// The envelope line and its length, newline included. The JSON is read as a stream, never
/// held whole: the line of a message to 100,000 recipients is megabytes.
fn read_envelope(reader: &mut impl BufRead) -> io::Result<(Meta, u64)> {
    let (meta, len) = {
        let mut values = serde_json::Deserializer::from_reader(reader.by_ref().take(MAX_ENVELOPE_LINE)).into_iter();
        let meta: Meta = match values.next() {
            None => return Err(corrupt("empty file")),
            Some(Err(e)) if e.is_eof() => return Err(corrupt("no complete envelope line")),
            Some(Err(e)) => return Err(corrupt(&format!("bad envelope line: {e}"))),
            Some(Ok(meta)) => meta,
        };
        (meta, values.byte_offset() as u64)
    };
    // The lists grew by doubling as they were read: give back the slack (for 100,000
    // recipients, 31,072 unused slots of each) before the delivery state is built beside them.
    let meta = {
        let mut meta = meta;
        meta.recipients.shrink_to_fit();
        meta.plan.transactions.shrink_to_fit();
        meta
    };
    // An object ends at its `}`: the newline must come next.
    let mut newline = [0u8];
    match reader.read(&mut newline)? {
        1 if newline[0] == b'\n' => Ok((meta, len + 1)),
        _ => Err(corrupt("no complete envelope line")),
    }
}

/// At least the header block of `content` (all of it when in memory).
fn header_prefix(content: &Content) -> io::Result<Bytes> {
    if let Content::Memory(bytes) = content {
        return Ok(bytes.clone());
    }
    let mut head = Vec::new();
    for chunk in content.chunks() {
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk?);
        if head.starts_with(b"\r\n")
            || memchr::memmem::find(&head[from..], b"\r\n\r\n").is_some()
            || head.len() > MAX_HEADER_BLOCK + 4
        {
            break;
        }
    }
    Ok(Bytes::from(head))
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

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The spool as the running relay holds it: locked, with group-committed directory syncs.
#[derive(Debug)]
pub struct Spool {
    paths: SpoolPaths,
    commit: commit::Commit,
    recycler: std::sync::Arc<recycle::Recycler>,
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
    /// Open (creating) the spool at `root`, take its lock, and start committing new messages
    /// as `sync` says.
    pub fn open(root: &Path, sync: SpoolSync) -> Result<Spool, SpoolError> {
        let paths = SpoolPaths::new(root);
        let Some(mut lock) = paths.try_lock()? else {
            let pid = fs::read_to_string(paths.lock_file()).unwrap_or_default();
            let pid = pid.trim();
            let pid = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            return Err(SpoolError::Locked { path: root.to_path_buf(), pid });
        };
        let _ = lock.set_len(0).and_then(|()| write!(lock, "{}", std::process::id()));
        let recycler = std::sync::Arc::new(recycle::Recycler::new(paths.queue()));
        let commit = commit::Commit::start(&paths.queue(), sync, recycler.clone())
            .map_err(|source| SpoolError::Io { path: paths.queue(), source })?;
        Ok(Spool { paths, commit, recycler, _lock: lock, journal_fault: JournalFault::default() })
    }

    /// Paths and read operations.
    pub fn paths(&self) -> &SpoolPaths {
        &self.paths
    }

    /// Store a new message, the concatenation of `parts`, durably: when this returns, the
    /// file's data and name are on disk. Records the message's length and checksum in its
    /// envelope line, and gives the envelope back.
    pub async fn store(&self, mut meta: Meta, parts: Vec<Bytes>) -> io::Result<Meta> {
        let mut crc = crc32fast::Hasher::new();
        parts.iter().for_each(|p| crc.update(p));
        meta.size = Some(parts.iter().map(|p| p.len() as u64).sum());
        meta.crc32 = Some(crc.finalize());
        self.write_message(meta, parts, None).await
    }

    /// Store a new message whose bytes are `head` followed by what was spilled to disk while
    /// it arrived (copied file to file, never through memory). Like [`Spool::store`].
    pub async fn store_spilled(&self, mut meta: Meta, head: Bytes, spill: Spill) -> io::Result<Meta> {
        let (file, len, crc) = spill.finish().await?;
        let mut whole = crc32fast::Hasher::new();
        whole.update(&head);
        whole.combine(&crc);
        meta.size = Some(head.len() as u64 + len);
        meta.crc32 = Some(whole.finalize());
        let tail = Content::File { file: std::sync::Arc::new(file), offset: 0, len };
        self.write_message(meta, vec![head], Some(tail)).await
    }

    /// Write `ID.msg` (the envelope line streamed as JSON, never held whole: for a message to
    /// 100,000 recipients it is megabytes) under a temporary name, link or rename it into
    /// place, and wait for the group commit that covers it. When the commit fails the file is
    /// removed: the client hears 451 and sends again, so no copy may stay behind to be
    /// delivered too.
    async fn write_message(&self, meta: Meta, parts: Vec<Bytes>, tail: Option<Content>) -> io::Result<Meta> {
        let target = self.paths.message_file(&meta.id);
        let free = self.recycler.take();
        let per_file = self.commit.per_file();
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let (meta, file) =
            if !per_file && tail.is_none() && size <= INLINE_MAX && meta.recipients.len() <= INLINE_RECIPIENTS {
                write_into_place(&target, free, &self.recycler, meta, &parts, None, false)?
            } else {
                let (target, recycler) = (target.clone(), self.recycler.clone());
                tokio::task::spawn_blocking(move || {
                    write_into_place(&target, free, &recycler, meta, &parts, tail, per_file)
                })
                .await
                .map_err(io::Error::other)??
            };
        if let Err(e) = self.commit.commit(file).await {
            let (recycler, id) = (self.recycler.clone(), meta.id);
            let _ = tokio::task::spawn_blocking(move || {
                let _ = fs::remove_file(target);
                recycler.forget(&id);
            })
            .await;
            return Err(e);
        }
        Ok(meta)
    }

    /// A new file to spill a message into while it arrives (in the queue directory, so the
    /// final copy stays on one filesystem; a crash leaves it for [`SpoolPaths::clean`]).
    pub async fn spill(&self) -> io::Result<Spill> {
        Spill::create(self.paths.queue().join(format!(".spill-{}.tmp", QueueId::generate()))).await
    }

    /// Remove a message (on a blocking thread: an unlink can wait on the filesystem's journal
    /// while other files are being fsync'd).
    pub async fn remove(&self, id: &QueueId) -> io::Result<()> {
        let (paths, id) = (self.paths.clone(), id.clone());
        tokio::task::spawn_blocking(move || paths.remove(&id)).await.map_err(io::Error::other)?
    }

    /// Remove a message that was delivered: its file (kept for a next message, see
    /// [`recycle`]), and its journal only when it has one (`journal`), so a message delivered
    /// at the first attempt costs no unlink that fails.
    ///
    /// A small message without a journal is removed on the runtime's thread (see
    /// `INLINE_MAX`, 64 KiB): `size` is its length.
    pub async fn remove_delivered(
        self: &std::sync::Arc<Self>,
        id: &QueueId,
        journal: bool,
        size: Option<u64>,
    ) -> io::Result<()> {
        if !journal && size.is_some_and(|s| s <= INLINE_MAX as u64) {
            return self.remove_delivered_now(id, false);
        }
        let (spool, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || spool.remove_delivered_now(&id, journal)).await.map_err(io::Error::other)?
    }

    fn remove_delivered_now(&self, id: &QueueId, journal: bool) -> io::Result<()> {
        self.recycler.give(id, &self.paths.message_file(id))?;
        match journal.then(|| fs::remove_file(self.paths.journal_file(id))) {
            Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
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
    fn the_envelope_line_is_read_as_a_stream_and_checked() {
        let meta = Meta {
            version: FORMAT_VERSION,
            id: QueueId::generate(),
            received_at: 1,
            client: "127.0.0.1".into(),
            sender: "s@x.test".into(),
            recipients: (0..1000).map(|i| format!("r{i}@x.test")).collect(),
            decision: DecisionSummary::default(),
            plan: crate::plan::Plan::default(),
            dsn: false,
            size: Some(5),
            crc32: None,
        };
        let line = serde_json::to_vec(&meta).unwrap();
        let file = [&line[..], b"\nHello"].concat();
        let (read, len) = read_envelope(&mut io::BufReader::new(&file[..])).unwrap();
        assert_eq!((read, len), (meta, line.len() as u64 + 1));
        let reason = |bytes: &[u8]| read_envelope(&mut io::BufReader::new(bytes)).unwrap_err().to_string();
        assert_eq!(reason(b""), "empty file");
        assert_eq!(reason(&line[..line.len() / 2]), "no complete envelope line");
        assert_eq!(reason(&line), "no complete envelope line", "no newline after it");
        assert_eq!(reason(&[&line[..], b" x"].concat()), "no complete envelope line");
        assert!(reason(b"#!garbage\n").starts_with("bad envelope line"));
    }

    #[test]
    fn an_append_after_a_torn_line_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SpoolPaths::new(dir.path());
        fs::create_dir_all(paths.queue()).unwrap();
        let id = QueueId::generate();
        let meta = meta_for(&id);
        fs::write(paths.message_file(&id), format!("{}\n", serde_json::to_string(&meta).unwrap())).unwrap();
        fs::write(paths.journal_file(&id), b"{\"event\":\"delivered\",\"tx").unwrap();
        let record = Record::Retry { at: 5 };
        paths.append_blocking(&id, std::slice::from_ref(&record)).unwrap();
        assert_eq!(paths.journal(&id).unwrap(), [record]);
    }

    fn meta_for(id: &QueueId) -> Meta {
        Meta {
            version: FORMAT_VERSION,
            id: id.clone(),
            received_at: 1,
            client: "127.0.0.1".into(),
            sender: "s@x.test".into(),
            recipients: ["a@x.test"].iter().collect(),
            decision: DecisionSummary::default(),
            plan: crate::plan::Plan::default(),
            dsn: false,
            size: None,
            crc32: None,
        }
    }

    #[tokio::test]
    async fn a_kept_file_is_reused_and_a_message_under_another_name_is_damaged() {
        let (_dir, spool) = spool_in_a_new_dir();
        let first = QueueId::generate();
        let long = Bytes::from(vec![b'x'; 10_000]);
        spool.store(meta_for(&first), vec![long]).await.unwrap();
        spool.remove_delivered(&first, false, Some(10_000)).await.unwrap();
        assert_eq!(spool.recycler.len(), 1);

        let second = QueueId::generate();
        spool.store(meta_for(&second), vec![Bytes::from_static(b"short\r\n")]).await.unwrap();
        assert_eq!(spool.recycler.len(), 0, "the kept file was taken");
        let opened = spool.paths().open(&second).unwrap();
        assert_eq!(opened.content.to_bytes().unwrap(), &b"short\r\n"[..]);

        // The second message's file under the first one's name (as a crash could leave it).
        fs::rename(spool.paths().message_file(&second), spool.paths().message_file(&first)).unwrap();
        match spool.paths().open(&first) {
            Err(OpenError::Damaged(reason)) => assert_eq!(reason, format!("the envelope line is for {second}")),
            other => panic!("{:?}", other.map(|o| o.meta.id)),
        }
    }

    #[tokio::test]
    async fn a_kept_file_holds_a_shorter_an_equal_and_a_longer_message_exactly() {
        let (_dir, spool) = spool_in_a_new_dir();
        let mut previous: Option<(QueueId, u64)> = None;
        for (i, len) in [5_000usize, 1_000, 1_000, 9_000, 20].into_iter().enumerate() {
            if let Some((id, size)) = previous.take() {
                spool.remove_delivered(&id, false, Some(size)).await.unwrap();
                assert_eq!(spool.recycler.len(), 1);
            }
            let id = QueueId::generate();
            let body = Bytes::from(vec![b'a' + i as u8; len]);
            spool.store(meta_for(&id), vec![body.clone()]).await.unwrap();
            assert_eq!(spool.recycler.len(), 0, "message {i} went into the kept file");
            let opened = spool.paths().open(&id).unwrap();
            assert_eq!(opened.content.to_bytes().unwrap(), body, "message {i}, {len} bytes");
            let on_disk = fs::read(spool.paths().message_file(&id)).unwrap();
            assert!(
                on_disk.ends_with(&body) && on_disk.iter().filter(|&&b| b == b'\n').count() == 1,
                "no old bytes after it"
            );
            previous = Some((id, len as u64));
        }
    }

    /// A spool (the default sync) in a new directory, which lives as long as the first value.
    fn spool_in_a_new_dir() -> (tempfile::TempDir, std::sync::Arc<Spool>) {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path(), SpoolSync::Filesystem).unwrap());
        (dir, spool)
    }

    /// The names in the queue directory, sorted.
    fn names(spool: &Spool) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(spool.paths().queue())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn ino(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap())
    }

    #[tokio::test]
    async fn a_small_message_is_lent_its_file_and_gives_it_back_without_a_rename() {
        let (_dir, spool) = spool_in_a_new_dir();
        let first = QueueId::generate();
        spool.store(meta_for(&first), vec![Bytes::from_static(b"one\r\n")]).await.unwrap();
        // Two names, one file: the queue name is a second link to the temporary one.
        let temp = format!(".{first}.msg.tmp");
        assert_eq!(names(&spool), [temp.clone(), format!("{first}.msg")]);
        let file = ino(&spool.paths().message_file(&first));
        assert_eq!(ino(&spool.paths().queue().join(&temp)), file);
        assert_eq!(spool.recycler.lent(), 1);

        spool.remove_delivered(&first, false, Some(5)).await.unwrap();
        assert_eq!(names(&spool), [temp], "the queue name is gone, the file kept under its own");
        assert_eq!((spool.recycler.lent(), spool.recycler.len()), (0, 1));

        let second = QueueId::generate();
        spool.store(meta_for(&second), vec![Bytes::from_static(b"two\r\n")]).await.unwrap();
        assert_eq!(ino(&spool.paths().message_file(&second)), file, "the same file again");
        assert_eq!(spool.paths().open(&second).unwrap().content.to_bytes().unwrap(), &b"two\r\n"[..]);
        assert_eq!((spool.recycler.lent(), spool.recycler.len()), (1, 0));

        // A crash here: start-up deletes the temporary names, the queued message stays whole.
        spool.paths().clean().unwrap();
        assert_eq!(names(&spool), [format!("{second}.msg")]);
        assert_eq!(spool.paths().open(&second).unwrap().content.to_bytes().unwrap(), &b"two\r\n"[..]);
    }

    #[tokio::test]
    async fn a_lent_file_whose_message_left_another_way_is_released_by_the_sweep() {
        let (_dir, spool) = spool_in_a_new_dir();
        let (gone, rewritten, kept) = (QueueId::generate(), QueueId::generate(), QueueId::generate());
        for id in [&gone, &rewritten, &kept] {
            spool.store(meta_for(id), vec![Bytes::from_static(b"body\r\n")]).await.unwrap();
        }
        // Bounced or deleted (not delivered), and written anew under the same name.
        spool.paths().remove(&gone).unwrap();
        let new = spool.paths().queue().join("new");
        fs::write(&new, b"new").unwrap();
        fs::rename(&new, spool.paths().message_file(&rewritten)).unwrap();
        assert_eq!(spool.recycler.lent(), 3);

        assert_eq!(spool.recycler.sweep(std::time::Instant::now()), 0);
        assert_eq!(spool.recycler.lent(), 1, "only the file still named in the queue stays lent");
        let mut left = vec![format!(".{kept}.msg.tmp"), format!("{kept}.msg"), format!("{rewritten}.msg")];
        left.sort();
        assert_eq!(names(&spool), left);
        assert_eq!(fs::read(spool.paths().message_file(&rewritten)).unwrap(), b"new");
        assert_eq!(spool.recycler.len(), 0, "neither released file is reused");
    }

    #[tokio::test]
    async fn giving_back_a_lent_file_whose_message_is_gone_deletes_it() {
        let (_dir, spool) = spool_in_a_new_dir();
        let id = QueueId::generate();
        spool.store(meta_for(&id), vec![Bytes::from_static(b"body\r\n")]).await.unwrap();
        spool.paths().remove(&id).unwrap();
        let given = spool.recycler.give(&id, &spool.paths().message_file(&id));
        assert_eq!(given.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!((spool.recycler.lent(), spool.recycler.len()), (0, 0));
        assert!(names(&spool).is_empty(), "its temporary name is gone too");
    }

    #[tokio::test]
    async fn a_file_with_a_name_besides_its_own_is_never_written_over() {
        let (dir, spool) = spool_in_a_new_dir();
        let id = QueueId::generate();
        spool.store(meta_for(&id), vec![Bytes::from_static(b"keep me\r\n")]).await.unwrap();
        let elsewhere = dir.path().join("elsewhere.msg");
        fs::hard_link(spool.paths().message_file(&id), &elsewhere).unwrap();

        spool.remove_delivered(&id, false, Some(9)).await.unwrap();
        assert_eq!((spool.recycler.lent(), spool.recycler.len()), (0, 0), "not kept: it has another name");
        assert!(names(&spool).is_empty());
        let next = QueueId::generate();
        spool.store(meta_for(&next), vec![Bytes::from_static(b"other\r\n")]).await.unwrap();
        assert!(fs::read(&elsewhere).unwrap().ends_with(b"\nkeep me\r\n"));
    }

    #[tokio::test]
    async fn a_held_message_is_not_lent_a_file() {
        let (_dir, spool) = spool_in_a_new_dir();
        let id = QueueId::generate();
        let mut meta = meta_for(&id);
        meta.decision.action = crate::config::Action::Hold;
        spool.store(meta, vec![Bytes::from_static(b"held\r\n")]).await.unwrap();
        assert_eq!(spool.recycler.lent(), 0);
        assert_eq!(names(&spool), [format!("{id}.msg")]);
    }

    #[tokio::test]
    async fn past_the_lending_cap_a_message_file_is_renamed_into_place_and_still_kept_when_delivered() {
        let (_dir, spool) = spool_in_a_new_dir();
        let mut ids = Vec::new();
        for _ in 0..recycle::MAX_LENT + 1 {
            let id = QueueId::generate();
            spool.store(meta_for(&id), vec![Bytes::from_static(b"x\r\n")]).await.unwrap();
            ids.push(id);
        }
        assert_eq!(spool.recycler.lent(), recycle::MAX_LENT);
        let last = ids.last().unwrap();
        assert!(!names(&spool).contains(&format!(".{last}.msg.tmp")), "renamed, not linked");
        spool.remove_delivered(last, false, Some(3)).await.unwrap();
        assert_eq!(spool.recycler.len(), 1, "kept the way it was before lending");
        assert!(!spool.paths().message_file(last).exists());
    }

    #[tokio::test]
    async fn closing_the_spool_deletes_kept_files_and_the_own_names_of_lent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolSync::Filesystem).unwrap();
        let (delivered, queued) = (QueueId::generate(), QueueId::generate());
        spool.store(meta_for(&delivered), vec![Bytes::from_static(b"a\r\n")]).await.unwrap();
        spool.recycler.give(&delivered, &spool.paths().message_file(&delivered)).unwrap();
        spool.store(meta_for(&queued), vec![Bytes::from_static(b"bb\r\n")]).await.unwrap();
        let other = QueueId::generate();
        spool.store(meta_for(&other), vec![Bytes::from_static(b"ccc\r\n")]).await.unwrap();
        spool.recycler.clear();
        let mut left = vec![format!("{queued}.msg"), format!("{other}.msg")];
        left.sort();
        assert_eq!(names(&spool), left);
        assert_eq!(spool.paths().open(&queued).unwrap().content.to_bytes().unwrap(), &b"bb\r\n"[..]);
    }

    #[test]
    fn a_message_of_more_parts_than_one_write_takes_is_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("m")).unwrap();
        let id = QueueId::generate();
        let parts: Vec<Bytes> = (0..2_500).map(|i| Bytes::from(format!("part {i}\r\n"))).collect();
        write_message_file(&file, 0, &meta_for(&id), &parts, None, false).unwrap();
        let on_disk = fs::read(dir.path().join("m")).unwrap();
        let newline = on_disk.iter().position(|&b| b == b'\n').unwrap();
        let body: Vec<u8> = parts.concat();
        assert_eq!(&on_disk[newline + 1..], &body[..]);
        assert_eq!(&on_disk[..newline], serde_json::to_vec(&meta_for(&id)).unwrap().as_slice());
    }
}
