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

/// How one field is laid out on the wire. A body's fields are declared once with a codec each
/// ([`wire_body!`](crate::message)), and its encoder, decoder, size floor, encodability
/// check and property-test strategy all follow from that list, so they cannot drift apart.
///
/// A codec is a value (mostly a unit struct) rather than a type parameter so a list codec can
/// carry the names its count and items have in decode errors.
pub trait Codec<'a, T> {
    fn write(&self, w: &mut Writer<'_>, v: &T);
    fn read(&self, r: &mut Reader<'a>, field: &'static str) -> Result<T, DecodeError>;
    /// Fewest bytes an encoded value takes: what a list's count is checked against, so a
    /// hostile count cannot make the decoder reserve a huge vector.
    fn min_bytes(&self) -> usize;
    /// Whether `v` fits the wire's length prefixes; [`Writer`] asserts that it does, so an
    /// encoder of untrusted values calls this first.
    fn check(&self, v: &T, field: &'static str) -> Result<(), EncodeError> {
        let _ = (v, field);
        Ok(())
    }
    /// Whether every decodable encoding is the one `write` produces (false where some bytes
    /// are ignored, like the offset of an absent [`Flagged`]).
    fn canonical(&self) -> bool {
        true
    }
}

/// A value that cannot be encoded: a field longer than its length prefix can say.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("field `{field}` is {len} long; the wire allows at most {max}")]
pub struct EncodeError {
    pub field: &'static str,
    pub len: usize,
    pub max: usize,
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError { field, len, max });
    }
    Ok(())
}

/// The fields of a declared body, for nesting one body in another ([`Struct`]).
pub trait Fields<'a>: Sized {
    fn write_fields(&self, w: &mut Writer<'_>);
    fn read_fields(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
    fn min_bytes() -> usize;
    fn check_fields(&self) -> Result<(), EncodeError>;
    /// Whether every field's codec is canonical.
    fn canonical() -> bool;
}

macro_rules! int_codec {
    ($codec:ident, $ty:ty, $method:ident) => {
        #[doc = concat!("A little-endian `", stringify!($ty), "`.")]
        #[derive(Clone, Copy, Debug)]
        pub struct $codec;
        impl<'a> Codec<'a, $ty> for $codec {
            fn write(&self, w: &mut Writer<'_>, v: &$ty) {
                w.$method(*v);
            }
            fn read(&self, r: &mut Reader<'a>, field: &'static str) -> Result<$ty, DecodeError> {
                r.$method(field)
            }
            fn min_bytes(&self) -> usize {
                std::mem::size_of::<$ty>()
            }
        }
    };
}

int_codec!(U8, u8, u8);
int_codec!(U16, u16, u16);
int_codec!(U32, u32, u32);
int_codec!(U64, u64, u64);

/// A UTF-8 string after a `u16` length: names and keys. Decodes borrowed or owned.
#[derive(Clone, Copy, Debug)]
pub struct Str16;
impl<'a> Codec<'a, &'a str> for Str16 {
    fn write(&self, w: &mut Writer<'_>, v: &&'a str) {
        w.str16(v);
    }
    fn read(&self, r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, DecodeError> {
        r.str16(field)
    }
    fn min_bytes(&self) -> usize {
        2
    }
    fn check(&self, v: &&'a str, field: &'static str) -> Result<(), EncodeError> {
        check_len(field, v.len(), u16::MAX as usize)
    }
}
impl<'a> Codec<'a, String> for Str16 {
    fn write(&self, w: &mut Writer<'_>, v: &String) {
        w.str16(v);
    }
    fn read(&self, r: &mut Reader<'a>, field: &'static str) -> Result<String, DecodeError> {
        Ok(r.str16(field)?.to_owned())
    }
    fn min_bytes(&self) -> usize {
        2
    }
    fn check(&self, v: &String, field: &'static str) -> Result<(), EncodeError> {
        check_len(field, v.len(), u16::MAX as usize)
    }
}

macro_rules! bytes_codec {
    ($codec:ident, $prefix:ty, $method:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug)]
        pub struct $codec;
        impl<'a> Codec<'a, &'a [u8]> for $codec {
            fn write(&self, w: &mut Writer<'_>, v: &&'a [u8]) {
                w.$method(v);
            }
            fn read(
                &self,
                r: &mut Reader<'a>,
                field: &'static str,
            ) -> Result<&'a [u8], DecodeError> {
                r.$method(field)
            }
            fn min_bytes(&self) -> usize {
                std::mem::size_of::<$prefix>()
            }
            fn check(&self, v: &&'a [u8], field: &'static str) -> Result<(), EncodeError> {
                check_len(field, v.len(), <$prefix>::MAX as usize)
            }
        }
        impl<'a> Codec<'a, Vec<u8>> for $codec {
            fn write(&self, w: &mut Writer<'_>, v: &Vec<u8>) {
                w.$method(v);
            }
            fn read(
                &self,
                r: &mut Reader<'a>,
                field: &'static str,
            ) -> Result<Vec<u8>, DecodeError> {
                Ok(r.$method(field)?.to_vec())
            }
            fn min_bytes(&self) -> usize {
                std::mem::size_of::<$prefix>()
            }
            fn check(&self, v: &Vec<u8>, field: &'static str) -> Result<(), EncodeError> {
                check_len(field, v.len(), <$prefix>::MAX as usize)
            }
        }
    };
}

bytes_codec!(
    Bytes16,
    u16,
    bytes16,
    "A byte string after a `u16` length (keys, properties)."
);
bytes_codec!(
    Bytes32,
    u32,
    bytes32,
    "A byte string after a `u32` length (message bodies)."
);

/// A declared body nested in another, field after field with nothing in between.
#[derive(Clone, Copy, Debug)]
pub struct Struct;
impl<'a, T: Fields<'a>> Codec<'a, T> for Struct {
    fn write(&self, w: &mut Writer<'_>, v: &T) {
        v.write_fields(w);
    }
    fn read(&self, r: &mut Reader<'a>, _field: &'static str) -> Result<T, DecodeError> {
        T::read_fields(r)
    }
    fn min_bytes(&self) -> usize {
        T::min_bytes()
    }
    fn check(&self, v: &T, _field: &'static str) -> Result<(), EncodeError> {
        v.check_fields()
    }
    fn canonical(&self) -> bool {
        T::canonical()
    }
}

/// A `u32` count, then that many items. `count` and `item` are the names decode errors give the
/// count and each item (the field's own name is not used: the count is what is read first).
#[derive(Clone, Copy, Debug)]
pub struct List<C> {
    pub count: &'static str,
    pub item: &'static str,
    pub codec: C,
}

/// A list whose items are encoded with `codec`.
pub const fn list<C>(count: &'static str, item: &'static str, codec: C) -> List<C> {
    List { count, item, codec }
}

impl<C> List<C> {
    /// Writes a slice with the layout of the list field: an encoder that holds its items in a
    /// slice (the client's produce) need not build the vector.
    pub fn write_items<'a, T>(&self, w: &mut Writer<'_>, items: &[T])
    where
        C: Codec<'a, T>,
    {
        w.u32(items.len() as u32);
        for item in items {
            self.codec.write(w, item);
        }
    }

    pub fn check_items<'a, T>(&self, items: &[T]) -> Result<(), EncodeError>
    where
        C: Codec<'a, T>,
    {
        check_len(self.count, items.len(), u32::MAX as usize)?;
        items
            .iter()
            .try_for_each(|v| self.codec.check(v, self.item))
    }
}

impl<'a, T, C: Codec<'a, T>> Codec<'a, Vec<T>> for List<C> {
    fn write(&self, w: &mut Writer<'_>, v: &Vec<T>) {
        self.write_items(w, v);
    }
    fn read(&self, r: &mut Reader<'a>, _field: &'static str) -> Result<Vec<T>, DecodeError> {
        let n = r.count(self.count, self.codec.min_bytes())?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.codec.read(r, self.item)?);
        }
        Ok(items)
    }
    fn min_bytes(&self) -> usize {
        4
    }
    fn check(&self, v: &Vec<T>, _field: &'static str) -> Result<(), EncodeError> {
        self.check_items(v)
    }
    fn canonical(&self) -> bool {
        self.codec.canonical()
    }
}

/// An optional `u64` as a presence byte (0 or 1) and the value (0 when absent), both always
/// there. `present` names the flag in decode errors; the field's name is the value's.
#[derive(Clone, Copy, Debug)]
pub struct Flagged {
    pub present: &'static str,
}
impl<'a> Codec<'a, Option<u64>> for Flagged {
    fn write(&self, w: &mut Writer<'_>, v: &Option<u64>) {
        match v {
            Some(o) => w.u8(1).u64(*o),
            None => w.u8(0).u64(0),
        };
    }
    fn read(&self, r: &mut Reader<'a>, field: &'static str) -> Result<Option<u64>, DecodeError> {
        let present = r.u8(self.present)?;
        let value = r.u64(field)?;
        match present {
            0 => Ok(None),
            1 => Ok(Some(value)),
            _ => Err(DecodeError::Invalid {
                field: self.present,
                reason: "must be 0 or 1",
            }),
        }
    }
    fn min_bytes(&self) -> usize {
        1 + 8
    }
    fn canonical(&self) -> bool {
        // An absent value decodes whatever its offset bytes hold and encodes them as zero.
        false
    }
}

/// Property-test strategies, one per codec, so a declared body's strategy follows from its
/// field list like its encoder does.
#[cfg(test)]
pub mod strategies {
    use super::*;
    use proptest::prelude::*;

    /// A body type whose values proptest can generate (declared owned bodies implement it).
    pub trait Generate: Sized + std::fmt::Debug {
        fn strategy() -> BoxedStrategy<Self>;
    }

    /// The values a codec can encode, for a field of type `T`.
    pub trait Strategize<T> {
        fn strategy(&self) -> BoxedStrategy<T>;
    }

    macro_rules! any_strategy {
        ($($codec:ident: $ty:ty),*) => {$(
            impl Strategize<$ty> for $codec {
                fn strategy(&self) -> BoxedStrategy<$ty> {
                    any::<$ty>().boxed()
                }
            }
        )*};
    }
    any_strategy!(U8: u8, U16: u16, U32: u32, U64: u64);

    impl Strategize<String> for Str16 {
        fn strategy(&self) -> BoxedStrategy<String> {
            // Any Unicode, not only name characters: the codec carries any string it fits.
            "\\PC{0,24}".boxed()
        }
    }
    impl Strategize<Vec<u8>> for Bytes16 {
        fn strategy(&self) -> BoxedStrategy<Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..32).boxed()
        }
    }
    impl Strategize<Vec<u8>> for Bytes32 {
        fn strategy(&self) -> BoxedStrategy<Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..64).boxed()
        }
    }
    impl<T: Generate + 'static> Strategize<T> for Struct {
        fn strategy(&self) -> BoxedStrategy<T> {
            T::strategy()
        }
    }
    impl<T: std::fmt::Debug + 'static, C: Strategize<T>> Strategize<Vec<T>> for List<C> {
        fn strategy(&self) -> BoxedStrategy<Vec<T>> {
            proptest::collection::vec(self.codec.strategy(), 0..4).boxed()
        }
    }
    impl Strategize<Option<u64>> for Flagged {
        fn strategy(&self) -> BoxedStrategy<Option<u64>> {
            proptest::option::of(any::<u64>()).boxed()
        }
    }
}
