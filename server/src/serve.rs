//! The runtime of a single-node server on one glommio executor: the accept loop, each
//! connection's reader and writer tasks, the committer and the session-expiry ticker. It
//! makes no protocol decisions; `Node` does.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::config::ServerConfig;
use crate::conn::Conn;
use crate::fourlw;
use crate::node::{Node, NodeError};
use crate::reads::reply_xid;
use crate::zk::jute::Reader;
use crate::zk::proto::{decode_request, op, ConnectRequest};

/// Why a server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Recovery or the write path failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The listener failed.
    #[error("client port: {0}")]
    Listen(std::io::Error),
}

/// Runs a server until the process ends (or a fatal error). Must be called on a glommio
/// executor. `ready` is called with the bound address once clients can connect.
pub async fn serve(config: ServerConfig, ready: impl FnOnce(std::net::SocketAddr)) -> Result<(), ServeError> {
    let tick = Duration::from_millis(config.tick_ms.max(2));
    let addr = config.client_addr;
    // glommio binds with SO_REUSEPORT (for shards of this process), which would also let a
    // second server process share the port and split the clients between two trees. So refuse
    // to start if something already accepts connections there. (A plain bind is no test: it
    // also fails on connections a killed predecessor left in FIN_WAIT.)
    if addr.port() != 0 {
        let probe = if addr.ip().is_unspecified() {
            std::net::SocketAddr::new([127, 0, 0, 1].into(), addr.port())
        } else {
            addr
        };
        // A killed predecessor's listening socket can keep accepting for a moment while the
        // kernel tears down its io_uring instance: only a port that stays served for 3 s counts.
        let mut tries = 0;
        while std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(300)).is_ok() {
            tries += 1;
            if tries >= 30 {
                return Err(ServeError::Listen(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{addr} is already served by another process"),
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let node = Rc::new(RefCell::new(Node::open(config).await?));
    let listener = TcpListener::bind(addr).map_err(|e| ServeError::Listen(e.into()))?;
    let bound = listener.local_addr().map_err(|e| ServeError::Listen(e.into()))?;
    ready(bound);
    let committer = glommio::spawn_local(commit_loop(node.clone()));
    let expiry = glommio::spawn_local(expiry_loop(node.clone(), tick / 2));
    let accepting = accept_loop(node.clone(), listener);
    let stopping = async {
        shutdown_requested().await;
        tracing::info!("shutting down: no new connections; letting in-flight writes commit");
        drain(&node).await;
        Ok(())
    };
    let running = futures_lite::future::or(futures_lite::future::or(committer, expiry), accepting);
    futures_lite::future::or(stopping, running).await
}

static SHUTDOWN: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();

/// Resolves after SIGTERM or SIGINT. The handler thread only sets a flag; the executor
/// checks it every 50 ms.
async fn shutdown_requested() {
    let flag = SHUTDOWN
        .get_or_init(|| {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                if let Err(e) = signal_hook::flag::register(signal, flag.clone()) {
                    tracing::warn!(error = %e, signal, "cannot handle signal; it will stop the process abruptly");
                }
            }
            flag
        })
        .clone();
    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most 10 s) until every submitted write has committed and been answered.
async fn drain(node: &Rc<RefCell<Node>>) {
    let start = std::time::Instant::now();
    while node.borrow().has_in_flight() && start.elapsed() < Duration::from_secs(10) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    // Let writer tasks flush the last replies.
    glommio::timer::sleep(Duration::from_millis(50)).await;
}

async fn accept_loop(node: Rc<RefCell<Node>>, listener: TcpListener) -> Result<(), ServeError> {
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
            let mut n = node.borrow_mut();
            if n.conns.len() >= n.config.max_connections {
                tracing::warn!(%peer, limit = n.config.max_connections, "refusing a connection over max_connections");
                continue;
            }
            n.add_conn(peer)
        };
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(serve_conn(node.clone(), conn, stream)).detach();
    }
}

async fn commit_loop(node: Rc<RefCell<Node>>) -> Result<(), ServeError> {
    loop {
        let durable = node.borrow_mut().next_durable();
        match durable {
            Some(d) => {
                if let Err(e) = d.await {
                    // A failed fsync stops the node: acknowledging anything now could lie.
                    tracing::error!(error = %e, "WAL failed; stopping");
                    return Err(NodeError::from(e).into());
                }
                node.borrow_mut().commit_durable();
            }
            None => {
                poll_fn(|cx| {
                    let mut n = node.borrow_mut();
                    if n.has_in_flight() {
                        Poll::Ready(())
                    } else {
                        n.set_committer_waker(cx.waker().clone());
                        Poll::Pending
                    }
                })
                .await
            }
        }
    }
}

/// Every half tick: expire sessions, and reap empty containers and TTL nodes whose time ran out.
async fn expiry_loop(node: Rc<RefCell<Node>>, every: Duration) -> Result<(), ServeError> {
    loop {
        glommio::timer::sleep(every).await;
        let mut n = node.borrow_mut();
        n.expire_sessions()?;
        n.reap()?;
    }
}

async fn serve_conn(node: Rc<RefCell<Node>>, conn: Rc<Conn>, stream: TcpStream) {
    let (reader, writer) = futures_lite::io::split(stream);
    let writer_task = glommio::spawn_local(write_loop(conn.clone(), writer));
    let closed = poll_fn(|cx| conn.poll_closed(cx));
    let outcome = futures_lite::future::or(read_loop(node.clone(), conn.clone(), reader), async {
        closed.await;
        Ok(())
    })
    .await;
    if let Err(why) = outcome {
        tracing::debug!(peer = %conn.peer, %why, "closing connection");
    }
    conn.close();
    writer_task.await;
    node.borrow_mut().remove_conn(conn.id);
}

async fn write_loop(conn: Rc<Conn>, mut writer: futures_lite::io::WriteHalf<TcpStream>) {
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

async fn read_frame(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    head: [u8; 4],
    max: usize,
) -> Result<Vec<u8>, String> {
    let len = i32::from_be_bytes(head);
    if len < 0 || len as usize > max {
        return Err(format!("frame length {len} outside 0..={max}"));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok(body)
}

async fn read_loop(
    node: Rc<RefCell<Node>>,
    conn: Rc<Conn>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
) -> Result<(), String> {
    let max = node.borrow().config.max_frame_bytes;
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).await.map_err(|e| e.to_string())?;
    if let Ok(word) = std::str::from_utf8(&head) {
        if fourlw::KNOWN.contains(&word) {
            let n = node.borrow();
            let text = if n.config.four_letter_words.iter().any(|w| w == word) {
                fourlw::answer(&n, word).unwrap_or_default()
            } else {
                format!("{word} is not executed because it is not in the whitelist.\n")
            };
            conn.send(text.into_bytes());
            return Ok(());
        }
    }
    let body = read_frame(&mut reader, head, max).await?;
    let connect = ConnectRequest::decode(&body).map_err(|e| format!("bad connect request: {e}"))?;
    node.borrow_mut().connect(&conn, &connect).map_err(|e| e.to_string())?;
    loop {
        reader.read_exact(&mut head).await.map_err(|e| e.to_string())?;
        let body = read_frame(&mut reader, head, max).await.inspect_err(|why| {
            tracing::warn!(peer = %conn.peer, %why, "refusing an oversized or malformed frame");
        })?;
        let mut r = Reader::new(&body);
        let (xid, op_code) = match (r.int("xid"), r.int("type")) {
            (Ok(x), Ok(t)) => (x, t),
            _ => return Err("request header truncated".into()),
        };
        let rest = body.get(8..).unwrap_or(&[]);
        let request = decode_request(op_code, rest).map_err(|e| {
            tracing::warn!(peer = %conn.peer, op = op_code, error = %e, "malformed request; closing the connection");
            e.to_string()
        })?;
        let xid = reply_xid(&request, xid);
        node.borrow_mut().request(&conn, xid, op_code, request).map_err(|e| e.to_string())?;
        if op_code == op::CLOSE_SESSION {
            // The connection closes once the close has committed and been answered.
            poll_fn(|cx| conn.poll_closed(cx)).await;
            return Ok(());
        }
    }
}
