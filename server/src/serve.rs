//! One shard's tasks on its glommio executor: the accept loop, each connection's reader and
//! writer tasks, the inbox from the core and the liveness report. It makes no protocol
//! decisions; [`Shard`] and the core do.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::conn::Conn;
use crate::fourlw;
use crate::reads::reply_xid;
use crate::runtime::inbox::Inbox;
use crate::runtime::{ServeError, ShardId, Shared, ToCore, ToShard};
use crate::shard::Shard;
use crate::zk::jute::Reader;
use crate::zk::proto::{decode_request, op, ConnectRequest};

/// Runs shard `id` until the server stops.
pub async fn run_shard(
    shared: Arc<Shared>,
    id: ShardId,
    inbox: Inbox<ToShard>,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
) -> Result<(), ServeError> {
    let tick = Duration::from_millis(shared.config.tick_ms.max(2));
    let shard = Rc::new(RefCell::new(Shard::new(id, shared.clone(), inbox)));
    let inbox_task = {
        let shard = shard.clone();
        async move {
            Shard::serve_inbox(&shard).await;
            Ok::<(), ServeError>(())
        }
    };
    let liveness = {
        let shard = shard.clone();
        let shared = shared.clone();
        async move {
            loop {
                glommio::timer::sleep(tick / 2).await;
                let touched = shard.borrow_mut().take_touched();
                if !touched.is_empty() {
                    shared.to_core.send(ToCore::Touch(touched));
                }
            }
        }
    };
    let accepting = accept_loop(shard.clone(), listener);
    let stopping = async {
        crate::runtime::until_set(&stop, &shared.stopping).await;
        // Let the core commit what is in flight and this shard pass on the replies.
        let start = std::time::Instant::now();
        while !shared.core_done.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(11) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        // Let writer tasks flush the last replies.
        glommio::timer::sleep(Duration::from_millis(50)).await;
        Ok(())
    };
    let running = futures_lite::future::or(futures_lite::future::or(inbox_task, liveness), accepting);
    futures_lite::future::or(stopping, running).await
}

async fn accept_loop(shard: Rc<RefCell<Shard>>, listener: TcpListener) -> Result<(), ServeError> {
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
            if s.shared.stopping.load(Ordering::Relaxed) {
                continue;
            }
            if !s.shared.admit_connection() {
                tracing::warn!(%peer, limit = s.shared.config.max_connections, "refusing a connection over max_connections");
                continue;
            }
            s.add_conn(peer)
        };
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(serve_conn(shard.clone(), conn, stream)).detach();
    }
}

async fn serve_conn(shard: Rc<RefCell<Shard>>, conn: Rc<Conn>, stream: TcpStream) {
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
    shard: Rc<RefCell<Shard>>,
    conn: Rc<Conn>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
) -> Result<(), String> {
    let shared = shard.borrow().shared.clone();
    let max = shared.config.max_frame_bytes;
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).await.map_err(|e| e.to_string())?;
    if let Ok(word) = std::str::from_utf8(&head) {
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
    let body = read_frame(&mut reader, head, max).await?;
    let connect = ConnectRequest::decode(&body).map_err(|e| format!("bad connect request: {e}"))?;
    shard.borrow_mut().connect(&conn, connect);
    // Requests pipelined behind the connect wait (in the socket) for its outcome.
    poll_fn(|cx| conn.poll_connected(cx)).await;
    if conn.is_closing() {
        return Ok(());
    }
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
        shard.borrow_mut().request(&conn, xid, op_code, request);
        if op_code == op::CLOSE_SESSION {
            // The connection closes once the close has committed and been answered.
            poll_fn(|cx| conn.poll_closed(cx)).await;
            return Ok(());
        }
    }
}
