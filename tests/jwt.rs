#![cfg(feature = "jwt")]
//! The JWT backend (SPEC §4 JWT) over real sockets, with keys made by
//! openssl, a real key set server and a real redis-server.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use http::StatusCode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use ws_subprocess::auth::jwt::unix_now;
use ws_subprocess::config::{AuthBackend, Config};

/// Key files made once per test run with openssl.
struct KeyFiles {
    dir: PathBuf,
}

impl KeyFiles {
    fn get() -> &'static KeyFiles {
        static KEYS: OnceLock<KeyFiles> = OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap().keep();
            let openssl = |args: &[&str]| {
                let status = std::process::Command::new("openssl").args(args).current_dir(&dir).status().unwrap();
                assert!(status.success(), "openssl {args:?}");
            };
            openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem"]);
            openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa2.pem"]);
            openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.pem"]);
            openssl(&["genpkey", "-algorithm", "ED25519", "-out", "ed.pem"]);
            for name in ["rsa", "rsa2", "ec", "ed"] {
                openssl(&["pkey", "-in", &format!("{name}.pem"), "-pubout", "-out", &format!("{name}.pub.pem")]);
            }
            std::fs::write(dir.join("secret"), "0123456789abcdef0123456789abcdef-a-test-secret\n").unwrap();
            std::fs::write(dir.join("short-secret"), "too short\n").unwrap();
            KeyFiles { dir }
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn secret(&self) -> EncodingKey {
        EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef-a-test-secret")
    }

    fn private(&self, name: &str) -> EncodingKey {
        let pem = self.read(&format!("{name}.pem"));
        match name {
            "ec" => EncodingKey::from_ec_pem(&pem).unwrap(),
            "ed" => EncodingKey::from_ed_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        }
    }

    fn jwk(&self, name: &str, alg: Algorithm, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.private(name), alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    }
}

/// Claims that run `/bin/echo ok` for a minute.
fn claims() -> Value {
    let now = unix_now();
    json!({"command": "/bin/echo", "args": ["ok"], "iat": now, "exp": now + 60})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token with a header of our own making, signed with `key`.
fn sign_raw_header(header: &Value, claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    let message =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn jwt_config(algorithms: &[&str], tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        auth: AuthBackend::Jwt,
        jwt_algorithms: algorithms.iter().map(|a| a.parse().unwrap()).collect(),
        kill_grace: Duration::from_millis(300),
        ..Config::default()
    };
    tweak(&mut config);
    config
}

async fn jwt_server(algorithms: &[&str], tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start(jwt_config(algorithms, tweak)).await
}

fn with_secret(config: &mut Config) {
    config.jwt_secret_file = Some(KeyFiles::get().path("secret"));
}

async fn assert_runs(server: &TestServer, token: &str) {
    let mut ws = server.connect(token).await;
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output, b"ok\n");
    assert_eq!(u16::from(close.unwrap().code), 1000);
}

async fn assert_denied(server: &TestServer, token: &str, case: &str) {
    let (status, body) = server.refusal(token).await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, "forbidden\n"), "{case}");
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_run_their_command() {
    let keys = KeyFiles::get();
    let server = jwt_server(&["HS256"], with_secret).await;
    assert_runs(&server, &sign(Algorithm::HS256, &keys.secret(), None, &claims())).await;
    for (name, alg, alg_name) in
        [("rsa", Algorithm::RS256, "RS256"), ("ec", Algorithm::ES256, "ES256"), ("ed", Algorithm::EdDSA, "EdDSA")]
    {
        let server =
            jwt_server(&[alg_name], |c| c.jwt_public_key_file = Some(keys.path(&format!("{name}.pub.pem")))).await;
        assert_runs(&server, &sign(alg, &keys.private(name), None, &claims())).await;
    }
}

#[tokio::test]
async fn jwks_file_selects_keys_by_kid() {
    let keys = KeyFiles::get();
    let dir = scratch();
    let set = JwkSet { keys: vec![keys.jwk("rsa", Algorithm::RS256, "a"), keys.jwk("ec", Algorithm::ES256, "b")] };
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, serde_json::to_string(&set).unwrap()).unwrap();
    let server = jwt_server(&["RS256", "ES256"], |c| c.jwt_jwks_file = Some(file)).await;
    assert_runs(&server, &sign(Algorithm::RS256, &keys.private("rsa"), Some("a"), &claims())).await;
    assert_runs(&server, &sign(Algorithm::ES256, &keys.private("ec"), Some("b"), &claims())).await;
    // A kid naming the other key, or no key at all, is denied.
    assert_denied(&server, &sign(Algorithm::RS256, &keys.private("rsa"), Some("b"), &claims()), "wrong kid").await;
    assert_denied(&server, &sign(Algorithm::RS256, &keys.private("rsa"), Some("zzz"), &claims()), "unknown kid").await;
    // A key that is not in the set is denied whatever its kid.
    assert_denied(&server, &sign(Algorithm::RS256, &keys.private("rsa2"), Some("a"), &claims()), "foreign key").await;
}

#[tokio::test]
async fn jwks_url_is_cached_refreshed_on_unknown_kid_with_a_cooldown() {
    let keys = KeyFiles::get();
    let served = Arc::new(Mutex::new(JwkSet { keys: vec![keys.jwk("rsa", Algorithm::RS256, "old")] }));
    let served2 = served.clone();
    let issuer = Controller::start(move |_| {
        let body = serde_json::to_string(&*served2.lock().unwrap()).unwrap();
        async move { json(StatusCode::OK, body) }
    })
    .await;

    // Composed by hand, as a library user would, to shorten the cooldown.
    let addr = hand_made_jwks_server(&issuer, Duration::from_millis(500)).await;
    let url = |token: &str| format!("ws://{addr}/ws?token={token}");

    // First use fetches the set.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(url(&sign(Algorithm::RS256, &keys.private("rsa"), Some("old"), &claims())))
            .await
            .unwrap();
    assert_eq!(collect(&mut ws).await.0, b"ok\n");
    assert_eq!(issuer.requests().len(), 1);

    // The issuer rotates; a flood of unknown kids fetches at most once per
    // cooldown.
    served.lock().unwrap().keys.push(keys.jwk("rsa2", Algorithm::RS256, "new"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 0..20 {
        let token = sign(Algorithm::RS256, &keys.private("rsa"), Some(&format!("bogus-{i}")), &claims());
        assert_eq!(refusal(url(&token)).await.0, StatusCode::FORBIDDEN);
    }
    assert_eq!(issuer.requests().len(), 2, "unknown kids must not hammer the issuer");

    // The rotated-in key was fetched with that refresh; the old one is kept.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(url(&sign(Algorithm::RS256, &keys.private("rsa2"), Some("new"), &claims())))
            .await
            .unwrap();
    assert_eq!(collect(&mut ws).await.0, b"ok\n");
    served.lock().unwrap().keys.remove(0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let token = sign(Algorithm::RS256, &keys.private("rsa"), Some("bogus-again"), &claims());
    assert_eq!(refusal(url(&token)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(issuer.requests().len(), 3);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(url(&sign(Algorithm::RS256, &keys.private("rsa"), Some("old"), &claims())))
            .await
            .unwrap();
    assert_eq!(collect(&mut ws).await.0, b"ok\n");
}

#[tokio::test]
async fn bad_tokens_are_403_and_start_nothing() {
    let keys = KeyFiles::get();
    let dir = scratch();
    let marker = dir.path().join("ran");
    let now = unix_now();
    // Every token below would leave the marker if it ran.
    let run = |extra: Value| {
        // Valid for the server below unless `extra` spoils it.
        let mut claims = json!({
            "command": "/bin/sh", "args": ["-c", format!("touch {}", marker.display())],
            "iat": now, "exp": now + 60, "iss": "issuer", "aud": "ws",
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let secret = keys.secret();
    let hs = |claims: &Value| sign(Algorithm::HS256, &secret, None, claims);
    let valid = hs(&run(json!({})));
    let mut tampered: Vec<String> = valid.split('.').map(str::to_string).collect();
    let mut payload = run(json!({}));
    payload["args"] = json!(["-c", "echo tampered"]);
    tampered[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
    let rsa_public = keys.read("rsa.pub.pem");
    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(run(json!({})).to_string())
    );
    let cases: Vec<(&str, String)> = vec![
        ("expired", hs(&run(json!({"iat": now - 120, "exp": now - 60})))),
        ("not yet valid", hs(&run(json!({"nbf": now + 60})))),
        ("no exp", hs(&run(json!({"exp": null})))),
        ("alg none", none_token),
        ("wrong secret", sign(Algorithm::HS256, &EncodingKey::from_secret(&[7u8; 48]), None, &run(json!({})))),
        ("tampered payload", tampered.join(".")),
        ("algorithm not allowed", sign(Algorithm::HS512, &secret, None, &run(json!({})))),
        (
            "RSA public key as HMAC secret",
            sign(Algorithm::HS256, &EncodingKey::from_secret(&rsa_public), None, &run(json!({}))),
        ),
        ("wrong iss", hs(&run(json!({"iss": "someone-else"})))),
        ("missing iss", hs(&run(json!({"iss": null})))),
        ("wrong aud", hs(&run(json!({"aud": "other"})))),
        ("missing aud", hs(&run(json!({"aud": null})))),
        ("lifetime over max", hs(&run(json!({"exp": now + 7200})))),
        ("no iat with max lifetime", hs(&run(json!({"iat": null})))),
        (
            "crit header",
            sign_raw_header(
                &json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"], "exp": 1}),
                &run(json!({})),
                Algorithm::HS256,
                &secret,
            ),
        ),
        ("garbage", "not-a-token".into()),
        ("garbage with dots", "a.b.c".into()),
        ("relative command", hs(&run(json!({"command": "sh"})))),
        ("args not a list", hs(&run(json!({"args": "-c touch x"})))),
        ("no command", hs(&run(json!({"command": null})))),
    ];
    let server = jwt_server(&["HS256"], |c| {
        with_secret(c);
        c.jwt_issuer = Some("issuer".into());
        c.jwt_audience = Some("ws".into());
        c.jwt_max_lifetime = Some(Duration::from_secs(3600));
    })
    .await;
    for (case, token) in &cases {
        assert_denied(&server, token, case).await;
    }
    // The same RSA-key confusion against a server that trusts that RSA key.
    let rsa_server = jwt_server(&["RS256"], |c| c.jwt_public_key_file = Some(keys.path("rsa.pub.pem"))).await;
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&rsa_public), None, &run(json!({})));
    assert_denied(&rsa_server, &confused, "HS256 signed with the server's RSA public key").await;
    // Even when HMAC is allowed too, the HMAC key is the secret, not the PEM.
    let both = jwt_server(&["HS256", "RS256"], |c| {
        with_secret(c);
        c.jwt_public_key_file = Some(keys.path("rsa.pub.pem"));
    })
    .await;
    assert_denied(&both, &confused, "confusion with both families allowed").await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists(), "a denied token started a process");

    // And the reference token does run, so the cases above fail for their
    // own reason.
    let ok = hs(&run(json!({})));
    let mut ws = server.connect(&ok).await;
    collect(&mut ws).await;
    assert!(marker.exists());
}

#[tokio::test]
async fn huge_token_is_refused_and_the_server_is_unharmed() {
    let server = jwt_server(&["HS256"], with_secret).await;
    let huge = "a".repeat(100 * 1024);
    let (status, _, _) = http_request(
        server.addr,
        &format!(
            "GET /ws?token={huge} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
        ),
    )
    .await;
    assert!((400..500).contains(&status), "status {status}");
    let (status, _, _) = http_request(
        server.addr,
        &format!(
            "GET /ws HTTP/1.1\r\nAuthorization: Bearer {huge}.{huge}.{huge}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
        ),
    )
    .await;
    assert!((400..500).contains(&status), "status {status}");
    assert_eq!(http_request(server.addr, "GET /healthz HTTP/1.1").await.0, 200);
    assert_runs(&server, &sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &claims())).await;
}

#[tokio::test]
async fn jti_is_single_use_on_one_instance() {
    let server = jwt_server(&["HS256"], with_secret).await;
    let mut claims = claims();
    claims["jti"] = json!("once");
    let token = sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &claims);
    assert_runs(&server, &token).await;
    assert_denied(&server, &token, "replay").await;
    // Tokens without jti may be reused, unless jti is required.
    let reusable = sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &self::claims());
    assert_runs(&server, &reusable).await;
    assert_runs(&server, &reusable).await;
    let strict = jwt_server(&["HS256"], |c| {
        with_secret(c);
        c.jwt_require_jti = true;
    })
    .await;
    assert_denied(&strict, &reusable, "no jti").await;
}

/// A redis-server of our own on a free port.
struct Redis {
    _child: tokio::process::Child,
    port: u16,
}

impl Redis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let up =
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await;
        assert!(up, "redis-server did not start");
        Self { _child: child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

#[tokio::test]
async fn jti_replay_on_a_second_instance_sharing_redis_is_denied() {
    let redis = Redis::start().await;
    let store = redis.url().parse().unwrap();
    let first = jwt_server(&["HS256"], |c| {
        with_secret(c);
        c.jwt_replay_store = store;
    })
    .await;
    let store = redis.url().parse().unwrap();
    let second = jwt_server(&["HS256"], |c| {
        with_secret(c);
        c.jwt_replay_store = store;
    })
    .await;
    let mut claims = claims();
    claims["jti"] = json!(ws_subprocess::auth::jwt::mint::random_id());
    let token = sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &claims);
    assert_runs(&first, &token).await;
    assert_denied(&second, &token, "replay on another instance").await;
    assert_denied(&first, &token, "replay on the same instance").await;
}

#[tokio::test]
async fn unreachable_redis_is_503_and_starts_nothing() {
    let dir = scratch();
    let marker = dir.path().join("ran");
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = jwt_server(&["HS256"], |c| {
        with_secret(c);
        c.jwt_replay_store = format!("redis://127.0.0.1:{dead_port}/").parse().unwrap();
    })
    .await;
    let now = unix_now();
    let claims = json!({"command": "/usr/bin/touch", "args": [marker], "iat": now, "exp": now + 60, "jti": "x"});
    let token = sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &claims);
    let (status, body) = server.refusal(&token).await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "authorization backend unavailable\n"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists());
}

#[tokio::test]
async fn bearer_subprotocol_carries_the_token_and_is_never_echoed() {
    let server = jwt_server(&["HS256"], with_secret).await;
    let token = sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &claims_with_jti("bearer-once"));
    let protocol = format!("base64url.bearer.authorization.k8s.io.{}", URL_SAFE_NO_PAD.encode(&token));
    let upgrade = |protocols: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nSec-WebSocket-Protocol: {protocols}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
        )
    };
    // Offering only the token's protocol would make a browser fail the
    // 101: it is refused before the token is checked (and spent).
    let (status, head, body) = http_request(server.addr, &upgrade(&protocol)).await;
    assert_eq!(status, 400, "{head}");
    assert!(body.contains("v5.channel.k8s.io"), "{body}");
    let (status, head, _) = http_request(server.addr, &upgrade(&format!("{protocol}, chat"))).await;
    assert_eq!(status, 400, "{head}");
    // With a protocol this server speaks, the answer names only that one.
    let (status, head, _) = http_request(server.addr, &upgrade(&format!("{protocol}, v5.channel.k8s.io"))).await;
    assert_eq!(status, 101, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("sec-websocket-protocol: v5.channel.k8s.io\r\n"), "{head}");
    assert!(!head.contains(&token.to_ascii_lowercase()));
}

/// The standard claims with a `jti`.
fn claims_with_jti(jti: &str) -> Value {
    let mut claims = claims();
    claims["jti"] = json!(jti);
    claims
}

fn minted(args: &[&str]) -> String {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_ws-subprocess")).arg("mint-token").args(args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn mint_token_makes_tokens_the_server_accepts_once() {
    let keys = KeyFiles::get();
    let secret = keys.path("secret");
    let server = jwt_server(&["HS256"], with_secret).await;
    let token = minted(&["--secret-file", secret.to_str().unwrap(), "--ttl", "60s", "--", "/bin/echo", "ok"]);
    assert_runs(&server, &token).await;
    assert_denied(&server, &token, "minted tokens carry a jti").await;

    let ec = jwt_server(&["ES256"], |c| c.jwt_public_key_file = Some(keys.path("ec.pub.pem"))).await;
    let pem = keys.path("ec.pem");
    let token = minted(&["--private-key-file", pem.to_str().unwrap(), "--alg", "ES256", "--", "/bin/echo", "ok"]);
    assert_runs(&ec, &token).await;
}

/// Starts the binary expecting a startup failure; returns its stderr.
fn startup_error(args: &[&str], dir: &Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ws-subprocess"))
        .args(["--listen", "127.0.0.1:0", "--auth", "jwt"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn bad_jwt_settings_stop_the_server_at_start() {
    let keys = KeyFiles::get();
    let dir = scratch();
    let short = keys.path("short-secret");
    let secret = keys.path("secret");
    let rsa = keys.path("rsa.pub.pem");
    let err = startup_error(&["--jwt-algorithms", "HS256", "--jwt-secret-file", short.to_str().unwrap()], dir.path());
    assert!(err.contains("jwt_secret_file") && err.contains("at least 32"), "{err}");
    let err = startup_error(&["--jwt-secret-file", secret.to_str().unwrap()], dir.path());
    assert!(err.contains("jwt_algorithms"), "{err}");
    let err = startup_error(&["--jwt-algorithms", "none", "--jwt-secret-file", secret.to_str().unwrap()], dir.path());
    assert!(err.contains("jwt_algorithms"), "{err}");
    let err = startup_error(&["--jwt-algorithms", "HS256"], dir.path());
    assert!(err.contains("needs a key"), "{err}");
    let err = startup_error(&["--jwt-algorithms", "ES256", "--jwt-public-key-file", rsa.to_str().unwrap()], dir.path());
    assert!(err.contains("jwt_public_key_file"), "{err}");
}

#[tokio::test]
async fn fractional_exp_still_makes_a_jti_single_use() {
    let server = jwt_server(&["HS256"], with_secret).await;
    let now = unix_now() as f64;
    let claims =
        json!({"command": "/bin/echo", "args": ["ok"], "iat": now + 0.25, "exp": now + 60.5, "jti": "fractional"});
    let token = sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &claims);
    assert_runs(&server, &token).await;
    assert_denied(&server, &token, "replay of a token with a fractional exp").await;
}

#[tokio::test]
async fn a_jti_in_redis_stays_spent_for_the_whole_validity_of_a_fractional_exp() {
    let redis = Redis::start().await;
    let store = redis.url().parse().unwrap();
    let server = jwt_server(&["HS256"], |c| {
        with_secret(c);
        c.jwt_replay_store = store;
        c.jwt_leeway = Duration::ZERO;
    })
    .await;
    // Start just after a second begins, so the moments below are clear of
    // second boundaries: the token expires at E + 0.5.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    tokio::time::sleep(Duration::from_millis(1050) - Duration::from_millis(now.subsec_millis().into())).await;
    let e = unix_now() + 2;
    let claims = json!({"command": "/bin/echo", "args": ["ok"], "exp": e as f64 + 0.5, "jti": "fractional-redis"});
    let token = sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &claims);
    assert_runs(&server, &token).await;
    // Past E + 1 the verifier still accepts the token (it rounds exp up to
    // E + 1 and compares whole seconds); its id must still be spent.
    let until = std::time::UNIX_EPOCH + Duration::from_millis(e * 1000 + 1500);
    tokio::time::sleep(until.duration_since(std::time::SystemTime::now()).unwrap_or_default()).await;
    assert_denied(&server, &token, "replay in the last second of a fractional exp").await;
}

#[tokio::test]
async fn max_lifetime_also_requires_iat_not_in_the_future() {
    let server = jwt_server(&["HS256"], |c| {
        with_secret(c);
        c.jwt_max_lifetime = Some(Duration::from_secs(60));
    })
    .await;
    let now = unix_now();
    let ten_years = 10 * 365 * 24 * 3600;
    let sly = json!({"command": "/bin/echo", "args": ["ok"], "iat": now + ten_years, "exp": now + ten_years});
    assert_denied(&server, &sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &sly), "iat in the future").await;
    let fine = json!({"command": "/bin/echo", "args": ["ok"], "iat": now as f64 + 0.5, "exp": now as f64 + 30.5});
    assert_runs(&server, &sign(Algorithm::HS256, &KeyFiles::get().secret(), None, &fine)).await;
}

#[tokio::test]
async fn a_slow_key_set_refresh_never_delays_tokens_whose_key_is_known() {
    let keys = KeyFiles::get();
    let set = serde_json::to_string(&JwkSet { keys: vec![keys.jwk("rsa", Algorithm::RS256, "known")] }).unwrap();
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetches.clone();
    let issuer = Controller::start(move |_| {
        let slow = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0;
        let set = set.clone();
        async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
            json(StatusCode::OK, set)
        }
    })
    .await;
    // Composed by hand, as a library user would, to shorten the cooldown.
    let server = hand_made_jwks_server(&issuer, Duration::from_millis(200)).await;
    let known = || sign(Algorithm::RS256, &keys.private("rsa"), Some("known"), &claims());
    let runs = |token: String| {
        let url = format!("ws://{server}/ws?token={token}");
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            assert_eq!(collect(&mut ws).await.0, b"ok\n");
        }
    };
    runs(known()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An unknown kid starts a slow refresh and waits for it...
    let unknown = sign(Algorithm::RS256, &keys.private("rsa"), Some("rotated"), &claims());
    let waiting = tokio::spawn(refusal(format!("ws://{server}/ws?token={unknown}")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...but a token whose key is known is answered meanwhile.
    let started = std::time::Instant::now();
    runs(known()).await;
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?} behind the refresh", started.elapsed());
    assert!(!waiting.is_finished(), "the refresh should still be under way");
    assert_eq!(waiting.await.unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A server with a JWT backend whose key set comes from `issuer`, fetched
/// again at most every `cooldown`; returns its address.
async fn hand_made_jwks_server(issuer: &Controller, cooldown: Duration) -> String {
    use ws_subprocess::auth::TokenAuthLayer;
    use ws_subprocess::auth::jwt::{JwtAuthorizer, JwtSettings, KeySources, MemoryReplayStore};
    use ws_subprocess::session::{ServeSubprocess, SessionSettings, Sessions};

    let settings = JwtSettings {
        algorithms: vec![Algorithm::RS256],
        keys: KeySources {
            jwks_url: Some(issuer.url().parse().unwrap()),
            jwks_cooldown: cooldown,
            ..KeySources::default()
        },
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(5),
        max_lifetime: None,
        require_jti: false,
    };
    let client = ws_subprocess::auth::backend_client(Duration::from_secs(10)).unwrap();
    let authorizer = JwtAuthorizer::new(settings, MemoryReplayStore::default(), client).unwrap();
    let sessions = Sessions::new();
    let app = ws_subprocess::routes::Routes::new(
        "/ws",
        tower::ServiceBuilder::new()
            .layer(TokenAuthLayer::new(authorizer))
            .service(ServeSubprocess::new(SessionSettings::default(), sessions.clone())),
    );
    let listener = ws_subprocess::server::Listener::bind(&"127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let settings = ws_subprocess::server::ServeSettings::default();
    tokio::spawn(ws_subprocess::server::serve(listener, app, settings, sessions, std::future::pending()));
    addr
}
