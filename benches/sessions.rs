//! Side-by-side benchmark: ws-subprocess (the release binary, in front of a
//! controller run inside this process) against Debian's `websocketd`, on
//! loopback, with the same commands and the same tokio-tungstenite clients.
//!
//! `cargo bench --bench sessions` runs the full set; `-- --smoke` shrinks it
//! to about a second (what CI runs). A missing `websocketd` is skipped with a
//! note. See `benches/README.md` for how to read the numbers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const BIN: &str = env!("CARGO_BIN_EXE_ws-subprocess");
const MIB: f64 = 1024.0 * 1024.0;
/// Clients running sessions at once in the concurrent session-rate scenario.
const CONCURRENT_CLIENTS: usize = 16;
/// Size of each echo message, its trailing newline included.
const ECHO_SIZE: usize = 64;
/// Bounds on every wait, so a stuck server fails a row instead of hanging.
const START_LIMIT: Duration = Duration::from_secs(10);
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
const SESSION_LIMIT: Duration = Duration::from_secs(10);
const THROUGHPUT_LIMIT: Duration = Duration::from_secs(120);
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Res<T> = Result<T, String>;

/// How big each scenario is.
struct Params {
    smoke: bool,
    throughput_bytes: u64,
    sessions: usize,
    round_trips: usize,
    repetitions: usize,
}

impl Params {
    fn from_args() -> Self {
        // `cargo bench` passes `--bench` (and maybe a filter); only `--smoke`
        // means anything here.
        if std::env::args().skip(1).any(|arg| arg == "--smoke") {
            Self::smoke()
        } else {
            Self { smoke: false, throughput_bytes: 256 << 20, sessions: 500, round_trips: 10_000, repetitions: 5 }
        }
    }

    fn smoke() -> Self {
        Self { smoke: true, throughput_bytes: 8 << 20, sessions: 20, round_trips: 100, repetitions: 1 }
    }

    /// An untimed first pass, so first-connection costs stay out of the rows.
    fn warmup() -> Self {
        Self { smoke: true, throughput_bytes: 1 << 20, sessions: CONCURRENT_CLIENTS, round_trips: 20, repetitions: 1 }
    }

    fn per_client(&self) -> usize {
        self.sessions.div_ceil(CONCURRENT_CLIENTS)
    }
}

/// The two servers under comparison.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    WsSubprocess,
    Websocketd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::WsSubprocess => "ws-subprocess",
            Kind::Websocketd => "websocketd",
        }
    }
}

/// A controller: answers every token with one fixed command spec.
struct Controller {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    async fn start(command: &str, args: &[&str]) -> Res<Self> {
        let body = Bytes::from(serde_json::json!({ "command": command, "args": args }).to_string());
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("controller bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_request: http::Request<Incoming>| {
                        let response = http::Response::builder()
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(body.clone()));
                        async move { Ok::<_, Infallible>(response.expect("a valid response")) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a server wrote to stderr: its first few lines at warning level or
/// above, and its last few lines (to explain a failed start).
#[derive(Default, Clone)]
struct Complaints(Arc<Mutex<ServerLog>>);

#[derive(Default)]
struct ServerLog {
    warnings: Vec<String>,
    tail: std::collections::VecDeque<String>,
}

impl Complaints {
    const KEEP: usize = 5;

    fn note(&self, line: &str) {
        let mut log = self.0.lock().unwrap();
        let lowered = line.to_ascii_lowercase();
        let serious = ["warn", "error", "panic"].iter().any(|word| lowered.contains(word));
        if serious && log.warnings.len() < Self::KEEP {
            log.warnings.push(line.to_string());
        }
        if log.tail.len() == Self::KEEP {
            log.tail.pop_front();
        }
        log.tail.push_back(line.to_string());
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap().warnings)
    }

    fn tail(&self) -> String {
        let log = self.0.lock().unwrap();
        if log.tail.is_empty() { "no output".into() } else { log.tail.iter().cloned().collect::<Vec<_>>().join(" | ") }
    }
}

/// One running server, ready for `url`.
struct Server {
    kind: Kind,
    url: String,
    child: Child,
    complaints: Complaints,
    _controller: Option<Controller>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    async fn start(kind: Kind, websocketd: Option<&Path>, command: &str, args: &[&str]) -> Res<Self> {
        match kind {
            Kind::WsSubprocess => Self::start_ws_subprocess(command, args).await,
            Kind::Websocketd => Self::start_websocketd(websocketd.ok_or("websocketd not found")?, command, args).await,
        }
    }

    /// The release binary on port 0, in an empty directory (no stray
    /// `ws-subprocess.toml`), with no `WS_SUBPROCESS_*` variables and the
    /// default log level; its address comes from the "listening" line.
    async fn start_ws_subprocess(command: &str, args: &[&str]) -> Res<Self> {
        let controller = Controller::start(command, args).await?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let url = format!("http://{}/ws-controller", controller.addr);
        let mut cmd = Command::new(BIN);
        cmd.args(["--listen", "127.0.0.1:0", "--controller-url", &url]).current_dir(dir.path()).env_remove("RUST_LOG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WS_SUBPROCESS_") {
                cmd.env_remove(key);
            }
        }
        let (mut child, complaints, addr) = spawn_logged(cmd, true)?;
        let addr = match timeout(START_LIMIT, addr).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.start_kill();
                return Err(format!("ws-subprocess did not report its address: {}", complaints.tail()));
            }
        };
        let url = format!("ws://{addr}/ws?token=bench");
        Ok(Self { kind: Kind::WsSubprocess, url, child, complaints, _controller: Some(controller), _dir: Some(dir) })
    }

    /// websocketd on a free port, once that port accepts connections.
    async fn start_websocketd(program: &Path, command: &str, args: &[&str]) -> Res<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut cmd = Command::new(program);
        cmd.arg(format!("--port={port}")).args(["--address=127.0.0.1", "--binary=true", command]).args(args);
        let (mut child, complaints, _) = spawn_logged(cmd, false)?;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await; // let its last lines arrive
                return Err(format!("websocketd exited ({status}): {}", complaints.tail()));
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(format!("websocketd did not listen on port {port}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let url = format!("ws://127.0.0.1:{port}/");
        Ok(Self { kind: Kind::Websocketd, url, child, complaints, _controller: None, _dir: None })
    }

    async fn stop(mut self) -> Vec<String> {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
        self.complaints.take()
    }
}

/// Spawns `cmd` with stderr read line by line for the whole run (a full
/// pipe would stall the server); with `want_addr`, the address of the first
/// "listening" line is sent on the returned channel.
fn spawn_logged(mut cmd: Command, want_addr: bool) -> Res<(Child, Complaints, tokio::sync::oneshot::Receiver<String>)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {:?}: {e}", cmd.as_std().get_program()))?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let complaints = Complaints::default();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let noted = complaints.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut addr_tx = want_addr.then_some(addr_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening")
                && let Some(addr) = listening_addr(&line)
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(addr);
            }
            noted.note(&line);
        }
    });
    Ok((child, complaints, addr_rx))
}

/// The address in the "listening" line, text (`addr=A`) or JSON
/// (`"addr":"A"`).
fn listening_addr(line: &str) -> Option<String> {
    let rest = line.split("addr=").nth(1).or_else(|| line.split("\"addr\":").nth(1))?;
    let addr = rest.trim_start_matches('"').split(['"', ' ', ',']).next()?;
    Some(addr.to_string())
}

/// How a session ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Close(u16),
    CloseWithoutCode,
    NoCloseFrame,
    /// The client closed first and the server answered with a Close.
    Answered,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Close(code) => write!(f, "Close {code}"),
            End::CloseWithoutCode => write!(f, "Close (no code)"),
            End::NoCloseFrame => write!(f, "connection closed without a Close frame"),
            End::Answered => write!(f, "client closed first, server answered Close"),
        }
    }
}

/// A scenario, a server and an ending.
type EndingKey = (String, &'static str, End);

/// Counts of session endings per scenario and server.
#[derive(Default, Clone)]
struct Endings(Arc<Mutex<BTreeMap<EndingKey, usize>>>);

impl Endings {
    fn record(&self, scenario: &str, kind: Kind, end: End) {
        *self.0.lock().unwrap().entry((scenario.to_string(), kind.name(), end)).or_default() += 1;
    }
}

async fn connect(url: &str) -> Res<Ws> {
    match timeout(CONNECT_LIMIT, tokio_tungstenite::connect_async_with_config(url, None, true)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Reads output until the session is over: the server's Close (answered,
/// and the connection then read to its end) or the end of the connection.
/// Returns the output byte count and how it ended.
async fn drain(ws: &mut Ws) -> Res<(u64, End)> {
    let mut bytes = 0u64;
    let mut end = None;
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Binary(data)) => bytes += data.len() as u64,
            Ok(Message::Text(text)) => bytes += text.len() as u64,
            Ok(Message::Close(frame)) => {
                end.get_or_insert(frame.map_or(End::CloseWithoutCode, |f| End::Close(f.code.into())));
            }
            Ok(_) => {}
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => break,
            Err(WsError::Protocol(_) | WsError::Io(_)) if end.is_none() => {
                end = Some(End::NoCloseFrame);
                break;
            }
            Err(_) if end.is_some() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok((bytes, end.unwrap_or(End::NoCloseFrame)))
}

/// One session of `head -c N /dev/zero`, read to its end; MiB/s.
async fn throughput_once(server: &Server, bytes: u64, endings: &Endings) -> Res<f64> {
    let start = Instant::now();
    let mut ws = connect(&server.url).await?;
    let (got, end) = timeout(THROUGHPUT_LIMIT, drain(&mut ws)).await.map_err(|_| "session timed out")??;
    let elapsed = start.elapsed().as_secs_f64();
    endings.record("output throughput", server.kind, end);
    if got != bytes {
        return Err(format!("received {got} of {bytes} bytes"));
    }
    Ok(bytes as f64 / MIB / elapsed)
}

/// One session of `/bin/true`: connect and read to the end.
async fn one_session(url: &str) -> Res<End> {
    let mut ws = connect(url).await?;
    let (_, end) = timeout(SESSION_LIMIT, drain(&mut ws)).await.map_err(|_| "session timed out")??;
    Ok(end)
}

/// `count` sessions one after another; sessions/s.
async fn sessions_sequential(server: &Server, count: usize, endings: &Endings) -> Res<f64> {
    let start = Instant::now();
    for _ in 0..count {
        endings.record("session rate", server.kind, one_session(&server.url).await?);
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// `CONCURRENT_CLIENTS` clients, each running `per_client` sessions one
/// after another; total sessions/s.
async fn sessions_concurrent(server: &Server, per_client: usize, endings: &Endings) -> Res<f64> {
    let start = Instant::now();
    let clients: Vec<_> = (0..CONCURRENT_CLIENTS)
        .map(|_| {
            let (url, endings, kind) = (server.url.clone(), endings.clone(), server.kind);
            tokio::spawn(async move {
                for _ in 0..per_client {
                    endings.record("session rate x16", kind, one_session(&url).await?);
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for client in clients {
        client.await.map_err(|e| format!("client task: {e}"))??;
    }
    Ok((CONCURRENT_CLIENTS * per_client) as f64 / start.elapsed().as_secs_f64())
}

/// One `/bin/cat` session: `round_trips` timed round trips of a 64-byte
/// binary message ending in a newline (after a short untimed warm-up);
/// returns (median, p99) in microseconds.
async fn echo_once(server: &Server, round_trips: usize, endings: &Endings) -> Res<(f64, f64)> {
    let warmup = 10.min(round_trips);
    let mut message = vec![b'x'; ECHO_SIZE - 1];
    message.push(b'\n');
    let message = Bytes::from(message);
    let mut ws = connect(&server.url).await?;
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..warmup + round_trips {
        let start = Instant::now();
        ws.send(Message::Binary(message.clone())).await.map_err(|e| format!("send: {e}"))?;
        let mut got = 0;
        while got < ECHO_SIZE {
            match timeout(ROUND_TRIP_LIMIT, ws.next()).await {
                Ok(Some(Ok(Message::Binary(data)))) => got += data.len(),
                Ok(Some(Ok(Message::Text(text)))) => got += text.len(),
                Ok(Some(Ok(Message::Close(frame)))) => return Err(format!("closed mid-echo: {frame:?}")),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("read: {e}")),
                Ok(None) => return Err("connection ended mid-echo".into()),
                Err(_) => return Err(format!("no echo within {ROUND_TRIP_LIMIT:?}")),
            }
        }
        if got != ECHO_SIZE {
            return Err(format!("echo of {got} bytes, sent {ECHO_SIZE}"));
        }
        if i >= warmup {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    // Closing the socket ends `cat` (stdin closed); read to the end.
    let _ = ws.close(None).await;
    if let Ok(Ok((_, end))) = timeout(SESSION_LIMIT, drain(&mut ws)).await {
        let end = if end == End::NoCloseFrame { end } else { End::Answered };
        endings.record("echo round trip", server.kind, end);
    }
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 0.50), percentile(&samples, 0.99)))
}

/// The `q` quantile of sorted `samples` (nearest rank).
fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let rank = (q * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// The results of one row over its repetitions.
struct Row {
    scenario: String,
    kind: Kind,
    unit: &'static str,
    values: Vec<f64>,
    error: Option<String>,
}

impl Row {
    fn print(&self) {
        let (result, detail) = match (&self.error, self.values.is_empty()) {
            (Some(error), _) => ("failed".to_string(), error.clone()),
            (None, true) => ("-".to_string(), "no result".to_string()),
            (None, false) => {
                let mut sorted = self.values.clone();
                sorted.sort_by(f64::total_cmp);
                let detail = if sorted.len() > 1 {
                    format!("median of {}, range {}..{}", sorted.len(), fmt(sorted[0]), fmt(sorted[sorted.len() - 1]))
                } else {
                    "1 run".to_string()
                };
                (fmt(median(&sorted)), detail)
            }
        };
        println!("{:<24} {:<14} {:>10} {:<11} {}", self.scenario, self.kind.name(), result, self.unit, detail);
        let _ = std::io::stdout().flush();
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

fn fmt(value: f64) -> String {
    if value >= 100.0 { format!("{value:.0}") } else { format!("{value:.1}") }
}

/// Everything one run needs.
struct Bench {
    params: Params,
    websocketd: Option<PathBuf>,
    endings: Endings,
    complaints: BTreeMap<&'static str, Vec<String>>,
    /// Whether a ws-subprocess row failed (the run then exits 1; a failed
    /// peer row is only reported).
    failed: bool,
}

impl Bench {
    fn kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![Kind::WsSubprocess];
        if self.websocketd.is_some() {
            kinds.push(Kind::Websocketd);
        }
        kinds
    }

    /// Starts every server for `command`, runs `run` on each once at warm-up
    /// size (untimed), then once per repetition (the servers interleaved, so
    /// drift hits both alike), and prints one row per server and per value
    /// `run` returns.
    async fn scenario<F>(&mut self, names: &[(&str, &'static str)], command: &str, args: &[&str], run: F)
    where
        F: AsyncFn(&Server, &Params, &Endings) -> Res<Vec<f64>>,
    {
        let mut servers = Vec::new();
        let mut rows: Vec<Row> = Vec::new();
        for kind in self.kinds() {
            let started = Server::start(kind, self.websocketd.as_deref(), command, args).await;
            for (scenario, unit) in names {
                let error = started.as_ref().err().cloned();
                rows.push(Row { scenario: scenario.to_string(), kind, unit, values: Vec::new(), error });
            }
            if let Ok(server) = started {
                servers.push(server);
            }
        }
        let (warmup, ignored) = (Params::warmup(), Endings::default());
        for server in &servers {
            let _ = run(server, &warmup, &ignored).await;
        }
        for _ in 0..self.params.repetitions {
            for server in &servers {
                let mine = rows.iter_mut().filter(|row| row.kind == server.kind && row.error.is_none());
                match run(server, &self.params, &self.endings).await {
                    Ok(values) => mine.zip(values).for_each(|(row, value)| row.values.push(value)),
                    Err(error) => mine.for_each(|row| row.error = Some(error.clone())),
                }
            }
        }
        for server in servers {
            let kind = server.kind.name();
            let complaints = server.stop().await;
            self.complaints.entry(kind).or_default().extend(complaints);
        }
        for (scenario, _) in names {
            rows.iter().filter(|row| row.scenario == *scenario).for_each(Row::print);
        }
        self.failed |= rows.iter().any(|row| row.kind == Kind::WsSubprocess && row.error.is_some());
    }
}

/// `program` in `$PATH`, if it is there.
fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

fn websocketd_version(program: &Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|version| !version.is_empty())
        .unwrap_or_else(|| "version unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().into())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn print_header(bench: &Bench) {
    let p = &bench.params;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("ws-subprocess session benchmark ({})", if p.smoke { "smoke: tiny sizes, one run" } else { "full" });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    println!(
        "machine:       nproc={nproc}, cpu={}, kernel={}, load average at start={load}",
        cpu_model(),
        kernel.trim()
    );
    println!(
        "ws-subprocess: {} ({}, {})",
        env!("CARGO_PKG_VERSION"),
        BIN,
        if cfg!(debug_assertions) { "debug build" } else { "optimized build" }
    );
    match &bench.websocketd {
        Some(path) => println!("websocketd:    {} ({})", websocketd_version(path), path.display()),
        None => {
            println!("websocketd:    NOT FOUND in $PATH; its rows are skipped (Debian: apt-get install websocketd)")
        }
    }
    println!();
    println!("Compared: ws-subprocess (release binary, default settings, asking a controller in this");
    println!("process over HTTP for every session) and websocketd --binary=true (fixed command, no");
    println!("authorization). Both run the same command per session; the same tokio-tungstenite");
    println!("clients run in this process, over 127.0.0.1. Results are medians over repetitions,");
    println!("the servers interleaved. Loopback on a small machine: compare the rows, not the absolutes.");
    println!();
    println!(
        "params: throughput {} MiB, {} sequential sessions, {} x {} concurrent sessions, {} echo round trips, {} repetition(s)",
        p.throughput_bytes >> 20,
        p.sessions,
        CONCURRENT_CLIENTS,
        p.per_client(),
        p.round_trips,
        p.repetitions
    );
    println!();
    println!("{:<24} {:<14} {:>10} {:<11} detail", "scenario", "server", "result", "unit");
    println!("{}", "-".repeat(90));
}

fn print_footer(bench: &Bench) {
    println!();
    println!("how sessions ended (as the client saw them):");
    for ((scenario, kind, end), count) in bench.endings.0.lock().unwrap().iter() {
        println!("  {scenario:<22} {kind:<14} {count:>6} x {end}");
    }
    for (kind, lines) in &bench.complaints {
        if !lines.is_empty() {
            println!("{kind} logged warnings or errors (first of {}):", lines.len());
            for line in lines.iter().take(Complaints::KEEP) {
                println!("  {line}");
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let params = Params::from_args();
    let websocketd = find_in_path("websocketd");
    let mut bench =
        Bench { params, websocketd, endings: Endings::default(), complaints: BTreeMap::new(), failed: false };
    print_header(&bench);
    let started = Instant::now();

    let size = bench.params.throughput_bytes.to_string();
    bench
        .scenario(
            &[("output throughput", "MiB/s")],
            "/usr/bin/head",
            &["-c", &size, "/dev/zero"],
            async |server: &Server, p: &Params, endings: &Endings| {
                Ok(vec![throughput_once(server, p.throughput_bytes, endings).await?])
            },
        )
        .await;

    bench
        .scenario(
            &[("session rate", "sessions/s")],
            "/bin/true",
            &[],
            async |server: &Server, p: &Params, e: &Endings| {
                Ok(vec![sessions_sequential(server, p.sessions, e).await?])
            },
        )
        .await;

    bench
        .scenario(
            &[("session rate x16", "sessions/s")],
            "/bin/true",
            &[],
            async |server: &Server, p: &Params, e: &Endings| {
                Ok(vec![sessions_concurrent(server, p.per_client(), e).await?])
            },
        )
        .await;

    bench
        .scenario(
            &[("echo round trip p50", "µs"), ("echo round trip p99", "µs")],
            "/bin/cat",
            &[],
            async |server: &Server, p: &Params, e: &Endings| {
                let (p50, p99) = echo_once(server, p.round_trips, e).await?;
                Ok(vec![p50, p99])
            },
        )
        .await;

    print_footer(&bench);
    println!();
    println!("total time: {:.1}s", started.elapsed().as_secs_f64());
    if bench.failed {
        eprintln!("a ws-subprocess scenario failed");
        std::process::exit(1);
    }
}
