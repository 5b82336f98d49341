//! One client connection: its session binding, its in-order reply slots and its output queue.
//!
//! ZooKeeper answers a session's requests in the order they were sent, and a read sent after
//! a write must see that write. So every request takes a slot: a read with no write ahead of
//! it is answered at once; otherwise it waits in its slot until the writes ahead of it commit.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;

use baton_engine::sequencer::AuthId;
use baton_engine::SessionId;

use super::proto::Request;
use super::replies::ReplyShape;
use crate::runtime::{ConnId, ConnInfo};

/// A request's place in the reply order.
#[derive(Debug)]
pub enum Slot {
    /// The reply is ready.
    Ready(Vec<u8>),
    /// A write waiting for the write path's answer, which names its xid.
    Write {
        /// The request id.
        xid: i32,
        /// What its reply looks like.
        shape: ReplyShape,
        /// When it arrived (for `srvr`'s latency).
        at: std::time::Instant,
    },
    /// A sync waiting for the ensemble.
    Sync {
        /// The request id.
        xid: i32,
        /// The path the client named (echoed in the reply).
        path: String,
        /// When it arrived.
        at: std::time::Instant,
    },
    /// A read waiting for the writes ahead of it.
    Read {
        /// The request id.
        xid: i32,
        /// The read.
        request: Request,
        /// When it arrived.
        at: std::time::Instant,
    },
}

/// Connection state shared by its reader and writer tasks and the committer.
#[derive(Debug)]
pub struct Conn {
    /// Id on this server.
    pub id: ConnId,
    /// Client address.
    pub peer: SocketAddr,
    /// Session, counters and address as the four-letter words see them.
    pub info: Arc<ConnInfo>,
    /// Identities proven on this connection (ip, digest, sasl).
    pub auth: RefCell<Vec<AuthId>>,
    /// Its session is read-only (granted by a server in read-only mode).
    pub read_only: Cell<bool>,
    /// Where this connection's SASL exchange stands.
    pub sasl: RefCell<super::sasl::SaslState>,
    /// Replies in request order.
    pub slots: RefCell<VecDeque<Slot>>,
    out: RefCell<VecDeque<Vec<u8>>>,
    out_waker: RefCell<Option<Waker>>,
    close_waker: RefCell<Option<Waker>>,
    connect_waker: RefCell<Option<Waker>>,
    closing: Cell<bool>,
    /// Close once the next frame (an answer being made now) is queued.
    close_after_send: Cell<bool>,
}

impl Conn {
    /// A new connection.
    pub fn new(id: ConnId, peer: SocketAddr) -> Conn {
        Conn {
            id,
            peer,
            info: Arc::new(ConnInfo::new(peer)),
            auth: RefCell::new(vec![AuthId::new("ip", &peer.ip().to_string())]),
            sasl: RefCell::default(),
            read_only: Cell::new(false),
            slots: RefCell::new(VecDeque::new()),
            out: RefCell::new(VecDeque::new()),
            out_waker: RefCell::new(None),
            close_waker: RefCell::new(None),
            connect_waker: RefCell::new(None),
            closing: Cell::new(false),
            close_after_send: Cell::new(false),
        }
    }

    /// The bound session ([`SessionId::NONE`] until connected).
    pub fn session(&self) -> SessionId {
        SessionId(self.info.session_id.load(Ordering::Relaxed))
    }

    /// Binds the connection to its session (the connect response is on its way).
    pub fn bind(&self, session: SessionId, timeout_ms: i32) {
        self.info.session_id.store(session.as_i64(), Ordering::Relaxed);
        self.info.timeout_ms.store(timeout_ms, Ordering::Relaxed);
        if let Some(w) = self.connect_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Ready once the connection has a session or is closing.
    pub fn poll_connected(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.closing.get() || self.session() != SessionId::NONE {
            return std::task::Poll::Ready(());
        }
        *self.connect_waker.borrow_mut() = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    /// Counts a received request.
    pub fn count_received(&self) {
        self.info.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a frame for the writer task.
    pub fn send(&self, frame: Vec<u8>) {
        if self.closing.get() {
            return;
        }
        self.out.borrow_mut().push_back(frame);
        self.info.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = self.out_waker.borrow_mut().take() {
            w.wake();
        }
        if self.close_after_send.get() {
            self.close();
        }
    }

    /// Closes the connection once the answer being made now is sent (a failed
    /// authentication: ZooKeeper replies AuthFailed, then closes; the session lives on).
    pub fn close_after_reply(&self) {
        self.close_after_send.set(true);
    }

    /// Closes after what is queued has been written.
    pub fn close(&self) {
        self.closing.set(true);
        if let Some(w) = self.out_waker.borrow_mut().take() {
            w.wake();
        }
        if let Some(w) = self.close_waker.borrow_mut().take() {
            w.wake();
        }
        if let Some(w) = self.connect_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Ready once the connection is closing (to stop its reader).
    pub fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.closing.get() {
            return std::task::Poll::Ready(());
        }
        *self.close_waker.borrow_mut() = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    /// Whether the connection is closing.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Frames to write now (empty: park with `waker`); `None` once closing and drained.
    pub fn take_output(&self, waker: &Waker) -> Option<Vec<Vec<u8>>> {
        let mut out = self.out.borrow_mut();
        if out.is_empty() {
            if self.closing.get() {
                return None;
            }
            *self.out_waker.borrow_mut() = Some(waker.clone());
        }
        Some(out.drain(..).collect())
    }

    /// Whether any write is ahead in the reply order.
    pub fn has_pending(&self) -> bool {
        !self.slots.borrow().is_empty()
    }
}
