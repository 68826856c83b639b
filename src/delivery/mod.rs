//! Delivery to the upstream: the directory transport.

pub mod directory;
