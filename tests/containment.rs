//! Containment (SPEC §8): a session's processes stay in their box. These
//! tests run real processes as root (as CI does) and create a user of their
//! own to drop to.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A system user for the tests, created once.
const TEST_USER: &str = "ws-subprocess-test";

fn test_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        let exists = std::process::Command::new("id").arg(TEST_USER).output().unwrap().status.success();
        if !exists {
            let made = std::process::Command::new("useradd")
                .args(["--system", "--no-create-home", "--shell", "/bin/sh", TEST_USER])
                .status()
                .expect("useradd runs (the tests run as root)");
            assert!(made.success(), "cannot create the test user");
        }
        let id = |flag: &str| -> u32 {
            let out = std::process::Command::new("id").args([flag, TEST_USER]).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
        };
        (id("-u"), id("-g"))
    })
}

/// A controller that answers every token with `spec`.
async fn controller_for(spec: Value) -> Controller {
    let body = spec.to_string();
    Controller::start(move |_| {
        let body = body.clone();
        async move { json(StatusCode::OK, body) }
    })
    .await
}

/// Whether this server contains sessions with cgroups; if not, says that
/// the test is skipped (the fallback cannot contain what it checks).
fn has_cgroups(server: &TestServer, test: &str) -> bool {
    if server.cgroups.is_none() {
        eprintln!(
            "SKIPPED {test}: no usable cgroup v2 hierarchy here, so sessions are contained by process group only"
        );
    }
    server.cgroups.is_some()
}

/// Runs a session of `script` (in `sh -c`, on a terminal when `tty`),
/// waits for `ready`, closes it, and returns the pid the script wrote to
/// `pidfile`, which must be gone within `kill_grace` of the close.
async fn escapes_are_gone_after_close(script: &str, tty: bool, test: &str) {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let script = script.replace("PIDFILE", &pidfile.display().to_string());
    let controller = controller_for(json!({"command": "/bin/sh", "args": ["-c", script], "tty": tty})).await;
    let server = TestServer::for_controller(&controller).await;
    if !has_cgroups(&server, test) {
        return;
    }
    let mut ws = server.connect("t").await;
    read_until(&mut ws, b"ready").await;
    let escaped = read_pid(&pidfile).await;
    assert!(!is_dead(escaped));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let grace = server.config.kill_grace + Duration::from_millis(500);
    assert!(eventually(grace, || is_dead(escaped)).await, "{test}: pid {escaped} outlived its session");
}

#[tokio::test]
async fn a_setsid_daemon_ends_with_its_pipe_session() {
    escapes_are_gone_after_close("setsid sleep 1000 & echo $! > PIDFILE; echo ready; exec cat", false, "setsid, pipes")
        .await;
}

#[tokio::test]
async fn a_setsid_daemon_ends_with_its_terminal_session() {
    escapes_are_gone_after_close("setsid sleep 1000 & echo $! > PIDFILE; echo ready; exec cat", true, "setsid, tty")
        .await;
}

#[tokio::test]
async fn a_process_that_left_the_group_ends_with_its_session() {
    let script =
        r#"python3 -c 'import os, time; os.setpgid(0, 0); time.sleep(1000)' & echo $! > PIDFILE; echo ready; exec cat"#;
    escapes_are_gone_after_close(script, false, "setpgid, pipes").await;
}

#[tokio::test]
async fn a_daemon_left_by_a_process_that_exits_normally_ends_with_the_session() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let script = format!("setsid sleep 1000 & echo $! > {}; echo done", pidfile.display());
    for tty in [false, true] {
        let controller = controller_for(json!({"command": "/bin/sh", "args": ["-c", script], "tty": tty})).await;
        let server = TestServer::for_controller(&controller).await;
        if !has_cgroups(&server, "daemon after a normal exit") {
            return;
        }
        let mut ws = server.connect("t").await;
        let (_, close) = collect(&mut ws).await;
        assert_eq!(u16::from(close.unwrap().code), 1000);
        let daemon = read_pid(&pidfile).await;
        let grace = server.config.kill_grace + Duration::from_millis(500);
        assert!(eventually(grace, || is_dead(daemon)).await, "the daemon outlived its session (tty {tty})");
        std::fs::remove_file(&pidfile).unwrap();
    }
}

#[tokio::test]
async fn a_closed_session_frees_its_place_at_once_despite_a_long_kill_grace() {
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let mut config = config_for(&controller);
    config.max_sessions = 1;
    config.kill_grace = Duration::from_secs(5);
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    ws.send(Message::Text("x\n".into())).await.unwrap();
    read_until(&mut ws, b"x").await;
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let closed = Instant::now();
    loop {
        match tokio_tungstenite::connect_async(server.ws_url("t")).await {
            Ok((ws, _)) => {
                drop(ws);
                break;
            }
            Err(_) if closed.elapsed() < Duration::from_secs(5) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(err) => panic!("the place was still taken after {:?}: {err}", closed.elapsed()),
        }
    }
    // `cat` exits at once on SIGINT; the place was held for kill_grace (5 s)
    // before. Alone this takes a few milliseconds; the bound is for a
    // loaded machine.
    let freed = closed.elapsed();
    eprintln!("place free {freed:?} after the close");
    assert!(freed < Duration::from_millis(1500), "the place was free only after {freed:?}");
}

#[tokio::test]
async fn as_pid_1_the_server_reaps_every_orphan() {
    // Each session leaves grandchildren whose parent exits first: they
    // become the server's (PID 1's) children.
    let script = "(sleep 0.2; true) & (sleep 0.1 &); sleep 0.05 & echo hi";
    let controller = controller_for(json!({"command": "/bin/sh", "args": ["-c", script]})).await;
    let dir = scratch();
    let url = controller.url();
    let server = Binary::start_wrapped(
        &["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
        &["--listen", "127.0.0.1:0", "--controller-url", &url, "--kill-grace", "300ms"],
        &[],
        dir.path(),
    )
    .await;
    let pid1 = children_of(server.pid()).into_iter().next().expect("the server under unshare");
    for _ in 0..15 {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
        assert_eq!(collect(&mut ws).await.0, b"hi\n");
    }
    let zombies = || children_of(pid1).into_iter().filter(|&pid| is_dead(pid)).count();
    let reaped = eventually(Duration::from_secs(5), || zombies() == 0 && children_of(pid1).is_empty()).await;
    assert!(reaped, "{} zombies, {} children left", zombies(), children_of(pid1).len());
}

#[tokio::test]
async fn children_never_see_the_servers_settings() {
    let controller = Controller::allowing("/usr/bin/env", &[]).await;
    let dir = scratch();
    // The controller URL, with credentials, comes from the environment.
    let url = controller.url().replace("http://", "http://user:SeCrEt-pw@");
    let server =
        Binary::start(&["--listen", "127.0.0.1:0"], &[("WS_SUBPROCESS_CONTROLLER_URL", &url)], dir.path()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    let output = String::from_utf8(collect(&mut ws).await.0).unwrap();
    assert!(output.contains("PATH="), "{output}");
    assert!(!output.contains("WS_SUBPROCESS_") && !output.contains("SeCrEt"), "{output}");
}

#[tokio::test]
async fn a_child_of_the_same_user_cannot_read_the_servers_environment() {
    let (uid, gid) = test_user();
    let controller = Controller::shell("cat /proc/$PPID/environ; echo \"read $?\"").await;
    let url = controller.url().replace("http://", "http://user:SeCrEt-pw@");
    // The server runs as the test user, as its children do.
    let (uid, gid) = (uid.to_string(), gid.to_string());
    let server = Binary::start_wrapped(
        &["setpriv", &format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups", "--"],
        &["--listen", "127.0.0.1:0"],
        &[("WS_SUBPROCESS_CONTROLLER_URL", &url)],
        std::path::Path::new("/tmp"),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    let output = String::from_utf8_lossy(&collect(&mut ws).await.0).into_owned();
    assert!(!output.contains("SeCrEt") && !output.contains("read 0"), "{output}");
    assert!(output.contains("read 1"), "{output}");
}

#[tokio::test]
async fn run_as_user_drops_to_that_user_and_its_login_environment() {
    let (uid, _) = test_user();
    let dir = scratch();
    let secret = path_in(&dir, "secret");
    std::fs::write(&secret, "ROOT-ONLY-SECRET").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let script = format!("id -u; echo \"$USER $LOGNAME\"; cat {} || echo denied", secret.display());
    let controller = Controller::shell(&script).await;
    let mut config = config_for(&controller);
    config.run_as_user = Some(TEST_USER.into());
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    let output = String::from_utf8(collect(&mut ws).await.0).unwrap();
    assert!(output.starts_with(&format!("{uid}\n{TEST_USER} {TEST_USER}\n")), "{output}");
    assert!(output.contains("denied") && !output.contains("ROOT-ONLY-SECRET"), "{output}");
}

#[tokio::test]
async fn a_spec_may_name_only_an_allowed_user() {
    let (uid, _) = test_user();
    let controller = controller_for(json!({"command": "/usr/bin/id", "args": ["-u"], "user": TEST_USER})).await;
    let mut config = config_for(&controller);
    let refused = TestServer::start(config.clone()).await;
    assert_eq!(refused.refusal("t").await, (StatusCode::FORBIDDEN, "user not allowed\n".into()));
    config.allowed_users = vec![TEST_USER.into()];
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    assert_eq!(collect(&mut ws).await.0, format!("{uid}\n").as_bytes());
}

#[tokio::test]
async fn children_get_only_descriptors_0_to_2_whatever_the_server_inherited() {
    let controller = Controller::shell("ls /proc/$$/fd").await;
    let dir = scratch();
    let url = controller.url();
    // Launched with two descriptors left open for it (not close-on-exec).
    let server = Binary::start_wrapped(
        &["sh", "-c", "exec 7</etc/hostname 9</etc/hostname \"$0\" \"$@\""],
        &["--listen", "127.0.0.1:0", "--controller-url", &url],
        &[],
        dir.path(),
    )
    .await;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap().count();
    assert!(fds > 3, "the server did not inherit the extra descriptors");
    let (mut ws, _) = match tokio_tungstenite::connect_async(server.ws_url("t")).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            panic!("{}: {body}\n{}", response.status(), server.log())
        }
        Err(err) => panic!("{err}"),
    };
    assert_eq!(String::from_utf8(collect(&mut ws).await.0).unwrap(), "0\n1\n2\n");
}

#[tokio::test]
async fn a_spec_cannot_set_ld_preload_when_commands_are_allowlisted() {
    let dir = scratch();
    let marker = path_in(&dir, "ran");
    let spec = json!({"command": "/usr/bin/touch", "args": [marker], "env": {"LD_PRELOAD": "/tmp/evil.so"}});
    let controller = controller_for(spec).await;
    let mut config = config_for(&controller);
    config.allowed_commands = vec!["/usr/bin/touch".into()];
    let server = TestServer::start(config.clone()).await;
    assert_eq!(server.refusal("t").await, (StatusCode::FORBIDDEN, "environment variable not allowed\n".into()));
    assert!(!marker.exists());
    // Harmless variables still pass, and an explicit allowed_env replaces
    // the default list.
    let controller = controller_for(json!({"command": "/usr/bin/touch", "args": [marker], "env": {"LANG": "C"}})).await;
    let mut config = config_for(&controller);
    config.allowed_commands = vec!["/usr/bin/touch".into()];
    let server = TestServer::start(config.clone()).await;
    let mut ws = server.connect("t").await;
    collect(&mut ws).await;
    assert!(marker.exists());
    config.allowed_env = Some(vec!["X_*".into()]);
    let server = TestServer::start(config).await;
    assert_eq!(server.refusal("t").await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn session_limits_apply_where_the_controllers_are_delegated() {
    let script = "for i in $(seq 1 40); do sleep 5 & done 2>/dev/null; echo \"started $(jobs -p | wc -l)\"; kill $(jobs -p) 2>/dev/null";
    let controller = Controller::shell(script).await;
    let mut config = config_for(&controller);
    config.session_pids_max = Some(10);
    let server = TestServer::start(config).await;
    let controllers = server.cgroups.clone().unwrap_or_default();
    if !controllers.contains(&"pids") {
        eprintln!(
            "SKIPPED session_limits_apply_where_the_controllers_are_delegated: the pids controller is not \
             delegated here (session cgroups get {controllers:?})"
        );
        return;
    }
    let mut ws = server.connect("t").await;
    let output = String::from_utf8(collect(&mut ws).await.0).unwrap();
    let started: usize = output.trim().trim_start_matches("started ").parse().unwrap();
    assert!(started < 10, "{output}");
}

#[tokio::test]
async fn an_oom_kill_is_reported_as_such_where_memory_is_delegated() {
    let controller = controller_for(json!({
        "command": "/usr/bin/python3", "args": ["-c", "b = bytearray(512 << 20); print(len(b))"],
        "limits": {"memory": "64MiB"},
    }))
    .await;
    let server = TestServer::for_controller(&controller).await;
    let controllers = server.cgroups.clone().unwrap_or_default();
    if !controllers.contains(&"memory") {
        eprintln!(
            "SKIPPED an_oom_kill_is_reported_as_such_where_memory_is_delegated: the memory controller is not \
             delegated here (session cgroups get {controllers:?})"
        );
        return;
    }
    let mut ws = server.connect("t").await;
    let (_, close) = collect(&mut ws).await;
    let close = close.unwrap();
    assert_eq!((u16::from(close.code), close.reason.as_str()), (4137, "oom"));
}

/// The session cgroup directory a server logged, if it has one.
fn cgroup_dir_of(server: &Binary) -> Option<std::path::PathBuf> {
    let log = server.log();
    let line = log.lines().find(|l| l.contains("one cgroup per session"))?;
    let dir = line.split("dir=").nth(1)?.split(' ').next()?;
    Some(dir.trim_matches('"').into())
}

#[tokio::test]
async fn a_killed_servers_cgroup_is_swept_and_a_live_ones_is_not_even_from_another_pid_namespace() {
    let controller = Controller::allowing("/bin/echo", &["contained"]).await;
    let dir = scratch();
    let url = controller.url();
    let args = ["--listen", "127.0.0.1:0", "--controller-url", &url];
    let live = Binary::start(&args, &[], dir.path()).await;
    let Some(live_dir) = cgroup_dir_of(&live) else {
        eprintln!("SKIPPED the sweep test: no usable cgroup v2 hierarchy here");
        return;
    };
    let mut killed = Binary::start(&args, &[], dir.path()).await;
    let killed_dir = cgroup_dir_of(&killed).expect("a cgroup for the second server too");
    killed.signal(rustix::process::Signal::KILL);
    killed.exit_code(Duration::from_secs(5)).await;
    assert!(killed_dir.exists(), "nobody swept yet, and a killed server cannot clean up");
    // A server in a pid namespace of its own, where neither pid means
    // anything, sweeps what the killed one left and only that.
    let sweeper =
        Binary::start_wrapped(&["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"], &args, &[], dir.path())
            .await;
    assert!(eventually(Duration::from_secs(5), || !killed_dir.exists()).await, "{}", sweeper.log());
    assert!(live_dir.exists(), "the live server's cgroup was swept: {}", sweeper.log());
    assert!(sweeper.log().contains("removed the cgroup of a server that is gone"), "{}", sweeper.log());
    // The live server still starts (and contains) sessions.
    let (mut ws, _) = tokio_tungstenite::connect_async(live.ws_url("t")).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"contained\n");
}
