//! Peer links over TCP on one glommio executor: one outbound connection per peer carries
//! this server's messages to it (FIFO), and the peers' own outbound connections arrive on the
//! listener. A broken connection — or a message that could not be sent because there was none
//! — is reported once as [`PeerEvent::Disconnected`], which is how the Zab core learns that
//! its FIFO stream to that peer lost messages.
//!
//! A connection opens with a hello ([`super::hello`]: the sender's ensemble fingerprint, id
//! and incarnation — a number drawn at start), answered by the acceptor's incarnation. Frames
//! follow in `baton_engine::zab::wire` format, one way only. A connection whose hello does not
//! check out (not a Baton peer, another ensemble, an unknown id, our own id) is closed with a
//! rate-limited log line naming the caller's address and why; so is a peer that sends a bad
//! frame later. Two servers configured with the same id show up as that id's incarnation
//! flipping back and forth, which is logged too.
//!
//! Why the incarnations: an outbound connection is only known dead when a write fails or the
//! peer closes it, and a restarted peer may never do either on a connection its previous life
//! accepted (or left in a dying listener's backlog). So a link is up only once a live accept
//! loop has answered the hello, the writer also watches its connection for the peer's close,
//! and when a peer connects to us from a new incarnation, our link to its old one is dropped
//! (and the loss reported) at once.
//!
//! A peer that stops reading: once nothing has gone into its connection for a second and
//! its queue is over `max-peer-queue-bytes`, its link counts as broken (the leader then
//! forgets it and goes on with the others). The writer reconnects and waits on the new
//! connection, however long, for the peer's answer — not redialling every second, which
//! was measured to stall the executor's WAL completions for seconds at a time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use baton_engine::replica::{SnapChunker, SnapshotImage, SNAP_CHUNK_BYTES};
use baton_engine::zab::wire::{self, WireError};
use baton_engine::zab::{Message, ServerId};
use baton_engine::Zxid;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::hello::{Hello, HELLO_BYTES};
use crate::runtime::inbox::{bounded_inbox, Inbox};
use crate::runtime::local_queue::LocalQueue;
use crate::runtime::rate_limit::RateLimit;
use crate::runtime::tls::{within_handshake_time, PeerTls};

/// Two different incarnations of one id alternating within this long: two servers have it.
const SAME_ID_WINDOW: Duration = Duration::from_secs(30);
/// Chunks of a SNAP made ahead of its link's socket (each [`SNAP_CHUNK_BYTES`]).
pub const SNAP_FRAMES_QUEUED: usize = 4;
/// Bytes written to a peer's connection at a time.
const WRITE_PIECE: usize = 1 << 20;
/// A link whose queue is over its bound and whose writer got nothing into the connection for
/// this long counts as broken (the peer stopped reading).
const STALLED: Duration = Duration::from_secs(1);
/// How long an acceptor waits for a connector's hello. (A connector waits for the answer
/// as long as the connection lasts: see [`handshake`].)
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
    /// A SNAP being streamed: its frames, made by a thread of its own as the link drains
    /// (after everything in `queue`). Invariant: `None` while not connected.
    snapshot: Option<Inbox<Streamed>>,
    /// Frames queued while a SNAP streams: they follow its end.
    after: Vec<u8>,
}

/// What a SNAP's producer thread hands the link's writer.
enum Streamed {
    /// The next frames.
    Frames(Vec<u8>),
    /// The SNAP's end frame was among the frames before.
    Done,
}

impl Outbound {
    /// Ends the current connection: nothing more may follow on it once a message meant for
    /// it was dropped (the receiver would see a gap), so the writer closes it and reconnects.
    fn reset(&mut self) {
        self.reset = true;
        self.queue.clear();
        // Its producer finds the link gone at its next frame and stops.
        self.snapshot = None;
        self.after = Vec::new();
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
    /// A second handle on the listening socket the accept loop owns.
    listening: socket2::Socket,
}

impl Transport {
    /// Starts accepting on `listener` (with `listening`, a second handle on its socket, to shut
    /// it down at stop) and connecting to every peer. Must run on a glommio
    /// executor; the links live on it.
    pub fn start(
        me: ServerId,
        ensemble: u64,
        (listener, listening): (TcpListener, socket2::Socket),
        peers: &BTreeMap<ServerId, SocketAddr>,
        frame_bytes_max: usize,
        queue_bytes_max: usize,
        tls: Option<PeerTls>,
    ) -> Transport {
        let outbound: Rc<RefCell<BTreeMap<ServerId, Outbound>>> = Rc::new(RefCell::new(BTreeMap::new()));
        let events = Rc::new(Events::default());
        let stop = Rc::new(std::cell::Cell::new(false));
        let tasks: Rc<RefCell<Vec<glommio::Task<()>>>> = Rc::new(RefCell::new(Vec::new()));
        let known: Vec<ServerId> = peers.keys().copied().filter(|&id| id != me).collect();
        let links = Rc::new(Links {
            me,
            ensemble,
            incarnation: new_incarnation(),
            refusals: RateLimit::new(Duration::from_secs(1)),
            incarnations: RefCell::new(BTreeMap::new()),
            outbound: outbound.clone(),
            events: events.clone(),
            stop: stop.clone(),
            current_inbound: RefCell::new(BTreeMap::new()),
            next_inbound: std::cell::Cell::new(1),
            tls,
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
        Transport { me, outbound, events, queue_bytes_max, stop, tasks, listening }
    }

    /// Queues `msg` for `to`. When there is no connection (or its queue is over its bound)
    /// the message is dropped and the loss reported once; a connection that lost a message
    /// is closed, so the peer sees a broken stream rather than a gap in it.
    pub fn send(&self, to: ServerId, msg: &Message) {
        let mut outbound = self.outbound.borrow_mut();
        let Some(link) = outbound.get_mut(&to) else { return };
        if !self.usable(to, link) {
            return;
        }
        // Behind a SNAP being streamed, or in the writer's queue.
        let queue = if link.snapshot.is_some() { &mut link.after } else { &mut link.queue };
        wire::encode(msg, queue);
        if let Some(w) = link.writer.take() {
            w.wake();
        }
    }

    /// Queues the SNAP of `image` (the state at `zxid`) for `to`, ahead of what is sent to it
    /// later. A thread makes its frames while the link drains, at most
    /// [`SNAP_FRAMES_QUEUED`] chunks ahead of the socket: a slow learner costs this server
    /// that, the frozen image, and the messages queued behind it (bounded as any link's).
    pub fn send_snapshot(&self, to: ServerId, epoch: u32, zxid: Zxid, image: Box<dyn SnapshotImage>) {
        let mut outbound = self.outbound.borrow_mut();
        let Some(link) = outbound.get_mut(&to) else { return };
        if !self.usable(to, link) {
            return;
        }
        if link.snapshot.is_some() {
            // The core sends one SNAP per synchronisation, and a new one only after the link
            // broke (which ended the first). Two would interleave: drop the link instead.
            tracing::warn!(me = self.me, peer = to, "a second SNAP while one streams; dropping the link");
            self.lose(to, link);
            return;
        }
        let (frames, stream) = bounded_inbox(SNAP_FRAMES_QUEUED);
        let me = self.me;
        let produce = move || {
            baton_engine::sys::background_thread();
            let started = std::time::Instant::now();
            let emit = |msg: Message| {
                let mut frame = Vec::with_capacity(SNAP_CHUNK_BYTES + 64);
                wire::encode(&msg, &mut frame);
                if frames.send(Streamed::Frames(frame)) {
                    Ok(())
                } else {
                    Err(std::io::Error::other("the link to the learner is gone"))
                }
            };
            let sent = SnapChunker::new(epoch, zxid, SNAP_CHUNK_BYTES, emit).and_then(|mut out| {
                image.write_to(&mut out)?;
                out.finish()
            });
            // The frozen image's memory goes back now, not when the link next changes, a page
            // directory at a time. Freed on this thread, the allocator still hands it back to
            // the applying thread at that thread's next collection, mostly at once (see
            // `SnapshotImage::release_step`); a snapshot's image goes back to be freed there,
            // a SNAP's (rarer) not yet.
            let mut image = image;
            while image.release_step() {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(image);
            match sent {
                Ok(()) => {
                    frames.send(Streamed::Done);
                    tracing::info!(me, peer = to, %zxid, ms = started.elapsed().as_millis() as u64, "SNAP streamed");
                }
                Err(e) => tracing::info!(me, peer = to, %zxid, error = %e, "SNAP abandoned"),
            }
        };
        if let Err(e) = std::thread::Builder::new().name(format!("snap-to-{to}")).spawn(produce) {
            tracing::error!(me = self.me, peer = to, error = %e, "no thread to stream a SNAP; dropping the link");
            self.lose(to, link);
            return;
        }
        link.snapshot = Some(stream);
        if let Some(w) = link.writer.take() {
            w.wake();
        }
    }

    /// Whether `link` can take another message: connected, and not over its bound while the
    /// peer stopped reading. If not, the link is dropped and the loss reported once.
    fn usable(&self, to: ServerId, link: &mut Outbound) -> bool {
        let queued = link.queue.len() + link.after.len();
        let stalled = queued > self.queue_bytes_max && link.progress.is_some_and(|at| at.elapsed() > STALLED);
        if !link.connected || link.reset || stalled {
            if link.connected && !link.reset {
                tracing::warn!(me = self.me, peer = to, queued, "a peer fell too far behind; dropping its link");
            }
            self.lose(to, link);
            return false;
        }
        true
    }

    /// Drops `link` (the peer sees a broken stream rather than a gap) and reports the loss
    /// once.
    fn lose(&self, to: ServerId, link: &mut Outbound) {
        link.reset();
        if !link.loss_reported {
            link.loss_reported = true;
            self.events.push(PeerEvent::Disconnected(to));
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

    /// Bytes queued for `to` and not yet written to its connection.
    pub fn queued_bytes(&self, to: ServerId) -> usize {
        self.outbound.borrow().get(&to).map_or(0, |link| link.queue.len() + link.after.len())
    }

    /// Closes every link and the listener.
    pub fn stop(&self) {
        self.stop.set(true);
        // SNAP producers find their links gone and stop (and their frozen views go).
        for link in self.outbound.borrow_mut().values_mut() {
            link.snapshot = None;
            link.after = Vec::new();
        }
        // Stop listening now, not when the executor gets round to dropping the accept loop
        // (a replica stopped inside a process that goes on, as in tests, may never): the
        // connections waiting in the backlog are reset, so peers dialling in redial
        // instead of waiting for an answer that would never come.
        let _ = self.listening.shutdown(std::net::Shutdown::Both);
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        drop(tasks);
    }
}

/// An incarnation of a peer and when it last connected.
type Heard = (u64, std::time::Instant);

/// What every link task of one transport shares.
struct Links {
    me: ServerId,
    /// This ensemble's fingerprint (see [`super::hello::ensemble_fingerprint`]).
    ensemble: u64,
    /// This transport's incarnation.
    incarnation: u64,
    /// Log lines about refused connections.
    refusals: RateLimit,
    /// Per peer, the last two incarnations heard (newest first) and when.
    incarnations: RefCell<BTreeMap<ServerId, [Option<Heard>; 2]>>,
    outbound: Rc<RefCell<BTreeMap<ServerId, Outbound>>>,
    events: Rc<Events>,
    stop: Rc<std::cell::Cell<bool>>,
    /// Per peer, the accepted connection whose messages count (a number per connection). A
    /// newer connection from a peer supersedes the older one: what the older one still
    /// delivers (bytes that sat in buffers along the way) would interleave with the new
    /// stream, so it is dropped, and the break between the two streams is reported first.
    current_inbound: RefCell<BTreeMap<ServerId, u64>>,
    next_inbound: std::cell::Cell<u64>,
    /// With `--peer-tls`: every link is TLS with certificates both ways.
    tls: Option<PeerTls>,
}

impl Links {
    /// Remembers the incarnation a peer connected with; warns (rate-limited) when an id's
    /// incarnation goes back to the one before: a restarted server never does, two servers
    /// configured with one id do it all the time.
    fn note_incarnation(&self, from: ServerId, incarnation: u64, caller: Option<SocketAddr>) {
        let now = std::time::Instant::now();
        let mut seen = self.incarnations.borrow_mut();
        let [newest, older] = seen.entry(from).or_insert([None, None]);
        if newest.is_some_and(|(i, _)| i == incarnation) {
            *newest = Some((incarnation, now));
            return;
        }
        let flipped = older.is_some_and(|(i, at)| i == incarnation && now.duration_since(at) < SAME_ID_WINDOW);
        *older = *newest;
        *newest = Some((incarnation, now));
        if flipped {
            if let Some(suppressed) = self.refusals.allow(now) {
                tracing::warn!(me = self.me, peer = from, caller = ?caller, suppressed,
                    "two servers seem to be configured with id {from}: its connections alternate between two incarnations");
            }
        }
    }
}

/// A number that differs between two starts of a server (time and pid, mixed).
fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes().as_slice(), &std::process::id().to_le_bytes()].concat())
}

/// Connects to `addr` (over TLS with `--peer-tls`), sends the hello and returns the
/// acceptor's incarnation.
async fn handshake(links: &Links, addr: SocketAddr) -> Option<(PeerStream, u64)> {
    let stream = TcpStream::connect_timeout(addr, Duration::from_secs(1)).await.ok()?;
    let _ = stream.set_nodelay(true);
    let mut stream = match &links.tls {
        None => PeerStream::Plain(stream),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            match within_handshake_time(tls.connector.connect(name, stream)).await {
                Ok(s) => PeerStream::Dialed(Box::new(s)),
                Err(error) => {
                    if let Some(suppressed) = links.refusals.allow(std::time::Instant::now()) {
                        tracing::warn!(me = links.me, %addr, %error, suppressed, "TLS with a peer failed; not connecting to it");
                    }
                    return None;
                }
            }
        }
    };
    let hello = Hello { ensemble: links.ensemble, from: links.me, incarnation: links.incarnation }.encode();
    stream.write_all(&hello).await.ok()?;
    // Over TLS, written bytes can wait in the session's buffer for the next write: flush.
    stream.flush().await.ok()?;
    // A long time limit on the answer: a peer that takes our connection but does not answer
    // (paused, or stopped reading) is waited for on this one connection — reconnecting
    // every second instead was measured to stall this executor's WAL completions for
    // seconds (tests/tests/cluster.rs, the follower too slow to read). A dead process's
    // connection breaks when it goes; the limit covers a peer whose host vanished after
    // accepting (nothing would ever break this half-open connection).
    let _ = stream.tcp().set_read_timeout(Some(HANDSHAKE_ANSWER_WAIT));
    let mut answer = [0u8; 8];
    stream.read_exact(&mut answer).await.ok()?;
    let _ = stream.tcp().set_read_timeout(None);
    Some((stream, u64::from_le_bytes(answer)))
}

/// A link's connection: plain TCP, or TLS as the dialer or the acceptor.
enum PeerStream {
    Plain(TcpStream),
    Dialed(Box<futures_rustls::client::TlsStream<TcpStream>>),
    Accepted(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl PeerStream {
    /// The socket underneath.
    fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::Dialed(s) => s.get_ref().0,
            PeerStream::Accepted(s) => s.get_ref().0,
        }
    }
}

impl futures_lite::AsyncRead for PeerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PeerStream::Dialed(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerStream::Accepted(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl futures_lite::AsyncWrite for PeerStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            PeerStream::Dialed(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
            PeerStream::Accepted(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            PeerStream::Dialed(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            PeerStream::Accepted(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_close(cx),
            PeerStream::Dialed(s) => std::pin::Pin::new(s.as_mut()).poll_close(cx),
            PeerStream::Accepted(s) => std::pin::Pin::new(s.as_mut()).poll_close(cx),
        }
    }
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
            link.snapshot = None;
            link.after = Vec::new();
        }
        tracing::debug!(me, peer, %addr, incarnation, "peer link up");
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let writing = async {
            loop {
                let batch = poll_fn(|cx| {
                    let mut outbound = outbound.borrow_mut();
                    let Some(link) = outbound.get_mut(&peer) else { return Poll::Ready(None) };
                    loop {
                        if stop.get() || link.reset {
                            return Poll::Ready(None);
                        }
                        if !link.queue.is_empty() {
                            return Poll::Ready(Some(std::mem::take(&mut link.queue)));
                        }
                        let Some(snapshot) = link.snapshot.as_ref() else {
                            link.writer = Some(cx.waker().clone());
                            return Poll::Pending;
                        };
                        match snapshot.poll_recv(cx) {
                            Poll::Ready(Some(Streamed::Frames(frames))) => {
                                // Waiting on the producer is not the peer failing to read.
                                link.progress = Some(std::time::Instant::now());
                                return Poll::Ready(Some(frames));
                            }
                            Poll::Ready(Some(Streamed::Done)) => {
                                // What was queued behind the SNAP goes next.
                                link.snapshot = None;
                                link.queue = std::mem::take(&mut link.after);
                            }
                            Poll::Ready(None) => {
                                // The producer stopped short of the SNAP's end: nothing may
                                // follow on this connection.
                                link.reset = true;
                                return Poll::Ready(None);
                            }
                            Poll::Pending => {
                                link.writer = Some(cx.waker().clone());
                                return Poll::Pending;
                            }
                        }
                    }
                })
                .await;
                let Some(batch) = batch else { break };
                // In pieces, noting progress after each: a peer that reads slowly but
                // steadily (a long DIFF) is not taken for one that stopped reading.
                for piece in batch.chunks(WRITE_PIECE) {
                    if link_fault(PEER_SEND).await.is_err() || writer.write_all(piece).await.is_err() {
                        return;
                    }
                    if let Some(link) = outbound.borrow_mut().get_mut(&peer) {
                        link.progress = Some(std::time::Instant::now());
                    }
                }
                // Over TLS the last records may wait in the session's buffer until the next
                // write; a batch must leave now (on plain TCP this does nothing).
                if writer.flush().await.is_err() {
                    return;
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
                link.snapshot = None;
                link.after = Vec::new();
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
        let Ok(stream) = listener.accept().await else {
            // Out of file descriptors, say: do not spin; the backlog waits.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            continue;
        };
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

async fn read_loop(stream: TcpStream, known: Vec<ServerId>, frame_bytes_max: usize, links: Rc<Links>) {
    let caller = stream.peer_addr().ok();
    let mut stream = match &links.tls {
        None => PeerStream::Plain(stream),
        Some(tls) => match within_handshake_time(tls.acceptor.accept(stream)).await {
            Ok(s) => PeerStream::Accepted(Box::new(s)),
            Err(error) => {
                if let Some(suppressed) = links.refusals.allow(std::time::Instant::now()) {
                    tracing::warn!(me = links.me, caller = ?caller, %error, suppressed, "refusing a connection on the peer port: its TLS handshake failed");
                }
                return;
            }
        },
    };
    let mut bytes = [0u8; HELLO_BYTES];
    let _ = stream.tcp().set_read_timeout(Some(HELLO_WAIT));
    let read = stream.read_exact(&mut bytes).await;
    let _ = stream.tcp().set_read_timeout(None);
    let checked = match read {
        Ok(()) => Hello::check(&bytes, links.ensemble, links.me, &known).map_err(|e| e.to_string()),
        Err(e) => Err(format!("no hello within {HELLO_WAIT:?} ({e})")),
    };
    let hello = match checked {
        Ok(hello) => hello,
        Err(why) => {
            if let Some(suppressed) = links.refusals.allow(std::time::Instant::now()) {
                tracing::warn!(me = links.me, caller = ?caller, %why, suppressed, "refusing a connection on the peer port");
            }
            return;
        }
    };
    let (from, incarnation) = (hello.from, hello.incarnation);
    links.note_incarnation(from, incarnation, caller);
    let answered = stream.write_all(&links.incarnation.to_le_bytes()).await;
    if answered.is_err() || stream.flush().await.is_err() {
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
        if link_fault(PEER_RECV).await.is_err() {
            break None;
        }
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
        if let Some(suppressed) = links.refusals.allow(std::time::Instant::now()) {
            tracing::warn!(from, caller = ?caller, error = %e, suppressed, "bad frame from a peer; closing its connection");
        }
    }
    if !is_current() {
        return;
    }
    links.current_inbound.borrow_mut().remove(&from);
    if !stop.get() {
        links.events.push(PeerEvent::Disconnected(from));
    }
}

/// How long a dial waits for the acceptor's answer to its hello.
const HANDSHAKE_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Failpoint on sending to a peer: an injected error drops the connection, a delay holds
/// the bytes back (see `baton_engine::faults`).
const PEER_SEND: &str = "peer-send";
/// Failpoint on receiving from a peer, like [`PEER_SEND`].
const PEER_RECV: &str = "peer-recv";

async fn link_fault(point: &str) -> std::io::Result<()> {
    baton_engine::faults::io(point).await
}
