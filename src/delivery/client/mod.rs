//! bccguard's upstream SMTP client: the protocol as a state machine ([`proto`]), driven by the
//! connection workers in [`super::smtp`].

pub mod proto;
