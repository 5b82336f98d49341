//! etcd's KV and Watch APIs spoken directly: gRPC over the `h2` crate with requests encoded
//! once, for `write`, `read`, `mixed` and `watch-fanout` (`--driver wire`, the default). The load is what the
//! `etcd-client` driver sends — the same connections, requests in flight, keys and values,
//! one HTTP/2 stream per request — but without tonic's channel, tower buffer and per-call
//! encoding, the load generator spends a fraction of the CPU per request, which on a machine
//! shared with the server is CPU the server gets (see `bench/README.md`).

use std::sync::atomic::Ordering;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use prost::Message;
use tonic::codegen::http;

use baton_server::etcd::pb::etcdserverpb as pb;

use crate::load::{histogram, Window};

/// One HTTP/2 connection to `addr` (host:port), its driver running as a task.
pub async fn connect(addr: &str) -> anyhow::Result<SendRequest<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(tcp)
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// A gRPC message: the 5-byte prefix (uncompressed, length) and the encoded message.
pub fn frame(m: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + m.encoded_len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
    m.encode(&mut out).expect("a BytesMut grows as needed");
    out.freeze()
}

/// Where the calls go.
#[derive(Clone)]
pub struct Calls {
    put: http::Uri,
    range: http::Uri,
    watch: http::Uri,
}

impl Calls {
    /// Put's address.
    pub fn put(&self) -> &http::Uri {
        &self.put
    }

    /// Range's address.
    pub fn range(&self) -> &http::Uri {
        &self.range
    }

    /// Watch's address.
    pub fn watch(&self) -> &http::Uri {
        &self.watch
    }

    /// The KV service's Put and Range, and Watch, at `addr` (host:port).
    pub fn new(addr: &str) -> anyhow::Result<Calls> {
        Ok(Calls {
            put: format!("http://{addr}/etcdserverpb.KV/Put").parse()?,
            range: format!("http://{addr}/etcdserverpb.KV/Range").parse()?,
            watch: format!("http://{addr}/etcdserverpb.Watch/Watch").parse()?,
        })
    }
}

/// One unary call: `body` (a framed message) to `uri`; the answer's message bytes (framed),
/// or the gRPC error.
pub async fn unary(send: &mut SendRequest<Bytes>, uri: &http::Uri, body: Bytes) -> anyhow::Result<Bytes> {
    let request =
        http::Request::post(uri.clone()).header("content-type", "application/grpc").header("te", "trailers").body(())?;
    let mut ready = send.clone().ready().await?;
    let (response, mut stream) = ready.send_request(request, false)?;
    stream.send_data(body, true)?;
    let response = response.await?;
    let (parts, mut body) = response.into_parts();
    status(&parts.headers)?;
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    if let Some(trailers) = body.trailers().await? {
        status(&trailers)?;
    }
    Ok(data.freeze())
}

/// A watch stream on one connection: its create request sent (the request side stays open,
/// as etcd's clients keep it), its answers read as gRPC messages.
pub struct WatchStream {
    // Kept open: closing it would end the watch.
    _requests: h2::SendStream<Bytes>,
    answers: h2::RecvStream,
    buffered: BytesMut,
}

impl WatchStream {
    /// Opens a stream on `send` to `uri` (Watch's address) watching `key`; returns once
    /// etcd has said the watcher is created.
    pub async fn open(send: &SendRequest<Bytes>, uri: &http::Uri, key: &[u8]) -> anyhow::Result<WatchStream> {
        let request = http::Request::post(uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let mut ready = send.clone().ready().await?;
        let (response, mut requests) = ready.send_request(request, false)?;
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        };
        requests.send_data(frame(&create), false)?;
        let response = response.await?;
        let (parts, answers) = response.into_parts();
        status(&parts.headers)?;
        let mut stream = WatchStream { _requests: requests, answers, buffered: BytesMut::new() };
        let created = stream.next().await?.context("the watch stream ended before its watcher was created")?;
        anyhow::ensure!(created.created, "the first answer did not create the watcher: {created:?}");
        Ok(stream)
    }

    /// The next answer; `None` when the stream ends.
    pub async fn next(&mut self) -> anyhow::Result<Option<pb::WatchResponse>> {
        loop {
            if self.buffered.len() >= 5 {
                let len = u32::from_be_bytes([self.buffered[1], self.buffered[2], self.buffered[3], self.buffered[4]]);
                let end = 5 + len as usize;
                if self.buffered.len() >= end {
                    // Decoded from shared bytes: the key and value are views, not copies.
                    let message = self.buffered.split_to(end).freeze().slice(5..);
                    return Ok(Some(pb::WatchResponse::decode(message)?));
                }
            }
            match self.answers.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    let _ = self.answers.flow_control().release_capacity(chunk.len());
                    self.buffered.extend_from_slice(&chunk);
                }
                None => {
                    if let Some(trailers) = self.answers.trailers().await? {
                        status(&trailers)?;
                    }
                    return Ok(None);
                }
            }
        }
    }
}

/// An error for a grpc-status other than OK.
fn status(headers: &http::HeaderMap) -> anyhow::Result<()> {
    match headers.get("grpc-status").map(|v| v.as_bytes()) {
        None | Some(b"0") => Ok(()),
        Some(code) => anyhow::bail!(
            "gRPC status {}: {}",
            String::from_utf8_lossy(code),
            headers.get("grpc-message").map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned()).unwrap_or_default()
        ),
    }
}

/// What one worker sends.
pub struct Worker {
    pub send: SendRequest<Bytes>,
    pub calls: Calls,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub serializable: bool,
}

impl Worker {
    /// Runs until the window stops: a put or a linearizable (or serializable) range of the
    /// worker's key, as `read` decides each time.
    pub async fn run(
        mut self,
        window: Window,
        mut pacer: crate::load::Pacer,
        mut read: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let put = frame(&pb::PutRequest { key: self.key.clone(), value: self.value.clone(), ..Default::default() });
        let range =
            frame(&pb::RangeRequest { key: self.key.clone(), serializable: self.serializable, ..Default::default() });
        let mut local = histogram()?;
        let mut n = 0u64;
        while !window.stop.load(Ordering::Relaxed) {
            let start = pacer.start().await;
            if read() {
                let got = unary(&mut self.send, &self.calls.range, range.clone()).await?;
                let answer = pb::RangeResponse::decode(got.get(5..).unwrap_or_default())?;
                anyhow::ensure!(answer.kvs.len() == 1, "key {:?} missing", String::from_utf8_lossy(&self.key));
            } else {
                unary(&mut self.send, &self.calls.put, put.clone()).await?;
            }
            window.record(&mut local, &mut n, start)?;
        }
        window.add(n, &local)
    }
}
