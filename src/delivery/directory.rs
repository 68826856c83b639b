//! The directory upstream: one `.eml` file per envelope recipient, starting with
//! `Return-Path:` and `Delivered-To:` as a local delivery agent writes them. Each file is
//! written under a temporary name, fsync'd, renamed, and the directory fsync'd.

use std::io;
use std::path::Path;

use bytes::Bytes;

use crate::durable::DirSync;

/// Delivers into a directory.
#[derive(Clone, Debug)]
pub struct DirectoryUpstream {
    sync: DirSync,
}

impl DirectoryUpstream {
    /// Use `dir`, creating it if needed.
    pub fn open(dir: &Path) -> io::Result<DirectoryUpstream> {
        std::fs::create_dir_all(dir)?;
        Ok(DirectoryUpstream {
            sync: DirSync::new(dir.to_path_buf()),
        })
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        self.sync.dir()
    }

    /// Write one file per recipient. `name` is the file's stem, unique per recipient and
    /// stable across retries, so a repeated delivery replaces the file instead of adding one.
    pub async fn deliver_one(
        &self,
        name: &str,
        sender: &str,
        recipient: &str,
        message: &[Bytes],
    ) -> io::Result<()> {
        let envelope = format!("Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n");
        let mut parts = Vec::with_capacity(message.len() + 1);
        parts.push(Bytes::from(envelope));
        parts.extend(message.iter().cloned());
        self.sync.write_file(&format!("{name}.eml"), parts).await
    }
}
