//! The `openai` teacher: any OpenAI-compatible `/chat/completions` endpoint (hosted APIs, vLLM,
//! llama.cpp server, Ollama).
//!
//! Built for long, paid runs: a concurrency limit, retries with exponential backoff on 429 (the
//! server's `Retry-After` wins) and 5xx and on timeouts, a per-request timeout, and a disk cache
//! keyed by (model, prompt) consulted before every request, so a rerun after a crash sends only
//! what was never answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};
use serde_json::json;

use super::cache::DiskCache;
use super::{clean_rationale, prompt, Prompt, RationaleRequest, Teacher, TeacherError};

/// Longest wait honoured from a `Retry-After` header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Endpoint, model and limits of an OpenAI-compatible teacher.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL up to and including the version (`https://api.openai.com/v1`,
    /// `http://localhost:8000/v1`); `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …` when present.
    pub api_key: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Retries after the first attempt (429, 5xx, timeouts, connection errors).
    pub max_retries: u32,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// First backoff delay; doubled per retry, capped at 60 s.
    pub backoff: Duration,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Reply cache; `None` disables it.
    pub cache: Option<DiskCache>,
}

/// An OpenAI-compatible chat-completions client that writes rationales.
pub struct OpenAiTeacher {
    config: OpenAiConfig,
    agent: ureq::Agent,
    sent: AtomicUsize,
}

/// One failed attempt: the error, and how long to wait before retrying (`None`: do not retry).
struct Attempt {
    error: TeacherError,
    retry_after: Option<Duration>,
}

impl OpenAiTeacher {
    pub fn new(config: OpenAiConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        OpenAiTeacher {
            config,
            agent,
            sent: AtomicUsize::new(0),
        }
    }

    /// HTTP requests sent so far (cache hits send none).
    pub fn requests_sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// The reply to one prompt: from the cache, else from the endpoint with retries.
    pub fn complete(&self, p: &Prompt) -> Result<String, TeacherError> {
        let cache = self.config.cache.as_ref();
        if let Some(hit) = cache.and_then(|c| c.get(&self.config.model, p)) {
            return Ok(hit);
        }
        let text = (|| self.attempt(p))
            .retry(self.backoff())
            .sleep(std::thread::sleep)
            .when(|a: &Attempt| a.retry_after.is_some())
            .notify(|a: &Attempt, backoff: Duration| {
                let wait = a.retry_after.unwrap_or_default();
                tracing::warn!(error = %a.error, wait_ms = wait.as_millis() as u64, "retrying");
                // The server's Retry-After wins over a shorter backoff (capped): wait out the rest.
                std::thread::sleep(wait.min(MAX_RETRY_AFTER).saturating_sub(backoff));
            })
            .call()
            .map_err(|a| a.error)?;
        if let Some(c) = cache {
            c.put(&self.config.model, p, &text)?;
        }
        Ok(text)
    }

    /// `max_retries` retries, the first after `backoff`, doubled per retry, capped at 60 s.
    fn backoff(&self) -> ExponentialBuilder {
        let cap = Duration::from_secs(60);
        ExponentialBuilder::new()
            .with_min_delay(self.config.backoff.min(cap))
            .with_factor(2.0)
            .with_max_delay(cap)
            .with_max_times(self.config.max_retries as usize)
    }

    fn attempt(&self, p: &Prompt) -> Result<String, Attempt> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": p.system},
                {"role": "user", "content": p.user},
            ],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        })
        .to_string();
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.config.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut resp = req.send(body.as_str()).map_err(transport_error)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.body_mut().read_to_string().map_err(transport_error)?;
        match status {
            200..=299 => reply_content(&text).map_err(|error| Attempt {
                error,
                retry_after: None,
            }),
            429 | 500..=599 => Err(Attempt {
                error: TeacherError::Http {
                    status,
                    body: excerpt(&text),
                },
                retry_after: Some(retry_after.unwrap_or(Duration::ZERO)),
            }),
            _ => Err(Attempt {
                error: TeacherError::Http {
                    status,
                    body: excerpt(&text),
                },
                retry_after: None,
            }),
        }
    }
}

/// Timeouts and connection failures are worth retrying.
fn transport_error(e: ureq::Error) -> Attempt {
    let error = match e {
        ureq::Error::Timeout(t) => TeacherError::Timeout(t.to_string()),
        other => TeacherError::Transport(other.to_string()),
    };
    Attempt {
        error,
        retry_after: Some(Duration::ZERO),
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(300).collect()
}

/// `choices[0].message.content` of a chat-completions reply.
fn reply_content(body: &str) -> Result<String, TeacherError> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| TeacherError::Malformed(format!("{e}: {}", excerpt(body))))?;
    v.pointer("/choices/0/message/content")
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            TeacherError::Malformed(format!(
                "no choices[0].message.content in {}",
                excerpt(body)
            ))
        })
}

impl Teacher for OpenAiTeacher {
    fn source(&self) -> String {
        format!("openai:{}", self.config.model)
    }

    fn stats(&self) -> Option<String> {
        Some(format!(
            "{} HTTP requests sent (cache hits send none)",
            self.requests_sent()
        ))
    }

    /// Runs up to `concurrency` requests at once on scoped threads; results keep request order.
    fn rationalize(&self, batch: &[RationaleRequest<'_>]) -> Vec<Result<String, TeacherError>> {
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<String, TeacherError>>>> =
            batch.iter().map(|_| Mutex::new(None)).collect();
        let workers = self.config.concurrency.clamp(1, batch.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = batch.get(i) else { break };
                    let out = prompt(req)
                        .and_then(|p| self.complete(&p))
                        .and_then(|t| clean_rationale(req.task, &t));
                    *results[i].lock().expect("no panics while held") = Some(out);
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .expect("unpoisoned")
                    .expect("every request ran")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::teacher::tests::{example, sst2};

    /// What the test server does with one request.
    enum Reply {
        Status(u16, &'static str, String),
        Hang(Duration),
    }

    fn ok(content: &str) -> Reply {
        let body = json!({"choices": [{"message": {"role": "assistant", "content": content}}]});
        Reply::Status(200, "", body.to_string())
    }

    /// A chat-completions server on 127.0.0.1:0 answering requests with `replies` in order;
    /// returns its base URL and a counter of requests received.
    fn serve(replies: Vec<Reply>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for reply in replies {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut len = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                assert!(String::from_utf8_lossy(&body).contains("chat") || len > 0);
                seen.fetch_add(1, Ordering::SeqCst);
                let mut stream = reader.into_inner();
                match reply {
                    // Hold the connection open without answering, and take the next request.
                    Reply::Hang(d) => drop(std::thread::spawn(move || {
                        std::thread::sleep(d);
                        drop(stream);
                    })),
                    Reply::Status(code, headers, body) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                }
            }
        });
        (url, count)
    }

    fn teacher(url: &str, cache: Option<DiskCache>) -> OpenAiTeacher {
        OpenAiTeacher::new(OpenAiConfig {
            base_url: url.into(),
            model: "test-model".into(),
            api_key: Some("k".into()),
            concurrency: 2,
            max_retries: 2,
            timeout: Duration::from_millis(500),
            backoff: Duration::from_millis(10),
            max_tokens: 64,
            temperature: 0.0,
            cache,
        })
    }

    fn ask(t: &OpenAiTeacher) -> Result<String, TeacherError> {
        let task = sst2();
        let ex = example("a", "a fine film", "positive");
        let req = RationaleRequest {
            task: &task,
            example: &ex,
            label: "negative",
        };
        t.rationalize(&[req]).pop().unwrap()
    }

    #[test]
    fn success_strips_an_echoed_answer_line() {
        let (url, n) = serve(vec![ok("Fine can be faint praise.\nAnswer: negative")]);
        assert_eq!(
            ask(&teacher(&url, None)).unwrap(),
            "Fine can be faint praise."
        );
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn honours_retry_after_on_429() {
        let (url, n) = serve(vec![
            Reply::Status(429, "Retry-After: 1\r\n", "{}".into()),
            ok("Because."),
        ]);
        let t0 = Instant::now();
        assert_eq!(ask(&teacher(&url, None)).unwrap(), "Because.");
        assert!(
            t0.elapsed() >= Duration::from_millis(950),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn retries_a_500_then_succeeds_and_gives_up_on_400() {
        let (url, n) = serve(vec![Reply::Status(500, "", "oops".into()), ok("Ok.")]);
        assert_eq!(ask(&teacher(&url, None)).unwrap(), "Ok.");
        assert_eq!(n.load(Ordering::SeqCst), 2);
        let (url, n) = serve(vec![Reply::Status(400, "", "bad".into()), ok("never")]);
        let e = ask(&teacher(&url, None)).unwrap_err();
        assert!(matches!(e, TeacherError::Http { status: 400, .. }), "{e}");
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn times_out_after_retries() {
        let hang = || Reply::Hang(Duration::from_secs(2));
        let (url, n) = serve(vec![hang(), hang(), hang()]);
        let t0 = Instant::now();
        let e = ask(&teacher(&url, None)).unwrap_err();
        assert!(matches!(e, TeacherError::Timeout(_)), "{e}");
        assert_eq!(n.load(Ordering::SeqCst), 3, "first try + 2 retries");
        assert!(t0.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn malformed_body_is_an_error_not_a_retry() {
        let (url, n) = serve(vec![
            Reply::Status(200, "", "{\"choices\": []}".into()),
            Reply::Status(200, "", "not json".into()),
        ]);
        let t = teacher(&url, None);
        assert!(matches!(ask(&t).unwrap_err(), TeacherError::Malformed(_)));
        assert!(matches!(ask(&t).unwrap_err(), TeacherError::Malformed(_)));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn resumes_from_the_cache_without_a_second_request() {
        let dir = tempfile::tempdir().unwrap();
        let (url, n) = serve(vec![ok("Cached."), ok("Second call must not happen.")]);
        let first = teacher(&url, Some(DiskCache::new(dir.path())));
        assert_eq!(ask(&first).unwrap(), "Cached.");
        drop(first); // a new process: only the disk cache survives
        let second = teacher(&url, Some(DiskCache::new(dir.path())));
        assert_eq!(ask(&second).unwrap(), "Cached.");
        assert_eq!(second.requests_sent(), 0);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
