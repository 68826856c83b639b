//! A message's bytes as delivery sees them: in memory when small, otherwise a region of its
//! spool file, read in chunks as each copy is written. The spool file never changes after it
//! is stored, so every copy of one message reads the same region; memory follows what is
//! being written, not what is queued. A copy whose body differs in one span (a rewritten
//! calendar part) is a sequence of parts: slices of the original around the new bytes.

use std::collections::VecDeque;
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
    /// These contents one after the other (none of them `Parts`).
    Parts(Arc<[Content]>),
}

impl Content {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Memory(b) => b.len() as u64,
            Content::File { len, .. } => *len,
            Content::Parts(parts) => parts.iter().map(Content::len).sum(),
        }
    }

    /// `parts` one after the other, as one content (empty parts dropped, nested parts
    /// flattened).
    pub fn joined(parts: impl IntoIterator<Item = Content>) -> Content {
        let mut flat = Vec::new();
        for p in parts {
            match p {
                Content::Parts(inner) => flat.extend(inner.iter().cloned()),
                p if p.is_empty() => {}
                p => flat.push(p),
            }
        }
        Content::Parts(flat.into())
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
            Content::Parts(parts) => {
                let (mut at, mut out) = (0, Vec::new());
                for p in parts.iter() {
                    let (from, to) = (at, at + p.len());
                    if to > start && from < end {
                        out.push(p.slice(start.saturating_sub(from)..end.min(to) - from));
                    }
                    at = to;
                }
                Content::joined(out)
            }
        }
    }

    /// The bytes in chunks of at most [`CHUNK`] (one chunk for memory). A file region that
    /// ends early (the file was truncated) is an error, never a short message. Blocking.
    pub fn chunks(&self) -> Chunks {
        let queue = match self {
            Content::Parts(parts) => parts.iter().cloned().collect(),
            c => VecDeque::from([c.clone()]),
        };
        Chunks { queue, pos: 0 }
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
    pub fn copy_to_file(&self, mut out: &File) -> io::Result<()> {
        if let Content::Parts(parts) = self {
            return parts.iter().try_for_each(|p| p.copy_to_file(out));
        }
        let Content::File { file, offset, len } = self else {
            return self.write_to(&mut out);
        };
        let (mut from, end) = (*offset, offset + len);
        while from < end {
            let want = (end - from).min(1 << 30) as usize;
            match rustix::fs::copy_file_range(&**file, Some(&mut from), out, None, want) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended early")),
                Ok(_) => {}
                // Not possible here (another filesystem, an old kernel): copy through memory.
                Err(_) if from == *offset => return self.write_to(&mut out),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Everything in memory (for small contents; blocking for a file).
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        match self {
            Content::Memory(b) => Ok(b.clone()),
            Content::File { .. } | Content::Parts(_) => {
                let mut all = Vec::with_capacity(self.len() as usize);
                self.write_to(&mut all)?;
                Ok(Bytes::from(all))
            }
        }
    }
}

/// Iterator over a [`Content`]'s chunks.
pub struct Chunks {
    /// What is left to read (memory and file regions), the first one from `pos`.
    queue: VecDeque<Content>,
    pos: u64,
}

impl Iterator for Chunks {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let content = self.queue.front()?;
            let len = content.len();
            if self.pos >= len {
                self.queue.pop_front();
                self.pos = 0;
                continue;
            }
            match content {
                Content::Memory(b) => {
                    let b = b.clone();
                    self.queue.pop_front();
                    self.pos = 0;
                    return Some(Ok(b));
                }
                Content::File { file, offset, .. } => {
                    let n = (len - self.pos).min(CHUNK as u64) as usize;
                    let mut buf = vec![0; n];
                    return match file.read_exact_at(&mut buf, offset + self.pos) {
                        Ok(()) => {
                            self.pos += n as u64;
                            Some(Ok(Bytes::from(buf)))
                        }
                        Err(e) => {
                            // Stop for good: the rest is not to be trusted.
                            self.queue.clear();
                            Some(Err(e))
                        }
                    };
                }
                Content::Parts(_) => {
                    // Not built by `chunks` (parts are flattened), but safe all the same.
                    let Some(Content::Parts(parts)) = self.queue.pop_front() else { unreachable!() };
                    for p in parts.iter().rev() {
                        self.queue.push_front(p.clone());
                    }
                    self.pos = 0;
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
    fn parts_read_and_slice_as_one_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Content::File { file: Arc::new(File::open(&path).unwrap()), offset: 0, len: 100_000 };
        let joined = Content::joined([
            file.slice(0..70_000),
            Content::Memory(Bytes::from_static(b"NEW")),
            file.slice(90_000..100_000),
        ]);
        let mut want = data[..70_000].to_vec();
        want.extend_from_slice(b"NEW");
        want.extend_from_slice(&data[90_000..]);
        assert_eq!(joined.len(), want.len() as u64);
        assert_eq!(joined.to_bytes().unwrap(), want);
        assert_eq!(joined.slice(69_990..70_010).to_bytes().unwrap(), want[69_990..70_010]);
        let out = tempfile::tempfile().unwrap();
        joined.copy_to_file(&out).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap().len(), 100_000);
        assert_eq!(out.metadata().unwrap().len(), want.len() as u64);
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
