//! The servers under comparison: ws-subprocess (the release binary in front
//! of a controller run in this process), Debian's websocketd, and a raw
//! relay of our own (the same command's output copied to plain TCP with a
//! 64 KiB buffer: the ceiling for any bridge).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::Res;

/// The server under test: this build's, or `WS_SUBPROCESS_BIN` (another
/// build, for before/after comparisons of one change).
fn bin() -> std::path::PathBuf {
    std::env::var_os("WS_SUBPROCESS_BIN").map_or_else(|| env!("CARGO_BIN_EXE_ws-subprocess").into(), Into::into)
}
const START_LIMIT: Duration = Duration::from_secs(10);

/// Flags every ws-subprocess in the bench gets on top of its defaults: the
/// scale scenario opens thousands of sessions from one address, which the
/// defaults (1,024 sessions, 256 connections and 32 waiting requests per
/// address) are there to refuse.
pub const WS_SUBPROCESS_FLAGS: &[&str] = &[
    "--max-sessions",
    "5000",
    "--max-connections-per-ip",
    "10000",
    "--max-pending-auth",
    "4096",
    "--max-pending-auth-per-ip",
    "4096",
];

/// The three servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    WsSubprocess,
    Websocketd,
    Relay,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::WsSubprocess, Kind::Websocketd, Kind::Relay];

    pub fn name(self) -> &'static str {
        match self {
            Kind::WsSubprocess => "ws-subprocess",
            Kind::Websocketd => "websocketd",
            Kind::Relay => "raw relay",
        }
    }
}

/// What each session of a scenario runs.
#[derive(Clone, Debug)]
pub struct Workload {
    pub program: &'static str,
    pub args: Vec<String>,
    /// On a terminal (ws-subprocess only).
    pub tty: bool,
    /// A detachable session with this history (ws-subprocess only).
    pub history: Option<&'static str>,
}

impl Workload {
    pub fn new(program: &'static str, args: &[&str]) -> Self {
        Self { program, args: args.iter().map(|a| a.to_string()).collect(), tty: false, history: None }
    }

    pub fn shell(script: &str) -> Self {
        Self::new("/bin/sh", &["-c", script])
    }
}

/// Where clients reach a server.
#[derive(Clone, Debug)]
pub enum Target {
    /// A WebSocket URL; ws-subprocess gets `token=` appended.
    Ws { url: String, token: bool },
    /// Plain TCP (the relay).
    Tcp(SocketAddr),
}

/// One running server.
pub struct Server {
    pub kind: Kind,
    pub target: Target,
    /// Where ws-subprocess serves its metrics.
    pub metrics: Option<SocketAddr>,
    child: Option<Child>,
    /// websocketd's port and workload, to start it again on the same port.
    restart: Option<(u16, Workload)>,
    pub complaints: Complaints,
    _controller: Option<Controller>,
    relay: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub async fn start(kind: Kind, websocketd: Option<&Path>, workload: &Workload) -> Res<Self> {
        match kind {
            Kind::WsSubprocess => Self::start_ws_subprocess(workload).await,
            Kind::Websocketd => Self::start_websocketd(websocketd.ok_or("websocketd not found")?, workload).await,
            Kind::Relay => Self::start_relay(workload).await,
        }
    }

    /// The server process, for its memory and descriptors (none for the
    /// relay, which runs in this process).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(Child::id).map(|id| id as i32)
    }

    /// The release binary on port 0, in an empty directory (no stray
    /// `ws-subprocess.toml`), with no `WS_SUBPROCESS_*` variables, the
    /// default log level and [`WS_SUBPROCESS_FLAGS`]; its address comes from
    /// the "listening" line.
    async fn start_ws_subprocess(workload: &Workload) -> Res<Self> {
        Self::start_ws_subprocess_with(workload, &[]).await
    }

    /// ws-subprocess as [`Server::start`] starts it, with `extra` flags
    /// (TLS, the Kubernetes API).
    pub async fn start_ws_subprocess_with(workload: &Workload, extra: &[&str]) -> Res<Self> {
        let controller = Controller::start(workload).await?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let url = format!("http://{}/ws-controller", controller.addr);
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut cmd = Command::new(bin());
        cmd.args(["--listen", "127.0.0.1:0", "--controller-url", &url])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(WS_SUBPROCESS_FLAGS)
            .args(extra)
            .current_dir(dir.path())
            .env_remove("RUST_LOG");
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
        Ok(Self {
            kind: Kind::WsSubprocess,
            target: Target::Ws { url: format!("ws://{addr}/ws"), token: true },
            metrics: Some(metrics),
            restart: None,
            child: Some(child),
            complaints,
            _controller: Some(controller),
            relay: None,
            _dir: Some(dir),
        })
    }

    /// websocketd on a free port, once that port accepts connections.
    async fn start_websocketd(program: &Path, workload: &Workload) -> Res<Self> {
        Self::start_websocketd_on(program, workload, free_port()?).await
    }

    async fn start_websocketd_on(program: &Path, workload: &Workload, port: u16) -> Res<Self> {
        if workload.tty || workload.history.is_some() {
            return Err("not supported".into());
        }
        let mut cmd = Command::new(program);
        cmd.arg(format!("--port={port}"))
            .args(["--address=127.0.0.1", "--binary=true", "--loglevel=error", workload.program])
            .args(&workload.args);
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
        Ok(Self {
            kind: Kind::Websocketd,
            target: Target::Ws { url: format!("ws://127.0.0.1:{port}/"), token: false },
            metrics: None,
            restart: Some((port, workload.clone())),
            child: Some(child),
            complaints,
            _controller: None,
            relay: None,
            _dir: None,
        })
    }

    /// The relay: each TCP connection runs the command on pipes; its stdout
    /// is copied to the socket with a 64 KiB buffer, the socket to its
    /// stdin, and the connection ends when the output does.
    async fn start_relay(workload: &Workload) -> Res<Self> {
        if workload.tty || workload.history.is_some() {
            return Err("not supported".into());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("relay bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let workload = workload.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let workload = workload.clone();
                tokio::spawn(async move {
                    let _ = relay(stream, &workload).await;
                });
            }
        });
        Ok(Self {
            kind: Kind::Relay,
            target: Target::Tcp(addr),
            metrics: None,
            restart: None,
            child: None,
            complaints: Complaints::default(),
            _controller: None,
            relay: Some(task),
            _dir: None,
        })
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: rustix::process::Signal) -> Res<()> {
        let pid = self.pid().and_then(rustix::process::Pid::from_raw).ok_or("no server process")?;
        rustix::process::kill_process(pid, signal).map_err(|e| e.to_string())
    }

    /// What the peer does instead of an upgrade: SIGTERM, and a new
    /// websocketd on the same port once the old one is gone. Returns the
    /// time from the signal to the new one accepting connections.
    pub async fn restart(&mut self, websocketd: Option<&Path>) -> Res<Duration> {
        let (port, workload) = self.restart.clone().ok_or("this server does not restart")?;
        let program = websocketd.ok_or("websocketd not found")?;
        let started = Instant::now();
        self.signal(rustix::process::Signal::TERM)?;
        if let Some(mut child) = self.child.take() {
            let _ = timeout(Duration::from_secs(10), child.wait()).await;
        }
        let next = Self::start_websocketd_on(program, &workload, port).await?;
        let took = started.elapsed();
        self.child = next.child;
        self.complaints = next.complaints;
        Ok(took)
    }

    pub async fn stop(mut self) -> Vec<String> {
        if let Some(task) = self.relay.take() {
            task.abort();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = timeout(Duration::from_secs(5), child.wait()).await;
        }
        self.complaints.take()
    }
}

async fn relay(stream: TcpStream, workload: &Workload) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut child = Command::new(workload.program)
        .args(&workload.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let (mut stdin, mut stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let (mut from_client, mut to_client) = stream.into_split();
    let input = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stdin.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to_client.write_all(&buf[..n]).await?;
    }
    let _ = to_client.shutdown().await;
    input.abort();
    let _ = child.wait().await;
    Ok(())
}

fn free_port() -> Res<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A controller: answers every token with the workload's spec, a detachable
/// one with an id of its own per request.
struct Controller {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    async fn start(workload: &Workload) -> Res<Self> {
        let mut spec = serde_json::json!({ "command": workload.program, "args": workload.args });
        if workload.tty {
            spec["tty"] = true.into();
        }
        let history = workload.history;
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("controller bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let counter = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (spec, counter) = (spec.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_request: http::Request<Incoming>| {
                        let mut spec = spec.clone();
                        if let Some(history) = history {
                            let id = counter.fetch_add(1, Ordering::Relaxed);
                            spec["session"] = serde_json::json!({ "id": format!("bench-{id}"), "history": history });
                        }
                        let response = http::Response::builder()
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(spec.to_string())));
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
pub struct Complaints(Arc<Mutex<ServerLog>>);

#[derive(Default)]
pub struct ServerLog {
    warnings: Vec<String>,
    seen: usize,
    tail: std::collections::VecDeque<String>,
}

impl Complaints {
    pub const KEEP: usize = 10;

    fn note(&self, line: &str) {
        let mut log = self.0.lock().unwrap();
        let lowered = line.to_ascii_lowercase();
        if ["warn", "error", "panic"].iter().any(|word| lowered.contains(word)) {
            log.seen += 1;
            // Without its timestamp, to tell repeats.
            let message = line.split_once(' ').filter(|(first, _)| first.contains(':')).map_or(line, |(_, rest)| rest);
            if log.warnings.len() < Self::KEEP && !log.warnings.iter().any(|w| w == message) {
                log.warnings.push(message.to_string());
            }
        }
        if log.tail.len() == Self::KEEP {
            log.tail.pop_front();
        }
        log.tail.push_back(line.to_string());
    }

    /// The first warnings, and how many there were in all.
    pub fn take(&self) -> Vec<String> {
        let mut log = self.0.lock().unwrap();
        let mut lines = std::mem::take(&mut log.warnings);
        if log.seen > lines.len() {
            lines.push(format!("... {} warning or error lines in all", log.seen));
        }
        log.seen = 0;
        lines
    }

    fn tail(&self) -> String {
        let log = self.0.lock().unwrap();
        if log.tail.is_empty() { "no output".into() } else { log.tail.iter().cloned().collect::<Vec<_>>().join(" | ") }
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

/// `program` in `$PATH`, if it is there.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
