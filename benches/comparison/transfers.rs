//! File transfers through a session (issue 18): lrzsz's `sz` and `rz`, and
//! trzsz's `tsz` and `trz`, in the session with their other half on the
//! client's side of the connection (lrzsz; the npm package trzsz.js in
//! Node), each way, beside the ceiling of the same file written to
//! the terminal as base64 text (what a transfer protocol has to beat), on
//! every server in one run. A detachable session adds the server's
//! transfer detector (ws-subprocess only). Every transfer's file is
//! compared byte for byte; a difference fails the row.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::timeout;

use crate::clients::{Conn, Rx, Tx};
use crate::servers::{Kind, Server, Workload};
use crate::{Bench, MIB, Metric, Res};

const DOWNLOAD: Metric = ("zmodem_down", "ZMODEM download, `sz` → `rz` (MiB/s of file)", "MiB/s");
const UPLOAD: Metric = ("zmodem_up", "ZMODEM upload, `sz` → `rz` in the session (MiB/s of file)", "MiB/s");
const DOWNLOAD_NAMED: Metric =
    ("zmodem_down_named", "ZMODEM download, detachable session: detector on (MiB/s of file)", "MiB/s");
const TRZSZ_DOWNLOAD: Metric = ("trzsz_down", "trzsz download, `tsz` → trzsz.js in Node (MiB/s of file)", "MiB/s");
const TRZSZ_UPLOAD: Metric = ("trzsz_up", "trzsz upload, trzsz.js in Node → `trz` (MiB/s of file)", "MiB/s");
const BASE64: Metric = ("base64_ceiling", "the same file as base64 text, the ceiling (MiB/s of file)", "MiB/s");
const LIMIT: Duration = Duration::from_secs(120);

pub async fn run(bench: &mut Bench) {
    if !bench.params.runs("transfers") {
        return;
    }
    if !Path::new("/usr/bin/sz").exists() {
        bench.notes.push("transfers: lrzsz (sz, rz) is not installed; rows skipped".into());
        return;
    }
    let size = if bench.params.smoke { 2 << 20 } else { 32 << 20 };
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => return bench.notes.push(format!("transfers: no temporary directory: {error}")),
    };
    let (remote, local) = (dir.path().join("remote"), dir.path().join("local"));
    let file = random_file(size);
    for d in [&remote, &local] {
        if let Err(error) = std::fs::create_dir(d).and_then(|()| std::fs::write(d.join("f.bin"), &file)) {
            return bench.notes.push(format!("transfers: {error}"));
        }
    }
    let remote_file = remote.join("f.bin").display().to_string();
    let repetitions = bench.params.repetitions;
    let all = Kind::ALL;

    // Where each row's file lands (made empty before each transfer).
    let (got, got_named, got_trzsz) = (local.join("got"), local.join("got-named"), local.join("got-trzsz"));
    let (up, up_trzsz) = (remote.join("up"), remote.join("up-trzsz"));
    let lrzsz_receive = ["rz", "-q", "-y"];

    let download = Workload::new("/usr/bin/sz", &["-q", &remote_file]);
    bench
        .compare(&[DOWNLOAD], &all, download.clone(), repetitions, async |server, _| {
            moved(server, &lrzsz_receive, &got, &got, &file).await
        })
        .await;
    let named = Workload { history: Some("1MiB"), ..download };
    bench
        .compare(&[DOWNLOAD_NAMED], &[Kind::WsSubprocess], named, repetitions, async |server, _| {
            moved(server, &lrzsz_receive, &got_named, &got_named, &file).await
        })
        .await;
    let upload = Workload::shell(&format!("cd {} && rz -q -y", up.display()));
    bench
        .compare(&[UPLOAD], &all, upload, repetitions, async |server, _| {
            moved(server, &["sz", "-q", "f.bin"], &local, &up, &file).await
        })
        .await;
    match trzsz() {
        Some((python, client)) => {
            let program = |module: &str, arg: &str| {
                format!("{python} -c 'import sys; from trzsz.svr.{module} import main; sys.exit(main())' {arg}")
            };
            let download = Workload::shell(&format!("cd {} && {}", remote.display(), program("send", "f.bin")));
            let got_dir = got_trzsz.display().to_string();
            bench
                .compare(&[TRZSZ_DOWNLOAD], &all, download, repetitions, async |server, _| {
                    moved(server, &["node", &client, "download", &got_dir], &got_trzsz, &got_trzsz, &file).await
                })
                .await;
            let upload = Workload::shell(&format!("cd {} && {}", up_trzsz.display(), program("recv", ".")));
            let local_file = local.join("f.bin").display().to_string();
            bench
                .compare(&[TRZSZ_UPLOAD], &all, upload, repetitions, async |server, _| {
                    moved(server, &["node", &client, "upload", &local_file], &local, &up_trzsz, &file).await
                })
                .await;
        }
        None => bench.notes.push(
            "transfers: PyPI's trzsz or example/web's npm packages are missing; trzsz rows skipped \
             (scripts/test installs both)"
                .into(),
        ),
    }
    let base64 = Workload::new("/usr/bin/base64", &[&remote_file]);
    let encoded = (size as u64).div_ceil(3) * 4;
    bench
        .compare(&[BASE64], &all, base64, repetitions, async |server, _| {
            let start = Instant::now();
            let mut conn = Conn::open(server).await?;
            let (got, _) = timeout(LIMIT, conn.drain()).await.map_err(|_| "timed out")??;
            let seconds = start.elapsed().as_secs_f64();
            // base64 breaks lines at 76 characters (a terminal adds a CR).
            if got < encoded {
                return Err(format!("received {got} of at least {encoded} bytes"));
            }
            Ok(vec![size as f64 / MIB / seconds])
        })
        .await;
    bench.notes.push(format!(
        "transfers: a {} MiB file of random bytes, the session's `sz`/`rz` (lrzsz) or `tsz`/`trz` (PyPI's \
         trzsz) on pipes, their other half here (lrzsz; trzsz.js in Node), from connecting to both halves \
         done; the base64 row writes the same file as text. The browser's own rates (zmodem.js, trzsz.js \
         in Chromium) are in tests/browser_files.rs's summary",
        size >> 20
    ));
}

/// The Python that has PyPI's trzsz, and the npm package's client on pipes.
fn trzsz() -> Option<(String, String)> {
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys, trzsz.svr.send; print(sys.executable)"])
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("example/web");
    if !web.join("node_modules/trzsz").is_dir() {
        return None;
    }
    let python = String::from_utf8(python.stdout).ok()?.trim().to_string();
    Some((python, web.join("trzsz-pipe.mjs").display().to_string()))
}

/// Bytes that look random (a fixed xorshift; no file compresses).
fn random_file(size: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Runs `program` in `cwd` against a session of `server` (see
/// [`transfer`]) with `into` made empty, and checks that `into/f.bin` is
/// `file` byte for byte: MiB/s of file.
async fn moved(server: &Server, program: &[&str], cwd: &Path, into: &Path, file: &[u8]) -> Res<Vec<f64>> {
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir(into).map_err(|e| e.to_string())?;
    let seconds = transfer(server, program, cwd).await?;
    same(&into.join("f.bin"), file)?;
    Ok(vec![file.len() as f64 / MIB / seconds])
}

fn same(path: &Path, expected: &[u8]) -> Res<()> {
    let got = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if got != expected {
        return Err(format!("{} differs ({} of {} bytes)", path.display(), got.len(), expected.len()));
    }
    Ok(())
}

/// Opens a session with `server` and runs `program` here in `dir`, its
/// input the session's output and its output the session's input; seconds
/// from connecting to the program's exit (both ends have the whole file
/// then: it exits once the other end confirmed), after which the session
/// must end (trzsz's server half waits for 0.5 s of quiet input first).
async fn transfer(server: &Server, program: &[&str], dir: &Path) -> Res<f64> {
    let start = Instant::now();
    let (tx, rx) = Conn::open(server).await?.split();
    let mut child = Command::new(program[0])
        .args(&program[1..])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", program[0]))?;
    let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let sending = tokio::spawn(upstream(stdout, tx));
    let mut receiving = tokio::spawn(downstream(rx, stdin));
    let finished = timeout(LIMIT, async {
        tokio::select! {
            status = child.wait() => Ok::<_, String>(status),
            // The session ended first: the program gets what it has.
            received = &mut receiving => {
                received.map_err(|e| e.to_string())??;
                Ok(child.wait().await)
            }
        }
    });
    let status: std::io::Result<_> = finished.await.map_err(|_| format!("{} did not finish", program[0]))??;
    let seconds = start.elapsed().as_secs_f64();
    match status {
        Ok(status) if status.success() => {}
        other => return Err(format!("{} failed: {other:?}", program[0])),
    }
    let _ = sending.await;
    if !receiving.is_finished() {
        timeout(Duration::from_secs(10), receiving)
            .await
            .map_err(|_| "the session did not end after the transfer")?
            .map_err(|e| e.to_string())??;
    }
    Ok(seconds)
}

/// The local program's output into the session.
async fn upstream(mut stdout: tokio::process::ChildStdout, mut tx: Tx) -> Res<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stdout.read(&mut buffer).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                // A session that ended takes no more; the program is done.
                if tx.send(Bytes::copy_from_slice(&buffer[..n])).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The session's output into the local program, until the session ends.
async fn downstream(mut rx: Rx, mut stdin: tokio::process::ChildStdin) -> Res<()> {
    loop {
        match rx.recv().await? {
            Ok(data) => {
                // A program that exited reads no more; the rest is the
                // session's goodbye.
                let _ = stdin.write_all(&data).await;
            }
            Err(_) => return Ok(()),
        }
    }
}
