//! etcd's Watch service: bidirectional streams carrying many watchers each.
//!
//! Every committed batch reaches the etcd front in order (it is a slot of the write path's
//! answers, `front::pump`), with the events each etcd entry made. A watcher is *synced* when
//! the batches alone keep it up to date, and *unsynced* while it still has history to catch
//! up on: one that starts in the past, or one whose client read too slowly and whose stream's
//! bounded queue filled up (as etcd's unsynced watchers: a slow watcher never holds up writes
//! or other watchers). A catch-up task reads unsynced watchers' events from the keyspace's
//! history, a bounded number per pass, and cancels a watcher whose history was compacted
//! away, with the compaction's revision, as etcd does.
//!
//! Each watcher holds the first revision it has not been sent yet, and events below it are
//! never sent again: events arrive in revision order, with no gap and no duplicate, whether
//! they come from a batch or from history.
//!
//! A watcher created with `fragment` has an answer larger than `--etcd-max-request-bytes`
//! cut into several, each marked `fragment` but the last, as etcd's `sendFragments` cuts
//! them (a client joins them back); the pieces go into the stream's queue together or not
//! at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_engine::mvcc::{Event, EventKind, MvccError};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::convert;
use super::front::Front;
use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;

/// Answers queued per stream before its watchers fall back to catching up from history.
const STREAM_QUEUE: usize = 256;

/// How often unsynced watchers are caught up.
const CATCH_UP_EVERY: Duration = Duration::from_millis(20);

/// Events read from history per watcher per catch-up pass.
const CATCH_UP_EVENTS: usize = 1000;

/// One watcher.
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    /// Sent a progress notification (no events, the current revision) every
    /// `--etcd-watch-progress-notify-ms` while synced.
    progress_notify: bool,
    /// Answers larger than this are sent in fragments (etcd's `fragment`, cut at
    /// `--etcd-max-request-bytes`).
    fragment_over: Option<usize>,
    /// The first revision not sent yet.
    next: i64,
    synced: bool,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let k: &[u8] = &e.kv.key;
        let in_range = match self.range_end.as_slice() {
            [] => k == self.key.as_slice(),
            [0] => k >= self.key.as_slice(),
            end => k >= self.key.as_slice() && k < end,
        };
        in_range
            && !(self.no_put && e.kind == EventKind::Put)
            && !(self.no_delete && e.kind == EventKind::Delete)
            && e.kv.mod_revision >= self.next
    }

    fn event(&self, e: &Event) -> mvccpb::Event {
        let mut m = message(e);
        if !self.prev_kv {
            m.prev_kv = None;
        }
        m
    }
}

/// An event as etcd's message, its previous value included.
fn message(e: &Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: if e.kind == EventKind::Put { 0 } else { 1 },
        kv: Some(convert::kv_shared(e.kv.clone())),
        prev_kv: e.prev_kv.clone().map(convert::kv_shared),
    }
}

/// Cuts `answer` as etcd's `sendFragments` does: whole if it is smaller than `max` bytes or
/// has fewer than two events; otherwise into answers of as many events as keep each below
/// `max` (at least one each), all but the last marked `fragment`.
fn fragments(answer: pb::WatchResponse, max: usize) -> Vec<pb::WatchResponse> {
    use prost::Message;
    if answer.events.len() < 2 || answer.encoded_len() < max {
        return vec![answer];
    }
    let template = pb::WatchResponse { events: Vec::new(), fragment: true, ..answer.clone() };
    let base = template.encoded_len();
    let mut out = Vec::new();
    let mut current = template.clone();
    let mut size = base;
    for event in answer.events {
        // The events field is number 11 of WatchResponse.
        let grows = prost::encoding::message::encoded_len(11, &event);
        if !current.events.is_empty() && size + grows >= max {
            out.push(std::mem::replace(&mut current, template.clone()));
            size = base;
        }
        current.events.push(event);
        size += grows;
    }
    current.fragment = false;
    out.push(current);
    out
}

/// Puts `answer` in a stream's queue (in fragments if the watcher asked for them): all of it,
/// or nothing when the queue has no room.
fn send(tx: &mpsc::Sender<Encoded>, answer: pb::WatchResponse, fragment_over: Option<usize>) -> bool {
    let Some(max) = fragment_over else { return put(tx, &answer) };
    let parts = fragments(answer, max);
    // Only the hub's holder sends, so the room seen here is there for every part.
    if tx.capacity() < parts.len() {
        return false;
    }
    parts.iter().all(|part| put(tx, part))
}

/// Puts `answer` in a stream's queue if it has room.
fn put(tx: &mpsc::Sender<Encoded>, answer: &pb::WatchResponse) -> bool {
    tx.try_send(Encoded::new(answer)).is_ok()
}

/// An answer as it goes on the wire (its protobuf encoding): encoded once, and the same
/// bytes queued to every stream it goes to (a watched key's change to 10,000 watchers is
/// one encoding and 10,000 reference counts, not 10,000 messages built and encoded).
#[derive(Debug, Clone)]
pub struct Encoded(bytes::Bytes);

impl Encoded {
    /// `answer` as one gRPC message: not compressed, its length, its encoding.
    fn new(answer: &pb::WatchResponse) -> Encoded {
        use prost::Message;
        let len = answer.encoded_len();
        let mut out = Vec::with_capacity(5 + len);
        out.push(0);
        // Answers are far below 4 GiB (a watcher's are cut at the request limit or hold one
        // event, itself below it).
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        answer.encode_raw(&mut out);
        Encoded(out.into())
    }
}

/// The Watch service's requests, decoded as tonic's own codec does.
#[derive(Debug, Default, Clone, Copy)]
struct RequestDecoder;

impl tonic::codec::Decoder for RequestDecoder {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<pb::WatchRequest>, Status> {
        use prost::Message;
        pb::WatchRequest::decode(src).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

/// A watch stream's answers as the response's body: each queued answer a DATA frame as it
/// was encoded (no copy, no encoding per stream), then, should the queue end, trailers
/// with status OK (a stream ends that way when the server stops).
pub struct Answers {
    rx: mpsc::Receiver<Encoded>,
    ended: bool,
}

impl http_body::Body for Answers {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(answer) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(answer.0)))),
            None => {
                self.ended = true;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                std::task::Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
        }
    }
}

/// One client stream and its watchers.
struct Stream {
    tx: mpsc::Sender<Encoded>,
    watchers: HashMap<i64, Watcher>,
    next_id: i64,
}

/// Every watch stream of this server's etcd front.
#[derive(Default)]
pub struct Hub {
    streams: HashMap<u64, Stream>,
    next_stream: u64,
    /// When progress notifications were last sent.
    last_progress: Option<std::time::Instant>,
}

impl Hub {
    /// A committed batch's events (revision order), up to revision `current`: sent to each
    /// synced watcher that wants them; a stream whose queue is full has its watchers fall back
    /// to catching up.
    pub fn publish(&mut self, front: &Front, events: &[Event], current: i64) {
        self.streams.retain(|_, s| !s.tx.is_closed());
        // Each event as etcd's message once (its bytes shared with the keyspace), with its
        // previous value; and each answer encoded once for every watcher that gets the same
        // one: the same watch ID (a stream's first watcher is 0 on every stream), the same
        // events, with or without their previous values.
        let messages: Vec<mvccpb::Event> = events.iter().map(message).collect();
        let header = Some(front.header(current));
        let mut last: Option<(i64, bool, Vec<usize>, Encoded)> = None;
        let mut wanted = Vec::new();
        for stream in self.streams.values_mut() {
            for (&id, w) in stream.watchers.iter_mut().filter(|(_, w)| w.synced) {
                wanted.clear();
                wanted.extend(events.iter().enumerate().filter(|(_, e)| w.wants(e)).map(|(i, _)| i));
                if !wanted.is_empty() {
                    let answer = |wanted: &[usize]| pb::WatchResponse {
                        header,
                        watch_id: id,
                        events: wanted
                            .iter()
                            .map(|&i| {
                                let m = &messages[i];
                                mvccpb::Event {
                                    r#type: m.r#type,
                                    kv: m.kv.clone(),
                                    prev_kv: if w.prev_kv { m.prev_kv.clone() } else { None },
                                }
                            })
                            .collect(),
                        ..pb::WatchResponse::default()
                    };
                    let sent = match w.fragment_over {
                        Some(_) => send(&stream.tx, answer(&wanted), w.fragment_over),
                        None => {
                            let same = last.as_ref().is_some_and(|(i, p, ev, _)| {
                                *i == id && *p == w.prev_kv && ev.as_slice() == wanted.as_slice()
                            });
                            if !same {
                                last = Some((id, w.prev_kv, wanted.clone(), Encoded::new(&answer(&wanted))));
                            }
                            // `last` is this watcher's answer now (made just above if it differed).
                            last.as_ref().is_some_and(|(.., e)| stream.tx.try_send(e.clone()).is_ok())
                        }
                    };
                    if !sent {
                        w.synced = false;
                        continue;
                    }
                }
                w.next = w.next.max(current + 1);
            }
        }
    }
}

/// The Watch service of this server's etcd front.
pub struct WatchService {
    pub(super) front: Arc<Front>,
    pub(super) hub: Arc<Mutex<Hub>>,
}

fn lock(hub: &Mutex<Hub>) -> std::sync::MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(|p| p.into_inner())
}

impl WatchService {
    fn create(&self, stream: u64, c: pb::WatchCreateRequest) {
        // The hub first, then the revision: a batch published after this reading (the
        // pump takes the hub too) is one this watcher gets.
        let mut hub = lock(&self.hub);
        let current = self.front.shared.etcd().revision();
        let Some(s) = hub.streams.get_mut(&stream) else { return };
        let header = Some(self.front.header(current));
        if c.start_revision < 0 {
            // etcd's answer to a negative start revision.
            let answer = pb::WatchResponse {
                header,
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: MvccError::Compacted.to_string(),
                ..pb::WatchResponse::default()
            };
            let _ = put(&s.tx, &answer);
            return;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while s.watchers.contains_key(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id
        };
        if s.watchers.contains_key(&id) {
            let answer = pb::WatchResponse {
                header,
                watch_id: id,
                created: true,
                canceled: true,
                cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                ..pb::WatchResponse::default()
            };
            let _ = put(&s.tx, &answer);
            return;
        }
        let past = c.start_revision != 0 && c.start_revision <= current;
        let next = if c.start_revision == 0 { current + 1 } else { c.start_revision };
        let watcher = Watcher {
            key: c.key,
            range_end: c.range_end,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&0),
            no_delete: c.filters.contains(&1),
            progress_notify: c.progress_notify,
            fragment_over: c.fragment.then_some(self.front.shared.config.etcd_max_request_bytes),
            next,
            synced: !past,
        };
        s.watchers.insert(id, watcher);
        let created = pb::WatchResponse { header, watch_id: id, created: true, ..pb::WatchResponse::default() };
        let _ = put(&s.tx, &created);
    }

    fn cancel(&self, stream: u64, watch_id: i64) {
        let mut hub = lock(&self.hub);
        let current = self.front.shared.etcd().revision();
        let Some(s) = hub.streams.get_mut(&stream) else { return };
        if s.watchers.remove(&watch_id).is_some() {
            let answer = pb::WatchResponse {
                header: Some(self.front.header(current)),
                watch_id,
                canceled: true,
                ..pb::WatchResponse::default()
            };
            let _ = put(&s.tx, &answer);
        }
    }

    fn progress(&self, stream: u64) {
        let hub = lock(&self.hub);
        let current = self.front.shared.etcd().revision();
        let Some(s) = hub.streams.get(&stream) else { return };
        // As etcd: a progress notification (watch ID -1) once every watcher is synced.
        if s.watchers.values().all(|w| w.synced) {
            let answer = pb::WatchResponse {
                header: Some(self.front.header(current)),
                watch_id: -1,
                ..pb::WatchResponse::default()
            };
            let _ = put(&s.tx, &answer);
        }
    }
}

impl Hub {
    /// etcd's progress notifications: every `every`, each synced watcher that asked for them
    /// gets the current revision with no events (it has seen everything up to it).
    fn notify_progress(&mut self, front: &Front, every: Duration) {
        let now = std::time::Instant::now();
        let last = *self.last_progress.get_or_insert(now);
        if now.duration_since(last) < every {
            return;
        }
        self.last_progress = Some(now);
        let current = front.shared.etcd().revision();
        for s in self.streams.values() {
            for (&id, _) in s.watchers.iter().filter(|(_, w)| w.synced && w.progress_notify) {
                let answer = pb::WatchResponse {
                    header: Some(front.header(current)),
                    watch_id: id,
                    ..pb::WatchResponse::default()
                };
                let _ = put(&s.tx, &answer);
            }
        }
    }
}

/// Catches unsynced watchers up from the keyspace's history, and sends progress
/// notifications, until the server stops.
pub async fn catch_up(front: Arc<Front>, hub: Arc<Mutex<Hub>>) {
    let every = Duration::from_millis(front.shared.config.etcd_watch_progress_notify_ms.max(1));
    loop {
        super::rt::sleep(CATCH_UP_EVERY).await;
        // The hub, then the keyspace, everywhere.
        let mut hub = lock(&hub);
        hub.notify_progress(&front, every);
        if hub.streams.values().all(|s| s.watchers.values().all(|w| w.synced)) {
            continue;
        }
        let ks = front.shared.etcd();
        let current = ks.revision();
        hub.streams.retain(|_, s| !s.tx.is_closed());
        for s in hub.streams.values_mut() {
            let mut cancelled = Vec::new();
            for (&id, w) in s.watchers.iter_mut().filter(|(_, w)| !w.synced) {
                if s.tx.capacity() == 0 {
                    break;
                }
                let events = match ks.events(w.next, current, &w.key, &w.range_end) {
                    Ok(events) => events,
                    Err(compacted) => {
                        super::refusals::note(
                            "/etcdserverpb.Watch/Watch",
                            11,
                            &format!("watch from revision {} cancelled: compacted at {compacted}", w.next),
                        );
                        let answer = pb::WatchResponse {
                            header: Some(front.header(current)),
                            watch_id: id,
                            canceled: true,
                            compact_revision: compacted,
                            ..pb::WatchResponse::default()
                        };
                        let _ = put(&s.tx, &answer);
                        cancelled.push(id);
                        continue;
                    }
                };
                let mut chunk: Vec<&Event> = events.iter().filter(|e| w.wants(e)).take(CATCH_UP_EVENTS).collect();
                // Never split a revision between two answers.
                let complete = chunk.len() < CATCH_UP_EVENTS;
                if !complete {
                    if let Some(last) = chunk.last().map(|e| e.kv.mod_revision) {
                        if chunk.iter().any(|e| e.kv.mod_revision != last) {
                            chunk.retain(|e| e.kv.mod_revision != last);
                        }
                    }
                }
                let reached = if complete { current } else { chunk.last().map_or(current, |e| e.kv.mod_revision) };
                if !chunk.is_empty() {
                    let answer = pb::WatchResponse {
                        header: Some(front.header(current)),
                        watch_id: id,
                        events: chunk.iter().map(|e| w.event(e)).collect(),
                        ..pb::WatchResponse::default()
                    };
                    if !send(&s.tx, answer, w.fragment_over) {
                        continue;
                    }
                }
                w.next = reached + 1;
                w.synced = complete;
            }
            for id in cancelled {
                s.watchers.remove(&id);
            }
        }
    }
}

impl WatchService {
    /// One Watch call: a stream of watchers, its answers queued as they are made.
    fn watch(&self, mut inbound: Streaming<pb::WatchRequest>) -> Answers {
        use pb::watch_request::RequestUnion as R;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = {
            let mut hub = lock(&self.hub);
            let id = hub.next_stream;
            hub.next_stream += 1;
            hub.streams.insert(id, Stream { tx, watchers: HashMap::new(), next_id: 0 });
            id
        };
        let service = WatchService { front: self.front.clone(), hub: self.hub.clone() };
        super::rt::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                match req.request_union {
                    Some(R::CreateRequest(c)) => service.create(stream, c),
                    Some(R::CancelRequest(c)) => service.cancel(stream, c.watch_id),
                    Some(R::ProgressRequest(_)) => service.progress(stream),
                    None => {}
                }
            }
            // A client that closes its half of the stream still gets its watchers' events,
            // as from etcd: the stream goes when its answers can no longer be sent (its
            // receiver is dropped with the connection; see `Hub::publish`).
        });
        Answers { rx, ended: false }
    }
}

/// The Watch service's route, in place of tonic's generated `WatchServer`: requests decoded
/// as it does, answers sent as they were queued, already encoded ([`Answers`]).
#[derive(Clone)]
pub struct WatchRoute {
    service: Arc<WatchService>,
    max_decoding: usize,
}

impl WatchRoute {
    /// The route to `service`, refusing requests larger than `max_decoding` bytes.
    pub fn new(service: WatchService, max_decoding: usize) -> WatchRoute {
        WatchRoute { service: Arc::new(service), max_decoding }
    }
}

impl tonic::server::NamedService for WatchRoute {
    const NAME: &'static str = "etcdserverpb.Watch";
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, std::convert::Infallible>> + Send>>;

impl<B> tower::Service<http::Request<B>> for WatchRoute
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, max) = (self.service.clone(), self.max_decoding);
        Box::pin(async move {
            if request.uri().path() != "/etcdserverpb.Watch/Watch" {
                let (parts, ()) = Status::unimplemented("").into_http::<()>().into_parts();
                return Ok(http::Response::from_parts(parts, tonic::body::Body::empty()));
            }
            let inbound = Streaming::new_request(RequestDecoder, request.into_body(), None, Some(max));
            let answers = service.watch(inbound);
            let mut response = http::Response::new(tonic::body::Body::new(answers));
            response.headers_mut().insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn event(value_bytes: usize) -> mvccpb::Event {
        let kv = mvccpb::KeyValue {
            key: b"k".to_vec().into(),
            value: vec![7; value_bytes].into(),
            ..mvccpb::KeyValue::default()
        };
        mvccpb::Event { r#type: 0, kv: Some(kv), prev_kv: None }
    }

    #[test]
    fn an_answer_is_encoded_once_as_one_grpc_message_that_decodes_back_to_it() {
        let answer = pb::WatchResponse {
            header: Some(pb::ResponseHeader { revision: 9, ..pb::ResponseHeader::default() }),
            watch_id: 3,
            events: vec![event(300), event(0)],
            ..pb::WatchResponse::default()
        };
        let bytes = Encoded::new(&answer).0;
        assert_eq!(bytes[0], 0, "not compressed");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 5);
        assert_eq!(pb::WatchResponse::decode(&bytes[5..]).expect("decodes"), answer);
        // Queued to many streams, the same bytes.
        let e = Encoded::new(&answer);
        let (a, b) = (e.clone(), e);
        assert_eq!(a.0.as_ptr(), b.0.as_ptr());
    }

    #[test]
    fn answers_are_fragmented_as_etcds_send_fragments_cuts_them() {
        let header = Some(pb::ResponseHeader { revision: 9, ..pb::ResponseHeader::default() });
        let answer = pb::WatchResponse {
            header,
            watch_id: 3,
            events: (0..10).map(|_| event(1000)).collect(),
            ..pb::WatchResponse::default()
        };
        // Under the limit, or a single event: whole.
        assert_eq!(fragments(answer.clone(), 1 << 20), vec![answer.clone()]);
        let one = pb::WatchResponse { events: vec![event(5000)], ..answer.clone() };
        assert_eq!(fragments(one.clone(), 100), vec![one]);
        // Over it: pieces below the limit, every event once and in order, all but the last
        // marked, each with the watch's id and header.
        let parts = fragments(answer.clone(), 3500);
        assert_eq!(parts.iter().map(|p| p.events.len()).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        assert!(parts.iter().all(|p| p.encoded_len() < 3500 && p.watch_id == 3 && p.header == answer.header));
        let flags: Vec<bool> = parts.iter().map(|p| p.fragment).collect();
        assert_eq!(flags, vec![true, true, true, false]);
        let joined: Vec<mvccpb::Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, answer.events);
        // An event alone larger than the limit still goes, alone.
        let parts = fragments(answer.clone(), 500);
        assert_eq!(parts.len(), 10);
        // All or nothing into a queue.
        let (tx, _rx) = mpsc::channel(3);
        assert!(!send(&tx, answer.clone(), Some(3500)), "four parts do not fit in three places");
        assert_eq!(tx.capacity(), 3, "nothing was queued");
        assert!(send(&tx, answer, None));
    }
}
