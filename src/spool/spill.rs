//! A message being received, kept on disk instead of in a growing buffer once it is larger
//! than the front door keeps in memory. The file is a temporary one in the queue directory:
//! dropped with the transaction (deleted), or copied into the message's spool file when it
//! is stored.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

/// A temporary file that a message's bytes are appended to as they arrive.
#[derive(Debug)]
pub struct Spill {
    path: PathBuf,
    file: Option<File>,
    len: u64,
    crc: crc32fast::Hasher,
}

impl Spill {
    /// Create the file at `path`.
    pub async fn create(path: PathBuf) -> io::Result<Spill> {
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || File::create_new(&p)).await.map_err(io::Error::other)??;
        Ok(Spill { path, file: Some(file), len: 0, crc: crc32fast::Hasher::new() })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `bytes` (on a blocking thread).
    pub async fn append(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut file = self.file.take().ok_or_else(|| io::Error::other("spill file already failed"))?;
        self.crc.update(&bytes);
        self.len += bytes.len() as u64;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = file.write_all(&bytes);
            (file, result)
        })
        .await
        .map_err(io::Error::other)?;
        result?;
        self.file = Some(file);
        Ok(())
    }

    /// The first bytes written, up to the end of the header block (the first empty line) or
    /// `limit` bytes, whichever comes first (blocking read on another thread).
    pub async fn head(&self, limit: usize) -> io::Result<Head> {
        let (path, len) = (self.path.clone(), self.len);
        tokio::task::spawn_blocking(move || {
            let file = File::open(&path)?;
            let want = (len as usize).min(limit);
            let mut bytes = vec![0; want];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0)?;
            let end = if bytes.starts_with(b"\r\n") { Some(0) } else { memchr::memmem::find(&bytes, b"\r\n\r\n") };
            let complete = end.is_some() || want as u64 == len;
            if let Some(end) = end {
                bytes.truncate(end + if end == 0 { 2 } else { 4 });
            }
            Ok(Head { bytes, complete })
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Whether `found` holds for some stretch of the bytes written: they are read in 64 KiB
    /// chunks, each with the 64 bytes before it, so a match up to 64 bytes long is not missed
    /// at a chunk boundary (blocking read on another thread).
    pub async fn any(&self, found: fn(&[u8]) -> bool) -> io::Result<bool> {
        const OVERLAP: usize = 64;
        let (path, len) = (self.path.clone(), self.len);
        tokio::task::spawn_blocking(move || {
            let file = File::open(&path)?;
            let mut pos = 0u64;
            let mut buf = vec![0; 64 * 1024 + OVERLAP];
            while pos < len {
                let start = pos.saturating_sub(OVERLAP as u64);
                let n = ((len - start) as usize).min(buf.len());
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf[..n], start)?;
                if found(&buf[..n]) {
                    return Ok(true);
                }
                pos = start + n as u64;
            }
            Ok(false)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Every byte written (blocking read on another thread).
    pub async fn read_all(&self) -> io::Result<Vec<u8>> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || std::fs::read(path)).await.map_err(io::Error::other)?
    }

    /// The file (opened for reading from its start), its length and its checksum so far.
    /// The name is removed at once: the open file stays readable until dropped.
    pub async fn finish(mut self) -> io::Result<(File, u64, crc32fast::Hasher)> {
        self.file.take().ok_or_else(|| io::Error::other("spill file already failed"))?;
        let path = self.path.clone();
        let file = tokio::task::spawn_blocking(move || File::open(&path)).await.map_err(io::Error::other)??;
        Ok((file, self.len, self.crc.clone()))
    }
}

/// The start of a spilled message.
#[derive(Debug)]
pub struct Head {
    /// Up to and including the empty line that ends the header block, if it was found.
    pub bytes: Vec<u8>,
    /// Whether `bytes` holds the whole header block (the empty line was found, or the
    /// message ended).
    pub complete: bool,
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
