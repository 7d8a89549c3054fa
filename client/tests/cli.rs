//! The `rllr` one-off commands against a real server: models, classify, score from stdin,
//! compare, health; bearer auth; failover from a dead endpoint; clear errors and exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rllr_client::{v1, ClientConfig};
use rllr_server::testutil::{config, model_root, start, url};

fn rllr(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rllr"));
    c.args(args)
        .env_remove("RLLR_CLIENT_API_KEY")
        .env_remove("RLLR_CLIENT_ENDPOINTS")
        .env_remove("RLLR_API_KEY")
        .env_remove("RLLR_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut sin = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        sin.write_all(s.as_bytes()).unwrap();
    }
    drop(sin);
    child.wait_with_output().unwrap()
}

async fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        rllr(&a, stdin.as_deref())
    })
    .await
    .unwrap()
}

fn classify_req(text: &str, max_new_tokens: u32) -> v1::ClassifyRequest {
    v1::ClassifyRequest {
        inputs: vec![v1::Input {
            text: text.into(),
            text_pair: Some("A person rests.".into()),
        }],
        model: "pol".into(),
        params: Some(v1::GenerationParams {
            max_new_tokens: Some(max_new_tokens),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `rllr <conn...> --output json models`: how many models it lists.
async fn model_count(conn: &[&str]) -> usize {
    let args = [conn, &["--output", "json", "models"]].concat();
    json_lines(&run(&args, None).await).len()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_off_commands_auth_failover_and_errors() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.api_key = Some("sesame".into());
    let server = start(cfg).await;
    let u = url(&server);
    let base = [
        "--endpoint",
        u.as_str(),
        "--api-key",
        "sesame",
        "--output",
        "json",
    ];
    fn with<'a>(base: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
        [base, rest].concat()
    }

    let models = json_lines(&run(&with(&base, &["models"]), None).await);
    let names: Vec<_> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pol", "pol-chat", "rm", "rm2"]);
    assert_eq!(models[2]["kind"], "reward");
    assert!(models[2]["revision"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    let info = json_lines(&run(&with(&base, &["info"]), None).await);
    assert_eq!(info[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info[0]["device"], "cpu");

    let c = json_lines(
        &run(
            &with(
                &base,
                &[
                    "classify",
                    "--model",
                    "pol",
                    "--max-new-tokens",
                    "8",
                    "--text",
                    "A man sleeps.",
                    "--text",
                    "A dog runs.",
                    "--text-pair",
                    "Someone rests.",
                ],
            ),
            None,
        )
        .await,
    );
    assert_eq!(c.len(), 2);
    assert_eq!(c[1]["id"], "2");
    assert_eq!(c[0]["generated_tokens"], 8);

    let csv = "id,text,text_pair,rationale,label\na,A man sleeps.,A person rests.,Sleeping is resting.,entailment\nb,A dog runs.,A cat sits.,Different animals.,neutral\n";
    let s = json_lines(
        &run(
            &with(
                &base,
                &[
                    "score",
                    "--label-model",
                    "rm",
                    "--file",
                    "-",
                    "--input-format",
                    "csv",
                ],
            ),
            Some(csv),
        )
        .await,
    );
    assert_eq!(s.len(), 2);
    assert_eq!(s[0]["id"], "a");
    assert!(s[1]["label_reward"].as_f64().unwrap().is_finite());
    assert!(s[0]["tokens"].as_u64().unwrap() > 20);

    let cmp = json_lines(
        &run(
            &with(
                &base,
                &[
                    "compare",
                    "--label-model",
                    "rm",
                    "--text",
                    "A man sleeps.",
                    "--text-pair",
                    "A person rests.",
                    "--a-label",
                    "entailment",
                    "--b-label",
                    "contradiction",
                ],
            ),
            None,
        )
        .await,
    );
    let p = cmp[0]["probability_a"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));

    let h = run(
        &with(&base, &["health", "--service", "rllr.v1.PolicyService"]),
        None,
    )
    .await;
    assert_eq!(json_lines(&h)[0]["status"], "SERVING");

    // Table output is for people: a header and one row per model.
    let t = run(&["--endpoint", &u, "--api-key", "sesame", "models"], None).await;
    let table = String::from_utf8_lossy(&t.stdout).to_string();
    assert!(
        table.starts_with("name") && table.lines().count() == 5,
        "{table}"
    );

    // Without the token: a clear message and a non-zero exit.
    let o = run(&["--endpoint", &u, "models"], None).await;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && err.contains("error:") && err.contains("Unauthenticated"),
        "{err}"
    );

    // A dead endpoint first: the call fails over to the live one.
    let dead = "http://127.0.0.1:9";
    let both = format!("{dead},{u}");
    assert_eq!(
        model_count(&["--endpoint", &both, "--api-key", "sesame"]).await,
        4
    );
    // Only dead endpoints: non-zero, within the deadline.
    let t0 = std::time::Instant::now();
    let o = run(&["--endpoint", dead, "--timeout-s", "2", "models"], None).await;
    assert!(!o.status.success());
    assert!(t0.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("error:"), "{err}");
    let h = run(&["--endpoint", dead, "--timeout-s", "1", "health"], None).await;
    assert!(!h.status.success());

    // The library: round-robin over two endpoints, one of them dead, never fails a call.
    let client = ClientConfig::new([dead.to_string(), u.clone()])
        .api_key("sesame")
        .connect()
        .unwrap();
    for _ in 0..4 {
        let r = client
            .classify(classify_req("A man sleeps.", 4))
            .await
            .unwrap();
        assert_eq!(r.results.len(), 1);
    }
    // Cancellation: a dropped call returns at once and the client stays usable.
    let slow = client.classify(classify_req(&"x".repeat(200), 48));
    assert!(tokio::time::timeout(Duration::from_millis(1), slow)
        .await
        .is_err());
    assert_eq!(client.list_models().await.unwrap().len(), 4);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_a_private_ca() {
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.tls_cert = Some(format!("{tls}/server.pem").into());
    cfg.tls_key = Some(format!("{tls}/server.key").into());
    let server = start(cfg).await;
    let https = format!("https://localhost:{}", server.addr.port());
    let ca = format!("{tls}/ca.pem");

    assert_eq!(
        model_count(&["--endpoint", &https, "--ca-cert", &ca]).await,
        4
    );
    // By IP, checking the certificate's name explicitly.
    let by_ip = format!("https://127.0.0.1:{}", server.addr.port());
    assert_eq!(
        model_count(&[
            "--endpoint",
            &by_ip,
            "--ca-cert",
            &ca,
            "--tls-domain",
            "localhost"
        ])
        .await,
        4
    );
    // No CA: refused up front with a clear message.
    let o = run(&["--endpoint", &https, "models"], None).await;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("--ca-cert"), "{err}");
    // Plaintext against a TLS server fails (no silent downgrade).
    let plain = format!("http://127.0.0.1:{}", server.addr.port());
    let o = run(&["--endpoint", &plain, "--timeout-s", "3", "models"], None).await;
    assert!(!o.status.success());
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[test]
fn the_command_line_follows_the_conventions() {
    rllr_cli::conformance::check_binary(
        std::path::Path::new(env!("CARGO_BIN_EXE_rllr")),
        &[
            (&[], "RLLR_CLIENT_API_KEY"),
            (&["batch"], "RLLR_CLIENT_API_KEY"),
            (&[], "RLLR_API_KEY"),
        ],
    );
}
