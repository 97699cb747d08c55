//! Encodings for the wire: messages, gaps, jobs, and the control frames of every stream and
//! socket (keepalives, retry, disconnect notices, WebSocket `ok` / `error` answers and Close
//! frames). Each format lives here once, so every transport shows a message the same way.

pub mod base64;
pub mod batch;
mod envelope;
pub mod frames;
pub mod job;
pub mod ws;

pub use envelope::{Envelope, GapJson};
pub use frames::Encoded;
