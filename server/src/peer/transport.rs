//! Peer links over TCP on one glommio executor: one outbound connection per peer carries
//! this server's messages to it (FIFO), and the peers' own outbound connections arrive on the
//! listener. A broken connection — or a message that could not be sent because there was none
//! — is reported once as [`PeerEvent::Disconnected`], which is how the Zab core learns that
//! its FIFO stream to that peer lost messages.
//!
//! A connection opens with a hello: `"BATONPEER"`, the sender's id and its incarnation (a
//! number drawn at start; u64 LE each), answered by the acceptor's incarnation. Frames follow
//! in `baton_engine::zab::wire` format, one way only.
//!
//! Why the incarnations: an outbound connection is only known dead when a write fails or the
//! peer closes it, and a restarted peer may never do either on a connection its previous life
//! accepted (or left in a dying listener's backlog). So a link is up only once a live accept
//! loop has answered the hello, the writer also watches its connection for the peer's close,
//! and when a peer connects to us from a new incarnation, our link to its old one is dropped
//! (and the loss reported) at once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use baton_engine::zab::wire::{self, WireError};
use baton_engine::zab::{Message, ServerId};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::runtime::local_queue::LocalQueue;

const HELLO: &[u8; 9] = b"BATONPEER";
const HELLO_BYTES: usize = 25;
/// Bytes written to a peer's connection at a time.
const WRITE_PIECE: usize = 1 << 20;
/// A link whose queue is over its bound and whose writer got nothing into the connection for
/// this long counts as broken (the peer stopped reading).
const STALLED: Duration = Duration::from_secs(1);
/// How long a connector waits for the acceptor's answer to its hello.
const HELLO_WAIT: Duration = Duration::from_secs(1);
/// Pause between connection attempts to a peer that is down.
const RECONNECT: Duration = Duration::from_millis(50);

/// What the peers did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A message arrived.
    Message(ServerId, Message),
    /// The stream to or from this peer lost messages (a connection broke, or there was none
    /// to send on).
    Disconnected(ServerId),
}

#[derive(Default)]
struct Outbound {
    /// Encoded frames waiting for the writer. Invariant: empty while not connected.
    queue: Vec<u8>,
    connected: bool,
    /// A loss was reported since the last connection was made.
    loss_reported: bool,
    writer: Option<Waker>,
    /// The incarnation of the peer the current connection reaches.
    peer_incarnation: Option<u64>,
    /// When the writer last got bytes into the connection (or made it).
    progress: Option<std::time::Instant>,
    /// Drop the current connection (the peer restarted, or messages were lost on it) and
    /// reconnect.
    reset: bool,
    /// The writer waiting (possibly inside a write) for `reset`.
    resetter: Option<Waker>,
}

impl Outbound {
    /// Ends the current connection: nothing more may follow on it once a message meant for
    /// it was dropped (the receiver would see a gap), so the writer closes it and reconnects.
    fn reset(&mut self) {
        self.reset = true;
        self.queue.clear();
        if let Some(w) = self.writer.take() {
            w.wake();
        }
        if let Some(w) = self.resetter.take() {
            w.wake();
        }
    }
}

type Events = LocalQueue<PeerEvent>;

/// The peer links of one server.
pub struct Transport {
    me: ServerId,
    outbound: Rc<RefCell<BTreeMap<ServerId, Outbound>>>,
    events: Rc<Events>,
    /// Bytes one peer's queue may hold; beyond it the link is treated as broken.
    queue_bytes_max: usize,
    stop: Rc<std::cell::Cell<bool>>,
    /// Every link task: dropping one cancels it and closes its socket (a detached task could
    /// outlive the executor's run and keep the port bound).
    tasks: Rc<RefCell<Vec<glommio::Task<()>>>>,
}

impl Transport {
    /// Starts accepting on `listener` and connecting to every peer. Must run on a glommio
    /// executor; the links live on it.
    pub fn start(
        me: ServerId,
        listener: TcpListener,
        peers: &BTreeMap<ServerId, SocketAddr>,
        frame_bytes_max: usize,
        queue_bytes_max: usize,
    ) -> Transport {
        let outbound: Rc<RefCell<BTreeMap<ServerId, Outbound>>> = Rc::new(RefCell::new(BTreeMap::new()));
        let events = Rc::new(Events::default());
        let stop = Rc::new(std::cell::Cell::new(false));
        let tasks: Rc<RefCell<Vec<glommio::Task<()>>>> = Rc::new(RefCell::new(Vec::new()));
        let known: Vec<ServerId> = peers.keys().copied().filter(|&id| id != me).collect();
        let links = Rc::new(Links {
            me,
            incarnation: new_incarnation(),
            outbound: outbound.clone(),
            events: events.clone(),
            stop: stop.clone(),
            current_inbound: RefCell::new(BTreeMap::new()),
            next_inbound: std::cell::Cell::new(1),
        });
        for (&id, &addr) in peers {
            if id == me {
                continue;
            }
            outbound.borrow_mut().insert(id, Outbound::default());
            let task = glommio::spawn_local(write_loop(links.clone(), id, addr));
            tasks.borrow_mut().push(task);
        }
        let accept = accept_loop(listener, known, frame_bytes_max, links);
        let accept = glommio::spawn_local(accept);
        tasks.borrow_mut().push(accept);
        Transport { me, outbound, events, queue_bytes_max, stop, tasks }
    }

    /// Queues `msg` for `to`. When there is no connection (or its queue is over its bound)
    /// the message is dropped and the loss reported once; a connection that lost a message
    /// is closed, so the peer sees a broken stream rather than a gap in it.
    pub fn send(&self, to: ServerId, msg: &Message) {
        let mut outbound = self.outbound.borrow_mut();
        let Some(link) = outbound.get_mut(&to) else { return };
        let stalled = link.queue.len() > self.queue_bytes_max && link.progress.is_some_and(|at| at.elapsed() > STALLED);
        if !link.connected || link.reset || stalled {
            if link.connected && !link.reset {
                tracing::warn!(
                    me = self.me,
                    peer = to,
                    queued = link.queue.len(),
                    "a peer fell too far behind; dropping its link"
                );
            }
            link.reset();
            if !link.loss_reported {
                link.loss_reported = true;
                self.events.push(PeerEvent::Disconnected(to));
            }
            return;
        }
        wire::encode(msg, &mut link.queue);
        if let Some(w) = link.writer.take() {
            w.wake();
        }
    }

    /// The next event.
    pub async fn next_event(&self) -> PeerEvent {
        self.events.pop().await
    }

    /// This server's id.
    pub fn id(&self) -> ServerId {
        self.me
    }

    /// Closes every link and the listener.
    pub fn stop(&self) {
        self.stop.set(true);
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        drop(tasks);
    }
}

/// What every link task of one transport shares.
struct Links {
    me: ServerId,
    /// This transport's incarnation.
    incarnation: u64,
    outbound: Rc<RefCell<BTreeMap<ServerId, Outbound>>>,
    events: Rc<Events>,
    stop: Rc<std::cell::Cell<bool>>,
    /// Per peer, the accepted connection whose messages count (a number per connection). A
    /// newer connection from a peer supersedes the older one: what the older one still
    /// delivers (bytes that sat in buffers along the way) would interleave with the new
    /// stream, so it is dropped, and the break between the two streams is reported first.
    current_inbound: RefCell<BTreeMap<ServerId, u64>>,
    next_inbound: std::cell::Cell<u64>,
}

/// A number that differs between two starts of a server (time and pid, mixed).
fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes().as_slice(), &std::process::id().to_le_bytes()].concat())
}

/// Connects to `addr`, sends the hello and returns the acceptor's incarnation.
async fn handshake(links: &Links, addr: SocketAddr) -> Option<(TcpStream, u64)> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_secs(1)).await.ok()?;
    let _ = stream.set_nodelay(true);
    let mut hello = Vec::with_capacity(HELLO_BYTES);
    hello.extend_from_slice(HELLO);
    hello.extend_from_slice(&links.me.to_le_bytes());
    hello.extend_from_slice(&links.incarnation.to_le_bytes());
    stream.write_all(&hello).await.ok()?;
    let _ = stream.set_read_timeout(Some(HELLO_WAIT));
    let mut answer = [0u8; 8];
    stream.read_exact(&mut answer).await.ok()?;
    let _ = stream.set_read_timeout(None);
    Some((stream, u64::from_le_bytes(answer)))
}

async fn write_loop(links: Rc<Links>, peer: ServerId, addr: SocketAddr) {
    let (me, outbound, stop) = (links.me, &links.outbound, &links.stop);
    while !stop.get() {
        let Some((stream, incarnation)) = handshake(&links, addr).await else {
            glommio::timer::sleep(RECONNECT).await;
            continue;
        };
        if let Some(link) = outbound.borrow_mut().get_mut(&peer) {
            link.connected = true;
            link.loss_reported = false;
            link.reset = false;
            link.peer_incarnation = Some(incarnation);
            link.progress = Some(std::time::Instant::now());
            link.queue.clear();
        }
        tracing::debug!(me, peer, %addr, incarnation, "peer link up");
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let writing = async {
            loop {
                let batch = poll_fn(|cx| {
                    let mut outbound = outbound.borrow_mut();
                    let Some(link) = outbound.get_mut(&peer) else { return Poll::Ready(None) };
                    if stop.get() || link.reset {
                        return Poll::Ready(None);
                    }
                    if link.queue.is_empty() {
                        link.writer = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(std::mem::take(&mut link.queue)))
                })
                .await;
                let Some(batch) = batch else { break };
                // In pieces, noting progress after each: a peer that reads slowly but
                // steadily (a long DIFF) is not taken for one that stopped reading.
                for piece in batch.chunks(WRITE_PIECE) {
                    if writer.write_all(piece).await.is_err() {
                        return;
                    }
                    if let Some(link) = outbound.borrow_mut().get_mut(&peer) {
                        link.progress = Some(std::time::Instant::now());
                    }
                }
            }
        };
        // The peer never writes on this connection: anything it reads is its close.
        let closed = async {
            let mut byte = [0u8; 1];
            let _ = reader.read(&mut byte).await;
        };
        // A reset ends the connection even while a write is stuck on it.
        let reset = poll_fn(|cx| {
            let mut outbound = outbound.borrow_mut();
            let Some(link) = outbound.get_mut(&peer) else { return Poll::Ready(()) };
            if link.reset || stop.get() {
                return Poll::Ready(());
            }
            link.resetter = Some(cx.waker().clone());
            Poll::Pending
        });
        futures_lite::future::or(writing, futures_lite::future::or(closed, reset)).await;
        // Closing flushes; on a connection nobody reads that could wait forever.
        let closing = async {
            let _ = writer.close().await;
        };
        futures_lite::future::or(closing, glommio::timer::sleep(Duration::from_millis(100))).await;
        drop(reader);
        let reported = match outbound.borrow_mut().get_mut(&peer) {
            Some(link) => {
                link.connected = false;
                link.peer_incarnation = None;
                link.queue.clear();
                std::mem::replace(&mut link.loss_reported, true)
            }
            None => true,
        };
        if !reported && !stop.get() {
            tracing::debug!(me, peer, "peer link down");
            links.events.push(PeerEvent::Disconnected(peer));
        }
    }
}

async fn accept_loop(listener: TcpListener, known: Vec<ServerId>, frame_bytes_max: usize, links: Rc<Links>) {
    // The readers of accepted connections live as long as this loop (dropping it cancels
    // them); each marks itself finished so the map holds only live connections.
    let mut readers: BTreeMap<u64, glommio::Task<()>> = BTreeMap::new();
    let finished: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(Vec::new()));
    let mut next = 0u64;
    while !links.stop.get() {
        let Ok(stream) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        for done in finished.borrow_mut().drain(..) {
            readers.remove(&done);
        }
        next += 1;
        let (id, finished) = (next, finished.clone());
        let read = read_loop(stream, known.clone(), frame_bytes_max, links.clone());
        let task = glommio::spawn_local(async move {
            read.await;
            finished.borrow_mut().push(id);
        });
        readers.insert(id, task);
    }
}

async fn read_loop(mut stream: TcpStream, known: Vec<ServerId>, frame_bytes_max: usize, links: Rc<Links>) {
    let mut hello = [0u8; HELLO_BYTES];
    let _ = stream.set_read_timeout(Some(HELLO_WAIT));
    if stream.read_exact(&mut hello).await.is_err() || &hello[..9] != HELLO {
        tracing::warn!("a peer connection without a valid hello; closing it");
        return;
    }
    let _ = stream.set_read_timeout(None);
    let mut word = [0u8; 8];
    word.copy_from_slice(&hello[9..17]);
    let from = u64::from_le_bytes(word);
    word.copy_from_slice(&hello[17..25]);
    let incarnation = u64::from_le_bytes(word);
    if !known.contains(&from) {
        tracing::warn!(from, "a connection from a server not in the ensemble; closing it");
        return;
    }
    if stream.write_all(&links.incarnation.to_le_bytes()).await.is_err() {
        return;
    }
    let me_conn = links.next_inbound.get();
    links.next_inbound.set(me_conn + 1);
    if links.current_inbound.borrow_mut().insert(from, me_conn).is_some() {
        // The peer's previous stream to us is over, whatever of it is still on its way: the
        // Zab core hears of the break before the first message of this one.
        tracing::debug!(me = links.me, peer = from, "a newer connection from the peer supersedes its older one");
        links.events.push(PeerEvent::Disconnected(from));
    }
    let is_current = || links.current_inbound.borrow().get(&from) == Some(&me_conn);
    // A peer that restarted: our link to its previous life is dead even if no write has
    // failed yet. Drop it; the writer reconnects and the loss is reported.
    if let Some(link) = links.outbound.borrow_mut().get_mut(&from) {
        if link.peer_incarnation.is_some_and(|i| i != incarnation) {
            tracing::debug!(me = links.me, peer = from, "peer restarted; reconnecting to it");
            link.reset();
        }
    }
    let stop = &links.stop;
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let why: Option<WireError> = 'read: loop {
        if stop.get() {
            break None;
        }
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break None,
            Ok(n) => n,
        };
        if !is_current() {
            // Superseded: the break was reported when the newer connection arrived.
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        loop {
            match wire::split_frame(&buf[at..], frame_bytes_max) {
                Ok(Some((msg, used))) => {
                    at += used;
                    links.events.push(PeerEvent::Message(from, msg));
                }
                Ok(None) => break,
                Err(e) => break 'read Some(e),
            }
        }
        buf.drain(..at);
    };
    if let Some(e) = why {
        tracing::warn!(from, error = %e, "bad frame from a peer; closing its connection");
    }
    if !is_current() {
        return;
    }
    links.current_inbound.borrow_mut().remove(&from);
    if !stop.get() {
        links.events.push(PeerEvent::Disconnected(from));
    }
}
