//! The peer wire format of [`Message`]s: length-prefixed, checksummed frames.
//!
//! ```text
//!  0        4                12        13
//!  | len u32 | xxh3-64 of body | tag u8 | fields (little endian) ...        = body (len bytes)
//! ```
//!
//! Entries travel as `zxid u64, len u32, bytes`: the payload is the rkyv `Transaction` exactly as
//! the leader's WAL stores it, and a follower hands those same bytes to its WAL. Decoding
//! checks every length against the frame and the configured bounds and never panics,
//! whatever the bytes (a peer is trusted to be Baton, not to be bug-free or uncorrupted).

use xxhash_rust::xxh3::xxh3_64;

use super::message::{LogEntry, Message, Vote};
use super::role::Role;
use crate::le::{array_at, u32_at, u64_at};
use crate::log::{SessionId, Zxid};

/// Bytes before the body: length and checksum.
pub const FRAME_HEADER_BYTES: usize = 12;

/// Why a frame could not be decoded. The connection it came on must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame announces a body larger than allowed.
    #[error("peer frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body does not match its checksum.
    #[error("peer frame checksum mismatch")]
    Checksum,
    /// The body ends before its fields do, or has bytes left over.
    #[error("malformed peer frame: {0}")]
    Malformed(&'static str),
    /// An unknown message tag.
    #[error("unknown peer message tag {0}")]
    UnknownTag(u8),
}

const NOTIFICATION: u8 = 1;
const FOLLOWER_INFO: u8 = 2;
const LEADER_INFO: u8 = 3;
const ACK_EPOCH: u8 = 4;
const TRUNC: u8 = 5;
const SNAP: u8 = 6;
const APPEND: u8 = 7;
const NEW_LEADER: u8 = 8;
const ACK: u8 = 9;
const UP_TO_DATE: u8 = 10;
const COMMIT: u8 = 11;
const SYNC: u8 = 12;
const SYNC_DONE: u8 = 13;
const PING: u8 = 14;
const TOUCH: u8 = 15;
const FORWARD: u8 = 16;
const HEARD: u8 = 17;
const SNAP_CHUNK: u8 = 18;
const SNAP_END: u8 = 19;

struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    fn zxid(&mut self, z: Zxid) -> &mut Self {
        self.u64(z.0)
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
}

/// Appends the frame of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let mut o = Out(out);
    match msg {
        Message::Notification { round, vote, state } => {
            o.u8(NOTIFICATION).u64(*round).u32(vote.epoch).zxid(vote.zxid).u64(vote.leader);
            match *state {
                Role::Looking => o.u8(0),
                Role::Following { leader, epoch, serving } => o.u8(1).u64(leader).u32(epoch).bool(serving),
                Role::Leading { epoch, established } => o.u8(2).u32(epoch).bool(established),
            };
        }
        Message::FollowerInfo { accepted_epoch, last_zxid } => {
            o.u8(FOLLOWER_INFO).u32(*accepted_epoch).zxid(*last_zxid);
        }
        Message::LeaderInfo { epoch } => {
            o.u8(LEADER_INFO).u32(*epoch);
        }
        Message::AckEpoch { epoch, current_epoch, last_zxid, fresh } => {
            o.u8(ACK_EPOCH).u32(*epoch).u32(*current_epoch).zxid(*last_zxid).u8(u8::from(*fresh));
        }
        Message::Trunc { epoch, zxid } => {
            o.u8(TRUNC).u32(*epoch).zxid(*zxid);
        }
        Message::Snap { epoch, zxid } => {
            o.u8(SNAP).u32(*epoch).zxid(*zxid);
        }
        Message::SnapChunk { epoch, data } => {
            o.u8(SNAP_CHUNK).u32(*epoch).bytes(data);
        }
        Message::SnapEnd { epoch, bytes, checksum } => {
            o.u8(SNAP_END).u32(*epoch).u64(*bytes).u64(*checksum);
        }
        Message::Append { epoch, entries } => {
            o.u8(APPEND).u32(*epoch).u32(entries.len() as u32);
            for entry in entries {
                o.zxid(entry.zxid).bytes(&entry.payload);
            }
        }
        Message::NewLeader { epoch, zxid } => {
            o.u8(NEW_LEADER).u32(*epoch).zxid(*zxid);
        }
        Message::Ack { epoch, zxid } => {
            o.u8(ACK).u32(*epoch).zxid(*zxid);
        }
        Message::UpToDate { epoch, commit } => {
            o.u8(UP_TO_DATE).u32(*epoch).zxid(*commit);
        }
        Message::Commit { epoch, zxid } => {
            o.u8(COMMIT).u32(*epoch).zxid(*zxid);
        }
        Message::Sync { epoch, id } => {
            o.u8(SYNC).u32(*epoch).u64(*id);
        }
        Message::SyncDone { epoch, id, zxid } => {
            o.u8(SYNC_DONE).u32(*epoch).u64(*id).zxid(*zxid);
        }
        Message::Ping { epoch, commit, round } => {
            o.u8(PING).u32(*epoch).zxid(*commit).u64(*round);
        }
        Message::Heard { epoch, round } => {
            o.u8(HEARD).u32(*epoch).u64(*round);
        }
        Message::Touch { epoch, sessions } => {
            o.u8(TOUCH).u32(*epoch).u32(sessions.len() as u32);
            for s in sessions {
                o.u64(s.as_u64());
            }
        }
        Message::Forward { data } => {
            o.u8(FORWARD).bytes(data);
        }
    }
    let body_len = out.len() - start - FRAME_HEADER_BYTES;
    let sum = xxh3_64(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 12].copy_from_slice(&sum.to_le_bytes());
}

struct In<'a>(&'a [u8]);

#[deny(clippy::indexing_slicing, reason = "decodes bytes from the network")]
impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(WireError::Malformed("truncated field"))?;
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let field = array_at(self.0, 0).ok_or(WireError::Malformed("truncated field"))?;
        self.0 = self.0.get(N..).unwrap_or_default();
        Ok(field)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn zxid(&mut self) -> Result<Zxid, WireError> {
        self.u64().map(Zxid)
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed("bad boolean")),
        }
    }
}

/// Decodes one frame body (after its header was checked by [`split_frame`]).
#[deny(clippy::indexing_slicing, reason = "decodes bytes from the network")]
pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
    let mut i = In(body);
    let msg = match i.u8()? {
        NOTIFICATION => {
            let round = i.u64()?;
            let vote = Vote { epoch: i.u32()?, zxid: i.zxid()?, leader: i.u64()? };
            let state = match i.u8()? {
                0 => Role::Looking,
                1 => Role::Following { leader: i.u64()?, epoch: i.u32()?, serving: i.bool()? },
                2 => Role::Leading { epoch: i.u32()?, established: i.bool()? },
                _ => return Err(WireError::Malformed("bad role")),
            };
            Message::Notification { round, vote, state }
        }
        FOLLOWER_INFO => Message::FollowerInfo { accepted_epoch: i.u32()?, last_zxid: i.zxid()? },
        LEADER_INFO => Message::LeaderInfo { epoch: i.u32()? },
        ACK_EPOCH => {
            Message::AckEpoch { epoch: i.u32()?, current_epoch: i.u32()?, last_zxid: i.zxid()?, fresh: i.bool()? }
        }
        TRUNC => Message::Trunc { epoch: i.u32()?, zxid: i.zxid()? },
        SNAP => Message::Snap { epoch: i.u32()?, zxid: i.zxid()? },
        SNAP_CHUNK => Message::SnapChunk { epoch: i.u32()?, data: i.bytes()?.into() },
        SNAP_END => Message::SnapEnd { epoch: i.u32()?, bytes: i.u64()?, checksum: i.u64()? },
        APPEND => {
            let epoch = i.u32()?;
            let count = i.u32()? as usize;
            // Each entry takes at least 12 bytes: a count beyond that is a lie.
            if count > i.0.len() / 12 {
                return Err(WireError::Malformed("entry count exceeds the frame"));
            }
            let mut entries: Vec<LogEntry> = Vec::with_capacity(count);
            for _ in 0..count {
                let zxid = i.zxid()?;
                entries.push(LogEntry::new(zxid, i.bytes()?.into()));
            }
            Message::Append { epoch, entries }
        }
        NEW_LEADER => Message::NewLeader { epoch: i.u32()?, zxid: i.zxid()? },
        ACK => Message::Ack { epoch: i.u32()?, zxid: i.zxid()? },
        UP_TO_DATE => Message::UpToDate { epoch: i.u32()?, commit: i.zxid()? },
        COMMIT => Message::Commit { epoch: i.u32()?, zxid: i.zxid()? },
        SYNC => Message::Sync { epoch: i.u32()?, id: i.u64()? },
        SYNC_DONE => Message::SyncDone { epoch: i.u32()?, id: i.u64()?, zxid: i.zxid()? },
        PING => Message::Ping { epoch: i.u32()?, commit: i.zxid()?, round: i.u64()? },
        HEARD => Message::Heard { epoch: i.u32()?, round: i.u64()? },
        TOUCH => {
            let epoch = i.u32()?;
            let count = i.u32()? as usize;
            if count > i.0.len() / 8 {
                return Err(WireError::Malformed("session count exceeds the frame"));
            }
            let sessions = (0..count).map(|_| i.u64().map(SessionId::from_u64)).collect::<Result<Vec<_>, _>>()?;
            Message::Touch { epoch, sessions }
        }
        FORWARD => Message::Forward { data: i.bytes()?.into() },
        tag => return Err(WireError::UnknownTag(tag)),
    };
    if !i.0.is_empty() {
        return Err(WireError::Malformed("bytes after the message"));
    }
    Ok(msg)
}

/// Takes the first whole frame off `buf`: `Ok(None)` when more bytes are needed, else the
/// message and the bytes it used. Frames whose body exceeds `max_body` are refused before
/// they are buffered.
#[deny(clippy::indexing_slicing, reason = "decodes bytes from the network")]
pub fn split_frame(buf: &[u8], max_body: usize) -> Result<Option<(Message, usize)>, WireError> {
    let (Some(len), Some(sum)) = (u32_at(buf, 0), u64_at(buf, 4)) else { return Ok(None) };
    let len = len as usize;
    if len > max_body {
        return Err(WireError::TooLarge { len, max: max_body });
    }
    let Some(body) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else { return Ok(None) };
    if xxh3_64(body) != sum {
        return Err(WireError::Checksum);
    }
    Ok(Some((decode_body(body)?, FRAME_HEADER_BYTES + len)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn zxid() -> impl Strategy<Value = Zxid> {
        any::<u64>().prop_map(Zxid)
    }

    fn message() -> impl Strategy<Value = Message> {
        let state = prop_oneof![
            Just(Role::Looking),
            (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(leader, epoch, serving)| Role::Following {
                leader,
                epoch,
                serving
            }),
            (any::<u32>(), any::<bool>()).prop_map(|(epoch, established)| Role::Leading { epoch, established }),
        ];
        let entries = proptest::collection::vec((zxid(), proptest::collection::vec(any::<u8>(), 0..40)), 0..5)
            .prop_map(|v| v.into_iter().map(|(z, p)| LogEntry::new(z, p.into())).collect::<Vec<LogEntry>>());
        prop_oneof![
            (any::<u64>(), any::<u32>(), zxid(), any::<u64>(), state).prop_map(
                |(round, epoch, zxid, leader, state)| {
                    Message::Notification { round, vote: Vote { epoch, zxid, leader }, state }
                }
            ),
            (any::<u32>(), zxid())
                .prop_map(|(accepted_epoch, last_zxid)| Message::FollowerInfo { accepted_epoch, last_zxid }),
            any::<u32>().prop_map(|epoch| Message::LeaderInfo { epoch }),
            (any::<u32>(), any::<u32>(), zxid(), any::<bool>()).prop_map(|(epoch, current_epoch, last_zxid, fresh)| {
                Message::AckEpoch { epoch, current_epoch, last_zxid, fresh }
            }),
            (any::<u32>(), zxid()).prop_map(|(epoch, zxid)| Message::Trunc { epoch, zxid }),
            (any::<u32>(), zxid()).prop_map(|(epoch, zxid)| Message::Snap { epoch, zxid }),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(epoch, data)| Message::SnapChunk { epoch, data: data.into() }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(epoch, bytes, checksum)| Message::SnapEnd {
                epoch,
                bytes,
                checksum
            }),
            (any::<u32>(), entries).prop_map(|(epoch, entries)| Message::Append { epoch, entries }),
            (any::<u32>(), zxid()).prop_map(|(epoch, zxid)| Message::NewLeader { epoch, zxid }),
            (any::<u32>(), zxid()).prop_map(|(epoch, zxid)| Message::Ack { epoch, zxid }),
            (any::<u32>(), zxid()).prop_map(|(epoch, commit)| Message::UpToDate { epoch, commit }),
            (any::<u32>(), zxid()).prop_map(|(epoch, zxid)| Message::Commit { epoch, zxid }),
            (any::<u32>(), any::<u64>()).prop_map(|(epoch, id)| Message::Sync { epoch, id }),
            (any::<u32>(), any::<u64>(), zxid()).prop_map(|(epoch, id, zxid)| Message::SyncDone { epoch, id, zxid }),
            (any::<u32>(), zxid(), any::<u64>()).prop_map(|(epoch, commit, round)| Message::Ping {
                epoch,
                commit,
                round
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(epoch, round)| Message::Heard { epoch, round }),
            (any::<u32>(), proptest::collection::vec(any::<i64>().prop_map(SessionId), 0..6))
                .prop_map(|(epoch, sessions)| Message::Touch { epoch, sessions }),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|data| Message::Forward { data: data.into() }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips_in_a_stream(msgs in proptest::collection::vec(message(), 1..6)) {
            let mut buf = Vec::new();
            for m in &msgs {
                encode(m, &mut buf);
            }
            let mut at = 0;
            for m in &msgs {
                // Every proper prefix of a frame asks for more bytes.
                let (decoded, used) = split_frame(&buf[at..], 1 << 20).expect("valid").expect("whole");
                prop_assert_eq!(&decoded, m);
                for cut in 0..used {
                    prop_assert_eq!(split_frame(&buf[at..at + cut], 1 << 20).expect("prefix"), None);
                }
                at += used;
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = split_frame(&bytes, 1 << 20);
            let _ = decode_body(&bytes);
        }

        #[test]
        fn a_flipped_bit_is_caught(m in message(), byte in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut buf = Vec::new();
            encode(&m, &mut buf);
            let i = byte.index(buf.len());
            buf[i] ^= 1 << bit;
            // A flipped length may ask for more bytes or exceed the limit; otherwise the
            // checksum (or the decoder) refuses it. Never the wrong message.
            if let Ok(Some((decoded, _))) = split_frame(&buf, 1 << 20) {
                prop_assert!(false, "corrupt frame decoded as {:?}", decoded);
            }
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        let mut buf = Vec::new();
        encode(&Message::SnapChunk { epoch: 1, data: vec![0; 100].into() }, &mut buf);
        assert!(matches!(split_frame(&buf[..FRAME_HEADER_BYTES], 50), Err(WireError::TooLarge { .. })));
    }
}
