//! Stock `kubectl` against `kubernetes_api = true` (SPEC §11): the real
//! binary at /usr/bin/kubectl with a temporary kubeconfig, against the real
//! server over TLS (kubectl sends no bearer token over plain HTTP) with a
//! real controller: `exec` on pipes and on a pseudo-terminal, exit codes,
//! `attach` to a named session, `cp` both ways, refusals as kubectl shows
//! an API server's, a JWT pinned to a pod, client certificates from the
//! kubeconfig, and an old SPDY-only kubectl told what it needs.
//!
//! kubectl is on the developers' and CI's machines; where it is missing
//! every test fails saying so, unless `WS_SUBPROCESS_NO_KUBECTL=1` asks to
//! skip them, which each then says on stderr.

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use std::time::Duration;

use base64::Engine;
use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use ws_subprocess::config::Config;

const KUBECTL: &str = "/usr/bin/kubectl";
/// The last kubectl that spoke only SPDY for exec, beside the dispatcher.
const OLD_KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.29";

/// The kubectl to run, or `None` (with a line on stderr) when the tests are
/// asked to skip without one.
fn kubectl() -> Option<&'static str> {
    if Path::new(KUBECTL).exists() {
        return Some(KUBECTL);
    }
    if std::env::var_os("WS_SUBPROCESS_NO_KUBECTL").is_some() {
        say(&format!("SKIPPED: {KUBECTL} is missing (WS_SUBPROCESS_NO_KUBECTL is set)"));
        return None;
    }
    panic!("{KUBECTL} is missing: install kubectl 1.30 or later, or set WS_SUBPROCESS_NO_KUBECTL=1 to skip");
}

/// A line on the test's stderr that the test harness does not capture, so
/// a skip shows even when the test passes.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What most tests use: kubectl, the controller for it, a server, and a
/// kubeconfig with the token the controller allows; `None` when kubectl
/// is missing and the tests are asked to skip.
async fn everyday() -> Option<(&'static str, Controller, Cluster, PathBuf)> {
    let kubectl = kubectl()?;
    let controller = kube_controller().await;
    let cluster = Cluster::start(&controller, |_, _| {}).await;
    let config = cluster.kubeconfig("config", "token: good");
    Some((kubectl, controller, cluster, config))
}

/// A TLS server with the Kubernetes API, a kubeconfig for it, and a home
/// for kubectl's cache.
struct Cluster {
    server: TestServer,
    dir: tempfile::TempDir,
    cert: PathBuf,
}

/// A controller for kubectl: token `good` runs kubectl's argv (as a
/// backend that trusts its users would; `tar` for `kubectl cp`) in a
/// terminal when kubectl asks for one, attaches `kubectl attach` to the
/// session its pod names, and refuses every other token.
async fn kube_controller() -> Controller {
    Controller::start(|seen| async move {
        let query: Vec<(String, String)> = url::form_urlencoded::parse(seen.uri.query().unwrap_or("").as_bytes())
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        let get = |name: &str| query.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        if get("token").as_deref() != Some("good") && seen.headers.get("x-client-cert-subject").is_none() {
            return json(StatusCode::FORBIDDEN, "{}");
        }
        let spec = if get("subresource").as_deref() == Some("attach") {
            serde_json::json!({"attach": get("pod").unwrap()})
        } else {
            let argv: Vec<String> = query.iter().filter(|(n, _)| n == "command").map(|(_, v)| v.clone()).collect();
            let mut args = vec!["-c".to_string(), "exec \"$@\"".to_string(), "sh".to_string()];
            args.extend(argv);
            serde_json::json!({"command": "/bin/sh", "args": args, "tty": get("tty").as_deref() == Some("true")})
        };
        json(StatusCode::OK, spec.to_string())
    })
    .await
}

impl Cluster {
    async fn start(controller: &Controller, tweak: impl FnOnce(&mut Config, &Path)) -> Self {
        let dir = scratch();
        let (cert, key) = certificate(dir.path(), "server");
        let mut config = config_for(controller);
        config.tls_cert_file = Some(cert.clone());
        config.tls_key_file = Some(key);
        config.kubernetes_api = true;
        tweak(&mut config, dir.path());
        let server = TestServer::start(config).await;
        Self { server, dir, cert }
    }

    /// A kubeconfig whose user has `user` (YAML flow-mapping fields).
    fn kubeconfig(&self, name: &str, user: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: ws\n  cluster: {{server: \"https://127.0.0.1:{}\", certificate-authority: \"{}\"}}\n\
             users:\n- name: u\n  user: {{{user}}}\ncontexts:\n- name: ws\n  context: {{cluster: ws, user: u, namespace: default}}\ncurrent-context: ws\n",
            self.server.addr.port(),
            self.cert.display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, kubectl: &str, kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(kubectl);
        command
            .args(args)
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .current_dir(self.dir.path())
            .kill_on_drop(true);
        command
    }

    /// Runs kubectl to its end with `stdin`: status, stdout, stderr.
    async fn run(&self, kubectl: &str, kubeconfig: &Path, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
        let mut child = self
            .command(kubectl, kubeconfig, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        tokio::spawn(async move {
            let _ = input.write_all(&stdin).await;
        });
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl did not finish")
            .unwrap();
        (output.status.code().unwrap_or(-1), output.stdout, String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test]
async fn kubectl_exec_runs_on_pipes_with_its_exit_code_and_what_it_asked_reaches_the_controller() {
    let Some((kubectl, controller, cluster, config)) = everyday().await else { return };

    let (status, stdout, stderr) =
        cluster.run(kubectl, &config, &["exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 4"], b"").await;
    assert_eq!(status, 4, "{stderr}");
    assert_eq!(stdout, b"out\n");
    assert!(stderr.contains("err\n") && stderr.contains("command terminated with exit code 4"), "{stderr}");
    let asked = controller.requests().last().unwrap().uri.query().unwrap().to_string();
    for param in [
        "token=good",
        "namespace=default",
        "pod=box",
        "container=main",
        "command=sh&command=-c&command=echo+out%3B+echo+err+%3E%262%3B+exit+4",
        "tty=false",
        "stdin=false",
        "subresource=exec",
    ] {
        assert!(asked.contains(param), "{param} not in {asked}");
    }

    // -i: stdin to its end, byte for byte.
    let input: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let (status, stdout, stderr) = cluster.run(kubectl, &config, &["exec", "-i", "box", "--", "cat"], &input).await;
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout == input, "stdin came back different ({} bytes of {})", stdout.len(), input.len());
    // Without -i the process reads no input: cat ends at once.
    let (status, stdout, _) = cluster.run(kubectl, &config, &["exec", "box", "--", "cat"], b"ignored").await;
    assert_eq!((status, stdout.as_slice()), (0, &b""[..]));
    // A container the pod does not show.
    let (status, _, stderr) = cluster.run(kubectl, &config, &["exec", "box", "-c", "other", "--", "true"], b"").await;
    assert_eq!(status, 1);
    assert!(stderr.contains("container other is not valid for pod box"), "{stderr}");
    cluster.server.stop().await;
}

#[tokio::test]
async fn kubectl_exec_it_on_a_terminal_gets_a_terminal_of_its_size() {
    let Some((kubectl, controller, cluster, config)) = everyday().await else { return };
    let (pty, pts) = pty_process::open().unwrap();
    pty.resize(pty_process::Size::new(33, 111)).unwrap();
    let _pts_copy = pts.as_fd().try_clone_to_owned().unwrap();
    let mut child = pty_process::Command::new(kubectl)
        .args(["exec", "-it", "box", "--", "sh"])
        .env("HOME", cluster.dir.path())
        .env("KUBECONFIG", &config)
        .env("KUBECACHEDIR", cluster.dir.path().join("cache"))
        .kill_on_drop(true)
        .spawn(pts)
        .unwrap();
    let (output, mut input) = pty.into_split();
    let (shown, _) = collect_bytes(output);
    let seen = |needle: &str| String::from_utf8_lossy(&shown.lock().unwrap()).contains(needle);
    let mut sized = false;
    for _ in 0..50 {
        input.write_all(b"stty size; tty\r").await.unwrap();
        if eventually(Duration::from_millis(200), || seen("33 111")).await {
            sized = true;
            break;
        }
    }
    assert!(sized, "no terminal of the local size: {:?}", String::from_utf8_lossy(&shown.lock().unwrap()));
    // `tty` answers just after `stty size`, perhaps in a later read.
    assert!(eventually(Duration::from_secs(5), || seen("/dev/pts/")).await, "the remote shell has no terminal");
    input.write_all(b"exit 3\r").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(controller.requests().last().unwrap().uri.query().unwrap().contains("tty=true"));
    cluster.server.stop().await;
}

#[tokio::test]
async fn kubectl_attach_joins_the_session_its_pod_names() {
    let Some(kubectl) = kubectl() else { return };
    let script = "echo started; while read l; do echo \"got $l\"; done; echo bye";
    let started =
        serde_json::json!({"command": "/bin/sh", "args": ["-c", script], "session": {"id": "s1", "keep": "1m"}});
    let kube = kube_controller().await;
    // `start` starts the named session s1; every other request is kubectl's.
    let controller = Controller::start(move |seen| {
        let start = seen.token().as_deref() == Some("start");
        let started = started.clone();
        let kube_url = kube.url();
        async move {
            if start {
                return json(StatusCode::OK, started.to_string());
            }
            let url = format!("{kube_url}?{}", seen.uri.query().unwrap_or(""));
            let answer = reqwest::get(url).await.unwrap();
            let status = answer.status();
            json(status, answer.bytes().await.unwrap())
        }
    })
    .await;
    let cluster = Cluster::start(&controller, |_, _| {}).await;
    let config = cluster.kubeconfig("config", "token: good");

    // Nothing named s1 runs yet.
    let (status, _, stderr) = cluster.run(kubectl, &config, &["attach", "-i", "s1"], b"").await;
    assert_eq!(status, 1);
    assert!(stderr.contains("no such session"), "{stderr}");

    let tls = tls_connect(cluster.server.addr, &cluster.cert).await.unwrap();
    let url = format!("wss://localhost:{}/ws?token=start", cluster.server.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let writer = Watcher::start(ws, false);
    writer.wait_for("started").await;
    let (status, stdout, stderr) = cluster.run(kubectl, &config, &["attach", "-i", "s1"], b"hello\n").await;
    assert_eq!(status, 0, "{stderr}");
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(stdout.contains("got hello") && stdout.contains("bye"), "{stdout}");
    // The first client saw what kubectl typed.
    writer.wait_for("got hello").await;
    cluster.server.stop().await;
}

#[tokio::test]
async fn kubectl_cp_copies_both_ways_through_tar() {
    let Some((kubectl, _controller, cluster, config)) = everyday().await else { return };
    let local = cluster.dir.path().join("local");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    let binary: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2246822519) >> 7) as u8).collect();
    std::fs::write(local.join("data.bin"), &binary).unwrap();
    std::fs::write(local.join("sub/note.txt"), "a note\n").unwrap();
    // "In the pod" is this machine: another directory of it.
    let remote = cluster.dir.path().join("remote");
    let (status, _, stderr) = cluster
        .run(kubectl, &config, &["cp", local.to_str().unwrap(), &format!("box:{}", remote.display())], b"")
        .await;
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(std::fs::read(remote.join("data.bin")).unwrap(), binary);
    assert_eq!(std::fs::read_to_string(remote.join("sub/note.txt")).unwrap(), "a note\n");

    let back = cluster.dir.path().join("back.bin");
    let from = format!("box:{}", remote.join("data.bin").display());
    let (status, _, stderr) = cluster.run(kubectl, &config, &["cp", &from, back.to_str().unwrap()], b"").await;
    assert_eq!(status, 0, "{stderr}");
    assert!(std::fs::read(&back).unwrap() == binary, "the copy back differs");
    cluster.server.stop().await;
}

#[tokio::test]
async fn refusals_read_as_an_api_servers_and_an_old_kubectl_is_told_what_it_needs() {
    let Some(kubectl) = kubectl() else { return };
    let controller = kube_controller().await;
    let cluster = Cluster::start(&controller, |_, _| {}).await;
    let bad = cluster.kubeconfig("bad", "token: bad");
    let (status, stdout, stderr) = cluster.run(kubectl, &bad, &["exec", "box", "--", "echo", "hi"], b"").await;
    assert_eq!((status, stdout.as_slice()), (1, &b""[..]));
    assert!(stderr.contains("Error from server (Forbidden): forbidden"), "{stderr}");
    let none = cluster.kubeconfig("none", "username: nobody");
    let (status, _, stderr) = cluster.run(kubectl, &none, &["exec", "box", "--", "echo", "hi"], b"").await;
    assert_eq!(status, 1);
    assert!(stderr.contains("Unauthorized"), "{stderr}");
    // The API paths of anything else are 404 Status objects.
    let tls = tls_connect(cluster.server.addr, &cluster.cert).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/api/v1/namespaces/default/secrets/x")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status["kind"].as_str(), status["reason"].as_str()), (Some("Status"), Some("NotFound")));

    if Path::new(OLD_KUBECTL).exists() {
        let good = cluster.kubeconfig("good", "token: good");
        let (status, _, stderr) = cluster.run(OLD_KUBECTL, &good, &["exec", "box", "--", "echo", "hi"], b"").await;
        assert_eq!(status, 1);
        assert!(stderr.contains("use kubectl 1.30 or later"), "{stderr}");
    } else {
        say(&format!("SKIPPED (part): {OLD_KUBECTL} is missing; the SPDY refusal is not tried"));
    }
    cluster.server.stop().await;
}

#[tokio::test]
async fn a_jwt_pinned_to_a_pod_runs_its_own_spec_there_and_nowhere_else() {
    let Some(kubectl) = kubectl() else { return };
    let controller = kube_controller().await;
    let secret = b"0123456789abcdef0123456789abcdef-kubectl".to_vec();
    let cluster = Cluster::start(&controller, |config, dir| {
        let file = dir.join("secret");
        std::fs::write(&file, &secret).unwrap();
        config.auth = ws_subprocess::config::AuthBackend::Jwt;
        config.jwt_secret_file = Some(file);
        config.jwt_algorithms = vec!["HS256".parse().unwrap()];
    })
    .await;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    let claims = serde_json::json!({
        "command": "/bin/sh", "args": ["-c", "echo from the token; exit 6"], "exp": exp,
        "k8s": {"namespace": "default", "pod": "box"},
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let config = cluster.kubeconfig("config", &format!("token: \"{token}\""));
    // kubectl's argv is a request: the token's spec runs.
    let (status, stdout, stderr) = cluster.run(kubectl, &config, &["exec", "box", "--", "rm", "-rf", "/"], b"").await;
    assert_eq!((status, stdout.as_slice()), (6, &b"from the token\n"[..]), "{stderr}");
    let (status, _, stderr) = cluster.run(kubectl, &config, &["exec", "other", "--", "true"], b"").await;
    assert_eq!(status, 1);
    assert!(stderr.contains("Forbidden"), "{stderr}");
    let (status, _, stderr) =
        cluster.run(kubectl, &config, &["exec", "-n", "kube-system", "box", "--", "true"], b"").await;
    assert_eq!(status, 1);
    assert!(stderr.contains("Forbidden"), "{stderr}");
    // Nor on the plain endpoint.
    let tls = tls_connect(cluster.server.addr, &cluster.cert).await.unwrap();
    let url = format!("wss://localhost:{}/ws?token={token}", cluster.server.addr.port());
    match tokio_tungstenite::client_async(url, tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("a pinned token ran on the endpoint: {:?}", other.map(|_| ())),
    }
    cluster.server.stop().await;
}

#[tokio::test]
async fn the_kubeconfigs_client_certificate_stands_for_the_token() {
    let Some(kubectl) = kubectl() else { return };
    let controller = kube_controller().await;
    let ca_holder = scratch();
    let ca = certificate_authority(ca_holder.path(), "clients");
    let alice = client_certificate(ca_holder.path(), "alice", "/O=ops/CN=alice", &ca);
    let ca_file = ca.0.clone();
    let cluster = Cluster::start(&controller, move |config, _| {
        config.tls_client_ca_file = Some(ca_file);
    })
    .await;
    let encode = |path: &Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    let user = format!("client-certificate-data: {}, client-key-data: {}", encode(&alice.0), encode(&alice.1));
    let config = cluster.kubeconfig("config", &user);
    let (status, stdout, stderr) = cluster.run(kubectl, &config, &["exec", "box", "--", "echo", "as alice"], b"").await;
    assert_eq!((status, stdout.as_slice()), (0, &b"as alice\n"[..]), "{stderr}");
    let seen = controller.requests().last().unwrap().clone();
    assert_eq!(seen.token(), None);
    assert_eq!(seen.headers["x-client-cert-subject"], "CN=alice,O=ops");
    assert_eq!(seen.headers["x-client-cert-sha256"], fingerprint(&alice.0).as_str());
    cluster.server.stop().await;
}
