//! Messages: addresses and domains.

pub mod address;
pub mod domain;
