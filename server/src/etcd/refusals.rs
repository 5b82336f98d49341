//! A log line for each etcd request refused as bad input — malformed or oversized messages,
//! unknown methods, invalid arguments, revisions compacted away — at most one a second per
//! gRPC status code, each saying how many it stands for: a flood of bad requests costs a few
//! lines, and every other client carries on (the refusal itself is the request's status).
//!
//! It is a layer around every service of the etcd port, so it also sees what tonic refuses
//! before any handler runs (a message that does not decode, a method no service has). A
//! unary call's error comes back as a trailers-only answer, its status in the headers, which
//! is what this reads; a stream's status at its end is not seen here (the Watch service logs
//! its own cancellations).
//!
//! The same layer counts every request by RPC and status (`grpc_server_handled_total` on
//! `/metrics`, as etcd's): a stream counts as it starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::http;

/// gRPC status codes that mean the client sent something wrong (or too much).
fn is_refusal(code: i32) -> bool {
    // INVALID_ARGUMENT, RESOURCE_EXHAUSTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL (tonic's
    // answer to a message that does not decode).
    matches!(code, 3 | 8 | 11 | 12 | 13)
}

/// Per status code: when a line was last written, and how many were left out since.
static LAST: Mutex<[(Option<Instant>, u64); 17]> = Mutex::new([(None, 0); 17]);

/// Logs a refusal of `method` with `code` and `message`, at most once a second per code.
pub fn note(method: &str, code: i32, message: &str) {
    let Ok(slot) = usize::try_from(code) else { return };
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let Some((at, skipped)) = last.get_mut(slot) else { return };
    let now = Instant::now();
    if at.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
        *skipped += 1;
        return;
    }
    *at = Some(now);
    let also = std::mem::take(skipped);
    tracing::warn!(method, code, message, also, "etcd request refused");
}

/// The layer (`tonic::transport::Server::layer`), counting into the server's
/// [`crate::runtime::GrpcHandled`].
#[derive(Clone)]
pub struct LogRefusalsLayer(pub std::sync::Arc<crate::runtime::Shared>);

impl<S> tower::Layer<S> for LogRefusalsLayer {
    type Service = LogRefusals<S>;
    fn layer(&self, inner: S) -> LogRefusals<S> {
        LogRefusals { inner, shared: self.0.clone() }
    }
}

/// A service whose refusals are logged and whose requests are counted.
#[derive(Clone)]
pub struct LogRefusals<S> {
    inner: S,
    shared: std::sync::Arc<crate::runtime::Shared>,
}

impl<S> std::fmt::Debug for LogRefusals<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogRefusals")
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for LogRefusals<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // A Uri clone is a reference count: nothing is copied unless a line is written.
        let uri = request.uri().clone();
        let answer = self.inner.call(request);
        let shared = self.shared.clone();
        Box::pin(async move {
            let response = answer.await?;
            let headers = response.headers();
            let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            // No status in the headers: the answer (or stream) is under way, its status OK so far.
            shared.etcd_handled.count(uri.path(), code.unwrap_or(0));
            if let Some(code) = code.filter(|c| is_refusal(*c)) {
                let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
                note(uri.path(), code, message);
            }
            Ok(response)
        })
    }
}
