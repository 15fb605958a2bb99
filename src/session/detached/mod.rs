//! Sessions that outlive their connection (SPEC §9): a named session keeps
//! its process, a bounded history of its output (and, on a terminal, a
//! model of its screen) while clients attach and leave, as writers or
//! observers, resuming where they were (`since=N`); it may be recorded.
//!
//! - `history`: the output kept for replay;
//! - `registry`: [`SharedSessions`], the named sessions by id;
//! - `record`: the asciicast v2 recording;
//! - `transfer`: file transfers found in the output, kept from observers,
//!   replays and recordings.

pub(crate) mod history;
pub mod record;
mod registry;
pub(crate) mod transfer;

pub(crate) use registry::Reservation;
pub use registry::SharedSessions;
