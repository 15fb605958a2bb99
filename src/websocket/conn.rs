//! [`Conn`]: the byte stream under a WebSocket session.
//!
//! Besides passing bytes through, it keeps the connection in a state that
//! another program can take over (an in-place upgrade, SPEC §10) at any
//! moment the session chooses:
//!
//! - it never gives the WebSocket reader bytes past the end of the frame
//!   being read, and keeps a copy of the bytes of the message being read
//!   until that message is whole, so the reader's buffers hold nothing that
//!   is not also here;
//! - once told to hold (through its [`Hold`]), it takes whatever is
//!   written without writing it, so flushing the WebSocket completes at
//!   once and leaves every byte of output here.
//!
//! [`Conn::take_socket`] then gives the socket, the input to read again (the
//! unfinished message and what was never read) and the output still to
//! write; [`Conn::resumed`] is the same connection in the program that
//! takes it over, which writes that output first.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::{Io, OwnedSocket};

/// The byte stream of one WebSocket connection; see the module docs.
pub struct Conn {
    /// `None` once taken.
    io: Option<Box<dyn Io>>,
    /// Input read from the socket before this stream had it (the HTTP
    /// server's read-ahead, or carried from the program before), not yet
    /// given to the reader.
    unread: Bytes,
    frames: Frames,
    /// Output taken while holding (or carried from the program before), not
    /// yet written.
    unsent: BytesMut,
    hold: Option<Hold>,
}

/// Tells a [`Conn`] to keep what is written instead of writing it: the
/// connection is about to be handed over. Clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct Hold(Arc<AtomicBool>);

impl Hold {
    /// A switch that is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, the connection keeps what is written.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What [`Conn::take_socket`] gives: everything another program needs to go on
/// with the connection exactly where this one left it.
#[derive(Debug)]
pub struct Taken {
    /// The socket.
    pub socket: OwnedSocket,
    /// Input to read before anything more from the socket: the bytes of an
    /// unfinished message, then what was never read.
    pub unread: Vec<u8>,
    /// Output to write before anything else: whole frames, or the rest of
    /// one, as the client expects them next.
    pub unsent: Vec<u8>,
}

impl Conn {
    /// A stream over `io`, of which `unread` was read already.
    pub fn new(io: Box<dyn Io>, unread: Bytes) -> Self {
        // An empty read-ahead may still hold the HTTP server's whole read
        // buffer: it goes.
        let unread = if unread.is_empty() { Bytes::new() } else { unread };
        Self { io: Some(io), unread, frames: Frames::default(), unsent: BytesMut::new(), hold: None }
    }

    /// The stream a program before this one handed over (see
    /// [`Conn::take_socket`]): `unread` is read first, `unsent` written first.
    pub fn resumed(io: Box<dyn Io>, unread: Vec<u8>, unsent: Vec<u8>) -> Self {
        Self { unsent: BytesMut::from(&unsent[..]), ..Self::new(io, unread.into()) }
    }

    /// From the moment `hold` is set, output is kept instead of written
    /// (only where the connection can be handed over at all).
    pub fn hold_with(&mut self, hold: Hold) {
        self.hold = Some(hold);
    }

    /// Whether the connection can be handed to another program (it is not
    /// TLS that this program terminates).
    pub fn carryable(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.carryable())
    }

    /// Takes the connection out, if it can be carried; afterwards reads
    /// end and writes fail. Call it between messages: with no read in
    /// progress, once everything written has been flushed (while holding).
    pub fn take_socket(&mut self) -> Option<Taken> {
        if !self.carryable() {
            return None;
        }
        let socket = self.io.take()?.into_socket().ok()?;
        let mut unread = std::mem::take(&mut self.frames.partial);
        unread.extend_from_slice(&std::mem::take(&mut self.unread));
        self.frames = Frames::default();
        Some(Taken { socket, unread, unsent: std::mem::take(&mut self.unsent).to_vec() })
    }

    fn holding(&self) -> bool {
        self.hold.as_ref().is_some_and(Hold::is_set) && self.carryable()
    }

    /// Writes what waits in `unsent`.
    fn poll_write_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = self.io.as_mut() else { return Poll::Ready(Err(gone())) };
        while !self.unsent.is_empty() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.unsent))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent.advance(n);
        }
        // The buffer is only needed around a hand-over.
        self.unsent = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the connection was handed over")
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("open", &self.io.is_some())
            .field("carryable", &self.carryable())
            .field("unread", &self.unread.len())
            .field("unsent", &self.unsent.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let limit = this.frames.room().min(buf.remaining());
        if limit == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.unread.is_empty() {
            let chunk = this.unread.split_to(limit.min(this.unread.len()));
            buf.put_slice(&chunk);
            this.frames.given(&chunk);
            if this.unread.is_empty() {
                // What is left of it may hold a whole buffer.
                this.unread = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let Some(io) = this.io.as_mut() else { return Poll::Ready(Ok(())) };
        let n = {
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(limit));
            ready!(Pin::new(io).poll_read(cx, &mut limited))?;
            limited.filled().len()
        };
        let from = buf.filled().len();
        buf.advance(n);
        this.frames.given(&buf.filled()[from..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.holding() {
            this.unsent.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        if !this.unsent.is_empty() {
            ready!(this.poll_write_unsent(cx))?;
        }
        match this.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.holding() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_unsent(cx))?;
        match this.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A connection being handed over stays open.
        if this.holding() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_unsent(cx))?;
        match this.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Where the client's frames begin and end (RFC 6455 §5.2), followed as
/// their bytes are given to the reader.
#[derive(Debug, Default)]
struct Frames {
    /// The header of the frame being read, as far as it came.
    header: [u8; MAX_HEADER],
    have: usize,
    /// Payload bytes still to come, once the header is whole.
    left: Option<u64>,
    /// Whether the frame being read is a control frame, or the last frame
    /// of a data message.
    control: bool,
    fin: bool,
    /// The bytes of the message being read, until it is whole.
    partial: Vec<u8>,
    /// Where in `partial` the frame being read began.
    frame_start: usize,
}

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;
/// A message buffer larger than this is let go once the message is whole.
const KEEP_PARTIAL: usize = 1024;

impl Frames {
    /// How many bytes may be given next without passing the end of a
    /// frame's header or of its payload.
    fn room(&self) -> usize {
        match self.left {
            Some(left) => usize::try_from(left).unwrap_or(usize::MAX),
            None if self.have < 2 => 2 - self.have,
            None => header_len(self.header[1]) - self.have,
        }
    }

    /// `bytes` (at most [`Frames::room`]) were given to the reader.
    fn given(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left.is_none() && self.have == 0 {
                self.frame_start = self.partial.len();
            }
            let n = bytes.len().min(self.room());
            let (now, rest) = bytes.split_at(n);
            self.partial.extend_from_slice(now);
            match &mut self.left {
                Some(left) => *left -= n as u64,
                None => {
                    self.header[self.have..self.have + n].copy_from_slice(now);
                    self.have += n;
                    if self.have >= 2 && self.have == header_len(self.header[1]) {
                        self.left = Some(self.payload_len());
                        self.fin = self.header[0] & 0x80 != 0;
                        self.control = self.header[0] & 0x08 != 0;
                    }
                }
            }
            if self.left == Some(0) {
                self.frame_done();
            }
            bytes = rest;
        }
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        }
    }

    fn frame_done(&mut self) {
        if self.control {
            // A control frame may come between the frames of a message; it
            // is handled on its own.
            self.partial.truncate(self.frame_start);
        } else if self.fin {
            if self.partial.capacity() > KEEP_PARTIAL {
                self.partial = Vec::new();
            } else {
                self.partial.clear();
            }
        }
        self.left = None;
        self.have = 0;
    }
}

/// The length of a frame header whose second byte is `second`.
fn header_len(second: u8) -> usize {
    let length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + length + mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [1, 2, 3, 4];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Gives `bytes` in the pieces `room` allows; returns where frames
    /// ended (offsets into `bytes`).
    fn feed(frames: &mut Frames, bytes: &[u8]) -> Vec<usize> {
        let (mut at, mut ends) = (0, Vec::new());
        while at < bytes.len() {
            let n = frames.room().min(bytes.len() - at).min(3);
            frames.given(&bytes[at..at + n]);
            at += n;
            if frames.left.is_none() && frames.have == 0 {
                ends.push(at);
            }
        }
        ends
    }

    #[test]
    fn reads_stop_at_every_frame_boundary() {
        let a = frame(true, 2, b"hello");
        let b = frame(true, 1, &[b'x'; 300]);
        let c = frame(true, 2, &vec![7; 70_000]);
        let d = frame(true, 2, b"");
        let all = [a.clone(), b.clone(), c.clone(), d.clone()].concat();
        let mut frames = Frames::default();
        let ends = feed(&mut frames, &all);
        let expected = vec![a.len(), a.len() + b.len(), a.len() + b.len() + c.len(), all.len()];
        assert_eq!(ends, expected);
        assert!(frames.partial.is_empty(), "whole messages leave nothing behind");
    }

    #[test]
    fn an_unfinished_message_is_kept_whole_without_control_frames_between() {
        let first = frame(false, 2, b"part one ");
        let ping = frame(true, 9, b"p");
        let second = frame(false, 0, b"part two");
        let last = frame(true, 0, b".");
        let mut frames = Frames::default();
        feed(&mut frames, &[first.clone(), ping, second.clone()].concat());
        // Half of the last frame has come.
        frames.given(&last[..3]);
        assert_eq!(frames.partial, [first, second, last[..3].to_vec()].concat());
        frames.given(&last[3..]);
        assert!(frames.partial.is_empty());
    }

    #[tokio::test]
    async fn a_taken_connection_carries_unread_input_and_held_output() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let message = frame(true, 2, b"whole");
        let next = frame(true, 2, b"next message");
        client_write.write_all(&[message.clone(), next[..4].to_vec()].concat()).await.unwrap();
        let io = Box::new(TestIo(server));
        let mut conn = Conn::new(io, Bytes::from_static(b""));
        let hold = Hold::new();
        conn.hold_with(hold.clone());
        // The reader asks for 1 KiB at a time; it gets one frame at most.
        let mut buf = vec![0; 1024];
        let mut got = Vec::new();
        while got.len() < message.len() {
            let n = conn.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, message);
        // Part of the next frame is read, then the hand-over.
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0 && n <= 4);
        conn.write_all(b"written").await.unwrap();
        hold.set();
        conn.write_all(b"held").await.unwrap();
        conn.flush().await.unwrap();
        let taken = conn.take_socket().expect("a Unix socket is carryable");
        // Read again: the part already read, and the rest still unread (in
        // the socket).
        assert_eq!(taken.unread, next[..n]);
        assert_eq!(taken.unsent, b"held");
        let mut seen = [0; 7];
        client_read.read_exact(&mut seen).await.unwrap();
        assert_eq!(&seen, b"written");
        // The program after picks it up.
        let OwnedSocket::Unix(socket) = taken.socket else { panic!("a Unix socket") };
        socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::UnixStream::from_std(socket).unwrap();
        let mut conn = Conn::resumed(Box::new(TestIo(socket)), taken.unread, taken.unsent);
        conn.write_all(b" then more").await.unwrap();
        let mut seen = [0; 14];
        client_read.read_exact(&mut seen).await.unwrap();
        assert_eq!(&seen, b"held then more");
        client_write.write_all(&next[4..]).await.unwrap();
        let mut got = Vec::new();
        while got.len() < next.len() {
            let n = conn.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, next);
    }

    struct TestIo(tokio::net::UnixStream);

    impl AsyncRead for TestIo {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for TestIo {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Io for TestIo {
        fn carryable(&self) -> bool {
            true
        }

        fn into_socket(self: Box<Self>) -> io::Result<OwnedSocket> {
            self.0.into_std().map(OwnedSocket::Unix)
        }
    }
}
