//! The WebSocket side of a session: the opening handshake, validated once
//! into a [`WebSocketUpgrade`], and the [`Protocol`]s spoken over the socket
//! (the raw protocol of the original program, and the Kubernetes exec
//! channel protocol).
//!
//! Both the token layer (which refuses a bad handshake before asking a
//! backend) and the session service (which answers `101`) use this module;
//! it uses neither.

mod conn;
pub mod protocol;
mod upgrade;

pub use conn::{Conn, Hold, Taken};
pub use protocol::{BEARER_PROTOCOL_PREFIX, Input, OutputMode, OutputStream, Protocol};
pub use upgrade::{HandshakeRejection, PendingSocket, Socket, WebSocketUpgrade, offered_protocols};
