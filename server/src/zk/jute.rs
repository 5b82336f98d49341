//! Jute, ZooKeeper's serialization: big-endian integers, `buffer`/`ustring`/`vector` as a
//! 32-bit length (-1 for null) followed by the bytes or elements.
//!
//! [`Reader`] never panics and never allocates more than the input could hold: every length
//! is checked against the bytes remaining before anything is read or reserved.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JuteError {
    /// The frame ended inside a field.
    #[error("frame truncated reading {0}")]
    Truncated(&'static str),
    /// A length was negative (other than null) or larger than the bytes left.
    #[error("bad length {len} for {what}")]
    BadLength {
        /// What was being read.
        what: &'static str,
        /// The length found.
        len: i32,
    },
    /// A string that is not UTF-8.
    #[error("string is not UTF-8")]
    NotUtf8,
    /// A null where ZooKeeper requires a value.
    #[error("unexpected null {0}")]
    Null(&'static str),
    /// Bytes left over after a complete record.
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

/// Reads jute fields from a frame.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over one frame's payload.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), JuteError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(JuteError::Trailing(n)),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], JuteError> {
        if self.bytes.len() < n {
            return Err(JuteError::Truncated(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], JuteError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// `int`.
    pub fn int(&mut self, what: &'static str) -> Result<i32, JuteError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    /// `long`.
    pub fn long(&mut self, what: &'static str) -> Result<i64, JuteError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// `boolean` (one byte, non-zero is true).
    pub fn bool(&mut self, what: &'static str) -> Result<bool, JuteError> {
        Ok(self.array::<1>(what)?[0] != 0)
    }

    fn len(&mut self, what: &'static str, element_min: usize) -> Result<Option<usize>, JuteError> {
        let len = self.int(what)?;
        if len == -1 {
            return Ok(None);
        }
        let Ok(n) = usize::try_from(len) else { return Err(JuteError::BadLength { what, len }) };
        // Each element needs at least `element_min` bytes: a length beyond what is left is
        // refused before anything is allocated.
        if n.saturating_mul(element_min.max(1)) > self.bytes.len() {
            return Err(JuteError::BadLength { what, len });
        }
        Ok(Some(n))
    }

    /// `buffer`, `None` for null.
    pub fn buffer_opt(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, JuteError> {
        match self.len(what, 1)? {
            None => Ok(None),
            Some(n) => self.take(n, what).map(Some),
        }
    }

    /// `buffer`, null read as empty (as ZooKeeper's server treats a null data buffer).
    pub fn buffer(&mut self, what: &'static str) -> Result<&'a [u8], JuteError> {
        Ok(self.buffer_opt(what)?.unwrap_or(&[]))
    }

    /// `ustring`, `None` for null.
    pub fn string_opt(&mut self, what: &'static str) -> Result<Option<&'a str>, JuteError> {
        match self.buffer_opt(what)? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b).map(Some).map_err(|_| JuteError::NotUtf8),
        }
    }

    /// `ustring` that must not be null.
    pub fn string(&mut self, what: &'static str) -> Result<&'a str, JuteError> {
        self.string_opt(what)?.ok_or(JuteError::Null(what))
    }

    /// `vector<T>` where each element takes at least `element_min` bytes; null reads empty.
    pub fn vector<T>(
        &mut self,
        what: &'static str,
        element_min: usize,
        mut element: impl FnMut(&mut Reader<'a>) -> Result<T, JuteError>,
    ) -> Result<Vec<T>, JuteError> {
        let Some(n) = self.len(what, element_min)? else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(element(self)?);
        }
        Ok(out)
    }

    /// `vector<ustring>`.
    pub fn strings(&mut self, what: &'static str) -> Result<Vec<&'a str>, JuteError> {
        self.vector(what, 4, |r| r.string(what))
    }
}

/// Writes jute fields into a growable buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// A writer that starts with a 4-byte frame-length placeholder ([`Writer::into_frame`]).
    pub fn frame() -> Writer {
        Writer { buf: vec![0; 4] }
    }

    /// Fills in the length placeholder and returns the frame.
    pub fn into_frame(mut self) -> Vec<u8> {
        let len = (self.buf.len().saturating_sub(4)) as u32;
        if let Some(head) = self.buf.get_mut(0..4) {
            head.copy_from_slice(&len.to_be_bytes());
        }
        self.buf
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// `int`.
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// `long`.
    pub fn long(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// `boolean`.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.buf.push(v as u8);
        self
    }

    /// `buffer`.
    pub fn buffer(&mut self, v: &[u8]) -> &mut Self {
        self.int(v.len() as i32);
        self.buf.extend_from_slice(v);
        self
    }

    /// A null `buffer`.
    pub fn null(&mut self) -> &mut Self {
        self.int(-1)
    }

    /// `ustring`.
    pub fn string(&mut self, v: &str) -> &mut Self {
        self.buffer(v.as_bytes())
    }

    /// `vector<ustring>`.
    pub fn strings<S: AsRef<str>>(&mut self, v: impl ExactSizeIterator<Item = S>) -> &mut Self {
        self.int(v.len() as i32);
        for s in v {
            self.string(s.as_ref());
        }
        self
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // tests slice buffers they just built
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip_big_endian() {
        let mut w = Writer::new();
        w.int(-2).long(0x0102_0304_0506_0708).bool(true).buffer(b"ab").string("zk").null();
        w.strings(["x", "yz"].into_iter());
        let bytes = w.into_bytes();
        assert_eq!(&bytes[0..4], &[0xff, 0xff, 0xff, 0xfe]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.int("i"), Ok(-2));
        assert_eq!(r.long("l"), Ok(0x0102_0304_0506_0708));
        assert_eq!(r.bool("b"), Ok(true));
        assert_eq!(r.buffer("buf"), Ok(&b"ab"[..]));
        assert_eq!(r.string("s"), Ok("zk"));
        assert_eq!(r.buffer_opt("null"), Ok(None));
        assert_eq!(r.strings("v"), Ok(vec!["x", "yz"]));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut w = Writer::new();
        w.int(i32::MAX);
        let bytes = w.into_bytes();
        assert!(matches!(Reader::new(&bytes).buffer("b"), Err(JuteError::BadLength { .. })));
        assert!(matches!(Reader::new(&bytes).strings("v"), Err(JuteError::BadLength { .. })));
        let mut w = Writer::new();
        w.int(-7);
        assert!(matches!(Reader::new(&w.into_bytes()).string("s"), Err(JuteError::BadLength { .. })));
        assert_eq!(Reader::new(&[0, 0]).int("i"), Err(JuteError::Truncated("i")));
        assert_eq!(Reader::new(&[0, 0, 0, 2, 0xff, 0xfe]).string("s"), Err(JuteError::NotUtf8));
    }

    #[test]
    fn frames_carry_their_length() {
        let mut w = Writer::frame();
        w.int(7);
        assert_eq!(w.into_frame(), vec![0, 0, 0, 4, 0, 0, 0, 7]);
    }
}
