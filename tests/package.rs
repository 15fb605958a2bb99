//! The Debian package (SPEC §10, packaging): built by `scripts/package`
//! with cargo-deb, its contents, an install on this machine, and an upgrade
//! to a newer revision that a running server takes in place (same process,
//! its session carried) instead of being restarted. The package is purged
//! at the end, whatever happens.
//!
//! Installing needs root (CI runs as root); without it, or without dpkg,
//! the test says so and checks only what it can.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const PACKAGE: &str = "ws-subprocess";

/// Builds the package (the debug binary: what matters is the packaging)
/// with `revision` into `out`; returns its path.
fn build(out: &Path, revision: u32) -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(format!("{root}/scripts/package"))
        .args(["--profile", "dev", "--fast", "--deb-revision", &revision.to_string(), "--output"])
        .arg(out)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(built.status.success(), "scripts/package failed: {}", String::from_utf8_lossy(&built.stderr));
    let path = String::from_utf8_lossy(&built.stdout).lines().last().unwrap().trim().to_string();
    assert!(path.ends_with(&format!("-{revision}_amd64.deb")), "{path}");
    PathBuf::from(path)
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Purges the package when the test ends, and removes the user the
/// package made if the machine had none.
struct Installed {
    had_user: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
        if !self.had_user {
            let _ = Command::new("deluser").args(["--system", "--quiet", PACKAGE]).output();
            let _ = Command::new("delgroup").args(["--system", "--quiet", PACKAGE]).output();
        }
    }
}

#[tokio::test]
async fn the_package_installs_and_its_upgrade_is_taken_in_place() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        panic!("dpkg-deb is missing: the package test runs on Debian");
    }
    let dir = scratch();
    let first = build(dir.path(), 1);

    // What is in it.
    let (ok, contents) = run("dpkg-deb", &["-c", first.to_str().unwrap()]);
    assert!(ok, "{contents}");
    for path in [
        "./usr/bin/ws-subprocess",
        "./usr/lib/systemd/system/ws-subprocess.service",
        "./etc/ws-subprocess/ws-subprocess.toml",
        "./usr/share/man/man1/ws-subprocess.1.gz",
        "./usr/share/man/man1/ws-subprocess-mint-token.1.gz",
        "./usr/share/bash-completion/completions/ws-subprocess",
        "./usr/share/zsh/vendor-completions/_ws-subprocess",
        "./usr/share/fish/vendor_completions.d/ws-subprocess.fish",
        "./usr/share/ws-subprocess/systemd-252.conf",
        "./usr/share/doc/ws-subprocess/copyright",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(path)), "{path} is not in the package:\n{contents}");
    }
    let control = Command::new("sh")
        .arg("-c")
        .arg(format!("dpkg-deb --ctrl-tarfile '{}' | tar -xO ./conffiles", first.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&control.stdout).trim(), "/etc/ws-subprocess/ws-subprocess.toml");
    let (_, unit) = run(
        "sh",
        &[
            "-c",
            &format!(
                "dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/lib/systemd/system/ws-subprocess.service",
                first.display()
            ),
        ],
    );
    assert!(unit.contains("Type=notify-reload") && unit.contains("ExecStart=/usr/bin/ws-subprocess "), "{unit}");

    if !rustix::process::geteuid().is_root() {
        // Past the harness's capture, so the skip shows.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "not root: the package was built and checked, but not installed (CI installs it)"
        );
        return;
    }
    let had_user = run("getent", &["passwd", PACKAGE]).0;
    // A package left by a run that was killed goes first.
    let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
    let _installed = Installed { had_user };
    let (ok, log) = run("dpkg", &["-i", first.to_str().unwrap()]);
    assert!(ok, "dpkg -i: {log}");
    let (_, status) = run("dpkg-query", &["-W", "-f=${Status} ${Version}", PACKAGE]);
    assert_eq!(status, "install ok installed 0.1.0-1");
    assert!(run("getent", &["passwd", PACKAGE]).0, "the package made no user for the service");
    let (ok, help) = run("/usr/bin/ws-subprocess", &["--help"]);
    assert!(ok && help.contains("Usage: ws-subprocess"), "{help}");
    assert!(Path::new("/etc/ws-subprocess/ws-subprocess.toml").exists());

    // The installed binary serves a session.
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let config = dir.path().join("test.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\ncontroller_url = \"{}\"\ncgroup = \"off\"\n", controller.url()),
    )
    .unwrap();
    let server =
        Binary::start_program("/usr/bin/ws-subprocess", &[], &["--config", config.to_str().unwrap()], &[], dir.path())
            .await;
    let pid = server.pid();
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    echoes(&mut ws, "before the upgrade").await;
    let cat = children_of(pid);

    // The next revision: its postinst asks the running server to take the
    // new binary in place.
    let second = build(dir.path(), 2);
    let (ok, log) = run("dpkg", &["-i", second.to_str().unwrap()]);
    assert!(ok, "dpkg -i: {log}");
    assert!(log.contains(&format!("asking the server {pid} to upgrade in place")), "{log}");
    server.wait_for_log("executing the new binary", 1).await;
    assert!(
        eventually(Duration::from_secs(10), || server.log().matches("listening").count() >= 2).await,
        "{}",
        server.log()
    );
    assert_eq!(server.pid(), pid);
    assert_eq!(children_of(pid), cat, "the session's process changed");
    echoes(&mut ws, "after the upgrade").await;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, Path::new("/usr/bin/ws-subprocess"), "the server runs the new file");
    let (_, status) = run("dpkg-query", &["-W", "-f=${Version}", PACKAGE]);
    assert_eq!(status, "0.1.0-2");
}
