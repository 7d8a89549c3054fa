//! The Python grpcio client (generated from the same proto) against a live server. Ignored by
//! default because it needs `pip install grpcio grpcio-tools`; `.ci/run` installs those and runs it.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio and grpcio-tools (run by .ci/run)"]
async fn python_grpcio_client() {
    let root = common::model_root();
    let server = common::start(common::config(root.path())).await;
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_client.py");
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &addr, proto])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "python client failed:\n{text}");
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
