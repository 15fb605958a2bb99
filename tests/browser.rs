//! The one-command demo in a real headless Chromium, started as a newcomer
//! starts it (`cargo run --example demo`, the user's shell on a
//! terminal): the xterm.js page, typing, resizing, a reload that finds the
//! same shell, an observer tab, nano, the exit status, Ctrl-C. Needs
//! `chromium` and `npm ci --prefix example/web` (.ci/run installs both).
//! `docs/demo.png` in the README is the screenshot this test takes.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn the_demo_runs_the_users_shell_and_nano_in_chromium() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("example/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "run `npm ci --prefix example/web` first (.ci/run does)"
    );
    let home = scratch();
    let home_dir = home.path().to_str().unwrap();
    let mut demo = DemoProcess::start(&[], &[("SHELL", "/bin/bash"), ("HOME", home_dir)]).await;
    let demo_addr = demo.page;
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-nano.png");
    let output = tokio::process::Command::new("node")
        .arg(web.join("browser-test.mjs"))
        .arg(format!("http://{demo_addr}/"))
        .arg(&screenshot)
        .env("TERM", "dumb")
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results["status"], "exited: 5");
    assert_eq!(results["reloaded"], true, "a reload did not get the same session back");
    assert_eq!(results["watched"], true);
    assert_ne!(results["size"], results["resized"]);
    assert!(screenshot.exists());
    // Ctrl-C stops it all, and no process is left behind.
    let pid = demo.child.id().unwrap() as i32;
    assert!(eventually(Duration::from_secs(5), || children_of(pid).is_empty()).await, "{}", demo.output());
    assert_eq!(demo.interrupt(Duration::from_secs(10)).await, Some(0), "{}", demo.output());
    assert!(demo.output().contains("(controller mode) running [\"/bin/bash\"] on a terminal"), "{}", demo.output());
}
