//! One client connection: its session binding, its in-order reply slots and its output queue.
//!
//! ZooKeeper answers a session's requests in the order they were sent, and a read sent after
//! a write must see that write. So every request takes a slot: a read with no write ahead of
//! it is answered at once; otherwise it waits in its slot until the writes ahead of it commit.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::task::Waker;

use baton_engine::sequencer::AuthId;

use crate::watch::ConnId;
use crate::zk::proto::Request;

/// A request's place in the reply order.
#[derive(Debug)]
pub enum Slot {
    /// The reply is ready.
    Ready(Vec<u8>),
    /// A write waiting to commit.
    Write,
    /// A read waiting for the writes ahead of it.
    Read { xid: i32, request: Request },
}

/// Connection state shared by its reader and writer tasks and the committer.
#[derive(Debug)]
pub struct Conn {
    /// Id on this server.
    pub id: ConnId,
    /// Client address.
    pub peer: SocketAddr,
    /// Bound session (0 until connected).
    pub session_id: Cell<i64>,
    /// Negotiated timeout.
    pub timeout_ms: Cell<i32>,
    /// Identities proven on this connection (ip, digest).
    pub auth: RefCell<Vec<AuthId>>,
    /// Replies in request order.
    pub slots: RefCell<VecDeque<Slot>>,
    out: RefCell<VecDeque<Vec<u8>>>,
    out_waker: RefCell<Option<Waker>>,
    close_waker: RefCell<Option<Waker>>,
    closing: Cell<bool>,
    /// Requests received.
    pub received: Cell<u64>,
    /// Frames sent.
    pub sent: Cell<u64>,
}

impl Conn {
    /// A new connection.
    pub fn new(id: ConnId, peer: SocketAddr) -> Conn {
        Conn {
            id,
            peer,
            session_id: Cell::new(0),
            timeout_ms: Cell::new(0),
            auth: RefCell::new(vec![AuthId::new("ip", &peer.ip().to_string())]),
            slots: RefCell::new(VecDeque::new()),
            out: RefCell::new(VecDeque::new()),
            out_waker: RefCell::new(None),
            close_waker: RefCell::new(None),
            closing: Cell::new(false),
            received: Cell::new(0),
            sent: Cell::new(0),
        }
    }

    /// Queues a frame for the writer task.
    pub fn send(&self, frame: Vec<u8>) {
        if self.closing.get() {
            return;
        }
        self.out.borrow_mut().push_back(frame);
        self.sent.set(self.sent.get() + 1);
        if let Some(w) = self.out_waker.borrow_mut().take() {
            w.wake();
        }
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
