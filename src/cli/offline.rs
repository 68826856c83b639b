//! What the queue commands do to a spool themselves, when no relay answers on its control
//! socket: take the spool's lock, and read queue ids given on the command line.

use crate::queue_id::QueueId;
use crate::spool::SpoolPaths;

/// A queue id from the command line, or an error saying what one looks like.
pub fn parse_id(id: &str) -> Result<QueueId, String> {
    QueueId::parse(id).ok_or_else(|| format!("{id:?} is not a queue id (16 hex digits, as `queue list` shows)"))
}

/// Take the spool's lock for direct changes; fails if a relay holds it.
pub fn lock(paths: &SpoolPaths) -> Result<std::fs::File, String> {
    paths
        .try_lock()
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "a bccguard relay holds the spool but its control socket does not answer; try again".to_string())
}
