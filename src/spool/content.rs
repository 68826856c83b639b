//! A message's bytes as delivery sees them: in memory when small, otherwise a region of its
//! spool file, read in chunks as each copy is written. The spool file never changes after it
//! is stored, so every copy of one message reads the same region; memory follows what is
//! being written, not what is queued.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

/// Bytes read from a file per chunk.
pub const CHUNK: usize = 64 * 1024;

/// Message bytes: shared memory, or a region of an open file.
#[derive(Clone, Debug)]
pub enum Content {
    /// In memory.
    Memory(Bytes),
    /// `len` bytes at `offset` of `file`.
    File {
        /// The open spool file (it stays readable even if the file is unlinked meanwhile).
        file: Arc<File>,
        /// Where the region starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
}

impl Content {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Memory(b) => b.len() as u64,
            Content::File { len, .. } => *len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A part of it (`range` relative to its start, clamped to its end).
    pub fn slice(&self, range: Range<u64>) -> Content {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        match self {
            Content::Memory(b) => Content::Memory(b.slice(start as usize..end as usize)),
            Content::File { file, offset, .. } => {
                Content::File { file: file.clone(), offset: offset + start, len: end - start }
            }
        }
    }

    /// The bytes in chunks of at most [`CHUNK`] (one chunk for memory). A file region that
    /// ends early (the file was truncated) is an error, never a short message. Blocking.
    pub fn chunks(&self) -> Chunks {
        Chunks { content: self.clone(), pos: 0 }
    }

    /// Write every byte to `out` (blocking).
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        for chunk in self.chunks() {
            out.write_all(&chunk?)?;
        }
        Ok(())
    }

    /// Append every byte to `out`: a file region is copied file to file by the kernel
    /// (`copy_file_range`), never through memory, where the filesystem allows. Blocking.
    pub fn copy_to_file(&self, out: &mut File) -> io::Result<()> {
        let Content::File { file, offset, len } = self else {
            return self.write_to(out);
        };
        let (mut from, end) = (*offset, offset + len);
        while from < end {
            let want = (end - from).min(1 << 30) as usize;
            match rustix::fs::copy_file_range(&**file, Some(&mut from), &*out, None, want) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended early")),
                Ok(_) => {}
                // Not possible here (another filesystem, an old kernel): copy through memory.
                Err(_) if from == *offset => return self.write_to(out),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Everything in memory (for small contents; blocking for a file).
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        match self {
            Content::Memory(b) => Ok(b.clone()),
            Content::File { .. } => {
                let mut all = Vec::with_capacity(self.len() as usize);
                self.write_to(&mut all)?;
                Ok(Bytes::from(all))
            }
        }
    }
}

/// Iterator over a [`Content`]'s chunks.
pub struct Chunks {
    content: Content,
    pos: u64,
}

impl Iterator for Chunks {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        let len = self.content.len();
        if self.pos >= len {
            return None;
        }
        match &self.content {
            Content::Memory(b) => {
                self.pos = len;
                Some(Ok(b.clone()))
            }
            Content::File { file, offset, .. } => {
                let n = (len - self.pos).min(CHUNK as u64) as usize;
                let mut buf = vec![0; n];
                match file.read_exact_at(&mut buf, offset + self.pos) {
                    Ok(()) => {
                        self.pos += n as u64;
                        Some(Ok(Bytes::from(buf)))
                    }
                    Err(e) => {
                        // Stop for good: the rest of the region is not to be trusted.
                        self.pos = len;
                        Some(Err(e))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_region_reads_in_chunks_and_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let content = Content::File { file, offset: 10, len: 150_000 };
        let chunks: Vec<Bytes> = content.chunks().collect::<io::Result<_>>().unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(content.to_bytes().unwrap(), data[10..150_010]);
        let part = content.slice(100..70_000);
        assert_eq!(part.to_bytes().unwrap(), data[110..70_010]);
        assert_eq!(content.slice(149_999..200_000).len(), 1);
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_short_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'x'; 100_000]).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let content = Content::File { file, offset: 0, len: 100_000 };
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(70_000).unwrap();
        let results: Vec<io::Result<Bytes>> = content.chunks().collect();
        assert!(results[0].is_ok());
        assert!(results[1].is_err());
        assert_eq!(results.len(), 2);
        assert!(content.to_bytes().is_err());
    }
}
