//! One simulated server: its protocol core (absent while crashed), its disk, and its state
//! machine (the committed entries it applied, in order).

use baton_engine::zab::{LogEntry, Payload, Persisted, ServerId, Zab, ZabConfig};
use baton_engine::Zxid;

/// What survives a crash.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    /// The accepted epoch file.
    pub accepted_epoch: u32,
    /// The current epoch file.
    pub current_epoch: u32,
    /// The newest snapshot: its zxid and the state (every committed entry up to it).
    pub snapshot: (Zxid, Vec<LogEntry>),
    /// The log after the snapshot: appended entries, the first `durable` of them fsync'ed.
    pub log: Vec<LogEntry>,
    /// Invariant: durable <= log.len().
    pub durable: usize,
    /// Bumped when the log is cut or replaced: fsync completions of before are void.
    pub generation: u64,
}

impl Disk {
    /// What a restarted server recovers.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            accepted_epoch: self.accepted_epoch,
            current_epoch: self.current_epoch,
            snapshot_zxid: self.snapshot.0,
            entries: self.log.clone(),
        }
    }
}

/// A server of the simulation.
#[derive(Debug)]
pub struct Node {
    /// Its id.
    pub id: ServerId,
    /// The core, `None` while crashed.
    pub zab: Option<Zab>,
    /// The disk.
    pub disk: Disk,
    /// The state machine: committed entries applied in zxid order.
    pub applied: Vec<LogEntry>,
    /// Bumped at every restart: events of an earlier life are void.
    pub life: u64,
}

impl Node {
    /// A fresh server.
    pub fn new(cfg: ZabConfig) -> Node {
        let disk = Disk::default();
        let zab = Zab::new(cfg.clone(), disk.persisted());
        Node { id: cfg.id, zab: Some(zab), disk, applied: Vec::new(), life: 0 }
    }

    /// The last applied zxid.
    pub fn applied_zxid(&self) -> Zxid {
        self.applied.last().map_or(self.disk.snapshot.0, |(z, _)| *z)
    }
}

/// Encodes a state (list of entries) as snapshot bytes.
pub fn encode_state(entries: &[LogEntry]) -> Payload {
    let mut out = Vec::new();
    for (z, p) in entries {
        out.extend_from_slice(&z.0.to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out.into()
}

/// Decodes snapshot bytes made by [`encode_state`].
pub fn decode_state(mut bytes: &[u8]) -> Option<Vec<LogEntry>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let z = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
        let p: Payload = bytes.get(12..12 + len)?.into();
        out.push((Zxid(z), p));
        bytes = &bytes[12 + len..];
    }
    Some(out)
}
