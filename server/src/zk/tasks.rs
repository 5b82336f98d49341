//! One shard's tasks on its glommio executor: the accept loop, each connection's reader and
//! writer tasks, the inbox from the write path and the liveness report. It makes no
//! protocol decisions; [`Shard`] and the write path do.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use baton_engine::sequencer::AuthId;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::net::{TcpListener, TcpStream};

use super::conn::Conn;
use super::jute::Reader;
use super::proto::{decode_request, op, ConnectRequest};
use super::reads::reply_xid;
use super::shard::Shard;
use crate::admin::fourlw;
use crate::runtime::inbox::Inbox;
use crate::runtime::rate_limit::RateLimit;
use crate::runtime::tls::{subject_rfc2253, within_handshake_time};
use crate::runtime::{ShardId, Shared, ToShard, ToWritePath};

/// How long a stopping shard waits for the write path to let its writes commit.
const WRITE_PATH_WAIT: Duration = Duration::from_secs(11);
/// How long a stopping shard waits for its connections to flush their last replies.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Runs shard `id` until the server stops: ZooKeeper clients on `listener`, and over TLS on
/// `secure`'s listener when there is one.
pub async fn run_shard(
    shared: Arc<Shared>,
    id: ShardId,
    inbox: Inbox<ToShard>,
    listener: Option<TcpListener>,
    secure: Option<(TcpListener, TlsAcceptor)>,
) {
    let tick = Duration::from_millis(shared.config.tick_ms.max(2));
    let shard = Rc::new(RefCell::new(Shard::new(id, shared.clone(), inbox)));
    let inbox_task = {
        let shard = shard.clone();
        async move { Shard::serve_inbox(&shard).await }
    };
    let liveness = {
        let shard = shard.clone();
        let shared = shared.clone();
        async move {
            loop {
                glommio::timer::sleep(tick / 2).await;
                let touched = shard.borrow_mut().take_touched();
                if !touched.is_empty() {
                    shared.to_write_path.send(ToWritePath::Touch(touched));
                }
            }
        }
    };
    // Each loop is its own task: glommio's accept re-registers its waker on every poll, so
    // a future that shares a task with busy neighbours piles up wakers (and overflows the
    // task's 16-bit reference count).
    let inbox_task = glommio::spawn_local(inbox_task);
    let liveness = glommio::spawn_local(liveness);
    let accepting: Vec<_> = listener
        .map(|l| (l, None))
        .into_iter()
        .chain(secure.map(|(l, tls)| (l, Some(tls))))
        .map(|(listener, tls)| glommio::spawn_local(accept_loop(shard.clone(), listener, tls)))
        .collect();
    let stopping = async {
        shared.stopping.wait().await;
        // Let the write path commit what is in flight and this shard pass on the replies.
        futures_lite::future::or(shared.write_path_done.wait(), glommio::timer::sleep(WRITE_PATH_WAIT)).await;
        // Pass on what the write path sent last, let every connection flush its replies,
        // then close.
        {
            let mut s = shard.borrow_mut();
            let shared = s.shared.clone();
            let tree = shared.tree();
            s.drain(&tree);
            s.close_all();
        }
        let closed = shard.borrow().closed();
        let all_closed = closed.until(|| shard.borrow().conns.is_empty());
        futures_lite::future::or(all_closed, glommio::timer::sleep(FLUSH_WAIT)).await;
    };
    // The accept loops never end: they stop when dropped, with the shard.
    let running = futures_lite::future::or(inbox_task, liveness);
    futures_lite::future::or(stopping, running).await;
    drop(accepting);
}

/// Accepts clients on `listener` (over TLS with `tls`) for as long as the shard runs.
async fn accept_loop(shard: Rc<RefCell<Shard>>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else { continue };
        let conn = {
            let mut s = shard.borrow_mut();
            if s.shared.stopping.is_set() {
                continue;
            }
            match s.shared.admit_connection(peer.ip()) {
                Ok(()) => {}
                Err(crate::runtime::Refusal::PerIp(max)) => {
                    // ZooKeeper's words (NIOServerCnxnFactory).
                    limited(&TOO_MANY_FROM_ONE, |suppressed| {
                        tracing::warn!(suppressed, "Too many connections from /{} - max is {max}", peer.ip())
                    });
                    continue;
                }
                Err(crate::runtime::Refusal::Total(limit)) => {
                    limited(
                        &TOO_MANY,
                        |suppressed| tracing::warn!(%peer, limit, suppressed, "refusing a connection over max_connections"),
                    );
                    continue;
                }
            }
            s.add_conn(peer)
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => glommio::spawn_local(serve_conn(shard.clone(), conn, stream)).detach(),
            Some(tls) => glommio::spawn_local(serve_tls(shard.clone(), conn, stream, tls.clone())).detach(),
        };
    }
}

/// A client of the secure port: the TLS handshake (bounded in time), then the protocol as on
/// the plain port, over the TLS stream.
async fn serve_tls(shard: Rc<RefCell<Shard>>, conn: Rc<Conn>, stream: TcpStream, tls: TlsAcceptor) {
    match within_handshake_time(tls.accept(stream)).await {
        Ok(stream) => {
            conn.info.secure.store(true, std::sync::atomic::Ordering::Relaxed);
            // ZooKeeper's x509 scheme: a verified client certificate's subject is an id.
            let subject =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| subject_rfc2253(c));
            if let Some(subject) = subject {
                conn.auth.borrow_mut().push(AuthId::new("x509", &subject));
            }
            serve_conn(shard, conn, stream).await
        }
        Err(error) => {
            limited(
                &TLS_REFUSED,
                |suppressed| tracing::warn!(peer = %conn.peer, %error, suppressed, "TLS handshake failed; closing the connection"),
            );
            shard.borrow_mut().remove_conn(conn.id);
        }
    }
}

async fn serve_conn<S>(shard: Rc<RefCell<Shard>>, conn: Rc<Conn>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (reader, writer) = futures_lite::io::split(stream);
    let writer_task = glommio::spawn_local(write_loop(conn.clone(), writer));
    let closed = poll_fn(|cx| conn.poll_closed(cx));
    let outcome = futures_lite::future::or(read_loop(shard.clone(), conn.clone(), reader), async {
        closed.await;
        Ok(())
    })
    .await;
    if let Err(why) = outcome {
        tracing::debug!(peer = %conn.peer, %why, "closing connection");
    }
    conn.close();
    writer_task.await;
    shard.borrow_mut().remove_conn(conn.id);
}

async fn write_loop<S: AsyncWrite + Unpin>(conn: Rc<Conn>, mut writer: futures_lite::io::WriteHalf<S>) {
    loop {
        let frames = poll_fn(|cx| match conn.take_output(cx.waker()) {
            None => Poll::Ready(None),
            Some(v) if v.is_empty() => Poll::Pending,
            Some(v) => Poll::Ready(Some(v)),
        })
        .await;
        let Some(frames) = frames else { break };
        let bytes: Vec<u8> = frames.concat();
        if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
            conn.close();
            break;
        }
    }
    let _ = writer.close().await;
}

/// Frames from a socket, read in as large pieces as the socket has ready: a client that
/// pipelines requests costs one receive per batch rather than two per request.
struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

const READ_BUFFER: usize = 4096;

impl FrameReader {
    fn new(max: usize) -> FrameReader {
        FrameReader { buf: vec![0; READ_BUFFER], start: 0, end: 0, max }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes (at least one); an error if the peer closed or the read failed.
    async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<(), String> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 16 * READ_BUFFER {
                // A large frame is done with; give its buffer back.
                self.buf = vec![0; READ_BUFFER];
            }
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(self.max.saturating_add(4)).max(self.end + 1);
            self.buf.resize(grown, 0);
        }
        let n = reader.read(&mut self.buf[self.end..]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed by the client".into());
        }
        self.end += n;
        Ok(())
    }

    /// The next complete frame's body (as a range of `buf`), if one is buffered; an error for
    /// a length outside `0..=max`.
    fn frame(&mut self) -> Result<Option<std::ops::Range<usize>>, String> {
        let have = self.end - self.start;
        if have < 4 {
            return Ok(None);
        }
        let head = [self.buf[self.start], self.buf[self.start + 1], self.buf[self.start + 2], self.buf[self.start + 3]];
        let len = i32::from_be_bytes(head);
        if len < 0 || len as usize > self.max {
            return Err(format!("frame length {len} outside 0..={}", self.max));
        }
        let total = 4 + len as usize;
        if have < total {
            if self.buf.len() - self.start < total {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < total {
                    self.buf.resize(total, 0);
                }
            }
            return Ok(None);
        }
        let body = self.start + 4..self.start + total;
        self.start += total;
        Ok(Some(body))
    }
}

async fn read_loop<S: AsyncRead + Unpin>(
    shard: Rc<RefCell<Shard>>,
    conn: Rc<Conn>,
    mut reader: futures_lite::io::ReadHalf<S>,
) -> Result<(), String> {
    let shared = shard.borrow().shared.clone();
    let mut frames = FrameReader::new(shared.config.max_frame_bytes);
    while frames.buffered().len() < 4 {
        frames.fill(&mut reader).await?;
    }
    if let Ok(word) = std::str::from_utf8(&frames.buffered()[..4]) {
        if fourlw::KNOWN.contains(&word) {
            let text = if shared.config.four_letter_words.iter().any(|w| w == word) {
                fourlw::answer(&shared, word).unwrap_or_default()
            } else {
                format!("{word} is not executed because it is not in the whitelist.\n")
            };
            conn.send(text.into_bytes());
            return Ok(());
        }
    }
    let connect = loop {
        match frames.frame().inspect_err(|why| bad_frame(&conn, why))? {
            Some(body) => {
                break ConnectRequest::decode(&frames.buf[body]).map_err(|e| format!("bad connect request: {e}"))?
            }
            None => frames.fill(&mut reader).await?,
        }
    };
    shard.borrow_mut().connect(&conn, connect);
    // Requests pipelined behind the connect wait (buffered) for its outcome.
    poll_fn(|cx| conn.poll_connected(cx)).await;
    if conn.is_closing() {
        return Ok(());
    }
    loop {
        let body = match frames.frame().inspect_err(|why| bad_frame(&conn, why))? {
            Some(body) => body,
            None => {
                frames.fill(&mut reader).await?;
                continue;
            }
        };
        let body = &frames.buf[body];
        let mut r = Reader::new(body);
        let (xid, op_code) = match (r.int("xid"), r.int("type")) {
            (Ok(x), Ok(t)) => (x, t),
            _ => return Err("request header truncated".into()),
        };
        let rest = body.get(8..).unwrap_or(&[]);
        let request = decode_request(op_code, rest).map_err(|e| {
            limited(&MALFORMED, |suppressed| {
                tracing::warn!(peer = %conn.peer, op = op_code, error = %e, suppressed, "malformed request; closing the connection")
            });
            e.to_string()
        })?;
        let xid = reply_xid(&request, xid);
        shard.borrow_mut().request(&conn, xid, op_code, request);
        if op_code == op::CLOSE_SESSION {
            // The connection closes once the close has committed and been answered.
            poll_fn(|cx| conn.poll_closed(cx)).await;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameReader;

    #[test]
    fn frames_split_anywhere_are_reassembled_and_bad_lengths_refused() {
        let mut stream = Vec::new();
        for body in [&b"abc"[..], &[7u8; 5000][..], b""] {
            stream.extend_from_slice(&(body.len() as i32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        for chunk in [1, 3, 4096, 10_000] {
            let mut fr = FrameReader::new(1 << 20);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                // What `fill` does, without a socket.
                if fr.end + piece.len() > fr.buf.len() {
                    fr.buf.copy_within(fr.start..fr.end, 0);
                    fr.end -= fr.start;
                    fr.start = 0;
                    let need = fr.end + piece.len();
                    if fr.buf.len() < need {
                        fr.buf.resize(need, 0);
                    }
                }
                fr.buf[fr.end..fr.end + piece.len()].copy_from_slice(piece);
                fr.end += piece.len();
                while let Some(r) = fr.frame().expect("valid") {
                    got.push(fr.buf[r].to_vec());
                }
            }
            assert_eq!(got, vec![b"abc".to_vec(), vec![7u8; 5000], Vec::new()], "chunk {chunk}");
        }
        let mut fr = FrameReader::new(100);
        fr.buf[..4].copy_from_slice(&101i32.to_be_bytes());
        fr.end = 4;
        assert!(fr.frame().is_err());
        fr.buf[..4].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(fr.frame().is_err());
    }
}

thread_local! {
    /// One log line a second per shard and per reason for what clients get wrong: a flood of
    /// bad connections costs a line a second, which says how many it stands for.
    static TOO_MANY_FROM_ONE: RateLimit = const { RateLimit::new(std::time::Duration::from_secs(1)) };
    static TOO_MANY: RateLimit = const { RateLimit::new(std::time::Duration::from_secs(1)) };
    static BAD_FRAMES: RateLimit = const { RateLimit::new(std::time::Duration::from_secs(1)) };
    static MALFORMED: RateLimit = const { RateLimit::new(std::time::Duration::from_secs(1)) };
    static TLS_REFUSED: RateLimit = const { RateLimit::new(std::time::Duration::from_secs(1)) };
}

/// A frame whose length is out of bounds: the connection closes.
fn bad_frame(conn: &Conn, why: &str) {
    limited(
        &BAD_FRAMES,
        |suppressed| tracing::warn!(peer = %conn.peer, %why, suppressed, "refusing an oversized or malformed frame"),
    );
}

/// Runs `log` with the count of lines left out since the last, if `limit` lets this one out.
fn limited(limit: &'static std::thread::LocalKey<RateLimit>, log: impl FnOnce(u64)) {
    limit.with(|limit| {
        if let Some(suppressed) = limit.allow(std::time::Instant::now()) {
            log(suppressed);
        }
    });
}
