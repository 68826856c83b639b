//! The process's limit on open files.

use std::io;

/// The most the soft limit is raised to (Linux's default `fs.nr_open`).
const CAP: u64 = 1 << 20;

/// Raise the soft limit on open files to the hard one (at most 1,048,576), and give the limit
/// in effect. Every session, spilled message and kept spool file is a descriptor, and the soft
/// limit a container starts with (1,024 under Docker 25 and later) is below the default
/// `server.max_connections` alone; the hard limit is the operator's choice.
pub fn raise_open_files() -> io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.map_or(CAP, |h| h.min(CAP));
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: limit.maximum })?;
    Ok(hard)
}
