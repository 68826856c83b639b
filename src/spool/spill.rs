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

    /// The file (opened for reading from its start), its length and its checksum so far.
    /// The name is removed at once: the open file stays readable until dropped.
    pub async fn finish(mut self) -> io::Result<(File, u64, crc32fast::Hasher)> {
        self.file.take().ok_or_else(|| io::Error::other("spill file already failed"))?;
        let path = self.path.clone();
        let file = tokio::task::spawn_blocking(move || File::open(&path)).await.map_err(io::Error::other)??;
        Ok((file, self.len, self.crc.clone()))
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
