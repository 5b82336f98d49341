//! Little-endian fields of bytes read from the disk or the network, without indexing: a
//! field that is not there is `None`, never a panic. The decoders (`wal::record`,
//! `wal::segment`, `zab::wire`, `tree::image`, `mvcc::image`, the epochs file) read through
//! these.

/// The `N` bytes at `at`, if there are that many.
pub fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The little-endian `u32` at `at`.
pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    array_at(bytes, at).map(u32::from_le_bytes)
}

/// The little-endian `u64` at `at`.
pub fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    array_at(bytes, at).map(u64::from_le_bytes)
}

/// A reader of little-endian fields over bytes that may end early: every read checks its
/// length, and one that runs past the end sets `short` (more bytes may be on their way: the
/// snapshot images' push loaders, `tree::TreeLoader` and `mvcc::KeySpaceLoader`, wait for
/// them) and is an error, never a panic.
pub(crate) struct Cursor<'a> {
    /// The bytes.
    pub(crate) bytes: &'a [u8],
    /// Where the next read starts.
    pub(crate) at: usize,
    /// A read ran past the end of the bytes.
    pub(crate) short: bool,
}

#[deny(clippy::indexing_slicing, reason = "decodes bytes from the disk or the network")]
impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, at: 0, short: false }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n);
        let Some(out) = end.and_then(|end| self.bytes.get(self.at..end)) else {
            self.short = true;
            return Err(format!("truncated at byte {} reading {what}", self.at));
        };
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let Some(a) = array_at(self.bytes, self.at) else {
            self.short = true;
            return Err(format!("truncated at byte {} reading {what}", self.at));
        };
        self.at += N;
        Ok(a)
    }

    /// The next `u32`.
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// The next `i32`.
    pub(crate) fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    /// The next `u64`.
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// The next `i64`.
    pub(crate) fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// The next string: a `u32` length, then that many bytes of UTF-8.
    pub(crate) fn str(&mut self, what: &str) -> Result<&'a str, String> {
        let len = self.u32(what)? as usize;
        std::str::from_utf8(self.take(len, what)?).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_past_the_end_are_none() {
        let bytes = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(u32_at(&bytes, 0), Some(1));
        assert_eq!(u64_at(&bytes, 4), Some(2));
        assert_eq!(u64_at(&bytes, 5), None);
        assert_eq!(u32_at(&bytes, usize::MAX), None);
        assert_eq!(array_at::<0>(&bytes, 12), Some([]));
    }
}
