//! The two ways a session talks: the raw protocol of the original program,
//! and the Kubernetes exec channel protocol (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`, and its text form `v4.base64.channel.k8s.io`),
//! chosen by `Sec-WebSocket-Protocol`.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::spec::TerminalSize;

/// Channel bytes of the Kubernetes exec protocol.
pub mod channel {
    /// Client to process.
    pub const STDIN: u8 = 0;
    /// Process stdout (and the terminal, in tty mode).
    pub const STDOUT: u8 = 1;
    /// Process stderr (pipe mode).
    pub const STDERR: u8 = 2;
    /// The final status, as a Kubernetes `Status`.
    pub const STATUS: u8 = 3;
    /// Terminal resize, `{"Width":W,"Height":H}`.
    pub const RESIZE: u8 = 4;
    /// This server's own: where a connection's output starts in a named
    /// session (JSON), for a client that named it (`?session=`).
    pub const SESSION: u8 = 5;
    /// v5: `[CLOSE, c]` closes channel `c`.
    pub const CLOSE: u8 = 255;
}

/// Prefix of the Kubernetes-style subprotocol that carries a bearer token,
/// for browsers, which cannot set `Authorization` on a WebSocket. It is
/// never spoken, so never chosen.
pub const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Where stdout and stderr go in pipe mode (a terminal always merges them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// One pipe for both, so their order is kept.
    Merged,
    /// A pipe each, so a client can tell them apart.
    Separate,
}

/// Which stream an output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// stdout (or both, merged, or the terminal).
    Stdout,
    /// stderr, in [`OutputMode::Separate`].
    Stderr,
}

/// The subprotocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// No subprotocol: output as binary messages, every message to stdin,
    /// the exit status in the Close code.
    Raw,
    /// `v4.channel.k8s.io`.
    ChannelV4,
    /// `v4.base64.channel.k8s.io`: v4 in text messages, each a channel digit
    /// followed by the payload in base64.
    ChannelV4Base64,
    /// `v5.channel.k8s.io`: v4 plus closing a channel.
    ChannelV5,
}

/// What a client message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the process's input.
    Stdin(Bytes),
    /// No more input.
    EndStdin,
    /// A new terminal size.
    Resize(TerminalSize),
    /// Nothing to do; the text says why, for the log.
    Ignored(&'static str),
    /// The client is closing the session.
    Close,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Resize {
    width: u16,
    height: u16,
}

impl Protocol {
    /// The subprotocol names this server speaks, best first.
    pub const NAMES: [(&'static str, Protocol); 3] = [
        ("v5.channel.k8s.io", Protocol::ChannelV5),
        ("v4.channel.k8s.io", Protocol::ChannelV4),
        ("v4.base64.channel.k8s.io", Protocol::ChannelV4Base64),
    ];

    /// The best protocol among those a client offers; the raw protocol when
    /// it offers none this server knows.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Self {
        let offered: Vec<&str> = offered.into_iter().collect();
        Self::NAMES.iter().find(|(name, _)| offered.contains(name)).map(|(_, p)| *p).unwrap_or(Self::Raw)
    }

    /// The `Sec-WebSocket-Protocol` answer; `None` for the raw protocol.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMES.iter().find(|(_, p)| *p == self).map(|(name, _)| *name)
    }

    /// Whether stdout and stderr are kept apart (pipe mode only).
    pub fn output_mode(self) -> OutputMode {
        match self {
            Self::Raw => OutputMode::Merged,
            Self::ChannelV4 | Self::ChannelV5 | Self::ChannelV4Base64 => OutputMode::Separate,
        }
    }

    /// The message carrying `data` from `stream` (the raw protocol sends
    /// `data` itself, without a copy).
    pub fn output(self, stream: OutputStream, data: Bytes) -> Message {
        match self {
            Self::Raw => Message::Binary(data),
            _ => self.on_channel(
                match stream {
                    OutputStream::Stdout => channel::STDOUT,
                    OutputStream::Stderr => channel::STDERR,
                },
                &data,
            ),
        }
    }

    /// The message telling a client where its output starts in a named
    /// session (`info` is JSON): a text message in the raw protocol (whose
    /// output is always binary), channel 5 in the channel protocol.
    pub fn session_info(self, info: &[u8]) -> Message {
        match self {
            Self::Raw => Message::Text(String::from_utf8_lossy(info).into_owned().into()),
            _ => self.on_channel(channel::SESSION, info),
        }
    }

    /// A channel message of this (channel) protocol.
    fn on_channel(self, channel: u8, data: &[u8]) -> Message {
        if self == Self::ChannelV4Base64 {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            text.push(char::from(b'0' + channel));
            STANDARD.encode_string(data, &mut text);
            Message::Text(text.into())
        } else {
            Message::Binary(prefixed(channel, data))
        }
    }

    /// The channel and payload of a client message, as bytes.
    fn channel_frame(self, message: Message) -> Result<Bytes, &'static str> {
        let raw = match message {
            Message::Binary(data) => data,
            // Kubernetes reads text frames like binary ones (its Python
            // client writes strings as text), so both carry channels.
            Message::Text(text) => Bytes::from(text),
            _ => return Err("control frame"),
        };
        if self != Self::ChannelV4Base64 || raw.is_empty() {
            return Ok(raw);
        }
        let channel = raw[0].wrapping_sub(b'0');
        let payload = STANDARD.decode(&raw[1..]).map_err(|_| "malformed base64")?;
        Ok(prefixed(channel, &payload))
    }

    /// What a client message means.
    pub fn input(self, message: Message) -> Input {
        match (self, message) {
            (_, Message::Close(_)) => Input::Close,
            (_, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Input::Ignored("control frame"),
            (Self::Raw, Message::Binary(data)) => Input::Stdin(data),
            (Self::Raw, Message::Text(text)) => Input::Stdin(Bytes::from(text)),
            (protocol, message) => match protocol.channel_frame(message) {
                Ok(data) => protocol.channel_input(data),
                Err(why) => Input::Ignored(why),
            },
        }
    }

    fn channel_input(self, data: Bytes) -> Input {
        match data.first() {
            None => Input::Ignored("empty message"),
            Some(&channel::STDIN) => Input::Stdin(data.slice(1..)),
            Some(&channel::RESIZE) => match serde_json::from_slice::<Resize>(&data[1..]) {
                Ok(Resize { width, height }) if width > 0 && height > 0 => {
                    Input::Resize(TerminalSize { cols: width, rows: height })
                }
                _ => Input::Ignored("malformed resize"),
            },
            Some(&channel::CLOSE) if self == Self::ChannelV5 => match data.get(1) {
                Some(&channel::STDIN) => Input::EndStdin,
                _ => Input::Ignored("close of a channel other than stdin"),
            },
            Some(_) => Input::Ignored("unknown channel"),
        }
    }

    /// The messages that end a session whose process exited (`oom`: killed
    /// by the out-of-memory killer): for the raw protocol, a Close frame
    /// carrying the status; for the channel protocol, the Kubernetes
    /// `Status` on channel 3, then a normal Close.
    pub fn exit(self, status: ExitStatus, oom: bool) -> Vec<Message> {
        match self {
            Self::Raw => vec![Message::Close(Some(exit_close_frame(status, oom)))],
            _ => vec![
                self.on_channel(channel::STATUS, kubernetes_status(status, oom).as_bytes()),
                Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })),
            ],
        }
    }
}

fn prefixed(channel: u8, data: &[u8]) -> Bytes {
    let mut message = BytesMut::with_capacity(data.len() + 1);
    message.put_u8(channel);
    message.put_slice(data);
    message.freeze()
}

/// The exit code a status reports: the code, or 128 + the signal number, as
/// a shell (and kubelet) reports a death by signal.
pub fn exit_code(status: ExitStatus) -> Option<i32> {
    status.code().or_else(|| status.signal().map(|signal| 128 + signal))
}

/// The Close frame that reports an exit status: 1000 for success, else
/// 4000 + the exit code, or 4000 + 128 + the signal number (reason `oom`
/// when the out-of-memory killer sent it).
pub fn exit_close_frame(status: ExitStatus, oom: bool) -> CloseFrame {
    let (code, reason) = match (status.code(), status.signal()) {
        (None, Some(signal)) if oom => (4000 + 128 + signal as u16, "oom".to_string()),
        (Some(0), _) => (1000, "exit 0".to_string()),
        (Some(code), _) => (4000 + code as u16, format!("exit {code}")),
        (None, Some(signal)) => (4000 + 128 + signal as u16, format!("signal {signal}")),
        (None, None) => (1011, "unknown exit status".to_string()),
    };
    CloseFrame { code: CloseCode::from(code), reason: reason.into() }
}

/// The Kubernetes `Status` that kubelet sends on channel 3 when an exec
/// ends: `Success`, or `Failure` with reason `NonZeroExitCode` (`OOMKilled`
/// when the out-of-memory killer ended it) and the code (128 + signal for a
/// signal) as the `ExitCode` cause.
pub fn kubernetes_status(status: ExitStatus, oom: bool) -> String {
    match exit_code(status) {
        Some(0) => r#"{"metadata":{},"status":"Success"}"#.to_string(),
        code => {
            let code = code.unwrap_or(-1);
            let message = match status.signal() {
                Some(_) if oom => format!("command was killed for using too much memory, exit code {code}"),
                Some(signal) => {
                    format!("command terminated with non-zero exit code: signal {signal}, exit code {code}")
                }
                None => format!("command terminated with non-zero exit code: exit status {code}"),
            };
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": if oom { "OOMKilled" } else { "NonZeroExitCode" },
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_is_preferred_and_unknown_offers_mean_raw() {
        assert_eq!(Protocol::negotiate(["v4.channel.k8s.io", "v5.channel.k8s.io"]), Protocol::ChannelV5);
        assert_eq!(Protocol::negotiate(["v4.channel.k8s.io"]), Protocol::ChannelV4);
        assert_eq!(Protocol::negotiate(["chat", "base64url.bearer.authorization.k8s.io.eA"]), Protocol::Raw);
        assert_eq!(Protocol::Raw.name(), None);
    }

    #[test]
    fn channel_input_is_decoded() {
        let p = Protocol::ChannelV5;
        let binary = |b: &'static [u8]| Message::Binary(Bytes::from_static(b));
        assert_eq!(p.input(binary(b"\x00hi")), Input::Stdin(Bytes::from_static(b"hi")));
        assert_eq!(p.input(binary(b"\xff\x00")), Input::EndStdin);
        assert_eq!(
            p.input(binary(br#"\x04{"Width":100,"Height":40}"#)),
            Input::Ignored("unknown channel"),
            "a literal backslash is not channel 4"
        );
        assert_eq!(
            p.input(Message::Binary(prefixed(4, br#"{"Width":100,"Height":40}"#))),
            Input::Resize(TerminalSize { cols: 100, rows: 40 })
        );
        assert_eq!(p.input(Message::Binary(prefixed(4, b"{oops"))), Input::Ignored("malformed resize"));
        assert_eq!(p.input(binary(b"")), Input::Ignored("empty message"));
        assert_eq!(p.input(binary(b"\x07x")), Input::Ignored("unknown channel"));
        assert_eq!(Protocol::ChannelV4.input(binary(b"\xff\x00")), Input::Ignored("unknown channel"));
        assert_eq!(p.input(Message::Text("\u{0}typed".into())), Input::Stdin(Bytes::from_static(b"typed")));
    }

    #[test]
    fn base64_variant_uses_text_with_a_channel_digit() {
        let p = Protocol::ChannelV4Base64;
        assert_eq!(Protocol::negotiate(["v4.base64.channel.k8s.io"]), p);
        assert_eq!(p.output(OutputStream::Stderr, Bytes::from_static(b"hi")), Message::Text("2aGk=".into()));
        assert_eq!(p.input(Message::Text("0aGk=".into())), Input::Stdin(Bytes::from_static(b"hi")));
        let resize = format!("4{}", STANDARD.encode(br#"{"Width":10,"Height":5}"#));
        assert_eq!(p.input(Message::Text(resize.into())), Input::Resize(TerminalSize { cols: 10, rows: 5 }));
        assert_eq!(p.input(Message::Text("0!!".into())), Input::Ignored("malformed base64"));
    }

    #[test]
    fn statuses_read_like_kubelet() {
        assert_eq!(kubernetes_status(ExitStatus::from_raw(0), false), r#"{"metadata":{},"status":"Success"}"#);
        let failure: serde_json::Value =
            serde_json::from_str(&kubernetes_status(ExitStatus::from_raw(3 << 8), false)).unwrap();
        assert_eq!(failure["status"], "Failure");
        assert_eq!(failure["reason"], "NonZeroExitCode");
        assert_eq!(failure["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failure["details"]["causes"][0]["message"], "3");
        let killed: serde_json::Value =
            serde_json::from_str(&kubernetes_status(ExitStatus::from_raw(9), false)).unwrap();
        assert_eq!(killed["details"]["causes"][0]["message"], "137");
        let oom: serde_json::Value = serde_json::from_str(&kubernetes_status(ExitStatus::from_raw(9), true)).unwrap();
        assert_eq!(oom["reason"], "OOMKilled");
        assert_eq!(oom["details"]["causes"][0]["message"], "137");
    }

    #[test]
    fn exit_statuses_map_to_close_codes() {
        let frame = exit_close_frame(ExitStatus::from_raw(0), false);
        assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1000, "exit 0"));
        let frame = exit_close_frame(ExitStatus::from_raw(3 << 8), false);
        assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4003, "exit 3"));
        let frame = exit_close_frame(ExitStatus::from_raw(9), false);
        assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4137, "signal 9"));
        let frame = exit_close_frame(ExitStatus::from_raw(9), true);
        assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4137, "oom"));
    }
}
