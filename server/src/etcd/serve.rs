//! HTTP/2 on the glommio shards: the `h2` crate driven over a shard's own sockets, each
//! request handed to the etcd services (tonic's generated routing and codecs, which need no
//! runtime of their own) and each answer's frames written back as the client's flow control
//! allows. No thread hop between the socket and the write path's inbox, as the ZooKeeper
//! front has none.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_util::StreamExt as _;
use http_body::{Body as _, Frame};

use crate::runtime::Shared;

/// hyper's HTTP/2 server settings (what tonic's own server uses, and this front used before
/// it served on the shards).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 20;
const MAX_SEND_BUFFER: usize = 400 << 10;
const MAX_CONCURRENT_STREAMS: u32 = 200;
const MAX_HEADER_LIST: u32 = 16 << 10;

/// How long a stopping server's connections have to finish their requests under way.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What serves one request: the etcd port's services behind the refusal log.
pub trait Handler:
    tower::Service<
        http::Request<RecvBody>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Handler for S where
    S: tower::Service<
            http::Request<RecvBody>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Accepts etcd clients on `listener` and serves each on this shard until the server stops.
pub async fn accept_loop<S: Handler>(shared: Arc<Shared>, listener: glommio::net::TcpListener, service: S) {
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
            glommio::spawn_local(serve_connection(shared.clone(), stream, service.clone())).detach();
        }
    };
    futures_lite::future::or(accepting, shared.stopping.wait()).await;
}

/// One client connection: its streams, each a task of this shard, until it closes or the
/// server stops (then it is told to go away, and its streams under way finish).
async fn serve_connection<S: Handler>(shared: Arc<Shared>, stream: glommio::net::TcpStream, service: S) {
    let peer = stream.peer_addr().ok();
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(Io(stream));
    let mut conn = match handshake.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(?peer, error = %e, "etcd client's HTTP/2 handshake failed");
            return;
        }
    };
    // The connection's streams are polled by its own task, after it has read every request
    // the socket holds: their answers are all queued before the connection next writes, and
    // leave in one send. (Polled between one request and the next, each answer went out on
    // its own, a send per serializable read.)
    let mut streams = futures_util::stream::FuturesUnordered::new();
    let serving = poll_fn(|cx| {
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => streams.push(answer(service.clone(), request, respond)),
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(?peer, error = %e, "etcd client's connection failed");
                    return Poll::Ready(true);
                }
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Pending => break,
            }
        }
        // What the streams queue wakes this task, whose next poll writes it.
        poll_streams(&mut streams, cx);
        Poll::Pending
    });
    // `true`: the connection is over; `false`: the server is stopping.
    let over = futures_lite::future::or(serving, async {
        shared.stopping.wait().await;
        false
    })
    .await;
    if !over {
        // Requests under way get their answers for a moment; streams that would never end
        // (watches, keep-alives) are cut off after it.
        conn.graceful_shutdown();
        let closing = poll_fn(|cx| {
            poll_streams(&mut streams, cx);
            conn.poll_closed(cx).map(|_| ())
        });
        futures_lite::future::or(closing, glommio::timer::sleep(STOP_GRACE)).await;
    }
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
async fn answer<S: Handler>(
    mut service: S,
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (parts, body) = request.into_parts();
    let mut call =
        std::pin::pin!(service.call(http::Request::from_parts(parts, RecvBody { stream: body, data_done: false })));
    let response = poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
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
struct Io(glommio::net::TcpStream);

impl tokio::io::AsyncRead for Io {
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

impl tokio::io::AsyncWrite for Io {
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
