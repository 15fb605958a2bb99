//! Terminal clients (issue 17), side by side against one server in one run:
//! the echo round trip of `ws-subprocess connect` on pipes beside a direct
//! WebSocket client speaking the same channel protocol (in the bench's
//! process, and in a process of its own on pipes as `connect` is), and the
//! time from
//! starting `kubectl exec` to its first output byte beside a `connect` of
//! the same command (both over TLS, as kubectl needs for a bearer token).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::servers::{Kind, Server, Target, Workload};
use crate::{Bench, Metric, Res, report};

const RTT_DIRECT: Metric = ("client_rtt_direct", "echo round trip p50, a WebSocket client (µs)", "µs");
const RTT_PIPED: Metric = ("client_rtt_piped", "echo round trip p50, a WebSocket client on pipes (µs)", "µs");
const RTT_CONNECT: Metric = ("client_rtt_connect", "echo round trip p50, `connect` on pipes (µs)", "µs");
const RTT_HOP: Metric = ("client_rtt_hop", "the same through `cat` alone, no server (µs)", "µs");
const FIRST_CONNECT: Metric = ("first_connect", "start → first byte, `connect` over TLS (ms)", "ms");
const FIRST_KUBECTL: Metric = ("first_kubectl", "start → first byte, `kubectl exec` (ms)", "ms");
const KUBECTL: &str = "/usr/bin/kubectl";
const LIMIT: Duration = Duration::from_secs(20);

fn bin() -> std::path::PathBuf {
    std::env::var_os("WS_SUBPROCESS_BIN").map_or_else(|| env!("CARGO_BIN_EXE_ws-subprocess").into(), Into::into)
}

pub async fn run(bench: &mut Bench) {
    if !bench.params.runs("clients") {
        return;
    }
    let trips = bench.params.round_trips.min(2000);
    match echo_rows(trips).await {
        Ok([direct, piped, connect, hop]) => {
            bench.results.add(RTT_DIRECT, Kind::WsSubprocess, Ok(direct));
            bench.results.add(RTT_PIPED, Kind::WsSubprocess, Ok(piped));
            bench.results.add(RTT_CONNECT, Kind::WsSubprocess, Ok(connect));
            bench.results.add(RTT_HOP, Kind::WsSubprocess, Ok(hop));
            bench.notes.push(format!(
                "clients: {trips} round trips of a 64-byte line through `cat`, one session each; \
                 connect adds {:+.1}% to a direct client on pipes ({:+.1}% to one in the bench's process, \
                 where a local `cat` between pipes alone costs {:.0} µs)",
                (connect / piped - 1.0) * 100.0,
                (connect / direct - 1.0) * 100.0,
                hop
            ));
        }
        Err(error) => bench.results.add(RTT_DIRECT, Kind::WsSubprocess, Err(error)),
    }
    let starts = if bench.params.smoke { 2 } else { 15 };
    match first_bytes(starts).await {
        Ok((connect, kubectl)) => {
            for value in connect {
                bench.results.add(FIRST_CONNECT, Kind::WsSubprocess, Ok(value));
            }
            match kubectl {
                Ok(values) => {
                    for value in values {
                        bench.results.add(FIRST_KUBECTL, Kind::WsSubprocess, Ok(value));
                    }
                }
                Err(error) => bench.results.add(FIRST_KUBECTL, Kind::WsSubprocess, Err(error)),
            }
        }
        Err(error) => bench.results.add(FIRST_CONNECT, Kind::WsSubprocess, Err(error)),
    }
    for metric in [RTT_DIRECT, RTT_PIPED, RTT_CONNECT, RTT_HOP, FIRST_CONNECT, FIRST_KUBECTL] {
        if let Some(row) = bench.results.rows.iter().find(|r| r.id == metric.0) {
            report::print_row(row);
        }
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The p50 echo round trip (µs) of a direct client and of `connect`,
/// alternating runs on the same server, and of a local `cat` between the
/// bench and itself: the floor of any client on pipes.
async fn echo_rows(trips: usize) -> Res<[f64; 4]> {
    let server = Server::start_ws_subprocess_with(&Workload::new("/bin/cat", &[]), &[]).await?;
    let Target::Ws { url, .. } = &server.target else { return Err("no URL".into()) };
    let url = format!("{url}?token=bench");
    let line = format!("{}\n", "x".repeat(63));
    let this = std::env::current_exe().map_err(|e| e.to_string())?;
    let [mut direct, mut piped, mut connect, mut hop] = [(); 4].map(|()| Vec::new());
    for _ in 0..2 {
        direct.extend(direct_trips(&url, &line, trips / 2).await?);
        piped.extend(pipe_trips(Command::new(&this).args([PIPE_CLIENT, &url]), &line, trips / 2).await?);
        connect.extend(pipe_trips(Command::new(bin()).args(["connect", &url]), &line, trips / 2).await?);
        hop.extend(pipe_trips(&mut Command::new("cat"), &line, trips / 2).await?);
    }
    let _ = server.stop().await;
    Ok([direct, piped, connect, hop].map(median))
}

async fn direct_trips(url: &str, line: &str, trips: usize) -> Res<Vec<f64>> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
    let mut message = vec![0u8];
    message.extend_from_slice(line.as_bytes());
    let message = Bytes::from(message);
    let mut samples = Vec::with_capacity(trips);
    // One untimed round trip first, as for `connect`.
    for trip in 0..=trips {
        let started = Instant::now();
        ws.send(Message::Binary(message.clone())).await.map_err(|e| e.to_string())?;
        let mut got = 0;
        while got < line.len() {
            match tokio::time::timeout(LIMIT, ws.next()).await {
                Ok(Some(Ok(Message::Binary(data)))) if data.first() == Some(&1) => got += data.len() - 1,
                Ok(Some(Ok(_))) => {}
                other => return Err(format!("direct client: {other:?}")),
            }
        }
        if trip > 0 {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = ws.close(None).await;
    Ok(samples)
}

/// Round trips of `line` written to `command`'s stdin and read back from
/// its stdout.
async fn pipe_trips(command: &mut Command, line: &str, trips: usize) -> Res<Vec<f64>> {
    let mut child = command
        .env_remove("WS_SUBPROCESS_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut samples = Vec::with_capacity(trips);
    let mut echoed = String::new();
    // The first round trip, untimed, waits for the connection and session.
    for trip in 0..=trips {
        let started = Instant::now();
        stdin.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
        echoed.clear();
        match tokio::time::timeout(LIMIT, stdout.read_line(&mut echoed)).await {
            Ok(Ok(n)) if n == line.len() => {}
            other => return Err(format!("{command:?}: {other:?}")),
        }
        if trip > 0 {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(stdin);
    let _ = tokio::time::timeout(LIMIT, child.wait()).await;
    Ok(samples)
}

type FirstBytes = (Vec<f64>, Res<Vec<f64>>);

/// Milliseconds from starting each client to its first output byte, for
/// `connect` and `kubectl exec` alternately, against a TLS server whose
/// sessions print a line.
async fn first_bytes(starts: usize) -> Res<FirstBytes> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("openssl: {e}"))?;
    if !made.success() {
        return Err("openssl could not make a certificate".into());
    }
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let flags = ["--tls-cert-file", &cert_s, "--tls-key-file", &key_s, "--kubernetes-api", "true"];
    let server = Server::start_ws_subprocess_with(&Workload::new("/bin/echo", &["ready"]), &flags).await?;
    let Target::Ws { url, .. } = &server.target else { return Err("no URL".into()) };
    let https = url.replace("ws://", "wss://");
    let port = https.rsplit(':').next().and_then(|p| p.split('/').next()).unwrap_or("").to_string();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: ws\n  cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: \"{cert_s}\"}}\n\
             users:\n- name: u\n  user: {{token: bench}}\ncontexts:\n- name: ws\n  context: {{cluster: ws, user: u}}\ncurrent-context: ws\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let kubectl_there = Path::new(KUBECTL).exists();
    let (mut connect, mut kubectl) = (Vec::new(), Vec::new());
    let mut kubectl_error = (!kubectl_there).then(|| format!("{KUBECTL} is missing"));
    // One untimed start each (kubectl fills its discovery cache).
    for timed in std::iter::once(false).chain(std::iter::repeat_n(true, starts)) {
        let mut command = Command::new(bin());
        command.args(["connect", &https, "--ca-file", &cert_s]).env("WS_SUBPROCESS_TOKEN", "bench");
        let ms = first_byte(command).await?;
        if timed {
            connect.push(ms);
        }
        if kubectl_error.is_none() {
            let mut command = Command::new(KUBECTL);
            command
                .args(["exec", "box", "--", "echo", "ready"])
                .env("HOME", dir.path())
                .env("KUBECONFIG", &kubeconfig)
                .env("KUBECACHEDIR", dir.path().join("cache"));
            match first_byte(command).await {
                Ok(ms) if timed => kubectl.push(ms),
                Ok(_) => {}
                Err(error) => kubectl_error = Some(error),
            }
        }
    }
    let _ = server.stop().await;
    Ok((connect, kubectl_error.map_or(Ok(kubectl), Err)))
}

async fn first_byte(mut command: Command) -> Res<f64> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(LIMIT, stdout.read(&mut byte)).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let status = tokio::time::timeout(LIMIT, child.wait()).await;
    match (read, status) {
        (Ok(Ok(1)), Ok(Ok(status))) if status.success() => Ok(ms),
        (read, status) => {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr).await;
            }
            Err(format!("{read:?} {status:?}: {}", stderr.trim()))
        }
    }
}

/// The argument that makes the bench binary [`pipe_client`].
pub const PIPE_CLIENT: &str = "--pipe-client";

/// The least a WebSocket client on pipes does, in a process of its own as
/// `connect` is (one thread, as `connect`): stdin to channel 0, channel 1
/// to stdout, until either ends; no terminal, no reconnection, no pings.
pub async fn pipe_client(url: &str) -> Res<()> {
    use std::os::fd::AsFd;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = ws.split();
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|e| e.to_string());
    let mut stdin =
        tokio::net::unix::pipe::Receiver::from_owned_fd(dup(std::io::stdin().as_fd())?).map_err(|e| e.to_string())?;
    let mut stdout = std::fs::File::from(dup(std::io::stdout().as_fd())?);
    let reading = async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Binary(data) = message
                && data.first() == Some(&1)
            {
                use std::io::Write;
                if stdout.write_all(&data[1..]).is_err() {
                    return;
                }
            }
        }
    };
    let writing = async {
        let mut buffer = bytes::BytesMut::new();
        loop {
            buffer.put_u8(0);
            buffer.reserve(16 << 10);
            match stdin.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if sink.send(Message::Binary(buffer.split().freeze())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Binary(Bytes::from_static(&[255, 0]))).await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = reading => {}
        () = writing => {}
    }
    Ok(())
}
