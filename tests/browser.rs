//! The browser demo in a real headless Chromium: the xterm.js page of
//! `example/`, a bash on a terminal, typing, resizing, nano, the exit
//! status. Needs `chromium` and `npm ci --prefix example/web` (.ci/run
//! installs both).

mod common;

#[path = "../example/controller.rs"]
#[allow(dead_code)]
mod demo;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn xterm_page_runs_bash_and_nano_in_chromium() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("example/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "run `npm ci --prefix example/web` first (.ci/run does)"
    );
    let placeholder = Controller::allowing("/bin/false", &[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let demo_addr = listener.local_addr().unwrap();
    let mut config = config_for(&placeholder);
    config.controller_url = format!("http://{demo_addr}/ws-controller").parse().unwrap();
    let server = TestServer::start(config).await;
    let command = vec!["/bin/bash".into(), "--norc".into(), "--noprofile".into()];
    let demo = demo::Demo::new(format!("ws://{}/ws", server.addr), command).tty(true).assets(web.join("node_modules"));
    tokio::spawn(demo::serve(listener, demo));

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
}
