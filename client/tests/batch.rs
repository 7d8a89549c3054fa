//! End-to-end tests of `rllr batch` against a real server with tiny random models: resuming after
//! SIGKILLs (and a crash hook) gives exactly the uninterrupted output; a server restart mid-job is
//! ridden out; bad records are reported by line and skipped or fail the job without losing rows.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rllr_client::batch::{self, BatchConfig};
use rllr_client::ClientConfig;
use rllr_server::testutil::{config, model_root, start, url, LABELS};

const RLLR: &str = env!("CARGO_BIN_EXE_rllr");

fn write_input(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(
            &serde_json::json!({"id": format!("r{i}"), "text": format!("A man number {i} sleeps on a couch."), "text_pair": format!("Person {} rests.", i % 7), "label": LABELS[i % 3]})
                .to_string(),
        );
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn batch_cmd(url: &str, input: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(RLLR);
    c.args([
        "--endpoint",
        url,
        "batch",
        "--model",
        "pol",
        "--max-new-tokens",
        "8",
    ])
    .args(["--concurrency", "8", "--no-progress", "--input"])
    .arg(input)
    .arg("--out")
    .arg(out)
    .args(extra)
    .env_remove("RLLR_CLIENT_API_KEY")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

async fn output(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The output's records keyed by id, without the timing fields; panics on a duplicate id.
fn rows(path: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v.as_object_mut().unwrap().remove("timings");
        let id = v["id"].as_str().unwrap().to_string();
        assert!(m.insert(id.clone(), v).is_none(), "duplicate id {id}");
    }
    m
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(batch::summary_path(out)).unwrap()).unwrap()
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_three_times_and_resumed_equals_an_uninterrupted_run() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let url = url(&server);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 500);

    let reference = dir.path().join("ref.jsonl");
    let o = output(batch_cmd(&url, &input, &reference, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let want = rows(&reference);
    assert_eq!(want.len(), 500);
    assert!(want
        .values()
        .all(|r| r["label"].is_string() && r["gold"].is_string()));

    let out = dir.path().join("out.jsonl");
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut lines_after_kill = Vec::new();
    for k in 0..3 {
        if k < 2 {
            // A true SIGKILL at a random moment while the job runs.
            // A true SIGKILL at a random point of the job: once it has written a random number
            // of new rows (polled every millisecond; it keeps writing until the signal lands).
            let done = line_count(&out);
            let target = done + rng.random_range(20..(500 - done) / 2);
            let mut child = batch_cmd(&url, &input, &out, &[]).spawn().unwrap();
            while line_count(&out) < target {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the job ended before kill {k}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        } else {
            // The crash hook: abort() right after a random row, without flush or fsync.
            let n: usize = rng.random_range(10..(500 - line_count(&out)) / 2);
            let o = output(batch_cmd(
                &url,
                &input,
                &out,
                &["--stop-after", &n.to_string()],
            ))
            .await;
            assert!(!o.status.success(), "the crash hook did not fire");
        }
        let n = line_count(&out);
        assert!(n > 0 && n < 500, "kill {k} left {n} rows");
        lines_after_kill.push(n);
        if k == 0 {
            // What a kill in the middle of a write leaves: a torn last line.
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
            f.write_all(b"{\"id\":\"r499\",\"label\":\"neu").unwrap();
        }
    }
    assert!(
        lines_after_kill.windows(2).all(|w| w[0] <= w[1]),
        "{lines_after_kill:?}"
    );
    let o = output(batch_cmd(&url, &input, &out, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("rows after each kill: {lines_after_kill:?}; {}", text(&o));
    let got = rows(&out);
    assert_eq!(got.len(), 500);
    assert_eq!(line_count(&out), 500);
    for (id, r) in &want {
        let g = &got[id];
        for f in [
            "label",
            "rationale",
            "gold",
            "finish_reason",
            "generated_tokens",
            "model",
            "model_revision",
        ] {
            assert_eq!(g[f], r[f], "{id}.{f}");
        }
        let rev = g["model_revision"].as_str().unwrap();
        assert!(rev.starts_with("sha256:") && rev.len() == 71, "{id}: {rev}");
        let (a, b) = (
            g["confidence"].as_f64().unwrap(),
            r["confidence"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-4, "{id}.confidence {a} vs {b}");
    }
    let summary = summary(&out);
    assert_eq!(summary["already_done"], lines_after_kill[2]);
    assert_eq!(summary["written"], 500 - lines_after_kill[2]);
    let acc = &summary["accuracy"];
    assert_eq!(acc["n"], 500);
    let total: u64 = acc["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(total, 500);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A server in a runtime of its own, so that stopping it ends every connection and task at once,
/// as when a server process exits or crashes (an in-process `shutdown` leaves open streams alive).
struct ServerProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    fn start(cfg: rllr_server::ServerConfig) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let server = rt.block_on(async {
                let s = start(cfg).await;
                ready_tx.send(()).unwrap();
                let _ = stop_rx.await;
                s
            });
            rt.shutdown_background(); // drops every connection mid-stream
            server.registry.clear();
        });
        ready_rx.recv().unwrap();
        ServerProcess {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_restart_mid_job_is_retried_and_the_job_completes() {
    let root = model_root();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = || {
        let mut c = config(root.path());
        c.listen = format!("127.0.0.1:{port}");
        c
    };
    let server = ServerProcess::start(cfg());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let out = dir.path().join("out.jsonl");
    write_input(&input, 300);
    let client = ClientConfig::new([format!("http://127.0.0.1:{port}")])
        .connect()
        .unwrap();
    let mut bc = BatchConfig::new(&input, &out);
    bc.model = "pol".into();
    bc.params.max_new_tokens = Some(8);
    bc.concurrency = 4;
    bc.request_timeout = Duration::from_secs(5);
    bc.give_up_after = Duration::from_secs(30);
    let job = tokio::spawn(async move { batch::run(&client, bc).await });
    while line_count(&out) < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::spawn_blocking(move || server.kill())
        .await
        .unwrap();
    let at_stop = line_count(&out);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if job.is_finished() {
        panic!(
            "the job must wait for the server: {:?} ({} rows)",
            job.await.unwrap(),
            line_count(&out)
        );
    }
    assert_eq!(
        line_count(&out),
        at_stop,
        "rows kept coming while the server was down"
    );
    let server = ServerProcess::start(cfg());
    let s = tokio::time::timeout(Duration::from_secs(120), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    eprintln!("stopped at {at_stop} rows; {} retries", s.retries);
    assert!(s.retries >= 1, "{s:?}");
    assert!(at_stop < 300);
    assert_eq!(rows(&out).len(), 300);
    assert_eq!(line_count(&out), 300);
    assert!(s.failed.is_empty());
    tokio::task::spawn_blocking(move || server.kill())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_records_are_reported_by_line_and_skipped_or_fail_the_job() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let url = url(&server);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    write_input(&good, 20);
    let lines: Vec<String> = std::fs::read_to_string(&good)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // Line 5 is not JSON, line 9 has no text, line 13 repeats the id of line 1.
    let mut bad_lines = lines.clone();
    bad_lines.insert(4, "{\"id\": \"x\", \"text\": ".into());
    bad_lines.insert(8, "{\"id\": \"y\"}".into());
    bad_lines.insert(12, "{\"id\": \"r0\", \"text\": \"again\"}".into());
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, bad_lines.join("\n") + "\n").unwrap();

    // 10 rows already done.
    let first = dir.path().join("first.jsonl");
    std::fs::write(&first, lines[..10].join("\n") + "\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let o = output(batch_cmd(&url, &first, &out, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let before = std::fs::read(&out).unwrap();
    assert_eq!(line_count(&out), 10);

    // fail: non-zero, the first bad line named, the output untouched.
    let o = output(batch_cmd(&url, &bad, &out, &["--on-bad-record", "fail"])).await;
    let msg = text(&o);
    assert!(!o.status.success());
    assert!(
        msg.contains("line 5") && msg.contains("invalid JSON") && msg.contains("3 bad record(s)"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), before);

    // skip (the default): every bad line reported, the 10 new good rows appended after the old.
    let o = output(batch_cmd(&url, &bad, &out, &[])).await;
    let msg = text(&o);
    assert!(o.status.success(), "{msg}");
    for want in [
        "line 5: invalid JSON",
        "line 9: no text",
        "line 13: duplicate id 'r0' (first at line 1)",
    ] {
        assert!(msg.contains(want), "missing '{want}' in {msg}");
    }
    let after = std::fs::read(&out).unwrap();
    assert_eq!(&after[..before.len()], &before[..]);
    let got = rows(&out);
    assert_eq!(got.len(), 20);
    assert_eq!(
        got.keys().cloned().collect::<HashSet<_>>(),
        (0..20).map(|i| format!("r{i}")).collect()
    );
    assert_eq!(got["r0"]["gold"], LABELS[0]);
    let summary = summary(&out);
    assert_eq!(summary["bad_records"].as_array().unwrap().len(), 3);
    assert_eq!(
        (
            summary["already_done"].as_u64(),
            summary["written"].as_u64()
        ),
        (Some(10), Some(10))
    );

    // CSV: a row with the wrong number of fields is reported with its line.
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "id,text,text_pair,label\nc1,\"A man, asleep.\",A person rests.,entailment\nc2,short\nc3,A dog runs.,An animal moves.,neutral\n").unwrap();
    let csv_out = dir.path().join("csv.jsonl");
    let o = output(batch_cmd(&url, &csv, &csv_out, &[])).await;
    let msg = text(&o);
    assert!(
        o.status.success() && msg.contains("line 3: expected 4 fields, found 2"),
        "{msg}"
    );
    assert_eq!(
        rows(&csv_out).keys().cloned().collect::<Vec<_>>(),
        ["c1", "c3"]
    );
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_shards_merge_into_the_whole_input_and_a_lost_shard_is_caught() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let url = url(&server);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 24);
    let mut outs = Vec::new();
    for i in 0..3 {
        let out = dir.path().join(format!("shard-{i}.jsonl"));
        // Shard 2 takes its index from the Indexed Job's variable.
        let shard = if i == 2 {
            "auto/3".to_string()
        } else {
            format!("{i}/3")
        };
        let mut c = batch_cmd(&url, &input, &out, &["--shard", &shard]);
        c.env("JOB_COMPLETION_INDEX", "2");
        let o = output(c).await;
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(summary(&out)["shard"]["index"], i);
        outs.push(out);
    }
    let sizes: Vec<usize> = outs.iter().map(|o| line_count(o)).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 24, "{sizes:?}");

    // Resuming shard 0's output as shard 1 would mix shards: refused, output untouched.
    let before = std::fs::read(&outs[0]).unwrap();
    let o = output(batch_cmd(&url, &input, &outs[0], &["--shard", "1/3"])).await;
    assert!(!o.status.success());
    assert!(text(&o).contains("not in shard 1/3"), "{}", text(&o));
    assert_eq!(std::fs::read(&outs[0]).unwrap(), before);

    let merged = dir.path().join("merged.jsonl");
    let merge = |shards: &[std::path::PathBuf]| {
        let mut c = Command::new(RLLR);
        c.args(["merge", "--input"])
            .arg(&input)
            .arg("--out")
            .arg(&merged)
            .args(shards)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let o = output(merge(&outs[..2])).await;
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("{} missing id(s)", sizes[2])),
        "{}",
        text(&o)
    );
    assert!(!merged.exists());

    let o = output(merge(&outs)).await;
    assert!(o.status.success(), "{}", text(&o));
    let ids: Vec<String> = std::fs::read_to_string(&merged)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, (0..24).map(|i| format!("r{i}")).collect::<Vec<_>>());
    let s = summary(&merged);
    assert_eq!(
        (s["complete"].as_bool(), s["accuracy"]["n"].as_u64()),
        (Some(true), Some(24))
    );
}
