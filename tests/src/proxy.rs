//! A fault-injecting TCP proxy for process tests: forwards every connection made to its port
//! to a target, and can cut them all (and refuse new ones) until healed — a network partition
//! of one link, seen by both ends as broken connections — or pause them (nothing moves, no
//! connection breaks: a peer too slow to read).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy; stopped (listener closed, connections shut down) when dropped.
pub struct Proxy {
    /// Where it listens.
    pub listen: SocketAddr,
    cut: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Handles on every live connection (both sides), by connection number, to cut them.
    open: Arc<Mutex<Vec<(u64, TcpStream)>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` and forwards to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let cut = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<(u64, TcpStream)>>> = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (cut, stop, open, paused) = (cut.clone(), stop.clone(), open.clone(), paused.clone());
            std::thread::spawn(move || {
                let mut next = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let inbound = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let _ = inbound.set_nonblocking(false);
                    let Ok(outbound) = TcpStream::connect_timeout(&target, Duration::from_millis(500)) else {
                        continue;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (Ok(a), Ok(b), Ok(c), Ok(d)) =
                        (inbound.try_clone(), outbound.try_clone(), inbound.try_clone(), outbound.try_clone())
                    else {
                        continue;
                    };
                    next += 1;
                    let id = next;
                    if let Ok(mut list) = open.lock() {
                        // A cut that came while this connection was being made: `cut` set
                        // its flag before it emptied the list, so one of the two sees it.
                        if cut.load(Ordering::SeqCst) {
                            let _ = c.shutdown(Shutdown::Both);
                            let _ = d.shutdown(Shutdown::Both);
                        } else {
                            list.push((id, c));
                            list.push((id, d));
                        }
                    }
                    let (p1, p2) = (paused.clone(), paused.clone());
                    let (o1, o2) = (open.clone(), open.clone());
                    std::thread::spawn(move || pump(inbound, b, &p1, &o1, id));
                    std::thread::spawn(move || pump(outbound, a, &p2, &o2, id));
                }
            })
        };
        Ok(Proxy { listen, cut, paused, stop, open, accept: Some(accept) })
    }

    /// Breaks every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.shutdown_all();
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Stops moving bytes (both ways) without breaking anything, until resumed.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Moves bytes again after [`Proxy::pause`].
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    fn shutdown_all(&self) {
        if let Ok(mut list) = self.open.lock() {
            for (_, s) in list.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.shutdown_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` until either side closes, then closes both and forgets connection
/// `id`'s handles (so a long run does not pile up descriptors); holds still while `paused`.
fn pump(mut from: TcpStream, mut to: TcpStream, paused: &AtomicBool, open: &Mutex<Vec<(u64, TcpStream)>>, id: u64) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    if let Ok(mut list) = open.lock() {
        list.retain(|(conn, _)| *conn != id);
    }
}
