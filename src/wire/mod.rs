//! Encodings of messages for the wire. Each format lives here once, so every transport
//! shows a message the same way.

pub mod base64;
mod envelope;
pub mod frames;
pub mod job;
pub mod ws;

pub use envelope::{Envelope, GapJson};
pub use frames::Encoded;
