//! Test harness: a real controller over HTTP, the real server on port 0 (in
//! process or as the real binary), real WebSocket clients.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use ws_subprocess::config::Config;
use ws_subprocess::server::ListenAddr;
use ws_subprocess::{App, Metrics};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One request the controller received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl Seen {
    /// The decoded `token` query parameter.
    pub fn token(&self) -> Option<String> {
        let query = self.uri.query()?;
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
    }
}

type Handler = Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync>;

/// A controller: a small HTTP server whose answer the test chooses.
pub struct Controller {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl Controller {
    /// Starts a controller answering every request with `reply`.
    pub async fn start<F, Fut>(reply: F) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(reply(seen)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop2.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let (handler, seen) = (handler.clone(), seen2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let record = Seen { uri: req.uri().clone(), headers: req.headers().clone() };
                        seen.lock().unwrap().push(record.clone());
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(record).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, stop }
    }

    /// A controller that allows every token to run `command args…`.
    pub async fn allowing(command: &str, args: &[&str]) -> Self {
        let body = serde_json::json!({ "command": command, "args": args }).to_string();
        Self::start(move |_| {
            let body = body.clone();
            async move { json(StatusCode::OK, body) }
        })
        .await
    }

    /// A controller answering each token with its own spec, and any other
    /// with 403.
    pub async fn answering(specs: &[(&str, serde_json::Value)]) -> Self {
        let specs: std::collections::HashMap<String, String> =
            specs.iter().map(|(t, s)| (t.to_string(), s.to_string())).collect();
        Self::start(move |seen| {
            let answer = specs.get(&seen.token().unwrap_or_default()).cloned();
            async move {
                match answer {
                    Some(spec) => json(StatusCode::OK, spec),
                    None => json(StatusCode::FORBIDDEN, "{}"),
                }
            }
        })
        .await
    }

    /// A controller that runs `sh -c script` for every token.
    pub async fn shell(script: &str) -> Self {
        Self::allowing("/bin/sh", &["-c", script]).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/ws-controller", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", "application/json").body(Full::new(body.into())).unwrap()
}

/// The server, run in this process through [`App`], as the binary runs it,
/// on port 0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    /// This server's own metrics.
    pub metrics: Metrics,
    /// The controllers sessions' cgroups get, when they get cgroups.
    pub cgroups: Option<Vec<&'static str>>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// A config for tests: port 0, this controller, short timers.
pub fn config_for(controller: &Controller) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        controller_url: controller.url().parse().unwrap(),
        controller_timeout: Duration::from_secs(2),
        kill_grace: Duration::from_millis(300),
        shutdown_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        // TEST_LOG=debug shows the server's log in failing tests.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("TEST_LOG"))
            .with_test_writer()
            .try_init();
        let app = App::bind(config.clone()).await.unwrap();
        let addr = match app.local_addr() {
            ListenAddr::Tcp(addr) => addr.parse().unwrap(),
            other => panic!("not TCP: {other}"),
        };
        let metrics = app.metrics().clone();
        let cgroups = app.cgroups().map(|root| root.controllers().to_vec());
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let done = tokio::spawn(app.run(async move { shutdown.cancelled().await }));
        Self { addr, config, metrics, cgroups, stop, done }
    }

    /// Starts a server in front of `controller` with the test defaults.
    pub async fn for_controller(controller: &Controller) -> Self {
        Self::start(config_for(controller)).await
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}{}?token={}", self.addr, self.config.path, encode(token))
    }

    /// Opens a session with `token`; panics unless the answer is 101.
    pub async fn connect(&self, token: &str) -> Ws {
        tokio_tungstenite::connect_async(self.ws_url(token)).await.expect("upgrade").0
    }

    /// Tries to open a session and returns the HTTP status and body of a
    /// refusal.
    pub async fn refusal(&self, token: &str) -> (StatusCode, String) {
        refusal(self.ws_url(token)).await
    }

    /// Stops the server gracefully and waits for [`App::run`] to return.
    pub async fn stop(self) {
        self.stop.cancel();
        self.done.await.unwrap();
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The status and body of a refused upgrade.
pub async fn refusal(request: impl IntoClientRequest + Unpin) -> (StatusCode, String) {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(WsError::Http(response)) => {
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (response.status(), body)
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// A plain HTTP/1.1 request; returns status, headers and body.
pub async fn http_request(addr: SocketAddr, head: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Everything a session sends: output bytes, then the Close frame.
pub async fn collect<S>(ws: &mut WebSocketStream<S>) -> (Vec<u8>, Option<CloseFrame>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut output = Vec::new();
    while let Some(message) = ws.next().await {
        match message.expect("a clean session") {
            Message::Binary(data) => output.extend_from_slice(&data),
            Message::Text(text) => output.extend_from_slice(text.as_bytes()),
            Message::Close(frame) => return (output, frame),
            _ => {}
        }
    }
    panic!("connection ended without a Close frame");
}

/// Reads output until `needle` has appeared; returns all output so far.
pub async fn read_until(ws: &mut Ws, needle: &[u8]) -> Vec<u8> {
    let mut output = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Binary(data)) = message {
                output.extend_from_slice(&data);
                if output.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "never saw {:?}; got {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(&output)
    );
    output
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// Whether a process is gone (or a zombie no one should still own).
pub fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Waits up to `limit` for `check` to hold.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Reads a pid a test script wrote to `path`.
pub async fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            pid = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok());
            pid.is_some()
        })
        .await,
        "no pid in {}",
        path.display()
    );
    pid.unwrap()
}

/// The real binary, started with `args` and `env`, on port 0; its stderr
/// is kept to find the bound address and to search the logs.
pub struct Binary {
    pub child: tokio::process::Child,
    /// The address it reported: `ip:port` or `unix:/path`.
    pub addr: String,
    pub log: Arc<Mutex<String>>,
}

impl Binary {
    pub async fn start(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        Self::start_wrapped(&[], args, env, dir).await
    }

    /// Starts the binary through `wrapper` (a command that execs its
    /// arguments, such as `prlimit --nofile=64:64`).
    pub async fn start_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        Self::start_program(env!("CARGO_BIN_EXE_ws-subprocess"), wrapper, args, env, dir).await
    }

    /// Starts `bin` (a ws-subprocess binary installed elsewhere) as
    /// [`Binary::start_wrapped`] starts the one built here.
    pub async fn start_program(bin: &str, wrapper: &[&str], args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(wrapper_args).arg(bin);
                command
            }
            None => tokio::process::Command::new(bin),
        };
        command
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        collect_lines(child.stderr.take().unwrap(), log.clone(), Some(addr_tx), |line| {
            if line.contains("listening") { listening_addr(line) } else { None }
        });
        let addr = tokio::time::timeout(Duration::from_secs(10), addr_rx)
            .await
            .unwrap_or_else(|_| panic!("binary did not report its address: {}", log.lock().unwrap()))
            .unwrap_or_else(|_| panic!("binary exited: {}", log.lock().unwrap()));
        Self { child, addr, log }
    }

    /// The TCP address it listens on.
    pub fn tcp(&self) -> SocketAddr {
        self.addr.parse().unwrap()
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={}", self.addr, encode(token))
    }

    /// Waits for the binary to exit and returns its exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait()).await.expect("binary did not exit in time").unwrap().code()
    }

    pub fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.pid()).unwrap(), signal).unwrap();
    }

    /// The address of `metrics_listen`, from its "serving metrics" line.
    pub async fn metrics_addr(&self) -> SocketAddr {
        assert!(eventually(Duration::from_secs(5), || self.log().contains("serving metrics")).await);
        let log = self.log();
        let line = log.lines().find(|l| l.contains("serving metrics")).unwrap();
        line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    }

    /// What `/metrics` on `metrics_listen` says now.
    pub async fn metrics_text(&self) -> String {
        let (status, _, body) = http_request(self.metrics_addr().await, "GET /metrics HTTP/1.1").await;
        assert_eq!(status, 200);
        body
    }

    /// Waits until the log has `needle` `count` times; panics with the log
    /// if it does not within five seconds.
    pub async fn wait_for_log(&self, needle: &str, count: usize) {
        let seen = eventually(Duration::from_secs(5), || self.log().matches(needle).count() >= count).await;
        assert!(seen, "no {count} × {needle:?} in the log:\n{}", self.log());
    }
}

/// A test that fails shows the binary's log.
impl Drop for Binary {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the binary's log ---\n{}", self.log());
        }
    }
}

/// Sends `text` to a session of `/bin/cat` and waits (five seconds at most)
/// for its echo.
pub async fn echoes<S>(ws: &mut WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::Text(text.into())).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(text.as_bytes()) {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => seen.extend_from_slice(&data),
            Ok(Some(Ok(_))) => {}
            other => panic!("no echo of {text:?}: {other:?} after {seen:?}"),
        }
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, made by openssl
/// as `NAME.pem` and `NAME.key` in `dir`.
pub fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A leaf, not a CA: webpki refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (cert, key)
}

/// Runs openssl with `args`: its output; panics unless it succeeds.
fn openssl(args: &[&std::ffi::OsStr]) -> String {
    let output = std::process::Command::new("openssl").args(args).output().unwrap();
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// A certificate authority made by openssl: its certificate and key.
pub fn certificate_authority(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let extensions = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"];
    ec_certificate(dir, name, &format!("/CN={name}"), &extensions, None)
}

/// A client certificate for `subject` (openssl's `/O=…/CN=…` form) signed
/// by the authority `ca`: its certificate and key.
pub fn client_certificate(dir: &Path, name: &str, subject: &str, ca: &(PathBuf, PathBuf)) -> (PathBuf, PathBuf) {
    let extensions = ["basicConstraints=critical,CA:FALSE", "extendedKeyUsage=clientAuth"];
    ec_certificate(dir, name, subject, &extensions, Some(ca))
}

/// An EC P-256 certificate made by openssl as `NAME.pem` and `NAME.key` in
/// `dir`, for `subject` with the `extensions` (`-addext`), signed by `ca`
/// or by itself.
fn ec_certificate(
    dir: &Path,
    name: &str,
    subject: &str,
    extensions: &[&str],
    ca: Option<&(PathBuf, PathBuf)>,
) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let mut command = std::process::Command::new("openssl");
    command.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"]);
    command.args(["-subj", subject]);
    for extension in extensions {
        command.args(["-addext", extension]);
    }
    if let Some((ca_cert, ca_key)) = ca {
        command.arg("-CA").arg(ca_cert).arg("-CAkey").arg(ca_key);
    }
    let output = command.arg("-keyout").arg(&key).arg("-out").arg(&cert).output().unwrap();
    assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
    (cert, key)
}

/// The SHA-256 fingerprint of the certificate in `cert` as openssl prints
/// it, in lowercase hex without colons.
pub fn fingerprint(cert: &Path) -> String {
    let args = ["x509", "-noout", "-fingerprint", "-sha256", "-in"].map(std::ffi::OsStr::new);
    let text = openssl(&[&args[..], &[cert.as_os_str()]].concat());
    text.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase()
}

/// A TLS client that trusts only the certificate in `cert`.
pub fn tls_connector(cert: &Path) -> tokio_rustls::TlsConnector {
    tls_connector_as(cert, None)
}

/// A TLS client that trusts only the certificate in `cert` and presents
/// `client` (certificate and key files), if given.
pub fn tls_connector_as(cert: &Path, client: Option<&(PathBuf, PathBuf)>) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            use tokio_rustls::rustls::pki_types::PrivateKeyDer;
            let chain = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
            config.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap()).unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `localhost` at `addr`, trusting only `cert`.
pub async fn tls_connect(addr: SocketAddr, cert: &Path) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_as(addr, cert, None).await
}

/// [`tls_connect`] presenting the client certificate `client`, if given.
pub async fn tls_connect_as(
    addr: SocketAddr,
    cert: &Path,
    client: Option<&(PathBuf, PathBuf)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use tokio_rustls::rustls::pki_types::ServerName;
    let tcp = TcpStream::connect(addr).await?;
    tls_connector_as(cert, client).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// Appends every line of `stream` to `log`, and sends the first value
/// `pick` finds in a line to `found`.
fn collect_lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<String>>,
    mut found: Option<tokio::sync::oneshot::Sender<String>>,
    pick: impl Fn(&str) -> Option<String> + Send + 'static,
) {
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if found.is_some()
                && let Some(value) = pick(&line)
            {
                let _ = found.take().unwrap().send(value);
            }
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// The address in the "listening" line, text (`addr=A`) or JSON
/// (`"addr":"A"`).
fn listening_addr(line: &str) -> Option<String> {
    let rest = line.split("addr=").nth(1).or_else(|| line.split("\"addr\":").nth(1))?;
    let addr = rest.trim_start_matches('"').split(['"', ' ', ',']).next()?;
    Some(addr.to_string())
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Live (or zombie) children of process `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<i32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// A scratch directory that lives as long as the test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// A producer that writes 64 KiB blocks forever and counts them in a file:
/// it can only go as fast as the client reads. Returns the script and the
/// counting file.
pub fn counting_producer(dir: &tempfile::TempDir) -> (String, PathBuf) {
    let counter = path_in(dir, "count");
    let script =
        format!("i=0; while :; do head -c 65536 /dev/zero || exit; i=$((i+1)); echo $i > {}; done", counter.display());
    (script, counter)
}

/// With the client not reading, the producer of [`counting_producer`] must
/// stall: socket buffers on both sides hold a few MiB at most.
pub async fn assert_producer_stalls(counter: &Path) {
    let count = || std::fs::read_to_string(counter).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = count();
    assert!(later * 64 < 32 * 1024, "the process wrote {} KiB with no reader", later * 64);
    assert!(later <= stalled + 2, "the process kept writing: {stalled} then {later} blocks");
}

/// A TCP connection to `addr` from the loopback address `source` (such as
/// `127.0.0.2`), so a test can be two clients at once.
pub async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the server closes `stream` (end of file or reset) within
/// `limit`, reading and dropping whatever it sends first.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    closed.await.is_ok()
}

/// A field of `/proc/<pid>/status` in KiB, such as `VmRSS` or `VmHWM` (the
/// peak resident size).
pub fn memory_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A WebSocket session over `stream`, opened with `token`.
pub async fn ws_over(stream: TcpStream, addr: SocketAddr, token: &str) -> Result<Ws, WsError> {
    let url = format!("ws://{addr}/ws?token={}", encode(token));
    tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.map(|(ws, _)| ws)
}

/// `cargo run --example demo`, as a newcomer starts it: the example binary
/// cargo built beside the tests, with `args` (the page on a free port) and
/// `env`.
pub struct DemoProcess {
    pub child: tokio::process::Child,
    /// The page's address, from the URL it printed.
    pub page: SocketAddr,
    pub output: Arc<Mutex<String>>,
}

impl DemoProcess {
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        // target/debug/deps/<test> → target/debug/examples/demo
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("examples/demo");
        assert!(bin.is_file(), "{} is missing: `cargo test` builds the examples", bin.display());
        let mut child = tokio::process::Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the demo starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = tokio::sync::oneshot::channel();
        let url = |line: &str| Some(line.strip_prefix("open http://")?.split('/').next()?.to_string());
        collect_lines(child.stdout.take().unwrap(), output.clone(), Some(url_tx), url);
        collect_lines(child.stderr.take().unwrap(), output.clone(), None, url);
        let page = tokio::time::timeout(Duration::from_secs(60), url_rx)
            .await
            .unwrap_or_else(|_| panic!("the demo printed no URL: {}", output.lock().unwrap()))
            .unwrap_or_else(|_| panic!("the demo exited: {}", output.lock().unwrap()));
        Self { child, page: page.parse().unwrap(), output }
    }

    /// What it printed, stdout and stderr.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Ctrl-C: SIGINT, then its exit code (within `limit`).
    pub async fn interrupt(&mut self, limit: Duration) -> Option<i32> {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        tokio::time::timeout(limit, self.child.wait()).await.expect("the demo did not stop").unwrap().code()
    }
}

/// A script printing `line N` every 20 ms, and answering each input line
/// with `got <line>`.
pub const COUNTER: &str = "(i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.02; done) & \
                           while read l; do echo \"got $l\"; done";

/// The numbers of the `line N …` lines in `output`, in order.
pub fn line_numbers(output: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(output)
        .split(['\n', '\r'])
        .filter_map(|line| line.trim().strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect()
}

/// Asserts that `output` holds the lines `line 1` to `line N`, each once,
/// in order.
pub fn assert_gap_free(output: &[u8], what: &str) {
    let numbers = line_numbers(output);
    assert!(!numbers.is_empty(), "{what}: no lines");
    let expected: Vec<u64> = (1..=*numbers.last().unwrap()).collect();
    if numbers != expected {
        let missing: Vec<u64> = expected.iter().filter(|n| !numbers.contains(n)).copied().collect();
        let mut seen = std::collections::HashSet::new();
        let repeated: Vec<u64> = numbers.iter().filter(|n| !seen.insert(**n)).copied().collect();
        panic!("{what}: lines missing {missing:?}, repeated {repeated:?}");
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `text` as a client's input: a text message in the raw protocol, a
/// binary one on channel 0 in the channel protocol.
pub fn input_message(v5: bool, text: &str) -> Message {
    if v5 {
        let mut data = vec![0u8];
        data.extend_from_slice(text.as_bytes());
        Message::Binary(data.into())
    } else {
        Message::Text(text.into())
    }
}

/// A client that reads its session in the background: the output (the raw
/// protocol's binary messages, or channels 1 and 2), the session info and
/// status, and how the connection ended. Input goes through [`Watcher::type_in`].
pub struct Watcher<S> {
    sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    pub v5: bool,
    pub seen: Arc<Mutex<Watched>>,
}

/// What a [`Watcher`] saw.
#[derive(Debug, Default)]
pub struct Watched {
    pub output: Vec<u8>,
    pub info: Option<serde_json::Value>,
    pub status: Option<serde_json::Value>,
    /// How the connection ended: a Close frame (`Some(code, reason)`), or
    /// `None` when it broke without one.
    pub ended: Option<Option<(u16, String)>>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Watcher<S> {
    pub fn start(ws: WebSocketStream<S>, v5: bool) -> Self {
        let (sink, mut stream) = ws.split();
        let seen = Arc::new(Mutex::new(Watched::default()));
        let watched = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let mut seen = watched.lock().unwrap();
                match (v5, message) {
                    (false, Ok(Message::Binary(data))) => seen.output.extend_from_slice(&data),
                    (false, Ok(Message::Text(text))) => seen.info = serde_json::from_str(&text).ok(),
                    (true, Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                        1 | 2 => seen.output.extend_from_slice(&data[1..]),
                        3 => seen.status = serde_json::from_slice(&data[1..]).ok(),
                        5 => seen.info = serde_json::from_slice(&data[1..]).ok(),
                        _ => {}
                    },
                    (_, Ok(Message::Close(frame))) => {
                        seen.ended = Some(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                        return;
                    }
                    (_, Ok(_)) => {}
                    (_, Err(_)) => {
                        seen.ended = Some(None);
                        return;
                    }
                }
            }
            watched.lock().unwrap().ended.get_or_insert(None);
        });
        Self { sink, v5, seen }
    }

    /// Sends `text` as input.
    pub async fn type_in(&mut self, text: &str) {
        self.sink.send(input_message(self.v5, text)).await.unwrap();
    }

    /// Sends `message` as it is.
    pub async fn send(&mut self, message: Message) {
        self.sink.send(message).await.unwrap();
    }

    /// The output so far.
    pub fn output(&self) -> Vec<u8> {
        self.seen.lock().unwrap().output.clone()
    }

    /// How the connection ended, if it did.
    pub fn ended(&self) -> Option<Option<(u16, String)>> {
        self.seen.lock().unwrap().ended.clone()
    }

    /// Waits (ten seconds at most) until the output holds `needle`.
    pub async fn wait_for(&self, needle: &str) {
        let found = eventually(Duration::from_secs(10), || contains(&self.output(), needle.as_bytes())).await;
        assert!(
            found,
            "never saw {needle:?}; ended {:?}; output ends {:?}",
            self.ended(),
            String::from_utf8_lossy(&self.output())
                .chars()
                .rev()
                .take(300)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        );
    }

    /// Waits (twenty seconds at most) until the connection ends.
    pub async fn wait_for_end(&self) -> Option<(u16, String)> {
        assert!(eventually(Duration::from_secs(20), || self.ended().is_some()).await, "the connection did not end");
        self.ended().unwrap()
    }
}

/// Collects everything `stream` gives, in the background, until its end
/// (or an error, as a pseudo-terminal's once its last user left); the task
/// ends then.
pub fn collect_bytes(
    mut stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let collected = Arc::new(Mutex::new(Vec::new()));
    let into = collected.clone();
    let task = tokio::spawn(async move {
        let mut buffer = [0; 8192];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buffer[..n]);
        }
    });
    (collected, task)
}

/// A recording's output as asciinema's own reader gives it (what `asciinema
/// cat` and `play` use; `cat` itself insists on a terminal); panics if it
/// cannot read the file.
pub fn asciinema_output(cast: &Path) -> Vec<u8> {
    let reader = "import sys\nfrom asciinema import asciicast\n\
                  with asciicast.open_from_url(sys.argv[1]) as cast:\n    \
                  sys.stdout.write(''.join(text for _, _, text in cast.stdout_events()))\n";
    // The interpreter asciinema is installed for (its script's `#!`).
    let script =
        std::fs::read_to_string("/usr/bin/asciinema").expect("asciinema is installed (scripts/test installs it)");
    let python = script.lines().next().unwrap().trim_start_matches("#!").trim().to_string();
    let cat = std::process::Command::new(python).arg("-c").arg(reader).arg(cast).output().unwrap();
    assert!(cat.status.success(), "asciinema cannot read {}: {}", cast.display(), String::from_utf8_lossy(&cat.stderr));
    cat.stdout
}
