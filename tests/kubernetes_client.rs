//! An existing Kubernetes exec client, unchanged, against ws-subprocess:
//! the official Python client (`pip install kubernetes`), with the server's
//! endpoint at the path a Kubernetes API server would serve exec on.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn official_python_client_runs_an_exec() {
    let controller = Controller::shell("cat; echo 'to stderr' >&2; exit 3").await;
    let mut config = config_for(&controller);
    config.path = "/api/v1/namespaces/default/pods/demo/exec".into();
    let server = TestServer::start(config).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/k8s_exec.py");
    let host = format!("http://{}", server.addr);
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&host)
        .arg("client-token")
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the client failed (is the `kubernetes` Python package installed? .ci/run installs it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["protocol"], "v5.channel.k8s.io");
    assert_eq!(summary["stdout"], "hello from the kubernetes client\nand some bytes\n");
    assert_eq!(summary["stderr"], "to stderr\n");
    assert_eq!(summary["returncode"], 3);
    assert_eq!(controller.requests()[0].token().as_deref(), Some("client-token"));
}
