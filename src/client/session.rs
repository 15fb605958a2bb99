//! One run of the client: connect, bridge the local terminal (or pipes) to
//! the session, and for a named session connect again after a drop.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::unix::pipe;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use url::Url;

use super::ConnectArgs;
use super::keys::{Typed, Watch};
use super::terminal::{self, RawMode};
use super::tls::{self, TlsOptions};
use crate::websocket::protocol::channel::{CLOSE, RESIZE, SESSION, STATUS, STDERR, STDIN, STDOUT};

/// The subprotocol asked for: the channel protocol with stdin's end.
const PROTOCOL: &str = "v5.channel.k8s.io";
/// A ping this often keeps proxies from timing the connection out and
/// shows a dead one: nothing heard for [`SILENCE`] means it dropped.
const KEEPALIVE: Duration = Duration::from_secs(10);
const SILENCE: Duration = Duration::from_secs(30);
/// Input typed while the connection is down is kept up to this much.
const PENDING_LIMIT: usize = 1 << 20;
/// Reconnection backs off from the first delay to the longest.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const LONGEST_DELAY: Duration = Duration::from_secs(5);
/// 128 + SIGPIPE: the status a shell gives a writer whose reader left.
const BROKEN_PIPE: u8 = 141;

/// Runs the client: the remote exit status, or why the connection failed.
pub async fn run(args: ConnectArgs) -> Result<u8, String> {
    let target = Target::new(&args)?;
    let tty = !args.no_tty && terminal::stdin_is_terminal();
    let raw = if tty {
        Some(RawMode::enter().map_err(|e| format!("cannot put the terminal in raw mode: {e}"))?)
    } else {
        None
    };
    let observer = Cell::new(args.observer);
    let mut local = Local::start(tty, raw, &args)?;
    let mut position = Position::default();
    let mut pending = Pending::default();
    let mut output = Output::new().map_err(|e| format!("cannot write the output: {e}"))?;
    let mut since = None;
    loop {
        let ws = match since {
            None => target.connect(None, args.connect_timeout).await.map_err(Refusal::into_reason)?,
            Some(offset) => match reconnect(&target, offset, &args, &mut local, &mut pending).await? {
                Reconnected::Connection(ws) => *ws,
                Reconnected::Left(code) => return Ok(code),
            },
        };
        match drive(ws, &mut local, &mut output, &mut position, &mut pending, &observer).await {
            End::Exit(code) => return Ok(code),
            End::Failed(why) => return Err(why),
            End::Dropped(why) if position.named => {
                local.notice(&format!("connection lost ({why}); connecting again"));
                since = Some(position.offset);
            }
            End::Dropped(why) => return Err(format!("connection lost: {why}")),
        }
    }
}

/// Where the server is and how to ask it.
struct Target {
    /// `ws://` or `wss://`, with `session=` when named, without `since`.
    url: Url,
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    token_file: Option<PathBuf>,
    env_token: Option<String>,
}

impl Target {
    fn new(args: &ConnectArgs) -> Result<Self, String> {
        let mut url = args.url.clone();
        let secure = match url.scheme() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            other => return Err(format!("{other}:// is not a WebSocket URL (ws://, wss://, http:// or https://)")),
        };
        url.set_scheme(if secure { "wss" } else { "ws" })
            .map_err(|()| "the URL cannot be a WebSocket URL".to_string())?;
        let host = url.host_str().ok_or("the URL has no host")?.to_string();
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let session = args.session.clone().or_else(|| param(&url, "session"));
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| name != "since" && name != "session")
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        if !kept.is_empty() || session.is_some() {
            let mut query = url.query_pairs_mut();
            query.extend_pairs(kept);
            if let Some(session) = &session {
                query.append_pair("session", session);
            }
        }
        let tls = if secure {
            let options = TlsOptions {
                ca_file: args.ca_file.clone(),
                cert: args.cert.clone(),
                key: args.key.clone(),
                insecure: args.insecure,
            };
            Some((tls::connector(&options)?, tls::server_name(&host)?))
        } else {
            None
        };
        let headers = args.headers.iter().map(|header| parse_header(header)).collect::<Result<_, _>>()?;
        let env_token = std::env::var("WS_SUBPROCESS_TOKEN").ok().filter(|t| !t.is_empty());
        Ok(Self {
            url,
            authority: format!("{host}:{port}"),
            tls,
            headers,
            token_file: args.token_file.clone(),
            env_token,
        })
    }

    /// The token to send in a header: the file's (read now, so it may have
    /// been renewed), else the environment's.
    fn token(&self) -> Result<Option<String>, Refusal> {
        match &self.token_file {
            Some(file) => match std::fs::read_to_string(file) {
                Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
                Ok(_) => Err(Refusal::Fatal(format!("--token-file {}: empty", file.display()))),
                Err(err) => Err(Refusal::Fatal(format!("--token-file {}: {err}", file.display()))),
            },
            None => Ok(self.env_token.clone()),
        }
    }

    /// One connection: TCP, TLS, and the WebSocket handshake, within
    /// `limit`.
    async fn connect(&self, since: Option<u64>, limit: Duration) -> Result<Connection, Refusal> {
        let mut url = self.url.clone();
        if let Some(since) = since {
            url.query_pairs_mut().append_pair("since", &since.to_string());
        }
        let mut request = url.as_str().into_client_request().map_err(|e| Refusal::Fatal(format!("the URL: {e}")))?;
        let headers = request.headers_mut();
        headers.insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(token) = self.token()? {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Refusal::Fatal("the token is not a valid header value".into()))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let attempt = async {
            let tcp = TcpStream::connect(&self.authority).await.map_err(|e| Refusal::io(&self.authority, e))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &self.tls {
                None => Box::new(tcp),
                Some((connector, name)) => {
                    Box::new(connector.connect(name.clone(), tcp).await.map_err(|e| Refusal::io(&self.authority, e))?)
                }
            };
            let config = WebSocketConfig::default().read_buffer_size(64 << 10).write_buffer_size(0);
            let (ws, response) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
                .await
                .map_err(|err| Refusal::handshake(&self.authority, err))?;
            let channel = response.headers().get("sec-websocket-protocol").is_some_and(|p| p == PROTOCOL);
            Ok(Connection { ws, channel })
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Refusal::Retry(format!(
                "no connection to {} within {}",
                self.authority,
                humantime::format_duration(limit)
            ))),
        }
    }
}

fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned())
}

fn parse_header(header: &str) -> Result<(HeaderName, HeaderValue), String> {
    let bad = || format!("--header `{header}`: write it as `Name: value`");
    let (name, value) = header.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::try_from(name.trim()).map_err(|_| bad())?;
    let value = HeaderValue::try_from(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// A connection made, and whether it speaks the channel protocol (else the
/// raw one: a server that offers no subprotocol).
struct Connection {
    ws: Ws,
    channel: bool,
}

/// Why no connection was made: worth another try later, or not.
enum Refusal {
    Retry(String),
    Fatal(String),
    /// 404: no such session (on a rejoin, it ended meanwhile).
    Gone(String),
}

impl Refusal {
    fn into_reason(self) -> String {
        match self {
            Self::Retry(why) | Self::Fatal(why) | Self::Gone(why) => why,
        }
    }

    fn io(authority: &str, err: io::Error) -> Self {
        Self::tls(authority, &err).unwrap_or_else(|| Self::Retry(format!("cannot connect to {authority}: {err}")))
    }

    /// A certificate the client does not trust, or one the server does not
    /// take (told in the handshake, or with TLS 1.3 only at the first read),
    /// stays so: no point trying again.
    fn tls(authority: &str, err: &io::Error) -> Option<Self> {
        let tls = err.get_ref()?.downcast_ref::<tokio_rustls::rustls::Error>()?;
        Some(Self::Fatal(format!("TLS with {authority}: {tls}")))
    }

    fn handshake(authority: &str, err: WsError) -> Self {
        match err {
            WsError::Http(response) => {
                let status = response.status();
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let body = body.lines().next().unwrap_or("").trim().to_string();
                let why = match (status.canonical_reason(), body.is_empty()) {
                    (Some(reason), true) => format!("the server refused: {} {reason}", status.as_u16()),
                    (_, false) => format!("the server refused: {}: {body}", status.as_u16()),
                    (None, true) => format!("the server refused: {}", status.as_u16()),
                };
                match status.as_u16() {
                    429 | 502 | 503 | 504 => Self::Retry(why),
                    404 => Self::Gone(why),
                    _ => Self::Fatal(why),
                }
            }
            WsError::Io(err) => Self::tls(authority, &err)
                .unwrap_or_else(|| Self::Retry(format!("the handshake with {authority} failed: {err}"))),
            WsError::Tls(err) => Self::Fatal(format!("TLS: {err}")),
            err => Self::Fatal(format!("the handshake failed: {err}")),
        }
    }
}

enum Reconnected {
    Connection(Box<Connection>),
    /// The user left (detach keys, a signal) while the client waited.
    Left(u8),
}

/// Connects again with `since=offset`, backing off, for at most
/// `--reconnect-timeout`; meanwhile typed input is kept and the detach keys
/// and signals still work.
async fn reconnect(
    target: &Target,
    offset: u64,
    args: &ConnectArgs,
    local: &mut Local,
    pending: &mut Pending,
) -> Result<Reconnected, String> {
    let started = Instant::now();
    let mut delay = Duration::ZERO;
    let mut last = String::new();
    loop {
        let waited = tokio::time::sleep(delay);
        tokio::pin!(waited);
        loop {
            tokio::select! {
                () = &mut waited => break,
                event = local.next(), if pending.bytes < PENDING_LIMIT => match event {
                    Event::Input(message) => pending.push(message),
                    Event::Eof => pending.extend(local.end_of_input()),
                    Event::Resize | Event::Nothing => {}
                    Event::Detach => {
                        local.notice("detached; the session runs on");
                        return Ok(Reconnected::Left(0));
                    }
                    Event::Signal(n) => return Ok(Reconnected::Left(128 + n)),
                },
            }
        }
        let left = args.reconnect_timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(format!(
                "cannot connect again within {} ({last})",
                humantime::format_duration(args.reconnect_timeout)
            ));
        }
        match target.connect(Some(offset), left.min(args.connect_timeout)).await {
            Ok(connection) => {
                local.notice("connected again");
                return Ok(Reconnected::Connection(Box::new(connection)));
            }
            Err(Refusal::Gone(why)) => {
                return Err(format!("the session ended while the connection was down ({why})"));
            }
            Err(Refusal::Fatal(why)) => return Err(why),
            Err(Refusal::Retry(why)) => last = why,
        }
        delay = (delay * 2).clamp(FIRST_DELAY, LONGEST_DELAY);
    }
}

/// How one connection ended.
enum End {
    /// The client is done, with this status.
    Exit(u8),
    /// The connection broke, or the server asked for a reconnection (1012,
    /// 1013): a named session connects again.
    Dropped(String),
    /// The server ended the connection for good.
    Failed(String),
}

/// Output received of a named session, in the server's counting (§9:
/// bytes on channels 1 and 2, a repaint not counted).
#[derive(Debug, Default)]
struct Position {
    /// The server said where the output starts: a reconnection can ask for
    /// what follows.
    named: bool,
    offset: u64,
    /// Bytes still to come of a repaint.
    repaint: u64,
}

impl Position {
    /// The server's `{"offset", "repaint", "role"}`; whether it makes this
    /// connection an observer's.
    fn learn(&mut self, info: &[u8], tty: bool) -> bool {
        #[derive(serde::Deserialize)]
        struct Info {
            offset: u64,
            #[serde(default)]
            repaint: u64,
            #[serde(default)]
            role: Option<String>,
            /// A file transfer this client does not get (SPEC §12): its
            /// bytes are skipped, not lost.
            #[serde(default)]
            transfer: Option<serde_json::Value>,
        }
        let Ok(info) = serde_json::from_slice::<Info>(info) else { return false };
        if self.named && info.offset > self.offset && info.transfer.is_none() {
            let lost = info.offset - self.offset;
            notice(tty, &format!("{lost} bytes of output were lost (older than the session's history)"));
        }
        self.named = true;
        self.offset = info.offset;
        self.repaint = info.repaint;
        info.role.as_deref() == Some("observer")
    }

    fn count(&mut self, len: usize) {
        let len = len as u64;
        let repaint = self.repaint.min(len);
        self.repaint -= repaint;
        self.offset += len - repaint;
    }
}

/// Client messages not yet sent, in order; one leaves only once sent.
#[derive(Default)]
struct Pending {
    queue: VecDeque<Message>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, message: Message) {
        self.bytes += message.len();
        self.queue.push_back(message);
    }

    fn extend(&mut self, message: Option<Message>) {
        if let Some(message) = message {
            self.push(message);
        }
    }

    fn sent(&mut self) {
        if let Some(message) = self.queue.pop_front() {
            self.bytes -= message.len();
        }
    }
}

/// Bridges one connection until it ends.
async fn drive(
    connection: Connection,
    local: &mut Local,
    output: &mut Output,
    position: &mut Position,
    pending: &mut Pending,
    observer: &Cell<bool>,
) -> End {
    let Connection { ws, channel } = connection;
    local.channel = channel;
    let (mut sink, mut stream) = ws.split();
    let heard = Cell::new(Instant::now());
    let mut reading = std::pin::pin!(read_loop(&mut stream, channel, output, position, (local.tty, &heard), observer));
    let writing = write_loop(&mut sink, local, pending, observer);
    tokio::select! {
        end = &mut reading => end,
        end = silent(&heard) => end,
        end = writing => match end {
            // Leaving: the server's answer to the Close is not awaited
            // beyond a moment.
            end @ End::Exit(_) => {
                let _ = tokio::time::timeout(Duration::from_millis(500), reading).await;
                end
            }
            end => end,
        },
    }
}

/// Ends once nothing (not even the answer to a keepalive ping) was heard
/// from the server for [`SILENCE`]: one timer, set again only when it
/// fires.
async fn silent(heard: &Cell<Instant>) -> End {
    loop {
        tokio::time::sleep_until((heard.get() + SILENCE).into()).await;
        if heard.get().elapsed() >= SILENCE {
            return End::Dropped(format!("nothing heard from the server for {}", humantime::format_duration(SILENCE)));
        }
    }
}

/// Server messages to the local stdout and stderr.
async fn read_loop<S>(
    stream: &mut S,
    channel: bool,
    output: &mut Output,
    position: &mut Position,
    (tty, heard): (bool, &Cell<Instant>),
    observer: &Cell<bool>,
) -> End
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut status = None;
    loop {
        // Silence is watched by `silent`, not by a timer set per message.
        let message = match stream.next().await {
            None => return status.map_or_else(|| End::Dropped("the connection was closed".into()), End::Exit),
            Some(Err(err)) => return status.map_or_else(|| End::Dropped(err.to_string()), End::Exit),
            Some(Ok(message)) => message,
        };
        heard.set(Instant::now());
        let written = match message {
            Message::Binary(data) if channel => match data.first() {
                Some(&STDOUT) => out(&mut output.stdout, &data[1..], position),
                Some(&STDERR) => out(&mut output.stderr, &data[1..], position),
                Some(&STATUS) => {
                    status = Some(exit_status(&data[1..], tty));
                    Ok(())
                }
                Some(&SESSION) => {
                    if position.learn(&data[1..], tty) {
                        observer.set(true);
                    }
                    Ok(())
                }
                _ => Ok(()),
            },
            Message::Binary(data) => out(&mut output.stdout, &data, position),
            Message::Text(info) if !channel => {
                if position.learn(info.as_bytes(), tty) {
                    observer.set(true);
                }
                Ok(())
            }
            Message::Close(frame) => return closed(frame, status, channel),
            _ => Ok(()),
        };
        if let Err(end) = written {
            return end;
        }
    }
}

/// The local stdout and stderr, unbuffered: each message is written whole
/// as it comes, in one write where it fits.
struct Output {
    stdout: std::fs::File,
    stderr: std::fs::File,
}

impl Output {
    fn new() -> io::Result<Self> {
        Ok(Self {
            stdout: io::stdout().as_fd().try_clone_to_owned()?.into(),
            stderr: io::stderr().as_fd().try_clone_to_owned()?.into(),
        })
    }
}

fn out(to: &mut std::fs::File, data: &[u8], position: &mut Position) -> Result<(), End> {
    match to.write_all(data) {
        Ok(()) => {
            position.count(data.len());
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Err(End::Exit(BROKEN_PIPE)),
        Err(err) => Err(End::Failed(format!("cannot write the output: {err}"))),
    }
}

/// The exit code a channel-3 `Status` carries: 0 for `Success`, the
/// `ExitCode` cause (already 128 + N for a signal), else 1 with the
/// message shown.
fn exit_status(status: &[u8], tty: bool) -> u8 {
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(status) else { return 1 };
    if status["status"] == "Success" {
        return 0;
    }
    let code = status["details"]["causes"].as_array().and_then(|causes| {
        causes
            .iter()
            .find(|cause| cause["reason"] == "ExitCode")
            .and_then(|cause| cause["message"].as_str()?.parse::<u8>().ok())
    });
    code.unwrap_or_else(|| {
        if let Some(message) = status["message"].as_str() {
            notice(tty, message);
        }
        1
    })
}

/// What a Close from the server means.
fn closed(frame: Option<CloseFrame>, status: Option<u8>, channel: bool) -> End {
    if let Some(status) = status {
        return End::Exit(status);
    }
    let Some(frame) = frame else { return End::Failed("the server closed the connection without a status".into()) };
    let reason = if frame.reason.is_empty() { String::new() } else { format!(": {}", frame.reason) };
    match u16::from(frame.code) {
        // The raw protocol's exit status.
        code @ 4000..=4255 if !channel => End::Exit((code - 4000) as u8),
        1000 if !channel => End::Exit(0),
        1012 => End::Dropped(format!("the server is restarting{reason}")),
        1013 => End::Dropped(format!("the server asked to try again later{reason}")),
        1001 => End::Failed(format!("the server is going away{reason}")),
        code => End::Failed(format!("the server closed the connection ({code}{reason})")),
    }
}

/// Local input to the server, and keepalive pings.
async fn write_loop<S>(sink: &mut S, local: &mut Local, pending: &mut Pending, observer: &Cell<bool>) -> End
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let sent = |result: Result<(), WsError>| result.map_err(|err| End::Dropped(err.to_string()));
    let resize = |local: &Local| (local.tty && !observer.get()).then(terminal::size).flatten().map(resize_message);
    if let Some(message) = resize(local)
        && let Err(end) = sent(sink.send(message).await)
    {
        return end;
    }
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        while let Some(message) = pending.queue.front() {
            if observer.get() {
                pending.queue.clear();
                pending.bytes = 0;
                break;
            }
            if let Err(end) = sent(sink.send(message.clone()).await) {
                return end;
            }
            pending.sent();
        }
        tokio::select! {
            _ = keepalive.tick() => {
                if let Err(end) = sent(sink.send(Message::Ping(Bytes::new())).await) {
                    return end;
                }
            }
            event = local.next() => match event {
                Event::Input(message) => pending.push(message),
                Event::Eof => pending.extend(local.end_of_input()),
                Event::Resize => {
                    if let Some(message) = resize(local) {
                        pending.push(message);
                    }
                }
                Event::Nothing => {}
                Event::Detach => {
                    local.notice("detached; the session runs on");
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "detached".into() }))).await;
                    return End::Exit(0);
                }
                Event::Signal(n) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "signal".into() }))).await;
                    return End::Exit(128 + n);
                }
            },
        }
    }
}

fn resize_message((columns, rows): (u16, u16)) -> Message {
    let mut data = BytesMut::with_capacity(40);
    data.put_u8(RESIZE);
    data.extend_from_slice(format!(r#"{{"Width":{columns},"Height":{rows}}}"#).as_bytes());
    Message::Binary(data.freeze())
}

/// What happened locally.
enum Event {
    /// Input, as the message that carries it.
    Input(Message),
    Eof,
    Resize,
    Detach,
    /// SIGTERM, SIGHUP, SIGINT or SIGQUIT: leave with 128 + N.
    Signal(u8),
    Nothing,
}

/// The local side: standard input, the detach keys, signals, notices.
struct Local {
    tty: bool,
    raw: Option<RawMode>,
    /// `None` once input ended (or is not read at all).
    stdin: Option<Stdin>,
    watch: Option<Watch>,
    /// SIGTERM, SIGHUP, SIGINT, SIGQUIT.
    signals: [Signal; 4],
    winch: Option<Signal>,
    cont: Option<Signal>,
    /// The connection speaks the channel protocol.
    channel: bool,
}

impl Local {
    fn start(tty: bool, raw: Option<RawMode>, args: &ConnectArgs) -> Result<Self, String> {
        let listen = |kind: SignalKind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        let signals = [
            listen(SignalKind::terminate())?,
            listen(SignalKind::hangup())?,
            listen(SignalKind::interrupt())?,
            listen(SignalKind::quit())?,
        ];
        // An observer off a terminal reads nothing; on one, only its keys
        // to leave.
        let stdin = (tty || !args.observer).then(|| read_stdin(tty));
        let watch = (tty && !args.detach_keys.is_none()).then(|| Watch::new(args.detach_keys.clone()));
        Ok(Self {
            tty,
            raw,
            stdin,
            watch,
            signals,
            winch: if tty { Some(listen(SignalKind::window_change())?) } else { None },
            cont: if tty { Some(listen(SignalKind::from_raw(rustix::process::Signal::CONT.as_raw()))?) } else { None },
            channel: true,
        })
    }

    fn notice(&self, text: &str) {
        notice(self.tty, text);
    }

    /// What ends the process's input: channel `255,0` (the raw protocol
    /// has no way to say it).
    fn end_of_input(&self) -> Option<Message> {
        self.channel.then(|| Message::Binary(Bytes::from_static(&[CLOSE, STDIN])))
    }

    fn stdin_message(&self, data: &[u8]) -> Message {
        if !self.channel {
            return Message::Binary(Bytes::copy_from_slice(data));
        }
        let mut message = BytesMut::with_capacity(1 + data.len());
        message.put_u8(STDIN);
        message.extend_from_slice(data);
        Message::Binary(message.freeze())
    }

    async fn next(&mut self) -> Event {
        let [term, hup, int, quit] = &mut self.signals;
        tokio::select! {
            input = read(&mut self.stdin, self.channel) => match input {
                None => {
                    self.stdin = None;
                    // A terminal's input that ends ends no session (a
                    // hang-up comes as SIGHUP).
                    if self.tty { Event::Nothing } else { Event::Eof }
                }
                Some(Piece::Message(message)) => Event::Input(message),
                Some(Piece::Typed(data)) => match self.watch.as_mut().map(|watch| watch.feed(&data)) {
                    None => Event::Input(self.stdin_message(&data)),
                    Some(Typed::Input(data)) if data.is_empty() => Event::Nothing,
                    Some(Typed::Input(data)) => Event::Input(self.stdin_message(&data)),
                    Some(Typed::Detach { .. }) => Event::Detach,
                },
            },
            _ = term.recv() => Event::Signal(15),
            _ = hup.recv() => Event::Signal(1),
            _ = int.recv() => Event::Signal(2),
            _ = quit.recv() => Event::Signal(3),
            _ = recv_signal(&mut self.winch) => Event::Resize,
            _ = recv_signal(&mut self.cont) => {
                // Stopped and continued: the shell may have put the
                // terminal back in cooked mode meanwhile.
                if let Some(raw) = &self.raw {
                    let _ = raw.resume();
                }
                Event::Resize
            }
        }
    }
}

/// A notice for the user, on stderr: on a raw terminal on a line of its
/// own.
fn notice(tty: bool, text: &str) {
    let mut err = io::stderr().lock();
    let _ = if tty { write!(err, "\r\n[ws-subprocess: {text}]\r\n") } else { writeln!(err, "ws-subprocess: {text}") };
}

/// Where standard input comes from.
enum Stdin {
    /// A pipe, read on the runtime itself (no thread to wake per read),
    /// into a buffer that starts with the channel byte, so what is read is
    /// the message without a copy.
    Pipe(pipe::Receiver, BytesMut),
    /// A terminal or a file, read on a thread of its own (a blocking read
    /// cannot be cancelled); the channel closes at its end.
    Thread(mpsc::Receiver<Bytes>),
}

/// A piece of input: a message ready to send, or typed bytes still to be
/// watched for the detach keys.
enum Piece {
    Message(Message),
    Typed(Bytes),
}

/// The next piece of input, `None` at its end (or never, with none).
async fn read(stdin: &mut Option<Stdin>, channel: bool) -> Option<Piece> {
    match stdin {
        Some(Stdin::Pipe(pipe, buffer)) => {
            use tokio::io::AsyncReadExt;
            // A read cancelled by another event leaves the prefix in place.
            if buffer.is_empty() && channel {
                buffer.put_u8(STDIN);
            }
            buffer.reserve(16 << 10);
            match pipe.read_buf(buffer).await {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(Piece::Message(Message::Binary(buffer.split().freeze()))),
            }
        }
        Some(Stdin::Thread(rx)) => rx.recv().await.map(Piece::Typed),
        None => std::future::pending().await,
    }
}

async fn recv_signal(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Standard input: a pipe when it is one (and not a terminal's), else a
/// thread that reads it.
fn read_stdin(tty: bool) -> Stdin {
    let pipe = (!tty)
        .then(|| io::stdin().as_fd().try_clone_to_owned().ok())
        .flatten()
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());
    if let Some(pipe) = pipe {
        return Stdin::Pipe(pipe, BytesMut::new());
    }
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buffer = vec![0; 16 << 10];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buffer[..n])).is_err() {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    Stdin::Thread(rx)
}
