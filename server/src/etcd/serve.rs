//! HTTP/2 on the glommio shards: the `h2` crate driven over a shard's own sockets, each
//! request handed to the etcd services (tonic's generated routing and codecs, which need no
//! runtime of their own) and each answer's frames written back as the client's flow control
//! allows. No thread hop between the socket and the write path's inbox, as the ZooKeeper
//! front has none.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::Service as _;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body::{Body as _, Frame};

use super::Services;
use crate::runtime::Shared;

/// hyper's HTTP/2 server settings (what tonic's own server uses, and this front used before
/// it served on the shards).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 20;
const MAX_SEND_BUFFER: usize = 400 << 10;
const MAX_HEADER_LIST: u32 = 16 << 10;

/// How long a stopping server's connections have to finish their requests under way.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Accepts etcd clients on `listener` and serves each on this shard until the server stops;
/// then tells them to go away and waits (at most [`STOP_GRACE`]) for their requests under
/// way (`live` counts the connections of every shard). Run it as a task of its own:
/// glommio's accept keeps a new copy of its task's waker each time the task is polled while
/// it waits, and a task woken often (by anything else it runs) overflows its reference
/// count (see `zk/tasks.rs`).
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: glommio::net::TcpListener,
    service: Services,
    live: Arc<std::sync::atomic::AtomicUsize>,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    // One waiter on the server's stop event per shard; its connections wait on this shard's
    // own signal, whose waiters go with them (the server's keeps every waker it was given).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let accepting = async {
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an etcd client failed");
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (live, stopped, service) = (live.clone(), stopped.clone(), service.clone());
            live.fetch_add(1, Ordering::AcqRel);
            let max_streams = shared.config.etcd_max_concurrent_streams;
            let tls = tls.clone();
            glommio::spawn_local(async move {
                let peer = stream.peer_addr().ok();
                match tls {
                    None => serve_connection(stream, peer, service, stopped, max_streams).await,
                    Some(tls) => match crate::runtime::tls::within_handshake_time(tls.accept(stream)).await {
                        Ok(stream) => serve_connection(stream, peer, service, stopped, max_streams).await,
                        Err(error) => {
                            TLS_REFUSED.with(|limit| {
                                if let Some(suppressed) = limit.allow(std::time::Instant::now()) {
                                    tracing::warn!(?peer, %error, suppressed, "etcd client's TLS handshake failed");
                                }
                            });
                        }
                    },
                }
                live.fetch_sub(1, Ordering::AcqRel);
            })
            .detach();
        }
    };
    futures_lite::future::or(accepting, shared.stopping.wait()).await;
    drop(listener);
    let _ = stop.send(true);
    let until = std::time::Instant::now() + STOP_GRACE;
    while live.load(Ordering::Acquire) > 0 && std::time::Instant::now() < until {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
}

thread_local! {
    /// One log line a second per shard for failed TLS handshakes.
    static TLS_REFUSED: crate::runtime::rate_limit::RateLimit =
        const { crate::runtime::rate_limit::RateLimit::new(std::time::Duration::from_secs(1)) };
}

/// Requests taken from one connection in one turn of its task before it lets the shard's
/// other tasks run.
const ACCEPT_BATCH: usize = 256;

/// One client connection: its streams, polled by its own task, until it closes or the server
/// stops (then it is told to go away; its requests under way get [`STOP_GRACE`] to finish,
/// and streams that would never end, watches and keep-alives, are cut off after it).
async fn serve_connection<S>(
    stream: S,
    peer: Option<std::net::SocketAddr>,
    service: Services,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    max_streams: u32,
) where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(max_streams)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(Io(stream));
    let handshake = futures_lite::future::or(async { Some(handshake.await) }, async {
        let _ = stopped.wait_for(|s| *s).await;
        None
    });
    let mut conn = match handshake.await {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::debug!(?peer, error = %e, "etcd client's HTTP/2 handshake failed");
            return;
        }
        None => return,
    };
    // The connection's streams are polled by its own task, after it has read every request
    // the socket holds: their answers are all queued before the connection next writes, and
    // leave in one send. (Polled between one request and the next, each answer went out on
    // its own, a send per serializable read.)
    let mut streams = futures_util::stream::FuturesUnordered::new();
    let mut stop = Box::pin(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    let mut grace: Option<glommio::timer::Timer> = None;
    poll_fn(|cx| {
        if grace.is_none() && stop.as_mut().poll(cx).is_ready() {
            conn.graceful_shutdown();
            grace = Some(glommio::timer::Timer::new(STOP_GRACE));
        }
        if let Some(timer) = grace.as_mut() {
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        // Requests still arriving while the connection closes are served: the client is told
        // which were taken.
        let mut taken = 0;
        loop {
            if taken == ACCEPT_BATCH {
                cx.waker().wake_by_ref();
                break;
            }
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    taken += 1;
                    streams.push(answer(service.clone(), request, respond));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(?peer, error = %e, "etcd client's connection failed");
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        // What the streams queue wakes this task, whose next poll writes it.
        poll_streams(&mut streams, cx);
        Poll::Pending
    })
    .await;
}

/// How many times a connection's streams are polled again in one turn while they are still
/// ready: a bound on how long one connection keeps its shard.
const STREAM_ROUNDS: usize = 16;

/// Polls `streams` until none is ready. `FuturesUnordered` hands the turn back (waking its
/// task) once two streams have woken themselves, which h2 does to a stream whose data it
/// finds capacity for: the connection's next turn then wrote what the streams had queued so
/// far, two watch events or so per send to 10,000 watchers. Going on while it is still ready
/// writes every ready stream's answer at once.
fn poll_streams<F: Future<Output = ()>>(streams: &mut futures_util::stream::FuturesUnordered<F>, cx: &mut Context<'_>) {
    for _ in 0..STREAM_ROUNDS {
        let flag = Arc::new(Flagged { woken: AtomicBool::new(false), waker: cx.waker().clone() });
        let waker = std::task::Waker::from(flag.clone());
        let mut flagged = Context::from_waker(&waker);
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(&mut flagged) {}
        if !flag.woken.load(Ordering::Acquire) {
            return;
        }
    }
}

/// A waker that notes it was woken, and wakes the task it stands for.
struct Flagged {
    woken: AtomicBool,
    waker: std::task::Waker,
}

impl std::task::Wake for Flagged {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake_by_ref();
    }
}

/// One request: the service's answer, then its body's frames as flow control allows. A
/// client that resets the stream ends both.
async fn answer(
    mut service: Services,
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (parts, body) = request.into_parts();
    // The client's deadline (gRPC's `grpc-timeout`), enforced as tonic's server does: past
    // it, the call is dropped and answered CANCELLED.
    let mut deadline =
        parts.headers.get("grpc-timeout").and_then(|v| grpc_timeout(v.as_bytes())).map(glommio::timer::Timer::new);
    // `Routes` is always ready; asked all the same, as a tower service must be.
    let Ok(()) = poll_fn(|cx| tower::Service::<http::Request<RecvBody>>::poll_ready(&mut service, cx)).await;
    let mut call =
        std::pin::pin!(service.call(http::Request::from_parts(parts, RecvBody { stream: body, data_done: false })));
    let response = poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        if let Some(timer) = deadline.as_mut() {
            if Pin::new(timer).poll(cx).is_ready() {
                let (parts, ()) = tonic::Status::cancelled("Timeout expired").into_http::<()>().into_parts();
                return Poll::Ready(Some(http::Response::from_parts(parts, tonic::body::Body::empty())));
            }
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(response) = response else { return };
    let (parts, mut body) = response.into_parts();
    let end = body.is_end_stream();
    let Ok(mut send) = respond.send_response(http::Response::from_parts(parts, ()), end) else { return };
    if end {
        return;
    }
    // As hyper pipes a body: wait for some capacity (not all a frame needs: h2 buffers the
    // rest, bounded by its send buffer), then hand h2 the whole frame. Waiting for each
    // frame's full capacity took a turn of the connection per frame, and a send of its own:
    // a watch event per send to 10,000 watchers.
    loop {
        send.reserve_capacity(1);
        let ready = poll_fn(|cx| {
            if send.capacity() == 0 {
                loop {
                    match ready!(send.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(_)) | None => return Poll::Ready(None),
                    }
                }
            } else if send.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let frame = match ready {
            // The client reset the stream, or it is gone.
            None => return,
            Some(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(status))) => {
                let _ = send.send_trailers(status.into_http::<()>().into_parts().0.headers);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if send.send_data(data, false).is_err() {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                }
                return;
            }
        }
    }
}

/// A `grpc-timeout` header's duration: at most 8 digits and a unit (H, M, S, m, u, n);
/// `None` for anything else (ignored, as tonic ignores it).
fn grpc_timeout(value: &[u8]) -> Option<std::time::Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => std::time::Duration::from_secs(n * 3600),
        b'M' => std::time::Duration::from_secs(n * 60),
        b'S' => std::time::Duration::from_secs(n),
        b'm' => std::time::Duration::from_millis(n),
        b'u' => std::time::Duration::from_micros(n),
        b'n' => std::time::Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request's body, as the services read it: its DATA frames (their flow-control capacity
/// given back as each is read), then its trailers.
pub struct RecvBody {
    stream: h2::RecvStream,
    data_done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

/// A shard's socket as the `h2` crate reads and writes it (tokio's I/O traits over glommio's
/// stream). It claims no vectored writes: with them, `h2` writes any DATA frame of 256 bytes
/// or more by reference and at once, and a Range answer with a 256-byte value is over that,
/// so every read was a `writev` of its own (44% of the front's time went to the kernel's TCP
/// send path). Without, answers under 1 KiB are copied into its buffer and leave together.
struct Io<S>(S);

impl<S: futures_lite::AsyncRead + Unpin> tokio::io::AsyncRead for Io<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = ready!(Pin::new(&mut self.0).poll_read(cx, buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: futures_lite::AsyncWrite + Unpin> tokio::io::AsyncWrite for Io<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_are_read_as_grpc_defines_them() {
        assert_eq!(grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout(b"4999876m"), Some(Duration::from_millis(4_999_876)));
        assert_eq!(grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(b"10u"), Some(Duration::from_micros(10)));
        for bad in [&b""[..], b"S", b"123456789S", b"5s", b"-5S", b"5"] {
            assert_eq!(grpc_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
