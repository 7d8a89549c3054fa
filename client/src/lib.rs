//! rllr-client: a typed async client for rllr-server, and the batch classification job behind
//! `rllr batch`.
//!
//! The generated stubs (`rllr_proto::v1`) speak the protocol; this crate adds what every caller
//! would otherwise write again: endpoints with TLS and a bearer token, round-robin over several
//! servers that skips one that just failed, per-call deadlines, retries with exponential backoff and
//! jitter on UNAVAILABLE / RESOURCE_EXHAUSTED that never sleep past the deadline, and cancellation
//! by dropping the future (tonic resets the HTTP/2 stream; the server drops queued work).
//!
//! ```no_run
//! # async fn demo() -> Result<(), rllr_client::Error> {
//! use rllr_client::{ClientConfig, v1};
//! let client = ClientConfig::new(["http://127.0.0.1:50051"]).api_key("secret").connect()?;
//! let out = client.classify(v1::ClassifyRequest {
//!     inputs: vec![v1::Input { text: "A great film.".into(), text_pair: None }],
//!     ..Default::default()
//! }).await?;
//! println!("{}", out.results[0].label);
//! # Ok(()) }
//! ```

pub mod batch;
pub mod client;
pub mod error;
pub mod input;
pub mod merge;
pub mod pool;
pub mod report;
pub mod resume;
pub mod retry;
pub mod shard;

pub use client::{Client, ClientConfig};
pub use error::{Error, Result};
pub use retry::RetryPolicy;
/// The generated `rllr.v1` messages and stubs.
pub use rllr_proto::v1;
