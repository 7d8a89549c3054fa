//! Order-preserving bidirectional streams (ScoreStream, ClassifyBatch).
//!
//! Each inbound message is handled in its own task (so a stream's messages batch with each other
//! and with other clients' work) while a forwarder awaits the tasks in arrival order, so replies
//! come back in request order. At most `MAX_IN_FLIGHT` messages of one stream are in progress; each
//! waits for an admission permit rather than failing. The first failed message ends the stream
//! with its status; a client that goes away stops the reading and drops the queued work. When the
//! server shuts down, a stream stops reading, answers every message it took, then ends with
//! UNAVAILABLE: a long-lived batch stream would otherwise hold the drain open until the shutdown
//! timeout and be cut mid-answer, while this way the client resends the rest to another replica.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use crate::error::Error;
use crate::state::{AppState, Call};

/// Messages of one stream in progress at once.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Serve `inbound` with `handle`, replying in order; `md` is the stream's metadata (its deadline
/// and trace context apply to every message).
pub fn ordered<Req, Resp, F, Fut>(
    state: Arc<AppState>,
    md: &MetadataMap,
    mut inbound: Streaming<Req>,
    method: &'static str,
    handle: F,
) -> ReceiverStream<Result<Resp, Status>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Arc<AppState>, Req, Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let deadline: Option<Instant> = crate::state::deadline(md);
    let trace = Arc::new(crate::state::trace_context(md));
    let (tx, rx) = mpsc::channel::<Result<Resp, Status>>(64);
    let (order_tx, mut order_rx) = mpsc::channel::<JoinHandle<Result<Resp, Status>>>(MAX_IN_FLIGHT);
    let out = tx.clone();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        while let Some(h) = order_rx.recv().await {
            let r = h.await.unwrap_or_else(|e| {
                Err(Error::Internal(format!("stream item task failed: {e}")).into())
            });
            let failed = r.is_err();
            if out.send(r).await.is_err() || failed {
                return;
            }
        }
        // Every message taken is answered; say why the stream ends if the server is going away.
        if closed_rx.await.is_ok() {
            let _ = out
                .send(Err(Status::unavailable(
                    "server shutting down: the messages sent so far are answered, send the rest to another replica",
                )))
                .await;
        }
    });
    tokio::spawn(async move {
        let mut closed_tx = Some(closed_tx);
        loop {
            tokio::select! {
                _ = state.closed() => {
                    if let Some(c) = closed_tx.take() {
                        let _ = c.send(());
                    }
                    break;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        let st = state.clone();
                        let h = handle.clone();
                        let trace = trace.clone();
                        let task = tokio::spawn(async move {
                            let call = st.begin_stream_item(method, deadline, &trace).await.map_err(Status::from)?;
                            h(st, req, call).await
                        });
                        if order_tx.send(task).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "inbound stream ended with an error");
                        break;
                    }
                },
                _ = tx.closed() => break,
            }
        }
    });
    ReceiverStream::new(rx)
}
