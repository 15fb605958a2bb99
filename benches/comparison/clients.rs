//! One client for every server: a WebSocket (tokio-tungstenite) or, for the
//! relay, plain TCP, behind the same calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Res;
use crate::servers::{Server, Target};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

/// How a session ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Close(u16),
    CloseWithoutCode,
    NoCloseFrame,
    /// The end of a plain TCP connection (the relay).
    Eof,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Close(code) => write!(f, "Close {code}"),
            End::CloseWithoutCode => write!(f, "Close (no code)"),
            End::NoCloseFrame => write!(f, "connection closed without a Close frame"),
            End::Eof => write!(f, "end of the TCP stream"),
        }
    }
}

/// An open session.
pub enum Conn {
    Ws(Box<Ws>),
    Tcp(TcpStream),
}

/// A session's sending half.
pub enum Tx {
    Ws(SplitSink<Ws, Message>),
    Tcp(OwnedWriteHalf),
}

/// A session's receiving half.
pub enum Rx {
    Ws(SplitStream<Ws>),
    Tcp(OwnedReadHalf, Vec<u8>),
}

/// Client settings: `lean` keeps each client small (for thousands at once).
fn config(lean: bool) -> WebSocketConfig {
    let buffer = if lean { 4 * 1024 } else { 64 * 1024 };
    WebSocketConfig::default().read_buffer_size(buffer).write_buffer_size(0).max_write_buffer_size(1 << 20)
}

impl Conn {
    /// Opens a session with `server` (a new token for ws-subprocess).
    pub async fn open(server: &Server) -> Res<Self> {
        Self::open_target(&server.target, false).await
    }

    /// Opens a session at `target`; `lean` keeps the client small.
    pub async fn open_target(target: &Target, lean: bool) -> Res<Self> {
        match target {
            Target::Ws { url, token } => {
                let url = if *token {
                    format!("{url}?token=bench-{}", NEXT_TOKEN.fetch_add(1, Ordering::Relaxed))
                } else {
                    url.clone()
                };
                let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config(lean)), true);
                match timeout(CONNECT_LIMIT, connecting).await {
                    Ok(Ok((ws, _))) => Ok(Self::Ws(Box::new(ws))),
                    Ok(Err(WsError::Http(response))) => Err(format!("HTTP {}", response.status())),
                    Ok(Err(e)) => Err(format!("connect: {e}")),
                    Err(_) => Err("connect timed out".into()),
                }
            }
            Target::Tcp(addr) => match timeout(CONNECT_LIMIT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true).map_err(|e| e.to_string())?;
                    Ok(Self::Tcp(stream))
                }
                Ok(Err(e)) => Err(format!("connect: {e}")),
                Err(_) => Err("connect timed out".into()),
            },
        }
    }

    pub fn split(self) -> (Tx, Rx) {
        match self {
            Conn::Ws(ws) => {
                let (tx, rx) = (*ws).split();
                (Tx::Ws(tx), Rx::Ws(rx))
            }
            Conn::Tcp(stream) => {
                let (rx, tx) = stream.into_split();
                (Tx::Tcp(tx), Rx::Tcp(rx, vec![0; 64 * 1024]))
            }
        }
    }

    pub async fn send(&mut self, data: Bytes) -> Res<()> {
        match self {
            Conn::Ws(ws) => ws.send(Message::Binary(data)).await.map_err(|e| format!("send: {e}")),
            Conn::Tcp(stream) => stream.write_all(&data).await.map_err(|e| format!("send: {e}")),
        }
    }

    /// The next output; `Ok(None)` with how it ended at the end.
    pub async fn recv(&mut self) -> Res<Result<Bytes, End>> {
        match self {
            Conn::Ws(ws) => recv_ws(ws.next().await),
            Conn::Tcp(stream) => {
                let mut buf = vec![0u8; 64 * 1024];
                match stream.read(&mut buf).await {
                    Ok(0) => Ok(Err(End::Eof)),
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(Ok(buf.into()))
                    }
                    Err(e) => Err(format!("read: {e}")),
                }
            }
        }
    }

    /// Reads until `needle` has been seen; the bytes read.
    pub async fn read_until(&mut self, needle: &[u8]) -> Res<u64> {
        let mut seen = Vec::new();
        loop {
            match self.recv().await? {
                Ok(data) => {
                    seen.extend_from_slice(&data);
                    if seen.windows(needle.len()).any(|w| w == needle) {
                        return Ok(seen.len() as u64);
                    }
                    if seen.len() > 2 * needle.len() + 256 * 1024 {
                        seen.drain(..seen.len() - needle.len());
                    }
                }
                Err(end) => return Err(format!("ended ({end}) before {:?}", String::from_utf8_lossy(needle))),
            }
        }
    }

    /// Reads to the end of the session: output byte count and ending.
    pub async fn drain(&mut self) -> Res<(u64, End)> {
        let mut bytes = 0;
        loop {
            match self.recv().await? {
                Ok(data) => bytes += data.len() as u64,
                Err(end) => return Ok((bytes, end)),
            }
        }
    }

    /// Ends the session from the client's side.
    pub async fn close(self) {
        match self {
            Conn::Ws(mut ws) => {
                let _ = (*ws).close(None).await;
                let _ = timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = ws.next().await {} }).await;
            }
            Conn::Tcp(mut stream) => {
                let _ = stream.shutdown().await;
            }
        }
    }
}

/// A message as output: control frames carry none (an empty chunk).
fn recv_ws(message: Option<Result<Message, WsError>>) -> Res<Result<Bytes, End>> {
    match message {
        None => Ok(Err(End::NoCloseFrame)),
        Some(Ok(Message::Binary(data))) => Ok(Ok(data)),
        Some(Ok(Message::Text(text))) => Ok(Ok(Bytes::copy_from_slice(text.as_bytes()))),
        Some(Ok(Message::Close(frame))) => Ok(Err(frame.map_or(End::CloseWithoutCode, |f| End::Close(f.code.into())))),
        Some(Ok(_)) => Ok(Ok(Bytes::new())),
        Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => Ok(Err(End::NoCloseFrame)),
        Some(Err(WsError::Protocol(_) | WsError::Io(_))) => Ok(Err(End::NoCloseFrame)),
        Some(Err(e)) => Err(format!("read: {e}")),
    }
}

impl Tx {
    pub async fn send(&mut self, data: Bytes) -> Res<()> {
        match self {
            Tx::Ws(ws) => ws.send(Message::Binary(data)).await.map_err(|e| format!("send: {e}")),
            Tx::Tcp(stream) => stream.write_all(&data).await.map_err(|e| format!("send: {e}")),
        }
    }
}

impl Rx {
    /// The next output (perhaps empty); the ending at the end.
    pub async fn recv(&mut self) -> Res<Result<Bytes, End>> {
        match self {
            Rx::Ws(ws) => recv_ws(ws.next().await),
            Rx::Tcp(stream, buf) => match stream.read(buf).await {
                Ok(0) => Ok(Err(End::Eof)),
                Ok(n) => Ok(Ok(Bytes::copy_from_slice(&buf[..n]))),
                Err(e) => Err(format!("read: {e}")),
            },
        }
    }
}
