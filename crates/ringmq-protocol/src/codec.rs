//! Little-endian primitive encoding shared by frame bodies.
//!
//! Strings and byte strings are length-prefixed: `u16` for names and keys, `u32` for bodies.
//! The reader never panics: every read checks the remaining length and returns a
//! [`DecodeError`] that says which field was short or invalid.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated body: field `{field}` needs {needed} bytes, {remaining} remain")]
    Truncated {
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{trailing} unexpected trailing bytes after the body")]
    TrailingBytes { trailing: usize },
    #[error("field `{field}`: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Appends little-endian fields to a buffer.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Writer { out }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A byte string of at most `u16::MAX` bytes. Callers validate lengths before encoding;
    /// a longer value here is a programmer error.
    pub fn bytes16(&mut self, v: &[u8]) -> &mut Self {
        assert!(v.len() <= u16::MAX as usize, "bytes16 field too long");
        self.u16(v.len() as u16);
        self.out.extend_from_slice(v);
        self
    }
    pub fn str16(&mut self, v: &str) -> &mut Self {
        self.bytes16(v.as_bytes())
    }
    pub fn bytes32(&mut self, v: &[u8]) -> &mut Self {
        assert!(v.len() <= u32::MAX as usize, "bytes32 field too long");
        self.u32(v.len() as u32);
        self.out.extend_from_slice(v);
        self
    }
    pub fn position(&self) -> usize {
        self.out.len()
    }
    /// Overwrites a `u32` written earlier (counts known only after the items were written).
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn patch_u64(&mut self, at: usize, v: u64) {
        self.out[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// Reads little-endian fields from a body, borrowing byte strings from it.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    pub fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u16(field)? as usize;
        self.take(n, field)
    }
    pub fn str16(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.bytes16(field)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 { field })
    }
    pub fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }
    /// A count of items that each need at least `min_item_bytes`; refuses counts the remaining
    /// body cannot hold, so a hostile count cannot make the decoder reserve huge vectors.
    pub fn count(
        &mut self,
        field: &'static str,
        min_item_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.buf.len() {
            return Err(DecodeError::Invalid {
                field,
                reason: "count exceeds what the body can hold",
            });
        }
        Ok(n)
    }
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                trailing: self.buf.len(),
            })
        }
    }
}
