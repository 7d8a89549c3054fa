//! Order-preserving bidirectional streams (ScoreStream, ClassifyBatch).
//!
//! Each inbound message is handled in its own task (so a stream's messages batch with each other
//! and with other clients' work) while a forwarder awaits the tasks in arrival order, so replies
//! come back in request order. At most `MAX_IN_FLIGHT` messages of one stream are in progress; each
//! waits for an admission permit rather than failing. The first failed message ends the stream
//! with its status; a client that goes away stops the reading and drops the queued work.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::error::Error;
use crate::state::{AppState, Call};

/// Messages of one stream in progress at once.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Serve `inbound` with `handle`, replying in order.
pub fn ordered<Req, Resp, F, Fut>(
    state: Arc<AppState>,
    mut inbound: Streaming<Req>,
    method: &'static str,
    deadline: Option<Instant>,
    handle: F,
) -> ReceiverStream<Result<Resp, Status>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Arc<AppState>, Req, Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Resp, Status>>(64);
    let (order_tx, mut order_rx) = mpsc::channel::<JoinHandle<Result<Resp, Status>>>(MAX_IN_FLIGHT);
    let out = tx.clone();
    tokio::spawn(async move {
        while let Some(h) = order_rx.recv().await {
            let r = h.await.unwrap_or_else(|e| {
                Err(Error::Internal(format!("stream item task failed: {e}")).into())
            });
            let failed = r.is_err();
            if out.send(r).await.is_err() || failed {
                break;
            }
        }
    });
    tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        let st = state.clone();
                        let h = handle.clone();
                        let task = tokio::spawn(async move {
                            let call = st.begin_stream_item(method, deadline).await.map_err(Status::from)?;
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
