//! The directory upstream: one `.eml` file per envelope recipient, starting with
//! `Return-Path:` and `Delivered-To:` as a local delivery agent writes them. Each file is
//! written under a temporary name, fsync'd, renamed, and the directory fsync'd.
//!
//! A file is named `QUEUEID-N.eml` for the message's N-th envelope recipient, so a repeated
//! delivery (after a crash) replaces the file instead of adding a second one.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::reply::{Answer, Reply};
use super::{Copy, Outcome};
use crate::durable::DirSync;
use crate::queue_id::QueueId;

/// Files written at once.
const MAX_WRITES: usize = 64;

/// Delivers into a directory.
#[derive(Clone, Debug)]
pub struct DirectoryUpstream {
    sync: DirSync,
    writes: Arc<Semaphore>,
}

impl DirectoryUpstream {
    /// Use `dir`, creating it if needed.
    pub fn open(dir: &Path) -> io::Result<DirectoryUpstream> {
        std::fs::create_dir_all(dir)?;
        Ok(DirectoryUpstream { sync: DirSync::new(dir.to_path_buf()), writes: Arc::new(Semaphore::new(MAX_WRITES)) })
    }

    /// Whether a file can be written into the outbox.
    pub async fn probe(&self) -> bool {
        let path = self.sync.dir().join(".bccguard-probe");
        tokio::task::spawn_blocking(move || std::fs::write(&path, b"probe").and_then(|()| std::fs::remove_file(&path)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Write one file per recipient; a write error defers that recipient.
    pub async fn send(&self, id: &QueueId, sender: &str, rcpts: &[(usize, &str)], copy: &Copy) -> Vec<Outcome> {
        let mut writes = JoinSet::new();
        for (slot, &(index, rcpt)) in rcpts.iter().enumerate() {
            let this = self.clone();
            let name = format!("{id}-{index}.eml");
            let trace = Bytes::from(format!("Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n"));
            let (head, body) = (copy.head.clone(), copy.body.clone());
            writes.spawn(async move {
                let _permit = this.writes.acquire().await.expect("never closed");
                let result = this.sync.write_file(&name, vec![trace, head], Some(body)).await;
                (slot, name, result)
            });
        }
        let mut outcomes = vec![Outcome::Deferred(Answer::Reply(Reply::new(451, "4.3.0 not written"))); rcpts.len()];
        while let Some(done) = writes.join_next().await {
            let Ok((slot, name, result)) = done else {
                continue;
            };
            outcomes[slot] = match result {
                Ok(()) => Outcome::Delivered(Reply::new(250, &format!("2.0.0 written to {name}"))),
                Err(e) => Outcome::Deferred(Answer::Reply(Reply::new(
                    451,
                    &format!("4.3.0 cannot write {name} to the outbox: {e}"),
                ))),
            };
        }
        outcomes
    }
}
