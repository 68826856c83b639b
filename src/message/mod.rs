//! Messages: addresses and domains, the header block as the leak decision sees it, and the
//! decision itself (pure).

pub mod address;
pub mod calendar;
pub mod decide;
pub mod domain;
pub mod parse;
pub mod rule;
pub mod rules;
pub mod signals;
